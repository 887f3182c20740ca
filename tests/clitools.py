"""The CLI in-process, for tests of exit codes and the one-line `error:` rule (issue 14)."""

from __future__ import annotations

import pytest

from morphllr.cli import main


def cli(argv, capsys) -> tuple[int, str]:
    """Run ``morphllr ARGV`` in this process: (exit code, stdout + stderr)."""
    with pytest.raises(SystemExit) as stop:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    code = stop.value.code
    return (code if isinstance(code, int) else 0 if code is None else 1), out + err


def one_error(text: str, *fragments: str) -> str:
    """The one ``error:`` line of ``text`` (no traceback), holding every fragment."""
    assert "Traceback" not in text, text
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, text
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]
