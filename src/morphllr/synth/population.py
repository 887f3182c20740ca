"""The galaxy population of the synthetic universe: the survey it is seen in and the draws of its galaxies.

The universe is seen as SDSS r cutouts (:data:`PIXEL_SCALE`, :data:`STAMP`, :data:`ZERO_POINT`);
:func:`sample_galaxies` draws the true parameters of its galaxies, set by set (:class:`Recipe`,
one random stream per set: :func:`set_stream`).

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
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from morphllr.errors import MorphllrError
from morphllr.data import cosmology as cosmologies
from morphllr.galaxies.sersic import sersic_b


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


MAX_CLUMPS = 12


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
            centre: no structure inside it (:func:`~morphllr.synth.render.softened_structure`), every bulge/disk
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


def set_stream(seed: int, name: str) -> np.random.Generator:
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
    z = np.linspace(*Z_RANGE, 256)
    dc3 = cosmologies.get().comoving_distance(z).value ** 3
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
        planck18 = cosmologies.get()
        _COSMO = (planck18.distmod(_Z_GRID).value, planck18.kpc_proper_per_arcmin(_Z_GRID).value / 60.0)
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
    n_clumps = np.where(structure, np.minimum(rng.poisson(6 * (1 - bt)), MAX_CLUMPS), 0)
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
