"""What the report's radial-profile and scaling-relation figures can show, and the notes on what they skip.

Decided here, below the report, so that ``compare`` puts the notes into the result before the
report or ``summary.json`` is written (the report only reads the result), and the figures draw
exactly what the notes describe.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from morphllr.comparison.result import SetResult
from morphllr.data.catalog import MASS_COLUMNS, SERSIC_N_COLUMNS, SIZE_COLUMNS, catalog_values, find_column

#: the scaling relations drawn: title -> (x, y), each (candidate catalogue columns, take log10?)
SCALING_RELATIONS = {
    "size–mass relation": ((MASS_COLUMNS, False), (SIZE_COLUMNS, True)),
    "Sérsic index–size relation": ((SIZE_COLUMNS, True), (SERSIC_N_COLUMNS, False)),
}
#: fewest galaxies with both properties for a set's panel of a scaling relation
MIN_RELATION_GALAXIES = 5


def profiles_in_re(sets: dict[str, SetResult]) -> bool:
    """Whether the radial profiles are drawn in units of R_e (every set has one), else in model pixels."""
    return all(r.profile_re is not None for r in sets.values())


@dataclass
class RelationPoints:
    """The galaxies of one scaling relation, per set, and the bins shared by every panel.

    Attributes:
        points: set name -> (x, y, llr, x column, y column) of its galaxies with both properties.
        x_edges, y_edges: bin edges over the 1-99 % range of all sets' values.
    """

    points: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, str, str]]
    x_edges: np.ndarray
    y_edges: np.ndarray


def _property(res: SetResult, candidates, log: bool) -> tuple[np.ndarray | None, str | None]:
    col = find_column(res.catalog, candidates)
    values = catalog_values(res.catalog, col)
    if values is None:
        return None, None
    if log:
        with np.errstate(invalid="ignore", divide="ignore"):
            values = np.log10(np.where(values > 0, values, np.nan))
    return values, col


def relation_points(sets: dict[str, SetResult], title: str) -> tuple[RelationPoints | None, list[str]]:
    """The galaxies of the scaling relation ``title`` (:data:`SCALING_RELATIONS`), and why sets or all are left out.

    Returns:
        (the points, or None when the figure is skipped; notes).
    """
    x_spec, y_spec = SCALING_RELATIONS[title]
    notes: list[str] = []
    data = {}
    for name, res in sets.items():
        x, xcol = _property(res, *x_spec)
        y, ycol = _property(res, *y_spec)
        if x is None or y is None:
            notes.append(f"{name}: {title} skipped, the catalogue lacks "
                         f"{' / '.join(x_spec[0]) if x is None else ' / '.join(y_spec[0])}")
            continue
        ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(res.llr)
        if ok.sum() < MIN_RELATION_GALAXIES:
            notes.append(f"{name}: {title} skipped, fewer than {MIN_RELATION_GALAXIES} galaxies with both properties")
            continue
        data[name] = (x[ok], y[ok], res.llr[ok], xcol, ycol)
    if not data:
        return None, notes
    pool_x = np.concatenate([d[0] for d in data.values()])
    pool_y = np.concatenate([d[1] for d in data.values()])
    # about 4+ galaxies per bin in the smallest set, between 4 and 12 bins a side
    n_bins = int(np.clip(np.sqrt(min(len(d[0]) for d in data.values()) / 4), 4, 12))
    xe = np.linspace(*np.percentile(pool_x, [1, 99]), n_bins + 1)
    ye = np.linspace(*np.percentile(pool_y, [1, 99]), n_bins + 1)
    if xe[0] == xe[-1] or ye[0] == ye[-1]:
        notes.append(f"{title} skipped: a property has a single value")
        return None, notes
    return RelationPoints(points=data, x_edges=xe, y_edges=ye), notes


def figure_notes(sets: dict[str, SetResult]) -> list[str]:
    """The notes of the report's figures: radial profiles not in R_e, scaling relations (or sets) skipped."""
    notes = []
    if not profiles_in_re(sets):
        notes.append("radial profiles are in model pixels: not every set has half-light radii "
                     "(catalogue sersic_re_pix) and a recorded zoom")
    for title in SCALING_RELATIONS:
        notes += relation_points(sets, title)[1]
    return notes
