"""Stage 7, the report: figures, the HTML page, the terminal summary."""
