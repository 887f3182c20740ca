"""The image sets of a comparison: opening them under the user's labels and checking them once each."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

from morphllr.comparison.models import check_prep, config_value
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


def check_names(names: Iterable[str]) -> None:
    """Refuse set labels that are empty, repeated or would break the CSV and HTML outputs."""
    seen: set[str] = set()
    for name in names:
        if not name or any(c in name for c in ",\n\"<>&"):
            raise MorphllrError(f"set name {name!r}: use a short label without commas, quotes or <>&, e.g. TNG50")
        if name in seen:
            raise MorphllrError(f"set name {name!r} is used twice; give every set its own NAME=")
        seen.add(name)


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
