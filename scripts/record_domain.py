"""Add the domain statistics (issue 13) to a model or ensemble trained before they were recorded.

    python scripts/record_domain.py MODEL_OR_ENSEMBLE TRAINING_SET [--threads N] [--dry-run]

For every model (each member of an ensemble) this re-derives the model's own validation split
from its recorded ``extra.training`` ``val_fraction`` and ``seed`` (``train.split_indices``, as
training did; the training images when the split is empty), scores those images and writes
``metrics["domain"]`` (:func:`morphllr.domain.record`: whole-image and sky bits/dim, galaxy
sizes) into its ``model.json``, atomically.  The weights are not touched.  For an ensemble the
index ``ensemble.json`` gets the members' new ``model_json_sha256`` (everything else kept),
also atomically, so ``load_ensemble`` still accepts it.

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
    from morphllr.modelio import is_ensemble, read_ensemble_index

    if is_ensemble(folder):
        index = read_ensemble_index(folder)
        return [(m["name"], folder / m["path"]) for m in index["members"]], index
    return [(folder.name, folder)], None


def record_model(member_dir: Path, source, fingerprint: str, *, threads: int | None = None) -> dict:
    """The domain record of one model folder (checked against the training set first)."""
    from morphllr import load_model
    from morphllr.domain import record
    from morphllr.errors import MorphllrError
    from morphllr.train import split_indices

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
    return record(model, source, indices, images=which, threads=threads)


def record_domain(folder: str | Path, training_set: str | Path, *, threads: int | None = None,
                  dry_run: bool = False, say=print) -> dict:
    """Compute and (unless ``dry_run``) store the domain records of a model or ensemble folder.

    Returns:
        member name -> record.
    """
    from morphllr.atomic import atomic_file
    from morphllr.modelio import ENSEMBLE_FILE, META_FILE, file_sha256, read_meta
    from morphllr.sources import open_images

    folder = Path(folder)
    members, index = _members(folder)
    source = open_images(training_set)
    fingerprint = source.fingerprint()
    records = {}
    for name, member_dir in members:  # everything is computed (and checked) before anything is written
        records[name] = record_model(member_dir, source, fingerprint, threads=threads)
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
    args = parser.parse_args(argv)
    try:
        record_domain(args.model, args.training_set, threads=args.threads, dry_run=args.dry_run)
    except MorphllrError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
