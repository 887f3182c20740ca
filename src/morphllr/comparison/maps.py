"""Fixed-size summaries of a set's per-pixel LLR maps: the centred mean map, radial profiles, ``maps.h5``.

Memory stays flat in the number of images: :class:`MapAccumulator` keeps running sums of
the centred LLR maps and of their radial profiles (in units of the half-light radius,
:data:`PROFILE_RE_EDGES`, and in model pixels); :class:`MapsWriter` streams every map to
``maps.h5`` batch by batch when all maps are asked for.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

#: Radial-profile bins: in units of the half-light radius, or in model pixels as fallback.
PROFILE_RE_EDGES = np.linspace(0.0, 4.0, 17)


def centroids(images: np.ndarray, masks: np.ndarray | None) -> np.ndarray:
    """(B, 2) light-weighted centre (y, x) of each galaxy, from its mask if there is one."""
    light = images.sum(axis=1)
    light = light - np.median(light, axis=(1, 2), keepdims=True)
    weights = np.clip(light, 0, None) ** 2  # squared: the bright core dominates, noise does not
    if masks is not None:
        weights = np.where(masks > 0, np.clip(light, 0, None) + 1e-12, 0.0)
    total = weights.sum(axis=(1, 2))
    h, w = light.shape[1:]
    yy, xx = np.mgrid[0:h, 0:w]
    centre = np.stack([np.full(len(light), (h - 1) / 2), np.full(len(light), (w - 1) / 2)], 1)
    ok = total > 0
    centre[ok, 0] = (weights[ok] * yy).sum(axis=(1, 2)) / total[ok]
    centre[ok, 1] = (weights[ok] * xx).sum(axis=(1, 2)) / total[ok]
    return centre


class MapAccumulator:
    """Running mean of centred LLR maps and radial profiles, fixed memory."""

    def __init__(self, h: int, w: int, with_re: bool):
        self.h, self.w = h, w
        self.sum = np.zeros((h, w))
        self.count = np.zeros((h, w))
        self.n_pix_bins = int(math.ceil(math.hypot(h, w) / 2)) + 1
        self.pix_sum = np.zeros(self.n_pix_bins)
        self.pix_count = np.zeros(self.n_pix_bins)
        self.with_re = with_re
        n_re = len(PROFILE_RE_EDGES) - 1
        self.re_sum = np.zeros(n_re)
        self.re_count = np.zeros(n_re)
        self._yy, self._xx = np.mgrid[0:h, 0:w]

    def add(self, llr_maps: np.ndarray, centres: np.ndarray, re_model: np.ndarray | None,
            keep: np.ndarray | None = None) -> None:
        """Add a batch of LLR maps; ``keep`` (bool, like the maps): only those pixels count (None: all)."""
        if keep is not None:
            self._add_kept(llr_maps, centres, re_model, keep)
            return
        h, w = self.h, self.w
        shifts = np.rint(np.array([(h - 1) / 2, (w - 1) / 2]) - centres).astype(int)
        shifts = np.clip(shifts, [-(h // 4), -(w // 4)], [h // 4, w // 4])  # never trust a wild centroid
        for m, (dy, dx) in zip(llr_maps, shifts):
            # place the map so that its centroid lands on the stamp centre; no wrap-around
            ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
            xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
            self.sum[yd, xd] += m[ys, xs]
            self.count[yd, xd] += 1
        r = np.hypot(self._yy[None] - centres[:, 0, None, None], self._xx[None] - centres[:, 1, None, None])
        k = np.minimum(r.astype(int), self.n_pix_bins - 1)
        self.pix_sum += np.bincount(k.ravel(), llr_maps.ravel(), self.n_pix_bins)
        self.pix_count += np.bincount(k.ravel(), minlength=self.n_pix_bins)
        if self.with_re and re_model is not None:
            ok = np.isfinite(re_model) & (re_model > 0)
            if ok.any():
                x = r[ok] / re_model[ok, None, None]
                kb = np.searchsorted(PROFILE_RE_EDGES, x, side="right") - 1
                inside = (kb >= 0) & (kb < len(self.re_sum))
                self.re_sum += np.bincount(kb[inside], llr_maps[ok][inside], len(self.re_sum))
                self.re_count += np.bincount(kb[inside], minlength=len(self.re_sum))

    def _add_kept(self, llr_maps: np.ndarray, centres: np.ndarray, re_model: np.ndarray | None,
                  keep: np.ndarray) -> None:
        """:meth:`add` counting only the ``keep`` pixels (masked pixels: neither sum nor count)."""
        h, w = self.h, self.w
        values = np.where(keep, llr_maps, 0.0)
        shifts = np.rint(np.array([(h - 1) / 2, (w - 1) / 2]) - centres).astype(int)
        shifts = np.clip(shifts, [-(h // 4), -(w // 4)], [h // 4, w // 4])
        for m, ok, (dy, dx) in zip(values, keep, shifts):
            ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
            xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
            self.sum[yd, xd] += m[ys, xs]
            self.count[yd, xd] += ok[ys, xs]
        r = np.hypot(self._yy[None] - centres[:, 0, None, None], self._xx[None] - centres[:, 1, None, None])
        k = np.minimum(r.astype(int), self.n_pix_bins - 1)
        self.pix_sum += np.bincount(k[keep], values[keep], self.n_pix_bins)
        self.pix_count += np.bincount(k[keep], minlength=self.n_pix_bins)
        if self.with_re and re_model is not None:
            ok = np.isfinite(re_model) & (re_model > 0)
            if ok.any():
                x = r[ok] / re_model[ok, None, None]
                kb = np.searchsorted(PROFILE_RE_EDGES, x, side="right") - 1
                inside = (kb >= 0) & (kb < len(self.re_sum)) & keep[ok]
                self.re_sum += np.bincount(kb[inside], values[ok][inside], len(self.re_sum))
                self.re_count += np.bincount(kb[inside], minlength=len(self.re_sum))

    def set_totals(self, flat: np.ndarray) -> None:
        """Replace the sums by ``flat`` (this accumulator's arrays concatenated, summed over processes)."""
        sizes = [self.sum.size, self.count.size, self.pix_sum.size, self.pix_count.size, self.re_sum.size,
                 self.re_count.size]
        parts = np.split(np.asarray(flat, dtype=np.float64), np.cumsum(sizes)[:-1])
        self.sum, self.count = parts[0].reshape(self.sum.shape), parts[1].reshape(self.count.shape)
        self.pix_sum, self.pix_count, self.re_sum, self.re_count = parts[2:]

    def results(self) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_map = self.sum / self.count
            prof_re = self.re_sum / self.re_count if self.with_re and self.re_count.any() else None
            prof_pix = self.pix_sum / self.pix_count
        return mean_map, prof_re, prof_pix


class MapsWriter:
    """All per-pixel maps to ``maps.h5`` (one group per set), written batch by batch."""

    def __init__(self, path: Path | None):
        self.fh = None
        if path is not None:
            import h5py

            self.fh = h5py.File(path, "w")
            self.fh.attrs["format"] = "morphllr.maps"
            self.fh.attrs["units"] = "nats per pixel"
            self.fh.attrs["masked_pixels"] = "NaN (the set's /mask_model: their terms are not in the sums)"

    def start(self, name: str, n: int, h: int, w: int) -> None:
        if self.fh is None:
            return
        group = self.fh.create_group(name)
        for key in ("llr", "logp_obs", "logp_arch"):
            group.create_dataset(key, shape=(n, h, w), dtype="f4", chunks=(min(n, 64), h, w), compression="lzf")

    def write(self, name: str, start: int, obs: np.ndarray, arch: np.ndarray) -> None:
        if self.fh is None:
            return
        stop = start + len(obs)
        self.fh[name]["logp_obs"][start:stop] = obs
        self.fh[name]["logp_arch"][start:stop] = arch
        self.fh[name]["llr"][start:stop] = obs - arch

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
