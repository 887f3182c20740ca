"""The streaming scorer of ``compare``: every set once through both sides, per-image numbers and accumulators.

Per batch, one forward pass per member (:class:`SideScorer`) gives each image's log p under
every member and the members' mean per-pixel map; from them come the per-image columns
(``logp_obs``, ``logp_arch``, ``llr``, ``llr_segmap``, the empty-sky split, bits/dim, the masked
share, the rotation-averaged LLR), the domain guards' numbers and the fixed-size map summaries
(:mod:`morphllr.comparison.maps`).  Several processes (:mod:`morphllr.distributed`) each score
a contiguous shard; rank 0 gathers everything in input order.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from morphllr.comparison.maps import MapAccumulator, MapsWriter, centroids
from morphllr.comparison.models import Side, config_value
from morphllr.data.pixels import OpenedSet, SkyMasks, excluded_pixels
from morphllr.comparison.result import SetResult, no_central_record
from morphllr.data.inputs import check_batch
from morphllr.distributed import Context
from morphllr.domain import re_model_pixels
from morphllr.model.heads import bits_per_dim, is_discrete_head
from morphllr.score import ModelScorer, rich_progress
from morphllr.train.augment import rotate_continuous, rotate_lossless


class SideScorer:
    """Per-pixel log p maps of numpy batches under one side's members, timing the forward passes.

    One forward pass per member and batch: K_obs + K_arch passes give every one of the
    K_obs x K_arch pairs, LLR_ij = log p_obs,i - log p_arch,j, from the per-member sums.
    Each member is made ready once (:class:`morphllr.score.ModelScorer`: CPU threads,
    channels-last layout) and stays in evaluation mode while the scorer is open (``with``).
    """

    def __init__(self, side: Side, threads: int | None = None):
        self.side = side
        self.model = side.members[0]
        self.seconds = 0.0
        self._members = [ModelScorer(m, threads) for m in side.members]  # threads: this process's (None: automatic)
        self._modes = contextlib.ExitStack()

    def __enter__(self) -> "SideScorer":
        for member in self._members:
            self._modes.enter_context(member.evaluating())
        return self

    def __exit__(self, *exc) -> None:
        self._modes.close()

    def maps_sums_sky(self, batch: np.ndarray, sky: np.ndarray | None, keep: np.ndarray | None, images: str,
                      start: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The members' mean map ``(B, H, W)`` float32, each member's per-image log p ``(K, B)`` float64
        summed over the ``keep`` pixels, and each member's log p summed over the ``sky`` pixels ``(K, B)``
        (NaN: no mask).

        ``keep`` (bool ``(B, H, W)`` or None: all): the pixels whose terms are summed; the maps are of
        the whole image (masked pixels stay context for the later conditionals).  ``images`` and
        ``start`` (the batch's first image) name the images in messages.
        """
        began = time.perf_counter()
        total = None
        sums = np.empty((len(self.side), len(batch)))
        sky_sums = np.full((len(self.side), len(batch)), np.nan)
        for k, member in enumerate(self._members):
            maps = member(batch, start, None, images)
            if keep is None:
                sums[k] = maps.sum(axis=(1, 2), dtype=np.float64)
            else:  # float32 zeros: with nothing masked the sum is bit-identical to the unmasked one
                sums[k] = np.where(keep, maps, np.float32(0)).sum(axis=(1, 2), dtype=np.float64)
            if sky is not None:  # per member: each is judged against its own training record (domain.py)
                sky_sums[k] = np.where(sky, maps.astype(np.float64), 0.0).sum(axis=(1, 2))
            if len(self.side) == 1:
                total = maps
            elif total is None:
                total = maps.astype(np.float64)
            else:
                total += maps
        self.seconds += time.perf_counter() - began
        mean = total if len(self.side) == 1 else (total / len(self.side)).astype(np.float32)
        return mean, sums, sky_sums

    def maps(self, batch: np.ndarray, images: str, start: int = 0) -> np.ndarray:
        """The members' mean map ``(B, H, W)`` float32 of ``batch``."""
        return self.maps_sums_sky(batch, None, None, images, start)[0]


#: rotation draws come in blocks of this many images, each from its own seeded stream
ROTATION_BLOCK = 1024


def _rotation_draws(seed: int, set_index: int, start: int, stop: int, rotations: int, discrete: bool) -> np.ndarray:
    """``(rotations, stop - start)`` random angles (deg, [0, 180)) or quarter turns of images ``start:stop``.

    Image i's draws come from the stream ``(seed, set, i // ROTATION_BLOCK)``, so they do not
    depend on the batch size nor on how the set is split between processes.
    """
    out = np.empty((rotations, stop - start), dtype=np.int64 if discrete else np.float64)
    for block in range(start // ROTATION_BLOCK, (stop - 1) // ROTATION_BLOCK + 1 if stop > start else 0):
        rng = np.random.default_rng([seed, 11, set_index, block])
        draws = rng.integers(0, 4, (rotations, ROTATION_BLOCK)) if discrete else \
            rng.uniform(0.0, 180.0, (rotations, ROTATION_BLOCK))
        lo, hi = max(start, block * ROTATION_BLOCK), min(stop, (block + 1) * ROTATION_BLOCK)
        out[:, lo - start:hi - start] = draws[:, lo - block * ROTATION_BLOCK:hi - block * ROTATION_BLOCK]
    return out


def _rotate(batch: np.ndarray, draws: np.ndarray, discrete: bool) -> np.ndarray:
    """Rotate each image the way training augments (:mod:`morphllr.train.augment`: the same interpolation
    as the models saw), by its drawn angle.

    Continuous heads: any angle in [0, 180) deg, bicubic with reflected edges; the
    discretized head only has mass on integers, so it gets exact quarter turns.
    """
    x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
    if discrete:
        return rotate_lossless(x, torch.from_numpy(np.asarray(draws, dtype=np.int64))).numpy()
    return rotate_continuous(x, torch.from_numpy(np.asarray(draws, dtype=np.float32))).numpy()


def _rotate_mask(excluded: np.ndarray, draws: np.ndarray, discrete: bool) -> np.ndarray:
    """bool ``(B, H, W)`` masked pixels turned exactly as :func:`_rotate` turns their images.

    Quarter turns are exact; an arbitrary angle resamples the 0/1 mask with the images'
    interpolation and reflected edges, and a rotated pixel is masked when at least half of it is.
    """
    turned = _rotate(excluded[:, None].astype(np.float32), draws, discrete)[:, 0]
    return turned >= 0.5


def _split_sky(out: dict[str, np.ndarray], start: int, stop: int, map_obs: np.ndarray, map_arch: np.ndarray,
               sky: np.ndarray | None) -> None:
    """Fill ``llr_sky`` and ``n_sky_pixels`` of images ``start:stop`` (NaN without a mask)."""
    if sky is None:
        out["llr_sky"][start:stop] = np.nan
        out["n_sky_pixels"][start:stop] = np.nan
        return
    # float64 before subtracting, as for the llr column, so sky + rest adds up to the llr
    llr_map = map_obs.astype(np.float64) - map_arch
    out["llr_sky"][start:stop] = np.where(sky, llr_map, 0.0).sum(axis=(1, 2))
    out["n_sky_pixels"][start:stop] = sky.sum(axis=(1, 2))


def _finish_sky(out: dict[str, np.ndarray]) -> None:
    """Derived sky columns, once ``llr`` is known."""
    out["llr_rest"] = out["llr"] - out["llr_sky"]
    with np.errstate(invalid="ignore", divide="ignore"):
        out["llr_sky_per_pixel"] = np.where(out["n_sky_pixels"] > 0, out["llr_sky"] / out["n_sky_pixels"], np.nan)


#: per-image numbers of one set, gathered from every process in input order
_PER_IMAGE = ("logp_obs", "logp_arch", "llr_segmap", "llr_sky", "n_sky_pixels", "n_masked_pixels")


def _score_set(s: OpenedSet, scorers: tuple[SideScorer, SideScorer], batch_size: int, rotations: int,
               discrete: bool, prep: dict, maps_writer: MapsWriter, rng_seed: int, set_index: int,
               advance: Callable[[int], None], ctx=None, gather_maps: bool = False,
               leave_out: np.ndarray | None = None) -> SetResult | None:
    """Stream one set (this process's shard of it) through both models; per-image numbers + accumulators.

    ``leave_out`` (bool per image of the whole set, or None): images scored like the others but kept out of
    the mean map and radial profiles (the images without a central source, :func:`score_all`).

    With several processes (``ctx``, :mod:`morphllr.distributed`) every rank scores a contiguous
    shard; rank 0 receives the per-image numbers in input order, the summed map accumulators and
    (``gather_maps``: ``maps="all"``) every batch's maps for ``maps.h5``, and returns the SetResult
    (None on the other ranks).
    """
    ctx = ctx or Context()
    n, c, h, w = s.source.shape
    mine = ctx.shard(n, batch_size)
    m = mine.stop - mine.start
    out = {key: np.empty(m) for key in _PER_IMAGE}
    obs_scorer, arch_scorer = scorers
    members = {"obs": np.empty((len(obs_scorer.side), m)), "arch": np.empty((len(arch_scorer.side), m)),
               "obs_sky": np.empty((len(obs_scorer.side), m)), "arch_sky": np.empty((len(arch_scorer.side), m))}
    out["central_area"] = np.empty(m)  # the domain guard's galaxy size (domain.py)
    if rotations:
        out["llr_rot"] = np.empty(m)
    re_model, why = re_model_pixels(s.catalog, prep)
    notes = [] if why is None else [f"{s.name}: {why}; radial profile in model pixels instead of R_e"]
    if s.segmap is None:
        notes.append(f"{s.name}: no central-source mask (/segmap_model) in the set; llr_segmap is NaN")
    sky_masks = SkyMasks(s, (h, w))
    notes += sky_masks.notes
    acc = MapAccumulator(h, w, with_re=re_model is not None)
    if ctx.is_main:
        maps_writer.start(s.name, n, h, w)
    images = f"set {s.name}={s.label}"  # names the user's file in messages, not "array"
    for step, (start, batch) in enumerate(ctx.batches(s.source, batch_size)):
        if batch is not None:
            stop = start + len(batch)
            i0, i1 = start - mine.start, stop - mine.start  # positions in this shard's arrays
            check_batch(batch, images, discrete, start)
            sky = sky_masks.read(start, stop)  # masked pixels are never sky
            # masked pixels (sky noise) stay in the images as context; their own terms leave every sum
            excluded = excluded_pixels(s.mask, start, stop)
            keep = None if excluded is None else ~excluded
            (map_obs, sums_obs, sky_obs), (map_arch, sums_arch, sky_arch) = \
                obs_scorer.maps_sums_sky(batch, sky, keep, images, start), \
                arch_scorer.maps_sums_sky(batch, sky, keep, images, start)
            llr_map = map_obs - map_arch  # members' mean maps: the mean over pairs of the per-pixel LLR
            out["n_masked_pixels"][i0:i1] = 0 if excluded is None else excluded.sum(axis=(1, 2))
            members["obs"][:, i0:i1] = sums_obs
            members["arch"][:, i0:i1] = sums_arch
            members["obs_sky"][:, i0:i1] = sky_obs
            members["arch_sky"][:, i0:i1] = sky_arch
            out["logp_obs"][i0:i1] = sums_obs.mean(axis=0)
            out["logp_arch"][i0:i1] = sums_arch.mean(axis=0)
            masks = None
            if s.segmap is not None:
                masks = np.asarray(s.segmap[start:stop]) == 1
                central = masks if keep is None else masks & keep
                out["llr_segmap"][i0:i1] = np.where(central, llr_map, 0.0).sum(axis=(1, 2), dtype=np.float64)
                out["central_area"][i0:i1] = masks.sum(axis=(1, 2))  # the galaxy's size, masked pixels included
            else:
                out["llr_segmap"][i0:i1] = np.nan
                out["central_area"][i0:i1] = np.nan
            _split_sky(out, i0, i1, map_obs, map_arch, sky)
            if rotations:
                draws = _rotation_draws(rng_seed, set_index, start, stop, rotations, discrete)
                total = np.zeros(len(batch))
                for k in range(rotations):
                    turned = _rotate(batch, draws[k], discrete)
                    turned_llr = obs_scorer.maps(turned, images, start) - arch_scorer.maps(turned, images, start)
                    if excluded is not None:  # the mask turns with its image
                        turned_llr = np.where(_rotate_mask(excluded, draws[k], discrete), np.float32(0), turned_llr)
                    total += turned_llr.sum(axis=(1, 2), dtype=np.float64)
                out["llr_rot"][i0:i1] = total / rotations
            use = None if leave_out is None else ~leave_out[start:stop]
            if use is None or use.all():
                acc.add(llr_map, centroids(batch, masks), None if re_model is None else re_model[start:stop], keep)
            elif use.any():
                acc.add(llr_map[use], centroids(batch[use], None if masks is None else masks[use]),
                        None if re_model is None else re_model[start:stop][use], None if keep is None else keep[use])
            pair = np.stack([map_obs, map_arch], axis=1)  # (B, 2, H, W)
            if excluded is not None:  # masked pixels are NaN in maps.h5
                pair = np.where(excluded[:, None], np.float32(np.nan), pair)
        else:
            pair = np.empty((0, 2, h, w), np.float32)
        if not gather_maps:  # the same on every rank: every rank makes the same collectives
            advance(sum(ctx.exchange(len(pair))))
            continue
        parts = ctx.gather(pair)
        if ctx.is_main:
            for rank, part in enumerate(parts):
                if len(part):
                    maps_writer.write(s.name, ctx.batch_start(n, batch_size, rank, step), part[:, 0], part[:, 1])
                    advance(len(part))
    keys = list(out)
    member_keys = ("obs", "arch", "obs_sky", "arch_sky")
    rows = np.vstack([out[k][None] for k in keys] + [members[k] for k in member_keys])  # (columns, shard)
    table = ctx.gather_rows(np.ascontiguousarray(rows.T))  # (N, columns) in input order on rank 0
    sums = ctx.sum(np.concatenate([acc.sum.ravel(), acc.count.ravel(), acc.pix_sum, acc.pix_count, acc.re_sum,
                                   acc.re_count]))
    if not ctx.is_main:
        return None
    acc.set_totals(sums)
    out = {k: np.ascontiguousarray(table[:, j]) for j, k in enumerate(keys)}
    counts = {"obs": len(obs_scorer.side), "arch": len(arch_scorer.side)}
    members, col = {}, len(keys)
    for k in member_keys:
        width = counts[k.split("_")[0]]
        members[k] = np.ascontiguousarray(table[:, col:col + width].T)
        col += width
    n_valid = h * w - out["n_masked_pixels"]  # unmasked model pixels per image
    domain_values = {"sky_logp": {"obs": members.pop("obs_sky"), "arch": members.pop("arch_sky")},
                     "area": out.pop("central_area"), "n_valid": n_valid}
    out["llr"] = out["logp_obs"] - out["logp_arch"]
    _finish_sky(out)
    # bits per dimension: the usual PixelCNN unit (negative for continuous densities of
    # narrow-range images, which is fine: only differences matter), per unmasked dimension
    with np.errstate(invalid="ignore", divide="ignore"):
        dims = np.where(n_valid > 0, c * n_valid, np.nan)
        out["bpd_obs"] = bits_per_dim(out["logp_obs"], dims)
        out["bpd_arch"] = bits_per_dim(out["logp_arch"], dims)
        out["masked_share"] = out["n_masked_pixels"] / (h * w)
        out["llr_per_pixel"] = out["llr"] / np.where(n_valid > 0, n_valid, np.nan)
    for side, scorer in (("obs", obs_scorer), ("arch", arch_scorer)):
        if len(scorer.side) > 1:  # per-member columns of scores.csv / .parquet
            for name, row in zip(scorer.side.names, members[side]):
                out[f"logp_{side}_{name}"] = row
    ids = _ids(s.catalog, n)
    mean_map, prof_re, prof_pix = acc.results()
    return SetResult(name=s.name, scores=out, ids=ids, catalog=s.catalog, mean_map=mean_map,
                     profile_re=prof_re, profile_pix=prof_pix, notes=notes, sky_mask=sky_masks.kind,
                     member_logp=members, domain_values=domain_values)


def _ids(catalog: Any, n: int) -> np.ndarray:
    if catalog is not None and "id" in catalog.colnames:
        return np.asarray(catalog["id"])
    return np.arange(n)


@contextlib.contextmanager
def _progress(show: bool, total: int) -> Iterator[Callable[[int, str], None]]:
    """``advance(n, set name)`` of one rich progress bar over ``total`` images (a no-op when not shown)."""
    if not show:
        yield lambda n, label: None
        return
    with rich_progress("scoring {task.description}") as bar:
        task = bar.add_task("", total=total)
        yield lambda n, label: bar.update(task, advance=n, description=label)


def score_all(opened: list[OpenedSet], scorers: tuple[SideScorer, SideScorer], maps_folder: Path | None, *,
              batch_size: int, rotations: int, progress: bool, seed: int, keep_no_central: bool, ctx=None,
              gather_maps: bool = False, central: dict | None = None) -> dict[str, SetResult]:
    """Stream every set through both models (one progress bar over all images; rank 0 only).

    ``central``: set name -> ``(flags, where from)`` of :func:`morphllr.comparison.sets.central_flags` (True:
    the image shows a central source; None: the set does not say).  Unless ``keep_no_central``, a set's images
    without one are scored (``scores.csv`` lists them) but left out of everything else: its SetResult holds
    the other images' rows (:meth:`SetResult.without`) and its maps and profiles are summed without them.
    """
    obs_model = scorers[0].model
    discrete = is_discrete_head(config_value(obs_model.config, "head"))
    maps_writer = MapsWriter(maps_folder / "maps.h5" if maps_folder is not None else None)
    results: dict[str, SetResult] = {}
    try:
        with _progress(progress, sum(len(s.source) for s in opened)) as advance:
            for k, s in enumerate(opened):
                flags, source = (central or {}).get(s.name) or (None, None)
                leave_out = None if keep_no_central or flags is None or flags.all() else ~np.asarray(flags, bool)
                res = _score_set(s, scorers, batch_size, rotations, discrete, obs_model.preprocessing,
                                 maps_writer, seed, k, lambda n, _n=s.name: advance(n, _n), ctx=ctx,
                                 gather_maps=gather_maps, leave_out=leave_out)
                if res is not None:
                    res.central = None if flags is None else np.asarray(flags, bool)
                    res.no_central = no_central_record(res.ids, res.central, source, leave_out is not None)
                    results[s.name] = res if leave_out is None else res.without(leave_out)
    finally:
        maps_writer.close()
    return results
