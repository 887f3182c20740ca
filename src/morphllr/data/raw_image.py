"""RawImage: one image as a reader found it (pixels in the file's units, id, source, and what the file says).

Every reader (:mod:`morphllr.data.files`, :mod:`morphllr.data.sdss_frames`) yields these records;
:func:`morphllr.data.prepare.process_record` turns each into a flux cutout and a catalogue row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class RawImage:
    """One raw image as read from disk.

    Attributes:
        id: unique identifier (file stem, or ``stem:index`` inside cubes/arrays).
        image: float (C, H, W) raw pixels in the file's units.
        source: file (and HDU / index) for messages and the ``file`` catalogue column.
        units: ``mag_arcsec2`` / ``nanomaggies`` / ``counts`` if the file says, else None.
        pixel_scale: arcsec/px if the file says, else None.
        meta: extra catalogue columns (e.g. ``redshift``).
        center_tolerance: pixels the galaxy is known to lie within of the image centre (a
            cutout at a catalogue position), bounding how far centring may move the window;
            None: unknown (centring may search a quarter of the frame).
        kind: what the pixels are, as far as the reader knows (``flux`` for FITS and SDSS
            frames, ``jpeg`` for JPEG/PNG, None for arrays; see
            :data:`morphllr.data.preprocess.INPUT_KINDS`).
        mask: bool (H, W), True = pixel excluded (a user's mask), or None.
        outside: bool (H, W), True = pixel beyond the real image (a window past a frame's
            edge), or None.
    """

    id: str
    image: np.ndarray
    source: str
    units: str | None = None
    pixel_scale: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    center_tolerance: float | None = None
    kind: str | None = None
    mask: np.ndarray | None = None
    outside: np.ndarray | None = None
