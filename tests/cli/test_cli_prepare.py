"""`morphllr prepare` end to end: FITS folder + catalogue, --like, errors as one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from typer.testing import CliRunner

from morphllr.cli import app, main
from morphllr.data.imageset import ImageSet
from morphllr.data.preprocess import Preprocessing


def galaxy(size, seed, amp=900.0, dx=0):
    yy, xx = np.indices((size, size))
    rng = np.random.default_rng(seed)
    return (amp * np.exp(-np.hypot(xx - size / 2 - dx, yy - size / 2) / 4) + rng.normal(0, 5, (size, size))).astype(
        np.float32
    )


@pytest.fixture
def fits_folder(tmp_path):
    folder = tmp_path / "cutouts"
    folder.mkdir()
    for i in range(5):
        fits.PrimaryHDU(galaxy(150, i, dx=3 * i)).writeto(folder / f"gal{i}.fits")
    return folder


def run(*args):
    """Run the CLI as a user would; returns (exit code, combined output)."""
    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=True)
    if result.exception and not isinstance(result.exception, SystemExit):
        from morphllr.errors import MorphllrError

        assert isinstance(result.exception, MorphllrError), result.exception
        return 2, str(result.exception)
    return result.exit_code, result.output


def test_prepare_fits_folder_with_catalog(tmp_path, fits_folder):
    Table({"id": ["gal0", "gal1", "gal3", "other"], "mass": [10.1, 10.2, 10.4, 9.0]}).write(tmp_path / "cat.csv")
    out = tmp_path / "obs.h5"
    code, output = run("prepare", fits_folder, "--out", out, "--catalog", tmp_path / "cat.csv", "--workers", 1)
    assert code == 0, output
    assert "5 images" in output and "3 image(s) matched" in output and "2 image(s) without a row" in output
    with ImageSet.open(out) as s:
        assert s.shape == (5, 1, 32, 32) and s.flux.shape == (5, 1, 128, 128)
        assert s.segmap.shape == (5, 128, 128) and s.segmap_model.shape == (5, 32, 32)
        cat = s.catalog
        assert list(cat["id"]) == [f"gal{i}" for i in range(5)]
        assert cat["mass"][3] == pytest.approx(10.4) and cat["mass"].mask[2]
        assert np.all(cat["central_found"]) and np.all(cat["sky_sigma"] > 3) and np.all(cat["sky_sigma"] < 7)
        # centred: every galaxy's peak sits in the middle of its flux cutout despite the shifts
        peaks = [np.unravel_index(np.argmax(f[0]), f[0].shape) for f in s.flux[:]]
        assert all(abs(r - 64) <= 1 and abs(c - 64) <= 1 for r, c in peaks)
        # the preset, with what the readers know: FITS pixels are calibrated flux
        assert s.preprocessing == Preprocessing.preset("zanisi21").replace(input_kind="flux",
                                                                           read={"segmentation": "sep"}).to_dict()
        np.testing.assert_allclose(s.images[:], Preprocessing.preset("zanisi21").flux_to_model(s.flux[:]), atol=1e-6)


def test_like_reuses_a_sets_or_models_recipe(tmp_path, fits_folder):
    recipe = tmp_path / "r.toml"
    recipe.write_text('cutout = 96\ncrop = 64\nzoom = 0.25\nstretch = "linear"\nstretch_scale = 100.0\n')
    first, second, third = tmp_path / "a.h5", tmp_path / "b.h5", tmp_path / "c.h5"
    assert run("prepare", fits_folder, "--out", first, "--preset", recipe)[0] == 0
    assert run("prepare", fits_folder, "--out", second, "--like", first)[0] == 0
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "model.json").write_text(json.dumps({"preprocessing": ImageSet.open(first).preprocessing}))
    assert run("prepare", fits_folder, "--out", third, "--like", model_dir)[0] == 0
    sets = [ImageSet.open(p) for p in (first, second, third)]
    assert sets[0].shape == (5, 1, 16, 16)
    assert sets[0].preprocessing == sets[1].preprocessing == sets[2].preprocessing
    assert sets[0].fingerprint() == sets[1].fingerprint() == sets[2].fingerprint()


def test_workers_give_the_same_set(tmp_path, fits_folder):
    assert run("prepare", fits_folder, "--out", tmp_path / "one.h5", "--workers", 1)[0] == 0
    assert run("prepare", fits_folder, "--out", tmp_path / "two.h5", "--workers", 2)[0] == 0
    assert ImageSet.open(tmp_path / "one.h5").fingerprint() == ImageSet.open(tmp_path / "two.h5").fingerprint()


def test_nonfinite_pixels_are_reported(tmp_path):
    folder = tmp_path / "nan"
    folder.mkdir()
    data = galaxy(128, 0)
    data[:2, :5] = np.nan
    fits.PrimaryHDU(data).writeto(folder / "hole.fits")
    code, output = run("prepare", folder, "--out", tmp_path / "n.h5")
    assert code == 0 and "10 NaN/inf pixel(s) in 1 image(s)" in output


def test_npy_with_none_preset(tmp_path):
    stack = np.random.default_rng(0).uniform(size=(6, 2, 16, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", stack)
    assert run("prepare", tmp_path / "x.npy", "--preset", "none", "--out", tmp_path / "x.h5")[0] == 0
    with ImageSet.open(tmp_path / "x.h5") as s:
        np.testing.assert_array_equal(s.images[:], stack)
        assert list(s.catalog["id"]) == [f"x:{i}" for i in range(6)]


@pytest.mark.parametrize(
    "make, args, fragment",
    [
        (lambda p: (p / "empty").mkdir(), ["empty"], "folder holds no"),
        (lambda p: fits.PrimaryHDU(np.zeros((50, 50), np.float32)).writeto(p / "tiny.fits"), ["tiny.fits"],
         "tiny.fits.*85% of the 128x128 cutout.*beyond the 50x50 image.*smaller cutout"),
        (lambda p: (p / "bad.fits").write_bytes(b"SIMPLE  =    garbage"), ["bad.fits"], "bad.fits"),
        (lambda p: None, ["missing.fits"], "no such file"),
        (lambda p: fits.PrimaryHDU(np.zeros((128, 128), np.float32)).writeto(p / "z.fits"),
         ["z.fits", "--preset", "fancy"], "unknown preset"),
        (lambda p: fits.PrimaryHDU(np.zeros((128, 128), np.float32)).writeto(p / "z.fits"),
         ["z.fits", "--like", "nowhere"], "--like nowhere"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, monkeypatch, capsys, make, args, fragment):
    monkeypatch.chdir(tmp_path)
    make(tmp_path)
    with pytest.raises(SystemExit) as stop:
        main(["prepare", *args, "--out", "o.h5"])
    assert stop.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(errors) == 1  # one line, no traceback
    err = errors[0]
    import re

    assert re.search(fragment, err), err
    assert not (tmp_path / "o.h5").exists() and not list(tmp_path.glob(".o.h5*"))


def test_refuses_to_overwrite_without_flag(tmp_path, fits_folder):
    out = tmp_path / "o.h5"
    assert run("prepare", fits_folder, "--out", out)[0] == 0
    code, output = run("prepare", fits_folder, "--out", out)
    assert code == 2 and "--overwrite" in output
    assert run("prepare", fits_folder, "--out", out, "--overwrite")[0] == 0


def test_help_teaches_units_and_presets():
    output = CliRunner().invoke(app, ["prepare", "--help"]).output
    for word in ("zanisi21", "arcsec", "--like", "mag/arcsec^2", "--catalog"):
        assert word in output


@pytest.mark.shared_data
def test_prepare_real_sdss_and_jpeg(shared_data, tmp_path):
    sdss = sorted((shared_data / "sdss_r_fits").glob("[in]*rss*.fits"))
    sdss = [p for p in sdss if "mask" not in p.name]
    code, output = run("prepare", *sdss, "--out", tmp_path / "sdss.h5")
    assert code == 0, output
    with ImageSet.open(tmp_path / "sdss.h5") as s:
        assert len(s) == 2 and np.all(s.catalog["central_found"])
        images = s.images[:]
        assert images.max() <= 1 and images.min() >= -1 and np.isfinite(images).all()
    jpegs = sorted((shared_data / "gz2_sdss_jpeg" / "train" / "spirals").glob("*.jpg"))[:8]
    code, output = run("prepare", *jpegs, "--preset", "jpeg8bit", "--out", tmp_path / "jpg.h5")
    assert code == 0, output
    with ImageSet.open(tmp_path / "jpg.h5") as s:
        assert s.shape == (8, 1, 32, 32) and s.catalog["central_found"].sum() >= 6
