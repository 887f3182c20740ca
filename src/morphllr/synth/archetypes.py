"""The archetype sets of the synthetic universe: single-Sérsic twins of an observed set, in its sky.

Archetypes in the same sky
--------------------------
The paper inserts each archetype into real sky, so that everything around the galaxy
(neighbours, sky) is shared by the observed image and its archetype and cancels in the
likelihood ratio; only the central galaxy's morphology is compared.  The synthetic
equivalent: every archetype is the PSF-convolved single Sérsic fit of its galaxy
(rendered by :func:`morphllr.galaxies.archetypes.render_archetypes`) plus the *same* noiseless
companion/star layer as its observed image, plus fresh sky and shot noise drawn from the
same noise model (see :func:`make_archetypes`).  Without that, companions and stars that
p_arch never saw dominate the LLR by 10^2-10^4 nats.
"""

from __future__ import annotations

import numpy as np

from morphllr.errors import MorphllrError
from morphllr.galaxies.archetypes import NoiseModel, params_from_catalog, psfs_for_catalog, render_archetypes
from morphllr.galaxies.psf import make_psf
from morphllr.galaxies.sersic import outside_galsim_range
from morphllr.galaxies.sersic_fit import fit_sersic, fits_to_table, psf_kernel_for
from morphllr.parallel import concat_in_processes
from morphllr.synth.population import PIXEL_SCALE, STAMP
from morphllr.synth.render import CHUNK, add_noise, label_sources
from morphllr.synth.sets import SynthSet
from morphllr.synth.sky import place_in_sky, sky_library


def _fit_one_chunk(args):
    """Single-Sérsic fits of a chunk of cutouts, each with its own PSF (process worker)."""
    flux, segmap, sigma, gain, fwhm, beta = args
    out = []
    for i in range(len(flux)):
        kernel = psf_kernel_for(make_psf(float(fwhm[i]), beta=float(beta[i])), PIXEL_SCALE)
        out.append(fit_sersic(flux[i], kernel, segmap[i], float(sigma[i]), float(gain[i])))
    return out


def fit_single_sersic(synth: SynthSet, fit_size: int = 64, workers: int = 1, progress=None):
    """Single-Sérsic fits (:func:`morphllr.galaxies.sersic_fit.fit_sersic`) of every cutout.

    The fit uses the central ``fit_size``^2 pixels (what the zanisi21 model sees) with
    the galaxy's own PSF, sky noise and gain; companions are masked by the segmap.

    Args:
        synth: the set to fit.
        fit_size: side of the central region fitted, in pixels.
        workers: processes to use.
        progress: optional callable(n_done).

    Returns:
        astropy Table with ``id`` and the ``sersic_*`` columns (positions and radii in
        pixels of the full 128^2 cutout).
    """
    cat = synth.catalog
    a = (STAMP - fit_size) // 2
    crop = np.s_[:, a:a + fit_size, a:a + fit_size]
    flux, seg = synth.flux[crop], synth.segmap[crop]
    cols = [np.asarray(cat[k]) for k in ("sky_sigma", "gain", "psf_fwhm_arcsec", "psf_beta")]
    step = 16
    jobs = [(flux[i:i + step], seg[i:i + step], *[c[i:i + step] for c in cols]) for i in range(0, len(flux), step)]
    fits = concat_in_processes(_fit_one_chunk, jobs, workers, progress)
    table = fits_to_table(fits, ids=np.asarray(cat["id"]))
    table["sersic_x0_pix"] += a
    table["sersic_y0_pix"] += a
    return table


def archetype_flux(observed: SynthSet, fits, noise: bool = True, seed: int = 0, workers: int = 1) -> np.ndarray:
    """Single-Sérsic archetypes of an observed set, rendered by :mod:`morphllr.galaxies.archetypes`.

    Each archetype has the fitted n, Re, q, PA, flux and centre of its galaxy, the
    galaxy's own Moffat PSF and (with ``noise``) its sky noise and gain; no companions,
    stars or internal structure.

    Args:
        observed: the observed set.
        fits: table from :func:`fit_single_sersic` (same order).
        noise: add matched sky + shot noise.
        seed: noise seed.
        workers: processes for the GalSim rendering.

    Returns:
        float32 (N, 128, 128) flux cutouts.
    """
    table = join_fits(observed.catalog.copy(copy_data=False), fits)
    params, _ = params_from_catalog(table, where=f"{observed.name} fits", drop_bad=True)
    if len(params) != len(table):
        raise MorphllrError(f"{observed.name}: {len(table) - len(params)} single-Sérsic fits failed; "
                            "cannot pair every galaxy with an archetype")
    psfs = psfs_for_catalog(table, None, "moffat", pixel_scale=PIXEL_SCALE)
    model = None
    if noise:
        model = NoiseModel(sky_sigma=np.asarray(table["sky_sigma"], float),
                                      gain=np.asarray(table["gain"], float))
    return render_archetypes(params, (1, STAMP, STAMP), PIXEL_SCALE, psfs, model, seed, workers)[:, 0]


_ARCHETYPE_COLUMNS = ("log_mstar", "z", "kpc_per_arcsec", "r50_kpc", "early_type", "psf_fwhm_arcsec", "psf_beta",
                      "sky_level", "gain", "sky_sigma", "has_companion", "has_star")
"""Columns of the observed galaxy an archetype keeps (its host's mass, distance, PSF and noise)."""


def make_archetypes(observed: SynthSet, name: str = "archetypes", seed: int = 0, workers: int = 1,
                    sky_patches=None) -> SynthSet:
    """The archetype set of an observed set, in the same sky as the observed images.

    Each archetype is the galaxy's PSF-convolved single-Sérsic fit (:func:`archetype_flux`,
    i.e. :mod:`morphllr.galaxies.archetypes`) plus the galaxy's own noiseless companion/star layer,
    plus fresh sky and shot noise from the same noise model: the synthetic equivalent of
    the paper's insertion of archetypes into real sky, so that neighbours and background
    cancel in the likelihood ratio and only the central galaxy's morphology is compared.
    In real sky (``observed.sky`` or ``sky_patches``) the fresh sky is a random patch of the
    library other than the galaxy's own, plus the Poisson noise of the archetype's sources.

    Args:
        observed: a set from :func:`~morphllr.synth.sets.make_set` whose catalogue holds the ``sersic_*`` fit
            columns (:func:`fit_single_sersic`, joined by :func:`~morphllr.synth.universe.generate`).
        name: ``archetypes`` or ``archetypes-train``.
        seed: noise seed.
        workers: processes for the GalSim rendering.
        sky_patches: sky-patch library (:func:`~morphllr.synth.sky.sky_library`); None = the observed set's own
            (``observed.sky``: real sky if the galaxies are in real sky, else synthetic noise).

    Returns:
        :class:`~morphllr.synth.sets.SynthSet` with the observed ids, ``sersic_*`` columns and ``archetype`` = True.
    """
    from astropy.table import Table

    cat = observed.catalog
    if "sersic_n" not in cat.colnames:
        raise MorphllrError(f"{observed.name}: no single-Sérsic fits in the catalogue; run fit_single_sersic first")
    sersic = archetype_flux(observed, cat[["id"]], noise=False, seed=seed, workers=workers)
    neighbours = observed.neighbours if observed.neighbours is not None else np.zeros_like(sersic)
    labels = observed.neighbour_label if observed.neighbour_label is not None else np.full(sersic.shape, 2, np.int8)
    sky = observed.sky if sky_patches is None else sky_library(sky_patches)
    sky_sigma = np.asarray(cat["sky_sigma"], float) if sky is None else np.empty(len(sersic))
    sky_patch = None if sky is None else np.empty(len(sersic), np.int64)
    avoid = None
    if (sky is not None and observed.sky is not None and observed.sky.sha256 == sky.sha256
            and "sky_patch" in cat.colnames):
        avoid = np.asarray(cat["sky_patch"])
    flux = np.empty_like(sersic)
    segmap = np.empty(sersic.shape, np.int32)
    for start in range(0, len(sersic), CHUNK):
        sl = slice(start, start + CHUNK)
        total = sersic[sl] + neighbours[sl]
        if sky is not None:
            flux[sl], sky_patch[sl], sky_sigma[sl] = place_in_sky(
                total, np.asarray(cat["gain"][sl], float), sky, [int(seed)], start,
                None if avoid is None else avoid[sl])
        else:
            rng = np.random.default_rng(np.random.SeedSequence([int(seed), start // CHUNK]))
            col = lambda key: np.asarray(cat[key][sl], float)[:, None, None]  # noqa: E731
            flux[sl] = add_noise(total, col("sky_level"), col("gain"), rng)
        neighbour_seg = label_sources(neighbours[sl][None], (2,), sky_sigma[sl])
        own = (sersic[sl] > neighbours[sl]) & (sersic[sl] > sky_sigma[sl][:, None, None])
        segmap[sl] = np.where(own, 1, np.where(neighbour_seg > 0, labels[sl], 0))
    table = Table()
    table["id"] = cat["id"]
    for key in cat.colnames:
        if key.startswith("sersic_") or key in _ARCHETYPE_COLUMNS:
            table[key] = cat[key]
    table["sersic_n_clipped"] = outside_galsim_range(np.asarray(cat["sersic_n"]))
    table["archetype"] = np.ones(len(table), bool)
    if sky is not None:
        table["sky_level"] = np.full(len(table), np.nan)
        table["sky_sigma"] = sky_sigma  # the archetype's own patch
        table["sky_patch"] = sky_patch
    table.meta["set"] = name
    return SynthSet(name, flux, segmap, table, sersic, neighbours, labels, sky)


def join_fits(catalog, fits):
    """The catalogue with the single-Sérsic fit columns added (same row order)."""
    for col in fits.colnames:
        if col != "id":
            catalog[col] = fits[col]
    return catalog
