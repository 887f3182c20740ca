"""`morphllr train` / `morphllr score` from the command line: results, one-line errors, no debris."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from clitools import galaxies, run
from morphllr.cli import main

TINY = ["--preset", "tiny", "--batch-size", "4", "--precision", "32", "--threads", "1", "--quiet",
        "--warmup-steps", "2", "--augment", "rot,flip"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained through the CLI (shared by the scoring tests)."""
    root = tmp_path_factory.mktemp("cli")
    np.save(root / "train.npy", galaxies(12))
    try:
        main(["train", str(root / "train.npy"), "--out", str(root / "model"), "--max-steps", "4", *TINY])
    except SystemExit as exc:
        assert exc.code == 0
    return root


def test_train_writes_a_model_folder(trained):
    meta = json.loads((trained / "model" / "model.json").read_text())
    assert meta["metrics"]["steps"] == 4 and meta["config"]["height"] == 8
    assert np.isfinite(meta["metrics"]["val_bits_per_dim"])


def test_score_writes_csv_and_maps(trained, tmp_path, capsys):
    np.save(tmp_path / "x.npy", galaxies(5))
    code, out, err = run(["score", tmp_path / "x.npy", "--model", trained / "model", "--out", tmp_path / "s.csv",
                          "--maps", tmp_path / "m.h5", "--precision", "32", "--quiet"], capsys)
    assert code == 0, err
    assert "scored 5 images" in out
    rows = list(csv.DictReader(open(tmp_path / "s.csv")))
    assert [r["id"] for r in rows] == ["0", "1", "2", "3", "4"]
    import h5py

    with h5py.File(tmp_path / "m.h5") as fh:
        np.testing.assert_allclose(fh["logp"][:].sum(axis=(1, 2)), [float(r["logp"]) for r in rows], rtol=1e-4)


def _bad_npy(tmp_path, name, array):
    path = tmp_path / name
    np.save(path, array)
    return path


def _nan_images():
    x = galaxies(6)
    x[4, 2, 2] = np.nan
    return x


BAD_DATA = {
    "ndim": (np.zeros((8, 8), np.float32), "add a leading axis"),
    "nan": (_nan_images(), r"1 NaN/inf pixel\(s\) in image\(s\) 4"),
    "empty": (np.zeros((0, 8, 8), np.float32), "no images"),
    "h6": (np.zeros((3, 6, 8), np.float32), "not divisible by 4"),
}


@pytest.mark.parametrize("case", sorted(BAD_DATA))
def test_bad_training_data_is_one_error_line_and_writes_nothing(tmp_path, capsys, case):
    array, pattern = BAD_DATA[case]
    data = _bad_npy(tmp_path, "bad.npy", array)
    code, out, err = run(["train", data, "--out", tmp_path / "model", "--max-steps", "1", *TINY], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: bad.npy: "), err
    assert __import__("re").search(pattern, lines[0])
    assert "Traceback" not in err
    assert sorted(os.listdir(tmp_path)) == ["bad.npy"]


@pytest.mark.parametrize("case", sorted(BAD_DATA))
def test_bad_scoring_data_is_one_error_line_and_writes_nothing(trained, tmp_path, capsys, case):
    array, pattern = BAD_DATA[case]
    data = _bad_npy(tmp_path, "bad.npy", array)
    code, out, err = run(["score", data, "--model", trained / "model", "--out", tmp_path / "s.csv",
                          "--maps", tmp_path / "m.h5", "--quiet"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert __import__("re").search(pattern, err)
    assert sorted(os.listdir(tmp_path)) == ["bad.npy"]


def _copy_model(trained, tmp_path):
    import shutil

    dst = tmp_path / "model"
    shutil.copytree(trained / "model", dst, ignore=shutil.ignore_patterns("checkpoints", "logs"))
    return dst


def _tamper(model):
    weights = model / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x55
    weights.write_bytes(bytes(data))


def _newer(model):
    meta = json.loads((model / "model.json").read_text())
    meta["format_version"] = 99
    (model / "model.json").write_text(json.dumps(meta))


BAD_MODELS = {
    "no-json": (lambda m: (m / "model.json").unlink(), "model.json: missing"),
    "no-weights": (lambda m: (m / "weights.safetensors").unlink(), "weights.safetensors: missing"),
    "tampered": (_tamper, "checksum does not match"),
    "newer": (_newer, "newer morphllr"),
}


@pytest.mark.parametrize("case", sorted(BAD_MODELS))
def test_bad_model_folders_are_one_error_line(trained, tmp_path, capsys, case):
    damage, pattern = BAD_MODELS[case]
    model = _copy_model(trained, tmp_path)
    damage(model)
    code, out, err = run(["score", trained / "train.npy", "--model", model, "--out", tmp_path / "s.csv",
                          "--quiet"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and pattern in err, err
    assert not (tmp_path / "s.csv").exists()


def test_refuses_to_overwrite_a_model_and_bad_options(trained, tmp_path, capsys):
    code, _, err = run(["train", trained / "train.npy", "--out", trained / "model", "--max-steps", "1", *TINY],
                       capsys)
    assert code == 2 and "--overwrite" in err
    code, _, err = run(["train", trained / "train.npy", "--out", tmp_path / "m", *TINY, "--augment", "zoom"],
                       capsys)
    assert code == 2 and "--augment" in err and not (tmp_path / "m").exists()
    code, _, err = run(["train", trained / "train.npy", "--out", tmp_path / "m", "--head", "poisson", *TINY],
                       capsys)
    assert code == 2 and "poisson" in err and not (tmp_path / "m").exists()


def test_help_texts_explain_units_and_outputs(capsys):
    code, out, _ = run(["score", "--help"], capsys)
    assert code == 0 and "nats" in out and "bits_per_dim" in out
    code, out, _ = run(["train", "--help"], capsys)
    assert code == 0 and "bits per dimension" in out and "--resume" in out


def test_real_process_exits_2_without_traceback(tmp_path):
    data = _bad_npy(tmp_path, "bad.npy", _nan_images())
    env = {**os.environ, "MORPHLLR_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "morphllr", "train", str(data), "--out", str(tmp_path / "m"),
                           "--preset", "tiny"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: bad.npy:") and "Traceback" not in proc.stderr
    assert not (tmp_path / "m").exists()
