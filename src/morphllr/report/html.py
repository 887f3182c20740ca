"""The comparison report: PNG figures and one self-contained ``index.html``.

Every figure is drawn with matplotlib's Agg backend, saved under ``figures/`` and also
embedded in ``index.html`` as a base64 data URI, so the page can be mailed or copied
on its own.  A figure whose inputs are missing (e.g. no stellar-mass column) is skipped
with a note on the page, never an error.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any, Callable

import numpy as np

from morphllr.comparison.run import merge_notes
from morphllr.data.catalog import MASS_COLUMNS, SERSIC_N_COLUMNS, SIZE_COLUMNS, catalog_values, find_column

_CMAP_LLR = "RdBu"  # blue = more likely under p_obs (realistic), red = more likely under p_arch


# --------------------------------------------------------------------------- helpers
def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _colours(names: list[str]) -> dict[str, Any]:
    plt = _plt()
    cycle = plt.get_cmap("tab10")
    return {name: cycle(i % 10) for i, name in enumerate(names)}


def _symmetric_limit(arrays: list[np.ndarray], q: float = 99.0) -> float:
    values = np.concatenate([np.abs(a[np.isfinite(a)]).ravel() for a in arrays if a is not None] or [np.zeros(1)])
    lim = float(np.percentile(values, q)) if values.size else 1.0
    return lim if lim > 0 else 1.0


def _display(image: np.ndarray) -> np.ndarray:
    """(C, H, W) model-input image -> (H, W) for display (channel mean)."""
    return np.asarray(image, dtype=np.float64).mean(axis=0)


class _Figures:
    """Collects saved figures (file name, caption) in page order."""

    def __init__(self, folder: Path):
        self.folder = folder / "figures"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.items: list[tuple[str, str, str]] = []  # (section, file name, caption)

    def save(self, fig, name: str, section: str, caption: str) -> None:
        plt = _plt()
        fig.savefig(self.folder / name, dpi=90, bbox_inches="tight")
        plt.close(fig)
        self.items.append((section, name, caption))


# --------------------------------------------------------------------------- figures
def plot_llr_histograms(result, figs: _Figures) -> None:
    """All sets' LLR distributions on one axis, with the outlier threshold."""
    plt = _plt()
    colours = _colours(list(result.sets))
    all_llr = np.concatenate([r.llr for r in result.sets.values()])
    lo, hi = np.percentile(all_llr, [0.5, 99.5])
    bins = np.linspace(lo, hi if hi > lo else lo + 1, 50)
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, res in result.sets.items():
        ax.hist(np.clip(res.llr, bins[0], bins[-1]), bins=bins, density=True, histtype="step", lw=2,
                color=colours[name], label=f"{name} (mean {res.llr.mean():.3g})")
    ax.axvline(result.summary["outlier_threshold_llr"], color="k", ls=":", label="reference 0.15th percentile")
    ax.set_xlabel("LLR = log p_obs - log p_arch  [nats per image]")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    figs.save(fig, "llr_histograms.png", "Distributions",
              "LLR of every image, all sets on one axis. Right = more like the observed galaxies than like "
              "their smooth Sérsic archetypes; values outside the plotted range are piled into the end bins.")


def plot_logp_scatter(result, figs: _Figures) -> None:
    """log p_obs against log p_arch per image; the diagonal is LLR = 0."""
    plt = _plt()
    colours = _colours(list(result.sets))
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for name, res in result.sets.items():
        n = len(res.llr)
        keep = np.random.default_rng(0).choice(n, size=min(n, 3000), replace=False)  # readable, fast
        ax.scatter(res.scores["logp_arch"][keep], res.scores["logp_obs"][keep], s=4, alpha=0.5,
                   color=colours[name], label=name)
    lims = np.array([ax.get_xlim(), ax.get_ylim()])
    line = [lims.min(), lims.max()]
    ax.plot(line, line, "k--", lw=1, label="LLR = 0")
    ax.set_xlabel("log p_arch  [nats]")
    ax.set_ylabel("log p_obs  [nats]")
    ax.legend(fontsize=8, markerscale=3)
    figs.save(fig, "logp_scatter.png", "Distributions",
              "Log-likelihood under the observed-galaxy model against the archetype model (up to 3000 images "
              "per set). Points above the dashed line have LLR > 0.")


STABILITY_SECTION = "Stability under retraining"


def plot_pair_deltas(result, figs: _Figures) -> None:
    """ΔLLR vs the reference under every model pair, per set (only with more than one pair)."""
    summary = result.summary
    if (summary.get("model_pairs") or 1) < 2:
        return
    names = [n for n in summary["ranking"] if n != summary["reference"]
             and summary["sets"][n].get("delta_llr_by_pair") is not None]
    if not names:
        return
    plt = _plt()
    colours = _colours(list(result.sets))
    fig, ax = plt.subplots(figsize=(max(4.5, 1.2 * len(names) + 2), 4))
    rng = np.random.default_rng(0)
    for x, name in enumerate(names):
        e = summary["sets"][name]
        d = np.asarray(e["delta_llr_by_pair"], dtype=np.float64).ravel()
        delta, err = stability_delta(e)
        ax.scatter(x + rng.uniform(-0.15, 0.15, d.size), d, s=14, alpha=0.7, color=colours[name])
        bar = 2 * np.hypot(err or 0.0, e.get("model_std") or 0.0)
        ax.errorbar([x + 0.3], [delta], yerr=[[bar], [bar]], fmt="o", color="k", capsize=3, ms=4)
    ax.axhline(0, color="k", lw=0.8, ls=":")
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.set_ylabel("ΔLLR vs reference  [nats per image]")
    figs.save(fig, "pair_delta_llr.png", STABILITY_SECTION,
              "ΔLLR against the reference under each model pair (coloured points: one per p_obs x p_arch pair; "
              "paired over shared galaxies where the sets share them) and the ensemble's ΔLLR with ±2 sqrt(err² + "
              "model σ²) (black). A set whose points straddle 0 may change sides on retraining.")


def plot_pixel_maps(result, figs: _Figures) -> None:
    """Gallery of per-pixel maps: image | log p_obs | log p_arch | LLR, per set."""
    plt = _plt()
    for name, res in result.sets.items():
        g = res.gallery.get("maps")
        if not g or len(g["indices"]) == 0:
            continue
        rows = len(g["indices"])
        fig, axes = plt.subplots(rows, 4, figsize=(8, 2.0 * rows), squeeze=False)
        lim = _symmetric_limit([g["map_obs"] - g["map_arch"]])
        lp = np.concatenate([g["map_obs"].ravel(), g["map_arch"].ravel()])
        lp = lp[np.isfinite(lp)]  # masked pixels are NaN (their terms are not in the LLR)
        lp_lo, lp_hi = np.percentile(lp, [1, 99]) if lp.size else (-1.0, 1.0)
        images = {}
        for r in range(rows):
            panels = [(_display(g["images"][r]), "gray", None, None, "image"),
                      (g["map_obs"][r], "viridis", lp_lo, lp_hi, "log p_obs / pixel"),
                      (g["map_arch"][r], "viridis", lp_lo, lp_hi, "log p_arch / pixel"),
                      (g["map_obs"][r] - g["map_arch"][r], _CMAP_LLR, -lim, lim, "LLR / pixel")]
            for c, (img, cmap, vmin, vmax, title) in enumerate(panels):
                ax = axes[r, c]
                im = ax.imshow(img, origin="lower", cmap=cmap, vmin=vmin, vmax=vmax)
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    ax.set_title(title, fontsize=9)
                if c == 0:
                    ax.set_ylabel(f"id {g['ids'][r]}\nLLR {g['llr'][r]:.3g}", fontsize=8)
                images[c] = im
        for c in (1, 2, 3):  # one bar under each column keeps every panel the same size
            fig.colorbar(images[c], ax=list(axes[:, c]), orientation="horizontal", fraction=0.04, pad=0.02,
                         label="nats")
        figs.save(fig, f"pixel_maps_{_slug(name)}.png", "Pixel maps",
                  f"{name}: galaxies spanning the LLR range (highest first). Per-pixel log-likelihoods in nats; "
                  "in the LLR map blue pixels are better explained by the observed-galaxy model, red pixels by "
                  "the smooth Sérsic model; masked pixels (not in the LLR) are blank.")


def plot_mean_maps(result, figs: _Figures) -> None:
    """Per set: mean pixel LLR after centring each galaxy on its light-weighted centroid."""
    plt = _plt()
    names = list(result.sets)
    lim = _symmetric_limit([r.mean_map for r in result.sets.values()])
    fig, axes = plt.subplots(1, len(names), figsize=(2.6 * len(names) + 0.8, 2.8), squeeze=False)
    for ax, name in zip(axes[0], names):
        im = ax.imshow(result.sets[name].mean_map, origin="lower", cmap=_CMAP_LLR, vmin=-lim, vmax=lim)
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=list(axes[0]), label="mean LLR per pixel [nats]")
    figs.save(fig, "mean_llr_maps.png", "Where the difference is",
              "Mean per-pixel LLR of each set, every galaxy shifted so that its light-weighted centre is at the "
              "stamp centre. Shows where in a galaxy the images look real (blue) or Sérsic-like (red).")


def plot_radial_profiles(result, figs: _Figures, notes: list[str]) -> None:
    """Mean pixel LLR against radius, in R_e when every set has sizes, else in model pixels."""
    from morphllr.comparison.run import PROFILE_RE_EDGES

    plt = _plt()
    colours = _colours(list(result.sets))
    in_re = all(r.profile_re is not None for r in result.sets.values())
    if not in_re:
        notes.append("radial profiles are in model pixels: not every set has half-light radii "
                     "(catalogue sersic_re_pix) and a recorded zoom")
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, res in result.sets.items():
        if in_re:
            x = 0.5 * (PROFILE_RE_EDGES[1:] + PROFILE_RE_EDGES[:-1])
            y = res.profile_re
        else:
            y = res.profile_pix
            x = np.arange(len(y)) + 0.5
        ok = np.isfinite(y)
        ax.plot(x[ok], y[ok], "o-", ms=3, color=colours[name], label=name)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xlabel("r / R_e" if in_re else "r  [model pixels]")
    ax.set_ylabel("mean LLR per pixel [nats]")
    ax.legend(fontsize=8)
    figs.save(fig, "radial_llr_profile.png", "Where the difference is",
              "Mean LLR per pixel in annuli around each galaxy's centre"
              + (" in units of its half-light radius (catalogue sersic_re_pix x preprocessing zoom)."
                 if in_re else " in model pixels."))


def _property(res, candidates, log: bool) -> tuple[np.ndarray | None, str | None]:
    col = find_column(res.catalog, candidates)
    values = catalog_values(res.catalog, col)
    if values is None:
        return None, None
    if log:
        with np.errstate(invalid="ignore", divide="ignore"):
            values = np.log10(np.where(values > 0, values, np.nan))
    return values, col


def plot_scaling_relation(result, figs: _Figures, notes: list[str], x_spec, y_spec, title: str,
                          file_name: str) -> None:
    """One panel per set: 2-D bins of a scaling relation coloured by mean LLR, reference medians on top.

    Args:
        x_spec / y_spec: (candidate columns, take log10?, axis label).
    """
    from scipy.stats import binned_statistic, binned_statistic_2d

    plt = _plt()
    data = {}
    for name, res in result.sets.items():
        x, xcol = _property(res, x_spec[0], x_spec[1])
        y, ycol = _property(res, y_spec[0], y_spec[1])
        if x is None or y is None:
            notes.append(f"{name}: {title} skipped, the catalogue lacks "
                         f"{' / '.join(x_spec[0]) if x is None else ' / '.join(y_spec[0])}")
            continue
        ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(res.llr)
        if ok.sum() < 5:
            notes.append(f"{name}: {title} skipped, fewer than 5 galaxies with both properties")
            continue
        data[name] = (x[ok], y[ok], res.llr[ok], xcol, ycol)
    if not data:
        return
    ref = data.get(result.reference)
    pool_x = np.concatenate([d[0] for d in data.values()])
    pool_y = np.concatenate([d[1] for d in data.values()])
    # about 4+ galaxies per bin in the smallest set, between 4 and 12 bins a side
    n_bins = int(np.clip(np.sqrt(min(len(d[0]) for d in data.values()) / 4), 4, 12))
    xe = np.linspace(*np.percentile(pool_x, [1, 99]), n_bins + 1)
    ye = np.linspace(*np.percentile(pool_y, [1, 99]), n_bins + 1)
    if xe[0] == xe[-1] or ye[0] == ye[-1]:
        notes.append(f"{title} skipped: a property has a single value")
        return
    stats2d = {n: binned_statistic_2d(d[0], d[1], d[2], "mean", bins=[xe, ye]).statistic for n, d in data.items()}
    counts = {n: binned_statistic_2d(d[0], d[1], None, "count", bins=[xe, ye]).statistic for n, d in data.items()}
    finite = np.concatenate([s[np.isfinite(s)] for s in stats2d.values()])
    vmin, vmax = np.percentile(finite, [5, 95]) if finite.size else (0, 1)
    fig, axes = plt.subplots(1, len(data), figsize=(3.2 * len(data) + 1, 3.3), squeeze=False, sharey=True)
    for ax, (name, d) in zip(axes[0], data.items()):
        img = np.where(counts[name] >= 2, stats2d[name], np.nan).T  # one galaxy is not a mean
        mesh = ax.pcolormesh(xe, ye, img, cmap="viridis", vmin=vmin, vmax=vmax)
        if ref is not None:
            med = binned_statistic(ref[0], ref[1], "median", bins=xe).statistic
            ax.plot(0.5 * (xe[1:] + xe[:-1]), med, "w-", lw=3)
            ax.plot(0.5 * (xe[1:] + xe[:-1]), med, "k-", lw=1.5, label=f"{result.reference} median")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(x_spec[2].format(col=d[3]))
        if ax is axes[0][0]:
            ax.set_ylabel(y_spec[2].format(col=d[4]))
            if ref is not None:
                ax.legend(fontsize=7, loc="best")
    fig.colorbar(mesh, ax=list(axes[0]), label="mean LLR [nats]")
    figs.save(fig, file_name, "Scaling relations",
              f"{title}: bins (2 or more galaxies) coloured by the mean LLR of the galaxies in them; black line: "
              "the reference set's median relation. Shows which kinds of galaxies look realistic.")


def plot_galleries(result, figs: _Figures) -> None:
    """Per set: most realistic, least realistic, and outliers below the reference's 0.15th percentile."""
    plt = _plt()
    rows_spec = [("most_realistic", "most realistic"), ("least_realistic", "least realistic"),
                 ("outliers", "outliers")]
    for name, res in result.sets.items():
        rows = [(key, label) for key, label in rows_spec if res.gallery.get(key) and len(res.gallery[key]["indices"])]
        if not rows:
            continue
        cols = max(len(res.gallery[key]["indices"]) for key, _ in rows)
        fig, axes = plt.subplots(len(rows), cols, figsize=(1.5 * cols, 1.7 * len(rows)), squeeze=False)
        for r, (key, label) in enumerate(rows):
            g = res.gallery[key]
            for c in range(cols):
                ax = axes[r, c]
                ax.set_xticks([])
                ax.set_yticks([])
                if c >= len(g["indices"]):
                    ax.axis("off")
                    continue
                ax.imshow(_display(g["images"][c]), origin="lower", cmap="gray")
                ax.set_title(f"{g['llr'][c]:.3g}", fontsize=7)
                if c == 0:
                    extra = f"\n({g['n_total']} in all)" if key == "outliers" else ""
                    ax.set_ylabel(label + extra, fontsize=8)
        figs.save(fig, f"gallery_{_slug(name)}.png", "Galleries",
                  f"{name}: highest- and lowest-LLR images (LLR in nats above each) and outliers below the "
                  f"reference's 0.15th percentile (LLR < {result.summary['outlier_threshold_llr']:.3g}).")


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)


# --------------------------------------------------------------------------- html
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


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return f"{value:.{digits}g}"


def _multi_pair(summary: dict) -> bool:
    return (summary.get("model_pairs") or 1) > 1


def stability_delta(entry: dict) -> tuple[float | None, float | None]:
    """The ΔLLR vs the reference that the stability rule judges, and its galaxy error (paired when shared)."""
    if entry.get("delta_llr_pairing") == "paired":
        return entry.get("delta_llr_paired"), entry.get("delta_llr_paired_err")
    return entry.get("delta_llr"), entry.get("delta_llr_err")


def stability_mark(entry: dict, is_reference: bool) -> str:
    """``✓`` (the difference to the reference survives retraining), ``✗`` (it may not), ``–`` (not measured)."""
    if is_reference:
        return "ref"
    stable = entry.get("stable")
    return "–" if stable is None else ("✓" if stable else "✗")


_MARK_LEGEND = ("✓ = the set's difference to the reference survives retraining: |ΔLLR| ≥ 2·sqrt(err² + model σ²) "
                "and ΔLLR has the same sign under ≥ 95 % of the model pairs (ΔLLR and its error paired over the "
                "shared galaxies when the sets show the same galaxies); ✗ = it may flip or vanish on retraining.")


def _ranking_table(summary: dict) -> str:
    matched = summary.get("matched") or {}
    multi = _multi_pair(summary)
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
        stab = (f"<td>{_fmt(e.get('model_std'), 3)}</td><td>{stability_mark(e, is_ref)}</td>" if multi else "")
        mask_cells = (f"<td>{100 * (e.get('masked_share') or 0):.3g} %</td>"
                      f"<td>{_fmt(e.get('mean_llr_per_pixel'), 3)}</td>" if masked else "")
        rows.append(
            f"<tr><td>{rank}</td><td class='name'>{html.escape(name)}{ref}</td><td>{e['n']}</td>"
            f"<td>{_fmt(e['mean_llr'])}</td><td>[{_fmt(e['ci95'][0])}, {_fmt(e['ci95'][1])}]</td>"
            f"<td>{_fmt(e['median_llr'])}</td><td>{_fmt(e['delta_llr'])} ± {_fmt(e['delta_llr_err'], 2)}</td>"
            f"<td>{_fmt(md)} ± {_fmt(me, 2)}</td>{stab}<td>{_fmt(e['auroc_vs_reference'], 3)}</td>"
            f"<td>{_fmt(e['ks_vs_reference'], 3)}</td><td>{100 * e.get('outlier_fraction', np.nan):.3g} %</td>"
            f"{mask_cells}<td class='text'>{html.escape(e['verdict'])}</td>{_warning_cell(e, name)}</tr>")
    readings = "".join(f"<li><b>{html.escape(name)}</b>: {html.escape(summary['sets'][name]['reading'])}</li>"
                       for name in summary["ranking"])
    groups = ""
    if summary.get("group_col"):
        groups = (f"<p>Intervals and errors resample groups of images of one object (catalogue column "
                  f"<code>{html.escape(summary['group_col'])}</code>): "
                  + ", ".join(f"{html.escape(n)} {summary['sets'][n].get('n_groups')} groups"
                              for n in summary["ranking"]) + ".</p>")
    legend = f"<p>{html.escape(_MARK_LEGEND)}</p>" if multi else ""
    return (f"<table id='ranking'>{head}{''.join(rows)}</table>{legend}{groups}"
            "<p>Outliers: share of the set below the reference's 0.15th LLR percentile "
            f"({_fmt(summary['outlier_threshold_llr'])} nats).</p><ul>{readings}</ul>")


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
                         ("–" if n is None else str(n)) + split, _fmt(m.get("steps")), _fmt(m.get("val_bits_per_dim")),
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
    return "–" if v is None else f"[{_fmt(v[0])}, {_fmt(v[1])}]"


def _stability_section(summary: dict, figure_html: str) -> str:
    """"Stability under retraining": ranking agreement, per-set model spread and per-pair rankings."""
    title = f"<h2>{STABILITY_SECTION}</h2>"
    if not _multi_pair(summary):
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
            f"<td>{'–' if is_ref else f'{_fmt(delta)} ± {_fmt(err, 2)}'}</td><td>{pairing_text}</td>"
            f"<td>{_fmt(e.get('model_std'), 3)}</td><td>{'–' if share is None else f'{100 * share:.3g} %'}</td>"
            f"<td>{_interval(e.get('delta_llr_ci95_total'))}</td><td>{_interval(e.get('ci95_total'))}</td>"
            f"<td>{stability_mark(e, is_ref)}</td></tr>")
    pair_rows = []
    for p in (summary.get("ranking_by_pair") or [])[:MAX_PAIR_ROWS]:
        pair_rows.append(f"<tr><td class='name'>{html.escape(p['obs'])}</td><td class='name'>{html.escape(p['arch'])}"
                         f"</td><td class='text'>{html.escape(' > '.join(p['ranking']))}</td>"
                         f"<td>{_fmt(p.get('agreement'), 3)}</td></tr>")
    more = len(summary.get("ranking_by_pair") or []) - MAX_PAIR_ROWS
    totals = ("" if (n_models.get("obs", 0) >= 3 and n_models.get("arch", 0) >= 3) else
              "<p class='note'>The total intervals need at least 3 models per side; they are left out.</p>")
    return (
        f"{title}<p id='stability'>{n_models.get('obs')} p_obs × {n_models.get('arch')} p_arch models = "
        f"{summary.get('model_pairs')} model pairs (LLR_ij = log p_obs,i − log p_arch,j; the LLR above is the mean "
        f"over pairs). <b>Ranking agreement: {_fmt(agreement, 3)}</b> = for every model pair, the share of pairs of "
        "sets it orders as the ensemble ranking does, averaged over model pairs (1 = every pair ranks the sets "
        "alike; 0.5 = no better than a coin).</p>"
        "<p>Model σ: standard deviation over model pairs of the set's ΔLLR against the reference (paired per "
        "galaxy when the two sets show the same galaxies): the absolute LLR moves between retrainings while the "
        "order need not, so the spread is measured on the difference. Total intervals: hierarchical bootstrap "
        "(models resampled per side, then galaxies), never narrower than the galaxy-only intervals.</p>"
        f"<table id='stability-table'>{head}{''.join(rows)}</table><p>{html.escape(_MARK_LEGEND)}</p>{totals}"
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
                         f"<td>{e['n']}</td><td>{_fmt(e['mean_llr'])}</td>"
                         f"<td>{_fmt(e['delta_llr'])} ± {_fmt(e['delta_llr_err'], 2)}</td>")
        rows.append(f"<tr><td class='name'>{html.escape(name)}</td>{''.join(cells)}</tr>")
    return ("<h2>Stellar-mass panels</h2><p>The same statistics within log10(M*/M☉) panels "
            "(paper: 9.5–10, 10–10.5, &gt; 10.5); ΔLLR is against the reference in the same panel.</p>"
            f"<table id='mass-panels'>{head}{''.join(rows)}</table>")


# --------------------------------------------------------------------------- sky split
SKY_HEADERS = ("set", "sky LLR per pixel [nats/pixel]", "95% interval [nats/pixel]", "share of total LLR [%]",
               "sky pixels [% of model pixels]", "AUROC of sky pixels vs reference", "AUROC of the rest vs reference")
SKY_HEADERS_SHORT = ("set", "sky LLR/px [nats]", "95% interval", "share", "sky px", "AUROC sky", "AUROC rest")
SKY_READING = ("Each image's LLR is split into its empty-sky pixels (no source pixel of the segmentation map falls "
               "into them) and the rest. A sky LLR per pixel near 0 (and near the reference's) with an AUROC of "
               "the sky pixels ≈ 0.5 means the background cancels in the ratio, so the set's LLR comes from the "
               "galaxies; otherwise the set's sky, PSF or noise differ from the training data and part of its "
               "LLR measures that, not morphology.")


def sky_split_rows(summary: dict) -> tuple[list[tuple[str, list[str] | str]], list[str]]:
    """Formatted cells of the "LLR split: empty sky vs the rest" table, for the page and the terminal.

    A cell without a value shows ``– (a)``; each distinct reason is listed once as a
    footnote ``(a) ...``.  A set without any sky mask gets one such mark for the whole row.

    Args:
        summary: the content of summary.json.

    Returns:
        (rows, footnotes): rows are ``(set label, cells)`` with the 6 cells after the set
        name, or ``(set label, mark)`` for the whole row; no rows when no set has a sky split.
    """
    letters: dict[str, str] = {}

    def mark(reason: str) -> str:
        letters.setdefault(reason, "abcdefghijklmnopqrstuvwxyz"[len(letters) % 26])
        return f"({letters[reason]})"

    rows: list[tuple[str, list[str] | str]] = []
    for name in summary["ranking"]:
        sky = summary["sets"][name].get("sky")
        if sky is None:
            continue
        label = name + (" (reference)" if name == summary["reference"] else "")
        why = sky.get("null_reasons") or {}
        if sky.get("mask") is None:
            rows.append((label, f"– {mark(next(iter(why.values()), 'no sky mask'))}"))
            continue
        if sky["mask"] == "segmap_model":
            label += " " + mark("sky = outside the central-source mask /segmap_model (the set has no /segmap), "
                                "so companions, stars and the central galaxy's faint outskirts count as sky")

        def cell(key: str, text: Callable[[Any], str]) -> str:
            value = sky.get(key)
            return text(value) if value is not None else f"– {mark(why.get(key, 'not computable'))}"

        rows.append((label, [
            cell("llr_per_sky_pixel", lambda v: _fmt(v, 3)),
            cell("llr_per_sky_pixel_ci95", lambda v: f"[{_fmt(v[0], 3)}, {_fmt(v[1], 3)}]"),
            cell("sky_share", lambda v: f"{100 * v:.3g} %"),
            cell("sky_pixel_fraction", lambda v: f"{100 * v:.3g} %"),
            cell("auroc_sky_vs_reference", lambda v: _fmt(v, 3)),
            cell("auroc_rest_vs_reference", lambda v: _fmt(v, 3)),
        ]))
    return rows, [f"({letter}) {reason}" for reason, letter in letters.items()]


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

    Args:
        result: a :class:`morphllr.comparison.run.CompareResult`.
        folder: output folder; ``figures/`` is created inside.

    Returns:
        path of index.html.
    """
    folder = Path(folder)
    figs = _Figures(folder)
    notes = result.notes
    steps: list[Callable[[], None]] = [
        lambda: plot_llr_histograms(result, figs),
        lambda: plot_logp_scatter(result, figs),
        lambda: plot_mean_maps(result, figs),
        lambda: plot_radial_profiles(result, figs, notes),
        lambda: plot_pixel_maps(result, figs),
        lambda: plot_scaling_relation(result, figs, notes, (MASS_COLUMNS, False, "{col}  [log M☉]"),
                                      (SIZE_COLUMNS, True, "log10 {col}"), "size–mass relation",
                                      "scaling_size_mass.png"),
        lambda: plot_scaling_relation(result, figs, notes, (SIZE_COLUMNS, True, "log10 {col}"),
                                      (SERSIC_N_COLUMNS, False, "{col}"), "Sérsic index–size relation",
                                      "scaling_sersic_size.png"),
        lambda: plot_galleries(result, figs),
        lambda: plot_pair_deltas(result, figs),
    ]
    for step in steps:
        step()
    notes[:] = merge_notes(notes, result.sets)  # in place: summary.json shares this list
    page = render_html(result.summary, figs.items, figs.folder, notes)
    index = folder / "index.html"
    index.write_text(page, encoding="utf-8")
    return index


def print_ranking(summary: dict, console=None) -> None:
    """Print the ranking table in the terminal (rich).

    Args:
        summary: the content of summary.json.
        console: a rich Console (default: a new one on stdout).
    """
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    matched = summary.get("matched") or {}
    from rich import box

    # A light box and no wrapping keep the whole table legible in an 80-column terminal or CI log.
    table = Table(title=f"LLR ranking (reference: {summary['reference']}; higher = more realistic)",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    multi = _multi_pair(summary)
    if multi:
        table.caption = ("LLR columns in nats per image. model σ = spread of ΔLLR over the "
                         f"{summary.get('model_pairs')} model pairs; " + _MARK_LEGEND)
    else:
        table.caption = "LLR columns in nats per image."
    table.caption_justify = "left"
    columns = ["#", "set", "n", "mean LLR", "95% interval", "ΔLLR vs ref", "matched ΔLLR", "AUROC"]
    if multi:
        columns[-1:-1] = ["model σ"]
    for col in columns:
        table.add_column(col, justify="left" if col == "set" else "right", no_wrap=True)
    for rank, name in enumerate(summary["ranking"], 1):
        e = summary["sets"][name]
        md = (matched.get("delta_llr") or {}).get(name)
        me = (matched.get("delta_llr_err") or {}).get(name)
        is_ref = name == summary["reference"]
        cells = [str(rank), name + (" (ref)" if is_ref else ""), str(e["n"]),
                 _fmt(e["mean_llr"]), f"[{_fmt(e['ci95'][0])}, {_fmt(e['ci95'][1])}]",
                 f"{_fmt(e['delta_llr'])} ± {_fmt(e['delta_llr_err'], 2)}",
                 "–" if md is None else f"{_fmt(md)} ± {_fmt(me, 2)}"]
        if multi:
            cells.append("ref" if is_ref else f"{_fmt(e.get('model_std'), 3)} {stability_mark(e, is_ref)}")
        table.add_row(*cells, _fmt(e["auroc_vs_reference"], 3))
    _print_full_width(console, table)
    console.print(stability_line(summary), highlight=False, soft_wrap=True)
    print_sky_split(summary, console)


def stability_line(summary: dict) -> str:
    """One line for the terminal: the ranking agreement over model pairs, or that it is not measured."""
    if not _multi_pair(summary):
        return ("stability under retraining: not measured (one p_obs and one p_arch model); train with --seeds "
                "and compare the ensembles to measure it")
    n = summary.get("n_models") or {}
    unstable = [name for name in summary["ranking"] if summary["sets"][name].get("stable") is False]
    paired = [f"{name} {_fmt(e['delta_llr_paired'])} ± {_fmt(e['delta_llr_paired_err'], 2)}"
              for name in summary["ranking"] for e in [summary["sets"][name]]
              if e.get("delta_llr_pairing") == "paired" and e.get("delta_llr_paired") is not None]
    return (f"stability under retraining: {n.get('obs')} x {n.get('arch')} models = {summary.get('model_pairs')} "
            f"model pairs; ranking agreement {_fmt(summary.get('ranking_agreement'), 3)} (share of pairs of sets "
            "ordered as the ensemble ranking, averaged over model pairs; 1 = all agree)"
            + (f"; may not survive retraining: {', '.join(unstable)}" if unstable else "")
            + (f"\npaired ΔLLR vs the reference over the same galaxies (what the mark judges) [nats]: "
               f"{'; '.join(paired)}" if paired else ""))


def print_sky_split(summary: dict, console=None) -> None:
    """Print the short "LLR split: empty sky vs the rest" table (see :func:`sky_split_rows`).

    Args:
        summary: the content of summary.json.
        console: a rich Console (default: a new one on stdout).
    """
    from rich import box
    from rich.console import Console
    from rich.table import Table

    rows, footnotes = sky_split_rows(summary)
    if not rows:
        return
    console = console or Console()
    table = Table(title="LLR split: empty sky vs the rest", box=box.SIMPLE_HEAD, pad_edge=False,
                  caption="sky LLR/px in nats per empty-sky pixel; ≈ 0 (as in the reference) with AUROC sky ≈ 0.5 = "
                          "the background cancels. share = mean sky LLR / mean LLR; sky px = empty-sky share of "
                          "the model pixels.", caption_justify="left")
    for col in SKY_HEADERS_SHORT:
        table.add_column(col, justify="left" if col == "set" else "right", no_wrap=True)
    for label, cells in rows:
        table.add_row(label, *([cells] + [""] * (len(SKY_HEADERS_SHORT) - 2) if isinstance(cells, str) else cells))
    _print_full_width(console, table)
    for note in footnotes:
        console.print(note, highlight=False, soft_wrap=True)


def _print_full_width(console, table) -> None:
    """Never cut numbers to fit a narrow terminal (or an 80-column CI log): print at full width."""
    from rich.measure import Measurement

    needed = Measurement.get(console, console.options.update_width(1000), table).maximum
    narrow = console.width
    console.width = max(narrow, needed)
    try:
        console.print(table)
    finally:
        console.width = narrow
