"""SDSS frames: ``frame-{band}-{run}-{camcol}-{field}.fits[.bz2]``, as empty-sky source and as cutout source.

An SDSS (DR8 and later) corrected frame holds one band of one field, 2048 x 1489 pixels at
0.396"/px: HDU 0 is the sky-subtracted, flat-fielded, calibrated image in **nanomaggies**
with a TAN WCS and the header keys ``NMGY`` (mean nanomaggies per DN) and ``EXPTIME``;
HDU 1 is the per-column calibration vector and HDU 2 the subtracted sky grid (neither is
needed here).  Frames are recognised by their SDSS file name (:func:`is_frame_file`).

Units.  A set's working flux unit is fixed by its preset's ``zero_point`` (AB magnitude of
one unit; zanisi21: 28.2 = "SDSS r counts"), so every frame lands in the same unit::

    flux_working = nanomaggies * 10**(0.4 * (zero_point - 22.5))

The frame's own ``NMGY`` is deliberately *not* used for that conversion: it differs from
frame to frame (22.5 - 2.5 log10 NMGY = 28.156 for frame-r-002583-2-0136 against the
preset's 28.2, a 4 % difference in flux), and two sets compared by one model must share a
unit.  ``NMGY`` only fixes how many electrons one working unit is, i.e. the shot noise::

    electrons per working unit = gain [e-/DN] * 10**(-0.4 * (zero_point - 22.5)) / NMGY

The gain is not in the frame header; :data:`DEFAULT_GAIN` is a typical r-band value.

Entry points: :func:`read_frame` (pixels, WCS, band, NMGY, EXPTIME), :func:`plan_cutouts`
(catalogue positions -> frame pixels; positions outside every frame are counted and
listed) and :func:`cutout_records` (streams :class:`morphllr.data.raw_image.RawImage` cutouts for
:func:`morphllr.data.prepare.prepare_imageset`, reading every frame once).
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from morphllr.data.preprocess import NANOMAGGY_ZERO_POINT, zero_point_factor
from morphllr.data.raw_image import RawImage
from morphllr.errors import MorphllrError

#: Typical SDSS r-band CCD gain in electrons per DN (the six camcols' r-band gains lie
#: between about 4.6 and 4.9); g, i, z and u differ, pass the frame's own with ``--gain``.
DEFAULT_GAIN = 4.8

_FRAME_NAME = re.compile(r"^frame-([ugriz])-(\d+)-(\d)-(\d+)\.fits(\.bz2|\.gz)?$", re.IGNORECASE)


def is_frame_file(path) -> bool:
    """True for a file named like an SDSS corrected frame (``frame-r-002583-2-0136.fits.bz2``).

    Args:
        path: file name or path.

    Returns:
        whether the name matches ``frame-{ugriz}-{run}-{camcol}-{field}.fits[.bz2|.gz]``.
    """
    return bool(_FRAME_NAME.match(Path(path).name))


def working_per_nanomaggy(zero_point: float) -> float:
    """Working flux units per nanomaggy for a set whose unit has AB magnitude ``zero_point``.

    Args:
        zero_point: AB magnitude of one working unit (the preset's ``zero_point``).

    Returns:
        10**(0.4 * (zero_point - 22.5)) (1.0 when the working unit is the nanomaggy).
    """
    return zero_point_factor(NANOMAGGY_ZERO_POINT, zero_point)


def electrons_per_unit(nmgy: float, zero_point: float, gain_e_per_dn: float = DEFAULT_GAIN) -> float:
    """Electrons per working flux unit, the ``gain`` catalogue column that sets the shot noise.

    Args:
        nmgy: the frame's calibration, nanomaggies per DN (header ``NMGY``).
        zero_point: AB magnitude of one working unit.
        gain_e_per_dn: CCD gain, electrons per DN.

    Returns:
        gain_e_per_dn * (DN per working unit) = gain_e_per_dn / (nmgy * working_per_nanomaggy(zero_point)).
    """
    return float(gain_e_per_dn) / (float(nmgy) * working_per_nanomaggy(zero_point))


@dataclass
class SDSSFrame:
    """One SDSS frame (see the module docstring for the units).

    Attributes:
        path: the file.
        shape: (H, W) pixels of the image (rows, columns).
        wcs: celestial astropy WCS of the image (0-based pixel coordinates in its ``*_values`` methods).
        band: filter (``FILTER`` header key, else the file name).
        nmgy: nanomaggies per DN (header ``NMGY``).
        exptime: exposure time in seconds (``EXPTIME``; None if absent).
        pixel_scale: arcsec per pixel from the WCS.
        image: float32 (H, W) calibrated image in nanomaggies, or None when only the header was read.
        header: the primary header.
    """

    path: Path
    shape: tuple[int, int]
    wcs: Any
    band: str
    nmgy: float
    exptime: float | None
    pixel_scale: float
    image: np.ndarray | None = None
    header: Any = field(default=None, repr=False)

    @property
    def frame_zero_point(self) -> float:
        """AB magnitude of one DN of this frame, 22.5 - 2.5 log10(NMGY) (informative; not used for units)."""
        return NANOMAGGY_ZERO_POINT - 2.5 * math.log10(self.nmgy)

    def to_working(self, zero_point: float) -> np.ndarray:
        """The image in the set's working flux unit (a constant factor: pixels are not resampled).

        Args:
            zero_point: AB magnitude of one working unit (the preset's ``zero_point``).

        Returns:
            float32 (H, W) flux per pixel in working units (NaN/inf kept as they are).
        """
        if self.image is None:
            raise MorphllrError(f"{self.path}: only the header was read; read the frame with pixels=True")
        return (self.image.astype(np.float64) * working_per_nanomaggy(zero_point)).astype(np.float32)

    def gain(self, zero_point: float, gain_e_per_dn: float = DEFAULT_GAIN) -> float:
        """Electrons per working flux unit of this frame (see :func:`electrons_per_unit`)."""
        return electrons_per_unit(self.nmgy, zero_point, gain_e_per_dn)

    def world_to_pixel(self, ra, dec) -> tuple[np.ndarray, np.ndarray]:
        """Sky position -> 0-based pixel position.

        Args:
            ra, dec: degrees (scalars or arrays).

        Returns:
            (x column, y row) float arrays, 0-based (pixel i spans [i - 1/2, i + 1/2]).
        """
        x, y = self.wcs.world_to_pixel_values(np.asarray(ra, float), np.asarray(dec, float))
        return np.asarray(x, float), np.asarray(y, float)

    def pixel_to_world(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        """0-based pixel position -> (ra, dec) in degrees."""
        ra, dec = self.wcs.pixel_to_world_values(np.asarray(x, float), np.asarray(y, float))
        return np.asarray(ra, float), np.asarray(dec, float)

    def contains(self, x, y) -> np.ndarray:
        """True where the 0-based pixel position (x, y) lies on the image."""
        h, w = self.shape
        x, y = np.asarray(x, float), np.asarray(y, float)
        with np.errstate(invalid="ignore"):
            return (x >= -0.5) & (x < w - 0.5) & (y >= -0.5) & (y < h - 0.5)

    def edge_distance(self, x, y) -> np.ndarray:
        """Pixels from (x, y) to the nearest image edge (negative outside)."""
        h, w = self.shape
        x, y = np.asarray(x, float), np.asarray(y, float)
        return np.minimum(np.minimum(x + 0.5, w - 0.5 - x), np.minimum(y + 0.5, h - 0.5 - y))


def read_frame(path, pixels: bool = True) -> SDSSFrame:
    """Read an SDSS frame (``.fits``, ``.fits.bz2`` or ``.fits.gz``; astropy decompresses).

    Args:
        path: ``frame-*.fits[.bz2]`` file.
        pixels: also read the image (False: header and WCS only, e.g. to place a catalogue).

    Returns:
        :class:`SDSSFrame` with ``image`` float32 (H, W) in nanomaggies when ``pixels``.
    """
    from astropy.io import fits

    path = Path(path)
    if not path.is_file():
        raise MorphllrError(f"{path}: frame file not found; give an SDSS frame-*.fits[.bz2] file")
    try:
        with fits.open(path, memmap=False, lazy_load_hdus=True) as hdul:
            hdu = hdul[0]
            header = hdu.header.copy()
            data = np.asarray(hdu.data, dtype=np.float32) if pixels else None  # native byte order
    except (OSError, TypeError, ValueError, EOFError) as exc:
        raise MorphllrError(f"{path}: cannot read the FITS frame ({exc}); the file is corrupt or not FITS") from None
    if header.get("NAXIS", 0) != 2:
        raise MorphllrError(f"{path}: HDU 0 is not a 2-D image (NAXIS={header.get('NAXIS')}); "
                            "give an SDSS corrected frame (frame-*.fits), whose first HDU is the image")
    if "NMGY" not in header:
        raise MorphllrError(f"{path}: no NMGY header key (nanomaggies per DN), needed for the shot noise; "
                            "use an SDSS DR8+ frame-*.fits file or add NMGY = <nanomaggies per DN> to its header")
    nmgy = float(header["NMGY"])
    if not (nmgy > 0 and math.isfinite(nmgy)):
        raise MorphllrError(f"{path}: NMGY = {header['NMGY']!r} is not a positive number; fix the header")
    unit = str(header.get("BUNIT", "nanomaggy")).strip().lower()
    if "nanomag" not in unit and "nmgy" not in unit:
        raise MorphllrError(f"{path}: BUNIT = {header.get('BUNIT')!r}, but an SDSS frame is in nanomaggies; "
                            "give a calibrated SDSS frame-*.fits file")
    wcs = _celestial_wcs(header, path)
    from astropy.wcs.utils import proj_plane_pixel_scales

    scale = float(np.mean(proj_plane_pixel_scales(wcs)) * 3600.0)
    match = _FRAME_NAME.match(path.name)
    band = str(header.get("FILTER", "")).strip() or (match.group(1) if match else "")
    shape = (int(header["NAXIS2"]), int(header["NAXIS1"]))
    return SDSSFrame(path=path, shape=shape, wcs=wcs, band=band, nmgy=nmgy,
                     exptime=_float_or_none(header.get("EXPTIME")), pixel_scale=scale, image=data, header=header)


def _celestial_wcs(header, path: Path):
    from astropy.wcs import WCS

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SDSS headers carry non-standard keys astropy warns about
            wcs = WCS(header, naxis=2)
    except Exception as exc:  # astropy raises several types for malformed WCS keys
        raise MorphllrError(f"{path}: unreadable WCS ({exc}); give an SDSS frame with its astrometry header") from None
    if not wcs.has_celestial:
        raise MorphllrError(f"{path}: the header has no celestial WCS (CTYPE RA---TAN/DEC--TAN); "
                            "give an SDSS frame with its astrometry header")
    return wcs.celestial


def _float_or_none(value) -> float | None:
    try:  # SDSS writes EXPTIME as a string ('53.907456')
        return float(value)
    except (TypeError, ValueError):
        return None


def frame_raw_image(path, image_id: str):
    """A whole frame as one :class:`morphllr.data.raw_image.RawImage` (nanomaggies, WCS pixel scale).

    Args:
        path: ``frame-*.fits[.bz2]`` file.
        image_id: id of the record.

    Returns:
        RawImage with ``image`` float64 (1, H, W) nanomaggies, ``units="nanomaggies"`` and
        ``meta`` band, nmgy (nanomaggies per DN), exptime (s).
    """
    frame = read_frame(path)
    meta = {"band": frame.band, "nmgy": frame.nmgy, "exptime": frame.exptime if frame.exptime is not None else np.nan}
    return RawImage(image_id, frame.image.astype(np.float64)[None], str(frame.path), "nanomaggies",
                    frame.pixel_scale, meta, kind="flux")


# ---------------------------------------------------------------------- catalogue cutouts
#: catalogue columns holding positions (matched case-insensitively); not joined again
POSITION_COLUMNS = ("ra", "dec", "x", "y", "frame")


@dataclass
class CutoutPlan:
    """Where every catalogue galaxy lies: which frame and which 0-based pixel.

    Attributes:
        frames: header-only :class:`SDSSFrame` of every input frame, in input order.
        ids: str (N,) catalogue ids (all rows, inside or not).
        frame_index: int (N,) frame each galaxy is cut from (-1: outside every frame).
        x, y: float (N,) 0-based pixel position in that frame (NaN outside).
        ra, dec: float (N,) degrees (given, or from the WCS for x/y positions).
        positions: ``"radec"`` or ``"pixel"``: which catalogue columns were used.
        outside_ids: ids of the galaxies outside every frame (dropped: see :func:`plan_cutouts`).
    """

    frames: list[SDSSFrame]
    ids: np.ndarray
    frame_index: np.ndarray
    x: np.ndarray
    y: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    positions: str
    outside_ids: list[str]

    def __len__(self) -> int:
        """Number of galaxies that will be cut out."""
        return int((self.frame_index >= 0).sum())


def _column(table, name: str) -> str | None:
    return next((c for c in table.colnames if c.lower() == name), None)


def plan_cutouts(frame_paths, catalog, catalog_name: str = "catalogue", skip_outside: bool = False) -> CutoutPlan:
    """Place catalogue galaxies on frames (headers only; no pixels are read).

    Positions are ``ra``, ``dec`` in degrees (through each frame's WCS) or ``x``, ``y`` in
    0-based pixels of the frame named in a ``frame`` column (file name, stem or path; not
    needed with a single frame).  A galaxy on several frames (consecutive frames of a run
    overlap by 128 rows) is cut from the one where it lies furthest from the edge.

    Args:
        frame_paths: SDSS frame files.
        catalog: astropy Table with a string ``id`` and the position columns.
        catalog_name: file name for messages.
        skip_outside: drop galaxies outside every frame (listed in ``outside_ids``) instead of refusing.

    Returns:
        :class:`CutoutPlan`.
    """
    frames = [read_frame(p, pixels=False) for p in frame_paths]
    if not frames:
        raise MorphllrError("FRAMES: no SDSS frame given; pass frame-*.fits[.bz2] files")
    n = len(catalog)
    ids = np.asarray([str(v) for v in catalog["id"]])
    ra_col, dec_col = _column(catalog, "ra"), _column(catalog, "dec")
    x_col, y_col = _column(catalog, "x"), _column(catalog, "y")
    where = f"--catalog {catalog_name}"
    index = np.full(n, -1, int)
    x, y = np.full(n, np.nan), np.full(n, np.nan)
    if ra_col and dec_col:
        positions = "radec"
        ra, dec = _float_column(catalog, ra_col, where), _float_column(catalog, dec_col, where)
        best = np.full(n, -np.inf)
        for i, frame in enumerate(frames):
            fx, fy = frame.world_to_pixel(ra, dec)
            with np.errstate(invalid="ignore"):
                room = np.where(frame.contains(fx, fy), frame.edge_distance(fx, fy), -np.inf)
                better = room > best
            index[better], x[better], y[better], best[better] = i, fx[better], fy[better], room[better]
    elif x_col and y_col:
        positions = "pixel"
        px, py = _float_column(catalog, x_col, where), _float_column(catalog, y_col, where)
        frame_col = _column(catalog, "frame")
        if frame_col is None:
            if len(frames) > 1:
                raise MorphllrError(f"{where}: x, y positions with {len(frames)} frames need a `frame` column "
                                    "naming each galaxy's frame file; add it or give ra, dec instead")
            named = np.zeros(n, int)
        else:
            lookup = {}
            for i, frame in enumerate(frames):
                for key in (str(frame.path), frame.path.name, _frame_stem(frame.path)):
                    lookup[key] = i
            named = np.asarray([lookup.get(str(v).strip(), lookup.get(Path(str(v).strip()).name, -1))
                                for v in catalog[frame_col]], int)
        for i, frame in enumerate(frames):
            mine = (named == i) & frame.contains(px, py)
            index[mine], x[mine], y[mine] = i, px[mine], py[mine]
        ra, dec = np.full(n, np.nan), np.full(n, np.nan)
    else:
        raise MorphllrError(f"{where}: no position columns (has {catalog.colnames[:12]}); give `ra`, `dec` in degrees "
                            "or `x`, `y` in 0-based frame pixels (+ `frame` with several frames)")
    for i, frame in enumerate(frames):  # both kinds of position end with (ra, dec) and (x, y) known
        mine = index == i
        if mine.any():
            ra[mine], dec[mine] = frame.pixel_to_world(x[mine], y[mine])
    outside = index < 0
    outside_ids = [str(v) for v in ids[outside]]
    if outside.any() and not skip_outside:
        shown = ", ".join(outside_ids[:10]) + (", ..." if len(outside_ids) > 10 else "")
        raise MorphllrError(f"{where}: {len(outside_ids)} of {n} position(s) lie outside every frame (ids {shown}); "
                            "check the positions (ra/dec in degrees, x/y 0-based pixels) and the frames, or pass "
                            "--skip-outside to drop them")
    if not (~outside).any():
        raise MorphllrError(f"{where}: no position lies on any of the {len(frames)} frame(s); "
                            "check that the catalogue and the frames cover the same field")
    return CutoutPlan(frames, ids, index, x, y, ra, dec, positions, outside_ids)


def _float_column(table, name: str, where: str) -> np.ndarray:
    column = table[name]
    try:
        values = np.ma.filled(np.ma.asarray(column, dtype=float), np.nan)
    except (TypeError, ValueError):
        raise MorphllrError(f"{where}: column `{name}` is not numeric; give positions as numbers") from None
    return np.asarray(values, float)


def _frame_stem(path: Path) -> str:
    name = path.name
    for suffix in (".fits.bz2", ".fits.gz", ".fits"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


#: How far (pixels) centring may move a cutout from its catalogue position: ~1 SDSS PSF FWHM.
#: Further, the segmentation's "central source" would be a neighbour, not the catalogued galaxy.
POSITION_TOLERANCE_PX = 3.0


def cutout_records(plan: CutoutPlan, window: int, zero_point: float,
                   gain_e_per_dn: float = DEFAULT_GAIN) -> Iterator:
    """Stream the planned galaxies as raw cutouts, reading every frame once.

    The window is centred on the galaxy's nearest pixel (window pixel ``window // 2``, as
    :func:`morphllr.data.preprocess.window_origin` does) and never moved; pixels beyond the frame
    edge are marked (``RawImage.outside``), and preparation fills them with the frame's own sky
    noise and reports their share (catalogue column ``edge_padded``; ``--edge refuse`` drops
    such galaxies instead).  Pixels stay in
    nanomaggies (``units="nanomaggies"``): :meth:`Preprocessing.flux_frame` converts them
    through the preset's zero point.  Galaxies come frame by frame, in catalogue order
    within a frame.

    Args:
        plan: from :func:`plan_cutouts`.
        window: side of the cut window in pixels (2 x the cutout when the preset centres).
        zero_point: the preset's zero point (for the ``gain`` column only).
        gain_e_per_dn: CCD gain in electrons per DN.

    Returns:
        iterator of :class:`morphllr.data.raw_image.RawImage`; ``meta`` holds ``frame`` (file), ``band``,
        ``x``, ``y`` (0-based frame pixel), ``ra``, ``dec`` (deg), ``nmgy`` (nanomaggies per DN),
        ``gain`` (electrons per working unit), ``window_x0``, ``window_y0`` (frame pixel of the
        window's first column/row: frame x = window_x0 + catalogue ``center_x``) and
        ``frame_edge_px`` (pixels from the galaxy to the nearest frame edge: below half the
        cutout, part of the cutout lies beyond the frame and is sky noise, ``edge_padded``).
    """
    window = int(window)
    if window <= 0:
        raise MorphllrError(f"cutout window {window}: must be a positive number of pixels")
    for i, header_only in enumerate(plan.frames):
        rows = np.flatnonzero(plan.frame_index == i)
        if not len(rows):
            continue
        frame = read_frame(header_only.path)  # the pixels, once per frame
        image = frame.image
        h, w = image.shape
        gain = frame.gain(zero_point, gain_e_per_dn)
        for r in rows:
            left, top = int(round(plan.x[r])) - window // 2, int(round(plan.y[r])) - window // 2
            cut = np.full((window, window), np.nan)
            outside = np.ones((window, window), bool)
            y0, y1, x0, x1 = max(top, 0), min(top + window, h), max(left, 0), min(left + window, w)
            cut[y0 - top:y1 - top, x0 - left:x1 - left] = image[y0:y1, x0:x1]
            outside[y0 - top:y1 - top, x0 - left:x1 - left] = False
            meta = {"frame": str(frame.path), "band": frame.band, "x": float(plan.x[r]), "y": float(plan.y[r]),
                    "ra": float(plan.ra[r]), "dec": float(plan.dec[r]), "nmgy": frame.nmgy, "gain": gain,
                    "window_x0": left, "window_y0": top,
                    "frame_edge_px": float(frame.edge_distance(plan.x[r], plan.y[r]))}
            source = f"{frame.path}[{top}:{top + window},{left}:{left + window}]"
            yield RawImage(str(plan.ids[r]), cut[None], source, "nanomaggies", frame.pixel_scale, meta,
                           center_tolerance=POSITION_TOLERANCE_PX, kind="flux",
                           outside=outside if outside.any() else None)
        del frame, image
