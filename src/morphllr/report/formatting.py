"""How the numbers of ``summary.json`` read as text: shared by the report page and the terminal tables."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np


def missing(value: Any) -> bool:
    """Whether a value has nothing to show: None, a non-finite number, or an interval (list, tuple, array)
    that is empty or has such an end."""
    if value is None:
        return True
    if isinstance(value, (list, tuple, np.ndarray)):
        return len(value) == 0 or any(missing(v) for v in value)
    return isinstance(value, (float, np.floating)) and not np.isfinite(value)


def fmt(value: Any, digits: int = 4) -> str:
    """A number with ``digits`` significant digits, an integer as such, "–" for None or non-finite."""
    if value is None or (isinstance(value, (float, np.floating)) and not np.isfinite(value)):
        return "–"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return f"{value:.{digits}g}"


#: the units the page's and the terminal's headers give
PER_IMAGE = "nats/image"
PER_PIXEL = "nats/pixel"
#: what a cell without a value shows, followed by its footnote mark: never "– ± –"
EMPTY = "–"


class Footnotes:
    """The reasons of a table's empty cells, each said once: a cell shows ``– (a)``, the table ends with ``(a) why``."""

    def __init__(self):
        self.reasons: dict[str, str] = {}  # reason -> letter

    def mark(self, reason: str) -> str:
        """The mark ``(a)`` of ``reason`` (a new letter for a new reason)."""
        letters = "abcdefghijklmnopqrstuvwxyz"
        if reason not in self.reasons:
            n = len(self.reasons)
            self.reasons[reason] = letters[n % 26] + ("" if n < 26 else str(n // 26))
        return f"({self.reasons[reason]})"

    def empty(self, reason: str) -> str:
        """An empty cell: ``– (a)``."""
        return f"{EMPTY} {self.mark(reason)}"

    def lines(self) -> list[str]:
        """``(a) reason`` per reason, in order of first use."""
        return [f"({letter}) {reason}" for reason, letter in self.reasons.items()]


def value_or_empty(value: Any, text: Callable[[Any], str], reason: str, notes: Footnotes) -> str:
    """``text(value)``, or ``– (a)`` with ``reason`` as footnote (a) when the value is :func:`missing` (None, not
    finite, or an interval with such an end)."""
    if missing(value):
        return notes.empty(reason)
    return text(value)


def plus_minus(value: Any, error: Any, reason: str, notes: Footnotes, digits: int = 4) -> str:
    """``value ± error`` (1σ), or ``– (a)`` with the reason as footnote when the value is missing."""
    if missing(value):
        return notes.empty(reason)
    if missing(error):
        return fmt(value, digits)
    return f"{fmt(value, digits)} ± {fmt(error, 2)}"


def matched_reason(summary: dict) -> str:
    """Why a set has no matched ΔLLR: the note compare left ("matched comparison skipped: ..."), else the default."""
    for note in summary.get("notes") or []:
        if note.startswith("matched comparison skipped: "):
            return "not computed: " + note[len("matched comparison skipped: "):]
    if summary.get("matched"):
        return "not computed for this set"
    return "not computed: the matched comparison did not run"


def matched_delta(summary: dict, name: str) -> tuple[float | None, float | None]:
    """A set's matched ΔLLR vs the reference and its 1σ error (None, None when not computed)."""
    matched = summary.get("matched") or {}
    return (matched.get("delta_llr") or {}).get(name), (matched.get("delta_llr_err") or {}).get(name)


def strip_identity(reading: str) -> str:
    """A set's reading without the repeated ``E_q[LLR] = KL(q||p_arch) - KL(q||p_obs) = `` prefix (said once)."""
    prefix = "E_q[LLR] = KL(q||p_arch) - KL(q||p_obs) = "
    if reading.startswith(prefix):
        return "mean LLR " + reading[len(prefix):]
    return reading


def multi_pair(summary: dict) -> bool:
    """Whether the comparison has more than one model pair (so its model variance is measured)."""
    return (summary.get("model_pairs") or 1) > 1


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
    notes = Footnotes()
    mark = notes.mark

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
            return text(value) if not missing(value) else f"– {mark(why.get(key, 'not computable'))}"

        rows.append((label, [
            cell("llr_per_sky_pixel", lambda v: fmt(v, 3)),
            cell("llr_per_sky_pixel_ci95", lambda v: f"[{fmt(v[0], 3)}, {fmt(v[1], 3)}]"),
            cell("sky_share", lambda v: f"{100 * v:.3g} %"),
            cell("sky_pixel_fraction", lambda v: f"{100 * v:.3g} %"),
            cell("auroc_sky_vs_reference", lambda v: fmt(v, 3)),
            cell("auroc_rest_vs_reference", lambda v: fmt(v, 3)),
        ]))
    return rows, notes.lines()
