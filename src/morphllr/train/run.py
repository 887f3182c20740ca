"""Train a PixelCNN++ density model on an image set: :func:`train_model`, checkpoints and resume.

``train_model(data, out_dir, ...)`` fits p(x) by maximum likelihood: the loss is the
mean negative log-likelihood in bits per dimension (the usual PixelCNN unit: lower is
better; it does not depend on the image size; :mod:`morphllr.train.module`).  A seeded
fraction of the images is held out (:mod:`morphllr.train.batches`) to measure validation
bits/dim every epoch; the best epoch is kept.

The output folder (:mod:`morphllr.train.folders`) holds, during training, ``checkpoints/``
(Lightning's ``best`` and ``last``; ``--resume`` continues from ``last``), ``logs/`` (CSV
metrics, TensorBoard when installed) and ``training.json`` (what the run was asked to do).
At the end the best weights are written as a model (``weights.safetensors`` + ``model.json``,
see :mod:`morphllr.model.io`), ``model.json`` last, so a folder with a ``model.json`` is
always a finished model.  Augmentation: :mod:`morphllr.train.augment`; ensembles:
:mod:`morphllr.train.ensemble`.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import lightning.pytorch as L

from morphllr import runtime
from morphllr.atomic import atomic_file, claims
from morphllr.data.imageset import sketch_batches
from morphllr.data.inputs import open_images, validate_source
from morphllr.errors import MorphllrError
from morphllr.model.heads import bits_per_dim, is_discrete_head
from morphllr.model.io import save_model
from morphllr.model.pixelcnn import NETWORK_PRESETS, PixelCNN, PixelCNNConfig
from morphllr.score import log_likelihood, record_training_domain
from morphllr.train.augment import parse_augment
from morphllr.train.batches import ImageDataModule, read_in_chunks, split_indices
from morphllr.train.convergence import convergence
from morphllr.train.folders import CHECKPOINT_DIR, RAW_DIR, RUN_FILE, check_out_dir, prepare_out_dir
from morphllr.train.module import PixelCNNModule
from morphllr.train.trainer import (fit_interruptibly, launched_rank, make_trainer, processes_per_node, quiet_lightning,
                                    resolve_precision)

# After training, bits/dim on (at most) this many training images without dropout or
# augmentation is recorded next to the validation value (to see over-fitting).
TRAIN_EVAL_IMAGES = 2048


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
        preset: name in ``morphllr.model.pixelcnn.NETWORK_PRESETS``, a config or a dict.
        shape: (N, C, H, W) of the training images (sets in_channels/height/width).
        overrides: config fields to change (None values are ignored).

    Returns:
        the PixelCNNConfig.
    """
    if isinstance(preset, PixelCNNConfig):
        base = preset
    elif isinstance(preset, dict):
        base = PixelCNNConfig.from_dict(preset)
    elif preset in NETWORK_PRESETS:
        base = NETWORK_PRESETS[preset]
    else:
        raise MorphllrError(f"--preset: unknown preset {preset!r}; choose one of {', '.join(NETWORK_PRESETS)}")
    changes = {k: v for k, v in overrides.items() if v is not None}
    if shape is not None:
        changes.update(in_channels=int(shape[1]), height=int(shape[2]), width=int(shape[3]))
    return base.with_(**changes)


def keeps_config_input_norm(head: str, input_norm: str | Sequence[float]) -> bool:
    """Whether ``input_norm`` leaves the config's input mapping as it is.

    It does for "preset" (asked for) and for a discretized head, which maps its 8-bit pixels to the
    network's range itself and never reads ``input_shift``/``input_scale``.
    """
    return is_discrete_head(head) or input_norm == "preset"


def with_input_norm(cfg: PixelCNNConfig, input_norm: str | Sequence[float], source: Any,
                    train_idx: np.ndarray, seed: int, sample: int = 512) -> PixelCNNConfig:
    """The config with its network input mapping chosen by ``input_norm`` (see :func:`train_model`).

    "auto" uses the mean and standard deviation of (up to ``sample``, seeded) training images, so the
    network sees unit-scale inputs whatever the preprocessing: with the paper's [0, 1] stretch and
    the preset's fixed 0.5 scale, sky noise of ~0.005 becomes 0.01 network units and the Gaussian
    head needs thousands of steps just to shrink its scale that far.

    Returns:
        the (possibly) updated config; unchanged where :func:`keeps_config_input_norm`.
    """
    if keeps_config_input_norm(cfg.head, input_norm):
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


def model_dir_output(arguments: dict) -> list:
    """The folder claimed by :func:`train_model`: only rank 0 of a multi-process run writes it."""
    return [("--out", arguments["out_dir"])] if launched_rank() == 0 else []


# the folder may exist (--resume continues it): check_out_dir judges it, first thing in the body
@claims(model_dir_output, inputs=("data",), kind="dir", existing="keep")
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
            (0: off; see :class:`morphllr.train.module.PixelCNNModule`).
        evaluate_raw: with ``weight_average``, also validate the raw weights every epoch, keep their best
            checkpoint and write them as a second model in ``out_dir/raw/`` (recipe comparisons such as
            ``benchmarks/convergence.py``; costs one more validation pass per epoch).

    Returns:
        TrainResult (None on non-zero ranks of a multi-process run).
    """
    quiet_lightning()
    out_dir = Path(out_dir)
    if launched_rank() == 0:  # before any work; other ranks start once rank 0 has set up the folder
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
    precision = resolve_precision(precision)
    if weight_average > 0 and precision.endswith("-true") and not precision.startswith("32"):
        raise MorphllrError(f"--weight-average with --precision {precision}: the average's small per-step updates "
                            "round away in half-precision weights; use --precision bf16-mixed or 32")
    train_idx, _ = split_indices(len(source), val_fraction, seed)  # validates the fraction before any work
    validate_source(source, is_discrete_head(cfg.head))
    cfg = with_input_norm(cfg, input_norm, source, train_idx, seed)
    if launched_rank() == 0:  # other ranks start after rank 0 has already set up the folder
        prepare_out_dir(out_dir, resume, overwrite)
    last_ckpt = out_dir / CHECKPOINT_DIR / "last.ckpt"
    if resume and not last_ckpt.is_file():
        raise MorphllrError(f"{last_ckpt}: no checkpoint to resume from; start the run without --resume")
    if resume:
        load_checkpoint(last_ckpt)  # refused in one line before any training starts

    n_procs = processes_per_node(devices, accelerator)
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
    trainer, ckpt_cb = make_trainer(out_dir, resume=resume, has_val=has_val, max_steps=max_steps, max_epochs=max_epochs,
                                     precision=precision, devices=devices, num_nodes=num_nodes, strategy=strategy,
                                     accelerator=accelerator, patience=early_stopping_patience,
                                     progress=progress, callbacks=callbacks, keep_raw=module.evaluate_raw,
                                     steps_per_epoch=math.ceil(len(datamodule.train_idx) / batch_size))
    if trainer.is_global_zero:
        out_dir.mkdir(parents=True, exist_ok=True)
        with atomic_file(out_dir / RUN_FILE) as tmp:
            tmp.write_text(json.dumps(run, indent=2) + "\n", encoding="utf-8")
    started = time.perf_counter()
    fit_interruptibly(trainer, module, datamodule, ckpt_path=str(last_ckpt) if resume else None)
    elapsed = time.perf_counter() - started
    if not trainer.is_global_zero:
        return None
    return _finish(module, trainer, ckpt_cb, source, datamodule, out_dir, run, elapsed)


def _finish(module, trainer, ckpt_cb, source, datamodule, out_dir: Path, run: dict, elapsed: float) -> TrainResult:
    """Load the best checkpoint, measure final bits/dim and write the model files."""
    best_path = ckpt_cb.best_model_path or str(out_dir / CHECKPOINT_DIR / "last.ckpt")
    history = list(module.val_history)
    sketch = sketch_batches(source.batches(256))  # one pass over the data, shared by both model folders
    result = _write_model(best_path, module.model_prefix, module.net.config, source, datamodule, out_dir, run,
                          trainer, elapsed, history, sketch)
    raw_best = out_dir / CHECKPOINT_DIR / "best_raw.ckpt"
    if module.evaluate_raw and raw_best.is_file():
        raw_run = {k: v for k, v in run.items() if k != "weight_average"}
        _write_model(str(raw_best), "net.", module.net.config, source, datamodule, out_dir / RAW_DIR, raw_run, trainer,
                     elapsed, list(module.raw_history), sketch)
    return result


def _write_model(best_path: str, prefix: str, config: PixelCNNConfig, source, datamodule, out_dir: Path, run: dict,
                 trainer, elapsed: float, history: list | None, sketch: dict) -> TrainResult:
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
    train_bpd = float(bits_per_dim(log_likelihood(net, read_in_chunks(source, train_idx), bf16=False), n_dims).mean())
    val_bpd = None
    if len(datamodule.val_idx):
        val_bpd = float(bits_per_dim(log_likelihood(net, read_in_chunks(source, datamodule.val_idx), bf16=False), n_dims).mean())
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
    # issue 13: what the model saw, for compare's domain guards
    metrics["domain"] = record_training_domain(net, source, datamodule.val_idx, train_idx)
    if history is not None:
        metrics["convergence"] = convergence(history, final_step=int(trainer.global_step))
    extra = {"training": {k: v for k, v in run.items() if k not in ("config", "data_fingerprint")},
             "best_checkpoint": str(Path(best_path).relative_to(out_dir)) if Path(best_path).is_relative_to(out_dir)
             else best_path}
    save_model(net, out_dir, preprocessing=source.preprocessing, data_fingerprint=run["data_fingerprint"],
               data_sketch=sketch, metrics=metrics, extra=extra, in_place=True)
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
