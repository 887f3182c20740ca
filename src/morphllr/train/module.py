"""The Lightning module that trains a PixelCNN: loss = mean negative log-likelihood in bits/dim.

:class:`PixelCNNModule` holds the network, the optional moving average of its weights (the model that
is validated and written), the augmentation of each training batch and the optimiser with its
warm-up + cosine learning-rate schedule (:class:`WarmupCosine`).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import lightning.pytorch as L

from morphllr.errors import MorphllrError
from morphllr.model.heads import bits_per_dim, is_discrete_head
from morphllr.model.pixelcnn import PixelCNN, PixelCNNConfig
from morphllr.train.augment import augment_batch


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
        self.discrete = is_discrete_head(cfg.head)
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

    def batch_bits_per_dim(self, x: torch.Tensor, net: PixelCNN | None = None) -> torch.Tensor:
        """Per-image bits/dim (B,) of a batch under ``net`` (default: the trained network)."""
        x = x.contiguous(memory_format=torch.channels_last)
        return bits_per_dim((self.net if net is None else net).log_prob(x).float(), self.n_dims)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        if self.augment:
            batch = augment_batch(batch, self.augment, self.discrete)
        loss = self.batch_bits_per_dim(batch).mean()
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
        bpd = self.batch_bits_per_dim(batch, self.averaged)
        self.log("val_bpd", bpd.mean(), prog_bar=True, on_epoch=True, batch_size=len(batch), sync_dist=True)
        if self.evaluate_raw:
            started = time.perf_counter()
            raw = self.batch_bits_per_dim(batch).mean()
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
