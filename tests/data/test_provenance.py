"""Airtight provenance (issue 13 part 2): every set and model records what its pixels are.

A provenance matrix: FITS / JPEG / array sets against FITS- and JPEG-trained model records,
refused or accepted as they should be, at `prepare --like` and at scoring; old records
(shipped models) keep loading; every pixel-changing option of `prepare` is recorded.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from PIL import Image

from clitools import cli, one_error
from morphllr.cli import main
from morphllr.errors import MorphllrError
from morphllr.data.imageset import ImageSet
from morphllr.data.prepare import prepare_imageset
from morphllr.data.preprocess import Preprocessing, as_preprocessing, check_compatible, input_kind_of
from morphllr.data.raw_image import RawImage

REPO = Path(__file__).resolve().parents[2]
OBS = REPO / "validation" / "models" / "obs"

# one small recipe for every kind, so only the input kind differs between the model records
RECIPE = """name = "tiny"
units = "counts"
sky = "estimate"
center = false
cutout = 32
zoom = 0.25
stretch = "arcsinh"
stretch_scale = 50.0
clip_lo = -1.0
clip_hi = 8.0
"""


def galaxy(side: int = 40, seed: int = 0, level: float = 10.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.indices((side, side))
    r = np.hypot(xx - (side - 1) / 2, yy - (side - 1) / 2)
    return level + 120 * np.exp(-r / 3.0) + rng.normal(0, 2.0, (side, side))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """FITS files, JPEG files and an .npy array of the same kind of galaxy, and the recipe."""
    root = tmp_path_factory.mktemp("provenance")
    (root / "fits").mkdir()
    (root / "jpeg").mkdir()
    for i in range(2):
        fits.PrimaryHDU(galaxy(seed=i).astype(np.float32)).writeto(root / "fits" / f"g{i}.fits")
        Image.fromarray(np.clip(galaxy(seed=i), 0, 255).astype(np.uint8)).save(root / "jpeg" / f"g{i}.png")
    np.save(root / "arrays.npy", np.stack([galaxy(seed=i) for i in range(2)]).astype(np.float32))
    (root / "tiny.toml").write_text(RECIPE)
    return root


@pytest.fixture(scope="module")
def sets(inputs, tmp_path_factory):
    """Sets prepared with the one recipe: from FITS (flux), JPEG/PNG (jpeg) and the array (flux)."""
    import contextlib
    import io

    out = {}
    for name, src in (("fits", inputs / "fits"), ("jpeg", inputs / "jpeg"), ("npy", inputs / "arrays.npy")):
        path = inputs / f"{name}.h5"
        with contextlib.redirect_stderr(io.StringIO()), pytest.raises(SystemExit) as stop:
            main(["prepare", str(src), "--preset", str(inputs / "tiny.toml"), "--out", str(path), "--workers", "1"])
        assert stop.value.code in (0, None)
        out[name] = path
    return out


def model_record(inputs, kind: str | None) -> dict:
    prep = Preprocessing.from_file(inputs / "tiny.toml").replace(input_kind=kind)
    return prep.to_dict()


def test_the_readers_give_the_kind(sets):
    kinds = {}
    for name, path in sets.items():
        with ImageSet.open(path) as s:
            kinds[name] = s.preprocessing["input_kind"]
    assert kinds == {"fits": "flux", "jpeg": "jpeg", "npy": "flux"}


@pytest.mark.parametrize("set_name, model_kind, accepted", [
    ("fits", "flux", True), ("fits", "jpeg", False), ("fits", "jpeg_linear", False),
    ("jpeg", "flux", False), ("jpeg", "jpeg", True), ("jpeg", "jpeg_linear", False),
    ("npy", "flux", True), ("npy", "jpeg", False),
    ("fits", None, True), ("jpeg", None, True),  # a model recorded before input kinds: unknown, not compared
])
def test_provenance_matrix_at_scoring(inputs, sets, set_name, model_kind, accepted):
    from types import SimpleNamespace

    from morphllr.score import check_images_fit
    from morphllr.data.inputs import open_images

    config = SimpleNamespace(in_channels=1, height=8, width=8)
    record = model_record(inputs, model_kind)
    with open_images(sets[set_name]) as source:
        if accepted:
            check_images_fit(source, config, record, "model")
        else:
            with pytest.raises(MorphllrError, match="input_kind") as refusal:
                check_images_fit(source, config, record, "model")
            text = str(refusal.value)
            assert "--like MODEL_DIR" not in text  # a --like cannot turn one kind into another: the advice says what can
            assert "no recipe turns one into the other" in text or "linearise" in text


def test_bare_arrays_are_model_space_and_accepted_by_any_model(inputs):
    """Arrays given to train/score without `prepare` carry no recipe: the user vouches for them."""
    from types import SimpleNamespace

    from morphllr.score import check_images_fit
    from morphllr.data.inputs import open_images

    array = np.zeros((2, 1, 8, 8), np.float32)
    config = SimpleNamespace(in_channels=1, height=8, width=8)
    for kind in ("flux", "jpeg", "jpeg_linear"):
        check_images_fit(open_images(array), config, model_record(inputs, kind), "model")
    # arrays prepared with the identity recipe are recorded as model space, and refused by a flux model
    prep = Preprocessing.preset("none")
    records = [RawImage(f"a{i}", array[i], f"a[{i}]") for i in range(2)]
    path = inputs / "model_space.h5"
    prepare_imageset(iter(records), path, prep, n=2, segmentation=None)
    with ImageSet.open(path) as s:
        assert s.preprocessing["input_kind"] == "model_space"
        with pytest.raises(MorphllrError, match="input_kind: 'flux' vs 'model_space'"):
            check_compatible(model_record(inputs, "flux"), s.preprocessing, "model vs set")


def test_score_refuses_jpeg_levels_under_a_flux_model_in_one_line(inputs, sets, tmp_path, capsys):
    import torch

    from morphllr.model.pixelcnn import NETWORK_PRESETS, PixelCNN
    from morphllr.model.io import save_model

    torch.manual_seed(0)
    model = save_model(PixelCNN(NETWORK_PRESETS["tiny"]).eval(), tmp_path / "flux_model",
                       preprocessing=model_record(inputs, "flux"), data_fingerprint=None, metrics={})
    out = tmp_path / "scores.csv"
    code, text = cli(["score", sets["jpeg"], "--model", model, "--out", out, "--quiet"], capsys)
    one_error(text, "jpeg.h5", "input_kind", "JPEG levels are not calibrated flux")
    assert code == 2 and not out.exists()
    code, text = cli(["score", sets["fits"], "--model", model, "--out", out, "--quiet"], capsys)
    assert code in (0, None), text
    assert out.exists()


def test_old_records_load_and_gz2_linear_is_known_to_be_jpeg(inputs):
    """Shipped models were saved before input_kind: they load, and the kind is inferred only where certain."""
    recorded = json.loads((OBS / "model.json").read_text())["preprocessing"]
    assert "input_kind" not in recorded and recorded["name"] == "gz2_linear"
    assert input_kind_of(recorded) == "jpeg_linear"
    assert as_preprocessing(recorded).input_kind == "jpeg_linear"  # a record is filled from its name
    assert Preprocessing.from_dict(recorded).input_kind is None  # from_dict takes a recipe as written
    old_flux = {k: v for k, v in Preprocessing.preset("zanisi21").to_dict().items() if k != "input_kind"}
    assert input_kind_of(old_flux) is None and Preprocessing.from_dict(old_flux).input_kind is None
    for folder in sorted((REPO / "src" / "morphllr" / "pretrained").glob("*/seed0")):
        Preprocessing.from_dict(json.loads((folder / "model.json").read_text())["preprocessing"])
    # a recorded old model of gz2_linear refuses a FITS flux set
    fits_set = Preprocessing.from_file(inputs / "tiny.toml").replace(input_kind="flux").to_dict()
    with pytest.raises(MorphllrError, match="input_kind: 'jpeg_linear' vs 'flux'"):
        check_compatible(recorded, fits_set, "model obs vs set")


def test_fits_cannot_be_prepared_like_the_jpeg_model(inputs, tmp_path, capsys):
    out = tmp_path / "o.h5"
    code, text = cli(["prepare", inputs / "fits" / "g0.fits", "--like", OBS, "--out", out], capsys)
    one_error(text, "g0.fits", "calibrated flux", "linearised JPEG levels", "--preset zanisi21")
    assert code == 2 and not out.exists()
    # raw JPEG levels: the recorded recipe (gz2_linear, un-stretch inferred for the old record) linearises them
    big = tmp_path / "big"
    big.mkdir()
    Image.fromarray(np.clip(galaxy(side=424, level=20.0), 0, 255).astype(np.uint8)).save(big / "g0.png")
    code, text = cli(["prepare", big / "g0.png", "--like", OBS, "--out", out], capsys)
    assert code in (0, None), text
    with ImageSet.open(out) as s:
        assert s.preprocessing["input_kind"] == "jpeg_linear" and s.preprocessing["unstretch"] == "asinh"
        assert s.flux.shape[-1] == 64 and s.images.shape[-1] == 32
        check_compatible(json.loads((OBS / "model.json").read_text())["preprocessing"], s.preprocessing, "obs")
    # arrays of unknown kind are taken as the levels the recipe un-stretches
    prep = json.loads((OBS / "model.json").read_text())["preprocessing"]  # a record: filled from its name
    rng = np.random.default_rng(1)
    records = (RawImage(f"j{i}", 20 + rng.normal(0, 3, (1, 424, 424)), f"j{i}") for i in range(2))
    out2 = tmp_path / "o2.h5"
    prepare_imageset(records, out2, prep, n=2)
    with ImageSet.open(out2) as s:
        assert s.preprocessing["input_kind"] == "jpeg_linear"
        check_compatible(json.loads((OBS / "model.json").read_text())["preprocessing"], s.preprocessing, "obs")
    # a recipe that declares linearised levels but does not un-stretch refuses raw JPEG levels, naming the fix
    recipe = tmp_path / "declared.toml"
    recipe.write_text(RECIPE + 'input_kind = "jpeg_linear"\n')
    code, text = cli(["prepare", inputs / "jpeg" / "g0.png", "--preset", recipe, "--out", tmp_path / "o3.h5"], capsys)
    one_error(text, "g0.png", "--preset gz2_linear")
    assert code == 2 and not (tmp_path / "o3.h5").exists()


def test_a_flux_model_refuses_jpegs_at_prepare(inputs, sets, tmp_path, capsys):
    out = tmp_path / "o.h5"
    code, text = cli(["prepare", inputs / "jpeg", "--like", sets["fits"], "--out", out], capsys)
    one_error(text, "g0.png", "8-bit JPEG/PNG levels", "calibrated flux")
    assert code == 2 and not out.exists()
    code, text = cli(["prepare", inputs / "fits", "--like", sets["fits"], "--out", out], capsys)
    assert code in (0, None), text


def test_one_set_holds_one_kind(inputs, tmp_path, capsys):
    out = tmp_path / "o.h5"
    code, text = cli(["prepare", inputs / "fits" / "g0.fits", inputs / "jpeg" / "g1.png", "--preset",
                      inputs / "tiny.toml", "--out", out], capsys)
    one_error(text, "g1.png", "one kind of pixels")
    assert code == 2 and not out.exists()


@pytest.mark.shared_data
def test_real_sdss_fits_are_refused_like_the_gz2_model(shared_data, tmp_path, capsys):
    out = tmp_path / "o.h5"
    code, text = cli(["prepare", shared_data / "sdss_r_fits", "--like", OBS, "--out", out], capsys)
    one_error(text, "calibrated flux", "linearised JPEG levels")
    assert code == 2 and not out.exists()


def test_pixel_changing_options_are_recorded(inputs, tmp_path, capsys):
    """--preset none --pixel-scale records the scale (fit-sersic needs it); reader options go to `read`."""
    out = tmp_path / "none.h5"
    code, text = cli(["prepare", inputs / "fits", "--preset", "none", "--pixel-scale", "0.396", "--out", out,
                      "--hdu", "0", "--edge", "refuse"], capsys)
    assert code in (0, None), text
    with ImageSet.open(out) as s:
        prep = s.preprocessing
        assert prep["pixel_scale"] == pytest.approx(0.396) and prep["input_kind"] == "flux"
        assert prep["edge"] == "refuse"
        assert prep["read"] == {"hdu": "0", "input_pixel_scale": 0.396, "segmentation": "sep"}
        assert np.allclose(s.flux[0, 0], fits.getdata(inputs / "fits" / "g0.fits"), atol=1e-4)  # nothing resampled
    out2 = tmp_path / "png.h5"
    code, text = cli(["prepare", inputs / "jpeg", "--preset", inputs / "tiny.toml", "--channel", "0", "--units",
                      "counts", "--sky", "3", "--out", out2], capsys)
    assert code in (0, None), text
    with ImageSet.open(out2) as s:
        prep = s.preprocessing
        assert prep["read"] == {"channel": 0, "segmentation": "sep"} and prep["sky"] == "given" and prep["sky_value"] == 3.0


def test_an_image_sets_flux_keeps_its_kind_when_prepared_again(inputs, sets, tmp_path, capsys):
    """/flux of a set of JPEG levels is JPEG levels, /images model space: a flux recipe cannot launder them."""
    out = tmp_path / "again.h5"
    code, text = cli(["prepare", sets["jpeg"], "--hdu", "flux", "--preset", inputs / "tiny.toml", "--out", out,
                      "--pixel-scale", "0.396", "--workers", "1"], capsys)
    assert code in (0, None), text
    with ImageSet.open(out) as s:
        assert s.preprocessing["input_kind"] == "jpeg"
        with pytest.raises(MorphllrError, match="input_kind: 'flux' vs 'jpeg'"):
            check_compatible(model_record(inputs, "flux"), s.preprocessing, "flux model vs set")
    flux_recipe = tmp_path / "flux.toml"
    flux_recipe.write_text(RECIPE + 'input_kind = "flux"\n')
    code, text = cli(["prepare", sets["jpeg"], "--hdu", "flux", "--preset", flux_recipe, "--out", tmp_path / "f.h5"],
                     capsys)
    one_error(text, "8-bit JPEG/PNG levels", "calibrated flux")
    assert code == 2 and not (tmp_path / "f.h5").exists()
    code, text = cli(["prepare", sets["fits"], "--hdu", "images", "--preset", "none", "--out", tmp_path / "i.h5"],
                     capsys)
    assert code in (0, None), text
    with ImageSet.open(tmp_path / "i.h5") as s:
        assert s.preprocessing["input_kind"] == "model_space"


def test_a_recorded_input_pixel_scale_is_not_a_resampling_step(inputs, tmp_path, capsys):
    """--preset none --pixel-scale S records S (fit-sersic reads it) but models of `none` data take the set,
    and --like such a set resamples nothing."""
    given = tmp_path / "given.h5"
    code, text = cli(["prepare", inputs / "fits", "--preset", "none", "--pixel-scale", "0.396", "--out", given], capsys)
    assert code in (0, None), text
    plain = tmp_path / "plain.h5"
    code, text = cli(["prepare", inputs / "fits", "--preset", "none", "--out", plain], capsys)
    assert code in (0, None), text
    with ImageSet.open(given) as g, ImageSet.open(plain) as p:
        assert g.preprocessing["pixel_scale"] == pytest.approx(0.396) and g.preprocessing["pixel_scale_given"]
        assert p.preprocessing["pixel_scale"] is None
        check_compatible(p.preprocessing, g.preprocessing, "model of none vs set")
        check_compatible(g.preprocessing, p.preprocessing, "model of none+scale vs set")
        given_prep, images = g.preprocessing, np.asarray(g.images[:])
    like = tmp_path / "like.h5"
    code, text = cli(["prepare", inputs / "fits", "--like", given, "--pixel-scale", "0.2", "--out", like], capsys)
    assert code in (0, None), text
    with ImageSet.open(like) as s:
        np.testing.assert_array_equal(np.asarray(s.images[:]), images)  # nothing resampled
        assert s.preprocessing["pixel_scale"] == pytest.approx(0.2)
        check_compatible(given_prep, s.preprocessing, "model vs set")
    # recipes that do resample are still compared
    resampling = Preprocessing.from_file(inputs / "tiny.toml").replace(pixel_scale=0.396).to_dict()
    with pytest.raises(MorphllrError, match="pixel_scale: 0.396 vs 0.5"):
        check_compatible(resampling, {**resampling, "pixel_scale": 0.5}, "model vs set")


def test_the_segmentation_engine_is_recorded(inputs, tmp_path, capsys):
    out = tmp_path / "p.h5"
    code, text = cli(["prepare", inputs / "fits", "--preset", inputs / "tiny.toml", "--segmentation", "photutils",
                      "--out", out], capsys)
    try:
        import skimage  # noqa: F401  (photutils deblends with it)
    except ImportError:
        one_error(text, "--segmentation photutils", "scikit-image", "sep")  # one line, not a traceback
        assert code == 2 and not out.exists()
        return
    assert code in (0, None), text
    with ImageSet.open(out) as s:
        assert s.preprocessing["read"]["segmentation"] == "photutils"
