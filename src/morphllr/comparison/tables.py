"""The files a comparison writes: ``scores.csv`` / ``scores.parquet``, ``summary.csv``, ``mass_panels.csv``, ``summary.json``,
``ranking.tex`` (the ranking as a LaTeX table, :func:`write_ranking_tex`).

Their rows come from :mod:`morphllr.comparison.result` (:func:`~morphllr.comparison.result.image_rows`,
:func:`~morphllr.comparison.result.summary_row`), which also gives them as astropy tables.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from morphllr.comparison.result import SUMMARY_COLUMNS, SetResult, image_rows, score_columns, stability_delta, summary_row


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


# --------------------------------------------------------------------------- ranking.tex
#: LaTeX's special characters in text
_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
#: the most decimals a number of ranking.tex gets
_MAX_DECIMALS = 6


def latex_escape(text: str) -> str:
    """``text`` with LaTeX's special characters escaped (for set names and captions)."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def _decimals_for_error(errors: list, values: list) -> int:
    """Decimals of the nats columns: two significant digits of the smallest positive error (else three of the
    largest value), at most :data:`_MAX_DECIMALS`."""
    errs = [abs(float(e)) for e in errors if e is not None and math.isfinite(float(e)) and float(e) > 0]
    if errs:
        return int(min(max(1 - math.floor(math.log10(min(errs))), 0), _MAX_DECIMALS))
    return _decimals_for_value(values)


def _decimals_for_value(values: list, digits: int = 3) -> int:
    vals = [abs(float(v)) for v in values if v is not None and math.isfinite(float(v)) and float(v) != 0]
    if not vals:
        return 2
    return int(min(max(digits - 1 - math.floor(math.log10(max(vals))), 0), _MAX_DECIMALS))


def ranking_latex_table(summary: dict):
    """The page's ranking table as an astropy Table ready for ``ascii.latex``: numbers rounded, units in the names.

    Columns (best first, the reference marked): rank, set, N, mean LLR and its 95 % interval, median,
    ΔLLR vs the reference ± error (with more than one model pair the ones the survival rule judges,
    :func:`~morphllr.comparison.result.stability_delta`: paired where the set shares galaxies with the
    reference), matched ΔLLR ± error (when measured), model σ and "survives retraining" (with more than one
    model pair), AUROC and KS vs the reference, outliers [%], masked share [%] and mean LLR
    per unmasked pixel (when pixels are masked) and the number of warnings.  LLR columns share one number of
    decimals: two significant digits of the smallest error (the ΔLLR errors, the matched ΔLLR errors and half
    the width of each 95 % interval); AUROC and KS get 3, percentages 2 (outliers) or 1 (masked share).

    Returns:
        (table, formats: column -> printf format, decimals of the nats columns).
    """
    from astropy.table import MaskedColumn, Table

    names = list(summary["ranking"])
    keys = ["n", "mean_llr", "ci95_lo", "ci95_hi", "median_llr", "delta_llr", "delta_llr_err", "matched_delta_llr",
            "matched_delta_llr_err", "model_std", "stable", "auroc_vs_reference", "ks_vs_reference", "masked_share",
            "mean_llr_per_pixel"]
    rows = [summary_row(summary, name, keys) for name in names]
    entries = [summary["sets"][name] for name in names]
    reference = summary["reference"]
    multi = (summary.get("model_pairs") or 1) > 1
    if multi:  # the ΔLLR the survival rule judges: paired over the shared galaxies where the sets share them
        for r, e in zip(rows, entries):
            r["delta_llr"], r["delta_llr_err"] = stability_delta(e)
    masked = any((e.get("masked_share") or 0) > 0 for e in entries)
    matched = any(r["matched_delta_llr"] is not None for r in rows)
    nats = ["mean_llr", "ci95_lo", "ci95_hi", "median_llr", "delta_llr", "delta_llr_err", "matched_delta_llr",
            "matched_delta_llr_err", "model_std"]
    errors = [r[k] for r in rows for k in ("delta_llr_err", "matched_delta_llr_err")]
    errors += [0.5 * (r["ci95_hi"] - r["ci95_lo"]) for r in rows
               if r["ci95_lo"] is not None and r["ci95_hi"] is not None]
    d_nat = _decimals_for_error(errors, [r[k] for r in rows for k in nats])
    d_pix = _decimals_for_value([r["mean_llr_per_pixel"] for r in rows])

    def number(values: list, decimals: int) -> MaskedColumn:
        ok = [v is not None and math.isfinite(float(v)) for v in values]
        return MaskedColumn([round(float(v), decimals) if good else 0.0 for v, good in zip(values, ok)],
                            mask=[not good for good in ok], dtype=float)

    table, formats = Table(), {}

    def add(name: str, column, fmt: str | None = None) -> None:
        table[name] = column
        if fmt:
            formats[name] = fmt

    nat_fmt = f"%.{d_nat}f"
    add("Rank", list(range(1, len(names) + 1)))
    add("Set", [latex_escape(n) + (" (reference)" if n == reference else "") for n in names])
    add("$N$", [int(r["n"]) for r in rows])
    add("mean LLR [nat]", number([r["mean_llr"] for r in rows], d_nat), nat_fmt)
    add("95\\% low [nat]", number([r["ci95_lo"] for r in rows], d_nat), nat_fmt)
    add("95\\% high [nat]", number([r["ci95_hi"] for r in rows], d_nat), nat_fmt)
    add("median LLR [nat]", number([r["median_llr"] for r in rows], d_nat), nat_fmt)
    add("$\\Delta$LLR [nat]", number([r["delta_llr"] for r in rows], d_nat), nat_fmt)
    add("$\\sigma_{\\Delta}$ [nat]", number([r["delta_llr_err"] for r in rows], d_nat), nat_fmt)
    if matched:
        add("matched $\\Delta$LLR [nat]", number([r["matched_delta_llr"] for r in rows], d_nat), nat_fmt)
        add("matched $\\sigma_{\\Delta}$ [nat]", number([r["matched_delta_llr_err"] for r in rows], d_nat), nat_fmt)
    if multi:
        add("model $\\sigma$ [nat]", number([r["model_std"] for r in rows], d_nat), nat_fmt)
        add("survives retraining", ["ref" if n == reference else "" if r["stable"] is None else
                                    ("yes" if r["stable"] else "no") for n, r in zip(names, rows)])
    add("AUROC", number([r["auroc_vs_reference"] for r in rows], 3), "%.3f")
    add("KS", number([r["ks_vs_reference"] for r in rows], 3), "%.3f")
    add("outliers [\\%]", number([None if e.get("outlier_fraction") is None else 100 * e["outlier_fraction"]
                                  for e in entries], 2), "%.2f")
    if masked:
        add("masked share [\\%]", number([100 * (r["masked_share"] or 0) for r in rows], 1), "%.1f")
        add("mean LLR per unmasked pixel [nat pix$^{-1}$]", number([r["mean_llr_per_pixel"] for r in rows], d_pix),
            f"%.{d_pix}f")
    add("warnings", [len(e.get("warnings") or []) for e in entries])
    return table, formats, d_nat


def ranking_caption(summary: dict, decimals: int, empty: bool = False) -> str:
    """The caption of ranking.tex (LaTeX): what each column is, in which unit, and how it was rounded
    (``empty``: the table has an empty number cell)."""
    ref = latex_escape(summary["reference"])
    multi = (summary.get("model_pairs") or 1) > 1
    masked = any((summary["sets"][n].get("masked_share") or 0) > 0 for n in summary["ranking"])
    threshold = summary.get("outlier_threshold_llr")
    paired = [n for n in summary["ranking"] if multi and summary["sets"][n].get("delta_llr_pairing") == "paired"]
    parts = [
        "Image sets ranked by their mean log-likelihood ratio LLR = $\\log p_{\\rm obs} - \\log p_{\\rm arch}$ "
        "(nats per image; higher = closer to the observed galaxies), most realistic first; reference (held-out "
        f"observed galaxies): {ref}. 95\\% low/high: bootstrap interval of the mean. $\\Delta$LLR: mean LLR of the "
        "set minus the reference's, with its bootstrap error $\\sigma_{\\Delta}$"
        + (" (paired where the sets share galaxies: for " + latex_escape(", ".join(paired)) + " the mean difference "
           "over the galaxies shown in both, as the survival rule below judges it)" if paired else "") + ".",
    ]
    dropped = [(n, summary["sets"][n]) for n in summary["ranking"] if summary["sets"][n].get("no_central_excluded")]
    if dropped:
        parts.append("$N$ excludes the images without a central source (empty or off-centre frames, listed in "
                     "summary.json): " + latex_escape(", ".join(f"{n} {e.get('n_no_central')} of {e.get('n_images')}"
                                                                for n, e in dropped)) + ".")
    if any((summary.get("matched") or {}).get("delta_llr") or {}):
        parts.append("Matched: the same, drawing equal numbers of galaxies per cell of a grid of "
                     + latex_escape(", ".join((summary["matched"].get("properties") or {}).values())) + ".")
    if multi:
        parts.append(f"Model $\\sigma$: spread of $\\Delta$LLR over the {summary.get('model_pairs')} model pairs; "
                     "survives retraining: $|\\Delta{\\rm LLR}| \\geq 2\\sqrt{\\sigma_\\Delta^2 + \\sigma^2}$ and "
                     "the same sign under at least 95\\% of the pairs"
                     + ("; an empty cell: not measured for that set." if any(
                         summary["sets"][n].get("stable") is None for n in summary["ranking"]
                         if n != summary["reference"]) else "."))
    else:
        parts.append("One model pair: the intervals cover galaxy sampling only (model variance not measured).")
    parts.append("AUROC and KS: against the reference's LLRs. Outliers: share of the set below the reference's "
                 "0.15th LLR percentile" + (f" ({threshold:.3g} nats)" if threshold is not None else "")
                 + ". Warnings: how many of morphllr's warnings the set has (listed in the report's index.html and "
                 "summary.json); read them before quoting its numbers.")
    step = f"{10.0 ** -decimals:.{decimals}f}"
    per_pixel = ""
    if masked:
        d_pix = _decimals_for_value([summary["sets"][n].get("mean_llr_per_pixel") for n in summary["ranking"]])
        per_pixel = (f"; the LLR per unmasked pixel to the nearest {10.0 ** -d_pix:.{d_pix}f} nat (three "
                     "significant digits of the largest value)")
    parts.append(f"LLRs rounded to the nearest {step} nat (two significant digits of the smallest error){per_pixel}.")
    if empty:
        parts.append("An empty number cell: not computed (summary.json says why).")
    return " ".join(parts)


def write_ranking_tex(summary: dict, path: Path) -> None:
    """ranking.tex: the ranking (:func:`ranking_latex_table`) through astropy's ``ascii.latex`` writer, captioned.

    ``Table.read(path, format="ascii.latex")`` reads it back (missing values are empty cells)."""
    from astropy.io import ascii

    table, formats, decimals = ranking_latex_table(summary)
    latexdict = {"tabletype": "table*", "tablealign": "htbp", "preamble": "\\centering",
                 "caption": ranking_caption(summary, decimals, empty=any(
                     bool(np.any(getattr(table[c], "mask", False))) for c in table.colnames)),
                 "header_start": "\\hline\\hline",
                 "header_end": "\\hline", "data_end": "\\hline", "tablefoot": "\\label{tab:morphllr-ranking}",
                 "col_align": "rl" + "r" * (len(table.colnames) - 2)}
    table.write(path, format="ascii.latex", latexdict=latexdict, formats=formats, overwrite=True,
                fill_values=[(ascii.masked, "")])
