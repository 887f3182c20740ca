"""Masked pixels (an ImageSet's /mask_model) in compare and score.

The PixelCNN's later conditionals still see masked pixels (they hold sky noise) as context,
so the images are scored unchanged; only the masked pixels' own terms leave the sums.  Each
number is checked against a brute-force sum of score's per-pixel maps over the unmasked pixels.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from morphllr.comparison.guards import MASKED_SHARE_TOLERANCE, masked_share_warning
from morphllr.data.imageset import ImageSet
from morphllr.errors import MorphllrError
from morphllr.comparison.run import compare
from morphllr.comparison.scoring import _rotate, _rotate_mask, _rotation_draws
from morphllr.model.pixelcnn import NETWORK_PRESETS, PixelCNN
from morphllr.score import log_likelihood, record_domain, score_to_files

H = W = 8
N = 24
PREP = {"name": "test", "stretch": "none"}


@dataclass
class _Model:
    net: torch.nn.Module
    config: object
    preprocessing: dict = field(default_factory=lambda: dict(PREP))
    meta: dict = field(default_factory=dict)
    path: Path = Path("toy")


def _net(seed: int) -> PixelCNN:
    torch.manual_seed(seed)
    net = PixelCNN(NETWORK_PRESETS["tiny"])
    with torch.no_grad():  # away from the near-identity start, so that the context matters
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net.eval()


@pytest.fixture(autouse=True)
def _exact_fp32(monkeypatch):
    """fp32 everywhere (no bf16 autocast), so compare's maps equal score's maps bit for bit."""
    import morphllr.runtime

    monkeypatch.setattr(morphllr.runtime, "bf16_supported", lambda: False)


@pytest.fixture(scope="module")
def models():
    obs, arch = _net(0), _net(1)
    return _Model(obs, obs.config, path=Path("obs")), _Model(arch, arch.config, path=Path("arch"))


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:H, :W]
    blob = np.exp(-((yy - 3.5) ** 2 + (xx - 3.5) ** 2) / 6.0)
    images = (blob[None] * rng.uniform(0.3, 1, (N, 1, 1)) + 0.05 * rng.standard_normal((N, H, W)))
    images = images[:, None].astype(np.float32)
    central = np.broadcast_to((np.hypot(yy - 3.5, xx - 3.5) < 2.5).astype(np.uint8), (N, H, W)).copy()
    mask = np.zeros((N, H, W), np.uint8)
    for i in range(N):
        if i % 4 == 3:
            continue  # some images have no masked pixel
        y, x = rng.integers(0, H - 2, 2)
        mask[i, y:y + rng.integers(2, 4), x:x + rng.integers(2, 5)] = 1  # a patch, across the galaxy or not
    assert 0.05 < mask.mean() < 0.3
    return images, central, mask


def _write(path: Path, images, central, mask=None) -> Path:
    from morphllr.data.imageset import ImageSetWriter

    with ImageSetWriter(path, n=len(images), image_shape=images.shape[1:], preprocessing=PREP) as writer:
        writer.append(images, {"id": np.array([f"g{i:03d}" for i in range(len(images))])}, segmap_model=central,
                      mask_model=mask)
    return path


@pytest.fixture(scope="module")
def sets(data, tmp_path_factory):
    images, central, mask = data
    folder = tmp_path_factory.mktemp("masked")
    return {"masked": _write(folder / "masked.h5", images, central, mask),
            "plain": _write(folder / "plain.h5", images, central),
            "zero_mask": _write(folder / "zero_mask.h5", images, central, np.zeros_like(mask))}


def _maps(model, images) -> np.ndarray:
    """score's per-pixel log p maps (float32 values, as compare sees them) in one batch."""
    return log_likelihood(model, images, per_pixel=True, batch_size=len(images), bf16=False, threads=1)


@pytest.fixture(scope="module")
def result(models, sets, tmp_path_factory):
    import morphllr.runtime

    with pytest.MonkeyPatch.context() as mp:  # module scope: the autouse fixture is not active yet
        mp.setattr(morphllr.runtime, "bf16_supported", lambda: False)
        obs, arch = models
        out = tmp_path_factory.mktemp("rep") / "report"
        with pytest.warns(Warning):  # small sets and the masked-share warning
            res = compare(obs, arch, reference=("masked", sets["masked"]),
                          sets={"plain": sets["plain"], "zero_mask": sets["zero_mask"]}, out=out, maps="all",
                          report=False, n_boot=20, matched_draws=5, gallery_size=3, batch_size=N, threads=1)
    return res, out


def test_llr_is_the_brute_force_sum_over_unmasked_pixels(result, models, data):
    res, _ = result
    images, central, mask = data
    keep = mask == 0
    obs, arch = models
    map_obs, map_arch = _maps(obs, images), _maps(arch, images)
    s = res.sets["masked"].scores
    want_obs, want_arch = (map_obs * keep).sum(axis=(1, 2)), (map_arch * keep).sum(axis=(1, 2))
    np.testing.assert_allclose(s["logp_obs"], want_obs, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(s["logp_arch"], want_arch, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(s["llr"], ((map_obs - map_arch) * keep).sum(axis=(1, 2)), rtol=1e-9, atol=1e-9)
    n_masked = mask.sum(axis=(1, 2))
    np.testing.assert_array_equal(s["n_masked_pixels"], n_masked)
    np.testing.assert_allclose(s["masked_share"], n_masked / (H * W))
    np.testing.assert_allclose(s["llr_per_pixel"], s["llr"] / (H * W - n_masked), rtol=1e-12)
    np.testing.assert_allclose(s["bpd_obs"], -want_obs / ((H * W - n_masked) * np.log(2)), rtol=1e-12)
    # the central-source and the sky sums leave the masked pixels out too
    llr32 = map_obs.astype(np.float32) - map_arch.astype(np.float32)  # compare's mean maps are float32
    np.testing.assert_allclose(s["llr_segmap"], (llr32 * (central == 1) * keep).sum(axis=(1, 2)), rtol=1e-6,
                               atol=1e-5)
    sky = (central == 0) & keep
    np.testing.assert_array_equal(s["n_sky_pixels"], sky.sum(axis=(1, 2)))
    np.testing.assert_allclose(s["llr_sky"], ((map_obs - map_arch) * sky).sum(axis=(1, 2)), rtol=1e-6, atol=1e-5)
    # the domain guard's sky log p (per member) and its unmasked-pixel counts
    dv = res.sets["masked"].domain_values
    np.testing.assert_allclose(dv["sky_logp"]["obs"][0], (map_obs * sky).sum(axis=(1, 2)), rtol=1e-12, atol=1e-9)
    np.testing.assert_array_equal(dv["n_valid"], H * W - n_masked)
    # summary: per-set mean share and LLR per pixel
    entry = res.summary["sets"]["masked"]
    assert entry["masked_share"] == pytest.approx(mask.mean())
    assert entry["mean_llr_per_pixel"] == pytest.approx(float(np.mean(s["llr_per_pixel"])))


def test_a_set_without_mask_gives_the_unmasked_numbers(result, models, data):
    res, _ = result
    images, central, _ = data
    obs, arch = models
    map_obs, map_arch = _maps(obs, images), _maps(arch, images)
    plain = res.sets["plain"].scores
    # the formula from before masks existed: each member's float32 map summed in float64, all pixels
    want = map_obs.astype(np.float32).sum(axis=(1, 2), dtype=np.float64) \
        - map_arch.astype(np.float32).sum(axis=(1, 2), dtype=np.float64)
    np.testing.assert_array_equal(plain["llr"], want)
    np.testing.assert_array_equal(plain["bpd_obs"],
                                  -map_obs.astype(np.float32).sum(axis=(1, 2), dtype=np.float64) / (H * W * np.log(2)))
    assert (plain["n_masked_pixels"] == 0).all() and (plain["masked_share"] == 0).all()
    np.testing.assert_array_equal(plain["n_sky_pixels"], (central == 0).sum(axis=(1, 2)))
    # an all-zero mask is the same as none, bit for bit
    zero = res.sets["zero_mask"].scores
    for col in ("llr", "logp_obs", "logp_arch", "llr_segmap", "llr_sky", "bpd_obs", "llr_per_pixel"):
        np.testing.assert_array_equal(zero[col], plain[col], err_msg=col)
    assert res.summary["sets"]["plain"]["masked_share"] == 0.0


def test_masking_drops_only_the_pixels_own_terms_not_their_context(result, models, data, tmp_path):
    res, out = result
    images, _, mask = data
    excluded = mask.astype(bool)
    with h5py.File(out / "maps.h5") as fh:
        assert "NaN" in fh.attrs["masked_pixels"]
        masked_llr, plain_llr = fh["masked"]["llr"][:], fh["plain"]["llr"][:]
        masked_obs, plain_obs = fh["masked"]["logp_obs"][:], fh["plain"]["logp_obs"][:]
    # the unmasked pixels' terms are exactly those of the unmasked set: the images (context) are unchanged
    np.testing.assert_array_equal(masked_llr[~excluded], plain_llr[~excluded])
    np.testing.assert_array_equal(masked_obs[~excluded], plain_obs[~excluded])
    assert np.isnan(masked_llr[excluded]).all() and np.isnan(masked_obs[excluded]).all()
    assert np.isfinite(plain_llr).all()
    # so the two sets differ by the dropped terms alone
    s, p = res.sets["masked"].scores, res.sets["plain"].scores
    dropped = np.where(excluded, plain_llr.astype(np.float64), 0.0).sum(axis=(1, 2))
    np.testing.assert_allclose(p["llr"] - s["llr"], dropped, rtol=1e-5, atol=1e-4)
    # ... and the masked pixels really are context: changing their values moves later pixels' terms
    obs, _ = models
    blanked = np.where(excluded[:, None], np.float32(0), images)
    moved = _maps(obs, blanked) != _maps(obs, images)
    assert moved[~excluded].any()
    # the gallery maps show masked pixels as NaN
    g = res.sets["masked"].gallery["maps"]
    rows = g["indices"]
    assert np.isnan(g["map_obs"][excluded[rows]]).all() and np.isfinite(g["map_obs"][~excluded[rows]]).all()
    # the report's pixel-map figure copes with them
    from morphllr.report.figures import Figures, plot_pixel_maps

    figs = Figures(tmp_path)
    plot_pixel_maps(res, figs)


def test_masked_share_warning_and_note(result):
    res, _ = result
    summary = res.summary
    share = summary["sets"]["masked"]["masked_share"]
    assert share > MASKED_SHARE_TOLERANCE
    for name in ("plain", "zero_mask"):  # the reference (masked) differs from them by > 0.05
        found = [w for w in summary["sets"][name]["warnings"] if "model pixels are masked" in w]
        assert len(found) == 1 and "llr_per_pixel" in found[0], summary["sets"][name]["warnings"]
        assert found[0] in summary["warnings"]
    assert not [w for w in summary["sets"]["masked"]["warnings"] if "model pixels are masked" in w]
    assert any("summed over the unmasked pixels only" in n and "llr_per_pixel" in n for n in summary["notes"])
    from morphllr.report.formatting import Footnotes
    from morphllr.report.html import _set_rows

    rows = {label: value for label, _, value in _set_rows(summary, "masked", Footnotes())}
    assert "masked share" in rows and f"{100 * share:.3g}" in rows["masked share"]  # each set's details show it
    # the rule itself: more than MASKED_SHARE_TOLERANCE apart, either way
    per_set = {"ref": {"masked_share": 0.10}, "close": {"masked_share": 0.149}, "far": {"masked_share": 0.16},
               "less": {"masked_share": 0.0}}
    assert masked_share_warning("close", "ref", per_set) == []
    assert masked_share_warning("ref", "ref", per_set) == []
    assert "fewer" in masked_share_warning("far", "ref", per_set)[0]
    assert "more" in masked_share_warning("less", "ref", per_set)[0]


@pytest.mark.parametrize("discrete", [True, False])
def test_rotation_turns_the_mask_with_its_image(discrete, data):
    _, _, mask = data
    excluded = mask.astype(bool)
    draws = _rotation_draws(0, 0, 0, N, 1, discrete)[0]
    if discrete:  # integer images: the masked pixels carry a marker value
        marked = np.where(excluded, 200.0, 10.0).astype(np.float32)[:, None]
        turned = _rotate(marked, draws, True)[:, 0]
        np.testing.assert_array_equal(_rotate_mask(excluded, draws, True), turned == 200.0)
        assert (draws % 4 != 0).any()
    else:  # any angle: an image that is the mask itself, resampled like every image
        turned = _rotate(excluded[:, None].astype(np.float32), draws, False)[:, 0]
        np.testing.assert_array_equal(_rotate_mask(excluded, draws, False), turned >= 0.5)
        # 90 deg by interpolation lands the mask where the exact quarter turn of its image puts it
        np.testing.assert_array_equal(_rotate_mask(excluded, np.full(N, 90.0), False),
                                      _rotate(excluded[:, None].astype(np.float32), np.ones(N, np.int64),
                                              True)[:, 0] > 0)


def test_rotation_averaged_llr_drops_the_rotated_mask(models, sets, data):
    images, _, mask = data
    obs, arch = models
    with pytest.warns(Warning):
        res = compare(obs, arch, reference=("masked", sets["masked"]), rotations=2, report=False, n_boot=10,
                      matched_draws=5, gallery_size=0, batch_size=N, threads=1)
    draws = _rotation_draws(0, 0, 0, N, 2, False)
    want = np.zeros(N)
    for k in range(2):
        turned = _rotate(images, draws[k], False)
        keep = ~_rotate_mask(mask.astype(bool), draws[k], False)
        llr_map = _maps(obs, turned).astype(np.float32) - _maps(arch, turned).astype(np.float32)
        want += np.where(keep, llr_map, 0.0).sum(axis=(1, 2))
    np.testing.assert_allclose(res.sets["masked"].scores["llr_rot"], want / 2, rtol=1e-6, atol=1e-5)


def test_score_drops_masked_terms_and_adds_the_count(models, sets, data, tmp_path):
    images, _, mask = data
    obs, _ = models
    keep = mask == 0
    maps = _maps(obs, images)
    summary = score_to_files(obs, sets["masked"], tmp_path / "m.csv", maps_path=tmp_path / "m.h5",
                             bf16=False, threads=1, batch_size=N)
    rows = list(csv.DictReader(open(tmp_path / "m.csv")))
    assert list(rows[0]) == ["id", "logp", "bits_per_dim", "n_masked_pixels"]
    logp = np.array([float(r["logp"]) for r in rows])
    np.testing.assert_allclose(logp, (maps * keep).sum(axis=(1, 2)), rtol=1e-12, atol=1e-9)
    n_masked = np.array([int(r["n_masked_pixels"]) for r in rows])
    np.testing.assert_array_equal(n_masked, mask.sum(axis=(1, 2)))
    np.testing.assert_allclose([float(r["bits_per_dim"]) for r in rows],
                               -logp / ((H * W - n_masked) * np.log(2)), rtol=1e-12)
    assert summary["masked_share"] == pytest.approx(mask.mean())
    with h5py.File(tmp_path / "m.h5") as fh:
        written = fh["logp"][:]
    assert np.isnan(written[mask == 1]).all()
    np.testing.assert_array_equal(written[keep], maps.astype(np.float32)[keep])
    # a set without a mask: the columns and numbers as always
    score_to_files(obs, sets["plain"], tmp_path / "p.csv", bf16=False, threads=1, batch_size=N)
    plain = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert list(plain[0]) == ["id", "logp", "bits_per_dim"]
    np.testing.assert_allclose([float(r["logp"]) for r in plain], maps.sum(axis=(1, 2)), rtol=1e-12, atol=1e-9)


def test_domain_record_and_statistics_leave_masked_pixels_out(models, sets, data):
    from morphllr import domain

    images, central, mask = data
    obs, _ = models
    keep = mask == 0
    sky = (central == 0) & keep
    maps = _maps(obs, images)
    rec = record_domain(obs, sets["masked"], batch_size=N, threads=1)
    want_sky = -(maps * sky).sum(axis=(1, 2)) / (sky.sum(axis=(1, 2)) * np.log(2))
    want_whole = -(maps * keep).sum(axis=(1, 2)) / (keep.sum(axis=(1, 2)) * np.log(2))
    assert rec["stats"]["sky_bpd"]["mean"] == pytest.approx(want_sky.mean(), rel=1e-9)
    assert rec["stats"]["whole_bpd"]["mean"] == pytest.approx(want_whole.mean(), rel=1e-9)
    from morphllr.data.inputs import open_images

    assert domain.SkyReader(open_images(images)).excluded(np.arange(3)) is None  # a bare array has no mask
    np.testing.assert_array_equal(domain.SkyReader(open_images(sets["masked"])).excluded(np.array([0, 2, 5])),
                                  mask[[0, 2, 5]] == 1)
    stat = domain.set_statistics((maps * keep).sum(axis=(1, 2))[None], None, None, None, None, (1, H, W),
                                 n_valid=keep.sum(axis=(1, 2)))
    np.testing.assert_allclose(stat["whole_bpd"][0], want_whole, rtol=1e-12)


# ------------------------------------------------------------------ morphllr.llr: the same numbers in one call
def test_llr_api_equals_compare_and_the_brute_force_on_a_masked_set(result, models, sets, data):
    import morphllr

    res, _ = result
    images, _, mask = data
    obs, arch = models
    got = morphllr.llr(obs, arch, ImageSet(sets["masked"]), per_pixel=True, batch_size=N, bf16=False, threads=1)
    s = res.sets["masked"].scores
    np.testing.assert_array_equal(got.logp_obs, s["logp_obs"])
    np.testing.assert_array_equal(got.logp_arch, s["logp_arch"])
    np.testing.assert_array_equal(got.llr, s["llr"])
    np.testing.assert_array_equal(got.n_pixels, H * W - mask.sum(axis=(1, 2)))
    np.testing.assert_allclose(got.llr_per_pixel, s["llr_per_pixel"], rtol=1e-12)
    # the maps: NaN exactly at the masked pixels, elsewhere the difference of score's maps; they sum to llr
    assert got.maps.shape == (N, H, W) and got.maps.dtype == np.float32
    np.testing.assert_array_equal(np.isnan(got.maps), mask == 1)
    keep = mask == 0
    want = (_maps(obs, images) - _maps(arch, images))
    np.testing.assert_allclose(got.maps[keep], want[keep], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.nansum(got.maps.astype(np.float64), axis=(1, 2)), got.llr, rtol=1e-5, atol=1e-4)


def test_llr_api_without_a_mask_is_the_difference_of_log_likelihoods(models, data):
    from morphllr.score import llr

    images, _, _ = data
    obs, arch = models
    got = llr(obs, arch, images, batch_size=7, bf16=False, threads=1)
    want = (log_likelihood(obs, images, batch_size=7, bf16=False, threads=1)
            - log_likelihood(arch, images, batch_size=7, bf16=False, threads=1))
    np.testing.assert_array_equal(got.llr, want)
    assert got.maps is None and (got.n_pixels == H * W).all() and len(got) == N


def test_llr_api_runs_each_network_once_per_batch(models, data, monkeypatch):
    from morphllr.score import llr

    images, _, _ = data
    calls = []
    for name, model in zip(("obs", "arch"), models):
        real = model.net.log_prob_pixels
        monkeypatch.setattr(model.net, "log_prob_pixels", lambda x, real=real, name=name: calls.append(name) or real(x))
    llr(*models, images, per_pixel=True, batch_size=10, bf16=False, threads=1)
    n_batches = -(-N // 10)
    assert sorted(calls) == sorted(["obs"] * n_batches + ["arch"] * n_batches)


def test_llr_api_of_ensembles_uses_member_means(models, data):
    from morphllr.model.ensemble import Ensemble
    from morphllr.score import llr

    images, _, _ = data
    obs, arch = models
    ens_obs = Ensemble.from_models([obs, arch], names=["a", "b"])
    got = llr(ens_obs, arch, images, per_pixel=True, batch_size=N, bf16=False, threads=1)
    members = log_likelihood(ens_obs, images, batch_size=N, bf16=False, threads=1)
    assert members.shape == (2, N)
    np.testing.assert_array_equal(got.logp_obs, members.mean(axis=0))
    np.testing.assert_allclose(got.llr, members.mean(axis=0) - log_likelihood(arch, images, batch_size=N, bf16=False,
                                                                                threads=1), rtol=1e-12, atol=1e-9)


def test_llr_api_refuses_models_of_another_image_size(models):
    from morphllr.score import llr

    obs, arch = models
    with pytest.raises(MorphllrError, match="8|size|shape"):
        llr(obs, arch, np.zeros((3, 1, 16, 16), np.float32), bf16=False, threads=1)
