"""Sérsic archetypes: conventions shared with the fitter, noise matching, bad input, ImageSet output."""

from __future__ import annotations

import numpy as np
import pytest

galsim = pytest.importorskip("galsim")

from morphllr.galaxies.archetypes import (  # noqa: E402
    ArchetypeParams,
    NoiseModel,
    make_archetype_set,
    params_from_catalog,
    render_archetypes,
)
from morphllr.errors import MorphllrError  # noqa: E402
from morphllr.galaxies.psf import make_psf  # noqa: E402
from morphllr.galaxies.sersic_fit import ConvolvedSersicRenderer, fit_sersic, psf_kernel_for  # noqa: E402

SCALE = 0.396


def params(n, re, q, pa, flux, x0=None, y0=None):
    k = len(n)
    return ArchetypeParams(ids=np.arange(k), n=np.asarray(n, float), re_pix=np.asarray(re, float),
                           q=np.asarray(q, float), pa_deg=np.asarray(pa, float), flux=np.asarray(flux, float),
                           x0_pix=None if x0 is None else np.asarray(x0, float),
                           y0_pix=None if y0 is None else np.asarray(y0, float), n_clipped=np.zeros(k, bool))


def catalog(**overrides):
    from astropy.table import Table

    cols = {"id": ["g0", "g1", "g2"], "sersic_n": [1.0, 2.5, 4.0], "sersic_re_pix": [4.0, 6.0, 3.0],
            "sersic_q": [0.5, 0.8, 1.0], "sersic_pa_deg": [20.0, 100.0, 0.0], "sersic_flux": [2e4, 3e4, 1e4],
            "sky_sigma": [5.7, 5.7, 5.7], "psf_fwhm_arcsec": [1.4, 1.3, 1.5]}
    cols.update(overrides)
    return Table(cols)


@pytest.fixture(scope="module")
def psf():
    return make_psf(1.4)


def test_archetype_matches_fitter_model(psf):
    """GalSim archetype and the fitter's own renderer agree: both read R_e, q, PA, centre alike."""
    p = params([1.0, 4.0], [5.0, 3.0], [0.5, 0.8], [30.0, 120.0], [1e4, 1e4], x0=[30.2, 33.0], y0=[32.7, 31.0])
    images = render_archetypes(p, (1, 64, 64), SCALE, psf, noise=None)
    renderer = ConvolvedSersicRenderer((64, 64), psf_kernel_for(psf, SCALE))
    for i in range(2):
        model = renderer.render(1e4, p.re_pix[i], p.n[i], p.x0_pix[i], p.y0_pix[i], p.q[i], np.radians(p.pa_deg[i]))
        assert np.abs(images[i, 0] - model).max() < 0.015 * model.max()


def test_fit_of_archetype_returns_its_parameters(psf):
    p = params([2.0], [6.0], [0.6], [150.0], [5e4])
    noise = NoiseModel(sky_sigma=np.array([5.7]), gain=np.array([4.8]))
    image = render_archetypes(p, (1, 64, 64), SCALE, psf, noise, seed=1)[0, 0]
    fit = fit_sersic(image, psf_kernel_for(psf, SCALE), sky_sigma=5.7, gain=4.8)
    assert abs(fit.n - 2.0) < 0.2 and abs(fit.re_pix / 6.0 - 1) < 0.05
    assert abs(fit.q - 0.6) < 0.03 and abs((fit.pa_deg - 150 + 90) % 180 - 90) < 3
    assert abs(fit.flux / 5e4 - 1) < 0.03


def test_noise_matches_sky_and_poisson(psf):
    """Per-pixel variance over many realisations = sky_sigma^2 + flux / gain."""
    k = 40
    p = params([1.0] * k, [2.0] * k, [1.0] * k, [0.0] * k, [2e5] * k)
    sigma, gain = 3.0, 2.0
    clean = render_archetypes(p, (1, 32, 32), SCALE, psf, None)[0, 0]
    noisy = render_archetypes(p, (1, 32, 32), SCALE, psf, NoiseModel(np.full(k, sigma), np.full(k, gain)), seed=3)
    var = noisy[:, 0].var(axis=0, ddof=1)
    expected = sigma**2 + clean / gain
    bright = clean / gain > 3 * sigma**2  # where the Poisson term dominates
    faint = clean / gain < 0.05 * sigma**2
    assert bright.sum() > 10 and faint.sum() > 10
    assert abs(np.mean(var[bright] / expected[bright]) - 1) < 0.1
    assert abs(np.mean(var[faint]) / sigma**2 - 1) < 0.1
    assert abs(noisy[:, 0].mean(axis=0)[bright] / clean[bright] - 1).mean() < 0.02  # unbiased


def test_result_does_not_depend_on_workers(psf):
    k = 70  # two chunks
    p = params([1.0] * k, [3.0] * k, [0.7] * k, [10.0] * k, [1e4] * k)
    noise = NoiseModel(np.full(k, 5.0), np.full(k, 4.8))
    a = render_archetypes(p, (1, 32, 32), SCALE, psf, noise, seed=9, workers=1)
    b = render_archetypes(p, (1, 32, 32), SCALE, psf, noise, seed=9, workers=2)
    assert np.array_equal(a, b)


def test_n_is_clipped_to_galsim_range_and_flagged():
    p, keep = params_from_catalog(catalog(sersic_n=[0.2, 7.0, 3.0]))
    assert list(p.n) == [0.3, 6.2, 3.0]
    assert list(p.n_clipped) == [True, True, False]
    assert keep.all()


@pytest.mark.parametrize("column,values", [("sersic_q", [0.5, 1.5, 1.0]), ("sersic_re_pix", [4.0, 0.0, 3.0]),
                                           ("sersic_flux", [2e4, np.nan, 1e4]), ("sersic_n", [1.0, -1.0, 2.0])])
def test_bad_values_name_the_row(column, values):
    with pytest.raises(MorphllrError, match=f"{column}.*g1"):
        params_from_catalog(catalog(**{column: values}), where="obs.h5")
    p, keep = params_from_catalog(catalog(**{column: values}), drop_bad=True)
    assert list(p.ids) == ["g0", "g2"] and list(keep) == [True, False, True]


def test_missing_column_is_explained():
    table = catalog()
    table.remove_column("sersic_q")
    with pytest.raises(MorphllrError, match="sersic_q.*fit-sersic"):
        params_from_catalog(table, where="obs.h5")


def _observed_set(path, table, size=64):
    from morphllr.data.prepare import write_flux_set
    from morphllr.data.preprocess import Preprocessing

    prep = Preprocessing.preset("zanisi21").replace(cutout=size, crop=32)
    flux = np.random.default_rng(0).normal(0, 5.7, (len(table), 1, size, size)).astype(np.float32)
    write_flux_set(path, flux, table, prep, segmentation=None)
    return prep


def test_archetype_set_is_an_imageset_with_same_ids(tmp_path):
    from morphllr.data.imageset import ImageSet

    prep = _observed_set(tmp_path / "obs.h5", catalog())
    summary = make_archetype_set(tmp_path / "obs.h5", tmp_path / "arch.h5", seed=1)
    arch = ImageSet.open(tmp_path / "arch.h5")
    assert summary["n"] == 3 and list(arch.catalog["id"]) == ["g0", "g1", "g2"]
    assert arch.preprocessing == prep.to_dict()
    assert np.allclose(arch.images[:], prep.flux_to_model(arch.flux[:]), atol=1e-6)
    # the brightest archetype carries its flux (within the 64^2 cutout, minus noise)
    assert 0.8 < arch.flux[1].sum() / 3e4 < 1.05
    assert list(arch.catalog["sersic_n"]) == [1.0, 2.5, 4.0]


def test_sky_patches_give_the_background(tmp_path):
    from morphllr.data.imageset import ImageSet

    _observed_set(tmp_path / "obs.h5", catalog(sersic_flux=[10.0, 10.0, 10.0]))
    patches = np.random.default_rng(2).normal(0, 3.0, (5, 80, 70)).astype(np.float32)
    np.save(tmp_path / "sky.npy", patches)
    make_archetype_set(tmp_path / "obs.h5", tmp_path / "arch.h5", psf_fwhm=1.4, sky_patches_path=tmp_path / "sky.npy")
    flux = ImageSet.open(tmp_path / "arch.h5").flux[:]
    assert abs(flux.std() / 3.0 - 1) < 0.05
    np.save(tmp_path / "small.npy", patches[:, :20, :20])
    with pytest.raises(MorphllrError):
        make_archetype_set(tmp_path / "obs.h5", tmp_path / "arch2.h5", psf_fwhm=1.4,
                           sky_patches_path=tmp_path / "small.npy")


def test_no_psf_anywhere_is_explained(tmp_path):
    table = catalog()
    table.remove_column("psf_fwhm_arcsec")
    _observed_set(tmp_path / "obs.h5", table)
    with pytest.raises(MorphllrError, match="--psf-fwhm"):
        make_archetype_set(tmp_path / "obs.h5", tmp_path / "arch.h5")


def test_huge_high_n_profile_is_drawn_without_giant_fft(psf):
    """R_e of hundreds of pixels at n = 6.2 would need a ~10^4-pixel FFT; the truncated redraw is exact here."""
    import warnings

    from morphllr.galaxies.archetypes import SersicProfileCache, draw_archetype_safely

    cache = SersicProfileCache()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        big = draw_archetype_safely(cache, 6.2, 300.0, 0.7, 30.0, 1e6, psf, (64, 64), SCALE)
    assert np.isfinite(big).all() and big.min() > 0
    # the fallback's truncation is invisible on the cutout for a profile GalSim can draw directly
    normal = draw_archetype_safely(cache, 4.0, 40.0, 0.7, 30.0, 1e6, psf, (64, 64), SCALE)
    trunc = galsim.Sersic(cache.grid_n(4.0), half_light_radius=40.0 * np.sqrt(0.7) * SCALE, flux=1e6,
                          trunc=2 * np.hypot(64, 64) * SCALE, flux_untruncated=True)
    trunc = galsim.Convolve(trunc.shear(q=0.7, beta=30 * galsim.degrees), psf)
    assert np.abs(trunc.drawImage(nx=64, ny=64, scale=SCALE).array - normal).max() < 1e-3 * normal.max()


def test_multiband_archetype_follows_each_bands_flux(tmp_path):
    """Two bands: the archetype in band 1 is the fitted profile scaled to band 1's flux."""
    from morphllr.data.imageset import ImageSet
    from morphllr.data.prepare import write_flux_set
    from morphllr.data.preprocess import Preprocessing

    prep = Preprocessing.preset("zanisi21").replace(cutout=64, crop=32)
    p = params([1.0] * 3, [4.0] * 3, [0.7] * 3, [20.0] * 3, [2e5] * 3)
    clean = render_archetypes(p, (1, 64, 64), SCALE, make_psf(1.4), None)
    flux = np.concatenate([clean, 0.5 * clean], axis=1)  # band 1 is half as bright
    write_flux_set(tmp_path / "obs.h5", flux, catalog(sersic_flux=[2e5] * 3), prep, segmentation=None)
    make_archetype_set(tmp_path / "obs.h5", tmp_path / "arch.h5", seed=0)
    arch = ImageSet.open(tmp_path / "arch.h5").flux[:]
    assert arch.shape == (3, 2, 64, 64)
    ratio = arch[:, 1].sum(axis=(1, 2)) / arch[:, 0].sum(axis=(1, 2))
    assert np.allclose(ratio, 0.5, atol=0.01)  # sky noise in the sums is ~0.4 %


def test_psf_image_equals_the_profile_it_samples(tmp_path):
    """A PSF image is the image of a point source (pixel response included), as in mock and fit-sersic."""
    from astropy.io import fits

    from morphllr.data.imageset import ImageSet
    from morphllr.galaxies.psf import psf_image

    _observed_set(tmp_path / "obs.h5", catalog())
    fits.PrimaryHDU(psf_image(make_psf(1.4, "gaussian"), SCALE, size=31, pixel_integrated=True)).writeto(
        tmp_path / "psf.fits")
    make_archetype_set(tmp_path / "obs.h5", tmp_path / "a.h5", psf_fwhm=1.4, psf_kind="gaussian", seed=4)
    make_archetype_set(tmp_path / "obs.h5", tmp_path / "b.h5", psf_image_path=tmp_path / "psf.fits", seed=4)
    a, b = ImageSet.open(tmp_path / "a.h5").flux[:], ImageSet.open(tmp_path / "b.h5").flux[:]
    assert np.abs(a - b).max() < 0.01 * a.max()


# --------------------------------------------------------------------------- flags and provenance (issue 13)
def test_drop_flagged_skips_flagged_fits_and_without_it_they_are_counted(tmp_path):
    from morphllr.data.imageset import ImageSet
    from morphllr.galaxies.sersic_fit import FLAG_N_OUTSIDE_GALSIM, FLAG_RE_BEYOND_WINDOW

    table = catalog(sersic_flag=[0, FLAG_RE_BEYOND_WINDOW, 0], sersic_n=[1.0, 2.5, 6.5])
    _observed_set(tmp_path / "obs.h5", table)
    kept = make_archetype_set(tmp_path / "obs.h5", tmp_path / "all.h5", seed=0)
    assert kept["n"] == 3 and kept["n_flagged"] == 2 and kept["n_dropped"] == 0  # g2: n 6.5 beyond GalSim's 6.2
    # --drop-bad alone skips only unusable values: the archetype sets made before the flags are reproduced
    usable = make_archetype_set(tmp_path / "obs.h5", tmp_path / "usable.h5", seed=0, drop_bad=True)
    assert usable["n"] == 3 and usable["n_dropped"] == 0 and usable["n_flagged"] == 2
    dropped = make_archetype_set(tmp_path / "obs.h5", tmp_path / "good.h5", seed=0, drop_flagged=True)
    assert dropped["n"] == 1 and dropped["n_dropped"] == 2 and dropped["n_dropped_flagged"] == 2
    with ImageSet.open(tmp_path / "good.h5") as s:
        assert list(s.catalog["id"]) == ["g0"]
        assert s.catalog.meta["archetypes"]["drop_flagged"] is True
    assert FLAG_N_OUTSIDE_GALSIM == 32 and FLAG_RE_BEYOND_WINDOW == 16


def test_every_pixel_changing_archetypes_option_is_recorded(tmp_path):
    """Each option of `morphllr archetypes` either changes pixels and is in the set's record, or is listed as not."""
    import json

    import typer

    from morphllr.cli import app, main
    from morphllr.data.imageset import ImageSet
    from morphllr.galaxies.psf import psf_image
    from morphllr.data.inputs import file_sha256
    from morphllr.galaxies.sky_patches import patches_sha256

    table = catalog()
    for key in ("n", "re_pix", "q", "pa_deg", "flux"):
        table[f"my_{key}"] = table[f"sersic_{key}"]
    _observed_set(tmp_path / "obs.h5", table)
    np.save(tmp_path / "sky.npy", np.random.default_rng(0).normal(0, 3.0, (4, 1, 64, 64)).astype(np.float32))
    np.save(tmp_path / "psf.npy", psf_image(make_psf(1.4), SCALE, size=21, pixel_integrated=True))

    def run(*argv):
        with pytest.raises(SystemExit) as exc:
            main([str(a) for a in argv])
        assert exc.value.code == 0, argv

    first, second = tmp_path / "a1.h5", tmp_path / "a2.h5"
    run("archetypes", tmp_path / "obs.h5", "--out", first, "--psf-fwhm", "1.2", "--psf", "moffat", "--psf-beta",
        "3.1", "--sky-patches", tmp_path / "sky.npy", "--n-col", "my_n", "--re-col", "my_re_pix", "--q-col", "my_q",
        "--pa-col", "my_pa_deg", "--flux-col", "my_flux", "--drop-bad", "--drop-flagged", "--seed", "7", "--workers", "1")
    run("archetypes", tmp_path / "obs.h5", "--out", second, "--psf-image", tmp_path / "psf.npy", "--workers", "1")
    records = {}
    for name, path in (("first", first), ("second", second)):
        with ImageSet.open(path) as s:
            records[name] = json.loads(s.attrs["archetypes"])
            assert s.catalog.meta["archetypes"] == records[name]
    a, b = records["first"], records["second"]
    recorded = {
        "--psf-fwhm": lambda: a["psf"]["fwhm_arcsec"] == 1.2 and a["psf"]["source"] == "options",
        "--psf": lambda: a["psf"]["kind"] == "moffat",
        "--psf-beta": lambda: a["psf"]["beta"] == 3.1,
        "--psf-image": lambda: b["psf"]["image"]["sha256"] == file_sha256(tmp_path / "psf.npy"),
        "--sky-patches": lambda: a["noise"]["sky_patches"]["sha256"] == patches_sha256(np.load(tmp_path / "sky.npy"))
        and b["noise"]["mode"] == "gaussian",
        "--n-col": lambda: a["columns"]["n"] == "my_n",
        "--re-col": lambda: a["columns"]["re_pix"] == "my_re_pix",
        "--q-col": lambda: a["columns"]["q"] == "my_q",
        "--pa-col": lambda: a["columns"]["pa_deg"] == "my_pa_deg",
        "--flux-col": lambda: a["columns"]["flux"] == "my_flux",
        "--drop-bad": lambda: a["drop_bad"] is True and b["drop_bad"] is False,
        "--drop-flagged": lambda: a["drop_flagged"] is True and b["drop_flagged"] is False,
        "--seed": lambda: a["seed"] == 7 and b["seed"] == 0,
    }
    not_pixels = {"--out", "--workers", "--overwrite"}  # results do not depend on --workers (tested above)
    command = typer.main.get_command(app).commands["archetypes"]
    options = {p.opts[0] for p in command.params if p.param_type_name == "option"}
    assert options == set(recorded) | not_pixels, "classify the new archetypes option(s) here and record them"
    failed = [option for option, check in recorded.items() if not check()]
    assert not failed, failed
    with ImageSet.open(tmp_path / "obs.h5") as obs:  # and the observed set itself (argument IMAGESET)
        assert a["of"] == str(tmp_path / "obs.h5") and a["of_images_sha256"] == obs.attrs["images_sha256"]


# --------------------------------------------------------------------------- sets fitted by an older fit-sersic
def _old_fit_set(path, record, **overrides):
    """An observed set whose catalogue meta is an older fit-sersic's record ({"psf": "moffat", "psf_fwhm": ...})."""
    table = catalog(**overrides)
    if record is not None:
        table.meta["sersic_fit"] = {"channel": 0, "fit_size": 32, "pixel_scale": SCALE, **record}
    _observed_set(path, table)
    return path


def test_a_set_fitted_by_an_older_fit_sersic_renders_as_before(tmp_path, capsys):
    """The old record stored `psf` as a plain string; archetypes rebuild its PSF (FWHM 1.4, its default beta 4.765,
    even beside a psf_beta column, as the old fitter used make_psf(FWHM)) and give the pixels the old code gave."""
    from morphllr.cli import main
    from morphllr.data.imageset import ImageSet

    old = _old_fit_set(tmp_path / "old.h5", {"psf": "moffat", "psf_fwhm": 1.4}, psf_beta=[3.0, 3.0, 3.0])
    plain = _old_fit_set(tmp_path / "plain.h5", None)  # no record, no psf_beta: options as the old code read them
    summary = make_archetype_set(old, tmp_path / "a.h5", psf_fwhm=1.4, seed=3)
    make_archetype_set(plain, tmp_path / "b.h5", psf_fwhm=1.4, seed=3)
    with ImageSet.open(tmp_path / "a.h5") as a, ImageSet.open(tmp_path / "b.h5") as b:
        assert np.array_equal(a.flux[:], b.flux[:])
        used = a.catalog.meta["archetypes"]["psf"]
        assert used["kind"] == "moffat" and used["fwhm_arcsec"] == 1.4 and used["beta"] == 4.765
        assert used["source"] == "fit-sersic record" and used["record"] == "older fit-sersic"
        assert list(a.catalog["psf_beta"]) == [4.765] * 3
    assert summary["psf"] == "moffat FWHM 1.4 arcsec, beta 4.765 (fit-sersic record)"
    make_archetype_set(old, tmp_path / "c.h5", seed=3)  # without the option: the same PSF
    assert np.array_equal(ImageSet.open(tmp_path / "c.h5").flux[:], ImageSet.open(tmp_path / "a.h5").flux[:])
    # the CLI (validation/gz2.sh: archetypes ... --psf-fwhm 1.4) works; another FWHM is one error line
    with pytest.raises(SystemExit) as stop:
        main(["archetypes", str(old), "--out", str(tmp_path / "d.h5"), "--psf-fwhm", "1.4", "--workers", "1"])
    assert stop.value.code == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        main(["archetypes", str(old), "--out", str(tmp_path / "e.h5"), "--psf-fwhm", "1.3", "--workers", "1"])
    out, err = capsys.readouterr()
    assert stop.value.code == 2 and "Traceback" not in err and not (tmp_path / "e.h5").exists()
    assert [line for line in err.splitlines() if line.strip()] == [err.strip()]
    assert "0/3" not in out + err  # the progress bar is not left standing above the error
    assert err.startswith("error: --psf-fwhm 1.3: the Sérsic fits of") and "deconvolved moffat FWHM 1.4" in err


def test_an_older_record_without_a_fwhm_used_the_columns_and_none_means_no_psf(tmp_path):
    from morphllr.data.imageset import ImageSet

    old = _old_fit_set(tmp_path / "old.h5", {"psf": "moffat", "psf_fwhm": None}, psf_beta=[3.0, np.nan, 2.5])
    make_archetype_set(old, tmp_path / "a.h5", seed=0)
    with ImageSet.open(tmp_path / "a.h5") as a:
        assert np.allclose(a.catalog["psf_fwhm_arcsec"], [1.4, 1.3, 1.5])
        assert np.allclose(a.catalog["psf_beta"], [3.0, 4.765, 2.5])  # blank: the default, as the old fitter read it
        assert "column psf_fwhm_arcsec" in a.catalog.meta["archetypes"]["psf"]["fwhm_from"]
    with pytest.raises(MorphllrError, match="--psf-fwhm 1.4: the Sérsic fits of .* deconvolved moffat FWHM per galaxy"):
        make_archetype_set(old, tmp_path / "b.h5", psf_fwhm=1.4)
    none = _old_fit_set(tmp_path / "none.h5", {"psf": "none", "psf_fwhm": None})
    make_archetype_set(none, tmp_path / "c.h5", seed=0)
    with ImageSet.open(tmp_path / "c.h5") as c:
        assert c.catalog.meta["archetypes"]["psf"]["kind"] == "none" and "psf_fwhm_arcsec" not in c.catalog.colnames
    with pytest.raises(MorphllrError, match="--psf-fwhm 1.4: the Sérsic fits of .* deconvolved no PSF"):
        make_archetype_set(none, tmp_path / "d.h5", psf_fwhm=1.4)


def test_drop_bad_that_drops_everything_says_why(tmp_path):
    from morphllr.galaxies.sersic_fit import FLAG_N_AT_BOUND, FLAG_NOT_CONVERGED

    table = catalog(sersic_flag=[FLAG_N_AT_BOUND, FLAG_NOT_CONVERGED | FLAG_N_AT_BOUND, 0], sersic_n=[1.0, 2.0, 7.0],
                    sersic_q=[0.5, 0.8, 1.5])  # g2: q > 1 is unusable
    with pytest.raises(MorphllrError) as info:
        params_from_catalog(table, where="obs.h5", drop_bad=True, drop_flagged=True)
    text = str(info.value)
    assert text.startswith("obs.h5: --drop-flagged dropped all 3 galaxies: 1 for unusable parameters and 2 for a "
                           "flagged fit (2 sersic_flag bit 1 (n at the search bound"), text
    assert "1 sersic_flag bit 4 (not converged)" in text and "drop --drop-flagged" in text and "fit-sersic" in text
    assert "run `morphllr fit-sersic` first" not in text
    with pytest.raises(MorphllrError, match="--drop-flagged dropped all 3 galaxies: 3 for a flagged fit .*3 n outside"):
        params_from_catalog(catalog(sersic_n=[0.1, 6.5, 8.0]), where="obs.h5", drop_bad=True, drop_flagged=True)


def test_real_space_drawing_samples_a_psf_image_instead_of_integrating_twice():
    """A PSF image holds the pixel response: _draw_real_space equals the truth (GalSim with the profile PSF)."""
    from morphllr.galaxies.archetypes import _draw_real_space, draw_archetype
    from morphllr.galaxies.psf import psf_from_image, psf_image

    true_psf = make_psf(1.4, "moffat", beta=3.0)
    star = psf_from_image(psf_image(true_psf, SCALE, size=41, pixel_integrated=True), SCALE)
    gal = galsim.Sersic(1.0, half_light_radius=2.0 * SCALE, flux=1e4).shear(q=0.7, beta=30 * galsim.degrees)
    truth = draw_archetype(gal, true_psf, (48, 48), SCALE)
    drawn = _draw_real_space(gal, star, (48, 48), SCALE)
    assert np.abs(drawn - truth).max() < 0.003 * truth.max()  # integrating again: 1.5 % of the peak
    assert np.abs(_draw_real_space(gal, true_psf, (48, 48), SCALE) - truth).max() < 0.003 * truth.max()
