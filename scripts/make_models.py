"""Train the two shipped demo ensembles (``make models``).

Generates the synthetic universe's observed-train set (seed 0) and the Sérsic
archetypes of its galaxies, trains p_obs and p_arch on them with ``morphllr train --seeds 0,1,2``
(fixed recipe: :data:`morphllr.demo.TRAIN_RECIPE`; the two ensembles side by side, one thread
each, their members one after another) and installs the results into
``src/morphllr/pretrained/{obs,arch}/`` (ensemble.json + seedK/{weights.safetensors, model.json}).

Usage::

    .venv/bin/python scripts/make_models.py [--work build/make_models] [--dest src/morphllr/pretrained]
                                            [--seeds 0,1,2]

The training sets in ``WORK/universe`` are reused when present (they are deterministic
for a given seed); delete the folder to regenerate them.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def _with_overrides(recipe, items: list[str]):
    """The recipe with FIELD=VALUE overrides applied (values cast to the field's type)."""
    import dataclasses

    from morphllr.errors import MorphllrError

    from morphllr.train.ensemble import parse_seeds

    changes = {}
    fields = {f.name: type(getattr(recipe, f.name)) for f in dataclasses.fields(recipe)}
    for item in items:
        key, _, value = item.partition("=")
        if key not in fields or not value:
            raise MorphllrError(f"--set {item}: expected FIELD=VALUE with FIELD one of {', '.join(fields)}")
        if fields[key] is tuple:  # seeds: 0,1,2 or 0-4
            changes[key] = tuple(parse_seeds(value))
            continue
        try:
            changes[key] = fields[key](value)
        except ValueError:
            raise MorphllrError(f"--set {item}: {value!r} is not a valid {fields[key].__name__}") from None
    return dataclasses.replace(recipe, **changes)


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, train both ensembles and install them."""
    from morphllr.demo import TRAIN_RECIPE, install_models, pretrained_dir, train_models

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("build/make_models"),
                        help="working folder for the training sets, runs and logs")
    parser.add_argument("--dest", type=Path, default=pretrained_dir(), help="where the models are installed")
    parser.add_argument("--workers", type=int, default=2, help="processes for the Sérsic fits")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a TrainRecipe field, e.g. --set max_steps=3000 --set nr_filters=32 "
                             "(a stronger model for a faster machine); repeatable")
    parser.add_argument("--seeds", default=None, metavar="0,1,2",
                        help="training seeds, one ensemble member each (default: the recipe's, 0,1,2; "
                             "same as --set seeds=...)")
    args = parser.parse_args(argv)

    recipe = _with_overrides(TRAIN_RECIPE, args.set + ([f"seeds={args.seeds}"] if args.seeds else []))
    start = time.perf_counter()
    print(f"recipe: {recipe}")
    obs_dir, arch_dir = train_models(args.work, recipe, workers=args.workers,
                                     say=lambda message: print(message, flush=True))
    dest = install_models(obs_dir, arch_dir, args.dest)
    size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
    print(f"installed the p_obs and p_arch ensembles (seeds {','.join(map(str, recipe.seeds))}) into {dest} "
          f"({size / 1e6:.2f} MB) in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    from morphllr.errors import MorphllrError

    try:
        main()
    except MorphllrError as exc:
        raise SystemExit(f"error: {exc}") from None
