"""The pixel sketch: a set's fingerprint that survives last-bit rounding, and `check --trained-on` with it.

The same recipe run on another CPU kind gives pixels that differ in their last bits (numpy's
vector transcendental functions round differently on AVX2 and AVX-512), so the sha256 of a rebuilt
training set does not match.  The sketch must accept those sets and refuse every real change.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from clitools import cli, one_error
from morphllr.data.imageset import SKETCH_RTOL, ImageSet, sketch_batches, sketch_difference
from morphllr.data.prepare import write_flux_set
from morphllr.data.preprocess import Preprocessing


def images(n=64, side=32, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    r = np.hypot(*np.indices((side, side)) - (side - 1) / 2)
    return (np.exp(-r / 5.0) + rng.normal(0, 0.05, (n, 1, side, side))).astype(np.float32)


def last_bits_off(x: np.ndarray, ulps: int = 2, seed=1) -> np.ndarray:
    """x with every pixel moved by up to ``ulps`` units in the last place, as another CPU's rounding does."""
    steps = np.random.default_rng(seed).integers(-ulps, ulps + 1, x.shape)
    out = x.copy()
    for _ in range(ulps):
        out = np.where(steps > 0, np.nextafter(out, np.float32(np.inf)), out)
        out = np.where(steps < 0, np.nextafter(out, np.float32(-np.inf)), out)
        steps = steps - np.sign(steps)
    return out


def test_the_sketch_does_not_depend_on_batching_and_tolerates_rounding():
    x = images()
    whole = sketch_batches([x])
    assert sketch_difference(whole, sketch_batches(x[i:i + 5] for i in range(0, len(x), 5))) < 1e-12
    assert whole["n_images"] == 64 and whole["image_shape"] == [1, 32, 32] and whole["n_pixels"] == x.size
    assert whole["rms"] == pytest.approx(float(np.sqrt(np.mean(x.astype(np.float64) ** 2))), rel=1e-12)
    rounded = last_bits_off(x)
    assert not np.array_equal(rounded, x) and np.abs(rounded - x).max() <= 3e-7 * np.abs(x).max()
    assert sketch_difference(whole, sketch_batches([rounded])) < SKETCH_RTOL / 10
    json.dumps(whole)  # recorded in model.json


def test_the_sketch_sees_every_real_change():
    x = images()
    whole = sketch_batches([x])
    rms = whole["rms"]
    swapped = x.copy()
    swapped[[3, 40]] = swapped[[40, 3]]
    replaced = x.copy()
    replaced[7] = images(1, seed=9)[0]
    one_pixel = x.copy()
    one_pixel[11, 0, 16, 16] += 0.1 * rms  # 0.1 rms in 65536 pixels: 4e-4 of the rms pixel per projection
    flipped = x[:, :, ::-1].copy()
    for name, other in [("swapped", swapped), ("replaced", replaced), ("one pixel", one_pixel), ("flipped", flipped),
                        ("scaled", x * np.float32(1 + 1e-4))]:
        assert sketch_difference(whole, sketch_batches([other])) > 10 * SKETCH_RTOL, name
    assert sketch_difference(whole, sketch_batches([x[:-1]])) == float("inf")
    assert sketch_difference(whole, {"n_images": 64}) is None


def test_check_trained_on_recognises_a_rebuilt_set_and_refuses_a_changed_one(tmp_path, capsys):
    import torch

    from morphllr.model.io import save_model
    from morphllr.model.pixelcnn import PixelCNN, PixelCNNConfig

    rng = np.random.default_rng(0)
    flux = (300 * images(12, 64)[:, :, :, :] + rng.normal(0, 3, (12, 1, 64, 64))).astype(np.float32)
    catalog = {"id": [f"g{i}" for i in range(12)]}
    recipe = Preprocessing.preset("gz2_linear")
    original, rebuilt, changed = (tmp_path / f"{name}.h5" for name in ("original", "rebuilt", "changed"))
    write_flux_set(original, flux, catalog, recipe)
    write_flux_set(rebuilt, last_bits_off(flux), catalog, recipe)
    edited = flux.copy()
    edited[4] = edited[4, :, ::-1]  # one galaxy mirrored
    write_flux_set(changed, edited, catalog, recipe)
    with ImageSet.open(original) as s, ImageSet.open(rebuilt) as r:
        prep, fingerprint, sketch = s.preprocessing, s.fingerprint(), sketch_batches(s.batches(5))
        assert r.fingerprint() != fingerprint  # the bytes differ, as on another CPU kind
    torch.manual_seed(0)
    net = PixelCNN(PixelCNNConfig(height=32, width=32, nr_resnet=1, nr_filters=8))
    model = save_model(net, tmp_path / "m", preprocessing=prep, data_fingerprint=fingerprint, data_sketch=sketch,
                       metrics={})
    code, text = cli(["check", model, original, "--trained-on"], capsys)
    assert code == 0 and "it is the model's training set" in text and "within rounding" not in text, text
    code, text = cli(["check", model, rebuilt, "--trained-on"], capsys)
    assert code == 0 and "training set to within rounding" in text and "the bytes differ" in text, text
    code, text = cli(["check", model, changed, "--trained-on"], capsys)
    one_error(text, "changed.h5", "is not the set", "more than rounding")
    assert code == 2
    # NaN pixels never pass for rounding
    nan_set = tmp_path / "nan.h5"
    with_nan = last_bits_off(flux)
    with_nan[2, 0, 30, 30] = np.nan
    write_flux_set(nan_set, with_nan, catalog, recipe)
    with ImageSet.open(nan_set) as s:
        assert np.isnan(s.images[:]).sum() == 1
    code, text = cli(["check", model, nan_set, "--trained-on"], capsys)
    one_error(text, "nan.h5", "more than rounding")
    assert code == 2
    assert sketch_difference(sketch, {**sketch, "rms": float("nan")}) == float("inf")
    # another number of images, and a damaged record, are named as such
    fewer = tmp_path / "fewer.h5"
    write_flux_set(fewer, flux[:10], {"id": catalog["id"][:10]}, recipe)
    code, text = cli(["check", model, fewer, "--trained-on"], capsys)
    one_error(text, "fewer.h5", "it holds 10 images, the training set 12")
    assert code == 2
    damaged = save_model(net, tmp_path / "damaged", preprocessing=prep, data_fingerprint=fingerprint,
                         data_sketch={"n_images": "twelve"}, metrics={})
    code, text = cli(["check", damaged, rebuilt, "--trained-on"], capsys)
    one_error(text, "rebuilt.h5", "data_sketch is unreadable")
    assert code == 2
    # a model from before the sketch: the rebuilt set is refused, and the message says why
    old = save_model(net, tmp_path / "old", preprocessing=prep, data_fingerprint=fingerprint, metrics={})
    code, text = cli(["check", old, rebuilt, "--trained-on"], capsys)
    one_error(text, "rebuilt.h5", "records no rounding-tolerant sketch", "another CPU kind")
    assert code == 2
    # an ensemble whose first member predates the sketch uses another member's
    from morphllr.model.ensemble import assemble_ensemble

    members = [save_model(net, tmp_path / f"member{seed}", preprocessing=prep, data_fingerprint=fingerprint,
                          data_sketch=None if seed == 0 else sketch, metrics={}, extra={"training": {"seed": seed}})
               for seed in (0, 1)]
    assemble_ensemble(members, tmp_path / "ensemble")
    code, text = cli(["check", tmp_path / "ensemble", rebuilt, "--trained-on"], capsys)
    assert code == 0 and "2-member ensemble" in text and "to within rounding" in text, text
