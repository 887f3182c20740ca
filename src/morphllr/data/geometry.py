"""Pixel geometry shared by every stage: central crops, zooms, resampling, and the flux-grid -> model-grid masks.

Pure numpy/scipy array helpers with no knowledge of files or models: the images, their segmentation maps and their
masks all pass through the same crop and zoom (:class:`morphllr.data.preprocess.Preprocessing` records which).
"""

from __future__ import annotations

import math

import numpy as np

from morphllr.errors import MorphllrError


def central_crop(x: np.ndarray, size: int) -> np.ndarray:
    """Central ``size`` x ``size`` crop of (..., H, W) images (centre pixel H//2 stays central)."""
    h, w = x.shape[-2:]
    if size > h or size > w:
        raise MorphllrError(f"cannot crop {size}x{size} from {h}x{w} images; lower crop or enlarge the cutout")
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top : top + size, left : left + size]


def zoom_images(x: np.ndarray, zoom: float) -> np.ndarray:
    """Resample (B, C, H, W) images by ``zoom``, preserving surface brightness.

    An integer shrink (zoom = 1/k) is a k x k block mean, exactly as in the paper;
    other factors use linear interpolation (scipy.ndimage.zoom).
    """
    if zoom == 1:
        return x
    inverse = 1.0 / zoom
    k = round(inverse)
    b, c, h, w = x.shape
    if math.isclose(inverse, k, rel_tol=1e-9) and h % k == 0 and w % k == 0:
        return x.reshape(b, c, h // k, k, w // k, k).mean(axis=(3, 5))
    from scipy import ndimage

    out_h, out_w = zoomed_size(h, zoom), zoomed_size(w, zoom)
    out = np.empty((b, c, out_h, out_w), np.float32)
    for i in range(b):
        for j in range(c):
            out[i, j] = ndimage.zoom(x[i, j], (out_h / h, out_w / w), order=1, grid_mode=True, mode="nearest")
    return out


def resample_to_scale(flux: np.ndarray, from_scale: float, to_scale: float) -> np.ndarray:
    """Resample (C, H, W) per-pixel flux from ``from_scale`` to ``to_scale`` arcsec/px.

    Flux per pixel scales with pixel area, so the total flux is preserved.
    """
    from scipy import ndimage

    factor = from_scale / to_scale
    c, h, w = flux.shape
    out_h, out_w = max(1, round(h * factor)), max(1, round(w * factor))
    area = (to_scale / from_scale) ** 2
    out = np.empty((c, out_h, out_w), np.float32)
    for j in range(c):
        smooth = flux[j]
        if factor < 1:  # shrinking: average over the new pixel first so no flux is aliased away
            smooth = ndimage.uniform_filter(flux[j], size=max(1, round(1 / factor)), mode="nearest")
        out[j] = ndimage.zoom(smooth, (out_h / h, out_w / w), order=1, grid_mode=True, mode="nearest") * area
    return out


def zoomed_size(n: int, zoom: float) -> int:
    return max(1, int(round(n * zoom)))


def model_mask(segmaps: np.ndarray, preprocessing, rule: str = "half") -> np.ndarray:
    """Central-source masks on the model's pixel grid (``/segmap_model``), or any 0/1 mask there.

    The mask goes through the same crop and zoom as the images (not the stretch).  The one
    flux-grid -> model-grid mapping, with two rules: ``half`` (``/segmap_model``): a model pixel
    belongs to the central source when at least half of it does; ``any`` (``/mask_model``,
    excluded pixels): a model pixel is masked when any flux pixel mapped into it is (a thin
    masked line or a single bad pixel is not averaged away).

    Args:
        segmaps: (B, Hf, Wf) segmentation maps (1 = central source), or 0/1 masks.
        preprocessing: the Preprocessing that made the model images.
        rule: ``half`` or ``any``.

    Returns:
        uint8 (B, H, W) 0/1 masks.
    """
    if rule not in ("half", "any"):
        raise ValueError(f"model_mask: rule {rule!r} is not 'half' or 'any'")
    mask = (np.asarray(segmaps) == 1).astype(np.float32)[:, None]
    if preprocessing.crop is not None:
        mask = central_crop(mask, preprocessing.crop)
    mask = zoom_images(mask, preprocessing.zoom)
    if rule == "any":
        return (mask[:, 0] > 0).astype(np.uint8)
    return (mask[:, 0] >= 0.5).astype(np.uint8)


#: Flux-cutout pixels every source is grown by before its surroundings count as empty sky:
#: ~1 SDSS PSF FWHM at 0.396"/px, so the faint wings below the detection threshold stay out.
SKY_MARGIN = 4


def model_sky_mask(segmaps: np.ndarray, preprocessing, margin: int = SKY_MARGIN) -> np.ndarray:
    """Empty-sky pixels on the model's pixel grid.

    Every source (label > 0) is first grown by ``margin`` flux-cutout pixels (a disc), so
    the wings of galaxies below the detection threshold are not counted as sky.  A model
    pixel is then empty sky when every flux-cutout pixel that maps into it is: the same central crop and zoom as the images (:func:`central_crop`, :func:`zoom_images`) are applied to the "not sky" indicator, and a model pixel
    is sky only where the resampled indicator is exactly 0.  For a zoom 1/k that is a
    k x k block with no source pixel; for other zooms (linear interpolation) no pixel
    the interpolation draws on may belong to a source.  Unlike :func:`model_mask`, one
    source pixel is enough to make a model pixel non-sky: faint outskirts of galaxies,
    companions and stars must not be counted as background.

    Args:
        segmaps: (B, Hf, Wf) segmentation maps on the flux-cutout grid (0 sky,
            1 central source, >1 companions and stars).
        preprocessing: the Preprocessing (or its dict) that made the model images; only
            ``crop`` and ``zoom`` are used.
        margin: flux-cutout pixels each source is grown by (0: label 0 is sky).

    Returns:
        bool (B, H, W), True where the model pixel is empty sky.
    """
    get = preprocessing.get if isinstance(preprocessing, dict) else lambda key: getattr(preprocessing, key, None)
    crop, zoom = get("crop"), get("zoom")
    source = np.asarray(segmaps) != 0
    if margin > 0 and source.any():
        from scipy.ndimage import distance_transform_edt

        # distance to the nearest source pixel <= margin: a disc-shaped dilation, per image
        source = np.stack([distance_transform_edt(~m) <= margin if m.any() else m for m in source])
    source = source.astype(np.float32)[:, None]
    if crop is not None:
        source = central_crop(source, int(crop))
    source = zoom_images(source, 1.0 if zoom is None else float(zoom))
    # a block mean or linear interpolation of non-negative values is 0 only if every input is 0
    return source[:, 0] == 0
