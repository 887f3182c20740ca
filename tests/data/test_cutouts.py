"""Honest cutouts (issue 13 part 3): a window is never moved; past the edge it is padded with the
image's own sky noise and flagged, or, with --edge refuse, the galaxy is dropped and counted."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from clitools import cli, one_error
from morphllr.errors import MorphllrError
from morphllr.data.imageset import ImageSet
from morphllr.data.prepare import prepare_imageset
from morphllr.data.preprocess import Preprocessing, cutout_window
from morphllr.data.raw_image import RawImage

SIGMA = 5.0


def frame(x0: float, y0: float, side: int = 160, seed: int = 0) -> np.ndarray:
    """Sky noise of SIGMA counts and one compact galaxy at (x0, y0)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.indices((side, side))
    return (4000 * np.exp(-np.hypot(xx - x0, yy - y0) / 2.5) + rng.normal(0, SIGMA, (side, side))).astype(np.float32)


@pytest.fixture()
def edge_files(tmp_path):
    fits.PrimaryHDU(frame(79.5, 80.0, seed=1)).writeto(tmp_path / "middle.fits")
    fits.PrimaryHDU(frame(45.0, 80.0, seed=2)).writeto(tmp_path / "edge.fits")  # 19 columns of the cutout lie outside
    return tmp_path


def test_edge_galaxy_stays_centred_and_is_padded_with_its_own_sky(edge_files, tmp_path, capsys):
    out = tmp_path / "set.h5"
    code, text = cli(["prepare", edge_files / "middle.fits", edge_files / "edge.fits", "--out", out, "--workers", "1"],
                     capsys)
    assert code in (0, None), text
    assert "1 cutout(s) run past their image's edge" in text
    with ImageSet.open(out) as s:
        cat = s.catalog
        row = cat[list(cat["id"]).index("edge")]
        flux = np.asarray(s.flux[list(cat["id"]).index("edge"), 0])
        # the nucleus is at the cutout centre, where center_x says it is
        peak = np.unravel_index(np.argmax(flux), flux.shape)
        assert abs(peak[0] - 64) <= 1 and abs(peak[1] - 64) <= 1
        assert row["center_x"] == pytest.approx(45.0, abs=0.5)
        assert row["cutout_x0"] == round(row["center_x"]) - 64 and row["cutout_x0"] < 0
        assert row["cutout_x0"] + 64 == pytest.approx(row["center_x"], abs=0.5)
        padded_columns = -row["cutout_x0"]
        assert row["edge_padded"] == pytest.approx(padded_columns / 128)
        # padded pixels: noise with the sky's own std and level, not zeros
        padded = flux[:, :padded_columns]
        assert np.all(padded != 0)
        assert padded.std() == pytest.approx(SIGMA, rel=0.1) and abs(padded.mean()) < 1.0
        # and they are marked as excluded, on both grids
        mask = np.asarray(s.mask[list(cat["id"]).index("edge")])
        assert mask[:, :padded_columns].all() and not mask[:, padded_columns:].any()
        assert s.mask_model.shape == (2, 32, 32)
        middle = list(cat["id"]).index("middle")
        assert cat["edge_padded"][middle] == 0 and not np.asarray(s.mask[middle]).any()


def test_edge_refuse_drops_and_counts(edge_files, tmp_path, capsys):
    out = tmp_path / "set.h5"
    code, text = cli(["prepare", edge_files, "--out", out, "--workers", "1", "--edge", "refuse"], capsys)
    assert code in (0, None), text
    assert "--edge refuse: dropped 1 galaxy(ies)" in text and "edge" in text
    with ImageSet.open(out) as s:
        assert list(s.catalog["id"]) == ["middle"] and s.mask is None
        assert s.attrs["edge_dropped_ids"] == '["edge"]' and s.preprocessing["edge"] == "refuse"
    # every galaxy at an edge: nothing to write, one line
    out2 = tmp_path / "none.h5"
    code, text = cli(["prepare", edge_files / "edge.fits", "--out", out2, "--edge", "refuse"], capsys)
    one_error(text, "--edge refuse drops them all", "--edge pad")
    assert code == 2 and not out2.exists()


def test_bad_edge_value_is_one_line(edge_files, tmp_path, capsys):
    out = tmp_path / "set.h5"
    code, text = cli(["prepare", edge_files / "edge.fits", "--out", out, "--edge", "shift"], capsys)
    one_error(text, "--edge shift", "pad", "refuse")
    assert code == 2 and not out.exists()


def test_library_cut_never_moves_the_window():
    prep = Preprocessing.preset("zanisi21")
    flux, info = prep.cut(frame(45.0, 80.0, seed=3), source="edge")
    assert flux.shape == (1, 128, 128)
    peak = np.unravel_index(np.argmax(flux[0]), flux[0].shape)
    assert abs(peak[1] - 64) <= 1 and info["edge_padded"] == pytest.approx(19 / 128) and info["cutout_x0"] < 0
    with pytest.raises(MorphllrError, match="runs past"):
        cutout_window((160, 160), 45.0, 80.0, 128, "edge")


def test_frame_edge_pixels_are_sky_noise_not_zeros():
    """A window past an SDSS frame's edge (RawImage.outside) is padded with sky, not counted as NaN."""
    image = frame(80.0, 128.0, side=256, seed=4)
    outside = np.zeros((256, 256), bool)
    outside[:, :40] = True  # the frame ends 40 px into the window
    image[:, :40] = np.nan
    record = RawImage("f", image[None].astype(np.float64), "frame[0:256,-40:216]", kind="flux", outside=outside)
    report = {}
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        report = prepare_imageset(iter([record]), Path(tmp) / "f.h5", Preprocessing.preset("zanisi21"), n=1)
        with ImageSet.open(Path(tmp) / "f.h5") as s:
            row = s.catalog[0]
            flux = np.asarray(s.flux[0, 0])
            assert row["n_nonfinite"] == 0 and row["edge_padded"] > 0
            columns = int(round(row["edge_padded"] * 128))
            assert flux[:, :columns].std() == pytest.approx(SIGMA, rel=0.15) and np.all(flux[:, :columns] != 0)
    assert report["n_edge_padded"] == 1 and report["n_nonfinite_pixels"] == 0


def test_padding_is_reproducible(edge_files, tmp_path, capsys):
    outs = [tmp_path / "a.h5", tmp_path / "b.h5"]
    for out in outs:
        code, text = cli(["prepare", edge_files / "edge.fits", "--out", out], capsys)
        assert code in (0, None), text
    with ImageSet.open(outs[0]) as a, ImageSet.open(outs[1]) as b:
        assert a.fingerprint() == b.fingerprint()


def test_real_images_smaller_than_the_cutout_are_padded_and_flagged(shared_data, tmp_path, capsys):
    """All three sdss_r_fits galaxies prepare with zanisi21 (vcc1512's image is 161x121 < 128 columns wide):
    the missing columns hold the image's own sky noise, flagged; --edge refuse drops them, counted."""
    out = tmp_path / "sdss.h5"
    code, text = cli(["prepare", shared_data / "sdss_r_fits", "--preset", "zanisi21", "--out", out, "--workers", "1"],
                     capsys)
    assert code in (0, None), text
    assert "2 cutout(s) run past their image's edge" in text
    with ImageSet.open(out) as s:
        cat = s.catalog
        shares = dict(zip(cat["id"], cat["edge_padded"]))
        assert shares["ic3478rss_256"] == 0
        assert shares["vcc1512rss_cutout"] == pytest.approx(7 / 128)  # 121 columns: 7 of 128 beyond the image
        assert 0 < shares["n3073rss_small"] < 0.5
        row = list(cat["id"]).index("vcc1512rss_cutout")
        mask = np.asarray(s.mask[row])
        x0 = int(cat["cutout_x0"][row])
        assert x0 < 0 and mask[:, : -x0].all() and mask[:, 121 - x0 :].all()
        assert np.all(np.asarray(s.flux[row, 0])[:, : -x0] != 0)  # sky noise, not zeros
    refused = tmp_path / "refused.h5"
    code, text = cli(["prepare", shared_data / "sdss_r_fits", "--out", refused, "--workers", "1", "--edge", "refuse"],
                     capsys)
    assert code in (0, None), text
    assert "--edge refuse: dropped 2 galaxy(ies)" in text
    with ImageSet.open(refused) as s:
        assert list(s.catalog["id"]) == ["ic3478rss_256"]


def test_padding_that_would_dominate_the_cutout_is_refused_in_one_line(tmp_path, capsys):
    fits.PrimaryHDU(frame(30.0, 25.0, side=50, seed=5)).writeto(tmp_path / "tiny.fits")
    out = tmp_path / "o.h5"
    code, text = cli(["prepare", tmp_path / "tiny.fits", "--out", out], capsys)
    one_error(text, "tiny.fits", "beyond the 50x50 image", "smaller cutout", "--edge refuse")
    assert code == 2 and not out.exists()


def test_zero_padding_of_noise_free_simulations_is_not_sky_noise(tmp_path, capsys):
    """--pad (noise-free simulations): the 0-flux padding is counted as zero_padded, never as edge_padded,
    not excluded in /mask, and --edge refuse keeps such galaxies."""
    yy, xx = np.indices((60, 60))
    sim = (4000 * np.exp(-np.hypot(xx - 29.5, yy - 29.5) / 2.5)).astype(np.float32)
    fits.PrimaryHDU(sim).writeto(tmp_path / "sim.fits")
    for edge in ("pad", "refuse"):
        out = tmp_path / f"{edge}.h5"
        code, text = cli(["prepare", tmp_path / "sim.fits", "--pad", "--edge", edge, "--out", out], capsys)
        assert code in (0, None), text
        assert "sky noise" not in text and "dropped" not in text
        assert "1 cutout(s) of noise-free simulations padded with 0 flux" in text
        with ImageSet.open(out) as s:
            row = s.catalog[0]
            assert row["edge_padded"] == 0 and row["zero_padded"] == pytest.approx(1 - (60 / 128) ** 2, abs=0.02)
            assert s.mask is None
            flux = np.asarray(s.flux[0, 0])
            assert (flux == 0).mean() == pytest.approx(row["zero_padded"], abs=0.01)
