"""compare with ensembles of models (several training seeds) and with groups of images of one object.

The models are the analytic Gaussians of tests/comparison/test_compare.py (p(x) = N(mean image, SIGMA^2) per
pixel) or "tag" models whose log p of every image is set by hand, so every per-pair LLR, ΔLLR,
spread and agreement has an exact answer.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from morphllr.comparison import stats
from morphllr.comparison.run import compare
from morphllr.errors import MorphllrError
from test_compare import (H, PREP, SIGMA, W, _blob, _catalog, _Config, _GaussianNet, _images, _Model, _texture,
                          _tiny_pixelcnn_dir, _write_set)

T2 = float((_texture().astype(np.float64) ** 2).sum())  # |t|^2


class _Counting(torch.nn.Module):
    """Wraps a net; counts forward passes and optionally adds a constant to every image's log p."""

    def __init__(self, net: torch.nn.Module, offset: float = 0.0):
        super().__init__()
        self.inner = net
        self.offset = offset
        self.calls = 0

    def log_prob_pixels(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.inner.log_prob_pixels(x) + self.offset / (H * W)


def _gauss(amplitude: float, sigma: float = SIGMA, offset: float = 0.0, prep: dict | None = PREP) -> _Model:
    """Model with mean image blob + amplitude * texture (log p shifted by ``offset`` nats per image)."""
    return _Model(_Counting(_GaussianNet(_blob() + amplitude * _texture(), sigma), offset), _Config(),
                  {} if prep is None else prep, {})


def _logp(model: _Model, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.net.inner.log_prob_pixels(torch.from_numpy(images.astype(np.float64))).sum(dim=(1, 2)).numpy() \
            + model.net.offset


def _paired_sets(folder: Path, n: int, amplitudes: dict[str, float], seed: int = 0) -> dict[str, Path]:
    """Sets of the same galaxies (same ids, same noise), differing only in texture amplitude."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(0, SIGMA, (n, H, W)).astype(np.float32)
    cat = {"id": np.array([f"g{i:05d}" for i in range(n)])}
    return {name: _write_set(folder / f"{name}.h5", (_blob() + a * _texture() + noise)[:, None], cat)
            for name, a in amplitudes.items()}


# --------------------------------------------------------------------------- K + K passes = K x K pairs
def test_every_pair_from_k_plus_k_forward_passes_equals_brute_force(tmp_path):
    rng = np.random.default_rng(1)
    sets = {"ref": _images(40, 1.0, rng), "a": _images(24, 0.6, rng), "b": _images(24, 0.2, rng)}
    obs = [_gauss(b) for b in (1.0, 1.2, 0.7)]
    arch = [_gauss(c, sigma=s) for c, s in ((0.0, SIGMA), (0.1, 1.1 * SIGMA))]
    out = tmp_path / "rep"
    res = compare(obs, arch, reference=("ref", sets["ref"]), sets={"a": sets["a"], "b": sets["b"]}, out=out,
                  batch_size=16, gallery_size=0, n_boot=50, report=False)
    n_batches = sum(-(-len(x) // 16) for x in sets.values())
    assert [m.net.calls for m in obs + arch] == [n_batches] * 5  # one pass per member and batch, never K^2
    rows = list(csv.DictReader(open(out / "scores.csv")))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_models"] == {"obs": 3, "arch": 2} and summary["model_pairs"] == 6
    names = summary["model_names"]
    for name, images in sets.items():
        lo = np.stack([_logp(m, images) for m in obs])  # brute force, float64, member by member
        la = np.stack([_logp(m, images) for m in arch])
        brute = np.array([[np.mean(lo[i] - la[j]) for j in range(2)] for i in range(3)])
        np.testing.assert_allclose(summary["sets"][name]["mean_llr_by_pair"], brute, rtol=1e-5, atol=1e-3)
        llr = res.sets[name].llr
        np.testing.assert_allclose(llr, lo.mean(0) - la.mean(0), rtol=1e-5, atol=1e-3)
        assert summary["sets"][name]["mean_llr"] == pytest.approx(brute.mean(), rel=1e-5, abs=1e-3)
        mine = [r for r in rows if r["set"] == name]
        for i, member in enumerate(names["obs"]):
            np.testing.assert_allclose([float(r[f"logp_obs_{member}"]) for r in mine], lo[i], rtol=1e-5, atol=1e-3)
        for j, member in enumerate(names["arch"]):
            np.testing.assert_allclose([float(r[f"logp_arch_{member}"]) for r in mine], la[j], rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose([float(r["logp_obs"]) for r in mine], lo.mean(0), rtol=1e-5, atol=1e-3)


# --------------------------------------------------------------------------- model_std
def test_model_std_recovers_a_constructed_spread_of_paired_delta_llr(tmp_path):
    """Paired sets x = blob + a t + e and x_ref = blob + t + e (same e); members with means blob + b_i t
    (obs) and blob + c_j t (arch).  Then exactly, galaxy by galaxy, LLR_ij(x) - LLR_ij(x_ref) =
    (a - 1)(b_i - c_j)|t|^2 / sigma^2: the noise cancels and only the members' b_i - c_j remain."""
    a = 0.5
    paths = _paired_sets(tmp_path, 60, {"ref": 1.0, "sim": a})
    bs, cs = [1.0, 1.1, 0.8], [0.0, 0.05, 0.2]
    obs, arch = [_gauss(b) for b in bs], [_gauss(c) for c in cs]
    res = compare(obs, arch, reference=("ref", paths["ref"]), sets={"sim": paths["sim"]}, report=False,
                  n_boot=300, gallery_size=0)
    e = res.summary["sets"]["sim"]
    exact = np.array([[(a - 1) * (b - c) * T2 / SIGMA**2 for c in cs] for b in bs])
    assert e["delta_llr_pairing"] == "paired" and e["n_paired"] == 60
    np.testing.assert_allclose(e["delta_llr_by_pair"], exact, rtol=1e-5, atol=1e-4)
    # one retrained pair moves by var_obs + var_arch (the K^2 pair values share members)
    unbiased = abs(a - 1) * T2 / SIGMA**2 * np.sqrt(np.var(bs, ddof=1) + np.var(cs, ddof=1))
    assert e["model_std"] == pytest.approx(unbiased, rel=1e-5)
    assert e["model_std"] > np.std(exact, ddof=1)  # the plain std over pairs would understate it
    assert e["delta_llr_paired"] == pytest.approx(exact.mean(), rel=1e-5)
    assert e["delta_llr_paired_err"] < 1e-3  # no galaxy noise left in the paired difference
    assert e["sign_agreement"] == 1.0 and e["stable"] is True
    # the spread of the ΔLLR total interval comes from the models alone here
    lo, hi = e["delta_llr_ci95_total"]
    assert lo < exact.mean() < hi and hi - lo > 2 * e["model_std"] / 3
    assert res.summary["sets"]["ref"]["model_std"] is None and res.summary["sets"]["ref"]["stable"] is None


def test_constant_offsets_move_the_llr_level_but_not_delta_llr_nor_the_ranking():
    """Members whose log p of every image is shifted by a known constant: mean_llr_by_pair moves by exactly
    d_i - f_j, the ΔLLR against the reference does not (model_std = 0), the ranking agreement is 1."""
    rng = np.random.default_rng(2)
    ref, sim = _images(50, 1.0, rng), _images(50, 0.3, rng)  # different galaxies: unpaired
    d, f = [0.0, 25.0, -40.0], [0.0, 10.0, 3.0]
    obs = [_gauss(1.0, offset=x, prep=None) for x in d]
    arch = [_gauss(0.0, offset=x, prep=None) for x in f]
    res = compare(obs, arch, reference=("ref", ref), sets={"sim": sim}, report=False, n_boot=300, gallery_size=0)
    s = res.summary
    for name in ("ref", "sim"):
        table = np.array(s["sets"][name]["mean_llr_by_pair"])
        np.testing.assert_allclose(table - table[0, 0], np.subtract.outer(d, f) - (d[0] - f[0]), atol=1e-3)
    e = s["sets"]["sim"]
    assert e["delta_llr_pairing"] == "unpaired"
    assert e["model_std"] == pytest.approx(0.0, abs=1e-3)
    np.testing.assert_allclose(e["delta_llr_by_pair"], e["delta_llr"], atol=1e-3)
    assert s["ranking_agreement"] == 1.0
    # the level is uncertain by the offsets (ci95_total wide), the difference is not (total ~ galaxy-only)
    ci, total = s["sets"]["sim"]["ci95"], s["sets"]["sim"]["ci95_total"]
    assert total[1] - total[0] > 5 * (ci[1] - ci[0])
    dg, dt = e["delta_llr_ci95"], e["delta_llr_ci95_total"]
    assert dt[1] - dt[0] == pytest.approx(dg[1] - dg[0], rel=0.3)


def test_unpaired_delta_by_pair_is_the_difference_of_means_under_each_pair():
    rng = np.random.default_rng(3)
    ref, sim = _images(40, 1.0, rng), _images(30, 0.5, rng)
    obs, arch = [_gauss(b, prep=None) for b in (1.0, 0.9)], [_gauss(c, prep=None) for c in (0.0, 0.3)]
    res = compare(obs, arch, reference=("ref", ref), sets={"sim": sim}, report=False, n_boot=100, gallery_size=0)
    e = res.summary["sets"]["sim"]
    brute = np.array([[np.mean(_logp(o, sim) - _logp(a, sim)) - np.mean(_logp(o, ref) - _logp(a, ref))
                       for a in arch] for o in obs])
    np.testing.assert_allclose(e["delta_llr_by_pair"], brute, rtol=1e-5, atol=1e-3)
    brute = np.asarray(brute)  # additive: brute[i, j] = u_i - v_j
    unbiased = np.sqrt(np.var(brute[:, 0], ddof=1) + np.var(brute[0, :], ddof=1))
    assert e["model_std"] == pytest.approx(unbiased, rel=1e-4, abs=1e-4)
    assert e["ci95_total"] is None and e["delta_llr_ci95_total"] is None  # 2 models per side: too few
    assert any("at least 3 models per side" in n for n in res.notes)


# --------------------------------------------------------------------------- ranking agreement
class _TagNet(torch.nn.Module):
    """log p of an image = table[tag] + x[1, 1], with the tag in pixel (0, 0): set by hand per set."""

    def __init__(self, table: list[float]):
        super().__init__()
        self.table = torch.tensor(table, dtype=torch.float64)

    def log_prob_pixels(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(x.shape[0], x.shape[2], x.shape[3], dtype=x.dtype)
        out[:, 0, 0] = self.table[x[:, 0, 0, 0].round().long()].to(x.dtype) + x[:, 0, 1, 1]
        return out


def _tag_sets(n: int = 20) -> dict[str, np.ndarray]:
    sets = {}
    for tag, name in enumerate(("ref", "s1", "s2", "s3")):
        x = np.zeros((n, 1, H, W), np.float32)
        x[:, 0, 0, 0] = tag
        x[:, 0, 1, 1] = np.linspace(-0.1, 0.1, n)
        sets[name] = x
    return sets


def _tag_model(table: list[float]) -> _Model:
    return _Model(_TagNet(table), _Config(), {}, {})


def test_ranking_agreement_is_one_for_identical_members_and_drops_by_the_swapped_pair():
    sets = _tag_sets()
    a_table, b_table = [10.0, 8.0, 6.0, 4.0], [10.0, 8.0, 4.0, 6.0]  # member B swaps s2 and s3
    arch = _tag_model([0.0] * 4)
    same = compare([_tag_model(a_table) for _ in range(3)], arch, reference=("ref", sets["ref"]),
                   sets={k: v for k, v in sets.items() if k != "ref"}, report=False, n_boot=50, gallery_size=0)
    assert same.summary["ranking_agreement"] == 1.0
    assert all(p["agreement"] == 1.0 for p in same.summary["ranking_by_pair"])
    assert all(same.summary["sets"][n]["model_std"] == 0.0 for n in ("s1", "s2", "s3"))
    res = compare([_tag_model(a_table), _tag_model(a_table), _tag_model(b_table)], arch,
                  reference=("ref", sets["ref"]), sets={k: v for k, v in sets.items() if k != "ref"},
                  report=False, n_boot=50, gallery_size=0)
    s = res.summary
    # ensemble: s2 = (6 + 6 + 4) / 3 > s3 = (4 + 4 + 6) / 3, so the ensemble order is ref > s1 > s2 > s3;
    # members A agree on all 6 pairs of sets, member B on 5 of 6: (1 + 1 + 5/6) / 3 = 17/18
    assert s["ranking"] == ["ref", "s1", "s2", "s3"]
    assert s["ranking_agreement"] == pytest.approx(17 / 18, abs=1e-12)
    by_pair = {(p["obs"], p["arch"]): p for p in s["ranking_by_pair"]}
    b_pair = by_pair[(s["model_names"]["obs"][2], s["model_names"]["arch"][0])]
    assert b_pair["ranking"] == ["ref", "s1", "s3", "s2"] and b_pair["agreement"] == pytest.approx(5 / 6)
    # the swapped sets: ΔLLR -4, -4, -6 (s2) and -6, -6, -4 (s3): same sign, exact spread
    assert s["sets"]["s2"]["model_std"] == pytest.approx(np.std([-4, -4, -6], ddof=1), abs=1e-6)
    assert s["sets"]["s2"]["sign_agreement"] == 1.0
    assert s["n_models"] == {"obs": 3, "arch": 1} and s["sets"]["s2"]["ci95_total"] is None


def test_ranking_agreement_is_the_kendall_share():
    from scipy.stats import kendalltau

    rng = np.random.default_rng(4)
    means = rng.normal(size=(7, 6))
    order = np.argsort(-means.mean(axis=0))
    agreement, per_pair = stats.ranking_agreement(means, order)
    ensemble_rank = np.empty(6)
    ensemble_rank[order] = np.arange(6)
    for p in range(7):  # no ties: share of concordant pairs = (1 + tau) / 2
        tau = kendalltau(-ensemble_rank, means[p]).statistic
        assert per_pair[p] == pytest.approx((1 + tau) / 2, abs=1e-12)
    assert agreement == pytest.approx(per_pair.mean())


def test_sign_flip_in_one_pair_marks_the_set_unstable():
    sets = _tag_sets()
    arch = _tag_model([0.0] * 4)
    # s1 is 0.5 above the reference under two members and 0.5 below under the third (ensemble: +1/6)
    obs = [_tag_model([10.0, 10.5, 6.0, 4.0]), _tag_model([10.0, 10.5, 6.0, 4.0]), _tag_model([10.0, 9.5, 6.0, 4.0])]
    res = compare(obs, arch, reference=("ref", sets["ref"]), sets={k: v for k, v in sets.items() if k != "ref"},
                  report=False, n_boot=50, gallery_size=0)
    e = res.summary["sets"]["s1"]
    assert e["sign_agreement"] == pytest.approx(2 / 3) and e["stable"] is False
    assert res.summary["sets"]["s3"]["stable"] is True


# --------------------------------------------------------------------------- ci95_total
def test_ci95_total_holds_ci95_for_every_set_and_adds_the_model_spread(tmp_path):
    rng = np.random.default_rng(5)
    sets = {"ref": _images(80, 1.0, rng), "a": _images(60, 0.7, rng), "b": _images(60, 0.3, rng)}
    offsets = [-3.0, 0.0, 4.0]
    obs = [_gauss(b, offset=o, prep=None) for b, o in zip((1.0, 1.1, 0.9), offsets)]
    arch = [_gauss(c, prep=None) for c in (0.0, 0.05, 0.1)]
    out = tmp_path / "rep"
    res = compare(obs, arch, reference=("ref", sets["ref"]), sets={"a": sets["a"], "b": sets["b"]}, out=out,
                  n_boot=400, gallery_size=2)
    for name, e in res.summary["sets"].items():
        lo, hi = e["ci95"]
        tlo, thi = e["ci95_total"]
        assert tlo <= lo and hi <= thi, name
        if name != "ref":
            dlo, dhi = e["delta_llr_ci95"]
            assert e["delta_llr_ci95_total"][0] <= dlo <= dhi <= e["delta_llr_ci95_total"][1]
    # the members' spread (offsets and amplitudes) widens it as var_gal + var_obs/3 + var_arch/3 with Student's t
    from scipy import stats as sps

    e = res.summary["sets"]["a"]
    table = np.asarray(e["mean_llr_by_pair"])  # additive: table[i, j] = u_i - v_j
    var_o, var_a = np.var(table[:, 0], ddof=1), np.var(table[0, :], ddof=1)
    galaxy_sd = (e["ci95"][1] - e["ci95"][0]) / (2 * 1.96)
    total_var = galaxy_sd**2 + var_o / 3 + var_a / 3
    dof = total_var**2 / ((var_o / 3) ** 2 / 2 + (var_a / 3) ** 2 / 2)
    predicted = 2 * sps.t.ppf(0.975, dof) * np.sqrt(total_var)
    assert e["ci95_total"][1] - e["ci95_total"][0] == pytest.approx(predicted, rel=0.1)
    # ... and identical members add nothing: the total interval is then the galaxy one (Monte-Carlo noise)
    import copy

    same = compare([copy.deepcopy(obs[1]) for _ in range(3)], [copy.deepcopy(arch[0]) for _ in range(3)],
                   reference=("ref", sets["ref"]), sets={"a": sets["a"]},
                   report=False, n_boot=400, gallery_size=0)
    ci, total = same.summary["sets"]["a"]["ci95"], same.summary["sets"]["a"]["ci95_total"]
    assert total[1] - total[0] == pytest.approx(ci[1] - ci[0], rel=0.2)
    page = (out / "index.html").read_text()
    assert "Stability under retraining" in page and "id='stability-table'" in page and "Ranking agreement" in page
    assert "survives retraining" in page and (out / "figures" / "pair_delta_llr.png").stat().st_size > 1000
    assert page.index("id='ranking'") < page.index("id='stability'") < page.index("id='sky-split'")


# --------------------------------------------------------------------------- groups of images of one object
def _grouped_set(path: Path, n_galaxies: int, copies: int, amplitude: float, rng, with_col: bool = True) -> Path:
    one = _images(n_galaxies, amplitude, rng)
    images = np.concatenate([one] * copies)  # galaxy g appears as rows g, g + n, g + 2n (like mock --repeat)
    cat = {"id": np.array([f"x{i:05d}" for i in range(len(images))])}
    if with_col:
        cat["galaxy"] = np.array([f"gal{g:03d}" for _ in range(copies) for g in range(n_galaxies)])
        cat["log_mstar"] = np.tile(rng.uniform(9.5, 11.2, n_galaxies), copies)
    return _write_set(path, images, cat)


def test_group_col_bootstraps_groups_not_images(tmp_path):
    rng = np.random.default_rng(6)
    ref = _grouped_set(tmp_path / "ref.h5", 40, 3, 1.0, rng)
    sim = _grouped_set(tmp_path / "sim.h5", 30, 3, 0.5, rng)
    plain = _grouped_set(tmp_path / "plain.h5", 30, 1, 0.5, rng, with_col=False)
    obs, arch = _gauss(1.0), _gauss(0.0)
    n_boot, seed = 500, 3
    grouped = compare(obs, arch, reference=("ref", ref), sets={"sim": sim, "plain": plain}, report=False,
                      n_boot=n_boot, seed=seed, gallery_size=0, group_col="galaxy")
    naive = compare(obs, arch, reference=("ref", ref), sets={"sim": sim}, report=False, n_boot=n_boot, seed=seed,
                    gallery_size=0)
    s = grouped.summary
    assert s["group_col"] == "galaxy" and naive.summary["group_col"] is None
    assert s["sets"]["ref"]["n_groups"] == 40 and s["sets"]["sim"]["n_groups"] == 30
    assert s["sets"]["plain"]["n_groups"] == s["sets"]["plain"]["n"] == 30
    assert any("plain: no catalogue column 'galaxy'" in n for n in grouped.notes)
    for name in ("ref", "sim"):
        llr = grouped.sets[name].llr
        k = len(llr) // 3
        np.testing.assert_allclose(llr[:k], llr[k:2 * k], rtol=1e-6)  # the copies score alike
        group_means = llr.reshape(3, k).mean(axis=0)
        want = stats.bootstrap_mean_ci(group_means, n_boot=n_boot, rng=seed)  # bootstrap of the group means
        np.testing.assert_allclose(s["sets"][name]["ci95"], want, rtol=1e-9, atol=1e-9)
        width = np.diff(s["sets"][name]["ci95"])[0]
        naive_width = np.diff(naive.summary["sets"][name]["ci95"])[0]
        assert width == pytest.approx(np.sqrt(3) * naive_width, rel=0.25) and width > 1.3 * naive_width
    assert s["sets"]["sim"]["delta_llr_err"] > 1.3 * naive.summary["sets"]["sim"]["delta_llr_err"]
    # mass panels resample groups too (a galaxy's copies share its mass: one unit per galaxy in a panel)
    for label, e in s["mass_panels"]["sim"].items():
        assert e["n"] == 3 * e["n_groups"], label


def test_group_col_with_an_ensemble_pairs_and_resamples_galaxies(tmp_path):
    rng = np.random.default_rng(7)
    noise = rng.normal(0, SIGMA, (20, H, W)).astype(np.float32)
    galaxy = np.array([f"gal{g:03d}" for _ in range(2) for g in range(20)])
    paths = {}
    for name, a in (("ref", 1.0), ("sim", 0.6)):
        images = np.concatenate([(_blob() + a * _texture() + noise)[:, None]] * 2)
        cat = {"id": np.array([f"{name}{i}" for i in range(40)]), "galaxy": galaxy}
        paths[name] = _write_set(tmp_path / f"{name}.h5", images, cat)
    bs, cs = [1.0, 1.2, 0.9], [0.0, 0.1, 0.05]
    res = compare([_gauss(b) for b in bs], [_gauss(c) for c in cs], reference=("ref", paths["ref"]),
                  sets={"sim": paths["sim"]}, report=False, n_boot=200, gallery_size=0, group_col="galaxy")
    e = res.summary["sets"]["sim"]
    assert e["delta_llr_pairing"] == "paired" and e["n_paired"] == 20 and e["n_groups"] == 20
    exact = np.array([[(0.6 - 1) * (b - c) * T2 / SIGMA**2 for c in cs] for b in bs])
    np.testing.assert_allclose(e["delta_llr_by_pair"], exact, rtol=1e-5, atol=1e-4)
    for key in ("ci95", "ci95_total"):
        assert np.isfinite(e[key]).all()
    assert e["ci95_total"][0] <= e["ci95"][0] and e["ci95"][1] <= e["ci95_total"][1]


# --------------------------------------------------------------------------- one model pair
def test_single_pair_keeps_todays_output_with_nulls_and_a_note(tmp_path):
    from rich.console import Console

    from morphllr.report.terminal import print_ranking

    rng = np.random.default_rng(8)
    ref, sim = _images(30, 1.0, rng), _images(30, 0.4, rng)
    out = tmp_path / "rep"
    res = compare(_gauss(1.0, prep=None), _gauss(0.0, prep=None), reference=("ref", ref), sets={"sim": sim},
                  out=out, n_boot=100, gallery_size=2)
    s = json.loads((out / "summary.json").read_text())
    assert s["n_models"] == {"obs": 1, "arch": 1} and s["model_pairs"] == 1
    assert s["ranking_agreement"] is None and s["ranking_by_pair"] is None
    for name in ("ref", "sim"):
        e = s["sets"][name]
        assert e["model_std"] is None and e["ci95_total"] is None and e["stable"] is None
        assert e["mean_llr_by_pair"] == [[pytest.approx(e["mean_llr"])]]
    assert s["sets"]["sim"]["delta_llr_ci95_total"] is None
    assert s["sets"]["sim"]["delta_llr_by_pair"] == [[pytest.approx(s["sets"]["sim"]["delta_llr"])]]
    note = next(n for n in s["notes"] if "model variance is not measured" in n)
    assert "--seeds" in note
    page = (out / "index.html").read_text()
    assert "Model variance is not measured" in page and "survives retraining</th>" not in page
    assert "pair_delta_llr.png" not in page
    rows = list(csv.DictReader(open(out / "scores.csv")))
    assert not any(c.startswith(("logp_obs_", "logp_arch_")) for c in rows[0])
    console = Console(record=True, width=80)
    print_ranking(res.summary, console)
    text = console.export_text()
    assert "model σ" not in text and "stability under retraining: not measured" in text


def test_ensemble_members_must_share_preprocessing():
    rng = np.random.default_rng(9)
    ref = _images(10, 1.0, rng)
    with pytest.raises(MorphllrError, match="--obs: ensemble members .* differently prepared .*zoom"):
        compare([_gauss(1.0), _gauss(1.0, prep=dict(PREP, zoom=0.25))], _gauss(0.0), reference=("ref", ref),
                report=False)
    with pytest.raises(MorphllrError, match="--arch: expected"):
        compare(_gauss(1.0), [object()], reference=("ref", ref), report=False)


# --------------------------------------------------------------------------- the command line
def _tiny_sets(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(10)
    return (_write_set(tmp_path / "ref.h5", _images(16, 1.0, rng), _catalog(16, rng)),
            _write_set(tmp_path / "sim.h5", _images(12, 0.0, rng), _catalog(12, rng)))


def test_cli_pools_repeated_model_folders_into_ensembles(tmp_path, capsys):
    from morphllr.cli import main

    ref, sim = _tiny_sets(tmp_path)
    obs = [_tiny_pixelcnn_dir(tmp_path / f"obs_s{k}", k) for k in range(3)]
    arch = [_tiny_pixelcnn_dir(tmp_path / f"arch_s{k}", 10 + k) for k in range(3)]
    out = tmp_path / "report"
    argv = ["compare", *[a for d in obs for a in ("--obs", str(d))], *[a for d in arch for a in ("--arch", str(d))],
            "--reference", f"SDSS={ref}", f"TNG={sim}", "--out", str(out), "--bootstrap", "50", "--gallery", "0",
            "--group-col", "galaxy"]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    captured = capsys.readouterr()
    assert "model σ" in captured.out and "ranking agreement" in captured.out
    assert "no catalogue column 'galaxy'" in captured.err  # these sets have no groups: per image, with a note
    table = {r["set"]: r for r in csv.DictReader(open(out / "summary.csv"))}
    assert float(table["TNG"]["ci95_total_lo"]) <= float(table["TNG"]["ci95_lo"]) and table["TNG"]["stable"] in (
        "True", "False")
    s = json.loads((out / "summary.json").read_text())
    assert s["group_col"] == "galaxy" and s["sets"]["TNG"]["n_groups"] == 12
    assert s["n_models"] == {"obs": 3, "arch": 3} and s["model_pairs"] == 9
    assert s["model_names"]["obs"] == ["obs_s0", "obs_s1", "obs_s2"]
    assert 0.0 <= s["ranking_agreement"] <= 1.0
    header = (out / "scores.csv").read_text().splitlines()[0].split(",")
    assert {"logp_obs_obs_s0", "logp_obs_obs_s2", "logp_arch_arch_s1"} <= set(header)
    assert s["sets"]["TNG"]["ci95_total"][0] <= s["sets"]["TNG"]["ci95"][0]


def test_cli_reads_ensemble_folders(tmp_path, capsys):
    """An ensemble folder from the model side (``morphllr.model.ensemble.load_ensemble``) and a plain model folder."""
    from morphllr.model import ensemble as modelensemble

    if not hasattr(modelensemble, "load_ensemble") or not hasattr(modelensemble, "Ensemble"):
        pytest.skip("morphllr.model.ensemble.load_ensemble is not there yet")
    from morphllr.cli import main

    if not hasattr(modelensemble, "write_ensemble_index"):
        pytest.skip("no morphllr.model.ensemble.write_ensemble_index to write an ensemble folder with")
    ref, sim = _tiny_sets(tmp_path)
    ens = tmp_path / "obs_ens"  # the layout of `morphllr train --seeds 0,1,2`: seedK/ folders + ensemble.json
    for k in range(3):
        _tiny_pixelcnn_dir(ens / f"seed{k}", k)
    modelensemble.write_ensemble_index(ens, [(f"seed{k}", k, f"seed{k}") for k in range(3)])
    arch = _tiny_pixelcnn_dir(tmp_path / "arch", 7)
    loaded = modelensemble.load_ensemble(ens)
    assert len(loaded) == 3 and len(modelensemble.load_ensemble(arch)) == 1
    out = tmp_path / "report"
    with pytest.raises(SystemExit) as exc:
        main(["compare", "--obs", str(ens), "--arch", str(arch), "--reference", f"SDSS={ref}", f"TNG={sim}",
              "--out", str(out), "--bootstrap", "50", "--gallery", "0"])
    assert exc.value.code == 0, capsys.readouterr().err
    s = json.loads((out / "summary.json").read_text())
    assert s["n_models"] == {"obs": 3, "arch": 1} and s["model_pairs"] == 3
    assert s["model_names"]["obs"] == ["seed0", "seed1", "seed2"] == list(loaded.names)
    header = (out / "scores.csv").read_text().splitlines()[0].split(",")
    assert {"logp_obs_seed0", "logp_obs_seed2"} <= set(header) and not any(c.startswith("logp_arch_") for c in header)
    # the same folder through the library, and the in-memory Ensemble of the model side
    res = compare(modelensemble.Ensemble.from_models(loaded.members, names=["a", "b", "c"]), arch,
                  reference=("SDSS", ref), report=False, n_boot=20, gallery_size=0)
    assert res.summary["model_names"]["obs"] == ["a", "b", "c"]
    np.testing.assert_allclose(res.summary["sets"]["SDSS"]["mean_llr"], s["sets"]["SDSS"]["mean_llr"], rtol=1e-6)


def test_one_group_and_the_same_model_twice_are_refused(tmp_path):
    """One group gives a zero-width interval; the same model twice is not two seeds (it shrinks model_std)."""
    rng = np.random.default_rng(9)
    ref = _grouped_set(tmp_path / "ref.h5", 10, 2, 1.0, rng)
    single = _grouped_set(tmp_path / "single.h5", 1, 4, 0.5, rng)  # 4 images of one galaxy
    obs, arch = _gauss(1.0), _gauss(0.0)
    with pytest.raises(MorphllrError, match="1 galaxy group"):
        compare(obs, arch, reference=("ref", ref), sets={"single": single}, report=False, gallery_size=0,
                group_col="galaxy")
    with pytest.raises(MorphllrError, match="same model"):
        compare([obs, obs], arch, reference=("ref", ref), sets={}, report=False, gallery_size=0)
