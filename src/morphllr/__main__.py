from morphllr.cli import main

main()
