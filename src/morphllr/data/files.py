"""Readers: survey and simulation files -> raw images with what we know about them.

Every reader yields :class:`~morphllr.data.raw_image.RawImage` records (raw pixels as (C, H, W), an id, the
file they came from, and - when the file says so - their units and pixel scale).
:meth:`morphllr.data.preprocess.Preprocessing.cut` then turns them into flux cutouts.

Supported inputs (a file, a folder, or a glob; folders are searched recursively):

* FITS images (``.fits``, ``.fit``, ``.fts``, optionally ``.gz``): the HDU given by
  ``hdu`` (index or EXTNAME), else the first HDU holding an image.  A 3-D HDU is a cube
  of N single-band images.  ``BUNIT`` tells the units (``mag/arcsec2``, ``nanomaggies``),
  the pixel scale comes from ``FOVARC`` (arcsec across the image), a celestial WCS, or a
  physical ``CDELT`` in pc/kpc plus ``REDSHIFT`` (Planck18 cosmology).
* IllustrisTNG / Illustris SKIRT broadband cubes (Rodriguez-Gomez et al. 2019; the TNG
  public "SKIRT synthetic images"): one FITS per subhalo holding a (bands, N, N) cube with
  ``FILTER0..k`` naming the bands (``sloan/sdss_r``), ``BUNIT = counts/s/pixel``,
  ``PIXSCALE`` (arcsec/px as seen at ``USE_Z``), ``CDELT1`` (pc) and ``USE_Z`` (the
  redshift the images are already seen at).  A band cube is one galaxy: choose bands by
  name (``bands=["r"]`` matches ``sloan/sdss_r``); several bands give (C, H, W).  The
  count rate has no AB zero point in the files, and none was found documented for these
  products, so it needs ``input_zero_point`` (``--zero-point``: AB mag of 1 count/s).
* Idealised images in AB mag/arcsec^2 (SKIRT/RealSim; +inf where no light: becomes zero
  flux), a cube or one file per band (``photo_r_NAME.fits``): with several bands, files
  that differ only in the band token are stacked into one galaxy.
* HDF5 datasets (``.h5``, ``.hdf5``): the dataset named by ``hdu`` or the only/first
  array of 3 or 4 dimensions; ``.npy`` / ``.npz`` arrays: (N, H, W), (N, C, H, W) or (H, W).
* JPEG / PNG: one 8-bit channel (``channel``; default 1 = green, closest to SDSS r in a
  gri colour composite).  Beware: survey JPEGs are already arcsinh-stretched and
  clipped to 8 bits, so their values are not linear flux; use a preset that does not
  stretch again (``jpeg8bit``) and compare only with images made the same way.

Masks: a FITS file whose name holds the token ``_mask`` (``NAME_mask.fits``,
``NAME_mask_cutout.fits``) is the mask of the image named without it (``NAME.fits``,
``NAME_cutout.fits``) in the same folder, wherever the files come from (folder, glob or
named); nonzero (or NaN) = excluded pixel, as in imfit/SExtractor.  ``--mask FILE_OR_DIR``
gives masks explicitly (:func:`mask_plan`).  Records carry the mask (``RawImage.mask``).

Catalogues are read and joined by :mod:`morphllr.data.catalog`.
"""

from __future__ import annotations

import glob as globlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from morphllr.data import sdss_frames as frames
from morphllr.data.imageset import FORMAT as IMAGESET_FORMAT
from morphllr.data.preprocess import input_kind_of
from morphllr.data.raw_image import RawImage
from morphllr.errors import MorphllrError
from morphllr.data.cosmology import arcsec_per_kpc

FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz", ".fits.bz2", ".fit.bz2")
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")
NPY_SUFFIXES = (".npy", ".npz")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
ALL_SUFFIXES = FITS_SUFFIXES + HDF5_SUFFIXES + NPY_SUFFIXES + IMAGE_SUFFIXES


# ---------------------------------------------------------------------- input expansion
def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in ALL_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return path.suffix.lower()


def _is_supported(path: Path) -> bool:
    return _suffix(path) in ALL_SUFFIXES


def expand_inputs(inputs: list[str | os.PathLike], exclude: list[Path] | None = None) -> list[Path]:
    """Turn files, folders (recursive) and globs into a sorted list of image files.

    Mask files (``NAME_mask.fits``) are not images: they are paired with their image
    (:func:`expand_inputs_with_masks`) and left out; a mask without its image is refused.

    Args:
        inputs: what the user typed.
        exclude: files to leave out (e.g. the output file or a catalogue in the folder).

    Returns:
        sorted, de-duplicated supported image files.
    """
    return expand_inputs_with_masks(inputs, exclude)[0]


def expand_inputs_with_masks(inputs: list[str | os.PathLike],
                             exclude: list[Path] | None = None) -> tuple[list[Path], dict[Path, Path]]:
    """Like :func:`expand_inputs`, plus the mask files found among the inputs, paired with their images.

    Args:
        inputs: what the user typed.
        exclude: files to leave out.

    Returns:
        (image files, {image file: its mask file}).
    """
    files = _expand_all(inputs, exclude)
    masks = [p for p in files if is_mask_file(p)]
    images = [p for p in files if not is_mask_file(p)]
    by_key = {(p.resolve().parent, _stem(p).lower()): p for p in images}
    pairs: dict[Path, Path] = {}
    for m in masks:
        image = by_key.get((m.resolve().parent, mask_image_stem(m).lower()))
        if image is None:
            raise MorphllrError(f"{m}: a mask file (its name holds _mask) but its image {mask_image_stem(m)}.fits is "
                                "not among the inputs; give the image too, pass masks with --mask, or rename the file "
                                "if it is a galaxy image")
        if image in pairs:
            raise MorphllrError(f"{m}: a second mask for {image} (also {pairs[image]}); keep one mask per image")
        pairs[image] = m
    if not images:
        raise MorphllrError(f"{' '.join(map(str, inputs))}: only mask files, no input images found")
    return images, pairs


def _expand_all(inputs: list[str | os.PathLike], exclude: list[Path] | None = None) -> list[Path]:
    """Files, folders (recursive) and globs -> supported files, masks included, in order, de-duplicated."""
    excluded = {p.resolve() for p in (exclude or [])}
    files: list[Path] = []
    for item in inputs:
        item = str(item)
        path = Path(item).expanduser()
        if path.is_dir():
            found = [p for p in sorted(path.rglob("*")) if p.is_file() and _is_supported(p) and not p.name.startswith(".")]
            if not found:
                raise MorphllrError(f"{path}: folder holds no FITS/HDF5/npy/JPEG/PNG files; check the path")
            files.extend(found)
        elif path.is_file():
            if not _is_supported(path):
                raise MorphllrError(f"{path}: unsupported file type; use FITS, HDF5, .npy/.npz, JPEG or PNG")
            files.append(path)
        elif any(ch in item for ch in "*?["):
            found = [Path(p) for p in sorted(globlib.glob(item, recursive=True)) if Path(p).is_file()]
            found = [p for p in found if _is_supported(p)]
            if not found:
                raise MorphllrError(f"{item}: pattern matches no FITS/HDF5/npy/JPEG/PNG files")
            files.extend(found)
        else:
            raise MorphllrError(f"{item}: no such file or folder")
    unique = []
    seen = set()
    for p in files:
        key = p.resolve()
        if key not in seen and key not in excluded:
            seen.add(key)
            unique.append(p)
    if not unique:
        raise MorphllrError(f"{' '.join(map(str, inputs))}: no input images found")
    return unique


_MASK_TOKEN = r"_mask(?=$|[_.\-])"


def is_mask_file(path: Path) -> bool:
    """Bad-pixel masks shipped next to images (``NAME_mask.fits``, ``NAME_mask_cutout.fits``) are not galaxies.

    The token ``_mask`` must stand alone (``gal_masked.fits`` is an image).
    """
    return _suffix(Path(path)) in FITS_SUFFIXES and re.search(_MASK_TOKEN, _stem(Path(path)).lower()) is not None


def mask_image_stem(path: Path) -> str:
    """The stem of the image a mask file belongs to: its own stem without the ``_mask`` token."""
    return re.sub(_MASK_TOKEN, "", _stem(Path(path)), count=1, flags=re.IGNORECASE)


def read_mask_file(path: Path, hdu=None) -> np.ndarray:
    """A mask file as bool, True = excluded pixel (nonzero or NaN, the imfit/SExtractor convention).

    Args:
        path: FITS (first image HDU, or ``hdu``), ``.npy``/``.npz`` or HDF5 file; 2-D, or 3-D for
            one plane per image of a cube or array file.

    Returns:
        bool (H, W) or (N, H, W).
    """
    path = Path(path)
    if not path.is_file():
        raise MorphllrError(f"--mask {path}: file not found; give an existing mask file or a folder of NAME_mask.fits")
    kind = _suffix(path)
    if kind in FITS_SUFFIXES:
        with _fits_open(path) as hdul:
            chosen = _fits_hdu(hdul, path, hdu)
            try:
                data = np.asarray(chosen.data)
            except (OSError, ValueError, TypeError) as exc:
                raise MorphllrError(f"--mask {path}: cannot read the mask ({exc}); the file is truncated or corrupt") from None
    elif kind in NPY_SUFFIXES:
        data = np.asarray(_load_npy(path, None))
    elif kind in HDF5_SUFFIXES:
        with _open_h5(path) as f:
            import h5py

            found = []
            f.visititems(lambda n, o: found.append(o) if isinstance(o, h5py.Dataset) and o.ndim in (2, 3) else None)
            if len(found) != 1:
                raise MorphllrError(f"--mask {path}: expected one 2-D or 3-D dataset, found {len(found)}; "
                                    "write the mask alone into the file")
            data = np.asarray(found[0][()])
    else:
        raise MorphllrError(f"--mask {path}: unsupported mask file; use FITS, .npy/.npz or HDF5 (nonzero = excluded)")
    if data.ndim not in (2, 3) or data.dtype.kind not in "biuf":
        raise MorphllrError(f"--mask {path}: holds a {data.ndim}-D {data.dtype} array; a mask is a 2-D image (or one "
                            "plane per image) of numbers, nonzero = excluded")
    with np.errstate(invalid="ignore"):
        return (data != 0) | (np.isnan(data) if data.dtype.kind == "f" else False)


@dataclass
class MaskPlan:
    """Which mask belongs to which image.

    Attributes:
        by_file: image file -> mask file (pairs found beside the images, ``--mask DIR``, or
            ``--mask FILE`` with one input image).
        common: a ``--mask FILE`` for every image (2-D: same shape as each image; 3-D: one
            plane per image, in input order), or None.
    """

    by_file: dict[Path, Path] = field(default_factory=dict)
    common: Path | None = None
    _common: np.ndarray | None = None
    _used: int = 0

    def __len__(self) -> int:
        return len(self.by_file) + (self.common is not None)

    def mask_for(self, path: Path, plane: int, hw: tuple[int, int], source: str) -> np.ndarray | None:
        """The bool (H, W) mask of image ``plane`` of ``path``, checked against its shape ``hw``."""
        if path in self.by_file:
            mask_path = self.by_file[path]
            data = read_mask_file(mask_path)
            if data.ndim == 3:
                if plane >= data.shape[0]:
                    raise MorphllrError(f"--mask {mask_path}: has {data.shape[0]} planes, but {path} holds more "
                                        "images; give one plane per image")
                data = data[plane]
        elif self.common is not None:
            mask_path = self.common
            if self._common is None:
                self._common = read_mask_file(self.common)
            data = self._common
            if data.ndim == 3:
                if self._used >= data.shape[0]:
                    raise MorphllrError(f"--mask {mask_path}: has {data.shape[0]} planes but there are more images; "
                                        "give one plane per image, or a 2-D mask for all")
                data = data[self._used]
            self._used += 1
        else:
            return None
        if data.shape != tuple(hw):
            raise MorphllrError(f"--mask {mask_path}: is {data.shape[0]}x{data.shape[1]} but {source} is "
                                f"{hw[0]}x{hw[1]}; give a mask of the image's shape (nonzero = excluded)")
        return data


def mask_plan(files: list[Path], pairs: dict[Path, Path], mask: str | os.PathLike | None) -> MaskPlan:
    """Masks for ``files``: the pairs found beside them, or those of ``--mask FILE_OR_DIR``.

    Args:
        files: image files (:func:`expand_inputs_with_masks`).
        pairs: image -> mask pairs found among the inputs.
        mask: ``--mask``: a mask file (one image, or every image), a folder of masks named
            ``NAME_mask.fits`` / ``NAME.fits`` after the images (``NAME`` = image file stem), or None.

    Returns:
        :class:`MaskPlan`.
    """
    if mask is None:
        return MaskPlan(dict(pairs))
    mask = Path(mask)
    if pairs:
        first = next(iter(pairs.items()))
        raise MorphllrError(f"--mask {mask}: the inputs already pair masks with images ({first[1]} for {first[0]}); "
                            "give either --mask or mask files beside the images, not both")
    if mask.is_dir():
        candidates = [p for p in sorted(mask.rglob("*")) if p.is_file() and _is_supported(p)
                      and _suffix(p) not in IMAGE_SUFFIXES and not p.name.startswith(".")]
        index: dict[str, Path] = {}
        for p in candidates:
            key = (mask_image_stem(p) if is_mask_file(p) else _stem(p)).lower()
            if key in index and is_mask_file(index[key]) == is_mask_file(p):
                raise MorphllrError(f"--mask {mask}: two masks for image {key} ({index[key]}, {p}); keep one")
            if key not in index or is_mask_file(p):
                index[key] = p
        found = {f: index[_stem(f).lower()] for f in files if _stem(f).lower() in index}
        resolved = {f.resolve() for f in files}
        found = {f: m for f, m in found.items() if m.resolve() not in resolved}
        if not found:
            raise MorphllrError(f"--mask {mask}: no mask in the folder is named after an input image (NAME_mask.fits "
                                "or NAME.fits for image NAME.fits); rename the masks or give one file")
        return MaskPlan(found)
    if not mask.exists():
        raise MorphllrError(f"--mask {mask}: not found; give a mask file or a folder of NAME_mask.fits masks")
    read_mask_file(mask)  # refuse an unreadable mask before any image is read
    if len(files) == 1:
        return MaskPlan({files[0]: mask})
    return MaskPlan(common=mask)


def file_ids(files: list[Path]) -> dict[Path, str]:
    """Id per file: its stem, or its path relative to the common folder when stems clash."""
    stems = [_stem(p) for p in files]
    if len(set(stems)) == len(stems):
        return dict(zip(files, stems))
    root = Path(os.path.commonpath([str(p.resolve().parent) for p in files]))
    return {p: str(p.resolve().relative_to(root).with_name(_stem(p))) for p in files}


def _stem(path: Path) -> str:
    name = path.name
    suffix = _suffix(path)
    return name[: -len(suffix)] if name.lower().endswith(suffix) else path.stem


# ---------------------------------------------------------------------- FITS
def _fits_open(path: Path):
    from astropy.io import fits

    try:
        hdul = fits.open(path, memmap=False, lazy_load_hdus=True)
    except (OSError, TypeError, ValueError, EOFError) as exc:
        raise MorphllrError(f"{path}: cannot read FITS file ({exc}); the file is corrupt or not FITS") from None
    return hdul


def _fits_hdu(hdul, path: Path, hdu: int | str | None):
    if hdu is None:
        for candidate in hdul:
            if candidate.is_image and candidate.header.get("NAXIS", 0) >= 2:
                return candidate
        raise MorphllrError(f"{path}: no image HDU found; pick one with --hdu N or --hdu EXTNAME")
    key = int(hdu) if isinstance(hdu, str) and hdu.lstrip("-").isdigit() else hdu
    try:
        chosen = hdul[key]
    except (KeyError, IndexError):
        names = [h.name for h in hdul]
        raise MorphllrError(f"{path}: no HDU {hdu!r}; it has {len(hdul)} HDUs named {names}") from None
    if not chosen.is_image or chosen.header.get("NAXIS", 0) < 2:
        raise MorphllrError(f"{path}: HDU {hdu!r} holds no image; pick another with --hdu")
    return chosen


def fits_units(header) -> str | None:
    """The unit a FITS header declares (``BUNIT``) in :data:`morphllr.data.preprocess.UNITS` terms, or None."""
    unit = str(header.get("BUNIT", "")).lower().replace(" ", "")
    if "mag" in unit and "arcsec" in unit:
        return "mag_arcsec2"
    if "nanomag" in unit or "nmgy" in unit:
        return "nanomaggies"
    if unit in ("counts", "count", "dn", "adu"):
        return "counts"
    if unit.replace("pixel", "").replace("pix", "").rstrip("/") in ("counts/s", "count/s", "counts/sec", "e-/s",
                                                                     "electrons/s", "cts/s"):
        return "counts_per_s"
    return None


def fits_bands(header) -> list[str] | None:
    """Band names of a multi-band cube (``FILTER0``, ``FILTER1``, ... as in TNG SKIRT cubes), or None."""
    bands = []
    while f"FILTER{len(bands)}" in header:
        bands.append(str(header[f"FILTER{len(bands)}"]).strip())
    return bands or None


def _band_token(name: str) -> str:
    """``sloan/sdss_r`` -> ``r``; ``SUBARU_HSC.G`` -> ``g``: the last part after / _ . or -."""
    return re.split(r"[/_.\-]", name.strip().lower())[-1]


def select_bands(available: list[str], wanted: list[str] | None, source: str) -> list[int]:
    """Indices of the ``wanted`` bands in a cube's ``available`` ones, matched by name.

    Args:
        available: the cube's band names (``sloan/sdss_g``, ...).
        wanted: names the user asked for: a full name or its last token (``r``, ``sdss_r``).
        source: file, for messages.

    Returns:
        list of plane indices, in the order asked.
    """
    if not wanted:
        raise MorphllrError(f"{source}: is a {len(available)}-band cube ({', '.join(available)}); choose the band(s) "
                            f"with --band, e.g. --band {_band_token(available[min(1, len(available) - 1)])}")
    out = []
    for band in wanted:
        key = band.strip().lower()
        hits = [i for i, name in enumerate(available) if name.lower() == key or _band_token(name) == key
                or name.lower().endswith(key) and key.startswith(("sdss", "sloan"))]
        if len(hits) != 1:
            raise MorphllrError(f"{source}: no band {band!r} in this cube (bands: {', '.join(available)}); "
                                "give --band with one of those names or its last letter")
        out.append(hits[0])
    return out


def _physical_length_pc(ctype: str) -> float | None:
    unit = ctype.strip().lower()
    return {"pc": 1.0, "kpc": 1e3, "mpc": 1e6}.get(unit)


def fits_pixel_scale(header, path: Path | str = "", cosmology: str | None = None) -> float | None:
    """Pixel scale (arcsec/px) from a FITS header, or None if it does not say.

    Tries ``FOVARC`` / NAXIS1, a celestial WCS, ``PIXSCALE`` (arcsec/px; TNG SKIRT cubes, whose
    WCS is physical: the scale at ``USE_Z``), and a physical CDELT (pc or kpc) at ``REDSHIFT``
    / ``USE_Z`` (proper size through ``cosmology``, default Planck18).  A celestial WCS wins
    over ``PIXSCALE``, which observed images may carry stale (e.g. before binning).

    Args:
        header: astropy FITS header.
        path: file name for messages.
        cosmology: name for :mod:`morphllr.data.cosmology` (physical CDELT only).

    Returns:
        arcsec per pixel or None.
    """
    naxis1 = header.get("NAXIS1")
    if "FOVARC" in header and naxis1:
        return float(header["FOVARC"]) / float(naxis1)
    celestial = _celestial_pixel_scale(header)
    if celestial is not None:
        return celestial
    try:
        if "PIXSCALE" in header and float(header["PIXSCALE"]) > 0:
            return float(header["PIXSCALE"])
    except (TypeError, ValueError):
        pass
    kpc = fits_pixel_kpc(header)
    if kpc is not None:
        z = header_redshift(header)
        if z is None or z <= 0:
            return None
        return kpc * arcsec_per_kpc(z, cosmology)
    return None


def _celestial_pixel_scale(header) -> float | None:
    """Mean pixel side (arcsec) of a celestial WCS in the header, or None."""
    try:
        import warnings

        from astropy.wcs import WCS
        from astropy.wcs.utils import proj_plane_pixel_scales

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wcs = WCS(header, naxis=2)
        if wcs.has_celestial:
            return float(np.mean(proj_plane_pixel_scales(wcs.celestial)) * 3600.0)
    except Exception:  # malformed WCS keywords are common; then the header does not say
        return None
    return None


def fits_pixel_kpc(header) -> float | None:
    """Physical pixel size in kpc from ``CDELT1`` with ``CTYPE1``/``CUNIT1`` in pc, kpc or Mpc, or None."""
    for unit_key in ("CTYPE1", "CUNIT1"):
        pc_per_unit = _physical_length_pc(str(header.get(unit_key, "")))
        if pc_per_unit is not None and "CDELT1" in header:
            return abs(float(header["CDELT1"])) * pc_per_unit / 1e3
    return None


def header_redshift(header) -> float | None:
    """The redshift the image is seen at: ``USE_Z`` (TNG SKIRT cubes), ``REDSHIFT`` or ``Z``; None if absent."""
    for key in ("USE_Z", "REDSHIFT", "Z"):
        if key in header:
            try:
                return float(header[key])
            except (TypeError, ValueError):
                continue  # an unparsable key: try the next one
    return None


def _fits_meta(header) -> dict[str, Any]:
    meta = {}
    z = header_redshift(header)
    if z is not None:
        meta["redshift"] = z
    kpc = fits_pixel_kpc(header)
    if kpc is not None:
        meta["pixel_kpc"] = kpc
    return meta


def _merged_header(primary, own):
    """The image HDU's header, completed by file-wide keys (SKIRT mocks keep FOVARC,
    REDSHIFT and BUNIT in the primary header and the bands in extensions)."""
    header = own.copy()
    for key in ("FOVARC", "REDSHIFT", "USE_Z", "PIXSCALE", "BUNIT"):
        if key not in header and key in primary:
            header[key] = primary[key]
    return header


def count_fits(path: Path, hdu=None) -> int:
    """Number of images in a FITS file (planes of a cube count one each; a band cube is one galaxy)."""
    with _fits_open(path) as hdul:
        header = _fits_hdu(hdul, path, hdu).header
    if header.get("NAXIS", 0) >= 3 and fits_bands(header) is None:
        return int(header["NAXIS3"])
    return 1


def read_fits(path: Path, image_id: str, hdu=None, bands: list[str] | None = None,
              cosmology: str | None = None) -> Iterator[RawImage]:
    """Images in one FITS file: one, one per plane of a cube, or one galaxy of a band cube.

    Args:
        path: FITS file.
        image_id: id of the (first) image.
        hdu: HDU index or EXTNAME (default: the first image HDU).
        bands: band names to take from a band cube (``FILTER0..`` keys); refused if the
            cube does not have them, required when it is one.
        cosmology: for a pixel scale from a physical CDELT.

    Returns:
        iterator of :class:`RawImage` (``meta``: redshift, pixel_kpc, bands where known).
    """
    with _fits_open(path) as hdul:
        chosen = _fits_hdu(hdul, path, hdu)
        try:
            data = chosen.data
        except (OSError, ValueError, TypeError) as exc:
            raise MorphllrError(f"{path}: cannot read image data ({exc}); the file is truncated or corrupt") from None
        header = _merged_header(hdul[0].header, chosen.header)
        data = np.asarray(data, dtype=np.float64)  # native byte order for sep/scipy
    units, scale, meta = fits_units(header), fits_pixel_scale(header, path, cosmology), _fits_meta(header)
    label = f"{path}[{chosen.name or hdu or 0}]"
    available = fits_bands(header) if data.ndim == 3 else None
    if available is not None:
        if len(available) != data.shape[0]:
            raise MorphllrError(f"{path}: header names {len(available)} bands (FILTER0..) but the cube has "
                                f"{data.shape[0]} planes; fix the header")
        planes = select_bands(available, bands, str(path))
        meta["bands"] = ",".join(available[i] for i in planes)
        yield RawImage(image_id, data[planes], label, units, scale, meta)
        return
    if bands and len(bands) > 1:
        raise MorphllrError(f"{path}: holds one band but --band asks for {len(bands)}; give one file per band "
                            "named alike but for the band (photo_g_X.fits, photo_r_X.fits) or a band cube")
    if bands and data.ndim == 2:
        held = _header_band(header, list(dict.fromkeys([bands[0].lower(), *"ugrizy"])))
        if held is not None and held != bands[0].lower():
            raise MorphllrError(f"{path}: holds band {held} (header FILTER {header.get('FILTER', header.get('BAND'))!r}), "
                                f"not the --band {bands[0]} asked for; give the files of that band")
    if data.ndim == 2:
        yield RawImage(image_id, data[None], label, units, scale, meta)
    elif data.ndim == 3:
        for i, plane in enumerate(data):
            yield RawImage(f"{image_id}:{i}", plane[None], f"{label} plane {i}", units, scale, meta)
    else:
        raise MorphllrError(f"{path}: image HDU has {data.ndim} dimensions; expected 2 (image) or 3 (cube)")


# ---------------------------------------------------------------------- arrays
def _array_images(array, channel: int | None, source: str) -> tuple[Any, int]:
    """Normalise an array-like to (N, C, H, W) indexing; returns (array, ndim_kind)."""
    ndim = array.ndim
    if ndim not in (2, 3, 4):
        raise MorphllrError(f"{source}: array has shape {array.shape}; expected (H, W), (N, H, W) or (N, C, H, W)")
    if ndim == 4 and channel is not None and not (0 <= channel < array.shape[1]):
        raise MorphllrError(f"{source}: --channel {channel} out of range; the array has {array.shape[1]} channels")
    return array, ndim


def _array_item(array, ndim: int, i: int, channel: int | None) -> np.ndarray:
    if ndim == 2:
        return np.asarray(array, dtype=np.float64)[None]
    item = np.asarray(array[i], dtype=np.float64)
    if ndim == 3:
        return item[None]
    return item[channel : channel + 1] if channel is not None else item


def _hdf5_dataset(f, path: Path, name: str | None):
    import h5py

    if name is not None:
        if str(name) not in f:
            raise MorphllrError(f"{path}: no dataset {name!r}; it has {list(f.keys())}")
        dataset = f[str(name)]
        if not isinstance(dataset, h5py.Dataset):
            raise MorphllrError(f"{path}: {name!r} is a group, not an array; give the dataset path with --hdu")
        return dataset
    candidates = []
    f.visititems(lambda n, obj: candidates.append(obj) if isinstance(obj, h5py.Dataset) and obj.ndim in (3, 4) else None)
    if f.attrs.get("format") == "morphllr.imageset":
        raise MorphllrError(f"{path}: already a prepared morphllr image set; use it directly instead of preparing it again")
    preferred = [d for d in candidates if d.name.strip("/") in ("images", "image", "data", "x")]
    if preferred or len(candidates) == 1:
        return (preferred or candidates)[0]
    if not candidates:
        raise MorphllrError(f"{path}: no 3-D or 4-D image dataset found; name one with --hdu DATASET")
    raise MorphllrError(f"{path}: several image datasets {[d.name for d in candidates]}; choose one with --hdu DATASET")


def _open_h5(path: Path):
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise MorphllrError(f"{path}: cannot read HDF5 file ({exc}); the file is corrupt or truncated") from None


def _load_npy(path: Path, hdu: str | None):
    try:
        if _suffix(path) == ".npy":
            return np.load(path, mmap_mode="r", allow_pickle=False)
        with np.load(path, allow_pickle=False) as npz:
            keys = list(npz.keys())
            key = hdu if hdu is not None else ("images" if "images" in keys else keys[0] if keys else None)
            if key not in keys:
                raise MorphllrError(f"{path}: no array {hdu!r}; it holds {keys}")
            return npz[key]
    except MorphllrError:
        raise
    except (OSError, ValueError, EOFError) as exc:
        raise MorphllrError(f"{path}: cannot read numpy file ({exc}); the file is corrupt or pickled objects") from None


def count_array_file(path: Path, hdu=None) -> int:
    """Number of images in an .npy/.npz/HDF5 file."""
    if _suffix(path) in HDF5_SUFFIXES:
        with _open_h5(path) as f:
            shape = _hdf5_dataset(f, path, hdu).shape
    else:
        shape = _load_npy(path, hdu).shape
    return 1 if len(shape) == 2 else int(shape[0])


def read_array_file(path: Path, image_id: str, hdu=None, channel: int | None = None) -> Iterator[RawImage]:
    """Images in an .npy/.npz/HDF5 file, one at a time (memory-mapped where possible)."""
    if _suffix(path) in HDF5_SUFFIXES:
        with _open_h5(path) as f:
            dataset = _hdf5_dataset(f, path, hdu)
            yield from _iter_array(dataset, path, image_id, channel, imageset_kind(f, dataset))
    else:
        yield from _iter_array(_load_npy(path, hdu), path, image_id, channel)


def imageset_kind(f, dataset) -> str | None:
    """The input kind of a dataset of a morphllr image set read as input (``--hdu flux``): the kind its
    recipe records for ``/flux`` (:func:`morphllr.data.preprocess.input_kind_of`; None if unrecorded), and
    ``model_space`` for ``/images`` or any other dataset; None for an HDF5 file that is not an image set."""
    if f.attrs.get("format") != IMAGESET_FORMAT:
        return None
    if dataset.name.strip("/") != "flux":
        return "model_space"
    text = f.attrs.get("preprocessing")
    try:
        prep = json.loads(text.decode() if isinstance(text, bytes) else text) if text else {}
    except (TypeError, ValueError):
        prep = {}
    return input_kind_of(prep if isinstance(prep, dict) else {})


def _iter_array(array, path: Path, image_id: str, channel: int | None, kind: str | None = None) -> Iterator[RawImage]:
    array, ndim = _array_images(array, channel, str(path))
    n = 1 if ndim == 2 else array.shape[0]
    for i in range(n):
        rid = image_id if ndim == 2 else f"{image_id}:{i}"
        yield RawImage(rid, _array_item(array, ndim, i, channel), f"{path}[{i}]", kind=kind)


# ---------------------------------------------------------------------- JPEG / PNG
def read_picture(path: Path, image_id: str, channel: int | None = None) -> Iterator[RawImage]:
    """One 8-bit channel of a JPEG/PNG (default green, channel 1) as a (1, H, W) image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as picture:
            picture.load()
            array = np.asarray(picture)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise MorphllrError(f"{path}: cannot read image ({exc}); the file is corrupt or not a JPEG/PNG") from None
    if array.ndim == 2:
        if channel not in (None, 0):
            raise MorphllrError(f"{path}: grey-scale image has one channel; drop --channel or use --channel 0")
        plane = array
    else:
        chosen = 1 if channel is None else channel
        if not 0 <= chosen < array.shape[2]:
            raise MorphllrError(f"{path}: --channel {chosen} out of range; the image has {array.shape[2]} channels")
        plane = array[:, :, chosen]
    yield RawImage(image_id, plane.astype(np.float64)[None], str(path))


# ---------------------------------------------------------------------- one file per band
_BAND_IN_NAME = r"(?<![a-z0-9])({bands})(?=[_.\-])"


def file_band(path: Path, bands: list[str]) -> str | None:
    """The band of a single-band file: header ``FILTER``/``BAND``, else a band token in its name.

    A name token is one of ``bands`` standing alone between separators, as in
    ``photo_r_NAME.fits`` (RealSim) or ``NAME-g.fits``.
    """
    with _fits_open(path) as hdul:
        header = next((h.header for h in hdul if h.is_image and h.header.get("NAXIS", 0) >= 2), hdul[0].header)
    held = _header_band(header, bands)
    if held is not None:
        return held
    pattern = _BAND_IN_NAME.format(bands="|".join(re.escape(b.lower()) for b in bands))
    found = re.findall(pattern, path.name.lower())
    return found[0] if len(found) == 1 else None


def _header_band(header, bands: list[str]) -> str | None:
    """The one of ``bands`` that header ``FILTER``/``BAND`` names ('r_SDSS.res', 'sloan/sdss_r'), or None."""
    for key in ("FILTER", "BAND"):
        if key in header:
            tokens = set(re.split(r"[/_.\-]", str(header[key]).strip().lower()))
            hits = [b.lower() for b in bands if b.lower() in tokens]
            if len(hits) == 1:
                return hits[0]
    return None


def group_band_files(files: list[Path], bands: list[str]) -> list[tuple[str, list[Path]]]:
    """Stack single-band files of one galaxy: ``photo_g_X.fits`` + ``photo_r_X.fits`` -> X in (g, r).

    Args:
        files: FITS files, one band each.
        bands: the bands wanted, in channel order.

    Returns:
        (galaxy id, files in band order) per galaxy, in the order of first appearance.
    """
    wanted = [b.lower() for b in bands]
    groups: dict[str, dict[str, Path]] = {}
    for path in files:
        band = file_band(path, wanted)
        if band is None:
            raise MorphllrError(f"{path}: cannot tell which of the bands {','.join(bands)} this file holds (no FILTER "
                                "header, no band token such as _r_ in its name); use band cubes or rename the files")
        key = re.sub(_BAND_IN_NAME.format(bands=re.escape(band)), "{band}", _stem(path), count=1, flags=re.IGNORECASE)
        entry = groups.setdefault(key, {})
        if band in entry:
            raise MorphllrError(f"{path}: band {band} of {key} given twice (also {entry[band]}); give each file once")
        entry[band] = path
    out = []
    for key, by_band in groups.items():
        missing = [b for b in wanted if b not in by_band]
        if missing:
            raise MorphllrError(f"{next(iter(by_band.values()))}: galaxy {key.replace('{band}', '*')} lacks band(s) "
                                f"{','.join(missing)}; add the file(s) or ask for fewer --band")
        name = key.replace("{band}", "").replace("__", "_").strip("_-.")
        out.append((name, [by_band[b] for b in wanted]))
    return out


def _stack_bands(galaxy_id: str, paths: list[Path], bands: list[str], hdu, cosmology) -> RawImage:
    planes = [next(read_fits(p, galaxy_id, hdu, cosmology=cosmology)) for p in paths]
    first = planes[0]
    for plane, path in zip(planes[1:], paths[1:]):
        if plane.image.shape != first.image.shape or plane.units != first.units:
            raise MorphllrError(f"{path}: shape {plane.image.shape[1:]} / unit {plane.units} differ from "
                                f"{paths[0]}'s {first.image.shape[1:]} / {first.units}; bands of one galaxy must match")
    meta = dict(first.meta, bands=",".join(bands))
    return RawImage(galaxy_id, np.concatenate([p.image for p in planes]), " + ".join(map(str, paths)),
                    first.units, first.pixel_scale, meta)


def _band_plan(files: list[Path], bands: list[str] | None, hdu) -> list[tuple[str, Any]]:
    """Reading plan: ("file", path) per file, or ("bands", (id, paths)) for stacked single-band files."""
    if not bands or len(bands) < 2:
        return [("file", p) for p in files]
    singles, plan = [], []
    for path in files:
        if _suffix(path) in FITS_SUFFIXES:
            with _fits_open(path) as hdul:
                header = _fits_hdu(hdul, path, hdu).header
            if header.get("NAXIS", 0) == 2 or fits_bands(header) is None and header.get("NAXIS3", 1) == 1:
                singles.append(path)
                continue
        plan.append(("file", path))
    if singles:
        plan.extend(("bands", group) for group in group_band_files(singles, bands))
    return plan


# ---------------------------------------------------------------------- dispatch
def count_images(files: list[Path], hdu=None, bands: list[str] | None = None) -> int:
    """Total number of images in ``files`` (reads only headers / array shapes)."""
    total = 0
    for kind_of, item in _band_plan(files, bands, hdu):
        if kind_of == "bands":
            total += 1
            continue
        kind = _suffix(item)
        if kind in FITS_SUFFIXES:
            total += count_fits(item, hdu)
        elif kind in HDF5_SUFFIXES or kind in NPY_SUFFIXES:
            total += count_array_file(item, hdu)
        else:
            total += 1
    return total


def iter_images(files: list[Path], *, hdu=None, channel: int | None = None, bands: list[str] | None = None,
                cosmology: str | None = None, masks: MaskPlan | None = None) -> Iterator[RawImage]:
    """Yield every image in ``files`` in order, each with its input kind and mask.

    Args:
        files: from :func:`expand_inputs`.
        hdu: FITS HDU index/EXTNAME, or HDF5/npz dataset name.
        channel: channel of JPEG/PNG (default 1, green) or of (N, C, H, W) arrays (default: all).
        bands: band names for band cubes (TNG SKIRT: ``["r"]``), or, with several, the
            bands of single-band files to stack per galaxy (:func:`group_band_files`).
        cosmology: for pixel scales from a physical CDELT (:mod:`morphllr.data.cosmology`).
        masks: which mask belongs to which image (:func:`mask_plan`), or None.

    Returns:
        iterator of :class:`RawImage` (``kind``: ``flux`` for FITS, ``jpeg`` for JPEG/PNG, None
        for arrays; ``mask`` where the plan has one).
    """
    plan = _band_plan(files, bands, hdu)
    ids = file_ids([item for kind_of, item in plan if kind_of == "file"])
    for kind_of, item in plan:
        if kind_of == "bands":
            galaxy_id, paths = item
            record = _stack_bands(galaxy_id, paths, bands, hdu, cosmology)
            record.kind = "flux"
            yield _with_mask(record, masks, paths[0], 0)
            continue
        path = item
        kind = _suffix(path)
        if kind in FITS_SUFFIXES and frames.is_frame_file(path):
            records = [frames.frame_raw_image(path, ids[path])]  # SDSS frame: NMGY checked, band/nmgy kept (frames.py)
        elif kind in FITS_SUFFIXES:
            records = read_fits(path, ids[path], hdu, bands, cosmology)
        elif kind in HDF5_SUFFIXES or kind in NPY_SUFFIXES:
            records = read_array_file(path, ids[path], hdu, channel)
        else:
            records = read_picture(path, ids[path], channel)
        reader_kind = "flux" if kind in FITS_SUFFIXES else "jpeg" if kind in IMAGE_SUFFIXES else None
        for plane, record in enumerate(records):
            if record.kind is None:
                record.kind = reader_kind
            yield _with_mask(record, masks, path, plane)


def _with_mask(record: RawImage, masks: MaskPlan | None, path: Path, plane: int) -> RawImage:
    if masks is not None and len(masks):
        found = masks.mask_for(path, plane, record.image.shape[1:], record.source)
        if found is not None:
            record.mask = found if record.mask is None else (record.mask | found)
    return record
