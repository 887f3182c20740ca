"""Training batches: the seeded train/validation split and the loaders over an image source.

Splits that fit in :data:`IN_MEMORY_BYTES` are read once into memory (fast random batches); larger
ones are read batch by batch from the source.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import lightning.pytorch as L
from torch.utils.data import DataLoader, Dataset

from morphllr.data.inputs import ImageSource
from morphllr.errors import MorphllrError


# Splits smaller than this are held in memory as one array (fast random batches);
# larger ones are read batch by batch from the source.
IN_MEMORY_BYTES = 2 * 1024**3


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
            self._array = read_in_chunks(source, self.indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.__getitems__([i])[0]

    def __getitems__(self, positions: Sequence[int]) -> np.ndarray:
        positions = np.asarray(positions, dtype=np.int64)
        if self._array is not None:
            return self._array[positions]
        return self.source.read(self.indices[positions])


def read_in_chunks(source: ImageSource, indices: np.ndarray, chunk: int = 1024) -> np.ndarray:
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
