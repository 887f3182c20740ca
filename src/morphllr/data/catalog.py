"""Catalogues: reading a user's table, typing its columns, joining it onto images, selecting rows, and the
column vocabulary (which columns hold stellar mass, size and Sérsic index, and reading them as numbers).

Catalogues (FITS tables, CSV, ECSV, Parquet, VOTable) are joined onto images by ``id`` (:func:`join_catalog`).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from morphllr.data.files import FITS_SUFFIXES
from morphllr.errors import MorphllrError, MorphllrWarning


MASS_COLUMNS = ("log_mstar", "logmstar", "log_stellar_mass", "log_mass", "lgm_tot_p50")


SIZE_COLUMNS = ("sersic_re_kpc", "re_kpc", "r_e_kpc", "sersic_re_arcsec", "re_arcsec", "sersic_re_pix", "re_pix")


SERSIC_N_COLUMNS = ("sersic_n", "n_sersic")


RE_PIX_COLUMNS = ("sersic_re_pix", "re_pix")


def find_column(catalog: Any, candidates: Iterable[str], *, numeric_only: bool = True,
                any_case: bool = True) -> str | None:
    """The first of ``candidates`` that ``catalog`` has, as spelt in the catalogue.

    Args:
        catalog: astropy Table or None.
        candidates: accepted names in order of preference.
        numeric_only: pass over columns that do not hold one number (numeric dtype) per row.
        any_case: match names case-insensitively.

    Returns:
        the column name, or None (also for no catalogue).
    """
    if catalog is None:
        return None
    spelt = {(c.lower() if any_case else c): c for c in catalog.colnames}
    for cand in candidates:
        col = spelt.get(cand.lower() if any_case else cand)
        if col is None:
            continue
        if numeric_only and not (catalog[col].ndim == 1 and np.issubdtype(catalog[col].dtype, np.number)):
            continue
        return col
    return None


def first_column(catalog, names: Iterable[str], where: str = "catalogue") -> np.ndarray | None:
    """The first of ``names`` (spelt exactly) present in ``catalog``, as float64, or None if none is.

    Args:
        catalog: astropy Table.
        names: candidate column names, in order of preference.
        where: file named when the column holds text (see :func:`numeric_column`).

    Returns:
        float64 values (masked or blank cells NaN), or None.
    """
    name = find_column(catalog, names, numeric_only=False, any_case=False)
    return None if name is None else numeric_column(catalog, name, where)


def catalog_values(catalog: Any, column: str | None) -> np.ndarray | None:
    """Float64 values of a number column (:func:`find_column`) with masked entries as NaN (None if absent)."""
    if catalog is None or column is None:
        return None
    return numeric_column(catalog, column)


def read_catalog(path: str | Path):
    """Read a catalogue (FITS table, CSV, ECSV, Parquet, VOTable) with an ``id`` column.

    Args:
        path: catalogue file.

    Returns:
        astropy Table; ``id`` values are turned into strings for joining.
    """
    from astropy.table import Table

    path = Path(path)
    if not path.is_file():
        raise MorphllrError(f"--catalog {path}: file not found")
    name = path.name.lower()
    fmt = None
    if name.endswith(".csv") or name.endswith(".csv.gz"):
        fmt = "ascii.csv"
    elif name.endswith(".ecsv"):
        fmt = "ascii.ecsv"
    elif name.endswith(".parquet") or name.endswith(".pq"):
        fmt = "parquet"
    elif name.endswith(".xml") or name.endswith(".vot"):
        fmt = "votable"
    elif name.endswith(FITS_SUFFIXES):
        fmt = "fits"
    try:
        if fmt == "parquet":  # astropy's parquet reader wants pandas; pyarrow alone is enough
            import pyarrow.parquet as pq

            columns = pq.read_table(path).to_pydict()
            table = Table({k: np.asarray(v) for k, v in columns.items()})
        else:
            table = Table.read(path, format=fmt) if fmt else Table.read(path)
    except ImportError as exc:
        raise MorphllrError(f"--catalog {path}: reading needs an optional package ({exc}); "
                            "`pip install pyarrow` for Parquet") from None
    except Exception as exc:  # astropy raises many types for unreadable tables
        raise MorphllrError(f"--catalog {path}: cannot read the table ({exc}); use FITS, CSV, ECSV or Parquet") from None
    id_col = next((c for c in table.colnames if c.lower() == "id"), None)
    if id_col is None:
        raise MorphllrError(f"--catalog {path}: no `id` column (columns: {table.colnames[:12]}); "
                            "rename the column holding the image ids (file names without suffix) to `id`")
    if id_col != "id":
        table.rename_column(id_col, "id")
    table["id"] = [str(v).strip() for v in table["id"]]
    ids = np.asarray(table["id"])
    if len(np.unique(ids)) != len(ids):
        raise MorphllrError(f"--catalog {path}: duplicated ids in the `id` column; each image needs one row")
    return typed_catalog(table, f"--catalog {path}")


#: Catalogue columns morphllr reads as numbers (plus every ``sersic_*`` column): a text cell in one is refused.
NUMERIC_COLUMNS = frozenset({
    "log_mstar", "logmstar", "log_stellar_mass", "log_mass", "lgm_tot_p50", "redshift", "z", "psf_fwhm_arcsec",
    "psf_fwhm", "psf_beta", "gain", "sky_sigma", "sky_level", "ra", "dec", "x", "y", "pixel_scale", "re_kpc",
    "r_e_kpc", "re_arcsec", "re_pix", "n_sersic", "r50_kpc"})


NUMERIC_PREFIXES = ("sersic_",)


_MISSING_TEXT = frozenset({"", "--", "null", "none", "n/a", "na"})


def is_numeric_column(name: str) -> bool:
    """Whether morphllr reads catalogue column ``name`` as numbers (see :data:`NUMERIC_COLUMNS`)."""
    low = str(name).lower()
    return low in NUMERIC_COLUMNS or low.startswith(NUMERIC_PREFIXES)


def _cells(column) -> tuple[list[str], np.ndarray]:
    """A column's cells as stripped text and its missing mask (masked or blank cells)."""
    mask = np.asarray(getattr(column, "mask", np.zeros(len(column), bool)), bool).reshape(len(column))
    text = [v.decode("utf-8", "replace").strip() if isinstance(v, bytes) else str(v).strip()
            for v in np.asarray(column).tolist()]
    missing = mask | np.array([t.lower() in _MISSING_TEXT for t in text], bool)
    return text, missing


def _parsed(text: list[str], missing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float64 values of text cells (NaN where missing) and where a present cell is not a number."""
    values = np.full(len(text), np.nan)
    bad = np.zeros(len(text), bool)
    for i, (t, m) in enumerate(zip(text, missing)):
        if m:
            continue
        try:
            values[i] = float(t)
        except ValueError:
            bad[i] = True
    return values, bad


def _first_bad(table, bad: np.ndarray, value_text: list[str]) -> str:
    i = int(np.flatnonzero(bad)[0])
    ident = f" (id {table['id'][i]})" if "id" in table.colnames else ""
    return f"row {i + 1}{ident} holds {value_text[i]!r}"


def numeric_column(table, name: str, where: str = "catalogue") -> np.ndarray:
    """A catalogue column as float64 numbers; masked and blank cells become NaN (missing).

    The one way morphllr reads a number column: text that is not a number is refused with
    the column, the row and the fix, never turned into a traceback or a 0.

    Args:
        table: astropy Table.
        name: the column.
        where: file (or option) named in messages.

    Returns:
        float64 array of ``len(table)`` values.
    """
    column = table[name]
    if column.dtype.kind in "biuf" and getattr(column, "ndim", 1) == 1:
        values = np.asarray(column, dtype=np.float64).copy()
        mask = getattr(column, "mask", None)
        if mask is not None:
            values[np.asarray(mask, bool)] = np.nan
        return values
    if getattr(column, "ndim", 1) != 1:
        raise MorphllrError(f"{where}: column {name!r} holds {column.shape[1:]} arrays per row, not one number; "
                            "give one number per galaxy")
    text, missing = _cells(column)
    values, bad = _parsed(text, missing)
    if bad.any():
        raise MorphllrError(f"{where}: column {name!r} must hold numbers, but {_first_bad(table, bad, text)}"
                            f"{f' ({int(bad.sum())} such rows)' if bad.sum() > 1 else ''}; write a number, or leave "
                            "the cell empty for a missing value")
    return values


def typed_catalog(table, where: str = "catalogue"):
    """Give a user catalogue's columns their types: numbers as (masked) floats, text as text.

    * a column morphllr reads as numbers (:func:`is_numeric_column`) stored as text becomes
      float64 with blank cells masked (missing; never 0), and any other text in it is refused,
      naming the column, the row and the value;
    * any other column mixing numbers and text is kept as text, with a
      :class:`~morphllr.errors.MorphllrWarning` naming it (other text columns, e.g. ids made of
      digits, are kept as they are: converting them could lose leading zeros or digits);
    * blank text cells stay blank (masked text would otherwise be written as "0").
    Number columns astropy already read as numbers keep their type and mask.

    Args:
        table: astropy Table with ``id``.
        where: file named in messages.

    Returns:
        the table, columns converted in place.
    """
    from astropy.table import Column, MaskedColumn

    for name in table.colnames:
        column = table[name]
        if name == "id" or getattr(column, "ndim", 1) != 1:
            continue
        if column.dtype.kind in "biuf":  # already numbers (astropy masks their blank cells)
            continue
        text, missing = _cells(column)
        values, bad = _parsed(text, missing)
        numbers = ~missing & ~bad
        if is_numeric_column(name):
            if bad.any():
                numeric_column(table, name, where)  # raises, naming the first bad row
            table[name] = MaskedColumn(values, mask=missing, name=name)
        else:
            if bad.any() and numbers.any():
                warnings.warn(f"{where}: column {name!r} mixes numbers and text ({_first_bad(table, bad, text)}); "
                              "kept as text - make every cell a number (blank = missing) to use it as numbers",
                              MorphllrWarning, stacklevel=2)
            table[name] = Column(["" if m else t for t, m in zip(text, missing)], name=name, dtype=str)
    return table


def join_catalog(images_table, catalog, catalog_name: str = "catalog"):
    """Attach catalogue columns to the images' own table (left join on ``id``).

    Args:
        images_table: astropy Table from prepare (``id`` + per-image columns).
        catalog: user catalogue with a string ``id``.
        catalog_name: file name for the report.

    Returns:
        (joined table in the images' order, report dict with ``n_matched``,
        ``images_without_row`` (list of ids) and ``rows_without_image`` (count)).
    """
    from astropy.table import MaskedColumn

    index = {v: i for i, v in enumerate(catalog["id"])}
    image_ids = [str(v) for v in images_table["id"]]
    rows = np.array([index.get(v, -1) for v in image_ids])
    matched = rows >= 0
    joined = images_table.copy()
    for name in catalog.colnames:
        if name == "id":
            continue
        column = catalog[name]
        out_name = name if name not in joined.colnames else f"{name}_catalog"
        values = column[np.where(matched, rows, 0)] if len(catalog) else np.zeros(len(rows))
        if matched.all():
            joined[out_name] = values
        else:
            joined[out_name] = MaskedColumn(np.asarray(values), mask=~matched)
    report = {
        "catalog": catalog_name,
        "n_matched": int(matched.sum()),
        "images_without_row": [v for v, m in zip(image_ids, matched) if not m],
        "rows_without_image": int(len(catalog) - len(set(rows[matched].tolist()))),
    }
    return joined, report


#: Comparisons a ``--where`` condition may use (longest first, so ``<=`` is not read as ``<``).
WHERE_OPERATORS = ("==", "!=", "<=", ">=", "<", ">")


def catalog_where(table, condition: str, where: str = "--where") -> np.ndarray:
    """Rows of a catalogue that satisfy one condition ``COLUMN OP VALUE``, e.g. ``label == spiral``.

    ``OP`` is one of :data:`WHERE_OPERATORS`.  A number column (astropy numbers) is compared as numbers
    (missing values never match), any other column as text (``==``/``!=`` only; quotes around the value
    are optional).

    Args:
        table: astropy Table.
        condition: the condition text.
        where: option named in messages.

    Returns:
        bool (N,) array.
    """
    match = re.fullmatch(r"\s*([A-Za-z_][A-Za-z0-9_.\-]*)\s*(==|!=|<=|>=|<|>)\s*(.*?)\s*", str(condition))
    if match is None or not match.group(3):
        raise MorphllrError(f"{where} {condition!r}: write COLUMN OP VALUE with OP one of {' '.join(WHERE_OPERATORS)}, "
                            "e.g. 'label == spiral' or 'sersic_n < 2'")
    name, op, value = match.groups()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1]
    if name not in table.colnames:
        raise MorphllrError(f"{where} {condition!r}: the catalogue has no column {name!r}; columns: "
                            f"{', '.join(table.colnames)}")
    column = table[name]
    if getattr(column, "ndim", 1) != 1:
        raise MorphllrError(f"{where} {condition!r}: column {name!r} holds arrays, not one value per row")
    if column.dtype.kind in "biuf":
        try:
            number = float(value)
        except ValueError:
            raise MorphllrError(f"{where} {condition!r}: column {name!r} holds numbers, but {value!r} is not one; "
                                "compare it with a number") from None
        values = numeric_column(table, name, where)
        with np.errstate(invalid="ignore"):
            result = {"==": values == number, "!=": values != number, "<": values < number,
                      "<=": values <= number, ">": values > number, ">=": values >= number}[op]
        return result & np.isfinite(values)
    if op not in ("==", "!="):
        raise MorphllrError(f"{where} {condition!r}: column {name!r} holds text, which only == and != compare")
    text, missing = _cells(column)
    equal = np.array([t == value for t in text], bool) & ~missing
    return equal if op == "==" else ~equal
