"""``morphllr demo``: the whole method on the generated universe, with its known answer.

The demo generates the test sets of :mod:`morphllr.synth.universe` (observed-test, sim-good,
sim-softened, sim-smooth, archetypes), scores them with the two shipped PixelCNN++
ensembles (``morphllr/pretrained/obs``: 3 models trained with seeds 0, 1, 2 on
observed-train, ``.../arch``: 3 on the archetypes of observed-train) through
:func:`morphllr.comparison.run.compare`, i.e. under all 3 x 3 model pairs, writes the report and
checks the ranking against :data:`morphllr.synth.sets.EXPECTED_ORDER`, galaxy by galaxy, since
every set holds the same galaxies (:func:`paired_differences`): the check uses the ensemble
mean; every model pair's own differences say how far the order survives retraining.

The shipped ensembles are made by :func:`train_models` (``scripts/make_models.py``, i.e.
``make models``) with the fixed :data:`TRAIN_RECIPE`; ``morphllr demo --train`` repeats
that into the demo folder instead of using the shipped ones.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from morphllr.atomic import atomic_dir, claims
from morphllr.comparison import stats
from morphllr.comparison.ensemble import MIN_MEMBERS_TOTAL, STABLE_SIGN_SHARE
from morphllr.comparison.run import compare
from morphllr.errors import MorphllrError
from morphllr.model.io import ENSEMBLE_FILE, META_FILE, WEIGHTS_FILE
from morphllr.synth.sets import DEMO_SETS, EXPECTED_ORDER, EXPECTED_TIES
from morphllr.synth.universe import write_universe
from morphllr.train.ensemble import parse_seeds

MODEL_FILES = (WEIGHTS_FILE, META_FILE)


@dataclass(frozen=True)
class TrainRecipe:
    """How the shipped ensembles are trained (fixed, so ``make models`` is reproducible).

    Sized for a shared 2-core laptop-class CPU: p_obs and p_arch train at once, one thread
    each, every one of them as an ensemble of one model per seed in :attr:`seeds`
    (``morphllr train --seeds``: the members one after another, on the same training set).

    The network sees ``(x - input_shift) / input_scale``.  The zanisi21 images have the
    sky at 0 with a noise of ~0.003 (after the 2x2 zoom) and galaxy centres up to 1; with
    the default [-1, 1] mapping the Gaussian head must shrink its scale output by a factor
    ~300 before it describes the sky noise, which takes thousands of Adam steps, and until
    then the two models misdescribe the *shared* background differently (the LLR of every
    image was ~ -200 nats of pure background mismatch).  Scaling by 0.05 puts the noise at
    ~0.05 network units, so both models reach the noise floor within ~100 steps and the
    background cancels in the ratio, leaving the galaxies' morphology.

    Attributes:
        seed: universe seed of the training sets.
        seeds: training seeds, one ensemble member each (initial weights, validation split,
            augmentation, dropout); member ``seed0`` is the model ``--seed 0`` trains.
        n_train: observed-train galaxies (p_arch is trained on their archetypes).
        preset: network preset of :data:`morphllr.model.pixelcnn.NETWORK_PRESETS`.
        nr_resnet, nr_filters, dropout: network overrides of the preset.
        input_shift, input_scale: network input mapping (see above).
        max_steps: optimizer steps per model.
        batch_size: images per step.
        lr: peak learning rate.
        warmup_steps: learning-rate warm-up.
    """

    seed: int = 0
    seeds: tuple[int, ...] = (0, 1, 2)
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
        """The ``morphllr train`` command line that trains one ensemble of this recipe.

        Args:
            data: training ImageSet.
            out: ensemble folder (replaced): ``ensemble.json`` + ``seedK/`` per seed.
            threads: CPU threads of that process.

        Returns:
            argv for :func:`subprocess.Popen`.
        """
        import sys

        return [sys.executable, "-m", "morphllr", "train", str(data), "--out", str(out), "--preset", self.preset,
                "--nr-resnet", str(self.nr_resnet), "--nr-filters", str(self.nr_filters), "--dropout", str(self.dropout),
                "--input-norm", f"{self.input_shift},{self.input_scale}", "--max-steps", str(self.max_steps),
                "--batch-size", str(self.batch_size), "--lr", str(self.lr), "--warmup-steps", str(self.warmup_steps),
                "--seeds", ",".join(str(k) for k in self.seeds), "--threads", str(threads), "--quiet",
                "--overwrite"]


TRAIN_RECIPE = TrainRecipe()
DEMO_N = 300
"""Galaxies per demo set."""


def pretrained_dir() -> Path:
    """The package folder holding the shipped ensembles (``obs/`` and ``arch/``)."""
    return Path(__file__).resolve().parent / "pretrained"


def _model_files(folder: Path) -> list[Path]:
    """The files a shipped model or ensemble folder needs: ``ensemble.json`` + every member's model files."""
    import json

    index = folder / ENSEMBLE_FILE
    if not index.is_file():
        return [index]
    try:
        members = [m["path"] for m in json.loads(index.read_text(encoding="utf-8"))["members"]]
    except (ValueError, KeyError, TypeError):
        return [index]  # load_ensemble names what is wrong with it
    return [index] + [folder / rel / f for rel in members for f in MODEL_FILES]


def shipped_models(folder: Path | None = None) -> tuple[Path, Path]:
    """Paths of the shipped p_obs and p_arch ensemble folders.

    Each holds ``ensemble.json`` and one plain model folder per seed (``seed0/``, ``seed1/``,
    ``seed2/``: ``weights.safetensors`` + ``model.json``); load them with
    :func:`morphllr.model.ensemble.load_ensemble`, one member with :func:`morphllr.load_model`
    (e.g. ``pretrained/obs/seed0``).

    Args:
        folder: where to look (default :func:`pretrained_dir`).

    Returns:
        (obs_dir, arch_dir).
    """
    folder = Path(folder) if folder is not None else pretrained_dir()
    dirs = (folder / "obs", folder / "arch")
    missing = [str(f) for d in dirs for f in _model_files(d) if not f.is_file()]
    if missing:
        raise MorphllrError(f"shipped demo models are missing ({', '.join(missing)}); run `make models` "
                            "(scripts/make_models.py) or `morphllr demo --train`")
    return dirs


def train_models(out: Path, recipe: TrainRecipe = TRAIN_RECIPE, workers: int = 2, say=print) -> tuple[Path, Path]:
    """Generate observed-train + its archetypes and train the p_obs and p_arch ensembles on them.

    p_obs and p_arch are trained at the same time by two ``morphllr train --seeds`` processes
    with one thread each (on a small CPU that is faster than one after the other); each trains
    its members one after another.

    Args:
        out: folder receiving ``universe/`` (training sets, reused if present), ``obs/``
            and ``arch/`` (ensemble folders: ``ensemble.json`` + ``seedK/`` runs) and each
            process's ``train-obs.log`` / ``train-arch.log``.
        recipe: the :class:`TrainRecipe`.
        workers: processes for the Sérsic fits.
        say: callable(str) for status lines.

    Returns:
        (obs_dir, arch_dir) ensemble folders.
    """
    import json
    import subprocess
    import time

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
    seeds = ",".join(str(k) for k in recipe.seeds)
    for name, data in (("obs", "observed-train.h5"), ("arch", "archetypes-train.h5")):
        log = open(out / f"train-{name}.log", "w")
        cmd = recipe.train_command(universe / data, out / name, threads=1)
        say(f"training p_{name} on {data}, seeds {seeds} one after another: {recipe}")
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
        for k in recipe.seeds:
            meta = json.loads((out / name / f"seed{k}" / "model.json").read_text())
            m = meta.get("metrics") or {}
            say(f"  p_{name} seed{k}: validation {m.get('val_bits_per_dim', float('nan')):.4f} bits/dim, "
                f"{m.get('steps')} steps in {m.get('train_seconds_this_run', float('nan')):.0f} s")
    say(f"  trained both ensembles ({len(recipe.seeds)} models each) in {time.perf_counter() - t0:.0f} s")
    return out / "obs", out / "arch"


def install_models(obs_dir: Path, arch_dir: Path, dest: Path | None = None) -> Path:
    """Copy the two trained ensembles (or plain models) into ``dest/obs`` and ``dest/arch`` atomically.

    An ensemble folder is copied as ``ensemble.json`` + each member's ``weights.safetensors`` and
    ``model.json`` (byte for byte, so the index's sha256 still match); a plain model folder as its
    two files.  Checkpoints, logs and training state are left behind.

    Args:
        obs_dir, arch_dir: trained ensemble (or model) folders.
        dest: target (default :func:`pretrained_dir`).

    Returns:
        the destination folder.
    """
    dest = Path(dest) if dest is not None else pretrained_dir()
    for name, src in (("obs", obs_dir), ("arch", arch_dir)):
        src = Path(src)
        files = _model_files(src) if (src / ENSEMBLE_FILE).is_file() else [src / f for f in MODEL_FILES]
        with atomic_dir(dest / name, overwrite=True, mode=0o755) as tmp:  # package data: readable by every user
            for f in files:
                target = tmp / f.relative_to(src)
                if target.parent != tmp:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.parent.chmod(0o755)
                shutil.copyfile(f, target)
                target.chmod(0o644)
    return dest


def _galaxy_numbers(ids) -> np.ndarray | None:
    """The galaxy number ending each id (``sim-good-000012`` -> 12), or None if an id has none."""
    tails = [str(i).rsplit("-", 1)[-1] for i in ids]
    if not all(t.isdigit() for t in tails):
        return None
    return np.array([int(t) for t in tails])


def _member_names(result, side: str, k: int) -> list[str]:
    """Names of the ``k`` members of one side (compare's ``model_names``; ``obs0``, ... without them)."""
    names = (getattr(result, "summary", None) or {}).get("model_names", {}).get(side)
    return list(names) if names and len(names) == k else [f"{side}{i}" for i in range(k)]


def _ci(means: np.ndarray, level: float = 0.95) -> list[float]:
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return [float(lo), float(hi)]


def paired_differences(result, n_boot: int = 1000, seed: int = 0) -> dict[str, dict]:
    """Galaxy-by-galaxy LLR differences between consecutive sets of :data:`EXPECTED_ORDER`.

    The demo's sets are the same galaxies: the sim-* sets are the observed-test galaxies
    re-rendered (:data:`morphllr.synth.sets.GALAXIES_FROM`) and the archetypes are their
    single-Sérsic fits, row by row.  The per-image LLR varies between galaxies by ~100 nats
    (bright spirals score far above small smooth ones), which makes each set's own interval
    wide; differences of the same galaxy in two sets cancel that spread and measure only
    what the recipes changed.

    With ensembles (several p_obs and/or p_arch members: ``SetResult.member_logp``) ``mean``
    and ``ci95`` are those of the ensemble LLR (the mean over all model pairs, what
    :func:`check_ranking` judges), and each entry also says how far the difference survives
    retraining, by the rule of :data:`morphllr.comparison.ensemble.STABILITY_RULE`.

    Args:
        result: a :class:`morphllr.comparison.result.CompareResult` of the demo sets.
        n_boot: bootstrap replicates of the mean difference.
        seed: bootstrap seed (the same galaxy draws for the ensemble and every model pair).

    Returns:
        ``"<better> - <worse>"`` -> dict(better, worse, n, mean, ci95 [lo, hi]) in nats, for
        every consecutive pair present whose sets hold the same galaxies in the same order
        (equal sizes and galaxy numbers ending the ids); other pairs are left out.  When the
        sets carry per-member log p, also ``by_pair`` (one dict(obs, arch, mean, ci95) per
        model pair i, j with LLR_ij = log p_obs,i - log p_arch,j, p_obs-major), ``err`` (the
        galaxy-bootstrap standard deviation of ``mean``) and, with more than one model pair,
        ``model_std`` (``sqrt(var_obs + var_arch)``, the between-member variances of each
        side's contribution to the difference: how far one retrained pair's value moves, as
        compare's ``model_std``), ``sign_agreement`` (share of pairs with the sign of
        ``mean``), ``stable`` (``|mean| >= 2 sqrt(err^2 + model_std^2)`` and
        ``sign_agreement >= 0.95``, compare's rule) and ``ci95_total`` (galaxies and members,
        :func:`morphllr.comparison.stats.hierarchical_intervals`, as compare's ``delta_llr_ci95_total``;
        hull with ``ci95``; None below ``compare.MIN_MEMBERS_TOTAL`` members per side), else
        those four None.
    """
    import math

    out = {}
    for better, worse in zip(EXPECTED_ORDER, EXPECTED_ORDER[1:]):
        if better not in result.sets or worse not in result.sets:
            continue
        b, w = result.sets[better], result.sets[worse]
        nb, nw = _galaxy_numbers(b.ids), _galaxy_numbers(w.ids)
        if nb is None or nw is None or len(nb) != len(nw) or not np.array_equal(nb, nw):
            continue
        diff = np.asarray(b.scores["llr"], float) - np.asarray(w.scores["llr"], float)
        boot = stats.bootstrap_means(diff, n_boot, seed)
        entry = {"better": better, "worse": worse, "n": int(len(diff)), "mean": float(diff.mean()),
                 "ci95": _ci(boot)}
        members_b, members_w = getattr(b, "member_logp", None), getattr(w, "member_logp", None)
        if members_b and members_w:
            d_obs = np.asarray(members_b["obs"], float) - np.asarray(members_w["obs"], float)  # (K_obs, N)
            d_arch = np.asarray(members_b["arch"], float) - np.asarray(members_w["arch"], float)  # (K_arch, N)
            k_obs, k_arch = len(d_obs), len(d_arch)
            by_pair = []
            for o, d_o in zip(_member_names(result, "obs", k_obs), d_obs):
                for a, d_a in zip(_member_names(result, "arch", k_arch), d_arch):
                    d = d_o - d_a
                    by_pair.append({"obs": o, "arch": a, "mean": float(d.mean()),
                                    "ci95": _ci(stats.bootstrap_means(d, n_boot, seed))})
            err = float(np.std(boot, ddof=1))
            entry.update(by_pair=by_pair, err=err, model_std=None, sign_agreement=None, stable=None,
                         ci95_total=None)
            if len(by_pair) > 1:
                means = np.array([p["mean"] for p in by_pair])
                # one retrained pair's spread: var_obs + var_arch of the members' contributions (the K^2 pair
                # values share members, so their plain std would understate it), as compare's model_std
                variances = [float(np.var(d.mean(axis=1), ddof=1)) if len(d) > 1 else 0.0 for d in (d_obs, d_arch)]
                model_std = float(np.sqrt(sum(variances)))
                share = stats.sign_agreement(means, entry["mean"])
                entry.update(model_std=model_std, sign_agreement=share,
                             stable=bool(abs(entry["mean"]) >= 2.0 * math.hypot(err, model_std)
                                         and share >= STABLE_SIGN_SHARE))
            if k_obs >= MIN_MEMBERS_TOTAL and k_arch >= MIN_MEMBERS_TOTAL:
                draws = stats.resample_member_means(np.vstack([d_obs, d_arch]), np.ones(d_obs.shape[1]), n_boot,
                                                    np.random.default_rng([seed, 1]))
                iv = stats.hierarchical_intervals(draws[:, :k_obs], draws[:, k_obs:], 0.95)
                entry["ci95_total"] = stats.hull(iv["total"], entry["ci95"])
        out[f"{better} - {worse}"] = entry
    return out


def _order_problems(sets: dict, paired: dict, fallback: bool = True) -> list[str]:
    """:func:`check_ranking`'s judgement; ``fallback=False`` skips pairs without paired differences."""
    problems = []
    for better, worse in zip(EXPECTED_ORDER, EXPECTED_ORDER[1:]):
        if better not in sets or worse not in sets:
            continue
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
        if not fallback:
            continue
        b, w = sets[better], sets[worse]
        if (better, worse) in EXPECTED_TIES:
            if b["ci95"][1] < w["ci95"][0]:
                problems.append(f"{worse} scored clearly above {better} ({w['mean_llr']:.2f} vs {b['mean_llr']:.2f})")
        elif not b["ci95"][0] > w["ci95"][1]:
            problems.append(f"{better} (mean LLR {b['mean_llr']:.2f}, 95% [{b['ci95'][0]:.2f}, {b['ci95'][1]:.2f}]) "
                            f"is not clearly above {worse} ({w['mean_llr']:.2f}, "
                            f"[{w['ci95'][0]:.2f}, {w['ci95'][1]:.2f}])")
    return problems


def check_ranking(summary) -> list[str]:
    """Disagreements between a comparison's ranking and the universe's known order.

    Every consecutive pair of :data:`EXPECTED_ORDER` must have the better set above the
    other, except pairs listed in :data:`EXPECTED_TIES`, which only must not be clearly
    inverted.  Sets holding the same galaxies are compared galaxy by galaxy: the 95 %
    interval of the mean per-galaxy LLR difference (:func:`paired_differences`; for
    ensembles the ensemble LLR, the mean over every model pair) must lie above 0 (for a
    tie: must not lie below 0).  Other pairs need non-overlapping 95 % intervals of the
    two sets' mean LLRs.

    Args:
        summary: a :class:`morphllr.comparison.result.CompareResult` (its paired differences are
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
    return _order_problems(summary["sets"], paired)


def check_ranking_by_pair(summary: dict) -> list[dict]:
    """:func:`check_ranking` for every model pair on its own (does the known order survive retraining?).

    Args:
        summary: ``summary.json`` content (or a CompareResult's ``summary``) with the ``paired``
            entry of :func:`run_demo`; only consecutive sets with paired differences are judged.

    Returns:
        one dict(obs, arch, problems) per model pair, in ``by_pair`` order (empty when the
        paired differences carry no per-pair values).
    """
    paired = summary.get("paired") or {}
    entries = [e for e in paired.values() if e.get("by_pair")]
    if not entries:
        return []
    out = []
    for k, first in enumerate(entries[0]["by_pair"]):
        own = {key: {**e, "mean": e["by_pair"][k]["mean"], "ci95": e["by_pair"][k]["ci95"]}
               for key, e in paired.items() if e.get("by_pair")}
        out.append({"obs": first["obs"], "arch": first["arch"],
                    "problems": _order_problems(summary["sets"], own, fallback=False)})
    return out


def _stability_text(pair: dict) -> str:
    """One line's tail on how far a paired difference survives retraining."""
    by_pair = pair.get("by_pair") or []
    if len(by_pair) < 2:
        return ""
    means = [p["mean"] for p in by_pair]
    above = sum(p["ci95"][0] > 0 for p in by_pair)
    total = pair.get("ci95_total")
    mark = {True: "stable", False: "NOT stable", None: "-"}[pair.get("stable")]
    return (f"; model pairs {min(means):.2f} .. {max(means):.2f} (std {pair['model_std']:.2f}, "
            f"{above}/{len(by_pair)} with 95% above 0)"
            + (f", total 95% [{total[0]:.2f}, {total[1]:.2f}]" if total else "") + f"; {mark}")


def _demo_inputs(arguments: dict) -> list:
    """The demo reads the shipped models unless it trains its own: its folder may not hold them."""
    return [] if arguments["train"] else [pretrained_dir()]


@claims({"out": "--out"}, inputs=_demo_inputs, kind="dir")  # refused before anything is generated
def run_demo(out: str | Path = "morphllr-demo", *, train: bool = False, overwrite: bool = False, n: int = DEMO_N,
             seed: int = TRAIN_RECIPE.seed, seeds=None, workers: int = 2, progress: bool = True, say=print):
    """Generate the demo sets, score them with the demo ensembles and write the report.

    Args:
        out: demo folder: ``data/`` (the sets), ``report/`` (compare output, index.html) and,
            with ``train``, ``models/``.
        train: retrain the two ensembles first (as long as ``make models``).
        overwrite: replace an existing ``out``.
        n: galaxies per set.
        seed: universe seed (the shipped models were trained on seed 0's observed-train; with
            ``train``, the training sets' seed too).
        seeds: with ``train``, the training seeds, one member each (default
            ``TRAIN_RECIPE.seeds``, 0, 1, 2).
        workers: processes for the Sérsic fits behind the archetypes.
        progress: show progress bars.
        say: callable(str) for status lines.

    Returns:
        the :class:`morphllr.comparison.result.CompareResult`; its ``summary`` (and summary.json) also holds
        ``paired`` (:func:`paired_differences`) and ``known_order`` (order, ``problems`` of the
        ensemble, ``by_pair``: :func:`check_ranking_by_pair`, ``model_pairs_recovering``).
    """
    import json
    import time

    out = Path(out)
    if not train:
        obs_dir, arch_dir = shipped_models()
    t0 = time.perf_counter()
    timing = {}
    with atomic_dir(out, overwrite=overwrite) as tmp:
        if train:
            recipe = TrainRecipe(seed=seed, seeds=tuple(parse_seeds(seeds)) if seeds is not None else TRAIN_RECIPE.seeds)
            obs_dir, arch_dir = train_models(tmp / "models", recipe, workers, say)
            timing["train_s"] = time.perf_counter() - t0
        t_gen = time.perf_counter()
        say(f"generating {n} galaxies per set: {', '.join(DEMO_SETS)}")
        write_universe(tmp / "data", DEMO_SETS, n_test=n, seed=seed, workers=workers, progress=say)
        timing["generate_s"] = time.perf_counter() - t_gen
        say("scoring every set under every p_obs and p_arch model")
        sets = {name: tmp / "data" / f"{name}.h5" for name in DEMO_SETS[1:]}
        result = compare(obs_dir, arch_dir, (DEMO_SETS[0], tmp / "data" / f"{DEMO_SETS[0]}.h5"), sets,
                         tmp / "report", progress=progress)
        # The sets are the same galaxies, so the known order is judged galaxy by galaxy
        # (check_ranking, on the ensemble mean), and by every model pair on its own (how far
        # it survives retraining); keep those numbers with the report's.
        summary = result.summary
        summary["paired"] = paired_differences(result)
        by_pair = check_ranking_by_pair(summary)
        summary["known_order"] = {"order": list(EXPECTED_ORDER), "ties": [list(t) for t in EXPECTED_TIES],
                                  "problems": check_ranking(summary), "model_pairs": len(by_pair) or 1,
                                  "model_pairs_recovering": sum(not p["problems"] for p in by_pair) if by_pair else None,
                                  "by_pair": by_pair}
        summary_file = tmp / "report" / "summary.json"
        written = json.loads(summary_file.read_text())
        written["paired"], written["known_order"] = summary["paired"], summary["known_order"]
        summary_file.write_text(json.dumps(written, indent=2) + "\n")
        pairs = summary.get("model_pairs") or 1
        say("per-galaxy LLR differences of consecutive sets (same galaxies; what the known order is checked on"
            + (f": ensemble mean over the {pairs} model pairs" if pairs > 1 else "") + "):")
        for key, pair in summary["paired"].items():
            say(f"  {key}: {pair['mean']:.2f} nats per galaxy, 95% [{pair['ci95'][0]:.2f}, {pair['ci95'][1]:.2f}]"
                + _stability_text(pair))
        if by_pair:
            failing = [f"{p['obs']}/{p['arch']}" for p in by_pair if p["problems"]]
            say(f"known order recovered by {summary['known_order']['model_pairs_recovering']} of {len(by_pair)} "
                "model pairs on their own (p_obs/p_arch; each pair's per-galaxy 95% intervals)"
                + (f"; not by {', '.join(failing)}" if failing else ""))
    timing["demo_total_s"] = time.perf_counter() - t0
    result.timing.update(timing)
    result.out = out / "report"
    return result
