"""The statistics of a comparison, assembled into ``summary.json``: per set, per mass panel, matched, per model pair.

:func:`build_summary` gives the per-set LLR statistics against the reference (interval, ΔLLR,
AUROC, KS, outliers, means, the empty-sky split), the stellar-mass panels, the matched ΔLLR and
the model variance (:mod:`morphllr.comparison.ensemble`); :func:`attach_groups` reads the
``--group-col`` labels the intervals resample; :func:`merge_notes` folds the notes of the sets.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from morphllr.comparison import stats
from morphllr.comparison.ensemble import model_variance
from morphllr.comparison.models import Side
from morphllr.comparison.result import SetResult
from morphllr.comparison.sets import MIN_SET_SIZE
from morphllr.data.catalog import MASS_COLUMNS, SERSIC_N_COLUMNS, SIZE_COLUMNS, catalog_values, find_column
from morphllr.errors import MorphllrError


def _set_summaries(results: dict[str, SetResult], reference: str, n_boot: int, seed: int,
                   ref_cut: float) -> dict:
    """``summary["sets"]``: per set its LLR statistics against the reference, means and the sky split."""
    ref = results[reference].llr
    ref_groups = results[reference].groups
    out = {}
    for name, res in results.items():
        entry = stats.summarize(res.llr, None if name == reference else ref, n_boot=n_boot, rng=seed,
                                groups=res.groups, reference_groups=ref_groups)
        entry.setdefault("n_groups", entry["n"])
        # the reference itself has ~0.15 % here by construction; a simulation with many more is suspicious
        entry["outlier_fraction"] = float(np.mean(res.llr < ref_cut))
        entry["mean_logp_obs"] = float(np.nanmean(res.scores["logp_obs"]))
        entry["mean_logp_arch"] = float(np.nanmean(res.scores["logp_arch"]))
        entry["mean_bpd_obs"] = float(np.nanmean(res.scores["bpd_obs"]))
        entry["mean_bpd_arch"] = float(np.nanmean(res.scores["bpd_arch"]))
        # masked pixels' terms are not in the LLR: sets of different masked shares compare per pixel
        entry["masked_share"] = float(np.mean(res.scores["masked_share"]))
        per_pixel = res.scores["llr_per_pixel"]
        entry["mean_llr_per_pixel"] = float(np.nanmean(per_pixel)) if np.isfinite(per_pixel).any() else None
        seg = res.scores["llr_segmap"]
        entry["mean_llr_segmap"] = float(np.mean(seg)) if np.isfinite(seg).all() else None
        if "llr_rot" in res.scores:
            entry["mean_llr_rotation_averaged"] = float(np.mean(res.scores["llr_rot"]))
        entry["sky"] = sky_summary(res, results[reference], name == reference, n_boot, seed)
        # images without a central source: counted and listed; "n" and every number above are without them
        # when no_central_excluded (SetResult.without), with them otherwise
        entry.update(no_central_entries(res))
        out[name] = entry
    return out


def no_central_entries(res: SetResult) -> dict:
    """``summary["sets"][name]``'s count of images without a central source: ``n_images`` (all scored),
    ``n_no_central`` (None: the set does not say), ``no_central_ids`` (the first
    :data:`~morphllr.comparison.result.NO_CENTRAL_IDS`), ``no_central_excluded`` (they are left out of the
    set's statistics) and ``central_from`` (catalogue column or mask the flags came from)."""
    record = dict(res.no_central) or {"n_images": len(res.llr), "n_no_central": None, "no_central_ids": [],
                                      "no_central_excluded": False, "central_from": None}
    return {k: record.get(k) for k in ("n_images", "n_no_central", "no_central_ids", "no_central_excluded",
                                       "central_from")}


#: Keys of ``summary["sets"][name]["sky"]`` that hold numbers (None when not computable).
SKY_SUMMARY_KEYS = ("llr_per_sky_pixel", "llr_per_sky_pixel_ci95", "sky_share", "sky_pixel_fraction",
                    "mean_llr_sky", "mean_llr_rest", "auroc_sky_vs_reference", "auroc_rest_vs_reference")


def sky_summary(res: SetResult, ref: SetResult, is_reference: bool, n_boot: int, seed: int) -> dict:
    """Per-set numbers of the empty-sky / rest split of the LLR (``summary.json`` ``sets[name]["sky"]``).

    When the scored images share sky, PSF and noise with the training data, the two
    models assign the same density to the empty sky and it cancels in the ratio: the
    sky LLR per pixel is then ~0 and the per-image sky LLRs are indistinguishable from
    the reference's (AUROC ~0.5).

    Args:
        res: the set.
        ref: the reference set.
        is_reference: ``res`` is the reference (its AUROCs are 0.5 by definition).
        n_boot: bootstrap replicates of the interval.
        seed: bootstrap seed.

    Returns:
        dict with ``mask`` (``"segmap"``, ``"segmap_model"`` or None), ``llr_per_sky_pixel``
        (pooled: sum of llr_sky / sum of n_sky_pixels, nats per pixel),
        ``llr_per_sky_pixel_ci95`` ([lo, hi], bootstrap over images), ``sky_share``
        (mean llr_sky / mean llr, see :func:`morphllr.comparison.stats.share_of_mean` for when it is None),
        ``sky_pixel_fraction`` (empty-sky share of all model pixels), ``mean_llr_sky``,
        ``mean_llr_rest`` (nats per image), ``auroc_sky_vs_reference`` (on llr_sky_per_pixel),
        ``auroc_rest_vs_reference`` (on llr_rest) and ``null_reasons`` (key -> why it is None).
    """
    out: dict[str, Any] = {"mask": res.sky_mask, **dict.fromkeys(SKY_SUMMARY_KEYS)}
    why: dict[str, str] = {}
    out["null_reasons"] = why
    if res.sky_mask is None:
        why.update(dict.fromkeys(SKY_SUMMARY_KEYS, "the set has no segmentation map (/segmap or /segmap_model)"))
        return out
    sc = res.scores
    n_sky = sc["n_sky_pixels"]
    out["sky_pixel_fraction"] = float(n_sky.sum() / (len(n_sky) * res.mean_map.size))
    out["mean_llr_sky"] = float(np.mean(sc["llr_sky"]))
    out["mean_llr_rest"] = float(np.mean(sc["llr_rest"]))
    if n_sky.sum() > 0:
        out["llr_per_sky_pixel"] = stats.ratio_of_sums(sc["llr_sky"], n_sky)
        out["llr_per_sky_pixel_ci95"] = list(stats.bootstrap_ratio_ci(sc["llr_sky"], n_sky, 0.95, n_boot, seed,
                                                                      groups=res.groups))
    else:
        for key in ("llr_per_sky_pixel", "llr_per_sky_pixel_ci95", "auroc_sky_vs_reference"):
            why[key] = "no model pixel of the set is empty sky (a source pixel falls into every one)"
    share = stats.share_of_mean(sc["llr_sky"], res.llr, groups=res.groups)
    if np.isfinite(share):
        out["sky_share"] = share
    else:
        why["sky_share"] = "the set's mean LLR is within 2 standard errors of 0, so a share of it is undefined"
    if ref.sky_mask is None:
        for key in ("auroc_sky_vs_reference", "auroc_rest_vs_reference"):
            why.setdefault(key, "the reference has no segmentation map")
        return out
    if ref.sky_mask != res.sky_mask:  # /segmap vs /segmap_model == 0: two definitions of sky
        for key in ("auroc_sky_vs_reference", "auroc_rest_vs_reference"):
            why.setdefault(key, f"the set's sky comes from {res.sky_mask}, the reference's from {ref.sky_mask}")
        return out
    out["auroc_rest_vs_reference"] = 0.5 if is_reference else stats.auroc(sc["llr_rest"], ref.scores["llr_rest"])
    if "auroc_sky_vs_reference" not in why:
        if not np.isfinite(ref.scores["llr_sky_per_pixel"]).any():
            why["auroc_sky_vs_reference"] = "no model pixel of the reference is empty sky"
        else:
            out["auroc_sky_vs_reference"] = 0.5 if is_reference else stats.auroc(
                sc["llr_sky_per_pixel"], ref.scores["llr_sky_per_pixel"])
    return out


def _mass_panels(results: dict[str, SetResult], reference: str, n_boot: int, seed: int,
                 notes: list[str]) -> dict[str, dict]:
    """The per-set statistics within the paper's stellar-mass panels (none without the reference's masses)."""
    ref_mass = catalog_values(results[reference].catalog, find_column(results[reference].catalog, MASS_COLUMNS))
    if ref_mass is None:
        notes.append(f"stellar-mass panels skipped: the reference {reference} has no mass column "
                     f"({' / '.join(MASS_COLUMNS)})")
        return {}
    ref_masks = stats.mass_panel_masks(ref_mass)
    panels: dict[str, dict] = {}
    for name, res in results.items():
        mass = catalog_values(res.catalog, find_column(res.catalog, MASS_COLUMNS))
        if mass is None:
            notes.append(f"stellar-mass panels: set {name} has no mass column; left out")
            continue
        for label, mask in stats.mass_panel_masks(mass).items():
            ref_vals = results[reference].llr[ref_masks[label]]
            if mask.sum() < 2 or ref_vals.size < 2:
                continue
            ref_groups = results[reference].groups
            entry = stats.summarize(res.llr[mask], None if name == reference else ref_vals, n_boot=n_boot, rng=seed,
                                    groups=None if res.groups is None else res.groups[mask],
                                    reference_groups=None if ref_groups is None else ref_groups[ref_masks[label]])
            entry.pop("reading")
            panels.setdefault(name, {})[label] = entry
    return panels


def _matched(results: dict[str, SetResult], reference: str, n_draws: int, seed: int,
             notes: list[str]) -> dict:
    """ΔLLR with identical mass x size x Sérsic-index make-up in every set."""
    props = {"log_mstar": MASS_COLUMNS, "size": SIZE_COLUMNS, "sersic_n": SERSIC_N_COLUMNS}
    columns: dict[str, dict[str, np.ndarray]] = {name: {} for name in results}
    used = {}
    for prop, cands in props.items():
        chosen = [find_column(r.catalog, cands) for r in results.values()]
        if any(c is None for c in chosen):
            continue
        used[prop] = chosen[0]
        for (name, res), col in zip(results.items(), chosen):
            values = catalog_values(res.catalog, col)
            columns[name][prop] = np.log10(np.where(values > 0, values, np.nan)) if prop == "size" else values
    if not used:
        notes.append("matched comparison skipped: no catalogue property (mass, size, Sérsic index) is present "
                     "in every set")
        return {}
    edges = stats.grid_edges(columns[reference], n_bins=3,
                             fixed={"log_mstar": [9.5, 10.0, 10.5]} if "log_mstar" in used else None)
    cells = {name: stats.cell_index(columns[name], edges) for name in results}
    res = stats.matched_delta({n: r.llr for n, r in results.items()}, cells, reference, n_draws=n_draws, rng=seed)
    if res.n_per_set == 0:
        notes.append("matched comparison skipped: no grid cell is populated by every set")
        return {}
    return {"properties": used, "n_per_set": res.n_per_set, "n_cells": res.n_cells, "n_draws": n_draws,
            "delta_llr": res.delta, "delta_llr_err": res.error}


def build_summary(results: dict[str, SetResult], reference: str, ref_cut: float, n_boot: int, matched_draws: int,
                  seed: int, notes: list[str], sides: tuple[Side, Side], group_col: str | None = None) -> dict:
    """The content of summary.json (statistics only; ``notes`` collects what was skipped)."""
    per_set = _set_summaries(results, reference, n_boot, seed, ref_cut)
    ranking = sorted(per_set, key=lambda n: per_set[n]["mean_llr"], reverse=True)
    summary = {
        "reference": reference,
        "ranking": ranking,
        "sets": per_set,
        "mass_panels": _mass_panels(results, reference, n_boot, seed, notes),
        "matched": _matched(results, reference, matched_draws, seed, notes),
        "outlier_threshold_llr": ref_cut,
        "identity": "E_q[LLR] = KL(q||p_arch) - KL(q||p_obs); higher = closer to the observations",
        "group_col": group_col,
        "notes": notes,
    }
    names = (sides[0].names, sides[1].names)
    per_set_extra, top = model_variance(results, reference, ranking, per_set, names, n_boot, seed, notes)
    for name, extra in per_set_extra.items():
        per_set[name].update(extra)
    summary.update(top)
    return summary


def attach_groups(results: dict[str, SetResult], group_col: str | None) -> list[str]:
    """Set ``res.groups`` from the catalogue column ``group_col``; notes for sets without it."""
    notes: list[str] = []
    if group_col is None:
        return notes
    for name, res in results.items():
        cat = res.catalog
        col = None
        if cat is not None:
            col = next((c for c in cat.colnames if c.lower() == group_col.lower()), None)
        if col is None or cat[col].ndim != 1:
            notes.append(f"{name}: no catalogue column {group_col!r} (--group-col), so its intervals resample "
                         "images, treating every image as an independent galaxy")
            continue
        values = np.ma.asarray(cat[col])
        labels = np.asarray([x.decode() if isinstance(x, bytes) else str(x) for x in np.ma.filled(values)],
                            dtype=object)
        masked = np.ma.getmaskarray(values)
        # a blank label is its own object, in this set only (never "shared" with another set's blank row)
        labels[masked] = [f"<{name}: blank {group_col} row {i}>" for i in np.flatnonzero(masked)]
        res.groups = labels.astype(str)
        n_groups = len(np.unique(res.groups))
        if n_groups < MIN_SET_SIZE:
            raise MorphllrError(f"{name}: all its images belong to {n_groups} {group_col} group; an interval over "
                                f"groups needs at least {MIN_SET_SIZE} (one group gives a zero-width interval); "
                                "add galaxies or drop --group-col")
        if n_groups < 10:
            notes.append(f"{name}: only {n_groups} {group_col} groups; intervals over so few groups are rough")
    if any(r.groups is not None for r in results.values()):
        notes.append(f"--group-col {group_col}: ci95, ΔLLR errors, the sky ratio interval and the model-variance "
                     "intervals resample groups; AUROC, KS (and its p-value) and the matched ΔLLR still treat "
                     "images as independent")
    return notes


def merge_notes(notes: list[str], set_names: Iterable[str]) -> list[str]:
    """Fold per-set notes with the same text ("A: no mask", "B: no mask" -> "A, B: no mask").

    Args:
        notes: notes in order; per-set ones start with "<set name>: ".
        set_names: the set names.

    Returns:
        the merged notes, first occurrence order kept.
    """
    grouped: dict[str, list[str]] = {}
    names = sorted(set_names, key=len, reverse=True)  # longest first so "sim" does not eat "sim2"
    for note in notes:
        owner = next((n for n in names if note.startswith(f"{n}: ")), None)
        text = note[len(owner) + 2:] if owner else note
        grouped.setdefault(text, [])
        if owner:
            grouped[text].append(owner)
    return [f"{', '.join(owners)}: {text}" if owners else text for text, owners in grouped.items()]
