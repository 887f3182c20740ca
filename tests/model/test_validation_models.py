"""The shipped Galaxy Zoo 2 validation models (validation/models/) load and score real GZ2 JPEGs.

The JPEGs go through ``morphllr prepare DIR --like validation/models/obs`` (the un-stretch + recipe the
models were trained with), so this also checks that a user can prepare their own cutouts like the models'
training data.  Uses held-out (validation-split) galaxies only.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "validation" / "models"
N_PER_CLASS = 6


@pytest.fixture(scope="module")
def models():
    """The two shipped validation models (skip when they have not been trained/shipped yet)."""
    if not (MODELS / "obs" / "model.json").is_file() or not (MODELS / "arch" / "model.json").is_file():
        pytest.skip("validation/models/{obs,arch} not present; run validation/gz2.sh")
    from morphllr import load_model

    return load_model(MODELS / "obs"), load_model(MODELS / "arch")


@pytest.fixture(scope="module")
def gz2_val_set(shared_data, tmp_path_factory) -> Path:
    """A few held-out GZ2 JPEGs of each class, prepared with ``morphllr prepare --like validation/models/obs``."""
    root = shared_data / "gz2_sdss_jpeg"
    split = REPO / "validation" / "split.csv"
    if not root.is_dir() or not split.is_file():
        pytest.skip("gz2_sdss_jpeg data or validation/split.csv missing")
    rows = [r for r in csv.DictReader(split.open()) if r["split"] == "val"]
    folder = tmp_path_factory.mktemp("gz2_jpegs")
    for label in ("spiral", "non_spiral"):
        for r in [r for r in rows if r["label"] == label][:N_PER_CLASS]:
            (folder / Path(r["file"]).name).symlink_to(root / r["file"])
    out = folder.parent / "gz2_val.h5"
    proc = subprocess.run([sys.executable, "-m", "morphllr", "prepare", str(folder), "--like", str(MODELS / "obs"),
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def test_models_share_the_gz2_recipe(models):
    obs, arch = models
    assert obs.preprocessing == arch.preprocessing
    assert obs.preprocessing["name"] == "gz2_linear"
    assert obs.config.height == obs.config.width == 32


def test_models_score_held_out_gz2_jpegs(models, gz2_val_set):
    from morphllr import log_likelihood
    from morphllr.data.imageset import ImageSet
    from morphllr.data.preprocess import check_compatible

    obs, arch = models
    with ImageSet.open(gz2_val_set) as s:
        assert len(s) == 2 * N_PER_CLASS
        check_compatible(obs.preprocessing, s.preprocessing, str(gz2_val_set))
        images = np.asarray(s.images[:])
    logp_obs = log_likelihood(obs, images, bf16=False, threads=1)
    logp_arch = log_likelihood(arch, images, bf16=False, threads=1)
    assert np.all(np.isfinite(logp_obs)) and np.all(np.isfinite(logp_arch))
    # per-pixel maps add up to the per-image numbers
    maps = log_likelihood(obs, images[:2], per_pixel=True, bf16=False, threads=1)
    np.testing.assert_allclose(maps.sum(axis=(1, 2)), logp_obs[:2], rtol=1e-4, atol=1e-2)
    # the real-galaxy model prefers held-out real galaxies over the archetype model (the method's premise)
    assert np.mean(logp_obs - logp_arch) > 0


def test_shipped_seed_ensembles_load_and_their_seed0_is_the_shipped_pair():
    """validation/models/ensemble/{obs,arch}: 3 members of one recipe and data; seed0 = validation/models/{obs,arch}."""
    from morphllr.data.inputs import file_sha256
    from morphllr.model.ensemble import load_ensemble
    from morphllr.model.io import read_meta

    root = Path(__file__).resolve().parents[2] / "validation" / "models"
    for side in ("obs", "arch"):
        ensemble = load_ensemble(root / "ensemble" / side)
        assert ensemble.names == ["seed0", "seed1", "seed2"]
        assert file_sha256(root / "ensemble" / side / "seed0" / "weights.safetensors") == file_sha256(
            root / side / "weights.safetensors")
        metas = [read_meta(root / "ensemble" / side / name) for name in ensemble.names]
        assert len({m["data_fingerprint"] for m in metas}) == 1 and metas[0]["data_fingerprint"] == read_meta(
            root / side)["data_fingerprint"]
        assert [m["extra"]["training"]["seed"] for m in metas] == [0, 1, 2]
