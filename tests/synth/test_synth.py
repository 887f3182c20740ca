"""The synthetic universe: reproducible, SDSS-like, and with the known differences it promises."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from morphllr.synth import archetypes as synth_archetypes
from morphllr.synth import population
from morphllr.synth import render
from morphllr.synth import sets as synth_sets
from morphllr.synth import sky as synth_sky
from morphllr.synth import universe
from morphllr.errors import MorphllrError


def _radial_profile(images: np.ndarray, x0: np.ndarray, y0: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Mean flux per pixel in circular annuli around each galaxy's centre, (N, len(edges) - 1)."""
    yy, xx = np.mgrid[: images.shape[1], : images.shape[2]]
    out = np.empty((len(images), len(edges) - 1))
    for i, img in enumerate(images):
        r = np.hypot(xx - x0[i], yy - y0[i])
        which = np.digitize(r, edges) - 1
        for k in range(len(edges) - 1):
            out[i, k] = img[which == k].mean()
    return out


def _small_scale_power(residual: np.ndarray, flux: np.ndarray) -> np.ndarray:
    """Power of the residuals on scales below ~2 px in the central 64^2, per unit galaxy flux^2."""
    c = residual[:, 32:96, 32:96].astype(np.float64)
    high = c - ndimage.gaussian_filter(c, sigma=(0, 2, 2))
    return (high**2).sum(axis=(1, 2)) / flux**2


def test_same_seed_same_universe_other_seed_other_universe():
    a = synth_sets.make_set("observed-test", 6, seed=7)
    b = synth_sets.make_set("observed-test", 6, seed=7)
    c = synth_sets.make_set("observed-test", 6, seed=8)
    np.testing.assert_array_equal(a.flux, b.flux)
    np.testing.assert_array_equal(a.segmap, b.segmap)
    assert list(a.catalog["id"]) == list(b.catalog["id"])
    np.testing.assert_array_equal(np.asarray(a.catalog["r50_kpc"]), np.asarray(b.catalog["r50_kpc"]))
    assert not np.allclose(a.flux, c.flux)
    # train and test sets of one universe are different galaxies
    d = synth_sets.make_set("observed-train", 6, seed=7)
    assert not np.allclose(a.catalog["log_mstar"], d.catalog["log_mstar"])


def test_cutouts_look_like_sdss_r_counts():
    s = synth_sets.make_set("observed-test", 48, seed=1)
    cat = s.catalog
    assert s.flux.shape == (48, population.STAMP, population.STAMP) and s.flux.dtype == np.float32
    # sky noise of SDSS r frames: ~5-6 counts per pixel; measured in the corners, away from galaxies
    corners = np.concatenate([s.flux[:, :12, :12], s.flux[:, -12:, -12:]], axis=1)
    sky_mask = np.concatenate([s.segmap[:, :12, :12], s.segmap[:, -12:, -12:]], axis=1) == 0
    measured = np.median([np.std(c[m]) for c, m in zip(corners, sky_mask)])
    assert 4.0 < measured < 7.5
    assert abs(measured / np.median(cat["sky_sigma"]) - 1) < 0.1
    # flux-limited sample inside the universe's redshift range
    assert np.all(cat["mag_r"] < population.MAG_LIMIT)
    assert np.all((cat["z"] >= population.Z_RANGE[0]) & (cat["z"] <= population.Z_RANGE[1]))
    # the galaxy centre lands at the middle of the zanisi21 crop and is a few hundred counts or more
    centre = s.noiseless[:, 62:67, 62:67].max(axis=(1, 2))
    assert np.median(centre) > 100
    assert np.all(s.segmap[np.arange(48), 64, 64] == 1)


def test_noiseless_flux_matches_catalogue_for_compact_undusted_galaxies():
    s = synth_sets.make_set("sim-smooth", 40, seed=2)
    cat = s.catalog
    compact = (np.asarray(cat["r50_arcsec"]) < 3.0)
    assert compact.sum() >= 10
    ratio = s.noiseless.sum(axis=(1, 2))[compact] / np.asarray(cat["flux"])[compact]
    assert np.all(np.abs(ratio - 1) < 0.03)


def test_composite_half_light_radius_is_the_catalogued_one():
    rng = population.set_stream(4, "radius-check")
    p = population.sample_galaxies(6, rng, population.Recipe(structure=False))
    p["q_disk"][:] = 1.0
    p["q_bulge"][:] = 1.0
    g = render._chunk_params(p, slice(0, 6))
    step = 0.06  # arcsec; fine enough for the n = 4 cusps
    ax = (np.arange(-500, 500) + 0.5) * step
    light = render._galaxy_light(ax[None, None, :], ax[None, :, None], g) * step**2
    r = np.hypot(ax[None, :], ax[:, None])
    order = np.argsort(r.ravel())
    for i in range(6):
        grow = np.cumsum(light[i].ravel()[order])
        half = r.ravel()[order][np.searchsorted(grow, 0.5 * p["flux"][i])]
        assert half == pytest.approx(p["r50_arcsec"][i], rel=0.05, abs=2 * step)


def test_sizes_follow_shen03_and_early_types_rise_with_mass():
    p = population.sample_galaxies(20000, population.set_stream(5, "distributions"))
    logm, early = p["log_mstar"], p["early_type"]
    for kind, bins in ((False, (9.9, 10.3, 10.7)), (True, (10.3, 10.7, 11.0))):
        for lo in bins:
            sel = (early == kind) & (logm >= lo) & (logm < lo + 0.2)
            assert sel.sum() > 200
            ratio = np.median(p["r50_kpc"][sel]) / np.median(population.shen03_r50_kpc(logm[sel], early[sel]))
            assert abs(ratio - 1) < 0.1, (kind, lo, ratio)
            scatter = np.std(np.log(p["r50_kpc"][sel] / population.shen03_r50_kpc(logm[sel], early[sel])))
            assert scatter == pytest.approx(np.median(population.shen03_sigma_lnr(logm[sel], early[sel])), rel=0.15)
    frac = [early[(logm >= lo) & (logm < lo + 0.3)].mean() for lo in (9.9, 10.5, 11.1)]
    assert frac[0] < frac[1] < frac[2]
    # disks at random inclination: apparent axis ratios nearly uniform above the intrinsic thickness
    disky = p["bt"] < 0.3
    assert 0.45 < np.median(p["q_disk"][disky]) < 0.6
    assert np.all(p["q_disk"] >= 0.1)


def test_observed_galaxies_leave_structured_residuals_that_smooth_ones_do_not():
    """A single Sérsic cannot describe arms, bars and clumps: the same galaxies with structure
    leave much more small-scale residual power around their archetypes than without."""
    n = 16
    recipe = population.Recipe(arm_fraction=1.0, bar_fraction=0.0)
    obs = synth_sets.make_set("observed-test", n, seed=11, recipe=recipe)
    smooth = synth_sets.make_set("observed-test", n, seed=11, recipe=population.Recipe(structure=False))
    np.testing.assert_array_equal(obs.catalog["r50_kpc"], smooth.catalog["r50_kpc"])  # same galaxies
    disks = (np.asarray(obs.catalog["arm_strength"]) > 0) & (np.asarray(obs.catalog["r50_arcsec"]) > 2.0)
    assert disks.sum() >= 5
    power = {}
    for label, s in (("obs", obs), ("smooth", smooth)):
        fits = synth_archetypes.fit_single_sersic(s, workers=1)
        arch = synth_archetypes.archetype_flux(s, fits, noise=False)
        power[label] = _small_scale_power(s.noiseless - arch, np.asarray(s.catalog["flux"]))
    ratio = power["obs"][disks] / power["smooth"][disks]
    print("small-scale residual power ratio, structured / smooth:", np.round(ratio, 2))
    assert np.median(ratio) > 3.0


def test_softened_galaxies_differ_at_the_centre_not_in_the_outskirts():
    """Softening (sim-softened's only change) flattens the core, moves its light to ~1-3
    softening lengths and leaves the profile beyond ~4 softening lengths alone."""
    n = 32
    obs = synth_sets.make_set("observed-test", n, seed=3)
    eps_kpc = synth_sets.RECIPES["sim-softened"].softening_kpc
    soft = synth_sets.make_set("observed-test", n, seed=3, recipe=population.Recipe(softening_kpc=eps_kpc))
    x0, y0 = np.asarray(obs.catalog["x0"]), np.asarray(obs.catalog["y0"])
    eps_pix = eps_kpc / np.asarray(obs.catalog["kpc_per_arcsec"]) / population.PIXEL_SCALE
    edges = np.array([0, 0.25, 0.5, 1, 2, 3, 4, 6])  # in softening lengths
    p_obs = np.concatenate([_radial_profile(obs.noiseless[i:i + 1], x0[i:i + 1], y0[i:i + 1], edges * eps_pix[i])
                            for i in range(n)])
    p_soft = np.concatenate([_radial_profile(soft.noiseless[i:i + 1], x0[i:i + 1], y0[i:i + 1], edges * eps_pix[i])
                             for i in range(n)])
    change = np.median(p_soft / p_obs, axis=0)
    assert change[0] < 0.85  # the core is flattened
    assert change[4] > 1.1  # its light reappears at 2-3 softening lengths
    assert abs(change[-1] - 1) < 0.03  # beyond ~4 softening lengths nothing changes
    # flux is conserved: the light missing from the core reappears just outside it
    total = soft.noiseless.sum(axis=(1, 2)) / obs.noiseless.sum(axis=(1, 2))
    assert np.all(np.abs(total - 1) < 0.01)


def test_bad_input_is_refused_with_a_clear_message(tmp_path):
    with pytest.raises(MorphllrError, match="unknown set sim-bad"):
        synth_sets.check_set_names(["observed-test", "sim-bad"])
    with pytest.raises(MorphllrError, match="--n-test"):
        universe.generate(["sim-good"], n_test=0)
    with pytest.raises(MorphllrError, match="size_scale"):
        population.Recipe(size_scale=-1.0).check()
    with pytest.raises(MorphllrError, match="bar_fraction"):
        synth_sets.make_set("sim-good", 3, recipe=population.Recipe(bar_fraction=1.5))
    with pytest.raises(MorphllrError, match="archetypes"):
        synth_sets.make_set("archetypes", 3)
    existing = tmp_path / "u"
    existing.mkdir()
    with pytest.raises(MorphllrError, match="--overwrite"):
        universe.write_universe(existing, ["sim-good"], n_test=2)


def test_nothing_half_written_when_writing_fails(tmp_path, monkeypatch):
    calls = []

    def fail_second(path, s, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return original(path, s, *args, **kwargs)

    original = universe.write_set
    monkeypatch.setattr(universe, "write_set", fail_second)
    out = tmp_path / "u"
    with pytest.raises(MorphllrError, match="nothing was kept"):
        universe.write_universe(out, ["sim-good", "sim-smooth"], n_test=2, seed=1)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_written_universe_is_a_set_of_imagesets(tmp_path):
    from morphllr.data.imageset import ImageSet

    out = tmp_path / "u"
    written = universe.write_universe(out, ["sim-smooth", "archetypes"], n_test=4, seed=2)
    assert sorted(p.name for p in out.iterdir()) == ["archetypes.h5", "sim-smooth.h5", "universe.json"]
    info = json.loads((out / "universe.json").read_text())
    assert info["expected_order"] == list(synth_sets.EXPECTED_ORDER)
    assert info["sets"] == {"sim-smooth": 4, "archetypes": 4}
    s = ImageSet.open(written["sim-smooth"])
    assert s.shape == (4, 1, 32, 32)
    images = np.asarray(s.images[:])
    assert images.min() >= -1 and images.max() <= 1 and images.max() > 0.1
    assert {"id", "log_mstar", "r50_kpc", "bt", "arm_strength"} <= set(s.catalog.colnames)
    a = ImageSet.open(written["archetypes"])
    assert a.shape == (4, 1, 32, 32)
    assert a.preprocessing == s.preprocessing


def test_cli_refuses_existing_folder(tmp_path, capsys):
    from morphllr.cli import main

    (tmp_path / "u").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main(["synth", "--out", str(tmp_path / "u"), "--sets", "sim-good", "--n-test", "2"])
    assert exit_info.value.code == 2
    assert "already exists" in capsys.readouterr().err


def test_archetypes_live_in_the_same_sky_as_their_galaxies():
    """An archetype keeps its galaxy's companion/star layer (so neighbours cancel in the LLR);
    only the central galaxy is replaced by its Sérsic fit and the noise is drawn afresh."""
    n = 6
    obs = synth_sets.make_set("observed-test", n, seed=5, recipe=population.Recipe(companion_fraction=1.0, star_fraction=1.0))
    synth_archetypes.join_fits(obs.catalog, synth_archetypes.fit_single_sersic(obs, workers=1))
    arch = synth_archetypes.make_archetypes(obs, seed=1)
    assert list(arch.catalog["id"]) == list(obs.catalog["id"]) and np.all(arch.catalog["archetype"])
    np.testing.assert_array_equal(arch.neighbours, obs.neighbours)
    assert obs.neighbours.max() > 100  # every cutout really has a bright neighbour
    sigma = np.asarray(obs.catalog["sky_sigma"])[:, None, None]
    # residual of the archetype about its own noiseless scene: pure noise of the sky's size
    noise = (arch.flux - arch.noiseless - arch.neighbours)[:, :16, :16] / sigma
    assert 0.8 < noise.std() < 1.2 and abs(noise.mean()) < 0.1
    # fresh noise: not the observed image's noise realisation
    obs_noise = (obs.flux - obs.noiseless - obs.neighbours)[:, :16, :16] / sigma
    assert abs(np.corrcoef(noise.ravel(), obs_noise.ravel())[0, 1]) < 0.1
    # neighbour pixels far from the centre carry the same labels in both segmaps
    far = np.zeros(obs.segmap.shape[1:], bool)
    far[:20], far[-20:], far[:, :20], far[:, -20:] = True, True, True, True
    neighbour = np.isin(obs.segmap, (2, 3)) & far
    assert neighbour.sum() > 50
    assert np.mean(arch.segmap[neighbour] == obs.segmap[neighbour]) > 0.95


def test_simulations_are_the_observed_test_galaxies_re_rendered():
    """Paired sets: same galaxies, so only the recipe's morphology changes differ."""
    n = 8
    obs = synth_sets.make_set("observed-test", n, seed=4)
    for name in ("sim-good", "sim-softened", "sim-smooth"):
        sim = synth_sets.make_set(name, n, seed=4)
        for key in ("log_mstar", "z", "r50_kpc", "pa_deg", "q_disk", "bt"):
            np.testing.assert_array_equal(sim.catalog[key], obs.catalog[key])
        assert not np.array_equal(sim.flux, obs.flux)  # own noise and structure
    good = synth_sets.make_set("sim-good", n, seed=4)
    assert np.asarray(obs.catalog["arm_strength"]).sum() > 0
    np.testing.assert_allclose(good.catalog["arm_strength"],
                               synth_sets.RECIPES["sim-good"].arm_strength_scale * np.asarray(obs.catalog["arm_strength"]))
    # sim-softened changes the centre only: its galaxies keep the observed arms, bars, clumps and dust
    soft = synth_sets.make_set("sim-softened", n, seed=4)
    assert np.all(np.asarray(soft.catalog["softening_kpc"]) > 0)
    for key in ("arm_strength", "bar_frac", "clump_frac", "n_clumps", "dust_tau"):
        np.testing.assert_array_equal(soft.catalog[key], obs.catalog[key])


def test_softened_simulations_form_no_structure_inside_the_core():
    eps = 4.0
    r = np.linspace(0, 8, 801)
    keep = render.softened_structure(r, eps)
    assert np.all(keep[r <= eps / 4] == 0) and np.all(keep[r >= 1.25 * eps] == 1)
    assert np.all(np.diff(keep) >= 0) and 0.4 < render.softened_structure(0.75 * eps, eps) < 0.6


# --------------------------------------------------------------------------- real sky (--sky-patches)
def _checkerboard_sky(m: int = 5, size: int = 144, seed: int = 0) -> np.ndarray:
    """A sky no Gaussian noise model has: +-3 checkerboard + N(0, 2), rms sqrt(13), neighbour correlation -9/13."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    board = np.where((yy + xx) % 2, 3.0, -3.0)
    return (board[None, None] + rng.normal(0, 2, (m, 1, size, size))).astype(np.float32)


_FAR = np.hypot(*(np.mgrid[: population.STAMP, : population.STAMP] - (population.STAMP - 1) / 2)) > 40


def _sky_stats(flux: np.ndarray, segmap: np.ndarray) -> dict:
    from morphllr.galaxies.sky_patches import sky_statistics

    return sky_statistics(flux, mask=(segmap == 0) & _FAR)  # empty pixels far from the galaxy


def _library_fraction(flux: np.ndarray, patch: np.ndarray, gain: float) -> float:
    """Fraction of pixels where ``flux`` = a crop of ``patch`` (best of its 8 quarter-turn/flip
    orientations and all offsets) + a whole number of electrons / gain, i.e. the library's own
    pixels (not resampled) plus the sources' Poisson noise (1.0 = everywhere)."""
    from numpy.lib.stride_tricks import sliding_window_view

    def off_integer(x):
        return np.abs(x - np.round(x))

    n = flux.shape[-1]
    best = 0.0
    for k in range(4):
        for flip in (False, True):
            p = np.rot90(patch, k)
            p = p[:, ::-1] if flip else p
            windows = sliding_window_view(p, (8, 8))[: p.shape[0] - n + 1, : p.shape[1] - n + 1]
            # locate the crop by its corner, then check every pixel
            miss = off_integer((flux[:8, :8] - windows.astype(np.float64)) * gain).max(axis=(2, 3))
            y, x = np.unravel_index(miss.argmin(), miss.shape)
            electrons = (flux.astype(np.float64) - p[y:y + n, x:x + n]) * gain
            best = max(best, float(np.mean(off_integer(electrons) < 0.01)))
    return best


# sketch of the same flux rendered on AMD Zen 3 (AVX2 numpy), 2026-12-02; numpy's baseline (SSE) and AVX2 paths
# give sketches 1.1e-7 of the rms apart there, a hundredth of the tolerance
DEFAULT_SKY_SKETCH = {"n_images": 8, "image_shape": [128, 128], "n_pixels": 131072, "rms": 39.16624874997953,
                      "projections": [24.736203655791584, -53.7961256177528, -32.25577149769704, -2.985555441316483,
                                      10.661033363956959, -30.78871053812076, -33.17900056736462, -31.517891279001248]}


def test_default_sky_is_bit_identical_to_the_shipped_models_data():
    # These hashes were computed from the code BEFORE --sky-patches existed: they pin the
    # existing synthetic-sky rendering the shipped models were trained on (no library = no change).
    s = synth_sets.make_set("observed-test", n=8, seed=0)
    import hashlib

    from morphllr import runtime
    from morphllr.data.imageset import SKETCH_RTOL, sketch_batches, sketch_difference

    assert hashlib.sha256(np.ascontiguousarray(s.segmap).tobytes()).hexdigest() == \
        "9a70d0669ca812b719d25bfcf7a43728efe075695740d435ac80b746004fb767"
    assert s.sky is None and "sky_patch" not in s.catalog.colnames
    # on every CPU: the same pixels to within rounding
    assert sketch_difference(DEFAULT_SKY_SKETCH, sketch_batches([np.asarray(s.flux)])) < SKETCH_RTOL
    flux_hash = hashlib.sha256(np.ascontiguousarray(s.flux).tobytes()).hexdigest()
    if flux_hash != "844d9d9c29105e1de963bf0c3d80dba00b4011eea4c1be5ec404e15927d23f4f" and \
            "avx512f" not in runtime._cpu_flags():
        pytest.skip(f"the pinned hash was made on AVX-512 CPUs; on {runtime.cpu_description()} the rendered flux "
                    "differs in its last bits (numpy's AVX2 and AVX-512 functions round differently); its sketch, "
                    "segmentation and catalogue were checked")
    assert flux_hash == "844d9d9c29105e1de963bf0c3d80dba00b4011eea4c1be5ec404e15927d23f4f"


def test_real_sky_patches_replace_the_gaussian_sky_pixel_for_pixel():
    lib = _checkerboard_sky()
    n = 12
    s = synth_sets.make_set("observed-test", n, seed=0, sky_patches=lib)
    gaussian = synth_sets.make_set("observed-test", n, seed=0)
    cat = s.catalog
    # the same galaxies; only the sky differs
    np.testing.assert_array_equal(s.noiseless, gaussian.noiseless)
    np.testing.assert_array_equal(cat["r50_kpc"], gaussian.catalog["r50_kpc"])
    patch = np.asarray(cat["sky_patch"])
    assert patch.dtype.kind == "i" and patch.min() >= 0 and patch.max() < len(lib) and len(set(patch)) > 1
    assert np.all(np.isnan(cat["sky_level"]))
    # empty sky keeps the library's rms and its negative neighbour correlation (Gaussian sky: none)
    real, synthetic = _sky_stats(s.flux, s.segmap), _sky_stats(gaussian.flux, gaussian.segmap)
    print("empty-pixel rms / corr_1: real sky", real["rms_median"], real["corr_1"],
          "gaussian", synthetic["rms_median"], synthetic["corr_1"])
    assert real["rms_median"] == pytest.approx(np.sqrt(13), rel=0.03)
    assert real["corr_1"] == pytest.approx(-9 / 13, abs=0.05)
    assert abs(synthetic["corr_1"]) < 0.03
    # sky_sigma is the rms of the patch used, not the synthetic value
    sky = s.flux - s.noiseless - s.neighbours
    empty = (s.segmap == 0) & _FAR
    np.testing.assert_allclose(cat["sky_sigma"], [sky[i][empty[i]].std() for i in range(n)], rtol=0.03)
    assert np.all(np.abs(np.asarray(cat["sky_sigma"]) - np.sqrt(13)) < 0.1)
    # the sky is the library's own pixels (a crop of the recorded patch, turned/flipped; not resampled)
    gain = np.asarray(cat["gain"])
    for i in range(3):
        assert _library_fraction(s.flux[i], lib[patch[i], 0], gain[i]) > 0.999
    # the segmap still labels the sources, thresholded at the patch rms
    sigma = np.asarray(cat["sky_sigma"])[:, None, None]
    assert np.all(s.segmap[:, 64, 64] == 1)
    assert np.all(s.noiseless[s.segmap == 1] > np.broadcast_to(sigma, s.segmap.shape)[s.segmap == 1])
    inside = s.noiseless > np.maximum(s.neighbours, sigma)
    assert np.all(s.segmap[inside] == 1)
    # reproducible per seed, different for another seed
    again = synth_sets.make_set("observed-test", n, seed=0, sky_patches=lib)
    np.testing.assert_array_equal(again.flux, s.flux)
    np.testing.assert_array_equal(again.segmap, s.segmap)
    np.testing.assert_array_equal(again.catalog["sky_patch"], patch)
    assert not np.allclose(synth_sets.make_set("observed-test", n, seed=1, sky_patches=lib).flux, s.flux)


def test_archetypes_in_real_sky_keep_neighbours_and_get_another_patch():
    lib = _checkerboard_sky(m=4)
    n = 6
    obs = synth_sets.make_set("observed-test", n, seed=5, sky_patches=lib,
                         recipe=population.Recipe(companion_fraction=1.0, star_fraction=1.0))
    synth_archetypes.join_fits(obs.catalog, synth_archetypes.fit_single_sersic(obs, workers=1))
    arch = synth_archetypes.make_archetypes(obs, seed=1)  # the observed set's library by default
    assert arch.sky is obs.sky
    np.testing.assert_array_equal(arch.neighbours, obs.neighbours)
    a_patch, o_patch = np.asarray(arch.catalog["sky_patch"]), np.asarray(obs.catalog["sky_patch"])
    assert a_patch.min() >= 0 and a_patch.max() < len(lib)
    assert np.all(a_patch != o_patch)  # fresh sky: never the galaxy's own patch
    stats = _sky_stats(arch.flux, arch.segmap)
    assert stats["rms_median"] == pytest.approx(np.sqrt(13), rel=0.03)
    assert stats["corr_1"] == pytest.approx(-9 / 13, abs=0.05)
    empty = (arch.segmap == 0) & (obs.segmap == 0) & _FAR
    arch_sky = (arch.flux - arch.noiseless - arch.neighbours)
    obs_sky = (obs.flux - obs.noiseless - obs.neighbours)
    assert abs(np.corrcoef(arch_sky[empty], obs_sky[empty])[0, 1]) < 0.1
    np.testing.assert_allclose(arch.catalog["sky_sigma"], [arch_sky[i][empty[i]].std() for i in range(n)], rtol=0.03)
    # results do not depend on the number of worker processes
    np.testing.assert_array_equal(synth_archetypes.make_archetypes(obs, seed=1, workers=2).flux, arch.flux)


def test_universe_in_real_sky_records_its_library(tmp_path):
    import hashlib

    from morphllr.data.imageset import ImageSet

    lib = _checkerboard_sky(m=3, size=128)
    path = tmp_path / "sky.npy"
    np.save(path, lib)
    out = tmp_path / "u"
    written = universe.write_universe(out, ["observed-test", "archetypes"], n_test=4, seed=2, sky_patches=path)
    expected = {"file": "sky.npy", "sha256": hashlib.sha256(lib.tobytes()).hexdigest(), "n_patches": 3, "size": 128}
    assert json.loads((out / "universe.json").read_text())["sky_patches"] == expected
    for name in ("observed-test", "archetypes"):
        s = ImageSet.open(written[name])
        assert {k[len("sky_patches_"):]: v for k, v in s.attrs.items() if k.startswith("sky_patches_")} == expected
        assert {"sky_patch", "sky_sigma"} <= set(s.catalog.colnames)
        assert np.all(np.abs(np.asarray(s.catalog["sky_sigma"]) - np.sqrt(13)) < 0.15)


@pytest.mark.parametrize("shape, what", [((4, 3, 128, 128), "3 band(s)"), ((4, 1, 64, 64), "64x64")])
def test_cli_refuses_a_sky_library_synth_cannot_use(tmp_path, capsys, shape, what):
    from morphllr.cli import main

    path = tmp_path / "sky.npy"
    np.save(path, np.random.default_rng(0).normal(0, 5.7, shape).astype(np.float32))
    with pytest.raises(SystemExit) as exit_info:
        main(["synth", "--out", str(tmp_path / "u"), "--sets", "sim-good", "--n-test", "2", "--sky-patches", str(path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--sky-patches" in err and what in err
    assert "morphllr sky-patches" in err and "128x128" in err
    assert not (tmp_path / "u").exists()
    with pytest.raises(MorphllrError, match="constant"):
        synth_sky.sky_library(np.zeros((2, 1, 128, 128), np.float32))
