"""User mistakes never give a traceback or a wrong number (issue #14).

Every case goes through the command line in-process (``morphllr.cli.main``) and must end
with exactly one ``error: ...`` line, exit status 2 and nothing written; Ctrl-C is checked
on real subprocesses (exit 130, no output, no temporary file, no worker left running).
The sweep at the end feeds bad numbers to every numeric option of every command, so a new
command or option is covered without writing its case by hand.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from clitools import one_error
from morphllr.cli import app, main

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- helpers
def cli(argv, capsys) -> tuple[int, str, str]:
    """Run ``morphllr ARGV`` in-process; return (exit status, stdout, stderr)."""
    with pytest.raises(SystemExit) as stop:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    code = stop.value.code
    return (code if isinstance(code, int) else 1), out, err




def refused(argv, capsys, *fragments: str) -> str:
    """Exit 2 with one error line."""
    code, _, err = cli(argv, capsys)
    line = one_error(err, *fragments)
    assert code == 2, err
    return line


def leftovers(folder: Path) -> list[str]:
    """Temporary or lock files left in a folder."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.suffix in (".tmp", ".lock"))


# --------------------------------------------------------------------------- fixtures
SIZE = 128


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> Path:
    """An ImageSet of 3 galaxies with flux cutouts, segmentation and good Sérsic columns."""
    from astropy.table import Table

    from morphllr.data.prepare import write_flux_set

    folder = tmp_path_factory.mktemp("fitted")
    yy, xx = np.mgrid[:SIZE, :SIZE]
    rng = np.random.default_rng(0)
    blob = 2000 * np.exp(-np.hypot(xx - 63.5, yy - 63.5) / 4)
    flux = (blob + rng.normal(0, 5.7, (3, SIZE, SIZE)))[:, None].astype(np.float32)
    table = Table({"id": ["g0", "g1", "g2"], "sersic_n": [1.0, 2.0, 4.0], "sersic_re_pix": [4.0, 6.0, 3.0],
                   "sersic_q": [0.5, 0.8, 1.0], "sersic_pa_deg": [20.0, 100.0, 0.0],
                   "sersic_flux": [2e4, 3e4, 1e4], "psf_fwhm_arcsec": [1.4, 1.4, 1.4]})
    write_flux_set(folder / "obs.h5", flux, table, "zanisi21")
    return folder / "obs.h5"


def with_column(src: Path, dst: Path, name: str, values) -> Path:
    """A copy of an ImageSet whose catalogue column ``name`` holds ``values``."""
    import shutil

    from astropy.table import Column

    from morphllr.data.imageset import ImageSet

    shutil.copy(src, dst)
    with ImageSet.open(dst) as s:
        table = s.catalog.copy()
    table[name] = Column(values)
    ImageSet.open(dst).update_catalog(table)
    return dst


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny 8x8 Gaussian-head model, the same with NaN weights, and matching images."""
    import torch

    from morphllr.model.pixelcnn import NETWORK_PRESETS, PixelCNN
    from morphllr.model.io import save_model

    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    net = PixelCNN(NETWORK_PRESETS["tiny"])
    save_model(net, folder / "good", preprocessing={}, data_fingerprint=None, metrics={})
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(float("nan"))
    save_model(net, folder / "nan", preprocessing={}, data_fingerprint=None, metrics={})
    rng = np.random.default_rng(0)
    np.save(folder / "images.npy", rng.normal(0, 1, (6, 1, 8, 8)).astype(np.float32))
    np.save(folder / "one.npy", rng.normal(0, 1, (1, 1, 8, 8)).astype(np.float32))
    return folder


# --------------------------------------------------------------------------- 1. fit-sersic --fit-size
@pytest.mark.parametrize("size,fragment", [("-5", "--fit-size -5"), ("0", "--fit-size 0"),
                                           ("1000", "--fit-size 1000: must be a whole number of pixels from 8 to 128")])
def test_fit_size_out_of_range_is_refused_and_keeps_the_fit(tmp_path, fitted, capsys, size, fragment):
    from morphllr.data.imageset import ImageSet

    target = with_column(fitted, tmp_path / "obs.h5", "sersic_n", [1.0, 2.0, 4.0])
    refused(["fit-sersic", target, "--psf-fwhm", "1.4", "--workers", "1", "--overwrite", "--fit-size", size],
            capsys, fragment)
    with ImageSet.open(target) as s:
        assert list(s.catalog["sersic_n"]) == [1.0, 2.0, 4.0]  # the good columns are untouched


# --------------------------------------------------------------------------- 2. archetypes: resources, columns
@pytest.mark.parametrize("column,values,fragment", [
    ("sersic_re_pix", [1e6, 6.0, 3.0], "R_e must be > 0 and at most 100 cutout sides"),
    ("sersic_flux", [1e30, 3e4, 1e4], "flux must be > 0 and at most"),
    ("sersic_flux", [np.inf, 3e4, 1e4], "flux must be > 0"),
    ("sersic_n", ["abc", "2", "4"], "column 'sersic_n' must hold numbers, but row 1 (id g0) holds 'abc'"),
])
def test_archetype_parameters_that_would_crash_or_exhaust_memory_are_refused(tmp_path, fitted, capsys, column,
                                                                              values, fragment):
    observed = with_column(fitted, tmp_path / "obs.h5", column, values)
    refused(["archetypes", observed, "--out", tmp_path / "arch.h5", "--psf-fwhm", "1.4", "--workers", "1"],
            capsys, "g0" if column != "sersic_n" else "sersic_n", fragment)
    assert not (tmp_path / "arch.h5").exists() and leftovers(tmp_path) == []


def test_huge_but_allowed_radius_renders_in_bounded_memory(tmp_path, fitted, capsys):
    """R_e of 10^4 px on a 128 px cutout: GalSim alone asked for a 96 GB FFT; now drawn in real space."""
    from morphllr.data.imageset import ImageSet

    observed = with_column(fitted, tmp_path / "obs.h5", "sersic_re_pix", [1e4, 12000.0, 3.0])
    code, _, err = cli(["archetypes", observed, "--out", tmp_path / "arch.h5", "--psf-fwhm", "1.4",
                        "--workers", "1"], capsys)
    assert code == 0, err
    with ImageSet.open(tmp_path / "arch.h5") as s:
        assert np.isfinite(s.flux[:]).all()


def test_real_space_drawing_agrees_with_galsim_fft():
    from morphllr.galaxies.archetypes import SersicProfileCache, _draw_real_space, draw_archetype, sersic_profile
    from morphllr.galaxies.psf import make_psf

    psf = make_psf(1.4)
    profile = sersic_profile(SersicProfileCache(), 1.0, 300.0, 0.7, 20.0, 1e4, 0.396)
    fft = draw_archetype(profile, psf, (64, 64), 0.396, 35.0, 30.0)
    real = _draw_real_space(profile, psf, (64, 64), 0.396, 35.0, 30.0)
    assert np.abs(fft - real).max() < 5e-3 * fft.max()


# --------------------------------------------------------------------------- 3. NaN weights
def test_model_with_nan_weights_is_refused_on_load(tmp_path, models, capsys):
    refused(["score", models / "images.npy", "--model", models / "nan", "--out", tmp_path / "s.csv"], capsys,
            "weights.safetensors", "NaN/inf", "retrain")
    refused(["compare", "--obs", models / "nan", "--arch", models / "good", "--reference",
             f"R={models / 'images.npy'}", "--out", tmp_path / "rep"], capsys, "NaN/inf")
    assert leftovers(tmp_path) == [] and not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- 5. catalogues
def test_catalogue_text_in_a_number_column_is_refused_and_blanks_stay_missing(tmp_path, capsys):
    from astropy.io import fits

    from morphllr.data.imageset import ImageSet

    yy, xx = np.mgrid[:150, :150]
    for i in range(3):
        image = 900 * np.exp(-np.hypot(xx - 75, yy - 75) / 4) + np.random.default_rng(i).normal(0, 5, (150, 150))
        fits.PrimaryHDU(image.astype(np.float32)).writeto(tmp_path / f"g{i}.fits")
    (tmp_path / "bad.csv").write_text("id,log_mstar\ng0,10.1\ng1,ten\ng2,\n")
    refused(["prepare", tmp_path / "g0.fits", tmp_path / "g1.fits", tmp_path / "g2.fits", "--catalog",
             tmp_path / "bad.csv", "--out", tmp_path / "o.h5", "--workers", "1"], capsys,
            "bad.csv", "'log_mstar'", "row 2 (id g1)", "'ten'")
    assert not (tmp_path / "o.h5").exists()
    (tmp_path / "ok.csv").write_text("id,log_mstar,comment\ng0,10.1,3\ng1,,fine\ng2,9.8,\n")
    code, _, err = cli(["prepare", tmp_path / "g0.fits", tmp_path / "g1.fits", tmp_path / "g2.fits", "--catalog",
                        tmp_path / "ok.csv", "--out", tmp_path / "o.h5", "--workers", "1"], capsys)
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "'comment'" in warnings[0] and "kept as text" in warnings[0]
    with ImageSet.open(tmp_path / "o.h5") as s:
        mass, comment = s.catalog["log_mstar"], s.catalog["comment"]
        assert mass.dtype.kind == "f" and bool(mass.mask[1]) and not bool(mass.mask[0])  # blank = missing, not 0
        assert list(comment) == ["3", "fine", ""]


def test_numeric_column_reads_masked_and_blank_cells_as_nan():
    from astropy.table import MaskedColumn, Table

    from morphllr.errors import MorphllrError
    from morphllr.data.catalog import numeric_column, typed_catalog

    table = typed_catalog(Table({"id": ["a", "b", "c"], "z": ["0.1", " ", "0.3"],
                                 "gain": MaskedColumn([4.7, 0.0, 4.8], mask=[False, True, False])}))
    assert np.isnan(numeric_column(table, "z")[1]) and numeric_column(table, "z")[2] == 0.3
    assert np.isnan(numeric_column(table, "gain")[1])
    with pytest.raises(MorphllrError, match="'redshift'.*row 1 \\(id a\\) holds 'high'"):
        typed_catalog(Table({"id": ["a"], "redshift": ["high"]}), "cat.csv")


# --------------------------------------------------------------------------- 6. train --resume, hostile pickle
class _Hostile:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_resume_from_a_hostile_checkpoint_is_one_line_and_runs_nothing(tmp_path, models, capsys, monkeypatch):
    import pickle

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "last.ckpt").write_bytes(pickle.dumps({"state_dict": _Hostile()}))
    refused(["train", models / "images.npy", "--out", out, "--resume", "--preset", "tiny", "--max-steps", "1",
             "--batch-size", "2", "--precision", "32", "--threads", "1", "--quiet"], capsys,
            "last.ckpt", "cannot be loaded safely", "delete it or start without --resume")
    assert not (tmp_path / "PWNED").exists()


# --------------------------------------------------------------------------- 7. sets too small to compare
def test_one_image_set_gets_no_interval(tmp_path, models, capsys):
    refused(["compare", "--obs", models / "good", "--arch", models / "good", "--reference",
             f"R={models / 'images.npy'}", f"ONE={models / 'one.npy'}", "--out", tmp_path / "rep"], capsys,
            "set ONE=", "1 image(s)", "at least 2")
    assert not (tmp_path / "rep").exists()


# --------------------------------------------------------------------------- 8. values beyond float32 / the network
def test_values_beyond_float32_or_the_networks_range_are_named(tmp_path, models, capsys):
    from morphllr.errors import MorphllrError
    from morphllr.model.io import load_model
    from morphllr.score import log_likelihood

    model = load_model(models / "good")
    huge = np.full((2, 1, 8, 8), 1e300)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow RuntimeWarning on the way
        with pytest.raises(MorphllrError, match="beyond float32"):
            log_likelihood(model, huge)
    with pytest.raises(MorphllrError, match="beyond the input range"):
        log_likelihood(model, np.full((2, 1, 8, 8), 1e30, np.float32))
    np.save(tmp_path / "huge.npy", huge)
    refused(["score", tmp_path / "huge.npy", "--model", models / "good", "--out", tmp_path / "s.csv"], capsys,
            "huge.npy", "beyond float32")


# --------------------------------------------------------------------------- 9. images without data
def test_all_nan_image_is_refused_naming_the_file(tmp_path, capsys):
    from astropy.io import fits

    fits.PrimaryHDU(np.full((150, 150), np.nan, np.float32)).writeto(tmp_path / "blank.fits")
    refused(["prepare", tmp_path / "blank.fits", "--out", tmp_path / "o.h5", "--workers", "1"], capsys,
            "blank.fits", "no finite pixel")
    assert not (tmp_path / "o.h5").exists()


def test_image_resampled_beyond_the_size_limit_is_refused(tmp_path, capsys):
    from astropy.io import fits

    fits.PrimaryHDU(np.ones((150, 150), np.float32)).writeto(tmp_path / "g.fits")
    refused(["prepare", tmp_path / "g.fits", "--out", tmp_path / "o.h5", "--workers", "1", "--pixel-scale", "3000"],
            capsys, "g.fits", "more than the limit")


# --------------------------------------------------------------------------- 10. fixed by others, kept fixed here
def test_other_known_faults_stay_one_line(tmp_path, capsys):
    np.save(tmp_path / "frames.npy", np.zeros((1, 64, 64), np.float32))
    refused(["sky-patches", tmp_path / "frames.npy", "--size", "32", "--out", tmp_path / "sky.npy", "--n", "-3"],
            capsys, "--n")
    refused(["mock", tmp_path / "x.fits", "--out", tmp_path / "m.h5", "--redshift", "1e6"], capsys, "--redshift")
    refused(["train", tmp_path / "frames.npy", "--out", tmp_path / "m", "--devices", "-3"], capsys, "--devices")
    refused(["prepare", tmp_path / "frames.npy", "--out", tmp_path / "o.h5", "--sky", "nan"], capsys, "--sky nan")
    refused(["train", tmp_path / "frames.npy", "--out", tmp_path / "m", "--input-norm", "0,0", "--preset", "tiny"],
            capsys, "--input-norm")


# --------------------------------------------------------------------------- the boundary itself
def test_usage_errors_are_one_line_and_help_still_works(capsys):
    line = refused(["fit-sersic", "x.h5", "--fit-size", "abc"], capsys, "--fit-size abc", "fit-sersic --help")
    assert "valid: 8<=x<=4096" in line
    refused(["fit-sersic"], capsys, "Missing argument")
    refused(["no-such-command"], capsys, "No such command")
    refused(["prepare", "x", "--bogus"], capsys, "--bogus")
    code, out, _ = cli(["score", "--help"], capsys)
    assert code == 0 and "--batch-size" in out
    code, out, err = cli([], capsys)
    assert code == 2 and "Usage" in out + err and "error:" not in err


def _raise(exc):
    def fail(*args, **kwargs):
        raise exc
    return fail


@pytest.mark.parametrize("exc,fragments", [
    (PermissionError(13, "Permission denied", "/data/cat.csv"), ("/data/cat.csv", "Permission denied", "permissions")),
    (OSError(28, "No space left on device", "/out/o.h5"), ("/out/o.h5", "No space left", "free some disk space")),
    (IsADirectoryError(21, "Is a directory", "/out"), ("/out", "give a file name, not a folder")),
    (OSError(36, "File name too long", "x" * 300), ("File name too long", "shorter")),
    (OSError("Unable to synchronously create file (unable to open file: name = 'o.h5', errno = 13, error message = "
             "'Permission denied', flags = 15)"), ("o.h5", "Permission denied")),
    (MemoryError(), ("out of memory",)),
])
def test_os_errors_name_the_file_in_one_line(tmp_path, capsys, monkeypatch, exc, fragments):
    import morphllr.data.catalog

    (tmp_path / "c.csv").write_text("id\na\n")
    (tmp_path / "x.fits").write_bytes(b"")
    monkeypatch.setattr(morphllr.data.catalog, "read_catalog", _raise(exc))
    refused(["prepare", tmp_path / "x.fits", "--out", tmp_path / "o.h5", "--catalog", tmp_path / "c.csv"],
            capsys, *fragments)


def test_a_bug_shows_its_traceback_and_asks_for_a_report(tmp_path, capsys, monkeypatch):
    import morphllr.data.catalog

    (tmp_path / "c.csv").write_text("id\na\n")
    (tmp_path / "x.fits").write_bytes(b"")
    monkeypatch.setattr(morphllr.data.catalog, "read_catalog", _raise(RuntimeError("boom")))
    code, _, err = cli(["prepare", tmp_path / "x.fits", "--out", tmp_path / "o.h5", "--catalog", tmp_path / "c.csv"],
                       capsys)
    assert code == 1 and "Traceback" in err
    assert err.strip().splitlines()[-1].startswith("internal error, please report: RuntimeError: boom")


def test_ctrl_c_in_process_is_exit_130_in_one_line(tmp_path, capsys, monkeypatch):
    import morphllr.data.catalog

    (tmp_path / "c.csv").write_text("id\na\n")
    (tmp_path / "x.fits").write_bytes(b"")
    monkeypatch.setattr(morphllr.data.catalog, "read_catalog", _raise(KeyboardInterrupt()))
    code, _, err = cli(["prepare", tmp_path / "x.fits", "--out", tmp_path / "o.h5", "--catalog", tmp_path / "c.csv"],
                       capsys)
    assert code == 130 and "Traceback" not in err and len(err.strip().splitlines()) == 1 and "interrupted" in err


def test_module_and_console_script_go_through_the_boundary():
    import shutil

    scripts = [[sys.executable, "-m", "morphllr"]]
    console = Path(sys.executable).with_name("morphllr")
    if console.is_file() or shutil.which("morphllr"):
        scripts.append([str(console if console.is_file() else shutil.which("morphllr"))])
    for script in scripts:
        done = subprocess.run([*script, "fit-sersic", "x.h5", "--fit-size", "-5"], capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 2, done.stderr
        one_error(done.stderr, "--fit-size -5")


# --------------------------------------------------------------------------- 4. Ctrl-C on real runs
#: the child restores Python's Ctrl-C handler: a shell's background job would have SIGINT ignored
_CHILD = "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); " \
         "from morphllr.cli import main; main(sys.argv[1:])"


def _alive_with(marker: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if marker in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(proc.name))
            except OSError:
                pass
    return pids


def _interrupt(argv, folder: Path, ready, delay: float) -> tuple[int, str, float]:
    """Start ``morphllr ARGV`` in its own process group, Ctrl-C it (the whole group, as a terminal does)."""
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, *[str(a) for a in argv]], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, cwd=folder)
    start = time.monotonic()
    while not ready() and time.monotonic() - start < 60 and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(delay)
    assert proc.poll() is None, "finished before the interrupt; give it more work"
    os.killpg(proc.pid, signal.SIGINT)
    sent = time.monotonic()
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err, time.monotonic() - sent


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to look for leftover workers")
def test_ctrl_c_stops_prepare_with_workers_at_once(tmp_path):
    stack = np.random.default_rng(0).normal(0, 5, (500, 150, 150)).astype(np.float32)
    stack += 900 * np.exp(-np.hypot(*np.mgrid[-75:75, -75:75]) / 4)[None]
    np.save(tmp_path / "stack.npy", stack)
    out = tmp_path / "out.h5"
    marker = str(tmp_path)
    code, err, took = _interrupt(["prepare", tmp_path / "stack.npy", "--out", out, "--workers", "2"], tmp_path,
                                 ready=lambda: len(_alive_with(marker)) >= 3, delay=0.5)  # workers busy
    assert code == 130, err
    assert "Traceback" not in err and "Exception ignored" not in err and "interrupted" in err
    assert took < 10 and not out.exists() and leftovers(tmp_path) == []
    time.sleep(0.5)
    assert _alive_with(marker) == []  # no worker left running


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to look for leftover workers")
def test_ctrl_c_stops_synth_and_its_fits(tmp_path):
    """Interrupted while its worker processes fit the galaxies behind the archetypes."""
    marker = str(tmp_path)
    code, err, took = _interrupt(["synth", "--out", tmp_path / "u", "--sets", "archetypes-train", "--n-train", "300",
                                  "--workers", "2"], tmp_path, ready=lambda: len(_alive_with(marker)) >= 3, delay=0.5)
    assert code == 130, err
    assert "Traceback" not in err and "Exception ignored" not in err
    assert took < 10 and not (tmp_path / "u").exists() and leftovers(tmp_path) == []
    time.sleep(0.5)
    assert _alive_with(marker) == []


# --------------------------------------------------------------------------- the sweep over every command
#: the least each command needs to get as far as checking its options (paths need not exist)
REQUIRED = {
    "train": ["data.npy", "--out", "model"],
    "score": ["data.npy", "--model", "model", "--out", "s.csv"],
    "prepare": ["input.fits", "--out", "o.h5"],
    "fit-sersic": ["set.h5"],
    "archetypes": ["set.h5", "--out", "a.h5"],
    "sky-patches": ["frames.npy", "--size", "64", "--out", "sky.npy"],
    "mock": ["sim.fits", "--out", "m.h5"],
    "synth": ["--out", "universe"],
    "demo": [],
    "compare": ["--obs", "obs", "--arch", "arch", "--reference", "R=r.h5", "--out", "report"],
    "degrade": ["set.h5", "--resolution", "2", "--out", "d.h5"],
    "subset": ["set.h5", "--where", "label == spiral", "--out", "s.h5"],
    "check": ["model", "set.h5"],
    "ensemble": ["m1", "m2", "--out", "ens"],
}


def _numeric_options():
    import typer

    command = typer.main.get_command(app)
    for name, sub in command.commands.items():
        for param in sub.params:
            kind = getattr(getattr(param, "type_descriptor", None), "annotation", None)
            if kind in (int, float) and param.param_type_name == "option":
                yield name, param, kind


def test_every_command_has_a_sweep_case():
    names = {c.name or c.callback.__name__ for c in app.registered_commands}
    assert names == set(REQUIRED), f"add the new command(s) {names ^ set(REQUIRED)} to REQUIRED"


def test_every_numeric_option_declares_its_range():
    """The general rule: min= and max= on every number, so NaN, inf and absurd values stop at parsing."""
    missing = [f"{name} {param.opts[0]}" for name, param, _ in _numeric_options()
               if param.min is None or param.max is None]
    assert not missing, f"give these options min= and max=: {missing}"


def _bad_values(param, kind) -> list[str]:
    values = ["abc", repr(param.min - 1) if kind is int else repr(param.min - abs(param.min) - 1.0),
              repr(param.max + 1) if kind is int else repr(param.max * 10 + 1.0)]
    if kind is float:
        values += ["nan", "inf", "-inf"]
    else:
        values += ["1.5", "1e30"]
    return values


_CASES = [(name, param.opts[0], value) for name, param, kind in _numeric_options() for value in _bad_values(param, kind)]


@pytest.mark.parametrize("command,option,value", _CASES, ids=[f"{c}{o}={v}" for c, o, v in _CASES])
def test_bad_numbers_stop_at_parsing_in_one_line(tmp_path, capsys, monkeypatch, command, option, value):
    monkeypatch.chdir(tmp_path)
    line = refused([command, *REQUIRED[command], option, value], capsys, option, f"see `morphllr {command} --help`")
    assert "valid: " in line or value == "abc" or value == "1.5" or value == "1e30"
    assert list(tmp_path.iterdir()) == []


def test_the_cli_bounds_are_the_librarys():
    from morphllr import limits
    from morphllr.galaxies import sersic_fit

    assert sersic_fit.MIN_FIT_SIZE == limits.MIN_FIT_SIZE
    assert math.isfinite(limits.MAX_FLUX) and limits.MAX_RE_CUTOUTS > 2  # fits flag R_e beyond 2 cutouts only


def test_a_worker_that_died_while_idle_gives_one_clear_error():
    """Handing a job to a worker killed between jobs raises a MorphllrError, not a broken pipe."""
    import multiprocessing as mp

    from morphllr.errors import MorphllrError
    from morphllr.parallel import _Worker

    worker = _Worker(mp.get_context("fork"), abs)
    worker.process.kill()
    worker.process.join(timeout=10)
    with pytest.raises(MorphllrError, match="worker process killed by SIGKILL"):
        worker.give(3, -1)
    worker.stop(terminate=True)
