"""The galleries of each set: which galaxies to show (most and least realistic, outliers, a spread) and their maps.

Only per-image numbers survive the streaming pass, so the few gallery galaxies are read and
scored again to get their images and per-pixel maps.
"""

from __future__ import annotations

import numpy as np

from morphllr.data.pixels import OpenedSet, excluded_pixels
from morphllr.comparison.result import SetResult
from morphllr.comparison.scoring import SideScorer

#: the paper's outliers: below the reference's 0.15th LLR percentile
OUTLIER_QUANTILE = 0.0015


def _gallery_indices(llr: np.ndarray, ref_cut: float, k: int) -> dict[str, np.ndarray]:
    """Which galaxies to show: most / least realistic, outliers, and a spread for the maps."""
    order = np.argsort(llr, kind="stable")
    k = min(k, len(llr))
    outliers = order[llr[order] < ref_cut][:k]
    spread = order[np.unique(np.linspace(0, len(llr) - 1, min(k, len(llr))).round().astype(int))]
    return {"most_realistic": order[::-1][:k], "least_realistic": order[:k], "outliers": outliers,
            "maps": spread[::-1]}


def fill_gallery(res: SetResult, s: OpenedSet, scorers: tuple[SideScorer, SideScorer], ref_cut: float,
                 k: int) -> None:
    """Re-score the few gallery galaxies to get their images and maps.

    ``indices`` are positions in ``res``'s rows, ``rows`` the images' positions in the set (they differ when
    images without a central source were left out, ``res.rows``)."""
    picks = _gallery_indices(res.llr, ref_cut, k)
    wanted = np.unique(np.concatenate(list(picks.values()))).astype(int)
    if wanted.size == 0:
        return
    in_set = wanted if res.rows is None else np.asarray(res.rows)[wanted]  # sorted, like wanted
    images = s.source.read(in_set)
    label = f"set {s.name}={s.label} (gallery)"
    map_obs, map_arch = scorers[0].maps(images, label), scorers[1].maps(images, label)
    excluded = excluded_pixels(s.mask, rows=in_set)
    if excluded is not None:  # shown as NaN: their terms are not in the LLR
        map_obs = np.where(excluded, np.float32(np.nan), map_obs)
        map_arch = np.where(excluded, np.float32(np.nan), map_arch)
    where = {int(i): j for j, i in enumerate(wanted)}
    n_outliers = int(np.sum(res.llr < ref_cut))
    for key, idx in picks.items():
        rows = [where[int(i)] for i in idx]
        idx = np.asarray(idx, dtype=int)
        res.gallery[key] = {"indices": idx, "rows": idx if res.rows is None else np.asarray(res.rows)[idx],
                            "ids": res.ids[idx],
                            "images": images[rows], "map_obs": map_obs[rows], "map_arch": map_arch[rows],
                            "llr": res.llr[np.asarray(idx, dtype=int)], "n_total": n_outliers}
