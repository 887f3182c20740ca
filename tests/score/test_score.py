"""Scoring: agreement with the network, streaming, bf16 accuracy, checks and output files."""

from __future__ import annotations

import csv
import os

import h5py
import numpy as np
import pytest
import torch

from morphllr.errors import MorphllrError
from morphllr.model.pixelcnn import NETWORK_PRESETS, PixelCNN
from morphllr.model.io import load_model, save_model
from morphllr.score import (default_batch_size, iter_log_prob_maps, log_likelihood, score_to_files)
from morphllr.data.inputs import ArraySource


@pytest.fixture(scope="module")
def net() -> PixelCNN:
    torch.manual_seed(0)
    net = PixelCNN(NETWORK_PRESETS["tiny"])
    # move away from the near-identity initialisation so that every layer matters
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net.eval()


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[:8, :8]
    blob = np.exp(-((yy - 3.5) ** 2 + (xx - 3.5) ** 2) / 6.0)
    return (blob[None] * rng.uniform(0.3, 1, (23, 1, 1)) + 0.05 * rng.standard_normal((23, 8, 8))).astype(np.float32)


def test_matches_the_network_and_is_batch_independent(net, images):
    with torch.no_grad():
        direct = net.log_prob(torch.from_numpy(images)).double().numpy()
    a = log_likelihood(net, images, bf16=False, threads=1)
    assert a.dtype == np.float64 and a.shape == (23,)
    np.testing.assert_allclose(a, direct, rtol=1e-5, atol=1e-4)
    for bs in (1, 7, 100):
        np.testing.assert_allclose(log_likelihood(net, images, batch_size=bs, bf16=False, threads=1), a,
                                   rtol=1e-5, atol=1e-4)
    # (N, H, W) and (N, 1, H, W) are the same images
    np.testing.assert_array_equal(log_likelihood(net, images[:, None], bf16=False, threads=1), a)


def test_per_pixel_maps_sum_to_the_image_score(net, images):
    maps = log_likelihood(net, images, per_pixel=True, bf16=False, threads=1)
    assert maps.shape == (23, 8, 8) and maps.dtype == np.float64
    np.testing.assert_allclose(maps.sum(axis=(1, 2)), log_likelihood(net, images, bf16=False, threads=1),
                               rtol=1e-9, atol=1e-6)


def test_bf16_agrees_with_fp32(net, images):
    """bf16 keeps 8 mantissa bits: each activation carries ~2**-9 = 0.2 % relative rounding error.

    Errors of independent roundings largely cancel in the sums of a convolution, and the head
    math runs in fp32, so the per-pixel log-probabilities should move by well under 1 % of
    their magnitude.  We allow 1 % of sum |log p(pixel)| per image (about 2.5x the unit
    roundoff) and require that it is not bit-identical (bf16 really ran).
    """
    fp32 = log_likelihood(net, images, per_pixel=True, bf16=False, threads=1)
    bf16 = log_likelihood(net, images, per_pixel=True, bf16=True, threads=1)
    scale = np.abs(fp32).sum(axis=(1, 2))
    err = np.abs(bf16.sum(axis=(1, 2)) - fp32.sum(axis=(1, 2)))
    assert np.all(err <= 0.01 * scale), (err / scale).max()
    assert not np.array_equal(bf16, fp32)


def test_streams_with_flat_memory(net, images):
    class Counting(ArraySource):
        largest = 0
        reads = 0

        def batches(self, batch_size):
            for b in super().batches(batch_size):
                Counting.largest = max(Counting.largest, len(b))
                Counting.reads += 1
                yield b

    big = Counting(np.repeat(images, 20, axis=0), name="big")  # 460 images
    seen = 0
    for maps in iter_log_prob_maps(net, big, batch_size=64, bf16=False, threads=1):
        assert maps.dtype == np.float32 and maps.shape[1:] == (8, 8) and len(maps) <= 64
        seen += len(maps)
    assert seen == 460 and Counting.largest == 64 and Counting.reads == 8


def test_default_batch_keeps_activations_under_32_mib():
    cfg = NETWORK_PRESETS["zanisi21"]  # 32x32, 64 filters: widest activation 2*64*32*32 float32 = 512 KiB/image
    bs = default_batch_size(cfg)
    assert bs * 2 * cfg.nr_filters * cfg.height * cfg.width * 4 <= 32 * 2**20
    assert bs == 64
    assert default_batch_size(cfg.with_(height=128, width=128)) == 4


def test_wrong_shape_or_channels_is_refused(net):
    with pytest.raises(MorphllrError, match=r"16x16.*trained on 1x8x8"):
        log_likelihood(net, np.zeros((2, 16, 16), np.float32))
    with pytest.raises(MorphllrError, match=r"3x8x8"):
        log_likelihood(net, np.zeros((2, 3, 8, 8), np.float32))


def test_nonfinite_images_are_refused_with_their_index(net, images):
    bad = images.copy()
    bad[17, 2, 2] = np.inf
    with pytest.raises(MorphllrError, match=r"image\(s\) 17"):
        log_likelihood(net, bad, batch_size=5, threads=1)


def test_preprocessing_mismatch_is_refused(tmp_path, net, images):
    model = load_model(save_model(net, tmp_path / "m", preprocessing={"crop": 64, "zoom": 0.5},
                                  data_fingerprint=None, metrics={}))
    same = ArraySource(images, name="same.h5", preprocessing={"crop": 64, "zoom": 0.5})
    assert np.isfinite(log_likelihood(model, same, bf16=False, threads=1)).all()
    other = ArraySource(images, name="other.h5", preprocessing={"crop": 128, "zoom": 0.5})
    with pytest.raises(MorphllrError, match=r"other.h5.*crop"):
        log_likelihood(model, other)
    # a bare array carries no recipe: accepted
    assert log_likelihood(model, images, bf16=False, threads=1).shape == (23,)


def test_score_files_hold_ids_scores_and_maps(tmp_path, net, images):
    class WithCatalog(ArraySource):
        @property
        def catalog(self):
            from astropy.table import Table

            return Table({"id": [f"gal{i:03d}" for i in range(len(self))]})

    src = WithCatalog(images, name="cat.h5")
    summary = score_to_files(net, src, tmp_path / "s.csv", maps_path=tmp_path / "m.h5", batch_size=6,
                             bf16=False, threads=1)
    rows = list(csv.DictReader(open(tmp_path / "s.csv")))
    assert [r["id"] for r in rows] == [f"gal{i:03d}" for i in range(23)]
    logp = np.array([float(r["logp"]) for r in rows])
    # same batches as log_likelihood: the CSV keeps every digit of the float64 sums
    np.testing.assert_allclose(logp, log_likelihood(net, images, batch_size=6, bf16=False, threads=1), rtol=1e-15)
    bpd = np.array([float(r["bits_per_dim"]) for r in rows])
    np.testing.assert_allclose(bpd, -logp / (64 * np.log(2)), rtol=1e-12)
    assert summary["n"] == 23
    with h5py.File(tmp_path / "m.h5") as fh:
        maps = fh["logp"][:]
    assert maps.dtype == np.float32 and maps.shape == (23, 8, 8)
    np.testing.assert_allclose(maps.sum(axis=(1, 2)), logp, rtol=1e-5, atol=1e-3)


def test_a_failure_mid_scoring_leaves_no_files(tmp_path, net, images):
    bad = images.copy()
    bad[20, 0, 0] = np.nan  # in the last batch: the first batches were already written
    with pytest.raises(MorphllrError):
        score_to_files(net, bad, tmp_path / "s.csv", maps_path=tmp_path / "m.h5", batch_size=6, threads=1)
    assert os.listdir(tmp_path) == []


def test_runtime_threads_and_bf16_detection():
    from morphllr import runtime

    assert runtime.configure_cpu(1) == 1 and torch.get_num_threads() == 1
    assert runtime.configure_cpu(None) == 1  # an explicit choice is kept by later automatic calls
    assert 1 <= runtime.idle_cores() <= runtime.usable_cores()
    flags = runtime._cpu_flags()
    if flags and not {"avx512_bf16", "amx_bf16"} & flags and "MORPHLLR_BF16" not in os.environ:
        assert runtime.bf16_supported() is False
    assert runtime.default_precision() in ("bf16-mixed", "32")
    import platform

    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc" and "MORPHLLR_NO_MALLOPT" not in os.environ:
        assert runtime.tune_glibc_allocator() is True
