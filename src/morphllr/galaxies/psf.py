"""Point-spread functions: GalSim profiles from a seeing FWHM, or from a PSF image.

Every stage that blurs or fits (``sersic_fit``, ``archetypes``, ``mock``) builds its PSF
here so that "FWHM 1.4 arcsec Moffat" means exactly the same profile everywhere.

Conventions: FWHM in arcsec, pixel scales in arcsec/pixel; a PSF *image* is a 2-D array
sampled at a given pixel scale whose sum is normalised to 1 (the total flux of a point
source is preserved by the convolution).
"""

from __future__ import annotations

import numpy as np

from morphllr.errors import MorphllrError
from morphllr.limits import PSF_BETA_MAX, PSF_BETA_MIN, PSF_FWHM_MAX, PSF_IMAGE_MAX_SIDE
from morphllr.data.catalog import first_column, numeric_column
from morphllr.data.inputs import file_sha256

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
    check_beta(beta)
    kind = str(kind).lower()
    if kind == "gaussian":
        return galsim.Gaussian(fwhm=float(fwhm_arcsec))
    if kind == "moffat":
        # truncate far out so that GalSim's FFTs stay small; 5 FWHM holds > 99.9 % of the flux
        return galsim.Moffat(beta=float(beta), fwhm=float(fwhm_arcsec), trunc=5.0 * float(fwhm_arcsec))
    raise MorphllrError(f"--psf: unknown PSF kind {kind!r}; choose one of {', '.join(PSF_KINDS)}")


def check_beta(beta, where: str = "--psf-beta") -> float:
    """``beta`` as a float if it is a usable Moffat index, else one-line :class:`MorphllrError` naming ``where``."""
    try:
        value = float(beta)
    except (TypeError, ValueError):
        value = float("nan")
    if not (np.isfinite(value) and PSF_BETA_MIN <= value <= PSF_BETA_MAX):
        raise MorphllrError(f"{where}: {beta!r} is not a Moffat index from {PSF_BETA_MIN:g} to {PSF_BETA_MAX:g}; "
                            f"give e.g. --psf-beta {DEFAULT_MOFFAT_BETA} (atmospheric seeing; SDSS PSFs ~3-5)")
    return value


def psf_from_image(image: np.ndarray, pixel_scale: float):
    """A GalSim profile from a sampled PSF image (e.g. an SDSS psField reconstruction).

    Convention (the same in ``mock``, ``archetypes`` and ``fit-sersic``): a PSF image is the
    image of a point source as the detector records it, i.e. it already includes the pixel
    response, so images convolved with it are *sampled* at pixel centres, never integrated
    over the pixel a second time (:func:`has_pixel_response`).

    Args:
        image: 2-D array, PSF centred in the middle pixel; any normalisation.
        pixel_scale: arcsec per pixel of ``image``.

    Returns:
        ``galsim.InterpolatedImage`` with flux 1.
    """
    import galsim

    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 2 or not np.all(np.isfinite(image)) or image.sum() <= 0:
        raise MorphllrError("PSF image: must be a finite 2-D array with a positive sum; check the --psf-image file")
    normed = image / image.sum()
    return galsim.InterpolatedImage(galsim.Image(normed, scale=float(pixel_scale)), flux=1.0)


def has_pixel_response(psf) -> bool:
    """Whether ``psf`` came from a PSF image (:func:`psf_from_image`), which holds the pixel response already."""
    import galsim

    return isinstance(psf, galsim.InterpolatedImage)


def load_psf_image(path, option: str = "--psf-image") -> np.ndarray:
    """Read and check a PSF image file (FITS, first HDU with data, or ``.npy``).

    Args:
        path: the file.
        option: option named in messages.

    Returns:
        float64 2-D array (finite, positive sum, at most :data:`morphllr.limits.PSF_IMAGE_MAX_SIDE` per side).
    """
    from pathlib import Path

    path = Path(path)
    fix = "give a FITS image or .npy array of the PSF (a point source) sampled at the set's pixel scale"
    if not path.is_file():
        raise MorphllrError(f"{option} {path}: file not found; {fix}")
    name = path.name.lower()
    if name.endswith(".npy"):
        try:
            data = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise MorphllrError(f"{option} {path}: not a readable .npy array ({exc}); {fix}") from None
    elif name.endswith((".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fits.bz2", ".fz")):
        from astropy.io import fits

        try:
            data = fits.getdata(path)
        except (OSError, IndexError, TypeError, ValueError) as exc:
            raise MorphllrError(f"{option} {path}: not a readable FITS image ({exc}); {fix}") from None
    else:
        raise MorphllrError(f"{option} {path}: unknown file type (not .fits or .npy); {fix}")
    data = np.asarray(data)
    if data.dtype.kind not in "biuf":
        raise MorphllrError(f"{option} {path}: holds {data.dtype} values, not numbers; {fix}")
    if data.ndim != 2:
        raise MorphllrError(f"{option} {path}: a PSF image must be 2-D, got shape {data.shape}; {fix} "
                            "(one PSF, not a cube)")
    if max(data.shape) > PSF_IMAGE_MAX_SIDE or min(data.shape) < 3:
        raise MorphllrError(f"{option} {path}: a PSF image of {data.shape[0]}x{data.shape[1]} pixels; give one of 3 "
                            f"to {PSF_IMAGE_MAX_SIDE} pixels per side")
    data = data.astype(np.float64)
    bad = ~np.isfinite(data)
    if bad.any():
        raise MorphllrError(f"{option} {path}: {int(bad.sum())} NaN/inf pixel(s) in the PSF image; replace them "
                            "(e.g. by 0) and give it again")
    if not data.sum() > 0:
        raise MorphllrError(f"{option} {path}: the PSF image sums to {data.sum():g}; a PSF needs positive total "
                            "flux (sky-subtract it, not below zero)")
    _check_centred(data, f"{option} {path}")
    return data


#: a PSF image's light may sit at most this far (pixels) from the image's centre
PSF_CENTRE_TOLERANCE = 0.25


def _check_centred(data: np.ndarray, where: str) -> None:
    """Refuse a PSF image whose light is not centred on the image: it would shift every model convolved with it.

    GalSim places an image's profile centre at the array's centre, ``((ny - 1) / 2, (nx - 1) / 2)``:
    the middle pixel for odd sides, the corner between the four middle pixels for even ones.  An
    FFT-style array (peak at pixel ``n // 2`` of an even side) is half a pixel off it, and a PSF
    centred elsewhere moves the convolved archetypes or mocks away from the galaxies they stand
    for, silently.  The centre is a windowed centroid (:func:`_windowed_centre`), which noisy or
    negative wings do not move.

    Args:
        data: the PSF pixels.
        where: option and file, for the message.

    Returns:
        None; raises MorphllrError with the shift that fixes it.
    """
    ny, nx = data.shape
    cy, cx = _windowed_centre(data)
    dy, dx = cy - (ny - 1) / 2, cx - (nx - 1) / 2
    if max(abs(dy), abs(dx)) > PSF_CENTRE_TOLERANCE:
        centre = f"{(ny - 1) / 2:g}, {(nx - 1) / 2:g}"
        even = (" (an even side's centre lies between its two middle pixels: an FFT-style PSF with its peak at pixel "
                "n/2 is half a pixel off; crop one row or column to make the side odd)" if ny % 2 == 0 or nx % 2 == 0
                else "")
        raise MorphllrError(f"{where}: the PSF's light is centred at row {cy:.2f}, column {cx:.2f} of the {ny}x{nx} "
                            f"image, not at its centre ({centre}), so every convolved model would shift by "
                            f"({dy:+.2f}, {dx:+.2f}) pixels; recentre the PSF image to within "
                            f"{PSF_CENTRE_TOLERANCE:g} pixel{even}")


def _windowed_centre(data: np.ndarray, iterations: int = 200) -> tuple[float, float]:
    """Centre of a PSF image's core: a Gaussian-windowed centroid, re-centred until it stops moving.

    A plain or thresholded centroid of a sampled profile is biased by the pixels the threshold
    keeps on one side (~0.1 px for a PSF 0.2 px off a pixel centre); weighting by a Gaussian of
    the core's width, re-centred until it stops moving, is unbiased for a symmetric PSF.

    Args:
        data: the PSF pixels (positive sum).
        iterations: the most re-centring steps.

    Returns:
        (row, column) in pixels.
    """
    yy, xx = np.indices(data.shape)
    core = np.where(data >= 0.1 * data.max(), data, 0.0)
    cy, cx = float((core * yy).sum() / core.sum()), float((core * xx).sum() / core.sum())
    # Gaussian sigma of the core: FWHM = 2 sqrt(area above half the peak / pi)
    sigma = max(0.5, 2.0 * np.sqrt(np.count_nonzero(data >= 0.5 * data.max()) / np.pi) / 2.3548)
    for _ in range(iterations):
        w = data * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
        total = w.sum()
        if not total > 0:
            break
        # a plain re-centring step: SExtractor's doubled step overshoots on sharp, sampled cores and
        # can settle on a pixel centre instead of the true one
        step_y, step_x = float((w * (yy - cy)).sum() / total), float((w * (xx - cx)).sum() / total)
        cy, cx = cy + step_y, cx + step_x
        if max(abs(step_y), abs(step_x)) < 1e-5:
            break
    return cy, cx


def psf_image_record(path, pixels: np.ndarray, store_pixels: bool = True) -> dict:
    """What is recorded about a PSF image: file name, path, sha256 of the file and (optionally) the pixels.

    Args:
        path: the file read by :func:`load_psf_image`.
        pixels: its float64 pixels.
        store_pixels: keep the pixels themselves (lists of floats), so a later stage needs no file.

    Returns:
        JSON-able dict.
    """
    import hashlib
    from pathlib import Path

    pixels = np.asarray(pixels, dtype=np.float64)
    record = {"file": Path(path).name, "path": str(Path(path).resolve()), "sha256": file_sha256(path),
              "shape": [int(v) for v in pixels.shape],
              "pixels_sha256": hashlib.sha256(np.ascontiguousarray(pixels, dtype="<f8").tobytes()).hexdigest()}
    if store_pixels:
        record["pixels"] = pixels.tolist()
    return record


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


def psf_parameters(catalog, kind: str = "moffat", where: str = "catalogue", fix: str = "pass --psf-fwhm ARCSEC",
                   fwhm: float | None = None, beta: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-row PSF FWHM and Moffat beta: option > catalogue column > default (beta only).

    Args:
        catalog: astropy Table with an ``id`` column.
        kind: ``moffat`` or ``gaussian`` (a Gaussian has no beta: NaN).
        where: file name for messages.
        fix: what the user can do instead, for messages.
        fwhm: FWHM in arcsec for every row (None: column ``psf_fwhm_arcsec`` / ``psf_fwhm``).
        beta: Moffat index for every row (None: column ``psf_beta``, blank cells
            :data:`DEFAULT_MOFFAT_BETA`).

    Returns:
        (fwhm, beta) float64 arrays of ``len(catalog)`` as the profiles use them: values read
        from the catalogue rounded (FWHM to 0.001 arcsec, beta to 0.01), options and the default exact.
    """
    n = len(catalog)
    ids = np.asarray(catalog["id"]) if "id" in catalog.colnames else np.arange(n)
    if fwhm is not None:
        values = np.full(n, float(fwhm))
    else:
        values = first_column(catalog, PSF_FWHM_COLUMNS, where)  # rounded below
        if values is None:
            raise MorphllrError(f"{where}: no PSF given and the catalogue has no {PSF_FWHM_COLUMNS[0]!r} column; "
                                f"{fix} (SDSS r median seeing ~1.4)")
        bad = ~np.isfinite(values) | (values <= 0) | (values > PSF_FWHM_MAX)
        if bad.any():
            shown = ", ".join(str(v) for v in ids[bad][:5])
            raise MorphllrError(f"{where}: PSF FWHM is missing, <= 0 or above {PSF_FWHM_MAX:g} arcsec for id(s) "
                                f"{shown}; fix the column or {fix}")
        values = _rounded(values, 3)  # catalogue values are rounded, so rows of one seeing share a profile
    if str(kind).lower() != "moffat":
        return values, np.full(n, np.nan)
    if beta is not None:
        betas = np.full(n, check_beta(beta))
    else:
        column = first_column(catalog, PSF_BETA_COLUMNS, where)
        betas = np.full(n, DEFAULT_MOFFAT_BETA) if column is None else np.where(np.isnan(column), DEFAULT_MOFFAT_BETA,
                                                                                 _rounded(column, 2))
        bad = ~np.isfinite(betas) | (betas < PSF_BETA_MIN) | (betas > PSF_BETA_MAX)
        if bad.any():
            shown = ", ".join(str(v) for v in ids[bad][:5])
            raise MorphllrError(f"{where}: column {PSF_BETA_COLUMNS[0]!r} holds a Moffat index outside "
                                f"{PSF_BETA_MIN:g}-{PSF_BETA_MAX:g} (e.g. {float(betas[bad][0]):g}) for id(s) {shown}; "
                                "fix the column (leave a cell empty for the default "
                                f"{DEFAULT_MOFFAT_BETA}) or pass --psf-beta BETA for every galaxy")
    return values, betas


def _rounded(values: np.ndarray, digits: int) -> np.ndarray:
    """Python's correctly rounded ``round`` per element (the profiles' cache keys have always used it)."""
    return np.array([round(float(v), digits) if np.isfinite(v) else float(v) for v in values], dtype=np.float64)


def psfs_from_catalog(catalog, kind: str = "moffat", where: str = "catalogue", fix: str = "pass --psf-fwhm ARCSEC",
                      fwhm: float | None = None, beta: float | None = None):
    """One PSF profile per catalogue row from ``psf_fwhm_arcsec`` (and optional ``psf_beta``).

    Rows with the same FWHM and beta share one profile object, so callers can cache
    anything derived from a profile by ``id(profile)``.

    Args:
        catalog: astropy Table with an ``id`` column.
        kind: ``moffat`` or ``gaussian``.
        where: file name for messages.
        fix: what the user can do instead, for messages.
        fwhm, beta: values for every row overriding the columns (see :func:`psf_parameters`).

    Returns:
        list of GalSim profiles, one per row.
    """
    fwhms, betas = psf_parameters(catalog, kind, where, fix, fwhm, beta)
    cache: dict = {}
    profiles = []
    for f, b in zip(fwhms, betas):
        key = (float(f), DEFAULT_MOFFAT_BETA if np.isnan(b) else float(b))
        if key not in cache:
            cache[key] = make_psf(key[0], kind, beta=key[1])
        profiles.append(cache[key])
    return profiles


# --------------------------------------------------------------------------- the PSF a set's fits used
class FitPSFRows:
    """Per-galaxy PSF that ``fit-sersic`` deconvolved, read back from a set (:func:`fit_psf_rows`).

    Attributes:
        kind: ``none``, ``moffat``, ``gaussian`` or ``image``.
        fwhm: (N,) FWHM in arcsec (NaN: no PSF or a PSF image).
        beta: (N,) Moffat index (NaN: not a Moffat).
        pixels: the PSF image (float64 2-D) for kind ``image``, else None.
        pixel_scale: arcsec per pixel the fits (and a PSF image) used, or None if not recorded.
        record: the fits' PSF record in the current form (``kind``, ``fwhm_arcsec``/``fwhm_from``,
            ``beta``/``beta_from``, or ``image`` without its pixels); an older ``fit-sersic``'s
            record is rebuilt and marked ``"record": "older fit-sersic"``.
    """

    def __init__(self, kind, fwhm, beta, pixels, pixel_scale, record):
        self.kind, self.fwhm, self.beta = kind, fwhm, beta
        self.pixels, self.pixel_scale, self.record = pixels, pixel_scale, record

    def profiles(self, pixel_scale: float):
        """GalSim PSF(s) for rendering: None (no PSF), one profile for every row, or a list of one per row."""
        if self.kind == "none":
            return None
        if self.kind == "image":
            return psf_from_image(self.pixels, pixel_scale)
        cache: dict = {}
        per_row = []
        for f, b in zip(self.fwhm, self.beta):
            key = (float(f), DEFAULT_MOFFAT_BETA if np.isnan(b) else float(b))
            if key not in cache:
                cache[key] = make_psf(key[0], self.kind, beta=key[1])
            per_row.append(cache[key])
        return next(iter(cache.values())) if len(cache) == 1 else per_row


def fit_psf_rows(catalog, fit_record: dict | None, where: str = "catalogue") -> FitPSFRows | None:
    """The PSF a set's Sérsic fits used, per galaxy (``archetypes`` and ``mock --match`` share it).

    Reads ``catalog.meta["sersic_fit"]`` (passed as ``fit_record``) and the columns
    ``sersic_psf_fwhm_arcsec`` / ``sersic_psf_beta`` the fit wrote.  A record of an older
    ``fit-sersic`` (``psf`` a plain kind string beside ``psf_fwhm``) is rebuilt as that fitter
    used it: FWHM = its ``psf_fwhm`` for every galaxy with the default beta (it gave
    ``make_psf(FWHM)``), or, without one, the columns ``psf_fwhm_arcsec`` / ``psf_beta``
    (blank: 4.765), rounded as :func:`psf_parameters` rounds them.

    Args:
        catalog: the rows (astropy Table; a subset of the set's rows is fine).
        fit_record: the set's ``sersic_fit`` record, or None.
        where: file named in messages.

    Returns:
        :class:`FitPSFRows`, or None when the set records no fit PSF.
    """
    recorded = (fit_record or {}).get("psf")
    if recorded is None:
        return None
    n = len(catalog)
    nan = np.full(n, np.nan)
    refit = f"refit with `morphllr fit-sersic {where} ... --overwrite`"
    scale = (fit_record or {}).get("pixel_scale")
    scale = None if scale is None else float(scale)
    if isinstance(recorded, str):  # older fit-sersic: {"psf": "moffat", "psf_fwhm": 1.4 or None, ...}
        kind = recorded.lower()
        if kind == "none":
            return FitPSFRows("none", nan, nan, None, scale, {"kind": "none", "record": "older fit-sersic"})
        if kind not in PSF_KINDS:
            raise MorphllrError(f"{where}: the record of its Sérsic fits names an unknown PSF {recorded!r}; {refit}")
        old_fwhm = fit_record.get("psf_fwhm")
        if old_fwhm is not None:
            fwhm = np.full(n, float(old_fwhm))
            beta = np.full(n, DEFAULT_MOFFAT_BETA if kind == "moffat" else np.nan)
            record = {"kind": kind, "fwhm_arcsec": float(old_fwhm), "fwhm_from": "--psf-fwhm"}
            if kind == "moffat":
                record.update(beta=DEFAULT_MOFFAT_BETA, beta_from=f"default {DEFAULT_MOFFAT_BETA}")
        else:
            fwhm, beta = psf_parameters(catalog, kind, where, refit)
            record = {"kind": kind, "fwhm_arcsec": float(fwhm[0]) if n and np.all(fwhm == fwhm[0]) else None,
                      "fwhm_from": "column " + next(c for c in PSF_FWHM_COLUMNS if c in catalog.colnames)}
            if kind == "moffat":
                record["beta"] = float(beta[0]) if n and np.all(beta == beta[0]) else None
                record["beta_from"] = (f"column psf_beta (blank: {DEFAULT_MOFFAT_BETA})" if "psf_beta" in
                                       catalog.colnames else f"default {DEFAULT_MOFFAT_BETA}")
        record["record"] = "older fit-sersic"
        return FitPSFRows(kind, fwhm, beta, None, scale, record)
    if not isinstance(recorded, dict):
        raise MorphllrError(f"{where}: the record of its Sérsic fits holds an unreadable PSF ({recorded!r}); {refit}")
    kind = str(recorded.get("kind")).lower()
    if kind == "none":
        return FitPSFRows("none", nan, nan, None, scale, dict(recorded))
    if kind == "image":
        image = recorded.get("image") or {}
        if "pixels" not in image:
            raise MorphllrError(f"{where}: the record of its Sérsic fits names the PSF image {image.get('file')} but "
                                f"does not hold it; {refit}")
        record = {k: v for k, v in recorded.items() if k != "image"}
        record["image"] = {k: v for k, v in image.items() if k != "pixels"}
        if recorded.get("pixel_scale") is not None:  # the scale the image is sampled at
            scale = float(recorded["pixel_scale"])
        return FitPSFRows("image", nan, nan, np.asarray(image["pixels"], dtype=np.float64), scale, record)
    if kind not in PSF_KINDS:
        raise MorphllrError(f"{where}: the record of its Sérsic fits names an unknown PSF kind {kind!r}; {refit}")
    if "sersic_psf_fwhm_arcsec" in catalog.colnames:
        fwhm = numeric_column(catalog, "sersic_psf_fwhm_arcsec", where)
    else:
        fwhm = np.full(n, np.nan if recorded.get("fwhm_arcsec") is None else float(recorded["fwhm_arcsec"]))
    if kind == "moffat":
        if "sersic_psf_beta" in catalog.colnames:
            beta = numeric_column(catalog, "sersic_psf_beta", where)
        else:
            beta = np.full(n, DEFAULT_MOFFAT_BETA if recorded.get("beta") is None else float(recorded["beta"]))
    else:
        beta = nan
    bad = ~np.isfinite(fwhm) | ((kind == "moffat") & ~np.isfinite(beta))
    if bad.any():
        ids = np.asarray(catalog["id"]) if "id" in catalog.colnames else np.arange(n)
        shown = ", ".join(str(v) for v in ids[bad][:5]) + (", ..." if bad.sum() > 5 else "")
        raise MorphllrError(f"{where}: the PSF of the Sérsic fits is not recorded for id(s) {shown} (columns "
                            f"sersic_psf_fwhm_arcsec / sersic_psf_beta); {refit}")
    return FitPSFRows(kind, fwhm, beta, None, scale, dict(recorded))
