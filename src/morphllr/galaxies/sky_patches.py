"""Empty-sky patches: tiled from the empty blocks of frames, and added to images (``--sky-patches``).

Real-sky archetypes need empty-sky cutouts at least as large as the flux cutouts.  Real
frames rarely hold a cutout-sized region free of sources (small Galaxy Zoo 2 JPEG frames
around a galaxy; a crowded 2048 x 1489 SDSS frame), so the patches are assembled from
smaller empty blocks of the frames' own pixels:

1. :func:`sky_mask` detects every source of a frame (SExtractor's algorithm through sep)
   and grows it by ``dilate`` pixels to keep out the faint wings below the threshold;
   NaN/inf pixels are never sky;
2. :func:`empty_blocks` collects every ``block`` x ``block`` square that lies wholly in
   that sky, starting on a ``grid`` of pixels (compression blocks of a JPEG stay whole and
   keep their phase).  Each frame is cut into *regions* of about ``region`` pixels (a frame
   smaller than two regions is one region) and a block belongs to the region it lies
   wholly in.  With ``part=(K, M)`` only part K of every frame is used: every M-th stripe
   of ``region`` columns, starting with the K-th (:func:`part_stripes`).  Stripes split the
   columns, so frames of one SDSS run, which overlap in rows, still give disjoint sky, and
   interleaving them gives every part the same mix of crowded and empty sky (one side of
   the shared frame lies towards M2): ``1/2`` for training sets, ``2/2`` for scoring, never
   a shared pixel;
3. :func:`tile_sky_patches` fills each patch with blocks from *different* regions, each
   turned by a random quarter turn and flip.  Regions are disjoint, so the blocks of a
   patch never overlap, and one large frame is enough; with small frames (one region
   each) every block of a patch comes from a different frame, as before.  All blocks of
   one patch come from frames of similar sky noise (and, if given, similar sky level,
   which sets where an 8-bit floor lies), so a patch is not a patchwork of deep and shallow skies.

Pixels are copied, never resampled or smoothed.  A patch keeps what a synthetic noise
model misses -- the pixel histogram (e.g. an 8-bit floor), the noise correlations inside
a block -- but has seams every ``block`` pixels, where the correlation between neighbours
is lost.  :func:`sky_statistics` measures what matters for checking that (rms, histogram,
neighbour correlations).  :func:`sky_patch_library` does all of it for files (SDSS frames
in the preset's working unit, or arrays) and records where every block came from;
:func:`make_sky_patches` writes that as ``.npy`` + ``.json`` (``morphllr sky-patches``).

Using a library: :func:`load_sky_patches` reads empty-sky cutouts from a file, :func:`load_sky_library`
checks them as the :class:`SkyLibrary` images are inserted into (synth, mock, archetypes), and
:func:`add_sky_patch` adds one random patch (crop, flip, quarter turn) to an image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from morphllr.atomic import atomic_file, claims
from morphllr.data import sdss_frames as sdss
from morphllr.data.imageset import ImageSet
from morphllr.data.preprocess import as_preprocessing
from morphllr.data.segmentation import sky_sigma
from morphllr.errors import MorphllrError


def sky_mask(frame: np.ndarray, dilate: int = 4, nsigma: float = 1.5, minarea: int = 5) -> np.ndarray:
    """Pixels of a frame that are at least ``dilate`` pixels away from every detected source.

    Detection is sep's (SExtractor's) thresholding of the 3x3-filtered frame at ``nsigma``
    global sky rms, like :func:`morphllr.data.segmentation.segment`, but without deblending:
    deblending only splits sources, the mask needs their union, and deblending a crowded
    2048 x 1489 SDSS frame takes ~20 s against ~1 s.

    Args:
        frame: sky-subtracted (H, W) flux, or (C, H, W) (detected on the channel sum);
            NaN/inf pixels are ignored by the detection and never count as sky.
        dilate: pixels each source is grown by (a disc), to stay clear of wings below the threshold.
        nsigma: detection threshold in sky sigmas.
        minarea: minimum connected pixels of a source.

    Returns:
        bool (H, W), True for empty sky.
    """
    from scipy.ndimage import distance_transform_edt

    frame = np.asarray(frame, np.float32)
    if frame.ndim == 3:
        finite = np.isfinite(frame).all(axis=0)
        frame = np.where(finite, frame, 0.0).sum(axis=0)
    else:
        finite = np.isfinite(frame)
    sources = _source_pixels(np.where(finite, frame, 0.0), ~finite, nsigma, minarea)
    if not sources.any():
        return finite.copy()
    # distance of every pixel to the nearest source pixel: > dilate is a disc-shaped dilation
    return (distance_transform_edt(~sources) > dilate) & finite


def _source_pixels(image: np.ndarray, bad: np.ndarray, nsigma: float, minarea: int) -> np.ndarray:
    """bool (H, W): pixels of sources detected above ``nsigma`` sky rms (sep, no deblending)."""
    import sep

    data = np.ascontiguousarray(image, dtype=np.float32)  # sep needs native byte order
    mask = np.ascontiguousarray(bad, dtype=bool) if bad.any() else None
    sigma = sky_sigma(data, mask)
    if sigma > 0:
        threshold = nsigma * sigma
    else:  # a noise-free frame: everything above 0.1 % of the peak is a source
        peak = float(data.max()) if data.size else 0.0
        if peak <= 0:
            return np.zeros(data.shape, bool)
        threshold = 1e-3 * peak

    def extract():
        return sep.extract(data, threshold, mask=mask, minarea=minarea, deblend_nthresh=1, segmentation_map=True)[1]

    try:
        segmap = extract()
    except Exception as exc:  # sep raises plain Exception when a crowded frame overflows its pixel stack
        if "pixel buffer" not in str(exc) and "object" not in str(exc):
            raise
        # enlarge sep's (global) buffers for this frame only: sep allocates the whole pixel stack on
        # every call, so a stack sized for a 2048 x 1489 frame left behind makes each later call ~0.5 s
        stack, limit = sep.get_extract_pixstack(), sep.get_sub_object_limit()
        sep.set_extract_pixstack(max(data.size, stack))
        sep.set_sub_object_limit(max(4096, limit))
        try:
            segmap = extract()
        finally:
            sep.set_extract_pixstack(stack)
            sep.set_sub_object_limit(limit)
    return segmap > 0


class FrameBlocks:
    """Array-like (K, C, B, B) view of blocks cut on demand from their frames (no copies held).

    ``blocks[k]`` is ``frames[frame[k]][:, y[k]:y[k] + B, x[k]:x[k] + B]``; ``blocks[k, c]`` etc.
    index further; ``np.asarray(blocks)`` stacks them all.
    """

    def __init__(self, frames: list, frame: np.ndarray, y: np.ndarray, x: np.ndarray, size: int):
        self.frames, self.frame, self.y, self.x, self.size = frames, frame, y, x, int(size)
        channels = frames[0].shape[0] if frames else 1
        self.shape = (len(frame), channels, self.size, self.size)
        self.dtype = np.dtype(np.float32)
        self.ndim = 4

    def __len__(self) -> int:
        return len(self.frame)

    def _one(self, k: int) -> np.ndarray:
        y, x, b = int(self.y[k]), int(self.x[k]), self.size
        return self.frames[int(self.frame[k])][:, y:y + b, x:x + b]

    def __getitem__(self, key):
        rest = ()
        if isinstance(key, tuple):
            key, rest = key[0], key[1:]
        if isinstance(key, (int, np.integer)):
            out = self._one(int(key))
            return out[rest] if rest else out
        index = np.arange(len(self))[key]
        out = np.stack([self._one(k) for k in index]) if len(index) else np.empty((0,) + self.shape[1:], np.float32)
        return out[(slice(None),) + rest] if rest else out

    def __array__(self, dtype=None, copy=None):
        out = self[:] if len(self) else np.empty(self.shape, np.float32)
        return out.astype(dtype or np.float32, copy=False)


@dataclass
class SkyBlocks:
    """Empty-sky blocks cut from a set of frames.

    Attributes:
        blocks: (K, C, B, B) flux: a float32 array, or a :class:`FrameBlocks` view that cuts
            each block from its frame when indexed.
        frame: int (K,) index of the frame each block comes from.
        y, x: int (K,) top-left pixel of each block in its frame.
        frame_sigma: float64 (F,) sky noise of every frame (std of its empty pixels; NaN if none).
        sky: the :func:`sky_mask` of every frame (limited to the used strip), bool (H, W) each
            (None if not kept).
        region: int (K,) region each block lies wholly in, numbered across all frames (None:
            one region per frame).  A patch takes at most one block per region.
        strips: per frame, the column ranges [x0, x1) of the part that was used (the whole
            width without ``part``; see :func:`part_stripes`; None if not recorded).
        region_size: the region side asked for (None: whole frames).
    """

    blocks: np.ndarray
    frame: np.ndarray
    y: np.ndarray
    x: np.ndarray
    frame_sigma: np.ndarray
    sky: list[np.ndarray] | None = None
    region: np.ndarray | None = None
    strips: list | None = None
    region_size: int | None = field(default=None)

    def __len__(self) -> int:
        return len(self.blocks)

    @property
    def sources(self) -> np.ndarray:
        """int (K,): what a patch may use once per block: the region, else the frame."""
        return self.frame if self.region is None else self.region


def parse_part(text: str | None, where: str = "--part") -> tuple[int, int] | None:
    """``"K/M"`` -> (K, M): the K-th (1-based) of M disjoint strips of every frame.

    Args:
        text: e.g. ``"1/2"``; None or empty for the whole frame.
        where: option name for messages.

    Returns:
        (K, M) or None.
    """
    if text is None or str(text).strip() == "":
        return None
    try:
        k, m = (int(v) for v in str(text).split("/"))
    except ValueError:
        raise MorphllrError(f"{where} {text}: expected K/M, e.g. 1/2 (training sky) or 2/2 (scoring sky)") from None
    if not (m >= 1 and 1 <= k <= m):
        raise MorphllrError(f"{where} {text}: need 1 <= K <= M, e.g. 1/2 or 2/2")
    return k, m


def part_stripes(width: int, part: tuple[int, int] | None, stripe: int | None = None) -> list[tuple[int, int]]:
    """Column ranges [x0, x1) of part K of M of a frame ``width`` pixels wide.

    The frame is cut into stripes of ``stripe`` columns and part K takes every M-th stripe
    starting with the K-th, so each part samples the whole frame: a frame whose crowding
    changes across it (a cluster on one side) gives its parts the same mix of sky.  The
    parts never share a pixel.  Without ``stripe`` the M parts are contiguous strips.

    Args:
        width: frame width in pixels.
        part: (K, M), or None for the whole width.
        stripe: stripe width in pixels (None: width / M, one strip per part).

    Returns:
        list of (x0, x1) column ranges, left to right.
    """
    if part is None:
        return [(0, int(width))]
    k, m = part
    if stripe is None or m == 1:
        return [((k - 1) * int(width) // m, k * int(width) // m)]
    edges = list(range(0, int(width), int(stripe))) + [int(width)]
    return [(edges[j], edges[j + 1]) for j in range(len(edges) - 1) if j % m == k - 1]


def _cell_edges(start: int, stop: int, region: int | None) -> np.ndarray:
    """Edges of the regions along one axis: about ``region`` px each, at least one region."""
    length = stop - start
    cells = 1 if region is None else max(1, length // int(region))
    return start + (np.arange(cells + 1) * length) // cells


def empty_blocks(frames, block: int = 16, grid: int = 4, dilate: int = 4, nsigma: float = 1.5,
                 minarea: int = 5, *, region: int | None = None, part: tuple[int, int] | None = None) -> SkyBlocks:
    """Every ``block``-square of empty sky in every frame, on a ``grid``-pixel lattice.

    Blocks of one frame may overlap (they step by ``grid`` pixels); :func:`tile_sky_patches`
    never puts two blocks of the same region into one patch, and a block counts only for
    the region it lies wholly in, so the blocks of a patch never overlap.

    Args:
        frames: iterable of sky-subtracted (C, H, W) (or (H, W)) flux frames, same units as the
            set; NaN/inf pixels are kept out of the sky.
        block: side of a block in pixels (a multiple of ``grid``).
        grid: blocks start at multiples of this many pixels (e.g. a JPEG's compression block in
            frame pixels), so the frames' pixel lattice phase is kept.
        dilate: source growth of :func:`sky_mask`.
        nsigma, minarea: detection settings of :func:`sky_mask`.
        region: side (pixels) of the regions a frame is cut into (a frame, or strip, shorter than
            2 x region along an axis is one region along it); None: one region per frame.
        part: (K, M): use only blocks wholly inside part K of M of every frame: with ``region``,
            every M-th stripe of ``region`` columns starting with the K-th (each part samples the
            whole frame); without, the K-th of M contiguous strips (:func:`part_stripes`).

    Returns:
        :class:`SkyBlocks` (``blocks`` a :class:`FrameBlocks` view of the frames).
    """
    if block < 1 or grid < 1 or block % grid:
        raise MorphllrError(f"sky patches: block={block} must be a positive multiple of grid={grid}")
    if region is not None and region < block:
        raise MorphllrError(f"--region {region}: regions must be at least one block ({block} px) wide; "
                            f"use --region >= {block}")
    kept, owner, ys, xs, regions, sigmas, masks, strips = [], [], [], [], [], [], [], []
    n_regions = 0
    for i, frame in enumerate(frames):
        frame = np.asarray(frame, np.float32)
        frame = frame[None] if frame.ndim == 2 else frame
        if frame.ndim != 3:
            raise MorphllrError(f"sky patches: frame {i} must be a (C, H, W) or (H, W) array, got shape {frame.shape}")
        kept.append(frame)
        c, h, w = frame.shape
        ranges = part_stripes(w, part, region)
        if not ranges:
            raise MorphllrError(f"sky patches: frame {i} is {w} px wide, too narrow for --part {part[0]}/{part[1]} "
                                f"with stripes of {region} columns; use a smaller --region or fewer parts")
        strips.append(ranges)
        empty = sky_mask(frame, dilate, nsigma, minarea)
        in_part = np.zeros(w, bool)
        for a, b in ranges:
            in_part[a:b] = True
        empty[:, ~in_part] = False  # a block touching another part's column is not empty here
        x0, x1 = ranges[0][0], ranges[-1][1]
        masks.append(empty)
        summed = np.where(empty, frame.sum(axis=0), 0.0)
        sigmas.append(float(summed[empty].std()) if empty.sum() > 1 else np.nan)
        # a block is empty when its summed-area count of empty pixels is block**2
        counts = np.pad(empty.astype(np.int32).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
        top, left = np.arange(0, h - block + 1, grid), np.arange(0, w - block + 1, grid)
        n_empty = (counts[np.ix_(top + block, left + block)] - counts[np.ix_(top, left + block)]
                   - counts[np.ix_(top + block, left)] + counts[np.ix_(top, left)])
        by, bx = np.nonzero(n_empty == block * block)  # row-major: the order of a y-then-x scan
        by, bx = top[by], left[bx]
        # regions are cut inside each stripe, so none straddles two stripes (or another part's columns)
        edges_y = _cell_edges(0, h, region)
        edges_x = np.unique(np.concatenate([_cell_edges(a, b, region) for a, b in ranges]))
        cy = np.searchsorted(edges_y, by, side="right") - 1
        cx = np.searchsorted(edges_x, bx, side="right") - 1
        inside = (by + block <= edges_y[np.minimum(cy + 1, len(edges_y) - 1)]) & (cx >= 0) & (cx < len(edges_x) - 1)
        inside &= bx + block <= edges_x[np.clip(cx + 1, 0, len(edges_x) - 1)]
        ys.append(by[inside])
        xs.append(bx[inside])
        owner.append(np.full(int(inside.sum()), i))
        regions.append(n_regions + cy[inside] * (len(edges_x) - 1) + cx[inside])
        n_regions += (len(edges_y) - 1) * (len(edges_x) - 1)
    if not kept:
        raise MorphllrError("sky patches: no frames given; pass at least one frame")
    if not sum(len(v) for v in ys):
        where = "" if part is None else f" of part {part[0]}/{part[1]}"
        raise MorphllrError(f"sky patches: no empty {block}x{block} block in any frame{where}; use a smaller block "
                            "or a smaller dilate")
    frame_of = np.concatenate(owner).astype(int)
    y, x = np.concatenate(ys).astype(int), np.concatenate(xs).astype(int)
    return SkyBlocks(FrameBlocks(kept, frame_of, y, x, block), frame_of, y, x, np.asarray(sigmas, np.float64), masks,
                     region=None if region is None else np.concatenate(regions).astype(int),
                     strips=[[list(r) for r in ranges] for ranges in strips], region_size=region)


def tile_sky_patches(sky: SkyBlocks, n: int, size: int, seed: int = 0, neighbours: int = 32,
                     match: np.ndarray | None = None, *, return_layout: bool = False):
    """Assemble ``n`` square sky patches from random empty blocks of different regions.

    Each patch picks a random region (frame, for frames of one region) that has blocks,
    then draws its blocks from the ``neighbours`` regions most like it (itself included),
    one block per region, each with a random quarter turn and flip.  "Like it" means close
    in the log sky noise of their frames and in the ``match`` quantities; regions that tie
    (all regions of one frame) are taken in a random order.  Every region can seed a patch,
    so the patches sample the sky of the whole set, while the blocks of one patch share a
    noise level.

    Args:
        sky: blocks from :func:`empty_blocks`.
        n: number of patches.
        size: patch side in pixels (a multiple of the block side).
        seed: random seed.
        neighbours: regions one patch draws from; at least the number of blocks per patch.
        match: optional (F,) or (F, K) per-frame values the frames of a patch should share as
            well, e.g. the log of the sky level that was subtracted (where an 8-bit floor lies).
            Every column, like the log sky noise, is scaled to unit spread across the frames.
        return_layout: also return where every block came from.

    Returns:
        float32 (n, C, size, size); with ``return_layout``, (patches, layout) where layout is
        int (n, (size / B)^2, 3): block index into ``sky``, quarter turns k, flip (0/1), slots
        in row-major order: ``patch[:, r*B:(r+1)*B, s*B:(s+1)*B] = f(np.rot90(block, k, axes=(1, 2)))``
        with f mirroring the columns when flip is 1.
    """
    if int(n) != n or n < 1:
        raise MorphllrError(f"--n {n}: must be a positive number of patches")
    n = int(n)
    k, c, b, _ = sky.blocks.shape
    if size < b or size % b:
        raise MorphllrError(f"--size {size}: must be a multiple of the block side {b}; change --size or --block")
    per_side = size // b
    need = per_side * per_side
    source_of = sky.sources
    sources, first = np.unique(source_of, return_index=True)
    frames = np.unique(sky.frame)
    if len(sources) < need:
        if len(sources) == len(frames):
            what = f"only {len(frames)} frames have an empty block"
        else:
            what = (f"only {len(sources)} regions (of about {sky.region_size} px, in {len(frames)} frame(s)) "
                    "have an empty block")
        raise MorphllrError(f"--size {size}: a {size}x{size} patch takes {need} blocks from different frames or "
                            f"regions, but {what}; use a smaller --size, a smaller --region or --block, "
                            "or more frames")
    neighbours = min(max(int(neighbours), need), len(sources))
    keys = [np.log(sky.frame_sigma[frames])[:, None]]
    if match is not None:
        match = np.asarray(match, np.float64)
        match = match[:, None] if match.ndim == 1 else match
        if match.ndim != 2 or len(match) != len(sky.frame_sigma):
            raise MorphllrError(f"sky patches: match has shape {match.shape}; give one row per frame "
                                f"({len(sky.frame_sigma)})")
        keys.append(match[frames])
    keys = np.concatenate(keys, axis=1)
    if not np.isfinite(keys).all():
        raise MorphllrError("sky patches: a frame's sky noise or match value is not finite (or the noise is 0)")
    keys = keys / np.where(keys.std(axis=0) > 0, keys.std(axis=0), 1.0)
    keys = keys[np.searchsorted(frames, sky.frame[first])]  # each region has its frame's keys
    rng = np.random.default_rng(seed)
    # ties are broken by a stream of their own: without ties the patches are those of one region per frame
    tie_rng = np.random.default_rng([int(seed), 0x746965])
    by_source = {s: np.flatnonzero(source_of == s) for s in sources}
    out = np.empty((n, c, size, size), np.float32)
    layout = np.empty((n, need, 3), np.int64)
    for p in range(n):
        seed_source = int(rng.integers(len(sources)))
        distance = ((keys - keys[seed_source]) ** 2).sum(axis=1)
        nearest = np.lexsort((tie_rng.random(len(sources)), distance))[:neighbours]
        chosen = sources[rng.choice(nearest, size=need, replace=False)]
        for slot, s in enumerate(chosen):
            index = int(rng.choice(by_source[s]))
            turns = int(rng.integers(4))
            blk = np.rot90(sky.blocks[index], k=turns, axes=(1, 2))
            flip = int(rng.integers(2))
            if flip:
                blk = blk[:, :, ::-1]
            y, x = divmod(slot, per_side)
            out[p, :, y * b:(y + 1) * b, x * b:(x + 1) * b] = blk
            layout[p, slot] = (index, turns, flip)
    return (out, layout) if return_layout else out


#: pixel offsets (dy, dx) whose correlation :func:`sky_statistics` reports
LAGS = ((0, 1), (1, 0), (1, 1), (0, 2), (2, 0), (0, 4), (4, 0))


def sky_statistics(patches: np.ndarray, mask: np.ndarray | None = None, lags=LAGS) -> dict:
    """Sky statistics: noise level, histogram shape and neighbour correlations.

    Skies of different depth are pooled fairly by standardising every patch with its own
    mean and rms first: the shape statistics (``z_quantiles``, ``z_skew``, ``corr``) then
    weigh every pixel (pair) equally instead of being dominated by the noisiest patches.

    Args:
        patches: (M, H, W) or (M, C, H, W) cutouts (each channel its own patch).
        mask: optional bool (M, H, W): only these pixels count (e.g. the empty sky of whole
            frames, from :func:`sky_mask`); a pixel pair counts when both pixels are in it.
        lags: (dy, dx) pixel offsets for the correlation coefficient.

    Returns:
        dict with ``n_patches``, ``n_pixels``; level: ``mean`` (pooled, flux units),
        ``rms_median`` (median of the patches' own rms), ``rms_spread`` (std of log rms
        between patches); shape of the standardised pixels: ``z_quantiles`` {percent: value}
        at 0.1, 1, 5, 50, 95, 99, 99.9 %, ``z_skew``, ``z_floor`` (median over patches of the
        lowest standardised pixel: a clipped sky has a floor near -2); ``corr`` {"dy,dx": rho}
        and ``corr_1`` / ``corr_2`` / ``corr_4`` (mean of the two axis lags).
    """
    x = np.asarray(patches, np.float64)
    if x.ndim == 4:
        channels = x.shape[1]
        x = x.reshape(-1, x.shape[-2], x.shape[-1])
    else:
        channels = 1
    if x.ndim != 3 or x.shape[0] == 0:
        raise MorphllrError(f"sky statistics: expected (M, H, W) patches, got shape {np.shape(patches)}")
    if mask is None:
        m = np.ones(x.shape, bool)
    else:
        m = np.repeat(np.asarray(mask, bool), channels, axis=0)
        if m.shape != x.shape:
            raise MorphllrError(f"sky statistics: mask shape {np.shape(mask)} does not match the patches' "
                                f"{np.shape(patches)}; give one (H, W) mask per patch")
    count = m.sum(axis=(1, 2))
    own_mean = np.where(m, x, 0.0).sum(axis=(1, 2)) / np.maximum(count, 1)
    own_rms = np.sqrt(np.where(m, (x - own_mean[:, None, None]) ** 2, 0.0).sum(axis=(1, 2)) / np.maximum(count, 1))
    use = (count > 1) & (own_rms > 0)  # a flat or one-pixel patch has no shape to measure
    if not use.any():
        raise MorphllrError("sky statistics: no patch has two or more sky pixels that differ")
    x, m, own_mean, own_rms = x[use], m[use], own_mean[use], own_rms[use]
    z = np.where(m, (x - own_mean[:, None, None]) / own_rms[:, None, None], 0.0)
    zpix = z[m]
    h, w = x.shape[1:]
    corr = {}
    for dy, dx in lags:
        both = m[:, dy:, dx:] & m[:, :h - dy, :w - dx]
        prod = (z[:, dy:, dx:] * z[:, :h - dy, :w - dx])[both]
        corr[f"{dy},{dx}"] = float(prod.mean()) if prod.size else float("nan")
    qs = (0.1, 1, 5, 50, 95, 99, 99.9)

    def axis_pair(k: int) -> float:
        vals = [corr[key] for key in (f"0,{k}", f"{k},0") if key in corr and np.isfinite(corr[key])]
        return float(np.mean(vals)) if vals else float("nan")

    return {
        "n_patches": int(len(x)),
        "n_pixels": int(m.sum()),
        "mean": float(x[m].mean()),
        "rms_median": float(np.median(own_rms)),
        "rms_spread": float(np.std(np.log(own_rms))),
        "z_quantiles": dict(zip(qs, (float(v) for v in np.percentile(zpix, qs)))),
        "z_skew": float((zpix**3).mean()),
        "z_floor": float(np.median(np.where(m, z, np.inf).min(axis=(1, 2)))),
        "corr": corr,
        "corr_1": axis_pair(1),
        "corr_2": axis_pair(2),
        "corr_4": axis_pair(4),
    }


@dataclass
class SkyPatchLibrary:
    """Tiled sky patches and where every block of them came from.

    Attributes:
        patches: float32 (n, C, size, size) empty sky, in the set's working flux unit.
        layout: int (n, (size / block)^2, 5): for every block slot of every patch (row-major),
            the frame index (into ``info["frames"]``), y, x (top-left pixel of the block in that
            frame), quarter turns k and flip: ``slot = f(np.rot90(frame[:, y:y+B, x:x+B], k, axes=(1, 2)))``,
            f mirroring the columns when flip is 1.
        info: JSON-able record: inputs and frames used, part and strips, block, grid, region,
            dilate, neighbours, seed, working unit, block and region counts, and the sky
            statistics of the frames' empty sky (``frames_sky``) and of the patches (``patches_sky``).
    """

    patches: np.ndarray
    layout: np.ndarray
    info: dict

    def __len__(self) -> int:
        return len(self.patches)


STAT_KEYS = ("mean", "rms_median", "z_skew", "corr_1")


def load_frames(paths, preprocessing="zanisi21", where: str = "FRAMES") -> tuple[list[np.ndarray], list[dict]]:
    """Frames for sky patches, in the working flux unit.

    Args:
        paths: one path or a list: SDSS frames ``frame-*.fits[.bz2]`` (nanomaggies, put into the
            working unit through the preset's zero point; see :mod:`morphllr.data.sdss_frames`), or files
            already in the working unit with the sky subtracted: an ImageSet (its ``/flux``),
            ``.npy``/``.npz`` or FITS cube of (N, H, W) or (N, C, H, W).
        preprocessing: the set's recipe (Preprocessing, dict, preset name or file): its
            ``zero_point`` is the working unit, its ``pixel_scale`` must be the frames' (sky is never
            resampled).  Used for SDSS frames only.
        where: argument name for messages.

    Returns:
        (frames: list of float32 (C, H, W), frames_info: one dict per frame with ``file`` and,
        for SDSS frames, ``band``, ``nmgy``, ``exptime``, ``pixel_scale``, ``shape``; for array
        files ``index`` within the file).
    """
    from pathlib import Path

    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not paths:
        raise MorphllrError(f"{where}: no frames given; pass SDSS frame files or a file of frames")
    prep = None
    out, info, bands = [], [], set()
    for path in map(Path, paths):
        if sdss.is_frame_file(path):
            if prep is None:
                prep = as_preprocessing(preprocessing)
                if prep.zero_point is None:
                    raise MorphllrError(f"--preset {prep.name}: has no zero_point, so the frames' nanomaggies cannot be "
                                        "put into its working unit; use --preset zanisi21 or --like MODEL_DIR|SET.h5")
            frame = sdss.read_frame(path)
            if prep.pixel_scale and abs(frame.pixel_scale / prep.pixel_scale - 1) > 0.01:
                raise MorphllrError(f"{path}: {frame.pixel_scale:.4f}\"/px, but the preset's pixel scale is "
                                    f"{prep.pixel_scale}\"/px and sky patches are never resampled; use frames at "
                                    "the set's pixel scale or a matching --preset/--like")
            bands.add(frame.band)
            out.append(frame.to_working(prep.zero_point)[None])
            info.append({"file": str(path), "band": frame.band, "nmgy": frame.nmgy, "exptime": frame.exptime,
                         "pixel_scale": frame.pixel_scale, "shape": list(frame.shape)})
        else:
            array = load_sky_patches(path, where=where, what="frames", finite=False)
            out.extend(array)
            info.extend({"file": str(path), "index": i} for i in range(len(array)))
    if len(bands) > 1:
        raise MorphllrError(f"{where}: SDSS frames of bands {sorted(bands)}; a patch must not mix bands, "
                            "make the patches of each band separately")
    channels = {f.shape[0] for f in out}
    if len(channels) > 1:
        raise MorphllrError(f"{where}: frames with {sorted(channels)} channels; give frames of the same bands")
    return out, info


def _frames_sky_statistics(frames: list[np.ndarray], sky: SkyBlocks, max_pixels: int = 1 << 22) -> dict:
    """:data:`STAT_KEYS` of :func:`sky_statistics` over the empty sky of the used strip of every frame.

    Frames (which may differ in size) are measured in groups of at most ``max_pixels`` pixels
    so that many full SDSS frames do not need gigabytes at once; groups are combined by
    their pixel counts (``rms_median``: median over groups).  One group gives exactly
    :func:`sky_statistics` of all frames.
    """
    crops = [(f[:, :, r[0][0]:r[-1][1]], m[:, r[0][0]:r[-1][1]]) for f, m, r in zip(frames, sky.sky, sky.strips)]
    groups, current, size = [], [], 0
    for crop in crops:
        if current and size + crop[1].size > max_pixels:
            groups.append(current)
            current, size = [], 0
        current.append(crop)
        size += crop[1].size
    groups.append(current)
    parts = []
    for group in groups:
        c = group[0][0].shape[0]
        h, w = max(f.shape[1] for f, _ in group), max(f.shape[2] for f, _ in group)
        x, mask = np.zeros((len(group), c, h, w), np.float32), np.zeros((len(group), h, w), bool)
        for i, (f, m) in enumerate(group):
            x[i, :, :f.shape[1], :f.shape[2]] = np.where(m, f, 0.0)
            mask[i, :m.shape[0], :m.shape[1]] = m
        if mask.sum() > 1:
            parts.append(sky_statistics(x, mask))
    if not parts:
        raise MorphllrError("sky statistics: the frames have no empty sky to measure")
    if len(parts) == 1:
        return {k: parts[0][k] for k in STAT_KEYS}
    weight = np.asarray([p["n_pixels"] for p in parts], float)
    out = {k: float(np.average([p[k] for p in parts], weights=weight)) for k in STAT_KEYS}
    out["rms_median"] = float(np.median([p["rms_median"] for p in parts]))
    return out


def sky_patch_library(frames_path, size: int, *, n: int | None = None, part: str | tuple | None = None,
                      preprocessing="zanisi21", block: int = 16, grid: int = 4, region: int | None = None,
                      dilate: int = 4, neighbours: int = 32, seed: int = 0) -> SkyPatchLibrary:
    """Sky patches tiled from the empty sky of files of frames (the engine of ``morphllr sky-patches``).

    Example: the scoring sky of the real r frame in zanisi21 counts::

        lib = sky_patch_library("../shared/data/sdss_frame/frame-r-002583-2-0136.fits.bz2", 128, part="2/2")
        lib.patches  # float32 (n, 1, 128, 128)

    Args:
        frames_path: one path or a list (see :func:`load_frames`).
        size: patch side in pixels (the flux-cutout side of the set the archetypes are for).
        n: number of patches (default: as many as the used empty sky fills once, i.e. empty
            pixels // size^2, and at least one per frame).
        part: ``"K/M"`` or (K, M): only part K of M of every frame (interleaved stripes of
            ``region`` columns, see :func:`part_stripes`).
        preprocessing: the set's recipe (working unit and pixel scale of SDSS frames).
        block, grid, dilate: see :func:`empty_blocks`.
        region: region side in pixels (default 4 x block); a frame smaller than two regions is one.
        neighbours: see :func:`tile_sky_patches`.
        seed: random seed of the tiling.

    Returns:
        :class:`SkyPatchLibrary`.
    """
    for name, value, low in (("--size", size, 1), ("--block", block, 1), ("--grid", grid, 1), ("--dilate", dilate, 0),
                             ("--neighbours", neighbours, 1)):
        if int(value) != value or value < low:
            raise MorphllrError(f"{name} {value}: must be an integer >= {low}")
    if n is not None and (int(n) != n or n < 1):
        raise MorphllrError(f"--n {n}: must be a positive number of patches; omit it for the default "
                            "(as many as the empty sky fills once)")
    part = parse_part(part) if not isinstance(part, tuple) else parse_part(f"{part[0]}/{part[1]}")
    region = 4 * int(block) if region is None else int(region)
    frames, frames_info = load_frames(frames_path, preprocessing)
    n_nonfinite = int(sum((~np.isfinite(f)).sum() for f in frames))
    sky = empty_blocks(frames, block=int(block), grid=int(grid), dilate=int(dilate), region=region, part=part)
    empty_pixels = int(sum(int(m.sum()) for m in sky.sky))
    if n is None:
        n = max(len(frames), empty_pixels // int(size) ** 2)
    patches, layout = tile_sky_patches(sky, int(n), int(size), seed=seed, neighbours=neighbours, return_layout=True)
    index = layout[..., 0]
    full = np.stack([sky.frame[index], sky.y[index], sky.x[index], layout[..., 1], layout[..., 2]], axis=-1)
    real, tiled = _frames_sky_statistics(frames, sky), sky_statistics(patches)
    unit = None
    if any("nmgy" in f for f in frames_info):
        prep = as_preprocessing(preprocessing)
        unit = {"preset": prep.name, "zero_point": prep.zero_point}
    info = {
        "format": "morphllr.sky_patches", "format_version": 1,
        "frames": frames_info, "n_frames": len(frames),
        "part": None if part is None else f"{part[0]}/{part[1]}", "strips": sky.strips,
        "size": int(size), "block": int(block), "grid": int(grid), "region": region, "dilate": int(dilate),
        "neighbours": int(neighbours), "seed": int(seed), "n_patches": len(patches), "working_unit": unit,
        "n_nonfinite_pixels": n_nonfinite, "empty_pixels": empty_pixels, "n_blocks": len(sky),
        "n_regions_with_blocks": int(len(np.unique(sky.sources))),
        "n_frames_with_blocks": int(len(np.unique(sky.frame))),
        "frames_sky": {k: real[k] for k in STAT_KEYS}, "patches_sky": {k: tiled[k] for k in STAT_KEYS},
        "layout_columns": ["frame", "y", "x", "quarter_turns", "flip"],
    }
    return SkyPatchLibrary(patches, full, info)


def _sky_outputs(arguments: dict) -> list:
    """The two outputs of :func:`make_sky_patches`: OUT.npy and its record OUT.json (one claim for both)."""
    out = Path(arguments["out"])
    return [("--out", out)] + ([("--out", out.with_suffix(".json"))] if out.suffix.lower() == ".npy" else [])


@claims(_sky_outputs, inputs=("frames_path", "preprocessing"))  # both checked and locked before any frame is read
def make_sky_patches(frames_path, out, size: int, *, n: int | None = None, block: int = 16, grid: int = 4,
                     dilate: int = 4, neighbours: int = 32, seed: int = 0, overwrite: bool = False,
                     part: str | tuple | None = None, region: int | None = None,
                     preprocessing="zanisi21") -> dict:
    """Tile sky patches from files of frames; write them as ``.npy`` and their record as ``.json``.

    The engine of ``morphllr sky-patches``; the ``.npy`` feeds ``morphllr archetypes --sky-patches``.

    Args:
        frames_path: one path or a list (see :func:`load_frames`).
        out: output ``.npy`` (float32 (n, C, size, size), working flux units), written atomically;
            ``out`` with suffix ``.json`` gets :attr:`SkyPatchLibrary.info` plus ``blocks``, the
            layout (n, slots, 5) as nested lists.
        size, n, part, preprocessing, block, grid, region, dilate, neighbours, seed: see
            :func:`sky_patch_library`.
        overwrite: replace ``out`` (and its ``.json``) if they exist.

    Returns:
        summary dict: n_frames, n_frames_with_blocks, n_regions_with_blocks, n_blocks, empty_pixels,
        n_patches, size, part, block, region, seed, frames (files), out, record (the .json), and the
        sky statistics (mean, rms_median, z_skew, corr_1) of the frames' empty sky and of the patches.
    """
    import json
    from pathlib import Path

    out = Path(out)
    if out.suffix.lower() != ".npy":
        raise MorphllrError(f"--out {out}: sky patches are written as .npy; give a name ending in .npy")
    record = out.with_suffix(".json")
    lib = sky_patch_library(frames_path, size, n=n, part=part, preprocessing=preprocessing, block=block, grid=grid,
                            region=region, dilate=dilate, neighbours=neighbours, seed=seed)
    with atomic_file(out, overwrite=overwrite) as tmp:
        with open(tmp, "wb") as fh:  # a file object: np.save would append .npy to the temporary name
            np.save(fh, lib.patches)
    with atomic_file(record, overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps({**lib.info, "patches_file": out.name, "patches_sha256": patches_sha256(lib.patches),
                                   "blocks": lib.layout.tolist()}))
    info = lib.info
    files = list(dict.fromkeys(f["file"] for f in info["frames"]))
    keys = ("n_frames", "n_frames_with_blocks", "n_regions_with_blocks", "n_blocks", "empty_pixels", "n_patches",
            "size", "part", "block", "region", "seed", "working_unit", "frames_sky", "patches_sky")
    return {**{k: info[k] for k in keys}, "frames": files, "out": str(out), "record": str(record)}


# ---------------------------------------------------------------------- using a library
def load_sky_patches(path, where: str = "--sky-patches", what: str = "empty-sky cutouts",
                     finite: bool = True) -> np.ndarray:
    """Empty-sky cutouts from an ImageSet (its ``/flux``), a ``.npy``/``.npz`` or a FITS cube.

    Args:
        path: file of sky-only cutouts in the same flux units and pixel scale as the set.
        where: option name for messages.
        what: what the file holds, for messages (``morphllr sky-patches`` reads its frames here too).
        finite: refuse NaN/inf pixels (False: keep them, e.g. frames whose bad pixels are masked later).

    Returns:
        float32 (M, C, Hp, Wp).
    """
    path = Path(path)
    if not path.is_file():
        raise MorphllrError(f"{where} {path}: file not found; give an ImageSet, .npy/.npz or FITS cube of {what}")
    if sdss.is_frame_file(path):
        raise MorphllrError(f"{where} {path}: an SDSS frame (sources and all, in nanomaggies), not {what}; cut empty "
                            f"sky from it with `morphllr sky-patches {path.name} --size SIZE --out sky.npy`")
    name = path.name.lower()
    suffix = path.suffix.lower()
    if suffix in (".h5", ".hdf5"):
        s = ImageSet.open(path)
        if s.flux is None:
            raise MorphllrError(f"{where} {path}: the set has no /flux cutouts; prepare it again with flux kept")
        arr = np.asarray(s.flux[:])
    elif suffix == ".npy":
        arr = np.load(path)
    elif suffix == ".npz":
        with np.load(path) as z:
            arr = z[z.files[0]]
    elif suffix in (".fits", ".fit", ".fz") or name.endswith((".fits.gz", ".fits.bz2", ".fit.gz", ".fit.bz2")):
        from astropy.io import fits

        arr = fits.getdata(path)
    else:
        raise MorphllrError(f"{where} {path}: unknown file type; use an ImageSet .h5, .npy, .npz or FITS cube")
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[None, None]
    elif arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim != 4:
        raise MorphllrError(f"{where} {path}: expected (M, H, W) or (M, C, H, W) {what}, got shape {arr.shape}")
    if finite and not np.isfinite(arr).all():
        raise MorphllrError(f"{where} {path}: {int((~np.isfinite(arr)).sum())} NaN/inf pixel(s) in the {what}; "
                            "replace them (sky patches must be finite), or rebuild the patches with "
                            "`morphllr sky-patches`, which keeps NaN pixels out of the sky")
    return arr


def add_sky_patch(image: np.ndarray, patches: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Add a random real empty-sky cutout (random crop, flip and quarter turn).

    Args:
        image: (C, ny, nx) noise-free image.
        patches: (M, C, Hp, Wp) sky-only cutouts, Hp >= ny, Wp >= nx, same flux units.
        rng: numpy random generator.

    Returns:
        image + sky (new array).
    """
    c, ny, nx = image.shape
    patch = patches[rng.integers(len(patches))]
    patch = np.rot90(patch, k=int(rng.integers(4)), axes=(1, 2))
    if rng.integers(2):
        patch = patch[:, :, ::-1]
    hp, wp = patch.shape[1:]
    if hp < ny or wp < nx:
        patch = np.rot90(patch, k=1, axes=(1, 2))  # a non-square patch may fit the other way round
        hp, wp = patch.shape[1:]
    y = int(rng.integers(hp - ny + 1))
    x = int(rng.integers(wp - nx + 1))
    return image + patch[:, y:y + ny, x:x + nx]


def patches_sha256(patches: np.ndarray) -> str:
    """sha256 of sky patches as float32 little-endian C-order bytes (what sets record of their sky)."""
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(patches, dtype="<f4").tobytes()).hexdigest()


@dataclass(frozen=True)
class SkyLibrary:
    """A sky-patch library that images are inserted into (synth, mock and archetypes ``--sky-patches``).

    Attributes:
        patches: float32 (M, C, H, W) empty sky in the working flux unit.
        file: name of the file it was read from ("" for an in-memory array).
        sha256: :func:`patches_sha256` of the patches.
        working_zero_point: AB magnitude of one flux unit, from the ``.json`` record that
            ``morphllr sky-patches`` writes beside the ``.npy`` (None when there is none).
        pixel_scale: arcsec per pixel of the frames, from the same record (None if unknown).
    """

    patches: np.ndarray
    file: str
    sha256: str
    working_zero_point: float | None = None
    pixel_scale: float | None = None

    def __len__(self) -> int:
        return len(self.patches)

    @property
    def info(self) -> dict:
        """What sets and universe.json record of their sky: file, sha256, number and size of the patches."""
        h, w = self.patches.shape[2:]
        info = {"file": self.file, "sha256": self.sha256, "n_patches": len(self.patches),
                "size": int(h) if h == w else f"{h}x{w}"}
        if self.working_zero_point is not None:
            info["zero_point"] = self.working_zero_point
        return info


def load_sky_library(source, where: str = "--sky-patches", *, size: int | None = None, channels: int | None = None,
                     zero_point: float | None = None, pixel_scale: float | None = None,
                     fix: str = "cut them with `morphllr sky-patches FRAMES --size SIZE --out SKY.npy`") -> SkyLibrary:
    """Read a sky-patch library and check it fits the images it will be added to.

    Args:
        source: a file readable by :func:`load_sky_patches` (the ``.npy``
            of ``morphllr sky-patches``, with its ``.json`` record beside it), an array
            (M, C, S, S) / (M, S, S), or a :class:`SkyLibrary`.
        where: option name for messages.
        size: smallest patch side needed (the flux cutout side), or None.
        channels: bands the images have, or None.
        zero_point: the images' working unit (AB mag of one flux unit): a library recorded in
            another unit is refused, or None not to check.
        pixel_scale: the images' arcsec per pixel, checked against the record (1 %), or None.
        fix: what the user can do, for messages.

    Returns:
        :class:`SkyLibrary`.
    """
    import json
    import math
    from pathlib import Path

    if isinstance(source, SkyLibrary):
        lib = source
    elif isinstance(source, (str, Path)):
    
        path = Path(source)
        patches = np.ascontiguousarray(load_sky_patches(path, where=where, what="empty-sky patches"), dtype="<f4")
        zp = scale = None
        record = path.with_suffix(".json")
        if path.suffix.lower() == ".npy" and record.is_file():
            try:
                info = json.loads(record.read_text())
            except (OSError, ValueError) as exc:
                raise MorphllrError(f"{where} {record}: unreadable record of the patches ({exc}); cut them again") from None
            digest = patches_sha256(patches)
            if info.get("patches_sha256") not in (None, digest):
                raise MorphllrError(f"{where} {path}: its record {record.name} describes other patches (sha256 "
                                    "differs); cut the patches again so the two match")
            zp = (info.get("working_unit") or {}).get("zero_point")
            scales = [f.get("pixel_scale") for f in info.get("frames", []) if f.get("pixel_scale")]
            scale = float(np.median(scales)) if scales else None
        lib = SkyLibrary(patches, path.name, patches_sha256(patches), None if zp is None else float(zp), scale)
    else:
        patches = np.asarray(source, dtype="<f4")
        patches = patches[:, None] if patches.ndim == 3 else patches
        lib = SkyLibrary(np.ascontiguousarray(patches), "", patches_sha256(patches))
    label = f"{where} {source}" if lib.file else where
    p = lib.patches
    if p.ndim != 4 or len(p) == 0:
        raise MorphllrError(f"{label}: expected (M, C, S, S) empty-sky patches, got shape {p.shape}; {fix}")
    if not np.isfinite(p).all():
        raise MorphllrError(f"{label}: the patches hold NaN or infinite pixels; {fix}")
    if size is not None and min(p.shape[2:]) < size:
        raise MorphllrError(f"{label}: patches are {p.shape[2]}x{p.shape[3]} pixels, smaller than the {size}x{size} "
                            f"cutout; {fix}")
    if channels is not None and p.shape[1] != channels:
        raise MorphllrError(f"{label}: {p.shape[1]} band(s) but the images have {channels}; {fix}")
    flat = np.flatnonzero(np.concatenate([p[a:a + 256].reshape(len(p[a:a + 256]), -1).std(axis=1) == 0
                                          for a in range(0, len(p), 256)]))
    if flat.size:
        raise MorphllrError(f"{label}: patch {int(flat[0])} (of {len(p)}) is constant, not sky; {fix}")
    if zero_point is not None and lib.working_zero_point is not None and \
            not math.isclose(lib.working_zero_point, zero_point, abs_tol=1e-6):
        raise MorphllrError(f"{label}: the patches are in a flux unit of AB zero point {lib.working_zero_point:g}, "
                            f"the images in {zero_point:g}; cut them with the same --preset/--like as the images")
    if pixel_scale is not None and lib.pixel_scale is not None and abs(lib.pixel_scale / pixel_scale - 1) > 0.01:
        raise MorphllrError(f"{label}: the patches are at {lib.pixel_scale:.4g}\"/px, the images at {pixel_scale:.4g}\"/px; "
                            "sky is never resampled: cut it from frames at the images' pixel scale")
    return lib
