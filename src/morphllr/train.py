"""Train a PixelCNN++ density model on an image set (Lightning).

``train_model(data, out_dir, ...)`` fits p(x) by maximum likelihood: the loss is the
mean negative log-likelihood in bits per dimension (the usual PixelCNN unit: lower is
better; it does not depend on the image size).  A seeded fraction of the images is
held out to measure validation bits/dim every epoch; the best epoch is kept.

The output folder holds, during training, ``checkpoints/`` (Lightning's ``best`` and
``last``; ``--resume`` continues from ``last``), ``logs/`` (CSV metrics, TensorBoard
when installed) and ``training.json`` (what the run was asked to do).  At the end the
best weights are written as a model (``weights.safetensors`` + ``model.json``, see
:mod:`morphllr.modelio`), ``model.json`` last, so a folder with a ``model.json`` is
always a finished model.

Augmentation (Zanisi et al. 2021 rotate the training galaxies by random angles in
0-180 deg): ``rot`` rotates continuous-head images by a uniform random angle with
bicubic interpolation and reflected edges (sky noise continues past the border
instead of a constant-filled corner), while for the discretized head only the lossless
multiples of 90 deg are used so pixel values stay integers; ``flip`` mirrors half the
images left-right.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
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

from . import runtime
from .atomic import atomic_file, claims
from .errors import MorphllrError
from .modelio import META_FILE, WEIGHTS_FILE, save_model
from .model import PixelCNN, PixelCNNConfig
from .sources import DISCRETE_HEADS, ImageSource, open_images, validate_source

AUGMENTATIONS = ("rot", "flip")
CHECKPOINT_DIR = "checkpoints"
LOG_DIR = "logs"
RUN_FILE = "training.json"
# Splits smaller than this are held in memory as one array (fast random batches);
# larger ones are read batch by batch from the source.
IN_MEMORY_BYTES = 2 * 1024**3
# After training, bits/dim on (at most) this many training images without dropout or
# augmentation is recorded next to the validation value (to see over-fitting).
TRAIN_EVAL_IMAGES = 2048
LN2 = math.log(2.0)


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

    Args:
        config: the network config (dict form, so that checkpoints hold only plain data).
        lr: peak learning rate of Adam.
        warmup_steps: linear warm-up steps.
        min_lr_ratio: cosine decay floor as a fraction of ``lr``.
        augment: augmentation names.
    """

    def __init__(self, config: dict, lr: float = 1e-3, warmup_steps: int = 200, min_lr_ratio: float = 0.05,
                 augment: Sequence[str] = ()):
        super().__init__()
        self.save_hyperparameters()
        self.net = PixelCNN(PixelCNNConfig.from_dict(dict(config)))
        cfg = self.net.config
        self.n_dims = cfg.in_channels * cfg.height * cfg.width
        self.augment = tuple(augment)
        self.discrete = cfg.head in DISCRETE_HEADS
        self.net.to(memory_format=torch.channels_last)

    def bits_per_dim(self, x: torch.Tensor) -> torch.Tensor:
        """Per-image bits/dim (B,) of a batch."""
        x = x.contiguous(memory_format=torch.channels_last)
        return -self.net.log_prob(x).float() / (self.n_dims * LN2)

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

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        bpd = self.bits_per_dim(batch)
        self.log("val_bpd", bpd.mean(), prog_bar=True, on_epoch=True, batch_size=len(batch), sync_dist=True)

    def configure_optimizers(self):
        hp = self.hparams
        # betas as in PixelCNN++ (Salimans et al. 2017): slow second-moment decay
        opt = torch.optim.Adam(self.parameters(), lr=hp.lr, betas=(0.95, 0.9995))
        total = max(1, int(self.trainer.estimated_stepping_batches)) if self.trainer else 1
        warmup = min(int(hp.warmup_steps), max(1, total // 10))
        schedule = WarmupCosine(warmup, total, float(hp.min_lr_ratio))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


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
        preset: name in ``morphllr.model.PRESETS``, a config or a dict.
        shape: (N, C, H, W) of the training images (sets in_channels/height/width).
        overrides: config fields to change (None values are ignored).

    Returns:
        the PixelCNNConfig.
    """
    from .model import PRESETS

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
    entries = {p.name for p in out_dir.iterdir()}
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
    foreign = sorted(entries - {CHECKPOINT_DIR, LOG_DIR, RUN_FILE, META_FILE, WEIGHTS_FILE})
    if foreign:
        raise MorphllrError(f"{out_dir}: contains files morphllr did not write ({', '.join(foreign[:3])}); "
                            "refusing to delete them - choose another --out")


def _prepare_out_dir(out_dir: Path, resume: bool, overwrite: bool) -> None:
    """Check the folder (:func:`check_out_dir`); clear our old run or model on --overwrite."""
    check_out_dir(out_dir, resume, overwrite)
    if resume or not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    # the old model.json goes first so a crash never leaves an old model next to new checkpoints
    for name in (META_FILE, WEIGHTS_FILE, RUN_FILE):
        (out_dir / name).unlink(missing_ok=True)
    for name in (CHECKPOINT_DIR, LOG_DIR):
        shutil.rmtree(out_dir / name, ignore_errors=True)


def _check_resume_matches(out_dir: Path, run: dict) -> None:
    path = out_dir / RUN_FILE
    if not path.exists():
        return
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return
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
                key: str | None = None, input_norm: str | Sequence[float] = "auto") -> TrainResult | None:
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
    augment = parse_augment(augment)
    precision = _resolve_precision(precision)
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
    if resume:
        _check_resume_matches(out_dir, run)

    L.seed_everything(seed, workers=True, verbose=False)
    module = PixelCNNModule(cfg.to_dict(), lr=lr, warmup_steps=warmup_steps, augment=augment)
    datamodule = ImageDataModule(source, batch_size, val_fraction, seed)
    has_val = len(datamodule.val_idx) > 0
    trainer, ckpt_cb = _make_trainer(out_dir, resume=resume, has_val=has_val, max_steps=max_steps, max_epochs=max_epochs,
                                     precision=precision, devices=devices, num_nodes=num_nodes, strategy=strategy,
                                     accelerator=accelerator, patience=early_stopping_patience,
                                     progress=progress, callbacks=callbacks,
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
                  strategy, accelerator, patience, progress, callbacks, steps_per_epoch: int):
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    monitor = "val_bpd" if has_val else "train_bpd_epoch"
    ckpt_cb = ModelCheckpoint(dirpath=str(out_dir / CHECKPOINT_DIR), filename="best", monitor=monitor, mode="min",
                              save_top_k=1, save_last=True, enable_version_counter=False)
    cbs: list = [ckpt_cb, Throughput(), *callbacks]
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
    from .score import bits_per_dim, log_likelihood

    best_path = ckpt_cb.best_model_path or str(out_dir / CHECKPOINT_DIR / "last.ckpt")
    state = torch.load(best_path, map_location="cpu", weights_only=True)["state_dict"]
    net_state = {k[len("net."):]: v for k, v in state.items() if k.startswith("net.")}
    net = PixelCNN(module.net.config)
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
    best_step = _checkpoint_step(best_path)
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


def _checkpoint_step(path: str) -> int | None:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True).get("global_step"))
    except (OSError, RuntimeError, TypeError, ValueError):
        return None
