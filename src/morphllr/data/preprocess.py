"""Preprocessing: one recorded, serialisable recipe from survey pixels to model input.

The recipe has two halves.

* **Input side** (``cut``): raw image in its own units -> (survey JPEGs: ``unstretch`` and
  ``bin`` first, :meth:`Preprocessing.linearise`) -> linear, sky-subtracted flux
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

from morphllr.data import cosmology as cosmologies
from morphllr.data.geometry import central_crop, resample_to_scale, zoom_images, zoomed_size
from morphllr.data.segmentation import background_stats, renumber, segment
from morphllr.errors import MorphllrError
from morphllr.limits import MAX_IMAGE_SIDE

UNITS = ("counts", "nanomaggies", "mag_arcsec2", "counts_per_s")
SKY_MODES = ("none", "given", "estimate")
STRETCHES = ("arcsinh", "linear", "none")
NONFINITE_MODES = ("mask", "fail")
#: What the input pixels are (``Preprocessing.input_kind``): calibrated flux (FITS, HDF5/npy flux; unit and zero
#: point recorded beside), 8-bit JPEG/PNG levels as the survey stretched them, JPEG levels linearised by a recipe
#: (e.g. ``gz2_linear``), or arrays already in the models' input space.  A model sees only its own kind.
INPUT_KINDS = ("flux", "jpeg", "jpeg_linear", "model_space")
INPUT_KIND_TEXT = {
    "flux": "calibrated flux",
    "jpeg": "8-bit JPEG/PNG levels (survey-stretched)",
    "jpeg_linear": "linearised JPEG levels",
    "model_space": "arrays already in model space",
}
#: Survey stretches a recipe can undo on the input side (``Preprocessing.unstretch``): ``asinh`` =
#: Lupton et al. (2004) 8-bit colour JPEGs (SDSS, Galaxy Zoo), flux = (255/Q) sinh(Q v/255).
UNSTRETCHES = ("none", "asinh")
#: Settings certain from a recipe's name, for recipes recorded before these keys existed: filled in where a
#: record lacks them (:func:`recorded_recipe`), by the readers of *records* only (``check_compatible``,
#: :func:`input_kind_of`, :func:`as_preprocessing` of a dict, ``--like`` of a model or set), never for a recipe
#: file (``--preset FILE``: a user's file named ``gz2_linear.toml`` is taken as written).  ``gz2_linear``: the GZ2 validation models' JPEGs were un-stretched (green channel,
#: Q = 8) and 4x4 binned by validation/gz2.sh before these keys recorded it.
KNOWN_RECIPES = {"gz2_linear": {"input_kind": "jpeg_linear", "unstretch": "asinh", "unstretch_q": 8.0, "bin": 4}}
#: Cutout windows running past the image edge: ``pad`` (sky noise, flagged) or ``refuse`` (drop the galaxy).
EDGE_MODES = ("pad", "refuse")

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
    "input_kind",
    "unstretch",
    "unstretch_q",
    "bin",
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
        nonfinite: NaN/inf pixels (not under the user's mask): ``mask`` (fill them with sky noise, mark
            them in ``/mask`` and count them) or ``fail``.
        center: move the cutout window onto the source nearest the image centre.
        pixel_scale: arcsec/px of the flux cutouts (inputs at another scale are resampled).
        cutout: side of the flux cutout in pixels (None: keep the whole image).
        pad: pad images smaller than the cutout with zero flux instead of refusing them
            (right for noise-free simulations, whose field of view ends where light ends);
            such recipes also fill windows past the edge and masked pixels with 0 flux, not sky noise.
        crop: side of the central crop taken by ``flux_to_model`` (None: no crop).
        zoom: resampling factor after the crop (0.5 = 2x2 mean).
        stretch: ``arcsinh`` (arcsinh(flux/stretch_scale)), ``linear`` (flux/stretch_scale)
            or ``none``.
        stretch_scale: flux scale of the stretch, in working flux units.
        clip_lo: lower clip after the stretch (None: none).
        clip_hi: upper clip after the stretch (None: none).
        quantise_8bit: map [clip_lo, clip_hi] onto integers 0..255 (discretized head).
        cosmology: the cosmology physical sizes were turned into angles with
            (:mod:`morphllr.data.cosmology`), or None where none was (observed data).  A model
            key compared only when both sides record one: a model trained on mocks refuses
            mocks observed under another cosmology, a model of real galaxies takes any.
        mock: how simulated images were observed (``morphllr mock``: PSF, sky, noise,
            redshift source, seed ...), or None for observed data; recorded, not compared.
        input_kind: what the input pixels are (:data:`INPUT_KINDS`): ``flux`` (calibrated, in
            ``units`` with ``zero_point``), ``jpeg`` (8-bit survey JPEG/PNG levels), ``jpeg_linear``
            (JPEG levels linearised, e.g. ``gz2_linear``) or ``model_space``.  A recipe may declare
            it; else the reader gives it (FITS/HDF5/npy -> flux, JPEG/PNG -> jpeg; arrays through an
            identity recipe -> model_space).  A model key compared only when both sides record one
            (None = unknown: recipes written before it existed, see :func:`input_kind_of`).
        edge: a cutout window running past the image edge (also: an image smaller than the cutout):
            ``pad`` (default: the missing pixels are drawn from the image's own sky, catalogue column
            ``edge_padded``; refused when more than half the cutout would be padding) or ``refuse`` (the
            galaxy is dropped and counted).  The window itself never moves.  Recipes with ``pad``
            (noise-free simulations) fill 0 flux instead, counted as ``zero_padded``, never dropped.
        read: how the inputs were read, the ``prepare`` options that choose pixels (``channel``,
            ``hdu``, ``bands``, ``input_pixel_scale``, ``mask``); recorded, not compared.
        unstretch: the survey stretch undone first, on the raw pixels (:data:`UNSTRETCHES`): ``none``
            or ``asinh`` (8-bit JPEG levels v -> flux = (255/Q) sinh(Q v/255), in units of one 8-bit
            level at the faint end; the set's pixels then are ``jpeg_linear``).  JPEG/PNG files give
            the green channel unless ``--channel`` says otherwise (green ~ SDSS r in a gri composite).
        unstretch_q: the softening Q of the ``asinh`` stretch (SDSS/Galaxy Zoo JPEGs: 8, assumed).
        bin: k x k block mean of the (un-stretched) input pixels before anything else (1 = none;
            rows and columns beyond a multiple of k are dropped); the input pixel scale grows k times.
        pixel_scale_given: ``pixel_scale`` is the inputs' own scale, given to a recipe that does not
            resample (``prepare --preset none --pixel-scale S``): recorded for Sérsic fits and PSFs, not a
            resampling step, so :func:`check_compatible` does not compare it (as for a recipe without
            ``pixel_scale``), and a recipe taken ``--like`` such a record again does not resample.
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
    input_kind: str | None = None
    edge: str = "pad"
    read: dict | None = None
    unstretch: str = "none"
    unstretch_q: float = 8.0
    bin: int = 1
    pixel_scale_given: bool = False

    def __post_init__(self) -> None:
        _check_choice("units", self.units, UNITS)
        _check_choice("unstretch", self.unstretch, UNSTRETCHES)
        if not (isinstance(self.unstretch_q, (int, float)) and math.isfinite(self.unstretch_q) and self.unstretch_q > 0):
            raise MorphllrError(f"preprocessing: unstretch_q={self.unstretch_q!r} must be a positive number "
                                "(the asinh softening Q; SDSS JPEGs: 8)")
        if isinstance(self.bin, bool) or int(self.bin) != self.bin or not 1 <= self.bin <= MAX_IMAGE_SIDE:
            raise MorphllrError(f"preprocessing: bin={self.bin!r} must be a whole number of pixels from 1 to "
                                f"{MAX_IMAGE_SIDE} (1 = no binning)")
        object.__setattr__(self, "bin", int(self.bin))
        if self.unstretch != "none" and self.input_kind not in (None, "jpeg_linear"):
            raise MorphllrError(f"preprocessing: unstretch={self.unstretch!r} makes linearised JPEG levels, but "
                                f"input_kind is {self.input_kind!r}; set input_kind = \"jpeg_linear\" or drop it")
        if self.unstretch != "none" and self.units != "counts":
            raise MorphllrError(f"preprocessing: unstretch={self.unstretch!r} works on 8-bit levels (units = "
                                f"\"counts\"), not on {self.units!r}")
        _check_choice("edge", self.edge, EDGE_MODES)
        if self.input_kind is not None:
            _check_choice("input_kind", self.input_kind, INPUT_KINDS)
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
        # no filling from KNOWN_RECIPES here: a recipe file is taken as written (records are filled by
        # check_compatible, input_kind_of, as_preprocessing of a dict and `--like`, see recorded_recipe)
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

    def is_identity(self) -> bool:
        """True when the recipe leaves the pixels as they are (the ``none`` preset): no unit
        conversion, sky, cutout, crop, zoom, stretch, clip or quantisation."""
        return (self.units == "counts" and self.sky == "none" and self.cutout is None and self.crop is None
                and self.zoom == 1 and self.stretch == "none" and self.clip_lo is None and self.clip_hi is None
                and not self.quantise_8bit and self.unstretch == "none" and self.bin == 1)

    def resolve_input_kind(self, reader_kind: str | None, source: str) -> str:
        """The input kind of one image read as ``reader_kind`` and prepared with this recipe.

        Args:
            reader_kind: what the reader knows (``flux`` for FITS, ``jpeg`` for JPEG/PNG, None
                for arrays of unknown meaning).
            source: file named in the refusal.

        Returns:
            the recipe's declared kind, else the reader's, else ``model_space`` for an identity
            recipe and ``flux`` otherwise; refuses a reader kind the recipe was not made for.
        """
        declared = self.input_kind
        if self.unstretch != "none":  # the recipe itself linearises survey-stretched levels
            if reader_kind not in (None, "jpeg"):
                raise MorphllrError(
                    f"{source}: holds {INPUT_KIND_TEXT[reader_kind]}, but the recipe {self.name!r} is for "
                    f"{INPUT_KIND_TEXT['jpeg_linear']}, which it makes from {INPUT_KIND_TEXT['jpeg']} (unstretch "
                    f"{self.unstretch!r}); {kind_advice(reader_kind, 'jpeg_linear')}")
            return "jpeg_linear"
        if declared is not None and reader_kind is not None and reader_kind != declared:
            raise MorphllrError(
                f"{source}: holds {INPUT_KIND_TEXT[reader_kind]}, but the recipe {self.name!r} is for "
                f"{INPUT_KIND_TEXT[declared]} (input_kind {declared!r}); {kind_advice(reader_kind, declared)}")
        if declared is not None:
            return declared
        if reader_kind is not None:
            return reader_kind
        return "model_space" if self.is_identity() else "flux"

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
        return zoomed_size(h, self.zoom), zoomed_size(w, self.zoom)

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
    def linearise(self, image: np.ndarray) -> np.ndarray:
        """Undo the survey's stretch and bin, the recipe's first steps (``unstretch``, ``bin``).

        Args:
            image: raw (C, H, W) pixels (8-bit levels for ``unstretch = "asinh"``).

        Returns:
            float64 (C, H // bin, W // bin): flux = (255/Q) sinh(Q v/255), then the bin x bin block
            mean; the image itself when both are off.  The operations and their order are those the
            GZ2 validation models' training inputs were made with, so their fingerprint is kept bit
            for bit.
        """
        if self.unstretch == "none" and self.bin == 1:
            return image
        x = np.asarray(image, dtype=np.float64)
        if self.unstretch == "asinh":
            q = float(self.unstretch_q)
            x = (255.0 / q) * np.sinh(q * x / 255.0)
        k = self.bin
        if k > 1:
            h, w = (s // k * k for s in x.shape[1:])
            if h == 0 or w == 0:
                raise MorphllrError(f"preprocessing: bin={k} is larger than the {x.shape[1]}x{x.shape[2]} image; "
                                    "lower bin in the recipe")
            x = np.stack([plane[:h, :w].reshape(h // k, k, w // k, k).mean(axis=(1, 3)) for plane in x])
        return x

    def _bin_mask(self, mask: np.ndarray | None) -> np.ndarray | None:
        """A bool (H, W) mask on the binned grid: a binned pixel is masked when any of its pixels is."""
        if mask is None or self.bin == 1:
            return mask
        k = self.bin
        h, w = (s // k * k for s in mask.shape)
        return mask[:h, :w].reshape(h // k, k, w // k, k).any(axis=(1, 3))

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
        mask: np.ndarray | None = None,
        outside: np.ndarray | None = None,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Raw image -> sky-subtracted linear flux at ``pixel_scale``, before cutting.

        Frames much larger than the cutout are trimmed around their centre to twice the
        cutout (``center``: the galaxy may sit off-centre) or to the cutout itself; this
        bounds the segmentation cost.  The masks go through the same resampling, padding and
        trimming as the pixels; masked, outside and NaN/inf pixels hold 0 flux here and are kept
        out of the sky estimate (:func:`cut_with_sky` then fills them with sky noise).

        Args:
            image: raw (C, H, W) or (H, W) pixels.
            source: file/id named in error messages.
            units: input units override (None: ``self.units``).
            input_pixel_scale: arcsec/px of the input (None: already at ``pixel_scale``).
            sky_value: per-image sky for ``sky="given"`` (None: ``self.sky_value``).
            mask: bool (H, W), True = pixel excluded by the user's mask (optional).
            outside: bool (H, W), True = pixel beyond the real image (a window past a frame's
                edge; not counted as NaN/inf), optional.

        Returns:
            (flux (C, H', W') float32, info dict with ``n_nonfinite`` (NaN/inf pixels neither
            user-masked nor outside), ``sky`` and the masks on the flux grid: ``mask``, ``outside``,
            ``nonfinite`` and ``padded`` (the zero flux ``pad`` adds around a small simulation),
            bool (H', W') each).
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
        if self.unstretch != "none" or self.bin != 1:  # un-stretch and bin first; the masks are binned alike
            raw_hw = image.shape[1:]
            mask = self._bin_mask(None if mask is None else _plane_mask(mask, raw_hw, source, "mask"))
            outside = self._bin_mask(None if outside is None else _plane_mask(outside, raw_hw, source, "outside"))
            image = self.linearise(image)
            if input_pixel_scale:
                input_pixel_scale = float(input_pixel_scale) * self.bin
        resamples = bool(input_pixel_scale and self.pixel_scale and not self.pixel_scale_given)
        if resamples:
            factor = float(input_pixel_scale) / float(self.pixel_scale)
            side = round(max(image.shape[1:]) * factor)
            if side > MAX_IMAGE_SIDE:
                raise MorphllrError(
                    f"{source}: at {input_pixel_scale:g} arcsec/px, resampling to the preset's {self.pixel_scale:g} "
                    f"arcsec/px would make it {side} pixels wide, more than the limit of {MAX_IMAGE_SIDE}; check the "
                    "input pixel scale (--pixel-scale or the file's header)")
        flux = self.to_flux(image, units, input_pixel_scale)
        hw = flux.shape[1:]
        masks = {"mask": _plane_mask(mask, hw, source, "mask"), "outside": _plane_mask(outside, hw, source, "outside")}
        usable = ~(masks["mask"] | masks["outside"])  # NaN under the user's mask or beyond the image: not data
        bad = ~np.isfinite(flux) & usable[None]
        n_bad = int(bad.sum())
        if n_bad and n_bad == flux[:, usable].size:
            raise MorphllrError(f"{source}: has no finite pixel (all {n_bad} are NaN/inf), so it holds no image; "
                                "remove it from the inputs or fix the file")
        if n_bad and self.nonfinite == "fail":
            raise MorphllrError(
                f"{source}: {n_bad} NaN/inf pixel(s); set nonfinite = \"mask\" in the preset to fill them with sky "
                "noise and mask them, or mask them (--mask)"
            )
        masks["nonfinite"] = bad.any(axis=0)
        excluded = ~np.isfinite(flux) | (masks["mask"] | masks["outside"])[None]
        sky = self._sky_levels(flux, excluded, sky_value, units or self.units)
        flux = flux - sky[:, None, None]
        flux[excluded] = 0.0
        if resamples and not math.isclose(input_pixel_scale, self.pixel_scale, rel_tol=1e-3):
            flux = resample_to_scale(flux, input_pixel_scale, self.pixel_scale)
            masks = {k: _resample_mask(m, flux.shape[1:]) for k, m in masks.items()}
        masks["padded"] = np.zeros(flux.shape[1:], bool)
        if self.pad and self.cutout is not None and min(flux.shape[1:]) < self.cutout:
            flux = pad_to(flux, self.cutout)  # 0 flux around a noise-free simulation: its light ends there
            masks = {k: pad_to(m[None], self.cutout, fill=(k == "padded"))[0] for k, m in masks.items()}
        # without centring only the central cutout matters; with it, allow the galaxy to be off-centre
        limit = None if self.cutout is None else (2 * self.cutout if self.center else self.cutout)
        if limit is not None and max(flux.shape[1:]) > limit:
            h, w = flux.shape[1:]
            # a crop bounding the segmentation cost, not a cutout: the central square, kept inside the image
            size = min(limit, h, w)
            top, left = (int(np.clip(round((n - 1) / 2) - size // 2, 0, n - size)) for n in (h, w))
            rows, cols = slice(top, top + size), slice(left, left + size)
            flux = flux[:, rows, cols]
            masks = {k: m[rows, cols] for k, m in masks.items()}
        info = {"n_nonfinite": n_bad, "sky": float(sky.mean()), **masks}
        return np.ascontiguousarray(flux, dtype=np.float32), info

    def cut(self, image: np.ndarray, *, source: str = "image", seed=None, segmentation: str | None = None,
            center_tolerance: float | None = None, **frame_kwargs) -> tuple[np.ndarray, dict[str, Any]]:
        """Raw image -> sky-subtracted linear flux cutout (what ``/flux`` stores).

        The frame is segmented once (masked pixels and pixels beyond the image take no part)
        when the recipe centres or ``segmentation`` asks for the map: the segmentation both
        centres the cutout (``center``) and, cut to the same window, is the cutout's
        segmentation map.  The window is never moved: where it runs past the image, and at
        masked pixels, the cutout holds noise drawn from the image's own sky
        (:func:`cut_with_sky`).

        Args:
            image: raw (C, H, W) or (H, W) pixels.
            source: file/id named in error messages.
            seed: seed of the noise filling padded and masked pixels (default: ``source``).
            segmentation: ``sep`` or ``photutils`` to return the cutout's segmentation map
                (None: none; centring then detects with ``sep``).
            center_tolerance: pixels the galaxy is known to lie within of the frame centre
                (``RawImage.center_tolerance``): centring never moves further (onto a neighbour).
            **frame_kwargs: ``units``, ``input_pixel_scale``, ``sky_value``, ``mask``, ``outside``
                (see :meth:`flux_frame`).

        Returns:
            (flux (C, cutout, cutout) float32, info dict with ``n_nonfinite``, ``sky``,
            ``center_x``, ``center_y`` (frame position of the detected centre, which the cutout's
            pixel ``cutout // 2`` holds), ``cutout_x0``, ``cutout_y0`` (frame position of the
            cutout's first pixel, negative past the edge), ``edge_padded`` (share of the cutout
            beyond the image, filled with sky noise), ``zero_padded``, ``masked_fraction``,
            ``nonfinite_fraction`` and the cutout's masks (see :func:`cut_with_sky`); with
            ``segmentation`` also ``segmap`` (int32, 0 sky, 1 central, 2.. companions),
            ``sky_sigma`` and ``central_found``).
        """
        frame, info = self.flux_frame(image, source=source, **frame_kwargs)
        _, h, w = frame.shape
        cx, cy = (w - 1) / 2, (h - 1) / 2
        seg = None
        if segmentation or self.center:
            excluded = excluded_pixels(info, padded=True)
            # a frame larger than the cutout may hold the galaxy further from its centre
            max_offset = 0.25 * min(h, w) if self.center and self.cutout and self.cutout < min(h, w) else None
            if center_tolerance is not None:  # the position is known: never re-centre on a neighbour
                max_offset = float(center_tolerance)
            seg = segment(frame, method=segmentation or "sep", max_offset=max_offset,
                          mask=excluded if excluded.any() else None)
            near = center_tolerance is None or np.hypot(seg.x - cx, seg.y - cy) <= center_tolerance
            if self.center and seg.central_found and near:  # a blend's centroid far off: keep the known position
                cx, cy = seg.x, seg.y
        cut, extra = cut_with_sky(frame, info, cx, cy, self.cutout, source, seed=source if seed is None else seed,
                                  noise_free=self.pad, max_edge=None if self.edge == "refuse" else MAX_EDGE_PADDED)
        info.update(extra, center_x=float(cx), center_y=float(cy))
        if segmentation:
            segmap = seg.segmap
            if self.cutout is not None:
                segmap = take_window(segmap, extra["cutout_y0"], extra["cutout_x0"], self.cutout)[0]
            segmap = renumber(segmap)
            info.update(segmap=segmap, sky_sigma=seg.sky_sigma,
                        central_found=bool(seg.central_found and (segmap == 1).any()))
        return cut, info

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
        levels = [background_stats(channel, mask)[0] for channel, mask in zip(flux, bad)]
        return np.asarray(levels, np.float32)


# ---------------------------------------------------------------------- array helpers



def window_origin(cx: float, cy: float, size: int) -> tuple[int, int]:
    """(top row, left column) of the ``size`` x ``size`` window whose pixel ``size // 2`` holds (cx, cy).

    The window is placed by whole pixels (no interpolation of the noise) and never moved:
    past the edge the origin is negative or the window ends beyond the image.
    """
    return int(round(cy)) - size // 2, int(round(cx)) - size // 2


def take_window(array: np.ndarray, top: int, left: int, size: int, fill=0) -> tuple[np.ndarray, np.ndarray]:
    """The ``size`` x ``size`` window at (top, left) of (..., H, W) ``array``, ``fill`` beyond its edges.

    Returns:
        (window (..., size, size), bool (size, size) True where the window lies beyond the array).
    """
    h, w = array.shape[-2:]
    out = np.full(array.shape[:-2] + (size, size), fill, dtype=array.dtype)
    beyond = np.ones((size, size), bool)
    y0, y1, x0, x1 = max(top, 0), min(top + size, h), max(left, 0), min(left + size, w)
    if y1 > y0 and x1 > x0:
        out[..., y0 - top : y1 - top, x0 - left : x1 - left] = array[..., y0:y1, x0:x1]
        beyond[y0 - top : y1 - top, x0 - left : x1 - left] = False
    return out, beyond


def fill_rng(seed) -> np.random.Generator:
    """The random stream that fills one image's padded / masked pixels (seeded by its id: reproducible)."""
    digest = hashlib.sha256(str(seed).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def fill_with_sky(cut: np.ndarray, fill: np.ndarray, frame: np.ndarray, excluded: np.ndarray, seed,
                  noise_free: bool = False) -> None:
    """Replace ``cut``'s pixels where ``fill`` by noise drawn from the frame's own sky, in place.

    Per channel the sky level and rms are measured on ``frame`` (SExtractor background,
    :func:`morphllr.data.segmentation.background_stats`, ``excluded`` pixels left out) and the
    filled pixels drawn from N(level, rms).  A noise-free image (``noise_free``: recipes with
    ``pad``, made for noise-free simulations; or a constant image) gets 0 flux: its light ends
    where the image ends.

    Args:
        cut: float32 (C, h, w) cutout, changed in place.
        fill: bool (h, w) pixels to replace.
        frame: float32 (C, H, W) flux frame the cutout came from.
        excluded: bool (H, W) frame pixels that are not sky measurements (masked, outside, NaN).
        seed: seed of :func:`fill_rng` (the image's id).
        noise_free: fill 0 flux instead.
    """
    if not fill.any():
        return
    rng = fill_rng(seed)
    n = int(fill.sum())
    for c in range(cut.shape[0]):
        sky = frame[c][~excluded]
        if noise_free or sky.size == 0 or np.ptp(sky) == 0:  # sep reports rms 1 for a constant image
            cut[c][fill] = 0.0
            continue
        level, rms = background_stats(frame[c], excluded)
        cut[c][fill] = level + rms * rng.standard_normal(n)


#: Largest share of a cutout that may lie beyond its image and be padded with sky noise; beyond it the
#: padding would dominate the cutout and the image is refused (:func:`cut_with_sky`).
MAX_EDGE_PADDED = 0.5


def excluded_pixels(info: dict, padded: bool = False) -> np.ndarray:
    """Pixels of a flux frame or cutout (:meth:`Preprocessing.flux_frame`, :func:`cut_with_sky` info) that
    are not data: user-masked, beyond the image, NaN/inf and, with ``padded``, a simulation's zero padding."""
    out = info["mask"] | info["outside"] | info["nonfinite"]
    if padded and "padded" in info:
        out = out | info["padded"]
    return out


def cut_with_sky(frame: np.ndarray, info: dict, cx: float, cy: float, size: int | None, source: str,
                 seed, noise_free: bool = False, max_edge: float | None = MAX_EDGE_PADDED
                 ) -> tuple[np.ndarray, dict[str, Any]]:
    """The cutout centred on (cx, cy), never shifted: pixels beyond the frame (and the frame's
    ``outside``, ``mask`` and NaN/inf ``nonfinite`` pixels) are filled with the frame's own sky noise
    (:func:`fill_with_sky`).  An image smaller than the cutout is padded the same way.

    Args:
        frame: float32 (C, H, W) flux frame from :meth:`Preprocessing.flux_frame`.
        info: its info dict (masks ``mask``, ``outside``, ``nonfinite``, optional ``padded``).
        cx, cy: detected centre (frame pixels).
        size: cutout side, or None to keep the whole frame.
        source: file named in messages.
        seed: seed of the fill noise (the image's id).
        noise_free: fill 0 flux instead of sky noise (``pad`` recipes: noise-free simulations); such
            pixels are counted in ``zero_padded``, not ``edge_padded``.
        max_edge: refuse a cutout with more than this share beyond the image (sky-noise padding would
            dominate it); None: never (``edge = "refuse"`` drops any such galaxy anyway).

    Returns:
        (cutout float32 (C, size, size), dict with ``mask`` (bool, user-masked pixels),
        ``outside`` (bool, pixels beyond the image), ``nonfinite`` (bool, NaN/inf pixels),
        ``padded`` (bool, 0-flux padding of a noise-free simulation: ``pad``, and with ``noise_free``
        every pixel beyond the image), ``cutout_x0``, ``cutout_y0`` and shares of the cutout:
        ``edge_padded`` (beyond the image, sky noise), ``zero_padded`` (0 flux, ``noise_free``),
        ``masked_fraction`` (inside the image, user-masked or NaN/inf, sky noise) and
        ``nonfinite_fraction`` (of those, NaN/inf)).
    """
    mask, outside, nonfinite = info["mask"], info["outside"], info["nonfinite"]
    padded = info.get("padded")
    if padded is None:
        padded = np.zeros(frame.shape[1:], bool)
    if size is None:
        top = left = 0
        cut = frame.copy()
        mask_cut, outside_cut, nonfinite_cut, padded_cut = mask.copy(), outside.copy(), nonfinite.copy(), padded.copy()
    else:
        h, w = frame.shape[1:]
        top, left = window_origin(cx, cy, size)
        cut, beyond = take_window(frame, top, left, size)
        mask_cut = take_window(mask, top, left, size, fill=False)[0]
        nonfinite_cut = take_window(nonfinite, top, left, size, fill=False)[0]
        padded_cut = take_window(padded, top, left, size, fill=False)[0]
        outside_cut = take_window(outside, top, left, size, fill=True)[0] | beyond
    if noise_free:  # a simulation's light ends where its image ends: 0 flux, not sky noise
        padded_cut = padded_cut | outside_cut
        outside_cut = np.zeros_like(outside_cut)
    edge = float(outside_cut.mean())
    if max_edge is not None and edge > max_edge:
        h, w = frame.shape[1:]
        raise MorphllrError(
            f"{source}: {edge:.0%} of the {size}x{size} cutout centred on ({cx:.1f}, {cy:.1f}) lies beyond the {h}x{w} "
            f"image, so sky-noise padding would dominate it (at most {max_edge:.0%}); use larger images, a preset "
            "with a smaller cutout, --edge refuse to drop such galaxies, or --pad for noise-free simulations")
    excluded = mask | outside | nonfinite | padded
    fill = mask_cut | outside_cut | nonfinite_cut
    fill_with_sky(cut, (fill | padded_cut) if noise_free else fill, frame, excluded, seed, noise_free)
    inside = ~outside_cut & ~padded_cut
    extra = {"mask": mask_cut, "outside": outside_cut, "nonfinite": nonfinite_cut, "padded": padded_cut,
             "cutout_x0": int(left), "cutout_y0": int(top), "edge_padded": edge,
             "zero_padded": float(padded_cut.mean()),
             "masked_fraction": float(((mask_cut | nonfinite_cut) & inside).mean()),
             "nonfinite_fraction": float((nonfinite_cut & ~mask_cut & inside).mean())}
    return np.ascontiguousarray(cut, dtype=np.float32), extra


def _plane_mask(mask, hw: tuple[int, int], source: str, what: str) -> np.ndarray:
    """A bool (H, W) mask (all False when None), refused when its shape is not the image's."""
    if mask is None:
        return np.zeros(hw, bool)
    mask = np.asarray(mask)
    if mask.shape != tuple(hw):
        raise MorphllrError(f"{source}: {what} is {'x'.join(map(str, mask.shape))} but the image is {hw[0]}x{hw[1]}; "
                            f"give a {what} of the image's shape")
    return mask.astype(bool)


def _resample_mask(mask: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """A bool mask resampled to ``out_hw``: a new pixel is masked when any masked pixel reaches it."""
    if mask.shape == tuple(out_hw) or not mask.any():
        return np.zeros(out_hw, bool) if not mask.any() else mask
    from scipy import ndimage

    h, w = mask.shape
    zoomed = ndimage.zoom(mask.astype(np.float32), (out_hw[0] / h, out_hw[1] / w), order=1, grid_mode=True,
                          mode="nearest")
    return zoomed > 1e-3


def cutout_window(shape: tuple[int, ...], cx: float, cy: float, size: int, source: str) -> tuple[slice, slice]:
    """Row and column slices of the ``size`` x ``size`` window whose pixel size//2 sits on (cx, cy).

    The window is placed by whole pixels (no interpolation of the noise) and never moved:
    a window that would run past the edge is an error (cut such galaxies with
    :func:`cut_with_sky`, which pads them with sky noise and says so); images smaller than
    ``size`` are an error.

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
    top, left = window_origin(cx, cy, size)
    if top < 0 or left < 0 or top + size > h or left + size > w:
        raise MorphllrError(
            f"{source}: the {size}x{size} window centred on ({cx:.1f}, {cy:.1f}) runs past the {h}x{w} image's edge; "
            "cut it with padding (morphllr.data.preprocess.cut_with_sky) or centre it further inside")
    return slice(top, top + size), slice(left, left + size)


def pad_to(flux: np.ndarray, size: int, fill=0) -> np.ndarray:
    """Pad (C, H, W) flux symmetrically with ``fill`` (zeros) so both sides are at least ``size``."""
    _, h, w = flux.shape
    dh, dw = max(0, size - h), max(0, size - w)
    return np.pad(flux, ((0, 0), (dh // 2, dh - dh // 2), (dw // 2, dw - dw // 2)), constant_values=fill)


def cutout_at(flux: np.ndarray, cx: float, cy: float, size: int, source: str) -> np.ndarray:
    """``size`` x ``size`` window of (C, H, W) ``flux`` centred on (cx, cy) (see :func:`cutout_window`)."""
    rows, cols = cutout_window(flux.shape, cx, cy, size, source)
    return flux[:, rows, cols]



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
    if isinstance(value, dict):  # a recorded recipe (model.json, a set's attribute): filled where certain
        return Preprocessing.from_dict(recorded_recipe(value))
    return Preprocessing.preset(str(value))


def recorded_recipe(prep: dict | None) -> dict:
    """A recorded recipe with the keys it lacks filled in where its name makes them certain.

    Records written before a key existed (``input_kind``, ``unstretch``, ``unstretch_q``, ``bin``)
    take the values :data:`KNOWN_RECIPES` gives for their ``name`` (``gz2_linear``: linearised JPEG
    levels, asinh Q = 8, 4x4 bin); a key the record has is never changed (an ``input_kind`` of None
    counts as missing).  Other names are returned as they are: their missing keys take the defaults.

    Args:
        prep: a preprocessing dict (model.json, ensemble.json, an image set's attribute, a recipe file).

    Returns:
        a new dict (empty for None).
    """
    data = dict(prep or {})
    for key, value in KNOWN_RECIPES.get(str(data.get("name", "")), {}).items():
        if data.get(key) is None:
            data[key] = value
    return data


def input_kind_of(prep: dict | None) -> str | None:
    """The input kind a recorded recipe describes: its ``input_kind``, else one certain from its
    name (:func:`recorded_recipe`: ``gz2_linear`` -> ``jpeg_linear``), else None (unknown).

    Args:
        prep: a preprocessing dict (model.json, ensemble.json, an image set's attribute).

    Returns:
        one of :data:`INPUT_KINDS` or None.
    """
    kind = recorded_recipe(prep).get("input_kind")
    return None if kind is None else str(kind)


def kind_advice(have: str, want: str) -> str:
    """The fix for images of kind ``have`` meeting a recipe or model of kind ``want``."""
    if have == "jpeg" and want == "jpeg_linear":
        return ("un-stretch the JPEGs as the recipe's own data were: a recipe with unstretch = \"asinh\" "
                "(`morphllr prepare DIR --preset gz2_linear`, or --like a model of such data), or prepare them "
                "with --preset jpeg8bit for a model trained on JPEG levels")
    if have in ("jpeg", "jpeg_linear") and want == "flux":
        return ("JPEG levels are not calibrated flux and no recipe turns one into the other: score them with a "
                "model trained on JPEGs prepared the same way, or prepare the survey's FITS images instead")
    if have == "flux" and want in ("jpeg", "jpeg_linear"):
        return ("calibrated flux is not JPEG levels and no recipe turns one into the other: prepare the files "
                "with a flux recipe (e.g. --preset zanisi21, without --like) and score them with a model trained "
                "on calibrated flux (train one on a set prepared that way)")
    return (f"a model of {INPUT_KIND_TEXT.get(want, want)} cannot describe {INPUT_KIND_TEXT.get(have, have)}: "
            "prepare and score the images with a recipe and a model made for their kind")


def _never_resamples(prep: dict) -> bool:
    """True for a recorded recipe that resamples no input: no ``pixel_scale``, or one only recorded
    (``pixel_scale_given``: the inputs' own scale given to such a recipe)."""
    return prep.get("pixel_scale") is None or bool(prep.get("pixel_scale_given", False))


def check_compatible(model_prep: dict, set_prep: dict, what: str) -> None:
    """Refuse to score/train a set prepared differently from a model's training data.

    Args:
        model_prep: the model's recorded preprocessing dict (model.json).
        set_prep: the set's preprocessing dict (empty for a bare array: not checked).
        what: names both sides for the message, e.g. ``"model obs/ vs set sims.h5"``.

    Returns:
        None; raises MorphllrError listing the differing keys and their two values.

    A bare array (empty ``set_prep``) is taken as already in the model's input space: the user
    vouches for it.  ``input_kind`` is compared only when both sides record one (or it is certain
    from the recipe's name, :func:`input_kind_of`); a different kind gets advice of its own,
    since no ``--like`` turns flux into JPEG levels or back.
    """
    if not model_prep or not set_prep:
        return  # bare arrays carry no recipe; the user vouches for them
    model_prep, set_prep = recorded_recipe(model_prep), recorded_recipe(set_prep)
    defaults = {f.name: f.default for f in dataclasses.fields(Preprocessing)}
    differing = []
    kinds = None
    for key in MODEL_KEYS:
        # a key added after a model or set was written takes the value it had then (the default)
        a, b = model_prep.get(key, defaults[key]), set_prep.get(key, defaults[key])
        if key == "input_kind":
            a, b = input_kind_of(model_prep), input_kind_of(set_prep)
            if a is None or b is None:
                continue  # recorded before input kinds existed and not certain from the name: unknown
            if a != b:
                kinds = (a, b)
        if key == "pixel_scale" and (_never_resamples(model_prep) or _never_resamples(set_prep)):
            continue  # a recipe that resamples nothing takes the inputs at their own scale (recorded or not)
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
        if kinds is not None:
            advice = (f"the first holds {INPUT_KIND_TEXT[kinds[0]]}, the second {INPUT_KIND_TEXT[kinds[1]]}: "
                      + kind_advice(kinds[1], kinds[0]))
        else:
            advice = "re-run `morphllr prepare ... --like MODEL_DIR` so the set matches the model"
        raise MorphllrError(f"{what}: prepared differently ({'; '.join(differing)}); {advice}")
