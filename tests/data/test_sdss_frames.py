"""SDSS frames: units through the preset zero point, gain from NMGY, catalogue cutouts through the WCS,
sky patches from one frame (disjoint parts, exact pixel copies), bad input as one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

pytest.importorskip("sep")

from morphllr.data import sdss_frames as frames  # noqa: E402
from morphllr.cli import main  # noqa: E402
from morphllr.errors import MorphllrError  # noqa: E402
from morphllr.data.imageset import ImageSet  # noqa: E402
from morphllr.data.preprocess import Preprocessing  # noqa: E402

ZP = 28.2  # zanisi21: AB magnitude of one working unit ("SDSS r counts")
SCALE = 0.396 / 3600  # deg per pixel
NMGY = 0.004  # nanomaggies per DN: the frame's own zero point 28.49 differs from the preset's on purpose


def frame_header(crval=(150.0, 2.0), shape=(320, 400), nmgy=NMGY):
    """An SDSS-like header: TAN WCS with RA along the rows (CD1_2) and Dec along the columns (CD2_1)."""
    h, w = shape
    header = fits.Header()
    header.update(CTYPE1="RA---TAN", CTYPE2="DEC--TAN", CUNIT1="deg", CUNIT2="deg", CRPIX1=w / 2 + 0.5,
                  CRPIX2=h / 2 + 0.5, CRVAL1=crval[0], CRVAL2=crval[1], CD1_1=0.0, CD1_2=SCALE, CD2_1=SCALE,
                  CD2_2=0.0, BUNIT="nanomaggy", FILTER="r", EXPTIME="53.907456")
    if nmgy is not None:
        header["NMGY"] = nmgy
    return header


def gaussian(shape, x0, y0, flux, sigma=2.0):
    yy, xx = np.indices(shape)
    return flux / (2 * np.pi * sigma**2) * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * sigma**2))


def write_frame(path, image, **kwargs):
    """Primary HDU = image in nanomaggies + header; HDU 1 a calibration vector, as in real frames."""
    header = frame_header(shape=image.shape, **kwargs)
    hdus = [fits.PrimaryHDU(image.astype(np.float32), header=header),
            fits.ImageHDU(np.full(image.shape[1], NMGY, np.float32))]
    fits.HDUList(hdus).writeto(path)
    return path


def noisy_frame(shape=(320, 400), seed=0, sigma=0.03, sources=()):
    rng = np.random.default_rng(seed)
    image = rng.normal(0.0, sigma, shape)
    for x0, y0, flux in sources:
        image += gaussian(shape, x0, y0, flux)
    return image


def cli(capsys, *args):
    """Run ``morphllr ARGS`` as a user would: (exit code, stderr lines)."""
    with pytest.raises(SystemExit) as stop:
        main([str(a) for a in args])
    return stop.value.code, capsys.readouterr().err.strip().splitlines()


def one_error_line(lines):
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, lines
    return errors[0]


# ---------------------------------------------------------------------- units and gain
def test_nanomaggies_become_working_units_through_the_preset_zero_point(tmp_path):
    path = write_frame(tmp_path / "frame-r-000001-1-0001.fits", np.full((40, 50), 2.0))
    frame = frames.read_frame(path)
    assert frame.shape == (40, 50) and frame.band == "r" and frame.nmgy == NMGY
    assert frame.exptime == pytest.approx(53.907456)
    assert frame.pixel_scale == pytest.approx(0.396, rel=1e-6)
    flux = frame.to_working(ZP)
    factor = 10 ** (0.4 * (ZP - 22.5))  # 190.5 working units per nanomaggy
    np.testing.assert_allclose(flux, 2.0 * factor, rtol=1e-6)
    assert not np.allclose(flux, 2.0 / NMGY, rtol=0.01)  # the frame's own DN would be 500, not 381
    # the same factor as the prepare path (Preprocessing.to_flux of nanomaggies)
    prep = Preprocessing.preset("zanisi21")
    np.testing.assert_allclose(prep.to_flux(np.full((1, 2, 2), 2.0), units="nanomaggies"), 2.0 * factor, rtol=1e-6)
    assert frame.frame_zero_point == pytest.approx(22.5 - 2.5 * np.log10(NMGY))


def test_gain_in_electrons_per_working_unit_comes_from_nmgy():
    # in the frame's own unit (zero point 22.5 - 2.5 log10 NMGY) one unit is one DN: electrons = gain
    own = 22.5 - 2.5 * np.log10(NMGY)
    assert frames.electrons_per_unit(NMGY, own, 4.7) == pytest.approx(4.7)
    # one working unit of zero point 28.2 is 10**(-0.4 * 5.7) nanomaggies = that / NMGY DN
    expected = 4.7 * 10 ** (-0.4 * (ZP - 22.5)) / NMGY
    assert frames.electrons_per_unit(NMGY, ZP, 4.7) == pytest.approx(expected)
    assert expected == pytest.approx(6.166, rel=1e-3)
    # brighter calibration (more nanomaggies per DN) = fewer DN, fewer electrons per unit
    assert frames.electrons_per_unit(2 * NMGY, ZP, 4.7) == pytest.approx(expected / 2)


# ---------------------------------------------------------------------- catalogue cutouts
SOURCES = ((201.3, 158.7, 400.0), (90.6, 120.2, 250.0))  # x, y (0-based frame pixels), flux in nanomaggies


def test_prepare_cuts_catalogue_galaxies_through_the_wcs(tmp_path, capsys):
    path = write_frame(tmp_path / "frame-r-000001-1-0001.fits", noisy_frame(sources=SOURCES))
    wcs = WCS(frame_header())
    ra, dec = wcs.pixel_to_world_values([s[0] for s in SOURCES], [s[1] for s in SOURCES])
    Table({"id": ["a", "b"], "ra": ra, "dec": dec, "mass": [10.5, 9.8]}).write(tmp_path / "pos.csv")
    out = tmp_path / "obs.h5"
    code, lines = cli(capsys, "prepare", path, "--catalog", tmp_path / "pos.csv", "--out", out, "--workers", 1)
    assert code in (0, None), lines
    with ImageSet.open(out) as s:
        cat = s.catalog
        assert s.flux.shape == (2, 1, 128, 128) and list(cat["id"]) == ["a", "b"]
        for row, (x0, y0, flux) in zip(cat, SOURCES):
            assert row["x"] == pytest.approx(x0, abs=1e-6) and row["y"] == pytest.approx(y0, abs=1e-6)
            # the measured centre, in frame pixels, is the planted one
            assert abs(row["window_x0"] + row["center_x"] - x0) < 0.5
            assert abs(row["window_y0"] + row["center_y"] - y0) < 0.5
            assert row["nmgy"] == NMGY and row["gain"] == pytest.approx(frames.electrons_per_unit(NMGY, ZP))
            assert row["frame"] == str(path) and row["mass"] > 9
        # b sits 91 px from the left edge: its 256 px window runs past the frame, but those pixels are marked
        # beyond the frame (not NaN pixels of the image), and its 128 px cutout lies inside the frame
        assert list(cat["n_nonfinite"]) == [0, 0] and list(cat["edge_padded"]) == [0, 0]
        assert np.all(np.asarray(s.flux[1]) != 0) and s.mask is None
        assert cat["frame_edge_px"][1] == pytest.approx(SOURCES[1][0] + 0.5)
        # the flux cutouts are in the preset's unit: total flux = nanomaggies x 10**(0.4 (28.2 - 22.5))
        central = np.asarray(s.flux[0, 0])[64 - 12:64 + 12, 64 - 12:64 + 12].sum()
        assert central == pytest.approx(SOURCES[0][2] * 10 ** (0.4 * (ZP - 22.5)), rel=0.03)
        assert s.attrs["frames_positions"] == "radec"


def test_prepare_with_pixel_positions_and_a_frame_column(tmp_path, capsys):
    first = write_frame(tmp_path / "frame-r-000001-1-0001.fits", noisy_frame(seed=1, sources=SOURCES[:1]))
    second = write_frame(tmp_path / "frame-r-000001-1-0002.fits", noisy_frame(seed=2, sources=SOURCES[1:]))
    Table({"id": ["a", "b"], "x": [SOURCES[0][0], SOURCES[1][0]], "y": [SOURCES[0][1], SOURCES[1][1]],
           "frame": [first.name, "frame-r-000001-1-0002"]}).write(tmp_path / "pos.csv")
    out = tmp_path / "obs.h5"
    code, lines = cli(capsys, "prepare", first, second, "--catalog", tmp_path / "pos.csv", "--out", out,
                      "--workers", 1, "--gain", 5.0)
    assert code in (0, None), lines
    with ImageSet.open(out) as s:
        cat = s.catalog
        assert [str(f) for f in cat["frame"]] == [str(first), str(second)]
        for row, (x0, y0, _) in zip(cat, SOURCES):
            assert abs(row["window_x0"] + row["center_x"] - x0) < 0.5
            assert abs(row["window_y0"] + row["center_y"] - y0) < 0.5
        assert np.allclose(cat["gain"], frames.electrons_per_unit(NMGY, ZP, 5.0))
        assert np.all(np.isfinite(cat["ra"])) and "frame_catalog" not in cat.colnames


def test_positions_outside_every_frame_are_listed_or_skipped(tmp_path, capsys):
    path = write_frame(tmp_path / "frame-r-000001-1-0001.fits", noisy_frame(sources=SOURCES[:1]))
    ra, dec = WCS(frame_header()).pixel_to_world_values([SOURCES[0][0], -40.0, 100.0], [SOURCES[0][1], 10.0, 900.0])
    Table({"id": ["in", "left", "above"], "ra": ra, "dec": dec}).write(tmp_path / "pos.csv")
    out = tmp_path / "obs.h5"
    args = ("prepare", path, "--catalog", tmp_path / "pos.csv", "--out", out, "--workers", 1)
    code, lines = cli(capsys, *args)
    line = one_error_line(lines)
    assert code == 2 and "2 of 3 position(s) lie outside every frame" in line and "left, above" in line
    assert "--skip-outside" in line and not out.exists()
    code, lines = cli(capsys, *args, "--skip-outside")
    assert code in (0, None), lines
    assert any("dropped 2" in line and "left, above" in line for line in lines)
    with ImageSet.open(out) as s:
        assert list(s.catalog["id"]) == ["in"]
        assert json.loads(s.attrs["frames_outside_ids"]) == ["left", "above"]


def test_frame_errors_are_one_line(tmp_path, capsys):
    bare = tmp_path / "frame-r-000001-1-0003.fits"
    fits.PrimaryHDU(noisy_frame().astype(np.float32), header=frame_header(nmgy=None)).writeto(bare)
    with pytest.raises(MorphllrError, match="no NMGY"):
        frames.read_frame(bare)
    code, lines = cli(capsys, "sky-patches", bare, "--size", 64, "--out", tmp_path / "sky.npy")
    assert code == 2 and "frame-r-000001-1-0003.fits: no NMGY header key" in one_error_line(lines)
    good = write_frame(tmp_path / "frame-r-000001-1-0001.fits", noisy_frame())
    code, lines = cli(capsys, "prepare", good, "--out", tmp_path / "x.h5")
    assert code == 2 and "--catalog positions.csv" in one_error_line(lines)
    Table({"id": ["a"], "x": [10.0], "y": [10.0]}).write(tmp_path / "pos.csv")
    code, lines = cli(capsys, "prepare", good, "--catalog", tmp_path / "pos.csv", "--gain", -1,
                      "--out", tmp_path / "x.h5")
    assert code == 2 and one_error_line(lines).startswith("error: --gain -1")
    from typer.testing import CliRunner

    from morphllr.cli import app

    assert f"default {frames.DEFAULT_GAIN}" in " ".join(CliRunner().invoke(app, ["prepare", "--help"]).output.split())


# ---------------------------------------------------------------------- sky patches from one frame
STARS = tuple((x, y, 60.0) for x, y in [(40, 50), (300, 60), (150, 200), (420, 230), (250, 130), (470, 30)])


@pytest.fixture(scope="module")
def sky_frame(tmp_path_factory):
    """One 256 x 512 frame: white sky (0.03 nanomaggies) with a few stars."""
    path = tmp_path_factory.mktemp("sky") / "frame-r-000001-1-0001.fits"
    return write_frame(path, noisy_frame(shape=(256, 512), seed=3, sources=STARS))


def block_cover(record, shape, block):
    """Per patch, how many of its blocks cover every frame pixel."""
    layout = np.asarray(record["blocks"])  # (n, slots, 5): frame, y, x, turns, flip
    cover = np.zeros((len(layout),) + shape, int)
    for p, slots in enumerate(layout):
        for _, y, x, _, _ in slots:
            cover[p, y:y + block, x:x + block] += 1
    return cover


def test_one_frame_is_enough_and_the_two_parts_share_no_pixel(sky_frame, tmp_path, capsys):
    records = {}
    for part in ("1/2", "2/2"):
        out = tmp_path / f"sky{part[0]}.npy"
        code, lines = cli(capsys, "sky-patches", sky_frame, "--size", 64, "--part", part, "--region", 32, "--n", 12,
                          "--out", out)
        assert code in (0, None), lines
        assert any(f"part {part}" in line and "seed 0" in line for line in lines)
        records[part] = json.loads(out.with_suffix(".json").read_text())
        assert np.load(out).shape == (12, 1, 64, 64)
    one, two = (block_cover(records[p], (256, 512), 16) for p in ("1/2", "2/2"))
    assert one.max() == 1 and two.max() == 1  # blocks of a patch never overlap
    used_one, used_two = one.any(axis=0), two.any(axis=0)
    assert not (used_one & used_two).any()  # no pixel in both parts
    # each inside its own interleaved stripes of 32 columns, and both parts span the frame
    stripes = {p: records[p]["strips"][0] for p in ("1/2", "2/2")}
    assert stripes["1/2"] == [[x, x + 32] for x in range(0, 512, 64)]
    assert stripes["2/2"] == [[x, x + 32] for x in range(32, 512, 64)]
    for used, part in ((used_one, "1/2"), (used_two, "2/2")):
        columns = np.flatnonzero(used.any(axis=0))
        assert all(any(a <= c < b for a, b in stripes[part]) for c in columns)
        assert columns.min() < 128 and columns.max() >= 384
    assert records["1/2"]["working_unit"] == {"preset": "zanisi21", "zero_point": ZP}
    assert records["1/2"]["frames"][0]["nmgy"] == NMGY and records["1/2"]["seed"] == 0
    assert {"part", "block", "region", "seed", "frames"} <= set(records["2/2"])


def test_sky_patch_pixels_are_exact_copies_of_frame_pixels(sky_frame):
    from morphllr.galaxies.sky_patches import sky_mask, sky_patch_library

    lib = sky_patch_library(sky_frame, 64, n=6, part="2/2", region=32)
    image = frames.read_frame(sky_frame).to_working(ZP)
    empty = sky_mask(image)
    turns_seen = set()
    for patch, slots in zip(lib.patches[:, 0], lib.layout):
        for slot, (_, y, x, turns, flip) in enumerate(slots):
            source = np.rot90(image[y:y + 16, x:x + 16], turns)
            source = source[:, ::-1] if flip else source
            r, c = divmod(slot, 4)
            assert np.array_equal(patch[r * 16:(r + 1) * 16, c * 16:(c + 1) * 16], source)
            assert empty[y:y + 16, x:x + 16].all()  # only empty sky, clear of the stars
            turns_seen.add((turns, flip))
    assert len(turns_seen) == 8
    # the tiled sky keeps the frame's noise: 0.03 nanomaggies in working units
    assert lib.info["patches_sky"]["rms_median"] == pytest.approx(0.03 * 10 ** (0.4 * (ZP - 22.5)), rel=0.05)


def test_sky_patch_bad_input_is_one_line(sky_frame, tmp_path, capsys):
    out = tmp_path / "sky.npy"
    for args, start in (
        (("--n", -3), "error: --n -3"),
        (("--n", 0), "error: --n 0"),
        (("--part", "3/2"), "error: --part 3/2"),
        (("--part", "half"), "error: --part half"),
        (("--size", 1024), "error: --size 1024: a 1024x1024 patch takes 4096 blocks"),
        (("--size", 60), "error: --size 60: must be a multiple of the block side 16"),
    ):
        code, lines = cli(capsys, "sky-patches", sky_frame, "--size", 64, "--out", out, *args)
        assert code == 2 and one_error_line(lines).startswith(start), (args, lines)
    assert not out.exists()


def test_nan_pixels_are_kept_out_of_the_sky(tmp_path, capsys):
    rng = np.random.default_rng(4)
    stack = rng.normal(0, 1.0, (30, 64, 64)).astype(np.float32)
    stack[:, 10:30, 20:40] = np.nan  # a bad area in every frame
    np.save(tmp_path / "frames.npy", stack)
    out = tmp_path / "sky.npy"
    code, lines = cli(capsys, "sky-patches", tmp_path / "frames.npy", "--size", 32, "--n", 10, "--out", out)
    assert code in (0, None), lines
    patches = np.load(out)
    assert np.isfinite(patches).all() and patches.std() == pytest.approx(1.0, rel=0.1)
    cover = block_cover(json.loads(out.with_suffix(".json").read_text()), (64, 64), 16).any(axis=0)
    assert not cover[10:30, 20:40].any()
    # as archetype sky, NaN is refused plainly
    from morphllr.galaxies.sky_patches import load_sky_patches

    with pytest.raises(MorphllrError, match=r"NaN/inf pixel\(s\)"):
        load_sky_patches(tmp_path / "frames.npy")


# ---------------------------------------------------------------------- the real SDSS frame
def test_real_frame_gives_training_sky_with_the_frames_noise(shared_data, tmp_path, capsys):
    path = shared_data / "sdss_frame" / "frame-r-002583-2-0136.fits.bz2"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    header_only = frames.read_frame(path, pixels=False)
    assert header_only.shape == (1489, 2048) and header_only.band == "r"
    assert header_only.nmgy == pytest.approx(0.00546689)
    assert header_only.frame_zero_point == pytest.approx(28.156, abs=1e-3)
    out = tmp_path / "sky_train.npy"
    code, lines = cli(capsys, "sky-patches", path, "--size", 128, "--part", "1/2", "--out", out)
    assert code in (0, None), lines
    patches = np.load(out)
    assert patches.shape[1:] == (1, 128, 128) and len(patches) >= 1 and np.isfinite(patches).all()
    record = json.loads(out.with_suffix(".json").read_text())
    real, tiled = record["frames_sky"]["rms_median"], record["patches_sky"]["rms_median"]
    assert abs(tiled / real - 1) < 0.10
    assert 4 < real < 9  # SDSS r sky noise, a few counts
    layout = np.asarray(record["blocks"])
    # part 1/2: every other 64-column stripe from column 0, so blocks sit in even stripes, all across the frame
    assert (layout[..., 2] // 64 % 2 == 0).all() and ((layout[..., 2] + 15) // 64 % 2 == 0).all()
    assert layout[..., 2].min() < 512 and layout[..., 2].max() > 1536
