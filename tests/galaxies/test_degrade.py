"""`morphllr degrade`, `morphllr subset` and `morphllr check` (issue 15): controlled copies of a set, label subsets,
and a model checked against a set's provenance."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from clitools import cli, one_error
from morphllr.galaxies.degrade import degrade_flux, degrade_set, lower_resolution
from morphllr.errors import MorphllrError
from morphllr.data.imageset import ImageSet
from morphllr.data.prepare import write_flux_set
from morphllr.data.preprocess import Preprocessing
from morphllr.data.segmentation import background_stats

REPO = Path(__file__).resolve().parents[2]
GZ2 = REPO / "runs" / "gz2"
SIGMA = 3.0


@pytest.fixture(scope="module")
def real(tmp_path_factory) -> Path:
    """8 galaxies with structure (a bar of clumps) in white sky noise, gz2_linear recipe, labels and Sérsic radii."""
    rng = np.random.default_rng(0)
    n, side = 8, 64
    yy, xx = np.indices((side, side))
    c = (side - 1) / 2
    flux = np.empty((n, 1, side, side), np.float32)
    for i in range(n):
        r = np.hypot(yy - c, xx - c)
        clumps = sum(60 * np.exp(-((yy - c - dy) ** 2 + (xx - c - dx) ** 2) / 2.0) for dy, dx in ((0, 5), (3, -4), (-5, 1)))
        flux[i, 0] = 300 * np.exp(-r / 4.0) + clumps + rng.normal(0, SIGMA, (side, side))
    catalog = {"id": [f"g{i}" for i in range(n)], "label": ["spiral" if i % 2 else "non_spiral" for i in range(n)],
               "sersic_re_pix": [5.0, 6.0, np.nan, 4.5, 5.5, 7.0, 3.0, 5.0],
               "sersic_psf_fwhm_arcsec": np.full(n, 1.4)}
    path = tmp_path_factory.mktemp("degrade") / "real.h5"
    write_flux_set(path, flux, catalog, Preprocessing.preset("gz2_linear"), attrs={"origin": "test"})
    return path


def sky_rms(flux: np.ndarray) -> np.ndarray:
    return np.array([background_stats(f[0])[1] for f in flux])


@pytest.mark.parametrize("args, operation", [(["--psf-broaden", "2"], "psf_broaden"),
                                             (["--smooth-centre"], "smooth_centre"),
                                             (["--resolution", "4"], "resolution")])
def test_each_degradation_keeps_the_noise_and_the_recipe_and_is_recorded(real, tmp_path, capsys, args, operation):
    out = tmp_path / "copy.h5"
    code, text = cli(["degrade", real, *args, "--seed", "3", "--out", out], capsys)
    assert code == 0, text
    with ImageSet.open(real) as a, ImageSet.open(out) as b:
        assert b.preprocessing["unstretch"] == "asinh" and b.preprocessing["name"] == "gz2_linear"
        record = json.loads(b.attrs["degrade"])
        assert [r["operation"] for r in record] == [operation] and record[0]["seed"] == 3
        assert record[0]["source_images_sha256"] == a.attrs["images_sha256"]
        assert b.attrs["origin"] == "test"  # the source's own records are carried
        before, after = np.asarray(a.flux[:]), np.asarray(b.flux[:])
        assert list(b.catalog["id"]) == list(a.catalog["id"])
        assert np.all(b.catalog["degrade_noise_sigma"] > 0)
        # the sky noise is the original's again, the structure is not
        np.testing.assert_allclose(sky_rms(after), sky_rms(before), rtol=0.15)
        centre = (slice(None), 0, slice(24, 40), slice(24, 40))
        assert np.abs(after[centre] - before[centre]).mean() > SIGMA
        # about the same total light (the smoothed centre's blend loses some of the light the blur spreads out)
        np.testing.assert_allclose(after.sum(axis=(1, 2, 3)), before.sum(axis=(1, 2, 3)),
                                   rtol=0.15 if operation == "smooth_centre" else 0.05)
    if operation == "psf_broaden":
        assert record[0]["psf_fwhm_from"] == "sersic_psf_fwhm_arcsec"
        assert record[0]["kernel_sigma_pix"]["min"] == pytest.approx(np.sqrt(3) * 1.4 / 1.0 / 2.3548)
    if operation == "smooth_centre":
        assert record[0]["n_fallback"] == 1  # the NaN radius
    # seeded: the same call gives the same pixels, another seed other noise
    again, other = tmp_path / "again.h5", tmp_path / "other.h5"
    assert cli(["degrade", real, *args, "--seed", "3", "--out", again], capsys)[0] == 0
    assert cli(["degrade", real, *args, "--seed", "4", "--out", other], capsys)[0] == 0
    with ImageSet.open(out) as a, ImageSet.open(again) as b, ImageSet.open(other) as c:
        assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_degradations_chain_and_are_all_recorded(real, tmp_path):
    first, second = tmp_path / "a.h5", tmp_path / "b.h5"
    degrade_set(real, first, resolution=2, seed=1)
    degrade_set(first, second, psf_broaden=1.5, psf_fwhm=1.2, seed=2)
    with ImageSet.open(second) as s:
        steps = json.loads(s.attrs["degrade"])
    assert [(r["operation"], r["source"]) for r in steps] == [("resolution", "real.h5"), ("psf_broaden", "a.h5")]
    assert steps[1]["factor"] == 1.5 and steps[1]["psf_fwhm_from"] == "--psf-fwhm"


def test_resolution_is_block_means_and_back(monkeypatch):
    from morphllr.galaxies import degrade

    monkeypatch.setattr(degrade, "restore_noise", lambda changed, original, rng: (changed, 0.0))
    img = np.arange(36, dtype=np.float32).reshape(6, 6)
    out, _ = lower_resolution(img, 2, np.random.default_rng(0))
    np.testing.assert_allclose(out[:2, :2], img[:2, :2].mean())
    np.testing.assert_allclose(out.reshape(3, 2, 3, 2).std(axis=(1, 3)), 0, atol=1e-12)


def test_refusals_are_one_line_and_write_nothing(real, tmp_path, capsys):
    out = tmp_path / "o.h5"
    for args, fragments in (([], ("exactly one of",)),
                            (["--psf-broaden", "2", "--smooth-centre"], ("exactly one of", "chain calls")),
                            (["--psf-broaden", "1"], ("--psf-broaden 1.0", "above 1")),
                            (["--smooth-centre", "--psf-fwhm", "1.4"], ("--psf-fwhm", "only --psf-broaden")),
                            (["--resolution", "1"], ("--resolution",))):
        code, text = cli(["degrade", real, *args, "--out", out], capsys)
        one_error(text, *fragments)
        assert code == 2 and not out.exists()
    bare = tmp_path / "bare.h5"
    write_flux_set(bare, np.ones((2, 1, 64, 64), np.float32) + np.random.default_rng(0).normal(0, 1, (2, 1, 64, 64)),
                   {"id": ["a", "b"]}, Preprocessing.preset("gz2_linear"))
    code, text = cli(["degrade", bare, "--smooth-centre", "--out", out], capsys)
    one_error(text, "bare.h5", "sersic_re_pix", "fit-sersic")
    assert code == 2 and not out.exists()
    code, text = cli(["degrade", bare, "--psf-broaden", "2", "--out", out], capsys)
    one_error(text, "bare.h5", "--psf-fwhm")
    assert code == 2 and not out.exists()
    code, text = cli(["degrade", real, "--smooth-centre", "--out", real, "--overwrite"], capsys)
    assert code == 2 and "error:" in text


def test_subset_copies_rows_exactly(real, tmp_path, capsys):
    out = tmp_path / "spirals.h5"
    code, text = cli(["subset", real, "--where", "label == spiral", "--out", out], capsys)
    assert code == 0 and "4 of the 8 images" in text, text
    with ImageSet.open(real) as a, ImageSet.open(out) as b:
        keep = np.asarray(a.catalog["label"]) == "spiral"
        np.testing.assert_array_equal(b.images[:], np.asarray(a.images[:])[keep])
        np.testing.assert_array_equal(b.flux[:], np.asarray(a.flux[:])[keep])
        np.testing.assert_array_equal(b.segmap[:], np.asarray(a.segmap[:])[keep])
        assert b.preprocessing == a.preprocessing and b.attrs["origin"] == "test"
        assert json.loads(b.attrs["subset"])["where"] == ["label == spiral"]
    both = tmp_path / "both.h5"
    code, text = cli(["subset", real, "--where", "label == 'spiral'", "--where", "sersic_re_pix >= 5.5",
                      "--out", both], capsys)
    assert code == 0, text
    with ImageSet.open(both) as b:
        assert list(b.catalog["id"]) == ["g1", "g5"]
    for where, fragments in (("label ~ spiral", ("COLUMN OP VALUE",)), ("colour == red", ("no column 'colour'",)),
                             ("label < b", ("only == and !=",)), ("sersic_re_pix > big", ("not one",)),
                             ("label == elliptical", ("no image",))):
        code, text = cli(["subset", real, "--where", where, "--out", tmp_path / "x.h5"], capsys)
        one_error(text, *fragments)
        assert code == 2 and not (tmp_path / "x.h5").exists()


def test_check_a_model_against_sets(real, tmp_path, capsys):
    import torch

    from morphllr.model.pixelcnn import PixelCNN, PixelCNNConfig
    from morphllr.model.io import save_model

    with ImageSet.open(real) as s:
        prep, fingerprint = s.preprocessing, s.fingerprint()
    torch.manual_seed(0)
    cfg = PixelCNNConfig(in_channels=1, height=32, width=32, nr_resnet=1, nr_filters=8, head="gaussian")
    model = save_model(PixelCNN(cfg), tmp_path / "m", preprocessing=prep, data_fingerprint=fingerprint, metrics={})
    code, text = cli(["check", model, real, "--trained-on"], capsys)
    assert code == 0 and "compatible" in text and "training set" in text, text
    copy = tmp_path / "copy.h5"
    degrade_set(real, copy, resolution=2)
    code, text = cli(["check", model, copy], capsys)
    assert code == 0 and "training set" not in text, text
    code, text = cli(["check", model, copy, "--trained-on"], capsys)
    one_error(text, "copy.h5", "is not the set")
    assert code == 2
    # another recipe: the differing keys, one line
    other = tmp_path / "other.h5"
    write_flux_set(other, np.random.default_rng(0).normal(0, 1, (2, 1, 128, 128)).astype(np.float32),
                   {"id": ["a", "b"]}, Preprocessing.preset("zanisi21"))
    code, text = cli(["check", model, other], capsys)
    one_error(text, "prepared differently", "stretch_scale", "--like")
    assert code == 2
    # the ensemble shipped with the package takes the same check
    code, text = cli(["check", REPO / "src" / "morphllr" / "pretrained" / "obs", real], capsys)
    one_error(text, "prepared differently")
    assert code == 2
    code, text = cli(["check", tmp_path / "nope", real], capsys)
    one_error(text, "nope", "not found")


@pytest.mark.skipif(not (GZ2 / "val_psf2x.h5").is_file(), reason="runs/gz2 (validation/gz2.sh output, not in git) absent")
def test_the_gz2_copies_are_reproduced_bit_for_bit(tmp_path):
    """The old validation/gz2.sh step degrade drew the PSF copy's noise from default_rng(7) and then the
    smoothed-centre copy's from the same stream: the library's functions, so called, give both exactly."""
    with ImageSet.open(GZ2 / "val_real.h5") as s:
        flux, catalog = np.asarray(s.flux[:]), s.catalog
    out = tmp_path / "psf2x.h5"
    degrade_set(GZ2 / "val_real.h5", out, psf_broaden=2.0, psf_fwhm=1.4, seed=7)
    with ImageSet.open(out) as a, ImageSet.open(GZ2 / "val_psf2x.h5") as b:
        assert a.fingerprint() == b.fingerprint()
    rng = np.random.default_rng(7)
    degrade_flux(flux, "psf_broaden", rng, sigmas=np.full(len(flux), np.sqrt(3.0) * 1.4 / 1.0 / 2.3548))
    centre, _ = degrade_flux(flux, "smooth_centre", rng, re_pix=np.asarray(catalog["sersic_re_pix"], float))
    with ImageSet.open(GZ2 / "val_smooth_centre.h5") as b:
        np.testing.assert_array_equal(centre, b.flux[:])


def test_degrade_flux_refuses_an_unknown_operation():
    with pytest.raises(MorphllrError, match="unknown operation"):
        degrade_flux(np.zeros((1, 1, 8, 8), np.float32), "blur", np.random.default_rng(0))
