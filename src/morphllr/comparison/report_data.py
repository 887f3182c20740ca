"""``report_data.h5``: what the report draws that is in neither ``summary.json`` nor ``scores.csv``, and the reader.

The report is always drawn from files: ``compare`` writes ``summary.json``, ``scores.csv`` and
``report_data.h5`` into its (temporary) output folder, then :meth:`ReportInputs.from_folder` reads
them back and the figures and the page are drawn from that; ``morphllr compare --figures-only OUT``
does the same later, without models or sets, so a re-drawn report is the report compare wrote.

``report_data.h5`` (attributes ``format`` = ``"morphllr.report_data"``, ``version`` = 1):

* root attributes: ``reference``; ``sets`` (JSON list: the sets in the order they were scored, the
  reference first; the order of their rows in ``scores.csv``); ``set_order`` (JSON list: the order of
  every figure and of the page, the ranking, most realistic first).
* ``/sets/NNN`` (``NNN`` = position in ``sets``; a set's name is its ``name`` attribute, as names may hold
  ``/``), attributes ``name``, ``n`` (images in the set's statistics), ``n_scores_rows`` (its rows in
  ``scores.csv``: every image scored, those left out of the statistics included), ``catalog`` (JSON list of
  ``{"column": scores.csv column, "name": catalogue column, "unit": unit or ""}``: the numeric catalogue
  columns the figures may use; their values are read from ``scores.csv``); datasets:

  - ``rows`` (only when some scored images are left out of the statistics, e.g. no central source): the
    positions, among the set's ``scores.csv`` rows, of those in its statistics;
  - ``mean_map`` (H, W): mean LLR per pixel [nats per pixel] of the set's galaxies, each shifted so its
    light-weighted centre is at the stamp centre (masked pixels not counted; NaN where no pixel fell);
  - ``profile_pix`` / ``profile_pix_edges`` (n, n + 1): mean LLR per pixel [nats per pixel] in annuli of
    radius [model pixels] around each galaxy's centre (the last bin also holds every larger radius);
  - ``profile_re`` / ``profile_re_edges`` (only when the set has half-light radii): the same in units of
    the galaxy's half-light radius R_e (pixels beyond the last edge are not counted);
  - ``gallery/KEY`` for ``most_realistic``, ``least_realistic``, ``outliers`` (below the reference's 0.15th
    LLR percentile; attribute ``n_total``: how many the set has) and ``maps`` (a spread over the LLR range):
    ``indices`` (positions in the set's statistics rows), ``rows`` (positions in the set's file), ``ids``,
    ``llr`` [nats per image], ``images``
    (k, C, H, W: model-input pixels), ``map_obs`` / ``map_arch`` / ``map_llr`` (k, H, W: log p per pixel
    [nats per pixel] under p_obs, p_arch, and their difference; masked pixels NaN).

Per-image numbers (``llr``, ``logp_obs``, ``logp_arch``, catalogue columns) are read from ``scores.csv``,
which holds them exactly (shortest round-trip decimals).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from morphllr.comparison.maps import PROFILE_RE_EDGES
from morphllr.comparison.result import catalog_columns, score_columns
from morphllr.errors import MorphllrError

#: the file's name in a compare output folder
REPORT_DATA = "report_data.h5"
FORMAT = "morphllr.report_data"
VERSION = 1
#: the per-image columns of scores.csv the figures read
SCORE_KEYS = ("llr", "logp_obs", "logp_arch")
#: the files a report is drawn from
REPORT_FILES = ("summary.json", "scores.csv", REPORT_DATA)
GALLERY_KEYS = ("most_realistic", "least_realistic", "outliers", "maps")


@dataclass
class ReportSet:
    """One set as the report sees it (the rows of its statistics).

    Attributes:
        name: set label.
        scores: ``llr``, ``logp_obs``, ``logp_arch`` per image (float64, nats per image).
        catalog: astropy Table of the set's numeric catalogue columns (float64, masked entries NaN) or None.
        mean_map: (H, W) centred mean LLR per pixel [nats per pixel].
        profile_pix, profile_pix_edges: radial profile [nats per pixel] and its bin edges [model pixels].
        profile_re, profile_re_edges: the same in units of R_e, or None.
        gallery: key -> dict(indices, ids, llr, images, map_obs, map_arch, map_llr, n_total).
    """

    name: str
    scores: dict[str, np.ndarray]
    catalog: Any
    mean_map: np.ndarray
    profile_pix: np.ndarray
    profile_pix_edges: np.ndarray
    profile_re: np.ndarray | None = None
    profile_re_edges: np.ndarray | None = None
    gallery: dict[str, dict] = field(default_factory=dict)

    @property
    def llr(self) -> np.ndarray:
        return self.scores["llr"]

    @property
    def n(self) -> int:
        return len(self.llr)


@dataclass
class ReportInputs:
    """Everything the report's figures and page read.

    Attributes:
        reference: the reference set's name.
        sets: name -> :class:`ReportSet`, in the order they were scored (reference first).
        summary: the content of ``summary.json``.
        notes: the report's notes (``summary["notes"]``).
        set_order: the order of every figure and table: the ranking, most realistic first.
        folder: the folder the inputs were read from (None: built in memory from a result).
    """

    reference: str
    sets: dict[str, ReportSet]
    summary: dict
    notes: list[str]
    set_order: list[str]
    folder: Path | None = None

    @property
    def ranking(self) -> list[str]:
        return list(self.summary["ranking"])

    def ordered_sets(self) -> dict[str, ReportSet]:
        """``sets`` in :attr:`set_order`."""
        return {name: self.sets[name] for name in self.set_order}

    @classmethod
    def from_result(cls, result) -> "ReportInputs":
        """The same inputs from a :class:`~morphllr.comparison.result.CompareResult` in memory (no files)."""
        if isinstance(result, ReportInputs):
            return result
        score_cols = score_columns(result.sets)
        sets = {name: _record(res, score_cols)[0] for name, res in result.sets.items()}
        summary = result.summary
        return cls(reference=result.reference, sets=sets, summary=summary, notes=list(result.notes),
                   set_order=_set_order(summary, sets))

    @classmethod
    def from_folder(cls, folder: str | Path, option: str = "--figures-only") -> "ReportInputs":
        """Read a compare output folder (``summary.json``, ``scores.csv``, ``report_data.h5``).

        Args:
            folder: the folder ``compare`` wrote.
            option: what named the folder, for messages.

        Raises:
            MorphllrError: a file is missing, of another format, or the files disagree.
        """
        folder = Path(folder)
        what = f"{option} {folder}"
        if not folder.is_dir():
            raise MorphllrError(f"{what}: not a folder; give the --out folder of a `morphllr compare` run")
        for name in REPORT_FILES:
            if not (folder / name).is_file():
                how = ("it is written by `morphllr compare` (since report_data.h5 was added): run "
                       f"`morphllr compare ... --out {folder} --overwrite` to make it" if name == REPORT_DATA else
                       "give the --out folder of a `morphllr compare` run")
                raise MorphllrError(f"{what}: no {name} in it; {how}")
        try:
            summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise MorphllrError(f"{what}: summary.json cannot be read ({exc}); run `morphllr compare` again") from None
        meta, records = _read_h5(folder / REPORT_DATA, what)
        per_image = _read_scores(folder / "scores.csv", records, meta["sets"], what)
        sets = {}
        for rec in records:
            name = rec["name"]
            entry = (summary.get("sets") or {}).get(name)
            if entry is None:
                raise MorphllrError(f"{what}: summary.json has no set {name!r} of report_data.h5; the files come "
                                    "from different runs: run `morphllr compare` again")
            values = per_image[name]
            if "rows" in rec:
                values = {k: v[rec["rows"]] for k, v in values.items()}
            if int(entry.get("n", -1)) != rec["n"]:
                raise MorphllrError(f"{what}: set {name!r} has n = {entry.get('n')} in summary.json but "
                                    f"{rec['n']} images in report_data.h5; the files come from different runs: "
                                    "run `morphllr compare` again")
            catalog = None
            if rec["catalog"]:
                from astropy.table import Table

                catalog = Table()
                for col in rec["catalog"]:
                    catalog[col["name"]] = values[col["column"]]
                    catalog[col["name"]].unit = _unit_or_none(col["unit"])
            sets[name] = ReportSet(name=name, scores={k: values[k] for k in SCORE_KEYS}, catalog=catalog,
                                   mean_map=rec["mean_map"], profile_pix=rec["profile_pix"],
                                   profile_pix_edges=rec["profile_pix_edges"], profile_re=rec.get("profile_re"),
                                   profile_re_edges=rec.get("profile_re_edges"), gallery=rec["gallery"])
        if summary.get("reference") != meta["reference"] or sorted(summary.get("ranking") or []) != sorted(sets):
            raise MorphllrError(f"{what}: summary.json and report_data.h5 name different sets; the files come from "
                                "different runs: run `morphllr compare` again")
        return cls(reference=meta["reference"], sets=sets, summary=summary, notes=list(summary.get("notes") or []),
                   set_order=[n for n in meta["set_order"] if n in sets], folder=folder)


def _set_order(summary: dict, sets: dict) -> list[str]:
    """The ranking (most realistic first), then any set it does not list."""
    ranking = [n for n in summary.get("ranking") or [] if n in sets]
    return ranking + [n for n in sets if n not in ranking]


def _float(values: Any) -> np.ndarray:
    return np.ma.filled(np.ma.asarray(values).astype(np.float64), np.nan)


def _catalog_record(res, score_cols: list[str]) -> list[dict]:
    """The set's numeric 1-D catalogue columns: their scores.csv column, name and unit.

    ``score_cols``: the score columns of scores.csv (:func:`~morphllr.comparison.result.score_columns` of every
    set): a catalogue column of the same name is ``cat_NAME`` there."""
    catalog = res.catalog
    if catalog is None:
        return []
    taken = ["set", "id", *score_cols]
    kept = [c for c in catalog.colnames if catalog[c].ndim == 1 and c != "id"]
    keys = list(catalog_columns(catalog, taken))  # the names scores.csv gives them, in catalogue order
    out = []
    for name, key in zip(kept, keys):
        if np.issubdtype(catalog[name].dtype, np.number):  # bool and text columns are no numbers to a figure
            unit = catalog[name].unit
            out.append({"column": key, "name": name, "unit": "" if unit is None else str(unit)})
    return out


def _record(res, score_cols: list[str]) -> tuple[ReportSet, list[dict], int, np.ndarray | None]:
    """(the ReportSet of one SetResult, its catalogue record, its rows in scores.csv, the statistics' rows)."""
    catalog_cols = _catalog_record(res, score_cols)
    catalog = None
    if catalog_cols:
        from astropy.table import Table

        catalog = Table()
        for col in catalog_cols:
            catalog[col["name"]] = _float(res.catalog[col["name"]])
            catalog[col["name"]].unit = _unit_or_none(col["unit"])
    full = getattr(res, "all_images", None) or res
    rows = getattr(res, "rows", None)
    profile_pix = np.asarray(res.profile_pix, dtype=np.float64)
    gallery = {}
    for key, g in (res.gallery or {}).items():
        map_obs, map_arch = np.asarray(g["map_obs"]), np.asarray(g["map_arch"])
        gallery[key] = {"indices": np.asarray(g["indices"], dtype=np.int64), "ids": _ids(g.get("ids")),
                        "llr": np.asarray(g["llr"], dtype=np.float64), "images": np.asarray(g["images"]),
                        "map_obs": map_obs, "map_arch": map_arch, "map_llr": map_obs - map_arch,
                        "n_total": int(g.get("n_total", len(g["indices"])))}
        if g.get("rows") is not None:  # positions in the set's file, when some images are left out
            gallery[key]["rows"] = np.asarray(g["rows"], dtype=np.int64)
    report_set = ReportSet(
        name=res.name, scores={k: np.asarray(res.scores[k], dtype=np.float64) for k in SCORE_KEYS}, catalog=catalog,
        mean_map=np.asarray(res.mean_map, dtype=np.float64), profile_pix=profile_pix,
        profile_pix_edges=np.arange(len(profile_pix) + 1, dtype=np.float64),
        profile_re=None if res.profile_re is None else np.asarray(res.profile_re, dtype=np.float64),
        profile_re_edges=None if res.profile_re is None else np.asarray(PROFILE_RE_EDGES, dtype=np.float64),
        gallery=gallery)
    return report_set, catalog_cols, len(full.llr), None if rows is None else np.asarray(rows, dtype=np.int64)


def _ids(ids: Any) -> np.ndarray:
    """Gallery ids as numbers when they are numbers, else as text."""
    if ids is None:
        return np.asarray([], dtype=str)
    ids = np.asarray(ids)
    if ids.dtype.kind in "iuf":
        return ids
    return np.asarray([x.decode() if isinstance(x, bytes) else str(x) for x in ids.tolist()], dtype=str)


def _unit_or_none(text: str):
    if not text:
        return None
    import astropy.units as u

    try:
        return u.Unit(text, parse_strict="silent")
    except (ValueError, TypeError):
        return None


# --------------------------------------------------------------------------- writing
def write_report_data(result, path: str | Path) -> None:
    """``report_data.h5`` of a :class:`~morphllr.comparison.result.CompareResult` (see the module docstring).

    Args:
        result: the comparison (its sets and summary).
        path: the file to write (inside compare's temporary output folder).
    """
    import h5py

    score_cols = score_columns(result.sets)  # as scores.csv has them (tables.write_scores)
    order = _set_order(result.summary, result.sets)
    with h5py.File(path, "w") as fh:
        fh.attrs["format"] = FORMAT
        fh.attrs["version"] = VERSION
        fh.attrs["reference"] = result.reference
        fh.attrs["sets"] = json.dumps(list(result.sets))
        fh.attrs["set_order"] = json.dumps(order)
        fh.attrs["units"] = ("llr: nats per image; maps and profiles: nats per pixel; profile_pix_edges: model "
                             "pixels; profile_re_edges: half-light radii R_e")
        top = fh.create_group("sets")
        for k, res in enumerate(result.sets.values()):
            rs, catalog_cols, n_rows, rows = _record(res, score_cols)
            g = top.create_group(f"{k:03d}")
            g.attrs["name"] = rs.name
            g.attrs["n"] = rs.n
            g.attrs["n_scores_rows"] = n_rows
            g.attrs["catalog"] = json.dumps(catalog_cols)
            if rows is not None:
                _dataset(g, "rows", rows, "positions among the set's scores.csv rows of the images in its statistics")
            _dataset(g, "mean_map", rs.mean_map, "centred mean LLR per pixel", "nats per pixel")
            _dataset(g, "profile_pix", rs.profile_pix, "mean LLR per pixel in annuli", "nats per pixel")
            _dataset(g, "profile_pix_edges", rs.profile_pix_edges,
                     "annulus edges (the last bin also holds every larger radius)", "model pixels")
            if rs.profile_re is not None:
                _dataset(g, "profile_re", rs.profile_re, "mean LLR per pixel in annuli of r / R_e", "nats per pixel")
                _dataset(g, "profile_re_edges", rs.profile_re_edges, "annulus edges", "R_e")
            gal = g.create_group("gallery")
            for key, entry in rs.gallery.items():
                e = gal.create_group(key)
                e.attrs["n_total"] = entry["n_total"]
                _dataset(e, "indices", entry["indices"], "positions in the set's statistics rows")
                if "rows" in entry:
                    _dataset(e, "rows", entry["rows"], "positions of the images in the set's file")
                ids = entry["ids"]
                if ids.dtype.kind in "iuf":
                    _dataset(e, "ids", ids, "catalogue id or index")
                else:
                    ds = e.create_dataset("ids", data=np.asarray(ids, dtype=object), dtype=h5py.string_dtype())
                    ds.attrs["description"] = "catalogue id or index"
                _dataset(e, "llr", entry["llr"], "LLR of each image", "nats per image")
                _dataset(e, "images", entry["images"], "model-input images (k, C, H, W)")
                for name, what in (("map_obs", "log p_obs per pixel"), ("map_arch", "log p_arch per pixel"),
                                   ("map_llr", "LLR per pixel = map_obs - map_arch")):
                    _dataset(e, name, entry[name], what + " (masked pixels NaN)", "nats per pixel")


def _dataset(group, name: str, data: np.ndarray, description: str, units: str | None = None) -> None:
    data = np.asarray(data)
    # compressed only when large enough to gain (every chunked dataset costs a few kB of index)
    options = {"compression": "gzip", "compression_opts": 4} if data.ndim >= 2 and data.nbytes > 65536 else {}
    ds = group.create_dataset(name, data=data, **options)
    ds.attrs["description"] = description
    if units:
        ds.attrs["units"] = units


# --------------------------------------------------------------------------- reading
def _read_h5(path: Path, what: str) -> tuple[dict, list[dict]]:
    import h5py

    try:
        fh = h5py.File(path, "r")
    except OSError as exc:
        raise MorphllrError(f"{what}: report_data.h5 cannot be read ({exc}); run `morphllr compare` again") from None
    with fh:
        fmt, version = fh.attrs.get("format"), fh.attrs.get("version")
        if fmt != FORMAT:
            raise MorphllrError(f"{what}: report_data.h5 is not a morphllr report_data file (format {fmt!r})")
        if version is None or int(version) > VERSION:
            raise MorphllrError(f"{what}: report_data.h5 is version {version}, newer than this morphllr reads "
                                f"({VERSION}); upgrade morphllr")
        meta = {"reference": str(fh.attrs["reference"]), "sets": json.loads(fh.attrs["sets"]),
                "set_order": json.loads(fh.attrs["set_order"])}
        records = []
        for k in range(len(meta["sets"])):
            g = fh["sets"][f"{k:03d}"]
            rec: dict[str, Any] = {"name": str(g.attrs["name"]), "n": int(g.attrs["n"]),
                                   "n_scores_rows": int(g.attrs["n_scores_rows"]),
                                   "catalog": json.loads(g.attrs["catalog"])}
            for key in ("rows", "mean_map", "profile_pix", "profile_pix_edges", "profile_re", "profile_re_edges"):
                if key in g:
                    rec[key] = g[key][()]
            rec["gallery"] = {}
            for key, e in g["gallery"].items():
                ids = e["ids"]
                rec["gallery"][key] = {
                    "indices": e["indices"][()], "llr": e["llr"][()], "images": e["images"][()],
                    "ids": np.asarray(ids.asstr()[()], dtype=str) if h5py.check_string_dtype(ids.dtype) else ids[()],
                    "map_obs": e["map_obs"][()], "map_arch": e["map_arch"][()], "map_llr": e["map_llr"][()],
                    "n_total": int(e.attrs["n_total"])}
                if "rows" in e:
                    rec["gallery"][key]["rows"] = e["rows"][()]
            rec["gallery"] = {key: rec["gallery"][key] for key in [*GALLERY_KEYS, *rec["gallery"]]
                              if key in rec["gallery"]}
            records.append(rec)
    return meta, records


def _read_scores(path: Path, records: list[dict], names: list[str], what: str) -> dict[str, dict[str, np.ndarray]]:
    """Each set's rows of scores.csv: the score columns and its catalogue columns, as float64."""
    import csv

    from astropy.io import ascii

    with open(path, newline="", encoding="utf-8") as fh:
        header = next(csv.reader(fh), [])
    wanted = ["set", *SCORE_KEYS, *dict.fromkeys(c["column"] for rec in records for c in rec["catalog"])]
    missing = [c for c in wanted if c not in header]
    if missing:
        raise MorphllrError(f"{what}: scores.csv lacks the column(s) {', '.join(missing)}; run `morphllr compare` "
                            "again")
    try:
        table = ascii.read(path, format="csv", guess=False, include_names=wanted,
                           converters={"set": [ascii.convert_numpy(str)]})
    except Exception as exc:  # noqa: BLE001 - any parse failure is the file's, named in one line
        raise MorphllrError(f"{what}: scores.csv cannot be read ({exc}); run `morphllr compare` again") from None
    set_col = np.asarray(table["set"]).astype(str)
    total = sum(rec["n_scores_rows"] for rec in records)
    if len(table) != total:
        raise MorphllrError(f"{what}: scores.csv has {len(table)} rows, report_data.h5 expects {total}; the files "
                            "come from different runs: run `morphllr compare` again")
    out, start = {}, 0
    for rec, name in zip(records, names):
        stop = start + rec["n_scores_rows"]
        if not np.all(set_col[start:stop] == name):
            raise MorphllrError(f"{what}: scores.csv rows {start}-{stop - 1} are not all of set {name!r} as "
                                "report_data.h5 says; the files come from different runs: run `morphllr compare` again")
        cols = {}
        for c in wanted[1:]:
            values = table[c][start:stop]
            if values.dtype.kind in "US":  # a column text in another set: numbers as text here
                values = np.ma.asarray(values)
                text = np.ma.filled(values.astype(str), "nan")
                values = np.asarray([float(x) if x.strip() else np.nan for x in text])
            cols[c] = _float(values)
        out[name] = cols
        start = stop
    return out
