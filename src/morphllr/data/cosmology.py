"""Cosmologies: the one place that turns a physical length at a redshift into an angle.

Two are offered, by name:

* ``Planck18`` (default): astropy's Planck 2018 parameters;
* ``FlatLambdaCDM(H0=70, Om0=0.3)`` (alias ``realsim``): the round cosmology RealSim
  (Bottrell et al. 2017, 2019) used for its SDSS insertions.  Angular scales differ from
  Planck18 by ~3 % at z ~ 0.05.

The canonical name is what sets and models record (``Preprocessing.cosmology``), so a
model refuses mocks observed under another cosmology.
"""

from __future__ import annotations

import math

from morphllr.errors import MorphllrError

DEFAULT = "Planck18"
REALSIM = "FlatLambdaCDM(H0=70, Om0=0.3)"
_ALIASES = {"planck18": DEFAULT, "realsim": REALSIM, "flatlambdacdm(h0=70,om0=0.3)": REALSIM,
            "flatlambdacdm(70,0.3)": REALSIM, "h70": REALSIM}
NAMES = (DEFAULT, REALSIM)


def canonical(name: str | None) -> str:
    """The recorded name of a cosmology given by the user (None = the default).

    Args:
        name: ``Planck18``, ``realsim`` or ``FlatLambdaCDM(H0=70, Om0=0.3)`` (case and spaces ignored).

    Returns:
        ``"Planck18"`` or ``"FlatLambdaCDM(H0=70, Om0=0.3)"``.
    """
    if name is None:
        return DEFAULT
    key = str(name).replace(" ", "").lower()
    if key not in _ALIASES:
        raise MorphllrError(f"--cosmology {name}: unknown cosmology; choose Planck18 (default) or realsim "
                            "(FlatLambdaCDM(H0=70, Om0=0.3), as RealSim)")
    return _ALIASES[key]


def get(name: str | None = None):
    """The astropy cosmology object for a name (see :func:`canonical`)."""
    name = canonical(name)
    if name == DEFAULT:
        from astropy.cosmology import Planck18

        return Planck18
    from astropy.cosmology import FlatLambdaCDM

    return FlatLambdaCDM(H0=70.0, Om0=0.3)


def arcsec_per_kpc(redshift: float, cosmology: str | None = None) -> float:
    """Angular size of one proper kpc at ``redshift``.

    Args:
        redshift: > 0.
        cosmology: name (default Planck18).

    Returns:
        arcsec per proper kpc.
    """
    try:
        z = float(redshift)
    except (TypeError, ValueError):
        z = float("nan")
    if not (math.isfinite(z) and 0 < z <= 20):
        raise MorphllrError(f"--redshift: {redshift!r} must be a number in (0, 20] (a galaxy at z = 0 has no angular "
                            "size); e.g. --redshift 0.046")
    return float(get(cosmology).arcsec_per_kpc_proper(z).value)
