"""The image sets of a comparison: opening them under the user's labels and checking them once each."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from morphllr.comparison.models import check_prep, config_value
from morphllr.comparison.result import name_slug
from morphllr.data.pixels import OpenedSet
from morphllr.data.inputs import open_images
from morphllr.errors import MorphllrError

#: fewest images a set may have: one image has no spread, so no interval, AUROC or verdict
MIN_SET_SIZE = 2


def open_set(name: str, spec: Any) -> OpenedSet:
    """Open one set (path, ImageSet, array) under the user's label; refuse a missing file or a misfit catalogue."""
    label = str(spec) if isinstance(spec, (str, os.PathLike)) else type(spec).__name__
    if isinstance(spec, (str, os.PathLike)) and not Path(str(spec).split(":")[0]).exists() \
            and not Path(spec).exists():
        raise MorphllrError(f"set {name}={spec}: no such file; check the path")
    source = open_images(spec)
    catalog = getattr(source, "catalog", None)
    if catalog is not None and len(catalog) != len(source):
        raise MorphllrError(f"set {name}={label}: catalogue has {len(catalog)} rows for {len(source)} images; "
                            "rebuild the set with `morphllr prepare`")
    return OpenedSet.from_source(name, label, source, f"set {name}={label}")


def check_set(s: OpenedSet, obs) -> None:
    """Refuse a set too small for an interval, or not in the image space of the models (``obs``: a member).

    Once per set: every member of both sides shares this image space (:func:`morphllr.comparison.models.check_models`).
    """
    if len(s.source) < MIN_SET_SIZE:
        raise MorphllrError(
            f"set {s.name}={s.label}: has {len(s.source)} image(s); a mean LLR with a bootstrap interval needs at "
            f"least {MIN_SET_SIZE} (one image gives a zero-width interval and no verdict); give a larger set")
    want = tuple(config_value(obs.config, k) for k in ("in_channels", "height", "width"))
    have = tuple(s.source.shape[1:])
    if None not in want and have != want:
        raise MorphllrError(
            f"set {s.name}={s.label}: images are (C,H,W)={have} but the models expect {want}; "
            "prepare the set with the models' preprocessing (`morphllr prepare --like MODEL_DIR`)")
    check_prep(obs.preprocessing, s.source.preprocessing, f"models vs set {s.name}={s.label}")


#: the catalogue column ``morphllr prepare``'s segmentation writes: was a source found at the image centre
CENTRAL_COLUMN = "central_found"
_TRUE, _FALSE = {"true", "t", "1", "1.0", "yes", "y"}, {"false", "f", "0", "0.0", "no", "n"}
_CHUNK = 4096  # images of /segmap_model read at once


def central_flags(s: OpenedSet) -> tuple[np.ndarray | None, str | None]:
    """Which images of a set show a central source: (bool per image, where that came from), or (None, None).

    From the catalogue column ``central_found`` (written by ``morphllr prepare``'s segmentation,
    :mod:`morphllr.data.segmentation`: False for an empty or off-centre frame); without it (or for its blank
    cells) from the central-source mask, an image whose ``/segmap_model`` is all zero having none; an image
    that mask misses is checked on the flux grid (``/segmap`` label 1), where a small source is not lost to
    the resampling.  A bare array has neither: unknown (None).
    """
    n = len(s.source)
    flags = np.full(n, np.nan)
    sources = []
    cat = s.catalog
    column = None if cat is None else next((c for c in cat.colnames if c.lower() == CENTRAL_COLUMN), None)
    if column is not None and getattr(cat[column], "ndim", 1) == 1:
        flags = _flag_values(cat[column])
        sources.append(f"catalogue column {column}")
    todo = np.flatnonzero(np.isnan(flags))
    if todo.size and s.segmap is not None and tuple(s.segmap.shape[:1]) == (n,):
        for start in range(0, n, _CHUNK):
            rows = todo[(todo >= start) & (todo < start + _CHUNK)]
            if rows.size:
                block = np.asarray(s.segmap[start:start + _CHUNK])
                flags[rows] = block[rows - start].reshape(rows.size, -1).any(axis=1)
        sources.append("/segmap_model")
        empty = np.flatnonzero(flags == 0)
        if empty.size and s.flux_segmap is not None and tuple(s.flux_segmap.shape[:1]) == (n,):
            for i in empty[np.isin(empty, todo)]:
                flags[i] = float((np.asarray(s.flux_segmap[int(i)]) == 1).any())
    if np.isnan(flags).all():
        return None, None
    # a cell nothing decides (a blank central_found and no mask) counts as a central source: never dropped unseen
    return np.where(np.isnan(flags), 1.0, flags).astype(bool), " and ".join(sources)


def _flag_values(column) -> np.ndarray:
    """A true/false catalogue column as 1.0 / 0.0, NaN where blank or not a truth value."""
    mask = np.ma.getmaskarray(np.ma.asarray(column))
    values = np.asarray(column)
    if values.dtype.kind in "biuf":
        out = (np.asarray(values, np.float64) != 0).astype(np.float64)
        out[np.isnan(np.asarray(values, np.float64))] = np.nan
    else:
        text = [(x.decode() if isinstance(x, bytes) else str(x)).strip().lower() for x in values]
        out = np.array([1.0 if x in _TRUE else 0.0 if x in _FALSE else np.nan for x in text])
    out[mask] = np.nan
    return out


def check_central(s: OpenedSet, central: np.ndarray | None, keep_no_central: bool) -> None:
    """Refuse a set that leaving out its images without a central source would empty (or shrink below
    :data:`MIN_SET_SIZE`)."""
    if central is None or keep_no_central:
        return
    n, kept = len(central), int(np.sum(central))
    if kept == 0:
        raise MorphllrError(
            f"set {s.name}={s.label}: none of its {n} images has a central source (catalogue central_found / "
            "/segmap_model: empty or off-centre frames), so nothing is left to compare once they are left out; "
            "check that the set holds galaxies at the image centres, or pass --keep-no-central "
            "(keep_no_central=True) to score them anyway")
    if kept < MIN_SET_SIZE:
        raise MorphllrError(
            f"set {s.name}={s.label}: only {kept} of its {n} images has a central source; leaving out the others "
            f"leaves fewer than {MIN_SET_SIZE} (one image gives a zero-width interval and no verdict); give a "
            "larger set, or pass --keep-no-central (keep_no_central=True) to keep the images without one")


def check_names(names: Iterable[str]) -> None:
    """Refuse set labels that are empty, padded with spaces, repeated, equal once made file names
    (:func:`~morphllr.comparison.result.name_slug`: ``A.1`` and ``A_1``), or would break the CSV and HTML outputs.

    Every output keys on the name (figure files, ``report_data.h5`` and ``summary.json`` entries, ``scores.csv``
    rows), so these are refused before anything is scored.
    """
    seen: dict[str, str] = {}
    for name in names:
        if not isinstance(name, str) or not name.strip() or any(c in name for c in ",\n\"<>&"):
            raise MorphllrError(f"set name {name!r}: use a short label without commas, quotes or <>&, e.g. TNG50")
        if name != name.strip():
            raise MorphllrError(f"set name {name!r}: starts or ends with a space; write it as {name.strip()!r}")
        if name in seen.values():
            raise MorphllrError(f"set name {name!r} is used twice; give every set its own NAME=")
        slug = name_slug(name)
        if slug in seen:
            raise MorphllrError(
                f"set names {seen[slug]!r} and {name!r} differ only in characters other than letters, digits, - "
                f"and _, so both sets' figures would be written as gallery_{slug}.png (and profile_, pixel_maps_) "
                "and one would overwrite the other; rename one of them")
        seen[slug] = name


@contextlib.contextmanager
def opened_sets(specs: list[tuple[str, Any]]) -> Iterator[list[OpenedSet]]:
    """Open every set; close their files (HDF5 handles) however the comparison ends."""
    opened: list[OpenedSet] = []
    try:
        for name, spec in specs:
            opened.append(open_set(name, spec))
        yield opened
    finally:
        for s in opened:
            close = getattr(s.source, "close", None)
            if callable(close):
                close()
