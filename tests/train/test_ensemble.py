"""Ensembles (issue #12): `train --seeds` folders, load_ensemble's checks, scoring every member."""

from __future__ import annotations

import csv
import json
import os
import shutil

import numpy as np
import pytest
import torch

from clitools import galaxies, run
from morphllr.cli import main
from morphllr.errors import MorphllrError
from morphllr.data.inputs import file_sha256
from morphllr.model.ensemble import Ensemble, is_ensemble, load_ensemble
from morphllr.model.io import ENSEMBLE_FILE, META_FILE, WEIGHTS_FILE, load_model
from morphllr.score import log_likelihood

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--preset", "tiny", "--batch-size", "4", "--precision", "32", "--threads", "1", "--quiet",
        "--warmup-steps", "1", "--augment", "rot,flip"]
SCORE = ["--precision", "32", "--threads", "1", "--quiet"]


def refused(argv, capsys, *fragments: str) -> str:
    """Exit 2 with exactly one ``error:`` line (no traceback) holding every fragment."""
    code, _, err = run(argv, capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """`morphllr train --seeds 0,1` on 12 tiny images (shared, read-only: tests copy before damaging)."""
    root = tmp_path_factory.mktemp("ens")
    np.save(root / "train.npy", galaxies(12))
    np.save(root / "x.npy", galaxies(5, seed=7))
    try:
        main(["train", str(root / "train.npy"), "--out", str(root / "ens"), "--seeds", "0,1", "--max-steps", "3",
              *TINY])
    except SystemExit as exc:
        assert exc.code == 0
    return root


def copy_ensemble(trained, tmp_path):
    dst = tmp_path / "ens"
    shutil.copytree(trained / "ens", dst, ignore=shutil.ignore_patterns("checkpoints", "logs"))
    return dst


def edit_json(path, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def rehash(ens, name):
    """Record member ``name``'s current model.json in the index (a consistent, but edited, ensemble)."""
    index = json.loads((ens / ENSEMBLE_FILE).read_text())
    for member in index["members"]:
        if member["name"] == name:
            member["model_json_sha256"] = file_sha256(ens / name / META_FILE)
    (ens / ENSEMBLE_FILE).write_text(json.dumps(index))


# ---------------------------------------------------------------------- the folder
def test_train_seeds_writes_two_different_members_and_an_index_of_their_hashes(trained):
    ens = trained / "ens"
    index = json.loads((ens / ENSEMBLE_FILE).read_text())
    assert index["format"] == "morphllr.ensemble" and index["format_version"] == 1
    assert [(m["name"], m["seed"], m["path"]) for m in index["members"]] == [("seed0", 0, "seed0"), ("seed1", 1, "seed1")]
    for member in index["members"]:
        folder = ens / member["path"]
        assert member["model_json_sha256"] == file_sha256(folder / META_FILE)
        assert member["weights_sha256"] == file_sha256(folder / WEIGHTS_FILE)
        meta = json.loads((folder / META_FILE).read_text())
        assert meta["extra"]["training"]["seed"] == member["seed"]
        assert meta["data_fingerprint"] == index["data_fingerprint"] and meta["config"] == index["config"]
    assert index["created_by"] and index["head"] == "gaussian" and index["preprocessing"] == {}
    a, b = (load_model(ens / f"seed{k}").net.state_dict() for k in (0, 1))
    assert any(not torch.equal(a[name], b[name]) for name in a)  # other seed, other weights
    assert sorted(os.listdir(ens)) == [ENSEMBLE_FILE, "seed0", "seed1"]  # no lock, no temporary
    assert not [p for p in os.listdir(trained) if p.startswith(".")]


def test_load_ensemble_scores_each_member_exactly_as_load_model_does(trained):
    ens = load_ensemble(trained / "ens")
    assert is_ensemble(trained / "ens") and not is_ensemble(trained / "ens" / "seed0")
    assert len(ens) == 2 and ens.names == ["seed0", "seed1"] and ens.seeds == [0, 1]
    assert ens.head == "gaussian" and ens.config.height == 8 and ens.preprocessing == {}
    assert ens.data_fingerprint == ens.index["data_fingerprint"] and ens["seed1"] is ens.members[1]
    x = np.load(trained / "x.npy")
    both = log_likelihood(ens, x, bf16=False, threads=1)
    assert both.shape == (2, 5) and both.dtype == np.float64
    for k, name in enumerate(ens.names):
        alone = log_likelihood(load_model(trained / "ens" / name), x, bf16=False, threads=1)
        assert np.array_equal(both[k], alone)  # bit-identical
    maps = log_likelihood(ens, x, per_pixel=True, bf16=False, threads=1)
    assert maps.shape == (2, 5, 8, 8)
    np.testing.assert_allclose(maps.sum(axis=(2, 3)), both, rtol=1e-6)
    # a plain model folder is a 1-member ensemble; the leading axis stays
    single = load_ensemble(trained / "ens" / "seed0")
    assert len(single) == 1 and single.index is None and single.names == ["seed0"]
    assert np.array_equal(log_likelihood(single, x, bf16=False, threads=1), both[:1])
    import morphllr

    assert morphllr.load_ensemble is load_ensemble


def test_load_model_on_an_ensemble_points_to_load_ensemble(trained):
    with pytest.raises(MorphllrError, match="is an ensemble.*load_ensemble"):
        load_model(trained / "ens")


def test_from_models_builds_and_checks_an_ensemble_in_memory(trained):
    from morphllr.model.pixelcnn import NETWORK_PRESETS, PixelCNN

    models = [load_model(trained / "ens" / f"seed{k}") for k in (0, 1)]
    ens = Ensemble.from_models(models)
    assert ens.names == ["seed0", "seed1"] and len(ens) == 2 and ens.path is None
    assert Ensemble.from_models(models, names=["a", "b"]).names == ["a", "b"]
    torch.manual_seed(0)
    nets = [PixelCNN(NETWORK_PRESETS["tiny"]), PixelCNN(NETWORK_PRESETS["tiny"])]
    assert Ensemble.from_models(nets).names == ["member0", "member1"]
    with pytest.raises(MorphllrError, match="different network configs.*nr_filters"):
        Ensemble.from_models([nets[0], PixelCNN(NETWORK_PRESETS["tiny"].with_(nr_filters=4))])
    other = load_model(trained / "ens" / "seed1")
    other.meta["data_fingerprint"] = "another set"
    with pytest.raises(MorphllrError, match="seed0 and seed1 were trained on different images"):
        Ensemble.from_models([models[0], other])
    with pytest.raises(MorphllrError, match="names repeat"):
        Ensemble.from_models(models, names=["a", "a"])


# ---------------------------------------------------------------------- scoring through the CLI
def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_score_writes_per_member_columns_equal_to_single_model_scores(trained, tmp_path, capsys):
    code, out, err = run(["score", trained / "x.npy", "--model", trained / "ens", "--out", tmp_path / "s.csv",
                          "--maps", tmp_path / "m.h5", *SCORE], capsys)
    assert code == 0, err
    assert "scored 5 images" in out and "std over 2" in out
    rows = read_csv(tmp_path / "s.csv")
    assert list(rows[0]) == ["id", "logp", "bits_per_dim", "logp_std", "logp_seed0", "bits_per_dim_seed0",
                             "logp_seed1", "bits_per_dim_seed1"]
    for name in ("seed0", "seed1"):
        single = tmp_path / f"{name}.csv"
        code, _, err = run(["score", trained / "x.npy", "--model", trained / "ens" / name, "--out", single, *SCORE],
                           capsys)
        assert code == 0, err
        alone = read_csv(single)
        assert list(alone[0]) == ["id", "logp", "bits_per_dim"]  # a plain model keeps its columns
        assert [r[f"logp_{name}"] for r in rows] == [r["logp"] for r in alone]  # the same digits
        assert [r[f"bits_per_dim_{name}"] for r in rows] == [r["bits_per_dim"] for r in alone]
    members = np.array([[float(r[f"logp_seed{k}"]) for r in rows] for k in (0, 1)])
    np.testing.assert_allclose([float(r["logp"]) for r in rows], members.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose([float(r["logp_std"]) for r in rows], members.std(axis=0, ddof=1), rtol=1e-9)
    import h5py

    with h5py.File(tmp_path / "m.h5") as fh:
        assert {"logp", "logp_seed0", "logp_seed1"} <= set(fh) and list(fh.attrs["members"]) == ["seed0", "seed1"]
        for k in (0, 1):
            np.testing.assert_allclose(fh[f"logp_seed{k}"][:].sum(axis=(1, 2)), members[k], rtol=1e-5)
        np.testing.assert_allclose(fh["logp"][:].sum(axis=(1, 2)), members.mean(axis=0), rtol=1e-5)


# ---------------------------------------------------------------------- damaged ensembles: one line each
def _flip_weights(ens):
    path = ens / "seed1" / WEIGHTS_FILE
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x55
    path.write_bytes(bytes(data))


def _edit_member_json(ens):
    edit_json(ens / "seed1" / META_FILE, metrics={"val_bits_per_dim": -99.0})


def _extra_member(ens):
    index = json.loads((ens / ENSEMBLE_FILE).read_text())
    index["members"].append({**index["members"][0], "name": "seed2", "seed": 2, "path": "seed2"})
    (ens / ENSEMBLE_FILE).write_text(json.dumps(index))


def _edit_config(path, **changes):
    meta = json.loads(path.read_text())
    meta["config"].update(changes)  # the weights still fit: only the ensemble check can see it
    path.write_text(json.dumps(meta))


DAMAGE = {
    "deleted-weights": (lambda e: (e / "seed1" / WEIGHTS_FILE).unlink(), ["seed1", WEIGHTS_FILE, "missing"]),
    "deleted-model-json": (lambda e: (e / "seed0" / META_FILE).unlink(), ["seed0", META_FILE, "missing"]),
    "tampered-weights": (_flip_weights, ["seed1", WEIGHTS_FILE, "does not match its sha256"]),
    "tampered-model-json": (_edit_member_json, ["seed1", META_FILE, "does not match its sha256"]),
    "deleted-member": (lambda e: shutil.rmtree(e / "seed1"), ["member seed1", "is missing", "--resume"]),
    "index-names-missing-member": (_extra_member, ["member seed2", "is missing"]),
    "index-not-json": (lambda e: (e / ENSEMBLE_FILE).write_text("{broken"), [ENSEMBLE_FILE, "not valid JSON"]),
    "index-newer": (lambda e: edit_json(e / ENSEMBLE_FILE, format_version=2), ["newer morphllr", "upgrade"]),
    "other-data": (lambda e: (edit_json(e / "seed1" / META_FILE, data_fingerprint="f" * 64), rehash(e, "seed1")),
                   ["seed0 and seed1 were trained on different images"]),
    "other-network": (lambda e: (_edit_config(e / "seed1" / META_FILE, dropout=0.5), rehash(e, "seed1")),
                      ["seed0 and seed1 have different network configs", "dropout: 0.0 vs 0.5"]),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_a_damaged_ensemble_is_refused_in_one_line(trained, tmp_path, capsys, case):
    damage, fragments = DAMAGE[case]
    ens = copy_ensemble(trained, tmp_path)
    damage(ens)
    line = refused(["score", trained / "x.npy", "--model", ens, "--out", tmp_path / "s.csv", *SCORE], capsys,
                   str(ens), *fragments)
    assert len(line.replace(str(ens), "ENS")) < 300
    assert not (tmp_path / "s.csv").exists()


# ---------------------------------------------------------------------- train options
def test_seed_and_seeds_exclude_each_other_and_bad_seeds_are_refused(trained, tmp_path, capsys):
    base = ["train", trained / "train.npy", "--out", tmp_path / "e", "--max-steps", "1", *TINY]
    refused([*base, "--seed", "3", "--seeds", "0,1"], capsys, "--seed 3 and --seeds 0,1", "give one of them")
    refused([*base, "--seeds", "0,0"], capsys, "--seeds 0,0", "given twice")
    refused([*base, "--seeds", "a,b"], capsys, "--seeds a,b", "comma list")
    refused([*base, "--seeds", "3-1"], capsys, "--seeds 3-1")
    assert list(tmp_path.iterdir()) == []


def test_an_existing_ensemble_needs_overwrite_and_is_not_a_single_model(trained, tmp_path, capsys):
    ens = copy_ensemble(trained, tmp_path)
    before = file_sha256(ens / ENSEMBLE_FILE)
    base = ["train", trained / "train.npy", "--out", ens, "--max-steps", "1", *TINY]
    refused([*base, "--seeds", "0,1"], capsys, "already holds a finished ensemble", "--overwrite")
    refused(base, capsys, "already holds a finished ensemble", "--overwrite")
    refused([*base, "--resume"], capsys, "holds an ensemble", "--seeds 0,1 --resume")
    refused([*base, "--seeds", "0", "--resume"], capsys, "seed1", "--seeds 0 does not name")
    (ens / "notes.txt").write_text("mine")
    refused([*base, "--seeds", "0,1", "--overwrite"], capsys, "did not write", "notes.txt")
    assert file_sha256(ens / ENSEMBLE_FILE) == before
    assert load_ensemble(ens).names == ["seed0", "seed1"]


def test_prepare_like_reads_an_ensembles_preprocessing(trained, tmp_path):
    from morphllr.cli.data import preprocessing_like
    from morphllr.data.preprocess import Preprocessing

    ens = copy_ensemble(trained, tmp_path)
    recipe = Preprocessing.preset("zanisi21")
    edit_json(ens / ENSEMBLE_FILE, preprocessing=recipe.to_dict())
    assert preprocessing_like(ens) == recipe


class _InterruptMember:
    """Ctrl-C in member ``name`` after ``steps`` optimizer steps (the earlier members finish)."""

    def __init__(self, name: str, steps: int):
        import lightning.pytorch as L

        class Callback(L.Callback):
            def on_train_batch_end(cb, trainer, pl_module, outputs, batch, batch_idx):
                if trainer.default_root_dir.endswith(name) and trainer.global_step >= steps:
                    raise KeyboardInterrupt

        self.callback = Callback()


def test_an_interrupted_ensemble_leaves_no_index_and_resumes_its_unfinished_member(tmp_path, capsys):
    from morphllr.train.ensemble import train_ensemble

    x = galaxies(12)
    out = tmp_path / "ens"
    fast = dict(config="tiny", batch_size=4, augment="none", precision="32", progress=False, threads=1,
                warmup_steps=1, max_steps=6, val_fraction=0.25)
    with pytest.raises(KeyboardInterrupt):
        train_ensemble(x, out, [0, 1], callbacks=[_InterruptMember("seed1", 4).callback], **fast)
    assert not (out / ENSEMBLE_FILE).exists() and (out / "seed0" / META_FILE).is_file()
    assert not (out / "seed1" / META_FILE).exists()
    with pytest.raises(MorphllrError, match="unfinished ensemble.*--seeds 0,1 --resume"):
        load_ensemble(out)
    np.save(tmp_path / "x.npy", x)
    refused(["score", tmp_path / "x.npy", "--model", out, "--out", tmp_path / "s.csv"], capsys,
            "unfinished ensemble", "--resume")
    with pytest.raises(MorphllrError, match="unfinished ensemble run.*--resume"):
        train_ensemble(x, out, [0, 1], **fast)
    seed0 = file_sha256(out / "seed0" / WEIGHTS_FILE)
    result = train_ensemble(x, out, [0, 1], resume=True, **fast)
    assert result.trained == ["seed1"] and file_sha256(out / "seed0" / WEIGHTS_FILE) == seed0  # kept, not retrained
    ens = load_ensemble(out)
    assert ens.names == ["seed0", "seed1"]
    assert [m.meta["metrics"]["steps"] for m in ens.members] == [6, 6]
    assert (out / "seed1" / "logs" / "resume1").is_dir()  # continued from its checkpoint
    # members share the network config, input mapping included (fixed once for the ensemble)
    assert ens.members[0].config == ens.members[1].config


# ---------------------------------------------------------------------- joining separately trained models
def test_ensemble_command_joins_separately_trained_models_and_refuses_misfits(trained, tmp_path, capsys):
    """One job per seed, then `morphllr ensemble`: the same members as `train --seeds` wrote, or one-line refusals."""
    code, _, err = run(["ensemble", trained / "ens" / "seed0", trained / "ens" / "seed1", "--out", tmp_path / "j"],
                       capsys)
    assert code == 0, err
    joined, direct = load_ensemble(tmp_path / "j"), load_ensemble(trained / "ens")
    assert joined.names == direct.names == ["seed0", "seed1"]
    x = galaxies(5, seed=7)
    for a, b in zip(joined.members, direct.members):
        np.testing.assert_array_equal(log_likelihood(a, x, bf16=False), log_likelihood(b, x, bf16=False))
    # the same seed twice, and a model of other images: refused, nothing written
    refused(["ensemble", trained / "ens" / "seed0", trained / "ens" / "seed0", "--out", tmp_path / "same"], capsys,
            "same seed", "seed0")
    np.save(tmp_path / "other.npy", galaxies(12, seed=3))
    code, _, err = run(["train", tmp_path / "other.npy", "--out", tmp_path / "other", "--seed", "2", "--max-steps", "3",
                        *TINY], capsys)
    assert code == 0, err
    refused(["ensemble", trained / "ens" / "seed0", tmp_path / "other", "--out", tmp_path / "mixed"], capsys,
            "different images", str(tmp_path / "other"))
    assert not (tmp_path / "same").exists() and not (tmp_path / "mixed").exists()
    refused(["ensemble", trained / "ens" / "seed0", trained / "ens" / "seed1", "--out", tmp_path / "j"], capsys,
            "--overwrite")


def test_ensemble_joins_auto_input_norm_members_but_refuses_other_recipes(tmp_path, capsys):
    """Separate `--seed K` jobs with --input-norm auto differ only in the network's input mapping (densities stay in
    the data's units), so they join; a member trained with other steps does not (seed noise would be recipe noise)."""
    np.save(tmp_path / "g.npy", galaxies(12))
    for seed, steps in ((0, 2), (1, 2), (2, 3)):
        code, _, err = run(["train", tmp_path / "g.npy", "--out", tmp_path / f"m{seed}", "--seed", seed, "--max-steps",
                            steps, "--input-norm", "auto", *TINY], capsys)
        assert code == 0, err
    scales = {json.loads((tmp_path / f"m{k}" / META_FILE).read_text())["config"]["input_scale"] for k in (0, 1)}
    assert len(scales) == 2  # the auto mapping does depend on the seed's split
    code, _, err = run(["ensemble", tmp_path / "m0", tmp_path / "m1", "--out", tmp_path / "ens"], capsys)
    assert code == 0, err
    assert load_ensemble(tmp_path / "ens").names == ["seed0", "seed1"]
    refused(["ensemble", tmp_path / "m0", tmp_path / "m2", "--out", tmp_path / "bad"], capsys, "different recipes",
            "steps")
