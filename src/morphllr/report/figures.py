"""The comparison report's figures: matplotlib (Agg), each saved as PNG (embedded in the page) and PDF (vector,
for a paper) with the same stem under ``figures/``, collected in page order.

The figures are drawn from :class:`morphllr.comparison.report_data.ReportInputs`, i.e. from the files compare
wrote (``summary.json``, ``scores.csv``, ``report_data.h5``), so ``morphllr compare --figures-only`` re-draws
the same figures; a :class:`~morphllr.comparison.result.CompareResult` is accepted too (turned into the same
inputs in memory).  A figure whose inputs are missing (e.g. no stellar-mass column) is skipped; why is already
in the result's notes (:func:`morphllr.comparison.figure_data.figure_notes`).

Every figure shows the sets in one order, the ranking (most realistic first, as the page's table), each in one
style: the reference in black, the others in the Okabe-Ito colour-blind-safe palette in ranking order (line
style and marker change after the seventh).  LLR maps use the diverging ``RdBu`` map centred on 0: blue = more
likely under p_obs (realistic), red = more likely under p_arch (Sérsic-like).  Per set, ``gallery_<slug>`` and
``profile_<slug>`` (its radial LLR profile against the reference's) are filed under :data:`PER_SET_SECTION`
for the page's per-set details.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from morphllr.comparison.figure_data import SCALING_RELATIONS, profiles_in_re, relation_points
from morphllr.comparison.report_data import ReportInputs
from morphllr.comparison.result import name_slug, stability_delta
from morphllr.data.catalog import MASS_COLUMNS

_CMAP_LLR = "RdBu"  # blue = more likely under p_obs (realistic), red = more likely under p_arch
#: the page's section of the stability figure (placed inside the stability section of index.html)
STABILITY_SECTION = "Stability under retraining"
#: the section of the per-set figures gallery_<slug> and profile_<slug> (placed in each set's details)
PER_SET_SECTION = "Per set"
#: the reference's colour, and the Okabe-Ito colour-blind-safe colours of the other sets (yellow last: faint on white)
REFERENCE_COLOUR = "#000000"
SET_COLOURS = ("#E69F00", "#56B4E9", "#009E73", "#0072B2", "#D55E00", "#CC79A7", "#F0E442")
_LINESTYLES = ("-", "--", "-.", ":")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X")
#: matplotlib settings of every figure: print-sized fonts, fonts embedded as TrueType in the PDFs
STYLE = {"font.size": 9, "axes.labelsize": 9, "axes.titlesize": 9, "legend.fontsize": 8, "xtick.labelsize": 8,
         "ytick.labelsize": 8, "pdf.fonttype": 42, "ps.fonttype": 42}
PNG_DPI = 90
PER_IMAGE = "nats per image"
PER_PIXEL = "nats per pixel"


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _inputs(result) -> ReportInputs:
    """The figures' inputs: ``result`` itself (read from files) or the same built from a CompareResult."""
    return ReportInputs.from_result(result)


def set_styles(inputs) -> dict[str, dict[str, Any]]:
    """name -> matplotlib style (``color``, ``ls``, ``marker``) of every set, in the figures' order (the ranking).

    The reference is black and solid; the others take the Okabe-Ito colours in ranking order.
    """
    inputs = _inputs(inputs)
    styles, k = {}, 0
    for name in inputs.set_order:
        if name == inputs.reference:
            styles[name] = {"color": REFERENCE_COLOUR, "ls": "-", "marker": "o"}
            continue
        styles[name] = {"color": SET_COLOURS[k % len(SET_COLOURS)], "ls": _LINESTYLES[(k // len(SET_COLOURS)) % 4],
                        "marker": _MARKERS[(k // len(SET_COLOURS)) % len(_MARKERS)]}
        k += 1
    return styles


def _label(inputs, name: str) -> str:
    return f"{name} (reference)" if name == inputs.reference else name


def _symmetric_limit(arrays: list[np.ndarray], q: float = 99.0) -> float:
    values = np.concatenate([np.abs(a[np.isfinite(a)]).ravel() for a in arrays if a is not None] or [np.zeros(1)])
    lim = float(np.percentile(values, q)) if values.size else 1.0
    return lim if lim > 0 else 1.0


def _display(image: np.ndarray) -> np.ndarray:
    """(C, H, W) model-input image -> (H, W) for display (channel mean)."""
    return np.asarray(image, dtype=np.float64).mean(axis=0)


def _centres(edges: np.ndarray) -> np.ndarray:
    edges = np.asarray(edges, dtype=np.float64)
    return 0.5 * (edges[1:] + edges[:-1])


class Figures:
    """Collects saved figures (section, PNG file name, caption) in page order; each is saved as PNG and PDF."""

    def __init__(self, folder: Path):
        self.folder = Path(folder) / "figures"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.items: list[tuple[str, str, str]] = []  # (section, file name, caption)

    def save(self, fig, name: str, section: str, caption: str) -> None:
        """Save ``fig`` as ``name`` (a ``.png``) and as the PDF of the same stem, then close it."""
        plt = _plt()
        stem = name[:-4] if name.endswith(".png") else name
        try:
            with plt.rc_context({"pdf.fonttype": 42}):
                fig.savefig(self.folder / f"{stem}.png", dpi=PNG_DPI, bbox_inches="tight")
                # no creation date: the same inputs give the same PDF
                fig.savefig(self.folder / f"{stem}.pdf", bbox_inches="tight", metadata={"CreationDate": None})
        finally:
            plt.close(fig)
        self.items.append((section, f"{stem}.png", caption))


def figure_names(name: str) -> dict[str, str]:
    """The per-set figures' PNG file names of set ``name``: ``gallery``, ``profile``, ``pixel_maps``."""
    slug = _slug(name)
    return {"gallery": f"gallery_{slug}.png", "profile": f"profile_{slug}.png", "pixel_maps": f"pixel_maps_{slug}.png"}


def plot_llr_histograms(result, figs: Figures) -> None:
    """All sets' LLR distributions on one axis, with the outlier threshold."""
    inputs = _inputs(result)
    plt = _plt()
    styles = set_styles(inputs)
    sets = inputs.ordered_sets()
    all_llr = np.concatenate([r.llr for r in sets.values()])
    lo, hi = np.percentile(all_llr, [0.5, 99.5])
    bins = np.linspace(lo, hi if hi > lo else lo + 1, 50)
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, res in sets.items():
        st = styles[name]
        ax.hist(np.clip(res.llr, bins[0], bins[-1]), bins=bins, density=True, histtype="step", lw=2,
                color=st["color"], ls=st["ls"], label=f"{_label(inputs, name)}: mean {res.llr.mean():.3g} nats")
    ax.axvline(inputs.summary["outlier_threshold_llr"], color="0.4", ls=":", label="reference 0.15th percentile")
    ax.set_xlabel(f"LLR = log p_obs - log p_arch  [{PER_IMAGE}]")
    ax.set_ylabel("probability density  [per nat]")
    ax.legend()
    figs.save(fig, "llr_histograms.png", "Distributions",
              "LLR of every image (nats per image), all sets on one axis, in ranking order. Right = more like the "
              "observed galaxies than like their smooth Sérsic archetypes; values outside the plotted range are "
              "piled into the end bins.")


def plot_logp_scatter(result, figs: Figures) -> None:
    """log p_obs against log p_arch per image; the diagonal is LLR = 0."""
    inputs = _inputs(result)
    plt = _plt()
    styles = set_styles(inputs)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for name, res in inputs.ordered_sets().items():
        n = len(res.llr)
        keep = np.random.default_rng(0).choice(n, size=min(n, 3000), replace=False)  # readable, fast
        ax.scatter(res.scores["logp_arch"][keep], res.scores["logp_obs"][keep], s=4, alpha=0.5,
                   color=styles[name]["color"], marker=styles[name]["marker"], label=_label(inputs, name))
    lims = np.array([ax.get_xlim(), ax.get_ylim()])
    line = [lims.min(), lims.max()]
    ax.plot(line, line, "k--", lw=1, label="LLR = 0")
    ax.set_xlabel(f"log p_arch  [{PER_IMAGE}]")
    ax.set_ylabel(f"log p_obs  [{PER_IMAGE}]")
    ax.legend(markerscale=3)
    figs.save(fig, "logp_scatter.png", "Distributions",
              "Log-likelihood (nats per image) under the observed-galaxy model against the archetype model (up to "
              "3000 images per set). Points above the dashed line have LLR > 0.")


def plot_pair_deltas(result, figs: Figures) -> None:
    """ΔLLR vs the reference under every model pair, per set (only with more than one pair)."""
    inputs = _inputs(result)
    summary = inputs.summary
    if (summary.get("model_pairs") or 1) < 2:
        return
    names = [n for n in inputs.set_order if n != summary["reference"]
             and summary["sets"][n].get("delta_llr_by_pair") is not None]
    if not names:
        return
    plt = _plt()
    styles = set_styles(inputs)
    fig, ax = plt.subplots(figsize=(max(4.5, 1.2 * len(names) + 2), 4))
    rng = np.random.default_rng(0)
    for x, name in enumerate(names):
        e = summary["sets"][name]
        d = np.asarray(e["delta_llr_by_pair"], dtype=np.float64).ravel()
        delta, err = stability_delta(e)
        ax.scatter(x + rng.uniform(-0.15, 0.15, d.size), d, s=14, alpha=0.7, color=styles[name]["color"],
                   marker=styles[name]["marker"])
        bar = 2 * np.hypot(err or 0.0, e.get("model_std") or 0.0)
        ax.errorbar([x + 0.3], [delta], yerr=[[bar], [bar]], fmt="o", color="k", capsize=3, ms=4)
    ax.axhline(0, color="k", lw=0.8, ls=":")
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.set_xlabel("set (ranking order)")
    ax.set_ylabel(f"ΔLLR vs reference  [{PER_IMAGE}]")
    figs.save(fig, "pair_delta_llr.png", STABILITY_SECTION,
              "ΔLLR against the reference (nats per image) under each model pair (coloured points: one per p_obs x "
              "p_arch pair; paired over shared galaxies where the sets share them) and the ensemble's ΔLLR with ±2 "
              "sqrt(err² + model σ²) (black). A set whose points straddle 0 may change sides on retraining.")


def plot_pixel_maps(result, figs: Figures) -> None:
    """Gallery of per-pixel maps: image | log p_obs | log p_arch | LLR, per set."""
    inputs = _inputs(result)
    plt = _plt()
    for name, res in inputs.ordered_sets().items():
        g = res.gallery.get("maps")
        if not g or len(g["indices"]) == 0:
            continue
        rows = len(g["indices"])
        llr_maps = g["map_llr"] if "map_llr" in g else g["map_obs"] - g["map_arch"]
        fig, axes = plt.subplots(rows, 4, figsize=(8, 2.0 * rows + 0.6), squeeze=False)
        lim = _symmetric_limit([llr_maps])
        lp = np.concatenate([g["map_obs"].ravel(), g["map_arch"].ravel()])
        lp = lp[np.isfinite(lp)]  # masked pixels are NaN (their terms are not in the LLR)
        lp_lo, lp_hi = np.percentile(lp, [1, 99]) if lp.size else (-1.0, 1.0)
        images = {}
        for r in range(rows):
            panels = [(_display(g["images"][r]), "gray", None, None, "image (model input)"),
                      (g["map_obs"][r], "viridis", lp_lo, lp_hi, "log p_obs per pixel"),
                      (g["map_arch"][r], "viridis", lp_lo, lp_hi, "log p_arch per pixel"),
                      (llr_maps[r], _CMAP_LLR, -lim, lim, "LLR per pixel")]
            for c, (img, cmap, vmin, vmax, title) in enumerate(panels):
                ax = axes[r, c]
                im = ax.imshow(img, origin="lower", cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    ax.set_title(title)
                if c == 0:
                    ax.set_ylabel(f"id {g['ids'][r]}\nLLR {g['llr'][r]:.3g} nats", fontsize=8)
                images[c] = im
        for c, label in ((1, f"log p_obs  [{PER_PIXEL}]"), (2, f"log p_arch  [{PER_PIXEL}]"),
                         (3, f"LLR  [{PER_PIXEL}]\nblue = realistic")):
            # one bar under each column keeps every panel the same size
            bar = fig.colorbar(images[c], ax=list(axes[:, c]), orientation="horizontal", fraction=0.04, pad=0.02)
            bar.set_label(label, fontsize=7)
        figs.save(fig, figure_names(name)["pixel_maps"], "Pixel maps",
                  f"{name}: galaxies spanning the LLR range (highest first). Per-pixel log-likelihoods in nats per "
                  "pixel; in the LLR map blue pixels are better explained by the observed-galaxy model, red pixels "
                  "by the smooth Sérsic model; masked pixels (not in the LLR) are blank.")


def plot_mean_maps(result, figs: Figures) -> None:
    """Per set: mean pixel LLR after centring each galaxy on its light-weighted centroid."""
    inputs = _inputs(result)
    plt = _plt()
    sets = inputs.ordered_sets()
    names = list(sets)
    lim = _symmetric_limit([r.mean_map for r in sets.values()])
    fig, axes = plt.subplots(1, len(names), figsize=(2.6 * len(names) + 0.8, 3.0), squeeze=False)
    for ax, name in zip(axes[0], names):
        m = sets[name].mean_map
        h, w = m.shape
        extent = (-w / 2, w / 2, -h / 2, h / 2)  # pixel edges around the stamp centre
        im = ax.imshow(m, origin="lower", cmap=_CMAP_LLR, vmin=-lim, vmax=lim, extent=extent,
                       interpolation="nearest")
        ax.set_title(_label(inputs, name))
        ax.set_xlabel("Δx  [model pixels]")
        if ax is axes[0][0]:
            ax.set_ylabel("Δy  [model pixels]")
    fig.colorbar(im, ax=list(axes[0]), label=f"mean LLR  [{PER_PIXEL}]")
    figs.save(fig, "mean_llr_maps.png", "Where the difference is",
              "Mean per-pixel LLR (nats per pixel) of each set, every galaxy shifted so that its light-weighted "
              "centre is at the stamp centre (Δx = Δy = 0). Shows where in a galaxy the images look real (blue) or "
              "Sérsic-like (red).")


def _profile(res, in_re: bool) -> tuple[np.ndarray, np.ndarray]:
    """(bin centres, mean LLR per pixel) of a set's radial profile, in R_e or in model pixels."""
    if in_re:
        return _centres(res.profile_re_edges), np.asarray(res.profile_re, dtype=np.float64)
    return _centres(res.profile_pix_edges), np.asarray(res.profile_pix, dtype=np.float64)


def _radius_label(in_re: bool) -> str:
    return "radius  [R_e]" if in_re else "radius  [model pixels]"


def plot_radial_profiles(result, figs: Figures) -> None:
    """Mean pixel LLR against radius, in R_e when every set has sizes, else in model pixels."""
    inputs = _inputs(result)
    plt = _plt()
    styles = set_styles(inputs)
    sets = inputs.ordered_sets()
    in_re = profiles_in_re(sets)  # the note when not: figure_data.figure_notes
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, res in sets.items():
        x, y = _profile(res, in_re)
        ok = np.isfinite(y)
        st = styles[name]
        ax.plot(x[ok], y[ok], marker=st["marker"], ls=st["ls"], ms=3, color=st["color"], label=_label(inputs, name))
    ax.axhline(0, color="0.5", lw=0.5)
    ax.set_xlabel(_radius_label(in_re))
    ax.set_ylabel(f"mean LLR  [{PER_PIXEL}]")
    ax.legend()
    figs.save(fig, "radial_llr_profile.png", "Where the difference is",
              "Mean LLR per pixel (nats per pixel) in annuli around each galaxy's centre"
              + (" in units of its half-light radius R_e (catalogue sersic_re_pix x preprocessing zoom)."
                 if in_re else " in model pixels."))


def plot_set_profiles(result, figs: Figures, only: str | None = None) -> None:
    """Per set (or set ``only``): its radial LLR profile against the reference's (``profile_<slug>``)."""
    inputs = _inputs(result)
    plt = _plt()
    styles = set_styles(inputs)
    sets = inputs.ordered_sets()
    in_re = profiles_in_re(sets)
    ref = sets.get(inputs.reference)
    for name in [n for n in sets if only is None or n == only]:
        fig, ax = plt.subplots(figsize=(4.5, 3.2))
        shown = [name] if ref is None or name == inputs.reference else [inputs.reference, name]
        for other in shown:
            x, y = _profile(sets[other], in_re)
            ok = np.isfinite(y)
            st = styles[other]
            ax.plot(x[ok], y[ok], marker=st["marker"], ls=st["ls"], ms=3, color=st["color"],
                    label=_label(inputs, other))
        ax.axhline(0, color="0.5", lw=0.5)
        ax.set_xlabel(_radius_label(in_re))
        ax.set_ylabel(f"mean LLR  [{PER_PIXEL}]")
        ax.legend()
        against = ("" if name == inputs.reference else f" against the reference {inputs.reference}'s (black)")
        figs.save(fig, figure_names(name)["profile"], PER_SET_SECTION,
                  f"{name}: mean LLR per pixel (nats per pixel) in annuli around each galaxy's centre"
                  + (" in units of its half-light radius R_e" if in_re else " in model pixels") + against
                  + ". Below the reference's curve at some radius = less realistic there.")


def _axis_label(col: str, log: bool, unit: Any, mass: bool = False) -> str:
    """An axis label for a catalogue column, with its unit (from the catalogue, else from the column's name)."""
    if mass:
        return f"{col}  [log10 M/M☉]"
    text = "" if unit is None else str(unit)
    if not text:
        for suffix, guess in (("_kpc", "kpc"), ("_arcsec", "arcsec"), ("_pix", "pixels")):
            if col.lower().endswith(suffix):
                text = guess
    if log:
        return f"log10 ({col} / {text})" if text else f"log10 {col}"
    return f"{col}  [{text}]" if text else col


def plot_scaling_relation(result, figs: Figures, title: str, x_label: str | None = None,
                          y_label: str | None = None, file_name: str = "") -> None:
    """One panel per set: 2-D bins of a scaling relation coloured by mean LLR, reference medians on top.

    Args:
        title: a relation of :data:`morphllr.comparison.figure_data.SCALING_RELATIONS` (what is skipped and why
            is in the result's notes already: :func:`morphllr.comparison.figure_data.figure_notes`).
        x_label / y_label: axis labels (``{col}`` is the catalogue column used); None: the column with its unit.
    """
    from scipy.stats import binned_statistic, binned_statistic_2d

    inputs = _inputs(result)
    sets = inputs.ordered_sets()
    relation, _ = relation_points(sets, title)
    if relation is None:
        return
    plt = _plt()
    (x_cands, x_log), (y_cands, y_log) = SCALING_RELATIONS[title]
    data, xe, ye = relation.points, relation.x_edges, relation.y_edges
    ref = data.get(inputs.reference)
    stats2d = {n: binned_statistic_2d(d[0], d[1], d[2], "mean", bins=[xe, ye]).statistic for n, d in data.items()}
    counts = {n: binned_statistic_2d(d[0], d[1], None, "count", bins=[xe, ye]).statistic for n, d in data.items()}
    finite = np.concatenate([s[np.isfinite(s)] for s in stats2d.values()])
    vmin, vmax = np.percentile(finite, [5, 95]) if finite.size else (0, 1)
    fig, axes = plt.subplots(1, len(data), figsize=(3.2 * len(data) + 1, 3.4), squeeze=False, sharey=True)
    for ax, (name, d) in zip(axes[0], data.items()):
        img = np.where(counts[name] >= 2, stats2d[name], np.nan).T  # one galaxy is not a mean
        mesh = ax.pcolormesh(xe, ye, img, cmap="viridis", vmin=vmin, vmax=vmax)
        if ref is not None:
            med = binned_statistic(ref[0], ref[1], "median", bins=xe).statistic
            ax.plot(_centres(xe), med, "w-", lw=3)
            ax.plot(_centres(xe), med, "k-", lw=1.5, label=f"{inputs.reference} median")
        ax.set_title(_label(inputs, name))
        cat = sets[name].catalog
        unit = (lambda col: cat[col].unit if cat is not None and col in cat.colnames else None)
        ax.set_xlabel(x_label.format(col=d[3]) if x_label else
                      _axis_label(d[3], x_log, unit(d[3]), mass=x_cands is MASS_COLUMNS))
        if ax is axes[0][0]:
            ax.set_ylabel(y_label.format(col=d[4]) if y_label else
                          _axis_label(d[4], y_log, unit(d[4]), mass=y_cands is MASS_COLUMNS))
            if ref is not None:
                ax.legend(loc="best", fontsize=7)
    fig.colorbar(mesh, ax=list(axes[0]), label=f"mean LLR  [{PER_IMAGE}]")
    figs.save(fig, file_name, "Scaling relations",
              f"{title}: bins (2 or more galaxies) coloured by the mean LLR (nats per image) of the galaxies in "
              "them; black line: the reference set's median relation. Shows which kinds of galaxies look realistic.")


def plot_galleries(result, figs: Figures, only: str | None = None) -> None:
    """Per set (or set ``only``): most realistic, least realistic, and outliers below the reference's 0.15th
    percentile (``gallery_<slug>``)."""
    inputs = _inputs(result)
    plt = _plt()
    rows_spec = [("most_realistic", "most realistic"), ("least_realistic", "least realistic"),
                 ("outliers", "outliers")]
    for name, res in inputs.ordered_sets().items():
        if only is not None and name != only:
            continue
        rows = [(key, label) for key, label in rows_spec if res.gallery.get(key) and len(res.gallery[key]["indices"])]
        if not rows:
            continue
        cols = max(len(res.gallery[key]["indices"]) for key, _ in rows)
        fig, axes = plt.subplots(len(rows), cols, figsize=(1.5 * cols + 0.4, 1.7 * len(rows) + 0.3), squeeze=False)
        for r, (key, label) in enumerate(rows):
            g = res.gallery[key]
            for c in range(cols):
                ax = axes[r, c]
                ax.set_xticks([])
                ax.set_yticks([])
                if c >= len(g["indices"]):
                    ax.axis("off")
                    continue
                ax.imshow(_display(g["images"][c]), origin="lower", cmap="gray", interpolation="nearest")
                ax.set_title(f"{g['llr'][c]:.3g}", fontsize=7)
                if c == 0:
                    extra = f"\n({g['n_total']} in all)" if key == "outliers" else ""
                    ax.set_ylabel(label + extra, fontsize=8)
        fig.suptitle(f"{_label(inputs, name)}: LLR [{PER_IMAGE}] above each image", fontsize=8)
        figs.save(fig, figure_names(name)["gallery"], PER_SET_SECTION,
                  f"{name}: highest- and lowest-LLR images (LLR in nats per image above each) and outliers below "
                  f"the reference's 0.15th percentile (LLR < {inputs.summary['outlier_threshold_llr']:.3g} nats).")


def _slug(name: str) -> str:
    """A set name in file names (:func:`morphllr.comparison.result.name_slug`; compare refuses names sharing one)."""
    return name_slug(name)


def draw_figures(result, folder: Path) -> Figures:
    """Every figure of the report, saved under ``folder/figures/`` as PNG and PDF, in page order.

    Args:
        result: :class:`~morphllr.comparison.report_data.ReportInputs` (read from compare's files) or a
            :class:`~morphllr.comparison.result.CompareResult` (only read).
        folder: the report folder.
    """
    inputs = _inputs(result)
    figs = Figures(folder)
    plt = _plt()
    with plt.rc_context(STYLE):
        plot_llr_histograms(inputs, figs)
        plot_logp_scatter(inputs, figs)
        plot_mean_maps(inputs, figs)
        plot_radial_profiles(inputs, figs)
        plot_pixel_maps(inputs, figs)
        plot_scaling_relation(inputs, figs, "size–mass relation", file_name="scaling_size_mass.png")
        plot_scaling_relation(inputs, figs, "Sérsic index–size relation", file_name="scaling_sersic_size.png")
        for name in inputs.set_order:  # per set: gallery then profile, for the set's details
            plot_galleries(inputs, figs, only=name)
            plot_set_profiles(inputs, figs, only=name)
        plot_pair_deltas(inputs, figs)
    return figs

