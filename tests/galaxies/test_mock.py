"""Mock observations: flux conservation, noise level, +inf pixels, cosmology, ImageSet output, CLI."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("galsim")

from morphllr.errors import MorphllrError  # noqa: E402
from morphllr.galaxies.mock import (  # noqa: E402
    SimImage,
    SurveySettings,
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
    from morphllr.galaxies.archetypes import add_matched_noise

    noisy = add_matched_noise(bright, 2.0, 5.0, np.random.default_rng(1))
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
    assert sim.pixel_kpc == pytest.approx(0.1) and sim.redshift == 0.05 and sim.data.shape == (1, 64, 64)
    nan = blob_sb(size=64)
    nan[3, 3] = np.nan
    nan[4, 4] = -np.inf
    masked = read_sim_fits(write_sim_fits(tmp_path / "nan.fits", nan))
    assert masked.n_nonfinite == 2 and np.isposinf(masked.data[0, 3, 3])  # masked as "no light", counted
    with pytest.raises(MorphllrError, match="BUNIT.*--zero-point"):
        read_sim_fits(write_sim_fits(tmp_path / "jy.fits", blob_sb(size=64), bunit="Jy"))
    no_z = read_sim_fits(write_sim_fits(tmp_path / "noz.fits", blob_sb(size=64), redshift=None))
    with pytest.raises(MorphllrError, match="--redshift"):
        observe(no_z, survey())


def test_mock_set_is_a_valid_imageset(tmp_path):
    from morphllr.data.imageset import ImageSet

    files = [write_sim_fits(tmp_path / f"sim{i}.fits", blob_sb(size=120, sigma_pix=6 + 3 * i)) for i in range(2)]
    summary = make_mock_set(files, tmp_path / "mock.h5", seed=3)
    s = ImageSet.open(tmp_path / "mock.h5")
    assert summary["n"] == 2 and s.shape == (2, 1, 32, 32)
    assert list(s.catalog["id"]) == ["sim0", "sim1"]
    assert s.preprocessing["name"] == "zanisi21" and s.flux.shape == (2, 1, 128, 128)
    assert np.isfinite(s.images[:]).all()
    # a different working zero point is recorded, so models trained in other units can refuse the set
    make_mock_set(files, tmp_path / "nmgy.h5", working_zero_point=22.5, sky_sigma=0.03, gain=900.0)
    assert ImageSet.open(tmp_path / "nmgy.h5").preprocessing["zero_point"] == 22.5


def test_cli_mock_fit_archetypes(tmp_path):
    """The three commands chain: mock -> fit-sersic -> archetypes; bad input exits 2 with one line."""
    from morphllr.cli import main
    from morphllr.data.imageset import ImageSet

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
    assert np.isposinf(sim.data).any()  # the empty pixels this module must handle
    clean, meta = observe(sim, survey(), noise=False)
    total_in = sb_to_flux(sim.data[0], meta["sim_pixel_arcsec"], ZP).sum()
    assert np.isfinite(clean).all() and clean.min() > -1e-3 * clean.max()
    assert abs(clean.sum() / total_in - 1) < 0.01


# ---------------------------------------------------------------- TNG SKIRT cubes and RealSim-style insertion
SKIRT_BANDS = ("sloan/sdss_g", "sloan/sdss_r", "sloan/sdss_i", "sloan/sdss_z")


def write_skirt_cube(path, size=100, total_counts_s=(400.0, 1000.0, 900.0, 200.0), sigma_pix=6.0,
                     pixscale=0.396, pc=374.0, use_z=0.0485, nan_pixels=0):
    """A TNG-SKIRT-layout cube: (4, N, N) counts/s/pixel Gaussian blobs with FILTERn, PIXSCALE, USE_Z, CDELT1 pc."""
    from astropy.io import fits

    yy, xx = np.indices((size, size)) - (size - 1) / 2
    blob = np.exp(-(xx**2 + yy**2) / (2 * sigma_pix**2))
    cube = np.stack([t * blob / blob.sum() for t in total_counts_s]).astype(np.float32)
    cube.reshape(-1)[:nan_pixels] = np.nan
    hdu = fits.PrimaryHDU(cube)
    h = hdu.header
    h["BUNIT"] = "counts/s/pixel"
    h["CDELT1"] = h["CDELT2"] = pc
    h["CTYPE1"] = h["CTYPE2"] = "pc"
    if pixscale is not None:
        h["PIXSCALE"] = pixscale
    h["USE_Z"] = use_z
    for i, band in enumerate(SKIRT_BANDS):
        h[f"FILTER{i}"] = band
    hdu.writeto(path)
    return path


def test_skirt_cube_counts_to_working_unit_conserve_flux(tmp_path):
    """A cube of known AB magnitude (through the given zero point) keeps its total flux within 1 %."""
    zp_1cps = 23.9  # AB mag of 1 count/s, as a user would give it
    sim = read_sim_fits(write_skirt_cube(tmp_path / "c.fits"), bands=["r"])
    assert sim.units == "counts_per_s" and sim.data.shape == (1, 100, 100) and sim.pixel_arcsec == 0.396
    mag = zp_1cps - 2.5 * np.log10(1000.0)  # the r plane holds 1000 counts/s
    expected = 10 ** (-0.4 * (mag - ZP))  # SDSS-r counts (working unit, AB zero point 28.2)
    clean, meta = observe(sim, survey(), noise=False, input_zero_point=zp_1cps)
    assert abs(clean.sum() / expected - 1) < 0.01
    assert meta["dimming_mag"] == 0.0 and meta["sim_pixel_arcsec"] == 0.396  # seen at its own USE_Z
    # the prepare path (Preprocessing.to_flux) converts the same way
    from morphllr.data.preprocess import Preprocessing

    prep = Preprocessing.preset("zanisi21").replace(input_zero_point=zp_1cps)
    assert abs(prep.to_flux(sim.data, "counts_per_s").sum() / expected - 1) < 1e-5
    with pytest.raises(MorphllrError, match="--zero-point"):
        observe(sim, survey(), noise=False)


def test_band_selection_by_name(tmp_path):
    from morphllr.data.files import select_bands

    assert select_bands(list(SKIRT_BANDS), ["r"], "x") == [1]
    assert select_bands(list(SKIRT_BANDS), ["sdss_i", "g"], "x") == [2, 0]
    with pytest.raises(MorphllrError, match="sloan/sdss_g, sloan/sdss_r, sloan/sdss_i, sloan/sdss_z"):
        select_bands(list(SKIRT_BANDS), ["u"], "x")
    path = write_skirt_cube(tmp_path / "c.fits")
    with pytest.raises(MorphllrError, match="--band.*|4-band cube"):
        read_sim_fits(path)  # a band cube read without a band lists its bands
    both = read_sim_fits(path, bands=["g", "r"])
    assert both.data.shape == (2, 100, 100) and both.bands == "sloan/sdss_g,sloan/sdss_r"
    assert abs(both.data[1].sum() / both.data[0].sum() - 2.5) < 1e-4


def test_prepare_reads_a_band_cube_as_one_galaxy(tmp_path):
    """Before: one 'galaxy' per band plane, counts/s taken as counts.  Now: one galaxy, converted."""
    from morphllr.cli import main
    from morphllr.data.imageset import ImageSet

    write_skirt_cube(tmp_path / "broadband_1.fits", size=90)
    out = tmp_path / "p.h5"
    with pytest.raises(SystemExit) as exc:
        main(["prepare", str(tmp_path / "broadband_1.fits"), "--band", "r", "--zero-point", "23.9", "--pad",
              "--out", str(out)])
    assert exc.value.code == 0
    s = ImageSet.open(out)
    assert len(s) == 1 and s.preprocessing["input_zero_point"] == 23.9
    assert abs(float(np.asarray(s.flux[0]).sum()) / 10 ** (-0.4 * (23.9 - 2.5 * np.log10(1000.0) - ZP)) - 1) < 0.01


def test_small_images_are_padded_with_zero_flux_before_the_psf(tmp_path):
    sim = read_sim_fits(write_skirt_cube(tmp_path / "c.fits", size=60, sigma_pix=3.0), bands=["r"])
    clean, _ = observe(sim, survey(), noise=False, input_zero_point=23.9)
    assert clean.shape == (1, 128, 128)
    expected = 10 ** (-0.4 * (23.9 - 2.5 * np.log10(1000.0) - ZP))
    assert abs(clean.sum() / expected - 1) < 0.01
    assert np.abs(clean[0, :20]).max() < 1e-4 * clean.max()  # beyond the simulation's field: no light


@pytest.mark.parametrize("cosmology", ["Planck18", "realsim"])
def test_angular_pixel_against_astropy_for_both_cosmologies(tmp_path, cosmology):
    from astropy.cosmology import FlatLambdaCDM, Planck18

    from morphllr.galaxies.mock import observed_pixel

    sim = read_sim_fits(write_skirt_cube(tmp_path / "c.fits"), bands=["r"], cosmology=cosmology)
    astro = Planck18 if cosmology == "Planck18" else FlatLambdaCDM(H0=70, Om0=0.3)
    assert observed_pixel(sim, 0.0485, cosmology) == 0.396  # the header's PIXSCALE at USE_Z
    # elsewhere PIXSCALE scaled by the cosmology's ratio of angular sizes: continuous in z
    ratio = astro.arcsec_per_kpc_proper(0.08).value / astro.arcsec_per_kpc_proper(0.0485).value
    assert observed_pixel(sim, 0.08, cosmology) == pytest.approx(0.396 * ratio, rel=1e-9)
    assert observed_pixel(sim, 0.0485 + 1e-6, cosmology) == pytest.approx(0.396, rel=1e-4)
    # without PIXSCALE the physical pixel goes through the cosmology
    no_angle = read_sim_fits(write_skirt_cube(tmp_path / "p.fits", pixscale=None), bands=["r"], cosmology=cosmology)
    assert observed_pixel(no_angle, 0.08, cosmology) == pytest.approx(0.374 * astro.arcsec_per_kpc_proper(0.08).value,
                                                                      rel=1e-9)
    assert arcsec_per_kpc(0.05, cosmology) == pytest.approx(astro.arcsec_per_kpc_proper(0.05).value, rel=1e-12)


def test_use_z_is_not_dimmed_twice_and_k_correction_warns(tmp_path):
    sim = read_sim_fits(write_skirt_cube(tmp_path / "c.fits"), bands=["r"])
    own, _ = observe(sim, survey(), noise=False, input_zero_point=23.9)
    same, meta = observe(sim, survey(), redshift=0.0485, noise=False, input_zero_point=23.9)
    assert np.allclose(own, same) and not meta["warnings"]  # --redshift USE_Z: no extra (1+z)^4
    from astropy.cosmology import Planck18

    far, meta = observe(sim, survey(), redshift=0.12, noise=False, input_zero_point=23.9)
    d_l = Planck18.luminosity_distance([0.0485, 0.12]).value
    assert abs(far.sum() / own.sum() / (d_l[0] / d_l[1]) ** 2 - 1) < 0.005  # inverse square in D_L
    assert "K-correction" in meta["warnings"][0]
    near, _ = observe(sim, survey(), redshift=0.0486, noise=False, input_zero_point=23.9)
    assert abs(near.sum() / own.sum() - (d_l[0] / Planck18.luminosity_distance(0.0486).value) ** 2) < 0.002


def correlated_sky(n, size, seed=0, sigma=5.0):
    """Sky with a known negative neighbour correlation: Gaussian noise plus a +-3 checkerboard."""
    rng = np.random.default_rng(seed)
    yy, xx = np.indices((size, size))
    board = np.where((yy + xx) % 2, 3.0, -3.0)
    return (rng.normal(0, sigma, (n, 1, size, size)) + board).astype(np.float32)


def neighbour_corr(pixels_mask, images):
    """Mean correlation of horizontally adjacent pixels that are both in the mask."""
    a, b = images[..., :, 1:], images[..., :, :-1]
    both = pixels_mask[..., :, 1:] & pixels_mask[..., :, :-1]
    za = (a - a[both].mean()) / a[both].std()
    zb = (b - b[both].mean()) / b[both].std()
    return float((za * zb)[both].mean())


def test_empty_pixels_of_a_mock_keep_the_sky_patches(tmp_path):
    from morphllr.data.imageset import ImageSet

    library = correlated_sky(40, 160)
    np.save(tmp_path / "sky.npy", library)
    files = [write_skirt_cube(tmp_path / f"c{i}.fits", sigma_pix=4 + i) for i in range(6)]
    make_mock_set(files, tmp_path / "m.h5", bands=["r"], zero_point=23.9, sky_patches=tmp_path / "sky.npy", seed=1)
    s = ImageSet.open(tmp_path / "m.h5")
    flux, seg = np.asarray(s.flux[:])[:, 0], np.asarray(s.segmap[:])
    empty = seg == 0
    sky_corr, lib_corr = neighbour_corr(empty, flux), neighbour_corr(np.ones(library[:, 0].shape, bool), library[:, 0])
    assert lib_corr < -0.2 and abs(sky_corr - lib_corr) < 0.05  # Gaussian noise would give ~0
    assert abs(flux[empty].std() / library.std() - 1) < 0.05
    cat = s.catalog
    assert np.all((cat["sky_patch"] >= 0) & (cat["sky_patch"] < 40))
    recorded = s.preprocessing["mock"]["sky"]
    assert recorded["file"] == "sky.npy" and len(recorded["sha256"]) == 64 and recorded["n_patches"] == 40
    np.save(tmp_path / "small.npy", correlated_sky(3, 100))
    with pytest.raises(MorphllrError, match="smaller than the 128x128 cutout"):
        make_mock_set(files, tmp_path / "x.h5", bands=["r"], zero_point=23.9, sky_patches=tmp_path / "small.npy")


def test_match_draws_psfs_from_the_observed_population(tmp_path):
    """Every recorded FWHM is an observed one; 500 draws follow the observed distribution (DKW bound)."""
    from astropy.io import fits

    from morphllr.data.imageset import ImageSet, write_imageset
    from morphllr.data.preprocess import Preprocessing

    rng = np.random.default_rng(5)
    observed_fwhm = np.round(rng.gamma(20.0, 0.07, 150), 3)
    write_imageset(tmp_path / "obs.h5", np.zeros((150, 1, 8, 8)),
                   {"id": np.arange(150).astype(str), "psf_fwhm_arcsec": observed_fwhm,
                    "sky_sigma": np.full(150, 5.0), "redshift": rng.uniform(0.02, 0.06, 150)},
                   Preprocessing.preset("zanisi21"))
    # a cube of 500 single-band empty maps (no FILTER keys): 500 galaxies, cheap to observe
    tiny = np.full((500, 12, 12), np.inf)
    hdu = fits.PrimaryHDU(tiny)
    hdu.header.update(BUNIT="AB mag/arcsec2", CDELT1=300.0, CTYPE1="pc", REDSHIFT=0.04)
    hdu.writeto(tmp_path / "many.fits")
    make_mock_set([tmp_path / "many.fits"], tmp_path / "m.h5", match=tmp_path / "obs.h5", match_redshift=True, seed=2)
    cat = ImageSet.open(tmp_path / "m.h5").catalog
    drawn = np.asarray(cat["psf_fwhm_arcsec"])
    assert np.isin(drawn, observed_fwhm).all() and len(drawn) == 500
    grid = np.sort(np.unique(np.concatenate([drawn, observed_fwhm])))
    ecdf = np.searchsorted(np.sort(drawn), grid, side="right") / len(drawn)
    cdf = np.searchsorted(np.sort(observed_fwhm), grid, side="right") / len(observed_fwhm)
    alpha = 1e-3
    assert np.abs(ecdf - cdf).max() <= np.sqrt(np.log(2 / alpha) / (2 * len(drawn)))
    obs_z = dict(zip(ImageSet.open(tmp_path / "obs.h5").catalog["id"], ImageSet.open(tmp_path / "obs.h5").catalog["redshift"]))
    assert all(abs(z - obs_z[m]) < 1e-12 for z, m in zip(cat["redshift"], cat["match_id"]))


def test_models_refuse_mocks_of_another_zero_point_or_cosmology(tmp_path):
    from morphllr.data.imageset import ImageSet
    from morphllr.data.preprocess import Preprocessing, check_compatible

    real = Preprocessing.preset("zanisi21").to_dict()  # a model of observed galaxies: no cosmology
    legacy = {k: v for k, v in real.items() if k not in ("cosmology", "input_zero_point", "mock")}
    of_mocks = Preprocessing.preset("zanisi21").replace(cosmology="Planck18").to_dict()  # a model of Planck18 mocks
    path = write_skirt_cube(tmp_path / "c.fits")
    cases = (("ok", {}, {}), ("zp", {"working_zero_point": 22.5, "sky_sigma": 0.03}, {"real": "zero_point",
             "legacy": "zero_point", "of_mocks": "zero_point"}),
             ("cosmo", {"cosmology": "realsim", "redshift": 0.06}, {"of_mocks": "cosmology"}))
    for name, kwargs, refused_by in cases:
        make_mock_set([path], tmp_path / f"{name}.h5", bands=["r"], zero_point=23.9, **kwargs)
        prep = ImageSet.open(tmp_path / f"{name}.h5").preprocessing
        for model_name, model_prep in (("real", real), ("legacy", legacy), ("of_mocks", of_mocks)):
            if model_name in refused_by:
                with pytest.raises(MorphllrError, match=refused_by[model_name]):
                    check_compatible(model_prep, prep, "model vs mock")
            else:  # models written before the cosmology key behave as models of real galaxies
                check_compatible(model_prep, prep, "model vs mock")


def test_catalogue_joins_properties_and_gives_per_galaxy_psfs(tmp_path):
    from astropy.table import Table

    from morphllr.data.imageset import ImageSet

    files = [write_skirt_cube(tmp_path / f"broadband_{i}.fits") for i in range(3)]
    Table({"id": ["broadband_0", "broadband_1", "broadband_2"], "log_mstar": [10.1, 10.5, 11.0],
           "psf_fwhm_arcsec": [1.1, 1.3, 1.7]}).write(tmp_path / "cat.csv")
    summary = make_mock_set(files, tmp_path / "m.h5", bands=["r"], zero_point=23.9, catalog=tmp_path / "cat.csv")
    cat = ImageSet.open(tmp_path / "m.h5").catalog
    assert list(cat["log_mstar"]) == [10.1, 10.5, 11.0] and list(cat["psf_fwhm_arcsec"]) == [1.1, 1.3, 1.7]
    assert "catalogue" in summary["psf"]


def test_cli_mock_bad_inputs_give_one_line(tmp_path, capsys):
    from morphllr.cli import main

    cube = str(write_skirt_cube(tmp_path / "c.fits"))
    cases = [
        ([cube], "sloan/sdss_r"),  # no --band: the cube's bands are listed
        ([cube, "--band", "u"], "no band 'u'"),
        ([cube, "--band", "r"], "--zero-point"),  # counts/s without a zero point
        ([str(write_sim_fits(tmp_path / "jy.fits", blob_sb(size=64), bunit="Jy")), "--zero-point", "20"], "BUNIT"),
    ]
    for argv, expected in cases:
        with pytest.raises(SystemExit) as exc:
            main(["mock", *argv, "--out", str(tmp_path / "o.h5")])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and expected in err and "Traceback" not in err, (argv, err)
        assert not (tmp_path / "o.h5").exists()


@pytest.mark.shared_data
def test_real_tng50_skirt_cubes(shared_data, tmp_path):
    from morphllr.data.imageset import ImageSet

    folder = shared_data / "tng50_skirt"
    if not folder.is_dir():
        pytest.skip("no tng50_skirt folder in the shared data")
    summary = make_mock_set([folder], tmp_path / "tng.h5", bands=["r"], zero_point=23.9, seed=0)
    s = ImageSet.open(tmp_path / "tng.h5")
    assert summary["n"] == 11 == len(s) and s.flux.shape == (11, 1, 128, 128)  # 11 galaxies, not 44 band planes
    assert np.all(np.asarray(s.catalog["dimming_mag"]) == 0.0)  # already seen at USE_Z
    assert np.all(np.asarray(s.catalog["central_found"]))


def test_cli_mock_like_a_set_takes_its_recipe(tmp_path):
    from morphllr.cli import main
    from morphllr.data.imageset import ImageSet

    cube = str(write_skirt_cube(tmp_path / "c.fits"))
    first, second = str(tmp_path / "first.h5"), str(tmp_path / "second.h5")
    for argv in (["mock", cube, "--band", "r", "--zero-point", "23.9", "--cosmology", "realsim", "--out", first],
                 ["mock", cube, "--band", "r", "--zero-point", "23.9", "--like", first, "--out", second]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 0, argv
    prep = ImageSet.open(second).preprocessing
    assert prep["cosmology"] == "FlatLambdaCDM(H0=70, Om0=0.3)" and prep["zero_point"] == 28.2
    with pytest.raises(SystemExit) as exc:  # an existing output is refused without --overwrite
        main(["mock", cube, "--band", "r", "--zero-point", "23.9", "--out", second])
    assert exc.value.code == 2


@pytest.mark.shared_data
def test_inserted_sky_is_the_frames_own_pixels_watermark(shared_data, tmp_path):
    """A +-3-count checkerboard planted in a copy of the real frame survives into the mocks' sky.

    Any resampling or smoothing of the sky would wash the checkerboard's negative neighbour
    correlation out; real SDSS sky alone has a small positive one.
    """
    from astropy.io import fits

    from morphllr.data.sdss_frames import working_per_nanomaggy
    from morphllr.data.imageset import ImageSet
    from morphllr.galaxies.sky_patches import sky_patch_library

    frame = shared_data / "sdss_frame" / "frame-r-002583-2-0136.fits.bz2"
    if not frame.is_file():
        pytest.skip(f"{frame} not found")
    with fits.open(frame) as hdul:
        hdul = fits.HDUList([h.copy() for h in hdul])
    image = hdul[0].data.astype(np.float64)
    yy, xx = np.indices(image.shape)
    image += np.where((yy + xx) % 2, 3.0, -3.0) / working_per_nanomaggy(ZP)  # +-3 counts, in nanomaggies
    hdul[0].data = image.astype(np.float32)
    marked = tmp_path / "frame-r-002583-2-0136.fits"
    hdul.writeto(marked)
    cube = write_skirt_cube(tmp_path / "c.fits", sigma_pix=5.0)
    corr = {}
    for name, source in (("real", frame), ("marked", marked)):
        np.save(tmp_path / f"{name}.npy", sky_patch_library(source, 128, n=12, part="2/2").patches)
        make_mock_set([cube] * 1 + [write_skirt_cube(tmp_path / f"d{name}.fits", sigma_pix=3.0)],
                      tmp_path / f"{name}.h5", bands=["r"], zero_point=23.9, sky_patches=tmp_path / f"{name}.npy")
        s = ImageSet.open(tmp_path / f"{name}.h5")
        corr[name] = neighbour_corr(np.asarray(s.segmap[:]) == 0, np.asarray(s.flux[:])[:, 0])
    assert corr["real"] > 0.0 and corr["marked"] < -0.1, corr


def test_one_file_per_band_is_stacked_per_galaxy(tmp_path):
    """photo_g_X / photo_r_X (RealSim naming) become one 2-band galaxy X, channels in the asked order."""
    from morphllr.data.files import expand_inputs, group_band_files

    for name in ("a", "b"):
        write_sim_fits(tmp_path / f"photo_g_{name}_i0.fits", blob_sb(size=64, mu0=20.0))
        write_sim_fits(tmp_path / f"photo_r_{name}_i0.fits", blob_sb(size=64, mu0=19.0))
    files = expand_inputs([tmp_path])
    groups = group_band_files(files, ["r", "g"])
    assert [g[0] for g in groups] == ["photo_a_i0", "photo_b_i0"]
    assert [p.name for p in groups[0][1]] == ["photo_r_a_i0.fits", "photo_g_a_i0.fits"]
    sims = list(__import__("morphllr.galaxies.mock", fromlist=["read_sims"]).read_sims([tmp_path], bands=["r", "g"]))
    assert len(sims) == 2 and sims[0].data.shape == (2, 64, 64) and sims[0].bands == "r,g"
    clean, _ = observe(sims[0], survey(), noise=False)
    assert abs(clean[0].sum() / clean[1].sum() - 10 ** 0.4) < 1e-3  # r is 1 mag brighter than g
    (tmp_path / "photo_g_b_i0.fits").unlink()
    with pytest.raises(MorphllrError, match="lacks band"):
        group_band_files(expand_inputs([tmp_path]), ["r", "g"])


def test_psf_image_is_used_for_every_galaxy(tmp_path):
    from morphllr.data.imageset import ImageSet
    from morphllr.galaxies.psf import make_psf, psf_image

    kernel = psf_image(make_psf(2.5, "gaussian"), 0.396, size=41, pixel_integrated=True)
    np.save(tmp_path / "psf.npy", kernel)
    cube = write_skirt_cube(tmp_path / "c.fits", sigma_pix=1.0)  # nearly a point source
    summary = make_mock_set([cube], tmp_path / "m.h5", bands=["r"], zero_point=23.9, psf_image=tmp_path / "psf.npy",
                            sky_sigma=0.0, gain=1e9)
    flux = np.asarray(ImageSet.open(tmp_path / "m.h5").flux[0, 0], np.float64)
    yy, xx = np.indices(flux.shape)
    c = (flux * xx).sum() / flux.sum()
    sigma_pix = np.sqrt((flux * (xx - c) ** 2).sum() / flux.sum())
    expected = np.sqrt((2.5 / 2.355 / 0.396) ** 2 + 1.0**2)  # the image PSF's width, not the 1.4" default
    assert abs(sigma_pix / expected - 1) < 0.08 and summary["psf"] == "image psf.npy"


@pytest.mark.shared_data
def test_realsim_one_file_per_band_from_shared_data(shared_data):
    from morphllr.galaxies.mock import read_sims

    folder = shared_data / "realsim_idealized"
    if not folder.is_dir():
        pytest.skip("no realsim_idealized folder")
    sims = list(read_sims([folder], bands=["g", "r", "i"]))
    assert len(sims) == 3 and all(s.data.shape[0] == 3 for s in sims)  # 3 snapshots x (g, r, i), not 9 galaxies
    assert sims[0].name == "photo_CNN_G2G3_e-orbit_1_186_i0_total"


# --------------------------------------------------------------------------- provenance (issue 13)
def _run(argv):
    from morphllr.cli import main

    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    assert exc.value.code == 0, argv


def test_every_pixel_changing_mock_option_is_recorded(tmp_path):
    """Each option of `morphllr mock` either changes pixels and is found in the set's record, or is listed as not."""
    import typer
    from astropy.table import Table

    from morphllr.cli import app
    from morphllr.data.imageset import ImageSet, write_imageset
    from morphllr.data.preprocess import Preprocessing
    from morphllr.galaxies.psf import make_psf, psf_image
    from morphllr.data.inputs import file_sha256
    from morphllr.galaxies.sky_patches import patches_sha256

    cube = write_skirt_cube(tmp_path / "c.fits")
    Table({"id": ["c"], "log_mstar": [10.2]}).write(tmp_path / "cat.csv")
    np.save(tmp_path / "sky.npy", correlated_sky(4, 140))
    np.save(tmp_path / "psf.npy", psf_image(make_psf(1.3), 0.396, size=21, pixel_integrated=True))
    write_imageset(tmp_path / "obs.h5", np.zeros((3, 1, 8, 8)), {"id": ["a", "b", "c"], "psf_fwhm_arcsec": [1.1, 1.2, 1.3],
                   "redshift": [0.03, 0.04, 0.05]}, Preprocessing.preset("zanisi21"))
    first, second, third = tmp_path / "m1.h5", tmp_path / "m2.h5", tmp_path / "m3.h5"
    _run(["mock", cube, "--band", "r", "--zero-point", "23.9", "--redshift", "0.06", "--cosmology", "realsim",
          "--sim-pixel-kpc", "0.4", "--catalog", tmp_path / "cat.csv", "--preset", "zanisi21", "--pixel-scale", "0.4",
          "--psf-fwhm", "1.2", "--psf", "moffat", "--psf-beta", "3.2", "--sky-sigma", "4.0", "--gain", "5.0",
          "--working-zero-point", "28.0", "--repeat", "2", "--seed", "5", "--out", first])
    _run(["mock", cube, "--band", "r", "--zero-point", "23.9", "--sky-patches", tmp_path / "sky.npy",
          "--match", tmp_path / "obs.h5", "--match-redshift", "--psf-image", tmp_path / "psf.npy", "--out", second])
    _run(["mock", cube, "--band", "r", "--zero-point", "23.9", "--like", first, "--out", third])
    sets = {name: ImageSet.open(path) for name, path in (("first", first), ("second", second), ("third", third))}
    prep = {k: s.preprocessing for k, s in sets.items()}
    mock = {k: p["mock"] for k, p in prep.items()}
    sha = file_sha256
    recorded = {
        "--band": lambda: mock["first"]["bands"] == "sloan/sdss_r",
        "--zero-point": lambda: prep["first"]["input_zero_point"] == 23.9 == mock["first"]["input_zero_point"],
        "--redshift": lambda: mock["first"]["redshift"] == 0.06,
        "--cosmology": lambda: prep["first"]["cosmology"] == "FlatLambdaCDM(H0=70, Om0=0.3)",
        "--sim-pixel-kpc": lambda: mock["first"]["sim_pixel_kpc"] == 0.4,
        "--sky-patches": lambda: mock["second"]["sky"]["sha256"] == patches_sha256(np.load(tmp_path / "sky.npy")),
        "--match": lambda: mock["second"]["match_file"]["sha256"] == sha(tmp_path / "obs.h5"),
        "--match-redshift": lambda: mock["second"]["match_redshift"] is True,
        "--catalog": lambda: mock["first"]["catalog"]["sha256"] == sha(tmp_path / "cat.csv"),
        "--like": lambda: prep["third"]["cosmology"] == prep["first"]["cosmology"] and
        prep["third"]["pixel_scale"] == 0.4 and prep["third"]["zero_point"] == 28.0,
        "--preset": lambda: prep["first"]["name"] == "zanisi21" == mock["first"]["preset"],
        "--pixel-scale": lambda: prep["first"]["pixel_scale"] == 0.4 == mock["first"]["pixel_scale"],
        "--psf-fwhm": lambda: mock["first"]["psf_settings"]["fwhm_arcsec"] == 1.2 and
        mock["first"]["psf_settings"]["fwhm_from"] == "--psf-fwhm",
        "--psf": lambda: mock["first"]["psf_settings"]["kind"] == "moffat",
        "--psf-beta": lambda: mock["first"]["psf_settings"]["beta"] == 3.2 and
        mock["first"]["psf_settings"]["beta_from"] == "--psf-beta",
        "--psf-image": lambda: mock["second"]["psf_settings"]["image"]["sha256"] == sha(tmp_path / "psf.npy"),
        "--sky-sigma": lambda: mock["first"]["sky"]["gaussian_sigma"] == 4.0 == mock["first"]["sky_sigma"],
        "--gain": lambda: mock["first"]["gain"] == 5.0,
        "--working-zero-point": lambda: prep["first"]["zero_point"] == 28.0 == mock["first"]["zero_point"],
        "--repeat": lambda: mock["first"]["repeat"] == 2,
        "--seed": lambda: mock["first"]["seed"] == 5,
    }
    not_pixels = {"--out", "--overwrite"}
    command = typer.main.get_command(app).commands["mock"]
    options = {p.opts[0] for p in command.params if p.param_type_name == "option"}
    assert options == set(recorded) | not_pixels, "classify the new mock option(s) here and record them"
    failed = [option for option, check in recorded.items() if not check()]
    assert not failed, failed
    assert list(sets["first"].catalog["psf_beta"]) == [3.2, 3.2]  # and per galaxy in the catalogue
    assert all(str(f).startswith(str(cube)) for f in sets["second"].catalog["file"])  # the inputs, per galaxy


def test_option_beta_beats_the_catalogue_column(tmp_path):
    """Documented order option > catalogue column: --psf-beta wins over psf_beta in --catalog."""
    from astropy.table import Table

    from morphllr.data.imageset import ImageSet

    cube = write_skirt_cube(tmp_path / "c.fits")
    Table({"id": ["c"], "psf_beta": [2.5]}).write(tmp_path / "cat.csv")
    make_mock_set([cube], tmp_path / "a.h5", bands=["r"], zero_point=23.9, catalog=tmp_path / "cat.csv")
    make_mock_set([cube], tmp_path / "b.h5", bands=["r"], zero_point=23.9, catalog=tmp_path / "cat.csv", psf_beta=4.0)
    assert list(ImageSet.open(tmp_path / "a.h5").catalog["psf_beta"]) == [2.5]
    assert list(ImageSet.open(tmp_path / "b.h5").catalog["psf_beta"]) == [4.0]
    Table({"id": ["c"], "psf_beta": [0.5]}).write(tmp_path / "bad.csv")
    with pytest.raises(MorphllrError, match=r"bad.csv: column psf_beta holds 0.5 in row 1 \(id c\)"):
        make_mock_set([cube], tmp_path / "c.h5", bands=["r"], zero_point=23.9, catalog=tmp_path / "bad.csv")


# --------------------------------------------------------------------------- --match takes the fits' PSF
def _fitted_match_set(path, psf_record, columns=None, **record):
    """An observed set whose Sérsic fits recorded ``psf_record`` (catalog.meta["sersic_fit"]["psf"])."""
    from astropy.table import Table

    from morphllr.data.imageset import write_imageset
    from morphllr.data.preprocess import Preprocessing

    table = Table({"id": ["o0", "o1", "o2"], "sky_sigma": [5.0, 5.0, 5.0], **(columns or {})})
    table.meta["sersic_fit"] = {"psf": psf_record, "fit_size": 8, "channel": 0, "pixel_scale": 0.396, **record}
    write_imageset(path, np.zeros((3, 1, 8, 8)), table, Preprocessing.preset("zanisi21"))
    return path


def test_match_uses_the_psf_the_fits_recorded(tmp_path):
    """Matched mocks get the PSF the archetypes get: the fits' FWHM and beta (not psf_fwhm_arcsec / the default)."""
    from morphllr.data.imageset import ImageSet

    sim = write_sim_fits(tmp_path / "sim.fits", blob_sb(size=40, sigma_pix=4.0, cut=18.0))
    beta35 = _fitted_match_set(tmp_path / "beta.h5", {"kind": "moffat", "fwhm_arcsec": 1.4, "fwhm_from": "--psf-fwhm",
                                                      "beta": 3.5, "beta_from": "--psf-beta"},
                               {"psf_fwhm_arcsec": [2.0, 2.0, 2.0], "sersic_psf_fwhm_arcsec": [1.2, 1.2, 1.2],
                                "sersic_psf_beta": [3.5, 3.5, 3.5]})
    make_mock_set([sim], tmp_path / "a.h5", match=beta35, seed=1)
    with ImageSet.open(tmp_path / "a.h5") as s:
        assert list(s.catalog["psf_fwhm_arcsec"]) == [1.2] and list(s.catalog["psf_beta"]) == [3.5]
        settings = s.preprocessing["mock"]["psf_settings"]
        assert "its Sérsic fits' PSF: moffat FWHM 1.4 arcsec, beta 3.5" in settings["match_psf"]
    # fitted with --psf-fwhm and no column (an older fit-sersic's record too): no psf_fwhm_arcsec needed
    old = _fitted_match_set(tmp_path / "old.h5", "moffat", psf_fwhm=1.3)
    make_mock_set([sim], tmp_path / "b.h5", match=old, seed=1)
    with ImageSet.open(tmp_path / "b.h5") as s:
        assert list(s.catalog["psf_fwhm_arcsec"]) == [1.3] and list(s.catalog["psf_beta"]) == [4.765]
    # a Gaussian fit gives Gaussian mocks (no beta); an option still beats the match
    gauss = _fitted_match_set(tmp_path / "gauss.h5", {"kind": "gaussian", "fwhm_arcsec": 1.1, "fwhm_from": "--psf-fwhm"})
    make_mock_set([sim], tmp_path / "c.h5", match=gauss, seed=1)
    make_mock_set([sim], tmp_path / "d.h5", match=gauss, seed=1, psf_fwhm=1.5, psf="moffat")
    with ImageSet.open(tmp_path / "c.h5") as c, ImageSet.open(tmp_path / "d.h5") as d:
        assert list(c.catalog["psf_fwhm_arcsec"]) == [1.1] and np.isnan(c.catalog["psf_beta"]).all()
        assert c.preprocessing["mock"]["psf_settings"]["kind"] == "gaussian"
        assert list(d.catalog["psf_fwhm_arcsec"]) == [1.5] and list(d.catalog["psf_beta"]) == [4.765]


def test_match_uses_the_fits_psf_image(tmp_path):
    from morphllr.data.imageset import ImageSet
    from morphllr.galaxies.psf import make_psf, psf_image

    pixels = psf_image(make_psf(1.4, "moffat", beta=3.0), 0.396, size=15, pixel_integrated=True)
    record = {"kind": "image", "pixel_scale": 0.396,
              "image": {"file": "star.fits", "sha256": "ab" * 32, "pixels_sha256": "cd" * 32, "shape": [15, 15],
                        "pixels": pixels.tolist()}}
    match = _fitted_match_set(tmp_path / "obs.h5", record, {"psf_fwhm_arcsec": [2.0, 2.0, 2.0]})
    sim = write_sim_fits(tmp_path / "sim.fits", blob_sb(size=40, sigma_pix=4.0, cut=18.0))
    np.save(tmp_path / "star.npy", pixels)
    make_mock_set([sim], tmp_path / "a.h5", match=match, seed=1, sky_sigma=0.0, gain=None)
    make_mock_set([sim], tmp_path / "b.h5", psf_image=tmp_path / "star.npy", seed=1, sky_sigma=0.0, gain=None)
    with ImageSet.open(tmp_path / "a.h5") as a, ImageSet.open(tmp_path / "b.h5") as b:
        assert np.array_equal(a.flux[:], b.flux[:]) and np.isnan(a.catalog["psf_fwhm_arcsec"]).all()
        settings = a.preprocessing["mock"]["psf_settings"]
        assert settings["kind"] == "image" and settings["image"]["file"] == "star.fits"
        assert "pixels" not in settings["image"]
    with pytest.raises(MorphllrError, match=r"--match .*obs.h5: its Sérsic fits used the PSF image star.fits sampled "
                                            r"at 0.396 arcsec/pixel, but the mocks are drawn at 0.2"):
        make_mock_set([sim], tmp_path / "c.h5", match=match, pixel_scale=0.2)
    assert not (tmp_path / "c.h5").exists()


def test_mocks_are_flux_and_refuse_a_jpeg_recipe(tmp_path, capsys):
    from morphllr.cli import main
    from morphllr.data.imageset import ImageSet, write_imageset
    from morphllr.data.preprocess import Preprocessing

    sim = write_sim_fits(tmp_path / "sim.fits", blob_sb(size=40, sigma_pix=4.0, cut=18.0))
    make_mock_set([sim], tmp_path / "m.h5", seed=0)
    assert ImageSet.open(tmp_path / "m.h5").preprocessing["input_kind"] == "flux"
    write_imageset(tmp_path / "jpeg.h5", np.zeros((2, 1, 8, 8)), {"id": ["a", "b"]}, Preprocessing.preset("jpeg8bit"))
    for argv, source in ((["--like", tmp_path / "jpeg.h5"], f"--like {tmp_path / 'jpeg.h5'}"),
                         (["--preset", "gz2_linear"], "--preset gz2_linear")):
        with pytest.raises(SystemExit) as stop:
            main(["mock", str(sim), "--out", str(tmp_path / "x.h5"), *map(str, argv)])
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert stop.value.code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {source}: the recipe is for ")
        assert "simulations are calibrated flux" in lines[0] and "flux set or model for --like" in lines[0]
        assert not (tmp_path / "x.h5").exists()
