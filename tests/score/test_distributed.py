"""Scoring in several processes: shards, launch/join, agreement with one process, one-line refusals.

Two CPU processes (gloo) must give the files of one process within 1e-6 relative in fp32
(the forward pass is the same float32 arithmetic; bf16 autocast within the documented bf16
tolerance of tests/score/test_score.py: 1 % of sum |log p(pixel)| per image).  GPU tests skip here.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from morphllr import distributed
from morphllr.distributed import Context, detect_environment, launched_rank, resolve, shard_slices
from morphllr.errors import MorphllrError

H = W = 8
PREP = {"name": "test", "zoom": 0.5, "crop": 16, "stretch": "arcsinh", "stretch_scale": 1000.0, "clip_lo": -1.0,
        "clip_hi": 1.0, "pixel_scale": 0.396, "center": True, "quantise_8bit": False, "zero_point": None}
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "NODE_RANK", "MASTER_ADDR",
               "MASTER_PORT", "TORCHELASTIC_RUN_ID", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NODEID",
               "SLURM_JOB_NAME", "SLURM_JOB_ID", "SLURM_NTASKS_PER_NODE", "SLURM_NODELIST")
ENV = {**os.environ, "MORPHLLR_THREADS": "1", "PYTHONWARNINGS": "ignore"}
for _var in LAUNCH_VARS:
    ENV.pop(_var, None)


def _images(n: int, seed: int, shift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:H, :W]
    blob = np.exp(-((yy - 3.5) ** 2 + (xx - 3.5) ** 2) / 6.0)
    return (blob[None] * rng.uniform(0.3, 1, (n, 1, 1)) + 0.05 * rng.standard_normal((n, H, W)) + shift) \
        .astype(np.float32)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """Two tiny PixelCNNs (m0, m1), the ensemble ens = {seed0: m0, seed1: m1}, image files and image sets."""
    from morphllr.data.imageset import write_imageset
    from morphllr.model.pixelcnn import NETWORK_PRESETS, PixelCNN
    from morphllr.model.ensemble import write_ensemble_index
    from morphllr.model.io import save_model

    folder = tmp_path_factory.mktemp("dist")
    for seed in (0, 1):
        torch.manual_seed(seed)
        net = PixelCNN(NETWORK_PRESETS["tiny"])
        with torch.no_grad():
            for p in net.parameters():  # away from the near-identity start, so every layer matters
                p.add_(0.05 * torch.randn_like(p))
        for where in (folder / f"m{seed}", folder / "ens" / f"seed{seed}"):
            save_model(net.eval(), where, preprocessing=PREP, data_fingerprint=None, metrics={})
    write_ensemble_index(folder / "ens", [("seed0", 0, "seed0"), ("seed1", 1, "seed1")])
    np.save(folder / "x.npy", _images(37, 5))
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:2 * H, :2 * W]
    flux_seg = (np.hypot(yy - 7.5, xx - 7.5) < 5).astype(np.int32)  # /segmap: the sky split's mask
    central = (np.hypot(*(np.mgrid[:H, :W] - 3.5)) < 2.5).astype(np.uint8)  # /segmap_model: llr_segmap
    for name, n, shift in (("ref", 30, 0.0), ("sim", 13, 0.02)):
        cat = {"id": np.array([f"{name}-{i:03d}" for i in range(n)]), "log_mstar": rng.uniform(9.5, 11, n),
               "sersic_re_pix": rng.uniform(2, 6, n), "sersic_n": rng.uniform(0.8, 4, n)}
        write_imageset(folder / f"{name}.h5", _images(n, 10 + n, shift), cat, PREP,
                       flux=np.zeros((n, 2 * H, 2 * W), np.float32),
                       segmap=np.broadcast_to(flux_seg, (n, 2 * H, 2 * W)),
                       segmap_model=np.broadcast_to(central, (n, H, W)))
    return folder


def _morphllr(*args, env=None) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "morphllr", *map(str, args)], capture_output=True, text=True,
                          env=env or ENV, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _csv(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    rows = list(csv.reader(open(path)))
    return rows[0], [r[0] for r in rows[1:]], np.array([[float(v) for v in r[1:]] for r in rows[1:]])


def _close(a: np.ndarray, b: np.ndarray, rtol: float = 1e-6) -> None:
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * max(1.0, float(np.nanmax(np.abs(b)))) * 1e-3)


# --------------------------------------------------------------------------- shards, environments
@pytest.mark.parametrize("world", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("batch", [1, 4, 64])
def test_shards_cover_every_image_once_in_order(world, batch):
    for n in (0, 1, 2, 3, 5, 6, 7, 31, 64, 65, 100, 257, 1000, 4097):
        shards = shard_slices(n, world, batch)
        assert len(shards) == world
        covered = np.concatenate([np.arange(s.start, s.stop) for s in shards])
        np.testing.assert_array_equal(covered, np.arange(n))  # each image once, in input order, contiguous
        sizes = [s.stop - s.start for s in shards]
        aligned = n >= distributed.ALIGN_MIN_BATCHES * world * batch
        assert max(sizes) - min(sizes) <= (batch if aligned else 1), (n, sizes)
        if aligned:  # whole batches: every image lies in the batch one process would give it
            assert all(s.start % batch == 0 for s in shards)
    assert shard_slices(1, 4, 64) == [slice(0, 0), slice(0, 0), slice(0, 0), slice(0, 1)]  # N < world
    assert shard_slices(37, 2, 256) == [slice(0, 18), slice(18, 37)]
    ctx = Context()
    assert ctx.shard(5, 2) == slice(0, 5) and ctx.steps(5, 2) == 3 and ctx.gather(np.ones(2))[0].tolist() == [1, 1]


def test_rotation_draws_depend_only_on_seed_set_and_image():
    from morphllr.comparison.scoring import ROTATION_BLOCK, _rotation_draws

    n = 2 * ROTATION_BLOCK + 77
    whole = _rotation_draws(3, 1, 0, n, 2, False)
    pieces = np.concatenate([_rotation_draws(3, 1, a, min(n, a + 300), 2, False) for a in range(0, n, 300)], axis=1)
    np.testing.assert_array_equal(whole, pieces)
    assert whole.shape == (2, n) and 0 <= whole.min() and whole.max() < 180
    assert not np.array_equal(whole, _rotation_draws(3, 2, 0, n, 2, False))  # each set its own draws
    turns = _rotation_draws(0, 0, 5, 50, 3, True)
    assert turns.dtype == np.int64 and set(np.unique(turns)) <= {0, 1, 2, 3}


def test_launchers_are_detected_and_their_size_must_match(monkeypatch):
    for var in LAUNCH_VARS:
        monkeypatch.delenv(var, raising=False)
    assert detect_environment() is None and launched_rank() == 0 and resolve(2, "cpu").mode == "spawn"
    torchrun = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "1",
                "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500", "TORCHELASTIC_RUN_ID": "x"}
    with monkeypatch.context() as m:
        for k, v in torchrun.items():
            m.setenv(k, v)
        env = detect_environment()
        assert (env.rank, env.world, env.local_rank, env.local_world, env.node_rank) == (3, 4, 1, 2, 1)
        assert env.source == "torchrun" and env.from_env and launched_rank() == 3
        plan = resolve("1", "cpu")  # the defaults follow the launcher
        assert plan.mode == "join" and plan.world == 4
        assert resolve(2, "cpu", num_nodes=2).world == 4
        with pytest.raises(MorphllrError, match=r"--devices 3 --num-nodes 1 ask for 3 processes but torchrun "
                                                r"started 4; give --devices 2 --num-nodes 2"):
            resolve(3, "cpu")
    with monkeypatch.context() as m:  # Lightning's launcher: global rank = NODE_RANK * devices + LOCAL_RANK
        for k, v in {"LOCAL_RANK": "1", "NODE_RANK": "1", "WORLD_SIZE": "4", "MASTER_PORT": "29500"}.items():
            m.setenv(k, v)
        env = detect_environment(2)
        assert (env.rank, env.world, env.local_rank) == (3, 4, 1) and env.address == "127.0.0.1"
    with monkeypatch.context() as m:  # srun: SLURM's variables, Lightning's port rule
        for k, v in {"SLURM_NTASKS": "2", "SLURM_PROCID": "1", "SLURM_LOCALID": "1", "SLURM_NODEID": "0",
                     "SLURM_JOB_ID": "123456", "SLURM_NTASKS_PER_NODE": "2", "MASTER_ADDR": "node1"}.items():
            m.setenv(k, v)
        env = detect_environment()
        assert (env.rank, env.world, env.local_world, env.address, env.port) == (1, 2, 2, "node1", 15000 + 3456)
        m.setenv("SLURM_JOB_NAME", "interactive")  # salloc + interactive shell: not a task of a step
        assert detect_environment() is None
    with monkeypatch.context() as m:
        m.setenv("NODE_RANK", "1")
        assert launched_rank() == 1  # node 1 of --num-nodes: never claims the outputs
        with pytest.raises(MorphllrError, match="--num-nodes 2: no launcher found.*MASTER_ADDR"):
            resolve(1, "cpu", num_nodes=2)


# --------------------------------------------------------------------------- score
def test_score_two_processes_write_the_files_of_one(work, tmp_path):
    """CLI: an ensemble with maps; 37 images split unevenly between 2 gloo processes."""
    one = _morphllr("score", work / "x.npy", "--model", work / "ens", "--out", tmp_path / "1.csv", "--maps",
                    tmp_path / "1.h5", "--precision", "32", "-q")
    two = _morphllr("score", work / "x.npy", "--model", work / "ens", "--out", tmp_path / "2.csv", "--maps",
                    tmp_path / "2.h5", "--precision", "32", "-q", "--devices", "2", "--accelerator", "cpu")
    assert "in 2 CPU processes (gloo)" in two.stdout and "in 2 CPU" not in one.stdout
    head1, ids1, x1 = _csv(tmp_path / "1.csv")
    head2, ids2, x2 = _csv(tmp_path / "2.csv")
    assert head1 == head2 and ids2 == ids1 == [str(i) for i in range(37)]  # every image once, in input order
    _close(x2, x1)
    with h5py.File(tmp_path / "1.h5") as a, h5py.File(tmp_path / "2.h5") as b:
        assert sorted(a) == sorted(b) == ["logp", "logp_seed0", "logp_seed1"]
        for key in a:
            _close(b[key][:], a[key][:])
        assert list(b.attrs["members"]) == ["seed0", "seed1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1.csv", "1.h5", "2.csv", "2.h5"]  # no temporaries


def test_empty_shards_errors_and_bf16_across_processes(work, tmp_path):
    """Library: one image for two processes; a NaN in rank 1's shard; bf16 autocast within its tolerance."""
    from morphllr.model.ensemble import load_ensemble
    from morphllr.model.io import load_model
    from morphllr.score import log_likelihood, score_to_files

    model = load_model(work / "m0")
    one_image = _images(1, 3)
    score_to_files(model, one_image, tmp_path / "a1.csv", bf16=False, threads=1)
    summary = score_to_files(model, one_image, tmp_path / "a2.csv", bf16=False, threads=1, devices=2,
                             accelerator="cpu")
    assert summary["n"] == 1 and summary["processes"] == 2  # rank 1 had nothing to score
    assert (tmp_path / "a1.csv").read_text() == (tmp_path / "a2.csv").read_text()

    bad = np.load(work / "x.npy")
    bad[30, 2, 2] = np.nan  # rank 1 holds images 18..36 (default batch: split by images)
    with pytest.raises(MorphllrError, match=r"image\(s\) 30\b"):
        score_to_files(model, bad, tmp_path / "bad.csv", maps_path=tmp_path / "bad.h5", bf16=False, threads=1,
                       devices=2, accelerator="cpu")
    assert not (tmp_path / "bad.csv").exists() and not (tmp_path / "bad.h5").exists()

    ens = load_ensemble(work / "ens")
    x = np.load(work / "x.npy")
    score_to_files(ens, x, tmp_path / "b16.csv", bf16=True, threads=1, devices=2, accelerator="cpu")
    _, _, got = _csv(tmp_path / "b16.csv")  # logp, bpd, logp_std, logp_seed0, bpd_seed0, logp_seed1, bpd_seed1
    fp32_maps = log_likelihood(ens, x, per_pixel=True, bf16=False, threads=1)  # (K, N, H, W)
    scale = np.abs(fp32_maps).sum(axis=(-2, -1))
    for k, col in enumerate((3, 5)):  # the documented bf16 tolerance: 1 % of sum |log p(pixel)| per image
        assert np.all(np.abs(got[:, col] - fp32_maps[k].sum(axis=(-2, -1))) <= 0.01 * scale[k])
    one_bf16 = log_likelihood(ens, x, bf16=True, threads=1)
    assert np.all(np.abs(got[:, [3, 5]].T - one_bf16) <= 0.01 * scale)


def test_torchrun_processes_join_instead_of_spawning(work, tmp_path):
    one = tmp_path / "one.csv"
    _morphllr("score", work / "x.npy", "--model", work / "m1", "--out", one, "--precision", "32", "-q")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "morphllr", "score", work / "x.npy", "--model", work / "m1", "--out",
                           tmp_path / "tr.csv", "--precision", "32", "-q", "--accelerator", "cpu"],
                          capture_output=True, text=True, env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("scored 37 images in 2 CPU processes (gloo), joined from torchrun") == 1  # rank 0 only
    _close(_csv(tmp_path / "tr.csv")[2], _csv(one)[2])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.csv", "tr.csv"]


# --------------------------------------------------------------------------- compare
def test_compare_two_processes_give_the_numbers_of_one(work, tmp_path):
    from morphllr.comparison.run import compare

    kw = dict(reference=("ref", work / "ref.h5"), sets={"sim": work / "sim.h5"}, maps="all", batch_size=4,
              n_boot=60, matched_draws=20, gallery_size=3, report=False, accelerator="cpu", threads=1)
    r1 = compare(work / "ens", work / "m1", out=tmp_path / "r1", **kw)
    r2 = compare(work / "ens", work / "m1", out=tmp_path / "r2", devices=2, **kw)
    assert r2.timing["processes"] == 2 and r1.timing["processes"] == 1

    def numbers(value, path=""):
        if isinstance(value, dict):
            return {k2: v2 for k, v in value.items() if k != "timing" for k2, v2 in numbers(v, f"{path}/{k}").items()}
        if isinstance(value, list):
            return {k2: v2 for i, v in enumerate(value) for k2, v2 in numbers(v, f"{path}/{i}").items()}
        return {path: value}

    s1 = numbers(json.loads((tmp_path / "r1" / "summary.json").read_text()))
    s2 = numbers(json.loads((tmp_path / "r2" / "summary.json").read_text()))
    assert s1.keys() == s2.keys() and s1["/sets/sim/sky/mask"] == "segmap"
    for key, v in s1.items():
        if isinstance(v, float) and not isinstance(v, bool):
            # float32 rounding of other batch shapes: a shard whose last batch holds one image runs oneDNN's
            # batch-1 convolutions, whose per-pixel log p differ by up to ~6e-5 relative (1e-7 per image; Zen 3)
            assert s2[key] == pytest.approx(v, rel=1e-5, abs=1e-9), key
        else:
            assert s2[key] == v, key
    h1, t1 = (lambda rows: (rows[0], rows[1:]))(list(csv.reader(open(tmp_path / "r1" / "scores.csv"))))
    h2, t2 = (lambda rows: (rows[0], rows[1:]))(list(csv.reader(open(tmp_path / "r2" / "scores.csv"))))
    assert h1 == h2 and "logp_obs_seed1" in h1 and len(t1) == len(t2) == 43
    assert [r[:2] for r in t1] == [r[:2] for r in t2]  # set, id: every image once, in input order
    for col in range(2, len(h1)):
        try:
            a, b = np.array([float(r[col]) for r in t1]), np.array([float(r[col]) for r in t2])
        except ValueError:
            assert [r[col] for r in t1] == [r[col] for r in t2]
            continue
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-9, err_msg=h1[col])
    with h5py.File(tmp_path / "r1" / "maps.h5") as a, h5py.File(tmp_path / "r2" / "maps.h5") as b:
        for group in ("ref", "sim"):
            for key in ("llr", "logp_obs", "logp_arch"):
                _close(b[group][key][:], a[group][key][:], rtol=1e-5)
    for name in ("ref", "sim"):  # mean maps, radial profiles and galleries (re-scored on rank 0)
        x, y = r1.sets[name], r2.sets[name]
        np.testing.assert_allclose(y.mean_map, x.mean_map, rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(y.profile_pix, x.profile_pix, rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(y.profile_re, x.profile_re, rtol=1e-5, atol=1e-9)
        for key, g in x.gallery.items():
            np.testing.assert_array_equal(y.gallery[key]["indices"], g["indices"])
            np.testing.assert_allclose(y.gallery[key]["map_obs"], g["map_obs"], rtol=1e-5, atol=1e-9)


# --------------------------------------------------------------------------- refusals
def _refused(argv, capsys) -> str:
    from morphllr.cli import main

    with pytest.raises(SystemExit) as stop:
        main([str(a) for a in argv])
    _, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert stop.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.mark.parametrize("extra,fragment", [
    (["--devices", "0"], "--devices '0'"), (["--devices", "abc"], "--devices 'abc'"),
    (["--devices", "-3"], "--devices '-3'"), (["--devices", "5000"], "(1..4096)"),
    (["--devices", "0,1", "--accelerator", "cpu"], "GPU indices and -1 (all GPUs) need --accelerator cuda"),
    (["--accelerator", "tpu"], "--accelerator 'tpu': choose cpu, cuda"),
    (["--num-nodes", "2", "--accelerator", "cpu"], "--num-nodes 2: no launcher found"),
    (["--num-nodes", "0"], "--num-nodes 0"),
])
def test_bad_devices_values_are_one_error_line(work, tmp_path, capsys, monkeypatch, extra, fragment):
    for var in LAUNCH_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    line = _refused(["score", work / "x.npy", "--model", work / "m0", "--out", tmp_path / "s.csv", *extra], capsys)
    assert fragment in line
    line = _refused(["compare", "--obs", work / "m0", "--arch", work / "m1", "--reference", f"R={work / 'ref.h5'}",
                     "--out", tmp_path / "rep", *extra], capsys)
    assert fragment in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is visible")
def test_cuda_without_a_gpu_is_one_error_line(work, tmp_path, capsys):
    line = _refused(["score", work / "x.npy", "--model", work / "m0", "--out", tmp_path / "s.csv",
                     "--accelerator", "cuda"], capsys)
    assert "--accelerator cuda:" in line and "use --accelerator cpu" in line
    assert resolve("auto", "auto").accelerator == "cpu"


def test_help_texts_describe_devices(capsys):
    from morphllr.cli import main

    for command in ("score", "compare"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        for word in ("--devices", "--num-nodes", "--accelerator", "torchrun", "gloo", "NCCL"):
            assert word in text, (command, word)


# --------------------------------------------------------------------------- CUDA (skipped without GPUs)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
def test_cuda_scores_match_the_cpu_within_the_bf16_tolerance(work, tmp_path):
    from morphllr.model.io import load_model
    from morphllr.score import log_likelihood, score_to_files

    plan = resolve(1, "cuda")
    assert plan.accelerator == "cuda" and plan.gpu_ids == (0,)
    assert plan.backend == ("nccl" if torch.distributed.is_nccl_available() else "gloo")
    model = load_model(work / "m0")
    x = np.load(work / "x.npy")
    score_to_files(model, x, tmp_path / "g.csv", maps_path=tmp_path / "g.h5", accelerator="cuda")  # bf16 if any
    assert next(model.net.parameters()).device.type == "cpu"  # moved back after scoring
    fp32 = log_likelihood(model, x, per_pixel=True, bf16=False, threads=1)
    got = _csv(tmp_path / "g.csv")[2][:, 0]
    scale = np.abs(fp32).sum(axis=(1, 2))
    assert np.all(np.abs(got - fp32.sum(axis=(1, 2))) <= 0.01 * scale)
    score_to_files(model, x, tmp_path / "g32.csv", bf16=False, accelerator="cuda")
    np.testing.assert_allclose(_csv(tmp_path / "g32.csv")[2][:, 0], fp32.sum(axis=(1, 2)), rtol=1e-4, atol=1e-3)


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
def test_two_gpus_write_the_file_of_one(work, tmp_path):
    _morphllr("score", work / "x.npy", "--model", work / "ens", "--out", tmp_path / "1.csv", "--precision", "32", "-q",
              "--accelerator", "cuda")
    _morphllr("score", work / "x.npy", "--model", work / "ens", "--out", tmp_path / "2.csv", "--precision", "32", "-q",
              "--accelerator", "cuda", "--devices", "2")
    _close(_csv(tmp_path / "2.csv")[2], _csv(tmp_path / "1.csv")[2], rtol=1e-5)
