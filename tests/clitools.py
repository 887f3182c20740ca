"""The CLI in-process, for tests of exit codes and the one-line `error:` rule (issue 14)."""

from __future__ import annotations

import numpy as np
import pytest

from morphllr.cli import main


def cli(argv, capsys) -> tuple[int, str]:
    """Run ``morphllr ARGV`` in this process: (exit code, stdout + stderr)."""
    with pytest.raises(SystemExit) as stop:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    code = stop.value.code
    return (code if isinstance(code, int) else 0 if code is None else 1), out + err


def run(argv, capsys) -> tuple[int, str, str]:
    """Run ``morphllr ARGV`` in this process: (exit code, stdout, stderr); a return without SystemExit is 0."""
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


def one_error(text: str, *fragments: str) -> str:
    """The one ``error:`` line of ``text`` (no traceback), holding every fragment."""
    assert "Traceback" not in text, text
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, text
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def run_in_process(argv) -> tuple[int, str, str]:
    """``morphllr ARGV`` in this process without capsys (usable in module-scoped fixtures): (exit code, stdout, stderr)."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in argv])
        except SystemExit as stop:
            code = stop.code
        else:  # main always exits
            code = "returned"
    return (code if isinstance(code, int) else 0 if code is None else 1), out.getvalue(), err.getvalue()


def synth_and_compare(folder, sims: dict, obs, arch, gallery: int = 2, n_reference: int = 40, n_sim: int = 20):
    """A small real report: ``morphllr synth`` (observed-test + the sets ``sims`` = {label: synth set}), then
    ``morphllr compare`` of them against SDSS=observed-test into ``folder/report``.

    Returns:
        (report folder, compare's stdout, compare's stderr, the universe folder).
    """
    universe = folder / "universe"
    code, out, err = run_in_process(["synth", "--out", universe, "--n-test", n_reference, "--n-sim", n_sim,
                                     "--sets", "observed-test," + ",".join(sims.values()), "--workers", "1"])
    assert code == 0, out + err
    code, out, err = run_in_process(["compare", "--obs", obs, "--arch", arch,
                                     "--reference", f"SDSS={universe / 'observed-test.h5'}",
                                     *[f"{name}={universe / (s + '.h5')}" for name, s in sims.items()],
                                     "--out", folder / "report", "--bootstrap", "50", "--gallery", gallery,
                                     "--threads", "1"])
    assert code == 0, out + err
    return folder / "report", out, err, universe


def galaxies(n: int, size: int = 8, seed: int = 0) -> np.ndarray:
    """``(n, size, size)`` smooth blobs of random brightness plus a little noise: very learnable structure."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    r2 = (yy - (size - 1) / 2) ** 2 + (xx - (size - 1) / 2) ** 2
    blob = np.exp(-r2 / (size / 2.0))
    return (blob[None] * rng.uniform(0.5, 1.0, (n, 1, 1)) + 0.02 * rng.standard_normal((n, size, size))).astype(
        np.float32)
