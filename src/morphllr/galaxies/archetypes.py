"""Sérsic archetypes: the smooth twin of every observed galaxy (Zanisi et al. 2021, sec. 2.2).

For each galaxy a GalSim ``Sersic(n, half_light_radius, flux)`` is sheared to its axis
ratio q at position angle PA, convolved with the PSF, drawn at the set's pixel scale
onto the flux-cutout grid, and given the same kind of background as the real image:

* matched noise: Gaussian sky noise of the measured ``sky_sigma`` plus, when a ``gain``
  (electrons per flux unit) is known, the galaxy's own Poisson noise; or
* real sky: a random empty-sky cutout from a user-given set, the way RealSim inserts
  simulated galaxies into real SDSS fields (plus the galaxy's Poisson noise).

The result goes through the observed set's own preprocessing (``flux_to_model``), so the
two density models see pixels made the same way.

Parameter conventions are those of :mod:`morphllr.galaxies.sersic_fit` (major-axis R_e in pixels
of the flux cutout, q = b/a, PA counter-clockwise from +x in degrees, total flux).
GalSim's ``half_light_radius`` is the circularised radius, ``R_e * sqrt(q)``.

Speed: building a GalSim Sérsic (its Hankel-transform tables) costs ~0.1 s per index,
so unit-radius profiles are cached on a grid in log n with spacing :data:`LOG_N_STEP`
(n rounded by at most 1.6 %) and only dilated, sheared and rescaled per galaxy.  The
tables are built in the parent process before worker processes fork, so each index is
computed once.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np

from morphllr.atomic import claims
from morphllr.data.catalog import first_column, numeric_column
from morphllr.data.imageset import ImageSet
from morphllr.data.inputs import file_sha256
from morphllr.data.prepare import write_flux_set
from morphllr.errors import MorphllrError
from morphllr.galaxies.psf import (DEFAULT_MOFFAT_BETA, fit_psf_rows, has_pixel_response, load_psf_image, make_psf,
                                   psf_from_image, psf_image, psf_image_record, psf_parameters, psfs_from_catalog)
from morphllr.galaxies.sersic import GALSIM_N_RANGE, GALSIM_N_RANGE_TEXT, outside_galsim_range
from morphllr.galaxies.sersic_fit import FLAG_BITS, describe_psf
from morphllr.galaxies.sky_patches import add_sky_patch, load_sky_patches, patches_sha256
from morphllr.limits import MAX_FLUX, MAX_RE_CUTOUTS
from morphllr.parallel import map_in_processes

#: Indices accepted at all (beyond these a fit has failed: refuse with a message).  Those outside GalSim's
#: range (:data:`morphllr.galaxies.sersic.GALSIM_N_RANGE`) are clipped to it and flagged (column
#: ``sersic_n_clipped``, fit flag bit 32).
N_ACCEPT = (0.05, 20.0)
#: log-n spacing of the profile cache: 95 indices over GalSim's range, inside GalSim's own cache of
#: 100 Hankel tables (more would be recomputed over and over); n rounded by <= 1.6 %
LOG_N_STEP = 0.032
#: Default catalogue column for each archetype parameter.
DEFAULT_COLUMNS = {
    "n": "sersic_n", "re_pix": "sersic_re_pix", "q": "sersic_q", "pa_deg": "sersic_pa_deg",
    "flux": "sersic_flux", "x0_pix": "sersic_x0_pix", "y0_pix": "sersic_y0_pix",
}
OPTIONAL = ("x0_pix", "y0_pix")


# --------------------------------------------------------------------------- parameters
@dataclass
class ArchetypeParams:
    """Per-galaxy Sérsic parameters (arrays of length N) in the fitter's conventions."""

    ids: np.ndarray
    n: np.ndarray
    re_pix: np.ndarray
    q: np.ndarray
    pa_deg: np.ndarray
    flux: np.ndarray
    x0_pix: np.ndarray | None = None
    y0_pix: np.ndarray | None = None
    n_clipped: np.ndarray = field(default=None)
    band_scale: np.ndarray | None = None  # (N, C) flux of each band relative to the fitted one

    def __len__(self) -> int:
        return len(self.ids)

    def part(self, start: int, stop: int) -> "ArchetypeParams":
        """Rows ``start:stop`` (what one worker process receives)."""
        cut = slice(start, stop)
        return ArchetypeParams(**{k: None if v is None else v[cut] for k, v in self.__dict__.items()})


def _bad_rows(ids, bad: np.ndarray) -> str:
    shown = ", ".join(str(i) for i in np.asarray(ids)[bad][:5])
    more = f" and {int(bad.sum()) - 5} more" if bad.sum() > 5 else ""
    return f"{shown}{more}"


def params_from_catalog(catalog, columns: dict[str, str] | None = None, where: str = "catalogue",
                        drop_bad: bool = False, cutout_side: int | None = None,
                        drop_flagged: bool = False) -> tuple[ArchetypeParams, np.ndarray]:
    """Read and check archetype parameters from a catalogue.

    Values that would exhaust memory or crash GalSim (an R_e of many cutouts, an absurd
    flux) are refused like any other unusable value, before anything is rendered.

    Args:
        catalog: astropy Table with an ``id`` column and the parameter columns.
        columns: override of :data:`DEFAULT_COLUMNS` (e.g. ``{"n": "SERSIC_N"}``).
        where: file name used in error messages.
        drop_bad: skip rows with unusable values instead of refusing.
        cutout_side: side of the flux cutouts in pixels; R_e may be at most
            :data:`morphllr.limits.MAX_RE_CUTOUTS` of them (None: no such bound).
        drop_flagged: also skip rows whose fit is flagged (:func:`flagged_rows`: column
            ``sersic_flag`` not 0, or an n GalSim cannot render); ``archetypes --drop-bad``.

    Returns:
        (params of the kept rows, boolean mask of kept rows over the catalogue).
    """
    names = dict(DEFAULT_COLUMNS)
    names.update(columns or {})
    if "id" not in catalog.colnames:
        raise MorphllrError(f"{where}: catalogue has no `id` column; every image needs an id")
    values = {}
    for key, col in names.items():
        if col not in catalog.colnames:
            if key in OPTIONAL:
                continue
            raise MorphllrError(
                f"{where}: no column {col!r} for the Sérsic {key}; run `morphllr fit-sersic {where}` first "
                f"or name your own column with --{key.split('_')[0]}-col NAME")
        values[key] = numeric_column(catalog, col, where)
    ids = np.asarray(catalog["id"])
    re_max = np.inf if cutout_side is None else MAX_RE_CUTOUTS * float(cutout_side)
    centre_max = np.inf if cutout_side is None else MAX_RE_CUTOUTS * float(cutout_side)
    checks = {
        "n": lambda v: np.isfinite(v) & (v >= N_ACCEPT[0]) & (v <= N_ACCEPT[1]),
        "re_pix": lambda v: np.isfinite(v) & (v > 0) & (v <= re_max),
        "q": lambda v: np.isfinite(v) & (v > 0) & (v <= 1),
        "pa_deg": np.isfinite,
        "flux": lambda v: np.isfinite(v) & (v > 0) & (v <= MAX_FLUX),
        "x0_pix": lambda v: np.isfinite(v) & (np.abs(v) <= centre_max),
        "y0_pix": lambda v: np.isfinite(v) & (np.abs(v) <= centre_max),
    }
    size_rule = "" if cutout_side is None else f" and at most {MAX_RE_CUTOUTS:g} cutout sides ({re_max:g} px)"
    rules = {"n": f"Sérsic n must be in [{N_ACCEPT[0]}, {N_ACCEPT[1]}]", "re_pix": f"R_e must be > 0{size_rule}",
             "q": "q must be in (0, 1]", "pa_deg": "PA must be finite",
             "flux": f"flux must be > 0 and at most {MAX_FLUX:g} flux units",
             "x0_pix": "centre must be finite and near the cutout", "y0_pix": "centre must be finite and near the cutout"}
    keep = np.ones(len(ids), bool)
    for key, v in values.items():
        ok = checks[key](v)
        if not ok.all() and not drop_bad:
            raise MorphllrError(
                f"{where}: column {names[key]!r} has unusable values ({rules[key]}, got e.g. "
                f"{float(v[~ok][0]):g}) for id(s) {_bad_rows(ids, ~ok)}; fix or refit them, or pass --drop-bad to skip them")
        keep &= ok
    if drop_flagged:
        flagged = flagged_rows(catalog, values["n"], where)
        if keep.any() and not (keep & ~flagged).any():
            unusable = int((~keep).sum())
            raise MorphllrError(
                f"{where}: --drop-flagged dropped all {len(ids)} galaxies: "
                + (f"{unusable} for unusable parameters and " if unusable else "")
                + f"{int(keep.sum())} for a flagged fit ({_flag_summary(catalog, values['n'], keep, where)}); drop "
                f"--drop-flagged to render the flagged ones anyway (they are counted), or refit: "
                f"`morphllr fit-sersic {where} ... --overwrite`")
        keep &= ~flagged
    if not keep.any():
        raise MorphllrError(f"{where}: no row has usable Sérsic parameters; run `morphllr fit-sersic` first")
    n = values["n"][keep]
    params = ArchetypeParams(
        ids=ids[keep], n=np.clip(n, *GALSIM_N_RANGE), re_pix=values["re_pix"][keep], q=values["q"][keep],
        pa_deg=values["pa_deg"][keep], flux=values["flux"][keep],
        x0_pix=values["x0_pix"][keep] if "x0_pix" in values else None,
        y0_pix=values["y0_pix"][keep] if "y0_pix" in values else None,
        n_clipped=outside_galsim_range(n))
    return params, keep


def _flag_summary(catalog, n: np.ndarray, rows: np.ndarray, where: str, flag_col: str = "sersic_flag") -> str:
    """Why the usable ``rows`` are flagged, for messages: counts per fit flag bit and of n beyond GalSim's range."""
    rows = np.asarray(rows, bool)
    parts = []
    if flag_col in catalog.colnames:
        flags = numeric_column(catalog, flag_col, where)[rows]
        flags = np.where(np.isfinite(flags), flags, 0).astype(np.int64)
        for bit, text in FLAG_BITS.items():
            count = int((flags & bit != 0).sum())
            if count:
                parts.append(f"{count} {flag_col} bit {bit} ({text})")
    n = np.asarray(n, dtype=np.float64)[rows]
    outside = int(outside_galsim_range(n).sum())
    if outside:
        parts.append(f"{outside} n outside GalSim's {GALSIM_N_RANGE_TEXT}")
    return ", ".join(parts)


def flagged_rows(catalog, n: np.ndarray, where: str = "catalogue", flag_col: str = "sersic_flag") -> np.ndarray:
    """Rows whose Sérsic fit is not trustworthy: flag not 0 (any bit of :data:`morphllr.galaxies.sersic_fit.FLAG_BITS`,
    incl. 16 R_e beyond the fitted window and 32 n at GalSim's bounds), or an n outside GalSim's range.

    Args:
        catalog: astropy Table.
        n: the Sérsic indices used (NaN allowed).
        where: file named in messages.
        flag_col: the fit's flag column (absent: only the n rule applies).

    Returns:
        boolean (len(catalog),).
    """
    n = np.asarray(n, dtype=np.float64)
    bad = outside_galsim_range(n)
    if flag_col in catalog.colnames:
        flags = numeric_column(catalog, flag_col, where)
        bad |= np.isfinite(flags) & (flags != 0)
    return bad


# --------------------------------------------------------------------------- rendering
class SersicProfileCache:
    """Unit-flux, unit-half-light-radius GalSim Sérsics on a log-n grid, built on demand."""

    def __init__(self, log_step: float = LOG_N_STEP):
        self.log_step = float(log_step)
        self._profiles: dict[int, object] = {}

    def grid_n(self, n: float) -> float:
        """The grid index that ``n`` is rounded to."""
        k = round(math.log(n) / self.log_step)
        return float(np.clip(math.exp(k * self.log_step), *GALSIM_N_RANGE))

    def get(self, n: float):
        """GalSim ``Sersic`` with index ~n, half-light radius 1 arcsec, flux 1."""
        import galsim

        key = round(math.log(n) / self.log_step)
        prof = self._profiles.get(key)
        if prof is None:
            prof = galsim.Sersic(self.grid_n(n), half_light_radius=1.0, flux=1.0)
            self._profiles[key] = prof
        return prof

    def warm(self, ns) -> None:
        """Build (and fill GalSim's Hankel tables of) the profiles for all indices ``ns``."""
        seen = set()
        for n in np.asarray(ns, dtype=float):
            key = round(math.log(n) / self.log_step)
            if key not in seen:
                seen.add(key)
                prof = self.get(n)
                prof.kValue(0.5, 0.5)  # builds the Hankel-transform table
                prof.stepk, prof.maxk  # and the size estimates GalSim's FFTs use


def sersic_profile(cache: SersicProfileCache, n, re_pix, q, pa_deg, flux, pixel_scale):
    """The GalSim profile of one archetype (before the PSF), in arcsec.

    Args:
        cache: profile cache.
        n, re_pix, q, pa_deg, flux: Sérsic parameters (fitter conventions).
        pixel_scale: arcsec per pixel of the flux cutouts.

    Returns:
        ``galsim.GSObject``.
    """
    import galsim

    # shear preserves area: the major-axis radius of a sheared circle of radius h is h / sqrt(q)
    hlr_arcsec = float(re_pix) * math.sqrt(float(q)) * float(pixel_scale)
    prof = cache.get(float(n)).dilate(hlr_arcsec).withFlux(float(flux))
    if q < 1.0:
        prof = prof.shear(q=float(q), beta=float(pa_deg) * galsim.degrees)
    return prof


def draw_archetype(profile, psf, shape: tuple[int, int], pixel_scale: float,
                   x0_pix: float | None = None, y0_pix: float | None = None) -> np.ndarray:
    """Draw a PSF-convolved profile, pixel-integrated, onto a cutout grid.

    Args:
        profile: GalSim profile (from :func:`sersic_profile`).
        psf: GalSim PSF profile (one from a PSF image is taken to include the pixel response:
            the image is then sampled at pixel centres, not integrated).
        shape: (ny, nx) of the flux cutout.
        pixel_scale: arcsec per pixel.
        x0_pix, y0_pix: centre in 0-based array coordinates; None = the cutout centre.

    Returns:
        float64 (ny, nx) noise-free flux image; GalSimFFTSizeWarning is raised (before any
        allocation) when GalSim would need an FFT beyond its maximum_fft_size.
    """
    import galsim
    from galsim.errors import GalSimFFTSizeWarning

    ny, nx = shape
    # GalSim centres on the true image centre, (n - 1) / 2 in 0-based coordinates
    dx = 0.0 if x0_pix is None else float(x0_pix) - (nx - 1) / 2
    dy = 0.0 if y0_pix is None else float(y0_pix) - (ny - 1) / 2
    obj = galsim.Convolve(profile, psf) if psf is not None else profile
    # a PSF image holds the pixel response already (as in mock and fit-sersic): sample, do not integrate again
    method = "no_pixel" if psf is not None and has_pixel_response(psf) else "auto"
    with warnings.catch_warnings():
        # GalSim only warns before allocating an FFT beyond its maximum_fft_size (8192^2, 1.5 GB): stop there
        warnings.simplefilter("error", GalSimFFTSizeWarning)
        img = obj.drawImage(nx=nx, ny=ny, scale=float(pixel_scale), offset=(dx, dy), method=method)
    return img.array.astype(np.float64)


def draw_archetype_safely(cache, n, re_pix, q, pa_deg, flux, psf, shape, pixel_scale, x0_pix=None, y0_pix=None):
    """:func:`draw_archetype` of :func:`sersic_profile`, without GalSim's giant FFTs.

    A profile whose R_e is many cutouts wide would make GalSim ask for a 10^4-pixel FFT
    (gigabytes) to hold wings that never reach the cutout.  Such profiles are redrawn
    truncated at twice the cutout's diagonal (same R_e and total flux as the untruncated
    profile inside it), which is identical on the cutout; where GalSim's FFT is still too
    large (low n: its size estimate follows R_e, not the truncation), the profile is smooth
    across the cutout and is drawn in real space instead (:func:`_draw_real_space`).

    Args:
        cache: profile cache.
        n, re_pix, q, pa_deg, flux: Sérsic parameters (fitter conventions).
        psf: GalSim PSF profile or None.
        shape: (ny, nx) of the flux cutout.
        pixel_scale: arcsec per pixel.
        x0_pix, y0_pix: centre in 0-based array coordinates; None = the cutout centre.

    Returns:
        float64 (ny, nx) noise-free flux image.
    """
    import galsim
    from galsim.errors import GalSimFFTSizeError, GalSimFFTSizeWarning

    profile = sersic_profile(cache, n, re_pix, q, pa_deg, flux, pixel_scale)
    try:
        return draw_archetype(profile, psf, shape, pixel_scale, x0_pix, y0_pix)
    except (GalSimFFTSizeWarning, GalSimFFTSizeError):
        pass
    ny, nx = shape
    trunc_arcsec = 2.0 * math.hypot(ny, nx) * pixel_scale
    hlr_arcsec = float(re_pix) * math.sqrt(float(q)) * float(pixel_scale)
    truncated = galsim.Sersic(cache.grid_n(float(n)), half_light_radius=hlr_arcsec, flux=float(flux),
                              trunc=trunc_arcsec, flux_untruncated=True)
    if q < 1.0:
        truncated = truncated.shear(q=float(q), beta=float(pa_deg) * galsim.degrees)
    try:
        return draw_archetype(truncated, psf, shape, pixel_scale, x0_pix, y0_pix)
    except (GalSimFFTSizeWarning, GalSimFFTSizeError):
        return _draw_real_space(truncated, psf, shape, pixel_scale, x0_pix, y0_pix)


def _draw_real_space(profile, psf, shape: tuple[int, int], pixel_scale: float, x0_pix=None, y0_pix=None,
                     oversample: int = 4) -> np.ndarray:
    """Draw a profile much larger than the cutout without GalSim's FFT (bounded memory).

    The profile is sampled at the centres of ``oversample``^2 sub-pixels of the cutout plus
    a margin of the PSF's radius, convolved with the PSF sampled on the same grid, and
    summed back to pixels (pixel integration).  Exact to the sampling for profiles that are
    smooth on the sub-pixel scale, which is what reaches this path (R_e many cutouts wide).
    A PSF image holds the pixel response already (:func:`morphllr.galaxies.psf.has_pixel_response`):
    then the convolved image is sampled at the pixel centres (an odd ``oversample``, so one
    sub-pixel sits on each centre) instead of integrated over the pixel a second time.

    Args:
        profile: GalSim profile (analytic in real space).
        psf: GalSim PSF profile or None.
        shape: (ny, nx) of the flux cutout.
        pixel_scale: arcsec per pixel.
        x0_pix, y0_pix: centre in 0-based array coordinates; None = the cutout centre.
        oversample: sub-pixels per pixel side.

    Returns:
        float64 (ny, nx) noise-free flux image.
    """
    from scipy.signal import fftconvolve

    ny, nx = shape
    sample = psf is not None and has_pixel_response(psf)
    k = int(oversample) | 1 if sample else int(oversample)  # odd when sampling: a sub-pixel on each pixel centre
    fine = float(pixel_scale) / k
    kernel = psf_image(psf, fine) if psf is not None else None
    pad = 0 if kernel is None else -(-(kernel.shape[0] // 2) // k)  # margin in pixels, rounded up
    dx = 0.0 if x0_pix is None else float(x0_pix) - (nx - 1) / 2
    dy = 0.0 if y0_pix is None else float(y0_pix) - (ny - 1) / 2
    big_y, big_x = (ny + 2 * pad) * k, (nx + 2 * pad) * k
    samples = profile.drawImage(nx=big_x, ny=big_y, scale=fine, offset=(dx * k, dy * k), method="no_pixel").array
    samples = samples.astype(np.float64)
    if kernel is not None:
        samples = fftconvolve(samples, kernel, mode="same")
    blocks = samples.reshape(ny + 2 * pad, k, nx + 2 * pad, k)
    # flux per sub-pixel -> per pixel: summed (integrated), or the centre sub-pixel's value times k^2 (sampled)
    pixels = blocks[:, k // 2, :, k // 2] * (k * k) if sample else blocks.sum(axis=(1, 3))
    return pixels[pad:pad + ny, pad:pad + nx]


def add_matched_noise(image: np.ndarray, sky_sigma: float, gain: float | None, rng: np.random.Generator) -> np.ndarray:
    """Gaussian sky noise plus, when ``gain`` is known, the source's Poisson noise.

    Args:
        image: noise-free flux image.
        sky_sigma: per-pixel sky noise (flux units).
        gain: electrons per flux unit, or None/NaN for sky noise only.
        rng: numpy random generator.

    Returns:
        noisy image (new array).
    """
    out = image + rng.normal(0.0, float(sky_sigma), image.shape)
    if gain is not None and np.isfinite(gain) and gain > 0:
        electrons = np.clip(image, 0.0, None) * gain
        # Poisson fluctuation about the mean, so the sky-subtracted level stays unbiased
        if electrons.max(initial=0.0) < 1e15:
            out += (rng.poisson(electrons) - electrons) / gain
        else:  # numpy refuses means beyond ~1e19; there the Poisson law is Gaussian to any precision
            out += rng.normal(0.0, np.sqrt(electrons)) / gain
    return out


@dataclass
class NoiseModel:
    """How to give archetypes a background: matched Gaussian(+Poisson) noise or real sky."""

    sky_sigma: np.ndarray | None = None  # (N,) per-pixel sky noise, flux units
    gain: np.ndarray | None = None  # (N,) electrons per flux unit (NaN = unknown)
    sky_patches: np.ndarray | None = None  # (M, C, Hp, Wp) real empty-sky cutouts


CHUNK = 64  # images per work unit; each chunk has its own noise stream (seed, chunk)


def _render_chunk(args) -> np.ndarray:
    """Render one chunk; ``first`` is its absolute index, which seeds its noise stream."""
    params, first, shape, pixel_scale, psfs, noise, seed = args
    c, ny, nx = shape
    rng = np.random.default_rng([int(seed), first // CHUNK])
    out = np.empty((len(params), c, ny, nx), np.float32)
    for i in range(len(params)):
        psf = psfs[i] if isinstance(psfs, (list, tuple)) else psfs
        x0 = None if params.x0_pix is None else params.x0_pix[i]
        y0 = None if params.y0_pix is None else params.y0_pix[i]
        clean = _draw_one(params, i, psf, (ny, nx), pixel_scale, x0, y0)
        if params.band_scale is None:
            img = np.broadcast_to(clean, (c, ny, nx))
        else:
            img = clean[None] * params.band_scale[i][:, None, None]
        if noise is not None:
            gain = None if noise.gain is None else float(noise.gain[i])
            if noise.sky_patches is not None:
                img = add_sky_patch(img, noise.sky_patches, rng)
                img = add_matched_noise(img, 0.0, gain, rng) if gain and np.isfinite(gain) else img
            else:
                img = add_matched_noise(img, float(noise.sky_sigma[i]), gain, rng)
        out[i] = img
    return out


def _draw_one(params: ArchetypeParams, i: int, psf, shape, pixel_scale, x0, y0) -> np.ndarray:
    """Row ``i``'s noise-free archetype; a profile GalSim cannot draw is refused naming the galaxy."""
    from galsim.errors import GalSimError, GalSimFFTSizeError, GalSimFFTSizeWarning

    try:
        image = draw_archetype_safely(_CACHE, params.n[i], params.re_pix[i], params.q[i], params.pa_deg[i],
                                      params.flux[i], psf, shape, pixel_scale, x0, y0)
    except (GalSimFFTSizeError, GalSimFFTSizeWarning) as exc:
        raise MorphllrError(
            f"galaxy {params.ids[i]}: drawing its archetype needs a {exc.size}x{exc.size} FFT ({exc.mem:.1f} GB), "
            f"beyond GalSim's limit; its PSF or R_e ({params.re_pix[i]:g} px) is far too large for the cutout - fix "
            "its parameters or refit it") from None
    except GalSimError as exc:
        raise MorphllrError(f"galaxy {params.ids[i]}: GalSim cannot draw its archetype (n {params.n[i]:g}, R_e "
                            f"{params.re_pix[i]:g} px, q {params.q[i]:g}, flux {params.flux[i]:g}): {exc}; fix its "
                            "parameters or refit it") from None
    if not np.isfinite(image).all():
        raise MorphllrError(f"galaxy {params.ids[i]}: its archetype has non-finite pixels (n {params.n[i]:g}, R_e "
                            f"{params.re_pix[i]:g} px, flux {params.flux[i]:g}); fix its parameters or refit it")
    return image


def _noise_part(noise: NoiseModel | None, start: int, stop: int) -> NoiseModel | None:
    if noise is None:
        return None
    cut = slice(start, stop)
    return NoiseModel(sky_sigma=None if noise.sky_sigma is None else noise.sky_sigma[cut],
                      gain=None if noise.gain is None else noise.gain[cut], sky_patches=noise.sky_patches)


#: profiles shared by every render in this process (and inherited by forked workers)
_CACHE = SersicProfileCache()


def render_archetypes(params: ArchetypeParams, shape: tuple[int, int, int], pixel_scale: float, psfs,
                      noise: NoiseModel | None, seed: int = 0, workers: int = 1, progress=None,
                      start: int = 0, stop: int | None = None) -> np.ndarray:
    """Render the archetypes of a set (noise-free when ``noise`` is None).

    The result does not depend on ``workers``: every chunk of :data:`CHUNK` images draws
    its noise from its own stream seeded by ``(seed, chunk index)``.

    Args:
        params: per-galaxy parameters.
        shape: (C, ny, nx) of each flux cutout; every channel gets the same profile.
        pixel_scale: arcsec per pixel.
        psfs: one GalSim PSF for all, or a list of N (None = no PSF).
        noise: background model, or None for noise-free images.
        seed: random seed (noise and sky-patch choice).
        workers: processes (the images are independent).
        progress: optional callable(n_done) after each chunk.
        start, stop: render only rows ``start:stop`` (``start`` a multiple of :data:`CHUNK`
            keeps the noise identical to a full render).

    Returns:
        float32 ``(stop - start, C, ny, nx)`` flux cutouts.
    """
    stop = len(params) if stop is None else int(stop)
    shape = tuple(int(v) for v in shape)
    _CACHE.warm(params.n[start:stop])  # once, here; forked workers inherit the tables
    per_galaxy_psf = isinstance(psfs, (list, tuple))
    jobs = []
    for a in range(start, stop, CHUNK):
        b = min(a + CHUNK, stop)
        jobs.append((params.part(a, b), a, shape, pixel_scale, list(psfs[a:b]) if per_galaxy_psf else psfs,
                     _noise_part(noise, a, b), seed))
    out = np.empty((stop - start,) + shape, np.float32)
    done = 0
    for job, part in zip(jobs, map_in_processes(_render_chunk, jobs, workers)):
        out[job[1] - start: job[1] - start + len(part)] = part
        done += len(part)
        if progress:
            progress(done)
    return out


# --------------------------------------------------------------------------- whole sets
def psfs_for_catalog(catalog, psf_fwhm: float | None, psf_kind: str, psf_image=None, pixel_scale: float = 1.0,
                     where: str = "catalogue", psf_beta: float | None = None):
    """One PSF per galaxy from the options or the catalogue (``psf_fwhm_arcsec``, ``psf_beta``).

    Args:
        catalog: astropy Table.
        psf_fwhm: FWHM in arcsec for all galaxies (overrides the catalogue), or None.
        psf_kind: ``moffat`` or ``gaussian``.
        psf_image: 2-D PSF image at ``pixel_scale`` for all galaxies (overrides both), or None.
        pixel_scale: arcsec per pixel.
        where: file name for messages.
        psf_beta: Moffat index for all galaxies (None: column ``psf_beta``, else 4.765).

    Returns:
        a single GalSim PSF or a list with one per row (profiles shared between equal FWHMs).
    """
    if psf_image is not None:
        return psf_from_image(psf_image, pixel_scale)
    if psf_fwhm is not None and psf_beta is None and "psf_beta" not in catalog.colnames:
        return make_psf(float(psf_fwhm), psf_kind, DEFAULT_MOFFAT_BETA)
    return psfs_from_catalog(catalog, psf_kind, where, fix="pass --psf-fwhm ARCSEC or --psf-image FILE",
                             fwhm=psf_fwhm, beta=psf_beta)


def _same(values, value, rtol: float = 1e-3) -> bool:
    values = np.asarray(values, dtype=np.float64)
    return bool(np.all(np.isclose(values, float(value), rtol=rtol, atol=0)))


def archetype_psfs(kept, fit_record: dict | None, pixel_scale: float, *, psf_fwhm: float | None = None,
                   psf_beta: float | None = None, psf_kind: str | None = None, psf_image_path=None,
                   where: str = "catalogue"):
    """The archetypes' PSF: by default the one ``fit-sersic`` deconvolved, else the options / catalogue.

    Observations and archetypes must share everything but morphology, so when the set
    records the PSF of its fits (``catalog.meta["sersic_fit"]["psf"]`` and the columns
    ``sersic_psf_fwhm_arcsec`` / ``sersic_psf_beta``), that PSF is used, and an explicit
    option that disagrees with it is refused (a different PSF would show up in the LLR
    as morphology); an option that agrees is accepted.

    Args:
        kept: catalogue rows rendered.
        fit_record: the set's ``sersic_fit`` record, or None (parameters from elsewhere).
        pixel_scale: arcsec per pixel of the flux cutouts.
        psf_fwhm, psf_beta, psf_kind, psf_image_path: the options (None = not given).
        where: file named in messages.

    Returns:
        (PSF(s) for :func:`render_archetypes`, per-row FWHM (N,), per-row beta (N,),
        JSON-able record of the PSF used, without pixels).
    """
    n = len(kept)
    nan = np.full(n, np.nan)
    fitted = fit_psf_rows(kept, fit_record, where)  # also rebuilds an older fit-sersic's record (a plain string)
    pixels = load_psf_image(psf_image_path) if psf_image_path is not None else None
    if fitted is None:  # parameters not from fit-sersic: options, then columns
        kind = psf_kind or "moffat"
        if pixels is not None:
            record = {"kind": "image", "source": "--psf-image", "image": psf_image_record(psf_image_path, pixels,
                                                                                          store_pixels=False)}
            return psf_from_image(pixels, pixel_scale), nan, nan, record
        fwhm, beta = psf_parameters(kept, kind, where, "pass --psf-fwhm ARCSEC or --psf-image FILE", psf_fwhm, psf_beta)
        psfs = psfs_for_catalog(kept, psf_fwhm, kind, None, pixel_scale, where, psf_beta)
        source = "options" if psf_fwhm is not None else "catalogue columns"
        return psfs, fwhm, beta, {"kind": kind, "source": source, "fwhm_arcsec": float(fwhm[0]) if
                                  _same(fwhm, fwhm[0]) else None, "beta": float(beta[0]) if kind == "moffat" and
                                  _same(beta, beta[0]) else None}
    kind = fitted.kind
    used = describe_psf(fitted.record)
    refit = f"`morphllr fit-sersic {where} ... --overwrite`"

    def refuse(option: str, value) -> None:
        raise MorphllrError(
            f"{option} {value}: the Sérsic fits of {where} deconvolved {used}, and an archetype must be convolved with "
            f"the PSF its fit used (observations and archetypes share everything but morphology); drop {option} to "
            f"reuse the fit's PSF, or refit with that PSF: {refit}")

    record = dict(fitted.record)
    record["source"] = "fit-sersic record"
    if kind in ("none", "image"):
        for option, value in (("--psf-fwhm", psf_fwhm), ("--psf-beta", psf_beta), ("--psf", psf_kind)):
            if value is not None:
                refuse(option, value)
        if pixels is not None and (kind == "none" or psf_image_record(psf_image_path, pixels, store_pixels=False)[
                "pixels_sha256"] != record["image"].get("pixels_sha256")):
            refuse("--psf-image", psf_image_path)
        return fitted.profiles(pixel_scale), nan, nan, record
    # a profile: per galaxy from the columns the fit wrote, else the record's values
    if pixels is not None:
        refuse("--psf-image", psf_image_path)
    if psf_kind is not None and str(psf_kind).lower() != kind:
        refuse("--psf", psf_kind)
    if psf_fwhm is not None and not _same(fitted.fwhm, psf_fwhm):
        refuse("--psf-fwhm", psf_fwhm)
    if psf_beta is not None and (kind != "moffat" or not _same(fitted.beta, psf_beta)):
        refuse("--psf-beta", psf_beta)
    return fitted.profiles(pixel_scale), fitted.fwhm, fitted.beta, record


@claims({"out": "--out"}, inputs=("set_path", "psf_image_path", "sky_patches_path"))  # before any rendering
def make_archetype_set(set_path, out, *, psf_fwhm: float | None = None, psf_kind: str | None = None,
                       psf_image_path=None, sky_patches_path=None, columns: dict | None = None,
                       seed: int = 0, drop_bad: bool = False, overwrite: bool = False, workers: int = 1,
                       progress=None, psf_beta: float | None = None, drop_flagged: bool = False) -> dict:
    """``morphllr archetypes``: render the archetype ImageSet of an observed ImageSet.

    Everything that changes the pixels is recorded: file attribute ``archetypes`` (JSON) and
    catalogue meta ``archetypes`` (observed set and its images' sha256, seed, PSF used and
    where it came from, noise mode with the sky library's file and sha256 or the noise
    columns, parameter columns, ``drop_bad`` and what it dropped), plus the observed set's
    ``sersic_fit`` record and preprocessing.

    Args:
        set_path: observed ImageSet with ``/flux`` and Sérsic columns.
        out: output ``.h5``.
        psf_fwhm: FWHM (arcsec) for every galaxy; None = the PSF the fits recorded, else the
            catalogue column ``psf_fwhm_arcsec``.  Refused when it differs from the fits' PSF.
        psf_kind: ``moffat`` or ``gaussian``; None = the fits' (else moffat).
        psf_image_path: FITS/npy PSF image at the set's pixel scale (the image of a point
            source: pixel response included); refused when the fits used another PSF.
        sky_patches_path: real empty-sky cutouts (else matched Gaussian/Poisson noise).
        columns: catalogue column names overriding :data:`DEFAULT_COLUMNS`.
        seed: random seed.
        drop_bad: skip galaxies with unusable parameters (NaN, non-positive R_e or flux, ...)
            instead of refusing.
        drop_flagged: also skip galaxies whose fit is flagged (:func:`flagged_rows`) instead of
            rendering them (they are counted and warned about).  Off by default so that an
            archetype set made before the flags existed is reproduced (the shipped GZ2 p_arch was
            trained on the archetypes of every usable fit).
        overwrite: replace ``out``.
        workers: processes used for rendering.
        progress: optional callable(n_done).
        psf_beta: Moffat index for every galaxy (same rules as ``psf_fwhm``).

    Returns:
        summary dict (n, n_dropped, n_dropped_flagged, n_flagged, n_clipped, noise mode, psf, out path).
    """
    s = ImageSet.open(set_path)
    where = str(set_path)
    if s.flux is None:
        raise MorphllrError(f"{where}: has no /flux cutouts to match; prepare it again keeping the flux cutouts")
    catalog = s.catalog
    names = dict(DEFAULT_COLUMNS)
    names.update(columns or {})
    params, keep = params_from_catalog(catalog, columns, where, drop_bad or drop_flagged,
                                       cutout_side=max(s.flux.shape[2:]), drop_flagged=drop_flagged)
    n_values = numeric_column(catalog, names["n"], where)
    flagged = flagged_rows(catalog, n_values, where)
    _, usable = params_from_catalog(catalog, columns, where, True, cutout_side=max(s.flux.shape[2:]))
    prep = s.preprocessing
    pixel_scale = prep.get("pixel_scale") or first_column(catalog, ("pixel_scale",), where)
    if pixel_scale is None:
        raise MorphllrError(f"{where}: the set records no pixel_scale; prepare it with a preset that sets pixel_scale")
    pixel_scale = float(np.ravel(pixel_scale)[0])
    kept = catalog[keep]
    # the fits' record describes the sersic_* columns: it applies when those are the parameters used
    fit_record = catalog.meta.get("sersic_fit") if all(names[k] == v for k, v in DEFAULT_COLUMNS.items()) else None
    psfs, fwhm, beta, psf_used = archetype_psfs(kept, fit_record, pixel_scale, psf_fwhm=psf_fwhm, psf_beta=psf_beta,
                                                psf_kind=psf_kind, psf_image_path=psf_image_path, where=where)
    if s.flux.shape[1] > 1:
        fitted_channel = int((catalog.meta.get("sersic_fit") or {}).get("channel", 0))
        params.band_scale = band_flux_ratios(s, np.flatnonzero(keep), fitted_channel)
    noise = NoiseModel()
    noise_record: dict = {}
    if sky_patches_path:
        noise.sky_patches = load_sky_patches(sky_patches_path)
        hp, wp = noise.sky_patches.shape[2:]
        hf, wf = s.flux.shape[2:]
        if not ((hp >= hf and wp >= wf) or (wp >= hf and hp >= wf)):
            raise MorphllrError(f"--sky-patches {sky_patches_path}: sky cutouts are {hp}x{wp} pixels, smaller than the "
                                f"{hf}x{wf} flux cutouts; cut larger empty-sky patches")
        if noise.sky_patches.shape[1] != s.flux.shape[1]:
            raise MorphllrError(f"--sky-patches {sky_patches_path}: {noise.sky_patches.shape[1]} channel(s) but "
                                f"the set has {s.flux.shape[1]}; use sky cutouts of the same bands")
        from pathlib import Path

        noise_record = {"mode": "sky patches", "sky_patches": {  # sha256 of the patches as mock and synth record it
            "file": Path(sky_patches_path).name, "path": str(Path(sky_patches_path).resolve()),
            "sha256": patches_sha256(noise.sky_patches), "file_sha256": file_sha256(sky_patches_path),
            "n_patches": int(len(noise.sky_patches)), "shape": [int(v) for v in noise.sky_patches.shape[1:]]}}
    else:
        sigma = first_column(kept, ("sky_sigma",), where)
        if sigma is None or not np.all(np.isfinite(sigma) & (sigma >= 0)):
            raise MorphllrError(f"{where}: no usable `sky_sigma` column to match the noise; prepare the set with "
                                "segmentation (it measures sky_sigma) or pass --sky-patches FILE")
        noise.sky_sigma = sigma
        noise_record = {"mode": "gaussian", "sky_sigma_from": "column sky_sigma",
                        "sky_sigma_median": float(np.median(sigma))}
    noise.gain = first_column(kept, ("gain",), where)
    noise_record["poisson"] = noise.gain is not None
    noise_record["gain_from"] = "column gain" if noise.gain is not None else None
    n_dropped_flagged = int((usable & flagged).sum()) if drop_flagged else 0
    attrs = s.attrs
    record = {
        "of": str(set_path), "of_images_sha256": attrs.get("images_sha256"), "seed": int(seed), "psf": psf_used,
        "noise": noise_record, "columns": names, "drop_bad": bool(drop_bad), "drop_flagged": bool(drop_flagged),
        "n_dropped": int((~keep).sum()),
        "n_dropped_flagged": n_dropped_flagged, "n_flagged_rendered": int((flagged & keep).sum()),
        "n_clipped": int(params.n_clipped.sum()), "pixel_scale": pixel_scale,
        "fitted_channel": int((catalog.meta.get("sersic_fit") or {}).get("channel", 0)),
        "band_scaling": s.flux.shape[1] > 1}
    flux = _LazyArchetypes(params, tuple(s.flux.shape[1:]), pixel_scale, psfs, noise, seed, workers, progress)
    table = _archetype_table(kept, params, fwhm, beta, noise)
    if fit_record is not None:
        table.meta["sersic_fit"] = fit_record
    table.meta["archetypes"] = record
    write_flux_set(out, flux, table, prep, overwrite=overwrite, batch_size=_LazyArchetypes.BATCH,
                   attrs={"archetypes_of": str(set_path), "archetype_seed": int(seed), "archetypes": record})
    return {"n": len(params), "n_dropped": int((~keep).sum()), "n_dropped_flagged": n_dropped_flagged,
            "n_flagged": int((flagged & keep).sum()), "n_clipped": int(params.n_clipped.sum()),
            "noise": "sky patches" if sky_patches_path else "gaussian" + ("+poisson" if noise.gain is not None else ""),
            "psf": describe_psf_used(psf_used), "out": str(out)}


def describe_psf_used(record: dict) -> str:
    """One line for the PSF record of :func:`archetype_psfs`."""
    text = describe_psf(record) if record.get("kind") != "image" else f"PSF image {record['image'].get('file')}"
    return f"{text} ({record.get('source')})"


def band_flux_ratios(imageset, rows: np.ndarray, reference: int) -> np.ndarray:
    """Flux of each band over that of the fitted band, in the central source's pixels.

    A multi-band archetype is the fitted single-band profile scaled to each band's flux
    (same shape in every band: the archetype carries no colour gradients).

    Args:
        imageset: the observed ImageSet.
        rows: indices of the galaxies.
        reference: the band the Sérsic fit used.

    Returns:
        float64 (len(rows), C) ratios (1 where the reference band has no positive flux).
    """
    out = np.ones((len(rows), imageset.flux.shape[1]))
    for a in range(0, len(rows), 1024):
        idx = rows[a:a + 1024]
        flux = np.asarray(imageset.flux[idx.min():idx.max() + 1])[idx - idx.min()]
        if imageset.segmap is not None:
            seg = np.asarray(imageset.segmap[idx.min():idx.max() + 1])[idx - idx.min()]
            flux = flux * (seg == 1)[:, None]
        sums = np.clip(flux, 0, None).sum(axis=(2, 3))
        ref = sums[:, reference:reference + 1]
        out[a:a + len(idx)] = np.where(ref > 0, sums / np.where(ref > 0, ref, 1.0), 1.0)
    return out


class _LazyArchetypes:
    """Array-like over the archetypes, rendered batch by batch as the writer asks for them.

    Keeps memory flat for large sets (40,000 128^2 cutouts would be 2.6 GB at once).
    """

    BATCH = 16 * CHUNK  # a multiple of CHUNK, so the noise equals a full render's

    def __init__(self, params, shape, pixel_scale, psfs, noise, seed, workers, progress):
        self.params, self.item_shape, self.pixel_scale = params, tuple(shape), pixel_scale
        self.psfs, self.noise, self.seed, self.workers, self.progress = psfs, noise, seed, workers, progress

    def __len__(self) -> int:
        return len(self.params)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.params),) + self.item_shape

    def __getitem__(self, cut: slice) -> np.ndarray:
        start, stop, _ = cut.indices(len(self.params))
        report = (lambda k: self.progress(start + k)) if self.progress else None
        return render_archetypes(self.params, self.item_shape, self.pixel_scale, self.psfs, self.noise, self.seed,
                                 self.workers, report, start=start, stop=stop)


def _archetype_table(kept, params: ArchetypeParams, fwhm: np.ndarray, beta: np.ndarray, noise: NoiseModel):
    from astropy.table import Table

    table = Table()
    table["id"] = params.ids
    table["sersic_n"] = params.n
    table["sersic_n_clipped"] = params.n_clipped
    table["sersic_re_pix"] = params.re_pix
    table["sersic_q"] = params.q
    table["sersic_pa_deg"] = params.pa_deg
    table["sersic_flux"] = params.flux
    if params.x0_pix is not None:
        table["sersic_x0_pix"] = params.x0_pix
        table["sersic_y0_pix"] = params.y0_pix
    if "sersic_flag" in kept.colnames:
        table["sersic_flag"] = np.asarray(kept["sersic_flag"])
    if np.isfinite(fwhm).any():  # the PSF each archetype was convolved with
        table["psf_fwhm_arcsec"] = fwhm
        if np.isfinite(beta).any():
            table["psf_beta"] = beta
    if noise.gain is not None:
        table["gain"] = noise.gain
    table["archetype"] = np.ones(len(params), bool)
    return table


def _load_psf_image(path) -> np.ndarray:
    """The one PSF-image reader, :func:`morphllr.galaxies.psf.load_psf_image` (kept for older callers)."""
    return load_psf_image(path)
