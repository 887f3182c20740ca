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

from morphllr.comparison.run import compare
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
    """Per-pixel N(mean, sigma^2); ``log_prob_pixels`` as PixelCNN defines it."""

    def __init__(self, mean: np.ndarray, sigma: float = SIGMA):
        super().__init__()
        self.register_buffer("mean", torch.from_numpy(mean))
        self.sigma = sigma

    def log_prob_pixels(self, x: torch.Tensor) -> torch.Tensor:
        z = (x - self.mean) / self.sigma
        return (-0.5 * z**2 - np.log(self.sigma * np.sqrt(2 * np.pi))).sum(dim=1)


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
    from morphllr.data.imageset import write_imageset

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


def test_summary_table_holds_summary_csv_with_units(report):
    """CompareResult.summary_table(): the rows of summary.csv (same order, same values), with astropy units."""
    import csv

    import astropy.units as u

    result, out = report
    table = result.summary_table()
    with open(out / "summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(table["set"]) == [r["set"] for r in rows] == result.ranking
    assert table.colnames[:len(rows[0])] == list(rows[0])  # summary.csv's columns first, in its order
    for key in list(rows[0])[1:]:
        for row, value in zip(rows, table[key]):
            if row[key] == "":
                assert np.ma.is_masked(value), (key, row["set"])
            elif key in ("delta_llr_pairing", "stable"):  # text and True/False
                assert str(value) == row[key], (key, row["set"])
            else:
                assert float(value) == float(row[key]), (key, row["set"])
    for key in ("mean_llr", "ci95_lo", "delta_llr", "delta_llr_err", "mean_logp_obs"):
        assert table[key].unit.to_string() == "nat"
    assert table["mean_llr_per_pixel"].unit.to_string() == "nat / pix"
    assert table["mean_bpd_obs"].unit == u.bit and table["auroc_vs_reference"].unit is None
    # 1 nat = 1 / ln 2 bits: a mean LLR converts to bits like any astropy quantity
    mean = table["mean_llr"].quantity[0]
    assert mean.to_value(u.bit) == pytest.approx(float(table["mean_llr"][0]) / np.log(2))
    np.testing.assert_allclose(table["mean_bpd_obs"], [result.summary["sets"][n]["mean_bpd_obs"] for n in table["set"]])
    assert table.meta["reference"] == "real"


def test_scores_table_is_the_sets_rows_of_scores_csv(report):
    """CompareResult.scores_table(name): exactly that set's rows of scores.csv, with units on the columns."""
    import csv

    import astropy.units as u

    result, out = report
    with open(out / "scores.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["set"] == "simA"]
    table = result.scores_table("simA")
    assert len(table) == len(rows) == 200 and table.colnames == list(rows[0])
    assert list(table["id"]) == [r["id"] for r in rows] and set(table["set"]) == {"simA"}
    for key in table.colnames:
        if key in ("set", "id"):
            continue
        got = np.asarray(table[key], dtype=np.float64)
        want = np.array([float(r[key]) for r in rows])
        np.testing.assert_array_equal(got, want, err_msg=key)  # repr(float) in the CSV: bit for bit
    assert table["llr"].unit.to_string() == "nat" and table["logp_obs"].unit.to_string() == "nat"
    assert table["bpd_obs"].unit == u.bit and table["n_sky_pixels"].unit == u.pix
    assert table["llr_per_pixel"].unit.to_string() == "nat / pix" and table["masked_share"].unit is None
    assert table.meta == {"set": "simA", "reference": "real"}
    with pytest.raises(MorphllrError, match="not in this comparison"):
        result.scores_table("nope")


def test_report_only_reads_the_result(report, tmp_path):
    """Writing the report again changes nothing in the result: summary.json may be written before or after it."""
    import copy

    from morphllr.report.html import write_report

    result, out = report
    notes, summary = list(result.notes), copy.deepcopy(result.summary)
    write_report(result, tmp_path)
    assert result.notes == notes and result.summary == summary and result.summary["notes"] is result.notes
    written = json.loads((out / "summary.json").read_text())
    assert written["notes"] == result.notes  # the figures' notes too (written before the report was)


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
    assert html.index("id='ranking'") < html.index("id='sky-split'") < html.index("<figure>")
    sky_table = html[html.index("LLR split: empty sky vs the rest"):html.index("</table>", html.index("id='sky-split'"))]
    assert "[nats/pixel]" in sky_table and "AUROC of sky pixels vs reference" in sky_table
    assert "background cancels" in sky_table
    # these sets only have /segmap_model: said once under the table, marked on every set
    assert html.count("faint outskirts count as sky") == 1 and sky_table.count("(a)") == 4
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
    from morphllr.data.imageset import write_imageset

    # a /segmap too small for the recorded crop: the sky falls back to /segmap_model, with the reason
    disc = (np.hypot(*(np.mgrid[0:H, 0:W] - (H - 1) / 2)) < 5).astype(np.uint8)
    bad = write_imageset(tmp_path / "bad.h5", _images(8, 1.0, rng), _catalog(8, rng, with_props=False), PREP,
                         segmap=np.zeros((8, 20, 20), np.int32), segmap_model=np.repeat(disc[None], 8, axis=0))
    obs, arch = _models()
    out = tmp_path / "rep"
    result = compare(obs, arch, reference=("ref", ref), sets={"o": other, "bad": bad}, out=out, maps="all",
                     rotations=2, n_boot=100, batch_size=16)
    notes = " ".join(result.notes)
    assert "mass" in notes and "matched comparison skipped" in notes and "llr_segmap is NaN" in notes
    assert "size–mass relation skipped" in notes
    assert np.isnan(result.sets["ref"].scores["llr_segmap"]).all()
    # no segmentation at all in ref; only /segmap_model in o (sky = outside the central disc)
    assert "the sky split (llr_sky, llr_rest, n_sky_pixels, llr_sky_per_pixel) is NaN" in notes
    assert "companions, stars and the central galaxy's faint outskirts then count as sky" in notes
    assert "bad: /segmap (20x20) does not map onto the 16x16 model grid" in notes
    assert result.sets["bad"].sky_mask == "segmap_model"
    np.testing.assert_array_equal(result.sets["bad"].scores["n_sky_pixels"], (1 - disc).sum())
    for col in ("llr_sky", "llr_rest", "n_sky_pixels", "llr_sky_per_pixel"):
        assert np.isnan(result.sets["ref"].scores[col]).all(), col
    yy, xx = np.mgrid[0:H, 0:W] - (H - 1) / 2
    assert (result.sets["o"].scores["n_sky_pixels"] == (np.hypot(yy, xx) >= 5).sum()).all()
    ref_sky, o_sky = result.summary["sets"]["ref"]["sky"], result.summary["sets"]["o"]["sky"]
    assert ref_sky["mask"] is None and all(ref_sky[k] is None for k in ("llr_per_sky_pixel", "sky_share"))
    assert o_sky["mask"] == "segmap_model" and o_sky["llr_per_sky_pixel"] is not None
    assert o_sky["auroc_sky_vs_reference"] is None and "reference" in o_sky["null_reasons"]["auroc_sky_vs_reference"]
    page = (out / "index.html").read_text()
    assert page.count("the set has no segmentation map") == 1 and page.count("the reference has no segmentation") == 1
    assert "– ±" not in page[page.index("id='sky-split'"):page.index("</table>", page.index("id='sky-split'"))]
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
    from morphllr.model.pixelcnn import PixelCNN, PixelCNNConfig
    from morphllr.model.io import save_model

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
    assert printed.index("LLR ranking") < printed.index("LLR split: empty sky vs the rest")
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["sets"]) == {"SDSS", "TNG"}
    import csv

    with open(out / "scores.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r["set"] == "TNG"]
    from morphllr.data.imageset import ImageSet

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



# --------------------------------------------------------------------------- empty sky vs the rest
HF = 36  # flux-cutout side: PREP crops 32 and takes 2x2 means -> the 16x16 model grid


def _brute_sky_mask(seg: np.ndarray, crop: int | None, k: int) -> np.ndarray:
    """Model pixel (i, j) is sky iff every flux pixel of its k x k block in the central crop is 0."""
    b, hf, wf = seg.shape
    size = crop or hf
    top, left = (hf - size) // 2, (wf - size) // 2
    out = np.zeros((b, size // k, size // k), bool)
    for n in range(b):
        for i in range(size // k):
            for j in range(size // k):
                out[n, i, j] = all(seg[n, top + i * k + a, left + j * k + c] == 0 for a in range(k) for c in range(k))
    return out


def _grown(seg: np.ndarray, margin: int) -> np.ndarray:
    """Brute force: a pixel is a source when a source pixel lies within ``margin`` of it (disc)."""
    yy, xx = np.mgrid[0:seg.shape[1], 0:seg.shape[2]]
    grown = np.zeros_like(seg)
    for n, y, x in zip(*np.nonzero(seg)):
        grown[n][(yy - y) ** 2 + (xx - x) ** 2 <= margin**2] = 1
    return grown


@pytest.mark.parametrize("crop, k", [(36, 4), (None, 2), (30, 1), (33, 3)])
def test_model_sky_mask_matches_a_brute_force_loop(crop, k):
    from morphllr.data.preprocess import Preprocessing
    from morphllr.data.geometry import model_mask, model_sky_mask

    rng = np.random.default_rng(5)
    seg = np.where(rng.random((4, 40, 40)) < 0.04, rng.integers(1, 4, (4, 40, 40)), 0).astype(np.int32)
    prep = Preprocessing(crop=crop, zoom=1 / k)
    got = model_sky_mask(seg, prep, margin=0)
    want = _brute_sky_mask(seg, crop, k)
    assert got.dtype == bool and got.shape == want.shape
    assert want.any() and not want.all()  # both kinds of pixel occur, so the comparison means something
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(model_sky_mask(seg, {"crop": crop, "zoom": 1 / k}, margin=0), want)  # a dict
    # with a margin, every pixel within `margin` of a source pixel is a source too (brute-force disc)
    sparse = np.where(rng.random((2, 40, 40)) < 0.004, 2, 0).astype(np.int32)
    margin_want = _brute_sky_mask(_grown(sparse, 3), crop, k)
    assert margin_want.any() and not margin_want.all()
    np.testing.assert_array_equal(model_sky_mask(sparse, prep, margin=3), margin_want)
    # a pixel that is mostly central source is never empty sky
    assert not (got & model_mask(seg, prep).astype(bool)).any()


def _flux_segmaps(n: int, rng: np.random.Generator) -> np.ndarray:
    """Central galaxy (label 1) + one 3x3 companion (label 2) at a random place, on the flux grid."""
    yy, xx = np.mgrid[0:HF, 0:HF] - (HF - 1) / 2
    seg = np.repeat((np.hypot(yy, xx) < 9)[None], n, axis=0).astype(np.int32)
    for i, (y, x) in enumerate(rng.integers(0, HF - 3, (n, 2))):
        block = seg[i, y:y + 3, x:x + 3]
        block[block == 0] = 2
    return seg


SIGMA_ARCH = 1.2 * SIGMA  # p_arch's sky is a little too noisy: its sky density differs from p_obs's


def _sky_models():
    obs = _Model(_GaussianNet(_blob() + _texture()), _Config(), PREP, {})
    arch = _Model(_GaussianNet(_blob(), sigma=SIGMA_ARCH), _Config(), PREP, {})
    return obs, arch


def _expected_pixel_llr(noise: np.ndarray) -> np.ndarray:
    """Exact E[LLR] per pixel of x = blob + texture + N(0, noise^2) under the two Gaussians of _sky_models."""
    t2 = _texture().astype(np.float64) ** 2
    return (np.log(SIGMA_ARCH / SIGMA) - noise**2 / (2 * SIGMA**2) + (t2 + noise**2) / (2 * SIGMA_ARCH**2))


@pytest.fixture(scope="module")
def sky_split(tmp_path_factory):
    """real (reference), same_sky (new galaxies' noise, same sky) and noisy_sky (real's images, 1.5x sky noise)."""
    rng = np.random.default_rng(7)
    folder = tmp_path_factory.mktemp("sky")
    n = 200
    seg = {name: _flux_segmaps(n, rng) for name in ("real", "same_sky")}
    seg["noisy_sky"] = seg["real"]
    from morphllr.data.geometry import SKY_MARGIN

    sky = {name: _brute_sky_mask(_grown(s, SKY_MARGIN), 32, 2) for name, s in seg.items()}
    images = {name: _images(n, 1.0, rng) for name in ("real", "same_sky")}
    extra = rng.normal(0, SIGMA * np.sqrt(1.5**2 - 1), (n, H, W)).astype(np.float32)
    images["noisy_sky"] = images["real"] + np.where(sky["real"], extra, 0)[:, None]  # galaxies untouched
    from morphllr.data.imageset import write_imageset

    # /segmap only (no /segmap_model): the sky mask must come from the flux-grid segmentation
    paths = {name: write_imageset(folder / f"{name}.h5", images[name], _catalog(n, rng, with_props=False), PREP,
                                  segmap=seg[name]) for name in images}
    obs, arch = _sky_models()
    out = folder / "report"
    result = compare(obs, arch, reference=("real", paths["real"]),
                     sets={"same_sky": paths["same_sky"], "noisy_sky": paths["noisy_sky"]}, out=out,
                     report=False, n_boot=200, matched_draws=10, gallery_size=0, batch_size=64)
    return result, out, images, sky


def test_sky_and_rest_add_up_to_the_llr_and_follow_the_mask(sky_split):
    result, _, images, sky = sky_split
    obs, arch = _sky_models()
    for name, res in result.sets.items():
        s = res.scores
        assert res.sky_mask == "segmap"
        scale = np.abs(s["llr_sky"]) + np.abs(s["llr_rest"])
        np.testing.assert_allclose(s["llr_sky"] + s["llr_rest"], s["llr"], rtol=0, atol=1e-12 * scale.max())
        np.testing.assert_array_equal(s["n_sky_pixels"], sky[name].sum(axis=(1, 2)))
        np.testing.assert_allclose(s["llr_sky_per_pixel"], s["llr_sky"] / s["n_sky_pixels"], rtol=1e-12)
        # independent float64 recomputation of the per-pixel LLR, summed over the brute-force sky mask
        x = torch.from_numpy(images[name].astype(np.float64))
        with torch.no_grad():
            llr_map = (obs.net.log_prob_pixels(x) - arch.net.log_prob_pixels(x)).numpy()
        np.testing.assert_allclose(s["llr_sky"], (llr_map * sky[name]).sum(axis=(1, 2)), rtol=1e-5, atol=1e-3)
        # and the rest over the complement of the mask, summed independently (not llr - llr_sky)
        np.testing.assert_allclose(s["llr_rest"], (llr_map * ~sky[name]).sum(axis=(1, 2)), rtol=1e-5, atol=1e-3)
    # noisy_sky has real's images outside the sky: its rest is real's, image by image
    np.testing.assert_allclose(result.sets["noisy_sky"].scores["llr_rest"], result.sets["real"].scores["llr_rest"],
                               rtol=1e-6, atol=1e-4)


def test_changed_sky_moves_the_sky_llr_and_identical_sky_does_not(sky_split):
    result, out, _, sky = sky_split
    summary = json.loads((out / "summary.json").read_text())
    e = {name: summary["sets"][name]["sky"] for name in ("real", "same_sky", "noisy_sky")}
    assert set(e["real"]) == {"mask", "llr_per_sky_pixel", "llr_per_sky_pixel_ci95", "sky_share", "sky_pixel_fraction",
                              "mean_llr_sky", "mean_llr_rest", "auroc_sky_vs_reference", "auroc_rest_vs_reference",
                              "null_reasons"}
    # the pooled sky LLR per pixel holds the exact expectation (1.5x noise in noisy_sky's sky)
    for name, noise in (("real", SIGMA), ("same_sky", SIGMA), ("noisy_sky", 1.5 * SIGMA)):
        exact = (_expected_pixel_llr(np.full((H, W), noise)) * sky[name]).sum() / sky[name].sum()
        lo, hi = e[name]["llr_per_sky_pixel_ci95"]
        slack = 0.5 * (hi - lo)
        assert lo - slack <= exact <= hi + slack and lo <= e[name]["llr_per_sky_pixel"] <= hi, name
        assert e[name]["sky_pixel_fraction"] == pytest.approx(sky[name].mean(), rel=1e-12)
    assert e["noisy_sky"]["llr_per_sky_pixel_ci95"][1] < e["real"]["llr_per_sky_pixel_ci95"][0]
    assert e["noisy_sky"]["auroc_sky_vs_reference"] < 0.05  # the changed sky gives itself away
    assert e["noisy_sky"]["auroc_rest_vs_reference"] == pytest.approx(0.5, abs=1e-9)  # same galaxies
    assert abs(e["same_sky"]["auroc_sky_vs_reference"] - 0.5) < 0.12
    assert abs(e["same_sky"]["auroc_rest_vs_reference"] - 0.5) < 0.12
    lo_r, hi_r = e["real"]["llr_per_sky_pixel_ci95"]
    lo_s, hi_s = e["same_sky"]["llr_per_sky_pixel_ci95"]
    assert lo_s < hi_r and lo_r < hi_s  # identical sky: the two intervals overlap
    assert e["real"]["auroc_sky_vs_reference"] == 0.5 and e["real"]["null_reasons"] == {}
    llr, llr_sky = result.sets["noisy_sky"].llr, result.sets["noisy_sky"].scores["llr_sky"]
    assert e["noisy_sky"]["sky_share"] == pytest.approx(llr_sky.mean() / llr.mean(), rel=1e-9)
    # the sky alone pulls this set's LLR below the reference's, with the same galaxies
    assert e["noisy_sky"]["mean_llr_sky"] < 0 < e["noisy_sky"]["mean_llr_rest"]
    assert summary["sets"]["noisy_sky"]["mean_llr"] < summary["sets"]["real"]["mean_llr"]


def test_sky_columns_in_scores_and_summary_tables(sky_split):
    import csv

    result, out, _, _ = sky_split
    with open(out / "scores.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {"llr_sky", "llr_rest", "n_sky_pixels", "llr_sky_per_pixel", "llr", "llr_segmap"} <= set(rows[0])
    noisy = [r for r in rows if r["set"] == "noisy_sky"]
    np.testing.assert_allclose([float(r["llr_sky"]) for r in noisy], result.sets["noisy_sky"].scores["llr_sky"])
    np.testing.assert_array_equal([float(r["n_sky_pixels"]) for r in noisy],
                                  result.sets["noisy_sky"].scores["n_sky_pixels"])
    with open(out / "summary.csv") as fh:
        table = {r["set"]: r for r in csv.DictReader(fh)}
    summary = result.summary["sets"]["noisy_sky"]["sky"]
    assert float(table["noisy_sky"]["llr_per_sky_pixel"]) == pytest.approx(summary["llr_per_sky_pixel"])
    assert float(table["noisy_sky"]["auroc_sky_vs_reference"]) == pytest.approx(summary["auroc_sky_vs_reference"])
    pq = pytest.importorskip("pyarrow.parquet")
    assert {"llr_sky", "llr_rest", "n_sky_pixels", "llr_sky_per_pixel"} <= set(pq.read_table(out / "scores.parquet").column_names)


def test_sky_table_in_the_terminal(sky_split):
    from rich.console import Console

    from morphllr.report.terminal import print_ranking

    result, _, _, _ = sky_split
    console = Console(record=True, width=80)
    print_ranking(result.summary, console)
    text = console.export_text()
    assert text.index("LLR ranking") < text.index("LLR split: empty sky vs the rest")
    row = next(line for line in text.splitlines() if line.strip().startswith("noisy_sky"))
    assert f"{result.summary['sets']['noisy_sky']['sky']['llr_per_sky_pixel']:.3g}" in row


def test_pooled_sky_ratio_interval_and_the_share_rule(monkeypatch):
    from morphllr.comparison import stats

    rng = np.random.default_rng(3)
    n_pix = rng.integers(50, 200, 400).astype(float)
    sky = rng.normal(0.02, 0.05, 400) * np.sqrt(n_pix)  # per-image sums; true pooled ratio ~0
    ratio = stats.ratio_of_sums(sky, n_pix)
    assert ratio == pytest.approx(sky.sum() / n_pix.sum(), rel=1e-12)
    lo, hi = stats.bootstrap_ratio_ci(sky, n_pix, n_boot=2000, rng=0)
    assert lo < ratio < hi
    monkeypatch.setattr(stats, "LARGE_SAMPLE", 100)  # the Gaussian limit used for huge sets: same width
    g_lo, g_hi = stats.bootstrap_ratio_ci(sky, n_pix, n_boot=2000, rng=0)
    assert g_hi - g_lo == pytest.approx(hi - lo, rel=0.15) and g_lo < ratio < g_hi
    assert np.isnan(stats.ratio_of_sums([1.0, 2.0], [0.0, 0.0]))
    assert all(np.isnan(stats.bootstrap_ratio_ci([1.0, 2.0], [0.0, 0.0])))
    # share: defined when the mean LLR is > 2 standard errors from 0, NaN otherwise
    total = rng.normal(10.0, 1.0, 100)
    part = 0.25 * total + rng.normal(0, 0.1, 100)
    assert stats.share_of_mean(part, total) == pytest.approx(part.mean() / total.mean(), rel=1e-12)
    centred = total - total.mean() + 0.01  # mean 0.01, standard error 0.1
    assert np.isnan(stats.share_of_mean(part, centred))


def test_names_sharing_a_file_name_are_refused_before_scoring(tmp_path, capsys, monkeypatch):
    """Names equal once made file names (A.1 / A_1, TNG/50 / TNG_50) would overwrite each other's figures;
    empty or space-padded names would fail only after scoring: all refused up front."""
    from clitools import cli, one_error

    import morphllr.comparison.run as run
    from morphllr.comparison.sets import check_names

    for a, b in [("A.1", "A_1"), ("A 1", "A.1"), ("TNG/50", "TNG_50")]:
        with pytest.raises(MorphllrError, match="rename one") as err:
            check_names(["ref", a, b])
        assert repr(a) in str(err.value) and repr(b) in str(err.value)
    for bad in ["", "  ", " TNG50", "TNG50 "]:
        with pytest.raises(MorphllrError, match="set name"):
            check_names(["ref", bad])
    check_names(["ref", "A-1", "A_1", "A1"])  # distinct file names
    monkeypatch.setattr(run, "score_all", lambda *a, **k: pytest.fail("scored before the names were checked"))
    rng = np.random.default_rng(5)
    good = _write_set(tmp_path / "good.h5", _images(4, 1.0, rng), _catalog(4, rng))
    obs, arch = _models()
    with pytest.raises(MorphllrError, match="'A.1' and 'A_1'"):
        compare(obs, arch, reference=("ref", good), sets={"A.1": good, "A_1": good}, out=tmp_path / "r")
    with pytest.raises(MorphllrError, match="space"):
        compare(obs, arch, reference=("ref", good), sets={"sim ": good})
    code, text = cli(["compare", "--obs", tmp_path / "obs", "--arch", tmp_path / "arch", "--reference",
                      f"SDSS={good}", f"TNG/50={good}", f"TNG_50={good}", "--out", tmp_path / "r"], capsys)
    assert code == 2
    one_error(text, "'TNG/50' and 'TNG_50'", "rename one")
    assert not (tmp_path / "r").exists()
