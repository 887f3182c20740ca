"""Add the domain statistics (issue 13) to a model or ensemble trained before they were recorded.

    python scripts/record_domain.py MODEL_OR_ENSEMBLE TRAINING_SET [--threads N] [--dry-run]

For every model (each member of an ensemble) this re-derives the model's own validation split
from its recorded ``extra.training`` ``val_fraction`` and ``seed`` (``train.split_indices``, as
training did; the training images when the split is empty), scores those images and writes
``metrics["domain"]`` (:func:`morphllr.score.record_domain`: whole-image and sky bits/dim, galaxy
sizes) into its ``model.json``, atomically.  The weights are not touched.  For an ensemble the
index ``ensemble.json`` gets the members' new ``model_json_sha256`` (everything else kept),
also atomically, so ``load_ensemble`` still accepts it.

With ``--logs RUN_DIR`` (the folder ``morphllr train`` wrote the model into, with its ``logs/``; for an
ensemble the folder holding ``seedK/logs/``) it also records the convergence verdict
(``metrics["convergence"]``, :func:`morphllr.train.convergence.convergence`) from the run's own per-epoch validation
bits/dim, for models trained before training recorded it; refused when the logs' best validation value is
not the model's recorded one (within 0.02 bits/dim: bf16 during training, fp32 at the end).

Refused (one line, nothing written): a training set whose fingerprint differs from the
model's ``data_fingerprint``, a model without ``extra.training`` (no way to know its split),
or a folder that is not a morphllr model or ensemble.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _members(folder: Path) -> tuple[list[tuple[str, Path]], dict | None]:
    from morphllr.model.ensemble import is_ensemble, read_ensemble_index

    if is_ensemble(folder):
        index = read_ensemble_index(folder)
        return [(m["name"], folder / m["path"]) for m in index["members"]], index
    return [(folder.name, folder)], None


def record_model(member_dir: Path, source, fingerprint: str, *, threads: int | None = None) -> dict:
    """The domain record of one model folder (checked against the training set first)."""
    from morphllr import load_model, score
    from morphllr.errors import MorphllrError
    from morphllr.train.batches import split_indices

    model = load_model(member_dir)
    meta = model.meta
    if meta.get("data_fingerprint") != fingerprint:
        raise MorphllrError(
            f"{member_dir}: was trained on other images (data fingerprint {str(meta.get('data_fingerprint'))[:12]}) "
            f"than {source.name} ({fingerprint[:12]}); give the model's own training set")
    training = (meta.get("extra") or {}).get("training") or {}
    if "val_fraction" not in training or "seed" not in training:
        raise MorphllrError(f"{member_dir / 'model.json'}: records no extra.training val_fraction/seed, so its "
                            "validation split cannot be re-derived; retrain the model")
    train_idx, val_idx = split_indices(len(source), float(training["val_fraction"]), int(training["seed"]))
    expected = (meta.get("metrics") or {}).get("val_images")
    if isinstance(expected, int) and expected != len(val_idx):
        raise MorphllrError(f"{member_dir}: records {expected} validation images but the split re-derived from "
                            f"val_fraction/seed has {len(val_idx)}; cannot reproduce its split")
    indices, which = (val_idx, "validation") if len(val_idx) else (train_idx, "training")
    return score.record_domain(model, source, indices, images=which, threads=threads)


def convergence_from_logs(run_dir: Path, meta: dict) -> dict:
    """The convergence record of a finished model from its run's Lightning CSV logs (``run_dir/logs/**``)."""
    import csv

    from morphllr.errors import MorphllrError
    from morphllr.train.convergence import convergence

    history = []
    for path in sorted(run_dir.glob("logs/**/metrics.csv")):
        with open(path, newline="", encoding="utf-8") as handle:
            # the CSV's step is the 0-based step the value was logged at: after step + 1 optimizer steps
            history += [[int(row["step"]) + 1, float(row["val_bpd"])] for row in csv.DictReader(handle)
                        if row.get("val_bpd")]
    if not history:
        raise MorphllrError(f"{run_dir}: no logs/**/metrics.csv with val_bpd; give the folder the model was trained in")
    history.sort()
    metrics = meta.get("metrics") or {}
    recorded = metrics.get("val_bits_per_dim")
    best = min(v for _, v in history)
    if recorded is None or abs(best - float(recorded)) > 0.02:
        raise MorphllrError(f"{run_dir}: the logs' best validation bits/dim {best:.4f} is not the model's recorded "
                            f"{recorded}; these are another run's logs")
    verdict = convergence(history, final_step=int(metrics.get("steps") or history[-1][0]))
    verdict["from"] = "training logs (scripts/record_domain.py --logs)"
    return verdict


def record_domain(folder: str | Path, training_set: str | Path, *, threads: int | None = None,
                  dry_run: bool = False, say=print, logs: str | Path | None = None) -> dict:
    """Compute and (unless ``dry_run``) store the domain records of a model or ensemble folder.

    Returns:
        member name -> record.
    """
    from morphllr.atomic import atomic_file
    from morphllr.data.inputs import file_sha256
    from morphllr.model.io import ENSEMBLE_FILE, META_FILE, read_meta
    from morphllr.data.inputs import open_images

    folder = Path(folder)
    members, index = _members(folder)
    source = open_images(training_set)
    fingerprint = source.fingerprint()
    records, verdicts = {}, {}
    for name, member_dir in members:  # everything is computed (and checked) before anything is written
        records[name] = record_model(member_dir, source, fingerprint, threads=threads)
        if logs is not None:
            run_dir = Path(logs) / name if index is not None else Path(logs)
            verdicts[name] = convergence_from_logs(run_dir, read_meta(member_dir))
            say(f"{member_dir}: converged {verdicts[name]['converged']} (tail improvement "
                f"{verdicts[name]['tail_improvement_bpd']}, {len(verdicts[name]['history'])} validations)")
        whole = records[name]["stats"]["whole_bpd"]
        sky = records[name]["stats"]["sky_bpd"]
        say(f"{member_dir}: {records[name]['n_images']} {records[name]['images']} images, whole-image bits/dim "
            f"median {whole['quantiles']['50']:.4f}" + (f", sky bits/dim median {sky['quantiles']['50']:.4f}"
                                                          if sky else ", no sky mask"))
    if dry_run:
        return records
    new_sha = {}
    for name, member_dir in members:
        meta_path = member_dir / META_FILE
        meta = read_meta(member_dir)
        meta.setdefault("metrics", {})["domain"] = records[name]
        if name in verdicts:
            meta["metrics"]["convergence"] = verdicts[name]
        with atomic_file(meta_path, overwrite=True, mode=meta_path.stat().st_mode & 0o777) as tmp:
            tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        new_sha[name] = file_sha256(meta_path)
    if index is not None:
        index_path = folder / ENSEMBLE_FILE
        for member in index["members"]:
            member["model_json_sha256"] = new_sha[member["name"]]
        with atomic_file(index_path, overwrite=True, mode=index_path.stat().st_mode & 0o777) as tmp:
            tmp.write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return records


def main(argv: list[str] | None = None) -> int:
    from morphllr.errors import MorphllrError

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="model folder or ensemble folder")
    parser.add_argument("training_set", help="the image set the model was trained on")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads")
    parser.add_argument("--dry-run", action="store_true", help="compute and print, write nothing")
    parser.add_argument("--logs", default=None, help="the run folder the model was trained in (its logs/; for an "
                        "ensemble the folder of seedK/logs/): also record the convergence verdict from them")
    args = parser.parse_args(argv)
    try:
        record_domain(args.model, args.training_set, threads=args.threads, dry_run=args.dry_run, logs=args.logs)
    except MorphllrError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
