"""Masks (issue 13 part 3): NAME_mask.fits pairs with NAME.fits, or --mask FILE_OR_DIR; masked pixels
take no part in segmentation, hold sky noise in the cutouts, and are stored as /mask and /mask_model."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from morphllr.data import files as readers
from clitools import cli, one_error
from morphllr.errors import MorphllrError
from morphllr.data.imageset import ImageSet
from morphllr.data.preprocess import Preprocessing
from morphllr.data.geometry import model_mask

SIGMA = 5.0
STAR = (100.0, 80.0)  # x, y of a bright star 20 px right of the galaxy


def scene(seed: int = 0, side: int = 160) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.indices((side, side))
    galaxy = 3000 * np.exp(-np.hypot(xx - 79.5, yy - 79.5) / 3.0)
    star = 20000 * np.exp(-0.5 * np.hypot(xx - STAR[0], yy - STAR[1]) ** 2 / 1.5**2)
    return (galaxy + star + rng.normal(0, SIGMA, (side, side))).astype(np.float32)


def star_mask(side: int = 160) -> np.ndarray:
    yy, xx = np.indices((side, side))
    return (np.hypot(xx - STAR[0], yy - STAR[1]) < 7).astype(np.int32)


@pytest.fixture()
def folder(tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    fits.PrimaryHDU(scene(1)).writeto(root / "g1.fits")
    fits.PrimaryHDU(star_mask()).writeto(root / "g1_mask.fits")
    fits.PrimaryHDU(scene(2)).writeto(root / "g2.fits")
    return root


# ---------------------------------------------------------------------- pairing
def test_masks_pair_with_their_images_from_folders_globs_and_names(folder):
    fits.PrimaryHDU(scene(3)).writeto(folder / "g3_masked.fits")  # an image: `_mask` must stand alone
    fits.PrimaryHDU(scene(4)).writeto(folder / "g4_cutout.fits")
    fits.PrimaryHDU(star_mask()).writeto(folder / "g4_mask_cutout.fits")  # the imfit examples' naming
    for given in ([folder], [str(folder / "*.fits")], sorted(folder.glob("*.fits"))):
        images, pairs = readers.expand_inputs_with_masks(given)
        assert [p.name for p in images] == ["g1.fits", "g2.fits", "g3_masked.fits", "g4_cutout.fits"]
        assert {i.name: m.name for i, m in pairs.items()} == {"g1.fits": "g1_mask.fits",
                                                              "g4_cutout.fits": "g4_mask_cutout.fits"}
    assert [p.name for p in readers.expand_inputs([str(folder / "*.fits")])] == [
        "g1.fits", "g2.fits", "g3_masked.fits", "g4_cutout.fits"]


def test_a_mask_without_its_image_is_refused(folder, tmp_path, capsys):
    out = tmp_path / "o.h5"
    code, text = cli(["prepare", folder / "g2.fits", folder / "g1_mask.fits", "--out", out], capsys)
    one_error(text, "g1_mask.fits", "g1.fits is not among the inputs", "--mask")
    assert code == 2 and not out.exists()


# ---------------------------------------------------------------------- preparing
def test_masked_pixels_are_left_out_filled_with_sky_and_stored(folder, tmp_path, capsys):
    out = tmp_path / "o.h5"
    code, text = cli(["prepare", folder, "--out", out, "--workers", "1"], capsys)
    assert code in (0, None), text
    assert "1 image file(s) paired with a mask" in text and "1 image(s) with masked pixels" in text
    prep = Preprocessing.preset("zanisi21")
    with ImageSet.open(out) as s:
        cat = s.catalog
        assert list(cat["id"]) == ["g1", "g2"] and s.preprocessing["read"] == {"mask": "paired NAME_mask files",
                                                               "segmentation": "sep"}
        mask = np.asarray(s.mask[:])
        assert mask.dtype == np.uint8 and mask.shape == (2, 128, 128) and not mask[1].any()
        # the star sits at cutout pixel (64 + 20, 64): the mask is the file's, cut to the same window
        x0, y0 = int(cat["cutout_x0"][0]), int(cat["cutout_y0"][0])
        assert np.array_equal(mask[0], star_mask()[y0:y0 + 128, x0:x0 + 128].astype(np.uint8))
        assert cat["masked_fraction"][0] == pytest.approx(mask[0].mean()) and cat["masked_fraction"][1] == 0
        assert np.array_equal(np.asarray(s.mask_model[:]), model_mask(mask, prep, rule="any"))
        # masked pixels hold the sky's own noise (not the star, not zeros); segmentation ignored them
        flux = np.asarray(s.flux[0, 0])
        inside = mask[0] == 1
        assert flux[inside].std() == pytest.approx(SIGMA, rel=0.25) and abs(flux[inside].mean()) < 2
        segmap = np.asarray(s.segmap[:])
        assert not segmap[0][inside].any()
        assert segmap[1][int(STAR[1]) - y0, int(STAR[0]) - x0] > 1  # unmasked: the star is a companion
        # and the model images are made from the filled flux
        assert np.allclose(s.images[0], prep.flux_to_model(s.flux[0:1])[0])


def test_mask_option_file_and_folder(folder, tmp_path, capsys):
    masks = tmp_path / "masks"
    masks.mkdir()
    fits.PrimaryHDU(star_mask()).writeto(masks / "g2_mask.fits")
    images = tmp_path / "images"
    images.mkdir()
    for name in ("g1", "g2"):
        (images / f"{name}.fits").write_bytes((folder / f"{name}.fits").read_bytes())
    out = tmp_path / "dir.h5"
    code, text = cli(["prepare", images, "--mask", masks, "--out", out], capsys)
    assert code in (0, None), text
    with ImageSet.open(out) as s:
        assert list(s.catalog["masked_fraction"] > 0) == [False, True]
    out = tmp_path / "file.h5"
    code, text = cli(["prepare", images / "g2.fits", "--mask", masks / "g2_mask.fits", "--out", out], capsys)
    assert code in (0, None), text
    with ImageSet.open(out) as s:
        assert s.catalog["masked_fraction"][0] > 0 and s.preprocessing["read"]["mask"].endswith("g2_mask.fits")
    # one 2-D mask for several images applies to each
    out = tmp_path / "common.h5"
    code, text = cli(["prepare", images, "--mask", masks / "g2_mask.fits", "--out", out], capsys)
    assert code in (0, None), text
    with ImageSet.open(out) as s:
        assert np.all(s.catalog["masked_fraction"] > 0)


def test_mask_faults_are_one_line_and_write_nothing(folder, tmp_path, capsys):
    out = tmp_path / "o.h5"
    fits.PrimaryHDU(np.zeros((50, 60), np.int32)).writeto(tmp_path / "small_mask.fits")
    code, text = cli(["prepare", folder / "g2.fits", "--mask", tmp_path / "small_mask.fits", "--out", out], capsys)
    one_error(text, "--mask", "small_mask.fits", "50x60", "160x160", "image's shape")
    assert code == 2 and not out.exists()
    code, text = cli(["prepare", folder / "g2.fits", "--mask", tmp_path / "missing_mask.fits", "--out", out], capsys)
    one_error(text, "--mask", "missing_mask.fits", "not found")
    assert code == 2 and not out.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    code, text = cli(["prepare", folder / "g2.fits", "--mask", empty, "--out", out], capsys)
    one_error(text, "--mask", "no mask in the folder")
    assert code == 2 and not out.exists()
    code, text = cli(["prepare", folder, "--mask", tmp_path / "small_mask.fits", "--out", out], capsys)
    one_error(text, "--mask", "already pair masks")
    assert code == 2 and not out.exists()
    (tmp_path / "text_mask.fits").write_text("not fits")
    with pytest.raises(MorphllrError, match="text_mask.fits"):
        readers.read_mask_file(tmp_path / "text_mask.fits")


def test_segmentation_ignores_masked_pixels():
    from morphllr.data.segmentation import segment

    image = scene(5)
    mask = star_mask().astype(bool)
    plain, masked = segment(image), segment(image, mask=mask)
    assert plain.segmap[int(STAR[1]), int(STAR[0])] > 1 and masked.segmap[mask].max() == 0
    assert masked.central_found and masked.sky_sigma == pytest.approx(SIGMA, rel=0.2)


@pytest.mark.shared_data
def test_real_sdss_masks_are_paired(shared_data, tmp_path, capsys):
    folder = shared_data / "sdss_r_fits"
    out = tmp_path / "sdss.h5"
    recipe = tmp_path / "small.toml"  # the cutouts are 121-256 px wide; this recipe does not resample
    recipe.write_text('name = "small"\nsky = "estimate"\ncenter = true\ncutout = 96\nzoom = 0.25\n'
                      'stretch = "arcsinh"\nstretch_scale = 100.0\n')
    code, text = cli(["prepare", folder, "--preset", recipe, "--pixel-scale", "0.396", "--out", out], capsys)
    assert code in (0, None), text
    with ImageSet.open(out) as s:
        cat = s.catalog
        frac = dict(zip(cat["id"], cat["masked_fraction"]))
        assert set(frac) == {"ic3478rss_256", "n3073rss_small", "vcc1512rss_cutout"}
        assert frac["ic3478rss_256"] == 0 and frac["n3073rss_small"] > 0 and frac["vcc1512rss_cutout"] > 0
        assert s.preprocessing["pixel_scale"] == pytest.approx(0.396) and s.preprocessing["input_kind"] == "flux"


def test_nan_pixels_are_filled_with_sky_and_masked(tmp_path, capsys):
    """Beyond a survey cutout's footprint (NaN): sky noise, in /mask, counted; not 0 flux."""
    image = scene(seed=3)
    image[:, :30] = np.nan
    fits.PrimaryHDU(image).writeto(tmp_path / "g.fits")
    out = tmp_path / "o.h5"
    code, text = cli(["prepare", tmp_path / "g.fits", "--out", out, "--workers", "1"], capsys)
    assert code in (0, None), text
    assert "4800 NaN/inf pixel(s)" in text and "filled with sky noise" in text
    with ImageSet.open(out) as s:
        row = s.catalog[0]
        columns = 30 - int(row["cutout_x0"])  # NaN columns inside the cutout
        assert row["n_nonfinite"] == 4800 and row["edge_padded"] == 0 and columns > 0
        assert row["nonfinite_fraction"] == pytest.approx(columns / 128)
        assert row["masked_fraction"] == pytest.approx(columns / 128)
        flux = np.asarray(s.flux[0, 0])
        assert np.all(flux[:, :columns] != 0) and flux[:, :columns].std() == pytest.approx(SIGMA, rel=0.15)
        mask = np.asarray(s.mask[0])
        assert mask[:, :columns].all() and not mask[:, columns:].any()


def test_nan_under_the_users_mask_is_not_refused_by_nonfinite_fail(tmp_path):
    prep = Preprocessing.preset("zanisi21").replace(nonfinite="fail")
    image = scene(seed=4)
    image[:5, :5] = np.nan
    mask = np.zeros(image.shape, bool)
    mask[:10, :10] = True
    flux, info = prep.cut(image, source="g.fits", mask=mask)  # masked NaN: not data, not refused
    assert info["n_nonfinite"] == 0 and np.isfinite(flux).all()
    with pytest.raises(MorphllrError, match="g.fits: 25 NaN/inf"):
        prep.cut(image, source="g.fits")


def test_thin_masks_survive_on_the_model_grid(tmp_path):
    """/mask_model uses the "any" rule: one masked flux column of an 8x8 mean (jpeg8bit) masks its model
    column; /segmap_model keeps the half rule."""
    from morphllr.data.prepare import prepare_imageset
    from morphllr.data.raw_image import RawImage

    prep = Preprocessing.preset("jpeg8bit")
    rng = np.random.default_rng(0)
    image = np.clip(20 + rng.normal(0, 3, (1, 300, 300)), 0, 255)
    mask = np.zeros((300, 300), bool)
    mask[:, 150] = True  # one column of flux pixels
    record = RawImage("j", image, "j.png", kind="jpeg", mask=mask)
    prepare_imageset(iter([record]), tmp_path / "j.h5", prep, n=1)
    with ImageSet.open(tmp_path / "j.h5") as s:
        flux_mask = np.asarray(s.mask[0])
        assert flux_mask.sum(axis=0).max() == 256 and flux_mask.sum() == 256
        model = np.asarray(s.mask_model[0])
        assert model.shape == (32, 32) and model.sum() == 32 and model.any(axis=0).sum() == 1
    thin = np.zeros((1, 256, 256), np.uint8)
    thin[0, :, 128] = 1
    assert model_mask(thin, prep).sum() == 0  # the half rule (segmap_model) is unchanged
    assert model_mask(thin, prep, rule="any").sum() == 32
