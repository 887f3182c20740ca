"""Empty-sky patches tiled from the empty corners of small frames (for ``archetypes --sky-patches``).

Real-sky archetypes need empty-sky cutouts at least as large as the flux cutouts.  When
the frames themselves are too small to hold an empty cutout-sized region (Galaxy Zoo 2
JPEGs: a 106 px frame around a galaxy whose segmentation spans most of the centre), the
patches are assembled from smaller empty blocks instead:

1. :func:`sky_mask` segments every frame with the package's own segmentation (sep) and
   grows every source, central or companion, by ``dilate`` pixels to keep out the faint
   wings that lie below the detection threshold;
2. :func:`empty_blocks` collects every ``block`` x ``block`` square that lies wholly in
   that sky, anywhere in the frame, starting on a ``grid`` of pixels (compression blocks
   of a JPEG stay whole and keep their phase);
3. :func:`tile_sky_patches` fills each patch with blocks from *different* frames, each
   turned by a random quarter turn and flip.  All blocks of one patch come from frames of
   similar sky noise (and, if given, similar sky level, which sets where an 8-bit floor
   lies), so a patch is not a patchwork of deep and shallow skies.

A patch therefore mixes the sky of many frames (drawn from the whole pool, not the
galaxy's own frame).  It keeps what a synthetic noise model misses -- the pixel
histogram (e.g. an 8-bit floor), the noise correlations inside a block -- but has seams
every ``block`` pixels, where the correlation between neighbours is lost.
:func:`sky_statistics` measures what matters for checking that (rms, histogram,
neighbour correlations).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import MorphllrError


def sky_mask(frame: np.ndarray, dilate: int = 4, nsigma: float = 1.5, minarea: int = 5) -> np.ndarray:
    """Pixels of a frame that are at least ``dilate`` pixels away from every detected source.

    Args:
        frame: sky-subtracted (H, W) flux, or (C, H, W) (detected on the channel sum).
        dilate: pixels each source is grown by (a disc), to stay clear of wings below the threshold.
        nsigma: detection threshold in sky sigmas (as :func:`morphllr.segmentation.segment`).
        minarea: minimum connected pixels of a source.

    Returns:
        bool (H, W), True for empty sky.
    """
    from scipy.ndimage import distance_transform_edt

    from .segmentation import segment

    seg = segment(frame, nsigma=nsigma, minarea=minarea)
    if not (seg.segmap > 0).any():
        return np.ones(seg.segmap.shape, bool)
    # distance of every pixel to the nearest source pixel: > dilate is a disc-shaped dilation
    return distance_transform_edt(seg.segmap == 0) > dilate


@dataclass
class SkyBlocks:
    """Empty-sky blocks cut from a set of frames.

    Attributes:
        blocks: float32 (K, C, B, B) flux.
        frame: int (K,) index of the frame each block comes from.
        y, x: int (K,) top-left pixel of each block in its frame.
        frame_sigma: float64 (F,) sky noise of every frame (std of its empty pixels; NaN if none).
        sky: the :func:`sky_mask` of every frame, bool (H, W) each (None if not kept).
    """

    blocks: np.ndarray
    frame: np.ndarray
    y: np.ndarray
    x: np.ndarray
    frame_sigma: np.ndarray
    sky: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.blocks)


def empty_blocks(frames, block: int = 16, grid: int = 4, dilate: int = 4, nsigma: float = 1.5,
                 minarea: int = 5) -> SkyBlocks:
    """Every ``block``-square of empty sky in every frame, on a ``grid``-pixel lattice.

    Blocks of one frame may overlap (they step by ``grid`` pixels); :func:`tile_sky_patches`
    never puts two blocks of the same frame into one patch.

    Args:
        frames: iterable of sky-subtracted (C, H, W) (or (H, W)) flux frames, same units as the set.
        block: side of a block in pixels (a multiple of ``grid``).
        grid: blocks start at multiples of this many pixels (e.g. a JPEG's compression block in
            frame pixels), so the frames' pixel lattice phase is kept.
        dilate: source growth of :func:`sky_mask`.
        nsigma, minarea: detection settings of :func:`sky_mask`.

    Returns:
        :class:`SkyBlocks`.
    """
    if block < 1 or grid < 1 or block % grid:
        raise MorphllrError(f"sky patches: block={block} must be a positive multiple of grid={grid}")
    out, owner, corners, sigmas, masks = [], [], [], [], []
    for i, frame in enumerate(frames):
        frame = np.asarray(frame, np.float32)
        frame = frame[None] if frame.ndim == 2 else frame
        if frame.ndim != 3 or not np.isfinite(frame).all():
            raise MorphllrError(f"sky patches: frame {i} must be a finite (C, H, W) or (H, W) array, "
                                f"got shape {frame.shape}")
        empty = sky_mask(frame, dilate, nsigma, minarea)
        masks.append(empty)
        summed = frame.sum(axis=0)
        sigmas.append(float(summed[empty].std()) if empty.sum() > 1 else np.nan)
        h, w = empty.shape
        # a block is empty when its summed-area count of empty pixels is block**2
        counts = np.pad(empty.astype(np.int32).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
        for y in range(0, h - block + 1, grid):
            for x in range(0, w - block + 1, grid):
                n = counts[y + block, x + block] - counts[y, x + block] - counts[y + block, x] + counts[y, x]
                if n == block * block:
                    out.append(frame[:, y:y + block, x:x + block])
                    owner.append(i)
                    corners.append((y, x))
    if not out:
        raise MorphllrError(f"sky patches: no empty {block}x{block} block in any frame; use a smaller block "
                            "or a smaller dilate")
    corners = np.asarray(corners, int)
    return SkyBlocks(np.stack(out).astype(np.float32), np.asarray(owner), corners[:, 0], corners[:, 1],
                     np.asarray(sigmas, np.float64), masks)


def tile_sky_patches(sky: SkyBlocks, n: int, size: int, seed: int = 0, neighbours: int = 32,
                     match: np.ndarray | None = None) -> np.ndarray:
    """Assemble ``n`` square sky patches from random empty blocks of different frames.

    Each patch picks a random frame that has blocks, then draws its blocks from the
    ``neighbours`` frames most like it (itself included), one block per frame, each with a
    random quarter turn and flip.  "Like it" means close in log sky noise and in the
    ``match`` quantities.  Every frame can seed a patch, so the patches sample the sky of
    the whole set, while the blocks of one patch share a noise level.

    Args:
        sky: blocks from :func:`empty_blocks`.
        n: number of patches.
        size: patch side in pixels (a multiple of the block side).
        seed: random seed.
        neighbours: frames one patch draws from; at least the number of blocks per patch.
        match: optional (F,) or (F, K) per-frame values the frames of a patch should share as
            well, e.g. the log of the sky level that was subtracted (where an 8-bit floor lies).
            Every column, like the log sky noise, is scaled to unit spread across the frames.

    Returns:
        float32 (n, C, size, size).
    """
    k, c, b, _ = sky.blocks.shape
    if size < b or size % b:
        raise MorphllrError(f"sky patches: size={size} must be a multiple of the block side {b}")
    per_side = size // b
    need = per_side * per_side
    frames = np.unique(sky.frame)
    if len(frames) < need:
        raise MorphllrError(f"sky patches: a {size}x{size} patch takes {need} blocks from different frames, but "
                            f"only {len(frames)} frames have an empty block; use a smaller block or more frames")
    neighbours = min(max(int(neighbours), need), len(frames))
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
    rng = np.random.default_rng(seed)
    by_frame = {f: np.flatnonzero(sky.frame == f) for f in frames}
    out = np.empty((n, c, size, size), np.float32)
    for p in range(n):
        seed_frame = int(rng.integers(len(frames)))
        nearest = np.argsort(((keys - keys[seed_frame]) ** 2).sum(axis=1), kind="stable")[:neighbours]
        chosen = frames[rng.choice(nearest, size=need, replace=False)]
        for slot, f in enumerate(chosen):
            blk = sky.blocks[rng.choice(by_frame[f])]
            blk = np.rot90(blk, k=int(rng.integers(4)), axes=(1, 2))
            if rng.integers(2):
                blk = blk[:, :, ::-1]
            y, x = divmod(slot, per_side)
            out[p, :, y * b:(y + 1) * b, x * b:(x + 1) * b] = blk
    return out


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


def make_sky_patches(frames_path, out, size: int, *, n: int | None = None, block: int = 16, grid: int = 4,
                     dilate: int = 4, neighbours: int = 32, seed: int = 0, overwrite: bool = False) -> dict:
    """Tile sky patches from the empty blocks of a file of frames and write them as ``.npy``.

    The engine of ``morphllr sky-patches``; the result feeds ``morphllr archetypes --sky-patches``.

    Args:
        frames_path: frames in linear flux with the sky level subtracted: an ImageSet (its
            ``/flux``), ``.npy``/``.npz`` or FITS cube of (F, H, W) or (F, C, H, W).
        out: output ``.npy`` (float32 (n, C, size, size)), written atomically.
        size: patch side in pixels (the flux-cutout side of the set the archetypes are for).
        n: number of patches (default: one per frame).
        block, grid, dilate: see :func:`empty_blocks`.
        neighbours: see :func:`tile_sky_patches`.
        seed: random seed of the tiling.
        overwrite: replace ``out`` if it exists.

    Returns:
        summary dict: n_frames, n_frames_with_blocks, n_blocks, n_patches, size, and the sky
        statistics (rms_median, z_skew, corr_1) of the frames' empty sky and of the patches.
    """
    from pathlib import Path

    from .archetypes import load_sky_patches
    from .atomic import atomic_file

    out = Path(out)
    if out.suffix.lower() != ".npy":
        raise MorphllrError(f"--out {out}: sky patches are written as .npy; give a name ending in .npy")
    if out.exists() and not overwrite:
        raise MorphllrError(f"--out {out}: already exists; pass --overwrite to replace it")
    frames = load_sky_patches(frames_path, where="FRAMES", what="frames")
    sky = empty_blocks(frames, block=block, grid=grid, dilate=dilate)
    patches = tile_sky_patches(sky, len(frames) if n is None else int(n), int(size), seed=seed, neighbours=neighbours)
    real, tiled = sky_statistics(frames, np.stack(sky.sky)), sky_statistics(patches)
    with atomic_file(out, overwrite=overwrite) as tmp:
        with open(tmp, "wb") as fh:  # a file object: np.save would append .npy to the temporary name
            np.save(fh, patches)
    keys = ("rms_median", "z_skew", "corr_1")
    return {"n_frames": len(frames), "n_frames_with_blocks": int(len(np.unique(sky.frame))), "n_blocks": len(sky),
            "n_patches": len(patches), "size": int(size), "out": str(out),
            "frames_sky": {k: real[k] for k in keys}, "patches_sky": {k: tiled[k] for k in keys}}
