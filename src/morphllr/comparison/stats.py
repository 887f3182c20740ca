"""Statistics of log-likelihood ratios: bootstrap (means, pooled ratios), AUROC, KS, mass panels, matched draws.

What the numbers mean.  For images x drawn from a set with distribution q, the mean
log-likelihood ratio estimates

    E_q[LLR] = E_q[log p_obs - log p_arch] = KL(q || p_arch) - KL(q || p_obs),

so a positive mean says the set is closer (in KL) to the observations than to smooth
Sérsic blobs, and the difference of two sets' means says which one is closer to the
observations.  Everything here works on plain 1-D numpy arrays of per-image LLRs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from morphllr.errors import MorphllrError

#: Stellar-mass panels of the paper, log10(M*/Msun); the last one is open-ended.
MASS_PANELS: tuple[tuple[float, float], ...] = ((9.5, 10.0), (10.0, 10.5), (10.5, np.inf))

#: Above this many values the bootstrap distribution of the mean is drawn from its Gaussian limit.
LARGE_SAMPLE = 50_000

# Resampling is done in chunks of at most this many drawn values to keep memory flat.
_MAX_DRAWS_PER_CHUNK = 4_000_000


def _as_finite_1d(values, what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).ravel()
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        raise MorphllrError(f"{what}: no finite values; check that the set is not empty")
    return arr


def group_index(groups) -> tuple[np.ndarray, int]:
    """Dense group numbers ``0..G-1`` (in order of first appearance) and ``G``.

    Args:
        groups: one label per value (numbers or text; equal labels = one group).

    Returns:
        ``(inverse, G)`` with ``inverse`` an int64 array of the values' group numbers.
    """
    labels = np.asarray(groups)
    if labels.ndim != 1:
        labels = labels.ravel()
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")  # np.unique sorts; renumber by first appearance
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return rank[inverse.ravel()].astype(np.int64), int(order.size)


def _finite_with_groups(values, groups, what: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Finite values (as :func:`_as_finite_1d`) and their group labels (None without groups)."""
    if groups is None:
        return _as_finite_1d(values, what), None
    x = np.asarray(values, dtype=np.float64).ravel()
    g = np.asarray(groups).ravel()
    if g.shape != x.shape:
        raise MorphllrError(f"{what}: {g.size} group labels for {x.size} values; give one label per image")
    ok = np.isfinite(x)
    if not ok.any():
        raise MorphllrError(f"{what}: no finite values; check that the set is not empty")
    return x[ok], g[ok]


def group_sums(values, groups) -> tuple[np.ndarray, np.ndarray]:
    """Per-group sums and counts of ``values`` (groups numbered as in :func:`group_index`).

    Args:
        values: 1-D values; a 2-D ``(K, N)`` array gives ``(K, G)`` sums (one row per member).
        groups: one label per column of ``values``.

    Returns:
        ``(sums, counts)``: float64 ``(G,)`` or ``(K, G)`` and float64 ``(G,)``.
    """
    inverse, n_groups = group_index(groups)
    v = np.asarray(values, dtype=np.float64)
    counts = np.bincount(inverse, minlength=n_groups).astype(np.float64)
    if v.ndim == 1:
        return np.bincount(inverse, v, n_groups), counts
    return np.stack([np.bincount(inverse, row, n_groups) for row in v]), counts


def n_groups(values, groups) -> int:
    """How many groups hold a finite value (``len`` of the finite values without groups)."""
    x, g = _finite_with_groups(values, groups, "groups")
    return int(x.size) if g is None else group_index(g)[1]


def _resampled_ratios(a: np.ndarray, b: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``sum(a) / sum(b)`` over ``n_boot`` resamples (with replacement) of the units (pairs a_k, b_k).

    Above :data:`LARGE_SAMPLE` units: the Gaussian (delta-method) limit of the ratio.
    """
    n = a.size
    if n > LARGE_SAMPLE:
        ratio = a.sum() / b.sum()
        scale = np.std(a - ratio * b, ddof=1) / (np.sqrt(n) * b.mean())
        return ratio + scale * rng.standard_normal(n_boot)
    per_chunk = max(1, _MAX_DRAWS_PER_CHUNK // n)
    ratios = np.empty(n_boot)
    for start in range(0, n_boot, per_chunk):
        stop = min(n_boot, start + per_chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        with np.errstate(invalid="ignore", divide="ignore"):
            ratios[start:stop] = a[idx].sum(axis=1) / b[idx].sum(axis=1)
    return ratios


def bootstrap_means(values, n_boot: int = 1000, rng: np.random.Generator | int | None = 0,
                    groups=None) -> np.ndarray:
    """Means of ``n_boot`` bootstrap resamples (with replacement) of ``values``.

    Above :data:`LARGE_SAMPLE` values the means are drawn from their Gaussian (CLT) limit.
    With ``groups`` (several images of one object: projections, snapshots, repeated
    insertions) whole groups are resampled, the cluster bootstrap: each replicate draws G
    groups with replacement and takes the mean over all their images, so images of one
    object never count as independent.  With equal group sizes this is the bootstrap of
    the group means (the same random draws as ``bootstrap_means(group_means)``).

    Args:
        values: 1-D sample (non-finite values are ignored).
        n_boot: number of bootstrap replicates.
        rng: numpy Generator or seed, for reproducible intervals.
        groups: optional group label per value.

    Returns:
        float64 array ``(n_boot,)`` of resampled means.
    """
    x, g = _finite_with_groups(values, groups, "bootstrap")
    rng = np.random.default_rng(rng)
    if g is not None:
        sums, counts = group_sums(x, g)
        return _resampled_ratios(sums, counts, n_boot, rng)
    n = x.size
    if n > LARGE_SAMPLE:
        # resampled means of a large sample are Gaussian to high accuracy (CLT); drawing them
        # directly avoids n_boot * n random indices (10^9 for a million galaxies)
        return x.mean() + x.std(ddof=1) / np.sqrt(n) * rng.standard_normal(n_boot)
    per_chunk = max(1, _MAX_DRAWS_PER_CHUNK // n)
    means = np.empty(n_boot)
    for start in range(0, n_boot, per_chunk):
        stop = min(n_boot, start + per_chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = x[idx].mean(axis=1)
    return means


def bootstrap_mean_ci(values, level: float = 0.95, n_boot: int = 1000,
                      rng: np.random.Generator | int | None = 0, groups=None) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean.

    Args:
        values: 1-D sample.
        level: coverage, e.g. 0.95.
        n_boot: bootstrap replicates.
        rng: Generator or seed.
        groups: optional group label per value: groups are resampled (:func:`bootstrap_means`).

    Returns:
        ``(lo, hi)``.
    """
    means = bootstrap_means(values, n_boot, rng, groups=groups)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def ratio_of_sums(numerator, denominator) -> float:
    """Pooled ratio ``sum(numerator) / sum(denominator)`` over the pairs where both are finite.

    Args:
        numerator: per-image values (e.g. LLR summed over a set of pixels).
        denominator: per-image weights (e.g. how many pixels that was).

    Returns:
        the ratio, NaN when the denominator sums to 0 or nothing is finite.
    """
    a, b = _finite_pairs(numerator, denominator)
    total = b.sum()
    return float(a.sum() / total) if total != 0 else float("nan")


def bootstrap_ratio_ci(numerator, denominator, level: float = 0.95, n_boot: int = 1000,
                       rng: np.random.Generator | int | None = 0, groups=None) -> tuple[float, float]:
    """Percentile bootstrap interval of :func:`ratio_of_sums`, resampling whole images.

    Images, not pixels, are the independent units (pixels of one image share a galaxy
    and a PSF), so pairs are resampled together.  Above :data:`LARGE_SAMPLE` pairs the
    ratio is drawn from its Gaussian (delta-method) limit.

    Args:
        numerator: per-image values.
        denominator: per-image weights (non-negative).
        level: coverage, e.g. 0.95.
        n_boot: bootstrap replicates.
        rng: Generator or seed.
        groups: optional group label per image: whole groups (their summed numerators and
            denominators) are resampled instead of images.

    Returns:
        ``(lo, hi)``; NaNs when the denominator sums to 0.
    """
    if groups is not None:
        num = np.asarray(numerator, dtype=np.float64).ravel()
        den = np.asarray(denominator, dtype=np.float64).ravel()
        g = np.asarray(groups).ravel()
        ok = np.isfinite(num) & np.isfinite(den)
        if ok.any():
            numerator, _ = group_sums(num[ok], g[ok])
            denominator, _ = group_sums(den[ok], g[ok])
        else:
            numerator, denominator = num[ok], den[ok]
    a, b = _finite_pairs(numerator, denominator)
    rng = np.random.default_rng(rng)
    n = a.size
    if n == 0 or b.sum() == 0:
        return float("nan"), float("nan")
    ratios = _resampled_ratios(a, b, n_boot, rng)
    ratios = ratios[np.isfinite(ratios)]  # a resample of only sky-free images has no ratio
    if ratios.size == 0:
        return float("nan"), float("nan")
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(ratios, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def share_of_mean(part, total, min_z: float = 2.0, groups=None) -> float:
    """``mean(part) / mean(total)``: how much of a set's mean LLR a subset of pixels carries.

    The rule for "no share": when the mean of ``total`` is within ``min_z`` standard
    errors of 0 (|mean| < min_z * std / sqrt(n), or exactly 0), the total is not known
    to differ from 0 and any share of it is noise, so NaN is returned.

    Args:
        part: per-image LLR of the subset (e.g. empty-sky pixels).
        total: per-image LLR of the whole image (same images).
        min_z: how many standard errors from 0 the total's mean must be.
        groups: optional group label per image; the standard error is then the cluster
            (group-resampling) one, since images of one object are not independent.

    Returns:
        the share (may be negative or above 1 when the parts have opposite signs), or NaN.
    """
    p, t = _finite_pairs(part, total)
    if t.size == 0:
        return float("nan")
    mean = t.mean()
    error = t.std(ddof=1) / np.sqrt(t.size) if t.size > 1 else 0.0
    if groups is not None:
        pa = np.asarray(part, dtype=np.float64).ravel()
        to = np.asarray(total, dtype=np.float64).ravel()
        ok = np.isfinite(pa) & np.isfinite(to)
        sums, counts = group_sums(to[ok], np.asarray(groups).ravel()[ok])
        n_g = sums.size
        # linearised ratio estimator sum(S_g) / sum(c_g): var ~ var_g(S_g - mean c_g) / (G mean(c)^2)
        error = (np.std(sums - mean * counts, ddof=1) / (np.sqrt(n_g) * counts.mean())) if n_g > 1 else 0.0
    if mean == 0 or abs(mean) < min_z * error:
        return float("nan")
    return float(p.mean() / mean)


def _finite_pairs(x, y) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise MorphllrError(f"paired values: {x.size} vs {y.size} entries; give one of each per image")
    ok = np.isfinite(x) & np.isfinite(y)
    return x[ok], y[ok]


def delta_mean(values, reference, n_boot: int = 1000,
               rng: np.random.Generator | int | None = 0, groups=None,
               reference_groups=None) -> tuple[float, float]:
    """Difference of means ``mean(values) - mean(reference)`` and its bootstrap standard error.

    The two samples are resampled independently (they are different galaxies).

    Args:
        values: LLRs of the set.
        reference: LLRs of the reference set.
        n_boot: bootstrap replicates.
        rng: Generator or seed.
        groups: optional group label per value of the set (groups are resampled).
        reference_groups: the same for the reference.

    Returns:
        ``(delta, error)``.
    """
    rng = np.random.default_rng(rng)
    x, g = _finite_with_groups(values, groups, "delta_mean")
    r, rg = _finite_with_groups(reference, reference_groups, "delta_mean reference")
    diffs = bootstrap_means(x, n_boot, rng, groups=g) - bootstrap_means(r, n_boot, rng, groups=rg)
    return float(x.mean() - r.mean()), float(diffs.std(ddof=1))


def auroc(values, reference) -> float:
    """Area under the ROC curve separating ``values`` from ``reference``.

    It is the probability that a random member of ``values`` has a higher LLR than a
    random member of ``reference`` (ties count one half): 0.5 means indistinguishable,
    below 0.5 means the set scores lower than the reference.

    Args:
        values: LLRs of the set.
        reference: LLRs of the reference set.

    Returns:
        AUROC in [0, 1].
    """
    from scipy.stats import mannwhitneyu

    x = _as_finite_1d(values, "auroc")
    r = _as_finite_1d(reference, "auroc reference")
    u = mannwhitneyu(x, r, alternative="two-sided", method="asymptotic").statistic
    return float(u / (x.size * r.size))


def ks_statistic(values, reference) -> tuple[float, float]:
    """Two-sample Kolmogorov–Smirnov statistic and p-value.

    Args:
        values: LLRs of the set.
        reference: LLRs of the reference set.

    Returns:
        ``(statistic, pvalue)``.
    """
    from scipy.stats import ks_2samp

    res = ks_2samp(_as_finite_1d(values, "ks"), _as_finite_1d(reference, "ks reference"))
    return float(res.statistic), float(res.pvalue)


def kl_divergence(q, p) -> float:
    """KL(q || p) in nats for two discrete distributions on the same support.

    Args:
        q: probabilities (sum to 1).
        p: probabilities (positive wherever q is).

    Returns:
        the divergence in nats.
    """
    q = np.asarray(q, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    support = q > 0
    return float(np.sum(q[support] * (np.log(q[support]) - np.log(p[support]))))


def read_mean_llr(mean_llr: float, ci95: tuple[float, float] | None = None) -> str:
    """Say in words what a set's mean LLR means, via E_q[LLR] = KL(q||p_arch) - KL(q||p_obs).

    Args:
        mean_llr: mean LLR of the set in nats.
        ci95: optional bootstrap interval; an interval containing 0 is read as undecided.

    Returns:
        one sentence.
    """
    identity = f"E_q[LLR] = KL(q||p_arch) - KL(q||p_obs) = {mean_llr:+.3g} nats"
    if ci95 is not None and ci95[0] <= 0.0 <= ci95[1]:
        return (f"{identity}: the 95% interval contains 0, so this set is about as close to Sérsic "
                "archetypes as to the observations.")
    if mean_llr > 0:
        return (f"{identity}: closer to the observations than to smooth Sérsic blobs "
                "(the observed-galaxy model explains these images better).")
    return (f"{identity}: closer to smooth Sérsic blobs than to the observations "
            "(the images lack the structure real galaxies have, or have structure real galaxies lack).")


def verdict(mean_llr: float, ci95: tuple[float, float] | None = None) -> str:
    """A few words for tables: which side of the identity the set falls on.

    Args:
        mean_llr: mean LLR in nats.
        ci95: optional bootstrap interval (containing 0 = undecided).

    Returns:
        ``"closer to observations"``, ``"closer to Sérsic archetypes"`` or ``"undecided"``.
    """
    if ci95 is not None and ci95[0] <= 0.0 <= ci95[1]:
        return "undecided"
    return "closer to observations" if mean_llr > 0 else "closer to Sérsic archetypes"


def summarize(values, reference=None, n_boot: int = 1000,
              rng: np.random.Generator | int | None = 0, groups=None, reference_groups=None) -> dict:
    """All per-set numbers of the report for one sample of LLRs.

    Args:
        values: LLRs of the set.
        reference: LLRs of the reference set, or None for the reference itself.
        n_boot: bootstrap replicates.
        rng: Generator or seed.
        groups: optional group label per value: ``ci95`` and ``delta_llr_err`` then resample
            groups (:func:`bootstrap_means`); AUROC and KS stay per image.
        reference_groups: the same for the reference.

    Returns:
        dict with ``n, mean_llr, median_llr, std_llr, ci95, delta_llr, delta_llr_err,
        auroc_vs_reference, ks_vs_reference, ks_pvalue, reading, verdict`` (+ ``n_groups`` with
        groups).  With a reference of itself the comparisons are 0 / 0.5 by definition.
    """
    rng = np.random.default_rng(rng)
    x, g = _finite_with_groups(values, groups, "summary")
    ci = bootstrap_mean_ci(x, 0.95, n_boot, rng, groups=g)
    out = {
        "n": int(x.size),
        "mean_llr": float(x.mean()),
        "median_llr": float(np.median(x)),
        "std_llr": float(x.std(ddof=1)) if x.size > 1 else 0.0,
        "ci95": [ci[0], ci[1]],
    }
    if reference is None:
        out.update(delta_llr=0.0, delta_llr_err=0.0, auroc_vs_reference=0.5, ks_vs_reference=0.0, ks_pvalue=1.0)
    else:
        delta, err = delta_mean(x, reference, n_boot, rng, groups=g, reference_groups=reference_groups)
        ks, pval = ks_statistic(x, reference)
        out.update(delta_llr=delta, delta_llr_err=err, auroc_vs_reference=auroc(x, reference),
                   ks_vs_reference=ks, ks_pvalue=pval)
    if g is not None:
        out["n_groups"] = group_index(g)[1]
    out["reading"] = read_mean_llr(out["mean_llr"], ci)
    out["verdict"] = verdict(out["mean_llr"], ci)
    return out


# --------------------------------------------------------------------------- model (retraining) variance
def resample_member_means(sums, counts, n_boot: int = 1000,
                          rng: np.random.Generator | int | None = 0) -> np.ndarray:
    """Every member's mean over ``n_boot`` resamples of the units, one draw of units for all members.

    A unit is what is independent: an image, a group of images of one object, or a galaxy
    shared by two sets (then its value is a paired difference and its count 1).  Drawing
    the same units for every model member keeps the members' correlation (they score the
    same galaxies), which is what makes differences between sets more stable than levels.

    Args:
        sums: ``(K, G)`` per-member sums of the values over each unit's images.
        counts: ``(G,)`` images per unit.
        n_boot: replicates.
        rng: Generator or seed.

    Returns:
        ``(n_boot, K)``: per replicate and member, sum of the drawn units' sums / sum of
        their counts.  Above :data:`LARGE_SAMPLE` units: the joint Gaussian (delta-method)
        limit of these ratios.
    """
    rng = np.random.default_rng(rng)
    s = np.atleast_2d(np.asarray(sums, dtype=np.float64))
    c = np.asarray(counts, dtype=np.float64).ravel()
    k, g = s.shape
    if c.size != g or g == 0:
        raise MorphllrError(f"resample_member_means: {c.size} counts for {g} units; give one count per unit")
    if g > LARGE_SAMPLE:
        ratio = s.sum(axis=1) / c.sum()
        u = (s - ratio[:, None] * c[None, :]) / c.mean()
        cov = u @ u.T / ((g - 1) * g)
        vals, vecs = np.linalg.eigh(cov)
        scale = vecs * np.sqrt(np.clip(vals, 0.0, None))
        return ratio + rng.standard_normal((n_boot, k)) @ scale.T
    per_chunk = max(1, _MAX_DRAWS_PER_CHUNK // (g * k))
    out = np.empty((n_boot, k))
    st = s.T
    for start in range(0, n_boot, per_chunk):
        stop = min(n_boot, start + per_chunk)
        idx = rng.integers(0, g, size=(stop - start, g))
        out[start:stop] = st[idx].sum(axis=1) / c[idx].sum(axis=1)[:, None]
    return out


def percentile_ci(draws, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap draws (non-finite draws ignored; NaNs when none is finite)."""
    d = np.asarray(draws, dtype=np.float64).ravel()
    d = d[np.isfinite(d)]
    if d.size == 0:
        return float("nan"), float("nan")
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(d, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def hull(*intervals) -> list[float]:
    """Smallest interval holding every given ``(lo, hi)`` (NaN bounds ignored)."""
    los = [float(i[0]) for i in intervals if i is not None and np.isfinite(i[0])]
    his = [float(i[1]) for i in intervals if i is not None and np.isfinite(i[1])]
    return [min(los) if los else float("nan"), max(his) if his else float("nan")]


def member_variance(obs_values, arch_values) -> tuple[float, float]:
    """Between-member variances (ddof=1) of the obs and the arch side's per-member statistics.

    A K_obs x K_arch table of pair values ``obs_i - arch_j`` is additive, so the spread a
    retraining of *one* pair gives is ``var_obs + var_arch``; the std over the K^2 pair
    values would be too small by about sqrt(K / (K + 1)), because pairs share members.
    A side with one member contributes 0 (its variance is not measured).
    """
    o = np.asarray(obs_values, dtype=np.float64).ravel()
    a = np.asarray(arch_values, dtype=np.float64).ravel()
    return (float(np.var(o, ddof=1)) if o.size > 1 else 0.0, float(np.var(a, ddof=1)) if a.size > 1 else 0.0)


def hierarchical_intervals(obs_means, arch_means, level: float = 0.95) -> dict:
    """Galaxy-only and total (galaxies + model members) intervals of an ensemble's mean.

    ``obs_means[b, i]`` is member i's statistic under galaxy resample b (the same galaxy
    draw in a row for every member).  The galaxy-only interval is the percentile interval
    of the ensemble's ``mean_i obs - mean_j arch`` over the resamples.  The total interval
    adds the uncertainty of having trained these K members rather than others: the
    ensemble mean's variance is ``var_galaxies + var_obs / K_obs + var_arch / K_arch``
    (member variances with ddof=1, :func:`member_variance`), and since var_obs and var_arch
    come from only K - 1 degrees of freedom each, the interval uses Student's t with the
    Welch-Satterthwaite degrees of freedom (galaxy term: infinite).  A percentile
    bootstrap over so few members would cover ~80 % at K = 3; in a seeded simulation with
    K = 3 per side and model variance above galaxy variance, this interval covered 97.5 %.

    Args:
        obs_means: ``(B, K_obs)`` per-member statistics under B galaxy resamples.
        arch_means: ``(B, K_arch)``.
        level: coverage.

    Returns:
        dict ``galaxy`` (interval over galaxy resamples only), ``galaxy_std`` (the galaxy
        sampling error) and ``total`` (the t interval above, widened to hold ``galaxy``).
    """
    from scipy import stats as sps

    o = np.atleast_2d(np.asarray(obs_means, dtype=np.float64))
    a = np.atleast_2d(np.asarray(arch_means, dtype=np.float64))
    ensemble = o.mean(axis=1) - a.mean(axis=1)
    galaxy = percentile_ci(ensemble, level)
    var_gal = float(np.var(ensemble, ddof=1)) if ensemble.size > 1 else 0.0
    centre = float(o.mean() - a.mean())
    var_o, var_a = member_variance(o.mean(axis=0), a.mean(axis=0))
    terms = [(var_o / o.shape[1], o.shape[1] - 1), (var_a / a.shape[1], a.shape[1] - 1)]
    total_var = var_gal + sum(w for w, _ in terms)
    denominator = sum(w * w / dof for w, dof in terms if dof > 0 and w > 0)
    dof = total_var**2 / denominator if denominator > 0 else np.inf
    half = float(sps.t.ppf(0.5 + level / 2.0, dof) * np.sqrt(total_var)) if total_var > 0 else 0.0
    return {"galaxy": list(galaxy), "galaxy_std": float(np.sqrt(var_gal)),
            "total": hull((centre - half, centre + half), galaxy)}


def ranking_agreement(means_by_pair, order) -> tuple[float, np.ndarray]:
    """How far every model pair ranks the sets as the ensemble does (Kendall-type, in [0, 1]).

    For model pair p and every two sets a, b with a above b in ``order``, the pair agrees
    when its mean LLR of a exceeds that of b (1), ties count 1/2, else 0; the agreement of
    pair p is the mean over the S(S-1)/2 set pairs (= (1 + Kendall's tau) / 2 when the
    ensemble order has no ties), and the result the mean over model pairs.

    Args:
        means_by_pair: ``(P, S)`` mean LLR of set s under model pair p (columns in ``order``'s
            index space).
        order: column indices, best first (the ensemble ranking).

    Returns:
        ``(agreement, per_pair)``; NaN and an empty array with fewer than 2 sets.
    """
    m = np.atleast_2d(np.asarray(means_by_pair, dtype=np.float64))
    order = list(order)
    if len(order) < 2:
        return float("nan"), np.array([])
    scores = []
    for hi_pos, a in enumerate(order):
        for b in order[hi_pos + 1:]:
            diff = m[:, a] - m[:, b]
            scores.append(np.where(diff > 0, 1.0, np.where(diff == 0, 0.5, 0.0)))
    per_pair = np.mean(scores, axis=0)
    return float(per_pair.mean()), per_pair


def sign_agreement(per_pair, value: float) -> float:
    """Share of model pairs whose value has the sign of ``value`` (a 0 matches only 0)."""
    d = np.asarray(per_pair, dtype=np.float64).ravel()
    return float(np.mean(np.sign(d) == np.sign(value))) if d.size else float("nan")


def panel_label(lo: float, hi: float) -> str:
    """Human label of a stellar-mass panel, e.g. ``'10.0-10.5'`` or ``'>10.5'``."""
    return f">{lo:g}" if not np.isfinite(hi) else f"{lo:g}-{hi:g}"


def mass_panel_masks(log_mstar, panels=MASS_PANELS) -> dict[str, np.ndarray]:
    """Boolean masks selecting each stellar-mass panel.

    Args:
        log_mstar: log10 stellar masses (NaN = unknown, never selected).
        panels: ``(lo, hi)`` pairs; ``lo <= m < hi``.

    Returns:
        ordered dict label -> mask.
    """
    m = np.asarray(log_mstar, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return {panel_label(lo, hi): (m >= lo) & (m < hi) for lo, hi in panels}


@dataclass
class MatchedResult:
    """Outcome of :func:`matched_delta`.

    Attributes:
        delta: set name -> mean over draws of mean(set) - mean(reference) in matched cells.
        error: set name -> standard deviation of that difference over draws.
        n_per_set: galaxies drawn from each set per draw (identical for every set).
        n_cells: number of grid cells that contain galaxies of every set.
    """

    delta: dict[str, float]
    error: dict[str, float]
    n_per_set: int
    n_cells: int


def grid_edges(reference_columns: dict[str, np.ndarray], n_bins: int = 3,
               fixed: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Bin edges per property: quantiles of the reference unless fixed edges are given.

    Args:
        reference_columns: property name -> reference values.
        n_bins: quantile bins per property.
        fixed: property name -> explicit edges (e.g. the mass panels).

    Returns:
        property name -> increasing edges (outer edges are +-inf so nobody is lost).
    """
    fixed = fixed or {}
    edges = {}
    for name, values in reference_columns.items():
        if name in fixed:
            inner = np.asarray(fixed[name], dtype=np.float64)
        else:
            v = np.asarray(values, dtype=np.float64)
            v = v[np.isfinite(v)]
            inner = np.unique(np.quantile(v, np.linspace(0, 1, n_bins + 1)[1:-1])) if v.size else np.array([])
        edges[name] = np.concatenate([[-np.inf], inner, [np.inf]])
    return edges


def cell_index(columns: dict[str, np.ndarray], edges: dict[str, np.ndarray]) -> np.ndarray:
    """Flat grid-cell number of each galaxy (-1 when any property is missing).

    Args:
        columns: property name -> values (same length).
        edges: property name -> bin edges from :func:`grid_edges`.

    Returns:
        int64 array of cell numbers.
    """
    names = list(edges)
    n = len(next(iter(columns.values())))
    cell = np.zeros(n, dtype=np.int64)
    valid = np.ones(n, dtype=bool)
    for name in names:
        v = np.asarray(columns[name], dtype=np.float64)
        valid &= np.isfinite(v)
        k = np.clip(np.searchsorted(edges[name], v, side="right") - 1, 0, len(edges[name]) - 2)
        cell = cell * (len(edges[name]) - 1) + k
    cell[~valid] = -1
    return cell


def matched_delta(llr: dict[str, np.ndarray], cells: dict[str, np.ndarray], reference: str,
                  n_draws: int = 200, rng: np.random.Generator | int | None = 0) -> MatchedResult:
    """ΔLLR between sets with identical distributions of galaxy properties.

    In every grid cell that all sets populate, draw the same number of galaxies (the
    smallest count among the sets, with replacement) from every set, so each draw has
    the same mass/size/Sérsic-index make-up in every set; the spread over draws is the
    error (paper, Section 4).

    Args:
        llr: set name -> per-image LLRs.
        cells: set name -> per-image cell numbers (from :func:`cell_index`; -1 = skip).
        reference: the name in ``llr`` to compare against.
        n_draws: bootstrap draws.
        rng: Generator or seed.

    Returns:
        a :class:`MatchedResult`; ``n_per_set == 0`` when no cell is shared.
    """
    rng = np.random.default_rng(rng)
    names = list(llr)
    members = {}
    for name in names:
        ok = (cells[name] >= 0) & np.isfinite(llr[name])
        order = np.argsort(cells[name][ok], kind="stable")
        sorted_cells = cells[name][ok][order]
        values = np.asarray(llr[name], dtype=np.float64)[ok][order]
        uniq, start, count = np.unique(sorted_cells, return_index=True, return_counts=True)
        members[name] = {int(c): values[s:s + k] for c, s, k in zip(uniq, start, count)}
    shared = set.intersection(*(set(m) for m in members.values())) if members else set()
    take = {c: min(len(members[name][c]) for name in names) for c in shared}
    n_per_set = int(sum(take.values()))
    if n_per_set == 0:
        nan = {name: float("nan") for name in names}
        return MatchedResult(delta=nan, error=dict(nan), n_per_set=0, n_cells=0)
    means = {name: np.empty(n_draws) for name in names}
    for d in range(n_draws):
        for name in names:
            total = 0.0
            for c, k in take.items():
                pool = members[name][c]
                total += pool[rng.integers(0, len(pool), size=k)].sum()
            means[name][d] = total / n_per_set
    delta = {name: float(np.mean(means[name] - means[reference])) for name in names}
    error = {name: float(np.std(means[name] - means[reference], ddof=1)) if n_draws > 1 else 0.0
             for name in names}
    return MatchedResult(delta=delta, error=error, n_per_set=n_per_set, n_cells=len(shared))
