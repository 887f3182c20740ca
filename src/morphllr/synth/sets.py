"""The named sets of the synthetic universe, their recipes and known order, drawn and rendered in memory.

The sets
--------
``observed-train`` / ``observed-test``: the galaxies of :mod:`morphllr.synth.population` (independent random streams).
The three simulations are the observed-test galaxies themselves (same masses, sizes,
distances, orientations; see :data:`GALAXIES_FROM`) re-rendered with known changes.
``sim-good``: slightly weaker small-scale structure (spiral arms 8 % weaker, clump light
15 % lower; bars and dust as observed), the small shortfall of a good simulation.
``sim-softened``: a low-resolution run, changed only in and around a core of radius
eps = 4 kpc; beyond ~1.25 eps its galaxies are the observed ones (same arms, bars,
clumps and dust).  Two things happen inside the core.  (1) No structure forms below
the softening length: arms, bars, dust lanes and clumps fade out inwards
(:func:`~morphllr.synth.render.softened_structure`: none inside eps/4, all beyond 5 eps/4).  (2) The light of
bulge and disk is flattened (every radius r -> (r^4 + eps^4)^(1/4)) and the light
missing from the core, smooth or structured, is spread as a Gaussian of radius eps
(flux is conserved), so the surface brightness drops inside ~eps/2, is raised between
~eps and ~4 eps (where the galaxy is faint) and is unchanged beyond.  4 kpc is the
radius inside which the spline-softened gravity of a TNG300-like run is not Newtonian:
2.8 times its Plummer-equivalent softening of 1.48 kpc (Springel 2005; Nelson et al.
2019).  At 0.02 < z < 0.05 it spans 4-10" (10-25 SDSS pixels of 0.396", 5-12 model
pixels of 0.79" after the zanisi21 2x2 zoom; ~6 model pixels for the median demo
galaxy), well above the 1.2-1.6" seeing and comparable to the median half-light radius
(~2.8 kpc).  Why both: models trained with different seeds disagree on whether a flat
core alone is more or less likely than a real cusp under p_obs than under p_arch (both
have seen only cusps), so flattening alone does not order sim-softened below sim-good
for every seed (seed 1 of ``benchmarks/demo_seeds.py``: sim-good - sim-softened =
-6 nats per galaxy [-13, +1]); the missing inner structure and the redistributed light
do, for the shipped models and seeds 1 and 2 (BENCHMARKS.md).  ``sim-smooth``: no arms, clumps, bars or dust
(bulge + disk only).  ``archetypes``: single-Sérsic archetypes of the observed test set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from morphllr.errors import MorphllrError
from morphllr.galaxies.sky_patches import SkyLibrary
from morphllr.synth.population import Recipe, sample_galaxies, set_stream
from morphllr.synth.render import render_galaxies
from morphllr.synth.sky import sky_library


SET_NAMES = ("observed-train", "observed-test", "sim-good", "sim-softened", "sim-smooth", "archetypes",
             "archetypes-train")
"""Every set ``morphllr synth`` can write (``archetypes-train``: archetypes of observed-train,
the training set of p_arch)."""


DEMO_SETS = ("observed-test", "sim-good", "sim-softened", "sim-smooth", "archetypes")
"""The sets the demo scores."""


EXPECTED_ORDER = ("observed-test", "sim-good", "sim-softened", "sim-smooth", "archetypes")
"""Sets from most to least realistic, the known answer of this universe.

Each set's mean LLR should exceed the next one's, except that ``sim-smooth`` and
``archetypes`` may tie (both lack all small-scale structure); see
:data:`EXPECTED_TIES`."""


EXPECTED_TIES = (("sim-smooth", "archetypes"),)


RECIPES: dict[str, Recipe] = {
    "observed-train": Recipe(),
    "observed-test": Recipe(),
    # sim-good stays close to observed and sim-softened changes nothing outside its core, so
    # each set differs from its neighbours in the known order by one kind of flaw; the demo
    # resolves both small steps galaxy by galaxy (morphllr.demo.paired_differences).
    "sim-good": Recipe(arm_strength_scale=0.92, clump_scale=0.85),
    "sim-softened": Recipe(softening_kpc=4.0),
    "sim-smooth": Recipe(structure=False),
}
"""The recipe of every generated set (``archetypes`` is derived from observed-test)."""


GALAXIES_FROM = {"sim-good": "observed-test", "sim-softened": "observed-test", "sim-smooth": "observed-test"}
"""Sets whose galaxies (masses, sizes, distances, orientations, ...) are those of another set.

The simulations are the observed-test galaxies re-rendered with each simulation's
changes (a paired, controlled experiment): only morphology differs between the sets,
so the known order is not blurred by sample variance of the heavy-tailed per-image LLR.
Their noise and clump placements are still their own (drawn from the set's own stream).
Pairing holds when the sets have the same size (the demo's case)."""


@dataclass
class SynthSet:
    """One generated set in memory.

    Attributes:
        name: set name (one of :data:`SET_NAMES`).
        flux: float32 (N, 128, 128) cutouts in counts at 0.396"/px.
        segmap: int32 (N, 128, 128) 0 sky, 1 central galaxy, 2 companion, 3 star.
        catalog: astropy Table, one row per image, with ``id`` and the true parameters.
        noiseless: float32 (N, 128, 128) the central galaxy without noise/neighbours.
        neighbours: float32 (N, 128, 128) the noiseless companion + star layer (shared
            with the galaxies' archetypes), or None.
        neighbour_label: int8 (N, 128, 128) 2 where the companion dominates that layer, 3 the star.
        sky: the real sky-patch library the images are placed in, or None (synthetic sky).
    """

    name: str
    flux: np.ndarray
    segmap: np.ndarray
    catalog: object
    noiseless: np.ndarray
    neighbours: np.ndarray | None = None
    neighbour_label: np.ndarray | None = None
    sky: SkyLibrary | None = None

    def __len__(self) -> int:
        return len(self.flux)


def check_set_names(names, where: str = "--sets") -> list[str]:
    """Validate set names; returns them as a list (MorphllrError on an unknown name)."""
    names = [n.strip() for n in names if n.strip()]
    unknown = [n for n in names if n not in SET_NAMES]
    if unknown:
        raise MorphllrError(f"{where}: unknown set {', '.join(unknown)}; choose from {', '.join(SET_NAMES)}")
    if not names:
        raise MorphllrError(f"{where}: no set given; choose from {', '.join(SET_NAMES)}")
    return names


def check_count(n: int, what: str) -> None:
    if not isinstance(n, (int, np.integer)) or n < 1 or n > 10_000_000:
        raise MorphllrError(f"{what}={n!r}: must be a whole number of galaxies between 1 and 10 million")


def _to_table(params: dict[str, np.ndarray], ids: np.ndarray, set_name: str):
    from astropy.table import Table

    table = Table()
    table["id"] = ids
    for key, value in params.items():
        table[key] = np.asarray(value)
    table.meta["set"] = set_name
    return table


def make_set(name: str, n: int, seed: int = 0, recipe: Recipe | None = None, sky_patches=None) -> SynthSet:
    """Draw and render one generated set (not ``archetypes``; see :func:`~morphllr.synth.archetypes.archetype_flux`).

    Args:
        name: ``observed-train``, ``observed-test``, ``sim-good``, ``sim-softened`` or ``sim-smooth``.
        n: number of galaxies.
        seed: universe seed; every set has its own stream derived from (seed, name).
        recipe: override the set's :data:`RECIPES` entry.
        sky_patches: None (synthetic Gaussian sky + read noise, the shipped models' data) or a
            real sky-patch library (:func:`~morphllr.synth.sky.sky_library`: path, array or
            :class:`~morphllr.galaxies.sky_patches.SkyLibrary`): each image is its noiseless scene + the Poisson noise of its sources + one random
            patch; catalogue column ``sky_patch`` holds the patch index, ``sky_sigma`` the rms
            of the patch used and ``sky_level`` is NaN (the real sky's level is not known).
            The galaxies themselves are the same as without it.

    Returns:
        :class:`SynthSet` with ids ``<name>-<index>``.
    """
    if name not in RECIPES:
        raise MorphllrError(f"set {name!r}: not a generated set; choose from {', '.join(RECIPES)} "
                            "(archetypes are made from an observed set by morphllr.galaxies.archetypes)")
    check_count(n, f"number of galaxies for {name}")
    recipe = recipe or RECIPES[name]
    recipe.check(f"recipe of {name}")
    sky = sky_library(sky_patches)
    key = [int(seed), *[int(b) for b in name.encode()]]
    params = sample_galaxies(n, set_stream(seed, GALAXIES_FROM.get(name, name)), recipe)
    rendered = render_galaxies(params, key + [1], sky=sky)
    ids = np.array([f"{name}-{i:06d}" for i in range(n)])
    params["sky_sigma"] = rendered.sky_sigma
    if sky is not None:
        params["sky_level"] = np.full(n, np.nan)  # the synthetic sky level was not used
        params["sky_patch"] = rendered.sky_patch
    return SynthSet(name, rendered.flux, rendered.segmap, _to_table(params, ids, name), rendered.noiseless,
                    rendered.neighbours, rendered.neighbour_label, sky)
