"""Degraded copies of an image set: the same galaxies through the same preprocessing, one thing made worse.

A controlled test of what the LLR responds to (VALIDATION.md): copy the observed set with a broader PSF,
with the centre smoothed, or at a lower resolution, keep the sky noise of the original, and score the copy
next to it.  The synthetic twin of the paper's TNG50-1/-2/-3 resolution test is :func:`lower_resolution`.

Every operation works on the ``/flux`` cutouts, image by image and channel by channel, and ends by adding
white Gaussian noise until the sky rms (``segmentation.background_stats``, sep) is the original's again
(:func:`restore_noise`; nothing is added where the rms did not drop).  The copy is then written by
``prepare.write_flux_set`` with the set's own recipe, so segmentation, ``/images`` and the catalogue
columns follow exactly as for the original.  The noise comes from ``numpy.random.default_rng(seed)``, drawn
image after image in the set's order: a copy is reproducible from (set, operation, seed).

Operations (:data:`OPERATIONS`):

* ``psf_broaden`` (factor F > 1): convolve with a Gaussian of FWHM sqrt(F^2 - 1) x the PSF FWHM (FWHMs add in
  quadrature, so the PSF becomes F times broader).  PSF FWHM per galaxy: the given value, else the fit's
  recorded ``sersic_psf_fwhm_arcsec``, else ``psf_fwhm_arcsec``; sigma = FWHM / pixel_scale / 2.3548.
* ``smooth_centre``: blur the galaxy with sigma = max(R_e / 2, 1 px) and blend it in with a weight 1 within
  0.75 R_e falling linearly to 0 at 2.25 R_e from the cutout centre (structure erased inside ~1.5 R_e,
  outskirts kept); R_e = the catalogue's ``sersic_re_pix`` (flux-cutout pixels; 4 px where it is missing).
* ``resolution`` (factor K >= 2): K x K block mean and back (each block's pixels replaced by its mean; a
  border beyond a multiple of K is kept as it is), the resolution K times coarser.

The written set records what was done in its attribute ``degrade`` (JSON list, one entry per degradation
applied so far: operation, parameters, seed, PSF source, source file and its images_sha256) and the added
noise per image in the catalogue column ``degrade_noise_sigma`` (flux units per pixel).  These are the
algorithms of the GZ2 validation (validation/gz2.sh step degrade), constants included.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from morphllr.atomic import claims
from morphllr.errors import MorphllrError
from morphllr.data.imageset import ImageSet, carried_attrs
from morphllr.data.prepare import write_flux_set
from morphllr.data.catalog import numeric_column
from morphllr.data.segmentation import background_stats

OPERATIONS = ("psf_broaden", "smooth_centre", "resolution")
#: FWHM / sigma of a Gaussian as the GZ2 validation used it (2 sqrt(2 ln 2) = 2.35482 rounded).
FWHM_PER_SIGMA = 2.3548
#: Half-light radius (flux px) assumed for ``smooth_centre`` where the catalogue has none.
FALLBACK_RE_PIX = 4.0
#: Catalogue columns giving the PSF FWHM in arcsec, first found wins (fit-sersic's record first).
PSF_COLUMNS = ("sersic_psf_fwhm_arcsec", "psf_fwhm_arcsec")


def restore_noise(changed: np.ndarray, original: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Add white Gaussian noise so ``changed``'s sky rms matches ``original``'s again.

    Args:
        changed: 2-D pixels after smoothing or binning.
        original: the same image before.
        rng: the noise stream.

    Returns:
        (float64 image, sigma of the added noise; 0 where the rms did not drop).
    """
    target, now = background_stats(original)[1], background_stats(changed)[1]
    sigma = float(np.sqrt(max(target**2 - now**2, 0.0)))
    return changed + rng.normal(0.0, sigma, changed.shape), sigma


def broaden_psf(img: np.ndarray, sigma_pix: float, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Convolve a 2-D image with a Gaussian of ``sigma_pix`` and restore its noise."""
    from scipy.ndimage import gaussian_filter

    return restore_noise(gaussian_filter(img, sigma_pix), img, rng)


def smooth_centre(img: np.ndarray, re_pix: float, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Blur the galaxy inside ~1.5 R_e (sigma = R_e / 2), keep the outskirts: structure erased at the centre."""
    from scipy.ndimage import gaussian_filter

    re_pix = float(re_pix) if np.isfinite(re_pix) and re_pix > 0 else FALLBACK_RE_PIX
    yy, xx = np.indices(img.shape)
    c = (img.shape[0] - 1) / 2
    weight = np.clip(1.5 - np.hypot(yy - c, xx - c) / (1.5 * re_pix), 0.0, 1.0)  # 1 inside, ramps to 0
    blurred, sigma = restore_noise(gaussian_filter(img, max(re_pix / 2, 1.0)), img, rng)
    return weight * blurred + (1 - weight) * img, sigma


def lower_resolution(img: np.ndarray, k: int, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Replace every k x k block of a 2-D image by its mean (the border beyond a multiple of k is kept)."""
    h, w = (s // k * k for s in img.shape)
    out = np.array(img, dtype=np.float64)
    means = out[:h, :w].reshape(h // k, k, w // k, k).mean(axis=(1, 3))
    out[:h, :w] = np.repeat(np.repeat(means, k, axis=0), k, axis=1)
    return restore_noise(out, img, rng)


def psf_sigmas(catalog, pixel_scale: float | None, factor: float, psf_fwhm: float | None, source: str):
    """Per-galaxy sigma (flux px) of the Gaussian that makes the PSF ``factor`` times broader.

    Returns:
        (float64 (N,) sigmas, where the FWHM came from: ``--psf-fwhm`` or the column name).
    """
    if pixel_scale is None:
        raise MorphllrError(f"{source}: its recipe records no pixel_scale, so a PSF FWHM in arcsec has no size in "
                            "pixels; prepare the set with a recipe that sets pixel_scale")
    n = len(catalog)
    if psf_fwhm is not None:
        fwhm, origin = np.full(n, float(psf_fwhm)), "--psf-fwhm"
    else:
        column = next((c for c in PSF_COLUMNS if c in catalog.colnames), None)
        if column is None:
            raise MorphllrError(f"{source}: no PSF FWHM known (catalogue columns {', '.join(PSF_COLUMNS)} absent); "
                                "pass --psf-fwhm ARCSEC (the PSF the set was observed with)")
        fwhm, origin = numeric_column(catalog, column, source), column
        bad = ~(np.isfinite(fwhm) & (fwhm > 0))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise MorphllrError(f"{source}: catalogue column {column} has no positive FWHM for {int(bad.sum())} "
                                f"galaxy(ies) (first: id {catalog['id'][i]}); pass --psf-fwhm ARCSEC")
    return np.sqrt(factor**2 - 1.0) * fwhm / pixel_scale / FWHM_PER_SIGMA, origin


def degrade_flux(flux: np.ndarray, operation: str, rng: np.random.Generator, *, sigmas=None, re_pix=None,
                 k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Apply one operation to (N, C, H, W) flux cutouts, image by image and channel by channel.

    Args:
        flux: float32 flux cutouts.
        operation: one of :data:`OPERATIONS`.
        rng: the noise stream (drawn in image, then channel order).
        sigmas: per-image Gaussian sigma in pixels (``psf_broaden``).
        re_pix: per-image half-light radius in pixels (``smooth_centre``).
        k: block size (``resolution``).

    Returns:
        (float32 (N, C, H, W) degraded flux, float64 (N, C) sigma of the noise added).
    """
    out = np.empty(flux.shape, np.float32)
    added = np.zeros(flux.shape[:2])
    for i, image in enumerate(flux):
        for c, plane in enumerate(image):
            if operation == "psf_broaden":
                out[i, c], added[i, c] = broaden_psf(plane, sigmas[i], rng)
            elif operation == "smooth_centre":
                out[i, c], added[i, c] = smooth_centre(plane, re_pix[i], rng)
            elif operation == "resolution":
                out[i, c], added[i, c] = lower_resolution(plane, k, rng)
            else:
                raise MorphllrError(f"degrade: unknown operation {operation!r}; use one of {list(OPERATIONS)}")
    return out, added


@claims({"out": "--out"}, inputs=("src",))
def degrade_set(src, out, *, psf_broaden: float | None = None, smooth_centre: bool = False,
                resolution: int | None = None, psf_fwhm: float | None = None, seed: int = 0,
                overwrite: bool = False) -> dict[str, Any]:
    """Write a degraded copy of an image set (``morphllr degrade``); exactly one operation per call.

    Args:
        src: image set (.h5) with ``/flux``.
        out: output ``.h5``.
        psf_broaden: PSF FWHM factor F > 1.
        smooth_centre: smooth the centres (needs ``sersic_re_pix``, from ``morphllr fit-sersic``).
        resolution: block size K >= 2.
        psf_fwhm: PSF FWHM in arcsec for ``psf_broaden`` (None: the catalogue's).
        seed: seed of the noise stream.
        overwrite: replace ``out``.

    Returns:
        the record added to the attribute ``degrade`` (also ``n_images``).
    """
    chosen = [name for name, on in (("psf_broaden", psf_broaden is not None), ("smooth_centre", smooth_centre),
                                    ("resolution", resolution is not None)) if on]
    if len(chosen) != 1:
        raise MorphllrError("degrade: give exactly one of --psf-broaden, --smooth-centre, --resolution "
                            f"({'none' if not chosen else ' and '.join(chosen)} given); chain calls for several")
    operation = chosen[0]
    if psf_fwhm is not None and operation != "psf_broaden":
        raise MorphllrError("--psf-fwhm: only --psf-broaden uses a PSF; drop --psf-fwhm")
    if operation == "psf_broaden" and not (np.isfinite(psf_broaden) and psf_broaden > 1):
        raise MorphllrError(f"--psf-broaden {psf_broaden}: must be a factor above 1 (2 = twice the PSF FWHM)")
    if operation == "resolution" and (int(resolution) != resolution or resolution < 2):
        raise MorphllrError(f"--resolution {resolution}: must be a whole block size of at least 2 pixels")
    src = Path(src)
    with ImageSet.open(src) as s:
        if s.flux is None:
            raise MorphllrError(f"{src}: holds no flux cutouts (/flux), which degrading works on; prepare it again "
                                "without --no-flux")
        flux, catalog, prep = np.asarray(s.flux[:], dtype=np.float32), s.catalog, s.preprocessing
        attrs, source_sha = s.attrs, s.attrs.get("images_sha256")
    if len(flux) == 0:
        raise MorphllrError(f"{src}: holds no images")
    record: dict[str, Any] = {"operation": operation, "seed": int(seed), "source": src.name,
                              "source_images_sha256": str(source_sha) if source_sha is not None else None,
                              "noise": "white Gaussian restoring the original's sep background rms"}
    rng = np.random.default_rng(seed)
    if operation == "psf_broaden":
        sigmas, origin = psf_sigmas(catalog, prep.get("pixel_scale"), float(psf_broaden), psf_fwhm, str(src))
        record.update(factor=float(psf_broaden), psf_fwhm_from=origin, fwhm_per_sigma=FWHM_PER_SIGMA,
                      kernel_sigma_pix={"min": float(sigmas.min()), "max": float(sigmas.max())})
        degraded, added = degrade_flux(flux, operation, rng, sigmas=sigmas)
    elif operation == "smooth_centre":
        if "sersic_re_pix" not in catalog.colnames:
            raise MorphllrError(f"{src}: catalogue has no sersic_re_pix (the half-light radius the smoothing is "
                                f"scaled to); run `morphllr fit-sersic {src}` first")
        re_pix = numeric_column(catalog, "sersic_re_pix", str(src))
        fallback = ~(np.isfinite(re_pix) & (re_pix > 0))
        record.update(re_column="sersic_re_pix", blur_sigma="max(R_e / 2, 1) px",
                      weight="clip(1.5 - r / (1.5 R_e), 0, 1) about the cutout centre",
                      fallback_re_pix=FALLBACK_RE_PIX, n_fallback=int(fallback.sum()))
        degraded, added = degrade_flux(flux, operation, rng, re_pix=re_pix)
    else:
        record.update(block=int(resolution))
        degraded, added = degrade_flux(flux, operation, rng, k=int(resolution))
    history = attrs.get("degrade")
    steps = json.loads(history) if isinstance(history, str) else []
    table = catalog.copy()
    table["degrade_noise_sigma"] = added.mean(axis=1) if added.shape[1] > 1 else added[:, 0]
    write_flux_set(out, degraded, table, prep, overwrite=overwrite,
                   attrs={**carried_attrs(attrs, drop=("degrade",)), "degrade": [*steps, record]})
    return {**record, "n_images": len(degraded)}
