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
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from morphllr.atomic import atomic_file, claims
from morphllr.errors import MorphllrError

FORMAT = "morphllr.imageset"
FORMAT_VERSION = 1
CATALOG_PATH = "catalog"
_COMPRESSION = "lzf"  # fast and always available in h5py; gzip costs ~5x more CPU here


def _h5py():
    import h5py

    return h5py


def _version() -> str:
    from morphllr import __version__

    return f"morphllr {__version__}"


def images_sha256_update(digest: "hashlib._Hash", images: np.ndarray) -> None:
    """Feed model-input pixels to a running sha256 (float32, little-endian, C order).

    The fingerprint of a set is this digest over all its images in order, so the same
    pixels give the same fingerprint whether they sit in an ImageSet or a bare array.
    """
    digest.update(np.ascontiguousarray(images, dtype="<f4").tobytes())


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
        digest = hashlib.sha256()
        for batch in self.batches(256):
            images_sha256_update(digest, batch)
        return digest.hexdigest()

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


def _as_table(rows):
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
        self.image_shape = _chw(image_shape, "image_shape")
        self.flux_shape = None if flux_shape is None else _chw(flux_shape, "flux_shape")
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
        rows = _as_table(catalog_rows)
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
            self._atomic.__exit__(*_exc_info())
            raise
        self._file.close()
        if exc_type is None:
            self._atomic.__exit__(None, None, None)
        else:
            self._atomic.__exit__(exc_type, exc, tb)

    def _finish(self) -> None:
        from astropy.table import Table, vstack

        for name in ("images", "flux", "segmap", "segmap_model", "mask", "mask_model"):
            if name in self._file:
                self._file[name].resize(self.count, axis=0)
        if self._rows:
            table = vstack(self._rows, metadata_conflicts="silent")
        else:
            table = Table({"id": np.zeros(0, dtype="U1")})
        _check_catalog(table, self.count, str(self.path))
        _write_catalog(self._file, table)
        attrs = self._file.attrs
        attrs["format"] = FORMAT
        attrs["format_version"] = FORMAT_VERSION
        attrs["preprocessing"] = json.dumps(self.preprocessing, sort_keys=True)
        attrs["created_by"] = _version()
        attrs["images_sha256"] = self._digest.hexdigest()
        for key, value in self.extra_attrs.items():
            attrs[key] = value if isinstance(value, (str, int, float)) else json.dumps(value)


def _exc_info():
    import sys

    return sys.exc_info()


def _chw(shape, what: str) -> tuple[int, int, int]:
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


def open_images(source):
    """Open any image source (ImageSet, .npy, .npz, bare HDF5, array): see morphllr.data.inputs."""
    from morphllr.data import inputs as sources

    return sources.open_images(source)


# ---------------------------------------------------------------------- building sets from flux
def flux_products(flux: np.ndarray, preprocessing, segmentation: str | None = "sep") -> dict[str, np.ndarray]:
    """Everything an ImageSet stores that derives from flux cutouts.

    Observed cutouts and archetypes both go through here, so both get identical
    model images (``preprocessing.flux_to_model``) and segmentation products.

    Args:
        flux: (B, C, Hf, Wf) sky-subtracted linear flux cutouts.
        preprocessing: Preprocessing (or its dict / preset name).
        segmentation: ``sep``, ``photutils`` or None (skip segmentation).

    Returns:
        dict with ``images`` (B, C, H, W) float32 and, when segmenting, ``segmap``,
        ``segmap_model``, ``sky_sigma``, ``central_found``.
    """
    from morphllr.data.preprocess import as_preprocessing

    prep = as_preprocessing(preprocessing)
    flux = np.asarray(flux, dtype=np.float32)
    if flux.ndim == 3:
        flux = flux[:, None]
    out = {"images": prep.flux_to_model(flux)}
    if segmentation:
        from morphllr.data.geometry import model_mask
        from morphllr.data.segmentation import segment_batch

        segmaps, sigmas, found = segment_batch(flux, method=segmentation)
        out.update(segmap=segmaps, segmap_model=model_mask(segmaps, prep), sky_sigma=sigmas, central_found=found)
    return out


def write_flux_set(path, flux, catalog, preprocessing, *, segmentation: str | None = "sep",
                   overwrite: bool = False, attrs=None, batch_size: int = 256) -> Path:
    """Write an ImageSet from flux cutouts (e.g. rendered archetypes), streaming in batches.

    Args:
        path: output ``.h5``.
        flux: (N, C, Hf, Wf) flux cutouts (numpy or lazy h5py dataset).
        catalog: astropy Table / dict / list of dicts with ``id`` (N rows).
        preprocessing: recipe (Preprocessing, dict or preset name); must match the
            observed set's so the two models see the same pixels.
        segmentation: ``sep``, ``photutils`` or None.
        overwrite: replace an existing file.
        attrs: extra file attributes.
        batch_size: images per batch.

    Returns:
        the written path.
    """
    from morphllr.data.preprocess import as_preprocessing

    prep = as_preprocessing(preprocessing)
    table = _as_table(catalog)
    n = len(flux)
    if len(table) != n:
        raise MorphllrError(f"{path}: {n} flux cutouts but {len(table)} catalogue rows")
    flux_shape = _chw(np.shape(flux)[1:], "flux")
    image_shape = (flux_shape[0],) + prep.model_shape(flux_shape[1:])
    with ImageSetWriter(path, n=n, image_shape=image_shape, flux_shape=flux_shape,
                        preprocessing=prep, overwrite=overwrite, attrs=attrs) as writer:
        for start in range(0, n, batch_size):
            batch = np.asarray(flux[start : start + batch_size], dtype=np.float32)
            rows = table[start : start + batch_size]
            products = flux_products(batch, prep, segmentation)
            if segmentation:
                rows = rows.copy()
                rows["sky_sigma"] = products["sky_sigma"]
                rows["central_found"] = products["central_found"]
            writer.append(products["images"], rows, flux=batch, segmap=products.get("segmap"),
                          segmap_model=products.get("segmap_model"))
    return Path(path)


@claims({"out": "--out"}, inputs=("src",))
def write_subset(src, out, where: Sequence[str], *, overwrite: bool = False, batch_size: int = 256) -> dict[str, Any]:
    """Copy the images of a set whose catalogue rows satisfy every condition (``morphllr subset``).

    The rows are copied as they are (``/images``, ``/flux``, segmentation and masks, catalogue), with the
    source's preprocessing record and attributes, so a subset is exactly part of its set.

    Args:
        src: image set (.h5).
        out: output ``.h5``.
        where: conditions ``COLUMN OP VALUE`` (:func:`morphllr.data.files.catalog_where`), all must hold.
        overwrite: replace ``out``.
        batch_size: images copied together.

    Returns:
        the record stored in the attribute ``subset``: source, its images_sha256, conditions, ``n_source``,
        ``n_images``.
    """
    from morphllr.data.files import catalog_where

    where = [where] if isinstance(where, str) else list(where)
    if not where:
        raise MorphllrError("subset: give at least one --where condition, e.g. --where 'label == spiral'")
    src = Path(src)
    with ImageSet.open(src) as s:
        catalog = s.catalog
        keep = np.ones(len(catalog), bool)
        for condition in where:
            keep &= catalog_where(catalog, condition)
        rows = np.flatnonzero(keep)
        if not len(rows):
            raise MorphllrError(f"--where {' and '.join(where)}: no image of {src} matches; check the column's "
                                "values (e.g. `label == spiral`)")
        attrs = s.attrs
        record = {"source": src.name, "source_images_sha256": attrs.get("images_sha256"), "where": where,
                  "n_source": len(catalog), "n_images": int(len(rows))}
        record = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in record.items()}
        extras = [name for name in ("flux", "segmap", "segmap_model", "mask", "mask_model")
                  if s._dataset(name) is not None]
        flux_shape = s.flux.shape[1:] if "flux" in extras else None
        with ImageSetWriter(out, n=len(rows), image_shape=s.shape[1:], flux_shape=flux_shape,
                            preprocessing=s.preprocessing, overwrite=overwrite,
                            attrs={**carried_attrs(attrs, drop=("subset",)), "subset": record}) as writer:
            for start in range(0, len(rows), batch_size):
                part = rows[start : start + batch_size]
                data = {name: np.asarray(s._dataset(name)[part]) for name in extras}
                writer.append(np.asarray(s.images[part]), catalog[part], **data)
    return record


# ---------------------------------------------------------------------- preparing sets from files
def process_record(record, preprocessing, pixel_scale: float | None = None, segmentation: str | None = "sep"):
    """One raw image -> (flux cutout, segmentation map or None, catalogue row, excluded-pixel mask or None).

    The frame is segmented once (masked pixels and pixels beyond the image take no part);
    the segmentation both centres the cutout (when the recipe says so) and, cut to the same
    window, becomes the stored ``/segmap``.  The window is never moved: where it runs past
    the image, and at masked pixels, the cutout holds noise drawn from the image's own sky
    (:func:`morphllr.data.preprocess.cut_with_sky`), and the row says how much
    (``edge_padded``, ``masked_fraction``) and where the window lies (``cutout_x0``,
    ``cutout_y0``: frame pixel of its first column/row, negative past the edge; the
    detected centre ``center_x`` = ``cutout_x0 + cutout // 2`` to within half a pixel).

    Args:
        record: :class:`morphllr.data.files.RawImage`.
        preprocessing: Preprocessing.
        pixel_scale: arcsec/px overriding what the file says.
        segmentation: ``sep``, ``photutils`` or None.

    Returns:
        (flux (C, Hf, Wf) float32, int32 (Hf, Wf) segmap or None, row dict, uint8 (Hf, Wf) mask
        (1 = user-masked or beyond the image) or None when no pixel is); the row also carries
        ``_kind`` (the image's input kind) for :func:`prepare_imageset`.
    """
    from morphllr.data.preprocess import MAX_EDGE_PADDED, cut_with_sky, excluded_pixels
    from morphllr.data.segmentation import renumber, segment

    prep = preprocessing
    scale = pixel_scale or record.pixel_scale
    kind = prep.resolve_input_kind(record.kind, record.source)
    frame, info = prep.flux_frame(record.image, source=record.source, units=record.units, input_pixel_scale=scale,
                                  mask=record.mask, outside=record.outside)
    _, h, w = frame.shape
    cx, cy = (w - 1) / 2, (h - 1) / 2
    seg = None
    excluded = excluded_pixels(info, padded=True)
    if segmentation or prep.center:
        # a frame larger than the cutout may hold the galaxy further from its centre
        max_offset = 0.25 * min(h, w) if prep.center and prep.cutout and prep.cutout < min(h, w) else None
        if record.center_tolerance is not None:  # the position is known: never re-centre on a neighbour
            max_offset = float(record.center_tolerance)
        seg = segment(frame, method=segmentation or "sep", max_offset=max_offset,
                      mask=excluded if excluded.any() else None)
        near = record.center_tolerance is None or np.hypot(seg.x - cx, seg.y - cy) <= record.center_tolerance
        if prep.center and seg.central_found and near:  # a blend's centroid far off: keep the known position
            cx, cy = seg.x, seg.y
    cut, extra = cut_with_sky(frame, info, cx, cy, prep.cutout, record.source, seed=record.id, noise_free=prep.pad,
                              max_edge=None if prep.edge == "refuse" else MAX_EDGE_PADDED)
    row = {"id": record.id, "file": record.source, "input_pixel_scale": float(scale or np.nan),
           "sky_level": info["sky"], "n_nonfinite": info["n_nonfinite"], "center_x": float(cx), "center_y": float(cy),
           "cutout_x0": extra["cutout_x0"], "cutout_y0": extra["cutout_y0"], "edge_padded": extra["edge_padded"],
           "masked_fraction": extra["masked_fraction"], "nonfinite_fraction": extra["nonfinite_fraction"]}
    if prep.pad:  # noise-free simulations: the share of 0 flux around them (not sky noise, not excluded)
        row["zero_padded"] = extra["zero_padded"]
    row.update(record.meta)
    segmap = None
    if segmentation:
        if prep.cutout is not None:
            from morphllr.data.preprocess import take_window

            segmap = renumber(take_window(seg.segmap, extra["cutout_y0"], extra["cutout_x0"], prep.cutout)[0])
        else:
            segmap = renumber(seg.segmap)
        row.update(sky_sigma=seg.sky_sigma, central_found=bool(seg.central_found and (segmap == 1).any()))
    row["_kind"] = kind
    excluded_cut = excluded_pixels(extra)  # user-masked, beyond the image, NaN/inf: sky noise in the cutout
    return cut, segmap, row, (excluded_cut.astype(np.uint8) if excluded_cut.any() else None)


def _process_chunk(args):
    records, prep, pixel_scale, segmentation = args
    return [process_record(r, prep, pixel_scale, segmentation) for r in records]


def _processed(records, prep, pixel_scale, segmentation, workers: int, chunk: int) -> Iterator:
    """process_record over ``records``, in order, on ``workers`` processes (memory bounded).

    Args:
        records: iterable of RawImage (read lazily: at most ``2 x workers`` chunks in flight).
        prep, pixel_scale, segmentation: as for :func:`process_record`.
        workers: processes (1 = in this process); the pool is :func:`morphllr.parallel.map_in_processes`'s.
        chunk: records per job.

    Returns:
        (yields) (flux, segmap, row, mask) per record, in order.
    """
    import itertools

    from morphllr.parallel import map_in_processes

    records = iter(records)
    if workers <= 1:
        for record in records:
            yield process_record(record, prep, pixel_scale, segmentation)
        return
    jobs = iter(lambda: list(itertools.islice(records, chunk)), [])
    parts = ((block, prep, pixel_scale, segmentation) for block in jobs)
    for results in map_in_processes(_process_chunk, parts, workers):
        yield from results


@claims({"path": "--out"})  # checked and locked before the first image is read
def prepare_imageset(
    records,
    path,
    preprocessing,
    *,
    n: int,
    catalog=None,
    catalog_name: str = "catalog",
    pixel_scale: float | None = None,
    segmentation: str | None = "sep",
    store_flux: bool = True,
    overwrite: bool = False,
    batch_size: int = 64,
    workers: int = 1,
    progress=None,
    attrs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Cut, segment, stretch and write raw images as an ImageSet (``morphllr prepare``).

    Args:
        records: iterable of :class:`morphllr.data.files.RawImage`.
        path: output ``.h5``.
        preprocessing: recipe (Preprocessing, dict or preset name).
        n: number of records (capacity hint and progress total).
        catalog: optional astropy Table with string ``id`` joined onto the images.
        catalog_name: catalogue file name for the report.
        pixel_scale: arcsec/px of the inputs, overriding what the files say.
        segmentation: ``sep``, ``photutils`` or None.
        store_flux: keep the flux cutouts in ``/flux`` (needed by fit-sersic/archetypes).
        overwrite: replace an existing file.
        batch_size: images written together.
        workers: processes cutting and segmenting in parallel (1 = in this process).
        progress: callable(advance: int) called after each batch (e.g. a rich progress bar).
        attrs: extra file attributes (e.g. which frames cutouts came from), strings, numbers or JSON-able.

    Returns:
        report dict: ``n_images``, ``n_nonfinite_pixels``, ``n_images_with_nonfinite``,
        ``n_central_missing``, ``n_edge_padded`` (cutouts running past the image edge, padded
        with sky noise), ``n_zero_padded`` (cutouts of ``pad`` recipes with 0 flux around), ``n_edge_dropped`` and ``edge_dropped_ids`` (such galaxies dropped by
        ``edge = "refuse"``), ``n_masked`` (images with masked pixels), ``input_kind``,
        ``image_shape``, ``flux_shape`` and, with a catalogue, ``catalog`` (the join report of
        :func:`morphllr.data.files.join_catalog`).

    The recipe recorded in the set is ``preprocessing`` with its ``input_kind`` resolved (the
    recipe's, else the readers'; one kind per set) and, when it does not resample
    (``pixel_scale`` None), ``pixel_scale`` set to a given ``pixel_scale`` with ``pixel_scale_given``:
    the set's pixels then are at that scale, and no model check compares it.
    """
    from astropy.table import Table, vstack

    from morphllr.data.preprocess import as_preprocessing

    prep = as_preprocessing(preprocessing)
    if prep.pixel_scale_given:  # a record's scale (--like a set of `--preset none --pixel-scale`): resample nothing
        prep = prep.replace(pixel_scale=None, pixel_scale_given=False)
    if pixel_scale is not None and prep.pixel_scale is None:  # nothing is resampled: the inputs' scale is the set's
        prep = prep.replace(pixel_scale=float(pixel_scale), pixel_scale_given=True)
    path = Path(path)
    report = {"n_images": 0, "n_nonfinite_pixels": 0, "n_images_with_nonfinite": 0, "n_central_missing": 0,
              "n_edge_padded": 0, "n_edge_dropped": 0, "edge_dropped_ids": [], "n_masked": 0, "n_zero_padded": 0,
              "input_kind": prep.input_kind}
    state = {"writer": None, "first": None, "kind": None}
    pending: list = []

    def flush():
        flux = np.stack([f for f, _, _, _ in pending])
        names = list(dict.fromkeys(k for _, _, r, _ in pending for k in r))  # files may differ in meta keys
        rows = Table(rows=[[r.get(k, np.nan) for k in names] for _, _, r, _ in pending], names=names)
        images = prep.flux_to_model(flux)
        segmaps = segmap_model = masks = mask_model = None
        if segmentation:
            from morphllr.data.geometry import model_mask

            segmaps = np.stack([s for _, s, _, _ in pending])
            segmap_model = model_mask(segmaps, prep)
        if any(m is not None for _, _, _, m in pending):
            from morphllr.data.geometry import model_mask

            masks = np.stack([np.zeros(f.shape[1:], np.uint8) if m is None else m for f, _, _, m in pending])
            mask_model = model_mask(masks, prep, rule="any")  # one masked flux pixel masks its model pixel
        if state["writer"] is None:
            writer = ImageSetWriter(path, n=n, image_shape=images.shape[1:],
                                    flux_shape=flux.shape[1:] if store_flux else None,
                                    preprocessing=prep.replace(input_kind=state["kind"]), overwrite=overwrite,
                                    attrs=attrs)
            writer.__enter__()
            state["writer"] = writer
            report.update(image_shape=list(images.shape[1:]), flux_shape=list(flux.shape[1:]))
        state["writer"].append(images, rows, flux=flux if store_flux else None, segmap=segmaps,
                               segmap_model=segmap_model, mask=masks, mask_model=mask_model)
        if progress:
            progress(len(pending))
        pending.clear()

    try:
        for flux, segmap, row, mask in _processed(records, prep, pixel_scale, segmentation, workers, chunk=16):
            kind = row.pop("_kind")
            if state["kind"] is None:
                state["kind"] = kind
                report["input_kind"] = kind
            elif kind != state["kind"]:
                from morphllr.data.preprocess import INPUT_KIND_TEXT

                raise MorphllrError(
                    f"{row['file']}: holds {INPUT_KIND_TEXT[kind]}, but the images before it hold "
                    f"{INPUT_KIND_TEXT[state['kind']]}; one set holds one kind of pixels: prepare them separately")
            if row["edge_padded"] > 0:
                if prep.edge == "refuse":
                    report["n_edge_dropped"] += 1
                    report["edge_dropped_ids"].append(str(row["id"]))
                    if progress:
                        progress(1)
                    continue
                report["n_edge_padded"] += 1
            report["n_masked"] += bool(row["masked_fraction"] > 0)
            report["n_zero_padded"] += bool(row.get("zero_padded", 0) > 0)
            if state["first"] is None:
                state["first"] = (flux.shape, row["file"])
            elif flux.shape != state["first"][0]:
                shape0, file0 = state["first"]
                raise MorphllrError(
                    f"{row['file']}: cutout is {flux.shape[1]}x{flux.shape[2]} with {flux.shape[0]} channel(s), but "
                    f"{file0} gave {shape0[1]}x{shape0[2]} with {shape0[0]}; use a preset with a fixed cutout "
                    "size (e.g. zanisi21) or inputs of one size"
                )
            report["n_nonfinite_pixels"] += row["n_nonfinite"]
            report["n_images_with_nonfinite"] += bool(row["n_nonfinite"])
            pending.append((flux, segmap, row, mask))
            if len(pending) >= batch_size:
                flush()
        if pending:
            flush()
        writer = state["writer"]
        if writer is None and report["n_edge_dropped"]:
            raise MorphllrError(f"{path}: every one of the {report['n_edge_dropped']} galaxies has a cutout running past "
                                "its image's edge, and --edge refuse drops them all; use --edge pad (sky noise, "
                                "flagged in the catalogue column edge_padded) or larger images")
        if writer is None:
            raise MorphllrError(f"{path}: no images were read from the inputs; check the paths")
        # the catalogue join needs all rows: replace the writer's buffered rows before closing
        all_rows = vstack(writer._rows, metadata_conflicts="silent")
        if catalog is not None:
            from morphllr.data.files import join_catalog

            all_rows, join_report = join_catalog(all_rows, catalog, catalog_name)
            report["catalog"] = join_report
        writer._rows = [all_rows]
        if report["n_edge_dropped"]:
            writer.extra_attrs["edge_dropped_ids"] = report["edge_dropped_ids"]
        report["n_images"] = writer.count
        if segmentation:
            report["n_central_missing"] = int(np.sum(~np.asarray(all_rows["central_found"], bool)))
        writer.__exit__(None, None, None)
    except BaseException:
        if state["writer"] is not None:
            state["writer"].__exit__(*_exc_info())
        raise
    return report
