"""The outcome of a comparison: :class:`SetResult` per set and :class:`CompareResult`, with their rows as tables.

The per-image rows (:func:`image_rows`: ``scores.csv``) and the per-set rows (:func:`summary_row`:
``summary.csv``) are built here once; :mod:`morphllr.comparison.tables` writes them to files and
:meth:`CompareResult.summary_table` / :meth:`CompareResult.scores_table` give them as astropy tables.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from morphllr.errors import MorphllrError


@dataclass
class SetResult:
    """Everything measured for one set.

    Attributes:
        name: set label.
        scores: column -> per-image array (``logp_obs``, ``logp_arch``, ``llr``,
            ``llr_segmap``, ``llr_sky``, ``llr_rest``, ``n_sky_pixels``, ``llr_sky_per_pixel``,
            ``bpd_obs``, ``bpd_arch``, ``n_masked_pixels``, ``masked_share``, ``llr_per_pixel``
            and ``llr_rot`` with rotations); see :class:`morphllr.data.pixels.SkyMasks` for the sky split; sums run
            over the unmasked pixels only.
        ids: per-image identifiers (catalogue ``id`` or the index).
        catalog: the set's catalogue (astropy Table) or None.
        mean_map: mean pixel LLR map after centring each galaxy, ``(H, W)``.
        profile_re: mean pixel LLR per bin of r / R_e (None without sizes).
        profile_pix: mean pixel LLR per 1-pixel bin of r.
        gallery: selection name -> dict(indices, images, map_obs, map_arch, llr).
        notes: what could not be measured and why.
        sky_mask: where the empty-sky mask came from: ``"segmap"``, ``"segmap_model"``
            (companions count as sky) or None (sky columns are NaN).
        member_logp: ``{"obs": (K_obs, N), "arch": (K_arch, N)}`` float64 log p of every image
            under every member (``scores["logp_obs"]`` is the mean over the obs members);
            LLR_ij = member_logp["obs"][i] - member_logp["arch"][j].
        groups: per-image label of the object it shows (``group_col``), or None.
        domain_values: what the domain guards judge (:mod:`morphllr.domain`): ``sky_logp``
            ``{"obs": (K_obs, N), "arch": (K_arch, N)}`` every member's log p summed over the
            empty-sky pixels (NaN without a mask), ``area`` (N,) central-source areas and
            ``n_valid`` (N,) unmasked model pixels.
        warnings: this set's warnings (``summary["sets"][name]["warnings"]``).
        central: per image (of these rows) True when a central source was found, False when not
            (:func:`morphllr.comparison.sets.central_flags`), or None when the set does not say.
        no_central: the set's count of images without a central source, for ``summary.json``:
            ``n_no_central`` (int, None when unknown), ``no_central_ids`` (at most
            :data:`NO_CENTRAL_IDS` ids), ``no_central_excluded`` (True when they are left out of
            these rows), ``central_from`` (where the flags came from, None when unknown), ``n_images``.
        rows: positions in the set of these rows (None: every image, in order); not None when the
            images without a central source were left out (:meth:`without`).
        all_images: then the SetResult of every image (its rows are ``scores.csv``'s); None otherwise.
    """

    name: str
    scores: dict[str, np.ndarray]
    ids: np.ndarray
    catalog: Any
    mean_map: np.ndarray
    profile_re: np.ndarray | None
    profile_pix: np.ndarray
    gallery: dict[str, dict] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    sky_mask: str | None = None
    member_logp: dict[str, np.ndarray] = field(default_factory=dict)
    groups: np.ndarray | None = None
    domain_values: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    central: np.ndarray | None = None
    no_central: dict = field(default_factory=dict)
    rows: np.ndarray | None = None
    all_images: "SetResult | None" = None

    @property
    def llr(self) -> np.ndarray:
        return self.scores["llr"]

    def without(self, leave_out: np.ndarray) -> "SetResult":
        """The rows of the images not in ``leave_out`` (bool per image), for every statistic; ``all_images`` keeps
        this full result for ``scores.csv``.  Maps and profiles are the caller's (accumulated without them)."""
        keep = np.flatnonzero(~np.asarray(leave_out, bool))

        def take(a):
            if a is None:
                return None
            if isinstance(a, dict):
                return {k: take(v) for k, v in a.items()}
            a = np.asarray(a)
            return a[..., keep] if a.ndim else a

        return SetResult(name=self.name, scores=take(self.scores), ids=np.asarray(self.ids)[keep],
                         catalog=None if self.catalog is None else self.catalog[keep], mean_map=self.mean_map,
                         profile_re=self.profile_re, profile_pix=self.profile_pix, notes=list(self.notes),
                         sky_mask=self.sky_mask, member_logp=take(self.member_logp),
                         groups=None if self.groups is None else np.asarray(self.groups)[keep],
                         domain_values=take(self.domain_values), warnings=list(self.warnings),
                         central=None if self.central is None else np.asarray(self.central)[keep],
                         no_central=dict(self.no_central), rows=keep, all_images=self)


#: at most this many ids of images without a central source are listed per set (summary.json ``no_central_ids``)
NO_CENTRAL_IDS = 50


def no_central_record(ids: np.ndarray, central: np.ndarray | None, source: str | None, excluded: bool) -> dict:
    """A set's ``summary.json`` entries about its images without a central source (see ``SetResult.no_central``)."""
    n = len(ids)
    if central is None:
        return {"n_images": n, "n_no_central": None, "no_central_ids": [], "no_central_excluded": False,
                "central_from": None}
    missing = np.flatnonzero(~np.asarray(central, bool))
    listed = [x.decode() if isinstance(x, bytes) else x.item() if isinstance(x, np.generic) else x
              for x in np.asarray(ids)[missing[:NO_CENTRAL_IDS]]]
    return {"n_images": n, "n_no_central": int(missing.size), "no_central_ids": listed,
            "no_central_excluded": bool(excluded and missing.size), "central_from": source}


@dataclass
class CompareResult:
    """Outcome of :func:`compare`.

    Attributes:
        reference: name of the reference set.
        sets: name -> SetResult, reference first.
        summary: the content of ``summary.json``.
        ranking: set names ordered by mean LLR, highest (most realistic) first.
        notes: report-wide notes (skipped plots and why).
        out: the report folder or None.
        timing: seconds in forward passes vs total.

    :meth:`summary_table` and :meth:`scores_table` give ``summary.csv`` and one set's rows of
    ``scores.csv`` as astropy tables, with units.
    """

    reference: str
    sets: dict[str, SetResult]
    summary: dict
    ranking: list[str]
    notes: list[str]
    out: Path | None
    timing: dict

    def summary_table(self):
        """One row per set, best first: the columns of ``summary.csv`` then the mean log p and bits/dim per model.

        Returns:
            astropy Table (``set`` first); log-likelihood columns in nats (``nat``, 1 nat = 1 / ln 2 bit),
            bits/dim in ``bit`` (per dimension), per-pixel LLRs in ``nat / pix``; missing values masked;
            ``meta``: ``reference``, ``ranking``.
        """
        from astropy.table import Table

        names = list(self.summary["ranking"])
        keys = [*SUMMARY_COLUMNS, *SUMMARY_EXTRA_COLUMNS]
        rows = [summary_row(self.summary, name, keys) for name in names]
        table = Table(meta={"reference": self.reference, "ranking": names})
        table["set"] = names
        for key in keys:
            table[key] = _masked_column([row[key] for row in rows], unit=_unit(SUMMARY_UNITS.get(key)))
        return table

    def scores_table(self, set_name: str):
        """One set's per-image table: its rows of ``scores.csv`` (same columns, same values).

        Args:
            set_name: one of ``self.sets``.

        Returns:
            astropy Table; log p and LLR columns in ``nat``, bits/dim in ``bit`` (per unmasked dimension),
            pixel counts in ``pix``, per-pixel LLRs in ``nat / pix``, catalogue columns with the catalogue's
            units; ``meta``: ``set``, ``reference``.
        """
        from astropy.table import Table

        if set_name not in self.sets:
            raise MorphllrError(f"set {set_name!r}: not in this comparison; choose one of {', '.join(self.sets)}")
        res = self.sets[set_name]
        table = Table(meta={"set": set_name, "reference": self.reference})
        for key, values in image_rows(res, score_columns({set_name: res})).items():
            unit = SCORE_UNITS.get("logp" if key.startswith(("logp_obs_", "logp_arch_")) else key)
            if unit is None and res.catalog is not None and key in res.catalog.colnames:
                unit = res.catalog[key].unit  # a catalogue column keeps its own unit
            table[key] = values.astype(str) if values.dtype.kind in "OS" else values
            table[key].unit = _unit(unit)
        return table


#: the columns of scores.csv, one row per image (then ``llr_rot``, per-member log p and the catalogue's columns)
SCORE_COLUMNS = ("set", "id", "logp_obs", "logp_arch", "llr", "llr_segmap", "llr_sky", "llr_rest", "n_sky_pixels",
                 "llr_sky_per_pixel", "bpd_obs", "bpd_arch", "n_masked_pixels", "masked_share", "llr_per_pixel",
                 "central_source")


def catalog_columns(catalog: Any, taken: Iterable[str]) -> dict[str, np.ndarray]:
    """1-D scalar catalogue columns to carry into scores.csv (renamed when they clash)."""
    if catalog is None:
        return {}
    taken = set(taken)
    out = {}
    for name in catalog.colnames:
        col = catalog[name]
        if col.ndim != 1 or name == "id":
            continue
        key = f"cat_{name}" if name in taken else name
        values = np.ma.asarray(col)
        if np.issubdtype(values.dtype, np.number) or values.dtype == bool:
            out[key] = np.ma.filled(values.astype(np.float64), np.nan)
        else:
            out[key] = np.asarray([x.decode() if isinstance(x, bytes) else str(x) for x in np.ma.filled(values)])
    return out


def image_rows(res: SetResult, score_cols: list[str]) -> dict[str, np.ndarray]:
    """One set's rows of scores.csv: column -> per-image values (``set``, ``id``, ``score_cols``, catalogue).

    Every image of the set, those left out of its statistics included (``res.all_images``);
    ``central_source`` is 1 (a central source was found), 0 (none: left out of the statistics unless kept)
    or NaN (the set does not say).
    """
    res = res.all_images or res
    n = len(res.llr)
    table: dict[str, np.ndarray] = {"set": np.full(n, res.name, dtype=object), "id": res.ids}
    for col in score_cols:
        if col == "central_source":
            table[col] = np.full(n, np.nan) if res.central is None else np.asarray(res.central, np.float64)
        else:
            table[col] = res.scores.get(col, np.full(n, np.nan))
    table.update(catalog_columns(res.catalog, list(table)))
    return table


def score_columns(results: dict[str, SetResult]) -> list[str]:
    """The per-image score columns of scores.csv for these sets (after ``set`` and ``id``)."""
    score_cols = [c for c in SCORE_COLUMNS[2:]]
    if any("llr_rot" in r.scores for r in results.values()):
        score_cols.append("llr_rot")
    for r in results.values():  # per-member log p of an ensemble (K > 1 on that side)
        score_cols += [c for c in r.scores if c.startswith(("logp_obs_", "logp_arch_")) and c not in score_cols]
    return score_cols


#: the columns of summary.csv after ``set``, one row per set in ranking order
SUMMARY_COLUMNS = ("n", "mean_llr", "median_llr", "std_llr", "ci95_lo", "ci95_hi", "delta_llr", "delta_llr_err",
                   "auroc_vs_reference", "ks_vs_reference", "ks_pvalue", "mean_llr_segmap",
                   "matched_delta_llr", "matched_delta_llr_err", "llr_per_sky_pixel", "sky_share", "sky_pixel_fraction",
                   "auroc_sky_vs_reference", "auroc_rest_vs_reference", "n_groups", "delta_llr_pairing", "n_paired",
                   "delta_llr_paired", "delta_llr_paired_err", "model_std", "sign_agreement", "stable",
                   "ci95_total_lo", "ci95_total_hi", "delta_llr_ci95_total_lo", "delta_llr_ci95_total_hi",
                   "masked_share", "mean_llr_per_pixel", "n_no_central")


def summary_row(summary: dict, name: str, keys: Iterable[str] = SUMMARY_COLUMNS) -> dict[str, Any]:
    """Set ``name``'s entry of ``summary`` flattened to ``keys`` (intervals split into ``_lo`` / ``_hi``, the
    matched ΔLLR and the sky split's numbers alongside; None where there is no value)."""
    keys = list(keys)
    matched = summary.get("matched") or {}
    e = dict(summary["sets"][name])
    e["ci95_lo"], e["ci95_hi"] = e["ci95"]
    for key in ("ci95_total", "delta_llr_ci95_total"):
        e[f"{key}_lo"], e[f"{key}_hi"] = e.get(key) or (None, None)
    e["matched_delta_llr"] = (matched.get("delta_llr") or {}).get(name)
    e["matched_delta_llr_err"] = (matched.get("delta_llr_err") or {}).get(name)
    e.update({k: v for k, v in (e.get("sky") or {}).items() if k in keys})
    return {k: e.get(k) for k in keys}


def name_slug(name: str) -> str:
    """A set name as it appears in file names and HTML ids: every character but letters, digits, - and _ as _
    (:func:`morphllr.comparison.sets.check_names` refuses names that share one)."""
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)


def stability_delta(entry: dict) -> tuple[float | None, float | None]:
    """The ΔLLR vs the reference that the stability rule judges, and its galaxy error (paired when shared)."""
    if entry.get("delta_llr_pairing") == "paired":
        return entry.get("delta_llr_paired"), entry.get("delta_llr_paired_err")
    return entry.get("delta_llr"), entry.get("delta_llr_err")


#: units of the per-image columns in :meth:`CompareResult.scores_table` (``logp``: every per-member column
#: ``logp_obs_NAME`` / ``logp_arch_NAME``); ``nat`` is 1 / ln 2 bit, ``bit`` of bits/dim is per dimension
SCORE_UNITS = {"logp": "nat", "logp_obs": "nat", "logp_arch": "nat", "llr": "nat", "llr_segmap": "nat",
               "llr_sky": "nat", "llr_rest": "nat", "llr_rot": "nat", "n_sky_pixels": "pix",
               "llr_sky_per_pixel": "nat / pix", "bpd_obs": "bit", "bpd_arch": "bit", "n_masked_pixels": "pix",
               "llr_per_pixel": "nat / pix"}
#: columns of :meth:`CompareResult.summary_table` after those of summary.csv
SUMMARY_EXTRA_COLUMNS = ("mean_logp_obs", "mean_logp_arch", "mean_bpd_obs", "mean_bpd_arch", "outlier_fraction")
#: units of the columns of :meth:`CompareResult.summary_table` (the others are counts or shares)
SUMMARY_UNITS = {**{k: "nat" for k in ("mean_llr", "median_llr", "std_llr", "ci95_lo", "ci95_hi", "delta_llr",
                                       "delta_llr_err", "mean_llr_segmap", "matched_delta_llr",
                                       "matched_delta_llr_err", "delta_llr_paired", "delta_llr_paired_err",
                                       "model_std", "ci95_total_lo", "ci95_total_hi", "delta_llr_ci95_total_lo",
                                       "delta_llr_ci95_total_hi", "mean_logp_obs", "mean_logp_arch")},
                 "llr_per_sky_pixel": "nat / pix", "mean_llr_per_pixel": "nat / pix", "mean_bpd_obs": "bit",
                 "mean_bpd_arch": "bit"}


def _unit(text: Any):
    """The astropy unit of a column (``nat`` = 1 / ln 2 bit, a unit astropy does not define), or None."""
    if text is None or not isinstance(text, str):
        return text
    import astropy.units as u

    with u.add_enabled_units([_nat()]):
        return u.Unit(text)


@functools.cache
def _nat():
    import astropy.units as u

    return u.def_unit("nat", u.bit / math.log(2.0), doc="natural unit of information: log-likelihoods in nats")


def _masked_column(values: list, unit: Any = None):
    """A MaskedColumn of ``values`` with None masked (bool, int, float or str by the values present)."""
    from astropy.table import MaskedColumn

    present = [v for v in values if v is not None]
    if present and all(isinstance(v, (bool, np.bool_)) for v in present):
        fill: Any = False
    elif present and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in present):
        fill = 0
    elif all(isinstance(v, (int, float, np.integer, np.floating)) for v in present):
        fill = np.nan
        values = [float(v) if v is not None else None for v in values]
    else:
        fill = ""
        values = [str(v) if v is not None else None for v in values]
    return MaskedColumn([fill if v is None else v for v in values], mask=[v is None for v in values], unit=unit)
