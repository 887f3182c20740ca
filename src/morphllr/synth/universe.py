"""A synthetic galaxy universe whose right answer is known.

Real SDSS cutouts cannot be shipped, so morphllr's embedded default is a generated
universe of SDSS-r-like galaxy cutouts ("observed") plus "simulation" sets of
decreasing, known morphological fidelity.  A likelihood-ratio comparison run on these
sets must recover :data:`morphllr.synth.sets.EXPECTED_ORDER`; that is what the demo and its tests check.

The universe is built in stages, one module each: :mod:`morphllr.synth.population` draws the
galaxies (survey constants, :class:`~morphllr.synth.population.Recipe`,
:func:`~morphllr.synth.population.sample_galaxies`), :mod:`morphllr.synth.render` renders them,
:mod:`morphllr.synth.sky` places them in real sky when asked, :mod:`morphllr.synth.sets` names the
sets and their known order (:data:`~morphllr.synth.sets.EXPECTED_ORDER`), and
:mod:`morphllr.synth.archetypes` makes the archetypes of the observed sets.  This module generates
the requested sets (:func:`generate`) and writes them as ImageSets (:func:`write_universe`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from morphllr import __version__
from morphllr.atomic import atomic_dir, claims
from morphllr.data.geometry import model_mask
from morphllr.data.imageset import write_imageset
from morphllr.data.preprocess import as_preprocessing
from morphllr.errors import MorphllrError
from morphllr.synth.archetypes import fit_single_sersic, join_fits, make_archetypes
from morphllr.synth.sets import (EXPECTED_ORDER, EXPECTED_TIES, RECIPES, SET_NAMES, SynthSet, check_count,
                                 check_set_names, make_set)
from morphllr.synth.sky import sky_library


def write_set(path, synth: SynthSet, preprocessing="zanisi21", overwrite: bool = False, seed: int | None = None):
    """Write a :class:`~morphllr.synth.sets.SynthSet` as an ImageSet (``/images``, ``/flux``, segmaps, catalogue).

    Args:
        path: output ``.h5`` file.
        synth: the set.
        preprocessing: preset name, dict or Preprocessing giving the model-input images.
        overwrite: replace an existing file.
        seed: universe seed, recorded as a file attribute.

    Returns:
        the written path.
    """
    prep = as_preprocessing(preprocessing)
    flux = synth.flux[:, None]
    images = prep.flux_to_model(flux)
    attrs = {"synth_set": synth.name, "synth_expected_order": ",".join(EXPECTED_ORDER)}
    if seed is not None:
        attrs["synth_seed"] = int(seed)
    if synth.sky is not None:  # which real sky the set lives in
        attrs.update({f"sky_patches_{key}": value for key, value in synth.sky.info.items()})
    return write_imageset(path, images, synth.catalog, prep, flux=flux, segmap=synth.segmap,
                          segmap_model=model_mask(synth.segmap, prep), overwrite=overwrite, attrs=attrs)


def _plan(sets: list[str]) -> list[str]:
    """Sets to generate in memory (observed sets are needed for their archetypes)."""
    need = list(sets)
    if "archetypes" in need and "observed-test" not in need:
        need.insert(0, "observed-test")
    if "archetypes-train" in need and "observed-train" not in need:
        need.insert(0, "observed-train")
    order = [n for n in SET_NAMES if n in need]
    return order


def generate(sets, n_train: int = 2000, n_test: int = 500, n_sim: int | None = None, seed: int = 0,
             workers: int = 1, progress=None, sky_patches=None) -> dict[str, SynthSet]:
    """Generate sets in memory.

    Args:
        sets: names from :data:`~morphllr.synth.sets.SET_NAMES`.
        n_train: galaxies in observed-train (and archetypes-train).
        n_test: galaxies in observed-test (and archetypes).
        n_sim: galaxies in each sim-* set (default: n_test).
        seed: universe seed.
        workers: processes for the Sérsic fits behind the archetypes.
        progress: optional callable(message) told about each step.
        sky_patches: real sky-patch library for every observed and sim-* image
            (:func:`~morphllr.synth.sky.sky_library`; see :func:`~morphllr.synth.sets.make_set`), or None for
            synthetic sky.

    Returns:
        dict name -> :class:`~morphllr.synth.sets.SynthSet` for the rendered sets; the observed sets behind
        requested archetypes are included, with their single-Sérsic fits as catalogue
        columns (the archetypes themselves are rendered when writing).
    """
    sets = check_set_names(list(sets))
    check_count(n_train, "--n-train")
    check_count(n_test, "--n-test")
    n_sim = n_test if n_sim is None else n_sim
    check_count(n_sim, "--n-sim")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise MorphllrError(f"--seed={seed!r}: must be a non-negative whole number")
    sky = sky_library(sky_patches)
    sizes = {"observed-train": n_train, "observed-test": n_test}
    out: dict[str, SynthSet] = {}
    say = progress or (lambda message: None)
    for name in _plan(sets):
        if name.startswith("archetypes"):
            source = out["observed-train" if name == "archetypes-train" else "observed-test"]
            if "sersic_n" not in source.catalog.colnames:
                say(f"fitting single Sérsic profiles to {len(source)} {source.name} galaxies")
                join_fits(source.catalog, fit_single_sersic(source, workers=workers))
        else:
            say(f"rendering {name}")
            out[name] = make_set(name, sizes.get(name, n_sim), seed, sky_patches=sky)
    return out


def _archetype_seed(seed: int, name: str) -> int:
    """Noise seed of an archetype set, distinct per (universe seed, set)."""
    return int(np.random.SeedSequence([int(seed), *[int(b) for b in name.encode()]]).generate_state(1)[0])


@claims({"out": "--out"}, inputs=("sky_patches", "preprocessing"), kind="dir")  # refused before any generation
def write_universe(out, sets=SET_NAMES, n_train: int = 2000, n_test: int = 500, n_sim: int | None = None,
                   seed: int = 0, overwrite: bool = False, workers: int = 1, preprocessing="zanisi21",
                   progress=None, sky_patches=None) -> dict[str, Path]:
    """Generate sets and write them as ImageSets ``<out>/<set>.h5`` plus ``universe.json``.

    The folder is claimed before any generation (:func:`morphllr.atomic.claim_output`: refused if it
    exists without ``overwrite``, if it holds the sky library, or if another run writes it) and appears
    only when everything is written (:func:`morphllr.atomic.atomic_dir`).

    Args:
        out: output folder (refused if it exists, unless ``overwrite``).
        sets, n_train, n_test, n_sim, seed, workers, progress: see :func:`generate`.
        overwrite: replace an existing folder.
        preprocessing: preprocessing of the model-input images (default zanisi21).
        sky_patches: real sky-patch library (:func:`~morphllr.synth.sky.sky_library`) for every observed, sim-*
            and archetype image (archetypes get another patch than their galaxy); recorded
            in universe.json (``sky_patches``) and in every set's ``sky_patches_*`` attributes.

    Returns:
        dict set name -> final file path.
    """
    sets = check_set_names(list(sets))
    prep = as_preprocessing(preprocessing)
    sky = sky_library(sky_patches)
    out = Path(out)
    say = progress or (lambda message: None)
    generated = generate(sets, n_train, n_test, n_sim, seed, workers, progress, sky_patches=sky)
    try:
        return _write_all(out, sets, generated, prep, seed, overwrite, say, workers)
    except OSError as exc:
        raise MorphllrError(f"--out {out}: writing failed ({exc.strerror or exc}); nothing was kept, "
                            "free some space or choose another folder") from None


def _write_all(out, sets, generated, prep, seed, overwrite, say, workers=1):
    """Write the generated sets, their archetypes and universe.json atomically into ``out``."""
    written = {}
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for name, synth in generated.items():
            write_set(tmp / f"{name}.h5", synth, prep, seed=seed)
        for name in sets:
            if name.startswith("archetypes"):
                source = "observed-train" if name == "archetypes-train" else "observed-test"
                say(f"rendering {name} (morphllr.galaxies.archetypes Sérsic + the observed neighbours + fresh noise)")
                write_set(tmp / f"{name}.h5", make_archetypes(generated[source], name, _archetype_seed(seed, name), workers),
                          prep, seed=seed)
        for name in generated:
            if name not in sets:  # only needed as the source of archetypes
                (tmp / f"{name}.h5").unlink()
        written = {name: out / f"{name}.h5" for name in sets}
        info = {
            "format": "morphllr.synth", "version": __version__, "seed": int(seed),
            "sets": {name: len(generated["observed-test" if name == "archetypes" else "observed-train"
                                         if name == "archetypes-train" else name]) for name in sets},
            "expected_order": list(EXPECTED_ORDER), "expected_ties": [list(t) for t in EXPECTED_TIES],
            "recipes": {name: dataclasses.asdict(r) for name, r in RECIPES.items()},
            "units": "SDSS r counts (DN) per 0.396 arcsec pixel, sky-subtracted; AB zero point 28.2",
            "preprocessing": prep.to_dict(),
        }
        sky = next((s.sky for s in generated.values() if s.sky is not None), None)
        if sky is not None:
            info["sky_patches"] = sky.info
        (tmp / "universe.json").write_text(json.dumps(info, indent=2) + "\n")
    return written
