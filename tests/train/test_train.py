"""Training: it learns, it resumes, it protects folders, augmentations keep what they must."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from clitools import galaxies
from morphllr.errors import MorphllrError
from morphllr.model.pixelcnn import NETWORK_PRESETS, PixelCNN
from morphllr.data.imageset import sketch_batches, sketch_difference
from morphllr.model.io import load_model
from morphllr.score import log_likelihood
from morphllr.train.augment import augment_batch, rotate_continuous, rotate_lossless
from morphllr.train.batches import split_indices
from morphllr.train.run import train_model
from morphllr.train.trainer import InterruptAfter

FAST = dict(config="tiny", batch_size=4, augment="none", precision="32", progress=False, threads=1,
            warmup_steps=5)


def _bpd(net_or_model, x: np.ndarray) -> float:
    return float(-log_likelihood(net_or_model, x, bf16=False, threads=1).mean() / (x[0].size * np.log(2)))


def test_overfitting_a_handful_of_images_drives_bits_per_dim_down(tmp_path):
    x = galaxies(8)
    torch.manual_seed(0)
    start = _bpd(PixelCNN(NETWORK_PRESETS["tiny"]), x)
    result = train_model(x, tmp_path / "m", max_steps=60, lr=1e-2, val_fraction=0.0, seed=0,
                         **{**FAST, "batch_size": 8})
    model = load_model(tmp_path / "m")
    end = _bpd(model, x)
    # the noise is 0.02 wide (about -3.5 bits/dim for a perfect model); a random net is near +1
    assert end < start - 2.0, (start, end)
    assert result.metrics["train_bits_per_dim"] == pytest.approx(end, abs=1e-3)
    assert result.metrics["val_bits_per_dim"] is None and result.metrics["steps"] == 60
    meta = model.meta
    source = __import__("morphllr.data.inputs").data.inputs.open_images(x)
    assert meta["data_fingerprint"] == source.fingerprint()
    # for sets rebuilt on another CPU kind (other batching: the same sketch up to summation order)
    assert sketch_difference(meta["data_sketch"], sketch_batches(source.batches(3))) < 1e-12
    assert (tmp_path / "m" / "checkpoints" / "last.ckpt").is_file()
    assert (tmp_path / "m" / "logs" / "metrics.csv").is_file()


def test_validation_split_is_seeded_and_disjoint():
    tr, va = split_indices(50, 0.2, seed=3)
    assert len(va) == 10 and len(tr) == 40 and not set(tr) & set(va) and set(tr) | set(va) == set(range(50))
    tr2, va2 = split_indices(50, 0.2, seed=3)
    assert np.array_equal(va, va2)
    assert not np.array_equal(va, split_indices(50, 0.2, seed=4)[1])
    assert len(split_indices(5, 0.01, 0)[1]) == 1  # a requested split is never empty
    with pytest.raises(MorphllrError, match="--val-fraction"):
        split_indices(10, 1.0, 0)


def test_interrupted_run_resumes_to_the_same_step_with_checkpoints_loaded_safely(tmp_path, monkeypatch):
    x = galaxies(12, seed=1)
    out = tmp_path / "m"
    # 10 training images / batch 4 -> 3 steps per epoch; interrupt during epoch 3
    with pytest.raises(KeyboardInterrupt):
        train_model(x, out, max_steps=12, val_fraction=0.2, callbacks=[InterruptAfter(7)], **FAST)
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert not (out / "model.json").exists()  # an interrupted run never looks finished
    with pytest.raises(MorphllrError, match="unfinished training run.*--resume"):
        train_model(x, out, max_steps=12, val_fraction=0.2, **FAST)

    loads = []
    real_load = torch.load

    def spy(*args, **kwargs):
        loads.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    result = train_model(x, out, max_steps=12, val_fraction=0.2, resume=True, **FAST)
    assert loads and all(w is True for w in loads)  # no checkpoint was ever unpickled freely
    assert result.metrics["steps"] == 12
    # the interrupted run's log survives next to the resumed run's
    assert (out / "logs" / "metrics.csv").is_file() and (out / "logs" / "resume1" / "metrics.csv").is_file()
    model = load_model(out)
    assert model.meta["metrics"]["steps"] == 12
    assert np.isfinite(log_likelihood(model, x, bf16=False, threads=1)).all()


def test_resume_refuses_different_data(tmp_path):
    out = tmp_path / "m"
    train_model(galaxies(8), out, max_steps=2, val_fraction=0.0, **FAST)
    with pytest.raises(MorphllrError, match="different training images"):
        train_model(galaxies(8, seed=9), out, max_steps=4, val_fraction=0.0, resume=True, **FAST)


def test_finished_and_foreign_folders_are_protected(tmp_path):
    out = tmp_path / "m"
    train_model(galaxies(8), out, max_steps=1, val_fraction=0.0, **FAST)
    before = (out / "weights.safetensors").read_bytes()
    with pytest.raises(MorphllrError, match="finished model.*--overwrite"):
        train_model(galaxies(8), out, max_steps=1, val_fraction=0.0, **FAST)
    assert (out / "weights.safetensors").read_bytes() == before
    (out / "notes.txt").write_text("mine")
    with pytest.raises(MorphllrError, match="did not write.*notes.txt"):
        train_model(galaxies(8), out, max_steps=1, val_fraction=0.0, overwrite=True, **FAST)
    assert (out / "notes.txt").exists()
    (out / "notes.txt").unlink()
    train_model(galaxies(8), out, max_steps=1, val_fraction=0.0, overwrite=True, seed=5, **FAST)
    assert load_model(out).meta["metrics"]["steps"] == 1


def test_bad_training_data_fails_before_creating_anything(tmp_path):
    x = galaxies(8)
    x[3, 1, 1] = np.nan
    with pytest.raises(MorphllrError, match=r"image\(s\) 3"):
        train_model(x, tmp_path / "m", max_steps=1, **FAST)
    with pytest.raises(MorphllrError, match="integer pixel values"):
        train_model(galaxies(8), tmp_path / "m", max_steps=1,
                    **{**FAST, "config": NETWORK_PRESETS["tiny"].with_(head="discretized_logistic_mixture")})
    assert os.listdir(tmp_path) == []


def test_bf16_mixed_channels_last_training_runs(tmp_path):
    x = galaxies(8)
    result = train_model(x, tmp_path / "m", max_steps=3, val_fraction=0.25,
                         **{**FAST, "precision": "bf16-mixed", "augment": "rot,flip"})
    assert np.isfinite(result.metrics["val_bits_per_dim"])
    assert json.loads((tmp_path / "m" / "training.json").read_text())["precision"] == "bf16-mixed"


def test_lossless_augmentations_keep_integer_pixels():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 2, 8, 8), generator=g).float()
    y = augment_batch(x, ("rot", "flip"), discrete=True, generator=g)
    assert torch.equal(y, y.round())
    # each image is a rearrangement of its own pixels
    assert torch.equal(y.flatten(1).sort(dim=1).values, x.flatten(1).sort(dim=1).values)
    assert not torch.equal(y, x)
    # non-square images are only turned by 0 or 180 deg
    rect = torch.arange(2 * 8 * 12, dtype=torch.float32).reshape(2, 1, 8, 12)
    out = rotate_lossless(rect, torch.tensor([1, 2]))
    assert torch.equal(out[0], rect[0]) and torch.equal(out[1], rect[1].flip(-1).flip(-2))


def test_interpolated_rotation_matches_exact_turns():
    x = torch.from_numpy(galaxies(3, size=16))[:, None]
    assert torch.allclose(rotate_continuous(x, torch.zeros(3)), x, atol=1e-5)
    quarter = rotate_continuous(x, torch.full((3,), 90.0))
    assert any(torch.allclose(quarter, torch.rot90(x, k, dims=(-2, -1)), atol=1e-4) for k in (1, 3))
    half = rotate_continuous(x, torch.full((3,), 180.0))
    assert torch.allclose(half, x.flip(-1).flip(-2), atol=1e-4)
    # a 45 deg turn of a noiseless round blob keeps its flux and its shape
    yy, xx = np.mgrid[:16, :16]
    blob = torch.from_numpy(np.exp(-((yy - 7.5) ** 2 + (xx - 7.5) ** 2) / 8.0).astype(np.float32))[None, None]
    turned = rotate_continuous(blob, torch.full((1,), 45.0))
    inside = torch.from_numpy((yy - 7.5) ** 2 + (xx - 7.5) ** 2 < 7.5**2)  # corners hold reflected pixels
    assert torch.allclose(turned[0, 0][inside], blob[0, 0][inside], atol=0.02)
    assert torch.allclose(turned[0, 0][inside].sum(), blob[0, 0][inside].sum(), rtol=0.01)


@pytest.mark.slow
def test_two_process_ddp_on_cpu_trains(tmp_path):
    np.save(tmp_path / "x.npy", galaxies(16))
    env = {**os.environ, "MORPHLLR_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "morphllr", "train", str(tmp_path / "x.npy"), "--out", str(tmp_path / "m"),
           "--preset", "tiny", "--devices", "2", "--strategy", "ddp", "--accelerator", "cpu", "--max-steps", "2",
           "--batch-size", "4", "--precision", "32", "--threads", "1", "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = load_model(tmp_path / "m")
    assert model.meta["metrics"]["steps"] == 2


def test_auto_input_norm_uses_the_training_pixels_and_explicit_values_win(tmp_path):
    """'auto' maps the training pixels to zero mean, unit spread; an explicit pair is kept as given."""
    from morphllr.train.batches import split_indices
    from morphllr.train.run import build_config, with_input_norm
    from morphllr.data.inputs import open_images

    rng = np.random.default_rng(3)
    images = (0.02 + 0.005 * rng.standard_normal((40, 1, 8, 8))).astype(np.float32)
    source = open_images(images)
    train_idx, _ = split_indices(len(source), 0.25, seed=0)
    cfg = build_config("tiny", shape=source.shape)
    auto = with_input_norm(cfg, "auto", source, train_idx, seed=0)
    assert auto.input_shift == pytest.approx(0.02, abs=0.002)
    assert auto.input_scale == pytest.approx(0.005, rel=0.1)
    assert with_input_norm(cfg, "preset", source, train_idx, seed=0) == cfg
    explicit = with_input_norm(cfg, ("0.1", "2"), source, train_idx, seed=0)
    assert (explicit.input_shift, explicit.input_scale) == (0.1, 2.0)
    with pytest.raises(MorphllrError, match="--input-norm"):
        with_input_norm(cfg, "median", source, train_idx, seed=0)
    discrete = build_config("tiny", shape=source.shape, head="discretized_logistic_mixture")
    assert with_input_norm(discrete, "auto", source, train_idx, seed=0) == discrete


def test_weight_average_is_the_ramped_ema_of_the_raw_weights_and_becomes_the_model(tmp_path):
    """The averaged weights follow the stated recursion exactly, and the model file holds them."""
    from morphllr.train.module import PixelCNNModule

    module = PixelCNNModule(NETWORK_PRESETS["tiny"].to_dict(), weight_average=0.9)
    module.net.train()
    params = [p for p in module.net.parameters()]
    expected = [p.detach().clone() for p in params]
    rng = torch.Generator().manual_seed(1)

    class _Trainer:  # global_step as Lightning exposes it after each optimizer step
        sanity_checking = False
        global_step = 0
    trainer = _Trainer()
    module.__dict__["_trainer"] = None
    for step in range(1, 6):
        with torch.no_grad():
            for p in params:
                p.add_(torch.randn(p.shape, generator=rng))
        decay = min(0.9, (1 + step) / (10 + step))
        expected = [e + (1 - decay) * (p.detach() - e) for e, p in zip(expected, params)]
        type(module).global_step = property(lambda self, s=step: s)
        module.on_train_batch_end(None, None, 0)
    for e, a in zip(expected, module.averaged.parameters()):
        torch.testing.assert_close(a, e, rtol=1e-6, atol=1e-6)
    assert not any(p.requires_grad for p in module.averaged.parameters())
    del type(module).global_step  # the class attribute Lightning defines again below

    # end to end: the model file holds the averaged weights; evaluate_raw adds the raw model in raw/
    x = galaxies(16)
    out = tmp_path / "m"
    result = train_model(x, out, max_steps=12, val_fraction=0.25, weight_average=0.99, evaluate_raw=True, **FAST)
    averaged, raw = load_model(out), load_model(out / "raw")
    assert json.loads((out / "training.json").read_text())["weight_average"] == 0.99
    assert "weight_average" not in raw.meta["extra"]["training"]
    raw_steps = [row[0] for row in raw.meta["metrics"]["convergence"]["history"]]
    assert raw_steps == [row[0] for row in averaged.meta["metrics"]["convergence"]["history"]] and raw_steps
    ckpt = torch.load(out / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    for name, value in averaged.net.state_dict().items():
        torch.testing.assert_close(value, ckpt[f"averaged.{name}"])
    assert any(not torch.equal(a, b) for a, b in zip(averaged.net.state_dict().values(), raw.net.state_dict().values()))
    assert result.metrics["val_bits_per_dim"] == pytest.approx(_bpd(averaged, x[_val_rows(16, 0.25)]), abs=1e-4)
    with pytest.raises(MorphllrError, match="--weight-average"):
        train_model(x, tmp_path / "bad", max_steps=1, weight_average=1.0, **FAST)


def _val_rows(n: int, fraction: float, seed: int = 0) -> np.ndarray:
    return split_indices(n, fraction, seed)[1]


def test_convergence_rule_on_constructed_histories():
    from morphllr.train.convergence import convergence

    flat = [[s, -2.0 - 0.5 * (1 - np.exp(-s / 20))] for s in range(10, 501, 10)]
    still = [[s, -2.0 - 0.001 * s] for s in range(10, 501, 10)]
    assert convergence(flat, tolerance=0.01)["converged"] is True
    verdict = convergence(still, tolerance=0.01)
    # best before step 400 is -2.4, best overall -2.5: improved by 0.1 in the last 20 %
    assert verdict["converged"] is False and verdict["tail_improvement_bpd"] == pytest.approx(0.1)
    assert convergence(still[:2])["converged"] is None  # too few validations to judge
    worse_at_end = [[100, -3.0], [200, -3.2], [300, -3.1], [400, -3.0], [500, -2.9]]
    verdict = convergence(worse_at_end, tolerance=0.01)
    assert verdict["converged"] is True and verdict["tail_improvement_bpd"] == 0  # over-fitting is not "improving"
    # the tail is measured on the run's steps: no validation inside it means no verdict
    assert convergence(still[:30], tolerance=0.01, final_step=500)["converged"] is None


def test_trained_model_records_its_validation_history_and_verdict(tmp_path):
    x = galaxies(16)
    out = tmp_path / "m"
    train_model(x, out, max_steps=16, val_fraction=0.25, **FAST)  # 3 steps per epoch -> 6 validations
    conv = load_model(out).meta["metrics"]["convergence"]
    steps = [row[0] for row in conv["history"]]
    assert steps == sorted(steps) and len(steps) == 5 and steps[-1] == 15
    assert conv["converged"] in (True, False) and "rule" in conv


def test_weight_average_must_match_on_resume_and_needs_full_precision_weights(tmp_path):
    x = galaxies(16)
    out = tmp_path / "m"
    with pytest.raises(KeyboardInterrupt):
        train_model(x, out, max_steps=8, val_fraction=0.25, callbacks=[InterruptAfter(5)], **FAST)
    with pytest.raises(MorphllrError, match="--weight-average 0.99 but the interrupted run used 0"):
        train_model(x, out, max_steps=8, val_fraction=0.25, resume=True, weight_average=0.99, **FAST)
    with pytest.raises(MorphllrError, match="half-precision weights"):
        train_model(x, tmp_path / "h", max_steps=1, weight_average=0.99, **{**FAST, "precision": "bf16-true"})
