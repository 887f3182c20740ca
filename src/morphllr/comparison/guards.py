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
        own: list[str] = no_central_warning(name, entry)
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
    notes += no_central_notes(summary["sets"])
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


def no_central_warning(name: str, entry: dict) -> list[str]:
    """A warning for a set with images without a central source: how many, which, whether they are left out
    of its statistics (the default) or kept (``--keep-no-central``), and how to choose the other way."""
    n_missing = entry.get("n_no_central")
    if not n_missing:
        return []
    total = int(entry.get("n_images") or entry["n"])
    ids = [str(x) for x in entry.get("no_central_ids") or []]
    shown = ", ".join(ids[:5]) + (", ..." if n_missing > 5 else "")
    verb = "has" if n_missing == 1 else "have"
    what = (f"{name}: {n_missing} of its {total} images {verb} no central source (empty or off-centre frames, "
            f"from {entry.get('central_from') or 'its segmentation'}; ids {shown})")
    if entry.get("no_central_excluded"):
        return [f"{what}; they are left out of its statistics (mean LLR, intervals, ΔLLR, AUROC, KS, matched, "
                f"mass panels, maps, profiles, galleries: n = {entry['n']}) but listed in scores.csv "
                "(central_source = 0) and summary.json no_central_ids; pass --keep-no-central "
                "(keep_no_central=True) to keep them in"]
    return [f"{what}; they are included in its statistics (--keep-no-central), so its mean LLR also scores "
            "frames without a galaxy; leave the option out to exclude them"]


def no_central_notes(per_set: dict) -> list[str]:
    """A note naming the sets that cannot say which images lack a central source (bare arrays, sets without
    segmentation), only when it matters: another set of the comparison has such images."""
    unknown = [name for name, e in per_set.items() if e.get("n_no_central") is None]
    if not unknown or not any(e.get("n_no_central") for e in per_set.values()):
        return []
    return [f"{name}: no record of which images show a central source (catalogue central_found or "
            "/segmap_model, written by `morphllr prepare`'s segmentation), so images without one could not be "
            "counted or left out (n_no_central null), unlike in the other sets" for name in unknown]


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
