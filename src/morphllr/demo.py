"""``morphllr demo``: the whole method on the generated universe, with its known answer.

The demo generates the test sets of :mod:`morphllr.synth` (observed-test, sim-good,
sim-softened, sim-smooth, archetypes), scores them with the two shipped PixelCNN++
models (``morphllr/pretrained/obs`` trained on observed-train, ``.../arch`` on the
archetypes of observed-train) through :func:`morphllr.compare.compare`, writes the
report and checks the ranking against :data:`morphllr.synth.EXPECTED_ORDER`, galaxy by
galaxy, since every set holds the same galaxies (:func:`paired_differences`).

The shipped models are made by :func:`train_models` (``scripts/make_models.py``, i.e.
``make models``) with the fixed :data:`TRAIN_RECIPE`; ``morphllr demo --train`` repeats
that into the demo folder instead of using the shipped ones.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic import claims
from .errors import MorphllrError
from .synth import DEMO_SETS, EXPECTED_ORDER, EXPECTED_TIES

MODEL_FILES = ("weights.safetensors", "model.json")


@dataclass(frozen=True)
class TrainRecipe:
    """How the shipped models are trained (fixed, so ``make models`` is reproducible).

    Sized for a shared 2-core laptop-class CPU: both models train at once, one thread
    each, in under 30 minutes even with the machine half busy.

    The network sees ``(x - input_shift) / input_scale``.  The zanisi21 images have the
    sky at 0 with a noise of ~0.003 (after the 2x2 zoom) and galaxy centres up to 1; with
    the default [-1, 1] mapping the Gaussian head must shrink its scale output by a factor
    ~300 before it describes the sky noise, which takes thousands of Adam steps, and until
    then the two models misdescribe the *shared* background differently (the LLR of every
    image was ~ -200 nats of pure background mismatch).  Scaling by 0.05 puts the noise at
    ~0.05 network units, so both models reach the noise floor within ~100 steps and the
    background cancels in the ratio, leaving the galaxies' morphology.

    Attributes:
        seed: universe and training seed.
        n_train: observed-train galaxies (p_arch is trained on their archetypes).
        preset: network preset of :data:`morphllr.model.PRESETS`.
        nr_resnet, nr_filters, dropout: network overrides of the preset.
        input_shift, input_scale: network input mapping (see above).
        max_steps: optimizer steps per model.
        batch_size: images per step.
        lr: peak learning rate.
        warmup_steps: learning-rate warm-up.
    """

    seed: int = 0
    n_train: int = 2000
    preset: str = "small"
    nr_resnet: int = 1
    nr_filters: int = 24
    dropout: float = 0.1
    input_shift: float = 0.0
    input_scale: float = 0.05
    max_steps: int = 700
    batch_size: int = 32
    lr: float = 2e-3
    warmup_steps: int = 50

    def train_command(self, data: Path, out: Path, threads: int = 1) -> list[str]:
        """The ``morphllr train`` command line that trains one model of this recipe.

        Args:
            data: training ImageSet.
            out: model folder (replaced).
            threads: CPU threads of that process.

        Returns:
            argv for :func:`subprocess.Popen`.
        """
        import sys

        return [sys.executable, "-m", "morphllr", "train", str(data), "--out", str(out), "--preset", self.preset,
                "--nr-resnet", str(self.nr_resnet), "--nr-filters", str(self.nr_filters), "--dropout", str(self.dropout),
                "--input-norm", f"{self.input_shift},{self.input_scale}", "--max-steps", str(self.max_steps),
                "--batch-size", str(self.batch_size), "--lr", str(self.lr), "--warmup-steps", str(self.warmup_steps),
                "--seed", str(self.seed), "--threads", str(threads), "--quiet", "--overwrite"]


TRAIN_RECIPE = TrainRecipe()
DEMO_N = 300
"""Galaxies per demo set."""


def pretrained_dir() -> Path:
    """The package folder holding the shipped models (``obs/`` and ``arch/``)."""
    return Path(__file__).resolve().parent / "pretrained"


def shipped_models(folder: Path | None = None) -> tuple[Path, Path]:
    """Paths of the shipped p_obs and p_arch model folders.

    Args:
        folder: where to look (default :func:`pretrained_dir`).

    Returns:
        (obs_dir, arch_dir).
    """
    folder = Path(folder) if folder is not None else pretrained_dir()
    dirs = (folder / "obs", folder / "arch")
    missing = [str(d / f) for d in dirs for f in MODEL_FILES if not (d / f).is_file()]
    if missing:
        raise MorphllrError(f"shipped demo models are missing ({', '.join(missing)}); run `make models` "
                            "(scripts/make_models.py) or `morphllr demo --train`")
    return dirs


def train_models(out: Path, recipe: TrainRecipe = TRAIN_RECIPE, workers: int = 2, say=print) -> tuple[Path, Path]:
    """Generate observed-train + its archetypes and train p_obs and p_arch on them.

    Both models are trained at the same time by two ``morphllr train`` processes with one
    thread each (on a small CPU that is faster than one after the other).

    Args:
        out: folder receiving ``universe/`` (training sets, reused if present), ``obs/``
            and ``arch/`` (plus each run's ``train.log``).
        recipe: the :class:`TrainRecipe`.
        workers: processes for the Sérsic fits.
        say: callable(str) for status lines.

    Returns:
        (obs_dir, arch_dir) model folders.
    """
    import subprocess
    import time

    from .synth import write_universe

    out = Path(out)
    universe = out / "universe"
    if not (universe / "archetypes-train.h5").is_file():
        t0 = time.perf_counter()
        say(f"generating {recipe.n_train} training galaxies and their archetypes (seed {recipe.seed})")
        write_universe(universe, ["observed-train", "archetypes-train"], n_train=recipe.n_train,
                       seed=recipe.seed, workers=workers, overwrite=True, progress=say)
        say(f"  done in {time.perf_counter() - t0:.0f} s")
    t0 = time.perf_counter()
    runs = {}
    out.mkdir(parents=True, exist_ok=True)
    for name, data in (("obs", "observed-train.h5"), ("arch", "archetypes-train.h5")):
        log = open(out / f"train-{name}.log", "w")
        cmd = recipe.train_command(universe / data, out / name, threads=1)
        say(f"training p_{name} on {data}: {recipe}")
        runs[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log)
    failed = []
    try:
        for name, (proc, log) in runs.items():
            proc.wait()
            log.close()
            if proc.returncode != 0:
                failed.append(f"p_{name} (see {out / f'train-{name}.log'})")
    except BaseException:  # Ctrl-C or an error here: never leave the two trainings running
        for proc, log in runs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc, log in runs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
        raise
    if failed:
        raise MorphllrError(f"training failed for {', '.join(failed)}")
    for name in runs:
        say("  " + (out / f"train-{name}.log").read_text().strip().splitlines()[-1])
    say(f"  trained both models in {time.perf_counter() - t0:.0f} s")
    return out / "obs", out / "arch"


def install_models(obs_dir: Path, arch_dir: Path, dest: Path | None = None) -> Path:
    """Copy the two models' ``weights.safetensors`` + ``model.json`` into ``dest`` atomically.

    Args:
        obs_dir, arch_dir: trained model folders.
        dest: target (default :func:`pretrained_dir`).

    Returns:
        the destination folder.
    """
    from .atomic import atomic_dir

    dest = Path(dest) if dest is not None else pretrained_dir()
    for name, src in (("obs", obs_dir), ("arch", arch_dir)):
        with atomic_dir(dest / name, overwrite=True, mode=0o755) as tmp:  # package data: readable by every user
            for f in MODEL_FILES:
                shutil.copyfile(Path(src) / f, tmp / f)
                (tmp / f).chmod(0o644)
    return dest


def _galaxy_numbers(ids) -> np.ndarray | None:
    """The galaxy number ending each id (``sim-good-000012`` -> 12), or None if an id has none."""
    tails = [str(i).rsplit("-", 1)[-1] for i in ids]
    if not all(t.isdigit() for t in tails):
        return None
    return np.array([int(t) for t in tails])


def paired_differences(result, n_boot: int = 1000, seed: int = 0) -> dict[str, dict]:
    """Galaxy-by-galaxy LLR differences between consecutive sets of :data:`EXPECTED_ORDER`.

    The demo's sets are the same galaxies: the sim-* sets are the observed-test galaxies
    re-rendered (:data:`morphllr.synth.GALAXIES_FROM`) and the archetypes are their
    single-Sérsic fits, row by row.  The per-image LLR varies between galaxies by ~100 nats
    (bright spirals score far above small smooth ones), which makes each set's own interval
    wide; differences of the same galaxy in two sets cancel that spread and measure only
    what the recipes changed.

    Args:
        result: a :class:`morphllr.compare.CompareResult` of the demo sets.
        n_boot: bootstrap replicates of the mean difference.
        seed: bootstrap seed.

    Returns:
        ``"<better> - <worse>"`` -> dict(better, worse, n, mean, ci95 [lo, hi]) in nats, for
        every consecutive pair present whose sets hold the same galaxies in the same order
        (equal sizes and galaxy numbers ending the ids); other pairs are left out.
    """
    from .stats import bootstrap_mean_ci

    out = {}
    for better, worse in zip(EXPECTED_ORDER, EXPECTED_ORDER[1:]):
        if better not in result.sets or worse not in result.sets:
            continue
        b, w = result.sets[better], result.sets[worse]
        nb, nw = _galaxy_numbers(b.ids), _galaxy_numbers(w.ids)
        if nb is None or nw is None or len(nb) != len(nw) or not np.array_equal(nb, nw):
            continue
        diff = np.asarray(b.scores["llr"], float) - np.asarray(w.scores["llr"], float)
        lo, hi = bootstrap_mean_ci(diff, n_boot=n_boot, rng=seed)
        out[f"{better} - {worse}"] = {"better": better, "worse": worse, "n": int(len(diff)),
                                      "mean": float(diff.mean()), "ci95": [lo, hi]}
    return out


def check_ranking(summary) -> list[str]:
    """Disagreements between a comparison's ranking and the universe's known order.

    Every consecutive pair of :data:`EXPECTED_ORDER` must have the better set above the
    other, except pairs listed in :data:`EXPECTED_TIES`, which only must not be clearly
    inverted.  Sets holding the same galaxies are compared galaxy by galaxy: the 95 %
    interval of the mean per-galaxy LLR difference (:func:`paired_differences`) must lie
    above 0 (for a tie: must not lie below 0).  Other pairs need non-overlapping 95 %
    intervals of the two sets' mean LLRs.

    Args:
        summary: a :class:`morphllr.compare.CompareResult` (its paired differences are
            computed here), or ``summary.json`` content, whose ``paired`` entry (written
            by :func:`run_demo`) is used when present.

    Returns:
        list of human-readable problems (empty: the known answer was recovered).
    """
    paired = None
    if hasattr(summary, "sets") and hasattr(summary, "summary"):
        paired = paired_differences(summary)
        summary = summary.summary
    if paired is None:
        paired = summary.get("paired") or {}
    sets = summary["sets"]
    problems = []
    for better, worse in zip(EXPECTED_ORDER, EXPECTED_ORDER[1:]):
        if better not in sets or worse not in sets:
            continue
        b, w = sets[better], sets[worse]
        pair = paired.get(f"{better} - {worse}")
        if pair is not None:
            mean, (lo, hi) = pair["mean"], pair["ci95"]
            said = f"per-galaxy LLR difference {mean:.2f}, 95% [{lo:.2f}, {hi:.2f}] over {pair['n']} galaxies"
            if (better, worse) in EXPECTED_TIES:
                if hi < 0:
                    problems.append(f"{worse} scored clearly above {better} ({said})")
            elif not lo > 0:
                problems.append(f"{better} is not clearly above {worse} ({said})")
            continue
        if (better, worse) in EXPECTED_TIES:
            if b["ci95"][1] < w["ci95"][0]:
                problems.append(f"{worse} scored clearly above {better} ({w['mean_llr']:.2f} vs {b['mean_llr']:.2f})")
        elif not b["ci95"][0] > w["ci95"][1]:
            problems.append(f"{better} (mean LLR {b['mean_llr']:.2f}, 95% [{b['ci95'][0]:.2f}, {b['ci95'][1]:.2f}]) "
                            f"is not clearly above {worse} ({w['mean_llr']:.2f}, "
                            f"[{w['ci95'][0]:.2f}, {w['ci95'][1]:.2f}])")
    return problems


def _demo_inputs(arguments: dict) -> list:
    """The demo reads the shipped models unless it trains its own: its folder may not hold them."""
    return [] if arguments["train"] else [pretrained_dir()]


@claims({"out": "--out"}, inputs=_demo_inputs, kind="dir")  # refused before anything is generated
def run_demo(out: str | Path = "morphllr-demo", *, train: bool = False, overwrite: bool = False, n: int = DEMO_N,
             seed: int = TRAIN_RECIPE.seed, workers: int = 2, progress: bool = True, say=print):
    """Generate the demo sets, score them with the demo models and write the report.

    Args:
        out: demo folder: ``data/`` (the sets), ``report/`` (compare output, index.html) and,
            with ``train``, ``models/``.
        train: retrain the two models first (about as long as ``make models``).
        overwrite: replace an existing ``out``.
        n: galaxies per set.
        seed: universe seed (the shipped models were trained on seed 0's observed-train).
        workers: processes for the Sérsic fits behind the archetypes.
        progress: show progress bars.
        say: callable(str) for status lines.

    Returns:
        the :class:`morphllr.compare.CompareResult`.
    """
    import json
    import time

    from .atomic import atomic_dir
    from .compare import compare
    from .synth import write_universe

    out = Path(out)
    if not train:
        obs_dir, arch_dir = shipped_models()
    t0 = time.perf_counter()
    with atomic_dir(out, overwrite=overwrite) as tmp:
        if train:
            obs_dir, arch_dir = train_models(tmp / "models", TrainRecipe(seed=seed), workers, say)
        say(f"generating {n} galaxies per set: {', '.join(DEMO_SETS)}")
        write_universe(tmp / "data", DEMO_SETS, n_test=n, seed=seed, workers=workers, progress=say)
        t_data = time.perf_counter()
        say("scoring every set under p_obs and p_arch")
        sets = {name: tmp / "data" / f"{name}.h5" for name in DEMO_SETS[1:]}
        result = compare(obs_dir, arch_dir, (DEMO_SETS[0], tmp / "data" / f"{DEMO_SETS[0]}.h5"), sets,
                         tmp / "report", progress=progress)
        # The sets are the same galaxies, so the known order is judged galaxy by galaxy
        # (check_ranking); keep those numbers with the report's.
        result.summary["paired"] = paired_differences(result)
        summary_file = tmp / "report" / "summary.json"
        written = json.loads(summary_file.read_text())
        written["paired"] = result.summary["paired"]
        summary_file.write_text(json.dumps(written, indent=2) + "\n")
        say("per-galaxy LLR differences of consecutive sets (same galaxies; what the known order is checked on):")
        for key, pair in result.summary["paired"].items():
            say(f"  {key}: {pair['mean']:.2f} nats per galaxy, 95% [{pair['ci95'][0]:.2f}, {pair['ci95'][1]:.2f}]")
    result.timing["generate_s"] = t_data - t0
    result.timing["demo_total_s"] = time.perf_counter() - t0
    result.out = out / "report"
    return result
