"""What a training output folder holds, and when it may be written, resumed or replaced.

A single run's folder holds ``checkpoints/`` (Lightning's ``best`` and ``last``), ``logs/``,
``training.json`` (:data:`RUN_FILE`, what the run was asked to do), ``raw/`` (the raw weights' model
of ``evaluate_raw``) and, once finished, the model files; an ensemble folder holds ``seedK/`` member
folders and ``ensemble.json``.  :func:`check_out_dir` and :func:`check_ensemble_dir` only look and
refuse; :func:`clear_our_files` deletes what morphllr wrote there (``--overwrite``), never anything else.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from morphllr.errors import MorphllrError
from morphllr.model.ensemble import member_name, read_ensemble_index
from morphllr.model.io import ENSEMBLE_FILE, MEMBER_DIR, META_FILE, WEIGHTS_FILE


CHECKPOINT_DIR = "checkpoints"
LOG_DIR = "logs"
RUN_FILE = "training.json"
RAW_DIR = "raw"  # the raw weights' model beside the averaged one (train_model(evaluate_raw=True))
#: what a single run's folder may hold (anything else is not ours and is never deleted)
RUN_ENTRIES = frozenset({CHECKPOINT_DIR, LOG_DIR, RUN_FILE, META_FILE, WEIGHTS_FILE, RAW_DIR})
# what claims of an ensemble's members and index leave inside its folder after a SIGKILL (cleaned by the next claim)
_ENSEMBLE_DEBRIS = re.compile(r"\.(?:seed[0-9]+|" + re.escape(ENSEMBLE_FILE) + r")\.(?:lock|[^.]+\.(?:tmp|old))\Z")


def check_out_dir(out_dir: str | Path, resume: bool, overwrite: bool) -> None:
    """Refuse to clobber finished models or foreign folders, or to resume what cannot be resumed.

    Only looks (``train_model`` calls it first, under its claim on the folder, before any work).

    Args:
        out_dir: the model folder.
        resume: ``--resume``: the folder must hold a run with ``checkpoints/last.ckpt``.
        overwrite: ``--overwrite``: a run or model of ours may be replaced.
    """
    out_dir = Path(out_dir)
    if not out_dir.exists():
        if resume:
            raise MorphllrError(f"{out_dir / CHECKPOINT_DIR / 'last.ckpt'}: no checkpoint to resume from; "
                                "start the run without --resume")
        return
    if not out_dir.is_dir():
        raise MorphllrError(f"{out_dir}: exists and is not a folder; choose another --out")
    layout = folder_layout(out_dir)
    entries = layout.entries
    if layout.is_ensemble:
        seeds = layout.seeds_text
        if resume:
            raise MorphllrError(f"{out_dir}: holds an ensemble ({', '.join(layout.members) or ENSEMBLE_FILE}), not a "
                                f"single model run; continue it with --seeds {seeds} --resume")
        if not overwrite:
            what = "a finished ensemble" if layout.has_index else "an unfinished ensemble run"
            raise MorphllrError(f"{out_dir}: already holds {what}; pass --overwrite to replace it, or choose another "
                                "--out")
    finished = META_FILE in entries
    if resume:
        if finished and not (out_dir / CHECKPOINT_DIR).is_dir():
            raise MorphllrError(f"{out_dir}: is a finished model without checkpoints; nothing to resume")
        if not (out_dir / CHECKPOINT_DIR / "last.ckpt").is_file():
            raise MorphllrError(f"{out_dir / CHECKPOINT_DIR / 'last.ckpt'}: no checkpoint to resume from; "
                                "start the run without --resume")
        return
    if not entries:
        return
    if not overwrite:
        what = "a finished model" if finished else "an unfinished training run"
        fix = "--overwrite to replace it" if finished else "--resume to continue it or --overwrite to start again"
        raise MorphllrError(f"{out_dir}: already holds {what}; pass {fix}, or choose another --out")
    refuse_foreign_files(out_dir, layout)


@dataclass
class FolderLayout:
    """What a training folder holds: a single run's files, ensemble members (``seedK/``), an index, others."""

    entries: set
    members: list
    has_index: bool
    foreign: list

    @property
    def is_ensemble(self) -> bool:
        return self.has_index or bool(self.members)

    @property
    def seeds_text(self) -> str:
        return ",".join(m[len("seed"):] for m in self.members) or "..."


def folder_layout(out_dir: Path) -> FolderLayout:
    entries = {p.name for p in out_dir.iterdir() if not _ENSEMBLE_DEBRIS.match(p.name)}
    members = sorted((e for e in entries if MEMBER_DIR.match(e) and (out_dir / e).is_dir()),
                     key=lambda e: int(e[len("seed"):]))
    foreign = sorted(entries - RUN_ENTRIES - {ENSEMBLE_FILE} - set(members))
    for member in members:
        foreign += sorted(f"{member}/{p.name}" for p in (out_dir / member).iterdir() if p.name not in RUN_ENTRIES)
    return FolderLayout(entries=entries, members=members, has_index=ENSEMBLE_FILE in entries, foreign=foreign)


def refuse_foreign_files(out_dir: Path, layout: FolderLayout) -> None:
    if layout.foreign:
        raise MorphllrError(f"{out_dir}: contains files morphllr did not write ({', '.join(layout.foreign[:3])}); "
                            "refusing to delete them - choose another --out")


def clear_our_files(out_dir: Path) -> None:
    """Delete our old run, model or ensemble in ``out_dir`` (--overwrite; :func:`check_out_dir` judged it ours)."""
    layout = folder_layout(out_dir)
    # what marks a finished result goes first, so a crash never leaves an old model next to new checkpoints
    (out_dir / ENSEMBLE_FILE).unlink(missing_ok=True)
    (out_dir / META_FILE).unlink(missing_ok=True)
    for member in layout.members:
        (out_dir / member / META_FILE).unlink(missing_ok=True)
    for name in (WEIGHTS_FILE, RUN_FILE):
        (out_dir / name).unlink(missing_ok=True)
    for name in (CHECKPOINT_DIR, LOG_DIR, RAW_DIR, *layout.members):
        shutil.rmtree(out_dir / name, ignore_errors=True)


def prepare_out_dir(out_dir: Path, resume: bool, overwrite: bool) -> None:
    """Check the folder (:func:`check_out_dir`); clear our old run or model on --overwrite."""
    check_out_dir(out_dir, resume, overwrite)
    if resume or not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    clear_our_files(out_dir)


def check_ensemble_dir(out_dir: str | Path, seeds: Sequence[int], resume: bool, overwrite: bool) -> None:
    """Judge an ensemble folder before any work, as :func:`check_out_dir` does for one model.

    * new (missing or empty) folder: fine (not with ``resume``);
    * ``resume``: the folder must hold an ensemble run (member folders, maybe an index) whose members are all
      among ``seeds``; finished members are kept, the others continued or started (:func:`morphllr.train.ensemble.train_ensemble`);
    * otherwise an existing ensemble, unfinished run or single model needs ``overwrite``, and is replaced only
      if it holds nothing morphllr did not write.

    Args:
        out_dir: the ensemble folder.
        seeds: the members' seeds (parsed).
        resume: ``--resume``.
        overwrite: ``--overwrite``.
    """
    out_dir = Path(out_dir)
    text = ",".join(str(s) for s in seeds)
    if not out_dir.exists():
        if resume:
            raise MorphllrError(f"{out_dir}: no ensemble run to resume; start it without --resume")
        return
    if not out_dir.is_dir():
        raise MorphllrError(f"{out_dir}: exists and is not a folder; choose another --out")
    layout = folder_layout(out_dir)
    single = layout.entries & RUN_ENTRIES
    if resume:
        if single:
            raise MorphllrError(f"{out_dir}: holds a single model run, not an ensemble; continue it with --resume "
                                "without --seeds")
        if not layout.is_ensemble:
            raise MorphllrError(f"{out_dir}: holds no ensemble run to resume; start it without --resume")
        listed = [m["name"] for m in read_ensemble_index(out_dir)["members"]] if layout.has_index else []
        extra = sorted((set(layout.members) | set(listed)) - {member_name(s) for s in seeds},
                       key=lambda n: (len(n), n))
        if extra:
            raise MorphllrError(f"{out_dir}: holds member(s) {', '.join(extra)} that --seeds {text} does not name; give "
                                f"every seed of the run (e.g. --seeds {layout.seeds_text}) or start again with "
                                "--overwrite")
        return
    if not layout.entries:
        return
    if not overwrite:
        if layout.has_index:
            what, fix = "a finished ensemble", "--overwrite to replace it"
        elif layout.members:
            what, fix = "an unfinished ensemble run", "--resume to continue it or --overwrite to start again"
        elif META_FILE in layout.entries:
            what, fix = "a finished model", "--overwrite to replace it"
        else:
            what, fix = "an unfinished training run", "--overwrite to replace it"
        raise MorphllrError(f"{out_dir}: already holds {what}; pass {fix}, or choose another --out")
    refuse_foreign_files(out_dir, layout)
