"""The Lightning Trainer of a training run: callbacks, loggers, precision, process rank, Ctrl-C.

:func:`make_trainer` builds it (best/last checkpoints, throughput, progress bar, early stopping,
CSV/TensorBoard logs); :func:`fit_interruptibly` runs it so that Ctrl-C raises KeyboardInterrupt
with the last checkpoint kept; :func:`launched_rank` tells a launched worker from rank 0.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import warnings
from pathlib import Path

import lightning.pytorch as L
from lightning.pytorch.callbacks import TQDMProgressBar

from morphllr import runtime
from morphllr.errors import MorphllrError
from morphllr.train.folders import CHECKPOINT_DIR, LOG_DIR


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


def quiet_lightning() -> None:
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in (".*does not have many workers.*", ".*number of training batches.*",
                    ".*LeafSpec.*", ".*isinstance.*treespec.*", ".*Checkpoint directory.*exists and is not empty.*",
                    ".*_pytree.*", ".*`weights_only`.*", ".*could not find the monitored key.*"):
        warnings.filterwarnings("ignore", message=pattern)


def resolve_precision(precision: str | None) -> str:
    if precision in (None, "auto"):
        return runtime.default_precision()
    precision = str(precision)
    allowed = ("bf16-mixed", "32", "32-true", "16-mixed", "bf16-true")
    if precision not in allowed:
        raise MorphllrError(f"--precision: {precision!r} is not one of {', '.join(allowed)}")
    return precision


def fit_interruptibly(trainer, module, datamodule, ckpt_path: str | None) -> None:
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


def launched_rank() -> int:
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


def processes_per_node(devices: int | str, accelerator: str) -> int:
    if isinstance(devices, int):
        return max(1, devices)
    text = str(devices)
    return int(text) if text.isdigit() and int(text) > 0 else 1


def make_trainer(out_dir: Path, *, resume: bool, has_val: bool, max_steps, max_epochs, precision, devices, num_nodes,
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
