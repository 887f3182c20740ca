"""Sérsic fitter: model fidelity against GalSim, recovery of known truth, conventions, masking."""

from __future__ import annotations

import numpy as np
import pytest

galsim = pytest.importorskip("galsim")

from morphllr.psf import make_psf  # noqa: E402
from morphllr.sersic_fit import (  # noqa: E402
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


def test_companion_is_masked(kernel, psf):
    """A bright neighbour labelled > 1 in the segmentation does not pull the fit."""
    rng = np.random.default_rng(3)
    main = galsim_image(2.0, 5.0, 0.6, 70.0, 2e4, psf)
    comp = galsim_image(1.0, 3.0, 1.0, 0.0, 4e4, psf, offset=(22.0, 16.0))
    image = main + comp + rng.normal(0, SKY_SIGMA, main.shape)
    yy, xx = np.indices(image.shape)
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
    from morphllr.imageset import ImageSet, write_flux_set

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

    from morphllr.sersic_fit import sersic_b, sersic_surface_brightness

    n, re, q, theta, flux = 2.5, 6.0, 0.6, np.radians(35.0), 1e4
    b = sersic_b(n)
    # I_e of a Sérsic of total flux F: F / (2 pi q Re^2 n e^b b^-2n Gamma(2n))
    i_e = flux / (2 * np.pi * q * re**2 * n * np.exp(b + gammaln(2 * n) - 2 * n * np.log(b)))
    yy, xx = np.mgrid[-20:21, -20:21].astype(float)
    ours = sersic_surface_brightness(xx, yy, flux, re, n, q, theta)
    theirs = Sersic2D(amplitude=i_e, r_eff=re, n=n, x_0=0, y_0=0, ellip=1 - q, theta=theta)(xx, yy)
    assert np.allclose(ours, theirs, rtol=1e-6)
