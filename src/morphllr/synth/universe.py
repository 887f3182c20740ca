"""A synthetic galaxy universe whose right answer is known.

Real SDSS cutouts cannot be shipped, so morphllr's embedded default is a generated
universe of SDSS-r-like galaxy cutouts ("observed") plus "simulation" sets of
decreasing, known morphological fidelity.  A likelihood-ratio comparison run on these
sets must recover :data:`EXPECTED_ORDER`; that is what the demo and its tests check.

What an "observed" galaxy is
----------------------------
A Sérsic bulge plus an exponential disk, with the small-scale structure smooth
profiles lack: logarithmic spiral arms (m = 1-3), bars, star-forming clumps, dust lanes
in edge-on disks, occasional companions and foreground stars.  Each is convolved with
an SDSS-like Moffat PSF and given SDSS-like sky and shot noise.

Parameter distributions (vectorised draws, see :func:`sample_galaxies`):

* stellar mass and redshift: galaxies are drawn uniformly in comoving volume for
  0.02 < z < 0.05 (nearby, so that structure is resolved at 32^2; astropy Planck18 cosmology) from the GAMA double-Schechter stellar
  mass function (Baldry et al. 2012: log M* = 10.66, alpha1 = -0.35, phi1 = 3.96e-3,
  alpha2 = -1.47, phi2 = 0.79e-3) and kept if brighter than the SDSS spectroscopic
  limit r < 17.77 (Strauss et al. 2002), which gives the joint mass-redshift-magnitude
  distribution of a flux-limited sample.
* mass-to-light: log(M/L_r) = -0.306 + 1.097 (g - r) (Bell et al. 2003), with g - r
  rising with bulge fraction; M_sun,r = 4.65 (Willmer 2018); K-corrections ignored.
* bulge fraction: the early-type fraction rises with mass (logistic in log M*, midpoint
  10.5, width 0.25, as in GAMA, Kelvin et al. 2014, and Galaxy Zoo, Bamford et al.
  2009); early types have B/T in 0.5-1, late types B/T mostly < 0.3 (Meert et al. 2015).
* size: Shen et al. (2003) SDSS size-mass relations, early types R50 = 2.88e-6 M^0.56
  kpc, late types R50 = 0.1 M^0.14 (1 + M/3.98e10)^0.25 kpc, log-normal scatter
  sigma_lnR = s2 + (s1 - s2) / (1 + (M/3.98e10)^2) with (s1, s2) = (0.47, 0.34) for late
  and (0.45, 0.27) for early types.  The catalogue's ``r50_kpc`` is this half-light
  radius; the bulge and disk radii are chosen so that the circularised composite has it.
* bulge Sérsic index: classical bulges/ellipticals n ~ 4 +- 0.8, pseudo-bulges of late
  types n ~ 1.5 (Fisher & Drory 2008); bulge-to-disk size ratio Re_b/Re_d ~ 0.15-0.45
  (Gadotti 2009).
* axis ratios: disks are thin oblate discs with intrinsic thickness 0.1-0.2 seen at
  random inclination (cos i uniform; Unterborn & Ryden 2008); bulges and ellipticals
  have apparent q ~ 0.8 +- 0.12 (Padilla & Strauss 2008).  Position angles uniform.
* spiral arms: 85 % of disk-dominated galaxies; arm number m = 1, 2, 3 with
  probabilities 0.1, 0.6, 0.3 and pitch angles 10-30 deg (Hart et al. 2016, 2017); the
  arm-interarm modulation amplitude is 0.3-0.7 of the disk light (Elmegreen et al. 2011
  measure arm/interarm contrasts of 1.5-3 in the near-infrared, i.e. amplitudes 0.2-0.5,
  and higher in the optical where young stars line the arms).
* bars: 30 % of disks with B/T < 0.5 (Masters et al. 2011), length 0.5-1.2 Re_disk,
  5-15 % of the disk light.
* clumps: ~6 (1 - B/T) star-forming clumps of 0.15-0.4 kpc carrying 2-8 % of the disk
  light, placed on the arms.
* dust lanes: disks seen more edge-on than q < 0.35 get a mid-plane lane of optical
  depth 0.4-1.2, slightly offset from the major axis.
* companions (10 %) and foreground stars (10 %, r = 15.5-21): realistic but modest
  rates.  Archetypes inherit their galaxy's exact neighbour layer (see below).
* PSF: Moffat, FWHM 1.2-1.6 arcsec, beta 3-4.7 (SDSS r-band seeing).
* units: SDSS r counts (DN) per 0.396" pixel, sky-subtracted; a count is AB mag 28.2
  (the ``zero_point`` of the ``zanisi21`` preprocessing).  Sky 120-190 DN/px, gain
  4.6-5.1 e-/DN, dark variance 1 DN^2, i.e. sky noise ~5-6 DN, as in SDSS frames.  With
  the zanisi21 stretch arcsinh(flux/1000) the noise sits at ~0.005 and bright galaxy
  centres (hundreds to thousands of DN) fill the [0, 1] range.

The sets
--------
``observed-train`` / ``observed-test``: the recipe above (independent random streams).
The three simulations are the observed-test galaxies themselves (same masses, sizes,
distances, orientations; see :data:`GALAXIES_FROM`) re-rendered with known changes.
``sim-good``: slightly weaker small-scale structure (spiral arms 8 % weaker, clump light
15 % lower; bars and dust as observed), the small shortfall of a good simulation.
``sim-softened``: a low-resolution run, changed only in and around a core of radius
eps = 4 kpc; beyond ~1.25 eps its galaxies are the observed ones (same arms, bars,
clumps and dust).  Two things happen inside the core.  (1) No structure forms below
the softening length: arms, bars, dust lanes and clumps fade out inwards
(:func:`softened_structure`: none inside eps/4, all beyond 5 eps/4).  (2) The light of
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

Archetypes in the same sky
--------------------------
The paper inserts each archetype into real sky, so that everything around the galaxy
(neighbours, sky) is shared by the observed image and its archetype and cancels in the
likelihood ratio; only the central galaxy's morphology is compared.  The synthetic
equivalent: every archetype is the PSF-convolved single Sérsic fit of its galaxy
(rendered by :func:`morphllr.galaxies.archetypes.render_archetypes`) plus the *same* noiseless
companion/star layer as its observed image, plus fresh sky and shot noise drawn from the
same noise model (see :func:`make_archetypes`).  Without that, companions and stars that
p_arch never saw dominate the LLR by 10^2-10^4 nats.

Real sky (``sky_patches``, ``morphllr synth --sky-patches``): instead of the synthetic
Gaussian sky and read noise, every observed, sim-* and archetype image gets the Poisson
noise of its own sources plus one random patch of a real empty-sky library
(:func:`morphllr.galaxies.archetypes.add_sky_patch`, as ``morphllr archetypes --sky-patches`` does;
:func:`sky_library`), each image from its own seeded stream, an archetype never from its
galaxy's patch.  Without a library the pixels are exactly those the shipped models saw.

Rendering is vectorised with numpy: profiles are evaluated on a 2x oversampled grid
(the central pixels 5x5 supersampled so that n = 4 cusps are integrated, not sampled),
structure is applied in the disk plane, clumps and stars are deposited as points and
blurred in Fourier space, everything is convolved with the per-galaxy PSF by FFT and
binned 2x2 to 0.396" pixels.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from morphllr.atomic import claims
from morphllr.errors import MorphllrError

PIXEL_SCALE = 0.396
"""SDSS pixel scale in arcsec per pixel."""

STAMP = 128
"""Cutout side in pixels (what the ``zanisi21`` preprocessing consumes)."""

ZERO_POINT = 28.2
"""AB magnitude of one count (DN); matches the ``zanisi21`` preprocessing."""

MAG_LIMIT = 17.77
"""SDSS main-sample spectroscopic limit (Petrosian r), applied to the total magnitude."""

Z_RANGE = (0.02, 0.05)
"""Redshift range of the universe.  Nearer than the paper's sample (0.05-0.1) on purpose:
after the zanisi21 zoom a model pixel is 0.79", i.e. 0.33-0.77 kpc here, so arms, bars
and clumps of a few kpc span several model pixels and the 32^2 models can see them."""

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

_OVERSAMPLE = 2
_CHUNK = 32  # galaxies rendered at once; fixed so results do not depend on memory
_MAX_CLUMPS = 12


@dataclass(frozen=True)
class Recipe:
    """How a set of galaxies is drawn and rendered.

    Args:
        size_scale: multiplies every half-light radius (1 = Shen et al. 2003).
        arm_strength_scale: multiplies the spiral-arm modulation amplitude.
        arm_fraction: fraction of disk-dominated galaxies with arms.
        bar_fraction: fraction of disks (B/T < 0.5) with a bar.
        clump_scale: multiplies the clump light fraction.
        late_bt_beta: Beta(a, b) parameters of B/T for late types (scaled to 0-0.45).
        structure: False renders bulge + disk only (no arms, bars, clumps, dust).
        softening_kpc: radius eps (kpc) of the core a softened simulation leaves at the
            centre: no structure inside it (:func:`softened_structure`), every bulge/disk
            radius r -> (r^4 + eps^4)^(1/4), the missing light spread as a Gaussian of that
            radius (0 = none).
        companion_fraction: fraction of cutouts with a companion galaxy.
        star_fraction: fraction of cutouts with a foreground star.
    """

    size_scale: float = 1.0
    arm_strength_scale: float = 1.0
    arm_fraction: float = 0.85
    bar_fraction: float = 0.30
    clump_scale: float = 1.0
    late_bt_beta: tuple[float, float] = (1.3, 4.0)
    structure: bool = True
    softening_kpc: float = 0.0
    companion_fraction: float = 0.10
    star_fraction: float = 0.10

    def check(self, where: str = "recipe") -> None:
        """Raise :class:`MorphllrError` if a parameter is outside its possible range."""
        for name in ("size_scale", "arm_strength_scale", "clump_scale"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise MorphllrError(f"{where}: {name}={value!r} must be a positive number")
        for name in ("arm_fraction", "bar_fraction", "companion_fraction", "star_fraction"):
            value = getattr(self, name)
            if not (0.0 <= value <= 1.0):
                raise MorphllrError(f"{where}: {name}={value!r} must be a fraction between 0 and 1")
        if not (math.isfinite(self.softening_kpc) and 0 <= self.softening_kpc <= 20):
            raise MorphllrError(f"{where}: softening_kpc={self.softening_kpc!r} must be between 0 and 20 kpc")
        a, b = self.late_bt_beta
        if not (a > 0 and b > 0):
            raise MorphllrError(f"{where}: late_bt_beta={self.late_bt_beta!r} needs two positive numbers")


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


# --------------------------------------------------------------------------- sampling
def _stream(seed: int, name: str) -> np.random.Generator:
    """An independent, reproducible random stream per (seed, set name)."""
    key = [int(b) for b in name.encode()]
    return np.random.default_rng(np.random.SeedSequence([int(seed), *key]))


def _mass_function_draw(rng: np.random.Generator, n: int, lo: float = 9.5, hi: float = 12.0) -> np.ndarray:
    """log10 M* drawn from the Baldry et al. (2012) double-Schechter mass function."""
    grid = np.linspace(lo, hi, 2001)
    x = 10 ** (grid - 10.66)
    phi = np.log(10) * np.exp(-x) * (3.96e-3 * x ** (1 - 0.35) + 0.79e-3 * x ** (1 - 1.47))
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (phi[1:] + phi[:-1]) * np.diff(grid))])
    return np.interp(rng.random(n), cdf / cdf[-1], grid)


def _volume_redshift_draw(rng: np.random.Generator, n: int) -> np.ndarray:
    """Redshifts uniform in comoving volume between :data:`Z_RANGE`."""
    from astropy.cosmology import Planck18

    z = np.linspace(*Z_RANGE, 256)
    dc3 = Planck18.comoving_distance(z).value ** 3
    return np.interp(rng.random(n), (dc3 - dc3[0]) / (dc3[-1] - dc3[0]), z)


def shen03_r50_kpc(log_mstar: np.ndarray, early: np.ndarray) -> np.ndarray:
    """Median half-light radius (kpc) at fixed stellar mass, Shen et al. (2003) eqs. 17-18.

    Args:
        log_mstar: log10 stellar mass in Msun.
        early: True for early types (concentrated, Sérsic n > 2.5 in Shen et al.).

    Returns:
        R50 in kpc.
    """
    m = 10.0 ** np.asarray(log_mstar, dtype=float)
    late = 0.1 * m**0.14 * (1 + m / 3.98e10) ** (0.39 - 0.14)
    return np.where(early, 2.88e-6 * m**0.56, late)


def shen03_sigma_lnr(log_mstar: np.ndarray, early: np.ndarray) -> np.ndarray:
    """Log-normal scatter (in ln R) of the Shen et al. (2003) size-mass relations."""
    m = 10.0 ** np.asarray(log_mstar, dtype=float)
    s1 = np.where(early, 0.45, 0.47)
    s2 = np.where(early, 0.27, 0.34)
    return s2 + (s1 - s2) / (1 + (m / 3.98e10) ** 2)


def sersic_b(n: np.ndarray) -> np.ndarray:
    """b_n such that Re encloses half the light of a Sérsic profile of index n."""
    from scipy.special import gammaincinv

    return gammaincinv(2 * np.asarray(n, dtype=float), 0.5)


def _disk_radius_for_r50(r50: np.ndarray, bt: np.ndarray, n_b: np.ndarray, ratio: np.ndarray) -> np.ndarray:
    """Disk Re such that bulge (Re = ratio * Re_d) + disk have half-light radius r50."""
    from scipy.special import gammainc

    b_b, b_d = sersic_b(n_b), sersic_b(np.ones_like(n_b))

    def enclosed(x):  # light fraction inside x disk radii
        return bt * gammainc(2 * n_b, b_b * (x / ratio) ** (1 / n_b)) + (1 - bt) * gammainc(2.0, b_d * x)

    lo, hi = np.full_like(r50, 1e-3), np.full_like(r50, 10.0)
    for _ in range(40):  # bisection, vectorised over galaxies
        mid = 0.5 * (lo + hi)
        inside = enclosed(mid) > 0.5
        hi, lo = np.where(inside, mid, hi), np.where(inside, lo, mid)
    return r50 / (0.5 * (lo + hi))


_Z_GRID = np.linspace(Z_RANGE[0], Z_RANGE[1], 101)


def _cosmology_tables() -> tuple[np.ndarray, np.ndarray]:
    """Distance modulus and kpc/arcsec on :data:`_Z_GRID` (Planck18), interpolated later."""
    global _COSMO
    if _COSMO is None:
        from astropy.cosmology import Planck18

        _COSMO = (Planck18.distmod(_Z_GRID).value, Planck18.kpc_proper_per_arcmin(_Z_GRID).value / 60.0)
    return _COSMO


_COSMO: tuple[np.ndarray, np.ndarray] | None = None


def sample_galaxies(n: int, rng: np.random.Generator, recipe: Recipe = Recipe()) -> dict[str, np.ndarray]:
    """Draw the true parameters of ``n`` galaxies (vectorised).

    Args:
        n: number of galaxies.
        rng: numpy random generator (the set's stream).
        recipe: the set's :class:`Recipe`.

    Returns:
        dict of float/int/bool arrays of length n: the catalogue columns.  Radii are
        half-light radii along the major axis in arcsec (``r50_*``: of the whole galaxy),
        position angles in degrees counter-clockwise from the array's +x axis (the
        :mod:`morphllr.galaxies.sersic_fit` convention), fluxes in counts, ``x0``/``y0`` the centre
        in 0-based pixel coordinates of the 128^2 cutout.
    """
    # Flux-limited sample by rejection: draw from the volume-limited population.
    keep_mass, keep_z, keep_early, keep_bt, keep_mag, keep_gr = [], [], [], [], [], []
    got = 0
    while got < n:
        m = max(4 * (n - got), 256)
        logm = _mass_function_draw(rng, m)
        z = _volume_redshift_draw(rng, m)
        early = rng.random(m) < 1 / (1 + np.exp(-(logm - 10.5) / 0.25))
        a, b = recipe.late_bt_beta
        bt = np.where(early, 0.5 + 0.5 * rng.beta(2.5, 1.5, m), 0.45 * rng.beta(a, b, m))
        gr = np.clip(0.45 + 0.35 * bt + rng.normal(0, 0.05, m), 0.2, 0.95)
        log_ml = -0.306 + 1.097 * gr
        abs_mag = 4.65 - 2.5 * (logm - log_ml)
        mag = abs_mag + np.interp(z, _Z_GRID, _cosmology_tables()[0])
        ok = mag < MAG_LIMIT
        for lst, arr in zip((keep_mass, keep_z, keep_early, keep_bt, keep_mag, keep_gr),
                            (logm, z, early, bt, mag, gr)):
            lst.append(arr[ok])
        got += int(ok.sum())
    logm, z, early, bt, mag, gr = (np.concatenate(x)[:n] for x in
                                   (keep_mass, keep_z, keep_early, keep_bt, keep_mag, keep_gr))

    r50_kpc = shen03_r50_kpc(logm, early) * np.exp(rng.normal(0, 1, n) * shen03_sigma_lnr(logm, early))
    r50_kpc *= recipe.size_scale
    kpc_per_arcsec = np.interp(z, _Z_GRID, _cosmology_tables()[1])
    r50 = r50_kpc / kpc_per_arcsec

    n_bulge = np.where(early, np.clip(rng.normal(4.0, 0.8, n), 2.0, 6.0),
                       np.clip(np.exp(rng.normal(np.log(1.5), 0.3, n)), 0.7, 4.0))
    ratio = np.where(early, rng.uniform(0.3, 0.8, n), rng.uniform(0.15, 0.45, n))
    re_disk = _disk_radius_for_r50(r50, bt, n_bulge, ratio)
    re_bulge = ratio * re_disk

    cos_i = rng.random(n)
    thickness = rng.uniform(0.1, 0.2, n)
    q_disk = np.sqrt(cos_i**2 + thickness**2 * (1 - cos_i**2))
    q_bulge = np.maximum(np.clip(rng.normal(0.8, 0.12, n), 0.45, 1.0), np.minimum(q_disk, 1.0))
    pa = rng.uniform(0, 180, n)

    disky = bt < 0.6
    structure = recipe.structure
    has_arms = structure & disky & (rng.random(n) < recipe.arm_fraction)
    arm_m = rng.choice([1, 2, 3], size=n, p=[0.1, 0.6, 0.3])
    arm_pitch = rng.uniform(10, 30, n)
    arm_strength = np.where(has_arms, np.clip(rng.uniform(0.3, 0.7, n) * recipe.arm_strength_scale, 0, 0.95), 0.0)
    has_bar = structure & (bt < 0.5) & (rng.random(n) < recipe.bar_fraction)
    bar_frac = np.where(has_bar, rng.uniform(0.05, 0.15, n), 0.0)
    bar_length = rng.uniform(0.5, 1.2, n) * re_disk
    bar_angle = rng.uniform(0, 180, n)
    n_clumps = np.where(structure, np.minimum(rng.poisson(6 * (1 - bt)), _MAX_CLUMPS), 0)
    clump_frac = np.where(n_clumps > 0, np.clip(rng.uniform(0.02, 0.08, n) * recipe.clump_scale, 0, 0.3), 0.0)
    clump_sigma = rng.uniform(0.15, 0.4, n) / kpc_per_arcsec
    has_dust = structure & disky & (q_disk < 0.35)
    dust_tau = np.where(has_dust, rng.uniform(0.4, 1.2, n), 0.0)
    # The lane sits slightly off the major axis because the near side of the disk hides it.
    dust_offset = rng.uniform(-0.08, 0.08, n) * re_disk

    # Neighbours: a companion galaxy 8-22" away, a foreground star anywhere off-centre.
    comp_dist = rng.uniform(20, 55, n) * PIXEL_SCALE
    comp_angle = rng.uniform(0, 2 * np.pi, n)
    star_dist = rng.uniform(10, 60, n) * PIXEL_SCALE
    star_angle = rng.uniform(0, 2 * np.pi, n)

    flux = 10 ** (-0.4 * (mag - ZERO_POINT))
    return {
        "log_mstar": logm, "z": z, "kpc_per_arcsec": kpc_per_arcsec, "early_type": early,
        "g_r": gr, "mag_r": mag, "flux": flux, "r50_kpc": r50_kpc, "r50_arcsec": r50,
        "bt": bt, "n_bulge": n_bulge, "re_bulge_arcsec": re_bulge, "q_bulge": q_bulge,
        "n_disk": np.ones(n), "re_disk_arcsec": re_disk, "q_disk": q_disk, "pa_deg": pa,
        "inclination_deg": np.degrees(np.arccos(cos_i)),
        "arm_m": np.where(has_arms, arm_m, 0), "arm_pitch_deg": np.where(has_arms, arm_pitch, 0.0),
        "arm_strength": arm_strength, "arm_phase": rng.uniform(0, 2 * np.pi, n),
        "bar_frac": bar_frac, "bar_length_arcsec": np.where(has_bar, bar_length, 0.0),
        "bar_angle_deg": np.where(has_bar, bar_angle, 0.0),
        "n_clumps": n_clumps, "clump_frac": clump_frac, "clump_sigma_arcsec": clump_sigma,
        "dust_tau": dust_tau, "dust_offset_arcsec": dust_offset,
        "softening_kpc": np.full(n, recipe.softening_kpc),
        "has_companion": rng.random(n) < recipe.companion_fraction,
        "has_star": rng.random(n) < recipe.star_fraction,
        "psf_fwhm_arcsec": rng.uniform(1.2, 1.6, n), "psf_beta": rng.uniform(3.0, 4.7, n),
        "companion_dx_arcsec": comp_dist * np.cos(comp_angle), "companion_dy_arcsec": comp_dist * np.sin(comp_angle),
        "companion_flux": flux * 10 ** (-0.4 * rng.uniform(0.5, 3.0, n)),
        "companion_re_arcsec": r50 * rng.uniform(0.3, 0.8, n), "companion_n": rng.uniform(0.8, 4.0, n),
        "companion_q": rng.uniform(0.3, 1.0, n), "companion_pa_deg": rng.uniform(0, 180, n),
        "star_dx_arcsec": star_dist * np.cos(star_angle), "star_dy_arcsec": star_dist * np.sin(star_angle),
        "star_flux": 10 ** (-0.4 * (rng.uniform(15.5, 21.0, n) - ZERO_POINT)),
        "sky_level": rng.uniform(120, 190, n), "gain": rng.uniform(4.6, 5.1, n),
        "x0": STAMP / 2 + rng.uniform(-0.5, 0.5, n), "y0": STAMP / 2 + rng.uniform(-0.5, 0.5, n),
    }


# --------------------------------------------------------------------------- real sky
_SKY_TAG = 0x736B79  # "sky": keeps the per-image sky streams apart from the per-chunk noise streams


def sky_library(source, where: str = "--sky-patches") -> SkyLibrary | None:
    """Read and check a sky-patch library for :func:`make_set` / :func:`make_archetypes` / :func:`write_universe`.

    Args:
        source: None (synthetic Gaussian sky), a :class:`SkyLibrary`, a file readable by
            :func:`morphllr.galaxies.archetypes.load_sky_patches` (e.g. the ``.npy`` of ``morphllr
            sky-patches``) or an array (M, 1, S, S) / (M, S, S) of empty sky in r counts at
            0.396"/px, S >= 128 (the flux cutout side).
        where: option name for messages.

    Returns:
        :class:`SkyLibrary`, or None for ``source=None``.
    """
    from morphllr.galaxies.sky_patches import SkyLibrary, load_sky_library

    if source is None:
        return None
    fix = (f"cut single-band r-count patches of at least {STAMP}x{STAMP} pixels at {PIXEL_SCALE}\"/px with "
           f"`morphllr sky-patches FRAME --size {STAMP} --out SKY.npy`")
    return load_sky_library(source, where, size=STAMP, channels=1, zero_point=ZERO_POINT, pixel_scale=PIXEL_SCALE,
                            fix=fix)


def _place_in_sky(scene: np.ndarray, gain: np.ndarray, sky: SkyLibrary, key: list[int], first: int,
                  avoid: np.ndarray | None = None):
    """Noiseless scenes + their own Poisson noise + one random real sky patch each.

    Image ``first + b`` draws everything from its own stream ``(key, sky tag, index + 1)``,
    so the result depends neither on chunking nor on worker count.  The sky is
    :func:`morphllr.galaxies.archetypes.add_sky_patch` (random patch, quarter turn, flip, crop): the
    library's own pixels, never resampled.

    Args:
        scene: (B, H, W) noiseless counts (galaxy + neighbours).
        gain: (B,) electrons per count.
        sky: the library.
        key: seed integers of the set.
        first: absolute index of ``scene[0]`` in the set.
        avoid: (B,) patch index each image must not use (its galaxy's, for archetypes), or None.

    Returns:
        (float64 (B, H, W) images, int64 (B,) patch indices, float64 (B,) rms of the sky added).
    """
    from morphllr.galaxies.archetypes import add_matched_noise, add_sky_patch

    n_patches = len(sky.patches)
    out = np.empty(scene.shape, np.float64)
    index = np.empty(len(scene), np.int64)
    rms = np.empty(len(scene), np.float64)
    blank = np.zeros((1,) + scene.shape[1:])
    for b in range(len(scene)):
        rng = np.random.default_rng(np.random.SeedSequence([*key, _SKY_TAG, first + b + 1]))
        if avoid is not None and n_patches > 1:  # a different patch than the galaxy's: fresh sky
            k = int(rng.integers(n_patches - 1))
            k += k >= int(avoid[b])
        else:
            k = int(rng.integers(n_patches))
        noisy = add_matched_noise(scene[b], 0.0, float(gain[b]), rng)  # shot noise of the sources' own light
        patch = add_sky_patch(blank, sky.patches[k:k + 1], rng)[0]
        out[b] = noisy + patch
        index[b], rms[b] = k, patch.std()
    return out, index, rms


# --------------------------------------------------------------------------- rendering
@dataclass
class Rendered:
    """Images of a batch of galaxies at 0.396"/px, in counts (sky-subtracted).

    Attributes:
        flux: float32 (N, 128, 128) observed cutouts (PSF, sky and shot noise).
        noiseless: float32 (N, 128, 128) the central galaxy alone, PSF-convolved, no noise.
        segmap: int32 (N, 128, 128) 0 sky, 1 central galaxy, 2 companion, 3 star (pixels
            whose noiseless flux exceeds the sky noise, labelled by the brightest source).
        sky_sigma: float64 (N,) sky noise per pixel in counts.
        neighbours: float32 (N, 128, 128) the noiseless companion + star layer.
        neighbour_label: int8 (N, 128, 128) which neighbour dominates a pixel (2 companion, 3 star).
        sky_patch: int64 (N,) index of the real sky patch of each image, or None (synthetic sky).
    """

    flux: np.ndarray
    noiseless: np.ndarray
    segmap: np.ndarray
    sky_sigma: np.ndarray
    neighbours: np.ndarray
    neighbour_label: np.ndarray
    sky_patch: np.ndarray | None = None


def _add_noise(total: np.ndarray, sky: np.ndarray, gain: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sky-subtracted counts with SDSS-like noise: sky + source shot noise and 1 DN^2 dark/read variance.

    Args:
        total: (B, H, W) noiseless scene in counts (sky already subtracted).
        sky, gain: (B, 1, 1) sky level (counts per pixel) and gain (electrons per count).
        rng: the chunk's random stream.

    Returns:
        float64 (B, H, W) noisy image.
    """
    var = (sky + np.maximum(total, 0)) / gain + 1.0
    return total + rng.standard_normal(total.shape) * np.sqrt(var)


def _label_sources(layers: np.ndarray, labels: tuple[int, ...], sky_sigma: np.ndarray) -> np.ndarray:
    """Segmap: each pixel labelled by its brightest noiseless layer where that exceeds the sky noise.

    Args:
        layers: (L, B, H, W) noiseless images of the sources.
        labels: the segmap value of each layer.
        sky_sigma: (B,) per-pixel sky noise.

    Returns:
        int32 (B, H, W) segmap, 0 = sky.
    """
    label = np.asarray(labels, np.int32)[np.argmax(layers, axis=0)]
    return np.where(layers.max(axis=0) > sky_sigma[:, None, None], label, 0)


def _col(params: dict[str, np.ndarray], key: str, sl: slice, extra_dims: int = 2) -> np.ndarray:
    """One parameter for a chunk, shaped (B, 1, 1[, 1]) to broadcast against images."""
    # float32 halves the cost of the per-pixel transcendental functions; plenty for counts.
    return np.asarray(params[key][sl], dtype=np.float32).reshape((-1,) + (1,) * extra_dims)


def _sersic_norm(flux, re, n, q):
    """Surface brightness at Re of a Sérsic profile with the given total flux."""
    from scipy.special import gamma

    b = sersic_b(n)
    return flux * b ** (2 * n) / (2 * np.pi * q * re**2 * n * np.exp(b) * gamma(2 * n))


def softened_structure(r, softening):
    """Fraction of the small-scale structure a softened simulation keeps at radius ``r``.

    Structure (arms, bars, clumps, dust lanes) cannot form below the softening length:
    none inside ``eps / 4``, all beyond ``5 eps / 4``, a smooth step in between.

    Args:
        r: radius (same unit as ``softening``).
        softening: core radius eps (> 0), broadcastable against ``r``.

    Returns:
        values in [0, 1].
    """
    t = np.clip((np.asarray(r) / softening - 0.25), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _galaxy_light(dx, dy, g: dict[str, np.ndarray], softening: np.ndarray | None = None):
    """Surface brightness (counts / arcsec^2) of bulge + disk (+ arms, bar, dust).

    Args:
        dx, dy: offsets from the galaxy centre in arcsec, broadcastable against the
            (B, 1, 1[, 1]) parameter arrays in ``g``.
        g: per-galaxy parameters of the chunk (see :func:`_chunk_params`).
        softening: per-galaxy core radius in arcsec, or None: the smooth profile is
            flattened inside it and the structure faded out (:func:`softened_structure`).

    Returns:
        float64 array of the broadcast shape.
    """
    c, s = np.cos(g["pa"]), np.sin(g["pa"])
    u = dx * c + dy * s
    v = -dx * s + dy * c
    vd = v / g["q_d"]  # disk-plane coordinate along the minor axis
    r_true = np.sqrt(u**2 + vd**2)  # disk-plane radius: where the structure lives
    r_d2 = u**2 + vd**2
    r_b2 = u**2 + (v / g["q_b"]) ** 2
    keep = 1.0
    if softening is not None:
        # r -> (r^4 + eps^4)^(1/4): a flat core inside eps, the untouched profile a few eps out.
        r_d2 = np.sqrt(r_d2**2 + softening**4)
        r_b2 = np.sqrt(r_b2**2 + softening**4)
        keep = softened_structure(r_true, softening)
    r_d, r_b = np.sqrt(r_d2), np.sqrt(r_b2)

    h = g["re_d"] / 1.6783469900166605  # exponential scale length
    disk = g["disk_flux"] / (2 * np.pi * g["q_d"] * h**2) * np.exp(-r_d / h)
    arms = g["arm_a"] != 0
    if np.any(arms):
        theta = np.arctan2(vd, u)
        lnr = np.log(np.maximum(r_true, 1e-3) / g["re_d"])
        phase = g["arm_m"] * (theta - lnr / np.tan(g["pitch"])) + g["arm_phase"]
        # Squared cosine makes arms narrower than inter-arm gaps; mean-zero modulation keeps the flux.
        wave = ((1 + np.cos(phase)) / 2) ** 2 / 0.375 - 1
        envelope = np.clip((r_true / g["re_d"] - 0.4) / 0.6, 0, 1) * keep
        disk = disk * (1 + g["arm_a"] * envelope * wave)
    bulge = g["bulge_ie"] * np.exp(-g["b_n"] * ((r_b / g["re_b"]) ** (1 / g["n_b"]) - 1))
    light = disk + bulge
    if np.any(g["bar_flux"] > 0):
        cb, sb = np.cos(g["bar_angle"]), np.sin(g["bar_angle"])
        a = np.maximum(g["bar_len"], 1e-3)
        s2 = ((u * cb + vd * sb) / a) ** 2 + ((-u * sb + vd * cb) / (0.3 * a)) ** 2
        # Ferrers n=2 bar; its disk-plane area is 0.3 pi a^2 / 3, projected by q_d.
        light = light + keep * g["bar_flux"] / (0.1 * np.pi * a**2 * g["q_d"]) * np.clip(1 - s2, 0, None) ** 2
    if np.any(g["dust_tau"] > 0):
        width = np.maximum(0.06 * g["re_d"], 0.12)
        lane = np.exp(-0.5 * ((v - g["dust_off"]) / width) ** 2) * np.exp(-0.5 * (u / (1.5 * g["re_d"])) ** 2)
        light = light * np.exp(-g["dust_tau"] * keep * lane)
    return light


def _chunk_params(params: dict[str, np.ndarray], sl: slice, extra_dims: int = 2) -> dict[str, np.ndarray]:
    """Derived per-galaxy quantities of one chunk, broadcastable against images."""
    col = lambda k: _col(params, k, sl, extra_dims)  # noqa: E731
    flux, bt = col("flux"), col("bt")
    n_b, re_b, q_b = col("n_bulge"), col("re_bulge_arcsec"), col("q_bulge")
    disk_total = flux * (1 - bt)
    return {
        "pa": np.radians(col("pa_deg")), "q_d": col("q_disk"), "q_b": q_b, "re_d": col("re_disk_arcsec"),
        "re_b": re_b, "n_b": n_b, "b_n": sersic_b(n_b).astype(np.float32),
        "bulge_ie": _sersic_norm(flux * bt, re_b, n_b, q_b).astype(np.float32),
        "disk_flux": disk_total * (1 - col("bar_frac") - col("clump_frac")),
        "arm_a": col("arm_strength"), "arm_m": col("arm_m"), "pitch": np.radians(np.maximum(col("arm_pitch_deg"), 1.0)),
        "arm_phase": col("arm_phase"), "bar_flux": disk_total * col("bar_frac"),
        "bar_len": col("bar_length_arcsec"), "bar_angle": np.radians(col("bar_angle_deg")),
        "dust_tau": col("dust_tau"), "dust_off": col("dust_offset_arcsec"),
    }


def _fine_axis() -> np.ndarray:
    """Fine-pixel centres in coarse-pixel units (coarse pixel i spans [i - 0.5, i + 0.5])."""
    nf = STAMP * _OVERSAMPLE
    return (np.arange(nf) + 0.5) / _OVERSAMPLE - 0.5


def _moffat_transfer(fwhm: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """rfft2 of unit-flux Moffat PSFs on the fine grid (wrap-around centred at 0)."""
    import scipy.fft

    nf = STAMP * _OVERSAMPLE
    step = PIXEL_SCALE / _OVERSAMPLE
    d = np.fft.fftfreq(nf, 1.0 / nf) * step  # signed offsets in arcsec
    r2 = d[None, :, None] ** 2 + d[None, None, :] ** 2
    fwhm, beta = fwhm[:, None, None], beta[:, None, None]
    alpha = fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))
    psf = (1 + r2 / alpha**2) ** (-beta)
    psf /= psf.sum(axis=(1, 2), keepdims=True)
    return scipy.fft.rfft2(psf, workers=1)


def _deposit(image: np.ndarray, index: np.ndarray, fx: np.ndarray, fy: np.ndarray, flux: np.ndarray) -> None:
    """Add point sources to (B, H, W) ``image`` with bilinear weights (fine-pixel coords)."""
    nf = image.shape[-1]
    x0, y0 = np.floor(fx).astype(int), np.floor(fy).astype(int)
    wx, wy = fx - x0, fy - y0
    for ox, oy, w in ((0, 0, (1 - wx) * (1 - wy)), (1, 0, wx * (1 - wy)), (0, 1, (1 - wx) * wy), (1, 1, wx * wy)):
        xi, yi = x0 + ox, y0 + oy
        ok = (xi >= 0) & (xi < nf) & (yi >= 0) & (yi < nf)
        np.add.at(image, (index[ok], yi[ok], xi[ok]), (flux * w)[ok])


def _clump_positions(params, sl, rng):
    """Clump centres (fine pixels), fluxes and disk-plane radii (arcsec) for one chunk, placed along the arms."""
    nb = sl.stop - sl.start
    k = np.arange(_MAX_CLUMPS)
    idx = np.repeat(np.arange(nb), _MAX_CLUMPS)
    present = (k[None, :] < params["n_clumps"][sl][:, None]).ravel()
    get = lambda key: np.repeat(np.asarray(params[key][sl], float), _MAX_CLUMPS)  # noqa: E731
    re_d, m = get("re_disk_arcsec"), np.maximum(get("arm_m"), 1)
    radius = re_d * rng.uniform(0.5, 2.0, idx.size)
    on_arm = get("arm_strength") > 0
    arm_theta = (np.log(radius / re_d) / np.tan(np.radians(np.maximum(get("arm_pitch_deg"), 1.0)))
                 + (2 * np.pi * rng.integers(0, 3, idx.size) - get("arm_phase")) / m + rng.normal(0, 0.2, idx.size))
    theta = np.where(on_arm, arm_theta, rng.uniform(0, 2 * np.pi, idx.size))
    u, vd = radius * np.cos(theta), radius * np.sin(theta)
    v = vd * get("q_disk")
    pa = np.radians(get("pa_deg"))
    dx, dy = u * np.cos(pa) - v * np.sin(pa), u * np.sin(pa) + v * np.cos(pa)
    weights = rng.exponential(1.0, (nb, _MAX_CLUMPS)) * (k[None, :] < params["n_clumps"][sl][:, None])
    weights /= np.maximum(weights.sum(axis=1, keepdims=True), 1e-12)
    total = np.asarray(params["flux"][sl] * (1 - params["bt"][sl]) * params["clump_frac"][sl], float)
    flux = (weights * total[:, None]).ravel()
    fx = (get("x0") + dx / PIXEL_SCALE + 0.5) * _OVERSAMPLE - 0.5
    fy = (get("y0") + dy / PIXEL_SCALE + 0.5) * _OVERSAMPLE - 0.5
    return idx[present], fx[present], fy[present], flux[present], radius[present]


def _companion_light(params, sl, fine_x, fine_y):
    """Surface brightness of the companion galaxies of one chunk (zeros where absent)."""
    col = lambda k: _col(params, k, sl)  # noqa: E731
    dx = (fine_x[None, None, :] - col("x0")) * PIXEL_SCALE - col("companion_dx_arcsec")
    dy = (fine_y[None, :, None] - col("y0")) * PIXEL_SCALE - col("companion_dy_arcsec")
    pa, q = np.radians(col("companion_pa_deg")), col("companion_q")
    u = dx * np.cos(pa) + dy * np.sin(pa)
    v = (-dx * np.sin(pa) + dy * np.cos(pa)) / q
    n, re = col("companion_n"), col("companion_re_arcsec")
    r = np.sqrt(u**2 + v**2)
    light = _sersic_norm(col("companion_flux"), re, n, q) * np.exp(-sersic_b(n) * ((r / re) ** (1 / n) - 1))
    return light * col("has_companion")


def render_galaxies(params: dict[str, np.ndarray], seed_key: list[int], noise: bool = True,
                    sky: SkyLibrary | None = None) -> Rendered:
    """Render galaxies drawn by :func:`sample_galaxies` as SDSS-like cutouts.

    Args:
        params: the catalogue columns from :func:`sample_galaxies`.
        seed_key: integers seeding the noise/clump streams (one stream per chunk, so the
            result is reproducible and independent of the caller's batching).
        noise: add sky and shot noise (False: ``flux`` equals the noiseless scene).
        sky: real sky patches: with ``noise``, every image gets the Poisson noise of its
            sources plus one random patch (:func:`_place_in_sky`) instead of the synthetic
            Gaussian sky and read noise; ``sky_sigma`` is then the rms of the patch used.

    Returns:
        :class:`Rendered`.
    """
    import scipy.fft

    n = len(params["flux"])
    nf = STAMP * _OVERSAMPLE
    step = PIXEL_SCALE / _OVERSAMPLE
    fine = _fine_axis().astype(np.float32)
    area = np.float32(step**2)
    # Central block supersampled 5x5 so that cuspy bulges are integrated over pixels.
    sub = (np.arange(5) + 0.5) / 5 - 0.5
    block = np.arange(STAMP * _OVERSAMPLE // 2 - 7, STAMP * _OVERSAMPLE // 2 + 7)
    bx = (fine[block][None, :, None] + sub[None, None, :] / _OVERSAMPLE)  # (1, 14, 5)
    out_flux = np.empty((n, STAMP, STAMP), np.float32)
    out_clean = np.empty_like(out_flux)
    out_seg = np.zeros((n, STAMP, STAMP), np.int32)
    out_neigh = np.zeros((n, STAMP, STAMP), np.float32)
    out_neigh_label = np.zeros((n, STAMP, STAMP), np.int8)
    sky_sigma = np.sqrt(params["sky_level"] / params["gain"] + 1.0)
    sky_patch = np.zeros(n, np.int64) if sky is not None and noise else None
    freq = np.fft.fftfreq(nf)[:, None] ** 2 + np.fft.rfftfreq(nf)[None, :] ** 2  # cycles / fine px
    for start in range(0, n, _CHUNK):
        sl = slice(start, min(start + _CHUNK, n))
        nb = sl.stop - sl.start
        rng = np.random.default_rng(np.random.SeedSequence([*seed_key, start // _CHUNK]))
        g = _chunk_params(params, sl)
        x0, y0 = _col(params, "x0", sl), _col(params, "y0", sl)
        soft = _col(params, "softening_kpc", sl) / _col(params, "kpc_per_arcsec", sl)
        softened = bool(np.any(soft > 0))
        dx = (fine[None, None, :] - x0) * PIXEL_SCALE
        dy = (fine[None, :, None] - y0) * PIXEL_SCALE

        def light_with_centre(soft_r):
            img = _galaxy_light(dx, dy, g, soft_r)
            gb = _chunk_params(params, sl, extra_dims=4)
            sx = (bx[:, None, :, None, :] - x0[..., None, None]) * PIXEL_SCALE  # (B,1,14,1,5)
            sy = (bx[:, :, None, :, None] - y0[..., None, None]) * PIXEL_SCALE  # (B,14,1,5,1)
            sb = None if soft_r is None else soft_r[..., None, None]
            fine_block = _galaxy_light(sx, sy, gb, sb).mean(axis=(-2, -1))
            img[:, block[0]:block[-1] + 1, block[0]:block[-1] + 1] = fine_block
            return img * area

        idx, cfx, cfy, cflux, cradius = _clump_positions(params, sl, rng)
        scene = light_with_centre(soft if softened else None)
        if softened:
            # No clumps inside the core either; all light removed from the core (smooth profile,
            # bar, clumps) reappears just outside it (mass is conserved).
            kept = softened_structure(cradius, soft.reshape(-1)[idx])
            missing = light_with_centre(None).sum(axis=(1, 2)) - scene.sum(axis=(1, 2))
            missing += np.bincount(idx, weights=cflux * (1 - kept), minlength=nb)
            cflux = cflux * kept
            q = _col(params, "bt", sl) * g["q_b"] + (1 - _col(params, "bt", sl)) * g["q_d"]
            u = dx * np.cos(g["pa"]) + dy * np.sin(g["pa"])
            v = (-dx * np.sin(g["pa"]) + dy * np.cos(g["pa"])) / q
            puff = np.exp(-0.5 * (u**2 + v**2) / np.maximum(soft, 1e-6) ** 2)
            scene += missing[:, None, None] * puff / puff.sum(axis=(1, 2), keepdims=True)
        clumps = np.zeros((nb, nf, nf))
        _deposit(clumps, idx, cfx, cfy, cflux)
        sigma_fine = _col(params, "clump_sigma_arcsec", sl) / step
        psf_ft = _moffat_transfer(params["psf_fwhm_arcsec"][sl], params["psf_beta"][sl])
        central_ft = (scipy.fft.rfft2(scene, workers=1)
                      + scipy.fft.rfft2(clumps, workers=1) * np.exp(-2 * np.pi**2 * sigma_fine**2 * freq)) * psf_ft
        central = scipy.fft.irfft2(central_ft, s=(nf, nf), workers=1)

        others = np.zeros((2, nb, nf, nf))
        if np.any(params["has_companion"][sl]):
            others[0] = scipy.fft.irfft2(scipy.fft.rfft2(_companion_light(params, sl, fine, fine) * area, workers=1)
                                         * psf_ft, s=(nf, nf), workers=1)
        stars = np.flatnonzero(params["has_star"][sl])
        if stars.size:
            points = np.zeros((nb, nf, nf))
            sx = (params["x0"][sl][stars] + params["star_dx_arcsec"][sl][stars] / PIXEL_SCALE + 0.5) * _OVERSAMPLE - 0.5
            sy = (params["y0"][sl][stars] + params["star_dy_arcsec"][sl][stars] / PIXEL_SCALE + 0.5) * _OVERSAMPLE - 0.5
            _deposit(points, stars, sx, sy, params["star_flux"][sl][stars])
            others[1] = scipy.fft.irfft2(scipy.fft.rfft2(points, workers=1) * psf_ft, s=(nf, nf), workers=1)

        def bin2(x):
            return x.reshape(x.shape[:-2] + (STAMP, _OVERSAMPLE, STAMP, _OVERSAMPLE)).sum(axis=(-3, -1))

        central, others = bin2(central), bin2(others)
        total = central + others.sum(axis=0)
        if sky_patch is not None:
            observed, sky_patch[sl], sky_sigma[sl] = _place_in_sky(total, params["gain"][sl], sky, seed_key, start)
        elif noise:
            observed = _add_noise(total, _col(params, "sky_level", sl), _col(params, "gain", sl), rng)
        else:
            observed = total
        out_seg[sl] = _label_sources(np.stack([central, others[0], others[1]]), (1, 2, 3), sky_sigma[sl])
        out_flux[sl] = observed
        out_clean[sl] = central
        out_neigh[sl] = others.sum(axis=0)
        out_neigh_label[sl] = np.where(others[1] > others[0], 3, 2)
    return Rendered(flux=out_flux, noiseless=out_clean, segmap=out_seg, sky_sigma=sky_sigma,
                    neighbours=out_neigh, neighbour_label=out_neigh_label, sky_patch=sky_patch)


# --------------------------------------------------------------------------- sets
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


def _check_count(n: int, what: str) -> None:
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
    """Draw and render one generated set (not ``archetypes``; see :func:`archetype_flux`).

    Args:
        name: ``observed-train``, ``observed-test``, ``sim-good``, ``sim-softened`` or ``sim-smooth``.
        n: number of galaxies.
        seed: universe seed; every set has its own stream derived from (seed, name).
        recipe: override the set's :data:`RECIPES` entry.
        sky_patches: None (synthetic Gaussian sky + read noise, the shipped models' data) or a
            real sky-patch library (:func:`sky_library`: path, array or :class:`SkyLibrary`):
            each image is its noiseless scene + the Poisson noise of its sources + one random
            patch; catalogue column ``sky_patch`` holds the patch index, ``sky_sigma`` the rms
            of the patch used and ``sky_level`` is NaN (the real sky's level is not known).
            The galaxies themselves are the same as without it.

    Returns:
        :class:`SynthSet` with ids ``<name>-<index>``.
    """
    if name not in RECIPES:
        raise MorphllrError(f"set {name!r}: not a generated set; choose from {', '.join(RECIPES)} "
                            "(archetypes are made from an observed set by morphllr.galaxies.archetypes)")
    _check_count(n, f"number of galaxies for {name}")
    recipe = recipe or RECIPES[name]
    recipe.check(f"recipe of {name}")
    sky = sky_library(sky_patches)
    key = [int(seed), *[int(b) for b in name.encode()]]
    params = sample_galaxies(n, _stream(seed, GALAXIES_FROM.get(name, name)), recipe)
    rendered = render_galaxies(params, key + [1], sky=sky)
    ids = np.array([f"{name}-{i:06d}" for i in range(n)])
    params["sky_sigma"] = rendered.sky_sigma
    if sky is not None:
        params["sky_level"] = np.full(n, np.nan)  # the synthetic sky level was not used
        params["sky_patch"] = rendered.sky_patch
    return SynthSet(name, rendered.flux, rendered.segmap, _to_table(params, ids, name), rendered.noiseless,
                    rendered.neighbours, rendered.neighbour_label, sky)


def _fit_one_chunk(args):
    """Single-Sérsic fits of a chunk of cutouts, each with its own PSF (process worker)."""
    from morphllr.galaxies.psf import make_psf
    from morphllr.galaxies.sersic_fit import fit_sersic, psf_kernel_for

    flux, segmap, sigma, gain, fwhm, beta = args
    out = []
    for i in range(len(flux)):
        kernel = psf_kernel_for(make_psf(float(fwhm[i]), beta=float(beta[i])), PIXEL_SCALE)
        out.append(fit_sersic(flux[i], kernel, segmap[i], float(sigma[i]), float(gain[i])))
    return out


def fit_single_sersic(synth: SynthSet, fit_size: int = 64, workers: int = 1, progress=None):
    """Single-Sérsic fits (:func:`morphllr.galaxies.sersic_fit.fit_sersic`) of every cutout.

    The fit uses the central ``fit_size``^2 pixels (what the zanisi21 model sees) with
    the galaxy's own PSF, sky noise and gain; companions are masked by the segmap.

    Args:
        synth: the set to fit.
        fit_size: side of the central region fitted, in pixels.
        workers: processes to use.
        progress: optional callable(n_done).

    Returns:
        astropy Table with ``id`` and the ``sersic_*`` columns (positions and radii in
        pixels of the full 128^2 cutout).
    """
    from morphllr.parallel import concat_in_processes
    from morphllr.galaxies.sersic_fit import fits_to_table

    cat = synth.catalog
    a = (STAMP - fit_size) // 2
    crop = np.s_[:, a:a + fit_size, a:a + fit_size]
    flux, seg = synth.flux[crop], synth.segmap[crop]
    cols = [np.asarray(cat[k]) for k in ("sky_sigma", "gain", "psf_fwhm_arcsec", "psf_beta")]
    step = 16
    jobs = [(flux[i:i + step], seg[i:i + step], *[c[i:i + step] for c in cols]) for i in range(0, len(flux), step)]
    fits = concat_in_processes(_fit_one_chunk, jobs, workers, progress)
    table = fits_to_table(fits, ids=np.asarray(cat["id"]))
    table["sersic_x0_pix"] += a
    table["sersic_y0_pix"] += a
    return table


def archetype_flux(observed: SynthSet, fits, noise: bool = True, seed: int = 0, workers: int = 1) -> np.ndarray:
    """Single-Sérsic archetypes of an observed set, rendered by :mod:`morphllr.galaxies.archetypes`.

    Each archetype has the fitted n, Re, q, PA, flux and centre of its galaxy, the
    galaxy's own Moffat PSF and (with ``noise``) its sky noise and gain; no companions,
    stars or internal structure.

    Args:
        observed: the observed set.
        fits: table from :func:`fit_single_sersic` (same order).
        noise: add matched sky + shot noise.
        seed: noise seed.
        workers: processes for the GalSim rendering.

    Returns:
        float32 (N, 128, 128) flux cutouts.
    """
    from morphllr.galaxies import archetypes

    table = _join_fits(observed.catalog.copy(copy_data=False), fits)
    params, _ = archetypes.params_from_catalog(table, where=f"{observed.name} fits", drop_bad=True)
    if len(params) != len(table):
        raise MorphllrError(f"{observed.name}: {len(table) - len(params)} single-Sérsic fits failed; "
                            "cannot pair every galaxy with an archetype")
    psfs = archetypes.psfs_for_catalog(table, None, "moffat", pixel_scale=PIXEL_SCALE)
    model = None
    if noise:
        model = archetypes.NoiseModel(sky_sigma=np.asarray(table["sky_sigma"], float),
                                      gain=np.asarray(table["gain"], float))
    return archetypes.render_archetypes(params, (1, STAMP, STAMP), PIXEL_SCALE, psfs, model, seed, workers)[:, 0]


_ARCHETYPE_COLUMNS = ("log_mstar", "z", "kpc_per_arcsec", "r50_kpc", "early_type", "psf_fwhm_arcsec", "psf_beta",
                      "sky_level", "gain", "sky_sigma", "has_companion", "has_star")
"""Columns of the observed galaxy an archetype keeps (its host's mass, distance, PSF and noise)."""


def make_archetypes(observed: SynthSet, name: str = "archetypes", seed: int = 0, workers: int = 1,
                    sky_patches=None) -> SynthSet:
    """The archetype set of an observed set, in the same sky as the observed images.

    Each archetype is the galaxy's PSF-convolved single-Sérsic fit (:func:`archetype_flux`,
    i.e. :mod:`morphllr.galaxies.archetypes`) plus the galaxy's own noiseless companion/star layer,
    plus fresh sky and shot noise from the same noise model: the synthetic equivalent of
    the paper's insertion of archetypes into real sky, so that neighbours and background
    cancel in the likelihood ratio and only the central galaxy's morphology is compared.
    In real sky (``observed.sky`` or ``sky_patches``) the fresh sky is a random patch of the
    library other than the galaxy's own, plus the Poisson noise of the archetype's sources.

    Args:
        observed: a set from :func:`make_set` whose catalogue holds the ``sersic_*`` fit
            columns (:func:`fit_single_sersic`, joined by :func:`generate`).
        name: ``archetypes`` or ``archetypes-train``.
        seed: noise seed.
        workers: processes for the GalSim rendering.
        sky_patches: sky-patch library (:func:`sky_library`); None = the observed set's own
            (``observed.sky``: real sky if the galaxies are in real sky, else synthetic noise).

    Returns:
        :class:`SynthSet` with the observed ids, ``sersic_*`` columns and ``archetype`` = True.
    """
    from astropy.table import Table

    cat = observed.catalog
    if "sersic_n" not in cat.colnames:
        raise MorphllrError(f"{observed.name}: no single-Sérsic fits in the catalogue; run fit_single_sersic first")
    sersic = archetype_flux(observed, cat[["id"]], noise=False, seed=seed, workers=workers)
    neighbours = observed.neighbours if observed.neighbours is not None else np.zeros_like(sersic)
    labels = observed.neighbour_label if observed.neighbour_label is not None else np.full(sersic.shape, 2, np.int8)
    sky = observed.sky if sky_patches is None else sky_library(sky_patches)
    sky_sigma = np.asarray(cat["sky_sigma"], float) if sky is None else np.empty(len(sersic))
    sky_patch = None if sky is None else np.empty(len(sersic), np.int64)
    avoid = None
    if (sky is not None and observed.sky is not None and observed.sky.sha256 == sky.sha256
            and "sky_patch" in cat.colnames):
        avoid = np.asarray(cat["sky_patch"])
    flux = np.empty_like(sersic)
    segmap = np.empty(sersic.shape, np.int32)
    for start in range(0, len(sersic), _CHUNK):
        sl = slice(start, start + _CHUNK)
        total = sersic[sl] + neighbours[sl]
        if sky is not None:
            flux[sl], sky_patch[sl], sky_sigma[sl] = _place_in_sky(
                total, np.asarray(cat["gain"][sl], float), sky, [int(seed)], start,
                None if avoid is None else avoid[sl])
        else:
            rng = np.random.default_rng(np.random.SeedSequence([int(seed), start // _CHUNK]))
            col = lambda key: np.asarray(cat[key][sl], float)[:, None, None]  # noqa: E731
            flux[sl] = _add_noise(total, col("sky_level"), col("gain"), rng)
        neighbour_seg = _label_sources(neighbours[sl][None], (2,), sky_sigma[sl])
        own = (sersic[sl] > neighbours[sl]) & (sersic[sl] > sky_sigma[sl][:, None, None])
        segmap[sl] = np.where(own, 1, np.where(neighbour_seg > 0, labels[sl], 0))
    table = Table()
    table["id"] = cat["id"]
    for key in cat.colnames:
        if key.startswith("sersic_") or key in _ARCHETYPE_COLUMNS:
            table[key] = cat[key]
    table["sersic_n_clipped"] = (np.asarray(cat["sersic_n"]) < 0.3) | (np.asarray(cat["sersic_n"]) > 6.2)
    table["archetype"] = np.ones(len(table), bool)
    if sky is not None:
        table["sky_level"] = np.full(len(table), np.nan)
        table["sky_sigma"] = sky_sigma  # the archetype's own patch
        table["sky_patch"] = sky_patch
    table.meta["set"] = name
    return SynthSet(name, flux, segmap, table, sersic, neighbours, labels, sky)


# --------------------------------------------------------------------------- writing
def _segmap_model(segmap: np.ndarray, prep) -> np.ndarray:
    """Central-source masks resampled like the model images (crop, zoom, >= half covered)."""
    from morphllr.data.geometry import central_crop, zoom_images

    mask = (segmap == 1).astype(np.float32)[:, None]
    if prep.crop is not None:
        mask = central_crop(mask, prep.crop)
    return (zoom_images(mask, prep.zoom)[:, 0] >= 0.5).astype(np.uint8)


def write_set(path, synth: SynthSet, preprocessing="zanisi21", overwrite: bool = False, seed: int | None = None):
    """Write a :class:`SynthSet` as a morphllr ImageSet (``/images``, ``/flux``, segmaps, catalogue).

    Args:
        path: output ``.h5`` file.
        synth: the set.
        preprocessing: preset name, dict or Preprocessing giving the model-input images.
        overwrite: replace an existing file.
        seed: universe seed, recorded as a file attribute.

    Returns:
        the written path.
    """
    from morphllr.data.imageset import write_imageset
    from morphllr.data.preprocess import as_preprocessing

    prep = as_preprocessing(preprocessing)
    flux = synth.flux[:, None]
    images = prep.flux_to_model(flux)
    attrs = {"synth_set": synth.name, "synth_expected_order": ",".join(EXPECTED_ORDER)}
    if seed is not None:
        attrs["synth_seed"] = int(seed)
    if synth.sky is not None:  # which real sky the set lives in
        attrs.update({f"sky_patches_{key}": value for key, value in synth.sky.info.items()})
    return write_imageset(path, images, synth.catalog, prep, flux=flux, segmap=synth.segmap,
                          segmap_model=_segmap_model(synth.segmap, prep), overwrite=overwrite, attrs=attrs)


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
        sets: names from :data:`SET_NAMES`.
        n_train: galaxies in observed-train (and archetypes-train).
        n_test: galaxies in observed-test (and archetypes).
        n_sim: galaxies in each sim-* set (default: n_test).
        seed: universe seed.
        workers: processes for the Sérsic fits behind the archetypes.
        progress: optional callable(message) told about each step.
        sky_patches: real sky-patch library for every observed and sim-* image
            (:func:`sky_library`; see :func:`make_set`), or None for synthetic sky.

    Returns:
        dict name -> :class:`SynthSet` for the rendered sets; the observed sets behind
        requested archetypes are included, with their single-Sérsic fits as catalogue
        columns (the archetypes themselves are rendered when writing).
    """
    sets = check_set_names(list(sets))
    _check_count(n_train, "--n-train")
    _check_count(n_test, "--n-test")
    n_sim = n_test if n_sim is None else n_sim
    _check_count(n_sim, "--n-sim")
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
                _join_fits(source.catalog, fit_single_sersic(source, workers=workers))
        else:
            say(f"rendering {name}")
            out[name] = make_set(name, sizes.get(name, n_sim), seed, sky_patches=sky)
    return out


def _archetype_seed(seed: int, name: str) -> int:
    """Noise seed of an archetype set, distinct per (universe seed, set)."""
    return int(np.random.SeedSequence([int(seed), *[int(b) for b in name.encode()]]).generate_state(1)[0])


def _join_fits(catalog, fits):
    """The catalogue with the single-Sérsic fit columns added (same row order)."""
    for col in fits.colnames:
        if col != "id":
            catalog[col] = fits[col]
    return catalog


@claims({"out": "--out"}, inputs=("sky_patches", "preprocessing"), kind="dir")  # refused before any generation
def write_universe(out, sets=SET_NAMES, n_train: int = 2000, n_test: int = 500, n_sim: int | None = None,
                   seed: int = 0, overwrite: bool = False, workers: int = 1, preprocessing="zanisi21",
                   progress=None, sky_patches=None) -> dict[str, "Path"]:
    """Generate sets and write them as ImageSets ``<out>/<set>.h5`` plus ``universe.json``.

    The folder is claimed before any generation (:func:`morphllr.atomic.claim_output`: refused if it
    exists without ``overwrite``, if it holds the sky library, or if another run writes it) and appears
    only when everything is written (:func:`morphllr.atomic.atomic_dir`).

    Args:
        out: output folder (refused if it exists, unless ``overwrite``).
        sets, n_train, n_test, n_sim, seed, workers, progress: see :func:`generate`.
        overwrite: replace an existing folder.
        preprocessing: preprocessing of the model-input images (default zanisi21).
        sky_patches: real sky-patch library (:func:`sky_library`) for every observed, sim-*
            and archetype image (archetypes get another patch than their galaxy); recorded
            in universe.json (``sky_patches``) and in every set's ``sky_patches_*`` attributes.

    Returns:
        dict set name -> final file path.
    """
    from pathlib import Path

    from morphllr.data.preprocess import as_preprocessing

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
    import json

    from morphllr import __version__
    from morphllr.atomic import atomic_dir

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
