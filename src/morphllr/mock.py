"""Mock observations: idealised simulation images -> survey-like flux cutouts.

Input: noise-free, PSF-free images such as SKIRT/RealSim "idealised" maps, in AB
mag/arcsec^2 with empty lines of sight as +inf, and a physical pixel size (pc or kpc,
from the FITS header ``CDELT1``/``CTYPE1`` or an option).  The steps, in order:

1. angular pixel size: physical size x ``arcsec_per_kpc_proper(z)`` (Planck18);
2. cosmological dimming from the simulation's redshift to the target redshift,
   ``10 log10((1 + z) / (1 + z_sim))`` mag (bolometric; no K-correction);
3. flux per pixel ``10^(-0.4 (mu - ZP)) x pixel_area`` in the set's working flux unit
   (ZP = AB mag of one unit: 22.5 for nanomaggies, 28.2 for typical SDSS r counts);
4. PSF convolution and flux-conserving resampling to the survey pixel scale in one
   step (GalSim ``InterpolatedImage`` convolved with the PSF, integrated over each
   survey pixel), centred on the simulation image centre;
5. sky noise (Gaussian, ``sky_sigma`` per pixel) and shot noise (Poisson, with the
   ``gain`` in electrons per flux unit);
6. the preset's preprocessing, through :func:`morphllr.imageset.write_flux_set`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .errors import MorphllrError

#: Survey settings per preset: pixel scale (arcsec), PSF, sky noise and gain in the
#: preset's working flux unit.  zanisi21 = SDSS r: 0.396"/px, ~1.4" seeing, sky
#: ~150 DN/px with gain ~4.8 e-/DN (sigma = sqrt(150 / 4.8 + 1) ~ 5.7 DN incl. read noise).
SURVEY_PRESETS = {
    "zanisi21": {"pixel_scale": 0.396, "psf_fwhm": 1.4, "psf": "moffat", "sky_sigma": 5.7, "gain": 4.8},
}
_LENGTH_UNITS_KPC = {"pc": 1e-3, "kpc": 1.0, "mpc": 1e3}


@dataclass
class SurveySettings:
    """How the mock is observed (all in the output set's working flux unit)."""

    pixel_scale: float  # arcsec per survey pixel
    psf_fwhm: float  # arcsec
    psf: str = "moffat"
    zero_point: float = 22.5  # AB mag of one working flux unit
    sky_sigma: float = 0.0  # per-pixel Gaussian sky noise
    gain: float | None = None  # electrons per flux unit (None: no shot noise)
    size: int = 128  # side of the output cutout, survey pixels


@dataclass
class SimImage:
    """One idealised image with what is needed to observe it."""

    name: str
    mag_arcsec2: np.ndarray  # (C, H, W); +inf = empty
    pixel_kpc: float
    redshift: float | None  # redshift the surface brightnesses refer to (header), or None


# --------------------------------------------------------------------------- reading
def read_sim_fits(path, pixel_kpc: float | None = None) -> SimImage:
    """Read an idealised simulation image (AB mag/arcsec^2) from FITS.

    Args:
        path: FITS file, 2-D image or (C, H, W) cube in the first HDU with data.
        pixel_kpc: physical pixel size in kpc, overriding the header.

    Returns:
        :class:`SimImage`.
    """
    from astropy.io import fits

    path = Path(path)
    if not path.is_file():
        raise MorphllrError(f"{path}: file not found")
    try:
        with fits.open(path) as hdul:
            hdu = next((h for h in hdul if h.data is not None), None)
            if hdu is None:
                raise MorphllrError(f"{path}: no image data in any HDU")
            data = np.asarray(hdu.data, dtype=np.float64)
            header = hdu.header
    except OSError as exc:
        raise MorphllrError(f"{path}: not a readable FITS file ({exc})") from None
    bunit = str(header.get("BUNIT", "")).lower().replace(" ", "")
    if bunit and "mag" not in bunit:
        raise MorphllrError(f"{path}: BUNIT is {header['BUNIT']!r}, expected AB mag/arcsec2 (SKIRT/RealSim idealised "
                            "images); convert the image to mag/arcsec^2 first")
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3:
        raise MorphllrError(f"{path}: image has shape {data.shape}; expected (H, W) or (C, H, W)")
    if np.isnan(data).any() or np.isneginf(data).any():
        raise MorphllrError(f"{path}: contains NaN or -inf surface brightness; empty pixels must be +inf "
                            "(zero flux); fix the file")
    if pixel_kpc is None:
        pixel_kpc = _header_pixel_kpc(header, path)
    z = header.get("REDSHIFT", header.get("Z"))
    return SimImage(name=path.stem, mag_arcsec2=data, pixel_kpc=float(pixel_kpc),
                    redshift=None if z is None else float(z))


def _header_pixel_kpc(header, path) -> float:
    cdelt = header.get("CDELT1")
    unit = str(header.get("CTYPE1", header.get("CUNIT1", ""))).strip().lower()
    if cdelt is None or unit not in _LENGTH_UNITS_KPC:
        raise MorphllrError(f"{path}: header gives no physical pixel size (CDELT1 with CTYPE1/CUNIT1 pc or kpc); "
                            "pass --sim-pixel-kpc KPC")
    return abs(float(cdelt)) * _LENGTH_UNITS_KPC[unit]


# --------------------------------------------------------------------------- physics
def arcsec_per_kpc(redshift: float) -> float:
    """Angular size of one proper kpc at ``redshift`` (Planck18 cosmology).

    Args:
        redshift: > 0.

    Returns:
        arcsec per kpc.
    """
    from astropy.cosmology import Planck18

    if not np.isfinite(redshift) or redshift <= 0:
        raise MorphllrError(f"--redshift: {redshift!r} must be > 0 (a galaxy at z = 0 has no angular size); "
                            "e.g. --redshift 0.046")
    return float(Planck18.arcsec_per_kpc_proper(redshift).value)


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


def psf_resample(flux: np.ndarray, in_scale: float, survey: SurveySettings, psf=None) -> np.ndarray:
    """Convolve with the PSF and resample to the survey grid, conserving flux.

    Args:
        flux: (H, W) flux per pixel at ``in_scale`` arcsec/px.
        in_scale: input pixel scale, arcsec.
        survey: output pixel scale, size and PSF.
        psf: GalSim PSF (default: from ``survey``); pass False for no PSF.

    Returns:
        float64 (size, size) flux per survey pixel, centred on the input's centre.
    """
    import galsim

    from .psf import make_psf

    total = float(flux.sum())
    if total <= 0:
        return np.zeros((survey.size, survey.size))
    flux, in_scale = block_sum(flux, in_scale, survey.pixel_scale)
    image = galsim.InterpolatedImage(galsim.Image(np.ascontiguousarray(flux), scale=float(in_scale)),
                                     x_interpolant="lanczos3", pad_factor=2, flux=total)
    if psf is None:
        psf = make_psf(survey.psf_fwhm, survey.psf)
    obj = galsim.Convolve(image, psf) if psf is not False else image
    out = obj.drawImage(nx=survey.size, ny=survey.size, scale=survey.pixel_scale, method="auto")
    return out.array.astype(np.float64)


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


def add_noise(flux: np.ndarray, sky_sigma: float, gain: float | None, rng: np.random.Generator) -> np.ndarray:
    """Sky noise (Gaussian) plus the source's shot noise (Poisson, when ``gain`` is known)."""
    out = flux + rng.normal(0.0, sky_sigma, flux.shape) if sky_sigma > 0 else flux.copy()
    if gain is not None and gain > 0:
        electrons = np.clip(flux, 0.0, None) * gain
        out += (rng.poisson(electrons) - electrons) / gain
    return out


def observe(sim: SimImage, survey: SurveySettings, redshift: float | None = None,
            rng: np.random.Generator | None = None, noise: bool = True) -> tuple[np.ndarray, dict]:
    """Turn one idealised image into a survey-like flux cutout.

    Args:
        sim: the idealised image.
        survey: how to observe it.
        redshift: target redshift; None = the image's own (header) redshift.
        rng: random generator for the noise.
        noise: False returns the noise-free, PSF-convolved, resampled image.

    Returns:
        (float32 (C, size, size) flux cutout, metadata dict for the catalogue).
    """
    z_sim = sim.redshift
    z = z_sim if redshift is None else float(redshift)
    if z is None:
        raise MorphllrError(f"{sim.name}: the header has no REDSHIFT; pass --redshift Z")
    # surface brightnesses are those seen at z_sim (or rest-frame when unknown); dim to z
    dimming = 10.0 * math.log10((1.0 + z) / (1.0 + (z_sim or 0.0)))
    pixel_arcsec = sim.pixel_kpc * arcsec_per_kpc(z)
    rng = rng or np.random.default_rng(0)
    from .psf import make_psf

    psf = make_psf(survey.psf_fwhm, survey.psf)
    channels = []
    for band in sim.mag_arcsec2:
        clean = psf_resample(sb_to_flux(band, pixel_arcsec, survey.zero_point, dimming), pixel_arcsec, survey, psf)
        channels.append(add_noise(clean, survey.sky_sigma, survey.gain, rng) if noise else clean)
    flux = np.stack(channels).astype(np.float32)
    meta = {"id": sim.name, "redshift": z, "sim_redshift": np.nan if z_sim is None else z_sim,
            "sim_pixel_kpc": sim.pixel_kpc, "sim_pixel_arcsec": pixel_arcsec, "dimming_mag": dimming,
            "pixel_scale": survey.pixel_scale, "psf_fwhm_arcsec": survey.psf_fwhm, "zero_point": survey.zero_point,
            "sky_sigma_requested": survey.sky_sigma, "gain": np.nan if survey.gain is None else survey.gain}
    return flux, meta


# --------------------------------------------------------------------------- whole sets
def survey_settings(preset: str, prep, pixel_scale=None, psf_fwhm=None, psf=None, zero_point=None,
                    sky_sigma=None, gain=None) -> SurveySettings:
    """Survey settings from a preset, with any option overriding it.

    Args:
        preset: key of :data:`SURVEY_PRESETS` (or a preprocessing preset without survey defaults).
        prep: the output set's Preprocessing (gives the cutout size and working zero point).
        pixel_scale, psf_fwhm, psf, zero_point, sky_sigma, gain: overrides (None = preset).

    Returns:
        :class:`SurveySettings`.
    """
    base = dict(SURVEY_PRESETS.get(preset, {}))
    chosen = {"pixel_scale": pixel_scale, "psf_fwhm": psf_fwhm, "psf": psf, "sky_sigma": sky_sigma, "gain": gain}
    base.update({k: v for k, v in chosen.items() if v is not None})
    base.setdefault("pixel_scale", prep.pixel_scale)
    for key, hint in (("pixel_scale", "--pixel-scale 0.396"), ("psf_fwhm", "--psf-fwhm 1.4"),
                      ("sky_sigma", "--sky-sigma SIGMA")):
        if base.get(key) is None:
            raise MorphllrError(f"preset {preset!r} has no {key.replace('_', ' ')}; pass {hint}")
    zp = zero_point if zero_point is not None else (prep.zero_point if prep.zero_point is not None else 22.5)
    if base["sky_sigma"] < 0 or (base.get("gain") is not None and base["gain"] <= 0):
        raise MorphllrError("--sky-sigma must be >= 0 and --gain > 0 (electrons per flux unit)")
    return SurveySettings(pixel_scale=float(base["pixel_scale"]), psf_fwhm=float(base["psf_fwhm"]),
                          psf=base.get("psf", "moffat"), zero_point=float(zp), sky_sigma=float(base["sky_sigma"]),
                          gain=None if base.get("gain") is None else float(base["gain"]),
                          size=int(prep.cutout or 128))


def make_mock_set(inputs, out, *, preset: str = "zanisi21", redshift: float | None = None,
                  sim_pixel_kpc: float | None = None, pixel_scale=None, psf_fwhm=None, psf=None,
                  zero_point=None, sky_sigma=None, gain=None, seed: int = 0, overwrite: bool = False,
                  progress=None) -> dict:
    """``morphllr mock``: observe idealised images and write them as an ImageSet.

    Args:
        inputs: FITS files of idealised images (mag/arcsec^2).
        out: output ``.h5``.
        preset: preprocessing preset (and survey defaults from :data:`SURVEY_PRESETS`).
        redshift: target redshift (None: each file's header REDSHIFT).
        sim_pixel_kpc: physical pixel size overriding the headers.
        pixel_scale, psf_fwhm, psf, zero_point, sky_sigma, gain: survey overrides.
        seed: noise seed.
        overwrite: replace ``out``.
        progress: optional callable(n_done).

    Returns:
        summary dict.
    """
    from astropy.table import Table

    from .imageset import write_flux_set
    from .preprocess import as_preprocessing

    if not inputs:
        raise MorphllrError("mock: give at least one FITS file of an idealised simulation image")
    prep = as_preprocessing(preset)
    survey = survey_settings(preset, prep, pixel_scale, psf_fwhm, psf, zero_point, sky_sigma, gain)
    changes = {}
    if prep.zero_point is not None and abs(prep.zero_point - survey.zero_point) > 1e-9:
        changes["zero_point"] = survey.zero_point  # recorded, so models trained in other units refuse it
    if prep.pixel_scale is not None and abs(prep.pixel_scale - survey.pixel_scale) > 1e-9:
        changes["pixel_scale"] = survey.pixel_scale
    if changes:
        prep = prep.replace(**changes)
    rng = np.random.default_rng(seed)
    fluxes, rows = [], []
    for i, path in enumerate(inputs):
        sim = read_sim_fits(path, sim_pixel_kpc)
        flux, meta = observe(sim, survey, redshift, rng)
        meta["file"] = str(path)
        if fluxes and flux.shape != fluxes[0].shape:
            raise MorphllrError(f"{path}: has {flux.shape[0]} band(s) but earlier files have {fluxes[0].shape[0]}; "
                                "mock files with the same number of bands together")
        fluxes.append(flux)
        rows.append(meta)
        if progress:
            progress(i + 1)
    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids):  # the same snapshot in two folders: keep ids unique
        for i, r in enumerate(rows):
            r["id"] = f"{r['id']}-{i}"
    table = Table(rows=[[r[k] for k in rows[0]] for r in rows], names=list(rows[0]))
    write_flux_set(out, np.stack(fluxes), table, prep, overwrite=overwrite,
                   attrs={"mock_seed": int(seed), "mock_preset": preset})
    return {"n": len(fluxes), "out": str(out), "pixel_scale": survey.pixel_scale, "zero_point": survey.zero_point,
            "sky_sigma": survey.sky_sigma, "gain": survey.gain, "psf_fwhm": survey.psf_fwhm}


def with_overrides(survey: SurveySettings, **changes) -> SurveySettings:
    """A copy of ``survey`` with some fields changed (convenience for scripts and tests)."""
    return replace(survey, **changes)
