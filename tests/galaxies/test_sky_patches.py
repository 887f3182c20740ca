"""Sky patches tiled from empty blocks: masks, block search, tiling rules, sky statistics."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sep")

from morphllr.errors import MorphllrError  # noqa: E402
from morphllr.galaxies.sky_patches import SkyBlocks, empty_blocks, sky_mask, sky_statistics, tile_sky_patches  # noqa: E402


def frame_with_galaxy(rng, size=64, centre=(32, 32), sigma=1.0, amp=200.0, width=3.0):
    yy, xx = np.indices((size, size))
    blob = amp * np.exp(-((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) / (2 * width**2))
    return (blob + rng.normal(0, sigma, (size, size))).astype(np.float32)


def test_sky_mask_keeps_clear_of_sources_by_the_dilation():
    rng = np.random.default_rng(0)
    frame = frame_with_galaxy(rng)
    yy, xx = np.indices(frame.shape)
    r = np.hypot(yy - 32, xx - 32)
    tight, wide = sky_mask(frame, dilate=0), sky_mask(frame, dilate=6)
    assert not tight[r < 5].any() and not wide[r < 11].any()
    assert tight[r > 25].mean() > 0.95 and wide[r > 25].mean() > 0.95
    assert wide.sum() < tight.sum()  # growing the sources removes sky


def test_empty_blocks_are_on_the_lattice_and_wholly_empty():
    rng = np.random.default_rng(1)
    frames = [frame_with_galaxy(rng, centre=(20, 40)), frame_with_galaxy(rng, centre=(44, 24))]
    sky = empty_blocks(frames, block=16, grid=4, dilate=4)
    assert len(sky) > 0 and set(np.unique(sky.frame)) == {0, 1}
    assert np.all(sky.y % 4 == 0) and np.all(sky.x % 4 == 0)
    for k in range(len(sky)):
        f, y, x = sky.frame[k], sky.y[k], sky.x[k]
        assert sky_mask(frames[f], 4)[y:y + 16, x:x + 16].all()
        assert np.array_equal(sky.blocks[k, 0], frames[f][y:y + 16, x:x + 16])
    # brute force: every empty lattice square of frame 0 was found
    mask = sky_mask(frames[0], 4)
    expected = {(y, x) for y in range(0, 49, 4) for x in range(0, 49, 4) if mask[y:y + 16, x:x + 16].all()}
    assert {(y, x) for f, y, x in zip(sky.frame, sky.y, sky.x) if f == 0} == expected
    # sky noise of each frame from its empty pixels
    assert np.allclose(sky.frame_sigma, 1.0, rtol=0.1)


def test_no_empty_block_is_an_error():
    rng = np.random.default_rng(2)
    with pytest.raises(MorphllrError, match="smaller block"):
        empty_blocks([frame_with_galaxy(rng, size=32, centre=(16, 16), width=12.0)], block=16, dilate=4)
    with pytest.raises(MorphllrError, match="multiple of grid"):
        empty_blocks([np.zeros((32, 32))], block=10, grid=4)


def labelled_blocks(n_frames=40, per_frame=3, b=4, sigma=None):
    """Blocks whose pixels encode (frame, block number) and carry an asymmetric pattern (exact in float32)."""
    pattern = np.arange(b * b, dtype=np.float32).reshape(b, b)
    blocks, frame = [], []
    for f in range(n_frames):
        for j in range(per_frame):
            blocks.append((1000.0 * f + 100.0 * j + pattern)[None])
            frame.append(f)
    sigma = np.linspace(1.0, 5.0, n_frames) if sigma is None else sigma
    zeros = np.zeros(len(frame), int)
    return SkyBlocks(np.stack(blocks), np.asarray(frame), zeros, zeros, np.asarray(sigma, float)), pattern


def test_tiled_patches_take_each_block_from_a_different_nearby_frame():
    sky, pattern = labelled_blocks()
    patches = tile_sky_patches(sky, 50, 16, seed=3, neighbours=20)
    assert patches.shape == (50, 1, 16, 16)
    variants = [np.rot90(pattern, k) for k in range(4)]
    variants += [v[:, ::-1] for v in variants]
    seen_turns = set()
    for p in patches[:, 0]:
        frames = []
        for y in range(0, 16, 4):
            for x in range(0, 16, 4):
                blk = p[y:y + 4, x:x + 4]
                base = np.floor(blk.min() / 100.0) * 100.0
                f = int(base // 1000)
                frames.append(f)
                # the block is one of the 8 turns/flips of a source block
                match = [k for k, v in enumerate(variants) if np.array_equal(blk - base, v)]
                assert match
                seen_turns.add(match[0])
        assert len(set(frames)) == 16  # no frame twice in a patch
        assert max(frames) - min(frames) < 20  # within the 20 frames nearest in sky noise
    assert len(seen_turns) == 8


def test_match_keeps_the_frames_of_a_patch_alike():
    n = 60
    sigma = np.ones(n)  # equal noise: only `match` can tell the frames apart
    level = np.random.default_rng(4).permutation(n).astype(float)
    sky, _ = labelled_blocks(n_frames=n, sigma=sigma)
    patches = tile_sky_patches(sky, 30, 8, seed=5, neighbours=8, match=level)
    for p in patches[:, 0]:
        frames = [int(p[y:y + 4, x:x + 4].min() // 1000) for y in (0, 4) for x in (0, 4)]
        assert np.ptp(level[frames]) <= 8  # 8 nearest levels span at most 8 ranks
    with pytest.raises(MorphllrError, match="one row per frame"):
        tile_sky_patches(sky, 1, 8, match=level[:10])


def test_tiling_refuses_impossible_requests():
    sky, _ = labelled_blocks(n_frames=10)
    with pytest.raises(MorphllrError, match="multiple of the block side"):
        tile_sky_patches(sky, 1, 10)
    with pytest.raises(MorphllrError, match="only 10 frames"):
        tile_sky_patches(sky, 1, 16)  # 16 blocks from 16 different frames


def test_sky_statistics_measure_correlation_floor_and_mask():
    rng = np.random.default_rng(6)
    white = rng.normal(0, 2.0, (200, 32, 33))
    st = sky_statistics(white)
    assert abs(st["rms_median"] / 2.0 - 1) < 0.02 and abs(st["corr_1"]) < 0.02 and abs(st["z_skew"]) < 0.05
    # summing neighbours along x: rho(0,1) = 1/2, rho(1,0) = 0
    pairs = white[:, :, 1:] + white[:, :, :-1]
    st = sky_statistics(pairs)
    assert abs(st["corr"]["0,1"] - 0.5) < 0.03 and abs(st["corr"]["1,0"]) < 0.03 and abs(st["corr"]["0,2"]) < 0.03
    # a sky clipped at -1 sigma has its floor there and a positive skew
    clipped = np.clip(white, -2.0, None)
    st = sky_statistics(clipped)
    assert st["z_skew"] > 0.5 and st["z_floor"] > -1.5
    # masked-out pixels do not count
    mask = np.ones(white.shape, bool)
    mask[:, :, :5] = False
    spoiled = white.copy()
    spoiled[:, :, :5] = 1e6
    a, b = sky_statistics(spoiled, mask), sky_statistics(white[:, :, 5:])
    assert np.isclose(a["rms_median"], b["rms_median"]) and np.isclose(a["corr_1"], b["corr_1"])
    with pytest.raises(MorphllrError, match="mask shape"):
        sky_statistics(white, mask[:, :10])


def test_sky_patches_command_tiles_real_sky_that_keeps_its_statistics(tmp_path):
    from typer.testing import CliRunner

    from morphllr.galaxies.sky_patches import load_sky_patches
    from morphllr.cli import app

    rng = np.random.default_rng(7)
    # correlated sky (neighbour sums along x: rho(0,1) = 1/2) with a galaxy in the middle of every frame
    white = rng.normal(0, 1.0, (40, 64, 65))
    frames = (white[:, :, 1:] + white[:, :, :-1]).astype(np.float32)
    yy, xx = np.indices((64, 64))
    frames += (300.0 * np.exp(-((yy - 32) ** 2 + (xx - 32) ** 2) / (2 * 4.0**2))).astype(np.float32)
    np.save(tmp_path / "frames.npy", frames)
    out = tmp_path / "sky.npy"
    args = ["sky-patches", str(tmp_path / "frames.npy"), "--size", "32", "--out", str(out), "--n", "25"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    patches = load_sky_patches(out)
    assert patches.shape == (25, 1, 32, 32)
    # no galaxy light: the patches look like the sky (rms sqrt(2); neighbour correlation 1/2 along x,
    # 0 along y, which the blocks' random quarter turns mix to 1/4 on both axes, less a little at the seams)
    assert abs(patches.std() / np.sqrt(2) - 1) < 0.05 and abs(patches.mean()) < 0.05
    assert abs(sky_statistics(patches)["corr_1"] - 0.25) < 0.04
    import json

    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["n_patches"] == 25 and summary["n_frames_with_blocks"] == 40
    assert abs(summary["patches_sky"]["corr_1"] - summary["frames_sky"]["corr_1"]) < 0.04
    # the CLI's main() prints a MorphllrError as one line; the bare app raises it
    again = CliRunner().invoke(app, args)
    assert isinstance(again.exception, MorphllrError) and "--overwrite" in str(again.exception)
    bad = CliRunner().invoke(app, args[:-4] + ["--out", str(tmp_path / "sky.fits"), "--overwrite"])
    assert isinstance(bad.exception, MorphllrError) and ".npy" in str(bad.exception)
    assert not (tmp_path / "sky.fits").exists()


def test_regions_cut_one_frame_and_parts_are_disjoint_strips():
    rng = np.random.default_rng(8)
    frame = rng.normal(0, 1.0, (96, 256)).astype(np.float32)  # pure sky: every lattice square is empty
    halves = [empty_blocks([frame], block=16, grid=4, region=32, part=(k, 2)) for k in (1, 2)]
    for k, sky in enumerate(halves):
        # part k+1 of 2: every other 32-column stripe, starting with the (k+1)-th
        stripes = [[x, x + 32] for x in range(32 * k, 256, 64)]
        assert sky.strips == [stripes]
        assert all(any(a <= x and x + 16 <= b for a, b in stripes) for x in sky.x)
        # 3 x 4 regions of 32 px in the part's 4 stripes; a block lies wholly inside its region
        assert len(np.unique(sky.region)) == 12
        for region in np.unique(sky.region):
            ys, xs = sky.y[sky.region == region], sky.x[sky.region == region]
            assert ys.max() + 16 - ys.min() <= 32 and xs.max() + 16 - xs.min() <= 32
        for j in (0, len(sky) // 2, len(sky) - 1):  # the lazy view cuts the frame's own pixels
            assert np.array_equal(sky.blocks[j], frame[None, sky.y[j]:sky.y[j] + 16, sky.x[j]:sky.x[j] + 16])
    assert len(np.unique(halves[0].region)) == 12 and np.array_equal(np.asarray(halves[0].blocks)[3], halves[0].blocks[3])
    # a 48 px patch takes 9 blocks of 9 different regions: all blocks of a patch are disjoint
    patches, layout = tile_sky_patches(halves[1], 5, 48, seed=1, return_layout=True)
    assert patches.shape == (5, 1, 48, 48)
    for slots in layout:
        assert len(np.unique(halves[1].region[slots[:, 0]])) == 9
    with pytest.raises(MorphllrError, match="only 12 regions"):
        tile_sky_patches(halves[0], 1, 64)  # 16 blocks


def test_frames_of_one_region_tile_as_one_block_per_frame():
    """Small frames (one region each) tile exactly as without regions: one block per frame per patch."""
    rng = np.random.default_rng(9)
    frames = [frame_with_galaxy(rng, size=48, centre=(24, 24), sigma=s) for s in np.linspace(1, 3, 20)]
    whole = empty_blocks(frames, block=8, grid=4, dilate=2)
    regions = empty_blocks(frames, block=8, grid=4, dilate=2, region=32)
    assert np.array_equal(regions.region, regions.frame)
    a = tile_sky_patches(whole, 6, 16, seed=2, neighbours=6)
    b = tile_sky_patches(regions, 6, 16, seed=2, neighbours=6)
    assert np.array_equal(a, b)
