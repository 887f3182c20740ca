"""morphllr compare on models whose densities are known exactly.

p_obs and p_arch are independent per-pixel Gaussians of width SIGMA around two mean
images: a smooth blob (the "Sérsic archetype") and the blob plus a fixed texture
(the "observed" structure).  For images x = blob + a * texture + noise the expected LLR
is exactly (2a - 1) * sum(texture^2) / (2 SIGMA^2), so rankings, ΔLLRs and per-pixel maps
have known answers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from morphllr.compare import compare
from morphllr.errors import MorphllrError

H = W = 16
SIGMA = 0.1
PREP = {"name": "test", "zoom": 0.5, "crop": 32, "stretch": "arcsinh", "stretch_scale": 1000.0, "clip_lo": -1.0,
        "clip_hi": 1.0, "pixel_scale": 0.396, "center": True, "quantise_8bit": False, "zero_point": None}


def _blob() -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W] - (H - 1) / 2
    return np.exp(-0.5 * (yy**2 + xx**2) / 3.0**2).astype(np.float32)


def _texture() -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W] - (H - 1) / 2
    r, phi = np.hypot(yy, xx), np.arctan2(yy, xx)
    return (0.15 * np.cos(2 * phi + r) * np.exp(-r / 5)).astype(np.float32)  # two-armed spiral


@dataclass
class _Config:
    head: str = "gaussian"
    in_channels: int = 1
    height: int = H
    width: int = W
    nr_filters: int = 4


class _GaussianNet(torch.nn.Module):
    """Per-pixel N(mean, SIGMA^2); ``log_prob_pixels`` as PixelCNN defines it."""

    def __init__(self, mean: np.ndarray):
        super().__init__()
        self.register_buffer("mean", torch.from_numpy(mean))

    def log_prob_pixels(self, x: torch.Tensor) -> torch.Tensor:
        z = (x - self.mean) / SIGMA
        return (-0.5 * z**2 - np.log(SIGMA * np.sqrt(2 * np.pi))).sum(dim=1)


@dataclass
class _Model:
    net: torch.nn.Module
    config: _Config
    preprocessing: dict
    meta: dict
    path: Path = Path("toy")


def _models(head: str = "gaussian", prep: dict | None = None):
    prep = PREP if prep is None else prep
    obs = _Model(_GaussianNet(_blob() + _texture()), _Config(head=head), prep, {})
    arch = _Model(_GaussianNet(_blob()), _Config(head=head), prep, {})
    return obs, arch


def _images(n: int, amplitude: float, rng: np.random.Generator) -> np.ndarray:
    x = _blob() + amplitude * _texture() + rng.normal(0, SIGMA, (n, H, W)).astype(np.float32)
    return x[:, None].astype(np.float32)


def _catalog(n: int, rng: np.random.Generator, with_props: bool = True) -> dict:
    cat = {"id": np.array([f"g{i:05d}" for i in range(n)])}
    if with_props:
        cat["log_mstar"] = rng.uniform(9.5, 11.2, n)
        cat["sersic_re_pix"] = rng.uniform(4.0, 10.0, n)
        cat["sersic_n"] = rng.uniform(0.8, 4.0, n)
        cat["redshift"] = rng.uniform(0.02, 0.1, n)
    return cat


def _write_set(path: Path, images: np.ndarray, catalog: dict, prep: dict = PREP, segmap: bool = True) -> Path:
    from morphllr.imageset import write_imageset

    yy, xx = np.mgrid[0:H, 0:W] - (H - 1) / 2
    mask = (np.hypot(yy, xx) < 5).astype(np.uint8)
    seg = np.broadcast_to(mask, (len(images), H, W)) if segmap else None
    return write_imageset(path, images, catalog, prep, segmap_model=seg)


def _expected_mean_llr(amplitude: float) -> float:
    return float((2 * amplitude - 1) * np.sum(_texture().astype(np.float64) ** 2) / (2 * SIGMA**2))


@pytest.fixture(scope="module")
def toy_sets(tmp_path_factory) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("sets")
    sets = {}
    for name, amp, n in [("real", 1.0, 300), ("simA", 0.75, 200), ("simB", 0.4, 200), ("smooth", 0.0, 150)]:
        sets[name] = _write_set(folder / f"{name}.h5", _images(n, amp, rng), _catalog(n, rng))
    return sets


@pytest.fixture(scope="module")
def report(toy_sets, tmp_path_factory):
    obs, arch = _models()
    out = tmp_path_factory.mktemp("rep") / "report"
    others = {k: v for k, v in toy_sets.items() if k != "real"}
    result = compare(obs, arch, reference=("real", toy_sets["real"]), sets=others, out=out, n_boot=300,
                     matched_draws=50, gallery_size=4)
    return result, out


def test_ranking_and_mean_llr_match_the_exact_expectation(report):
    result, out = report
    summary = json.loads((out / "summary.json").read_text())
    assert summary["reference"] == "real"
    assert summary["ranking"] == ["real", "simA", "simB", "smooth"]
    for name, amp in [("real", 1.0), ("simA", 0.75), ("simB", 0.4), ("smooth", 0.0)]:
        e = summary["sets"][name]
        lo, hi = e["ci95"]
        # the interval must hold the exact expectation; widen by 1 sigma-of-mean for the 5 % misses
        slack = e["std_llr"] / np.sqrt(e["n"])
        assert lo - slack <= _expected_mean_llr(amp) <= hi + slack, name
        assert set(e) >= {"n", "mean_llr", "ci95", "delta_llr", "delta_llr_err", "auroc_vs_reference"}
    e = summary["sets"]["simB"]
    exact_delta = _expected_mean_llr(0.4) - _expected_mean_llr(1.0)
    assert abs(e["delta_llr"] - exact_delta) < 4 * e["delta_llr_err"]
    assert summary["sets"]["smooth"]["auroc_vs_reference"] < summary["sets"]["simA"]["auroc_vs_reference"] < 0.5
    assert "closer to smooth Sérsic" in summary["sets"]["smooth"]["reading"]


def test_scores_table_and_segmap_llr(report):
    import csv

    result, out = report
    with open(out / "scores.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 300 + 200 + 200 + 150
    assert {"set", "id", "logp_obs", "logp_arch", "llr", "llr_segmap", "bpd_obs", "log_mstar"} <= set(rows[0])
    r = rows[0]
    assert float(r["llr"]) == pytest.approx(float(r["logp_obs"]) - float(r["logp_arch"]), rel=1e-9, abs=1e-6)
    assert r["id"] == "g00000" and r["set"] == "real"
    # the mask-restricted LLR equals the LLR map summed inside the mask, recomputed here
    images = result.sets["real"].gallery["maps"]["images"]
    idx = result.sets["real"].gallery["maps"]["indices"]
    yy, xx = np.mgrid[0:H, 0:W] - (H - 1) / 2
    mask = np.hypot(yy, xx) < 5
    obs, arch = _models()
    with torch.no_grad():
        llr_map = (obs.net.log_prob_pixels(torch.from_numpy(images)) - arch.net.log_prob_pixels(torch.from_numpy(images))).numpy()
    expected = llr_map[:, mask].sum(axis=1)
    got = result.sets["real"].scores["llr_segmap"][idx]
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-2)
    pq = pytest.importorskip("pyarrow.parquet")
    table = pq.read_table(out / "scores.parquet")
    assert table.num_rows == len(rows) and "llr_segmap" in table.column_names


def test_pixel_maps_locate_the_texture(report):
    """The mean LLR map of the smooth set is most negative where the texture is strongest."""
    result, _ = report
    mean_map = result.sets["smooth"].mean_map
    t2 = _texture() ** 2
    strong, weak = t2 > np.percentile(t2, 90), t2 < np.percentile(t2, 30)
    assert mean_map[strong].mean() < mean_map[weak].mean() - 0.1
    # exact per-pixel expectation for a = 0: -t^2 / (2 sigma^2) (centring may shift by a pixel)
    assert mean_map[strong].mean() == pytest.approx((-t2[strong] / (2 * SIGMA**2)).mean(), rel=0.3)
    assert result.sets["real"].profile_re is not None  # sizes + zoom present -> profile in R_e


def test_report_files_and_mass_panels(report):
    _, out = report
    html = (out / "index.html").read_text()
    assert html.index("id='ranking'") < html.index("<figure>")
    for fig in ["llr_histograms.png", "logp_scatter.png", "mean_llr_maps.png", "radial_llr_profile.png",
                "pixel_maps_simA.png", "scaling_size_mass.png", "scaling_sersic_size.png", "gallery_smooth.png"]:
        assert (out / "figures" / fig).stat().st_size > 1000, fig
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["mass_panels"]["simB"]) == {"9.5-10", "10-10.5", ">10.5"}
    panel_rows = (out / "mass_panels.csv").read_text().strip().splitlines()
    assert len(panel_rows) == 1 + 4 * 3 and panel_rows[0].startswith("set,log_mstar_panel,n,mean_llr")
    m = summary["matched"]
    assert m["n_per_set"] > 0 and set(m["properties"]) == {"log_mstar", "size", "sersic_n"}
    exact = _expected_mean_llr(0.0) - _expected_mean_llr(1.0)
    assert abs(m["delta_llr"]["smooth"] - exact) < 5 * m["delta_llr_err"]["smooth"] + 1.0


def test_missing_columns_maps_all_and_rotations(tmp_path):
    rng = np.random.default_rng(1)
    ref = _write_set(tmp_path / "ref.h5", _images(40, 1.0, rng), _catalog(40, rng, with_props=False), segmap=False)
    other = _write_set(tmp_path / "o.h5", _images(30, 0.5, rng), _catalog(30, rng, with_props=False))
    obs, arch = _models()
    out = tmp_path / "rep"
    result = compare(obs, arch, reference=("ref", ref), sets={"o": other}, out=out, maps="all", rotations=2,
                     n_boot=100, batch_size=16)
    notes = " ".join(result.notes)
    assert "mass" in notes and "matched comparison skipped" in notes and "llr_segmap is NaN" in notes
    assert "size–mass relation skipped" in notes
    assert np.isnan(result.sets["ref"].scores["llr_segmap"]).all()
    assert np.isfinite(result.sets["o"].scores["llr_rot"]).all()
    import h5py

    with h5py.File(out / "maps.h5") as fh:
        assert fh["o/llr"].shape == (30, H, W)
        np.testing.assert_allclose(fh["o/llr"][:].sum(axis=(1, 2)), result.sets["o"].llr, rtol=1e-4, atol=0.05)
    assert (out / "index.html").exists()


def test_bad_inputs_are_clear_errors(tmp_path):
    rng = np.random.default_rng(2)
    good = _write_set(tmp_path / "good.h5", _images(10, 1.0, rng), _catalog(10, rng))
    other_prep = dict(PREP, zoom=1.0)
    wrong = _write_set(tmp_path / "wrong.h5", _images(10, 1.0, rng), _catalog(10, rng), prep=other_prep)
    obs, arch = _models()
    with pytest.raises(MorphllrError, match="wrong.h5.*zoom"):
        compare(obs, arch, reference=("ref", good), sets={"w": wrong})
    with pytest.raises(MorphllrError, match="used twice"):
        compare(obs, arch, reference=("ref", good), sets={"ref": good})
    _, arch_l = _models(head="logistic_mixture")
    with pytest.raises(MorphllrError, match="head"):
        compare(obs, arch_l, reference=("ref", good))
    empty = tmp_path / "empty.npy"
    np.save(empty, np.zeros((0, 1, H, W), np.float32))
    with pytest.raises(MorphllrError, match="empty"):
        compare(obs, arch, reference=("ref", good), sets={"e": empty})
    with pytest.raises(MorphllrError, match="no such file"):
        compare(obs, arch, reference=("ref", good), sets={"m": tmp_path / "missing.h5"})
    (tmp_path / "exists").mkdir()
    with pytest.raises(MorphllrError, match="already exists"):
        compare(obs, arch, reference=("ref", good), out=tmp_path / "exists")


def _tiny_pixelcnn_dir(folder: Path, seed: int, prep: dict = PREP) -> Path:
    from morphllr.model import PixelCNN, PixelCNNConfig
    from morphllr.modelio import save_model

    torch.manual_seed(seed)
    net = PixelCNN(PixelCNNConfig(height=H, width=W, nr_resnet=1, nr_filters=8, dropout=0.0, head="gaussian"))
    return save_model(net, folder, preprocessing=prep, data_fingerprint=None, metrics={})


def test_cli_end_to_end_with_saved_pixelcnns(tmp_path, capsys):
    """Real model folders through the command line; the LLR column equals an independent
    log_likelihood(obs) - log_likelihood(arch)."""
    from morphllr import load_model, log_likelihood
    from morphllr.cli import main

    rng = np.random.default_rng(3)
    ref = _write_set(tmp_path / "ref.h5", _images(24, 1.0, rng), _catalog(24, rng))
    sim = _write_set(tmp_path / "sim.h5", _images(16, 0.0, rng), _catalog(16, rng))
    obs_dir, arch_dir = _tiny_pixelcnn_dir(tmp_path / "obs", 0), _tiny_pixelcnn_dir(tmp_path / "arch", 1)
    out = tmp_path / "report"
    with pytest.raises(SystemExit) as exc:
        main(["compare", "--obs", str(obs_dir), "--arch", str(arch_dir), "--reference", f"SDSS={ref}",
              f"TNG={sim}", "--out", str(out), "--bootstrap", "50", "--gallery", "3"])
    assert exc.value.code == 0
    printed = capsys.readouterr().out
    assert "LLR ranking" in printed and "SDSS" in printed and "TNG" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["sets"]) == {"SDSS", "TNG"}
    import csv

    with open(out / "scores.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r["set"] == "TNG"]
    from morphllr.imageset import ImageSet

    images = ImageSet.open(sim).read(np.arange(16))
    expected = (log_likelihood(load_model(obs_dir), images, bf16=False)
                - log_likelihood(load_model(arch_dir), images, bf16=False))
    got = np.array([float(r["llr"]) for r in rows])
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=0.05 + 1e-3 * np.abs(expected).max())


def test_cli_bad_arguments_exit_with_one_line(tmp_path, capsys):
    from morphllr.cli import main

    obs_dir = _tiny_pixelcnn_dir(tmp_path / "obs", 0)
    arch_dir = _tiny_pixelcnn_dir(tmp_path / "arch", 1, prep=dict(PREP, zoom=0.25))
    with pytest.raises(SystemExit) as exc:
        main(["compare", "--obs", str(obs_dir), "--arch", str(obs_dir), "--reference", "SDSS", "--out",
              str(tmp_path / "r")])
    assert exc.value.code == 2 and "NAME=FILE" in capsys.readouterr().err
    rng = np.random.default_rng(4)
    ref = _write_set(tmp_path / "ref.h5", _images(4, 1.0, rng), _catalog(4, rng))
    with pytest.raises(SystemExit) as exc:
        main(["compare", "--obs", str(obs_dir), "--arch", str(arch_dir), "--reference", f"SDSS={ref}", "--out",
              str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "zoom" in err and "Traceback" not in err


def test_rotation_averaged_llr_is_invariant_for_round_galaxies_and_models():
    """Round models + round noise-free galaxies: rotating changes nothing, so llr_rot == llr.
    With the two-armed texture in p_obs, rotations move the arms and the LLR drops."""
    yy, xx = np.mgrid[0:H, 0:W] - (H - 1) / 2
    r2 = yy**2 + xx**2
    narrow, wide = np.exp(-0.5 * r2 / 3.0**2).astype(np.float32), np.exp(-0.5 * r2 / 4.0**2).astype(np.float32)
    round_obs = _Model(_GaussianNet(narrow), _Config(), {}, {})
    round_arch = _Model(_GaussianNet(wide), _Config(), {}, {})
    images = np.repeat(narrow[None, None], 6, axis=0)
    res = compare(round_obs, round_arch, reference=("x", images), rotations=3, report=False, n_boot=20)
    s = res.sets["x"].scores
    # bicubic resampling of a 16-pixel stamp is not exact: allow 5 % (the textured drop below is >50 %)
    np.testing.assert_allclose(s["llr_rot"], s["llr"], rtol=0.05)
    obs, arch = _models()
    textured = (_blob() + _texture())[None, None].repeat(6, axis=0)
    res = compare(obs, arch, reference=("x", textured), rotations=3, report=False, n_boot=20)
    s = res.sets["x"].scores
    assert s["llr_rot"].mean() < 0.5 * s["llr"].mean()

