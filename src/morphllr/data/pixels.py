"""One opened set and its pixel masks on the model grid, read batch by batch or by rows.

:class:`OpenedSet` bundles an image source with its lazy masks: the central-source mask
(``/segmap_model``), the flux-grid segmentation (``/segmap``) and the excluded pixels
(``/mask_model``, 1 = excluded: user-masked or beyond the image edge).  :class:`SkyMasks` is the
one definition of a set's empty sky, used by ``compare``'s sky split and by the domain guards
(:mod:`morphllr.domain`), so both judge the same pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from morphllr.data.geometry import model_sky_mask
from morphllr.errors import MorphllrError


@dataclass
class OpenedSet:
    """One input set, opened.

    Attributes:
        name: the user's label.
        label: where it came from (file name), for messages.
        source: the ImageSource (batches / read / shape / preprocessing).
        catalog: astropy Table row-aligned with the images, or None.
        segmap: lazy ``(N, H, W)`` central-source mask or None.
        flux_segmap: lazy ``(N, Hf, Wf)`` segmentation on the flux-cutout grid (``/segmap``:
            0 sky, 1 central source, >1 companions) or None.
        mask: lazy ``(N, H, W)`` excluded pixels on the model grid (``/mask_model``, 1 = excluded)
            or None: their own terms are dropped from the sums (:func:`excluded_pixels`).
    """

    name: str
    label: str
    source: Any
    catalog: Any = None
    segmap: Any = None
    flux_segmap: Any = None
    mask: Any = None

    def __getstate__(self) -> dict:
        # h5py datasets cannot be pickled: a scoring process (morphllr.distributed) reopens them from the source
        return {"name": self.name, "label": self.label, "source": self.source}

    def __setstate__(self, state: dict) -> None:
        self.name, self.label, self.source = state["name"], state["label"], state["source"]
        for key, value in _lazy_parts(self.source, self.name).items():
            setattr(self, key, value)

    @classmethod
    def from_source(cls, name: str, label: str, source: Any, what: str | None = None) -> "OpenedSet":
        """The set of ``source`` with its catalogue and lazy masks (``what`` names it in messages)."""
        return cls(name=name, label=label, source=source, **_lazy_parts(source, what))


def _lazy_parts(source: Any, what: str | None) -> dict:
    """An ImageSource's catalogue and lazy masks (a bare array has none of them)."""
    return {"catalog": getattr(source, "catalog", None), "segmap": getattr(source, "segmap_model", None),
            "flux_segmap": getattr(source, "segmap", None), "mask": model_grid_mask(source, what)}


def model_grid_mask(source: Any, name: str | None = None) -> Any:
    """The source's ``/mask_model`` (lazy ``(N, H, W)``, 1 = excluded pixel) or None; refused when misshapen."""
    mask = getattr(source, "mask_model", None)
    if mask is None:
        return None
    n, _, h, w = source.shape
    if tuple(mask.shape) != (n, h, w):
        raise MorphllrError(f"{name or source.name}: /mask_model has shape {tuple(mask.shape)} but the images are "
                            f"{n} x {h}x{w}; rebuild the set with `morphllr prepare`")
    return mask


def excluded_pixels(mask: Any, start: int | None = None, stop: int | None = None, rows: Any = None) -> np.ndarray | None:
    """bool ``(B, H, W)`` masked pixels of images ``start:stop`` (or sorted ``rows``), or None without a mask."""
    if mask is None:
        return None
    if rows is not None:
        return take_rows(mask, np.asarray(rows)) != 0
    return np.asarray(mask[start:stop]) != 0


SKY_COLUMNS = ("llr_sky", "llr_rest", "n_sky_pixels", "llr_sky_per_pixel")


class SkyMasks:
    """Empty-sky masks of one set on the model grid, read in the same batches as its images.

    The background cancels in the LLR only when a set shares sky, PSF and noise with the
    training data, so each image's LLR is split into its empty-sky pixels and the rest.
    Preferred source: ``/segmap`` (flux grid) through the set's crop and zoom
    (:func:`morphllr.data.geometry.model_sky_mask`); fallback ``/segmap_model == 0``, where
    companions and stars count as sky; with neither, ``kind`` is None.  Masked pixels
    (``/mask_model``) are never sky: their terms are in no sum.

    Attributes:
        kind: ``"segmap"``, ``"segmap_model"`` or None.
        notes: what the choice means for this set (for the report's notes).
    """

    def __init__(self, s: OpenedSet, hw: tuple[int, int]):
        self._set = s
        self._prep = s.source.preprocessing or {}
        self.kind: str | None = None
        self.notes: list[str] = []
        mismatch = None
        if s.flux_segmap is not None:
            mismatch = self._mismatch(hw)
            if mismatch is None:
                self.kind = "segmap"
                return
        if s.segmap is not None:
            self.kind = "segmap_model"
            why = mismatch or "no /segmap in the set"
            self.notes.append(f"{s.name}: {why}, so empty sky = outside the central-source mask /segmap_model; "
                              "companions, stars and the central galaxy's faint outskirts then count as sky")
            return
        why = mismatch or "no segmentation (/segmap or /segmap_model) in the set"
        self.notes.append(f"{s.name}: {why}; the sky split ({', '.join(SKY_COLUMNS)}) is NaN")

    def _mismatch(self, hw: tuple[int, int]) -> str | None:
        """Why ``/segmap`` cannot be mapped onto the model grid, or None when it can."""
        hf, wf = self._set.flux_segmap.shape[1:]
        try:
            got = model_sky_mask(np.zeros((1, hf, wf), np.int32), self._prep).shape[1:]
        except MorphllrError as exc:
            got = str(exc)
        if got == tuple(hw):
            return None
        result = f"{got[0]}x{got[1]} pixels" if isinstance(got, tuple) else got
        return (f"/segmap ({hf}x{wf}) does not map onto the {hw[0]}x{hw[1]} model grid with the set's "
                f"crop={self._prep.get('crop')} and zoom={self._prep.get('zoom')} (gives {result})")

    def read(self, start: int, stop: int) -> np.ndarray | None:
        """bool ``(B, H, W)`` empty-sky mask of images ``start:stop`` (None without a mask)."""
        sky = None
        if self.kind == "segmap":
            sky = model_sky_mask(np.asarray(self._set.flux_segmap[start:stop]), self._prep)
        elif self.kind == "segmap_model":
            sky = np.asarray(self._set.segmap[start:stop]) == 0
        return self._unmasked(sky, excluded_pixels(self._set.mask, start, stop))

    def read_rows(self, rows: np.ndarray) -> np.ndarray | None:
        """The same mask for sorted, not necessarily contiguous ``rows`` (a training set's validation split)."""
        sky = None
        if self.kind == "segmap":
            sky = model_sky_mask(take_rows(self._set.flux_segmap, rows), self._prep)
        elif self.kind == "segmap_model":
            sky = take_rows(self._set.segmap, rows) == 0
        return self._unmasked(sky, excluded_pixels(self._set.mask, rows=rows))

    @staticmethod
    def _unmasked(sky: np.ndarray | None, excluded: np.ndarray | None) -> np.ndarray | None:
        if sky is None or excluded is None:
            return sky
        return np.asarray(sky, bool) & ~excluded


def take_rows(dataset: Any, rows: np.ndarray) -> np.ndarray:
    """``dataset[rows]`` for sorted rows (a slice when contiguous: h5py reads it in one go)."""
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size and rows[-1] - rows[0] + 1 == rows.size:
        return np.asarray(dataset[int(rows[0]):int(rows[-1]) + 1])
    return np.asarray(dataset[rows.tolist()] if hasattr(dataset, "id") else np.asarray(dataset)[rows])
