"""Data-stage benchmarks (issue 4).

    .venv/bin/python benchmarks/data.py                      # all data benchmarks
    .venv/bin/python benchmarks/data.py prepare segmentation # some of them

Targets: segmentation >= 300 images/s on 64x64 cutouts; ``morphllr prepare`` of
40,000 cutouts in <= 5 minutes (>= 133 images/s).  Each benchmark is a function
``bench_<name>() -> dict`` registered in BENCHMARKS; the archetype/fit benchmarks
live in their own functions further down.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def _galaxies(n: int, size: int, seed: int = 0) -> np.ndarray:
    """n noisy exponential discs with random centre offsets, sizes and one companion each."""
    rng = np.random.default_rng(seed)
    yy, xx = np.indices((size, size))
    out = np.empty((n, size, size), np.float32)
    for i in range(n):
        cx, cy = size / 2 + rng.uniform(-3, 3, 2)
        scale = rng.uniform(2, 6)
        ox, oy = rng.uniform(0, size, 2)
        out[i] = (rng.uniform(200, 2000) * np.exp(-np.hypot(xx - cx, yy - cy) / scale)
                  + 300 * np.exp(-np.hypot(xx - ox, yy - oy) / 1.5) + rng.normal(0, 5, (size, size)))
    return out


# ---------------------------------------------------------------------- prepare + segmentation
def bench_segmentation(n: int = 600, size: int = 64) -> dict:
    """Segmentation speed (sep) on n size x size cutouts; target >= 300 images/s."""
    from morphllr.segmentation import segment_batch

    images = _galaxies(n, size)
    segment_batch(images[:10])  # imports and first-call set-up are not what we measure
    start = time.perf_counter()
    _, _, found = segment_batch(images)
    seconds = time.perf_counter() - start
    return {"images": n, "size": size, "seconds": round(seconds, 3), "images_per_s": round(n / seconds, 1),
            "central_found_fraction": float(found.mean()), "target_images_per_s": 300}


def bench_prepare(n: int = 800, size: int = 140, workers: int = 1) -> dict:
    """``prepare`` (zanisi21) of n single FITS cutouts of size x size from disk.

    Reports images/s and the implied time for 40,000 cutouts (target <= 300 s).
    """
    from astropy.io import fits

    from morphllr import readers
    from morphllr.imageset import prepare_imageset
    from morphllr.preprocess import Preprocessing

    images = _galaxies(n, size, seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "fits"
        folder.mkdir()
        for i, image in enumerate(images):
            fits.PrimaryHDU(image).writeto(folder / f"g{i:05d}.fits")
        start, cpu_start = time.perf_counter(), time.process_time()
        files = readers.expand_inputs([folder])
        total = readers.count_images(files)
        report = prepare_imageset(readers.iter_images(files), Path(tmp) / "set.h5", Preprocessing.preset("zanisi21"),
                                  n=total, workers=workers)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        size_mb = (Path(tmp) / "set.h5").stat().st_size / 1e6
    rate = n / seconds
    return {"images": report["n_images"], "workers": workers, "seconds": round(seconds, 2),
            "images_per_s": round(rate, 1), "cpu_seconds_main_process": round(cpu, 2), "seconds_for_40000": round(40000 / rate), "target_seconds_for_40000": 300,
            "file_mb_per_1000_images": round(size_mb / n * 1000, 1), "load_average": os.getloadavg()[0]}


BENCHMARKS = {"segmentation": bench_segmentation, "prepare": bench_prepare}


def main(names: list[str]) -> None:
    for name in names or list(BENCHMARKS):
        if name not in BENCHMARKS:
            raise SystemExit(f"unknown benchmark {name}; choose from {list(BENCHMARKS)}")
        print(json.dumps({name: BENCHMARKS[name]()}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
