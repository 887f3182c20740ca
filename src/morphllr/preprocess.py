"""Preprocessing: one recorded, serialisable recipe from survey pixels to model input.

The recipe has two halves.

* **Input side** (``cut``): raw image in its own units -> linear, sky-subtracted flux
  cutout of ``cutout`` x ``cutout`` pixels at ``pixel_scale`` arcsec/px, centred on the
  central source.  This is what an ImageSet stores in ``/flux`` and what archetypes are
  rendered as.
* **Model side** (``flux_to_model``): flux cutout -> central ``crop`` -> ``zoom`` ->
  ``stretch`` -> clip -> optional 8-bit quantisation.  Observed cutouts and their Sérsic
  archetypes go through exactly this function, so any difference between p_obs and
  p_arch comes from the galaxies, not from the pipeline.

Models record the recipe (``to_dict``) and refuse data prepared differently
(:func:`check_compatible`).  Only the keys that change the model-input pixels are
compared (:data:`MODEL_KEYS`): a simulation in mag/arcsec^2 and an SDSS set in counts
can share a model as long as they land in the same flux unit, scale and stretch.

The ``zanisi21`` preset (Zanisi et al. 2021): 128^2 cutout at 0.396"/px, central 64^2,
2x2 mean (zoom 0.5) -> 32^2, arcsinh(flux/1000) clipped to [-1, 1], float.  The paper
clips at 1 above; below we clip at -1 (never reached by SDSS sky noise of a few counts,
so the noise distribution stays intact instead of piling up at 0, which a Gaussian head
would model badly).  The working flux unit is SDSS r counts (DN): ``zero_point`` = 28.2
is the AB magnitude of one count for a typical r-band frame (nMgyPerCount ~ 0.0052), used
to convert nanomaggies and mag/arcsec^2 inputs (e.g. simulations) into that unit.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from . import cosmology as cosmologies
from .errors import MorphllrError
from .limits import MAX_IMAGE_SIDE

UNITS = ("counts", "nanomaggies", "mag_arcsec2", "counts_per_s")
SKY_MODES = ("none", "given", "estimate")
STRETCHES = ("arcsinh", "linear", "none")
NONFINITE_MODES = ("mask", "fail")

#: Keys that change the model-input pixels; the ones :func:`check_compatible` compares.
MODEL_KEYS = (
    "zero_point",
    "pixel_scale",
    "center",
    "crop",
    "zoom",
    "stretch",
    "stretch_scale",
    "clip_lo",
    "clip_hi",
    "quantise_8bit",
    "cosmology",
)

NANOMAGGY_ZERO_POINT = 22.5  # AB magnitude of one nanomaggy, by definition


def zero_point_factor(from_zero_point: float, to_zero_point: float) -> float:
    """How many units of AB zero point ``to_zero_point`` one unit of ``from_zero_point`` is.

    A flux of 1 in a unit whose AB magnitude is ``from_zero_point`` equals
    ``10**(0.4 * (to_zero_point - from_zero_point))`` units of the other (e.g. one
    nanomaggy, 22.5, is 190.5 SDSS r counts of zero point 28.2).
    """
    return 10.0 ** (0.4 * (float(to_zero_point) - float(from_zero_point)))


@dataclass(frozen=True)
class Preprocessing:
    """The recipe from raw survey pixels to model-input images.

    Attributes:
        name: preset name (informative only).
        units: units of the *input* pixels: ``counts`` (already the working unit),
            ``nanomaggies``, ``mag_arcsec2`` or ``counts_per_s`` (a simulation product's
            count rate, e.g. TNG SKIRT cubes; needs ``input_zero_point``).
        zero_point: AB magnitude of one unit of the working flux (None: no conversion,
            only allowed when ``units`` is ``counts``).
        input_zero_point: AB magnitude of one *input* unit, for input units without a
            fixed AB definition (``counts_per_s``); recorded as given by the user.
        sky: ``none`` (already sky-subtracted), ``given`` (subtract ``sky_value``) or
            ``estimate`` (SExtractor-style sigma-clipped background level, per channel).
        sky_value: constant sky level for ``sky="given"``, in input units.
        nonfinite: NaN/inf pixels: ``mask`` (set to 0 flux and count them) or ``fail``.
        center: move the cutout window onto the source nearest the image centre.
        pixel_scale: arcsec/px of the flux cutouts (inputs at another scale are resampled).
        cutout: side of the flux cutout in pixels (None: keep the whole image).
        pad: pad images smaller than the cutout with zero flux instead of refusing them
            (right for noise-free simulations, whose field of view ends where light ends).
        crop: side of the central crop taken by ``flux_to_model`` (None: no crop).
        zoom: resampling factor after the crop (0.5 = 2x2 mean).
        stretch: ``arcsinh`` (arcsinh(flux/stretch_scale)), ``linear`` (flux/stretch_scale)
            or ``none``.
        stretch_scale: flux scale of the stretch, in working flux units.
        clip_lo: lower clip after the stretch (None: none).
        clip_hi: upper clip after the stretch (None: none).
        quantise_8bit: map [clip_lo, clip_hi] onto integers 0..255 (discretized head).
        cosmology: the cosmology physical sizes were turned into angles with
            (:mod:`morphllr.cosmology`), or None where none was (observed data).  A model
            key compared only when both sides record one: a model trained on mocks refuses
            mocks observed under another cosmology, a model of real galaxies takes any.
        mock: how simulated images were observed (``morphllr mock``: PSF, sky, noise,
            redshift source, seed ...), or None for observed data; recorded, not compared.
    """

    name: str = "custom"
    units: str = "counts"
    zero_point: float | None = None
    sky: str = "none"
    sky_value: float = 0.0
    nonfinite: str = "mask"
    center: bool = False
    pixel_scale: float | None = None
    cutout: int | None = None
    pad: bool = False
    crop: int | None = None
    zoom: float = 1.0
    stretch: str = "none"
    stretch_scale: float = 1.0
    clip_lo: float | None = None
    clip_hi: float | None = None
    quantise_8bit: bool = False
    input_zero_point: float | None = None
    cosmology: str | None = None
    mock: dict | None = None

    def __post_init__(self) -> None:
        _check_choice("units", self.units, UNITS)
        _check_choice("sky", self.sky, SKY_MODES)
        _check_choice("stretch", self.stretch, STRETCHES)
        _check_choice("nonfinite", self.nonfinite, NONFINITE_MODES)
        if self.cosmology is not None:
            object.__setattr__(self, "cosmology", cosmologies.canonical(self.cosmology))
        if self.units != "counts" and self.zero_point is None:
            raise MorphllrError(
                f"preprocessing: units={self.units!r} needs zero_point (AB mag of one working flux unit); "
                "set zero_point in the preset, e.g. 28.2 for SDSS r counts"
            )
        for key in ("cutout", "crop"):
            value = getattr(self, key)
            if value is not None and (int(value) != value or value <= 0):
                raise MorphllrError(f"preprocessing: {key}={value!r} must be a positive integer or empty")
        if not (self.zoom > 0 and math.isfinite(self.zoom)):
            raise MorphllrError(f"preprocessing: zoom={self.zoom!r} must be a positive number")
        if self.stretch_scale <= 0:
            raise MorphllrError(f"preprocessing: stretch_scale={self.stretch_scale!r} must be positive")
        if self.pixel_scale is not None and self.pixel_scale <= 0:
            raise MorphllrError(f"preprocessing: pixel_scale={self.pixel_scale!r} must be positive (arcsec/px)")
        if self.cutout is not None and self.crop is not None and self.crop > self.cutout:
            raise MorphllrError(f"preprocessing: crop={self.crop} is larger than cutout={self.cutout}")
        if self.clip_lo is not None and self.clip_hi is not None and self.clip_lo >= self.clip_hi:
            raise MorphllrError(f"preprocessing: clip_lo={self.clip_lo} must be below clip_hi={self.clip_hi}")
        if self.input_zero_point is not None and not math.isfinite(self.input_zero_point):
            raise MorphllrError(f"preprocessing: input_zero_point={self.input_zero_point!r} must be a finite AB magnitude")
        if self.quantise_8bit and (self.clip_lo is None or self.clip_hi is None):
            raise MorphllrError("preprocessing: quantise_8bit needs both clip_lo and clip_hi to map onto 0..255")

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of every field (what models and sets record).

        Returns:
            dict with one entry per dataclass field.
        """
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "preprocessing") -> "Preprocessing":
        """Build from a dict (as written by :meth:`to_dict`, a TOML or a YAML file).

        Args:
            data: field -> value; unknown keys are an error, missing keys take defaults.
            source: name used in error messages (file or argument).

        Returns:
            Preprocessing.
        """
        if not isinstance(data, dict):
            raise MorphllrError(f"{source}: expected a table of preprocessing settings, got {type(data).__name__}")
        data = dict(data.get("preprocessing", data))  # accept a [preprocessing] table
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise MorphllrError(f"{source}: unknown preprocessing key(s) {unknown}; known keys: {sorted(known)}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise MorphllrError(f"{source}: bad preprocessing settings ({exc})") from None

    @classmethod
    def from_file(cls, path: str | Path) -> "Preprocessing":
        """Read a custom recipe from a ``.toml``, ``.yaml``/``.yml`` or ``.json`` file.

        Args:
            path: file with the recipe's keys at top level or under ``[preprocessing]``.

        Returns:
            Preprocessing.
        """
        path = Path(path)
        if not path.is_file():
            raise MorphllrError(f"{path}: preset file not found; give a preset name ({', '.join(preset_names())}) "
                                "or an existing .toml/.yaml file")
        text = path.read_text()
        try:
            if path.suffix.lower() == ".toml":
                import tomllib

                data = tomllib.loads(text)
            elif path.suffix.lower() in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text)
            elif path.suffix.lower() == ".json":
                data = json.loads(text)
            else:
                raise MorphllrError(f"{path}: unknown preset format; use .toml, .yaml or .json")
        except MorphllrError:
            raise
        except Exception as exc:  # parser errors differ per library
            raise MorphllrError(f"{path}: cannot parse preset ({exc})") from None
        data = data or {}
        if isinstance(data, dict) and isinstance(data.get("preprocessing"), dict):
            data = data["preprocessing"]
        if isinstance(data, dict):
            data.setdefault("name", path.stem)
        return cls.from_dict(data, source=str(path))

    @classmethod
    def preset(cls, name: str) -> "Preprocessing":
        """A shipped preset (``zanisi21``, ``none``) or a recipe file path.

        Args:
            name: preset name or path to a .toml/.yaml/.json file.

        Returns:
            Preprocessing.
        """
        if name in preset_names():
            import tomllib

            text = resources.files("morphllr.presets").joinpath(f"{name}.toml").read_text()
            return cls.from_dict(tomllib.loads(text), source=f"preset {name}")
        if Path(name).suffix:
            return cls.from_file(name)
        raise MorphllrError(f"--preset {name}: unknown preset; choose one of {preset_names()} or give a .toml/.yaml file")

    def replace(self, **changes: Any) -> "Preprocessing":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def model_dict(self) -> dict[str, Any]:
        """The fields that change the model-input pixels (see :data:`MODEL_KEYS`)."""
        return {k: getattr(self, k) for k in MODEL_KEYS}

    def fingerprint(self) -> str:
        """Short sha256 of the model-side fields: equal fingerprints = same model space."""
        return _dict_hash(self.model_dict())

    # ------------------------------------------------------------------ shapes
    def model_shape(self, flux_hw: tuple[int, int]) -> tuple[int, int]:
        """Height and width of model images made from flux cutouts of ``flux_hw``.

        Args:
            flux_hw: (Hf, Wf) of the flux cutouts.

        Returns:
            (H, W) after crop and zoom.
        """
        h, w = flux_hw
        if self.crop is not None:
            if self.crop > min(h, w):
                raise MorphllrError(f"preprocessing: crop={self.crop} is larger than the {h}x{w} flux cutouts")
            h = w = self.crop
        return _zoomed(h, self.zoom), _zoomed(w, self.zoom)

    # ------------------------------------------------------------------ model side
    def flux_to_model(self, flux: np.ndarray) -> np.ndarray:
        """Map linear, sky-subtracted flux cutouts to model-input images.

        Args:
            flux: (B, C, Hf, Wf) (or (C, Hf, Wf) / (Hf, Wf)) flux at ``pixel_scale``, in
                working flux units.

        Returns:
            float32 (B, C, H, W) model images (same leading dims as the input).
        """
        flux = np.asarray(flux, dtype=np.float32)
        squeeze = 4 - flux.ndim
        if squeeze < 0:
            raise MorphllrError(f"flux_to_model: expected (B, C, H, W) flux, got shape {flux.shape}")
        x = flux.reshape((1,) * squeeze + flux.shape)
        if self.crop is not None:
            x = central_crop(x, self.crop)
        x = zoom_images(x, self.zoom)
        x = self._stretch(x)
        if self.quantise_8bit:
            x = np.round((x - self.clip_lo) / (self.clip_hi - self.clip_lo) * 255.0)
        x = np.ascontiguousarray(x, dtype=np.float32)
        return x.reshape(x.shape[squeeze:])

    def _stretch(self, x: np.ndarray) -> np.ndarray:
        if self.stretch == "arcsinh":
            x = np.arcsinh(x / np.float32(self.stretch_scale))
        elif self.stretch == "linear":
            x = x / np.float32(self.stretch_scale)
        if self.clip_lo is not None or self.clip_hi is not None:
            x = np.clip(x, self.clip_lo, self.clip_hi)
        return x

    # ------------------------------------------------------------------ input side
    def to_flux(self, image: np.ndarray, units: str | None = None, input_pixel_scale: float | None = None) -> np.ndarray:
        """Convert raw pixels to working flux units per pixel (before sky subtraction).

        Args:
            image: raw (C, H, W) pixels.
            units: override of ``self.units`` (a reader may know better, e.g. SKIRT mocks).
            input_pixel_scale: arcsec/px of ``image`` (needed for mag/arcsec^2).

        Returns:
            float32 (C, H, W) flux; +inf mag/arcsec^2 (empty pixels) become 0 flux.
        """
        units = units or self.units
        image = np.asarray(image, dtype=np.float64)
        if units == "counts":
            return image.astype(np.float32)
        zp = self.zero_point
        if zp is None:
            raise MorphllrError(f"preprocessing: units={units!r} needs zero_point in the preset")
        if units == "nanomaggies":
            return (image * zero_point_factor(NANOMAGGY_ZERO_POINT, zp)).astype(np.float32)
        if units == "counts_per_s":
            if self.input_zero_point is None:
                raise MorphllrError("counts/s input (e.g. TNG SKIRT cubes) has no documented AB zero point; pass "
                                    "--zero-point MAG, the AB magnitude of 1 count/s in the band")
            return (image * zero_point_factor(self.input_zero_point, zp)).astype(np.float32)
        scale = input_pixel_scale or self.pixel_scale
        if scale is None:
            raise MorphllrError("mag_arcsec2 input needs a pixel scale; pass --pixel-scale ARCSEC")
        with np.errstate(over="ignore", invalid="ignore"):
            flux = 10 ** (-0.4 * (image - zp)) * scale**2
        flux[np.isposinf(image)] = 0.0  # an empty line of sight is zero flux, not a bad pixel
        return flux.astype(np.float32)

    def flux_frame(
        self,
        image: np.ndarray,
        *,
        source: str = "image",
        units: str | None = None,
        input_pixel_scale: float | None = None,
        sky_value: float | None = None,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Raw image -> sky-subtracted linear flux at ``pixel_scale``, before cutting.

        Frames much larger than the cutout are trimmed around their centre to twice the
        cutout (``center``: the galaxy may sit off-centre) or to the cutout itself; this
        bounds the segmentation cost.

        Args:
            image: raw (C, H, W) or (H, W) pixels.
            source: file/id named in error messages.
            units: input units override (None: ``self.units``).
            input_pixel_scale: arcsec/px of the input (None: already at ``pixel_scale``).
            sky_value: per-image sky for ``sky="given"`` (None: ``self.sky_value``).

        Returns:
            (flux (C, H', W') float32, info dict with ``n_nonfinite`` and ``sky``).
        """
        image = np.asarray(image)
        if image.ndim == 2:
            image = image[None]
        if image.ndim != 3:
            raise MorphllrError(f"{source}: expected a 2-D image or (C, H, W) cube, got shape {image.shape}")
        if max(image.shape[1:]) > MAX_IMAGE_SIDE:
            raise MorphllrError(f"{source}: image is {image.shape[1]}x{image.shape[2]} pixels, more than the limit of "
                                f"{MAX_IMAGE_SIDE} per side; cut the galaxy out first (or prepare SDSS frames with "
                                "--catalog positions)")
        if input_pixel_scale and self.pixel_scale:
            factor = float(input_pixel_scale) / float(self.pixel_scale)
            side = round(max(image.shape[1:]) * factor)
            if side > MAX_IMAGE_SIDE:
                raise MorphllrError(
                    f"{source}: at {input_pixel_scale:g} arcsec/px, resampling to the preset's {self.pixel_scale:g} "
                    f"arcsec/px would make it {side} pixels wide, more than the limit of {MAX_IMAGE_SIDE}; check the "
                    "input pixel scale (--pixel-scale or the file's header)")
        flux = self.to_flux(image, units, input_pixel_scale)
        bad = ~np.isfinite(flux)
        n_bad = int(bad.sum())
        if n_bad == bad.size:
            raise MorphllrError(f"{source}: has no finite pixel (all {n_bad} are NaN/inf), so it holds no image; "
                                "remove it from the inputs or fix the file")
        if n_bad and self.nonfinite == "fail":
            raise MorphllrError(
                f"{source}: {n_bad} NaN/inf pixel(s); set nonfinite = \"mask\" in the preset to replace them by 0 flux"
            )
        sky = self._sky_levels(flux, bad, sky_value, units or self.units)
        flux = flux - sky[:, None, None]
        flux[bad] = 0.0
        if input_pixel_scale and self.pixel_scale and not math.isclose(input_pixel_scale, self.pixel_scale, rel_tol=1e-3):
            flux = resample_to_scale(flux, input_pixel_scale, self.pixel_scale)
        if self.pad and self.cutout is not None and min(flux.shape[1:]) < self.cutout:
            flux = pad_to(flux, self.cutout)
        # without centring only the central cutout matters; with it, allow the galaxy to be off-centre
        limit = None if self.cutout is None else (2 * self.cutout if self.center else self.cutout)
        if limit is not None and max(flux.shape[1:]) > limit:
            h, w = flux.shape[1:]
            flux = cutout_at(flux, (w - 1) / 2, (h - 1) / 2, min(limit, h, w), source)
        info = {"n_nonfinite": n_bad, "sky": float(sky.mean())}
        return np.ascontiguousarray(flux, dtype=np.float32), info

    def cut(self, image: np.ndarray, *, source: str = "image", **frame_kwargs) -> tuple[np.ndarray, dict[str, Any]]:
        """Raw image -> sky-subtracted linear flux cutout (what ``/flux`` stores).

        Args:
            image: raw (C, H, W) or (H, W) pixels.
            source: file/id named in error messages.
            **frame_kwargs: ``units``, ``input_pixel_scale``, ``sky_value`` (see :meth:`flux_frame`).

        Returns:
            (flux (C, cutout, cutout) float32, info dict with ``n_nonfinite``, ``sky``,
            ``center_x``, ``center_y`` (frame position of the cutout centre)).
        """
        frame, info = self.flux_frame(image, source=source, **frame_kwargs)
        cy, cx = (frame.shape[1] - 1) / 2, (frame.shape[2] - 1) / 2
        if self.center:
            from .segmentation import find_central_source

            found = find_central_source(frame.sum(axis=0))
            if found is not None:
                cx, cy = found
        if self.cutout is not None:
            frame = cutout_at(frame, cx, cy, self.cutout, source)
        info.update(center_x=float(cx), center_y=float(cy))
        return np.ascontiguousarray(frame), info

    def _sky_levels(self, flux: np.ndarray, bad: np.ndarray, sky_value: float | None, units: str) -> np.ndarray:
        """Per-channel sky level in working flux units."""
        n_channels = flux.shape[0]
        if self.sky == "none":
            return np.zeros(n_channels, np.float32)
        if self.sky == "given":
            # the given sky is in input units; convert it like the pixels
            value = self.sky_value if sky_value is None else sky_value
            value = float(self.to_flux(np.full((1, 1, 1), value), units, self.pixel_scale)[0, 0, 0])
            return np.full(n_channels, value, np.float32)
        from .segmentation import background_stats

        levels = [background_stats(channel, mask)[0] for channel, mask in zip(flux, bad)]
        return np.asarray(levels, np.float32)


# ---------------------------------------------------------------------- array helpers
def central_crop(x: np.ndarray, size: int) -> np.ndarray:
    """Central ``size`` x ``size`` crop of (..., H, W) images (centre pixel H//2 stays central)."""
    h, w = x.shape[-2:]
    if size > h or size > w:
        raise MorphllrError(f"cannot crop {size}x{size} from {h}x{w} images; lower crop or enlarge the cutout")
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top : top + size, left : left + size]


def zoom_images(x: np.ndarray, zoom: float) -> np.ndarray:
    """Resample (B, C, H, W) images by ``zoom``, preserving surface brightness.

    An integer shrink (zoom = 1/k) is a k x k block mean, exactly as in the paper;
    other factors use linear interpolation (scipy.ndimage.zoom).
    """
    if zoom == 1:
        return x
    inverse = 1.0 / zoom
    k = round(inverse)
    b, c, h, w = x.shape
    if math.isclose(inverse, k, rel_tol=1e-9) and h % k == 0 and w % k == 0:
        return x.reshape(b, c, h // k, k, w // k, k).mean(axis=(3, 5))
    from scipy import ndimage

    out_h, out_w = _zoomed(h, zoom), _zoomed(w, zoom)
    out = np.empty((b, c, out_h, out_w), np.float32)
    for i in range(b):
        for j in range(c):
            out[i, j] = ndimage.zoom(x[i, j], (out_h / h, out_w / w), order=1, grid_mode=True, mode="nearest")
    return out


def resample_to_scale(flux: np.ndarray, from_scale: float, to_scale: float) -> np.ndarray:
    """Resample (C, H, W) per-pixel flux from ``from_scale`` to ``to_scale`` arcsec/px.

    Flux per pixel scales with pixel area, so the total flux is preserved.
    """
    from scipy import ndimage

    factor = from_scale / to_scale
    c, h, w = flux.shape
    out_h, out_w = max(1, round(h * factor)), max(1, round(w * factor))
    area = (to_scale / from_scale) ** 2
    out = np.empty((c, out_h, out_w), np.float32)
    for j in range(c):
        smooth = flux[j]
        if factor < 1:  # shrinking: average over the new pixel first so no flux is aliased away
            smooth = ndimage.uniform_filter(flux[j], size=max(1, round(1 / factor)), mode="nearest")
        out[j] = ndimage.zoom(smooth, (out_h / h, out_w / w), order=1, grid_mode=True, mode="nearest") * area
    return out


def cutout_window(shape: tuple[int, ...], cx: float, cy: float, size: int, source: str) -> tuple[slice, slice]:
    """Row and column slices of the ``size`` x ``size`` window whose pixel size//2 sits on (cx, cy).

    The window moves by whole pixels (no interpolation of the noise).  Windows that run
    past the edge are shifted back inside; images smaller than ``size`` are an error.

    Args:
        shape: (..., H, W) of the frame.
        cx, cy: column and row of the wanted centre.
        size: window side in pixels.
        source: file/id for the error message.

    Returns:
        (row slice, column slice).
    """
    h, w = shape[-2:]
    if h < size or w < size:
        raise MorphllrError(
            f"{source}: image is {h}x{w} pixels, smaller than the {size}x{size} cutout; "
            "use larger images, a preset with a smaller cutout, or --pad (zero flux around simulations)"
        )
    top = int(np.clip(round(cy) - size // 2, 0, h - size))
    left = int(np.clip(round(cx) - size // 2, 0, w - size))
    return slice(top, top + size), slice(left, left + size)


def pad_to(flux: np.ndarray, size: int) -> np.ndarray:
    """Pad (C, H, W) flux symmetrically with zeros so both sides are at least ``size``."""
    _, h, w = flux.shape
    dh, dw = max(0, size - h), max(0, size - w)
    return np.pad(flux, ((0, 0), (dh // 2, dh - dh // 2), (dw // 2, dw - dw // 2)))


def cutout_at(flux: np.ndarray, cx: float, cy: float, size: int, source: str) -> np.ndarray:
    """``size`` x ``size`` window of (C, H, W) ``flux`` centred on (cx, cy) (see :func:`cutout_window`)."""
    rows, cols = cutout_window(flux.shape, cx, cy, size, source)
    return flux[:, rows, cols]


def _zoomed(n: int, zoom: float) -> int:
    return max(1, int(round(n * zoom)))


def _check_choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise MorphllrError(f"preprocessing: {key}={value!r} is not one of {list(choices)}")


def _dict_hash(data: dict[str, Any]) -> str:
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------- presets and checks
def preset_names() -> list[str]:
    """Names of the presets shipped in ``morphllr/presets`` (TOML files)."""
    folder = resources.files("morphllr.presets")
    return sorted(p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml"))


def as_preprocessing(value: "Preprocessing | dict | str | None") -> Preprocessing:
    """Accept a Preprocessing, its dict, a preset name / file, or None (= ``none`` preset)."""
    if value is None:
        return Preprocessing.preset("none")
    if isinstance(value, Preprocessing):
        return value
    if isinstance(value, dict):
        return Preprocessing.from_dict(value)
    return Preprocessing.preset(str(value))


def check_compatible(model_prep: dict, set_prep: dict, what: str) -> None:
    """Refuse to score/train a set prepared differently from a model's training data.

    Args:
        model_prep: the model's recorded preprocessing dict (model.json).
        set_prep: the set's preprocessing dict (empty for a bare array: not checked).
        what: names both sides for the message, e.g. ``"model obs/ vs set sims.h5"``.

    Returns:
        None; raises MorphllrError listing the differing keys and their two values.
    """
    if not model_prep or not set_prep:
        return  # bare arrays carry no recipe; the user vouches for them
    defaults = {f.name: f.default for f in dataclasses.fields(Preprocessing)}
    differing = []
    for key in MODEL_KEYS:
        # a key added after a model or set was written takes the value it had then (the default)
        a, b = model_prep.get(key, defaults[key]), set_prep.get(key, defaults[key])
        if key == "cosmology":
            if a is None or b is None:
                continue  # pixels of observed data depend on no cosmology
            a, b = cosmologies.canonical(a), cosmologies.canonical(b)
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
            same = math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-12)
        else:
            same = a == b
        if not same:
            differing.append(f"{key}: {a!r} vs {b!r}")
    if differing:
        raise MorphllrError(
            f"{what}: prepared differently ({'; '.join(differing)}); "
            "re-run `morphllr prepare ... --like MODEL_DIR` so the set matches the model"
        )
