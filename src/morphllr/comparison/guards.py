"""The warnings of a comparison: every set and both sides checked against what the models saw in training.

:func:`guards` runs the domain guards of :mod:`morphllr.domain` (sky and whole-image bits/dim,
galaxy sizes, recipes, convergence, sample size, the reference's sign) and the masked-share check
(:func:`masked_share_warning`), and records the models' provenance.
"""

from __future__ import annotations

import warnings

from morphllr import domain
from morphllr.comparison.models import Side
from morphllr.comparison.result import SetResult
from morphllr.errors import MorphllrWarning

#: a set whose mean masked share differs from the reference's by more than this gets a warning
MASKED_SHARE_TOLERANCE = 0.05


def guards(results: dict[str, SetResult], reference: str, summary: dict, notes: list[str], obs: Side, arch: Side,
           shape: tuple[int, int, int]) -> list[str]:
    """The warnings of a comparison (:mod:`morphllr.domain`), into ``summary`` and each SetResult.

    ``summary["warnings"]`` (always a list: the models' warnings, then every set's) and
    ``summary["sets"][name]["warnings"]`` (that set's), ``summary["sets"][name]["domain"]`` (the
    numbers each guard judged), ``summary["provenance"]`` (what each model was trained on) and
    ``summary["domain_rules"]``; models lacking the recorded fields add a note to ``notes``.
    Each top-level warning is also issued as a :class:`~morphllr.errors.MorphllrWarning`.

    Returns:
        the top-level warnings.
    """
    sides = [("obs", "p_obs", obs.names, [domain.domain_record(m) for m in obs.members]),
             ("arch", "p_arch", arch.names, [domain.domain_record(m) for m in arch.members])]
    top: list[str] = []
    top += domain.recipe_warnings(obs.members[0].preprocessing, arch.members[0].preprocessing)
    for label, side in (("p_obs (--obs)", obs), ("p_arch (--arch)", arch)):
        found, side_notes_ = domain.convergence_findings(label, side.names, side.members)
        top += found
        notes += side_notes_ + domain.domain_notes(label, side.names, side.members)
    checked = any(any(r is not None for r in recs) for *_, recs in sides)
    for name, res in results.items():
        entry = summary["sets"][name]
        own: list[str] = []
        if name == reference:
            own += domain.reference_warning(name, entry["mean_llr"])
        own += domain.small_sample_warning(name, int(min(entry["n"], entry.get("n_groups") or entry["n"])))
        values = res.domain_values or {}
        sky = values.get("sky_logp") or {}
        n_sky = res.scores.get("n_sky_pixels")
        re, _ = domain.re_model_pixels(res.catalog, obs.members[0].preprocessing)
        stat = {side: domain.set_statistics(res.member_logp[side], sky.get(side), n_sky, values.get("area"), re, shape,
                                            n_valid=values.get("n_valid"))
                for side in ("obs", "arch")}
        judged, found = domain.domain_check(name, stat, sides, res.sky_mask) if checked else ({}, [])
        own += found
        own += masked_share_warning(name, reference, summary["sets"])
        if judged.get("sky_not_comparable"):
            notes.append(f"{name}: its empty sky comes from {res.sky_mask} but the training record of "
                         f"{', '.join(judged['sky_not_comparable'])} used the other mask, so the sky guard skips them")
        entry["domain"] = judged or None
        entry["warnings"] = own
        res.warnings = list(own)
        top += own
    masked = [name for name in results if summary["sets"][name].get("masked_share", 0.0) > 0]
    if masked:
        notes.append(f"masked pixels ({', '.join(masked)}): each LLR is summed over the unmasked pixels only "
                     "(masked pixels stay context for the later pixels' conditionals), so sets with different "
                     "masked shares sum different numbers of terms; compare them per pixel (llr_per_pixel, "
                     "mean_llr_per_pixel); scores.csv has n_masked_pixels and masked_share")
    summary["warnings"] = top
    summary["provenance"] = {"obs": domain.provenance("p_obs", obs.names, obs.members, obs.paths),
                             "arch": domain.provenance("p_arch", arch.names, arch.members, arch.paths)}
    summary["domain_rules"] = domain.RULES
    for text in top:
        warnings.warn(text, MorphllrWarning, stacklevel=3)
    return top


def masked_share_warning(name: str, reference: str, per_set: dict) -> list[str]:
    """A warning when set ``name``'s mean masked share differs from the reference's by more than
    :data:`MASKED_SHARE_TOLERANCE` (its LLR then sums a different number of pixels' terms)."""
    if name == reference:
        return []
    share = float(per_set[name].get("masked_share") or 0.0)
    ref_share = float(per_set[reference].get("masked_share") or 0.0)
    if abs(share - ref_share) <= MASKED_SHARE_TOLERANCE:
        return []
    return [f"{name}: {share:.1%} of its model pixels are masked against {ref_share:.1%} in the reference "
            f"{reference} (more than {MASKED_SHARE_TOLERANCE:.0%} apart); its LLR sums the terms of "
            f"{'fewer' if share > ref_share else 'more'} pixels, so compare it per pixel (llr_per_pixel, "
            "mean_llr_per_pixel), not by the mean LLR"]
