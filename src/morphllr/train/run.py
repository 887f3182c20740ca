"""Train a PixelCNN++ density model on an image set (Lightning).

``train_model(data, out_dir, ...)`` fits p(x) by maximum likelihood: the loss is the
mean negative log-likelihood in bits per dimension (the usual PixelCNN unit: lower is
better; it does not depend on the image size).  A seeded fraction of the images is
held out to measure validation bits/dim every epoch; the best epoch is kept.

The output folder holds, during training, ``checkpoints/`` (Lightning's ``best`` and
``last``; ``--resume`` continues from ``last``), ``logs/`` (CSV metrics, TensorBoard
when installed) and ``training.json`` (what the run was asked to do).  At the end the
best weights are written as a model (``weights.safetensors`` + ``model.json``, see
:mod:`morphllr.model.io`), ``model.json`` last, so a folder with a ``model.json`` is
always a finished model.

Augmentation (Zanisi et al. 2021 rotate the training galaxies by random angles in
0-180 deg): ``rot`` rotates continuous-head images by a uniform random angle with
bicubic interpolation and reflected edges (sky noise continues past the border
instead of a constant-filled corner), while for the discretized head only the lossless
multiples of 90 deg are used so pixel values stay integers; ``flip`` mirrors half the
images left-right.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import re
import shutil
import sys
import signal
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import lightning.pytorch as L
from lightning.pytorch.callbacks import TQDMProgressBar
from torch.utils.data import DataLoader, Dataset

from morphllr import runtime
from morphllr.atomic import atomic_file, claims
from morphllr.errors import MorphllrError
from morphllr.model.io import (ENSEMBLE_FILE, MAX_ENSEMBLE_MEMBERS, MEMBER_DIR, META_FILE, WEIGHTS_FILE, file_sha256,
                      member_name, read_ensemble_index, read_meta, save_model, write_ensemble_index)
from morphllr.model.pixelcnn import PixelCNN, PixelCNNConfig
from morphllr.data.inputs import DISCRETE_HEADS, ImageSource, open_images, validate_source

AUGMENTATIONS = ("rot", "flip")
CHECKPOINT_DIR = "checkpoints"
LOG_DIR = "logs"
RUN_FILE = "training.json"
RAW_DIR = "raw"  # the raw weights' model beside the averaged one (train_model(evaluate_raw=True))
# Splits smaller than this are held in memory as one array (fast random batches);
# larger ones are read batch by batch from the source.
IN_MEMORY_BYTES = 2 * 1024**3
# After training, bits/dim on (at most) this many training images without dropout or
# augmentation is recorded next to the validation value (to see over-fitting).
TRAIN_EVAL_IMAGES = 2048
LN2 = math.log(2.0)
# Convergence rule (recorded in model.json): a run has converged when the best validation bits/dim of its
# last CONVERGENCE_TAIL share of steps beats the best before them by less than the seed-to-seed noise.
# Where that noise is not measured (a single model) CONVERGENCE_TOLERANCE_BPD stands in: a third of the
# smallest seed-to-seed standard deviation of val bits/dim measured on the shipped models (demo ensembles:
# 0.029 obs, 0.024 arch), so a model is flagged well before its late gains reach the size of seed noise.
CONVERGENCE_TAIL = 0.2
CONVERGENCE_TOLERANCE_BPD = 0.008


# ------------------------------------------------------------------------------ data
class ImageDataset(Dataset):
    """Images of ``source`` at ``indices`` as float32 tensors (C, H, W).

    Args:
        source: the ImageSource.
        indices: which images belong to this split.
    """

    def __init__(self, source: ImageSource, indices: np.ndarray):
        self.source = source
        self.indices = np.asarray(indices, dtype=np.int64)
        _, c, h, w = source.shape
        self._array = None
        if len(self.indices) * c * h * w * 4 <= IN_MEMORY_BYTES:
            self._array = _read_in_chunks(source, self.indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.__getitems__([i])[0]

    def __getitems__(self, positions: Sequence[int]) -> np.ndarray:
        positions = np.asarray(positions, dtype=np.int64)
        if self._array is not None:
            return self._array[positions]
        return self.source.read(self.indices[positions])


def _read_in_chunks(source: ImageSource, indices: np.ndarray, chunk: int = 1024) -> np.ndarray:
    _, c, h, w = source.shape
    out = np.empty((len(indices), c, h, w), dtype=np.float32)
    for start in range(0, len(indices), chunk):
        out[start:start + chunk] = source.read(indices[start:start + chunk])
    return out


def _collate(batch: Any) -> torch.Tensor:
    if isinstance(batch, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(batch))
    return torch.from_numpy(np.stack(batch))


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded random split into training and validation indices.

    Args:
        n: number of images.
        val_fraction: share held out (0 disables validation).
        seed: random seed (same seed, same split on every rank and on resume).

    Returns:
        (train_indices, val_indices), each sorted.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise MorphllrError(f"--val-fraction: {val_fraction} must be in [0, 1); e.g. 0.1 holds out 10%")
    n_val = int(round(n * val_fraction))
    if val_fraction > 0 and n_val == 0 and n >= 2:
        n_val = 1
    if n - n_val < 1:
        raise MorphllrError(f"--val-fraction: {val_fraction} leaves no training images out of {n}; lower it")
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


class ImageDataModule(L.LightningDataModule):
    """Training/validation loaders over an ImageSource with a seeded split.

    Args:
        source: the images.
        batch_size: images per step (per device).
        val_fraction: share held out for validation.
        seed: split seed.
    """

    def __init__(self, source: ImageSource, batch_size: int, val_fraction: float, seed: int):
        super().__init__()
        self.source = source
        self.batch_size = batch_size
        self.train_idx, self.val_idx = split_indices(len(source), val_fraction, seed)
        self.train_set = self.val_set = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set = ImageDataset(self.source, self.train_idx)
            self.val_set = ImageDataset(self.source, self.val_idx) if len(self.val_idx) else None

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=min(self.batch_size, len(self.train_set)), shuffle=True,
                          collate_fn=_collate, num_workers=0, drop_last=False)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is None:
            return []
        return DataLoader(self.val_set, batch_size=self.batch_size, shuffle=False, collate_fn=_collate,
                          num_workers=0)


# ------------------------------------------------------------------------------ augmentation
def parse_augment(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """Parse ``"rot,flip"`` (or a list; "none" or "" for no augmentation).

    Args:
        text: comma-separated names.

    Returns:
        tuple of names from :data:`AUGMENTATIONS`.
    """
    if text is None:
        return ()
    items = text.split(",") if isinstance(text, str) else list(text)
    names = tuple(dict.fromkeys(i.strip().lower() for i in items if i.strip() and i.strip().lower() != "none"))
    unknown = [n for n in names if n not in AUGMENTATIONS]
    if unknown:
        raise MorphllrError(f"--augment: unknown augmentation {', '.join(unknown)}; "
                            f"use a comma list of {', '.join(AUGMENTATIONS)} or none")
    return names


def rotate_continuous(x: torch.Tensor, angles_deg: torch.Tensor) -> torch.Tensor:
    """Rotate each image by its angle about the image centre (bicubic, reflected edges).

    Args:
        x: (B, C, H, W) float images.
        angles_deg: (B,) counter-clockwise angles in degrees.

    Returns:
        rotated images, same shape.
    """
    import torch.nn.functional as F

    b, _, h, w = x.shape
    theta = torch.deg2rad(angles_deg.to(torch.float32))
    cos, sin = torch.cos(theta), torch.sin(theta)
    # affine_grid works in [-1, 1] coordinates per axis; the aspect factors keep a
    # rotation of a non-square image a rotation (not a shear) in pixel space.
    mat = torch.zeros(b, 2, 3, dtype=torch.float32, device=x.device)
    mat[:, 0, 0], mat[:, 0, 1] = cos, -sin * h / w
    mat[:, 1, 0], mat[:, 1, 1] = sin * w / h, cos
    grid = F.affine_grid(mat, (b, x.shape[1], h, w), align_corners=False)
    return F.grid_sample(x.float(), grid, mode="bicubic", padding_mode="reflection", align_corners=False).to(x.dtype)


def rotate_lossless(x: torch.Tensor, quarter_turns: torch.Tensor) -> torch.Tensor:
    """Rotate each image by a multiple of 90 deg (exact; non-square images only by 0/180 deg).

    Args:
        x: (B, C, H, W) images.
        quarter_turns: (B,) integers 0..3.

    Returns:
        rotated images, same shape.
    """
    square = x.shape[-1] == x.shape[-2]
    out = x.clone()
    for k in range(1, 4):
        if not square and k % 2:
            continue
        pick = quarter_turns == k
        if pick.any():
            out[pick] = torch.rot90(x[pick], k, dims=(-2, -1))
    return out


def augment_batch(x: torch.Tensor, names: Sequence[str], discrete: bool,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Apply the chosen random augmentations to a training batch.

    Args:
        x: (B, C, H, W).
        names: subset of :data:`AUGMENTATIONS`.
        discrete: the head needs integer pixels (only lossless transforms then).
        generator: random generator (None: torch's global one).

    Returns:
        augmented batch.
    """
    b = x.shape[0]
    if "rot" in names:
        if discrete:
            x = rotate_lossless(x, torch.randint(0, 4, (b,), generator=generator).to(x.device))
        else:
            x = rotate_continuous(x, torch.rand(b, generator=generator).to(x.device) * 180.0)
    if "flip" in names:
        flip = (torch.rand(b, generator=generator) < 0.5).to(x.device)
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x


# ------------------------------------------------------------------------------ model
class PixelCNNModule(L.LightningModule):
    """Maximum-likelihood training of a PixelCNN; loss = mean NLL in bits/dim.

    With ``weight_average > 0`` the module also keeps an exponential moving average of the weights
    (Polyak averaging, as PixelCNN++ was trained: Salimans et al. 2017 used decay 0.9995).  Validation
    then measures the averaged weights, and those are what the model file holds.  The decay is ramped,
    ``min(weight_average, (1 + t) / (10 + t))`` at step t, so that a run of a few hundred steps is not
    dominated by its random initial weights.

    Args:
        config: the network config (dict form, so that checkpoints hold only plain data).
        lr: peak learning rate of Adam.
        warmup_steps: linear warm-up steps.
        min_lr_ratio: cosine decay floor as a fraction of ``lr``.
        augment: augmentation names.
        weight_average: EMA decay per step (0: off, the raw weights are the model).
        evaluate_raw: with weight averaging, also log the raw weights' ``val_bpd_raw`` (recipe comparisons).
    """

    def __init__(self, config: dict, lr: float = 1e-3, warmup_steps: int = 200, min_lr_ratio: float = 0.05,
                 augment: Sequence[str] = (), weight_average: float = 0.0, evaluate_raw: bool = False):
        super().__init__()
        self.save_hyperparameters()
        self.net = PixelCNN(PixelCNNConfig.from_dict(dict(config)))
        cfg = self.net.config
        self.n_dims = cfg.in_channels * cfg.height * cfg.width
        self.augment = tuple(augment)
        self.discrete = cfg.head in DISCRETE_HEADS
        self.net.to(memory_format=torch.channels_last)
        self.averaged = copy.deepcopy(self.net).requires_grad_(False) if weight_average > 0 else None
        self.evaluate_raw = bool(evaluate_raw) and self.averaged is not None
        self.val_history: list[list[float]] = []  # [step, val bits/dim] per validation, kept in checkpoints
        self.raw_history: list[list[float]] = []  # the same for the raw weights (evaluate_raw)
        # seconds spent on the average's updates and on validating the raw weights: what a recipe
        # comparison subtracts to put both recipes on their own wall-clock
        self.extra_seconds = {"weight_average": 0.0, "raw_validation": 0.0}

    @property
    def model_prefix(self) -> str:
        """State-dict prefix of the weights that become the model file."""
        return "averaged." if self.averaged is not None else "net."

    def bits_per_dim(self, x: torch.Tensor, net: PixelCNN | None = None) -> torch.Tensor:
        """Per-image bits/dim (B,) of a batch under ``net`` (default: the trained network)."""
        x = x.contiguous(memory_format=torch.channels_last)
        return -(self.net if net is None else net).log_prob(x).float() / (self.n_dims * LN2)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        if self.augment:
            batch = augment_batch(batch, self.augment, self.discrete)
        loss = self.bits_per_dim(batch).mean()
        if not torch.isfinite(loss):
            raise MorphllrError(
                f"training diverged at step {self.global_step} (loss is {loss.item()}); lower --lr, use "
                "--precision 32, or check the images' value range; continue from the last good epoch with --resume")
        self.log("train_bpd", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(batch))
        return loss

    @torch.no_grad()
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.averaged is None:
            return
        started = time.perf_counter()
        step = self.global_step  # optimizer steps taken, this one included
        decay = min(float(self.hparams.weight_average), (1 + step) / (10 + step))
        torch._foreach_lerp_(list(self.averaged.parameters()), list(self.net.parameters()), 1.0 - decay)
        for kept, current in zip(self.averaged.buffers(), self.net.buffers()):
            kept.copy_(current)
        self.extra_seconds["weight_average"] += time.perf_counter() - started

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        bpd = self.bits_per_dim(batch, self.averaged)
        self.log("val_bpd", bpd.mean(), prog_bar=True, on_epoch=True, batch_size=len(batch), sync_dist=True)
        if self.evaluate_raw:
            started = time.perf_counter()
            raw = self.bits_per_dim(batch).mean()
            self.extra_seconds["raw_validation"] += time.perf_counter() - started
            self.log("val_bpd_raw", raw, on_epoch=True, batch_size=len(batch), sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        if self.trainer is None or self.trainer.sanity_checking:
            return
        for key, history in (("val_bpd", self.val_history), ("val_bpd_raw", self.raw_history)):
            value = self.trainer.callback_metrics.get(key)
            if value is not None and (key == "val_bpd" or self.evaluate_raw):
                history.append([int(self.global_step), float(value)])

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["val_history"] = [list(row) for row in self.val_history]
        checkpoint["raw_history"] = [list(row) for row in self.raw_history]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.val_history = [list(row) for row in checkpoint.get("val_history", [])]
        self.raw_history = [list(row) for row in checkpoint.get("raw_history", [])]

    def configure_optimizers(self):
        hp = self.hparams
        # betas as in PixelCNN++ (Salimans et al. 2017): slow second-moment decay
        opt = torch.optim.Adam(self.net.parameters(), lr=hp.lr, betas=(0.95, 0.9995))
        total = max(1, int(self.trainer.estimated_stepping_batches)) if self.trainer else 1
        warmup = min(int(hp.warmup_steps), max(1, total // 10))
        schedule = WarmupCosine(warmup, total, float(hp.min_lr_ratio))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def convergence(history: Sequence[Sequence[float]], tolerance: float = CONVERGENCE_TOLERANCE_BPD,
                tail: float = CONVERGENCE_TAIL, final_step: int | None = None) -> dict:
    """Judge whether a run had stopped improving (the rule of ``model.json``'s ``convergence``).

    Args:
        history: ``[step, val bits/dim]`` per validation, in step order.
        tolerance: improvement (bits/dim) below which the tail counts as flat: the seed-to-seed noise.
        tail: share of the final step count that forms the tail.
        final_step: the run's last optimizer step (default: the last validation's step).

    Returns:
        dict with ``converged`` (None when fewer than 3 validations, or none before or inside the tail),
        ``tail_improvement_bpd`` (best before the tail minus best overall, >= 0), ``tolerance_bpd``,
        ``rule`` and the ``history`` itself.
    """
    rows = [(int(step), float(bpd)) for step, bpd in history if math.isfinite(float(bpd))]
    rule = (f"converged when the best validation bits/dim of the last {tail:.0%} of steps improves on the best "
            f"before them by less than {tolerance:.3g} bits/dim (seed-to-seed noise)")
    out = {"rule": rule, "tolerance_bpd": float(tolerance), "tail": float(tail), "history": [list(r) for r in rows],
           "tail_improvement_bpd": None, "converged": None}
    if len(rows) < 3:
        return out
    last = max(rows[-1][0], int(final_step or 0))
    before = [bpd for step, bpd in rows if step <= (1.0 - tail) * last]
    if not before or len(before) == len(rows):  # nothing to compare with, or no validation inside the tail
        return out
    improvement = max(0.0, min(before) - min(bpd for _, bpd in rows))
    out.update(tail_improvement_bpd=improvement, converged=bool(improvement < tolerance))
    return out


@dataclass
class WarmupCosine:
    """Learning-rate factor: linear warm-up, then cosine decay to ``floor``.

    Attributes:
        warmup: warm-up steps.
        total: total optimizer steps.
        floor: final factor.
    """

    warmup: int
    total: int
    floor: float

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * progress))


class Throughput(L.Callback):
    """Show training images per second (all devices) in the progress bar."""

    def __init__(self):
        self._t0 = None
        self._rate = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._t0 is None:
            return
        rate = len(batch) * trainer.world_size / max(1e-9, time.perf_counter() - self._t0)
        self._rate = rate if self._rate is None else 0.9 * self._rate + 0.1 * rate
        pl_module.log("img_s", self._rate, prog_bar=True, on_step=True, on_epoch=False, rank_zero_only=True)


class _TrainingBar(TQDMProgressBar):
    """Lightning's bar without the per-epoch validation bars (val_bpd shows in the main bar)."""

    def init_validation_tqdm(self):
        from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

        return Tqdm(disable=True)


class InterruptAfter(L.Callback):
    """Raise KeyboardInterrupt after ``steps`` optimizer steps (tests of --resume)."""

    def __init__(self, steps: int):
        self.steps = steps

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.steps:
            raise KeyboardInterrupt


# ------------------------------------------------------------------------------ driver
@dataclass
class TrainResult:
    """What :func:`train_model` produced.

    Attributes:
        model_dir: the finished model folder.
        metrics: the metrics stored in model.json.
    """

    model_dir: Path
    metrics: dict


def build_config(preset: str | PixelCNNConfig | dict = "zanisi21", *, shape: Sequence[int] | None = None,
                 **overrides: Any) -> PixelCNNConfig:
    """A network config from a preset, fitted to the data's (C, H, W), with overrides.

    Args:
        preset: name in ``morphllr.model.pixelcnn.PRESETS``, a config or a dict.
        shape: (N, C, H, W) of the training images (sets in_channels/height/width).
        overrides: config fields to change (None values are ignored).

    Returns:
        the PixelCNNConfig.
    """
    from morphllr.model.pixelcnn import PRESETS

    if isinstance(preset, PixelCNNConfig):
        base = preset
    elif isinstance(preset, dict):
        base = PixelCNNConfig.from_dict(preset)
    elif preset in PRESETS:
        base = PRESETS[preset]
    else:
        raise MorphllrError(f"--preset: unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    changes = {k: v for k, v in overrides.items() if v is not None}
    if shape is not None:
        changes.update(in_channels=int(shape[1]), height=int(shape[2]), width=int(shape[3]))
    return base.with_(**changes)


def with_input_norm(cfg: PixelCNNConfig, input_norm: str | Sequence[float], source: Any,
                    train_idx: np.ndarray, seed: int, sample: int = 512) -> PixelCNNConfig:
    """The config with its network input mapping chosen by ``input_norm`` (see :func:`train_model`).

    "auto" uses the mean and standard deviation of (up to ``sample``, seeded) training images, so the
    network sees unit-scale inputs whatever the preprocessing: with the paper's [0, 1] stretch and
    the preset's fixed 0.5 scale, sky noise of ~0.005 becomes 0.01 network units and the Gaussian
    head needs thousands of steps just to shrink its scale that far.

    Returns:
        the (possibly) updated config; discretized heads are returned unchanged.
    """
    if cfg.head == "discretized_logistic_mixture" or input_norm == "preset":
        return cfg
    if isinstance(input_norm, str):
        if input_norm != "auto":
            raise MorphllrError(f"--input-norm: expected auto, preset or SHIFT,SCALE, got {input_norm!r}")
        rng = np.random.default_rng(seed)
        idx = np.sort(rng.choice(train_idx, size=min(sample, len(train_idx)), replace=False))
        pixels = np.asarray(source.read(idx), dtype=np.float64)
        shift, scale = float(pixels.mean()), float(pixels.std())
        if not (math.isfinite(scale) and scale > 0):
            shift, scale = shift if math.isfinite(shift) else 0.0, 1.0
        return cfg.with_(input_shift=float(f"{shift:.4g}"), input_scale=float(f"{scale:.4g}"))
    try:
        shift, scale = (float(v) for v in input_norm)
    except (TypeError, ValueError):
        raise MorphllrError(f"--input-norm: expected auto, preset or SHIFT,SCALE, got {input_norm!r}") from None
    if not (math.isfinite(shift) and math.isfinite(scale) and scale > 0):
        raise MorphllrError(f"--input-norm {shift:g},{scale:g}: SHIFT must be a finite number and SCALE a positive "
                            "one, e.g. --input-norm 0.5,0.5")
    return cfg.with_(input_shift=shift, input_scale=scale)


def check_out_dir(out_dir: str | Path, resume: bool, overwrite: bool) -> None:
    """Refuse to clobber finished models or foreign folders, or to resume what cannot be resumed.

    Only looks (``train_model`` calls it first, under its claim on the folder, before any work).

    Args:
        out_dir: the model folder.
        resume: ``--resume``: the folder must hold a run with ``checkpoints/last.ckpt``.
        overwrite: ``--overwrite``: a run or model of ours may be replaced.
    """
    out_dir = Path(out_dir)
    if not out_dir.exists():
        if resume:
            raise MorphllrError(f"{out_dir / CHECKPOINT_DIR / 'last.ckpt'}: no checkpoint to resume from; "
                                "start the run without --resume")
        return
    if not out_dir.is_dir():
        raise MorphllrError(f"{out_dir}: exists and is not a folder; choose another --out")
    layout = _layout(out_dir)
    entries = layout.entries
    if layout.is_ensemble:
        seeds = layout.seeds_text
        if resume:
            raise MorphllrError(f"{out_dir}: holds an ensemble ({', '.join(layout.members) or ENSEMBLE_FILE}), not a "
                                f"single model run; continue it with --seeds {seeds} --resume")
        if not overwrite:
            what = "a finished ensemble" if layout.has_index else "an unfinished ensemble run"
            raise MorphllrError(f"{out_dir}: already holds {what}; pass --overwrite to replace it, or choose another "
                                "--out")
    finished = META_FILE in entries
    if resume:
        if finished and not (out_dir / CHECKPOINT_DIR).is_dir():
            raise MorphllrError(f"{out_dir}: is a finished model without checkpoints; nothing to resume")
        if not (out_dir / CHECKPOINT_DIR / "last.ckpt").is_file():
            raise MorphllrError(f"{out_dir / CHECKPOINT_DIR / 'last.ckpt'}: no checkpoint to resume from; "
                                "start the run without --resume")
        return
    if not entries:
        return
    if not overwrite:
        what = "a finished model" if finished else "an unfinished training run"
        fix = "--overwrite to replace it" if finished else "--resume to continue it or --overwrite to start again"
        raise MorphllrError(f"{out_dir}: already holds {what}; pass {fix}, or choose another --out")
    _refuse_foreign(out_dir, layout)


RUN_ENTRIES = frozenset({CHECKPOINT_DIR, LOG_DIR, RUN_FILE, META_FILE, WEIGHTS_FILE, RAW_DIR})
# what claims of an ensemble's members and index leave inside its folder after a SIGKILL (cleaned by the next claim)
_ENSEMBLE_DEBRIS = re.compile(r"\.(?:seed[0-9]+|" + re.escape(ENSEMBLE_FILE) + r")\.(?:lock|[^.]+\.(?:tmp|old))\Z")


@dataclass
class _Layout:
    """What a training folder holds: a single run's files, ensemble members (``seedK/``), an index, others."""

    entries: set
    members: list
    has_index: bool
    foreign: list

    @property
    def is_ensemble(self) -> bool:
        return self.has_index or bool(self.members)

    @property
    def seeds_text(self) -> str:
        return ",".join(m[len("seed"):] for m in self.members) or "..."


def _layout(out_dir: Path) -> _Layout:
    entries = {p.name for p in out_dir.iterdir() if not _ENSEMBLE_DEBRIS.match(p.name)}
    members = sorted((e for e in entries if MEMBER_DIR.match(e) and (out_dir / e).is_dir()),
                     key=lambda e: int(e[len("seed"):]))
    foreign = sorted(entries - RUN_ENTRIES - {ENSEMBLE_FILE} - set(members))
    for member in members:
        foreign += sorted(f"{member}/{p.name}" for p in (out_dir / member).iterdir() if p.name not in RUN_ENTRIES)
    return _Layout(entries=entries, members=members, has_index=ENSEMBLE_FILE in entries, foreign=foreign)


def _refuse_foreign(out_dir: Path, layout: _Layout) -> None:
    if layout.foreign:
        raise MorphllrError(f"{out_dir}: contains files morphllr did not write ({', '.join(layout.foreign[:3])}); "
                            "refusing to delete them - choose another --out")


def _clear_ours(out_dir: Path) -> None:
    """Delete our old run, model or ensemble in ``out_dir`` (--overwrite; :func:`check_out_dir` judged it ours)."""
    layout = _layout(out_dir)
    # what marks a finished result goes first, so a crash never leaves an old model next to new checkpoints
    (out_dir / ENSEMBLE_FILE).unlink(missing_ok=True)
    (out_dir / META_FILE).unlink(missing_ok=True)
    for member in layout.members:
        (out_dir / member / META_FILE).unlink(missing_ok=True)
    for name in (WEIGHTS_FILE, RUN_FILE):
        (out_dir / name).unlink(missing_ok=True)
    for name in (CHECKPOINT_DIR, LOG_DIR, RAW_DIR, *layout.members):
        shutil.rmtree(out_dir / name, ignore_errors=True)


def _prepare_out_dir(out_dir: Path, resume: bool, overwrite: bool) -> None:
    """Check the folder (:func:`check_out_dir`); clear our old run or model on --overwrite."""
    check_out_dir(out_dir, resume, overwrite)
    if resume or not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    _clear_ours(out_dir)


def _check_resume_matches(out_dir: Path, run: dict) -> None:
    path = out_dir / RUN_FILE
    if not path.exists():
        return
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return
    if float(old.get("weight_average", 0.0)) != float(run.get("weight_average", 0.0)):
        raise MorphllrError(
            f"{out_dir}: --resume with --weight-average {run.get('weight_average', 0.0)} but the interrupted run used "
            f"{old.get('weight_average', 0.0)}; resume with the same value, or start a new run with --overwrite")
    for key, label in (("data_fingerprint", "training images"), ("config", "network settings")):
        if old.get(key) != run.get(key):
            raise MorphllrError(
                f"{out_dir}: --resume with different {label} than the interrupted run; use the same DATA and "
                "options, or start a new run with --overwrite")


def _loggers(out_dir: Path, resume: bool) -> list:
    """CSV (and TensorBoard) loggers; a resumed run logs to logs/resumeN/ so earlier logs survive."""
    from lightning.pytorch.loggers import CSVLogger

    version = ""
    if resume:
        k = 1
        while (out_dir / LOG_DIR / f"resume{k}").exists():
            k += 1
        version = f"resume{k}"
    loggers = [CSVLogger(str(out_dir), name=LOG_DIR, version=version)]
    try:
        import tensorboard  # noqa: F401
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(str(out_dir), name=LOG_DIR, version=f"tensorboard{version}"))
    except ImportError:
        pass
    return loggers


def _quiet_lightning() -> None:
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in (".*does not have many workers.*", ".*number of training batches.*",
                    ".*LeafSpec.*", ".*isinstance.*treespec.*", ".*Checkpoint directory.*exists and is not empty.*",
                    ".*_pytree.*", ".*`weights_only`.*", ".*could not find the monitored key.*"):
        warnings.filterwarnings("ignore", message=pattern)


def _resolve_precision(precision: str | None) -> str:
    if precision in (None, "auto"):
        return runtime.default_precision()
    precision = str(precision)
    allowed = ("bf16-mixed", "32", "32-true", "16-mixed", "bf16-true")
    if precision not in allowed:
        raise MorphllrError(f"--precision: {precision!r} is not one of {', '.join(allowed)}")
    return precision


def _model_dir_output(arguments: dict) -> list:
    """The folder claimed by :func:`train_model`: only rank 0 of a multi-process run writes it."""
    return [("--out", arguments["out_dir"])] if _launched_rank() == 0 else []


# the folder may exist (--resume continues it): check_out_dir judges it, first thing in the body
@claims(_model_dir_output, inputs=("data",), kind="dir", existing="keep")
def train_model(data: Any, out_dir: str | Path, *, config: PixelCNNConfig | dict | str = "zanisi21",
                max_steps: int | None = None, max_epochs: int | None = None, batch_size: int = 64,
                lr: float = 1e-3, val_fraction: float = 0.1, augment: str | Sequence[str] = "rot,flip",
                precision: str | None = None, devices: int | str = 1, num_nodes: int = 1,
                strategy: str = "auto", accelerator: str = "auto", seed: int = 0, resume: bool = False,
                overwrite: bool = False, early_stopping_patience: int | None = None, warmup_steps: int = 200,
                progress: bool = True, threads: int | None = None, callbacks: Sequence[Any] = (),
                key: str | None = None, input_norm: str | Sequence[float] = "auto", weight_average: float = 0.0,
                evaluate_raw: bool = False) -> TrainResult | None:
    """Train a PixelCNN on ``data`` and write the best model to ``out_dir``.

    Args:
        data: ImageSource, path (.h5 ImageSet, .npy, .npz, .h5[:dataset]) or array.
        out_dir: model folder to create (checkpoints and logs go inside it).
        config: preset name, PixelCNNConfig or dict (image shape is taken from the data).
        max_steps: stop after this many optimizer steps (overrides epochs).
        max_epochs: stop after this many passes over the training images (default 20).
        batch_size: images per step and device.
        lr: peak Adam learning rate (warm-up, then cosine decay to 5 %).
        val_fraction: share of images held out for validation bits/dim.
        augment: "rot,flip", "rot", "flip" or "none".
        precision: "bf16-mixed", "32" or None (bf16-mixed where the hardware has native bf16).
        devices: devices per node (CPU processes or GPUs).
        num_nodes: nodes (multi-node DDP, e.g. under SLURM).
        strategy: Lightning strategy ("auto", "ddp", ...).
        accelerator: "auto", "cpu", "gpu".
        seed: seed for the split, initial weights and augmentation.
        resume: continue from ``out_dir/checkpoints/last.ckpt``.
        overwrite: replace an existing model/run in ``out_dir``.
        early_stopping_patience: stop after this many epochs without val improvement (None: off).
        warmup_steps: learning-rate warm-up steps.
        progress: show the progress bar.
        threads: CPU threads per process (None: usable cores / processes on this node).
        callbacks: extra Lightning callbacks.
        key: array name inside an .npz / dataset inside an HDF5 file.
        input_norm: how continuous heads map pixels to network units, ``(x - shift) / scale``:
            "auto" (mean and standard deviation of the training pixels), "preset" (the config's
            own values) or an explicit (shift, scale).  Densities are always reported in the
            data's units; this only conditions the optimisation.
        weight_average: decay of the exponential moving average of the weights that becomes the model
            (0: off; see :class:`PixelCNNModule`).
        evaluate_raw: with ``weight_average``, also validate the raw weights every epoch, keep their best
            checkpoint and write them as a second model in ``out_dir/raw/`` (recipe comparisons such as
            ``benchmarks/convergence.py``; costs one more validation pass per epoch).

    Returns:
        TrainResult (None on non-zero ranks of a multi-process run).
    """
    _quiet_lightning()
    out_dir = Path(out_dir)
    if _launched_rank() == 0:  # before any work; other ranks start once rank 0 has set up the folder
        check_out_dir(out_dir, resume, overwrite)
    source = open_images(data, key=key) if key is not None else open_images(data)
    cfg = build_config(config, shape=source.shape)
    if batch_size < 1:
        raise MorphllrError(f"--batch-size: must be at least 1, got {batch_size}")
    if lr <= 0 or not math.isfinite(lr):
        raise MorphllrError(f"--lr: must be a positive number, got {lr}")
    if max_steps is not None and max_steps < 1:
        raise MorphllrError(f"--max-steps: must be at least 1, got {max_steps}")
    if max_epochs is not None and max_epochs < 1:
        raise MorphllrError(f"--epochs: must be at least 1, got {max_epochs}")
    if not (0.0 <= weight_average < 1.0):
        raise MorphllrError(f"--weight-average: must be in [0, 1) (an EMA decay per step, e.g. 0.999), "
                            f"got {weight_average}")
    augment = parse_augment(augment)
    precision = _resolve_precision(precision)
    if weight_average > 0 and precision.endswith("-true") and not precision.startswith("32"):
        raise MorphllrError(f"--weight-average with --precision {precision}: the average's small per-step updates "
                            "round away in half-precision weights; use --precision bf16-mixed or 32")
    train_idx, _ = split_indices(len(source), val_fraction, seed)  # validates the fraction before any work
    validate_source(source, cfg.head)
    cfg = with_input_norm(cfg, input_norm, source, train_idx, seed)
    if _launched_rank() == 0:  # other ranks start after rank 0 has already set up the folder
        _prepare_out_dir(out_dir, resume, overwrite)
    last_ckpt = out_dir / CHECKPOINT_DIR / "last.ckpt"
    if resume and not last_ckpt.is_file():
        raise MorphllrError(f"{last_ckpt}: no checkpoint to resume from; start the run without --resume")
    if resume:
        load_checkpoint(last_ckpt)  # refused in one line before any training starts

    n_procs = _processes_per_node(devices, accelerator)
    if accelerator in ("auto", "cpu") and not torch.cuda.is_available():
        runtime.configure_cpu(threads or max(1, runtime.idle_cores() // n_procs))
    run = {"config": cfg.to_dict(), "data_fingerprint": source.fingerprint(), "data": source.name,
           "augment": list(augment), "batch_size": batch_size, "lr": lr, "val_fraction": val_fraction,
           "seed": seed, "precision": precision}
    if weight_average > 0:  # absent for the raw-weight recipe, so runs of earlier versions still resume
        run["weight_average"] = weight_average
    if resume:
        _check_resume_matches(out_dir, run)

    L.seed_everything(seed, workers=True, verbose=False)
    module = PixelCNNModule(cfg.to_dict(), lr=lr, warmup_steps=warmup_steps, augment=augment,
                            weight_average=weight_average, evaluate_raw=evaluate_raw)
    datamodule = ImageDataModule(source, batch_size, val_fraction, seed)
    has_val = len(datamodule.val_idx) > 0
    trainer, ckpt_cb = _make_trainer(out_dir, resume=resume, has_val=has_val, max_steps=max_steps, max_epochs=max_epochs,
                                     precision=precision, devices=devices, num_nodes=num_nodes, strategy=strategy,
                                     accelerator=accelerator, patience=early_stopping_patience,
                                     progress=progress, callbacks=callbacks, keep_raw=module.evaluate_raw,
                                     steps_per_epoch=math.ceil(len(datamodule.train_idx) / batch_size))
    if trainer.is_global_zero:
        out_dir.mkdir(parents=True, exist_ok=True)
        with atomic_file(out_dir / RUN_FILE) as tmp:
            tmp.write_text(json.dumps(run, indent=2) + "\n", encoding="utf-8")
    started = time.perf_counter()
    _fit(trainer, module, datamodule, ckpt_path=str(last_ckpt) if resume else None)
    elapsed = time.perf_counter() - started
    if not trainer.is_global_zero:
        return None
    return _finish(module, trainer, ckpt_cb, source, datamodule, out_dir, run, elapsed)


# ------------------------------------------------------------------------------ ensembles
@dataclass
class EnsembleResult:
    """What :func:`train_ensemble` produced.

    Attributes:
        ensemble_dir: the finished ensemble folder (``ensemble.json`` + one model folder per member).
        members: member name -> TrainResult (a member finished by an earlier run has its recorded metrics).
        trained: names of the members trained (or continued) by this run, in order.
    """

    ensemble_dir: Path
    members: dict
    trained: list


def parse_seeds(seeds: str | Sequence[int]) -> list[int]:
    """``--seeds``: a comma list of distinct seeds (``0,1,2``) or a range ``0-4`` (both ends included).

    Args:
        seeds: the option's text, or a sequence of ints.

    Returns:
        the seeds, in the order given.
    """
    from morphllr.limits import SEED_MAX

    what = f"--seeds {seeds if isinstance(seeds, str) else ','.join(map(str, seeds))}"
    if isinstance(seeds, str):
        text = seeds.strip()
        match = re.fullmatch(r"([0-9]{1,10})\s*-\s*([0-9]{1,10})", text)
        if match:
            lo, hi = int(match.group(1)), int(match.group(2))
            if hi < lo:
                raise MorphllrError(f"{what}: the range ends before it starts; e.g. --seeds 0-4")
            if hi - lo + 1 > MAX_ENSEMBLE_MEMBERS:
                raise MorphllrError(f"{what}: {hi - lo + 1} members; an ensemble holds at most {MAX_ENSEMBLE_MEMBERS}")
            values = list(range(lo, hi + 1))
        else:
            parts = [part.strip() for part in text.split(",")]
            if not parts or not all(re.fullmatch(r"[0-9]{1,10}", part) for part in parts):
                raise MorphllrError(f"{what}: give seeds as a comma list of whole numbers, e.g. --seeds 0,1,2 "
                                    "(or a range, --seeds 0-4)")
            values = [int(part) for part in parts]
    else:
        try:
            values = [int(v) for v in seeds]
        except (TypeError, ValueError):
            raise MorphllrError(f"{what}: give the seeds as whole numbers") from None
        if any(int(v) != v for v in seeds):
            raise MorphllrError(f"{what}: give the seeds as whole numbers")
    if not values:
        raise MorphllrError(f"{what}: give at least one seed, e.g. --seeds 0,1,2")
    if len(values) > MAX_ENSEMBLE_MEMBERS:
        raise MorphllrError(f"{what}: {len(values)} members; an ensemble holds at most {MAX_ENSEMBLE_MEMBERS}")
    bad = [v for v in values if not 0 <= v <= SEED_MAX]
    if bad:
        raise MorphllrError(f"{what}: seed {bad[0]} is outside 0..{SEED_MAX}")
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise MorphllrError(f"{what}: seed {repeated[0]} is given twice; each member needs its own seed")
    return values


def check_ensemble_dir(out_dir: str | Path, seeds: Sequence[int], resume: bool, overwrite: bool) -> None:
    """Judge an ensemble folder before any work, as :func:`check_out_dir` does for one model.

    * new (missing or empty) folder: fine (not with ``resume``);
    * ``resume``: the folder must hold an ensemble run (member folders, maybe an index) whose members are all
      among ``seeds``; finished members are kept, the others continued or started (:func:`train_ensemble`);
    * otherwise an existing ensemble, unfinished run or single model needs ``overwrite``, and is replaced only
      if it holds nothing morphllr did not write.

    Args:
        out_dir: the ensemble folder.
        seeds: the members' seeds (parsed).
        resume: ``--resume``.
        overwrite: ``--overwrite``.
    """
    out_dir = Path(out_dir)
    text = ",".join(str(s) for s in seeds)
    if not out_dir.exists():
        if resume:
            raise MorphllrError(f"{out_dir}: no ensemble run to resume; start it without --resume")
        return
    if not out_dir.is_dir():
        raise MorphllrError(f"{out_dir}: exists and is not a folder; choose another --out")
    layout = _layout(out_dir)
    single = layout.entries & RUN_ENTRIES
    if resume:
        if single:
            raise MorphllrError(f"{out_dir}: holds a single model run, not an ensemble; continue it with --resume "
                                "without --seeds")
        if not layout.is_ensemble:
            raise MorphllrError(f"{out_dir}: holds no ensemble run to resume; start it without --resume")
        listed = [m["name"] for m in read_ensemble_index(out_dir)["members"]] if layout.has_index else []
        extra = sorted((set(layout.members) | set(listed)) - {member_name(s) for s in seeds},
                       key=lambda n: (len(n), n))
        if extra:
            raise MorphllrError(f"{out_dir}: holds member(s) {', '.join(extra)} that --seeds {text} does not name; give "
                                f"every seed of the run (e.g. --seeds {layout.seeds_text}) or start again with "
                                "--overwrite")
        return
    if not layout.entries:
        return
    if not overwrite:
        if layout.has_index:
            what, fix = "a finished ensemble", "--overwrite to replace it"
        elif layout.members:
            what, fix = "an unfinished ensemble run", "--resume to continue it or --overwrite to start again"
        elif META_FILE in layout.entries:
            what, fix = "a finished model", "--overwrite to replace it"
        else:
            what, fix = "an unfinished training run", "--overwrite to replace it"
        raise MorphllrError(f"{out_dir}: already holds {what}; pass {fix}, or choose another --out")
    _refuse_foreign(out_dir, layout)


def _finished_member(member_dir: Path, name: str, seed: int, fingerprint: str, config: PixelCNNConfig,
                     out_dir: Path) -> TrainResult:
    """A member an earlier run finished, checked to belong to this ensemble (same data, network and seed)."""
    meta = read_meta(member_dir)
    fix = (f"use the same DATA and options as the interrupted run, delete {member_dir} to retrain that member, or "
           "start again with --overwrite")
    if meta.get("data_fingerprint") != fingerprint:
        raise MorphllrError(f"{member_dir}: finished member {name} was trained on other images than this --resume; {fix}")
    if PixelCNNConfig.from_dict(meta["config"]) != config:
        raise MorphllrError(f"{member_dir}: finished member {name} has other network settings than this --resume; {fix}")
    recorded = ((meta.get("extra") or {}).get("training") or {}).get("seed")
    if recorded is not None and recorded != seed:
        raise MorphllrError(f"{member_dir}: member {name} was trained with seed {recorded}; {fix}")
    weights = member_dir / WEIGHTS_FILE
    expected = meta.get("weights_sha256")
    if not weights.is_file() or (expected and file_sha256(weights) != expected):
        raise MorphllrError(f"{weights}: missing or does not match {META_FILE} (member {name}); delete {member_dir} "
                            f"and resume to retrain it, or recopy {out_dir}")
    return TrainResult(model_dir=member_dir, metrics=dict(meta.get("metrics") or {}))


@claims(_model_dir_output, inputs=("data",), kind="dir", existing="keep")
def train_ensemble(data: Any, out_dir: str | Path, seeds: str | Sequence[int], *,
                   config: PixelCNNConfig | dict | str = "zanisi21", val_fraction: float = 0.1,
                   input_norm: str | Sequence[float] = "auto", key: str | None = None, resume: bool = False,
                   overwrite: bool = False, progress: bool = True, **options: Any) -> EnsembleResult | None:
    """Train one model per seed into an ensemble folder (``morphllr train DATA --out DIR --seeds 0,1,2``).

    Members are trained one after another with :func:`train_model` into ``DIR/seedK/`` (ordinary model
    folders), with the same options except the seed (initial weights, validation split, augmentation).
    The input mapping of ``input_norm="auto"`` is fixed once, from the first seed's split, so every member
    has the same network config (and member ``seedK`` equals a single model trained with ``--seed K`` when
    K is the first seed).  ``DIR/ensemble.json`` (:func:`morphllr.model.io.write_ensemble_index`) is
    written last, atomically: a failure or Ctrl-C leaves finished and unfinished member folders but no
    index, so nothing loads it as an ensemble.

    ``resume`` continues such a run: finished members (model.json) are checked (same images, network and
    seed, weights intact) and kept, members with a last checkpoint continue from it, members without one
    start again, missing ones are trained; ``seeds`` may add members to a finished ensemble but must name
    every member already there.  ``overwrite`` replaces an earlier ensemble, run or model of ours.

    Args:
        data: as in :func:`train_model`.
        out_dir: the ensemble folder.
        seeds: the members' seeds: a sequence of ints or the ``--seeds`` text (``0,1,2`` or ``0-4``).
        config, val_fraction, input_norm, key: as in :func:`train_model`, shared by every member.
        resume: continue an interrupted ensemble run (see above).
        overwrite: replace an existing ensemble / run / model in ``out_dir``.
        progress: progress bars, and a line naming each member as it starts.
        options: every other :func:`train_model` option (max_steps, batch_size, lr, ...), except ``seed``.

    Returns:
        EnsembleResult (None on non-zero ranks of a multi-process run).
    """
    if "seed" in options:
        raise MorphllrError("--seed and --seeds: give one of them (--seeds trains one member per seed)")
    seeds = parse_seeds(seeds)
    out_dir = Path(out_dir)
    rank0 = _launched_rank() == 0
    if rank0:
        check_ensemble_dir(out_dir, seeds, resume, overwrite)
    # what all members share: the same images, config and network input mapping
    source = open_images(data, key=key) if key is not None else open_images(data)
    cfg = build_config(config, shape=source.shape)
    train_idx, _ = split_indices(len(source), val_fraction, seeds[0])
    validate_source(source, cfg.head)
    member_cfg = with_input_norm(cfg, input_norm, source, train_idx, seeds[0])
    if cfg.head in DISCRETE_HEADS or input_norm == "preset":
        norm: Any = input_norm
    else:
        norm = (member_cfg.input_shift, member_cfg.input_scale)
    fingerprint = source.fingerprint()
    if rank0 and not resume and out_dir.is_dir() and any(out_dir.iterdir()):
        _clear_ours(out_dir)  # check_ensemble_dir allowed it (--overwrite of our own files)
    results: dict[str, TrainResult] = {}
    trained: list[str] = []
    for position, seed in enumerate(seeds, start=1):
        name = member_name(seed)
        member_dir = out_dir / name
        state = _member_state(member_dir) if resume else "new"
        if state == "finished":
            results[name] = _finished_member(member_dir, name, seed, fingerprint, member_cfg, out_dir)
            if progress and rank0:
                print(f"member {name} ({position}/{len(seeds)}): finished by an earlier run, kept", file=sys.stderr,
                      flush=True)
            continue
        if progress and rank0:
            verb = {"resume": "continuing", "restart": "starting again", "new": "training"}[state]
            print(f"member {name} ({position}/{len(seeds)}): {verb} with seed {seed}", file=sys.stderr, flush=True)
        result = train_model(data, member_dir, config=cfg, seed=seed, val_fraction=val_fraction, input_norm=norm,
                             key=key, resume=state == "resume", overwrite=state == "restart", progress=progress,
                             **options)
        trained.append(name)
        if result is not None:
            results[name] = result
    if not rank0:
        return None
    write_ensemble_index(out_dir, [(member_name(s), s, member_name(s)) for s in seeds])
    return EnsembleResult(ensemble_dir=out_dir, members=results, trained=trained)


def _member_state(member_dir: Path) -> str:
    """How ``--resume`` treats a member folder: finished, resume (has a last checkpoint), restart, or new."""
    if not member_dir.is_dir() or not any(member_dir.iterdir()):
        return "new"
    if (member_dir / META_FILE).is_file():
        return "finished"
    if (member_dir / CHECKPOINT_DIR / "last.ckpt").is_file():
        return "resume"
    return "restart"  # interrupted before its first checkpoint: nothing to continue


def _fit(trainer, module, datamodule, ckpt_path: str | None) -> None:
    """trainer.fit, with Ctrl-C surfacing as KeyboardInterrupt (the last checkpoint is kept).

    Lightning turns an interrupt into ``exit(1)`` and leaves SIGINT ignored; a library
    call must instead raise, and restore the handler for the caller.
    """
    in_main_thread = threading.current_thread() is threading.main_thread()
    old_handler = signal.getsignal(signal.SIGINT) if in_main_thread else None
    try:
        # weights_only: resuming never unpickles arbitrary objects from a checkpoint
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except SystemExit:
        if trainer.interrupted:
            raise KeyboardInterrupt from None
        raise
    finally:
        if in_main_thread and old_handler is not None:
            signal.signal(signal.SIGINT, old_handler)
    if trainer.interrupted:
        raise KeyboardInterrupt


def _launched_rank() -> int:
    """Global rank of this process as told by its launcher (0 when not launched as a worker).

    Lightning's own DDP launcher starts workers with LOCAL_RANK set; torchrun sets RANK and
    SLURM sets SLURM_PROCID (only meaningful inside an srun step with several tasks).
    """
    for var in ("RANK", "LOCAL_RANK"):
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    value = os.environ.get("SLURM_PROCID", "")
    if value.isdigit() and int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1:
        return int(value)
    return 0


def _processes_per_node(devices: int | str, accelerator: str) -> int:
    if isinstance(devices, int):
        return max(1, devices)
    text = str(devices)
    return int(text) if text.isdigit() and int(text) > 0 else 1


def _make_trainer(out_dir: Path, *, resume: bool, has_val: bool, max_steps, max_epochs, precision, devices, num_nodes,
                  strategy, accelerator, patience, progress, callbacks, steps_per_epoch: int, keep_raw: bool = False):
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    monitor = "val_bpd" if has_val else "train_bpd_epoch"
    ckpt_cb = ModelCheckpoint(dirpath=str(out_dir / CHECKPOINT_DIR), filename="best", monitor=monitor, mode="min",
                              save_top_k=1, save_last=True, enable_version_counter=False)
    cbs: list = [ckpt_cb, Throughput(), *callbacks]
    if keep_raw and has_val:
        cbs.append(ModelCheckpoint(dirpath=str(out_dir / CHECKPOINT_DIR), filename="best_raw", monitor="val_bpd_raw",
                                   mode="min", save_top_k=1, enable_version_counter=False))
    if progress:
        cbs.append(_TrainingBar(refresh_rate=max(1, min(20, steps_per_epoch // 5 or 1))))
    if patience is not None:
        cbs.append(EarlyStopping(monitor=monitor, mode="min", patience=int(patience)))
    if max_steps is None and max_epochs is None:
        max_epochs = 20
    trainer = L.Trainer(
        default_root_dir=str(out_dir), max_steps=max_steps if max_steps is not None else -1,
        max_epochs=max_epochs if max_steps is None else None, precision=precision, devices=devices,
        num_nodes=num_nodes, strategy=strategy, accelerator=accelerator, callbacks=cbs, logger=_loggers(out_dir, resume),
        enable_progress_bar=progress, enable_model_summary=False, log_every_n_steps=max(1, min(50, steps_per_epoch)),
        num_sanity_val_steps=0, limit_val_batches=1.0 if has_val else 0, deterministic=False,
    )
    return trainer, ckpt_cb


def _finish(module, trainer, ckpt_cb, source, datamodule, out_dir: Path, run: dict, elapsed: float) -> TrainResult:
    """Load the best checkpoint, measure final bits/dim and write the model files."""
    best_path = ckpt_cb.best_model_path or str(out_dir / CHECKPOINT_DIR / "last.ckpt")
    history = list(module.val_history)
    result = _write_model(best_path, module.model_prefix, module.net.config, source, datamodule, out_dir, run,
                          trainer, elapsed, history)
    raw_best = out_dir / CHECKPOINT_DIR / "best_raw.ckpt"
    if module.evaluate_raw and raw_best.is_file():
        raw_run = {k: v for k, v in run.items() if k != "weight_average"}
        _write_model(str(raw_best), "net.", module.net.config, source, datamodule, out_dir / RAW_DIR, raw_run, trainer,
                     elapsed, list(module.raw_history))
    return result


def _write_model(best_path: str, prefix: str, config: PixelCNNConfig, source, datamodule, out_dir: Path, run: dict,
                 trainer, elapsed: float, history: list | None) -> TrainResult:
    from morphllr.score import bits_per_dim, log_likelihood

    checkpoint = torch.load(best_path, map_location="cpu", weights_only=True)
    state = checkpoint["state_dict"]
    net_state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    net = PixelCNN(config)
    net.load_state_dict(net_state)
    net.eval()
    cfg = net.config
    n_dims = cfg.in_channels * cfg.height * cfg.width
    rng = np.random.default_rng(run["seed"] + 1)
    train_idx = datamodule.train_idx
    if len(train_idx) > TRAIN_EVAL_IMAGES:
        train_idx = np.sort(rng.choice(train_idx, TRAIN_EVAL_IMAGES, replace=False))
    train_bpd = float(bits_per_dim(log_likelihood(net, _read_in_chunks(source, train_idx), bf16=False), n_dims).mean())
    val_bpd = None
    if len(datamodule.val_idx):
        val_bpd = float(bits_per_dim(log_likelihood(net, _read_in_chunks(source, datamodule.val_idx), bf16=False), n_dims).mean())
    step = checkpoint.get("global_step")
    best_step = int(step) if isinstance(step, (int, float)) else None
    metrics = {
        "train_bits_per_dim": train_bpd,
        "val_bits_per_dim": val_bpd,
        "train_eval_images": int(len(train_idx)),
        "val_images": int(len(datamodule.val_idx)),
        "train_images": int(len(datamodule.train_idx)),
        "steps": int(trainer.global_step),
        "epochs": int(trainer.current_epoch),
        "best_step": best_step,
        "train_seconds_this_run": round(elapsed, 2),
    }
    from morphllr.domain import training_record  # issue 13: what the model saw, for compare's domain guards

    metrics["domain"] = training_record(net, source, datamodule.val_idx, train_idx)
    if history is not None:
        metrics["convergence"] = convergence(history, final_step=int(trainer.global_step))
    extra = {"training": {k: v for k, v in run.items() if k not in ("config", "data_fingerprint")},
             "best_checkpoint": str(Path(best_path).relative_to(out_dir)) if Path(best_path).is_relative_to(out_dir)
             else best_path}
    save_model(net, out_dir, preprocessing=source.preprocessing, data_fingerprint=run["data_fingerprint"],
               metrics=metrics, extra=extra, in_place=True)
    return TrainResult(model_dir=out_dir, metrics=metrics)


def load_checkpoint(path: str | Path) -> dict:
    """Read a training checkpoint safely: ``weights_only``, so no code in it ever runs.

    Args:
        path: the ``.ckpt`` file.

    Returns:
        the checkpoint dict.
    """
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*pickle protocol.*")  # foreign files: refused below anyway
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - UnpicklingError, RuntimeError, EOFError, ...: all mean the same here
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise MorphllrError(
            f"{path}: cannot be loaded safely as a morphllr checkpoint ({type(exc).__name__}: {first[:160]}); it is "
            "damaged or was not written by morphllr - delete it or start without --resume") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise MorphllrError(f"{path}: is not a morphllr training checkpoint (no state_dict); delete it or start "
                            "without --resume")
    return checkpoint
