"""Training an ensemble: one model per seed in ``DIR/seedK/``, then the index ``DIR/ensemble.json``.

``morphllr train DATA --out DIR --seeds 0,1,2`` (:func:`train_ensemble`, seeds parsed by
:func:`parse_seeds`); ``--resume`` keeps finished members, continues or restarts the others.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from morphllr.atomic import claims
from morphllr.data.inputs import file_sha256, open_images, validate_source
from morphllr.errors import MorphllrError
from morphllr.limits import SEED_MAX
from morphllr.model.ensemble import MAX_ENSEMBLE_MEMBERS, member_name, write_ensemble_index
from morphllr.model.heads import is_discrete_head
from morphllr.model.io import META_FILE, WEIGHTS_FILE, read_meta
from morphllr.model.pixelcnn import PixelCNNConfig
from morphllr.train.batches import split_indices
from morphllr.train.folders import CHECKPOINT_DIR, check_ensemble_dir, clear_our_files
from morphllr.train.run import (TrainResult, build_config, keeps_config_input_norm, model_dir_output, train_model,
                                with_input_norm)
from morphllr.train.trainer import launched_rank


@dataclass
class EnsembleResult:
    """What :func:`train_ensemble` produced.

    Attributes:
        ensemble_dir: the finished ensemble folder (``ensemble.json`` + one model folder per member).
        members: member name -> TrainResult (a member finished by an earlier run has its recorded metrics).
        trained: names of the members trained (or continued) by this run, in order.
    """

    ensemble_dir: Path
    members: dict
    trained: list


def parse_seeds(seeds: str | Sequence[int]) -> list[int]:
    """``--seeds``: a comma list of distinct seeds (``0,1,2``) or a range ``0-4`` (both ends included).

    Args:
        seeds: the option's text, or a sequence of ints.

    Returns:
        the seeds, in the order given.
    """
    what = f"--seeds {seeds if isinstance(seeds, str) else ','.join(map(str, seeds))}"
    if isinstance(seeds, str):
        text = seeds.strip()
        match = re.fullmatch(r"([0-9]{1,10})\s*-\s*([0-9]{1,10})", text)
        if match:
            lo, hi = int(match.group(1)), int(match.group(2))
            if hi < lo:
                raise MorphllrError(f"{what}: the range ends before it starts; e.g. --seeds 0-4")
            if hi - lo + 1 > MAX_ENSEMBLE_MEMBERS:
                raise MorphllrError(f"{what}: {hi - lo + 1} members; an ensemble holds at most {MAX_ENSEMBLE_MEMBERS}")
            values = list(range(lo, hi + 1))
        else:
            parts = [part.strip() for part in text.split(",")]
            if not parts or not all(re.fullmatch(r"[0-9]{1,10}", part) for part in parts):
                raise MorphllrError(f"{what}: give seeds as a comma list of whole numbers, e.g. --seeds 0,1,2 "
                                    "(or a range, --seeds 0-4)")
            values = [int(part) for part in parts]
    else:
        try:
            values = [int(v) for v in seeds]
        except (TypeError, ValueError):
            raise MorphllrError(f"{what}: give the seeds as whole numbers") from None
        if any(int(v) != v for v in seeds):
            raise MorphllrError(f"{what}: give the seeds as whole numbers")
    if not values:
        raise MorphllrError(f"{what}: give at least one seed, e.g. --seeds 0,1,2")
    if len(values) > MAX_ENSEMBLE_MEMBERS:
        raise MorphllrError(f"{what}: {len(values)} members; an ensemble holds at most {MAX_ENSEMBLE_MEMBERS}")
    bad = [v for v in values if not 0 <= v <= SEED_MAX]
    if bad:
        raise MorphllrError(f"{what}: seed {bad[0]} is outside 0..{SEED_MAX}")
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise MorphllrError(f"{what}: seed {repeated[0]} is given twice; each member needs its own seed")
    return values


def _finished_member(member_dir: Path, name: str, seed: int, fingerprint: str, config: PixelCNNConfig,
                     out_dir: Path) -> TrainResult:
    """A member an earlier run finished, checked to belong to this ensemble (same data, network and seed)."""
    meta = read_meta(member_dir)
    fix = (f"use the same DATA and options as the interrupted run, delete {member_dir} to retrain that member, or "
           "start again with --overwrite")
    if meta.get("data_fingerprint") != fingerprint:
        raise MorphllrError(f"{member_dir}: finished member {name} was trained on other images than this --resume; {fix}")
    if PixelCNNConfig.from_dict(meta["config"]) != config:
        raise MorphllrError(f"{member_dir}: finished member {name} has other network settings than this --resume; {fix}")
    recorded = ((meta.get("extra") or {}).get("training") or {}).get("seed")
    if recorded is not None and recorded != seed:
        raise MorphllrError(f"{member_dir}: member {name} was trained with seed {recorded}; {fix}")
    weights = member_dir / WEIGHTS_FILE
    expected = meta.get("weights_sha256")
    if not weights.is_file() or (expected and file_sha256(weights) != expected):
        raise MorphllrError(f"{weights}: missing or does not match {META_FILE} (member {name}); delete {member_dir} "
                            f"and resume to retrain it, or recopy {out_dir}")
    return TrainResult(model_dir=member_dir, metrics=dict(meta.get("metrics") or {}))


@claims(model_dir_output, inputs=("data",), kind="dir", existing="keep")
def train_ensemble(data: Any, out_dir: str | Path, seeds: str | Sequence[int], *,
                   config: PixelCNNConfig | dict | str = "zanisi21", val_fraction: float = 0.1,
                   input_norm: str | Sequence[float] = "auto", key: str | None = None, resume: bool = False,
                   overwrite: bool = False, progress: bool = True, **options: Any) -> EnsembleResult | None:
    """Train one model per seed into an ensemble folder (``morphllr train DATA --out DIR --seeds 0,1,2``).

    Members are trained one after another with :func:`morphllr.train.run.train_model` into ``DIR/seedK/`` (ordinary model
    folders), with the same options except the seed (initial weights, validation split, augmentation).
    The input mapping of ``input_norm="auto"`` is fixed once, from the first seed's split, so every member
    has the same network config (and member ``seedK`` equals a single model trained with ``--seed K`` when
    K is the first seed).  ``DIR/ensemble.json`` (:func:`morphllr.model.ensemble.write_ensemble_index`) is
    written last, atomically: a failure or Ctrl-C leaves finished and unfinished member folders but no
    index, so nothing loads it as an ensemble.

    ``resume`` continues such a run: finished members (model.json) are checked (same images, network and
    seed, weights intact) and kept, members with a last checkpoint continue from it, members without one
    start again, missing ones are trained; ``seeds`` may add members to a finished ensemble but must name
    every member already there.  ``overwrite`` replaces an earlier ensemble, run or model of ours.

    Args:
        data: as in :func:`morphllr.train.run.train_model`.
        out_dir: the ensemble folder.
        seeds: the members' seeds: a sequence of ints or the ``--seeds`` text (``0,1,2`` or ``0-4``).
        config, val_fraction, input_norm, key: as in :func:`morphllr.train.run.train_model`, shared by every member.
        resume: continue an interrupted ensemble run (see above).
        overwrite: replace an existing ensemble / run / model in ``out_dir``.
        progress: progress bars, and a line naming each member as it starts.
        options: every other :func:`morphllr.train.run.train_model` option (max_steps, batch_size, lr, ...), except ``seed``.

    Returns:
        EnsembleResult (None on non-zero ranks of a multi-process run).
    """
    if "seed" in options:
        raise MorphllrError("--seed and --seeds: give one of them (--seeds trains one member per seed)")
    seeds = parse_seeds(seeds)
    out_dir = Path(out_dir)
    rank0 = launched_rank() == 0
    if rank0:
        check_ensemble_dir(out_dir, seeds, resume, overwrite)
    # what all members share: the same images, config and network input mapping
    source = open_images(data, key=key) if key is not None else open_images(data)
    cfg = build_config(config, shape=source.shape)
    train_idx, _ = split_indices(len(source), val_fraction, seeds[0])
    validate_source(source, is_discrete_head(cfg.head))
    member_cfg = with_input_norm(cfg, input_norm, source, train_idx, seeds[0])
    if keeps_config_input_norm(cfg.head, input_norm):
        norm: Any = input_norm
    else:
        norm = (member_cfg.input_shift, member_cfg.input_scale)
    fingerprint = source.fingerprint()
    if rank0 and not resume and out_dir.is_dir() and any(out_dir.iterdir()):
        clear_our_files(out_dir)  # check_ensemble_dir allowed it (--overwrite of our own files)
    results: dict[str, TrainResult] = {}
    trained: list[str] = []
    for position, seed in enumerate(seeds, start=1):
        name = member_name(seed)
        member_dir = out_dir / name
        state = _member_state(member_dir) if resume else "new"
        if state == "finished":
            results[name] = _finished_member(member_dir, name, seed, fingerprint, member_cfg, out_dir)
            if progress and rank0:
                print(f"member {name} ({position}/{len(seeds)}): finished by an earlier run, kept", file=sys.stderr,
                      flush=True)
            continue
        if progress and rank0:
            verb = {"resume": "continuing", "restart": "starting again", "new": "training"}[state]
            print(f"member {name} ({position}/{len(seeds)}): {verb} with seed {seed}", file=sys.stderr, flush=True)
        result = train_model(data, member_dir, config=cfg, seed=seed, val_fraction=val_fraction, input_norm=norm,
                             key=key, resume=state == "resume", overwrite=state == "restart", progress=progress,
                             **options)
        trained.append(name)
        if result is not None:
            results[name] = result
    if not rank0:
        return None
    write_ensemble_index(out_dir, [(member_name(s), s, member_name(s)) for s in seeds])
    return EnsembleResult(ensemble_dir=out_dir, members=results, trained=trained)


def _member_state(member_dir: Path) -> str:
    """How ``--resume`` treats a member folder: finished, resume (has a last checkpoint), restart, or new."""
    if not member_dir.is_dir() or not any(member_dir.iterdir()):
        return "new"
    if (member_dir / META_FILE).is_file():
        return "finished"
    if (member_dir / CHECKPOINT_DIR / "last.ckpt").is_file():
        return "resume"
    return "restart"  # interrupted before its first checkpoint: nothing to continue
