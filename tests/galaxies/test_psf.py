"""morphllr.galaxies.psf: the profiles have the FWHM they are asked for, unit flux, checked inputs.

FWHMs are measured on drawn images (the central row, half-maximum crossings interpolated), not
read back from GalSim, so a profile built with the wrong width parameter would fail here.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from astropy.table import Table

from morphllr.errors import MorphllrError
from morphllr.galaxies.psf import (DEFAULT_MOFFAT_BETA, check_beta, fit_psf_rows, has_pixel_response, load_psf_image,
                                   make_psf, psf_from_image, psf_image, psf_parameters, psfs_from_catalog)
from morphllr.limits import PSF_BETA_MAX, PSF_BETA_MIN, PSF_FWHM_MAX, PSF_IMAGE_MAX_SIDE

from clitools import cli, one_error

SAMPLES_PER_FWHM = 25


def _measured_fwhm(image: np.ndarray, scale: float) -> float:
    """FWHM in arcsec along the central row of a centred, odd-sized image."""
    row = image[image.shape[0] // 2].astype(np.float64)
    centre = len(row) // 2
    half = row[centre] / 2

    def crossing(step: int) -> float:
        i = centre
        while row[i + step] > half:
            i += step
        # linear interpolation between the last pixel above and the first below half maximum
        return abs(i - centre) + (row[i] - half) / (row[i] - row[i + step])

    return (crossing(1) + crossing(-1)) * scale


def _drawn(psf, fwhm: float) -> tuple[np.ndarray, float]:
    """The profile sampled at pixel centres, SAMPLES_PER_FWHM pixels per FWHM, +-5 FWHM wide, not normalised."""
    scale = fwhm / SAMPLES_PER_FWHM
    size = 10 * SAMPLES_PER_FWHM + 1
    return psf.drawImage(nx=size, ny=size, scale=scale, method="no_pixel").array, scale


@pytest.mark.parametrize("kind, beta", [("moffat", DEFAULT_MOFFAT_BETA), ("moffat", 2.5), ("moffat", 10.0),
                                        ("gaussian", DEFAULT_MOFFAT_BETA)])
@pytest.mark.parametrize("fwhm", [0.8, 1.4, 3.0])
def test_profiles_have_the_fwhm_asked_for_and_unit_flux(kind, beta, fwhm):
    psf = make_psf(fwhm, kind, beta=beta)
    assert psf.flux == pytest.approx(1.0)
    image, scale = _drawn(psf, fwhm)
    assert _measured_fwhm(image, scale) == pytest.approx(fwhm, rel=0.01)
    assert image.sum() == pytest.approx(1.0, abs=2e-3)  # the Moffat is truncated at 5 FWHM: all its flux is drawn
    assert not has_pixel_response(psf)


def test_beta_shapes_the_wings_at_a_fixed_fwhm():
    """Lower beta = heavier wings: more light beyond 1.5 FWHM, with the same core width."""
    fwhm = 1.4
    outside = []
    for psf in (make_psf(fwhm, "moffat", beta=2.5), make_psf(fwhm, "moffat", beta=DEFAULT_MOFFAT_BETA),
                make_psf(fwhm, "gaussian")):
        image, scale = _drawn(psf, fwhm)
        yy, xx = (np.indices(image.shape) - image.shape[0] // 2) * scale
        outside.append(image[np.hypot(yy, xx) > 1.5 * fwhm].sum() / image.sum())
    assert outside[0] > outside[1] > outside[2]
    # a circular Gaussian leaves exp(-r^2 / 2 sigma^2) of its light beyond r: 2^-9 beyond 1.5 FWHM
    assert outside[2] == pytest.approx(2.0 ** -9, rel=0.03)


def test_psf_image_samples_a_normalised_odd_centred_grid():
    psf = make_psf(1.4, "moffat")
    for integrated in (False, True):
        image = psf_image(psf, 0.396, size=24, pixel_integrated=integrated)
        assert image.shape == (25, 25)  # made odd
        assert image.sum() == pytest.approx(1.0)
        assert np.unravel_index(np.argmax(image), image.shape) == (12, 12)
        np.testing.assert_allclose(image, image.T, atol=1e-12)
    sampled = psf_image(psf, 0.396, size=25)
    integrated = psf_image(psf, 0.396, size=25, pixel_integrated=True)
    assert integrated[12, 12] < sampled[12, 12]  # the pixel response flattens the peak
    default = psf_image(psf, 0.396)
    assert default.shape[0] % 2 == 1 and default.shape[0] * 0.396 >= 8 * 1.4  # 4 FWHM each side


def test_a_psf_from_an_image_has_unit_flux_and_reproduces_the_image():
    fwhm, scale = 1.4, 0.2
    image = psf_image(make_psf(fwhm, "gaussian"), scale, size=41) * 123.0  # any normalisation
    psf = psf_from_image(image, scale)
    assert has_pixel_response(psf)
    assert psf.flux == pytest.approx(1.0)
    back = psf.drawImage(nx=41, ny=41, scale=scale, method="no_pixel").array
    np.testing.assert_allclose(back, image / image.sum(), atol=1e-6 * image.max() / image.sum())
    assert _measured_fwhm(back, scale) == pytest.approx(fwhm, rel=0.03)


@pytest.mark.parametrize("bad", [np.ones(5), np.ones((3, 3, 3)), np.full((5, 5), np.nan), np.zeros((5, 5)),
                                 -np.ones((5, 5))])
def test_psf_from_image_refuses_unusable_arrays(bad):
    with pytest.raises(MorphllrError, match="finite 2-D array with a positive sum"):
        psf_from_image(bad, 0.396)


# ---------------------------------------------------------------------- bounds (morphllr.limits)
def test_beta_bounds_are_the_limits_and_inclusive():
    assert check_beta(PSF_BETA_MIN) == PSF_BETA_MIN
    assert check_beta(PSF_BETA_MAX) == PSF_BETA_MAX
    assert check_beta("3.5") == 3.5
    for bad in (PSF_BETA_MIN - 1e-6, PSF_BETA_MAX * 1.001, math.nan, math.inf, -2.0, "steep", None):
        with pytest.raises(MorphllrError, match=f"--psf-beta: .* is not a Moffat index from {PSF_BETA_MIN:g} to "
                                                f"{PSF_BETA_MAX:g}"):
            check_beta(bad)
    with pytest.raises(MorphllrError, match="psf_beta column"):
        check_beta(0.5, where="psf_beta column")
    with pytest.raises(MorphllrError, match="--psf-beta"):
        make_psf(1.4, "moffat", beta=PSF_BETA_MIN / 2)


@pytest.mark.parametrize("fwhm", [0.0, -1.0, math.nan, math.inf, PSF_FWHM_MAX * 1.01])
def test_impossible_fwhms_are_refused(fwhm):
    with pytest.raises(MorphllrError, match="--psf-fwhm"):
        make_psf(fwhm)


def test_an_unknown_kind_is_refused():
    with pytest.raises(MorphllrError, match="unknown PSF kind 'airy'; choose one of moffat, gaussian"):
        make_psf(1.4, "airy")


@pytest.mark.parametrize("command", ["fit-sersic", "archetypes", "mock"])
@pytest.mark.parametrize("value", [PSF_BETA_MIN / 2, PSF_BETA_MAX * 2])
def test_the_command_line_refuses_a_beta_outside_the_limits(command, value, tmp_path, capsys):
    argv = [command, str(tmp_path / "in.h5"), "--psf-beta", f"{value:g}"]
    if command != "fit-sersic":
        argv += ["--out", str(tmp_path / "out.h5")]
    code, text = cli(argv, capsys)
    assert code == 2
    one_error(text, f"--psf-beta {value:g}", f"(valid: {PSF_BETA_MIN:g}<=x<={PSF_BETA_MAX:g})")
    assert not (tmp_path / "out.h5").exists()


# ---------------------------------------------------------------------- PSF image files
def _save(path, array) -> str:
    np.save(path, array)
    return str(path)


def test_a_psf_image_file_is_read_as_float64(tmp_path):
    psf = psf_image(make_psf(1.4), 0.396, size=15).astype(np.float32)
    got = load_psf_image(_save(tmp_path / "psf.npy", psf))
    assert got.dtype == np.float64 and got.shape == (15, 15)
    np.testing.assert_array_equal(got, psf.astype(np.float64))
    from astropy.io import fits

    fits.PrimaryHDU(psf).writeto(tmp_path / "psf.fits")
    np.testing.assert_array_equal(load_psf_image(tmp_path / "psf.fits"), psf.astype(np.float64))
    ints = load_psf_image(_save(tmp_path / "ints.npy", np.ones((3, 3), dtype=np.int16)))
    assert ints.dtype == np.float64 and ints.sum() == 9


@pytest.mark.parametrize("array, message", [
    (np.ones((5, 5, 2)), "must be 2-D, got shape (5, 5, 2)"),
    (np.ones(9), "must be 2-D"),
    (np.ones((PSF_IMAGE_MAX_SIDE + 1, 3)), f"give one of 3 to {PSF_IMAGE_MAX_SIDE} pixels per side"),
    (np.ones((2, 5)), "a PSF image of 2x5 pixels"),
    (np.where(np.eye(5) > 0, np.nan, 1.0), "5 NaN/inf pixel(s)"),
    (np.full((5, 5), np.inf), "25 NaN/inf pixel(s)"),
    (np.zeros((5, 5)), "sums to 0"),
    (-np.ones((5, 5)), "sums to -25"),
    (np.array([["a", "b", "c"]] * 3), "not numbers"),
])
def test_unusable_psf_images_are_refused_with_the_reason(array, message, tmp_path):
    path = _save(tmp_path / "psf.npy", array)
    with pytest.raises(MorphllrError) as caught:
        load_psf_image(path, option="--psf-image")
    assert message in str(caught.value) and str(caught.value).startswith(f"--psf-image {path}:")


def _moffat(shape, centre) -> np.ndarray:
    yy, xx = np.indices(shape)
    return (1 + ((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) / 4.0) ** -3.0


@pytest.mark.parametrize("shape, centre, fragments", [
    ((20, 20), (10, 10), ["centred at row 10.00, column 10.00 of the 20x20 image", "not at its centre (9.5, 9.5)",
                          "(+0.50, +0.50) pixels", "FFT-style"]),
    ((21, 21), (10, 11), ["centred at row 10.00, column 11.00", "centre (10, 10)", "(+0.00, +1.00) pixels"]),
    ((15, 15), (4.0, 7.0), ["shift by (-3.00, +0.00) pixels", "recentre"]),
    ((21, 21), (10.4, 10.0), ["(+0.40, +0.00) pixels"]),
])
def test_psf_images_not_centred_on_the_image_are_refused(shape, centre, fragments, tmp_path):
    """A PSF off the image's centre would shift every archetype or mock convolved with it: refused, with the fix."""
    path = _save(tmp_path / "psf.npy", _moffat(shape, centre))
    with pytest.raises(MorphllrError) as caught:
        load_psf_image(path, option="--psf-image")
    assert str(caught.value).startswith(f"--psf-image {path}:")
    for fragment in fragments:
        assert fragment in str(caught.value)
    assert ("FFT-style" in str(caught.value)) == (shape[0] % 2 == 0)


def test_psf_images_centred_on_the_image_are_accepted_whatever_their_sides(tmp_path):
    """Odd or even sides, square or not, noisy wings: accepted when the light is centred (GalSim draws them unshifted)."""
    from morphllr.galaxies.psf import psf_from_image

    rng = np.random.default_rng(0)
    for shape, centre in [((21, 21), (10, 10)), ((21, 21), (10.2, 9.85)), ((20, 20), (9.5, 9.5)),
                          ((21, 16), (10, 7.5))]:
        noisy = _moffat(shape, centre) + rng.normal(0, 1e-3, shape)  # noisy wings do not move the centre
        pixels = load_psf_image(_save(tmp_path / "psf.npy", noisy))
        assert pixels.shape == shape
    # the even-sided one, drawn on an odd grid, is centred on its middle pixel: no shift
    drawn = psf_from_image(_moffat((20, 20), (9.5, 9.5)), 0.396).drawImage(nx=21, ny=21, scale=0.396,
                                                                         method="no_pixel").array
    yy, xx = np.indices(drawn.shape)
    assert abs((drawn * yy).sum() / drawn.sum() - 10) < 1e-6 and abs((drawn * xx).sum() / drawn.sum() - 10) < 1e-6


def test_the_largest_allowed_psf_image_is_accepted(tmp_path):
    assert load_psf_image(_save(tmp_path / "psf.npy", np.ones((PSF_IMAGE_MAX_SIDE, 3)))).shape == \
        (PSF_IMAGE_MAX_SIDE, 3)


def test_unreadable_psf_files_are_refused(tmp_path):
    with pytest.raises(MorphllrError, match="file not found"):
        load_psf_image(tmp_path / "missing.npy")
    (tmp_path / "psf.png").write_bytes(b"\x89PNG")
    with pytest.raises(MorphllrError, match=r"unknown file type \(not .fits or .npy\)"):
        load_psf_image(tmp_path / "psf.png")
    (tmp_path / "broken.npy").write_bytes(b"not an array")
    with pytest.raises(MorphllrError, match="not a readable .npy array"):
        load_psf_image(tmp_path / "broken.npy")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(MorphllrError, match="not a readable .npy array"):  # never unpickled
        load_psf_image(tmp_path / "objects.npy")
    (tmp_path / "broken.fits").write_bytes(b"SIMPLE  = nonsense" + b" " * 100)
    with pytest.raises(MorphllrError, match="broken.fits"):
        load_psf_image(tmp_path / "broken.fits", option="--psf-image")


# ---------------------------------------------------------------------- per-row parameters
def _catalog(**columns) -> Table:
    n = len(next(iter(columns.values())))
    return Table({"id": [f"g{i}" for i in range(n)], **columns})


def test_per_row_parameters_come_from_the_columns_rounded():
    cat = _catalog(psf_fwhm_arcsec=[1.23456, 1.4, 1.4], psf_beta=[3.4567, np.nan, 2.5])
    fwhm, beta = psf_parameters(cat)
    np.testing.assert_array_equal(fwhm, [1.235, 1.4, 1.4])
    np.testing.assert_array_equal(beta, [3.46, DEFAULT_MOFFAT_BETA, 2.5])  # a blank cell takes the default


def test_options_override_the_columns_and_a_gaussian_has_no_beta():
    cat = _catalog(psf_fwhm_arcsec=[1.2, 1.5], psf_beta=[3.0, 3.0])
    fwhm, beta = psf_parameters(cat, fwhm=1.23456, beta=4.25)
    np.testing.assert_array_equal(fwhm, [1.23456, 1.23456])  # options exact, not rounded
    np.testing.assert_array_equal(beta, [4.25, 4.25])
    fwhm, beta = psf_parameters(cat, kind="gaussian")
    np.testing.assert_array_equal(fwhm, [1.2, 1.5])
    assert np.isnan(beta).all()
    fwhm, beta = psf_parameters(_catalog(psf_fwhm=[1.1]))  # the second-choice column, no beta column
    np.testing.assert_array_equal(fwhm, [1.1])
    np.testing.assert_array_equal(beta, [DEFAULT_MOFFAT_BETA])


def test_bad_per_row_parameters_name_the_rows():
    with pytest.raises(MorphllrError, match="has no 'psf_fwhm_arcsec' column; pass --psf-fwhm"):
        psf_parameters(_catalog(sky_sigma=[1.0]), where="obs.h5")
    with pytest.raises(MorphllrError, match=r"obs.h5: PSF FWHM is missing, <= 0 or above .* for id\(s\) g1, g2"):
        psf_parameters(_catalog(psf_fwhm_arcsec=[1.4, 0.0, np.nan]), where="obs.h5")
    with pytest.raises(MorphllrError, match=r"'psf_beta' holds a Moffat index outside .* for id\(s\) g0"):
        psf_parameters(_catalog(psf_fwhm_arcsec=[1.4, 1.4], psf_beta=[PSF_BETA_MAX + 1, 3.0]))
    with pytest.raises(MorphllrError, match="--psf-beta"):
        psf_parameters(_catalog(psf_fwhm_arcsec=[1.4]), beta=PSF_BETA_MIN / 2)


def test_profiles_per_row_are_shared_between_equal_rows_and_have_their_row_fwhm():
    cat = _catalog(psf_fwhm_arcsec=[1.2, 1.6, 1.2001, 1.6], psf_beta=[3.0, 3.0, 3.0, 4.0])
    profiles = psfs_from_catalog(cat)
    assert profiles[0] is profiles[2]  # 1.2001 rounds to 1.2: one profile, so callers can cache by id()
    assert profiles[1] is not profiles[3]  # same FWHM, other beta
    for psf, fwhm in zip(profiles, [1.2, 1.6, 1.2, 1.6]):
        image, scale = _drawn(psf, fwhm)
        assert _measured_fwhm(image, scale) == pytest.approx(fwhm, rel=0.01)


# ---------------------------------------------------------------------- the PSF a set's fits used
def test_no_record_means_no_fit_psf():
    cat = _catalog(psf_fwhm_arcsec=[1.4])
    assert fit_psf_rows(cat, None) is None
    assert fit_psf_rows(cat, {"pixel_scale": 0.396}) is None


def test_a_moffat_fit_record_gives_the_per_row_psf_from_its_columns():
    cat = _catalog(sersic_psf_fwhm_arcsec=[1.3, 1.5], sersic_psf_beta=[3.5, 3.5])
    record = {"psf": {"kind": "moffat", "fwhm_from": "column psf_fwhm_arcsec"}, "pixel_scale": 0.396}
    rows = fit_psf_rows(cat, record)
    assert rows.kind == "moffat" and rows.pixel_scale == 0.396
    np.testing.assert_array_equal(rows.fwhm, [1.3, 1.5])
    np.testing.assert_array_equal(rows.beta, [3.5, 3.5])
    profiles = rows.profiles(0.396)
    assert isinstance(profiles, list) and len(profiles) == 2
    for psf, fwhm in zip(profiles, [1.3, 1.5]):
        image, scale = _drawn(psf, fwhm)
        assert _measured_fwhm(image, scale) == pytest.approx(fwhm, rel=0.01)
    same = fit_psf_rows(_catalog(sersic_psf_fwhm_arcsec=[1.3, 1.3], sersic_psf_beta=[3.5, 3.5]), record)
    assert not isinstance(same.profiles(0.396), list)  # one profile for every row


def test_a_fit_record_without_columns_uses_its_recorded_values():
    rows = fit_psf_rows(_catalog(x=[1, 2]), {"psf": {"kind": "gaussian", "fwhm_arcsec": 1.2}})
    np.testing.assert_array_equal(rows.fwhm, [1.2, 1.2])
    assert np.isnan(rows.beta).all()
    with pytest.raises(MorphllrError, match=r"not recorded for id\(s\) g0, g1.*fit-sersic obs.h5"):
        fit_psf_rows(_catalog(x=[1, 2]), {"psf": {"kind": "moffat"}}, where="obs.h5")


def test_an_image_fit_record_gives_its_pixels_and_a_record_without_them():
    pixels = psf_image(make_psf(1.4), 0.396, size=11)
    record = {"psf": {"kind": "image", "pixel_scale": 0.2,
                      "image": {"file": "psf.fits", "sha256": "abc", "pixels": pixels.tolist()}}}
    rows = fit_psf_rows(_catalog(x=[1, 2, 3]), record)
    assert rows.kind == "image" and rows.pixel_scale == 0.2
    np.testing.assert_array_equal(rows.pixels, pixels)
    assert rows.record["image"] == {"file": "psf.fits", "sha256": "abc"}
    assert has_pixel_response(rows.profiles(0.2))
    with pytest.raises(MorphllrError, match="names the PSF image psf.fits but does not hold it"):
        fit_psf_rows(_catalog(x=[1]), {"psf": {"kind": "image", "image": {"file": "psf.fits"}}})


def test_no_psf_and_unknown_records():
    rows = fit_psf_rows(_catalog(x=[1]), {"psf": {"kind": "none"}})
    assert rows.kind == "none" and rows.profiles(0.396) is None
    with pytest.raises(MorphllrError, match="unknown PSF kind 'airy'"):
        fit_psf_rows(_catalog(x=[1]), {"psf": {"kind": "airy"}})
    with pytest.raises(MorphllrError, match="unreadable PSF"):
        fit_psf_rows(_catalog(x=[1]), {"psf": 1.4})


def test_an_older_fit_record_is_rebuilt_as_that_fitter_used_it():
    cat = _catalog(psf_fwhm_arcsec=[1.2, 1.6], psf_beta=[3.0, np.nan])
    rows = fit_psf_rows(cat, {"psf": "moffat", "psf_fwhm": 1.3})  # one FWHM for all, the default beta
    np.testing.assert_array_equal(rows.fwhm, [1.3, 1.3])
    np.testing.assert_array_equal(rows.beta, [DEFAULT_MOFFAT_BETA, DEFAULT_MOFFAT_BETA])
    assert rows.record["record"] == "older fit-sersic"
    rows = fit_psf_rows(cat, {"psf": "moffat", "psf_fwhm": None})  # then the catalogue columns
    np.testing.assert_array_equal(rows.fwhm, [1.2, 1.6])
    np.testing.assert_array_equal(rows.beta, [3.0, DEFAULT_MOFFAT_BETA])
    assert rows.record["fwhm_from"] == "column psf_fwhm_arcsec"
    assert fit_psf_rows(cat, {"psf": "none"}).kind == "none"
