"""Sérsic fitter: model fidelity against GalSim, recovery of known truth, conventions, masking."""

from __future__ import annotations

import numpy as np
import pytest

galsim = pytest.importorskip("galsim")

from morphllr.galaxies.psf import make_psf  # noqa: E402
from morphllr.galaxies.sersic_fit import (  # noqa: E402
    FLAG_NO_SOURCE,
    ConvolvedSersicRenderer,
    fit_imageset,
    fit_sersic,
    fit_sersic_many,
    psf_kernel_for,
)

SCALE = 0.396
SKY_SIGMA = 5.7  # SDSS r counts
GAIN = 4.8


def galsim_image(n, re_pix, q, pa_deg, flux, psf, size=64, offset=(0.0, 0.0)):
    """A GalSim Sérsic with MAJOR-axis half-light radius re_pix, drawn like a detector would."""
    gal = galsim.Sersic(n, half_light_radius=re_pix * np.sqrt(q) * SCALE, flux=flux)
    gal = gal.shear(q=q, beta=pa_deg * galsim.degrees)
    return galsim.Convolve(gal, psf).drawImage(nx=size, ny=size, scale=SCALE, offset=offset).array.astype(np.float64)


@pytest.fixture(scope="module")
def psf():
    return make_psf(1.4, "moffat")


@pytest.fixture(scope="module")
def kernel(psf):
    return psf_kernel_for(psf, SCALE)


@pytest.mark.parametrize("n,re,q,pa", [(0.5, 3.0, 0.5, 30.0), (1.0, 6.0, 0.7, 100.0), (4.0, 2.5, 0.8, 10.0),
                                       (6.0, 3.0, 0.9, 160.0), (2.0, 1.0, 0.6, 45.0)])
def test_renderer_matches_galsim(kernel, psf, n, re, q, pa):
    """Our model image and GalSim's agree pixel by pixel: same R_e, q, PA and centre conventions."""
    truth = galsim_image(n, re, q, pa, 1000.0, psf)
    model = ConvolvedSersicRenderer((64, 64), kernel).render(1000.0, re, n, 31.5, 31.5, q, np.radians(pa))
    assert np.abs(model - truth).max() < 0.01 * truth.max()
    # a 90 degree rotation of the PA must not also match (the comparison can fail)
    rotated = ConvolvedSersicRenderer((64, 64), kernel).render(1000.0, re, n, 31.5, 31.5, q, np.radians(pa + 90))
    if q < 0.75:
        assert np.abs(rotated - truth).max() > 0.03 * truth.max()


def test_fit_recovers_galsim_truth(kernel, psf):
    """Noisy, PSF-convolved GalSim mocks: median |dn| <= 0.2 and median |dRe/Re| <= 5 %."""
    rng = np.random.default_rng(42)
    truths, fits = [], []
    for _ in range(16):
        n, re, q, pa = rng.uniform(0.5, 5.0), rng.uniform(2.5, 9.0), rng.uniform(0.3, 1.0), rng.uniform(0, 180)
        flux = rng.uniform(5e3, 5e4)  # r ~ 16.5-19 mag: the SDSS main-sample range
        offset = tuple(rng.uniform(-1.5, 1.5, 2))
        clean = galsim_image(n, re, q, pa, flux, psf, offset=offset)
        shot = rng.poisson(clean.clip(0) * GAIN) / GAIN - clean.clip(0)
        noisy = clean + rng.normal(0, SKY_SIGMA, clean.shape) + shot
        truths.append((n, re, q, pa, flux, 31.5 + offset[0], 31.5 + offset[1]))
        fits.append(fit_sersic(noisy, kernel, sky_sigma=SKY_SIGMA, gain=GAIN))
    t = np.array(truths)
    got = np.array([(f.n, f.re_pix, f.q, f.pa_deg, f.flux, f.x0_pix, f.y0_pix) for f in fits])
    assert all(f.flag == 0 for f in fits)
    assert np.median(np.abs(got[:, 0] - t[:, 0])) <= 0.2
    assert np.median(np.abs(got[:, 1] / t[:, 1] - 1)) <= 0.05
    assert np.median(np.abs(got[:, 2] - t[:, 2])) <= 0.05
    elongated = t[:, 2] < 0.8
    dpa = (got[elongated, 3] - t[elongated, 3] + 90) % 180 - 90
    assert np.median(np.abs(dpa)) <= 5.0
    assert np.median(np.abs(got[:, 4] / t[:, 4] - 1)) <= 0.05
    assert np.median(np.hypot(got[:, 5] - t[:, 5], got[:, 6] - t[:, 6])) <= 0.2


def galaxy_with_companion(psf) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A Sérsic galaxy at the centre and a bright neighbour at (53.5, 47.5), with noise: (image, yy, xx)."""
    rng = np.random.default_rng(3)
    main = galsim_image(2.0, 5.0, 0.6, 70.0, 2e4, psf)
    comp = galsim_image(1.0, 3.0, 1.0, 0.0, 4e4, psf, offset=(22.0, 16.0))
    image = main + comp + rng.normal(0, SKY_SIGMA, main.shape)
    yy, xx = np.indices(image.shape)
    return image, yy, xx


def test_companion_is_masked(kernel, psf):
    """A bright neighbour labelled > 1 in the segmentation does not pull the fit."""
    image, yy, xx = galaxy_with_companion(psf)
    segmap = np.where(np.hypot(xx - 31.5, yy - 31.5) < 14, 1, 0)
    segmap[np.hypot(xx - 53.5, yy - 47.5) < 13] = 2  # what a 1-sigma segmentation covers
    masked = fit_sersic(image, kernel, segmap, SKY_SIGMA)
    assert abs(masked.n - 2.0) < 0.3 and abs(masked.re_pix / 5.0 - 1) < 0.08
    unmasked = fit_sersic(image, kernel, None, SKY_SIGMA)
    assert abs(unmasked.re_pix / 5.0 - 1) > abs(masked.re_pix / 5.0 - 1)


def test_empty_cutout_is_flagged(kernel):
    image = np.random.default_rng(0).normal(0, 1.0, (48, 48))
    fit = fit_sersic(image, kernel, np.zeros((48, 48), int), 1.0)
    assert fit.flag & FLAG_NO_SOURCE and np.isnan(fit.n)


def test_parallel_equals_serial(kernel, psf):
    rng = np.random.default_rng(5)
    images = np.stack([galsim_image(1.5, 4.0, 0.7, 20.0, 1e4, psf) + rng.normal(0, SKY_SIGMA, (64, 64))
                       for _ in range(18)])
    serial = fit_sersic_many(images, kernel, sky_sigma=SKY_SIGMA, workers=1)
    parallel = fit_sersic_many(images, kernel, sky_sigma=SKY_SIGMA, workers=2)
    assert [f.n for f in serial] == [f.n for f in parallel]


def test_fit_imageset_writes_catalogue(tmp_path, psf):
    from morphllr.data.imageset import ImageSet
    from morphllr.data.prepare import write_flux_set

    rng = np.random.default_rng(7)
    truth_n = [1.0, 3.0, 2.0]
    flux = np.stack([galsim_image(n, 5.0, 0.7, 40.0, 1e5, psf, size=128) + rng.normal(0, SKY_SIGMA, (128, 128))
                     for n in truth_n])[:, None]
    path = write_flux_set(tmp_path / "obs.h5", flux, {"id": ["a", "b", "c"]}, "zanisi21")
    table, summary = fit_imageset(path, psf_fwhm=1.4, workers=1)
    cat = ImageSet.open(path).catalog
    assert list(cat["id"]) == ["a", "b", "c"]
    assert np.allclose(cat["sersic_n"], truth_n, atol=0.3)
    # the fit runs on the central 64^2 but reports positions on the 128^2 flux cutout
    assert np.allclose(cat["sersic_x0_pix"], 63.5, atol=0.3)
    assert summary["n_good"] == 3


def test_surface_brightness_matches_astropy_sersic2d():
    """Our (flux, major-axis R_e, n, q, theta) profile = astropy's Sersic2D(amplitude at R_e, r_eff, n, ellip=1-q)."""
    from astropy.modeling.models import Sersic2D
    from scipy.special import gammaln

    from morphllr.galaxies.sersic import sersic_b
    from morphllr.galaxies.sersic_fit import sersic_surface_brightness

    n, re, q, theta, flux = 2.5, 6.0, 0.6, np.radians(35.0), 1e4
    b = sersic_b(n)
    # I_e of a Sérsic of total flux F: F / (2 pi q Re^2 n e^b b^-2n Gamma(2n))
    i_e = flux / (2 * np.pi * q * re**2 * n * np.exp(b + gammaln(2 * n) - 2 * n * np.log(b)))
    yy, xx = np.mgrid[-20:21, -20:21].astype(float)
    ours = sersic_surface_brightness(xx, yy, flux, re, n, q, theta)
    theirs = Sersic2D(amplitude=i_e, r_eff=re, n=n, x_0=0, y_0=0, ellip=1 - q, theta=theta)(xx, yy)
    assert np.allclose(ours, theirs, rtol=1e-6)


# --------------------------------------------------------------------------- flags (issue 13)
@pytest.mark.parametrize("n,re,q,flux,size,bit", [
    (1.0, 120.0, 0.7, 2e7, 128, 16),  # the measured case: R_e of ~120-150 px inside a 128 px window
    (6.2, 4.0, 0.8, 2e6, 64, 32),  # GalSim's largest index
    (0.3, 6.0, 0.7, 2e6, 64, 32),  # GalSim's smallest index
])
def test_re_beyond_the_window_and_n_at_galsims_bounds_are_flagged(psf, kernel, n, re, q, flux, size, bit):
    from morphllr.galaxies.sersic_fit import FLAG_BITS

    rng = np.random.default_rng(0)
    image = galsim_image(n, re, q, 30.0, flux, psf, size=size) + rng.normal(0, SKY_SIGMA, (size, size))
    fit = fit_sersic(image, kernel, sky_sigma=SKY_SIGMA, gain=GAIN)
    assert fit.flag & bit, (fit, FLAG_BITS[bit])
    normal = galsim_image(1.5, 5.0, 0.7, 30.0, 3e4, psf) + rng.normal(0, SKY_SIGMA, (64, 64))
    assert fit_sersic(normal, kernel, sky_sigma=SKY_SIGMA, gain=GAIN).flag == 0


def test_the_window_is_what_re_is_judged_against(psf, kernel):
    """R_e = 20 px: good in a 64 px window, beyond a 32 px one (the same galaxy, fitted on less of it)."""
    from morphllr.galaxies.sersic_fit import FLAG_RE_BEYOND_WINDOW

    rng = np.random.default_rng(1)
    image = galsim_image(1.0, 20.0, 0.8, 10.0, 2e6, psf, size=64) + rng.normal(0, SKY_SIGMA, (64, 64))
    assert not fit_sersic(image, kernel, sky_sigma=SKY_SIGMA).flag & FLAG_RE_BEYOND_WINDOW
    assert fit_sersic(image[16:48, 16:48], kernel, sky_sigma=SKY_SIGMA).flag & FLAG_RE_BEYOND_WINDOW


def test_mask_excludes_pixels_like_a_companion_label(kernel, psf):
    image, yy, xx = galaxy_with_companion(psf)
    segmap = np.where(np.hypot(xx - 31.5, yy - 31.5) < 14, 1, 0)
    mask = np.hypot(xx - 53.5, yy - 47.5) < 13
    masked = fit_sersic(image, kernel, segmap, SKY_SIGMA, mask=mask)
    assert abs(masked.n - 2.0) < 0.3 and abs(masked.re_pix / 5.0 - 1) < 0.08


# --------------------------------------------------------------------------- PSF: beta, image, record
def test_a_wrong_beta_lowers_n():
    """The direction of benchmarks/psf_beta.py on a handful of noise-free mocks: true beta 3.5, fit 4.765."""
    from morphllr.galaxies.psf import DEFAULT_MOFFAT_BETA

    true = make_psf(1.4, "moffat", beta=3.5)
    right, wrong = psf_kernel_for(true, SCALE), psf_kernel_for(make_psf(1.4, "moffat", DEFAULT_MOFFAT_BETA), SCALE)
    dn_right, dn_wrong = [], []
    for n, re in ((1.0, 3.0), (2.5, 4.0), (4.0, 3.0)):
        image = galsim_image(n, re, 0.8, 20.0, 3e4, true)
        dn_right.append(fit_sersic(image, right, sky_sigma=1.0).n - n)
        dn_wrong.append(fit_sersic(image, wrong, sky_sigma=1.0).n - n)
    assert np.median(np.abs(dn_right)) < 0.05
    assert np.median(dn_wrong) < -0.05 and np.median(np.abs(dn_wrong)) > 3 * np.median(np.abs(dn_right))


def test_psf_image_is_sampled_not_integrated_again(tmp_path):
    """A PSF image holds the pixel response: the fitter's model equals GalSim drawn with it and no extra pixel."""
    from morphllr.galaxies.psf import psf_from_image, psf_image

    truth_psf = make_psf(1.4, "moffat", beta=3.0)
    pixels = psf_image(truth_psf, SCALE, size=41, pixel_integrated=True)  # what a star looks like
    profile = psf_from_image(pixels, SCALE)
    gal = galsim.Sersic(2.0, half_light_radius=4.0 * np.sqrt(0.7) * SCALE, flux=1e4).shear(q=0.7, beta=30 * galsim.degrees)
    truth = galsim.Convolve(gal, truth_psf).drawImage(nx=64, ny=64, scale=SCALE).array
    sampled = ConvolvedSersicRenderer((64, 64), psf_kernel_for(profile, SCALE), psf_has_pixel=True)
    model = sampled.render(1e4, 4.0, 2.0, 31.5, 31.5, 0.7, np.radians(30.0))
    assert np.abs(model - truth).max() < 0.01 * truth.max()
    twice = ConvolvedSersicRenderer((64, 64), psf_kernel_for(profile, SCALE)).render(
        1e4, 4.0, 2.0, 31.5, 31.5, 0.7, np.radians(30.0))
    assert np.abs(twice - truth).max() > np.abs(model - truth).max()


def test_psf_image_outside_the_central_box_is_sampled_too():
    """Beyond the 11 x 11 sub-pixel box the model is convolved at the native scale: with a PSF image the profile is
    sampled at pixel centres there too (not pixel-integrated, then convolved with a PSF that holds the pixel)."""
    from morphllr.galaxies.psf import psf_from_image, psf_image
    from morphllr.galaxies.sersic_fit import BOX_HALF

    truth_psf = make_psf(1.4, "moffat", beta=3.0)
    star = psf_from_image(psf_image(truth_psf, SCALE, size=41, pixel_integrated=True), SCALE)
    renderer = ConvolvedSersicRenderer((64, 64), psf_kernel_for(star, SCALE), psf_has_pixel=True)
    outside = np.ones((64, 64), bool)
    outside[31 - BOX_HALF: 33 + BOX_HALF, 31 - BOX_HALF: 33 + BOX_HALF] = False
    errors = []
    for n, re in ((1.0, 6.0), (4.0, 4.0), (0.5, 8.0)):
        gal = galsim.Sersic(n, half_light_radius=re * np.sqrt(0.7) * SCALE, flux=1e4).shear(q=0.7, beta=30 * galsim.degrees)
        truth = galsim.Convolve(gal, truth_psf).drawImage(nx=64, ny=64, scale=SCALE).array
        model = renderer.render(1e4, re, n, 31.5, 31.5, 0.7, np.radians(30.0))
        bright = outside & (truth > 0.01 * truth.max())
        errors.append(np.median(np.abs(model - truth)[bright] / truth[bright]))
    assert np.mean(errors) < 0.0015, errors  # integrated twice there: 0.0020 (0.0019-0.0021)


def _fitted_set(tmp_path, psf, columns=None, n_gal=2):
    from morphllr.data.prepare import write_flux_set

    rng = np.random.default_rng(11)
    flux = np.stack([galsim_image(1.5 + i, 4.0, 0.7, 40.0, 5e4, psf, size=96) + rng.normal(0, SKY_SIGMA, (96, 96))
                     for i in range(n_gal)])[:, None]
    cat = {"id": [f"g{i}" for i in range(n_gal)], **(columns or {})}
    return write_flux_set(tmp_path / "obs.h5", flux, cat, "zanisi21")


def test_fit_records_its_psf_and_window_and_archetypes_reuse_them(tmp_path):
    from morphllr.galaxies.archetypes import make_archetype_set
    from morphllr.errors import MorphllrError
    from morphllr.data.imageset import ImageSet

    true = make_psf(1.3, "moffat", beta=3.5)
    path = _fitted_set(tmp_path, true, {"psf_fwhm_arcsec": [1.3, 1.3], "sky_sigma": [SKY_SIGMA] * 2})
    table, summary = fit_imageset(path, psf_beta=3.5, workers=1)
    cat = ImageSet.open(path).catalog
    assert np.allclose(cat["sersic_psf_fwhm_arcsec"], 1.3) and np.allclose(cat["sersic_psf_beta"], 3.5)
    assert list(cat["sersic_fit_size"]) == [64, 64] and np.allclose(cat["sersic_n"], [1.5, 2.5], atol=0.25)
    record = cat.meta["sersic_fit"]
    assert record["psf"] == {"kind": "moffat", "fwhm_arcsec": 1.3, "fwhm_from": "column psf_fwhm_arcsec",
                             "beta": 3.5, "beta_from": "--psf-beta"}
    assert record["window"] == {"x0": 16, "y0": 16, "size": 64, "from": "preprocessing crop"}
    assert "16" in record["flag_bits"] and "32" in record["flag_bits"]
    assert summary["psf"] == "moffat FWHM 1.3 arcsec, beta 3.5"
    # archetypes take that PSF without being told, and refuse a different one
    out = make_archetype_set(path, tmp_path / "arch.h5", seed=0)
    with ImageSet.open(tmp_path / "arch.h5") as arch:
        used = arch.catalog.meta["archetypes"]["psf"]
        assert used["source"] == "fit-sersic record" and used["beta"] == 3.5
        assert np.allclose(arch.catalog["psf_beta"], 3.5) and np.allclose(arch.catalog["psf_fwhm_arcsec"], 1.3)
    assert "beta 3.5" in out["psf"]
    make_archetype_set(path, tmp_path / "same.h5", psf_fwhm=1.3, psf_beta=3.5, seed=0)  # agreeing options are fine
    for kwargs, option in (({"psf_fwhm": 1.4}, "--psf-fwhm 1.4"), ({"psf_beta": 4.765}, "--psf-beta 4.765"),
                           ({"psf_kind": "gaussian"}, "--psf gaussian")):
        with pytest.raises(MorphllrError, match=f"{option}: the Sérsic fits of .*obs.h5 deconvolved moffat FWHM 1.3"):
            make_archetype_set(path, tmp_path / "other.h5", **kwargs)
    assert not (tmp_path / "other.h5").exists()


def test_beta_per_galaxy_from_the_catalogue(tmp_path):
    from morphllr.data.imageset import ImageSet

    path = _fitted_set(tmp_path, make_psf(1.4), {"psf_fwhm_arcsec": [1.4, 1.2], "psf_beta": [3.0, np.nan]})
    fit_imageset(path, workers=1)
    cat = ImageSet.open(path).catalog
    assert list(cat["sersic_psf_beta"]) == [3.0, 4.765]  # a blank cell is the default
    assert list(cat["sersic_psf_fwhm_arcsec"]) == [1.4, 1.2]
    assert cat.meta["sersic_fit"]["psf"]["beta"] is None and "column psf_beta" in cat.meta["sersic_fit"]["psf"]["beta_from"]


def test_fit_with_a_psf_image_records_it_and_archetypes_use_it(tmp_path):
    from morphllr.galaxies.archetypes import make_archetype_set
    from morphllr.data.imageset import ImageSet
    from morphllr.galaxies.psf import psf_from_image, psf_image
    from morphllr.data.inputs import file_sha256

    true = make_psf(1.4, "moffat", beta=3.0)
    pixels = psf_image(true, SCALE, size=31, pixel_integrated=True)
    np.save(tmp_path / "psf.npy", pixels)
    path = _fitted_set(tmp_path, psf_from_image(pixels, SCALE), {"sky_sigma": [SKY_SIGMA] * 2})
    fit_imageset(path, psf_image_path=tmp_path / "psf.npy", workers=1)
    cat = ImageSet.open(path).catalog
    image = cat.meta["sersic_fit"]["psf"]["image"]
    assert image["file"] == "psf.npy" and image["sha256"] == file_sha256(tmp_path / "psf.npy")
    assert np.allclose(image["pixels"], pixels) and np.isnan(cat["sersic_psf_fwhm_arcsec"]).all()
    assert np.allclose(cat["sersic_n"], [1.5, 2.5], atol=0.25)
    (tmp_path / "psf.npy").unlink()  # the set holds the PSF: archetypes need no file
    make_archetype_set(path, tmp_path / "arch.h5", seed=0)
    record = ImageSet.open(tmp_path / "arch.h5").attrs["archetypes"]
    assert image["sha256"] in record and "fit-sersic record" in record


def test_fit_imageset_excludes_the_sets_masked_pixels(tmp_path, psf):
    """ImageSet.mask (flux grid, 1 = excluded) keeps a companion out of the fit, like a segmentation label."""
    import h5py

    from morphllr.data.imageset import ImageSet

    from morphllr.data.prepare import write_flux_set

    rng = np.random.default_rng(3)
    main = galsim_image(2.0, 5.0, 0.6, 70.0, 2e4, psf)
    comp = galsim_image(1.0, 3.0, 1.0, 0.0, 4e4, psf, offset=(20.0, 14.0))
    flux = (main + comp + rng.normal(0, SKY_SIGMA, main.shape))[None, None].astype(np.float32)
    path = write_flux_set(tmp_path / "obs.h5", flux, {"id": ["a"], "sky_sigma": [SKY_SIGMA]}, "zanisi21",
                          segmentation=None)
    unmasked = fit_imageset(path, psf_fwhm=1.4, workers=1, write=False)[0]
    yy, xx = np.indices(main.shape)
    with h5py.File(path, "r+") as f:
        f.create_dataset("mask", data=(np.hypot(xx - 51.5, yy - 45.5) < 13)[None].astype(np.uint8))
    if ImageSet.open(path).mask is None:
        pytest.skip("ImageSet has no mask support")
    table, _ = fit_imageset(path, psf_fwhm=1.4, workers=1, write=False)
    assert abs(table["sersic_re_pix"][0] / 5.0 - 1) < 0.08 and abs(table["sersic_n"][0] - 2.0) < 0.3
    assert abs(unmasked["sersic_re_pix"][0] / 5.0 - 1) > abs(table["sersic_re_pix"][0] / 5.0 - 1)
    assert table.meta["sersic_fit"]["mask"] is True
