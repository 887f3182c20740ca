"""The files a comparison writes: ``scores.csv`` / ``scores.parquet``, ``summary.csv``, ``mass_panels.csv``, ``summary.json``.

Their rows come from :mod:`morphllr.comparison.result` (:func:`~morphllr.comparison.result.image_rows`,
:func:`~morphllr.comparison.result.summary_row`), which also gives them as astropy tables.
"""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np

from morphllr.comparison.result import SUMMARY_COLUMNS, SetResult, image_rows, score_columns, summary_row


def parquet_note() -> list[str]:
    """The note that scores.parquet will not be written (pyarrow missing), or none."""
    if importlib.util.find_spec("pyarrow") is not None:
        return []
    return ["scores.parquet not written: install pyarrow (pip install 'morphllr[parquet]')"]


def write_scores(results: dict[str, SetResult], folder: Path) -> None:
    """scores.csv (always) and scores.parquet (when pyarrow is installed, see :func:`parquet_note`), one set at a
    time."""
    score_cols = score_columns(results)
    tables = {name: image_rows(res, score_cols) for name, res in results.items()}
    columns: list[str] = []
    for t in tables.values():
        columns += [c for c in t if c not in columns]
    text_cols = {c for t in tables.values() for c, v in t.items() if v.dtype.kind in "OUS"}
    with open(folder / "scores.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for t in tables.values():
            n = len(t["llr"])
            cols = [t.get(c, np.full(n, "" if c in text_cols else np.nan)) for c in columns]
            writer.writerows(zip(*[_csv_values(v) for v in cols]))
    if parquet_note():
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([(c, pa.string() if c in text_cols else pa.float64()) for c in columns])
    with pq.ParquetWriter(folder / "scores.parquet", schema) as writer:
        for t in tables.values():
            n = len(t["llr"])
            arrays = []
            for c in columns:
                v = t.get(c)
                if c in text_cols:
                    arrays.append(pa.array([None] * n if v is None else [str(x) for x in v], pa.string()))
                else:
                    arrays.append(pa.array(np.full(n, np.nan) if v is None else np.asarray(v, np.float64)))
            writer.write_table(pa.Table.from_arrays(arrays, schema=schema))


def _csv_values(v: np.ndarray) -> list:
    if v.dtype.kind == "f":
        return [repr(float(x)) if np.isfinite(x) else "nan" for x in v]
    return [x.decode() if isinstance(x, bytes) else x for x in v.tolist()]


def write_summary_csv(summary: dict, path: Path) -> None:
    """summary.csv: one row per set (:func:`summary_row`), best first; empty cells where there is no value."""
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["set", *SUMMARY_COLUMNS])
        for name in summary["ranking"]:
            row = summary_row(summary, name)
            writer.writerow([name, *["" if row[k] is None else row[k] for k in SUMMARY_COLUMNS]])


def write_panels_csv(summary: dict, path: Path) -> None:
    """One row per set and stellar-mass panel (only when the catalogues have masses)."""
    keys = ["n", "mean_llr", "median_llr", "std_llr", "delta_llr", "delta_llr_err", "auroc_vs_reference",
            "ks_vs_reference"]
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["set", "log_mstar_panel", *keys, "ci95_lo", "ci95_hi"])
        for name, panels in summary["mass_panels"].items():
            for label, e in panels.items():
                writer.writerow([name, label, *[e.get(k) for k in keys], *e["ci95"]])


def write_summary_json(summary: dict, path: Path) -> None:
    """summary.json (non-finite numbers as null)."""
    with open(path, "w") as fh:
        json.dump(_jsonable(summary), fh, indent=2)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value
