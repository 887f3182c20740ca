"""The catalogue vocabulary: which columns hold stellar mass, size and Sérsic index, and reading them as numbers."""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np


MASS_COLUMNS = ("log_mstar", "logmstar", "log_stellar_mass", "log_mass", "lgm_tot_p50")


SIZE_COLUMNS = ("sersic_re_kpc", "re_kpc", "r_e_kpc", "sersic_re_arcsec", "re_arcsec", "sersic_re_pix", "re_pix")


SERSIC_N_COLUMNS = ("sersic_n", "n_sersic")


RE_PIX_COLUMNS = ("sersic_re_pix", "re_pix")


def find_column(catalog: Any, candidates: Iterable[str]) -> str | None:
    """First catalogue column (case-insensitive) among ``candidates`` holding finite numbers.

    Args:
        catalog: astropy Table or None.
        candidates: accepted names in order of preference.

    Returns:
        the column name as spelt in the catalogue, or None.
    """
    if catalog is None:
        return None
    lower = {c.lower(): c for c in catalog.colnames}
    for cand in candidates:
        col = lower.get(cand.lower())
        if col is not None and catalog[col].ndim == 1 and np.issubdtype(catalog[col].dtype, np.number):
            return col
    return None


def catalog_values(catalog: Any, column: str | None) -> np.ndarray | None:
    """Float64 values of a catalogue column with masked entries as NaN (None if absent)."""
    if catalog is None or column is None:
        return None
    col = catalog[column]
    values = np.ma.filled(np.ma.asarray(col).astype(np.float64), np.nan)
    return np.asarray(values, dtype=np.float64)
