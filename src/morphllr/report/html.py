"""The comparison report's page: one self-contained ``index.html`` an astronomer can read at a glance.

Top to bottom: a summary in words (the best and the worst set against the reference with their
errors, whether the order survives the matched comparison and retraining, what the models are,
the domain check, the warnings), the warnings box, the ranking table (rank, set, n, mean LLR, its
interval, ΔLLR vs the reference, survives retraining, verdict, warnings: it fits a 1280 px window
without a horizontal scrollbar), the models (per side and member: training data and fingerprint,
N images, steps, validation bits/dim with its curve as an inline SVG, converged or not) with every
set's domain check, stability under retraining, the empty-sky split, the stellar-mass panels, one
folded ``<details>`` per set (its secondary numbers, its images without a central source, its
gallery, radial profile and pixel maps: the figures ``gallery_<slug>.png``, ``profile_<slug>.png``,
``pixel_maps_<slug>.png``, whichever exist), the other figures, the notes and how to read the numbers.

Every header gives its unit (nats per image, nats per pixel, bits per dimension, %).  A cell
without a value shows ``– (a)`` and its reason once under its table (:class:`Footnotes`), never
``– ± –``.  The identity E_q[LLR] = KL(q‖p_arch) − KL(q‖p_obs) is said once, above the table.

Every figure (:mod:`morphllr.report.figures`) is saved under ``figures/`` and also embedded in
``index.html`` as a base64 data URI, so the page can be mailed or copied on its own.  A figure
whose inputs are missing (e.g. no stellar-mass column) is skipped with a note on the page, never
an error.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path, PurePath
from typing import Any, Sequence

from morphllr.comparison.result import stability_delta
from morphllr.report.figures import STABILITY_SECTION, _slug, draw_figures
from morphllr.report.formatting import (MARK_LEGEND, PER_IMAGE, PER_PIXEL, Footnotes, fmt, matched_delta,
                                        matched_reason, missing, multi_pair, plus_minus, sky_split_rows,
                                        stability_mark, strip_identity, value_or_empty)

#: the unit in sentences (headers give PER_IMAGE)
PER_IMAGE_WORDS = "nats per image"

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.4}
table{border-collapse:collapse;margin:1em 0;font-size:0.92em;max-width:100%}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right;vertical-align:top}
th{background:#f3f3f3;font-weight:600;text-align:center}
th .unit{display:block;font-weight:normal;color:#555;font-size:0.88em}
td{white-space:nowrap} td.name{text-align:left;font-weight:bold;white-space:normal;overflow-wrap:anywhere;min-width:6em}
td.text{text-align:left;white-space:normal} td.warn{text-align:left;white-space:normal;color:#611a15}
td.out{color:#a3140b;font-weight:600} table#domain td{text-align:center}
table#ranking{width:100%} table#ranking td.warn{min-width:12em}
.kvs{display:flex;flex-wrap:wrap;gap:0 1.5em;align-items:flex-start} .kvs table.kv{flex:1 1 440px}
table.kv th{text-align:left;white-space:normal;width:62%} table.kv th .unit{display:inline;margin-left:0.3em}
table.kv td{text-align:right;white-space:normal}
figure{margin:1.5em 0} img{max-width:100%;height:auto} figcaption{font-size:0.9em;color:#444}
.note{color:#8a5a00} code{background:#f4f4f4;padding:0 3px;overflow-wrap:anywhere}
.footnotes{font-size:0.9em;color:#444;margin-top:-0.6em}
.warnings{border:2px solid #c0392b;background:#fdecea;color:#611a15;padding:0.5em 1em;margin:1em 0}
.warnings h2{margin:0.2em 0;font-size:1.1em}
#summary{border:1px solid #9fb3c8;background:#f4f8fb;padding:0.4em 1em;margin:1em 0}
#summary h2{margin:0.3em 0;font-size:1.15em} #summary li{margin:0.25em 0}
details.set{border:1px solid #ccc;border-radius:4px;margin:0.6em 0;padding:0.3em 0.9em}
details.set>summary{cursor:pointer;padding:0.2em 0} details.set[open]>summary{border-bottom:1px solid #ddd}
.figs{display:flex;flex-wrap:wrap;gap:0 1.5em} .figs figure{flex:1 1 420px;margin:1em 0;min-width:0}
svg.spark{vertical-align:middle;background:#fafafa;border:1px solid #e3e3e3}
"""

#: the per-set figures placed in each set's folded details, by file-name prefix (``<prefix>_<slug>.png``)
PER_SET_FIGURES = ("gallery", "profile", "pixel_maps")

#: opens a set's details when a link (or the address) points at it
_OPEN_TARGET = """<script>
function morphllrOpenTarget(){var id=decodeURIComponent(location.hash.slice(1));var t=id&&document.getElementById(id);
if(t&&t.tagName==='DETAILS'){t.open=true;}}
window.addEventListener('hashchange',morphllrOpenTarget);morphllrOpenTarget();
</script>"""


def _e(text: Any) -> str:
    return html.escape(str(text))


def _th(label: str, unit: str | None = None) -> str:
    """A header cell with its unit on a line of its own."""
    return f"<th>{_e(label)}" + (f"<span class='unit'>[{_e(unit)}]</span>" if unit else "") + "</th>"


def _footnotes(notes: Footnotes) -> str:
    lines = notes.lines()
    return f"<p class='footnotes'>{'<br>'.join(_e(x) for x in lines)}</p>" if lines else ""


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def set_ids(summary: dict) -> dict[str, str]:
    """Each set's element id on the page (``set-<slug>``, made unique): its folded details."""
    ids: dict[str, str] = {}
    for name in summary["ranking"]:
        base = "set-" + _slug(name)
        sid, k = base, 2
        while sid in ids.values():
            sid, k = f"{base}-{k}", k + 1
        ids[name] = sid
    return ids


def _others(summary: dict) -> list[str]:
    """The sets other than the reference, in ranking order."""
    return [n for n in summary["ranking"] if n != summary["reference"]]


# --------------------------------------------------------------------------- the summary at the top
_PROPERTY_WORDS = {"log_mstar": "stellar mass", "size": "size", "sersic_n": "Sérsic index"}


def _against_reference(entry: dict) -> str:
    """``ΔLLR = -8.24 ± 19 nats per image (1σ): consistent with the reference (within 2σ)``."""
    delta, err = entry.get("delta_llr"), entry.get("delta_llr_err")
    if not _finite(delta):
        return "ΔLLR not computed"
    text = f"ΔLLR = {fmt(delta)}" + (f" ± {fmt(err, 2)}" if _finite(err) else "") + f" {PER_IMAGE_WORDS}"
    if not _finite(err) or err <= 0:
        return text
    z = delta / err
    if abs(z) < 2:
        return f"{text} (1σ): consistent with the reference (within 2σ)"
    return f"{text} (1σ): {'above' if z > 0 else 'below'} the reference by {abs(z):.1f}σ"


def _ranking_words(summary: dict, ids: dict[str, str]) -> str:
    ref = summary["reference"]
    r = summary["sets"][ref]
    ci = r.get("ci95")
    # no footnotes in the summary: a value not computed is said so in words, never "[–, –]"
    mean = "not computed" if missing(r.get("mean_llr")) else f"{fmt(r['mean_llr'])} {PER_IMAGE_WORDS}"
    interval = "not computed" if missing(ci) else f"[{fmt(ci[0])}, {fmt(ci[1])}]"
    ref_text = (f"Reference <b>{_e(ref)}</b> (held-out observed galaxies): mean LLR {mean}, "
                f"95 % interval {interval}.")
    others = _others(summary)

    def link(name: str) -> str:
        return f"<a href='#{ids[name]}'><b>{_e(name)}</b></a>"

    if not others:
        return f"{ref_text} No other set was compared."
    best, worst = others[0], others[-1]
    if len(others) == 1:
        return f"{ref_text} The one set compared with it, {link(best)}: {_against_reference(summary['sets'][best])}."
    return (f"{ref_text} Most realistic of the {len(others)} other sets: {link(best)}, "
            f"{_against_reference(summary['sets'][best])}. Least realistic: {link(worst)}, "
            f"{_against_reference(summary['sets'][worst])}.")


def _matched_words(summary: dict) -> str:
    matched = summary.get("matched") or {}
    if not matched:
        return f"Matched comparison (the same galaxy make-up in every set): {_e(matched_reason(summary))}."
    md, me = matched.get("delta_llr") or {}, matched.get("delta_llr_err") or {}
    names = [n for n in summary["ranking"] if _finite(md.get(n))]
    order = sorted(names, key=lambda n: md[n], reverse=True)
    props = ", ".join(_PROPERTY_WORDS.get(p, p) for p in matched.get("properties") or {})
    head = (f"Matched comparison ({_e(props)} drawn alike in every set: {matched.get('n_per_set')} galaxies per set "
            f"per draw, {matched.get('n_draws')} draws)")
    values = "; ".join(f"{_e(n)} {fmt(md[n])} ± {fmt(me.get(n), 2)}" for n in names if n != summary["reference"])
    missing = [n for n in summary["ranking"] if n not in names]
    left_out = f"; not matched: {_e(', '.join(missing))}" if missing else ""
    if order == names:
        return (f"{head}: <b>the order survives</b> (matched ΔLLR vs the reference, {PER_IMAGE_WORDS}: "
                f"{values}; the point estimates are compared, and differences within about 2σ are not significant "
                f"either way){left_out}.")
    return (f"{head}: <b>the order changes</b> to {_e(' > '.join(order))} (matched ΔLLR vs the reference, "
            f"{PER_IMAGE_WORDS}: {values}; the point estimates are compared), so part of the unmatched order comes "
            f"from the sets' different populations (differences within about 2σ are not significant either "
            f"way){left_out}.")


def _retraining_words(summary: dict) -> str:
    if not multi_pair(summary):
        return ("Retraining: <b>not measured</b>, one p_obs and one p_arch model (one model pair), so the intervals "
                "cover galaxy sampling only; train each model with several seeds (<code>morphllr train "
                "--seeds</code>) to measure it (<a href='#stability'>stability</a>).")
    n = summary.get("n_models") or {}
    others = _others(summary)
    stable = [x for x in others if summary["sets"][x].get("stable") is True]
    unstable = [x for x in others if summary["sets"][x].get("stable") is False]
    text = (f"Retraining ({n.get('obs')} p_obs × {n.get('arch')} p_arch models = {summary.get('model_pairs')} model "
            f"pairs): ranking agreement {fmt(summary.get('ranking_agreement'), 3)} (1 = every model pair orders the "
            "sets alike, 0.5 = a coin)")
    if stable:
        text += f"; the difference to the reference <b>survives retraining</b> for {_e(', '.join(stable))}"
    if unstable:
        text += f"; it <b>may not</b> for {_e(', '.join(unstable))} (its ΔLLR is within the model and galaxy spread)"
    unknown = [x for x in others if x not in stable and x not in unstable]
    if unknown:
        text += f"; not measured for {_e(', '.join(unknown))}"
    return text + " (<a href='#stability'>stability</a>)."


def _models_words(summary: dict) -> str:
    parts, unconverged = [], []
    for side in ("obs", "arch"):
        prov = (summary.get("provenance") or {}).get(side) or {}
        members = prov.get("members") or []
        if not members:
            continue
        data = sorted({str(m.get("data")) for m in members if m.get("data")})
        sizes = sorted({m.get("n_images") for m in members if m.get("n_images") is not None})
        what = (f"{len(members)} model{'s' if len(members) > 1 else ''} trained on "
                + (", ".join(data) if data else "unrecorded data")
                + (f" ({', '.join(str(s) for s in sizes)} images)" if sizes else ""))
        parts.append(f"{_e(prov.get('label', side))}: {_e(what)}")
        unconverged += [f"{prov.get('label', side)} {m.get('name')}" for m in members if m.get("converged") is False]
    if not parts:
        return ""
    text = "Models: " + "; ".join(parts)
    if unconverged:
        text += f"; <b>not converged</b>: {_e(', '.join(unconverged))}"
    return text + " (<a href='#models'>the models</a>)."


def _domain_words(summary: dict) -> str:
    names = summary["ranking"]
    unchecked = [n for n in names if not summary["sets"][n].get("domain")]
    findings = {n: domain_findings(summary, n) for n in names if n not in unchecked}
    outside = {n: [f[0] for f in v if f[1] == "outside"] for n, v in findings.items()}
    outside = {n: v for n, v in outside.items() if v}
    # the guards a checked set could not be judged on (no sky mask, no sizes, ...)
    not_judged = {n: [f[0] for f in v if f[1] is None] for n, v in findings.items()}
    not_judged = {n: v for n, v in not_judged.items() if v}
    if len(unchecked) == len(names):
        return ("Training domain: <b>not checked</b>, the models record no training domain "
                "(<a href='#domain-check'>domain check</a>).")
    if outside:
        text = "<b>Outside the models' training domain</b>: " + "; ".join(
            f"{_e(n)} ({_e(', '.join(v))})" for n, v in outside.items())
    elif not_judged:
        text = "Every checked set is inside the models' training domain on every guard judged"
    else:
        text = "Every checked set is inside the models' training domain (sky, whole-image bits/dim, galaxy sizes)"
    if not_judged:
        text += "; not judged: " + "; ".join(f"{_e(n)} ({_e(', '.join(v))})" for n, v in not_judged.items())
    if unchecked:
        text += f"; not checked: {_e(', '.join(unchecked))}"
    return text + " (<a href='#domain-check'>domain check</a>)."


def _summary_section(summary: dict, ids: dict[str, str]) -> str:
    found = summary.get("warnings") or []
    warn = (f"<b>{len(found)} warning{'s' if len(found) > 1 else ''}</b>: read <a href='#warnings'>the box "
            "below</a> before quoting any number." if found else "No warning fired.")
    items = [_ranking_words(summary, ids), _matched_words(summary), _retraining_words(summary),
             _models_words(summary), _domain_words(summary), warn]
    return ("<section id='summary'><h2>Summary</h2><ul>" + "".join(f"<li>{x}</li>" for x in items if x)
            + "</ul></section>")


# --------------------------------------------------------------------------- the ranking table
#: the identity and the words of the table, said once above it
RANKING_INTRO = (
    "LLR = log p_obs(x) − log p_arch(x) of each image, in nats per image. A set's mean LLR estimates "
    "E_q[LLR] = KL(q‖p_arch) − KL(q‖p_obs): the higher, the closer the set is to the observations relative to "
    "smooth Sérsic archetypes. Sets are ordered by it, most realistic first. Interval: 95 % bootstrap interval of "
    "the mean; ± = 1σ bootstrap error; ΔLLR = mean(set) − mean(reference). Verdict: “closer to observations” or "
    "“closer to Sérsic archetypes” when the interval excludes 0, “undecided” when it contains 0. Click a set's "
    "name for its other numbers and figures.")


def _ranking_table(summary: dict, ids: dict[str, str]) -> str:
    multi = multi_pair(summary)
    notes = Footnotes()
    head = ("<tr><th>rank</th><th>set</th><th>n</th>" + _th("mean LLR", PER_IMAGE) + _th("95% interval", PER_IMAGE)
            + _th("ΔLLR vs reference ± 1σ", PER_IMAGE) + ("<th>survives retraining</th>" if multi else "")
            + "<th>verdict</th><th>warnings</th></tr>")
    rows = []
    for rank, name in enumerate(summary["ranking"], 1):
        e = summary["sets"][name]
        is_ref = name == summary["reference"]
        ci = e.get("ci95")
        interval = value_or_empty(ci, lambda v: f"[{fmt(v[0])}, {fmt(v[1])}]", "not computed", notes)
        delta = ("0 (reference)" if is_ref else
                 plus_minus(e.get("delta_llr"), e.get("delta_llr_err"), "not computed", notes))
        stab = ""
        if multi:
            mark = stability_mark(e, is_ref)
            stab = f"<td>{notes.empty('not measured for this set') if mark == '–' else _e(mark)}</td>"
        rows.append(
            f"<tr><td>{rank}</td><td class='name'><a href='#{ids[name]}'>{_e(name)}</a>"
            f"{' (reference)' if is_ref else ''}</td><td>{e['n']}</td>"
            f"<td>{value_or_empty(e.get('mean_llr'), fmt, 'not computed', notes)}</td><td>{interval}</td>"
            f"<td>{delta}</td>{stab}<td class='text'>{_e(e.get('verdict', ''))}</td>{_warning_cell(e, name)}</tr>")
    groups = ""
    if summary.get("group_col"):
        groups = (f"<p>Intervals and errors resample groups of images of one object (catalogue column "
                  f"<code>{_e(summary['group_col'])}</code>): "
                  + ", ".join(f"{_e(n)} {summary['sets'][n].get('n_groups')} groups"
                              for n in summary["ranking"]) + ".</p>")
    legend = f"<p class='footnotes'>{_e(MARK_LEGEND)}</p>" if multi else ""
    return (f"<h2>Ranking</h2><p>{_e(RANKING_INTRO)}</p><table id='ranking'>{head}{''.join(rows)}</table>"
            f"{_footnotes(notes)}{legend}{groups}")


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
    """The ranking table's cell beside a set's row: its warnings' headlines (in full in the box at the top)."""
    found = entry.get("warnings") or []
    if not found:
        return "<td class='text'>none</td>"
    return ("<td class='warn'>" + "<br>".join(f"⚠ {_e(short_warning(w, name))}" for w in found)
            + " (<a href='#warnings'>details</a>)</td>")


def warnings_box(summary: dict) -> str:
    """The box at the top of the page listing every warning (empty string when there is none)."""
    found = summary.get("warnings") or []
    if not found:
        return ""
    items = "".join(f"<li>{_e(w)}</li>" for w in found)
    return (f"<div class='warnings' id='warnings'><h2>⚠ {len(found)} warning{'s' if len(found) > 1 else ''}: read "
            f"before quoting any number below</h2><ul>{items}</ul></div>")


# --------------------------------------------------------------------------- the models and the domain check
def sparkline(history: Sequence[Sequence[float]], tail_from: float | None = None, width: int = 150,
              height: int = 36) -> str:
    """Validation bits/dim against training step as a small inline SVG (lower = better), or "" for < 2 points.

    Args:
        history: ``[step, val bits/dim]`` pairs in step order.
        tail_from: first step of the tail the convergence rule judges (shaded), or None.
        width / height: size in CSS pixels.
    """
    points = [(float(s), float(b)) for s, b in history if _finite(s) and _finite(b)]
    if len(points) < 2:
        return ""
    pad = 3.0
    s0, s1 = points[0][0], points[-1][0]
    lo, hi = min(b for _, b in points), max(b for _, b in points)
    span_s, span_b = (s1 - s0) or 1.0, (hi - lo) or 1.0

    def x(step: float) -> float:
        return pad + (step - s0) / span_s * (width - 2 * pad)

    def y(bpd: float) -> float:
        return pad + (hi - bpd) / span_b * (height - 2 * pad)

    shade = ""
    if tail_from is not None and s0 < tail_from < s1:
        shade = (f"<rect x='{x(tail_from):.1f}' y='0' width='{width - x(tail_from):.1f}' height='{height}' "
                 "fill='#e4ecf5'/>")
    line = " ".join(f"{x(s):.1f},{y(b):.1f}" for s, b in points)
    best_step, best = min(points, key=lambda p: p[1])
    title = (f"validation bits/dim from {points[0][1]:.4g} (step {points[0][0]:.0f}) to {points[-1][1]:.4g} "
             f"(step {points[-1][0]:.0f}); best {best:.4g} at step {best_step:.0f}")
    return (f"<svg class='spark' role='img' width='{width}' height='{height}' viewBox='0 0 {width} {height}' "
            f"xmlns='http://www.w3.org/2000/svg'><title>{_e(title)}</title>{shade}"
            f"<polyline points='{line}' fill='none' stroke='#2c5d8f' stroke-width='1.5'/>"
            f"<circle cx='{x(best_step):.1f}' cy='{y(best):.1f}' r='2.2' fill='#c0392b'/></svg>")


def _short(fingerprint: Any) -> str:
    return str(fingerprint)[:12]


def _yes_no(value: Any) -> str:
    return "unknown" if value is None else ("yes" if value else "no")


def _tail_from(member: dict) -> float | None:
    tail, history = member.get("convergence_tail"), member.get("val_history") or []
    if not _finite(tail) or not history:
        return None
    last = max(float(history[-1][0]), float(member.get("steps") or 0))
    return (1.0 - float(tail)) * last


def provenance_rows(summary: dict, notes: Footnotes | None = None) -> list[list[str]]:
    """One row of HTML cells per model member: side, member, trained on (file, fingerprint), N images, steps,
    val bits/dim, its validation curve (inline SVG), converged, domain recorded."""
    notes = notes if notes is not None else Footnotes()
    rows = []
    for side in ("obs", "arch"):
        prov = (summary.get("provenance") or {}).get(side) or {}
        for m in prov.get("members", []):
            n = m.get("n_images")
            n_text = (notes.empty("not recorded in the model's model.json") if n is None else
                      f"{n}" + (f" ({m.get('train_images')} + {m.get('val_images')})"
                                if m.get("train_images") is not None else ""))
            data = _e(m.get("data")) if m.get("data") else notes.empty("not recorded in the model's model.json")
            if m.get("data_fingerprint"):
                data += f"<br><code title='{_e(m['data_fingerprint'])}'>{_e(_short(m['data_fingerprint']))}</code>"
            steps = value_or_empty(m.get("steps"), fmt, "not recorded in the model's model.json", notes)
            if m.get("best_step") is not None and m.get("steps") is not None:
                steps += f" (best {m['best_step']})"
            history = m.get("val_history") or []
            curve = sparkline(history, _tail_from(m))
            if curve:
                curve += f" {fmt(history[0][1])} → {fmt(history[-1][1])}"
            else:
                curve = notes.empty("no validation history in the model's model.json (metrics.convergence.history)")
            conv = m.get("converged")
            converged = ("yes" if conv else "<b>no</b>") if conv is not None else notes.empty(
                "not recorded: trained before the convergence test was recorded, or too few validations")
            if conv is not None and _finite(m.get("tail_improvement_bpd")):
                converged += f" (tail gain {fmt(m['tail_improvement_bpd'], 2)} bits/dim)"
            member = f"<span title='{_e(m.get('path') or '')}'>{_e(m.get('name'))}</span>"
            rows.append([_e(prov.get("label", side)), member, data, n_text, steps,
                         value_or_empty(m.get("val_bits_per_dim"), fmt, "not recorded in the model's model.json",
                                        notes), curve, converged, "yes" if m.get("domain_recorded") else "no"])
    return rows


PROVENANCE_HEADERS = (("model", None), ("member", None), ("trained on (file, pixel fingerprint)", None),
                      ("N images (train + val)", None), ("training steps", None),
                      ("val bits/dim", "bits per dimension"), ("validation curve", "bits/dim against step"),
                      ("converged", None), ("domain recorded", None))

#: the guards of the domain check, the page's columns: (side key, statistic, column label)
DOMAIN_GUARDS = (("obs", "sky_bpd", "sky bits/dim under p_obs"), ("arch", "sky_bpd", "sky bits/dim under p_arch"),
                 ("obs", "whole_bpd", "whole-image bits/dim under p_obs"),
                 ("arch", "whole_bpd", "whole-image bits/dim under p_arch"), (None, "size", "galaxy size"))


def _judged_text(g: dict) -> str:
    lo, hi = (g.get("median_range") or [None, None])[:2]
    text = f"median {fmt(g.get('median'))}"
    if g.get("training_median") is not None:
        text += f" (training median {fmt(g['training_median'])})"
    if lo is not None:
        text += f", allowed [{fmt(lo)}, {fmt(hi)}]"
    if _finite(g.get("share_outside")):
        text += f"; {100 * g['share_outside']:.3g} % of the images outside the per-image range"
    return text


def domain_findings(summary: dict, name: str) -> list[tuple[str, str | None, str, str]]:
    """A set against every guard of :mod:`morphllr.domain` (from ``summary["sets"][name]["domain"]``).

    Returns:
        per guard of :data:`DOMAIN_GUARDS`: ``(label, status, members, detail)``: status ``"inside"``,
        ``"outside"`` (the guard fires: for at least half of the side's members, the rule of
        :mod:`morphllr.domain`) or None, and then ``detail`` says why it was not judged; ``members``
        says how many members it fired for (``"2/3 members"``, or "" for one member or none).
    """
    entry = summary["sets"][name]
    d = entry.get("domain") or {}
    recorded = any(m.get("domain_recorded") for p in (summary.get("provenance") or {}).values()
                   for m in p.get("members") or [])
    out: list[tuple[str, str | None, str, str]] = []
    for side, statistic, label in DOMAIN_GUARDS:
        if not d:
            out.append((label, None, "", "not checked: the models record no training domain (trained before it "
                        "was recorded; scripts/record_domain.py adds it)" if not recorded else
                        "not checked for this set"))
            continue
        what = ""
        if statistic == "size":
            key = "size_area" if d.get("size_area") else "size_re"
            per = d.get(key)
            what = f"{'central-source area' if key == 'size_area' else 'half-light radius'} [model pixels]: "
            why = ("not measured: no central-source mask (/segmap_model) or catalogue half-light radius in the set, "
                   "or none recorded in training")
        else:
            per = (d.get(side) or {}).get(statistic)
            side_label = "p_obs" if side == "obs" else "p_arch"
            if statistic == "whole_bpd":
                why = "not measured: no member of this side records whole-image statistics"
            elif any(str(x).startswith(side_label) for x in d.get("sky_not_comparable") or []):
                why = "not judged: the set's empty sky comes from another mask than the training record's"
            elif (entry.get("sky") or {}).get("mask") is None:
                why = "not measured: the set has no segmentation map, so no empty sky"
            else:
                why = "not measured: no member of this side records sky statistics, or the set has no empty sky"
        if not per:
            out.append((label, None, "", why))
            continue
        fired = [m for m, g in per.items() if g.get("fired")]
        k = len(per)
        detail = what + _judged_text(per[fired[0]] if fired else next(iter(per.values())))
        members = f"{len(fired)}/{k} members" if fired and k > 1 else ""
        if fired:
            detail = f"fired for {', '.join(fired)}; {detail}"
        out.append((label, "outside" if fired and 2 * len(fired) >= k else "inside", members, detail))
    return out


def _domain_table(summary: dict, ids: dict[str, str]) -> str:
    title = "<h3 id='domain-check'>Domain check: is each set inside what the models saw in training?</h3>"
    if not any(summary["sets"][n].get("domain") for n in summary["ranking"]):
        reason = domain_findings(summary, summary["reference"])[0][3]
        return f"{title}<p class='note' id='domain'>No set is checked: {_e(reason.removeprefix('not checked: '))}.</p>"
    notes = Footnotes()
    head = "<tr><th>set</th>" + "".join(_th(label) for *_, label in DOMAIN_GUARDS) + "</tr>"
    rows = []
    for name in summary["ranking"]:
        cells = []
        for label, status, members, detail in domain_findings(summary, name):
            if status is None:
                cells.append(f"<td>{notes.empty(detail)}</td>")
                continue
            text = status + (f" ({members} outside)" if members else "")
            cls = " class='out'" if status == "outside" else ""
            cells.append(f"<td{cls} title='{_e(detail)}'>{text}</td>")
        rows.append(f"<tr><td class='name'><a href='#{ids[name]}'>{_e(name)}</a></td>{''.join(cells)}</tr>")
    return (f"{title}<table id='domain'>{head}{''.join(rows)}</table>{_footnotes(notes)}"
            "<p class='footnotes'>Inside / outside: the guard's rule (listed below; hover a cell for the numbers it "
            "judged); a guard fires when it fires for at least half the members of a side, and a set outside the "
            "domain gets a warning.</p>")


def _model_folders(summary: dict) -> str:
    """`` Model folders: p_obs <code>a</code>, ...`` from the members' paths (empty when none is recorded)."""
    parts = []
    for side in ("obs", "arch"):
        prov = (summary.get("provenance") or {}).get(side) or {}
        paths = [str(m["path"]) for m in prov.get("members") or [] if m.get("path")]
        if not paths:
            continue
        parents = {str(PurePath(p).parent) for p in paths}
        if len(paths) > 1 and len(parents) == 1:  # an ensemble folder: its members once
            where = (f"<code>{_e(parents.pop())}/</code> (" + ", ".join(_e(PurePath(p).name) for p in paths) + ")")
        else:
            where = ", ".join(f"<code>{_e(p)}</code>" for p in paths)
        parts.append(f"{_e(prov.get('label', side))} {where}")
    return (" Model folders: " + "; ".join(parts) + ".") if parts else ""


def _models_section(summary: dict, ids: dict[str, str]) -> str:
    notes = Footnotes()
    rows = provenance_rows(summary, notes)
    parts = ["<h2 id='models'>The models</h2>"]
    if rows:
        head = "".join(_th(h, u) for h, u in PROVENANCE_HEADERS)
        body = "".join("<tr>" + "".join(f"<td class='text'>{c}</td>" for c in r) + "</tr>" for r in rows)
        rule = next((m.get("convergence_rule") for p in (summary.get("provenance") or {}).values()
                     for m in p.get("members") or [] if m.get("convergence_rule")), None)
        parts.append(
            "<p>p_obs is a PixelCNN++ trained on observed galaxies, p_arch the same network trained on smooth "
            "Sérsic renderings (archetypes) of the same galaxies with the same PSF and noise; with several members "
            "per side (seeds) the LLR is their mean over every p_obs × p_arch pair. Model head: "
            f"<code>{_e((summary.get('models') or {}).get('head'))}</code>.{_model_folders(summary)}</p>"
            f"<table id='provenance'><tr>{head}</tr>{body}</table>{_footnotes(notes)}"
            "<p class='footnotes'>Validation curve: validation bits/dim (lower = better) against training step, "
            "first → last value; red dot: the best validation (the kept weights); shaded: the last steps the "
            "convergence test judges" + (f" ({_e(rule)})" if rule else "") + ".</p>")
    parts.append(_domain_table(summary, ids))
    rules = summary.get("domain_rules") or {}
    if rules:
        parts.append("<details><summary>The domain guards' rules</summary><ul>"
                     + "".join(f"<li>{_e(k)}: {_e(v)}</li>" for k, v in rules.items()) + "</ul></details>")
    return "".join(parts)


# --------------------------------------------------------------------------- stability under retraining
#: model pairs listed one by one in the per-pair ranking table (the rest are summarised)
MAX_PAIR_ROWS = 25


def _interval_cell(v: Any, reason: str, notes: Footnotes) -> str:
    ok = isinstance(v, (list, tuple)) and len(v) == 2 and all(_finite(x) for x in v)
    return value_or_empty(v if ok else None, lambda w: f"[{fmt(w[0])}, {fmt(w[1])}]", reason, notes)


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
    notes = Footnotes()
    total_reason = (f"not computed: the total intervals need at least 3 models per side "
                    f"({n_models.get('obs')} p_obs, {n_models.get('arch')} p_arch)")
    head = ("<tr><th>set</th>" + _th("ΔLLR vs reference ± 1σ", PER_IMAGE) + "<th>pairing</th>"
            + _th("model σ of ΔLLR", PER_IMAGE) + _th("same sign", "% of model pairs")
            + _th("ΔLLR 95% total", PER_IMAGE) + _th("mean LLR 95% total", PER_IMAGE)
            + "<th>survives retraining</th></tr>")
    rows = []
    ref_reason = "the reference against itself: ΔLLR = 0 by definition"
    for name in summary["ranking"]:
        e = summary["sets"][name]
        is_ref = name == summary["reference"]
        delta, err = stability_delta(e)
        pairing = e.get("delta_llr_pairing")
        if is_ref:
            cells = [notes.empty(ref_reason)] * 5
        else:
            pairing_text = (notes.empty("not computed") if pairing is None else
                            f"paired ({e.get('n_paired')} galaxies)" if pairing == "paired" else "unpaired")
            share = e.get("sign_agreement")
            cells = [plus_minus(delta, err, "not computed", notes), pairing_text,
                     value_or_empty(e.get("model_std"), lambda v: fmt(v, 3), "not computed", notes),
                     value_or_empty(share, lambda v: f"{100 * v:.3g} %", "not computed", notes),
                     _interval_cell(e.get("delta_llr_ci95_total"), total_reason, notes)]
        cells.append(_interval_cell(e.get("ci95_total"), total_reason, notes))
        mark = stability_mark(e, is_ref)
        cells.append(notes.empty("not measured for this set") if mark == "–" else _e(mark))
        rows.append(f"<tr><td class='name'>{_e(name)}{' (reference)' if is_ref else ''}</td>"
                    + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    pair_rows = []
    for p in (summary.get("ranking_by_pair") or [])[:MAX_PAIR_ROWS]:
        pair_rows.append(f"<tr><td class='name'>{_e(p['obs'])}</td><td class='name'>{_e(p['arch'])}"
                         f"</td><td class='text'>{_e(' > '.join(p['ranking']))}</td>"
                         f"<td>{value_or_empty(p.get('agreement'), lambda v: fmt(v, 3), 'not computed', notes)}"
                         "</td></tr>")
    more = len(summary.get("ranking_by_pair") or []) - MAX_PAIR_ROWS
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
        f"<table id='stability-table'>{head}{''.join(rows)}</table>{_footnotes(notes)}"
        f"<p class='footnotes'>{_e(MARK_LEGEND)}</p>{figure_html}"
        "<h3>Ranking under each model pair</h3>"
        f"<table id='pair-rankings'><tr><th>p_obs member</th><th>p_arch member</th><th>ranking</th>"
        f"<th>agreement</th></tr>{''.join(pair_rows)}</table>"
        + (f"<p>… and {more} more model pairs (all in summary.json, ranking_by_pair).</p>" if more > 0 else ""))


# --------------------------------------------------------------------------- mass panels
def _panels_table(summary: dict) -> str:
    panels = summary.get("mass_panels") or {}
    if not panels:
        return ""
    labels = sorted({lab for p in panels.values() for lab in p}, key=lambda s: float(s.strip(">").split("-")[0]))
    notes = Footnotes()
    empty = "fewer than 2 galaxies of the set (or the reference) in this panel"
    head = ("<tr><th rowspan='2'>set</th>" + "".join(f"<th colspan='3'>log M* {_e(lab)}</th>" for lab in labels)
            + "</tr><tr>" + ("<th>n</th>" + _th("mean LLR", PER_IMAGE) + _th("ΔLLR ± 1σ", PER_IMAGE)) * len(labels)
            + "</tr>")
    rows = []
    for name in summary["ranking"]:
        if name not in panels:
            continue
        cells = []
        for lab in labels:
            e = panels[name].get(lab)
            if e is None:
                cells.append(f"<td colspan='3'>{notes.empty(empty)}</td>")
                continue
            delta = ("0 (reference)" if name == summary["reference"] else
                     plus_minus(e.get("delta_llr"), e.get("delta_llr_err"), "not computed", notes))
            cells.append(f"<td>{e['n']}</td><td>{value_or_empty(e.get('mean_llr'), fmt, 'not computed', notes)}</td>"
                         f"<td>{delta}</td>")
        rows.append(f"<tr><td class='name'>{_e(name)}</td>{''.join(cells)}</tr>")
    return ("<h2>Stellar-mass panels</h2><p>The same statistics within log10(M*/M☉) panels "
            "(paper: 9.5–10, 10–10.5, &gt; 10.5); ΔLLR is against the reference in the same panel.</p>"
            f"<table id='mass-panels'>{head}{''.join(rows)}</table>{_footnotes(notes)}")


# --------------------------------------------------------------------------- sky split
SKY_HEADERS = (("set", None), ("sky LLR per pixel", PER_PIXEL), ("95% interval", PER_PIXEL),
               ("share of total LLR", "%"), ("sky pixels", "% of model pixels"),
               ("AUROC of sky pixels vs reference", None), ("AUROC of the rest vs reference", None))
SKY_READING = ("Each image's LLR is split into its empty-sky pixels (no source pixel of the segmentation map falls "
               "into them) and the rest. A sky LLR per pixel near 0 (and near the reference's) with an AUROC of "
               "the sky pixels ≈ 0.5 means the background cancels in the ratio, so the set's LLR comes from the "
               "galaxies; otherwise the set's sky, PSF or noise differ from the training data and part of its "
               "LLR measures that, not morphology.")


def _sky_table(summary: dict) -> str:
    rows, footnotes = sky_split_rows(summary)
    if not rows:
        return ""
    head = "<tr>" + "".join(_th(h, u) for h, u in SKY_HEADERS) + "</tr>"
    body = []
    for label, cells in rows:
        if isinstance(cells, str):
            tds = f"<td colspan='{len(SKY_HEADERS) - 1}'>{_e(cells)}</td>"
        else:
            tds = "".join(f"<td>{_e(c)}</td>" for c in cells)
        body.append(f"<tr><td class='name'>{_e(label)}</td>{tds}</tr>")
    notes = "<br>".join(_e(f) for f in footnotes)
    return ("<h2>LLR split: empty sky vs the rest</h2>"
            f"<p>{_e(SKY_READING)} Share = mean sky LLR / mean LLR of the set; AUROC of the sky pixels "
            "compares the images' sky LLR per pixel with the reference's, AUROC of the rest their LLR outside the "
            "empty sky.</p>"
            f"<table id='sky-split'>{head}{''.join(body)}</table>"
            + (f"<p class='note'>{notes}</p>" if footnotes else ""))


# --------------------------------------------------------------------------- each set in detail
def _no_central(entry: dict, notes: Footnotes) -> str | None:
    """The set's images without a central source, as a cell (None: summary.json does not say, e.g. an older one)."""
    if "n_no_central" not in entry:
        return None
    n = entry.get("n_no_central")
    if n is None:
        return notes.empty("unknown: the set records no central source per image (no catalogue central_found or "
                           "/segmap_model), so images without one could not be counted")
    total = entry.get("n_images") or entry.get("n")
    if not n:
        return f"none of {total}"
    ids = [str(x) for x in entry.get("no_central_ids") or []]
    text = f"{n} of {total}"
    if entry.get("central_from"):
        text += f" (from {_e(entry['central_from'])})"
    text += (f"; <b>left out</b> of every statistic here (n = {entry.get('n')})" if entry.get("no_central_excluded")
             else "; <b>included</b> in the statistics (--keep-no-central)")
    if ids:
        listed = "all" if len(ids) >= n else f"the first {len(ids)}"
        text += f"; ids ({listed}): <code>{_e(', '.join(ids))}</code>"
    return text


def _set_rows(summary: dict, name: str, notes: Footnotes) -> list[tuple[str, str | None, str]]:
    """(quantity, unit, value html) of a set's details."""
    e = summary["sets"][name]
    is_ref = name == summary["reference"]
    md, me = matched_delta(summary, name)
    pct = lambda v: f"{100 * v:.3g} %"  # noqa: E731
    rows: list[tuple[str, str | None, str]] = [
        ("images in the statistics (n)", None, str(e.get("n"))),
        ("mean LLR", PER_IMAGE, value_or_empty(e.get("mean_llr"), fmt, "not computed", notes)),
        ("median LLR", PER_IMAGE, value_or_empty(e.get("median_llr"), fmt, "not computed", notes)),
        ("standard deviation of the LLR over images", PER_IMAGE,
         value_or_empty(e.get("std_llr"), fmt, "not computed", notes)),
        ("matched ΔLLR vs reference ± 1σ", PER_IMAGE,
         "0 (reference)" if is_ref else plus_minus(md, me, matched_reason(summary), notes)),
        ("AUROC vs reference", "0.5 = indistinguishable",
         value_or_empty(e.get("auroc_vs_reference"), lambda v: fmt(v, 3), "not computed", notes)),
        ("KS statistic vs reference (p-value)", "largest CDF difference",
         value_or_empty(e.get("ks_vs_reference"), lambda v: fmt(v, 3), "not computed", notes)
         + (f" (p = {fmt(e['ks_pvalue'], 2)})" if _finite(e.get("ks_pvalue")) else "")),
        ("outliers below the reference's 0.15th LLR percentile", "% of the set",
         value_or_empty(e.get("outlier_fraction"), pct, "not computed", notes)),
        ("masked share", "% of model pixels", value_or_empty(e.get("masked_share"), pct, "not computed", notes)),
        ("mean LLR per unmasked pixel", PER_PIXEL,
         value_or_empty(e.get("mean_llr_per_pixel"), lambda v: fmt(v, 3), "no unmasked pixel", notes)),
        ("mean LLR within the central-source mask", PER_IMAGE,
         value_or_empty(e.get("mean_llr_segmap"), fmt,
                        "not computed: the set has no central-source mask (/segmap_model)", notes)),
        ("mean bits/dim under p_obs / p_arch", "bits per dimension",
         f"{value_or_empty(e.get('mean_bpd_obs'), fmt, 'not computed', notes)} / "
         f"{value_or_empty(e.get('mean_bpd_arch'), fmt, 'not computed', notes)}"),
    ]
    if "mean_llr_rotation_averaged" in e:
        rows.append(("mean LLR averaged over rotations", PER_IMAGE,
                     value_or_empty(e.get("mean_llr_rotation_averaged"), fmt, "not computed", notes)))
    if summary.get("group_col"):
        rows.append((f"groups ({summary['group_col']})", None, str(e.get("n_groups"))))
    if multi_pair(summary) and not is_ref:
        n_models = summary.get("n_models") or {}
        total = (f"not computed: the total intervals need at least 3 models per side "
                 f"({n_models.get('obs')} p_obs, {n_models.get('arch')} p_arch)")
        mark = stability_mark(e, is_ref)
        rows += [
            ("model σ of ΔLLR (spread over the model pairs)", PER_IMAGE,
             value_or_empty(e.get("model_std"), lambda v: fmt(v, 3), "not computed", notes)),
            ("ΔLLR with the ensemble's sign", "% of model pairs",
             value_or_empty(e.get("sign_agreement"), pct, "not computed", notes)),
            ("ΔLLR 95% interval with the model variance", PER_IMAGE,
             _interval_cell(e.get("delta_llr_ci95_total"), total, notes)),
            ("mean LLR 95% interval with the model variance", PER_IMAGE,
             _interval_cell(e.get("ci95_total"), total, notes)),
        ]
        if e.get("delta_llr_pairing") == "paired":
            rows.append((f"paired ΔLLR over the {e.get('n_paired')} shared galaxies ± 1σ", PER_IMAGE,
                         plus_minus(e.get("delta_llr_paired"), e.get("delta_llr_paired_err"), "not computed", notes)))
        rows.append(("survives retraining", None, notes.empty("not measured for this set") if mark == "–" else mark))
    return rows


def _figure(path: Path, caption: str) -> str:
    return f"<figure>{_image_tag(path, caption)}<figcaption>{_e(caption)}</figcaption></figure>"


def _set_details(summary: dict, name: str, rank: int, sid: str, figures: list[tuple[str, str, str]],
                 figure_dir: Path) -> str:
    e = summary["sets"][name]
    is_ref = name == summary["reference"]
    notes = Footnotes()
    rows = [f"<tr>{_th(q, u)}<td>{v}</td></tr>" for q, u, v in _set_rows(summary, name, notes)]
    half = (len(rows) + 1) // 2
    tables = "".join(f"<table class='kv'>{''.join(part)}</table>" for part in (rows[:half], rows[half:]) if part)
    text = []
    no_central = _no_central(e, notes)
    if no_central is not None:
        text.append(f"<b>Images without a central source</b>: {no_central}.")
    if e.get("reading"):
        text.append(f"<b>In words</b>: {_e(strip_identity(e['reading']))}")
    own = e.get("warnings") or []
    warn = ("<p class='note'>⚠ " + "<br>⚠ ".join(_e(w) for w in own) + "</p>") if own else ""
    figs = "".join(_figure(figure_dir / f, caption) for _, f, caption in figures)
    mean = value_or_empty(e.get("mean_llr"), fmt, "not computed", notes)  # footnoted below, in the details
    interval = value_or_empty(e.get("ci95"), lambda v: f"[{fmt(v[0])}, {fmt(v[1])}]", "not computed", notes)
    head = (f"<b>{_e(name)}</b>{' (reference)' if is_ref else ''}: rank {rank}, mean LLR {mean} "
            f"{interval} {PER_IMAGE_WORDS}, {_e(e.get('verdict', ''))}"
            + (f", ⚠ {len(own)} warning{'s' if len(own) > 1 else ''}" if own else ""))
    return (f"<details class='set' id='{sid}'><summary>{head}</summary>{warn}"
            f"<div class='kvs'>{tables}</div>" + "".join(f"<p>{t}</p>" for t in text) + _footnotes(notes)
            + (f"<div class='figs'>{figs}</div>" if figs else "") + "</details>")


def _sets_section(summary: dict, ids: dict[str, str], per_set: dict[str, list], figure_dir: Path) -> str:
    matched = summary.get("matched") or {}
    text = (f"Outliers: images below the reference's 0.15th LLR percentile ({fmt(summary['outlier_threshold_llr'])} "
            f"{PER_IMAGE_WORDS}).")
    if matched:
        props = ", ".join(f"{_PROPERTY_WORDS.get(k, k)} ({_e(v)})" for k, v in matched["properties"].items())
        text += (f" Matched ΔLLR: {matched['n_per_set']} galaxies per set per draw in {matched['n_cells']} grid "
                 f"cells of {props}; {matched['n_draws']} draws, so every set has the same make-up.")
    details = "".join(_set_details(summary, name, rank, ids[name], per_set.get(name, []), figure_dir)
                      for rank, name in enumerate(summary["ranking"], 1))
    return f"<h2 id='sets'>Each set in detail</h2><p>{text} Click a set to unfold it.</p>{details}"


def split_figures(summary: dict, figures: list[tuple[str, str, str]]) -> tuple[dict[str, list], list]:
    """The per-set figures (``<prefix>_<slug>.png``, :data:`PER_SET_FIGURES`) by set, in that prefix order, and
    the others in page order."""
    owner = {f"{prefix}_{_slug(name)}.png": (name, k) for name in summary["ranking"]
             for k, prefix in enumerate(PER_SET_FIGURES)}
    per_set: dict[str, list] = {}
    rest = []
    for item in figures:
        if item[1] in owner:
            per_set.setdefault(owner[item[1]][0], []).append(item)
        else:
            rest.append(item)
    for items in per_set.values():
        items.sort(key=lambda it: owner[it[1]][1])
    return per_set, rest


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
    return f"<img src='data:image/png;base64,{data}' alt='{_e(alt)}'>"


def render_html(summary: dict, figures: list[tuple[str, str, str]], figure_dir: Path, notes: list[str]) -> str:
    """The report page as one string (figures embedded).

    Args:
        summary: the content of summary.json.
        figures: (section, file name, caption) in page order; the per-set ones (``gallery_<slug>.png``,
            ``profile_<slug>.png``, ``pixel_maps_<slug>.png``) go into their set's details, the stability
            figure into its section, the others under their section's heading.
        figure_dir: folder holding the PNG files.
        notes: things skipped and why.

    Returns:
        HTML text.
    """
    ids = set_ids(summary)
    per_set, figures = split_figures(summary, figures)
    stability_figures = "".join(_figure(figure_dir / name, caption)
                                for sec, name, caption in figures if sec == STABILITY_SECTION)
    figures = [f for f in figures if f[0] != STABILITY_SECTION]
    parts = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
             "<meta name='viewport' content='width=device-width, initial-scale=1'>",
             "<title>morphllr comparison</title>", f"<style>{_STYLE}</style></head><body>",
             "<h1>morphllr: how realistic is each set?</h1>",
             _summary_section(summary, ids), warnings_box(summary), _ranking_table(summary, ids),
             _models_section(summary, ids), _stability_section(summary, stability_figures), _sky_table(summary),
             _panels_table(summary), _sets_section(summary, ids, per_set, figure_dir)]
    section = None
    for sec, name, caption in figures:
        if sec != section:
            parts.append(f"<h2>{_e(sec)}</h2>")
            section = sec
        parts.append(_figure(figure_dir / name, caption))
    if notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li class='note'>{_e(n)}</li>" for n in notes) + "</ul>")
    parts.append(_HOW_TO_READ)
    parts.append("<p>Files: <code>scores.csv</code> / <code>scores.parquet</code> (one row per image), "
                 "<code>summary.json</code>, <code>summary.csv</code>, <code>mass_panels.csv</code> (when masses are "
                 "known), <code>ranking.tex</code> (the ranking as a LaTeX table), <code>report_data.h5</code> (what "
                 "the figures draw beyond summary.json and scores.csv; <code>morphllr compare --figures-only</code> "
                 "redraws the report from these files), <code>figures/</code>"
                 + (" (every figure as PNG and PDF)" if any(figure_dir.glob("*.pdf")) else "") + ".</p>")
    parts.append(_OPEN_TARGET + "</body></html>")
    return "\n".join(parts)


def write_report(result, folder: str | Path) -> Path:
    """Draw every figure and write ``index.html`` into ``folder`` (already a temporary folder).

    The inputs are only read: their notes (the figures' included) are complete before the report is
    written, so the report and ``summary.json`` may be written in either order.

    Args:
        result: what the report is drawn from, with ``.summary`` (summary.json) and ``.notes``: the
            :class:`morphllr.comparison.report_data.ReportInputs` read from compare's files (or a
            :class:`morphllr.comparison.result.CompareResult`, as far as :func:`draw_figures` takes one).
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
