"""Facts of the Sérsic profile shared by the fitter, the archetypes and the synthetic universe.

``I(r) = I_e exp(-b_n [(r / R_e)^(1/n) - 1])``: :func:`sersic_b` gives b_n, and
:data:`GALSIM_N_RANGE` the indices GalSim can draw (the archetypes clip n to it, the fitter
flags fits beyond it).  No imports at module level: the CLI formats its help texts from
:data:`GALSIM_N_RANGE` at start-up, before numpy is needed.
"""

from __future__ import annotations

#: GalSim's valid Sérsic range (``archetypes`` clips n to it)
GALSIM_N_RANGE = (0.3, 6.2)
#: the range as the messages and help texts print it
GALSIM_N_RANGE_TEXT = f"{GALSIM_N_RANGE[0]:g}-{GALSIM_N_RANGE[1]:g}"


def sersic_b(n):
    """b_n such that R_e encloses half of the total light (exact, via the incomplete gamma).

    Args:
        n: Sérsic index (float or array; computed in float64).

    Returns:
        b_n, shaped like ``n``.
    """
    import numpy as np  # lazy: see the module docstring
    from scipy.special import gammaincinv

    return gammaincinv(2 * np.asarray(n, dtype=float), 0.5)


def outside_galsim_range(n):
    """Whether each index lies beyond :data:`GALSIM_N_RANGE` (the archetype will have a clipped n).

    Args:
        n: Sérsic indices (float or array).

    Returns:
        boolean numpy array shaped like ``n``.
    """
    import numpy as np  # lazy: see the module docstring

    n = np.asarray(n)
    return (n < GALSIM_N_RANGE[0]) | (n > GALSIM_N_RANGE[1])
