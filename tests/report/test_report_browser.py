"""The comparison report as a reader meets it: index.html opened in headless Chromium at 1280 px.

One real run, kept small: `morphllr synth` writes a 40-galaxy observed test set and two 20-galaxy
simulations, `morphllr compare` scores them with the two shipped 3-member ensembles (so the
retraining statements and the models' validation curves are on the page).  The browser checks
what a screen shows: the tables fit the window (no horizontal scrollbar), every figure decodes,
the summary at the top names the best and the worst set, every set has its folded details, and
no cell shows an unexplained empty value ("– ± –" or a bare "–").
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import morphllr
from clitools import synth_and_compare

PRETRAINED = Path(morphllr.__file__).resolve().parent / "pretrained"
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium (chromium) is not installed: the "
                                                             "page's layout and image decoding are not checked")
SIMS = {"good": "sim-good", "smooth": "sim-smooth"}

pytestmark = pytest.mark.timeout(300)

# Appended to a copy of the page: after load, report what the browser laid out and decoded.
_CHECK_SCRIPT = """
<script>
window.addEventListener('load', () => {
  const doc = document.documentElement, body = document.body;
  const ranking = document.getElementById('ranking');
  const summary = document.getElementById('summary');
  const bodyRight = body.getBoundingClientRect().right - parseFloat(getComputedStyle(body).paddingRight);
  const imgs = Array.from(document.images);
  const cells = Array.from(document.querySelectorAll('td, th')).map(c => c.textContent.trim());
  const out = document.createElement('pre');
  out.id = 'morphllr-check';
  out.textContent = 'CHECK' + JSON.stringify({
    inner_width: window.innerWidth,
    doc_scroll: doc.scrollWidth, doc_client: doc.clientWidth,
    ranking_scroll: ranking ? ranking.scrollWidth : -1, ranking_client: ranking ? ranking.clientWidth : -1,
    ranking_rows: ranking ? ranking.querySelectorAll('tr').length - 1 : -1,
    ranking_headers: ranking ? Array.from(ranking.querySelectorAll('th')).map(h => h.textContent.trim()) : [],
    too_wide: Array.from(document.querySelectorAll('table'))
      .filter(t => t.offsetParent !== null && (t.scrollWidth > t.clientWidth + 1
                                               || t.getBoundingClientRect().right > bodyRight + 1))
      .map(t => t.id || t.className || 'table'),
    images: imgs.length, decoded: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
    empty_pm: cells.filter(t => /–\\s*±\\s*–|±\\s*–/.test(t)),
    bare_dash: cells.filter(t => t === '–' || t === '—'),
    summary: summary ? summary.textContent : '',
    summary_first: !!(summary && ranking && (summary.compareDocumentPosition(ranking) & 4)),
    details: Array.from(document.querySelectorAll('details.set')).map(d => ({
      id: d.id, open: d.open, summary: d.querySelector('summary').textContent,
      images: d.querySelectorAll('img').length})),
    first_heading: document.querySelector('h1') ? document.querySelector('h1').textContent : ''
  }) + 'END';
  body.appendChild(out);
});
</script>
"""


def _browser_check(page: Path, tmp_path: Path, width: int = 1280, height: int = 900) -> dict:
    """Open ``page`` in headless Chromium at ``width`` x ``height`` and return what the check script saw."""
    probe = tmp_path / f"probe_{width}.html"
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", _CHECK_SCRIPT + "</body>"),
                     encoding="utf-8")
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
           f"--window-size={width},{height}", f"--user-data-dir={tmp_path / 'profile'}",
           "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    found = re.search(r"CHECK(\{.*?\})END", done.stdout, re.S)
    assert found, f"no check marker in the DOM; chromium said: {done.stderr[-2000:]}"
    import html

    return json.loads(html.unescape(found.group(1)))




@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """(report folder, summary.json, compare's stdout): one compare run with both shipped ensembles."""
    folder = tmp_path_factory.mktemp("browser")
    report_dir, out, err, universe = synth_and_compare(folder, SIMS, PRETRAINED / "obs", PRETRAINED / "arch")
    return folder / "report", json.loads((folder / "report" / "summary.json").read_text()), out


def _slug(name: str) -> str:
    from morphllr.report.figures import _slug as slug

    return slug(name)


def _details_blocks(page: str) -> dict[str, str]:
    """Each set's folded details on the page: element id -> its HTML."""
    return dict(re.findall(r"<details class='set' id='([^']+)'>(.*?)</details>", page, re.S))


@needs_chromium
def test_the_page_fits_1280_px_and_every_figure_decodes(report, tmp_path):
    out, summary, _ = report
    check = _browser_check(out / "index.html", tmp_path)
    assert check["inner_width"] == 1280
    assert check["ranking_rows"] == len(summary["ranking"]) == 3
    assert check["ranking_scroll"] <= check["ranking_client"], check
    assert check["doc_scroll"] <= check["doc_client"], check  # no horizontal scrollbar on the page
    assert check["too_wide"] == [], check["too_wide"]  # no table wider than the text column or scrolled inside
    assert check["images"] >= 8 and check["decoded"] == check["images"]  # folded details' figures included
    assert "realistic" in check["first_heading"]
    # a slightly wider window too (the verdict column was cut there before)
    wide = _browser_check(out / "index.html", tmp_path, width=1400)
    assert wide["ranking_scroll"] <= wide["ranking_client"] and wide["doc_scroll"] <= wide["doc_client"]


@needs_chromium
def test_units_in_the_headers_and_no_unexplained_empty_cell(report, tmp_path):
    out, _, _ = report
    check = _browser_check(out / "index.html", tmp_path)
    headers = check["ranking_headers"]
    assert headers[:3] == ["rank", "set", "n"]
    for label in ("mean LLR", "95% interval", "ΔLLR vs reference"):
        header = next(h for h in headers if h.startswith(label))
        assert "[nats/image]" in header, header
    assert check["empty_pm"] == [], check["empty_pm"]
    assert check["bare_dash"] == [], check["bare_dash"]  # an empty value always carries its footnote mark
    page = (out / "index.html").read_text(encoding="utf-8")
    for letter in set(re.findall(r"– \(([a-z])\)", page)):
        assert f"({letter}) " in page, letter  # ... and the footnote says why
    # the identity is said above the table (and in "how to read"), not once per set
    assert page.count("KL(q‖p_arch) − KL(q‖p_obs)") <= 2 and "KL(q||p_arch)" not in page


@needs_chromium
def test_the_summary_at_the_top_names_the_best_and_the_worst_set(report, tmp_path):
    out, summary, _ = report
    check = _browser_check(out / "index.html", tmp_path)
    assert check["summary_first"], "the summary must come before the ranking table"
    text = check["summary"]
    others = [n for n in summary["ranking"] if n != summary["reference"]]
    best, worst = summary["sets"][others[0]], summary["sets"][others[-1]]
    from morphllr.report.formatting import fmt

    assert f"Most realistic of the 2 other sets: {others[0]}, ΔLLR = {fmt(best['delta_llr'])} ± " in text, text
    assert f"Least realistic: {others[-1]}, ΔLLR = {fmt(worst['delta_llr'])} ± " in text, text
    assert "nats per image" in text
    # the matched comparison and retraining, read from summary.json's fields
    matched = summary["matched"]["delta_llr"]
    survives = sorted(summary["ranking"], key=lambda n: matched[n], reverse=True) == summary["ranking"]
    assert ("the order survives" if survives else "the order changes") in text
    assert f"{summary['model_pairs']} model pairs" in text and "ranking agreement" in text
    for name in others:
        stable = summary["sets"][name]["stable"]
        sentence = "survives retraining for" if stable else "may not for"
        assert re.search(sentence + r" [^;.]*\b" + re.escape(name), text), (name, text)
    n_warnings = len(summary["warnings"])
    assert f"{n_warnings} warnings" in text and n_warnings == 2  # the two 20-image sets


@needs_chromium
def test_every_set_has_folded_details_with_its_figures(report, tmp_path):
    out, summary, _ = report
    check = _browser_check(out / "index.html", tmp_path)
    details = check["details"]
    assert [d["summary"].split(":")[0].removesuffix(" (reference)") for d in details] == summary["ranking"]
    assert not any(d["open"] for d in details), "per-set details must be closed by default"
    page = (out / "index.html").read_text(encoding="utf-8")
    blocks = _details_blocks(page)
    assert list(blocks) == [d["id"] for d in details]
    for name, block in zip(summary["ranking"], blocks.values()):
        shown = {hashlib.sha256(base64.b64decode(src)).hexdigest()
                 for src in re.findall(r"src='data:image/png;base64,([^']+)'", block)}
        for kind in ("gallery", "profile"):
            figure = out / "figures" / f"{kind}_{_slug(name)}.png"
            assert figure.is_file(), figure
            assert hashlib.sha256(figure.read_bytes()).hexdigest() in shown, (name, kind)
        entry = summary["sets"][name]
        assert "median LLR" in block and "AUROC vs reference" in block and "[% of model pixels]" in block
        if "n_no_central" in entry:  # images without a central source: the count, or "unknown"
            assert "Images without a central source" in block
            if entry["n_no_central"] is None:
                assert "unknown" in block
            else:
                assert f"of {entry.get('n_images', entry['n'])}" in block
    # a link to each set's details from its ranking row
    for sid in blocks:
        assert f"href='#{sid}'" in page


def test_the_models_section_shows_each_member_and_its_validation_curve(report):
    out, summary, _ = report
    page = (out / "index.html").read_text(encoding="utf-8")
    provenance = summary["provenance"]
    section = page[page.index("id='provenance'"):page.index("</table>", page.index("id='provenance'"))]
    rows = section.split("<tr>")[2:]
    members = provenance["obs"]["members"] + provenance["arch"]["members"]
    assert len(rows) == len(members) == 6
    for row, m in zip(rows, members):
        assert m["data"] in row and m["data_fingerprint"][:12] in row and str(m["n_images"]) in row
        history = m["val_history"]
        assert history and all(len(p) == 2 for p in history)  # [step, val bits/dim] from model.json
        assert [p[0] for p in history] == sorted(p[0] for p in history)
        assert row.count("<svg") == 1 and "<polyline" in row  # the curve, inline
        assert ("<b>no</b>" if m["converged"] is False else "yes") in row
    # the domain check: one row per set, every guard named
    domain = page[page.index("id='domain'"):page.index("</table>", page.index("id='domain'"))]
    assert domain.count("<tr>") == 1 + len(summary["ranking"])
    assert "sky bits/dim under p_obs" in domain and "galaxy size" in domain


def test_an_empty_value_is_explained_once_on_the_page_and_in_the_terminal(report, tmp_path):
    """Without a matched comparison (no shared catalogue property) the cells say why, once, never "– ± –"."""
    from rich.console import Console

    from morphllr.report.html import render_html
    from morphllr.report.terminal import print_ranking

    out, summary, _ = report
    summary = json.loads(json.dumps(summary))
    summary["matched"] = {}
    reason = "no catalogue property (mass, size, Sérsic index) is present in every set"
    summary["notes"] = [f"matched comparison skipped: {reason}"]
    summary["sets"]["good"]["model_std"] = None
    page = render_html(summary, [], out / "figures", summary["notes"])
    assert "– ± –" not in page and "± –" not in page
    assert page.count(f"not computed: {reason}") >= 2  # the summary's sentence + one footnote per details table
    assert f"Matched comparison (the same galaxy make-up in every set): not computed: {reason}." in page
    console = Console(record=True, width=80)
    print_ranking(summary, console)
    text = console.export_text()
    assert "[nats/image]" in text and "– ± –" not in text
    mark = re.search(r"– \(([a-z])\)", text)
    assert mark and text.count(f"({mark.group(1)}) not computed: {reason}") == 1


def _summary_items(page: str) -> list[str]:
    """The summary list's items as text."""
    section = page[page.index("<section id='summary'>"):page.index("</section>", page.index("<section id='summary'>"))]
    return [re.sub(r"<[^>]+>", "", item) for item in re.findall(r"<li>(.*?)</li>", section, re.S)]


def test_the_domain_sentence_names_the_guards_not_judged(report):
    """A set without sizes (or sky) is not "inside" on those guards: the summary says which were not judged."""
    from morphllr.report.html import domain_findings, render_html

    out, summary, _ = report
    summary = json.loads(json.dumps(summary))
    name = [n for n in summary["ranking"] if n != summary["reference"]][0]
    domain = summary["sets"][name]["domain"]
    assert domain, "the shipped models record their training domain"
    domain["size_re"] = domain["size_area"] = None  # no central-source mask, no half-light radius
    not_judged = [label for label, status, *_ in domain_findings(summary, name) if status is None]
    assert "galaxy size" in not_judged
    sentence = next(x for x in _summary_items(render_html(summary, [], out / "figures", summary["notes"]))
                    if "training domain" in x)
    assert f"not judged: {name} ({', '.join(not_judged)})" in sentence, sentence
    assert "(sky, whole-image bits/dim, galaxy sizes)" not in sentence
    if not sentence.startswith("Outside"):
        assert "inside the models' training domain on every guard judged" in sentence, sentence


def test_nan_values_and_intervals_are_footnoted_and_the_files_line_is_complete(report):
    """NaN means and [None, None] / [NaN, x] intervals read as "– (a)" with a footnote, never "[–, –]"."""
    from rich.console import Console

    from morphllr.report.formatting import Footnotes, value_or_empty
    from morphllr.report.html import render_html
    from morphllr.report.terminal import print_ranking

    notes = Footnotes()
    for value in (None, float("nan"), [None, None], [float("nan"), 1.0], (1.0, float("inf"))):
        assert value_or_empty(value, str, "not computed", notes) == "– (a)", value
    assert value_or_empty([1.0, 2.0], lambda v: f"[{v[0]}, {v[1]}]", "x", notes) == "[1.0, 2.0]"
    out, summary, _ = report
    summary = json.loads(json.dumps(summary))
    for name in summary["ranking"][:2]:  # the reference among them
        summary["sets"][name].update(mean_llr=float("nan"), ci95=[None, None])
    page = render_html(summary, [], out / "figures", summary["notes"])
    assert "[–, –]" not in page and "– –" not in page
    reference = next(x for x in _summary_items(page) if x.startswith("Reference"))
    assert "mean LLR not computed, 95 % interval not computed" in reference, reference
    for block in list(_details_blocks(page).values())[:2]:
        heading = re.search(r"<summary>(.*?)</summary>", block, re.S).group(1)
        mark = re.search(r"mean LLR – \(([a-z])\) – \(\1\)", heading)
        assert mark, heading
        assert f"({mark.group(1)}) not computed" in block
    files = page[page.index("<p>Files:"):]
    assert "ranking.tex" in files and "report_data.h5" in files
    console = Console(record=True, width=120)
    print_ranking(summary, console)
    assert "[–, –]" not in console.export_text() and "[nan" not in console.export_text()
