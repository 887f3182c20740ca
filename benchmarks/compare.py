"""End-to-end speed of `morphllr compare`: images per second and time spent outside the forward passes.

Builds two ImageSets of generated 32x32 galaxies (reference + one "simulation", N images in
all), two randomly initialised PixelCNN++ of the paper's size (nr_resnet=3, nr_filters=64,
gaussian head), and runs compare() with its report.  Reports

* img/s end to end (both models, statistics, tables and figures included);
* the fraction of the scoring stage spent outside the two models' forward passes
  (reading, per-pixel bookkeeping, centring, profiles; goal < 10 %);
* the same fraction for the whole run (includes the fixed cost of drawing the report).

Usage:  .venv/bin/python benchmarks/compare.py [--n 10000] [--batch-size 64] [--threads T]
Run it small (e.g. --n 1000) on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def make_set(path: Path, n: int, rng: np.random.Generator, structure: float, prep: dict) -> Path:
    """``n`` arcsinh-stretched Sérsic-like blobs with optional clumps, written as an ImageSet."""
    from morphllr.data.imageset import ImageSetWriter

    yy, xx = np.mgrid[0:32, 0:32] - 15.5
    with ImageSetWriter(path, n=n, image_shape=(1, 32, 32), preprocessing=prep) as writer:
        for start in range(0, n, 500):
            b = min(500, n - start)
            re = rng.uniform(2.0, 6.0, b)
            r = np.hypot(yy, xx)[None] / re[:, None, None]
            img = np.exp(-1.68 * (r - 1.0)) * 0.3
            phase = rng.uniform(0, 2 * np.pi, b)[:, None, None]
            img = img * (1 + structure * np.cos(2 * np.arctan2(yy, xx)[None] + r * 3 + phase))
            img = np.clip(img + rng.normal(0, 0.02, img.shape), -1, 1).astype(np.float32)
            rows = {"id": np.arange(start, start + b), "log_mstar": rng.uniform(9.5, 11.5, b),
                    "sersic_re_pix": re / prep["zoom"], "sersic_n": rng.uniform(0.8, 4.0, b)}
            mask = (np.hypot(yy, xx)[None] < 2 * re[:, None, None]).astype(np.uint8)
            writer.append(img[:, None], rows, segmap_model=mask)
    return path


def make_model(folder: Path, seed: int, prep: dict) -> Path:
    import torch

    from morphllr.model.pixelcnn import NETWORK_PRESETS, PixelCNN
    from morphllr.model.io import save_model

    torch.manual_seed(seed)
    return save_model(PixelCNN(NETWORK_PRESETS["zanisi21"]), folder, preprocessing=prep, data_fingerprint=None, metrics={})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000, help="images in all (half reference, half simulation)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all usable cores)")
    parser.add_argument("--no-report", action="store_true", help="skip figures + index.html")
    args = parser.parse_args()

    from morphllr import runtime
    from morphllr.comparison.run import compare
    from morphllr.data.preprocess import Preprocessing

    threads = runtime.configure_cpu(args.threads)
    prep = Preprocessing.preset("zanisi21").to_dict()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="morphllr-bench-") as tmp:
        tmp = Path(tmp)
        ref = make_set(tmp / "ref.h5", args.n - args.n // 2, rng, 0.3, prep)
        sim = make_set(tmp / "sim.h5", args.n // 2, rng, 0.0, prep)
        obs, arch = make_model(tmp / "obs", 0, prep), make_model(tmp / "arch", 1, prep)
        start = time.perf_counter()
        result = compare(obs, arch, reference=("ref", ref), sets={"sim": sim}, out=tmp / "report",
                         batch_size=args.batch_size, report=not args.no_report, progress=True)
        wall = time.perf_counter() - start
    t = result.timing
    out = {
        "n_images": args.n,
        "threads": threads,
        "batch_size": args.batch_size,
        "wall_s": round(wall, 2),
        "img_per_s_end_to_end": round(args.n / wall, 1),
        "forward_s": round(t["forward_s"], 2),
        "scoring_s": round(t["scoring_s"], 2),
        "outside_forward_fraction_scoring": round(1 - t["forward_s"] / t["scoring_s"], 4),
        "outside_forward_fraction_total": round(1 - t["forward_s"] / wall, 4),
        "report_and_stats_s": round(wall - t["scoring_s"], 2),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
