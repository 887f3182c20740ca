"""Peak memory and speed of `morphllr score` against the number of images (issue 17: flat in N).

For each N it writes an ImageSet of N generated 32x32 galaxies (``benchmarks/compare.py``'s
``make_set``) and a randomly initialised model of the paper's size, then scores the set with
:func:`morphllr.score.score_to_files` (CSV + per-pixel HDF5 maps, as ``morphllr score
--maps`` does) in a fresh process, and prints that process's peak resident memory (``ru_maxrss``)
and its img/s.  Flat memory means the peak does not grow with N: the images are read and the
maps written batch by batch.  The first line also says whether the fused CPU kernels were in use.

Usage:  .venv/bin/python benchmarks/score_memory.py [--sizes 512 2048 8192]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def score_once(model: str, images: str, out: str) -> dict:
    """Score in this process; the peak RSS and timing as a dict."""
    from morphllr import runtime
    from morphllr.model import fused
    from morphllr.model.io import load_model
    from morphllr.score import score_to_files

    runtime.configure_cpu(None)
    loaded = load_model(model)
    start = time.perf_counter()
    score_to_files(loaded, images, Path(out) / "scores.csv", maps_path=Path(out) / "maps.h5")
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "fused": fused.status()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 2048, 8192], help="numbers of images")
    parser.add_argument("--child", nargs=3, metavar=("MODEL", "IMAGES", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(score_once(*args.child)))
        return

    sys.path.insert(0, str(Path(__file__).parent))
    from compare import make_model, make_set

    from morphllr import runtime
    from morphllr.data.preprocess import Preprocessing

    prep = Preprocessing.preset("zanisi21").to_dict()
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  {runtime.cpu_description()}")
    print("| N images | peak RSS (MiB) | img/s (score + maps) |")
    print("|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="morphllr-bench-") as tmp:
        tmp = Path(tmp)
        model = make_model(tmp / "model", 0, prep)
        for n in args.sizes:
            images = make_set(tmp / f"set{n}.h5", n, np.random.default_rng(n), 0.3, prep)
            out = tmp / f"out{n}"
            out.mkdir()
            done = subprocess.run([sys.executable, __file__, "--child", str(model), str(images), str(out)],
                                  check=True, capture_output=True, text=True)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"| {n} | {result['peak_rss_mib']:.0f} | {n / result['seconds']:.0f} |")
    print(f"# elementwise ops: {result['fused']}")


if __name__ == "__main__":
    main()
