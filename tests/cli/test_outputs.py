"""One output discipline for every command (issue #14): claims, locks, stale temporaries, permissions.

Every command that writes is run through the CLI in-process on tiny inputs.  "Before the work" is shown by
replacing each command's working function with one that fails the test if it is ever called.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from morphllr.atomic import atomic_dir, atomic_file, claim_output, claim_outputs
from clitools import galaxies, run
from morphllr.errors import MorphllrError

pytest.importorskip("galsim")

TINY_TRAIN = ["--preset", "tiny", "--batch-size", "4", "--precision", "32", "--threads", "1", "--quiet",
              "--warmup-steps", "1", "--max-steps", "1", "--val-fraction", "0"]


# ---------------------------------------------------------------------- helpers
def one_error(err: str) -> str:
    """The single ``error:`` line of a refused command (no traceback, nothing else on stderr)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def digest(path: Path) -> str:
    """sha256 of a file, or of every file (name + bytes) under a folder."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        h.update(str(f.relative_to(path.parent)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def write_sim_fits(path: Path, size: int = 240, sigma_pix: float = 20.0) -> Path:
    """An idealised Gaussian galaxy in AB mag/arcsec^2 (empty pixels +inf) at z = 0.05, 100 pc pixels."""
    from astropy.io import fits

    yy, xx = np.indices((size, size)) - (size - 1) / 2
    r2 = xx**2 + yy**2
    mu = np.where(r2 > (size / 2 - 1) ** 2, np.inf, 19.0 + 2.5 / np.log(10) * r2 / (2 * sigma_pix**2))
    hdu = fits.PrimaryHDU(mu)
    hdu.header.update(BUNIT="AB mag/arcsec2", CDELT1=100.0, CTYPE1="pc", REDSHIFT=0.05)
    hdu.writeto(path)
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Tiny inputs of every command (read-only: tests that change an input copy it first)."""
    import torch

    from morphllr.galaxies.mock import make_mock_set
    from morphllr.model.pixelcnn import PixelCNN, PixelCNNConfig
    from morphllr.model.io import save_model
    from morphllr.galaxies.sersic_fit import fit_imageset

    root = tmp_path_factory.mktemp("world")
    w = {"root": root}
    np.save(root / "x.npy", galaxies(12))
    np.save(root / "ref.npy", galaxies(6, seed=1))
    np.save(root / "sim.npy", galaxies(6, seed=2))
    np.save(root / "raw.npy", np.random.default_rng(3).uniform(size=(4, 16, 16)).astype(np.float32))
    np.save(root / "frames.npy", np.random.default_rng(4).normal(0, 1, (6, 64, 64)).astype(np.float32))
    for name, seed in (("obs", 0), ("arch", 1)):
        torch.manual_seed(seed)
        net = PixelCNN(PixelCNNConfig(height=8, width=8, nr_resnet=1, nr_filters=8, dropout=0.0, head="gaussian"))
        w[name] = save_model(net, root / name, preprocessing={}, data_fingerprint=None, metrics={})
    w["fits"] = write_sim_fits(root / "g0.fits")
    sims = [str(w["fits"]), str(write_sim_fits(root / "g1.fits", sigma_pix=25.0))]
    make_mock_set(sims, root / "obs.h5", seed=0)
    fit_imageset(root / "obs.h5", psf_fwhm=1.4, workers=1)  # Sérsic columns for archetypes
    w.update({k: root / f for k, f in (("x", "x.npy"), ("ref", "ref.npy"), ("sim", "sim.npy"), ("raw", "raw.npy"),
                                       ("frames", "frames.npy"), ("set", "obs.h5"))})
    return w


@dataclass
class Command:
    """How to run one writing command: argv for an output (and, optionally, another main input)."""

    name: str
    kind: str  # "file" or "dir"
    suffix: str  # of the output name
    argv: Callable[[dict, Path, Path | None], list]
    work: tuple[str, str]  # (module, function) doing the work: must not be called when refused
    input_key: str  # the world input that the output may not be / hold


def _score_argv(w, out, inp):
    return ["score", inp or w["x"], "--model", w["obs"], "--out", out, "--maps", out.with_suffix(".maps.h5"),
            "--precision", "32", "--quiet", "--threads", "1"]


COMMANDS = [
    Command("prepare", "file", ".h5",
            lambda w, out, inp: ["prepare", inp or w["raw"], "--preset", "none", "--workers", "1", "--out", out],
            ("morphllr.data.files", "expand_inputs"), "raw"),
    Command("archetypes", "file", ".h5",
            lambda w, out, inp: ["archetypes", inp or w["set"], "--out", out, "--psf-fwhm", "1.4", "--workers", "1"],
            ("morphllr.galaxies.archetypes", "make_archetype_set"), "set"),
    Command("sky-patches", "file", ".npy",
            lambda w, out, inp: ["sky-patches", inp or w["frames"], "--size", "32", "--n", "3", "--out", out],
            ("morphllr.galaxies.sky_patches", "make_sky_patches"), "frames"),
    Command("mock", "file", ".h5", lambda w, out, inp: ["mock", inp or w["fits"], "--out", out],
            ("morphllr.galaxies.mock", "make_mock_set"), "fits"),
    Command("score", "file", ".csv", _score_argv, ("morphllr.model.io", "load_model"), "x"),
    Command("train", "dir", "", lambda w, out, inp: ["train", inp or w["x"], "--out", out, *TINY_TRAIN],
            ("morphllr.train.run", "train_model"), "x"),
    Command("compare", "dir", "",
            lambda w, out, inp: ["compare", "--obs", w["obs"], "--arch", w["arch"], "--reference", f"R={w['ref']}",
                                 f"S={inp or w['sim']}", "--out", out, "--bootstrap", "20", "--gallery", "2"],
            ("morphllr.comparison.run", "compare"), "sim"),
    Command("synth", "dir", "",
            lambda w, out, inp: ["synth", "--out", out, "--n-train", "2", "--n-test", "2", "--n-sim", "2", "--sets",
                                 "observed-test", "--workers", "1", *(["--sky-patches", inp] if inp else [])],
            ("morphllr.synth.universe", "write_universe"), "frames"),
    Command("demo", "dir", "", lambda w, out, inp: ["demo", "--out", out, "--n", "4", "--workers", "1"],
            ("morphllr.demo", "run_demo"), ""),
]
BY_NAME = {c.name: c for c in COMMANDS}


def _import_the_package() -> None:
    """Import every morphllr module first, so that none binds a patched function by name while a patch is active
    (``from morphllr.train.run import train_model`` at the top of train.ensemble would keep the fake for later tests)."""
    import pkgutil

    import morphllr

    for info in pkgutil.walk_packages(morphllr.__path__, "morphllr."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)


def no_work(monkeypatch, command: Command) -> None:
    """Make the command's work fail the test if it starts."""
    _import_the_package()
    module, name = command.work

    def started(*args, **kwargs):
        raise AssertionError(f"{command.name}: the work started although the output was refused")

    monkeypatch.setattr(importlib.import_module(module), name, started)


def outputs_of(command: Command, out: Path) -> list[Path]:
    """Every path the command writes for ``--out out`` (sky-patches: + .json, score: + --maps)."""
    if command.name == "sky-patches":
        return [out, out.with_suffix(".json")]
    if command.name == "score":
        return [out, out.with_suffix(".maps.h5")]
    return [out]


def make_existing(path: Path, kind: str) -> None:
    if kind == "file":
        path.write_bytes(b"precious bytes\n")
    else:
        path.mkdir()
        (path / "model.json").write_text("{}")  # a finished model / any earlier result


# ---------------------------------------------------------------------- refusals, before the work
@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.name)
def test_an_existing_output_is_refused_without_overwrite_and_kept(command, world, tmp_path, capsys, monkeypatch):
    no_work(monkeypatch, command)
    out = tmp_path / f"out{command.suffix}"
    make_existing(out, command.kind)
    before, names = digest(out), listing(tmp_path)
    code, _, err = run(capsys=capsys, argv=command.argv(world, out, None))
    line = one_error(err)
    assert code == 2 and "--overwrite" in line and "--out" in line, line
    assert digest(out) == before and listing(tmp_path) == names  # not even a lock file is left


def test_score_refuses_an_existing_maps_file_too(world, tmp_path, capsys, monkeypatch):
    no_work(monkeypatch, BY_NAME["score"])
    out = tmp_path / "s.csv"
    out.with_suffix(".maps.h5").write_bytes(b"old maps")
    code, _, err = run(capsys=capsys, argv=_score_argv(world, out, None))
    assert code == 2 and one_error(err).startswith("error: --maps ") and "--overwrite" in err
    assert out.with_suffix(".maps.h5").read_bytes() == b"old maps" and not out.exists()


@pytest.mark.parametrize("command", [c for c in COMMANDS if c.input_key], ids=lambda c: c.name)
def test_an_input_is_never_written_even_with_overwrite(command, world, tmp_path, capsys, monkeypatch):
    """File outputs: --out = the input; folder outputs: --out = a folder holding the input."""
    no_work(monkeypatch, command)
    source = world[command.input_key]
    box = tmp_path / "box"
    box.mkdir()
    inp = box / source.name
    shutil.copy(source, inp)
    out = inp if command.kind == "file" else box
    before = digest(box)
    code, _, err = run(capsys=capsys, argv=command.argv(world, out, inp) + ["--overwrite"])
    line = one_error(err)
    assert code == 2 and "input" in line and "pass --overwrite" not in line, line
    assert digest(box) == before and listing(box) == {inp.name}


def test_outputs_never_go_into_an_input_folder_or_onto_each_other(world, tmp_path, capsys, monkeypatch):
    no_work(monkeypatch, BY_NAME["score"])
    model_files = digest(world["obs"])
    for argv, option in (
            (["score", world["x"], "-m", world["obs"], "--out", world["obs"] / "model.json", "--overwrite"], "--out"),
            (["score", world["x"], "-m", world["obs"], "--out", tmp_path / "s.csv", "--maps", world["x"],
              "--overwrite"], "--maps"),
            (["score", world["x"], "-m", world["obs"], "--out", tmp_path / "s.csv", "--maps", tmp_path / "s.csv"],
             "--maps")):
        code, _, err = run(capsys=capsys, argv=argv)
        assert code == 2 and one_error(err).startswith(f"error: {option} "), err
    assert digest(world["obs"]) == model_files and listing(tmp_path) == set()


def test_demo_never_replaces_the_shipped_models_it_reads(tmp_path, capsys, monkeypatch):
    from morphllr.demo import pretrained_dir

    no_work(monkeypatch, BY_NAME["demo"])
    shipped = pretrained_dir()
    if not (shipped / "obs" / "ensemble.json").is_file():  # the shipped ensembles (issue 12)
        pytest.skip("no shipped models")
    before = digest(shipped / "obs")
    for out in (shipped, shipped / "obs", shipped.parent):
        code, _, err = run(capsys=capsys, argv=["demo", "--out", out, "--overwrite"])
        assert code == 2 and "input" in one_error(err), err
    assert digest(shipped / "obs") == before


def _bad_places(command: Command, tmp_path: Path) -> dict[str, Path]:
    blocker = tmp_path / "plain.txt"
    blocker.write_text("a regular file")
    places = {"under a regular file": blocker / f"sub/out{command.suffix}",
              "name of 256 bytes": tmp_path / ("x" * (256 - len(command.suffix)) + command.suffix)}
    if command.kind == "file":
        (tmp_path / f"folder{command.suffix}").mkdir()
        places["a folder for a file"] = tmp_path / f"folder{command.suffix}"
    else:
        places["a file for a folder"] = blocker
    return places


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.name)
def test_impossible_outputs_fail_at_once_with_one_line(command, world, tmp_path, capsys, monkeypatch):
    no_work(monkeypatch, command)
    for case, out in _bad_places(command, tmp_path).items():
        before = listing(tmp_path)
        started = time.perf_counter()
        code, _, err = run(capsys=capsys, argv=command.argv(world, out, None) + ["--overwrite"])
        assert code == 2, (case, err)
        assert one_error(err).startswith("error: --out "), (case, err)
        assert time.perf_counter() - started < 20, case  # refused at the start (the work is disabled anyway)
        assert listing(tmp_path) == before, case  # nothing created: no folder, no lock, no temporary
    assert (tmp_path / "plain.txt").read_text() == "a regular file"


def test_a_too_long_name_is_measured_in_bytes(tmp_path):
    with pytest.raises(MorphllrError, match="243 bytes; at most 241 fit"):
        with claim_output(tmp_path / ("é" * 120 + ".h5")):  # 123 characters, 243 bytes in UTF-8
            pass
    with claim_output(tmp_path / ("é" * 119 + ".h5")):  # 241 bytes: the longest name that fits
        pass
    assert listing(tmp_path) == set()


# ---------------------------------------------------------------------- locks
def hold_lock(out: Path):
    """Take the flock another morphllr run would hold on ``out`` (its ``.NAME.lock``)."""
    fd = os.open(out.parent / f".{out.name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, b"4242\n")
    return fd


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.name)
def test_a_second_run_to_a_locked_output_fails_at_once(command, world, tmp_path, capsys, monkeypatch):
    no_work(monkeypatch, command)
    out = tmp_path / f"out{command.suffix}"
    fd = hold_lock(out)
    try:
        started = time.perf_counter()
        code, _, err = run(capsys=capsys, argv=command.argv(world, out, None))
        line = one_error(err)
        assert code == 2 and "another morphllr run (pid 4242) is writing" in line and str(out) in line, line
        assert time.perf_counter() - started < 20
        assert not out.exists()
    finally:
        os.close(fd)


def test_fit_sersic_locks_the_set_it_updates(world, tmp_path, capsys, monkeypatch):
    no_work(monkeypatch, Command("fit-sersic", "file", "", None, ("morphllr.galaxies.sersic_fit", "fit_imageset"), ""))
    path = tmp_path / "obs.h5"
    shutil.copy(world["set"], path)
    before = digest(path)
    fd = hold_lock(path)
    try:
        code, _, err = run(capsys=capsys, argv=["fit-sersic", path, "--psf-fwhm", "1.4", "--overwrite"])
        assert code == 2 and "another morphllr run" in one_error(err) and "IMAGESET" in err
    finally:
        os.close(fd)
    assert digest(path) == before


def test_fit_sersic_replaces_sersic_columns_only_with_overwrite(world, tmp_path, capsys):
    from morphllr.data.imageset import ImageSet

    path = tmp_path / "obs.h5"
    shutil.copy(world["set"], path)
    before = digest(path)
    code, _, err = run(capsys=capsys, argv=["fit-sersic", path, "--psf-fwhm", "1.4", "--workers", "1"])
    line = one_error(err)
    assert code == 2 and "sersic_n" in line and "--overwrite" in line, line
    assert digest(path) == before
    os.chmod(path, 0o640)
    code, _, err = run(capsys=capsys, argv=["fit-sersic", path, "--psf-fwhm", "2.0", "--workers", "1", "--overwrite"])
    assert code == 0, err
    assert ImageSet.open(path).catalog.meta["sersic_fit"]["psf_fwhm"] == 2.0
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640  # updated in place: its mode is the user's
    assert listing(tmp_path) == {"obs.h5"}  # the lock file is gone


def test_the_lock_file_is_replaced_under_a_waiting_run(tmp_path, monkeypatch):
    """A run that locked a lock file which a finishing run had just unlinked must lock the new one."""
    import morphllr.atomic as atomic

    out = tmp_path / "o.csv"
    lock = tmp_path / ".o.csv.lock"
    real_flock = fcntl.flock
    raced = []

    def flock_after_a_race(fd, how):
        if not raced:  # between our open and our flock: the old run removes the file, a new run makes its own
            raced.append(True)
            os.unlink(lock)
            lock.write_text("")
        return real_flock(fd, how)

    monkeypatch.setattr(atomic.fcntl, "flock", flock_after_a_race)
    with claim_output(out):
        assert raced
        monkeypatch.setattr(atomic.fcntl, "flock", real_flock)
        # we hold the file the path names now, so anyone else locking it is refused
        fd = os.open(lock, os.O_RDWR)
        with pytest.raises(BlockingIOError):
            real_flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(fd)
    assert not lock.exists()


def test_claims_are_reentrant_in_a_thread_but_exclusive_across_threads(tmp_path):
    out = tmp_path / "o.h5"
    errors = []
    with claim_output(out):
        with atomic_file(out, overwrite=False) as tmp:  # the library re-claims what the command claimed
            tmp.write_bytes(b"x")
        thread = threading.Thread(target=lambda: errors.append(_claim_error(out)))
        thread.start()
        thread.join()
    assert errors and "another morphllr run" in errors[0]
    assert out.read_bytes() == b"x" and listing(tmp_path) == {"o.h5"}


def _claim_error(out: Path) -> str:
    try:
        with claim_output(out, overwrite=True):
            return ""
    except MorphllrError as exc:
        return str(exc)


def test_the_python_api_is_claimed_too(world, tmp_path):
    from morphllr.score import score_to_files
    from morphllr.synth.universe import write_universe

    with pytest.raises(MorphllrError, match="input"):
        score_to_files(world["obs"], world["x"], world["x"], overwrite=True)
    fd = hold_lock(tmp_path / "u")
    try:
        with pytest.raises(MorphllrError, match="another morphllr run"):
            write_universe(tmp_path / "u", ["observed-test"], n_test=2)
    finally:
        os.close(fd)
    with pytest.raises(MorphllrError, match="same place"):
        with claim_outputs([("--out", tmp_path / "a"), ("--maps", tmp_path / "a" / "b")], kind="dir"):
            pass


# ---------------------------------------------------------------------- real runs: stale temporaries, modes
STALE = ("abcd1234.tmp", "wxyz_987.old")


def plant_stale(out: Path) -> list[Path]:
    """Temporaries a SIGKILLed run left for ``out`` (a file and a folder), plus a neighbour's, which stays."""
    planted = []
    for tail in STALE:
        path = out.parent / f".{out.name}.{tail}"
        if tail.endswith(".old"):
            path.mkdir()
            (path / "x").write_text("the replaced output")
        else:
            path.write_text("half written")
        planted.append(path)
    return planted


@pytest.mark.parametrize("command", [c for c in COMMANDS if c.name != "demo"], ids=lambda c: c.name)
def test_a_run_cleans_dead_runs_temporaries_and_follows_the_umask(command, world, tmp_path, capsys):
    out = tmp_path / "res" / f"out{command.suffix}"
    out.parent.mkdir()
    neighbour = out.parent / f".{out.name}.csv.abcd1234.tmp"  # a temporary of output "out<suffix>.csv"
    neighbour.write_text("someone else's")
    stale = [p for o in outputs_of(command, out) for p in plant_stale(o)]
    old = os.umask(0o022)
    try:
        code, _, err = run(capsys=capsys, argv=command.argv(world, out, None))
    finally:
        os.umask(old)
    assert code == 0, err
    assert not any(os.path.lexists(p) for p in stale) and neighbour.exists()
    left = {p.name for p in out.parent.iterdir()}
    assert left == {o.name for o in outputs_of(command, out)} | {neighbour.name}  # no lock, no temporary
    for o in outputs_of(command, out):
        assert stat.S_IMODE(os.stat(o).st_mode) == (0o644 if command.kind == "file" else 0o755), o
        for inner in o.rglob("*") if o.is_dir() else ():
            expected = 0o755 if inner.is_dir() else 0o644
            assert stat.S_IMODE(os.stat(inner).st_mode) == expected, inner


def test_modes_come_from_the_umask_not_a_constant(world, tmp_path, capsys):
    old = os.umask(0o027)
    try:
        code, _, err = run(capsys=capsys, argv=BY_NAME["prepare"].argv(world, tmp_path / "p.h5", None))
        with atomic_dir(tmp_path / "d") as folder:
            (folder / "f").write_text("x")
    finally:
        os.umask(old)
    assert code == 0, err
    assert stat.S_IMODE(os.stat(tmp_path / "p.h5").st_mode) == 0o640
    assert stat.S_IMODE(os.stat(tmp_path / "d").st_mode) == 0o750


def test_demo_cleans_dead_runs_temporaries_when_it_starts(tmp_path, capsys, monkeypatch):
    def fails(*args, **kwargs):  # the claim comes first, so its cleaning happens even if the work then fails
        raise MorphllrError("demo: stopped by the test")

    monkeypatch.setattr(importlib.import_module("morphllr.demo"), "run_demo", fails)
    out = tmp_path / "demo"
    stale = plant_stale(out)
    code, _, err = run(capsys=capsys, argv=["demo", "--out", out])
    assert code == 2 and "stopped by the test" in one_error(err)
    assert not any(os.path.lexists(p) for p in stale) and listing(tmp_path) == set()


def test_a_sigkilled_run_leaves_a_temporary_that_the_next_run_removes(tmp_path, capsys):
    """Kill a real `prepare` mid-way: its hidden temporary stays; the next run to that output deletes it."""
    big = tmp_path / "big.npy"
    np.save(big, np.random.default_rng(0).normal(0, 1, (20000, 16, 16)).astype(np.float32))
    out = tmp_path / "set.h5"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MORPHLLR_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "morphllr", "prepare", str(big), "--preset", "none",
                             "--workers", "1", "--out", str(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 60
        temps: list[Path] = []
        while not temps and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
            temps = [p for p in tmp_path.iterdir() if p.name.startswith(".set.h5.") and p.name.endswith(".tmp")]
        assert temps, "prepare never started writing"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert all(t.exists() for t in temps) and (tmp_path / ".set.h5.lock").exists() and not out.exists()
    code, _, err = run(capsys=capsys, argv=BY_NAME["prepare"].argv({"raw": None}, out, _small_raw(tmp_path)))
    assert code == 0, err
    assert not any(t.exists() for t in temps) and not (tmp_path / ".set.h5.lock").exists()
    from morphllr.data.imageset import ImageSet

    assert len(ImageSet.open(out)) == 3


def _small_raw(tmp_path: Path) -> Path:
    path = tmp_path / "small.npy"
    np.save(path, np.random.default_rng(1).uniform(size=(3, 16, 16)).astype(np.float32))
    return path
