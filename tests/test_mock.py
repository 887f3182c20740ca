"""Mock observations: flux conservation, noise level, +inf pixels, cosmology, ImageSet output, CLI."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("galsim")

from morphllr.errors import MorphllrError  # noqa: E402
from morphllr.mock import (  # noqa: E402
    SimImage,
    SurveySettings,
    add_noise,
    arcsec_per_kpc,
    make_mock_set,
    observe,
    psf_resample,
    read_sim_fits,
    sb_to_flux,
)

ZP = 28.2


def blob_sb(size=200, sigma_pix=12.0, mu0=19.0, cut=60.0):
    """A Gaussian galaxy in mag/arcsec^2 with empty (+inf) pixels beyond ``cut`` pixels."""
    yy, xx = np.indices((size, size)) - (size - 1) / 2
    r2 = xx**2 + yy**2
    mu = mu0 + 2.5 / np.log(10) * r2 / (2 * sigma_pix**2)
    return np.where(r2 > cut**2, np.inf, mu)


def survey(**kw):
    base = dict(pixel_scale=0.396, psf_fwhm=1.4, zero_point=ZP, sky_sigma=5.7, gain=4.8, size=128)
    base.update(kw)
    return SurveySettings(**base)


def write_sim_fits(path, mu, pc_per_pixel=100.0, redshift=0.05, bunit="AB mag/arcsec2"):
    from astropy.io import fits

    hdu = fits.PrimaryHDU(mu)
    hdu.header["BUNIT"] = bunit
    hdu.header["CDELT1"] = pc_per_pixel
    hdu.header["CTYPE1"] = "pc"
    if redshift is not None:
        hdu.header["REDSHIFT"] = redshift
    hdu.writeto(path)
    return path


def test_inf_is_zero_flux_and_sb_conversion():
    mu = np.array([[ZP, ZP + 2.5, np.inf]])
    flux = sb_to_flux(mu, pixel_arcsec=0.5, zero_point=ZP)
    assert np.allclose(flux, [[0.25, 0.025, 0.0]])


def test_psf_and_rebinning_conserve_flux():
    """A non-integer scale ratio (0.13 -> 0.396 arcsec) keeps the total flux."""
    flux = sb_to_flux(blob_sb(), 0.13, ZP)
    out = psf_resample(flux, 0.13, survey())
    assert abs(out.sum() / flux.sum() - 1) < 0.003
    # and the light lands in the centre of the cutout
    yy, xx = np.indices(out.shape)
    assert abs((out * xx).sum() / out.sum() - 63.5) < 0.1 and abs((out * yy).sum() / out.sum() - 63.5) < 0.1


def test_psf_broadens_the_image():
    flux = sb_to_flux(blob_sb(sigma_pix=4.0), 0.13, ZP)
    sharp = psf_resample(flux, 0.13, survey(psf_fwhm=0.3))
    blurred = psf_resample(flux, 0.13, survey(psf_fwhm=2.5))
    assert blurred.max() < 0.7 * sharp.max()
    assert abs(blurred.sum() / sharp.sum() - 1) < 0.003


def test_noise_level_matches_request():
    empty = SimImage("empty", np.full((1, 100, 100), np.inf), pixel_kpc=0.1, redshift=0.05)
    flux, _ = observe(empty, survey(sky_sigma=4.0), rng=np.random.default_rng(0))
    assert abs(flux.std() / 4.0 - 1) < 0.03 and abs(flux.mean()) < 0.05


def test_shot_noise_variance():
    bright = np.full((200, 200), 500.0)
    noisy = add_noise(bright, 2.0, 5.0, np.random.default_rng(1))
    assert abs(noisy.var() / (2.0**2 + 500.0 / 5.0) - 1) < 0.03
    assert abs(noisy.mean() / 500.0 - 1) < 0.002


def test_angular_scale_from_planck18():
    from astropy import units as u
    from astropy.cosmology import Planck18

    d_a = Planck18.angular_diameter_distance(0.1).to(u.kpc).value
    assert abs(arcsec_per_kpc(0.1) / (206264.806 / d_a) - 1) < 1e-6
    with pytest.raises(MorphllrError, match="--redshift"):
        arcsec_per_kpc(0.0)


def test_redshift_dims_and_shrinks():
    """Moving the galaxy from z=0.05 to 0.1: (1+z)^4 dimming x smaller area = inverse-square law in D_L."""
    from astropy.cosmology import Planck18

    sim = SimImage("blob", blob_sb(cut=90.0)[None], pixel_kpc=0.1, redshift=0.05)
    near, _ = observe(sim, survey(), noise=False)
    far, meta = observe(sim, survey(), redshift=0.1, noise=False)
    d_l = Planck18.luminosity_distance([0.05, 0.1]).value
    assert abs(far.sum() / near.sum() / (d_l[0] / d_l[1]) ** 2 - 1) < 0.003
    assert meta["sim_pixel_arcsec"] == pytest.approx(0.1 * arcsec_per_kpc(0.1))
    assert far.max() / far.sum() > near.max() / near.sum()


def test_read_fits_and_bad_files(tmp_path):
    good = write_sim_fits(tmp_path / "g.fits", blob_sb(size=64))
    sim = read_sim_fits(good)
    assert sim.pixel_kpc == pytest.approx(0.1) and sim.redshift == 0.05 and sim.mag_arcsec2.shape == (1, 64, 64)
    nan = blob_sb(size=64)
    nan[3, 3] = np.nan
    with pytest.raises(MorphllrError, match="NaN"):
        read_sim_fits(write_sim_fits(tmp_path / "nan.fits", nan))
    with pytest.raises(MorphllrError, match="BUNIT"):
        read_sim_fits(write_sim_fits(tmp_path / "jy.fits", blob_sb(size=64), bunit="Jy"))
    no_z = read_sim_fits(write_sim_fits(tmp_path / "noz.fits", blob_sb(size=64), redshift=None))
    with pytest.raises(MorphllrError, match="--redshift"):
        observe(no_z, survey())


def test_mock_set_is_a_valid_imageset(tmp_path):
    from morphllr.imageset import ImageSet

    files = [write_sim_fits(tmp_path / f"sim{i}.fits", blob_sb(size=120, sigma_pix=6 + 3 * i)) for i in range(2)]
    summary = make_mock_set(files, tmp_path / "mock.h5", seed=3)
    s = ImageSet.open(tmp_path / "mock.h5")
    assert summary["n"] == 2 and s.shape == (2, 1, 32, 32)
    assert list(s.catalog["id"]) == ["sim0", "sim1"]
    assert s.preprocessing["name"] == "zanisi21" and s.flux.shape == (2, 1, 128, 128)
    assert np.isfinite(s.images[:]).all()
    # a different zero point is recorded, so models trained in other units can refuse the set
    make_mock_set(files, tmp_path / "nmgy.h5", zero_point=22.5, sky_sigma=0.03, gain=900.0)
    assert ImageSet.open(tmp_path / "nmgy.h5").preprocessing["zero_point"] == 22.5


def test_cli_mock_fit_archetypes(tmp_path):
    """The three commands chain: mock -> fit-sersic -> archetypes; bad input exits 2 with one line."""
    from morphllr.cli import main
    from morphllr.imageset import ImageSet

    # Gaussian discs of 2-3 kpc sigma: resolved (several pixels) at z = 0.05
    files = [str(write_sim_fits(tmp_path / f"s{i}.fits", blob_sb(size=240, sigma_pix=20 + 5 * i, cut=119)))
             for i in range(2)]
    out, arch = str(tmp_path / "m.h5"), str(tmp_path / "a.h5")
    for argv in (["mock", *files, "--out", out], ["fit-sersic", out, "--psf-fwhm", "1.4", "--workers", "1"],
                 ["archetypes", out, "--out", arch, "--psf-fwhm", "1.4", "--workers", "1"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 0, argv
    cat = ImageSet.open(out).catalog
    # a Gaussian blob is a Sérsic n = 0.5
    assert np.all(np.abs(np.asarray(cat["sersic_n"]) - 0.5) < 0.15)
    assert list(ImageSet.open(arch).catalog["id"]) == ["s0", "s1"]
    with pytest.raises(SystemExit) as exc:
        main(["archetypes", str(tmp_path / "missing.h5"), "--out", str(tmp_path / "x.h5")])
    assert exc.value.code == 2


@pytest.mark.shared_data
def test_realsim_idealized_snapshot(shared_data):
    files = sorted((shared_data / "realsim_idealized").glob("photo_r_*.fits"))
    if not files:
        pytest.skip("no realsim_idealized r-band files")
    sim = read_sim_fits(files[0])
    assert np.isposinf(sim.mag_arcsec2).any()  # the empty pixels this module must handle
    clean, meta = observe(sim, survey(), noise=False)
    total_in = sb_to_flux(sim.mag_arcsec2[0], meta["sim_pixel_arcsec"], ZP).sum()
    assert np.isfinite(clean).all() and clean.min() > -1e-3 * clean.max()
    assert abs(clean.sum() / total_in - 1) < 0.01
