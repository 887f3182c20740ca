"""Domain guards (issue 13): warn, never a confident wrong number.

The measured failure cases of the issue are reproduced and must warn (5x sky noise, n = 3, a
reference with mean LLR <= 0, a model stopped while improving); the demo sets under the shipped
demo ensembles and the GZ2 validation sets (and their degraded copies) under the validation
models must not raise a single domain warning.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from morphllr import domain
from morphllr.errors import MorphllrError

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

OUT_OF_DOMAIN = "outside the models' domain"


def _domain_warnings(entry: dict) -> list[str]:
    return [w for w in entry["warnings"] if OUT_OF_DOMAIN in w]


# --------------------------------------------------------------------------- units
def test_describe_and_bounds_follow_the_stated_rules():
    rec = domain.describe(np.linspace(0.0, 1.0, 1001))
    assert rec["n"] == 1001 and set(rec["quantiles"]) == {domain.key(q) for q in domain.QUANTILES}
    (mlo, mhi), (ilo, ihi) = domain.bounds(rec, "sky_bpd")
    assert mlo == pytest.approx(0.05 - 0.5 * 0.9) and mhi == pytest.approx(0.95 + 0.5 * 0.9)
    assert ilo == pytest.approx(0.001 - 0.45) and ihi == pytest.approx(0.999 + 0.45)
    (mlo, mhi), _ = domain.bounds(rec, "whole_bpd")
    assert mlo == pytest.approx(-0.98) and mhi == pytest.approx(1.98)
    inside = domain.judge(np.full(10, 0.5), rec, "sky_bpd")
    assert not inside["fired"] and inside["share_outside"] == 0
    # the median far out, or a quarter of the images beyond the per-image range
    assert domain.judge(np.full(10, 5.0), rec, "sky_bpd")["fired"]
    mixed = np.r_[np.full(7, 0.5), np.full(3, 9.0)]
    assert domain.judge(mixed, rec, "sky_bpd")["fired"]  # 30 % > 25 %
    assert not domain.judge(np.r_[np.full(8, 0.5), np.full(2, 9.0)], rec, "sky_bpd")["fired"]  # 20 %


def test_small_sample_and_reference_warnings():
    assert domain.small_sample_warning("A", 3) and "unreliable" in domain.small_sample_warning("A", 3)[0]
    assert domain.small_sample_warning("A", domain.MIN_RELIABLE_N) == []
    assert "<= 0" in domain.reference_warning("R", -1.0)[0] and domain.reference_warning("R", 0.0)
    assert domain.reference_warning("R", 0.1) == []


def test_recipe_warning_compares_input_kinds_and_treats_a_missing_kind_as_unknown():
    a = {"name": "zanisi21", "units": "counts", "input_kind": "flux"}
    assert domain.recipe_warnings(a, dict(a)) == []
    assert domain.recipe_warnings(a, {**a, "input_kind": None}) == []  # unknown, not a difference
    assert domain.recipe_warnings({"name": "zanisi21"}, {"name": "zanisi21"}) == []
    found = domain.recipe_warnings(a, {**a, "input_kind": "jpeg_linear"})
    assert len(found) == 1 and "input_kind" in found[0]
    assert "name: 'zanisi21' vs 'gz2_linear'" in domain.recipe_warnings(a, {**a, "name": "gz2_linear"})[0]


class _M:
    def __init__(self, metrics: dict):
        self.meta = {"metrics": metrics}


def _conv(gain: float, tol: float = 0.008) -> dict:
    return {"converged": gain < tol, "tail_improvement_bpd": gain, "tolerance_bpd": tol, "tail": 0.2,
            "rule": "r", "history": [[1, 0.0]]}


def test_convergence_uses_the_ensembles_seed_noise_and_says_which_tolerance():
    # one model: the recorded tolerance
    found, notes = domain.convergence_findings("p_obs", ["m"], [_M({"convergence": _conv(0.02),
                                                                     "val_bits_per_dim": -1.0})])
    assert len(found) == 1 and "recorded tolerance" in found[0] and notes == []
    # three members whose val bits/dim spread by ~0.05: that noise is the tolerance, so 0.02 is flat
    members = [_M({"convergence": _conv(0.02), "val_bits_per_dim": v}) for v in (-1.0, -1.05, -1.1)]
    found, _ = domain.convergence_findings("p_obs", ["a", "b", "c"], members)
    assert found == []
    members = [_M({"convergence": _conv(g), "val_bits_per_dim": v}) for g, v in ((0.2, -1.0), (0.0, -1.01),
                                                                                   (0.0, -1.02))]
    found, _ = domain.convergence_findings("p_obs", ["a", "b", "c"], members)
    assert len(found) == 1 and "model a" in found[0] and "seed-to-seed std of the 3 members" in found[0]
    # no field: a note, never a warning
    found, notes = domain.convergence_findings("p_arch", ["m"], [_M({"val_bits_per_dim": -1.0})])
    assert found == [] and len(notes) == 1 and "unknown" in notes[0]


# --------------------------------------------------------------------------- compare with constructed models
@pytest.fixture(scope="module")
def toy():
    from test_compare import _catalog, _images, _models, _write_set

    return _catalog, _images, _models, _write_set


def test_models_without_records_get_notes_and_summary_always_has_warning_lists(toy, tmp_path):
    _catalog, _images, _models, _write_set = toy
    from morphllr.comparison.run import compare

    rng = np.random.default_rng(0)
    ref = _write_set(tmp_path / "ref.h5", _images(60, 1.0, rng), _catalog(60, rng))
    sim = _write_set(tmp_path / "sim.h5", _images(50, 0.3, rng), _catalog(50, rng))
    obs, arch = _models()
    res = compare(obs, arch, reference=("ref", ref), sets={"sim": sim}, out=tmp_path / "r", n_boot=50,
                  matched_draws=5, report=False)
    written = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert written["warnings"] == [] and all(written["sets"][n]["warnings"] == [] for n in ("ref", "sim"))
    assert any("trained before domain statistics were recorded" in n and "record_domain.py" in n
               for n in res.notes)
    assert any("convergence" in n for n in res.notes)
    assert written["provenance"]["obs"]["members"][0]["domain_recorded"] is False


def test_reference_below_zero_tiny_sets_and_unconverged_models_warn(toy, tmp_path):
    _catalog, _images, _models, _write_set = toy
    from morphllr.comparison.run import compare
    from morphllr.errors import MorphllrWarning

    rng = np.random.default_rng(1)
    ref = _write_set(tmp_path / "ref.h5", _images(40, 1.0, rng), _catalog(40, rng))
    tiny = _write_set(tmp_path / "tiny.h5", _images(3, 1.0, rng), _catalog(3, rng))
    obs, arch = _models()
    arch.meta = {"metrics": {"convergence": _conv(0.05), "val_bits_per_dim": -1.0}}
    with pytest.warns(MorphllrWarning):
        # swapped: p_obs is the smooth model, so the real reference scores mean LLR < 0
        res = compare(arch, obs, reference=("ref", ref), sets={"tiny": tiny}, n_boot=50, matched_draws=5,
                      report=False)
    s = res.summary
    assert s["sets"]["ref"]["mean_llr"] < 0
    assert any("<= 0" in w for w in s["sets"]["ref"]["warnings"])
    assert any("only 3 images" in w and "unreliable" in w for w in s["sets"]["tiny"]["warnings"])
    assert any("may not have converged" in w for w in s["warnings"])
    assert set(s["sets"]["ref"]["warnings"] + s["sets"]["tiny"]["warnings"]) <= set(s["warnings"])


# --------------------------------------------------------------------------- recording
def _tiny_ensemble(folder: Path, data, seeds=(0, 1)):
    from morphllr.model.pixelcnn import PixelCNN, PixelCNNConfig
    from morphllr.model.ensemble import member_name, write_ensemble_index
    from morphllr.model.io import save_model
    from morphllr.data.inputs import open_images

    src = open_images(data)
    cfg = PixelCNNConfig(in_channels=1, height=16, width=16, nr_resnet=1, nr_filters=8, nr_logistic_mix=2,
                         dropout=0.0, head="gaussian", input_shift=0.0, input_scale=1.0)
    members = []
    for seed in seeds:
        import torch

        torch.manual_seed(seed)
        name = member_name(seed)
        save_model(PixelCNN(cfg), folder / name, preprocessing=src.preprocessing, data_fingerprint=src.fingerprint(),
                   metrics={"val_bits_per_dim": 0.0, "val_images": 5},
                   extra={"training": {"val_fraction": 0.25, "seed": seed}})
        members.append((name, seed, name))
    write_ensemble_index(folder, members)


def test_record_domain_updates_an_ensemble_atomically_and_keeps_its_weights(toy, tmp_path):
    _catalog, _images, _models, _write_set = toy
    from record_domain import record_domain

    from morphllr.data.inputs import file_sha256
    from morphllr.model.ensemble import load_ensemble
    from morphllr.train.batches import split_indices

    rng = np.random.default_rng(2)
    data = _write_set(tmp_path / "train.h5", _images(20, 1.0, rng), _catalog(20, rng))
    ens_dir = tmp_path / "ens"
    _tiny_ensemble(ens_dir, data)
    weights = {p: file_sha256(p) for p in ens_dir.glob("*/weights.safetensors")}
    records = record_domain(ens_dir, data, threads=1, say=lambda s: None)
    ens = load_ensemble(ens_dir)  # the index's sha256 were rewritten
    assert {p: file_sha256(p) for p in ens_dir.glob("*/weights.safetensors")} == weights
    for seed, member in zip((0, 1), ens.members):
        rec = member.meta["metrics"]["domain"]
        assert rec == json.loads(json.dumps(records[f"seed{seed}"]))
        _, val = split_indices(20, 0.25, seed)
        assert rec["images"] == "validation" and rec["n_images"] == len(val) == 5
        assert rec["stats"]["whole_bpd"]["n"] == 5 and rec["stats"]["size_area"]["quantiles"]["50"] > 0
        assert rec["stats"]["sky_bpd"] is not None and rec["sky_mask"] == "segmap_model"
    # the domain record's mean is the model's validation bits/dim, computed the same way
    from morphllr.score import log_likelihood

    val_rows = split_indices(20, 0.25, 0)[1]
    from morphllr.data.inputs import open_images

    logp = log_likelihood(ens.members[0], open_images(data).read(val_rows), bf16=False, threads=1)
    assert ens.members[0].meta["metrics"]["domain"]["stats"]["whole_bpd"]["mean"] == pytest.approx(
        float(domain.whole_bpd(logp, 256).mean()), rel=1e-9)
    # another training set is refused before anything is written
    other = _write_set(tmp_path / "other.h5", _images(20, 1.0, rng), _catalog(20, rng))
    before = (ens_dir / "ensemble.json").read_text()
    with pytest.raises(MorphllrError, match="other images"):
        record_domain(ens_dir, other, threads=1, say=lambda s: None)
    assert (ens_dir / "ensemble.json").read_text() == before


def test_training_writes_the_domain_record(tmp_path):
    from morphllr.data.imageset import write_imageset
    from morphllr.model.io import load_model
    from morphllr.train.run import train_model

    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:8, :8] - 3.5
    blob = np.exp(-(yy**2 + xx**2) / 4.0)
    x = (blob[None] * rng.uniform(0.5, 1, (12, 1, 1)) + 0.02 * rng.standard_normal((12, 8, 8)))[:, None]
    seg = np.broadcast_to((np.hypot(yy, xx) < 2.5).astype(np.uint8), (12, 8, 8))
    data = write_imageset(tmp_path / "d.h5", x.astype(np.float32), {"id": [f"g{i}" for i in range(12)]}, {},
                          segmap_model=seg)
    train_model(data, tmp_path / "m", max_steps=2, val_fraction=0.25, config="tiny", batch_size=4, augment="none",
                precision="32", progress=False, threads=1, warmup_steps=1)
    model = load_model(tmp_path / "m")
    rec = model.meta["metrics"]["domain"]
    assert rec["version"] == domain.VERSION and rec["images"] == "validation" and rec["n_images"] == 3
    assert rec["stats"]["whole_bpd"]["mean"] == pytest.approx(model.meta["metrics"]["val_bits_per_dim"], abs=1e-6)
    assert rec["stats"]["size_area"]["quantiles"]["50"] == float(seg[0].sum())
    assert rec["stats"]["sky_bpd"]["n"] == 3


def test_record_domain_logs_give_the_convergence_verdict_training_records(tmp_path):
    """--logs rebuilds metrics["convergence"] from the run's own CSV logs: the same verdict training wrote."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    from record_domain import record_domain

    from morphllr.data.imageset import write_imageset
    from morphllr.model.io import load_model
    from morphllr.train.run import train_model

    rng = np.random.default_rng(4)
    yy, xx = np.mgrid[:8, :8] - 3.5
    x = (np.exp(-(yy**2 + xx**2) / 4.0)[None] * rng.uniform(0.5, 1, (16, 1, 1))
         + 0.02 * rng.standard_normal((16, 8, 8)))[:, None]
    seg = np.broadcast_to((np.hypot(yy, xx) < 2.5).astype(np.uint8), (16, 8, 8))
    data = write_imageset(tmp_path / "d.h5", x.astype(np.float32), {"id": [f"g{i}" for i in range(16)]}, {},
                          segmap_model=seg)
    train_model(data, tmp_path / "m", max_steps=16, val_fraction=0.25, config="tiny", batch_size=4, augment="none",
                precision="32", progress=False, threads=1, warmup_steps=1)
    written = load_model(tmp_path / "m").meta["metrics"]["convergence"]
    meta_path = tmp_path / "m" / "model.json"
    meta = json.loads(meta_path.read_text())
    del meta["metrics"]["convergence"]  # a model from before convergence was recorded
    meta_path.write_text(json.dumps(meta))
    record_domain(tmp_path / "m", data, threads=1, say=lambda s: None, logs=tmp_path / "m")
    rebuilt = load_model(tmp_path / "m").meta["metrics"]["convergence"]
    assert [row[0] for row in rebuilt["history"]] == [row[0] for row in written["history"]]
    np.testing.assert_allclose([r[1] for r in rebuilt["history"]], [r[1] for r in written["history"]], rtol=1e-6)
    assert rebuilt["converged"] == written["converged"]
    with pytest.raises(MorphllrError, match="no logs"):
        record_domain(tmp_path / "m", data, threads=1, say=lambda s: None, logs=tmp_path)


# --------------------------------------------------------------------------- the shipped models
def test_shipped_models_carry_domain_records_and_still_load():
    from morphllr import demo
    from morphllr.model.ensemble import load_ensemble

    try:
        folders = demo.shipped_models()
    except MorphllrError as exc:
        pytest.skip(str(exc))
    for folder in folders:
        for m in load_ensemble(folder).members:
            rec = domain.domain_record(m)
            assert rec is not None and rec["images"] == "validation" and rec["sky_mask"] == "segmap"
            assert rec["stats"]["whole_bpd"]["mean"] == pytest.approx(m.meta["metrics"]["val_bits_per_dim"], abs=1e-9)
    for side in ("obs", "arch"):
        folder = REPO / "validation" / "models" / side
        if (folder / "model.json").is_file():
            m = load_ensemble(folder).members[0]
            assert domain.domain_record(m)["stats"]["whole_bpd"]["mean"] == pytest.approx(
                m.meta["metrics"]["val_bits_per_dim"], abs=1e-6)


# --------------------------------------------------------------------------- the measured cases on demo data
N_DEMO = 40  # the issue's noisy copies: the first 40 /flux cutouts of observed-test


@pytest.fixture(scope="module")
def demo_compare(tmp_path_factory):
    from morphllr import demo
    from morphllr.synth.sets import DEMO_SETS
    from morphllr.synth.universe import write_universe
    from morphllr.comparison.run import compare
    from morphllr.data.imageset import ImageSet
    from morphllr.data.prepare import write_flux_set

    try:
        obs_dir, arch_dir = demo.shipped_models()
    except MorphllrError as exc:
        pytest.skip(str(exc))
    folder = tmp_path_factory.mktemp("demo_domain")
    paths = write_universe(folder / "uni", sets=DEMO_SETS, n_train=10, n_test=N_DEMO, seed=0)
    with ImageSet.open(paths["observed-test"]) as s:
        flux = np.asarray(s.read_flux(np.arange(N_DEMO))) if hasattr(s, "read_flux") else np.asarray(
            s._file["flux"][:N_DEMO])
        ids = [str(i) for i in s.catalog["id"][:N_DEMO]]
    rng = np.random.default_rng(0)
    noisy = flux + rng.normal(0.0, 28.0, flux.shape).astype(np.float32)  # 5x the demo's sky noise
    write_flux_set(folder / "noisy.h5", noisy, {"id": [f"noisy-{i}" for i in ids]}, "zanisi21")
    sets = {name: paths[name] for name in DEMO_SETS if name != "observed-test"}
    sets["noisy"] = folder / "noisy.h5"
    with ImageSet.open(paths["observed-test"]) as s:
        from morphllr.data.imageset import write_imageset

        write_imageset(folder / "three.h5", np.asarray(s.images[:3]), s.catalog[:3], s.preprocessing,
                       segmap_model=np.asarray(s.segmap_model[:3]))
    sets["three"] = folder / "three.h5"
    out = folder / "report"
    result = compare(obs_dir, arch_dir, reference=("observed-test", paths["observed-test"]), sets=sets, out=out,
                     n_boot=100, matched_draws=10, gallery_size=2)
    return result, out, (obs_dir, arch_dir), folder


@pytest.mark.slow
def test_noisy_copies_small_sets_warn_and_demo_sets_do_not(demo_compare):
    result, out, _, _ = demo_compare
    s = result.summary
    noisy = _domain_warnings(s["sets"]["noisy"])
    assert noisy and any("sky bits/dim" in w for w in noisy), s["sets"]["noisy"]["warnings"]
    assert any("only 3 images" in w for w in s["sets"]["three"]["warnings"])
    for name in ["observed-test", "sim-good", "sim-softened", "sim-smooth", "archetypes", "three"]:
        assert _domain_warnings(s["sets"][name]) == [], (name, s["sets"][name]["warnings"])
        d = s["sets"][name]["domain"]
        assert d["arch"]["whole_bpd"] and d["size_area"]  # judged, per member
        # "three" has /segmap_model only, not the /segmap the records' sky came from: its sky is not judged
        assert bool(d["obs"].get("sky_bpd")) == (name != "three"), (name, d["obs"])
    assert len(s["sets"]["noisy"]["domain"]["obs"]["sky_bpd"]) == 3  # each member against its own record
    written = json.loads((out / "summary.json").read_text())
    assert written["warnings"] == s["warnings"] and all("warnings" in e for e in written["sets"].values())
    page = (out / "index.html").read_text()
    assert "id='warnings'" in page and "id='provenance'" in page and "class='warn'" in page
    assert page.index("id='warnings'") < page.index("id='ranking'")


@pytest.mark.slow
def test_score_warns_on_the_noisy_copies(demo_compare, tmp_path):
    from morphllr.errors import MorphllrWarning
    from morphllr.model.ensemble import load_ensemble
    from morphllr.score import score_to_files

    _, _, (obs_dir, _), folder = demo_compare
    model = load_ensemble(obs_dir)
    with pytest.warns(MorphllrWarning, match="sky bits/dim"):
        summary = score_to_files(model, folder / "noisy.h5", tmp_path / "s.csv", threads=1)
    assert summary["warnings"] and summary["domain"]["model"]["sky_bpd"]


@pytest.mark.slow
def test_compare_command_prints_the_warnings_after_the_ranking(demo_compare, tmp_path, capsys):
    from morphllr.cli import main

    _, _, (obs_dir, arch_dir), folder = demo_compare
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "--obs", str(obs_dir), "--arch", str(arch_dir), "--reference",
              f"obs={folder / 'noisy.h5'}", f"three={folder / 'three.h5'}", "--out", str(tmp_path / "r"),
              "--bootstrap", "20", "--gallery", "1"])
    assert exit_info.value.code == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert any("only 3 images" in line for line in lines) and any(OUT_OF_DOMAIN in line for line in lines)
    assert len(lines) == len(set(lines))  # printed once, not again by the warnings hook


# --------------------------------------------------------------------------- GZ2 (files not in git)
GZ2 = REPO / "runs" / "gz2"
GZ2_SETS = ("val_arch", "val_spirals", "val_non_spirals", "val_psf2x", "val_smooth_centre")


@pytest.mark.slow
def test_no_domain_warning_on_the_gz2_validation_sets_and_their_degraded_copies():
    from morphllr.comparison.run import compare

    models = REPO / "validation" / "models"
    needed = [GZ2 / f"{n}.h5" for n in ("val_real", *GZ2_SETS)]
    if not all(p.is_file() for p in needed) or not (models / "obs" / "model.json").is_file():
        pytest.skip("runs/gz2/val_*.h5 (made by validation/gz2.sh, not in git) or validation/models absent")
    res = compare(models / "obs", models / "arch", reference=("real", GZ2 / "val_real.h5"),
                  sets={n: GZ2 / f"{n}.h5" for n in GZ2_SETS}, n_boot=50, matched_draws=5, report=False)
    s = res.summary
    for name, entry in s["sets"].items():
        assert _domain_warnings(entry) == [], (name, entry["warnings"])
        assert entry["domain"]["obs"]["sky_bpd"] and entry["domain"]["size_area"]
    # the one other warning: an archetype whose central source segmentation did not find is left out (issue 16)
    others = [w for w in s["warnings"] if "has no central source" not in w]
    assert others == [], s["warnings"]
    assert all(s["sets"][n]["n_no_central"] == 0 for n in s["sets"] if n != "val_arch") and s["sets"]["val_arch"]["n_no_central"] <= 2


@pytest.mark.slow
def test_real_sdss_galaxies_under_the_demo_models_are_not_given_a_confident_answer(shared_data, tmp_path):
    """Issue 13's measured case: 3 real SDSS r galaxies + 3 mocks of a merger, scored with the synthetic-universe
    models, used to rank the mocks above the real galaxies with no warning.  Now: the reference's LLR <= 0, the
    small samples and the real galaxies' bits/dim far outside the demo models' training are all warned about."""
    from morphllr.cli import main
    from morphllr.comparison.run import compare
    from morphllr.demo import shipped_models

    def run(*argv):
        with pytest.raises(SystemExit) as exc:
            main([str(a) for a in argv])
        assert exc.value.code == 0, argv

    run("prepare", shared_data / "sdss_r_fits", "--preset", "zanisi21", "--out", tmp_path / "sdss.h5")
    run("mock", *sorted((shared_data / "realsim_idealized").glob("photo_r_*.fits")), "--band", "r", "--sky-sigma",
        "5.6", "--out", tmp_path / "merger.h5")
    obs, arch = shipped_models()
    result = compare(obs, arch, reference=("SDSS", tmp_path / "sdss.h5"), sets={"merger": tmp_path / "merger.h5"},
                     out=None, n_boot=50, matched_draws=5, report=False)
    warnings = result.summary["warnings"]
    assert result.summary["sets"]["SDSS"]["mean_llr"] <= 0
    assert any("SDSS (the reference): mean LLR" in w for w in warnings), warnings
    assert any(w.startswith("SDSS: only 3 images") for w in warnings) and any(w.startswith("merger: only 3") for w in warnings)
    assert any(w.startswith("SDSS: outside the models' domain") for w in warnings), warnings


def test_a_record_of_a_handful_of_images_is_not_judged():
    """With 1 or 5 validation images the quantiles have no usable spread: such a record judges nothing."""
    rng = np.random.default_rng(0)
    for n in (1, 5):
        rec = domain.describe(rng.normal(-2.0, 0.3, n))
        assert domain.judge(rng.normal(-2.0, 0.3, 300), rec, "sky_bpd") is None
    rec = domain.describe(rng.normal(-2.0, 0.3, 200))
    assert domain.judge(rng.normal(-2.0, 0.3, 300), rec, "sky_bpd")["fired"] is False
    assert domain.judge(rng.normal(+1.0, 0.3, 300), rec, "sky_bpd")["fired"] is True
