"""The convergence rule recorded in ``model.json``: had a run stopped improving?

A run has converged when the best validation bits/dim of its last :data:`CONVERGENCE_TAIL` share of
steps beats the best before them by less than the seed-to-seed noise (:func:`convergence`).
"""

from __future__ import annotations

import math
from typing import Sequence


# Convergence rule (recorded in model.json): a run has converged when the best validation bits/dim of its
# last CONVERGENCE_TAIL share of steps beats the best before them by less than the seed-to-seed noise.
# Where that noise is not measured (a single model) CONVERGENCE_TOLERANCE_BPD stands in: a third of the
# smallest seed-to-seed standard deviation of val bits/dim measured on the shipped models (demo ensembles:
# 0.029 obs, 0.024 arch), so a model is flagged well before its late gains reach the size of seed noise.
CONVERGENCE_TAIL = 0.2
CONVERGENCE_TOLERANCE_BPD = 0.008


def convergence(history: Sequence[Sequence[float]], tolerance: float = CONVERGENCE_TOLERANCE_BPD,
                tail: float = CONVERGENCE_TAIL, final_step: int | None = None) -> dict:
    """Judge whether a run had stopped improving (the rule of ``model.json``'s ``convergence``).

    Args:
        history: ``[step, val bits/dim]`` per validation, in step order.
        tolerance: improvement (bits/dim) below which the tail counts as flat: the seed-to-seed noise.
        tail: share of the final step count that forms the tail.
        final_step: the run's last optimizer step (default: the last validation's step).

    Returns:
        dict with ``converged`` (None when fewer than 3 validations, or none before or inside the tail),
        ``tail_improvement_bpd`` (best before the tail minus best overall, >= 0), ``tolerance_bpd``,
        ``rule`` and the ``history`` itself.
    """
    rows = [(int(step), float(bpd)) for step, bpd in history if math.isfinite(float(bpd))]
    rule = (f"converged when the best validation bits/dim of the last {tail:.0%} of steps improves on the best "
            f"before them by less than {tolerance:.3g} bits/dim (seed-to-seed noise)")
    out = {"rule": rule, "tolerance_bpd": float(tolerance), "tail": float(tail), "history": [list(r) for r in rows],
           "tail_improvement_bpd": None, "converged": None}
    if len(rows) < 3:
        return out
    last = max(rows[-1][0], int(final_step or 0))
    before = [bpd for step, bpd in rows if step <= (1.0 - tail) * last]
    if not before or len(before) == len(rows):  # nothing to compare with, or no validation inside the tail
        return out
    improvement = max(0.0, min(before) - min(bpd for _, bpd in rows))
    out.update(tail_improvement_bpd=improvement, converged=bool(improvement < tolerance))
    return out
