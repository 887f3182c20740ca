"""The report as material for a paper: ranking.tex, one vector PDF per figure, report_data.h5 and --figures-only.

One real run, kept small (as tests/report/test_report.py): `morphllr synth` writes a 40-galaxy observed test set
and two 20-galaxy simulations, `morphllr compare` scores them with one member of each shipped ensemble.  One set
name holds an underscore, which LaTeX must see escaped.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

import morphllr
from clitools import run_in_process, synth_and_compare

PRETRAINED = Path(morphllr.__file__).resolve().parent / "pretrained"
N_REFERENCE, N_SIM, GALLERY = 40, 20, 2
SIMS = {"good_sim": "sim-good", "smooth": "sim-smooth"}

pytestmark = pytest.mark.timeout(300)




@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """(report folder, summary.json as parsed, universe folder)."""
    folder = tmp_path_factory.mktemp("publication")
    report_dir, out, err, universe = synth_and_compare(folder, SIMS, PRETRAINED / "obs" / "seed0", PRETRAINED / "arch" / "seed0",
                                                       gallery=GALLERY, n_reference=N_REFERENCE, n_sim=N_SIM)
    summary = json.loads((folder / "report" / "summary.json").read_text())
    return folder / "report", summary, universe


def _unescape(text: str) -> str:
    return re.sub(r"\\([&%$#_{}])", r"\1", text)


def _decimals(cell: str) -> int:
    return len(cell.split(".")[1]) if "." in cell else 0


def test_ranking_tex_reads_back_as_the_summary_numbers(report):
    """astropy reads ranking.tex back: the ranking order, and every number within its printed rounding."""
    from astropy.table import Table

    out, summary, _ = report
    text = (out / "ranking.tex").read_text()
    assert "\\caption{" in text and "nats per image" in text
    table = Table.read(out / "ranking.tex", format="ascii.latex")
    names = [_unescape(str(s)).removesuffix(" (reference)") for s in table["Set"]]
    assert names == summary["ranking"]
    assert "good\\_sim" in text  # LaTeX's special characters escaped
    with open(out / "summary.csv", newline="") as fh:
        csv_rows = {row["set"]: row for row in csv.DictReader(fh)}
    assert list(csv_rows) == summary["ranking"]
    # the printed cells of each row, to know each number's rounding
    body = text.split("\\hline\n")[2].split("\\\\\n")
    cells = [[c.strip() for c in line.split("&")] for line in body if "&" in line]
    columns = {"$N$": "n", "mean LLR [nat]": "mean_llr", "95\\% low [nat]": "ci95_lo", "95\\% high [nat]": "ci95_hi",
               "median LLR [nat]": "median_llr", "$\\Delta$LLR [nat]": "delta_llr",
               "$\\sigma_{\\Delta}$ [nat]": "delta_llr_err", "AUROC": "auroc_vs_reference", "KS": "ks_vs_reference"}
    assert set(columns) <= set(table.colnames), table.colnames
    checked = 0
    for i, name in enumerate(names):
        for col, key in columns.items():
            value = float(csv_rows[name][key])
            assert value == pytest.approx(float(np.asarray(summary["sets"][name].get(key, value)).item())
                                          if key not in ("ci95_lo", "ci95_hi") else
                                          summary["sets"][name]["ci95"][key == "ci95_hi"])
            printed = cells[i][table.colnames.index(col)]
            tol = 0.5 * 10.0 ** -_decimals(printed) + 1e-9
            assert abs(float(table[col][i]) - value) <= tol, (name, col, printed, value)
            checked += 1
        outliers = 100 * summary["sets"][name]["outlier_fraction"]
        assert abs(float(table["outliers [\\%]"][i]) - outliers) <= 0.005 + 1e-9
        assert int(table["warnings"][i]) == len(summary["sets"][name]["warnings"])
    assert checked == len(names) * len(columns)
    # the LLR columns are rounded to the second significant digit of the smallest error (of ΔLLR, of the matched
    # ΔLLR, and half of each 95 % interval), as the caption says
    matched = summary.get("matched") or {}
    errors = [e for n in names
              for e in (summary["sets"][n]["delta_llr_err"], (matched.get("delta_llr_err") or {}).get(n),
                        0.5 * (summary["sets"][n]["ci95"][1] - summary["sets"][n]["ci95"][0])) if e]
    d = max(0, 1 - int(np.floor(np.log10(min(errors)))))
    assert f"rounded to the nearest {10.0 ** -d:.{d}f} nat" in text
    assert all(_decimals(cells[i][table.colnames.index("mean LLR [nat]")]) == d for i in range(len(names)))


def test_every_figure_is_a_png_and_a_one_page_vector_pdf(report):
    from pypdf import PdfReader

    out, summary, _ = report
    figures = out / "figures"
    pngs = {p.stem for p in figures.glob("*.png")}
    pdfs = {p.stem for p in figures.glob("*.pdf")}
    assert pngs and pngs == pdfs
    assert set(p.suffix for p in figures.iterdir()) == {".png", ".pdf"}
    for stem in sorted(pdfs):
        reader = PdfReader(figures / f"{stem}.pdf")
        assert len(reader.pages) == 1, stem
        fonts = reader.pages[0]["/Resources"].get("/Font")
        assert fonts, f"{stem}.pdf has no text as text (a raster, not a vector figure)"
    # every set has its per-set figures for its details on the page
    from morphllr.report.figures import _slug

    for name in summary["ranking"]:
        assert {f"gallery_{_slug(name)}", f"profile_{_slug(name)}"} <= pngs, name


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_figures_only_redraws_the_same_report_and_leaves_the_rest(report, tmp_path):
    out, _, _ = report
    copy = tmp_path / "report"
    shutil.copytree(out, copy)
    before = _snapshot(copy)
    (copy / "figures" / "llr_histograms.png").unlink()  # a lost figure comes back
    (copy / "index.html").write_text("stale")
    code, stdout, err = run_in_process(["compare", "--figures-only", copy])
    assert code == 0, stdout + err
    after = _snapshot(copy)
    assert set(after) == set(before)  # the same files, no temporary left behind
    assert after["summary.json"] == before["summary.json"]  # byte-identical
    figures = {k for k in after if k.startswith("figures/")}
    assert figures == {k for k in before if k.startswith("figures/")}
    for key in figures:
        if key.endswith(".png"):
            assert after[key] == before[key], f"{key} re-drawn differently"
    assert after["index.html"] == before["index.html"]
    assert after["ranking.tex"] == before["ranking.tex"]
    for key in set(before) - figures - {"index.html", "ranking.tex"}:
        assert after[key] == before[key], key


def test_figures_only_refuses_a_folder_without_its_files(report, tmp_path):
    out, _, universe = report
    copy = tmp_path / "report"
    shutil.copytree(out, copy)
    (copy / "report_data.h5").unlink()
    before = _snapshot(copy)
    code, stdout, err = run_in_process(["compare", "--figures-only", copy])
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:"), err
    assert "report_data.h5" in lines[0] and "morphllr compare" in lines[0]
    assert _snapshot(copy) == before  # nothing written
    # models or sets with --figures-only: refused too, naming what to drop
    code, _, err = run_in_process(["compare", "--figures-only", out, "--obs", PRETRAINED / "obs" / "seed0"])
    assert code == 2 and err.startswith("error:") and "--obs" in err
    # without --figures-only the models are required
    code, _, err = run_in_process(["compare", "--out", tmp_path / "new", "--reference", f"SDSS={universe / 'observed-test.h5'}"])
    assert code == 2 and err.startswith("error:") and "--obs" in err and not (tmp_path / "new").exists()


def test_report_data_holds_what_it_claims(report):
    """Shapes match the sets; gallery LLRs are the scores.csv rows of their ids; the set order is the ranking."""
    from astropy.table import Table

    out, summary, universe = report
    scores = Table.read(out / "scores.csv", format="ascii.csv")
    files = {"SDSS": universe / "observed-test.h5", **{n: universe / f"{s}.h5" for n, s in SIMS.items()}}
    with h5py.File(out / "report_data.h5", "r") as fh:
        assert fh.attrs["format"] == "morphllr.report_data" and int(fh.attrs["version"]) == 1
        assert json.loads(fh.attrs["set_order"]) == summary["ranking"]
        assert json.loads(fh.attrs["sets"]) == ["SDSS", *SIMS]
        assert fh.attrs["reference"] == summary["reference"]
        for k, name in enumerate(json.loads(fh.attrs["sets"])):
            g = fh["sets"][f"{k:03d}"]
            assert g.attrs["name"] == name
            rows = scores[np.asarray(scores["set"]).astype(str) == name]
            assert g.attrs["n"] == summary["sets"][name]["n"] and g.attrs["n_scores_rows"] == len(rows)
            with h5py.File(files[name], "r") as images:  # the set's ImageSet: /images (N, C, H, W)
                n_images, channels, h, w = images["images"].shape
            assert len(rows) == n_images
            assert g["mean_map"].shape == (h, w) and g["mean_map"].attrs["units"] == "nats per pixel"
            assert len(g["profile_pix_edges"]) == len(g["profile_pix"]) + 1
            assert g["profile_pix_edges"].attrs["units"] == "model pixels"
            assert set(g["gallery"]) == {"most_realistic", "least_realistic", "outliers", "maps"}
            by_id = {str(i): float(v) for i, v in zip(rows["id"], rows["llr"])}
            for key, e in g["gallery"].items():
                n = len(e["indices"])
                assert n == (min(GALLERY, n_images) if key != "outliers" else min(GALLERY, e.attrs["n_total"]))
                assert e["images"].shape == (n, channels, h, w)
                assert e["map_obs"].shape == e["map_arch"].shape == e["map_llr"].shape == (n, h, w)
                np.testing.assert_array_equal(e["map_llr"][()], e["map_obs"][()] - e["map_arch"][()])
                ids = e["ids"].asstr()[()] if h5py.check_string_dtype(e["ids"].dtype) else e["ids"][()]
                np.testing.assert_array_equal(e["llr"][()], [by_id[str(i)] for i in ids])
            llr = np.sort(np.asarray(rows["llr"], dtype=np.float64))
            np.testing.assert_array_equal(g["gallery"]["most_realistic"]["llr"][()], llr[::-1][:GALLERY])
            np.testing.assert_array_equal(g["gallery"]["least_realistic"]["llr"][()], llr[:GALLERY])
