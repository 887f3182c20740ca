"""Segmentation: central source vs companions, sky noise, missing centres, model-grid masks."""

from __future__ import annotations

import numpy as np
import pytest

from morphllr.errors import MorphllrError
from morphllr.data.preprocess import Preprocessing
from morphllr.data.geometry import model_mask
from morphllr.data.segmentation import (
    background_stats,
    renumber,
    segment,
    segment_batch,
)

NOISE = 5.0


def blob(size, cx, cy, amp, scale):
    yy, xx = np.indices((size, size))
    return amp * np.exp(-np.hypot(xx - cx, yy - cy) / scale)


@pytest.fixture
def scene():
    """A central galaxy, one bright companion and Gaussian sky noise."""
    rng = np.random.default_rng(0)
    clean = blob(64, 32, 31, 400, 3.0) + blob(64, 8, 52, 300, 1.5)
    return clean + rng.normal(0, NOISE, clean.shape), clean


@pytest.mark.parametrize("method", ["sep", "photutils"])
def test_central_and_companion(scene, method):
    image, clean = scene
    seg = segment(image, method=method)
    assert seg.central_found and seg.segmap.dtype == np.int32
    assert seg.segmap[31, 32] == 1  # the centre belongs to the central source
    assert seg.segmap[52, 8] >= 2  # the companion is a separate source
    assert abs(seg.x - 32) < 0.5 and abs(seg.y - 31) < 0.5
    bright = clean > 6 * NOISE
    assert np.all(seg.segmap[bright] > 0)  # everything well above the noise is some source
    assert abs(seg.sky_sigma / NOISE - 1) < 0.15


def test_sep_and_photutils_agree_on_the_central_source(scene):
    a = segment(scene[0], method="sep").segmap == 1
    b = segment(scene[0], method="photutils").segmap == 1
    assert (a & b).sum() / (a | b).sum() > 0.8


def test_pure_noise_has_no_central_source():
    seg = segment(np.random.default_rng(1).normal(0, NOISE, (64, 64)))
    assert not seg.central_found and not np.any(seg.segmap == 1)


def test_far_off_centre_source_is_a_companion_not_the_central():
    image = blob(64, 6, 6, 500, 2.0) + np.random.default_rng(2).normal(0, NOISE, (64, 64))
    seg = segment(image)
    assert not seg.central_found and seg.segmap[6, 6] == 2
    assert not segment(image, max_offset=0.25 * 64).central_found  # nor within a quarter of the side (centring)


def test_noise_free_image_is_segmented():
    seg = segment(blob(48, 24, 24, 10.0, 3.0))
    assert seg.sky_sigma < 0.01 * 10.0 and seg.central_found
    assert seg.segmap[24, 24] == 1 and (seg.segmap == 1).sum() > 50


def test_multiband_is_detected_on_the_channel_sum(scene):
    image = np.stack([scene[0], scene[0]])
    assert segment(image).segmap[31, 32] == 1


def test_background_stats_finds_level_and_noise():
    image = blob(128, 64, 64, 2000, 4.0) + np.random.default_rng(3).normal(40.0, 7.0, (128, 128))
    level, rms = background_stats(image)
    assert abs(level - 40) < 1.5 and abs(rms / 7 - 1) < 0.1


def test_segment_batch_shapes(scene):
    segmaps, sigmas, found = segment_batch(np.stack([scene[0]] * 3)[:, None])
    assert segmaps.shape == (3, 64, 64) and sigmas.shape == (3,) and found.all()


def test_model_mask_follows_crop_and_zoom():
    prep = Preprocessing.preset("zanisi21")
    segmap = np.zeros((1, 128, 128), np.int32)
    segmap[0, 48:80, 48:80] = 1  # 32x32 central square -> 16x16 on the 32x32 grid
    segmap[0, 0:10, 0:10] = 2  # companion outside the crop
    mask = model_mask(segmap, prep)
    assert mask.shape == (1, 32, 32) and mask.dtype == np.uint8
    assert mask.sum() == 16 * 16 and mask[0, 16, 16] == 1


def test_renumber_closes_gaps():
    out = renumber(np.array([[0, 1, 5], [9, 5, 0]]))
    np.testing.assert_array_equal(out, [[0, 1, 2], [3, 2, 0]])


def test_unknown_method():
    with pytest.raises(MorphllrError, match="--segmentation"):
        segment(np.zeros((8, 8)), method="magic")
