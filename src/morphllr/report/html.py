"""The comparison report's page: one self-contained ``index.html``.

Every figure (:mod:`morphllr.report.figures`) is saved under ``figures/`` and also embedded in
``index.html`` as a base64 data URI, so the page can be mailed or copied on its own.  A figure
whose inputs are missing (e.g. no stellar-mass column) is skipped with a note on the page, never
an error.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

import numpy as np

from morphllr.report.figures import STABILITY_SECTION, draw_figures
from morphllr.report.formatting import MARK_LEGEND, fmt, multi_pair, sky_split_rows, stability_delta, stability_mark

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:0.92em;display:block;max-width:100%;overflow-x:auto}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right} td{white-space:nowrap}
th{background:#f3f3f3} td.name{text-align:left;font-weight:bold} td.text{text-align:left;white-space:normal;min-width:14em}
figure{margin:1.5em 0} img{max-width:100%} figcaption{font-size:0.9em;color:#444}
.note{color:#8a5a00} code{background:#f4f4f4;padding:0 3px}
.warnings{border:2px solid #c0392b;background:#fdecea;color:#611a15;padding:0.5em 1em;margin:1em 0}
.warnings h2{margin:0.2em 0;font-size:1.1em} td.warn{text-align:left;white-space:normal;min-width:16em;color:#611a15}
"""


def _ranking_table(summary: dict) -> str:
    matched = summary.get("matched") or {}
    multi = multi_pair(summary)
    # masked pixels' terms are not in the LLR: with masks, show the share and the LLR per unmasked pixel
    masked = any((summary["sets"][n].get("masked_share") or 0) > 0 for n in summary["ranking"])
    head = ("<tr><th>rank</th><th>set</th><th>n</th><th>mean LLR [nats]</th><th>95% interval [nats]</th>"
            "<th>median [nats]</th><th>ΔLLR vs reference [nats]</th><th>matched ΔLLR [nats]</th>"
            + ("<th>model σ of ΔLLR [nats]</th><th>survives retraining</th>" if multi else "")
            + "<th>AUROC vs reference</th><th>KS</th>"
            "<th>outliers</th>"
            + ("<th>masked share</th><th>mean LLR per unmasked pixel [nats]</th>" if masked else "")
            + "<th class='text'>E_q[LLR] = KL(q‖p_arch) − KL(q‖p_obs)</th><th>warnings</th></tr>")
    rows = []
    for rank, name in enumerate(summary["ranking"], 1):
        e = summary["sets"][name]
        is_ref = name == summary["reference"]
        ref = " (reference)" if is_ref else ""
        md = (matched.get("delta_llr") or {}).get(name)
        me = (matched.get("delta_llr_err") or {}).get(name)
        stab = (f"<td>{fmt(e.get('model_std'), 3)}</td><td>{stability_mark(e, is_ref)}</td>" if multi else "")
        mask_cells = (f"<td>{100 * (e.get('masked_share') or 0):.3g} %</td>"
                      f"<td>{fmt(e.get('mean_llr_per_pixel'), 3)}</td>" if masked else "")
        rows.append(
            f"<tr><td>{rank}</td><td class='name'>{html.escape(name)}{ref}</td><td>{e['n']}</td>"
            f"<td>{fmt(e['mean_llr'])}</td><td>[{fmt(e['ci95'][0])}, {fmt(e['ci95'][1])}]</td>"
            f"<td>{fmt(e['median_llr'])}</td><td>{fmt(e['delta_llr'])} ± {fmt(e['delta_llr_err'], 2)}</td>"
            f"<td>{fmt(md)} ± {fmt(me, 2)}</td>{stab}<td>{fmt(e['auroc_vs_reference'], 3)}</td>"
            f"<td>{fmt(e['ks_vs_reference'], 3)}</td><td>{100 * e.get('outlier_fraction', np.nan):.3g} %</td>"
            f"{mask_cells}<td class='text'>{html.escape(e['verdict'])}</td>{_warning_cell(e, name)}</tr>")
    readings = "".join(f"<li><b>{html.escape(name)}</b>: {html.escape(summary['sets'][name]['reading'])}</li>"
                       for name in summary["ranking"])
    groups = ""
    if summary.get("group_col"):
        groups = (f"<p>Intervals and errors resample groups of images of one object (catalogue column "
                  f"<code>{html.escape(summary['group_col'])}</code>): "
                  + ", ".join(f"{html.escape(n)} {summary['sets'][n].get('n_groups')} groups"
                              for n in summary["ranking"]) + ".</p>")
    legend = f"<p>{html.escape(MARK_LEGEND)}</p>" if multi else ""
    return (f"<table id='ranking'>{head}{''.join(rows)}</table>{legend}{groups}"
            "<p>Outliers: share of the set below the reference's 0.15th LLR percentile "
            f"({fmt(summary['outlier_threshold_llr'])} nats).</p><ul>{readings}</ul>")


def short_warning(text: str, name: str) -> str:
    """A warning's headline for the ranking table (the set's name and the details dropped)."""
    for prefix in (f"{name} (the reference): ", f"{name}: "):
        if text.startswith(prefix):
            text = text[len(prefix):]
            break
    cuts = [i for i in (text.find("; "), text.find(": median"), text.find(" (")) if i > 0]
    text = text[:min(cuts)] if cuts else text
    return text if len(text) <= 90 else text[:89] + "…"


def _warning_cell(entry: dict, name: str) -> str:
    """The ranking table's cell beside a set's row: its warnings' headlines (in full in the box at the top), or –."""
    found = entry.get("warnings") or []
    if not found:
        return "<td>–</td>"
    return ("<td class='warn'>" + "<br>".join(f"⚠ {html.escape(short_warning(w, name))}" for w in found)
            + " (<a href='#warnings'>details</a>)</td>")


def warnings_box(summary: dict) -> str:
    """The box at the top of the page listing every warning (empty string when there is none)."""
    found = summary.get("warnings") or []
    if not found:
        return ""
    items = "".join(f"<li>{html.escape(w)}</li>" for w in found)
    return (f"<div class='warnings' id='warnings'><h2>⚠ {len(found)} warning{'s' if len(found) > 1 else ''}: read "
            f"before quoting any number below</h2><ul>{items}</ul></div>")


def _short(fingerprint: Any) -> str:
    return str(fingerprint)[:12] if fingerprint else "–"


def _yes_no(value: Any) -> str:
    return "unknown" if value is None else ("yes" if value else "no")


def provenance_rows(summary: dict) -> list[list[str]]:
    """One row per model member: side, member, training data, N images, steps, val bits/dim, fingerprint, converged."""
    rows = []
    for side in ("obs", "arch"):
        prov = (summary.get("provenance") or {}).get(side) or {}
        for m in prov.get("members", []):
            n = m.get("n_images")
            split = (f" ({m.get('train_images')} train + {m.get('val_images')} val)" if n is not None else "")
            rows.append([prov.get("label", side), str(m.get("name")), str(m.get("data") or "–"),
                         ("–" if n is None else str(n)) + split, fmt(m.get("steps")), fmt(m.get("val_bits_per_dim")),
                         _short(m.get("data_fingerprint")), _yes_no(m.get("converged")),
                         "yes" if m.get("domain_recorded") else "no"])
    return rows


PROVENANCE_HEADERS = ("model", "member", "trained on", "N images", "steps", "val bits/dim", "data fingerprint",
                      "converged", "domain recorded")


def _provenance_table(summary: dict) -> str:
    rows = provenance_rows(summary)
    if not rows:
        return ""
    head = "".join(f"<th>{h}</th>" for h in PROVENANCE_HEADERS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    rules = summary.get("domain_rules") or {}
    rule_text = "".join(f"<li>{html.escape(k)}: {html.escape(str(v))}</li>" for k, v in rules.items())
    return (f"<h2>The models</h2><table id='provenance'><tr>{head}</tr>{body}</table>"
            + (f"<p>Domain guards (each scored set against what the models saw in training):</p><ul>{rule_text}</ul>"
               if rule_text else ""))


#: model pairs listed one by one in the per-pair ranking table (the rest are summarised)
MAX_PAIR_ROWS = 25


def _interval(v) -> str:
    return "–" if v is None else f"[{fmt(v[0])}, {fmt(v[1])}]"


def _stability_section(summary: dict, figure_html: str) -> str:
    """"Stability under retraining": ranking agreement, per-set model spread and per-pair rankings."""
    title = f"<h2>{STABILITY_SECTION}</h2>"
    if not multi_pair(summary):
        return (f"{title}<p class='note' id='stability'>Model variance is not measured: this report uses one p_obs "
                "and one p_arch model (one model pair), so every interval above covers galaxy sampling only. "
                "Retraining the models with other seeds can move ΔLLRs by more than these intervals and reorder "
                "sets; train each model with several seeds (<code>morphllr train --seeds</code>) and compare the "
                "ensembles to measure how far this ranking survives retraining.</p>")
    n_models = summary.get("n_models") or {}
    agreement = summary.get("ranking_agreement")
    head = ("<tr><th>set</th><th>ΔLLR vs reference [nats]</th><th>pairing</th><th>model σ [nats]</th>"
            "<th>same sign [% of pairs]</th><th>ΔLLR 95% total [nats]</th><th>mean LLR 95% total [nats]</th>"
            "<th>survives retraining</th></tr>")
    rows = []
    for name in summary["ranking"]:
        e = summary["sets"][name]
        is_ref = name == summary["reference"]
        delta, err = stability_delta(e)
        pairing = e.get("delta_llr_pairing")
        pairing_text = "–" if pairing is None else (f"paired ({e.get('n_paired')} galaxies)" if pairing == "paired"
                                                    else "unpaired")
        share = e.get("sign_agreement")
        rows.append(
            f"<tr><td class='name'>{html.escape(name)}{' (reference)' if is_ref else ''}</td>"
            f"<td>{'–' if is_ref else f'{fmt(delta)} ± {fmt(err, 2)}'}</td><td>{pairing_text}</td>"
            f"<td>{fmt(e.get('model_std'), 3)}</td><td>{'–' if share is None else f'{100 * share:.3g} %'}</td>"
            f"<td>{_interval(e.get('delta_llr_ci95_total'))}</td><td>{_interval(e.get('ci95_total'))}</td>"
            f"<td>{stability_mark(e, is_ref)}</td></tr>")
    pair_rows = []
    for p in (summary.get("ranking_by_pair") or [])[:MAX_PAIR_ROWS]:
        pair_rows.append(f"<tr><td class='name'>{html.escape(p['obs'])}</td><td class='name'>{html.escape(p['arch'])}"
                         f"</td><td class='text'>{html.escape(' > '.join(p['ranking']))}</td>"
                         f"<td>{fmt(p.get('agreement'), 3)}</td></tr>")
    more = len(summary.get("ranking_by_pair") or []) - MAX_PAIR_ROWS
    totals = ("" if (n_models.get("obs", 0) >= 3 and n_models.get("arch", 0) >= 3) else
              "<p class='note'>The total intervals need at least 3 models per side; they are left out.</p>")
    return (
        f"{title}<p id='stability'>{n_models.get('obs')} p_obs × {n_models.get('arch')} p_arch models = "
        f"{summary.get('model_pairs')} model pairs (LLR_ij = log p_obs,i − log p_arch,j; the LLR above is the mean "
        f"over pairs). <b>Ranking agreement: {fmt(agreement, 3)}</b> = for every model pair, the share of pairs of "
        "sets it orders as the ensemble ranking does, averaged over model pairs (1 = every pair ranks the sets "
        "alike; 0.5 = no better than a coin).</p>"
        "<p>Model σ: standard deviation over model pairs of the set's ΔLLR against the reference (paired per "
        "galaxy when the two sets show the same galaxies): the absolute LLR moves between retrainings while the "
        "order need not, so the spread is measured on the difference. Total intervals: hierarchical bootstrap "
        "(models resampled per side, then galaxies), never narrower than the galaxy-only intervals.</p>"
        f"<table id='stability-table'>{head}{''.join(rows)}</table><p>{html.escape(MARK_LEGEND)}</p>{totals}"
        f"{figure_html}"
        "<h3>Ranking under each model pair</h3>"
        f"<table id='pair-rankings'><tr><th>p_obs member</th><th>p_arch member</th><th>ranking</th>"
        f"<th>agreement</th></tr>{''.join(pair_rows)}</table>"
        + (f"<p>… and {more} more model pairs (all in summary.json, ranking_by_pair).</p>" if more > 0 else ""))


def _panels_table(summary: dict) -> str:
    panels = summary.get("mass_panels") or {}
    if not panels:
        return ""
    labels = sorted({lab for p in panels.values() for lab in p}, key=lambda s: float(s.strip(">").split("-")[0]))
    head = "<tr><th>set</th>" + "".join(f"<th>log M* {html.escape(l)}: n</th><th>mean LLR</th>"
                                        f"<th>ΔLLR</th>" for l in labels) + "</tr>"
    rows = []
    for name in summary["ranking"]:
        if name not in panels:
            continue
        cells = []
        for lab in labels:
            e = panels[name].get(lab)
            cells.append("<td>–</td><td>–</td><td>–</td>" if e is None else
                         f"<td>{e['n']}</td><td>{fmt(e['mean_llr'])}</td>"
                         f"<td>{fmt(e['delta_llr'])} ± {fmt(e['delta_llr_err'], 2)}</td>")
        rows.append(f"<tr><td class='name'>{html.escape(name)}</td>{''.join(cells)}</tr>")
    return ("<h2>Stellar-mass panels</h2><p>The same statistics within log10(M*/M☉) panels "
            "(paper: 9.5–10, 10–10.5, &gt; 10.5); ΔLLR is against the reference in the same panel.</p>"
            f"<table id='mass-panels'>{head}{''.join(rows)}</table>")


# --------------------------------------------------------------------------- sky split
SKY_HEADERS = ("set", "sky LLR per pixel [nats/pixel]", "95% interval [nats/pixel]", "share of total LLR [%]",
               "sky pixels [% of model pixels]", "AUROC of sky pixels vs reference", "AUROC of the rest vs reference")
SKY_READING = ("Each image's LLR is split into its empty-sky pixels (no source pixel of the segmentation map falls "
               "into them) and the rest. A sky LLR per pixel near 0 (and near the reference's) with an AUROC of "
               "the sky pixels ≈ 0.5 means the background cancels in the ratio, so the set's LLR comes from the "
               "galaxies; otherwise the set's sky, PSF or noise differ from the training data and part of its "
               "LLR measures that, not morphology.")


def _sky_table(summary: dict) -> str:
    rows, footnotes = sky_split_rows(summary)
    if not rows:
        return ""
    head = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in SKY_HEADERS) + "</tr>"
    body = []
    for label, cells in rows:
        if isinstance(cells, str):
            tds = f"<td colspan='{len(SKY_HEADERS) - 1}'>{html.escape(cells)}</td>"
        else:
            tds = "".join(f"<td>{html.escape(c)}</td>" for c in cells)
        body.append(f"<tr><td class='name'>{html.escape(label)}</td>{tds}</tr>")
    notes = "".join(f"<br>{html.escape(f)}" for f in footnotes)
    return ("<h2>LLR split: empty sky vs the rest</h2>"
            f"<p>{html.escape(SKY_READING)} Share = mean sky LLR / mean LLR of the set; AUROC of the sky pixels "
            "compares the images' sky LLR per pixel with the reference's, AUROC of the rest their LLR outside the "
            "empty sky.</p>"
            f"<table id='sky-split'>{head}{''.join(body)}</table>"
            + (f"<p class='note'>{notes[4:]}</p>" if footnotes else ""))


_HOW_TO_READ = """
<h2>How to read this report</h2>
<ul>
<li><b>LLR</b> = log p_obs(x) − log p_arch(x), in nats per image. p_obs is a PixelCNN++ trained on observed
galaxies, p_arch the same network trained on smooth Sérsic renderings (“archetypes”) of the same galaxies with the
same PSF and noise. A positive LLR means the image is better explained by real-galaxy structure than by a smooth
Sérsic profile.</li>
<li><b>Mean LLR</b> of a set with image distribution q estimates KL(q‖p_arch) − KL(q‖p_obs): the higher, the closer
the set is to the observations (relative to Sérsic blobs). Sets are ranked by it. The interval is a 95 % bootstrap
interval of the mean.</li>
<li><b>ΔLLR</b> = mean(set) − mean(reference) with a bootstrap error. The reference is held-out real data, so a
realistic simulation has ΔLLR ≈ 0; negative means less realistic than real galaxies. <b>Matched ΔLLR</b> draws the
same number of galaxies from every set in each cell of a stellar mass × size × Sérsic-index grid, so differences
in the populations (e.g. more massive galaxies in one simulation) do not masquerade as morphology.</li>
<li><b>Stability under retraining</b>: with ensembles of models trained with different seeds, every set is
scored under every p_obs × p_arch pair. Model σ is how much a set's ΔLLR moves between model pairs, the total
intervals add that model variance to the galaxy sampling (hierarchical bootstrap), and the ranking agreement says how
often a single model pair orders two sets as the ensemble does. A ranking is worth quoting only when it survives
retraining; with one model pair this is not measured.</li>
<li><b>AUROC</b>: probability that a random image of the set has a higher LLR than a random reference image (0.5 =
indistinguishable). <b>KS</b>: largest difference between the two cumulative LLR distributions.</li>
<li><b>LLR split</b>: the LLR of each image summed over its empty-sky pixels (no source pixel falls into them)
and over the rest. When a set shares sky, PSF and noise with the training data both models give its sky the same
density, so the sky LLR per pixel is ≈ 0 and its AUROC against the reference ≈ 0.5.</li>
<li><b>Pixel maps</b> show where in an image the two models disagree: the PixelCNN log-likelihood is a sum over
pixels of log p(pixel | pixels above and to the left), so each pixel's contribution can be mapped.</li>
<li>LLRs depend on the models and the preprocessing; compare numbers only within one report (same models).</li>
</ul>
"""


def _image_tag(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f"<img src='data:image/png;base64,{data}' alt='{html.escape(alt)}'>"


def render_html(summary: dict, figures: list[tuple[str, str, str]], figure_dir: Path, notes: list[str]) -> str:
    """The report page as one string (figures embedded).

    Args:
        summary: the content of summary.json.
        figures: (section, file name, caption) in page order.
        figure_dir: folder holding the PNG files.
        notes: things skipped and why.

    Returns:
        HTML text.
    """
    parts = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
             "<title>morphllr comparison</title>", f"<style>{_STYLE}</style></head><body>",
             "<h1>morphllr: how realistic is each set?</h1>",
             f"<p>Reference (held-out observed galaxies): <b>{html.escape(summary['reference'])}</b>. "
             f"Model head: <code>{html.escape(str(summary.get('models', {}).get('head')))}</code>. "
             "Sets ordered by mean LLR, most realistic first.</p>",
             warnings_box(summary),
             _ranking_table(summary), _provenance_table(summary)]
    stability_figures = "".join(
        f"<figure>{_image_tag(figure_dir / name, caption)}<figcaption>{html.escape(caption)}</figcaption></figure>"
        for sec, name, caption in figures if sec == STABILITY_SECTION)
    figures = [f for f in figures if f[0] != STABILITY_SECTION]
    parts += [_stability_section(summary, stability_figures), _sky_table(summary), _panels_table(summary)]
    matched = summary.get("matched") or {}
    if matched:
        props = ", ".join(f"{k} ({html.escape(str(v))})" for k, v in matched["properties"].items())
        parts.append(f"<p>Matched comparison: {matched['n_per_set']} galaxies per set per draw in "
                     f"{matched['n_cells']} grid cells of {props}; {matched['n_draws']} draws.</p>")
    section = None
    for sec, name, caption in figures:
        if sec != section:
            parts.append(f"<h2>{html.escape(sec)}</h2>")
            section = sec
        parts.append(f"<figure>{_image_tag(figure_dir / name, caption)}"
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    if notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li class='note'>{html.escape(n)}</li>" for n in notes)
                     + "</ul>")
    parts.append(_HOW_TO_READ)
    parts.append("<p>Files: <code>scores.csv</code> / <code>scores.parquet</code> (one row per image), "
                 "<code>summary.json</code>, <code>summary.csv</code>, <code>mass_panels.csv</code> (when masses are known), "
                 "<code>figures/</code>.</p></body></html>")
    return "\n".join(parts)


def write_report(result, folder: str | Path) -> Path:
    """Draw every figure and write ``index.html`` into ``folder`` (already a temporary folder).

    The result is only read: its notes (the figures' included) are complete before the report is
    written, so the report and ``summary.json`` may be written in either order.

    Args:
        result: a :class:`morphllr.comparison.result.CompareResult`.
        folder: output folder; ``figures/`` is created inside.

    Returns:
        path of index.html.
    """
    folder = Path(folder)
    figs = draw_figures(result, folder)
    page = render_html(result.summary, figs.items, figs.folder, result.notes)
    index = folder / "index.html"
    index.write_text(page, encoding="utf-8")
    return index
