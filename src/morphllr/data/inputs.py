"""Image sources: one interface over numpy arrays, .npy, .npz, bare HDF5 and ImageSets.

Training, scoring and comparison only ever see an :class:`ImageSource`:

* ``len(src)`` and ``src.shape -> (N, C, H, W)``;
* ``src.batches(batch_size)`` yields float32 numpy ``(B, C, H, W)`` in order;
* ``src.read(indices)`` returns float32 ``(len(indices), C, H, W)`` in the given order;
* ``src.fingerprint()`` is the sha256 of the model-input pixels (streamed);
* ``src.preprocessing`` is a dict (empty for a bare array) and ``src.name`` a label.

Files are opened lazily and read in batches so that memory stays flat for any N
(``.npy`` is memory-mapped; ``.npz`` members are loaded whole because numpy cannot
map compressed archives).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence, runtime_checkable

import numpy as np

from morphllr.data.imageset import FORMAT as IMAGESET_FORMAT, ImageSet, fingerprint_batches
from morphllr.errors import MorphllrError

HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5")
_HDF5_PATH = re.compile(r"^(?P<file>.*?\.(?:h5|hdf5|hdf|he5))(?::(?P<dataset>.+))?$", re.IGNORECASE)
_VALIDATE_BATCH = 256


@runtime_checkable
class ImageSource(Protocol):
    """What training, scoring and comparison need from a set of images."""

    name: str

    def __len__(self) -> int: ...

    @property
    def shape(self) -> tuple[int, int, int, int]: ...

    @property
    def preprocessing(self) -> dict: ...

    def batches(self, batch_size: int) -> Iterator[np.ndarray]: ...

    def read(self, indices: Sequence[int]) -> np.ndarray: ...

    def fingerprint(self) -> str: ...


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes, read in chunks (model weights, PSF images, sky libraries, catalogues).

    Args:
        path: the file.
        chunk: bytes read at a time.

    Returns:
        hex digest.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def check_shape(shape: Sequence[int], name: str) -> tuple[int, int, int, int]:
    """Validate an image-array shape and return it as (N, C, H, W).

    Args:
        shape: (N, H, W) or (N, C, H, W).
        name: file or argument name for the error message.

    Returns:
        the 4-D shape.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) == 2:
        raise MorphllrError(
            f"{name}: got one {shape[0]}x{shape[1]} image (2-D array); images must be stacked as "
            "(N, H, W) or (N, C, H, W) - add a leading axis, e.g. arr[None]")
    if len(shape) not in (3, 4):
        raise MorphllrError(
            f"{name}: image array has {len(shape)} dimensions {shape}; expected (N, H, W) or (N, C, H, W)")
    if len(shape) == 3:
        shape = (shape[0], 1, shape[1], shape[2])
    n, c, h, w = shape
    if n == 0:
        raise MorphllrError(f"{name}: contains no images (N = 0); check the file or the selection")
    if c == 0 or h == 0 or w == 0:
        raise MorphllrError(f"{name}: images have an empty axis {shape}; expected (N, C, H, W)")
    if h % 4 or w % 4:
        hint = ""
        if len(shape) == 4 and w <= 4 < c:
            hint = " (it looks channels-last: transpose to (N, C, H, W), e.g. arr.transpose(0, 3, 1, 2))"
        raise MorphllrError(
            f"{name}: image size {h}x{w} is not divisible by 4 (PixelCNN++ halves it twice){hint}; "
            "crop or resample, e.g. `morphllr prepare --size` with a multiple of 4")
    return shape


def _check_dtype(dtype: np.dtype, name: str) -> None:
    if not (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer) or dtype == np.bool_):
        raise MorphllrError(f"{name}: pixel type {dtype} is not numeric; save the images as float32")


class ArraySource:
    """An :class:`ImageSource` over a numpy array, ``.npy``, ``.npz`` or an HDF5 dataset.

    Args:
        data: array-like with ``.shape``, ``.dtype`` and slicing ((N, H, W) or (N, C, H, W)).
        name: label used in messages and outputs.
        preprocessing: how the pixels were made (empty when unknown).
        opener: for HDF5, a zero-argument callable returning the dataset; reopened after
            a fork (DataLoader workers, DDP) because h5py handles do not survive it.
    """

    def __init__(self, data: Any = None, name: str = "array", preprocessing: dict | None = None,
                 opener=None, shape: Sequence[int] | None = None, dtype: Any = None):
        self.name = str(name)
        self._preprocessing = dict(preprocessing or {})
        self._opener = opener
        self._data = data
        self._pid = os.getpid()
        raw_shape = shape if shape is not None else data.shape
        raw_dtype = np.dtype(dtype if dtype is not None else data.dtype)
        _check_dtype(raw_dtype, self.name)
        self._squeeze_channel = len(raw_shape) == 3
        self._shape = check_shape(raw_shape, self.name)
        self._fingerprint: str | None = None

    # -- protocol ----------------------------------------------------------------------
    def __len__(self) -> int:
        return self._shape[0]

    def __repr__(self) -> str:
        return f"ArraySource({self.name!r}, shape={self._shape})"

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return self._shape

    @property
    def preprocessing(self) -> dict:
        return dict(self._preprocessing)

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """Yield float32 (B, C, H, W) batches in order.

        Args:
            batch_size: images per batch (the last one may be smaller).

        Returns:
            (yields) float32 arrays.
        """
        batch_size = max(1, int(batch_size))
        for start in range(0, len(self), batch_size):
            yield self._slice(start, min(len(self), start + batch_size))

    def read(self, indices: Sequence[int]) -> np.ndarray:
        """Images at ``indices`` (any order, repeats allowed) as float32 (B, C, H, W).

        Args:
            indices: integer positions in 0..N-1.

        Returns:
            float32 array.
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise MorphllrError(f"{self.name}: image index out of range 0..{len(self) - 1}")
        idx = np.where(idx < 0, idx + len(self), idx)
        # h5py wants increasing unique indices: read those, then put them back in order
        uniq, inverse = np.unique(idx, return_inverse=True)
        data = self._dataset()
        if uniq.size and uniq[-1] - uniq[0] + 1 == uniq.size:
            block = data[int(uniq[0]):int(uniq[-1]) + 1]
        else:
            block = data[uniq]
        return self._as_model_input(np.asarray(block), uniq)[inverse]

    def fingerprint(self) -> str:
        """sha256 of the model-input pixels (computed once, streamed).

        Returns:
            hex digest.
        """
        if self._fingerprint is None:
            self._fingerprint = fingerprint_batches(self.batches(_VALIDATE_BATCH))
        return self._fingerprint

    # -- helpers -----------------------------------------------------------------------
    def _dataset(self):
        if self._opener is not None and (self._data is None or self._pid != os.getpid()):
            self._data = self._opener()
            self._pid = os.getpid()
        return self._data

    def _slice(self, start: int, stop: int) -> np.ndarray:
        return self._as_model_input(np.asarray(self._dataset()[start:stop]), np.arange(start, stop))

    def _as_model_input(self, block: np.ndarray, positions: np.ndarray) -> np.ndarray:
        check_float32_range(block, self.name, positions)
        if self._squeeze_channel:
            block = block[:, None]
        # always a private writable copy: memmaps and h5py reads must not leak out read-only
        return np.array(block, dtype=np.float32, order="C", copy=True)

    def __getstate__(self):
        state = self.__dict__.copy()
        if self._opener is not None:
            state["_data"] = None  # h5py objects cannot be pickled; reopen in the child
        return state


#: largest magnitude a float32 holds; wider inputs beyond it would silently become inf
FLOAT32_MAX = float(np.finfo(np.float32).max)


def check_float32_range(block: np.ndarray, name: str, positions: np.ndarray) -> None:
    """Refuse finite values that float32 (the models' input type) cannot hold.

    Args:
        block: images as read (any dtype; only floats wider than float32 can overflow it).
        name: the source's name for the message.
        positions: index in the whole set of each image of ``block``.

    Returns:
        None; raises MorphllrError naming the images.
    """
    if not (np.issubdtype(block.dtype, np.floating) and block.dtype.itemsize > 4):
        return
    with np.errstate(invalid="ignore"):
        big = np.abs(block) > FLOAT32_MAX  # NaN compares False: check_batch reports those
    if big.any():
        images = np.asarray(positions)[big.reshape(len(block), -1).any(axis=1)]
        raise MorphllrError(
            f"{name}: image(s) {_few(images)} hold values like {float(block[big].flat[0]):g}, beyond float32 "
            f"(|x| <= {FLOAT32_MAX:.3g}), the models' input type; these are not model-input pixels - prepare the "
            "images with `morphllr prepare` or rescale them")


def validate_source(source: ImageSource, discrete: bool = False, batch_size: int = _VALIDATE_BATCH) -> None:
    """Stream through ``source`` once and reject non-finite or (for discrete heads) non-8-bit pixels.

    Args:
        source: the images.
        discrete: the model's likelihood head is discrete (:func:`morphllr.model.heads.is_discrete_head`):
            it needs integers 0..255.
        batch_size: images read at a time (memory stays flat).

    Returns:
        None; raises MorphllrError naming the first bad images.
    """
    for start, batch in _enumerate_batches(source, batch_size):
        check_batch(batch, source.name, discrete, start)


def _enumerate_batches(source: ImageSource, batch_size: int) -> Iterator[tuple[int, np.ndarray]]:
    start = 0
    for batch in source.batches(batch_size):
        yield start, batch
        start += len(batch)


def check_batch(batch: np.ndarray, name: str, discrete: bool = False, start: int = 0) -> None:
    """Reject NaN/inf pixels (and for discrete heads, values that are not integers 0..255).

    Args:
        batch: float32 (B, C, H, W).
        name: the source's name for the message.
        discrete: the likelihood head of the model that will see the batch is discrete
            (:func:`morphllr.model.heads.is_discrete_head`).
        start: index of the batch's first image in the whole set.

    Returns:
        None; raises MorphllrError.
    """
    finite = np.isfinite(batch)
    if not finite.all():
        bad_images = np.flatnonzero(~finite.reshape(len(batch), -1).all(axis=1)) + start
        n_bad = int((~finite).sum())
        raise MorphllrError(
            f"{name}: {n_bad} NaN/inf pixel(s) in image(s) {_few(bad_images)}; "
            "replace them (e.g. with the sky level) or drop those images before training/scoring")
    if discrete:
        out_of_range = (batch < 0) | (batch > 255)
        non_integer = batch != np.round(batch)
        bad = out_of_range | non_integer
        if bad.any():
            bad_images = np.flatnonzero(bad.reshape(len(batch), -1).any(axis=1)) + start
            raise MorphllrError(
                f"{name}: the discretized head needs integer pixel values 0..255, but image(s) "
                f"{_few(bad_images)} have values like {float(batch[bad].flat[0]):g}; "
                "quantise to 8 bits or choose --head gaussian")


def _few(indices: np.ndarray, limit: int = 5) -> str:
    shown = ", ".join(str(int(i)) for i in indices[:limit])
    more = f" and {len(indices) - limit} more" if len(indices) > limit else ""
    return shown + more


def open_images(data: Any, key: str | None = None) -> ImageSource:
    """Open images from a numpy array, an ImageSource or a file path.

    Accepted paths: ``x.npy`` (memory-mapped), ``x.npz`` (its only array, or ``key``),
    ``x.h5`` with one image dataset, ``x.h5:group/dataset``, or a morphllr ImageSet
    (``x.h5`` written by ``morphllr prepare``).

    Args:
        data: path, numpy array or an existing ImageSource (returned unchanged).
        key: array name inside an ``.npz`` or dataset path inside an HDF5 file.

    Returns:
        an ImageSource.
    """
    if isinstance(data, (str, os.PathLike)):
        return _open_path(str(data), key)
    if isinstance(data, np.ndarray):
        return ArraySource(data, name="array")
    if isinstance(data, ImageSource):
        return data
    if hasattr(data, "shape") and hasattr(data, "dtype") and hasattr(data, "__getitem__"):
        # torch tensors and other array-likes
        arr = data.detach().cpu().numpy() if hasattr(data, "detach") else np.asarray(data)
        return ArraySource(arr, name="array")
    raise MorphllrError(
        f"images: cannot use an object of type {type(data).__name__}; pass a numpy array or a "
        ".npy / .npz / .h5 file")


def _open_path(text: str, key: str | None) -> ImageSource:
    path = Path(text)
    match = _HDF5_PATH.match(text)
    if not path.exists() and match and Path(match["file"]).exists():
        return _open_hdf5(Path(match["file"]), key or match["dataset"])
    if not path.exists():
        raise MorphllrError(f"{text}: no such file; check the path")
    if path.is_dir():
        raise MorphllrError(
            f"{text}: is a folder; pass one image file (.npy, .npz, .h5) - convert FITS/JPEG folders "
            "with `morphllr prepare`")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return _open_npy(path)
    if suffix == ".npz":
        return _open_npz(path, key)
    if suffix in HDF5_SUFFIXES:
        return _open_hdf5(path, key)
    raise MorphllrError(
        f"{text}: unsupported image file type '{suffix or '(none)'}'; use .npy, .npz or .h5 "
        "(convert FITS / JPEG / PNG with `morphllr prepare`)")


def _open_npy(path: Path) -> ArraySource:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise MorphllrError(f"{path}: not a plain numeric .npy array ({exc}); save with np.save(arr)") from None
    except OSError as exc:
        raise MorphllrError(f"{path}: cannot read .npy file ({exc}); is it truncated?") from None
    return ArraySource(arr, name=path.name)


def _open_npz(path: Path, key: str | None) -> ArraySource:
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise MorphllrError(f"{path}: cannot read .npz archive ({exc})") from None
    with archive:
        names = list(archive.files)
        if key is None:
            if len(names) != 1:
                raise MorphllrError(
                    f"{path}: holds {len(names)} arrays ({', '.join(names) or 'none'}); "
                    "choose one with --key NAME")
            key = names[0]
        if key not in names:
            raise MorphllrError(f"{path}: has no array '{key}'; it holds {', '.join(names)}")
        try:
            arr = archive[key]
        except ValueError as exc:
            raise MorphllrError(f"{path}: array '{key}' is not plain numeric ({exc})") from None
    return ArraySource(arr, name=f"{path.name}:{key}" if len(names) > 1 else path.name)


def _open_hdf5(path: Path, dataset: str | None) -> ImageSource:
    import h5py

    try:
        with h5py.File(path, "r") as fh:
            fmt = fh.attrs.get("format")
            if isinstance(fmt, bytes):
                fmt = fmt.decode()
            if fmt == IMAGESET_FORMAT and dataset is None:
                return ImageSet.open(path)
            if dataset is None:
                dataset = _single_image_dataset(fh, path)
            if dataset not in fh or not isinstance(fh[dataset], h5py.Dataset):
                raise MorphllrError(
                    f"{path}: has no dataset '{dataset}'; available: {', '.join(_datasets(fh)) or 'none'}")
            ds = fh[dataset]
            shape, dtype = ds.shape, ds.dtype
    except OSError as exc:
        raise MorphllrError(f"{path}: cannot open as HDF5 ({exc}); is it truncated or another format?") from None

    return ArraySource(None, name=f"{path.name}:{dataset}", opener=_HDF5Dataset(str(path), dataset),
                       shape=shape, dtype=dtype)


class _HDF5Dataset:
    """Picklable recipe to (re)open one HDF5 dataset read-only."""

    def __init__(self, path: str, dataset: str):
        self.path, self.dataset = path, dataset

    def __call__(self):
        import h5py

        return h5py.File(self.path, "r")[self.dataset]


def _datasets(fh) -> list[str]:
    import h5py

    found: list[str] = []
    fh.visititems(lambda name, obj: found.append(name) if isinstance(obj, h5py.Dataset) else None)
    return found


def _single_image_dataset(fh, path: Path) -> str:
    candidates = [n for n in _datasets(fh) if len(fh[n].shape) in (3, 4)]
    if len(candidates) == 1:
        return candidates[0]
    listing = ", ".join(candidates) or "none with 3 or 4 dimensions"
    raise MorphllrError(
        f"{path}: cannot tell which dataset holds the images ({listing}); "
        f"name it as {path.name}:DATASET or with --key")

