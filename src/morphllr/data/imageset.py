"""ImageSet: images in model-input space + their catalogue + the recipe that made them.

One HDF5 file (layout in ARCHITECTURE.md)::

    /images        float32 (N, C, H, W)   model input, one image per chunk, compressed
    /flux          float32 (N, C, Hf, Wf) linear sky-subtracted cutouts (optional)
    /segmap        int32   (N, Hf, Wf)    0 sky, 1 central source, >1 companions (optional)
    /segmap_model  uint8   (N, H, W)      central-source mask on the model grid (optional)
    /mask          uint8   (N, Hf, Wf)    1 = excluded pixel: user-masked or beyond the image edge,
                                          filled with sky noise in /flux and /images (optional)
    /mask_model    uint8   (N, H, W)      /mask on the model grid (geometry.model_mask, rule "any":
                                          masked where any flux pixel is) (optional)
    /catalog       astropy Table (HDF5 writer), one row per image, unique ``id``
    attrs: format, format_version, preprocessing (JSON), created_by, images_sha256

Arrays are read lazily (h5py datasets), so sets far larger than memory stream through
training and scoring.  :class:`ImageSetWriter` streams too: memory stays flat in N.
This module is the format (reading, writing, the pixel fingerprint and sketch); the pipelines that
make sets (``morphllr prepare``, flux cutouts, subsets) are in :mod:`morphllr.data.prepare`.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from morphllr import __version__
from morphllr.atomic import atomic_file
from morphllr.errors import MorphllrError

FORMAT = "morphllr.imageset"
FORMAT_VERSION = 1
CATALOG_PATH = "catalog"
_COMPRESSION = "lzf"  # fast and always available in h5py; gzip costs ~5x more CPU here


def _h5py():
    import h5py

    return h5py


def images_sha256_update(digest: "hashlib._Hash", images: np.ndarray) -> None:
    """Feed model-input pixels to a running sha256 (float32, little-endian, C order).

    The fingerprint of a set is this digest over all its images in order, so the same
    pixels give the same fingerprint whether they sit in an ImageSet or a bare array
    (and an (N, H, W) array and its (N, 1, H, W) twin share one).
    """
    digest.update(np.ascontiguousarray(images, dtype="<f4").tobytes())


def fingerprint_batches(batches: Iterable[np.ndarray]) -> str:
    """The pixel fingerprint (:func:`images_sha256_update`) of images given batch by batch, in order.

    Args:
        batches: float32 arrays in order.

    Returns:
        hex digest.
    """
    digest = hashlib.sha256()
    for batch in batches:
        images_sha256_update(digest, batch)
    return digest.hexdigest()


#: random-sign projections kept in a pixel sketch (:func:`sketch_batches`)
SKETCH_PROJECTIONS = 8
#: two sketches agree when the rms and every projection differ by at most this fraction of the rms
SKETCH_RTOL = 1e-5
_MIX = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))


def _position_hash(first: int, count: int) -> np.ndarray:
    """splitmix64 of the positions ``first .. first + count - 1``: 64 random-looking bits per pixel."""
    z = np.arange(first, first + count, dtype=np.uint64) + _MIX[0]
    z = (z ^ (z >> np.uint64(30))) * _MIX[1]  # uint64 arrays wrap around, as the hash wants
    z = (z ^ (z >> np.uint64(27))) * _MIX[2]
    return z ^ (z >> np.uint64(31))


def sketch_batches(batches: Iterable[np.ndarray]) -> dict:
    """A summary of a set's pixels that survives last-bit rounding differences, in one streamed pass.

    The sha256 fingerprint changes with one bit of one pixel, and the same recipe run on another
    CPU kind gives pixels that differ in their last bits (numpy's AVX2 and AVX-512 versions of
    ``exp``, ``sinh``, ... round differently).  The sketch is the set's rms pixel and
    :data:`SKETCH_PROJECTIONS` projections of all its pixels, in order, on fixed pseudo-random
    signs (a hash of each pixel's position in the set), divided by sqrt(number of pixels).  A
    difference ``d`` between two sets of n pixels moves each projection by a normal amount of
    width ``|d| / sqrt(n)``, so sketches that agree to :data:`SKETCH_RTOL` times the rms mean
    that the sets agree to ~1e-5 in relative L2 norm: well above float32 rounding (~1e-7) and
    below most real changes (one image of 40000 replaced moves a projection by ~rms / 200; two
    images swapped, or one pixel off by 10 % of the rms in a set of 10^5 pixels, also show).
    Smaller changes pass: in 5e8 pixels, a few pixels moved by 20 % of the rms.

    Args:
        batches: float32 arrays ``(n, ...)`` in order.

    Returns:
        ``{"n_images", "image_shape", "n_pixels", "rms", "projections"}`` (JSON-able).
    """
    n_images, shape, done = 0, None, 0
    square_sum, sums = 0.0, np.zeros(SKETCH_PROJECTIONS)
    for batch in batches:
        batch = np.asarray(batch, dtype=np.float32)
        flat = batch.reshape(-1).astype(np.float64)
        bits = _position_hash(done, flat.size)
        total = float(flat.sum())
        for k in range(SKETCH_PROJECTIONS):
            chosen = ((bits >> np.uint64(k)) & np.uint64(1)).astype(np.float64)
            sums[k] += 2.0 * float(chosen @ flat) - total  # sum of +-x with + where bit k is set
        square_sum += float(flat @ flat)
        n_images, shape, done = n_images + len(batch), list(batch.shape[1:]), done + flat.size
    scale = 1.0 / max(done, 1) ** 0.5
    return {"n_images": n_images, "image_shape": shape, "n_pixels": done, "rms": square_sum**0.5 * scale,
            "projections": [float(v) * scale for v in sums]}


def sketch_difference(a: dict, b: dict) -> float | None:
    """How far apart two pixel sketches are, in units of the first's rms pixel (inf for other shapes).

    Args:
        a, b: :func:`sketch_batches` records.

    Returns:
        the largest difference of the rms or of one projection, over ``a``'s rms (compare it with
        :data:`SKETCH_RTOL`); ``inf`` when the image counts, shapes or projection counts differ or
        a value is not finite (NaN pixels); None when either record is malformed.
    """
    try:
        if (int(a["n_images"]), list(a["image_shape"])) != (int(b["n_images"]), list(b["image_shape"])) or \
                len(a["projections"]) != len(b["projections"]):
            return float("inf")
        rms = float(a["rms"])
        deltas = [abs(rms - float(b["rms"]))]
        deltas += [abs(float(p) - float(q)) for p, q in zip(a["projections"], b["projections"])]
    except (KeyError, TypeError, ValueError):
        return None
    if not all(np.isfinite(deltas)):  # a NaN pixel makes the rms NaN, which no comparison would refuse
        return float("inf")
    worst = max(deltas)
    return 0.0 if worst == 0.0 else worst / rms if rms > 0 else float("inf")


# ---------------------------------------------------------------------- reading
class ImageSet:
    """A prepared image set backed by one HDF5 file (an ImageSource).

    Use :meth:`open`; arrays are lazy h5py datasets (index them like numpy arrays).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._file = None
        self._catalog = None
        self._open_file()

    @classmethod
    def open(cls, path: str | Path) -> "ImageSet":
        """Open a prepared set.

        Args:
            path: ``.h5`` file written by ``morphllr prepare`` / :class:`ImageSetWriter`.

        Returns:
            ImageSet.
        """
        return cls(path)

    def _open_file(self) -> None:
        h5py = _h5py()
        if not self.path.is_file():
            raise MorphllrError(f"{self.path}: image set not found; create it with `morphllr prepare ... --out {self.path}`")
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as exc:
            raise MorphllrError(
                f"{self.path}: not a readable HDF5 file ({exc}); the file is corrupt or truncated, prepare it again"
            ) from None
        attrs = self._file.attrs
        if attrs.get("format") != FORMAT or "images" not in self._file:
            self._file.close()
            raise MorphllrError(
                f"{self.path}: not a morphllr image set (no format attribute or /images); "
                "make one with `morphllr prepare`, or pass a bare array file where one is accepted"
            )
        if int(attrs.get("format_version", 0)) > FORMAT_VERSION:
            self._file.close()
            raise MorphllrError(f"{self.path}: written by a newer morphllr (format {attrs['format_version']}); upgrade morphllr")
        images = self._file["images"]
        if images.ndim != 4:
            raise MorphllrError(f"{self.path}: /images has shape {images.shape}, expected (N, C, H, W)")

    def close(self) -> None:
        """Close the HDF5 file (the set cannot be read afterwards)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> "ImageSet":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # h5py handles cannot be pickled; DataLoader workers reopen the file instead.
    def __getstate__(self) -> dict:
        return {"path": str(self.path)}

    def __setstate__(self, state: dict) -> None:
        self.path = Path(state["path"])
        self._file = None
        self._catalog = None
        self._open_file()

    def __repr__(self) -> str:
        return f"ImageSet({str(self.path)!r}, n={len(self)}, shape={self.shape})"

    # ------------------------------------------------------------------ arrays
    def _dataset(self, name: str):
        if self._file is None:
            raise MorphllrError(f"{self.path}: image set is closed")
        return self._file[name] if name in self._file else None

    @property
    def images(self):
        """Lazy (N, C, H, W) float32 model-input images."""
        return self._dataset("images")

    @property
    def flux(self):
        """Lazy (N, C, Hf, Wf) linear flux cutouts at the original pixel scale, or None."""
        return self._dataset("flux")

    @property
    def segmap(self):
        """Lazy (N, Hf, Wf) int32 segmentation (0 sky, 1 central, >1 companions), or None."""
        return self._dataset("segmap")

    @property
    def segmap_model(self):
        """Lazy (N, H, W) uint8 central-source mask on the model grid, or None."""
        return self._dataset("segmap_model")

    @property
    def mask(self):
        """Lazy (N, Hf, Wf) uint8 on the flux grid, 1 = excluded pixel (a user's mask or beyond the
        image edge; such pixels hold sky noise in ``/flux``), or None when no pixel of the set is."""
        return self._dataset("mask")

    @property
    def mask_model(self):
        """Lazy (N, H, W) uint8 ``mask`` on the model grid (1 = excluded where any flux pixel mapped into
        the model pixel is; :func:`morphllr.data.geometry.model_mask` with ``rule="any"``), or None."""
        return self._dataset("mask_model")

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(N, C, H, W) of the model-input images."""
        return tuple(int(s) for s in self.images.shape)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def name(self) -> str:
        """File name (used in tables and reports)."""
        return self.path.name

    @property
    def preprocessing(self) -> dict[str, Any]:
        """The recipe the images were made with (dict; empty if unrecorded)."""
        text = self._file.attrs.get("preprocessing", "{}")
        return json.loads(text if isinstance(text, str) else text.decode())

    @property
    def attrs(self) -> dict[str, Any]:
        """All file attributes (format, version, creator, ...)."""
        return dict(self._file.attrs)

    @property
    def catalog(self):
        """astropy Table with one row per image and a unique ``id`` column."""
        if self._catalog is None:
            self._catalog = _read_catalog(self._file, self.path)
        return self._catalog

    def read(self, indices: Sequence[int] | slice | np.ndarray) -> np.ndarray:
        """Images at ``indices`` (any order, repeats allowed) as float32 numpy.

        Args:
            indices: integer indices, a boolean mask or a slice.

        Returns:
            float32 (B, C, H, W).
        """
        images = self.images
        if isinstance(indices, slice):
            return np.asarray(images[indices], dtype=np.float32)
        idx = np.asarray(indices)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64).ravel()
        if idx.size == 0:
            return np.empty((0,) + self.shape[1:], np.float32)
        if idx.min() < -len(self) or idx.max() >= len(self):
            raise MorphllrError(f"{self.path}: index out of range for a set of {len(self)} images")
        idx = np.where(idx < 0, idx + len(self), idx)
        # h5py wants sorted unique indices; read those, then restore the caller's order
        unique, inverse = np.unique(idx, return_inverse=True)
        return np.asarray(images[unique], dtype=np.float32)[inverse]

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """Iterate over all images in order, ``batch_size`` at a time (float32 numpy)."""
        if batch_size <= 0:
            raise MorphllrError(f"batch_size={batch_size} must be positive")
        for start in range(0, len(self), batch_size):
            yield np.asarray(self.images[start : start + batch_size], dtype=np.float32)

    def fingerprint(self) -> str:
        """sha256 of the model-input pixels (float32 little-endian, in order).

        Recorded at write time; recomputed (streamed) for files that lack it.
        """
        stored = self._file.attrs.get("images_sha256")
        if stored:
            return str(stored)
        return fingerprint_batches(self.batches(256))

    # ------------------------------------------------------------------ catalogue update
    def update_catalog(self, table) -> None:
        """Replace the catalogue (e.g. fit-sersic adding columns), atomically within the file.

        The new table is written next to the old one and swapped in by renaming HDF5
        links, so a crash leaves either the old or the new catalogue, never half of one.

        Args:
            table: astropy Table with the same number of rows and a unique ``id`` column.
        """
        from astropy.table import Table

        table = Table(table, copy=False)
        _check_catalog(table, len(self), str(self.path))
        self.close()
        h5py = _h5py()
        try:
            with h5py.File(self.path, "r+") as f:
                _write_catalog(f, table, path="_catalog_new")
                for name in (CATALOG_PATH, CATALOG_PATH + ".__table_column_meta__"):
                    if name in f:
                        del f[name]
                f.move("_catalog_new", CATALOG_PATH)
                if "_catalog_new.__table_column_meta__" in f:
                    f.move("_catalog_new.__table_column_meta__", CATALOG_PATH + ".__table_column_meta__")
        except OSError as exc:
            raise MorphllrError(f"{self.path}: cannot update the catalogue ({exc}); "
                                "make the file writable and close other programs or ImageSet objects using it") from None
        finally:
            self._catalog = None
            self._open_file()


# ---------------------------------------------------------------------- catalogue helpers
def _check_catalog(table, n: int, where: str) -> None:
    if "id" not in table.colnames:
        raise MorphllrError(f"{where}: catalogue has no `id` column; add one (a unique name or number per image)")
    if len(table) != n:
        raise MorphllrError(f"{where}: catalogue has {len(table)} rows but the set has {n} images")
    ids = np.asarray(table["id"])
    unique, counts = np.unique(ids, return_counts=True)
    if len(unique) != len(ids):
        dup = [str(u) for u in unique[counts > 1][:5]]
        raise MorphllrError(f"{where}: duplicated id(s) {dup} in the catalogue; every image needs a unique id")


def _write_catalog(f, table, path: str = CATALOG_PATH) -> None:
    from astropy.table import Table

    table = Table(table, copy=True)
    table.meta = {k: v for k, v in table.meta.items() if _json_able(v)}
    for name in table.colnames:  # HDF5 stores bytes; astropy round-trips str via meta
        if table[name].dtype.kind == "O":
            table[name] = np.asarray([str(v) for v in table[name]])
    table.write(f, path=path, serialize_meta=True)


def _read_catalog(f, path: Path):
    from astropy.table import Table

    if CATALOG_PATH not in f:
        raise MorphllrError(f"{path}: has no /catalog; prepare the set again")
    try:
        table = Table.read(f, path=CATALOG_PATH)
    except Exception as exc:  # astropy raises several types for damaged tables
        raise MorphllrError(f"{path}: cannot read /catalog ({exc}); prepare the set again") from None
    for name in table.colnames:  # bytes columns come back as bytes without meta
        if table[name].dtype.kind == "S":
            table[name] = np.char.decode(table[name], "utf-8")
    return table


#: File attributes every writer sets itself (never copied from another set).
OWN_ATTRS = ("format", "format_version", "preprocessing", "created_by", "images_sha256")


def carried_attrs(attrs: dict[str, Any], drop: Sequence[str] = ()) -> dict[str, Any]:
    """A set's own attributes (its records: archetypes, frames, degrade, ...) to carry into a copy of it.

    Args:
        attrs: ``ImageSet.attrs`` of the source.
        drop: further keys to leave out.

    Returns:
        dict of str / int / float values (numpy scalars and arrays as Python values or JSON text).
    """
    out = {}
    for key, value in attrs.items():
        if key in OWN_ATTRS or key in drop:
            continue
        if isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, np.generic):
            value = value.item()
        elif isinstance(value, np.ndarray):
            value = json.dumps(value.tolist())
        if isinstance(value, (str, int, float)):
            out[key] = value
    return out


def _json_able(value: Any) -> bool:
    try:
        json.dumps(value)
        return True
    except TypeError:
        return False


def catalog_table(rows):
    """Catalogue rows as an astropy Table: a Table (as it is), a dict of columns or a list of row dicts."""
    from astropy.table import Table

    if isinstance(rows, Table):
        return rows
    if isinstance(rows, dict):
        return Table(rows)
    rows = list(rows)
    if not rows:
        return Table()
    return Table(rows=rows, names=list(rows[0].keys()))


# ---------------------------------------------------------------------- writing
class ImageSetWriter:
    """Stream images into a new ImageSet file; renamed into place only when complete.

    Example::

        with ImageSetWriter("set.h5", n=len(files), image_shape=(1, 32, 32),
                            preprocessing=prep.to_dict()) as w:
            for batch, rows in ...:
                w.append(batch, rows)

    Args:
        path: output ``.h5`` file.
        n: expected number of images (a capacity hint; fewer may be written).
        image_shape: (C, H, W) of model-input images.
        flux_shape: (C, Hf, Wf) of the flux cutouts, or None to store no ``/flux``.
        preprocessing: the recipe (dict or Preprocessing).
        overwrite: replace an existing file.
        attrs: extra file attributes (strings or numbers).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        n: int,
        image_shape: tuple[int, ...],
        flux_shape: tuple[int, ...] | None = None,
        preprocessing: dict | Any,
        overwrite: bool = False,
        attrs: dict[str, Any] | None = None,
    ):
        self.path = Path(path)
        self.n = int(n)
        self.image_shape = chw_shape(image_shape, "image_shape")
        self.flux_shape = None if flux_shape is None else chw_shape(flux_shape, "flux_shape")
        prep = preprocessing.to_dict() if hasattr(preprocessing, "to_dict") else dict(preprocessing or {})
        self.preprocessing = prep
        self.overwrite = overwrite
        self.extra_attrs = dict(attrs or {})
        self.count = 0
        self._rows: list = []
        self._digest = hashlib.sha256()
        self._atomic = None
        self._file = None

    def __enter__(self) -> "ImageSetWriter":
        self._atomic = atomic_file(self.path, overwrite=self.overwrite)
        tmp = self._atomic.__enter__()
        self._file = _h5py().File(tmp, "w")
        self._create("images", self.image_shape, np.float32)
        return self

    def _create(self, name: str, item_shape: tuple[int, ...], dtype) -> None:
        capacity = max(self.n, 1)
        self._file.create_dataset(
            name,
            shape=(capacity,) + tuple(item_shape),
            maxshape=(None,) + tuple(item_shape),
            chunks=(1,) + tuple(item_shape),
            dtype=dtype,
            compression=_COMPRESSION,
            shuffle=True,
        )

    def append(self, images, catalog_rows, flux=None, segmap=None, segmap_model=None, mask=None,
               mask_model=None) -> None:
        """Add a batch of images with their catalogue rows (and optional extras).

        Args:
            images: (B, C, H, W) model-input images (a (B, H, W) array means C = 1).
            catalog_rows: astropy Table or list of dicts, B rows, with an ``id``.
            flux: (B, C, Hf, Wf) flux cutouts (needed when ``flux_shape`` was given).
            segmap: (B, Hf, Wf) int segmentation maps.
            segmap_model: (B, H, W) central-source masks on the model grid.
            mask: (B, Hf, Wf) 0/1 excluded pixels on the flux grid; unlike the other extras it may
                start at any append (earlier images read as 0, nothing excluded) and be left out
                of later ones (0).
            mask_model: (B, H, W) the same on the model grid.
        """
        images = np.asarray(images, dtype=np.float32)
        if images.ndim == 3:
            images = images[:, None]
        b = images.shape[0]
        if images.shape[1:] != self.image_shape:
            raise MorphllrError(f"{self.path}: appended images have shape {images.shape[1:]}, expected {self.image_shape}")
        rows = catalog_table(catalog_rows)
        if len(rows) != b:
            raise MorphllrError(f"{self.path}: {b} images but {len(rows)} catalogue rows in one append")
        extras = {"flux": (flux, np.float32, self.flux_shape)}
        if segmap is not None:
            extras["segmap"] = (segmap, np.int32, None)
        if segmap_model is not None:
            extras["segmap_model"] = (segmap_model, np.uint8, None)
        for name, value in (("mask", mask), ("mask_model", mask_model)):
            if value is not None:
                extras[name] = (value, np.uint8, None)
        if flux is None and self.flux_shape is not None:
            raise MorphllrError(f"{self.path}: flux_shape was given, so every append needs flux")
        start, stop = self.count, self.count + b
        self._write("images", images, start, stop)
        for name, (array, dtype, shape) in extras.items():
            if array is None:
                continue
            array = np.asarray(array).astype(dtype, copy=False)
            if name == "flux" and array.ndim == 3:
                array = array[:, None]
            if name not in self._file:
                if self.count and name not in ("mask", "mask_model"):  # masks start late: earlier rows are 0
                    raise MorphllrError(f"{self.path}: {name} must be given from the first append on")
                if shape is None:
                    shape = array.shape[1:]
                self._create(name, shape, dtype)
            if array.shape[0] != b or array.shape[1:] != self._file[name].shape[1:]:
                raise MorphllrError(f"{self.path}: {name} has shape {array.shape}, expected {(b,) + self._file[name].shape[1:]}")
            self._write(name, array, start, stop)
        images_sha256_update(self._digest, images)
        self._rows.append(rows)
        self.count = stop

    def catalog_rows(self):
        """The catalogue rows appended so far, as one astropy Table in image order (what closing writes)."""
        from astropy.table import Table, vstack

        if not self._rows:
            return Table({"id": np.zeros(0, dtype="U1")})
        return vstack(self._rows, metadata_conflicts="silent")

    def replace_catalog_rows(self, table) -> None:
        """Write ``table`` as the catalogue instead of the rows appended so far.

        For changes that need every row at once (joining a user's catalogue after the last
        image); the table still needs one row per image, in image order, with a unique ``id``
        (checked on closing).

        Args:
            table: astropy Table, dict of columns or list of row dicts.
        """
        self._rows = [catalog_table(table)]

    def _write(self, name: str, array: np.ndarray, start: int, stop: int) -> None:
        dataset = self._file[name]
        if stop > dataset.shape[0]:
            dataset.resize(max(stop, 2 * dataset.shape[0]), axis=0)
        dataset[start:stop] = array

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._finish()
        except BaseException:
            self._file.close()
            self._atomic.__exit__(*sys.exc_info())
            raise
        self._file.close()
        if exc_type is None:
            self._atomic.__exit__(None, None, None)
        else:
            self._atomic.__exit__(exc_type, exc, tb)

    def _finish(self) -> None:
        for name in ("images", "flux", "segmap", "segmap_model", "mask", "mask_model"):
            if name in self._file:
                self._file[name].resize(self.count, axis=0)
        table = self.catalog_rows()
        _check_catalog(table, self.count, str(self.path))
        _write_catalog(self._file, table)
        attrs = self._file.attrs
        attrs["format"] = FORMAT
        attrs["format_version"] = FORMAT_VERSION
        attrs["preprocessing"] = json.dumps(self.preprocessing, sort_keys=True)
        attrs["created_by"] = f"morphllr {__version__}"
        attrs["images_sha256"] = self._digest.hexdigest()
        for key, value in self.extra_attrs.items():
            attrs[key] = value if isinstance(value, (str, int, float)) else json.dumps(value)


def chw_shape(shape, what: str) -> tuple[int, int, int]:
    """``shape`` of one image as (C, H, W) ((H, W) means C = 1); ``what`` names it in the error."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 2:
        shape = (1,) + shape
    if len(shape) != 3:
        raise MorphllrError(f"{what}={shape}: expected (C, H, W)")
    return shape


def write_imageset(path, images, catalog, preprocessing, *, flux=None, segmap=None, segmap_model=None,
                   overwrite=False, attrs=None) -> Path:
    """Write a whole in-memory set in one call (small sets, tests, generated data).

    Args:
        path: output ``.h5`` file.
        images: (N, C, H, W) or (N, H, W) model-input images.
        catalog: astropy Table / list of dicts with ``id``; None numbers the images 0..N-1.
        preprocessing: recipe dict or Preprocessing.
        flux, segmap, segmap_model: optional arrays (see :class:`ImageSetWriter.append`).
        overwrite: replace an existing file.
        attrs: extra file attributes.

    Returns:
        the written path.
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4:
        raise MorphllrError(f"{path}: images must be (N, C, H, W) or (N, H, W), got shape {images.shape}")
    if catalog is None:
        catalog = {"id": np.arange(len(images))}
    flux_shape = None if flux is None else np.asarray(flux).shape[1:]
    with ImageSetWriter(path, n=len(images), image_shape=images.shape[1:], flux_shape=flux_shape,
                        preprocessing=preprocessing, overwrite=overwrite, attrs=attrs) as writer:
        writer.append(images, catalog, flux=flux, segmap=segmap, segmap_model=segmap_model)
    return Path(path)


def is_imageset(path: str | os.PathLike) -> bool:
    """True if ``path`` is an HDF5 file carrying the morphllr image-set format attribute."""
    try:
        with _h5py().File(path, "r") as f:
            return f.attrs.get("format") == FORMAT
    except (OSError, TypeError):
        return False
