"""How the numbers of ``summary.json`` read as text: shared by the report page and the terminal tables."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np


def fmt(value: Any, digits: int = 4) -> str:
    """A number with ``digits`` significant digits, an integer as such, "–" for None or non-finite."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return f"{value:.{digits}g}"


def multi_pair(summary: dict) -> bool:
    """Whether the comparison has more than one model pair (so its model variance is measured)."""
    return (summary.get("model_pairs") or 1) > 1


def stability_delta(entry: dict) -> tuple[float | None, float | None]:
    """The ΔLLR vs the reference that the stability rule judges, and its galaxy error (paired when shared)."""
    if entry.get("delta_llr_pairing") == "paired":
        return entry.get("delta_llr_paired"), entry.get("delta_llr_paired_err")
    return entry.get("delta_llr"), entry.get("delta_llr_err")


def stability_mark(entry: dict, is_reference: bool) -> str:
    """``✓`` (the difference to the reference survives retraining), ``✗`` (it may not), ``–`` (not measured)."""
    if is_reference:
        return "ref"
    stable = entry.get("stable")
    return "–" if stable is None else ("✓" if stable else "✗")


#: what the stability marks mean (under the ranking tables)
MARK_LEGEND = ("✓ = the set's difference to the reference survives retraining: |ΔLLR| ≥ 2·sqrt(err² + model σ²) "
                "and ΔLLR has the same sign under ≥ 95 % of the model pairs (ΔLLR and its error paired over the "
                "shared galaxies when the sets show the same galaxies); ✗ = it may flip or vanish on retraining.")


def sky_split_rows(summary: dict) -> tuple[list[tuple[str, list[str] | str]], list[str]]:
    """Formatted cells of the "LLR split: empty sky vs the rest" table, for the page and the terminal.

    A cell without a value shows ``– (a)``; each distinct reason is listed once as a
    footnote ``(a) ...``.  A set without any sky mask gets one such mark for the whole row.

    Args:
        summary: the content of summary.json.

    Returns:
        (rows, footnotes): rows are ``(set label, cells)`` with the 6 cells after the set
        name, or ``(set label, mark)`` for the whole row; no rows when no set has a sky split.
    """
    letters: dict[str, str] = {}

    def mark(reason: str) -> str:
        letters.setdefault(reason, "abcdefghijklmnopqrstuvwxyz"[len(letters) % 26])
        return f"({letters[reason]})"

    rows: list[tuple[str, list[str] | str]] = []
    for name in summary["ranking"]:
        sky = summary["sets"][name].get("sky")
        if sky is None:
            continue
        label = name + (" (reference)" if name == summary["reference"] else "")
        why = sky.get("null_reasons") or {}
        if sky.get("mask") is None:
            rows.append((label, f"– {mark(next(iter(why.values()), 'no sky mask'))}"))
            continue
        if sky["mask"] == "segmap_model":
            label += " " + mark("sky = outside the central-source mask /segmap_model (the set has no /segmap), "
                                "so companions, stars and the central galaxy's faint outskirts count as sky")

        def cell(key: str, text: Callable[[Any], str]) -> str:
            value = sky.get(key)
            return text(value) if value is not None else f"– {mark(why.get(key, 'not computable'))}"

        rows.append((label, [
            cell("llr_per_sky_pixel", lambda v: fmt(v, 3)),
            cell("llr_per_sky_pixel_ci95", lambda v: f"[{fmt(v[0], 3)}, {fmt(v[1], 3)}]"),
            cell("sky_share", lambda v: f"{100 * v:.3g} %"),
            cell("sky_pixel_fraction", lambda v: f"{100 * v:.3g} %"),
            cell("auroc_sky_vs_reference", lambda v: fmt(v, 3)),
            cell("auroc_rest_vs_reference", lambda v: fmt(v, 3)),
        ]))
    return rows, [f"({letter}) {reason}" for reason, letter in letters.items()]
