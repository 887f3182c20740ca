"""Known-answer tests of morphllr.comparison.stats (no models needed)."""

from __future__ import annotations

import numpy as np
import pytest

from morphllr.comparison import stats
from morphllr.errors import MorphllrError


def test_mean_llr_converges_to_kl_difference_discrete():
    """E_q[log p_obs - log p_arch] = KL(q||p_arch) - KL(q||p_obs) on exactly known distributions."""
    rng = np.random.default_rng(1)
    q = np.array([0.5, 0.2, 0.2, 0.1])
    p_obs = np.array([0.4, 0.3, 0.2, 0.1])
    p_arch = np.array([0.1, 0.1, 0.3, 0.5])
    exact = stats.kl_divergence(q, p_arch) - stats.kl_divergence(q, p_obs)
    x = rng.choice(len(q), size=200_000, p=q)
    llr = np.log(p_obs[x]) - np.log(p_arch[x])
    lo, hi = stats.bootstrap_mean_ci(llr, n_boot=300, rng=2)
    assert lo <= exact <= hi
    assert hi - lo < 0.02  # the interval is informative, not trivially wide
    assert exact > 0  # q is closer to p_obs by construction


def test_mean_llr_converges_to_kl_difference_gaussian():
    """Same identity for 1-D Gaussians with the closed-form KL; sign flips when q moves to p_arch."""
    from scipy.stats import norm

    def kl_gauss(m1, s1, m2, s2):
        return np.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5

    rng = np.random.default_rng(3)
    obs, arch = (0.0, 1.0), (1.5, 0.7)
    for q in [(0.2, 0.9), (1.3, 0.8)]:
        x = rng.normal(*q, size=100_000)
        llr = norm.logpdf(x, *obs) - norm.logpdf(x, *arch)
        exact = kl_gauss(*q, *arch) - kl_gauss(*q, *obs)
        lo, hi = stats.bootstrap_mean_ci(llr, n_boot=300, rng=4)
        assert lo <= exact <= hi
        assert np.sign(exact) == np.sign(np.mean(llr))


def test_bootstrap_interval_covers_true_mean_at_nominal_rate():
    rng = np.random.default_rng(5)
    true_mean, trials = 1.0, 400
    hits = 0
    for _ in range(trials):
        sample = rng.exponential(true_mean, size=200)  # skewed, like LLR tails
        lo, hi = stats.bootstrap_mean_ci(sample, level=0.95, n_boot=400, rng=rng)
        hits += lo <= true_mean <= hi
    rate = hits / trials
    # percentile bootstrap under-covers slightly on skewed data; 400 trials give +-2 % noise
    assert 0.89 <= rate <= 0.99


def test_delta_mean_error_matches_analytic_standard_error():
    rng = np.random.default_rng(6)
    a, b = rng.normal(1.0, 2.0, 4000), rng.normal(0.0, 1.0, 1000)
    delta, err = stats.delta_mean(a, b, n_boot=800, rng=7)
    analytic = np.sqrt(a.var() / a.size + b.var() / b.size)
    assert delta == pytest.approx(a.mean() - b.mean())
    assert err == pytest.approx(analytic, rel=0.1)


def test_auroc_known_values():
    rng = np.random.default_rng(8)
    same = stats.auroc(rng.normal(size=5000), rng.normal(size=5000))
    assert same == pytest.approx(0.5, abs=0.02)
    assert stats.auroc([3.0, 4.0], [1.0, 2.0]) == 1.0
    assert stats.auroc([1.0, 2.0], [3.0, 4.0]) == 0.0
    assert stats.auroc([1.0], [1.0]) == 0.5
    # for unit Gaussians shifted by d, AUROC = Phi(d / sqrt(2))
    from scipy.stats import norm

    shifted = stats.auroc(rng.normal(1.0, 1.0, 20000), rng.normal(0.0, 1.0, 20000))
    assert shifted == pytest.approx(norm.cdf(1 / np.sqrt(2)), abs=0.01)


def test_ks_detects_shift_but_not_resample():
    rng = np.random.default_rng(9)
    ref = rng.normal(size=3000)
    ks_same, p_same = stats.ks_statistic(rng.normal(size=3000), ref)
    ks_shift, p_shift = stats.ks_statistic(rng.normal(0.5, 1, size=3000), ref)
    assert ks_shift > 3 * ks_same
    assert p_shift < 1e-6 < p_same


def test_summarize_reference_and_reading():
    rng = np.random.default_rng(10)
    ref = rng.normal(2.0, 1.0, 2000)
    worse = rng.normal(-1.0, 1.0, 2000)
    s_ref = stats.summarize(ref)
    s_worse = stats.summarize(worse, ref)
    assert s_ref["delta_llr"] == 0.0 and s_ref["auroc_vs_reference"] == 0.5
    assert s_worse["delta_llr"] == pytest.approx(worse.mean() - ref.mean())
    assert s_worse["auroc_vs_reference"] < 0.1
    assert s_worse["ci95"][0] < s_worse["mean_llr"] < s_worse["ci95"][1]
    assert "closer to the observations" in s_ref["reading"]
    assert "closer to smooth Sérsic" in s_worse["reading"]


def test_empty_sample_is_a_clear_error():
    with pytest.raises(MorphllrError, match="no finite values"):
        stats.summarize([np.nan, np.inf])


def test_mass_panels_are_disjoint_and_skip_unknown():
    m = np.array([9.4, 9.5, 9.99, 10.0, 10.49, 10.5, 12.0, np.nan])
    masks = stats.mass_panel_masks(m)
    assert list(masks) == ["9.5-10", "10-10.5", ">10.5"]
    stacked = np.stack(list(masks.values()))
    assert stacked.sum(axis=0).tolist() == [0, 1, 1, 1, 1, 1, 1, 0]


def test_matched_delta_removes_a_difference_in_population_mix():
    """Two sets with the same LLR at fixed mass but different mass mixes: raw ΔLLR is large,
    matched ΔLLR is ~0.  A genuine offset at fixed mass survives matching."""
    rng = np.random.default_rng(11)

    def population(n, frac_massive, offset):
        massive = rng.random(n) < frac_massive
        mass = np.where(massive, 10.8, 9.7) + rng.normal(0, 0.05, n)
        llr = np.where(massive, 5.0, 0.0) + offset + rng.normal(0, 0.5, n)
        return mass, llr

    m_ref, l_ref = population(3000, 0.2, 0.0)
    m_mix, l_mix = population(3000, 0.8, 0.0)
    m_off, l_off = population(3000, 0.2, -1.0)
    edges = stats.grid_edges({"mass": m_ref}, fixed={"mass": [10.0, 10.5]})
    cells = {name: stats.cell_index({"mass": m}, edges) for name, m in
             [("ref", m_ref), ("mix", m_mix), ("off", m_off)]}
    res = stats.matched_delta({"ref": l_ref, "mix": l_mix, "off": l_off}, cells, "ref", n_draws=100, rng=0)
    assert l_mix.mean() - l_ref.mean() > 2.0  # the raw comparison is fooled by the mass mix
    assert abs(res.delta["mix"]) < 4 * res.error["mix"] + 0.05
    assert res.delta["off"] == pytest.approx(-1.0, abs=0.15)
    assert res.delta["ref"] == 0.0
    assert res.n_cells == 2 and res.n_per_set > 0


def test_cell_index_marks_missing_properties():
    edges = stats.grid_edges({"a": np.arange(10.0), "b": np.arange(10.0)}, n_bins=2)
    cells = stats.cell_index({"a": np.array([0.0, 9.0, np.nan]), "b": np.array([9.0, 0.0, 1.0])}, edges)
    assert cells[2] == -1
    assert cells[0] != cells[1] and min(cells[:2]) >= 0


def test_large_sample_bootstrap_matches_resampling():
    """The Gaussian shortcut above LARGE_SAMPLE gives the same spread as true resampling."""
    rng = np.random.default_rng(12)
    x = rng.exponential(2.0, stats.LARGE_SAMPLE + 1)
    fast = stats.bootstrap_means(x, n_boot=2000, rng=1)
    slow = stats.bootstrap_means(x[: stats.LARGE_SAMPLE], n_boot=300, rng=1)  # exact resampling path
    assert fast.mean() == pytest.approx(x.mean(), abs=0.1 * x.std() / np.sqrt(x.size))
    assert fast.std() == pytest.approx(slow.std(), rel=0.15)


# --------------------------------------------------------------------------- groups and model variance
def test_cluster_bootstrap_is_the_bootstrap_of_group_means_for_equal_groups():
    rng = np.random.default_rng(11)
    group_means = rng.normal(3.0, 2.0, 50)
    values = np.concatenate([group_means] * 4)  # every object imaged 4 times, identically
    groups = np.tile(np.arange(50), 4)
    np.testing.assert_allclose(stats.bootstrap_means(values, 300, rng=5, groups=groups),
                               stats.bootstrap_means(group_means, 300, rng=5), rtol=1e-12)
    wide = stats.bootstrap_mean_ci(values, n_boot=2000, rng=1, groups=groups)
    narrow = stats.bootstrap_mean_ci(values, n_boot=2000, rng=1)
    assert (wide[1] - wide[0]) == pytest.approx(2 * (narrow[1] - narrow[0]), rel=0.15)  # sqrt(4)
    # unequal groups: the ratio estimator sum / count over drawn groups; labels may be text
    labels = np.array(["a", "a", "b", "c", "c", "c"])
    x = np.array([1.0, 3.0, 10.0, 0.0, 0.0, 6.0])
    sums, counts = stats.group_sums(x, labels)
    np.testing.assert_array_equal(sums, [4.0, 10.0, 6.0]) and np.testing.assert_array_equal(counts, [2, 1, 3])
    assert stats.n_groups(x, labels) == 3
    draws = stats.bootstrap_means(x, 500, rng=2, groups=labels)
    assert draws.min() >= 0.0 and draws.max() <= 10.0 and np.isclose(np.median(draws), x.mean(), atol=2.5)
    delta, err = stats.delta_mean(values, values + 1.0, 500, rng=0, groups=groups, reference_groups=groups)
    assert delta == pytest.approx(-1.0) and err > 0
    with pytest.raises(MorphllrError, match="group labels"):
        stats.bootstrap_means(x, 10, groups=labels[:3])


def test_group_aware_ratio_interval_and_share_rule():
    rng = np.random.default_rng(12)
    sky = np.repeat(rng.normal(0.0, 1.0, 60), 3)
    pixels = np.full(180, 100.0)
    groups = np.repeat(np.arange(60), 3)
    lo_g, hi_g = stats.bootstrap_ratio_ci(sky, pixels, n_boot=2000, rng=0, groups=groups)
    lo, hi = stats.bootstrap_ratio_ci(sky, pixels, n_boot=2000, rng=0)
    assert (hi_g - lo_g) == pytest.approx(np.sqrt(3) * (hi - lo), rel=0.2)
    # triplicated images: the mean is 2 per-image standard errors away but only ~1.2 cluster ones
    total = np.repeat(rng.normal(0.0, 1.0, 60), 3)
    total = total - total.mean() + 2.0 * total.std(ddof=1) / np.sqrt(180) * 1.05
    part = 0.5 * total
    assert np.isfinite(stats.share_of_mean(part, total))
    assert np.isnan(stats.share_of_mean(part, total, groups=groups))


def test_member_resampling_keeps_one_galaxy_draw_for_all_members(monkeypatch):
    rng = np.random.default_rng(13)
    base = rng.normal(0, 5, 400)
    sums = np.stack([base, base + 2.0, base * 1.5])  # members: shifted / scaled copies
    draws = stats.resample_member_means(sums, np.ones(400), 1000, rng=1)
    assert draws.shape == (1000, 3)
    np.testing.assert_allclose(draws[:, 1] - draws[:, 0], 2.0, atol=1e-12)  # same galaxies in every member
    np.testing.assert_allclose(draws[:, 2], 1.5 * draws[:, 0], rtol=1e-10)
    monkeypatch.setattr(stats, "LARGE_SAMPLE", 100)  # the Gaussian limit: same covariance
    gauss = stats.resample_member_means(sums, np.ones(400), 4000, rng=1)
    np.testing.assert_allclose(np.cov(gauss.T), np.cov(draws.T), rtol=0.15)
    np.testing.assert_allclose(gauss[:, 1] - gauss[:, 0], 2.0, atol=1e-9)


def test_hierarchical_interval_holds_the_galaxy_interval_and_member_spread():
    from scipy import stats as sps

    rng = np.random.default_rng(14)
    galaxy = rng.normal(0, 0.1, (2000, 1))
    obs = galaxy + np.array([[-1.0, 0.0, 1.0]])  # members far apart compared with galaxy noise
    arch = np.zeros((2000, 3))
    iv = stats.hierarchical_intervals(obs, arch, 0.95)
    assert iv["total"][0] <= iv["galaxy"][0] and iv["galaxy"][1] <= iv["total"][1]
    # var of the ensemble mean: galaxies 0.01 + member variance 1 (ddof=1) / 3; t with 2 degrees of freedom
    # (the arch side adds nothing), Welch-Satterthwaite: (0.01 + 1/3)^2 / ((1/3)^2 / 2)
    dof = (0.01 + 1 / 3) ** 2 / ((1 / 3) ** 2 / 2)
    expected = 2 * sps.t.ppf(0.975, dof) * np.sqrt(np.var(galaxy, ddof=1) + 1 / 3)
    assert iv["total"][1] - iv["total"][0] == pytest.approx(expected, rel=0.02)
    same = stats.hierarchical_intervals(np.repeat(galaxy, 3, axis=1), arch, 0.95)
    assert same["total"][1] - same["total"][0] == pytest.approx(2 * 1.96 * 0.1, rel=0.1)  # identical members add nothing
    assert stats.member_variance([1.0, 2.0, 3.0], [5.0]) == (1.0, 0.0)


def test_total_interval_covers_the_truth_with_three_members_per_side():
    """Seeded coverage simulation: model variance larger than galaxy variance, K = 3 per side."""
    rng = np.random.default_rng(21)
    truth, hits, trials = 0.0, 0, 400
    for _ in range(trials):
        sample_galaxy = rng.normal(0, 0.3)  # this sample's galaxy error (its bootstrap sd is 0.3)
        galaxy = sample_galaxy + rng.normal(0, 0.3, (500, 1))  # bootstrap replicates centred on the sample
        obs = galaxy + rng.normal(0, 1.0, (1, 3))  # three p_obs members, model sd 1
        arch = rng.normal(0, 1.0, (1, 3)) + np.zeros((500, 1))  # three p_arch members, model sd 1
        lo, hi = stats.hierarchical_intervals(obs, arch, 0.95)["total"]
        hits += lo <= truth <= hi
    assert hits / trials >= 0.93  # a percentile bootstrap over the members covered ~0.8 here
    assert stats.hull((0.0, 1.0), (-1.0, 0.5), (float("nan"), 2.0)) == [-1.0, 2.0]
    assert stats.sign_agreement([-1.0, -2.0, 3.0, -0.5], -1.0) == 0.75
