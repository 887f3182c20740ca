"""Model variance: how far a comparison survives retraining, from the members of ensembles on both sides.

With K_obs p_obs and K_arch p_arch members every set is scored under all K_obs x K_arch model
pairs (LLR_ij = log p_obs,i - log p_arch,j): :func:`model_variance` gives the per-pair means, the
spread of ΔLLR over model pairs (``model_std``), the hierarchical (galaxies + models) intervals,
the stability mark and the ranking agreement; sets that show the same galaxies are paired
(:func:`shared_galaxies`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from morphllr.comparison import stats
from morphllr.comparison.result import SetResult
from morphllr.comparison.sets import MIN_SET_SIZE

#: ci95_total / delta_llr_ci95_total need this many members on each side (fewer: null).
MIN_MEMBERS_TOTAL = 3
#: share of model pairs whose ΔLLR must have the ensemble's sign for a difference to count as stable
STABLE_SIGN_SHARE = 0.95
#: the stability mark's rule, as summary.json states it
STABILITY_RULE = (
    "stable: the set's ΔLLR against the reference (paired over the shared galaxies when the two sets show the "
    "same galaxies, else the difference of the means) survives retraining when |ΔLLR| >= 2 sqrt(err^2 + "
    "model_std^2) (err = galaxy-bootstrap error of ΔLLR, model_std = spread of ΔLLR over the model pairs) and "
    "ΔLLR_ij has the sign of ΔLLR for at least 95 % of the model pairs ij")

#: how each interval of the model variance is resampled, as summary.json states it
BOOTSTRAP_METHOD = {
    "ci95": "percentile bootstrap of the set's mean LLR over images (over groups with group_col); models fixed",
    "ci95_total": "galaxies (groups) and model members: the ensemble mean's variance = the galaxy-bootstrap "
                  "variance (one galaxy resample for all members) + var_obs / K_obs + var_arch / K_arch (between-"
                  "member variances, ddof=1), with Student's t on Welch-Satterthwaite degrees of freedom (few "
                  "members: a percentile bootstrap over 3 members would cover ~80 %); the reported interval is its "
                  "hull with the galaxy-only interval and ci95, so it is never narrower than ci95",
    "delta_llr_ci95_total": "the same for ΔLLR vs the reference (each member's ΔLLR: the same models score both "
                            "sets); paired over shared galaxies where the sets show the same galaxies, else the two "
                            "sets' galaxies resampled independently; hull with delta_llr_ci95",
    "model_std": "sqrt(var_obs + var_arch) of the per-member contributions to the paired ΔLLR: how far one "
                 "retrained model pair's ΔLLR moves (the K_obs x K_arch pair values share members, so their "
                 "plain std would understate it by ~sqrt(K / (K + 1)))",
}


def _pair_keys(res: SetResult, name: str, use_groups: bool) -> np.ndarray | None:
    """Galaxy key of every image for pairing sets, or None when the set has no catalogue ids.

    Keys are the group labels (when both sets have ``group_col``), else the catalogue ids
    with a leading ``"<set name>-"`` removed when every id carries it (the demo's
    ``sim-good-000012`` and ``observed-test-000012`` are one galaxy).
    """
    if use_groups:
        return np.asarray(res.groups, dtype=str)
    if res.catalog is None or "id" not in res.catalog.colnames:
        return None
    ids = [x.decode() if isinstance(x, bytes) else str(x) for x in res.ids]
    prefix = f"{name}-"
    if ids and all(i.startswith(prefix) and len(i) > len(prefix) for i in ids):
        return np.asarray([i[len(prefix):] for i in ids], dtype=str)
    if ids and all(i.isdigit() for i in ids):
        return None  # plain running numbers (0, 1, 2 ...) of two unrelated sets name no galaxy
    return np.asarray(ids, dtype=str)


def _key_means(values: np.ndarray, keys: np.ndarray, shared: np.ndarray) -> np.ndarray:
    """``(K, S)`` mean of each row of ``values (K, N)`` over the images of each shared key."""
    pos = np.clip(np.searchsorted(shared, keys), 0, len(shared) - 1)
    inside = shared[pos] == keys
    counts = np.bincount(pos[inside], minlength=len(shared)).astype(np.float64)
    sums = np.stack([np.bincount(pos[inside], row[inside], len(shared)) for row in values])
    return sums / counts


def shared_galaxies(res: SetResult, ref: SetResult, name: str, ref_name: str) -> tuple | None:
    """How ``res`` and ``ref`` pair up, or None when they do not show the same galaxies.

    Two sets are paired when they have the same galaxy keys (:func:`_pair_keys`; plain running
    numbers as ids name no galaxy), at least :data:`MIN_SET_SIZE` of them.

    Returns:
        ``(keys of res, keys of ref, sorted shared keys)`` or None.
    """
    use_groups = res.groups is not None and ref.groups is not None
    ks, kr = _pair_keys(res, name, use_groups), _pair_keys(ref, ref_name, use_groups)
    if ks is None or kr is None:
        return None
    us, ur = np.unique(ks), np.unique(kr)
    # the same galaxies: equal key sets (a subset of a larger reference would be a biased sample of it)
    if us.size < MIN_SET_SIZE or not np.array_equal(us, ur):
        return None
    return ks, kr, us


def _units(res: SetResult) -> tuple[np.ndarray, np.ndarray]:
    """Per-unit (group, or image) sums of every member's log p, obs rows first, and the unit sizes."""
    logp = np.vstack([res.member_logp["obs"], res.member_logp["arch"]])
    if res.groups is None:
        return logp, np.ones(logp.shape[1])
    return stats.group_sums(logp, res.groups)


def _by_pair(obs_values: np.ndarray, arch_values: np.ndarray) -> np.ndarray:
    """``(K_obs, K_arch)`` table of obs_values[i] - arch_values[j]."""
    return np.asarray(obs_values, dtype=np.float64)[:, None] - np.asarray(arch_values, dtype=np.float64)[None, :]


def model_variance(results: dict[str, SetResult], reference: str, ranking: list[str], per_set: dict,
                   names: tuple[list[str], list[str]], n_boot: int, seed: int,
                   notes: list[str]) -> tuple[dict[str, dict], dict]:
    """How far each number survives retraining: per-pair means, model spread, hierarchical intervals.

    With K_obs p_obs and K_arch p_arch members, LLR_ij = log p_obs,i - log p_arch,j for all
    pairs comes from the per-member log p (``SetResult.member_logp``).  The absolute LLR
    level moves between seeds while the order need not, so the spread is measured on the
    paired ΔLLR against the reference: per shared galaxy where the two sets show the same
    galaxies (:func:`shared_galaxies`), else as the difference of the two sets' means.

    Args:
        results: the scored sets.
        reference: the reference set's name.
        ranking: set names, best first (the ensemble ranking).
        per_set: summary["sets"] so far (``ci95``, ``delta_llr``, ``delta_llr_err`` are read).
        names: member names of the obs and the arch side.
        n_boot: bootstrap replicates.
        seed: seed of the resampling.
        notes: report notes (the single-pair and too-few-members notes are added here).

    Returns:
        ``(per-set additions, top-level additions)`` for summary.json (see ARCHITECTURE.md).
    """
    k_obs, k_arch = len(names[0]), len(names[1])
    n_pairs = k_obs * k_arch
    with_total = k_obs >= MIN_MEMBERS_TOTAL and k_arch >= MIN_MEMBERS_TOTAL
    if n_pairs == 1:
        notes.append("model variance is not measured: one p_obs and one p_arch model give one model pair, so every "
                     "interval covers galaxy sampling only and says nothing about whether the ranking survives "
                     "retraining; train each model with several seeds (`morphllr train --seeds`) and compare the "
                     "ensembles to measure it")
    elif not with_total:
        notes.append(f"ci95_total and delta_llr_ci95_total need at least {MIN_MEMBERS_TOTAL} models per side "
                     f"(have {k_obs} p_obs, {k_arch} p_arch): null; model_std and the stability mark use the "
                     f"{n_pairs} model pairs")
    ref = results[reference]
    ref_units = _units(ref)
    ref_draws = stats.resample_member_means(*ref_units, n_boot, np.random.default_rng([seed, 7, 0]))
    ref_means = ref_units[0].sum(axis=1) / ref_units[1].sum()  # per-member mean over the reference's images
    extra: dict[str, dict] = {}
    means_by_pair: dict[str, np.ndarray] = {}
    for k, (name, res) in enumerate(results.items()):
        units = ref_units if name == reference else _units(res)
        member_means = units[0].sum(axis=1) / units[1].sum()
        table = _by_pair(member_means[:k_obs], member_means[k_obs:])
        means_by_pair[name] = table.ravel()
        e: dict[str, Any] = {"mean_llr_by_pair": table.tolist(), "model_std": None, "sign_agreement": None,
                             "ci95_total": None, "delta_llr_pairing": None, "n_paired": 0,
                             "delta_llr_paired": None, "delta_llr_paired_err": None, "delta_llr_by_pair": None,
                             "delta_llr_ci95": None, "delta_llr_ci95_total": None, "stable": None}
        draws = ref_draws if name == reference else stats.resample_member_means(
            *units, n_boot, np.random.default_rng([seed, 7, k]))
        if with_total:
            iv = stats.hierarchical_intervals(draws[:, :k_obs], draws[:, k_obs:], 0.95)
            e["ci95_total"] = stats.hull(iv["total"], per_set[name]["ci95"])
        extra[name] = e
        if name == reference:
            continue
        pairing = shared_galaxies(res, ref, name, reference)
        if pairing is not None:
            ks, kr, shared = pairing
            logp_set = np.vstack([res.member_logp["obs"], res.member_logp["arch"]])
            logp_ref = np.vstack([ref.member_logp["obs"], ref.member_logp["arch"]])
            diff = _key_means(logp_set, ks, shared) - _key_means(logp_ref, kr, shared)  # (K_obs + K_arch, S)
            d_means = diff.mean(axis=1)
            d_draws = stats.resample_member_means(diff, np.ones(diff.shape[1]), n_boot,
                                                  np.random.default_rng([seed, 9, k]))
            e.update(delta_llr_pairing="paired", n_paired=int(shared.size))
        else:
            d_means = member_means - ref_means
            d_draws = draws - ref_draws
            e["delta_llr_pairing"] = "unpaired"
        deltas = _by_pair(d_means[:k_obs], d_means[k_obs:])
        delta = float(deltas.mean())
        iv = stats.hierarchical_intervals(d_draws[:, :k_obs], d_draws[:, k_obs:], 0.95)
        e["delta_llr_by_pair"] = deltas.tolist()
        e["delta_llr_ci95"] = iv["galaxy"]
        if pairing is not None:
            e["delta_llr_paired"], e["delta_llr_paired_err"] = delta, iv["galaxy_std"]
            err = iv["galaxy_std"]
        else:
            delta, err = per_set[name]["delta_llr"], per_set[name]["delta_llr_err"]
        if with_total:
            e["delta_llr_ci95_total"] = iv["total"]
        if n_pairs > 1:
            # the spread of one retrained pair's answer: var_obs + var_arch (the K^2 pair values share members,
            # so their plain std would be too small by ~sqrt(K / (K + 1)))
            model_std = float(np.sqrt(sum(stats.member_variance(d_means[:k_obs], d_means[k_obs:]))))
            share = stats.sign_agreement(deltas, delta)
            e.update(model_std=model_std, sign_agreement=share,
                     stable=bool(abs(delta) >= 2.0 * math.hypot(err, model_std) and share >= STABLE_SIGN_SHARE))
    top: dict[str, Any] = {"n_models": {"obs": k_obs, "arch": k_arch}, "model_pairs": n_pairs,
                           "model_names": {"obs": list(names[0]), "arch": list(names[1])},
                           "ranking_agreement": None, "ranking_by_pair": None,
                           "stability_rule": STABILITY_RULE, "bootstrap": BOOTSTRAP_METHOD}
    if n_pairs > 1:
        matrix = np.stack([means_by_pair[n] for n in ranking], axis=1)  # (pairs, sets) in ranking order
        agreement, per_pair = stats.ranking_agreement(matrix, range(len(ranking)))
        top["ranking_agreement"] = agreement if len(ranking) > 1 else None
        pairs = [(o, a) for o in names[0] for a in names[1]]
        top["ranking_by_pair"] = [
            {"obs": o, "arch": a, "ranking": [ranking[s] for s in np.argsort(-matrix[p], kind="stable")],
             "agreement": float(per_pair[p]) if len(ranking) > 1 else None}
            for p, (o, a) in enumerate(pairs)]
    return extra, top
