"""The comparison report's figures: matplotlib (Agg) PNGs under ``figures/``, collected in page order.

A figure whose inputs are missing (e.g. no stellar-mass column) is skipped; why is already in the
result's notes (:func:`morphllr.comparison.figure_data.figure_notes`): the figures only read the result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from morphllr.comparison.figure_data import profiles_in_re, relation_points
from morphllr.comparison.maps import PROFILE_RE_EDGES
from morphllr.report.formatting import stability_delta

_CMAP_LLR = "RdBu"  # blue = more likely under p_obs (realistic), red = more likely under p_arch
#: the page's section of the stability figure (placed inside the stability section of index.html)
STABILITY_SECTION = "Stability under retraining"


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


class Figures:
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


def plot_llr_histograms(result, figs: Figures) -> None:
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


def plot_logp_scatter(result, figs: Figures) -> None:
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


def plot_pair_deltas(result, figs: Figures) -> None:
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


def plot_pixel_maps(result, figs: Figures) -> None:
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


def plot_mean_maps(result, figs: Figures) -> None:
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


def plot_radial_profiles(result, figs: Figures) -> None:
    """Mean pixel LLR against radius, in R_e when every set has sizes, else in model pixels."""
    plt = _plt()
    colours = _colours(list(result.sets))
    in_re = profiles_in_re(result.sets)  # the note when not: figure_data.figure_notes
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


def plot_scaling_relation(result, figs: Figures, title: str, x_label: str, y_label: str, file_name: str) -> None:
    """One panel per set: 2-D bins of a scaling relation coloured by mean LLR, reference medians on top.

    Args:
        title: a relation of :data:`morphllr.comparison.figure_data.SCALING_RELATIONS` (what is skipped and why
            is in the result's notes already: :func:`morphllr.comparison.figure_data.figure_notes`).
        x_label / y_label: axis labels; ``{col}`` is the catalogue column used.
    """
    from scipy.stats import binned_statistic, binned_statistic_2d

    relation, _ = relation_points(result.sets, title)
    if relation is None:
        return
    plt = _plt()
    data, xe, ye = relation.points, relation.x_edges, relation.y_edges
    ref = data.get(result.reference)
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
        ax.set_xlabel(x_label.format(col=d[3]))
        if ax is axes[0][0]:
            ax.set_ylabel(y_label.format(col=d[4]))
            if ref is not None:
                ax.legend(fontsize=7, loc="best")
    fig.colorbar(mesh, ax=list(axes[0]), label="mean LLR [nats]")
    figs.save(fig, file_name, "Scaling relations",
              f"{title}: bins (2 or more galaxies) coloured by the mean LLR of the galaxies in them; black line: "
              "the reference set's median relation. Shows which kinds of galaxies look realistic.")


def plot_galleries(result, figs: Figures) -> None:
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


def draw_figures(result, folder: Path) -> Figures:
    """Every figure of the report, saved under ``folder/figures/``, in page order (reads ``result`` only)."""
    figs = Figures(folder)
    plot_llr_histograms(result, figs)
    plot_logp_scatter(result, figs)
    plot_mean_maps(result, figs)
    plot_radial_profiles(result, figs)
    plot_pixel_maps(result, figs)
    plot_scaling_relation(result, figs, "size–mass relation", "{col}  [log M☉]", "log10 {col}",
                          "scaling_size_mass.png")
    plot_scaling_relation(result, figs, "Sérsic index–size relation", "log10 {col}", "{col}",
                          "scaling_sersic_size.png")
    plot_galleries(result, figs)
    plot_pair_deltas(result, figs)
    return figs
