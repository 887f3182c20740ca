"""Validation bits/dim against wall-clock: the default recipe vs weight averaging (issue 12).

Each run trains one model with an exponential moving average of its weights *beside* the raw
weights (``train_model(weight_average=D, evaluate_raw=True)``) and validates both every epoch.
The two recipes thus share one trajectory and one seed, so their difference is measured without
seed noise in it; the seed-to-seed spread is measured across runs.  Each recipe is put on its own
wall-clock: the raw recipe's time leaves out the average's updates and one validation pass, the
averaged recipe's time leaves out the raw weights' validation pass (both are timed in the run).

    .venv/bin/python benchmarks/convergence.py demo --seeds 0,1          # ~9 min: 2 runs side by side
    .venv/bin/python benchmarks/convergence.py gz2 --seeds 1,2 --data runs/gz2/train_real.h5
    .venv/bin/python benchmarks/convergence.py show build/convergence/demo   # the table again

``demo`` is the shipped demo recipe (:data:`morphllr.demo.TRAIN_RECIPE`) on the demo universe's
observed-train set (``make models`` builds it; made here when missing); ``gz2`` is the network and
steps of ``validation/gz2.sh`` on its ``train_real.h5`` (or ``--data``, e.g. ``train_arch.h5``).
Runs go side by side, one thread each (``--jobs``), into ``build/convergence/NAME/seedK/`` (the
averaged model; ``raw/`` inside it the raw one), each with ``curve.json``; finished runs are reused.

The runs pick their best epoch on their own validation split (seeded per run), so the final val
bits/dim favours the noisier raw curve (the minimum of noisy values is biased low) and differs
between seeds partly because their validation images differ.  ``--test SET`` therefore also
scores both final models of every run on one independent set (demo: a fresh observed-test set
made with the demo's seed; GZ2: ``val_real.h5`` / ``val_arch.h5``, galaxies never trained on):
that is the comparison the verdict rests on.

Prints, per run, val bits/dim at the end and at fixed shares of the wall-clock for both recipes,
the paired difference averaged − raw, and the verdict of :func:`morphllr.train.convergence.convergence`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build" / "convergence"
DECAY = 0.999  # with the ramp min(D, (1+t)/(10+t)) the effective window of a 500-700 step run is ~t/9 steps

# the network options of each study (kept equal to what ships: demo.TRAIN_RECIPE and validation/gz2.sh NET/STEPS)
GZ2 = dict(config="zanisi21", nr_resnet=2, nr_filters=32, dropout=0.5, warmup_steps=100, input_norm="preset",
           max_steps=500, batch_size=64, lr=1e-3, augment="rot,flip")


def recipe(study: str) -> dict:
    """train_model options of a study (network overrides folded into the config)."""
    from morphllr.demo import TRAIN_RECIPE as r
    from morphllr.train.run import build_config

    if study == "demo":
        cfg = build_config(r.preset, nr_resnet=r.nr_resnet, nr_filters=r.nr_filters, dropout=r.dropout)
        return dict(config=cfg, input_norm=(r.input_shift, r.input_scale), max_steps=r.max_steps,
                    batch_size=r.batch_size, lr=r.lr, warmup_steps=r.warmup_steps, augment="rot,flip")
    if study == "gz2":
        opts = dict(GZ2)
        cfg = build_config(opts.pop("config"), nr_resnet=opts.pop("nr_resnet"), nr_filters=opts.pop("nr_filters"),
                           dropout=opts.pop("dropout"))
        return dict(config=cfg, **opts)
    raise SystemExit(f"error: study {study!r}: expected demo or gz2")


def default_data(study: str) -> Path:
    if study == "gz2":
        return ROOT / "runs" / "gz2" / "train_real.h5"
    universe = ROOT / "build" / "make_models" / "universe"
    if not (universe / "observed-train.h5").is_file():
        from morphllr.demo import TRAIN_RECIPE
        from morphllr.synth.universe import write_universe

        write_universe(universe, ["observed-train", "archetypes-train"], n_train=TRAIN_RECIPE.n_train,
                       seed=TRAIN_RECIPE.seed, workers=2)
    return universe / "observed-train.h5"


def run_one(study: str, data: Path, seed: int, out: Path) -> None:
    """Train one run (called in its own process) and write ``out/curve.json``."""
    import lightning.pytorch as L

    from morphllr.train.run import train_model

    class Clock(L.Callback):
        """Wall-clock at every validation, with the comparison's own extra seconds."""

        def __init__(self):
            self.rows: list[dict] = []
            self.start = None

        def on_train_start(self, trainer, module):
            self.start = time.perf_counter()

        def on_validation_epoch_end(self, trainer, module):
            metrics = trainer.callback_metrics
            if "val_bpd" in metrics and "val_bpd_raw" in metrics:
                self.rows.append(dict(step=int(trainer.global_step), seconds=time.perf_counter() - self.start,
                                      averaged=float(metrics["val_bpd"]), raw=float(metrics["val_bpd_raw"]),
                                      **{f"{k}_seconds": v for k, v in module.extra_seconds.items()}))

    clock = Clock()
    result = train_model(data, out, seed=seed, threads=1, progress=False, overwrite=True, callbacks=[clock],
                         weight_average=DECAY, evaluate_raw=True, **recipe(study))
    raw_meta = json.loads((out / "raw" / "model.json").read_text())
    curve = dict(study=study, data=str(data), seed=seed, decay=DECAY, rows=clock.rows,
                 final=dict(averaged=result.metrics["val_bits_per_dim"],
                            raw=raw_meta["metrics"]["val_bits_per_dim"]),
                 convergence=result.metrics.get("convergence"))
    (out / "curve.json").write_text(json.dumps(curve, indent=1) + "\n")


def recipe_time(row: dict, which: str) -> float:
    """Seconds the run would have taken with only that recipe's own work."""
    if which == "raw":  # no average updates; its one validation pass stands in for the averaged one
        return row["seconds"] - row["weight_average_seconds"] - row["raw_validation_seconds"]
    return row["seconds"] - row["raw_validation_seconds"]


def value_at(rows: list[dict], which: str, seconds: float) -> float:
    """Best val bits/dim the recipe had reached by ``seconds`` of its own wall-clock (NaN before the first)."""
    seen = [r[which] for r in rows if recipe_time(r, which) <= seconds]
    return min(seen) if seen else float("nan")


def default_test(study: str, data: Path) -> Path | None:
    if study == "gz2":
        twin = data.with_name(data.name.replace("train_", "val_"))
        return twin if twin.is_file() else None
    universe = ROOT / "build" / "convergence" / "demo-test"
    if not (universe / "observed-test.h5").is_file():
        from morphllr.demo import DEMO_N
        from morphllr.synth.universe import write_universe

        write_universe(universe, ["observed-test"], n_test=DEMO_N, seed=0, workers=2)
    return universe / "observed-test.h5"


def test_bits_per_dim(model_dir: Path, test: Path) -> float:
    """Mean bits/dim of ``model_dir`` on the independent set (fp32)."""
    from morphllr.model.heads import bits_per_dim
    from morphllr.model.io import load_model
    from morphllr.score import log_likelihood
    from morphllr.data.inputs import open_images

    model = load_model(model_dir)
    source = open_images(test)
    images = source.read(np.arange(len(source)))
    return float(bits_per_dim(log_likelihood(model, images, bf16=False), int(np.prod(source.shape[1:]))).mean())


def show(folder: Path, test: Path | None = None) -> None:
    from morphllr.runtime import cpu_description
    from morphllr.train.convergence import convergence

    curves = [json.loads(p.read_text()) for p in sorted(folder.glob("seed*/curve.json"))]
    if not curves:
        raise SystemExit(f"error: {folder}: no seed*/curve.json; run the study first")
    print(f"{folder.name}: {curves[0]['data']}, EMA decay {curves[0]['decay']} (ramped), {cpu_description()}")
    shares = (0.25, 0.5, 0.75, 1.0)
    print("| seed | recipe | " + " | ".join(f"best val bits/dim at {s:.0%} time" for s in shares)
          + " | final model val bits/dim | own seconds | tail improvement | converged |")
    print("|---" * (5 + len(shares)) + "|")
    finals = {"raw": [], "averaged": []}
    for c in curves:
        rows = c["rows"]
        end = recipe_time(rows[-1], "raw")  # the shorter clock: compare at the same own-seconds
        for which in ("raw", "averaged"):
            verdict = convergence([[r["step"], r[which]] for r in rows])
            finals[which].append(c["final"][which])
            cells = " | ".join(f"{value_at(rows, which, s * end):.4f}" for s in shares)
            print(f"| {c['seed']} | {which} | {cells} | {c['final'][which]:.4f} | {recipe_time(rows[-1], which):.0f} | "
                  f"{verdict['tail_improvement_bpd']:.4f} | {verdict['converged']} |")
    if test is not None:
        scored = {"raw": [], "averaged": []}
        for c in curves:
            run = folder / f"seed{c['seed']}"
            scored["averaged"].append(test_bits_per_dim(run, test))
            scored["raw"].append(test_bits_per_dim(run / "raw", test))
        d = np.array(scored["averaged"]) - np.array(scored["raw"])
        seeds = ", ".join(str(c["seed"]) for c in curves)
        print(f"\nindependent set {test} (seeds {seeds}): "
              f"raw {', '.join(f'{v:.4f}' for v in scored['raw'])}; averaged "
              f"{', '.join(f'{v:.4f}' for v in scored['averaged'])} bits/dim; averaged - raw "
              f"{', '.join(f'{v:+.4f}' for v in d)} (mean {d.mean():+.4f}); seed-to-seed std raw "
              f"{np.std(scored['raw'], ddof=1) if len(d) > 1 else float('nan'):.4f}, averaged "
              f"{np.std(scored['averaged'], ddof=1) if len(d) > 1 else float('nan'):.4f}")
    diff = np.array(finals["averaged"]) - np.array(finals["raw"])
    spread = {k: float(np.std(v, ddof=1)) if len(v) > 1 else float("nan") for k, v in finals.items()}
    overhead = [(r["weight_average_seconds"]) / max(1e-9, recipe_time(r, "raw")) for c in curves for r in c["rows"][-1:]]
    print(f"\naveraged - raw, final model val bits/dim, per seed: {', '.join(f'{d:+.4f}' for d in diff)} "
          f"(mean {diff.mean():+.4f}); seed-to-seed std raw {spread['raw']:.4f}, averaged {spread['averaged']:.4f}; "
          f"average updates cost {100 * np.mean(overhead):.2f} % of the raw recipe's time")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", help="demo, gz2, or show")
    parser.add_argument("folder", nargs="?", type=Path, help="with show: the study folder")
    parser.add_argument("--seeds", default="0,1", help="one run per seed (default 0,1)")
    parser.add_argument("--data", type=Path, default=None, help="training ImageSet (default: the study's)")
    parser.add_argument("--name", default=None, help="study folder name under build/convergence (default: study)")
    parser.add_argument("--test", type=Path, default=None,
                        help="independent set both final models are scored on (default: the study's, see above)")
    parser.add_argument("--jobs", type=int, default=2, help="runs side by side, one thread each")
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # worker: train this seed
    args = parser.parse_args(argv)
    if args.study == "show":
        return show(args.folder, args.test)
    data = args.data or default_data(args.study)
    if not data.is_file():
        raise SystemExit(f"error: {data}: no such training set (for gz2: validation/gz2.sh split prepare fit arch)")
    folder = BUILD / (args.name or args.study)
    if args.one is not None:
        return run_one(args.study, data, args.one, folder / f"seed{args.one}")
    seeds = [int(s) for s in args.seeds.split(",")]
    todo = [s for s in seeds if not (folder / f"seed{s}" / "curve.json").is_file()]
    folder.mkdir(parents=True, exist_ok=True)
    running: list[subprocess.Popen] = []
    for seed in todo:
        while len(running) >= args.jobs:
            running[0].wait()
            running = [p for p in running if p.poll() is None]
        log = open(folder / f"seed{seed}.log", "w")
        running.append(subprocess.Popen([sys.executable, __file__, args.study, "--data", str(data), "--name",
                                         folder.name, "--one", str(seed)], stdout=log, stderr=subprocess.STDOUT))
    for p in running:
        p.wait()
    show(folder, args.test or default_test(args.study, data))


if __name__ == "__main__":
    main()
