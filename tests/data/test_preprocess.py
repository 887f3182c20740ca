"""Preprocessing recipes: presets, serialisation, the model-side map and the input-side cut."""

from __future__ import annotations

import numpy as np
import pytest

from morphllr.errors import MorphllrError
from morphllr.data.preprocess import (
    Preprocessing,
    as_preprocessing,
    check_compatible,
    preset_names,
)
from morphllr.data.geometry import resample_to_scale


@pytest.fixture
def zanisi():
    return Preprocessing.preset("zanisi21")


def test_shipped_presets_load():
    assert {"zanisi21", "none", "jpeg8bit"} <= set(preset_names())
    for name in preset_names():
        assert Preprocessing.preset(name).name == name


def test_zanisi21_is_the_paper_recipe(zanisi):
    assert (zanisi.cutout, zanisi.crop, zanisi.zoom, zanisi.pixel_scale) == (128, 64, 0.5, 0.396)
    assert zanisi.stretch == "arcsinh" and zanisi.stretch_scale == 1000 and zanisi.clip_hi == 1
    assert zanisi.model_shape((128, 128)) == (32, 32)


def test_flux_to_model_is_block_mean_then_arcsinh(zanisi):
    rng = np.random.default_rng(0)
    flux = rng.normal(0, 300, (3, 2, 128, 128)).astype(np.float32)
    out = zanisi.flux_to_model(flux)
    assert out.shape == (3, 2, 32, 32) and out.dtype == np.float32
    crop = flux[:, :, 32:96, 32:96].astype(np.float64)
    block = crop.reshape(3, 2, 32, 2, 32, 2).mean(axis=(3, 5))
    np.testing.assert_allclose(out, np.clip(np.arcsinh(block / 1000), -1, 1), atol=1e-5)


def test_flux_to_model_clips_and_accepts_single_images(zanisi):
    bright = np.full((128, 128), 1e7, np.float32)
    assert zanisi.flux_to_model(bright).shape == (32, 32)
    assert np.all(zanisi.flux_to_model(bright) == 1.0)
    assert np.all(zanisi.flux_to_model(-bright[None]) == -1.0)


def test_none_preset_is_identity():
    x = np.random.default_rng(1).normal(size=(4, 1, 16, 16)).astype(np.float32)
    np.testing.assert_array_equal(Preprocessing.preset("none").flux_to_model(x), x)


def test_quantise_8bit_gives_integers_in_range(zanisi):
    prep = zanisi.replace(quantise_8bit=True)
    out = prep.flux_to_model(np.random.default_rng(2).normal(0, 2000, (2, 1, 128, 128)))
    assert out.min() >= 0 and out.max() <= 255
    np.testing.assert_array_equal(out, np.round(out))


def test_non_integer_zoom_resamples(zanisi):
    prep = zanisi.replace(zoom=0.75, stretch="none", clip_lo=None, clip_hi=None)
    flux = np.full((1, 1, 128, 128), 7.0, np.float32)
    out = prep.flux_to_model(flux)
    assert out.shape == (1, 1, 48, 48)
    np.testing.assert_allclose(out, 7.0, rtol=1e-5)  # surface brightness preserved


def test_dict_roundtrip_and_fingerprint(zanisi):
    again = Preprocessing.from_dict(zanisi.to_dict())
    assert again == zanisi and again.fingerprint() == zanisi.fingerprint()
    assert zanisi.replace(zoom=0.25).fingerprint() != zanisi.fingerprint()
    assert as_preprocessing(zanisi.to_dict()) == zanisi
    assert as_preprocessing(None).name == "none"


def test_from_file_toml_yaml_json(tmp_path):
    (tmp_path / "mine.toml").write_text('[preprocessing]\ncutout = 96\ncrop = 64\nzoom = 0.5\nstretch = "linear"\n')
    (tmp_path / "mine.yaml").write_text("cutout: 96\ncrop: 64\nzoom: 0.5\nstretch: linear\n")
    (tmp_path / "mine.json").write_text('{"cutout": 96, "crop": 64, "zoom": 0.5, "stretch": "linear"}')
    loaded = [Preprocessing.preset(str(tmp_path / f"mine.{ext}")) for ext in ("toml", "yaml", "json")]
    assert all(p.cutout == 96 and p.stretch == "linear" and p.name == "mine" for p in loaded)


@pytest.mark.parametrize(
    "text, fragment",
    [("cutout = 96\nbogus = 1\n", "bogus"), ('stretch = "log"\n', "stretch"), ("cutout = 32\ncrop = 64\n", "crop"),
     ("quantise_8bit = true\n", "quantise_8bit"), ('units = "nanomaggies"\n', "zero_point"), ("cutout = [", "parse")],
)
def test_bad_recipe_files_name_the_file(tmp_path, text, fragment):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(MorphllrError, match=fragment):
        Preprocessing.from_file(path)


def test_unknown_preset_and_missing_file():
    with pytest.raises(MorphllrError, match="unknown preset"):
        Preprocessing.preset("nope")
    with pytest.raises(MorphllrError, match="not found"):
        Preprocessing.preset("nope.toml")


def test_check_compatible(zanisi):
    check_compatible(zanisi.to_dict(), zanisi.replace(units="nanomaggies", sky="estimate").to_dict(), "m vs s")
    check_compatible(zanisi.to_dict(), {}, "bare arrays are not checked")
    with pytest.raises(MorphllrError, match=r"zoom: 0.5 vs 0.25") as info:
        check_compatible(zanisi.to_dict(), zanisi.replace(zoom=0.25).to_dict(), "model obs vs set sims.h5")
    assert "model obs vs set sims.h5" in str(info.value) and "--like" in str(info.value)


def test_unit_conversions(zanisi):
    one_nmgy = zanisi.to_flux(np.ones((1, 2, 2)), "nanomaggies")
    np.testing.assert_allclose(one_nmgy, 10 ** (0.4 * (zanisi.zero_point - 22.5)), rtol=1e-5)
    mu = np.array([[[zanisi.zero_point, np.inf]]])
    flux = zanisi.to_flux(mu, "mag_arcsec2", input_pixel_scale=0.5)
    np.testing.assert_allclose(flux[0, 0], [0.25, 0.0])  # 1 unit/arcsec^2 over 0.25 arcsec^2; empty -> 0


def _galaxy_frame(size, cx, cy, noise=5.0, amp=800.0, seed=0):
    yy, xx = np.indices((size, size))
    rng = np.random.default_rng(seed)
    return amp * np.exp(-np.hypot(xx - cx, yy - cy) / 4.0) + rng.normal(0, noise, (size, size))


def test_cut_centres_on_the_galaxy(zanisi):
    frame = _galaxy_frame(200, cx=120, cy=85)
    flux, info = zanisi.cut(frame)
    assert flux.shape == (1, 128, 128)
    peak = np.unravel_index(np.argmax(flux[0]), flux[0].shape)
    assert abs(peak[0] - 64) <= 1 and abs(peak[1] - 64) <= 1
    assert abs(info["center_x"] - 120) < 1 and abs(info["center_y"] - 85) < 1


def test_cut_subtracts_an_estimated_sky(zanisi):
    frame = _galaxy_frame(128, 63.5, 63.5) + 250.0
    flux, info = zanisi.replace(sky="estimate").cut(frame)
    assert abs(info["sky"] - 250) < 2
    assert abs(np.median(flux[0, :20, :20])) < 2


def test_cut_given_sky(zanisi):
    flux, info = zanisi.replace(sky="given", sky_value=100.0).cut(np.full((128, 128), 130.0))
    np.testing.assert_allclose(flux, 30.0)


def test_nonfinite_pixels_masked_or_refused(zanisi):
    frame = _galaxy_frame(128, 63.5, 63.5)
    frame[3:5, 3:6] = np.nan
    flux, info = zanisi.cut(frame, source="gal.fits")
    assert info["n_nonfinite"] == 6 and np.isfinite(flux).all()
    with pytest.raises(MorphllrError, match=r"gal.fits: 6 NaN/inf"):
        zanisi.replace(nonfinite="fail").cut(frame, source="gal.fits")


def test_small_image_is_padded_unless_padding_would_dominate(zanisi):
    """An image smaller than the cutout is an edge galaxy (sky-noise padding, flagged); refused only when more
    than half the cutout would lie beyond it."""
    rng = np.random.default_rng(0)
    flux, info = zanisi.cut(rng.normal(0, 5, (100, 140)), source="small.fits")
    assert flux.shape == (1, 128, 128) and info["edge_padded"] == pytest.approx(28 / 128)
    assert info["zero_padded"] == 0 and info["outside"][:14].all() and not info["outside"][14:114].any()
    assert flux[0][info["outside"]].std() == pytest.approx(5, rel=0.1)
    with pytest.raises(MorphllrError, match=r"tiny.fits: 61% of the 128x128 cutout .* beyond the 50x140 image.*"
                                            r"smaller cutout.*--edge refuse"):
        zanisi.cut(rng.normal(0, 5, (50, 140)), source="tiny.fits")
    # --edge refuse: no refusal here (the galaxy is dropped by prepare)
    assert zanisi.replace(edge="refuse").cut(rng.normal(0, 5, (50, 140)), source="t")[1]["edge_padded"] > 0.5


def test_resample_to_scale_conserves_flux():
    rng = np.random.default_rng(3)
    flux = rng.uniform(0, 10, (1, 120, 120)).astype(np.float32)
    coarse = resample_to_scale(flux, 0.2, 0.396)
    assert coarse.shape == (1, 61, 61)
    assert abs(coarse.sum() / flux.sum() - 1) < 0.03
    fine = resample_to_scale(flux, 0.396, 0.2)
    assert abs(fine.sum() / flux.sum() - 1) < 0.03
