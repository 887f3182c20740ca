"""Point-spread functions: GalSim profiles from a seeing FWHM, or from a PSF image.

Every stage that blurs or fits (``sersic_fit``, ``archetypes``, ``mock``) builds its PSF
here so that "FWHM 1.4 arcsec Moffat" means exactly the same profile everywhere.

Conventions: FWHM in arcsec, pixel scales in arcsec/pixel; a PSF *image* is a 2-D array
sampled at a given pixel scale whose sum is normalised to 1 (the total flux of a point
source is preserved by the convolution).
"""

from __future__ import annotations

import numpy as np

from .errors import MorphllrError
from .limits import PSF_FWHM_MAX

PSF_KINDS = ("moffat", "gaussian")
#: Moffat index of the atmospheric PSF (Trujillo et al. 2001 find beta ~ 4.765 for
#: Kolmogorov turbulence; SDSS PSFs are fitted well with beta ~ 3-5).
DEFAULT_MOFFAT_BETA = 4.765


def make_psf(fwhm_arcsec: float, kind: str = "moffat", beta: float = DEFAULT_MOFFAT_BETA):
    """A unit-flux, circular GalSim PSF profile of the given FWHM.

    Args:
        fwhm_arcsec: full width at half maximum in arcsec (> 0).
        kind: ``"moffat"`` (default; realistic wings) or ``"gaussian"``.
        beta: Moffat index (ignored for a Gaussian).

    Returns:
        ``galsim.GSObject`` with flux 1.
    """
    import galsim

    if not (np.isfinite(fwhm_arcsec) and 0 < fwhm_arcsec <= PSF_FWHM_MAX):
        raise MorphllrError(f"--psf-fwhm: {fwhm_arcsec!r} is not a FWHM in arcsec between 0 and {PSF_FWHM_MAX:g}; "
                            "give e.g. --psf-fwhm 1.4")
    if not (np.isfinite(beta) and beta > 0):
        raise MorphllrError(f"--psf-beta: {beta!r} is not a positive Moffat index; give e.g. --psf-beta 4.765")
    kind = str(kind).lower()
    if kind == "gaussian":
        return galsim.Gaussian(fwhm=float(fwhm_arcsec))
    if kind == "moffat":
        # truncate far out so that GalSim's FFTs stay small; 5 FWHM holds > 99.9 % of the flux
        return galsim.Moffat(beta=float(beta), fwhm=float(fwhm_arcsec), trunc=5.0 * float(fwhm_arcsec))
    raise MorphllrError(f"--psf: unknown PSF kind {kind!r}; choose one of {', '.join(PSF_KINDS)}")


def psf_from_image(image: np.ndarray, pixel_scale: float):
    """A GalSim profile from a sampled PSF image (e.g. an SDSS psField reconstruction).

    Args:
        image: 2-D array, PSF centred in the middle pixel; any normalisation.
        pixel_scale: arcsec per pixel of ``image``.

    Returns:
        ``galsim.InterpolatedImage`` with flux 1.
    """
    import galsim

    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 2 or not np.all(np.isfinite(image)) or image.sum() <= 0:
        raise MorphllrError("PSF image: must be a finite 2-D array with a positive sum; check the --psf file")
    normed = image / image.sum()
    return galsim.InterpolatedImage(galsim.Image(normed, scale=float(pixel_scale)), flux=1.0)


def psf_image(psf, pixel_scale: float, size: int | None = None, pixel_integrated: bool = False) -> np.ndarray:
    """Sample a PSF profile on a square, odd-sized grid centred on the middle pixel.

    Args:
        psf: GalSim profile (from :func:`make_psf` or :func:`psf_from_image`).
        pixel_scale: arcsec per pixel of the output grid.
        size: side in pixels (made odd); default: enough to hold 4 x FWHM each side.
        pixel_integrated: True integrates over each pixel (what a detector records);
            False samples the profile at pixel centres (a convolution kernel for a model
            that is pixel-integrated afterwards).

    Returns:
        float64 array ``(size, size)`` summing to 1.
    """
    if size is None:
        fwhm = psf.calculateFWHM() if hasattr(psf, "calculateFWHM") else 4 * pixel_scale
        size = int(np.ceil(8.0 * fwhm / pixel_scale)) + 1
    size = int(size) | 1  # odd, so the centre is a pixel centre
    method = "auto" if pixel_integrated else "no_pixel"
    img = psf.drawImage(nx=size, ny=size, scale=float(pixel_scale), method=method).array.astype(np.float64)
    return img / img.sum()


#: Catalogue columns read for per-galaxy PSFs, in order of preference.
PSF_FWHM_COLUMNS = ("psf_fwhm_arcsec", "psf_fwhm")
PSF_BETA_COLUMNS = ("psf_beta",)


def first_column(catalog, names, where: str = "catalogue") -> np.ndarray | None:
    """The first of ``names`` present in ``catalog`` as float64, or None if none is.

    Args:
        catalog: astropy Table.
        names: candidate column names, in order of preference.
        where: file named when a column holds text (see :func:`morphllr.readers.numeric_column`).

    Returns:
        float64 values (masked or blank cells NaN), or None.
    """
    from .readers import numeric_column

    for name in names:
        if name in catalog.colnames:
            return numeric_column(catalog, name, where)
    return None


def psfs_from_catalog(catalog, kind: str = "moffat", where: str = "catalogue", fix: str = "pass --psf-fwhm ARCSEC"):
    """One PSF profile per catalogue row from ``psf_fwhm_arcsec`` (and optional ``psf_beta``).

    Rows with the same FWHM and beta share one profile object, so callers can cache
    anything derived from a profile by ``id(profile)``.

    Args:
        catalog: astropy Table with an ``id`` column.
        kind: ``moffat`` or ``gaussian``.
        where: file name for messages.
        fix: what the user can do instead, for messages.

    Returns:
        list of GalSim profiles, one per row.
    """
    fwhm = first_column(catalog, PSF_FWHM_COLUMNS, where)
    if fwhm is None:
        raise MorphllrError(f"{where}: no PSF given and the catalogue has no {PSF_FWHM_COLUMNS[0]!r} column; "
                            f"{fix} (SDSS r median seeing ~1.4)")
    bad = ~np.isfinite(fwhm) | (fwhm <= 0) | (fwhm > PSF_FWHM_MAX)
    if bad.any():
        ids = ", ".join(str(v) for v in np.asarray(catalog["id"])[bad][:5])
        raise MorphllrError(f"{where}: PSF FWHM is missing, <= 0 or above {PSF_FWHM_MAX:g} arcsec for id(s) {ids}; "
                            f"fix the column or {fix}")
    beta = first_column(catalog, PSF_BETA_COLUMNS, where)
    cache: dict = {}
    profiles = []
    for i, f in enumerate(fwhm):
        b = DEFAULT_MOFFAT_BETA if beta is None or not np.isfinite(beta[i]) else float(beta[i])
        key = (round(float(f), 3), round(b, 2))
        if key not in cache:
            cache[key] = make_psf(key[0], kind, beta=key[1])
        profiles.append(cache[key])
    return profiles
