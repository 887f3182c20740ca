"""Built-in Sérsic fitter: PSF-convolved, pixel-integrated, companions masked.

For each flux cutout we fit a single elliptical Sérsic profile

    I(r) = I_e exp(-b_n [(r / R_e)^(1/n) - 1]),  r^2 = x_maj^2 + (x_min / q)^2

convolved with the PSF and integrated over each pixel: 3 x 3 sub-pixels (24 x 24 at the
cusp) convolved with the PSF on the sub-pixel grid in the central 11 x 11 pixels, 2 x 2
sub-pixels convolved at the pixel scale further out (:class:`ConvolvedSersicRenderer`).
The fit is astropy's Levenberg-Marquardt least squares (``LevMarLSQFitter``, in an
unbounded parametrisation: log R_e, log n, conformal shear) weighted by the sky noise,
with companion pixels (segmentation label > 1) given zero weight.  Initial guesses come
from the image moments.

Conventions (the same as ``galsim`` and ``morphllr.galaxies.archetypes``; tested):

* ``sersic_re_pix`` -- half-light radius along the MAJOR axis, in pixels of the flux
  cutout.  GalSim's ``Sersic(half_light_radius=h).shear(q=q)`` has major-axis radius
  ``h / sqrt(q)`` (shear preserves area), astropy's ``Sersic2D.r_eff`` is major-axis.
* ``sersic_q`` -- axis ratio b/a in (0, 1].
* ``sersic_pa_deg`` -- angle of the major axis, counter-clockwise from the +x (column)
  axis towards +y (row) axis of the array, in [0, 180).  Equal to GalSim's ``beta``.
* ``sersic_flux`` -- total flux of the untruncated profile, in the cutout's flux units.
* ``sersic_x0_pix, sersic_y0_pix`` -- centre in 0-based array coordinates (pixel i
  spans [i - 0.5, i + 0.5]).

``sersic_flag`` is a bit mask; 0 means a good fit:

* 1  ``n`` ended at a bound of the search range (``N_BOUNDS``, 0.2 and 8)
* 2  ``R_e`` or ``q`` ended at a bound (unresolved, or R_e beyond two cutout sides)
* 4  the optimiser did not report convergence
* 8  no fit possible (no positive flux in the central source); parameters are NaN
* 16 ``R_e`` beyond the fitted window: the major-axis half-light radius exceeds half the
  window's side, so the half-light ellipse leaves the pixels fitted and R_e (with n and the
  flux) is an extrapolation of the profile's wings
* 32 ``n`` at or beyond GalSim's Sérsic range (:data:`morphllr.galaxies.sersic.GALSIM_N_RANGE`, within 1 %): the archetype cannot
  have this index (``archetypes`` clips it)

``morphllr archetypes --drop-bad`` skips every galaxy whose flag is not 0 (and any whose
n it would clip); without it they are rendered and counted.

PSF convention: a PSF profile (Moffat/Gaussian from a FWHM) is convolved and the result
integrated over each pixel; a PSF *image* already holds the pixel response (the image of a
point source, as ``mock`` and ``archetypes`` use it), so the convolved model is sampled at
the pixel centres instead (``psf_has_pixel``).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, replace

import numpy as np

from morphllr.atomic import claims
from morphllr.data.catalog import first_column
from morphllr.data.imageset import ImageSet
from morphllr.errors import MorphllrError
from morphllr.galaxies.psf import (DEFAULT_MOFFAT_BETA, PSF_BETA_COLUMNS, PSF_FWHM_COLUMNS, PSF_KINDS, load_psf_image,
                                   make_psf, psf_from_image, psf_image, psf_image_record, psf_parameters)
from morphllr.galaxies.sersic import GALSIM_N_RANGE, GALSIM_N_RANGE_TEXT, sersic_b
from morphllr.limits import MIN_FIT_SIZE
from morphllr.parallel import concat_in_processes

OVERSAMPLE = 3
BOX_HALF = 5  # pixels each side of the centre convolved on the sub-pixel grid
CENTRE_HALF = 3  # sub-pixels each side of the centre that are integrated more finely
CENTRE_REFINE = 8  # samples per sub-pixel side there (even: never exactly on an integer or half-integer centre)
N_BOUNDS = (0.2, 8.0)
Q_BOUNDS = (0.05, 1.0)
RE_MIN_PIX = 0.3
RETRY_N = (1.0, 4.0)  # restarts when a fit ends at the n bound or does not converge

FLAG_N_AT_BOUND = 1
FLAG_SHAPE_AT_BOUND = 2
FLAG_NOT_CONVERGED = 4
FLAG_NO_SOURCE = 8
FLAG_RE_BEYOND_WINDOW = 16
FLAG_N_OUTSIDE_GALSIM = 32
#: every bit, with its meaning (recorded with the fits and printed by ``fit-sersic``)
FLAG_BITS = {
    FLAG_N_AT_BOUND: f"n at the search bound {N_BOUNDS[0]:g} or {N_BOUNDS[1]:g}",
    FLAG_SHAPE_AT_BOUND: "R_e or q at a bound (unresolved, or R_e beyond two cutout sides)",
    FLAG_NOT_CONVERGED: "not converged",
    FLAG_NO_SOURCE: "no fit (no positive flux in the central source), parameters NaN",
    FLAG_RE_BEYOND_WINDOW: "R_e beyond the fitted window (major-axis R_e > half the window side)",
    FLAG_N_OUTSIDE_GALSIM: f"n at or beyond GalSim's range {GALSIM_N_RANGE_TEXT}",
}

COLUMNS = ("sersic_n", "sersic_re_pix", "sersic_q", "sersic_pa_deg", "sersic_flux",
           "sersic_x0_pix", "sersic_y0_pix", "sersic_chi2nu", "sersic_flag")
#: what ``fit-sersic`` records per galaxy besides the fit: the PSF it deconvolved (NaN: none, a
#: PSF image, or beta of a Gaussian) and the side of the fitted window (flux-cutout pixels)
RECORD_COLUMNS = ("sersic_psf_fwhm_arcsec", "sersic_psf_beta", "sersic_fit_size")


@dataclass
class SersicFit:
    """One fitted profile (see the module docstring for the conventions)."""

    n: float
    re_pix: float
    q: float
    pa_deg: float
    flux: float
    x0_pix: float
    y0_pix: float
    chi2nu: float
    flag: int

    @classmethod
    def failed(cls) -> "SersicFit":
        nan = float("nan")
        return cls(nan, nan, nan, nan, nan, nan, nan, nan, FLAG_NO_SOURCE)

    def as_row(self) -> dict:
        """The catalogue columns of :data:`COLUMNS` as a dict."""
        return {f"sersic_{k}": v for k, v in self.__dict__.items()}


# --------------------------------------------------------------------------- model
def sersic_surface_brightness(dx, dy, flux, re, n, q, theta):
    """Surface brightness (flux per pixel^2) of an elliptical Sérsic with total flux ``flux``.

    Args:
        dx, dy: offsets from the centre along the array's x (column) and y (row) axes, pixels.
        flux: total flux of the untruncated profile.
        re: major-axis half-light radius, pixels.
        n: Sérsic index.
        q: axis ratio b/a.
        theta: major-axis angle, radians counter-clockwise from +x.

    Returns:
        array shaped like ``dx``.
    """
    from scipy.special import gammaln

    b = sersic_b(n)
    cos_t, sin_t = np.cos(theta), np.sin(theta)
    x_maj = dx * cos_t + dy * sin_t
    x_min = (-dx * sin_t + dy * cos_t) / q
    r_over_re = np.sqrt(x_maj * x_maj + x_min * x_min) / re
    # F = 2 pi q Re^2 n b^-2n Gamma(2n) * I_e e^b; work in logs so n = 8 does not overflow
    log_norm = np.log(flux) - np.log(2 * np.pi * q * re * re * n) + 2 * n * np.log(b) - gammaln(2 * n)
    return np.exp(log_norm - b * r_over_re ** (1.0 / n))


class ConvolvedSersicRenderer:
    """Renders PSF-convolved, pixel-integrated Sérsic images on one fixed pixel grid.

    Exact in principle: sample the profile on ``oversample``^2 sub-pixels (more finely
    still around the cusp), convolve with the PSF on that sub-pixel grid, sum the
    sub-pixels.  Away from the centre a Sérsic is smooth on the pixel scale, where
    convolving the pixel-integrated profile (2 x 2 samples per pixel) with the PSF sampled
    at pixel centres gives the same image; so only a (2 BOX_HALF + 1)^2-pixel box around
    the centre is convolved on the sub-pixel grid, and the rest at the native scale.  Two
    small FFTs instead of one large one; agrees with GalSim to < 1 % of the peak (tested).

    Args:
        shape: (ny, nx) of the image to model.
        psf_kernel: PSF sampled (not pixel-integrated) at ``1 / oversample`` pixels, odd
            side, centred, sum 1 (:func:`psf_kernel_for`); None = no PSF.
        oversample: sub-pixels per pixel along each axis (odd).
        psf_has_pixel: the kernel comes from a PSF image, which holds the pixel response
            already: the convolved model is sampled at pixel centres (central sub-pixel)
            instead of integrated over the pixel.
    """

    def __init__(self, shape: tuple[int, int], psf_kernel: np.ndarray | None, oversample: int = OVERSAMPLE,
                 psf_has_pixel: bool = False):
        from scipy import fft

        self.shape = tuple(int(s) for s in shape)
        self.psf_has_pixel = bool(psf_has_pixel) and psf_kernel is not None
        k = self.oversample = int(oversample)
        ny, nx = self.shape
        # sub-pixel centres relative to a pixel centre: pixel i covers [i - 1/2, i + 1/2]
        self._sub = (np.arange(k) + 0.5) / k - 0.5
        # outside the central box the profile is smooth on the pixel scale: 2 x 2 samples
        # per pixel integrate it to < 0.5 % (and cost half of 3 x 3); a PSF image holds the
        # pixel response already, so there the profile is sampled at the pixel centres
        sub_out = np.array([0.0]) if self.psf_has_pixel else np.array([-0.25, 0.25])
        self._ys = (np.arange(ny)[:, None] + sub_out[None, :]).ravel()
        self._xs = (np.arange(nx)[:, None] + sub_out[None, :]).ravel()
        self._box = 2 * BOX_HALF + 1
        self._psf = psf_kernel is not None
        if not self._psf:
            return
        kernel = np.asarray(psf_kernel, dtype=np.float64)
        half = kernel.shape[0] // 2
        m = -(-half // k)  # kernel half-width in whole native pixels
        pad = k * m - half
        kernel = np.pad(kernel, pad)  # now the centre sits on a sub-pixel that is a pixel centre
        self._m = m
        native = kernel[::k, ::k]
        native = native / native.sum()
        # native-scale 'same' convolution: kernel centre rolled to (0, 0)
        self._fft_native = (fft.next_fast_len(ny + 2 * m, real=True), fft.next_fast_len(nx + 2 * m, real=True))
        padded = np.zeros(self._fft_native)
        padded[: 2 * m + 1, : 2 * m + 1] = native
        self._kn = fft.rfft2(np.roll(padded, (-m, -m), axis=(0, 1)))
        # sub-pixel 'full' convolution of the central box: output starts m pixels before the box
        full = k * (self._box + 2 * m)
        self._fft_box = (fft.next_fast_len(full, real=True),) * 2
        self._kb = fft.rfft2(kernel, s=self._fft_box)

    def _box_subpixels(self, flux, re, n, x0, y0, q, theta, cx: int, cy: int) -> np.ndarray:
        """Sub-pixel fluxes of the central box, the cusp integrated CENTRE_REFINE^2 times finer."""
        k = self.oversample
        span = np.arange(-BOX_HALF, BOX_HALF + 1)
        xs = ((cx + span)[:, None] + self._sub[None, :]).ravel()
        ys = ((cy + span)[:, None] + self._sub[None, :]).ravel()
        fine = sersic_surface_brightness(xs[None, :] - x0, ys[:, None] - y0, flux, re, n, q, theta)
        # a Sérsic with n >~ 2 has a cusp that 3 x 3 sampling misses (an n = 4, R_e = 2.5 px
        # galaxy would lose ~4 % of its central flux and the fit would raise n to make up)
        ix = int(np.clip(np.argmin(np.abs(xs - x0)), CENTRE_HALF, xs.size - CENTRE_HALF - 1))
        iy = int(np.clip(np.argmin(np.abs(ys - y0)), CENTRE_HALF, ys.size - CENTRE_HALF - 1))
        sub = ((np.arange(CENTRE_REFINE) + 0.5) / CENTRE_REFINE - 0.5) / k
        block = np.arange(-CENTRE_HALF, CENTRE_HALF + 1)
        bx = (xs[ix + block][:, None] + sub[None, :]).ravel()
        by = (ys[iy + block][:, None] + sub[None, :]).ravel()
        vals = sersic_surface_brightness(bx[None, :] - x0, by[:, None] - y0, flux, re, n, q, theta)
        side = block.size
        fine[iy - CENTRE_HALF: iy + CENTRE_HALF + 1, ix - CENTRE_HALF: ix + CENTRE_HALF + 1] = (
            vals.reshape(side, CENTRE_REFINE, side, CENTRE_REFINE).mean(axis=(1, 3)))
        return fine / (k * k)  # surface brightness x sub-pixel area

    @staticmethod
    def _add_clipped(image: np.ndarray, patch: np.ndarray, y_lo: int, x_lo: int) -> None:
        """image[y_lo:, x_lo:] += patch, keeping only the part inside the image."""
        ny, nx = image.shape
        ph, pw = patch.shape
        ya, xa = max(y_lo, 0), max(x_lo, 0)
        yb, xb = min(y_lo + ph, ny), min(x_lo + pw, nx)
        if ya < yb and xa < xb:
            image[ya:yb, xa:xb] += patch[ya - y_lo: yb - y_lo, xa - x_lo: xb - x_lo]

    def render(self, flux, re, n, x0, y0, q, theta) -> np.ndarray:
        """The model image ``(ny, nx)``: flux per pixel."""
        from scipy import fft

        ny, nx = self.shape
        k = self.oversample
        fine = sersic_surface_brightness(self._xs[None, :] - x0, self._ys[:, None] - y0, flux, re, n, q, theta)
        if self.psf_has_pixel:  # pixel centres: convolved with the PSF image, which integrates over the pixel
            pix = fine
        else:
            pix = 0.25 * (fine[0::2, 0::2] + fine[1::2, 0::2] + fine[0::2, 1::2] + fine[1::2, 1::2])
        cx, cy = int(np.clip(round(x0), 0, nx - 1)), int(np.clip(round(y0), 0, ny - 1))
        box_fine = self._box_subpixels(flux, re, n, x0, y0, q, theta, cx, cy)
        b = self._box
        y_lo, x_lo = cy - BOX_HALF, cx - BOX_HALF
        # the box is modelled separately: take it out of the native-scale image
        ya, xa = max(y_lo, 0), max(x_lo, 0)
        pix[ya: y_lo + b, xa: x_lo + b] = 0.0
        if not self._psf:
            self._add_clipped(pix, box_fine.reshape(b, k, b, k).sum(axis=(1, 3)), y_lo, x_lo)
            return pix
        out = fft.irfft2(fft.rfft2(pix, s=self._fft_native) * self._kn, s=self._fft_native)[:ny, :nx]
        m = self._m
        full = k * (b + 2 * m)
        blurred = fft.irfft2(fft.rfft2(box_fine, s=self._fft_box) * self._kb, s=self._fft_box)[:full, :full]
        blocks = blurred.reshape(b + 2 * m, k, b + 2 * m, k)
        # the pixel response is in a PSF image already: sample the pixel centre (sub-pixel k // 2, k odd)
        patch = blocks[:, k // 2, :, k // 2] * (k * k) if self.psf_has_pixel else blocks.sum(axis=(1, 3))
        self._add_clipped(out, patch, y_lo - m, x_lo - m)
        return out


_RENDERERS: dict = {}


def _renderer_for(shape, psf_kernel, psf_has_pixel: bool = False) -> ConvolvedSersicRenderer:
    """A renderer for this shape and PSF, reused across fits (its FFT set-up costs ~15 ms)."""
    key = (tuple(shape), None if psf_kernel is None else hash(np.asarray(psf_kernel).tobytes()), bool(psf_has_pixel))
    renderer = _RENDERERS.get(key)
    if renderer is None:
        if len(_RENDERERS) > 16:
            _RENDERERS.clear()
        renderer = _RENDERERS[key] = ConvolvedSersicRenderer(shape, psf_kernel, psf_has_pixel=psf_has_pixel)
    return renderer


def natural_params(log_re, log_n, eta1, eta2):
    """(re, n, q, theta) from the fitter's unbounded parameters."""
    n = float(np.exp(np.clip(log_n, -5.0, 5.0)))
    eta = float(np.hypot(eta1, eta2))
    q = max(float(np.exp(-eta)), Q_BOUNDS[0])
    theta = 0.5 * float(np.arctan2(eta2, eta1))
    re = float(np.exp(np.clip(log_re, np.log(RE_MIN_PIX), 12.0)))
    return re, float(np.clip(n, *N_BOUNDS)), q, theta


def shape_to_eta(q, theta):
    """Conformal shear (eta1, eta2) of axis ratio ``q`` at angle ``theta`` (radians)."""
    eta = -np.log(q)
    return eta * np.cos(2 * theta), eta * np.sin(2 * theta)


def _astropy_model_class():
    """The astropy Fittable2DModel wrapping :class:`ConvolvedSersicRenderer` (built lazily)."""
    from astropy.modeling import Fittable2DModel, Parameter

    class ConvolvedSersic2D(Fittable2DModel):
        """PSF-convolved, pixel-integrated Sérsic on a regular pixel grid.

        Parametrised without bounds so that plain Levenberg-Marquardt works: the radius
        and index as ``log_re`` and ``log_n``, the shape as the conformal shear ``(eta1, eta2)`` with
        ``q = exp(-|eta|)`` and ``theta = atan2(eta2, eta1) / 2`` (smooth through q = 1,
        where the angle is undefined).  ``n`` is clipped to :data:`N_BOUNDS`.
        ``x`` and ``y`` must be full ``np.mgrid``-style grids of the renderer's shape;
        they only fix the output shape (the renderer knows the pixel positions).
        """

        flux = Parameter(default=1.0)
        log_re = Parameter(default=1.0)
        log_n = Parameter(default=0.7)
        x_0 = Parameter(default=0.0)
        y_0 = Parameter(default=0.0)
        eta1 = Parameter(default=0.0)
        eta2 = Parameter(default=0.0)

        def __init__(self, renderer: ConvolvedSersicRenderer, **kwargs):
            self._renderer = renderer
            super().__init__(**kwargs)

        def evaluate(self, x, y, flux, log_re, log_n, x_0, y_0, eta1, eta2):
            p = [float(np.ravel(v)[0]) for v in (flux, log_re, log_n, x_0, y_0, eta1, eta2)]
            re, n, q, theta = natural_params(p[1], p[2], p[5], p[6])
            return self._renderer.render(max(p[0], 1e-30), re, n, p[3], p[4], q, theta).reshape(np.shape(x))

    return ConvolvedSersic2D


# --------------------------------------------------------------------------- guesses
@dataclass
class _Guess:
    flux: float
    re: float
    n: float
    x0: float
    y0: float
    q: float
    theta: float


def moment_guess(image: np.ndarray, weight: np.ndarray, source: np.ndarray) -> _Guess | None:
    """Initial Sérsic parameters from flux-weighted moments of the central source.

    Args:
        image: flux cutout.
        weight: 0 where pixels are masked (companions).
        source: boolean mask of the central source's pixels.

    Returns:
        a :class:`_Guess`, or None if the source has no positive flux.
    """
    vals = np.where(source & (weight > 0), image, 0.0)
    vals = np.clip(vals, 0.0, None)
    total = vals.sum()
    if not np.isfinite(total) or total <= 0:
        return None
    yy, xx = np.indices(image.shape, dtype=np.float64)
    x0, y0 = (vals * xx).sum() / total, (vals * yy).sum() / total
    dx, dy = xx - x0, yy - y0
    ixx, iyy, ixy = (vals * dx * dx).sum() / total, (vals * dy * dy).sum() / total, (vals * dx * dy).sum() / total
    lam = np.linalg.eigvalsh(np.array([[ixx, ixy], [ixy, iyy]]))
    q = float(np.sqrt(max(lam[0], 1e-6) / max(lam[1], 1e-6)))
    theta = 0.5 * float(np.arctan2(2 * ixy, ixx - iyy))
    # curve of growth in elliptical apertures -> half-light and 90%-light major-axis radii
    cos_t, sin_t = np.cos(theta), np.sin(theta)
    q_safe = float(np.clip(q, 0.2, 1.0))
    r_ell = np.sqrt((dx * cos_t + dy * sin_t) ** 2 + ((-dx * sin_t + dy * cos_t) / q_safe) ** 2)
    order = np.argsort(r_ell.ravel())
    growth = np.cumsum(vals.ravel()[order]) / total
    r_sorted = r_ell.ravel()[order]
    r50 = float(r_sorted[np.searchsorted(growth, 0.5)])
    r90 = float(r_sorted[min(np.searchsorted(growth, 0.9), r_sorted.size - 1)])
    # concentration R90/R50 of a Sérsic grows from ~2.0 (n=0.5) to ~3.7 (n=4); invert roughly
    concentration = r90 / max(r50, 1e-3)
    n = float(np.clip(0.5 + 1.9 * (concentration - 2.0), 0.6, 5.0))
    return _Guess(flux=float(total), re=max(r50, 0.7), n=n, x0=float(x0), y0=float(y0), q=q_safe, theta=theta)


def _sky_sigma(image: np.ndarray, sky: np.ndarray) -> float:
    """Robust standard deviation of the sky pixels (MAD)."""
    from astropy.stats import mad_std

    pix = image[sky]
    if pix.size < 10:
        pix = image.ravel()
    sigma = float(mad_std(pix))
    return sigma if np.isfinite(sigma) and sigma > 0 else float(np.std(pix) or 1.0)


# --------------------------------------------------------------------------- one fit
def fit_sersic(image: np.ndarray, psf_kernel: np.ndarray | None = None, segmap: np.ndarray | None = None,
               sky_sigma: float | None = None, gain: float | None = None, maxiter: int = 100,
               mask: np.ndarray | None = None, psf_has_pixel: bool = False) -> SersicFit:
    """Fit one PSF-convolved Sérsic profile to a sky-subtracted flux cutout.

    Args:
        image: 2-D linear flux cutout (sky subtracted), galaxy near the centre.
        psf_kernel: PSF sampled at ``1 / OVERSAMPLE`` pixels (see :func:`psf_kernel_for`);
            None fits without a PSF.
        segmap: int map, 0 sky / 1 central source / > 1 companions (masked); None = no
            mask, the central source is all pixels above 2 sigma.
        sky_sigma: per-pixel sky noise in flux units; None = measured from sky pixels.
        gain: electrons per flux unit, adds the source's Poisson variance; None = sky only.
        maxiter: optimiser iteration limit.
        mask: pixels to exclude (True / non-zero), e.g. the set's own mask; None = none.
        psf_has_pixel: ``psf_kernel`` comes from a PSF image (pixel response included).

    Returns:
        :class:`SersicFit` (flags: see the module docstring; R_e is judged against this image's side).
    """
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 2:
        raise MorphllrError(f"fit_sersic: expected a 2-D image, got shape {image.shape}")
    finite = np.isfinite(image)
    if mask is not None:
        finite &= ~np.asarray(mask, bool)  # masked pixels are treated like missing ones
    image = np.where(finite, image, 0.0)
    if segmap is None:
        sky_guess = _sky_sigma(image, np.ones(image.shape, bool))
        source = image > 2 * sky_guess
        sky = ~source
        weight_mask = finite.astype(np.float64)
    else:
        segmap = np.asarray(segmap)
        source = segmap == 1
        sky = segmap == 0
        weight_mask = ((segmap <= 1) & finite).astype(np.float64)
    if sky_sigma is None or not np.isfinite(sky_sigma) or sky_sigma <= 0:
        sky_sigma = _sky_sigma(image, sky & finite)
    guess = moment_guess(image, weight_mask, source)
    if guess is None:
        return SersicFit.failed()
    # the renderer's finely sampled box is placed on the pixel nearest the centre, so the model
    # steps (by < 0.3 % of the peak) where the centre crosses a half-integer; a start exactly there
    # (the moments of a symmetric image centred between pixels) gives the optimiser derivatives
    # across that step and stalls it (n off by 0.3-0.6 on noise-free images): start beside it
    guess = replace(guess, x0=_beside_box_edge(guess.x0), y0=_beside_box_edge(guess.y0))

    variance = np.full(image.shape, float(sky_sigma) ** 2)
    if gain is not None and np.isfinite(gain) and gain > 0:
        variance += np.clip(image, 0.0, None) / gain
    weights = weight_mask / np.sqrt(variance)

    renderer = _renderer_for(image.shape, psf_kernel, psf_has_pixel)
    best = _levmar(image, weights, renderer, guess, maxiter)
    if best is None or best.flag & (FLAG_N_AT_BOUND | FLAG_NOT_CONVERGED):
        # a bad start (e.g. the moments of a compact, noisy source) can send n to a bound;
        # restart from a disc and from a bulge and keep the best chi^2
        for n_start in RETRY_N:
            other = _levmar(image, weights, renderer, replace(guess, n=n_start), maxiter)
            if other is not None and (best is None or other.chi2nu < best.chi2nu):
                best = other
    return best if best is not None else SersicFit.failed()


def _beside_box_edge(v: float, gap: float = 1e-3) -> float:
    """``v`` moved ``gap`` pixels away when it lies within ``gap`` of a half-integer."""
    off = (v % 1.0) - 0.5
    return v + (gap - off if off >= 0 else -gap - off) if abs(off) < gap else v


def _levmar(image: np.ndarray, weights: np.ndarray, renderer: ConvolvedSersicRenderer, guess: _Guess,
            maxiter: int) -> SersicFit | None:
    """One Levenberg-Marquardt run from ``guess``; None if the optimiser broke down."""
    from astropy.modeling.fitting import LevMarLSQFitter

    ny, nx = image.shape
    eta1, eta2 = shape_to_eta(guess.q, guess.theta)
    model = _astropy_model_class()(
        renderer, flux=guess.flux, log_re=np.log(guess.re), log_n=np.log(guess.n), x_0=guess.x0, y_0=guess.y0,
        eta1=eta1, eta2=eta2)
    yy, xx = np.mgrid[:ny, :nx]
    fitter = LevMarLSQFitter()
    with warnings.catch_warnings():
        # astropy warns on every non-converged fit; we record it in the flag instead
        warnings.simplefilter("ignore")
        try:
            fitted = fitter(model, xx, yy, image, weights=weights, maxiter=maxiter, acc=1e-5)
        except (ValueError, RuntimeError, FloatingPointError, np.linalg.LinAlgError):
            return None
    flag = 0
    if (fitter.fit_info or {}).get("ierr") not in (1, 2, 3, 4):
        flag |= FLAG_NOT_CONVERGED
    re, n, q, theta = natural_params(fitted.log_re.value, fitted.log_n.value, fitted.eta1.value, fitted.eta2.value)
    if n <= N_BOUNDS[0] * 1.01 or n >= N_BOUNDS[1] * 0.99:
        flag |= FLAG_N_AT_BOUND
    if re <= RE_MIN_PIX * 1.05 or re >= 2.0 * max(ny, nx) or q <= Q_BOUNDS[0] * 1.05:
        flag |= FLAG_SHAPE_AT_BOUND
    if re > 0.5 * min(ny, nx):
        flag |= FLAG_RE_BEYOND_WINDOW
    if n <= GALSIM_N_RANGE[0] * 1.01 or n >= GALSIM_N_RANGE[1] * 0.99:
        flag |= FLAG_N_OUTSIDE_GALSIM
    x0, y0 = float(fitted.x_0.value), float(fitted.y_0.value)
    if not (-0.5 <= x0 <= nx - 0.5 and -0.5 <= y0 <= ny - 0.5):
        flag |= FLAG_NOT_CONVERGED
    resid = (image - fitted(xx, yy)) * weights
    dof = max(int((weights > 0).sum()) - 7, 1)
    chi2nu = float((resid ** 2).sum() / dof)
    if not np.isfinite(chi2nu):
        return None
    return SersicFit(
        n=n, re_pix=re, q=q, pa_deg=float(np.degrees(theta) % 180.0),
        flux=float(fitted.flux.value), x0_pix=x0, y0_pix=y0, chi2nu=chi2nu, flag=flag)


def psf_kernel_for(psf, pixel_scale: float, oversample: int = OVERSAMPLE) -> np.ndarray:
    """The PSF sampled at ``pixel_scale / oversample``: the fitter's convolution kernel.

    Args:
        psf: GalSim PSF profile (``morphllr.galaxies.psf.make_psf``) or None.
        pixel_scale: arcsec per pixel of the images to fit.
        oversample: sub-pixels per pixel.

    Returns:
        float64 odd-sided square array summing to 1, or None when ``psf`` is None.
    """
    if psf is None:
        return None
    return psf_image(psf, pixel_scale / oversample, pixel_integrated=False)


# --------------------------------------------------------------------------- many fits
def _fit_chunk(args):
    images, segmaps, sigmas, gains, kernels, masks, psf_has_pixel = args
    out = []
    for i in range(len(images)):
        seg = None if segmaps is None else segmaps[i]
        kernel = kernels[i] if isinstance(kernels, list) else kernels
        out.append(fit_sersic(images[i], kernel, seg, sigmas[i], gains[i], mask=None if masks is None else masks[i],
                              psf_has_pixel=psf_has_pixel))
    return out


def _as_per_image(value, n: int) -> np.ndarray:
    if value is None:
        return np.full(n, np.nan)
    arr = np.asarray(value, dtype=np.float64)
    return np.full(n, float(arr)) if arr.ndim == 0 else arr


def default_workers() -> int:
    """The cores this process may use (respects taskset / cgroups / SLURM binding)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def fit_sersic_many(images: np.ndarray, psf_kernel, segmaps: np.ndarray | None = None,
                    sky_sigma=None, gain=None, workers: int | None = None, progress=None,
                    masks: np.ndarray | None = None, psf_has_pixel: bool = False) -> list[SersicFit]:
    """Fit every cutout of a stack, in parallel processes (the fits are independent).

    Args:
        images: ``(N, H, W)`` flux cutouts.
        psf_kernel: one kernel for all (see :func:`fit_sersic`), a list of N kernels, or None.
        segmaps: ``(N, H, W)`` segmentation maps or None.
        sky_sigma: scalar or ``(N,)`` per-pixel sky noise (NaN = measure).
        gain: scalar or ``(N,)`` electrons per flux unit (NaN = unknown).
        workers: processes; default = the cores this process may use.
        progress: optional callable ``progress(n_done)`` called after each chunk.
        masks: ``(N, H, W)`` pixels to exclude (non-zero) or None.
        psf_has_pixel: the kernel(s) come from a PSF image (see :class:`ConvolvedSersicRenderer`).

    Returns:
        list of :class:`SersicFit`, in input order.
    """
    n = len(images)
    sigmas, gains = _as_per_image(sky_sigma, n), _as_per_image(gain, n)
    workers = default_workers() if workers is None else int(workers)
    chunk = 16
    per_image = isinstance(psf_kernel, (list, tuple))
    jobs = [(np.asarray(images[i:i + chunk], dtype=np.float64),
             None if segmaps is None else np.asarray(segmaps[i:i + chunk]),
             sigmas[i:i + chunk], gains[i:i + chunk],
             list(psf_kernel[i:i + chunk]) if per_image else psf_kernel,
             None if masks is None else np.asarray(masks[i:i + chunk]), bool(psf_has_pixel)) for i in range(0, n, chunk)]
    return concat_in_processes(_fit_chunk, jobs, workers, progress)


def fits_to_table(fits: list[SersicFit], ids=None):
    """An astropy Table with the :data:`COLUMNS` (and ``id`` when given)."""
    from astropy.table import Table

    table = Table()
    if ids is not None:
        table["id"] = ids
    for col in COLUMNS:
        key = col[len("sersic_"):]
        dtype = np.int32 if col == "sersic_flag" else np.float64
        table[col] = np.array([getattr(f, key) for f in fits], dtype=dtype)
    return table


# --------------------------------------------------------------------------- image sets
@dataclass
class FitPSF:
    """The PSF a set is fitted with: kernels for the fitter and what to record about it.

    Attributes:
        kernels: None (no PSF), one kernel for every galaxy, or a list with one per row.
        has_pixel: the kernel(s) come from a PSF image (pixel response included).
        fwhm: (N,) FWHM in arcsec per row (NaN: no PSF or a PSF image).
        beta: (N,) Moffat index per row (NaN: not a Moffat).
        record: JSON-able description (``kind`` none / moffat / gaussian / image; FWHM and
            beta with where they came from; for an image its file, sha256 and pixels).
    """

    kernels: object
    has_pixel: bool
    fwhm: np.ndarray
    beta: np.ndarray
    record: dict


def psf_for_fit(catalog, pixel_scale: float, *, psf_fwhm: float | None = None, psf_beta: float | None = None,
                psf_kind: str = "moffat", psf_image_path=None, no_psf: bool = False,
                where: str = "catalogue") -> FitPSF:
    """The fitter's PSF from the options or the catalogue: option > column > default.

    Args:
        catalog: astropy Table (``psf_fwhm_arcsec`` or ``psf_fwhm``; ``psf_beta``).
        pixel_scale: arcsec per pixel of the flux cutouts.
        psf_fwhm: FWHM in arcsec for every galaxy; None = the catalogue column.
        psf_beta: Moffat index for every galaxy; None = column ``psf_beta``, else 4.765.
        psf_kind: ``moffat`` or ``gaussian``.
        psf_image_path: PSF image file (FITS/.npy) at ``pixel_scale`` for every galaxy
            (:func:`morphllr.galaxies.psf.load_psf_image`); excludes FWHM and beta.
        no_psf: fit without a PSF.
        where: file name for messages.

    Returns:
        :class:`FitPSF`.
    """
    n = len(catalog)
    nan = np.full(n, np.nan)
    given = [name for name, value in (("--psf-fwhm", psf_fwhm), ("--psf-beta", psf_beta),
                                      ("--psf-image", psf_image_path)) if value is not None]
    if no_psf:
        if given:
            raise MorphllrError(f"--no-psf: cannot be combined with {given[0]} (one says no PSF, the other gives one); "
                                "drop one of them")
        return FitPSF(None, False, nan, nan, {"kind": "none"})
    kind = str(psf_kind).lower()
    if kind not in PSF_KINDS:
        raise MorphllrError(f"--psf {psf_kind}: unknown PSF shape; choose one of {', '.join(PSF_KINDS)}")
    if psf_image_path is not None:
        if psf_fwhm is not None or psf_beta is not None:
            raise MorphllrError(f"--psf-image {psf_image_path}: a PSF image replaces {given[0]}; give either the image "
                                "or a FWHM (and beta), not both")
        pixels = load_psf_image(psf_image_path)
        kernel = psf_kernel_for(psf_from_image(pixels, pixel_scale), pixel_scale)
        record = {"kind": "image", "pixel_scale": float(pixel_scale), "image": psf_image_record(psf_image_path, pixels)}
        return FitPSF(kernel, True, nan, nan, record)
    if psf_beta is not None and kind != "moffat":
        raise MorphllrError(f"--psf-beta {psf_beta}: only a Moffat PSF has a beta, not --psf {kind}; drop one of them")
    fix = "pass --psf-fwhm ARCSEC, --psf-image FILE, or --no-psf to fit without one"
    fwhm, beta = psf_parameters(catalog, kind, where, fix, fwhm=psf_fwhm, beta=psf_beta)
    kernels: dict = {}
    per_row = []
    for f, b in zip(fwhm, beta):
        key = (float(f), DEFAULT_MOFFAT_BETA if np.isnan(b) else float(b))
        if key not in kernels:
            kernels[key] = psf_kernel_for(make_psf(key[0], kind, beta=key[1]), pixel_scale)
        per_row.append(kernels[key])
    fwhm_column = next((c for c in PSF_FWHM_COLUMNS if c in catalog.colnames), None)
    beta_column = next((c for c in PSF_BETA_COLUMNS if c in catalog.colnames), None)
    record = {"kind": kind,
              "fwhm_arcsec": float(fwhm[0]) if n and np.all(fwhm == fwhm[0]) else None,
              "fwhm_from": "--psf-fwhm" if psf_fwhm is not None else f"column {fwhm_column}"}
    if kind == "moffat":
        record["beta"] = float(beta[0]) if n and np.all(beta == beta[0]) else None
        record["beta_from"] = ("--psf-beta" if psf_beta is not None else f"column {beta_column} (blank: "
                               f"{DEFAULT_MOFFAT_BETA})" if beta_column else f"default {DEFAULT_MOFFAT_BETA}")
    one = len(kernels) == 1
    return FitPSF(next(iter(kernels.values())) if one else per_row, False, fwhm, beta, record)


def kernels_for_catalog(catalog, pixel_scale: float, psf_fwhm: float | None, psf_kind: str, where: str,
                        psf_beta: float | None = None):
    """The fitter's PSF kernel(s): one from ``psf_fwhm``, or one per row from the catalogue.

    Args:
        catalog: astropy Table (``psf_fwhm_arcsec`` or ``psf_fwhm``, optional ``psf_beta``).
        pixel_scale: arcsec per pixel of the flux cutouts.
        psf_fwhm: FWHM in arcsec for all galaxies, or None to read the catalogue.
        psf_kind: ``moffat`` or ``gaussian``.
        where: file name for messages.
        psf_beta: Moffat index for all galaxies, or None (column ``psf_beta``, else 4.765).

    Returns:
        a kernel array, or a list with one kernel per row.
    """
    return psf_for_fit(catalog, pixel_scale, psf_fwhm=psf_fwhm, psf_beta=psf_beta, psf_kind=psf_kind,
                       where=where).kernels


def describe_psf(record: dict | None) -> str:
    """One line for a PSF record of :func:`psf_for_fit` (messages and summaries)."""
    if not record:
        return "unknown PSF"
    kind = record.get("kind")
    if kind == "none":
        return "no PSF"
    if kind == "image":
        image = record.get("image", {})
        return f"PSF image {image.get('file')} (sha256 {str(image.get('sha256', ''))[:12]}...)"
    fwhm = record.get("fwhm_arcsec")
    text = f"{kind} FWHM " + (f"{fwhm:g} arcsec" if fwhm is not None else f"per galaxy ({record.get('fwhm_from')})")
    if kind == "moffat":
        beta = record.get("beta")
        text += f", beta {beta:g}" if beta is not None else f", beta per galaxy ({record.get('beta_from')})"
    return text


def _window_mask(mask, start: int, stop: int, channel: int, window) -> np.ndarray | None:
    """Rows ``start:stop`` of the set's flux-grid mask (1 = excluded) inside the fitted window."""
    if mask is None:
        return None
    m = np.asarray(mask[start:stop])
    if m.ndim == 4:
        m = m[:, channel]
    return m[(slice(None),) + window] != 0


# the one in-place command: it updates the set's own catalogue, so it locks the set itself
@claims(lambda a: [("IMAGESET", a["path"])] if a["write"] else [], inputs=lambda a: [a["psf_image_path"]],
        overwrite=None, existing="update")
def fit_imageset(path, *, psf_fwhm: float | None = None, psf_kind: str = "moffat", no_psf: bool = False,
                 psf_beta: float | None = None, psf_image_path=None,
                 channel: int = 0, fit_size: int | None = None, workers: int | None = None,
                 write: bool = True, overwrite: bool = False, progress=None):
    """``morphllr fit-sersic``: fit every flux cutout of an ImageSet and store the columns.

    Besides the :data:`COLUMNS` it records the PSF and window used: per galaxy the
    :data:`RECORD_COLUMNS`, and for the set ``catalog.meta["sersic_fit"]`` (``psf``: the
    :func:`psf_for_fit` record, a PSF image with its file, sha256 and pixels; ``window``: x0,
    y0 and side of the fitted square on the flux cutout; channel, pixel scale, flag bits).
    ``morphllr archetypes`` renders with that PSF by default.

    Args:
        path: ImageSet with ``/flux`` (and ideally ``/segmap`` and ``sky_sigma``).
        psf_fwhm: FWHM in arcsec for all galaxies; None = the catalogue's ``psf_fwhm_arcsec``.
        psf_kind: ``moffat`` or ``gaussian``.
        no_psf: fit without a PSF.
        psf_beta: Moffat index for all galaxies; None = the catalogue's ``psf_beta``, else 4.765.
            A wrong beta biases n (see the module docstring of :mod:`morphllr.galaxies.psf` and
            benchmarks/psf_beta.py).
        psf_image_path: PSF image (FITS/.npy, the image of a point source at the set's pixel
            scale) for all galaxies, instead of a FWHM.
        channel: band to fit.
        fit_size: side of the central square fitted (default: the preprocessing's crop,
            i.e. what the model sees, else the whole cutout).
        workers: processes (default: all usable cores).
        write: store the columns in the set's catalogue (atomically).  The set is claimed
            (:func:`morphllr.atomic.claim_output`, in place) first, so two runs never update it at once.
        overwrite: replace Sérsic columns the catalogue already has (otherwise refused before fitting).
        progress: optional callable(n_done).

    Returns:
        (astropy Table of the set's catalogue with the :data:`COLUMNS`, summary dict).
    """
    s = ImageSet.open(path)
    where = str(path)
    if s.flux is None:
        raise MorphllrError(f"{where}: has no /flux cutouts to fit; prepare it again without --no-flux")
    present = [c for c in COLUMNS + RECORD_COLUMNS if c in s.catalog.colnames]
    if write and present and not overwrite:
        raise MorphllrError(f"{where}: its catalogue already has Sérsic columns ({', '.join(present[:3])}"
                            f"{', ...' if len(present) > 3 else ''}); pass --overwrite to replace them")
    n, c, hf, wf = s.flux.shape
    if not 0 <= channel < c:
        raise MorphllrError(f"--channel {channel}: the set has {c} channel(s) (0..{c - 1})")
    prep = s.preprocessing
    pixel_scale = prep.get("pixel_scale")
    catalog = s.catalog
    if pixel_scale is None:
        scales = first_column(catalog, ("pixel_scale",), where)
        if scales is None:
            raise MorphllrError(f"{where}: records no pixel scale; prepare it with a preset that sets pixel_scale")
        pixel_scale = float(scales[0])
    if fit_size is not None and not (isinstance(fit_size, (int, np.integer)) and MIN_FIT_SIZE <= fit_size <= min(hf, wf)):
        raise MorphllrError(f"--fit-size {fit_size}: must be a whole number of pixels from {MIN_FIT_SIZE} to "
                            f"{min(hf, wf)} (the flux cutouts of {where} are {hf}x{wf}); omit it to fit the part the "
                            "model sees")
    size = fit_size or prep.get("crop") or max(hf, wf)
    size = int(min(size, hf, wf))
    size_from = "--fit-size" if fit_size else "preprocessing crop" if prep.get("crop") else "whole cutout"
    y0, x0 = (hf - size) // 2, (wf - size) // 2
    window = np.s_[y0:y0 + size, x0:x0 + size]
    psf = psf_for_fit(catalog, float(pixel_scale), psf_fwhm=psf_fwhm, psf_beta=psf_beta, psf_kind=psf_kind,
                      psf_image_path=psf_image_path, no_psf=no_psf, where=where)
    kernels = psf.kernels
    sigma = first_column(catalog, ("sky_sigma",), where)
    gain = first_column(catalog, ("gain",), where)
    mask = getattr(s, "mask", None)  # the set's own flux-grid mask (1 = excluded), where the set has one
    fits = []
    for start in range(0, n, 1024):  # bounded memory for large sets
        stop = min(start + 1024, n)
        flux = np.asarray(s.flux[start:stop, channel])[(slice(None),) + window]
        seg = None if s.segmap is None else np.asarray(s.segmap[start:stop])[(slice(None),) + window]
        kern = kernels[start:stop] if isinstance(kernels, list) else kernels
        done = len(fits)
        fits.extend(fit_sersic_many(flux, kern, seg, None if sigma is None else sigma[start:stop],
                                    None if gain is None else gain[start:stop], workers,
                                    (lambda k, d=done: progress(d + k)) if progress else None,
                                    masks=_window_mask(mask, start, stop, channel, window),
                                    psf_has_pixel=psf.has_pixel))
    table = catalog.copy()
    fitted = fits_to_table(fits)
    fitted["sersic_x0_pix"] += x0  # report positions on the full flux cutout
    fitted["sersic_y0_pix"] += y0
    for col in COLUMNS:
        table[col] = fitted[col]
    table["sersic_psf_fwhm_arcsec"] = psf.fwhm
    table["sersic_psf_beta"] = psf.beta
    table["sersic_fit_size"] = np.full(n, size, np.int32)
    table.meta["sersic_fit"] = {
        "psf": psf.record, "psf_fwhm": psf_fwhm, "fit_size": size, "channel": channel,
        "pixel_scale": float(pixel_scale),
        "window": {"x0": int(x0), "y0": int(y0), "size": size, "from": size_from},
        "mask": mask is not None, "flag_bits": {str(bit): text for bit, text in FLAG_BITS.items()}}
    s.close()
    if write:
        ImageSet.open(path).update_catalog(table)
    flags = np.asarray(fitted["sersic_flag"])
    summary = {"n": n, "n_good": int((flags == 0).sum()),
               "flag_counts": {int(f): int((flags == f).sum()) for f in np.unique(flags)},
               "flag_bits": {int(bit): int((flags & bit != 0).sum()) for bit in FLAG_BITS},
               "median_n": float(np.nanmedian(fitted["sersic_n"])) if n else float("nan"),
               "median_re_pix": float(np.nanmedian(fitted["sersic_re_pix"])) if n else float("nan"),
               "psf": describe_psf(psf.record), "window": size}
    return table, summary
