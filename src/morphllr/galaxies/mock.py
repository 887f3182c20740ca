"""Mock observations: idealised simulation images -> survey-like flux cutouts, RealSim-style.

The likelihood ratio cancels the background only when simulated images share the sky,
PSF, pixel scale, noise and units of the training data, so a mock is *inserted* into the
survey the way RealSim (Bottrell et al. 2017, 2019) does it:

Inputs (read by :mod:`morphllr.data.files`): noise-free, PSF-free images, either

* TNG / Illustris SKIRT broadband cubes in ``counts/s/pixel`` (band chosen by name,
  ``PIXSCALE`` the angular pixel at ``USE_Z``, ``CDELT1`` the physical pixel): the count
  rate needs ``input_zero_point`` (AB magnitude of 1 count/s), since no convention for it
  is documented in the files or was found for these products; or
* AB mag/arcsec^2 maps (SKIRT / RealSim idealised images, empty lines of sight +inf).

The steps, per galaxy, in order:

1. the redshift: the image's own (``USE_Z``/``REDSHIFT``: no extra dimming) unless another
   is asked for (option, catalogue column ``redshift``, or drawn with ``match``); at the
   image's own redshift the angular pixel is the header's (``PIXSCALE``), at another one
   it is the physical pixel times :func:`morphllr.data.cosmology.arcsec_per_kpc` (Planck18 or
   RealSim's FlatLambdaCDM(70, 0.3)), with ``10 log10((1 + z) / (1 + z_sim))`` mag of
   surface-brightness dimming and no K-correction (a warning beyond |dz| = 0.05);
2. flux per pixel in the set's working unit (AB zero point ``zero_point``);
3. PSF convolution and flux-conserving resampling to the survey pixel in one GalSim step,
   onto a cutout-sized canvas: a simulation smaller than the cutout is padded with zero
   flux *before* PSF, sky and noise (it has no light beyond its field);
4. shot noise of the galaxy's own light (Poisson, ``gain`` electrons per flux unit);
5. the sky: a real empty-sky patch from the same library ``archetypes --sky-patches``
   uses (added as its own pixels: crop, quarter turn and flip, never resampled), or
   Gaussian noise of ``sky_sigma``;
6. the preset's model-side preprocessing, through :func:`morphllr.data.prepare.write_flux_set`.

PSF, sky and gain are per galaxy: from options, catalogue columns (``psf_fwhm_arcsec``,
``psf_beta``, ``sky_sigma``, ``gain``), or drawn from an observed set (``match``); every
choice is recorded per galaxy in the catalogue and for the set in its preprocessing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from morphllr.atomic import claims
from morphllr.data.catalog import first_column, join_catalog, read_catalog
from morphllr.data.files import expand_inputs, iter_images
from morphllr.data.imageset import ImageSet
from morphllr.data.inputs import file_sha256
from morphllr.data.prepare import write_flux_set
from morphllr.data.preprocess import INPUT_KIND_TEXT, as_preprocessing, zero_point_factor
from morphllr.errors import MorphllrError
from morphllr.data import cosmology as cosmologies
from morphllr.galaxies.archetypes import add_matched_noise
from morphllr.galaxies.psf import (DEFAULT_MOFFAT_BETA, PSF_BETA_COLUMNS, PSF_FWHM_COLUMNS, fit_psf_rows,
                                   load_psf_image, make_psf, psf_from_image, psf_image_record)
from morphllr.galaxies.sersic_fit import describe_psf
from morphllr.galaxies.sky_patches import add_sky_patch, load_sky_library
from morphllr.limits import MAX_IMAGE_SIDE, PSF_BETA_MAX, PSF_BETA_MIN

#: Survey settings per preset: pixel scale (arcsec), PSF, sky noise and gain in the
#: preset's working flux unit.  zanisi21 = SDSS r: 0.396"/px, ~1.4" seeing, sky
#: ~150 DN/px with gain ~4.8 e-/DN (sigma = sqrt(150 / 4.8 + 1) ~ 5.7 DN incl. read noise).
SURVEY_PRESETS = {
    "zanisi21": {"pixel_scale": 0.396, "psf_fwhm": 1.4, "psf": "moffat", "sky_sigma": 5.7, "gain": 4.8},
}
#: A band moves by more than this in redshift -> the missing K-correction is worth a warning.
K_CORRECTION_DZ = 0.05
#: Largest simulation image side accepted (GalSim FFTs grow with it).
MAX_SIM_PIXELS = 8192


@dataclass
class SurveySettings:
    """How the mock is observed by default (all in the output set's working flux unit)."""

    pixel_scale: float  # arcsec per survey pixel
    psf_fwhm: float  # arcsec
    psf: str = "moffat"
    zero_point: float = 22.5  # AB mag of one working flux unit
    sky_sigma: float = 0.0  # per-pixel Gaussian sky noise
    gain: float | None = None  # electrons per flux unit (None: no shot noise)
    size: int = 128  # side of the output cutout, survey pixels
    cosmology: str = cosmologies.DEFAULT
    psf_beta: float | None = None  # Moffat index (None: morphllr.galaxies.psf.DEFAULT_MOFFAT_BETA)


@dataclass
class SimImage:
    """One idealised image with what is needed to observe it.

    Attributes:
        name: id of the galaxy (file stem).
        data: (C, H, W) pixels in ``units``; non-finite pixels already replaced by "no light".
        pixel_kpc: physical pixel side (kpc), or None.
        redshift: the redshift the image is seen at (header ``USE_Z``/``REDSHIFT``), or None
            (rest frame, z = 0).
        units: ``mag_arcsec2`` or ``counts_per_s``.
        pixel_arcsec: angular pixel at ``redshift`` from the header (``PIXSCALE``), or None.
        source: file(s) it came from.
        bands: band names, comma-separated ("" when unknown).
        n_nonfinite: NaN / -inf (and, for count rates, inf) pixels masked as "no light".
    """

    name: str
    data: np.ndarray
    pixel_kpc: float | None
    redshift: float | None
    units: str = "mag_arcsec2"
    pixel_arcsec: float | None = None
    source: str = ""
    bands: str = ""
    n_nonfinite: int = 0


@dataclass
class Placement:
    """How one galaxy is observed: its own redshift, PSF, noise and sky (None = survey default)."""

    redshift: float | None = None
    psf_fwhm: float | None = None
    psf_beta: float | None = None
    psf_image: np.ndarray | None = None  # sampled at the survey pixel scale (overrides the FWHM)
    sky_sigma: float | None = None
    gain: float | None = None
    sky_patch: np.ndarray | None = None  # (C, Hp, Wp) real empty sky, working units


# --------------------------------------------------------------------------- reading
def sim_from_raw(raw, pixel_kpc: float | None = None) -> SimImage:
    """A :class:`morphllr.data.raw_image.RawImage` of a simulation product -> :class:`SimImage`.

    Args:
        raw: record from :func:`morphllr.data.files.iter_images`.
        pixel_kpc: physical pixel size in kpc, overriding the header.

    Returns:
        SimImage with non-finite pixels masked (0 flux) and counted.
    """
    if raw.units not in ("mag_arcsec2", "counts_per_s"):
        raise MorphllrError(
            f"{raw.source}: BUNIT says {raw.units or 'nothing known'}; mock reads idealised images in AB mag/arcsec2 "
            "(SKIRT/RealSim) or counts/s/pixel (TNG SKIRT cubes, with --zero-point MAG = AB mag of 1 count/s); "
            "set BUNIT in the header, or use `morphllr prepare` for images that already have sky and noise")
    data = np.array(raw.image, dtype=np.float64)
    if max(data.shape[1:]) > MAX_SIM_PIXELS:
        raise MorphllrError(f"{raw.source}: image is {data.shape[1]}x{data.shape[2]} pixels; at most "
                            f"{MAX_SIM_PIXELS} per side are accepted (bin it first)")
    if raw.units == "mag_arcsec2":
        bad = np.isnan(data) | np.isneginf(data)  # +inf is an empty line of sight, not a bad pixel
        data[bad] = np.inf
    else:
        bad = ~np.isfinite(data)
        data[bad] = 0.0
    kpc = pixel_kpc if pixel_kpc is not None else raw.meta.get("pixel_kpc")
    if pixel_kpc is not None and not (math.isfinite(pixel_kpc) and pixel_kpc > 0):
        raise MorphllrError(f"--sim-pixel-kpc {pixel_kpc}: must be a positive physical pixel size in kpc")
    z = raw.meta.get("redshift")
    return SimImage(name=raw.id, data=data, pixel_kpc=None if kpc is None else float(kpc),
                    redshift=None if z is None or not np.isfinite(z) else float(z), units=raw.units,
                    pixel_arcsec=None if pixel_kpc is not None else raw.pixel_scale, source=raw.source,
                    bands=str(raw.meta.get("bands", "")), n_nonfinite=int(bad.sum()))


def read_sims(inputs, bands: list[str] | None = None, cosmology: str | None = None,
              pixel_kpc: float | None = None):
    """Every simulated galaxy in files, folders or globs.

    Args:
        inputs: paths (SKIRT cubes, mag/arcsec^2 maps; folders searched recursively).
        bands: band names (``["r"]``; several stack bands of cubes or of one-file-per-band maps).
        cosmology: for pixel scales from a physical CDELT.
        pixel_kpc: physical pixel overriding the headers.

    Returns:
        iterator of :class:`SimImage`.
    """
    files = expand_inputs([str(p) for p in inputs])
    for raw in iter_images(files, bands=bands, cosmology=cosmology):
        yield sim_from_raw(raw, pixel_kpc)


def read_sim_fits(path, pixel_kpc: float | None = None, bands: list[str] | None = None,
                  cosmology: str | None = None) -> SimImage:
    """Read one idealised simulation image from FITS (see :func:`read_sims`)."""
    path = Path(path)
    if not path.is_file():
        raise MorphllrError(f"{path}: file not found")
    return next(read_sims([path], bands, cosmology, pixel_kpc))


# --------------------------------------------------------------------------- physics
def arcsec_per_kpc(redshift: float, cosmology: str | None = None) -> float:
    """Angular size of one proper kpc at ``redshift`` (see :func:`morphllr.data.cosmology.arcsec_per_kpc`)."""
    return cosmologies.arcsec_per_kpc(redshift, cosmology)


def sb_to_flux(mag_arcsec2: np.ndarray, pixel_arcsec: float, zero_point: float, dimming_mag: float = 0.0) -> np.ndarray:
    """AB surface brightness -> flux per pixel in units whose AB zero point is ``zero_point``.

    Args:
        mag_arcsec2: surface brightness map; +inf = empty (zero flux).
        pixel_arcsec: pixel side in arcsec.
        zero_point: AB magnitude of one flux unit.
        dimming_mag: magnitudes added to every pixel (cosmological dimming).

    Returns:
        float64 flux per pixel.
    """
    with np.errstate(over="ignore"):
        flux = 10.0 ** (-0.4 * (mag_arcsec2 + dimming_mag - zero_point)) * pixel_arcsec**2
    return np.where(np.isposinf(mag_arcsec2), 0.0, flux)


def surface_brightness(sim: SimImage, zero_point: float, input_zero_point: float | None,
                       cosmology: str | None = None) -> np.ndarray:
    """Surface brightness at the image's own redshift, in working flux units per arcsec^2.

    Args:
        sim: the image.
        zero_point: AB magnitude of one working flux unit.
        input_zero_point: AB magnitude of 1 count/s (count-rate images only).
        cosmology: for the pixel area of a count-rate image without ``PIXSCALE``.

    Returns:
        float64 (C, H, W).
    """
    if sim.units == "mag_arcsec2":
        return sb_to_flux(sim.data, 1.0, zero_point)
    if input_zero_point is None:
        raise MorphllrError(f"{sim.source}: BUNIT is counts/s/pixel, whose AB zero point the file does not give; "
                            "pass --zero-point MAG (the AB magnitude of 1 count/s in this band)")
    pixel = sim.pixel_arcsec
    if pixel is None:
        if sim.pixel_kpc is None or sim.redshift is None:
            raise MorphllrError(f"{sim.source}: no angular pixel (PIXSCALE) and no physical one at a known redshift "
                                "(CDELT1 in pc, USE_Z); pass --sim-pixel-kpc KPC and --redshift Z")
        pixel = sim.pixel_kpc * cosmologies.arcsec_per_kpc(sim.redshift, cosmology)

    return sim.data * zero_point_factor(input_zero_point, zero_point) / pixel**2


def observed_pixel(sim: SimImage, redshift: float, cosmology: str | None = None) -> float:
    """Angular pixel (arcsec) of ``sim`` seen at ``redshift``.

    The header's angular pixel (``PIXSCALE``) defines the image at its own redshift; at
    another redshift it is scaled by the cosmology's ratio of angular sizes,
    ``PIXSCALE x a(z) / a(z_sim)`` (a = arcsec per proper kpc), so the flux and size change
    continuously with z (total flux as D_L^-2).  The physical pixel ``CDELT1`` is used only
    when the header has no angular one: for TNG SKIRT cubes the two disagree by a few per
    cent (374 pc at z = 0.0485 is 0.381" under Planck18, 0.394" under FlatLambdaCDM(70, 0.3),
    0.396" in the header), and switching between them would make a 4 % jump in size.
    """
    if sim.pixel_arcsec and sim.redshift is not None:
        if math.isclose(redshift, sim.redshift, rel_tol=0, abs_tol=1e-12):
            return float(sim.pixel_arcsec)
        ratio = cosmologies.arcsec_per_kpc(redshift, cosmology) / cosmologies.arcsec_per_kpc(sim.redshift, cosmology)
        return float(sim.pixel_arcsec) * ratio
    if sim.pixel_kpc is None:
        raise MorphllrError(f"{sim.source}: header gives no physical pixel size (CDELT1 with CTYPE1 pc or kpc) to "
                            f"observe it at z = {redshift:g}; pass --sim-pixel-kpc KPC")
    return sim.pixel_kpc * cosmologies.arcsec_per_kpc(redshift, cosmology)


def block_sum(flux: np.ndarray, in_scale: float, out_scale: float) -> tuple[np.ndarray, float]:
    """Sum k x k blocks of a much finer input (flux-conserving) before interpolating.

    GalSim's FFTs scale with the input's pixel count; blocks of up to 2/3 of a survey
    pixel change nothing that survives the PSF and the survey pixel, and make a fine
    SKIRT map cheaper to observe.

    Args:
        flux: (H, W) flux per pixel.
        in_scale: its pixel scale (arcsec).
        out_scale: survey pixel scale (arcsec).

    Returns:
        (summed flux, new pixel scale); unchanged when blocks would be < 2 pixels.
    """
    k = int(out_scale / in_scale / 1.5)
    if k < 2:
        return flux, in_scale
    h, w = flux.shape
    ph, pw = (-h) % k, (-w) % k
    padded = np.pad(flux, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)))
    hh, ww = padded.shape
    return padded.reshape(hh // k, k, ww // k, k).sum(axis=(1, 3)), in_scale * k


def psf_resample(flux: np.ndarray, in_scale: float, survey: SurveySettings, psf=None,
                 psf_has_pixel: bool = False, source: str = "image") -> np.ndarray:
    """Convolve with the PSF and resample to the survey grid, conserving flux.

    The output canvas is ``survey.size`` square: a smaller input is padded with zero flux
    (GalSim's interpolated image is zero outside its pixels) before the PSF spreads it.

    Args:
        flux: (H, W) flux per pixel at ``in_scale`` arcsec/px.
        in_scale: input pixel scale, arcsec.
        survey: output pixel scale, size and PSF.
        psf: GalSim PSF (default: from ``survey``); pass False for no PSF.
        psf_has_pixel: the PSF is a sampled image that already includes the survey pixel's
            response (``--psf-image``), so the drawing adds none.
        source: file named when the image is too large on the sky to draw.

    Returns:
        float64 (size, size) flux per survey pixel, centred on the input's centre.
    """
    import warnings as _warnings

    import galsim
    from galsim.errors import GalSimFFTSizeError, GalSimFFTSizeWarning

    total = float(flux.sum())
    if total <= 0:
        return np.zeros((survey.size, survey.size))
    flux, in_scale = block_sum(flux, in_scale, survey.pixel_scale)
    image = galsim.InterpolatedImage(galsim.Image(np.ascontiguousarray(flux), scale=float(in_scale)),
                                     x_interpolant="lanczos3", pad_factor=2, flux=total)
    if psf is None:
        psf = _survey_psf(survey)
    obj = galsim.Convolve(image, psf) if psf is not False else image
    # Input pixels are already integrated over their area: on the survey's own grid a second
    # pixel integration would blur by one more pixel, so sample instead; finer inputs are integrated.
    same_grid = math.isclose(in_scale, survey.pixel_scale, rel_tol=0.02)
    try:
        with _warnings.catch_warnings():
            # GalSim only warns before allocating an FFT beyond its maximum_fft_size (8192^2): stop there
            _warnings.simplefilter("error", GalSimFFTSizeWarning)
            out = obj.drawImage(nx=survey.size, ny=survey.size, scale=survey.pixel_scale,
                                method="no_pixel" if same_grid or psf_has_pixel else "auto")
    except (GalSimFFTSizeWarning, GalSimFFTSizeError) as exc:
        extent = max(flux.shape) * in_scale
        raise MorphllrError(
            f"{source}: spans {extent:.4g} arcsec ({max(flux.shape)} pixels of {in_scale:.4g}\") on the sky, "
            f"{extent / survey.pixel_scale:.0f} survey pixels; drawing it would need a {exc.size}x{exc.size} FFT "
            f"({exc.mem:.1f} GB); check its physical pixel size (--sim-pixel-kpc or CDELT1) and the redshift") from None
    return out.array.astype(np.float64)


def _survey_psf(survey: SurveySettings):
    return make_psf(survey.psf_fwhm, survey.psf, survey.psf_beta or DEFAULT_MOFFAT_BETA)


def observe(sim: SimImage, survey: SurveySettings, redshift: float | None = None,
            rng: np.random.Generator | None = None, noise: bool = True, placement: Placement | None = None,
            input_zero_point: float | None = None) -> tuple[np.ndarray, dict]:
    """Turn one idealised image into a survey-like flux cutout.

    Args:
        sim: the idealised image.
        survey: how to observe it by default.
        redshift: target redshift; None = ``placement.redshift`` or the image's own.
        rng: random generator for the noise and the sky-patch crop.
        noise: False returns the noise-free, PSF-convolved, resampled image.
        placement: this galaxy's own PSF, sky and gain (None: survey defaults).
        input_zero_point: AB mag of 1 count/s (count-rate images).

    Returns:
        (float32 (C, size, size) flux cutout, metadata dict for the catalogue, with a
        ``warnings`` list).
    """
    place = placement or Placement()
    if max(sim.data.shape[1:]) > MAX_IMAGE_SIDE:
        raise MorphllrError(f"{sim.source or sim.name}: image is {sim.data.shape[1]}x{sim.data.shape[2]} pixels, more "
                            f"than the limit of {MAX_IMAGE_SIDE} per side; cut the galaxy out first")
    z_sim = sim.redshift
    z = redshift if redshift is not None else place.redshift if place.redshift is not None else z_sim
    if z is None:
        raise MorphllrError(f"{sim.source or sim.name}: the header has no redshift (USE_Z / REDSHIFT); "
                            "pass --redshift Z or a catalogue column `redshift`")
    z = float(z)
    warnings = []
    if z_sim is not None and abs(z - z_sim) > K_CORRECTION_DZ:
        warnings.append(f"{sim.name}: observed at z = {z:.3g}, its image is for z = {z_sim:.3g}; no K-correction "
                        f"is applied (the band moves by {abs(z - z_sim):.2f} in z)")
    # the image's surface brightness is that seen at z_sim (rest frame when unknown): dim to z
    dimming = 10.0 * math.log10((1.0 + z) / (1.0 + (z_sim or 0.0)))
    pixel_arcsec = observed_pixel(sim, z, survey.cosmology)
    beta = place.psf_beta or survey.psf_beta or DEFAULT_MOFFAT_BETA
    if place.psf_image is not None:
        psf, fwhm = psf_from_image(place.psf_image, survey.pixel_scale), float("nan")
    else:
        fwhm = place.psf_fwhm if place.psf_fwhm is not None else survey.psf_fwhm
        psf = make_psf(float(fwhm), survey.psf, beta)
    sky_sigma = survey.sky_sigma if place.sky_sigma is None else float(place.sky_sigma)
    gain = survey.gain if place.gain is None else float(place.gain)
    rng = rng or np.random.default_rng(0)
    sb = surface_brightness(sim, survey.zero_point, input_zero_point, survey.cosmology)
    channels = []
    for band in sb:
        per_pixel = band * 10.0 ** (-0.4 * dimming) * pixel_arcsec**2
        clean = psf_resample(per_pixel, pixel_arcsec, survey, psf, psf_has_pixel=place.psf_image is not None,
                             source=str(sim.source or sim.name))
        if noise:  # with a real sky patch, only the galaxy's own shot noise here
            clean = add_matched_noise(clean, sky_sigma if place.sky_patch is None else 0.0, gain, rng)
        channels.append(clean)
    flux = np.stack(channels)
    if noise and place.sky_patch is not None:
        flux = add_sky_patch(flux, place.sky_patch[None], rng)
    if not np.any(sb > 0):
        warnings.append(f"{sim.name}: the image holds no light; its mock is pure sky")
    meta = {"id": sim.name, "redshift": z, "sim_redshift": np.nan if z_sim is None else z_sim,
            "sim_pixel_kpc": np.nan if sim.pixel_kpc is None else sim.pixel_kpc, "sim_pixel_arcsec": pixel_arcsec,
            "dimming_mag": dimming, "pixel_scale": survey.pixel_scale, "psf_fwhm_arcsec": fwhm,
            "psf_beta": np.nan if place.psf_image is not None or survey.psf != "moffat" else beta,
            "zero_point": survey.zero_point, "sky_sigma_requested": np.nan if place.sky_patch is not None else sky_sigma,
            "gain": np.nan if gain is None else gain, "n_nonfinite": sim.n_nonfinite, "bands": sim.bands,
            "warnings": warnings}
    return flux.astype(np.float32), meta


# --------------------------------------------------------------------------- whole sets
def survey_settings(preset: str, prep, pixel_scale=None, psf_fwhm=None, psf=None, zero_point=None,
                    sky_sigma=None, gain=None, cosmology=None, psf_beta=None) -> SurveySettings:
    """Survey settings from a preset, with any option overriding it.

    Args:
        preset: key of :data:`SURVEY_PRESETS` (or a preprocessing preset without survey defaults).
        prep: the output set's Preprocessing (gives the cutout size and working zero point).
        pixel_scale, psf_fwhm, psf, sky_sigma, gain, psf_beta: overrides (None = preset).
        zero_point: AB magnitude of one *working* flux unit (None = the preset's; 22.5,
            nanomaggies, when the preset has none).
        cosmology: name (None = the preset's recorded one).

    Returns:
        :class:`SurveySettings`.
    """
    base = dict(SURVEY_PRESETS.get(preset, {}))
    if prep.pixel_scale is not None:  # the recipe's own scale (e.g. --like a set made at another one) wins
        base["pixel_scale"] = prep.pixel_scale
    chosen = {"pixel_scale": pixel_scale, "psf_fwhm": psf_fwhm, "psf": psf, "sky_sigma": sky_sigma, "gain": gain}
    base.update({k: v for k, v in chosen.items() if v is not None})
    for key, hint in (("pixel_scale", "--pixel-scale 0.396"), ("psf_fwhm", "--psf-fwhm 1.4"),
                      ("sky_sigma", "--sky-sigma SIGMA")):
        if base.get(key) is None:
            raise MorphllrError(f"preset {preset!r} has no {key.replace('_', ' ')}; pass {hint}")
    zp = zero_point if zero_point is not None else (prep.zero_point if prep.zero_point is not None else 22.5)
    if not (math.isfinite(base["sky_sigma"]) and base["sky_sigma"] >= 0) or (
            base.get("gain") is not None and not base["gain"] > 0):
        raise MorphllrError("--sky-sigma must be >= 0 and --gain > 0 (electrons per flux unit)")
    if not (math.isfinite(float(base["pixel_scale"])) and float(base["pixel_scale"]) > 0):
        raise MorphllrError(f"--pixel-scale {base['pixel_scale']}: must be a positive number of arcsec per pixel")
    return SurveySettings(pixel_scale=float(base["pixel_scale"]), psf_fwhm=float(base["psf_fwhm"]),
                          psf=base.get("psf", "moffat"), zero_point=float(zp), sky_sigma=float(base["sky_sigma"]),
                          gain=None if base.get("gain") is None else float(base["gain"]),
                          size=int(prep.cutout or 128),
                          cosmology=cosmologies.canonical(cosmology if cosmology is not None else prep.cosmology),
                          psf_beta=psf_beta)


@dataclass
class MatchPool:
    """Observed galaxies to draw each mock's PSF, noise and (optionally) redshift from."""

    name: str
    ids: np.ndarray
    psf_fwhm: np.ndarray
    psf_beta: np.ndarray | None
    sky_sigma: np.ndarray | None
    gain: np.ndarray | None
    redshift: np.ndarray | None
    zero_point: float | None = None  # working unit of its sky_sigma and gain (AB mag of one flux unit)
    #: the PSF its Sérsic fits used (``morphllr.galaxies.psf.fit_psf_rows``), so matched mocks share the archetypes' PSF:
    psf_kind: str | None = None  # moffat / gaussian of the fits (None: the columns, the survey's shape)
    psf_image: np.ndarray | None = None  # the fits' PSF image, for every galaxy
    psf_image_scale: float | None = None  # arcsec per pixel of psf_image
    psf_from: str = "column psf_fwhm_arcsec"  # where the pool's PSFs come from, for the record
    psf_record: dict | None = None  # the fits' PSF record (an image without its pixels)

    @classmethod
    def from_imageset(cls, path, need_redshift: bool = False) -> "MatchPool":
        """Read the PSFs and noise to match from an observed ImageSet's catalogue.

        The PSF is the one its Sérsic fits used when the set records it (``catalog.meta["sersic_fit"]``
        and the columns ``sersic_psf_fwhm_arcsec`` / ``sersic_psf_beta``, a PSF image included; read
        by :func:`morphllr.galaxies.psf.fit_psf_rows`, as ``archetypes`` reads it), so that mocks and
        archetypes share it; else the columns ``psf_fwhm_arcsec`` / ``psf_beta``.

        Args:
            path: observed ``.h5`` (a fit record or ``psf_fwhm_arcsec`` required; ``sky_sigma``, ``gain``,
                ``psf_beta``, ``redshift`` used when present).
            need_redshift: refuse a set without a usable ``redshift`` column.

        Returns:
            MatchPool.
        """
        where = f"--match {path}"
        with ImageSet.open(path) as s:
            cat = s.catalog
            zero_point = s.preprocessing.get("zero_point")
        fitted = fit_psf_rows(cat, cat.meta.get("sersic_fit"), where) if len(cat) else None
        no_psf_fit = fitted is not None and fitted.kind == "none"
        if no_psf_fit:
            fitted = None  # the fits used no PSF: they tell nothing about the seeing, the columns may
        if fitted is not None:
            fwhm, beta = fitted.fwhm, (fitted.beta if fitted.kind == "moffat" else None)
            good = np.ones(len(cat), bool)
        else:
            fwhm = first_column(cat, PSF_FWHM_COLUMNS, where)
            if fwhm is None or len(cat) == 0:
                raise MorphllrError(f"{where}: the set's catalogue has no psf_fwhm_arcsec column to draw PSFs from"
                                    f"{' (its Sérsic fits used no PSF)' if no_psf_fit else ''}; add one (prepare "
                                    "--catalog), fit it with a PSF (fit-sersic --psf-fwhm), or give --psf-fwhm instead")
            beta = first_column(cat, PSF_BETA_COLUMNS, where)
            good = np.isfinite(fwhm) & (fwhm > 0)
        z = first_column(cat, ("redshift",), where)
        if need_redshift:
            if z is None:
                raise MorphllrError(f"{where}: no `redshift` column to draw redshifts from; drop "
                                    "--match-redshift or add the column")
            good &= np.isfinite(z) & (z > 0)
        if not good.any():
            raise MorphllrError(f"{where}: no galaxy has a usable PSF FWHM{' and redshift' if need_redshift else ''}")

        def column(names):
            values = first_column(cat, names, where)
            return None if values is None else values[good]

        extra = {}
        if fitted is not None:
            extra = {"psf_kind": fitted.kind if fitted.kind != "image" else None, "psf_image": fitted.pixels,
                     "psf_image_scale": fitted.pixel_scale if fitted.kind == "image" else None,
                     "psf_from": f"its Sérsic fits' PSF: {describe_psf(fitted.record)}", "psf_record": fitted.record}
        return cls(str(path), np.asarray(cat["id"]).astype(str)[good], fwhm[good],
                   None if beta is None else beta[good], column(("sky_sigma",)), column(("gain",)),
                   None if z is None else z[good], None if zero_point is None else float(zero_point), **extra)


def _catalog_lookup(catalog, ids: list[str], where: str = "--catalog"):
    """Per-galaxy float columns of a user catalogue (None where absent), matched by id."""
    if catalog is None:
        return {}
    rows = {str(v): i for i, v in enumerate(catalog["id"])}
    index = np.array([rows.get(i, -1) for i in ids])
    out = {}
    for key, names in (("redshift", ("redshift",)), ("psf_fwhm", PSF_FWHM_COLUMNS), ("psf_beta", PSF_BETA_COLUMNS),
                       ("sky_sigma", ("sky_sigma",)), ("gain", ("gain",))):
        try:
            values = first_column(catalog, names, where)
        except MorphllrError:
            raise  # names the column, the row and the value
        except (TypeError, ValueError):
            raise MorphllrError(f"{where}: column {names[0]!r} is not numeric; fix its values") from None
        if values is None:
            continue
        if key == "psf_beta":
            bad = np.isfinite(values) & ((values < PSF_BETA_MIN) | (values > PSF_BETA_MAX)) | np.isinf(values)
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise MorphllrError(f"{where}: column psf_beta holds {values[row]:g} in row {row + 1} (id "
                                    f"{catalog['id'][row]}), not a Moffat index from {PSF_BETA_MIN:g} to "
                                    f"{PSF_BETA_MAX:g}; fix it or leave the cell empty for the default")
        out[key] = np.where(index >= 0, values[np.maximum(index, 0)], np.nan)
    return out


@claims({"out": "--out"}, inputs=("inputs", "catalog", "match", "sky_patches", "psf_image", "preset"))
def make_mock_set(inputs, out, *, preset="zanisi21", redshift: float | None = None,
                  sim_pixel_kpc: float | None = None, pixel_scale=None, psf_fwhm=None, psf=None, psf_beta=None,
                  psf_image=None, zero_point=None, working_zero_point=None, sky_sigma=None, gain=None,
                  sky_patches=None, catalog=None, match=None, match_redshift: bool = False, bands=None,
                  cosmology: str | None = None, repeat: int = 1, seed: int = 0, overwrite: bool = False,
                  progress=None, recipe_source: str | None = None) -> dict:
    """``morphllr mock``: observe idealised images and write them as an ImageSet.

    Args:
        inputs: files, folders or globs of idealised images (SKIRT cubes, mag/arcsec^2 maps).
        out: output ``.h5``.
        preset: preprocessing preset name, recipe file, dict or Preprocessing (e.g. a
            model's, for ``--like``); survey defaults from :data:`SURVEY_PRESETS` by its name.
        redshift: target redshift for all (None: catalogue / match / each image's own).
        sim_pixel_kpc: physical pixel size overriding the headers.
        pixel_scale, psf_fwhm, psf, psf_beta, sky_sigma, gain: survey overrides for all galaxies.
        psf_image: path of a PSF image sampled at the survey pixel scale (FITS or .npy).
        zero_point: AB magnitude of 1 count/s of count-rate inputs (TNG SKIRT cubes).
        working_zero_point: AB magnitude of one output flux unit (default: the preset's).
        sky_patches: sky-patch library (``morphllr sky-patches``) to insert the mocks into.
        catalog: path of a catalogue joined by id (simulation properties, and per-galaxy
            ``redshift``, ``psf_fwhm_arcsec``, ``psf_beta``, ``sky_sigma``, ``gain``).
        match: observed ImageSet to draw each mock's PSF (and noise, and with
            ``match_redshift`` the redshift) from.
        match_redshift: also draw the redshift from ``match``.
        bands: band names (``["r"]``).
        cosmology: ``Planck18`` (default) or ``realsim``.
        repeat: observe every galaxy this many times, each with its own draws of sky, noise
            and (with ``match``) PSF, as RealSim inserts a galaxy into several fields; ids get
            ``-0``, ``-1``, ... and column ``galaxy`` names the simulated galaxy.
        seed: noise seed.
        overwrite: replace ``out``.
        progress: optional callable(n_done).
        recipe_source: where ``preset`` came from, for messages (e.g. ``--like models/obs``;
            default ``--preset NAME``).  Its recipe must be one for calibrated flux: a JPEG
            recipe (``input_kind`` ``jpeg`` / ``jpeg_linear``, an un-stretch) is refused.

    Returns:
        summary dict (``n``, ``out``, settings, ``warnings``).  The set records
        ``input_kind = "flux"`` (simulations are calibrated flux).
    """
    from astropy.table import Table

    if not inputs:
        raise MorphllrError("mock: give at least one FITS file of an idealised simulation image")
    prep = as_preprocessing(preset)
    _check_flux_recipe(prep, recipe_source or f"--preset {prep.name}")
    survey = survey_settings(prep.name, prep, pixel_scale, psf_fwhm, psf, working_zero_point, sky_sigma, gain,
                             cosmology, psf_beta)
    if zero_point is not None and not math.isfinite(float(zero_point)):
        raise MorphllrError(f"--zero-point {zero_point}: must be a finite AB magnitude (of 1 count/s)")
    if not (isinstance(repeat, int) and 1 <= repeat <= 1000):
        raise MorphllrError(f"--repeat {repeat}: must be a whole number from 1 to 1000 (observations per galaxy)")
    sims = list(read_sims(inputs, bands, survey.cosmology, sim_pixel_kpc))
    galaxies = _unique_ids([s.name for s in sims])
    if repeat > 1:
        sims = [sim for _ in range(repeat) for sim in sims]
        galaxies = [g for _ in range(repeat) for g in galaxies]
        ids = [f"{g}-{k // (len(sims) // repeat)}" for k, g in enumerate(galaxies)]
    else:
        ids = galaxies
    table = read_catalog(catalog) if catalog is not None else None
    given = _catalog_lookup(table, galaxies, f"--catalog {catalog}")  # a catalogue row describes the simulated galaxy
    pool = MatchPool.from_imageset(match, need_redshift=match_redshift) if match is not None else None
    pool_psf = pool is not None and psf_image is None and psf_fwhm is None  # the match's PSFs are drawn
    if pool_psf and psf is None and pool.psf_kind is not None:  # the shape its fits used (archetypes use it too)
        survey = replace(survey, psf=pool.psf_kind)
    if pool_psf and pool.psf_image is not None and pool.psf_image_scale is not None and \
            not math.isclose(pool.psf_image_scale, survey.pixel_scale, rel_tol=1e-6):
        star = ((pool.psf_record or {}).get("image") or {}).get("file")
        raise MorphllrError(
            f"--match {match}: its Sérsic fits used the PSF image {star} sampled at {pool.psf_image_scale:g} "
            f"arcsec/pixel, but the mocks are drawn at {survey.pixel_scale:g}; draw them at --pixel-scale "
            f"{pool.psf_image_scale:g}, or give --psf-image FILE (at {survey.pixel_scale:g}) or --psf-fwhm ARCSEC")
    if pool is not None and (pool.sky_sigma is not None or pool.gain is not None) and \
            not math.isclose(pool.zero_point if pool.zero_point is not None else survey.zero_point, survey.zero_point):
        raise MorphllrError(f"--match {match}: its sky_sigma and gain are in a flux unit of AB zero point "
                            f"{pool.zero_point:g}, the mocks in {survey.zero_point:g}; match a set prepared like the "
                            "mocks (same --preset/--like)")
    library = None
    if sky_patches is not None:
        library = load_sky_library(sky_patches, "--sky-patches", size=survey.size, channels=sims[0].data.shape[0],
                                   zero_point=survey.zero_point, pixel_scale=survey.pixel_scale,
                                   fix=f"cut them with `morphllr sky-patches FRAMES --size {survey.size} --like "
                                       "MODEL_OR_SET --out SKY.npy`")
    psf_pixels = None
    if psf_image is not None:
        psf_pixels = load_psf_image(psf_image)
    draw = np.random.default_rng([int(seed), 1])  # the choices: independent of the noise stream
    rng = np.random.default_rng(seed)
    fluxes, rows, warnings = [], [], []
    for i, sim in enumerate(sims):
        place, row = _placement(i, given, pool, library, draw, redshift, psf_fwhm, psf_pixels, sky_sigma, gain,
                                match_redshift, psf_beta)
        flux, meta = observe(sim, survey, redshift=None, rng=rng, placement=place, input_zero_point=zero_point)
        if fluxes and flux.shape != fluxes[0].shape:
            raise MorphllrError(f"{sim.source}: has {flux.shape[0]} band(s) but earlier files have {fluxes[0].shape[0]}; "
                                "mock files with the same number of bands together")
        warnings.extend(meta.pop("warnings"))
        if sim.n_nonfinite:
            warnings.append(f"{sim.name}: {sim.n_nonfinite} NaN/inf pixel(s) masked as empty (column n_nonfinite)")
        meta.update(row, id=ids[i], file=sim.source)
        if repeat > 1:
            meta["galaxy"] = galaxies[i]
        fluxes.append(flux)
        rows.append(meta)
        if progress:
            progress(i + 1)
    names = list(dict.fromkeys(k for r in rows for k in r))
    out_table = Table(rows=[[r.get(k, np.nan) for k in names] for r in rows], names=names)
    join_report = None
    if table is not None:
        by_galaxy = out_table.copy()
        by_galaxy["id"] = galaxies  # repeated observations share their galaxy's row
        out_table, join_report = join_catalog(by_galaxy, table, str(catalog))
        out_table["id"] = ids
        join_report["images_without_row"] = list(dict.fromkeys(join_report["images_without_row"]))
        if join_report["images_without_row"]:
            missing = join_report["images_without_row"]
            warnings.append(f"--catalog {catalog}: {len(missing)} galaxy(ies) without a row, e.g. "
                            f"{', '.join(missing[:5])} (ids are the file names without suffix)")
    settings = {
        "psf": _psf_description(survey, psf_image, psf_fwhm, "psf_fwhm" in given, match, pool),
        "psf_settings": _psf_settings(survey, psf_image, psf_pixels, psf_fwhm, psf_beta, given, match, pool),
        "sky": library.info if library is not None else {"gaussian_sigma": survey.sky_sigma},
        "gain": survey.gain, "match": None if match is None else Path(match).name, "match_redshift": bool(match_redshift),
        "redshift": redshift if redshift is not None else "per galaxy (catalogue, match or image header)",
        "sim_pixel_kpc": sim_pixel_kpc, "bands": sims[0].bands, "seed": int(seed), "repeat": int(repeat),
        "units": sims[0].units,
        # which files chose per-galaxy values (their bytes, so an edited catalogue or set is told apart)
        "match_file": _file_record(match), "catalog": _file_record(catalog),
        "sky_sigma": survey.sky_sigma if library is None else None, "preset": prep.name,
        "pixel_scale": survey.pixel_scale, "zero_point": survey.zero_point,
        "input_zero_point": None if zero_point is None else float(zero_point), "cosmology": survey.cosmology,
        "n_inputs": len(galaxies) // int(repeat),
    }
    changes = {"zero_point": survey.zero_point, "pixel_scale": survey.pixel_scale, "cosmology": survey.cosmology,
               "mock": settings, "units": sims[0].units, "input_kind": "flux"}  # simulations are calibrated flux
    if zero_point is not None:
        changes["input_zero_point"] = float(zero_point)
    prep = prep.replace(**changes)
    write_flux_set(out, np.stack(fluxes), out_table, prep, overwrite=overwrite,
                   attrs={"mock_seed": int(seed), "mock_preset": prep.name})
    return {"n": len(fluxes), "out": str(out), "pixel_scale": survey.pixel_scale, "zero_point": survey.zero_point,
            "input_zero_point": zero_point, "cosmology": survey.cosmology, "sky": settings["sky"],
            "psf": settings["psf"], "gain": survey.gain, "catalog": join_report, "warnings": warnings}


def _file_record(path) -> dict | None:
    """File name, resolved path and sha256 of an input that chose pixels (None when not given)."""
    if path is None:
        return None

    return {"file": Path(path).name, "path": str(Path(path).resolve()), "sha256": file_sha256(path)}


def _check_flux_recipe(prep, source: str) -> None:
    """Refuse a recipe for JPEG levels: mocks are calibrated flux, and a model of JPEGs would never see flux."""
    kind = prep.input_kind
    if kind not in (None, "flux") or getattr(prep, "unstretch", "none") != "none":
        what = f"{INPUT_KIND_TEXT.get(kind, kind)} (input_kind {kind!r})" if kind not in (None, "flux") else \
            f"JPEG levels (it un-stretches them: unstretch {prep.unstretch!r})"
        raise MorphllrError(f"{source}: the recipe is for {what}, but simulations are calibrated flux; train the "
                            "models on flux data and use a flux set or model for --like (or a flux --preset, e.g. "
                            "zanisi21)")


def _psf_settings(survey: SurveySettings, psf_image, psf_pixels, psf_fwhm, psf_beta, given: dict, match,
                  pool: MatchPool | None = None) -> dict:
    """The PSF of the mocks, structured: kind, FWHM and beta with where they come from, or the image's record."""
    if psf_image is not None:
        return {"kind": "image", "image": psf_image_record(psf_image, psf_pixels, store_pixels=False)}
    if psf_fwhm is None and pool is not None and pool.psf_image is not None:
        record = {"kind": "image", "image": (pool.psf_record or {}).get("image"),
                  "from": f"--match {Path(match).name}: {pool.psf_from}"}
        if "psf_fwhm" in given:
            record["catalogue_rows"] = f"{survey.psf} of the catalogue's psf_fwhm_arcsec where it has one"
        return record
    per_galaxy = [name for name, on in (("catalogue", "psf_fwhm" in given), ("match", match is not None)) if on]
    record = {"kind": survey.psf, "fwhm_arcsec": survey.psf_fwhm,
              "fwhm_from": "--psf-fwhm" if psf_fwhm is not None else
              (" else ".join(per_galaxy) + " else default") if per_galaxy else "default"}
    if survey.psf == "moffat":
        beta_sources = [name for name, on in (("catalogue", "psf_beta" in given), ("match", match is not None)) if on]
        record["beta"] = survey.psf_beta or DEFAULT_MOFFAT_BETA
        record["beta_from"] = "--psf-beta" if psf_beta is not None else \
            (" else ".join(beta_sources) + " else default") if beta_sources else "default"
    if pool is not None:
        record["match_psf"] = pool.psf_from
    return record


def _psf_description(survey: SurveySettings, psf_image, psf_fwhm, from_catalog: bool, match,
                     pool: MatchPool | None = None) -> str:
    if psf_image is not None:
        return f"image {Path(psf_image).name}"
    if psf_fwhm is None and pool is not None and pool.psf_image is not None:
        text = f"drawn from {Path(match).name} ({pool.psf_from})"
        return f"catalogue psf_fwhm_arcsec else {text}" if from_catalog else text
    default = f"{survey.psf} FWHM {survey.psf_fwhm:g} arcsec"
    if psf_fwhm is not None or not (from_catalog or match is not None):
        return default
    sources = (["catalogue psf_fwhm_arcsec"] if from_catalog else []) + (
        [f"drawn from {Path(match).name} ({pool.psf_from})" if pool is not None else f"drawn from {Path(match).name}"]
        if match is not None else [])
    return f"{survey.psf}, FWHM per galaxy: {' else '.join(sources)} else {survey.psf_fwhm:g} arcsec"


def _unique_ids(names: list[str]) -> list[str]:
    if len(set(names)) == len(names):
        return list(names)
    return [f"{n}-{i}" for i, n in enumerate(names)]  # the same snapshot in two folders: keep ids unique


def _placement(i, given, pool, library, draw, redshift, psf_fwhm, psf_pixels, sky_sigma, gain, match_redshift,
               psf_beta=None):
    """One galaxy's PSF, sky, gain and redshift, in order: option > catalogue > match draw > default."""
    def pick(key, option):
        if option is not None:
            return float(option)
        value = given.get(key, [np.nan] * (i + 1))[i]
        return float(value) if np.isfinite(value) else None

    place = Placement(redshift=pick("redshift", redshift), psf_fwhm=pick("psf_fwhm", psf_fwhm),
                      psf_beta=pick("psf_beta", psf_beta), sky_sigma=pick("sky_sigma", sky_sigma),
                      gain=pick("gain", gain), psf_image=psf_pixels)
    row = {}
    if pool is not None:
        j = int(draw.integers(len(pool.ids)))
        row["match_id"] = str(pool.ids[j])
        if place.psf_fwhm is None and psf_pixels is None:
            if pool.psf_image is not None:  # the PSF image its Sérsic fits used, for every galaxy
                place.psf_image = pool.psf_image
            else:
                place.psf_fwhm = float(pool.psf_fwhm[j])
                if pool.psf_beta is not None and place.psf_beta is None and np.isfinite(pool.psf_beta[j]):
                    place.psf_beta = float(pool.psf_beta[j])
        if place.sky_sigma is None and pool.sky_sigma is not None and np.isfinite(pool.sky_sigma[j]):
            place.sky_sigma = float(pool.sky_sigma[j])
        if place.gain is None and pool.gain is not None and np.isfinite(pool.gain[j]):
            place.gain = float(pool.gain[j])
        if match_redshift and place.redshift is None:
            place.redshift = float(pool.redshift[j])
    if library is not None:
        k = int(draw.integers(len(library)))
        place.sky_patch = library.patches[k]
        row["sky_patch"] = k
    return place, row
