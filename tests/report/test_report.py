"""The comparison report as files: what index.html shows exists, decodes and agrees with summary.json.

One real run of the command line, kept small: `morphllr synth` writes a 40-galaxy observed test set
and two 20-galaxy simulations, `morphllr compare` scores them with one member of each shipped
ensemble.  Sets under 30 images fire the small-set guard, so the warnings path is exercised; the
40-image reference does not, so its absence is checked too.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

import morphllr
from clitools import synth_and_compare

PRETRAINED = Path(morphllr.__file__).resolve().parent / "pretrained"
N_REFERENCE, N_SIM = 40, 20
SIMS = {"good": "sim-good", "smooth": "sim-smooth"}

pytestmark = pytest.mark.timeout(300)




_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class _Page(HTMLParser):
    """What a reader of index.html meets: images, links, element ids, the ranking table, the warnings box."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.images: list[str] = []
        self.links: list[str] = []
        self.ids: set[str] = set()
        self.ranking: list[list[tuple[str, str]]] = []  # rows of (cell class, text)
        self.warnings: list[str] = []  # the warnings box's items
        self._open: list[tuple[str, str]] = []  # (tag, id) of the enclosing elements
        self._cell: list | None = None
        self._item: list | None = None

    def _inside(self, element_id: str) -> bool:
        return any(i == element_id for _, i in self._open)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        if tag == "a" and "href" in attrs:
            self.links.append(attrs["href"])
        if tag in _VOID:
            return
        self._open.append((tag, attrs.get("id", "")))
        if tag == "tr" and self._inside("ranking"):
            self.ranking.append([])
        elif tag in ("td", "th") and self._inside("ranking"):
            self._cell = [attrs.get("class") or tag, ""]
        elif tag == "li" and self._inside("warnings"):
            self._item = [""]

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.ranking[-1].append((self._cell[0], self._cell[1].strip()))
            self._cell = None
        elif tag == "li" and self._item is not None:
            self.warnings.append(self._item[0].strip())
            self._item = None
        if any(t == tag for t, _ in self._open):  # close it and anything left open inside it
            while self._open.pop()[0] != tag:
                pass

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[1] += data
        if self._item is not None:
            self._item[0] += data


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """(report folder, summary.json, parsed index.html, stderr of compare)."""
    folder = tmp_path_factory.mktemp("report")
    report_dir, out, err, universe = synth_and_compare(folder, SIMS, PRETRAINED / "obs" / "seed0", PRETRAINED / "arch" / "seed0",
                                                       n_reference=N_REFERENCE, n_sim=N_SIM)
    page = _Page()
    page.feed((folder / "report" / "index.html").read_text(encoding="utf-8"))
    summary = json.loads((folder / "report" / "summary.json").read_text())
    return folder / "report", summary, page, err


def _png(data: bytes) -> tuple[int, int]:
    """Width and height of a PNG that decodes completely (PIL raises otherwise)."""
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        image.load()
        return image.size


def test_every_figure_shown_is_a_figure_file_that_decodes(report):
    out, _, page, _ = report
    files = {hashlib.sha256(p.read_bytes()).hexdigest(): p for p in (out / "figures").glob("*.png")}
    assert len(files) >= 8
    for path in files.values():
        width, height = _png(path.read_bytes())
        assert width > 50 and height > 50, path
    shown = []
    for src in page.images:
        if src.startswith("data:"):
            header, _, payload = src.partition(",")
            assert header == "data:image/png;base64", header
            data = base64.b64decode(payload, validate=True)
        else:  # a linked figure must exist beside the page
            assert not src.startswith(("http:", "https:", "/")), src
            data = (out / src).read_bytes()
        _png(data)
        shown.append(hashlib.sha256(data).hexdigest())
    assert set(shown) <= set(files), "the page shows a figure that is not in figures/"
    assert set(shown) == set(files), "a figure in figures/ is not on the page"


def test_every_link_of_the_page_leads_somewhere(report):
    out, _, page, _ = report
    assert page.links
    for href in page.links:
        if href.startswith("#"):
            assert href[1:] in page.ids, href
        elif not href.startswith(("http:", "https:", "mailto:")):
            assert (out / href).exists(), href


def test_the_ranking_table_lists_every_set_once_in_ranking_order(report):
    _, summary, page, _ = report
    header, *rows = page.ranking
    assert [text for _, text in header][:3] == ["rank", "set", "n"]
    names = [dict(row)["name"] for row in rows]
    assert [n.removesuffix(" (reference)") for n in names] == summary["ranking"]
    assert sorted(summary["ranking"]) == sorted(["SDSS", *SIMS])
    assert f"{summary['reference']} (reference)" in names
    for rank, row in enumerate(rows, start=1):
        cells = [text for _, text in row]
        name = cells[1].removesuffix(" (reference)")
        assert cells[0] == str(rank)
        assert int(cells[2]) == summary["sets"][name]["n"] == (N_REFERENCE if name == "SDSS" else N_SIM)
        assert float(cells[3]) == pytest.approx(summary["sets"][name]["mean_llr"], rel=1e-3, abs=1e-3)
    means = [summary["sets"][name]["mean_llr"] for name in summary["ranking"]]
    assert means == sorted(means, reverse=True)


def test_the_tables_hold_every_image(report):
    out, summary, _, _ = report
    with open(out / "scores.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    counts = {name: sum(r["set"] == name for r in rows) for name in summary["sets"]}
    assert counts == {"SDSS": N_REFERENCE, **{name: N_SIM for name in SIMS}}
    with open(out / "summary.csv", newline="") as fh:
        assert {r["set"] for r in csv.DictReader(fh)} == set(summary["sets"])


def test_a_guard_that_fires_is_in_the_warnings_box_beside_its_row_and_on_stderr(report):
    _, summary, page, err = report
    warnings = summary["warnings"]
    small = [w for w in warnings if "images (< 30)" in w]
    assert sorted(w.split(":")[0] for w in small) == sorted(SIMS)  # both 20-image sets, not the reference
    assert page.warnings == warnings  # the box holds every warning, as summary.json has them
    assert "warnings" in page.ids
    for name in SIMS:
        assert summary["sets"][name]["warnings"] == [w for w in small if w.startswith(f"{name}:")]
    assert summary["sets"]["SDSS"]["warnings"] == []
    for row in page.ranking[1:]:
        cells = dict(row)
        name = cells["name"].removesuffix(" (reference)")
        if name in SIMS:
            assert f"only {N_SIM} images" in cells["warn"]
        else:
            assert "warn" not in cells  # the reference's warnings cell is plain: nothing fired for it
    printed = [line for line in err.splitlines() if line.startswith("warning: ")]
    for text in warnings:
        assert f"warning: {' '.join(text.split())}" in printed
