"""ImageSource protocol: arrays, .npy, .npz, HDF5, ImageSets, and input validation."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from morphllr.errors import MorphllrError
from morphllr.data.inputs import ArraySource, ImageSource, open_images, validate_source


@pytest.fixture
def images() -> np.ndarray:
    return np.random.default_rng(1).random((13, 8, 12), dtype=np.float32)


def _all(source) -> np.ndarray:
    return np.concatenate(list(source.batches(5)))


def test_array_source_adds_channel_axis_and_batches_in_order(images):
    src = open_images(images)
    assert isinstance(src, ImageSource)
    assert src.shape == (13, 1, 8, 12) and len(src) == 13
    batches = list(src.batches(5))
    assert [len(b) for b in batches] == [5, 5, 3]
    assert all(b.dtype == np.float32 and b.flags.writeable for b in batches)
    np.testing.assert_array_equal(np.concatenate(batches)[:, 0], images)


def test_read_handles_any_order_and_repeats(images):
    src = open_images(images)
    idx = [7, 2, 2, 12, 0]
    np.testing.assert_array_equal(src.read(idx)[:, 0], images[idx])
    with pytest.raises(MorphllrError, match="out of range"):
        src.read([13])


def test_file_formats_give_the_same_pixels_and_fingerprint(tmp_path, images):
    np.save(tmp_path / "a.npy", images)
    np.savez(tmp_path / "one.npz", imgs=images)
    np.savez(tmp_path / "two.npz", imgs=images, other=images[:2])
    with h5py.File(tmp_path / "a.h5", "w") as fh:
        fh.create_dataset("deep/images", data=images[:, None])
        fh.create_dataset("ids", data=np.arange(13))  # 1-D: not a candidate image dataset
    sources = [
        open_images(images),
        open_images(tmp_path / "a.npy"),
        open_images(tmp_path / "one.npz"),
        open_images(tmp_path / "two.npz", key="imgs"),
        open_images(str(tmp_path / "a.h5")),
        open_images(f"{tmp_path / 'a.h5'}:deep/images"),
    ]
    prints = {s.fingerprint() for s in sources}
    assert len(prints) == 1
    for s in sources:
        np.testing.assert_array_equal(_all(s)[:, 0], images)
        np.testing.assert_array_equal(s.read([3, 1])[:, 0], images[[3, 1]])
    changed = images.copy()
    changed[4, 2, 2] += 1e-3
    assert open_images(changed).fingerprint() not in prints


def test_hdf5_source_survives_pickling(tmp_path, images):
    import pickle

    with h5py.File(tmp_path / "a.h5", "w") as fh:
        fh.create_dataset("x", data=images)
    src = open_images(tmp_path / "a.h5")
    clone = pickle.loads(pickle.dumps(src))  # DataLoader workers / DDP ranks reopen the file
    np.testing.assert_array_equal(clone.read([5]), src.read([5]))


def test_ambiguous_containers_name_their_members(tmp_path, images):
    np.savez(tmp_path / "two.npz", a=images, b=images)
    with pytest.raises(MorphllrError, match=r"two.npz.*a, b.*--key"):
        open_images(tmp_path / "two.npz")
    with h5py.File(tmp_path / "two.h5", "w") as fh:
        fh.create_dataset("x", data=images)
        fh.create_dataset("y", data=images)
    with pytest.raises(MorphllrError, match=r"two.h5.*x, y"):
        open_images(tmp_path / "two.h5")
    with pytest.raises(MorphllrError, match="no dataset 'z'"):
        open_images(f"{tmp_path / 'two.h5'}:z")


@pytest.mark.parametrize("shape, pattern", [
    ((8, 8), "add a leading axis"),
    ((2, 1, 1, 8, 8), "5 dimensions"),
    ((0, 8, 8), "no images"),
    ((3, 6, 8), "not divisible by 4"),
    ((3, 8, 10), "not divisible by 4"),
])
def test_bad_shapes_are_refused(shape, pattern):
    with pytest.raises(MorphllrError, match=pattern):
        open_images(np.zeros(shape, dtype=np.float32))


def test_channels_last_arrays_get_a_hint():
    with pytest.raises(MorphllrError, match="channels-last"):
        open_images(np.zeros((3, 8, 8, 3), dtype=np.float32))


def test_nonfinite_pixels_are_counted_and_located(images):
    bad = images.copy()
    bad[9, 0, 0] = np.nan
    bad[9, 1, 1] = np.inf
    bad[11, 3, 3] = -np.inf
    with pytest.raises(MorphllrError, match=r"3 NaN/inf pixel\(s\) in image\(s\) 9, 11"):
        validate_source(open_images(bad), batch_size=4)


def test_discretized_head_needs_integers_0_to_255():
    ok = np.random.default_rng(0).integers(0, 256, (4, 8, 8)).astype(np.float32)
    validate_source(open_images(ok), discrete=True)
    validate_source(open_images(ok / 255.0), discrete=False)  # continuous heads accept any finite value
    with pytest.raises(MorphllrError, match=r"integer pixel values 0..255.*image\(s\) 0"):
        validate_source(open_images(ok / 255.0), discrete=True)
    over = ok.copy()
    over[2, 0, 0] = 256
    with pytest.raises(MorphllrError, match=r"image\(s\) 2"):
        validate_source(open_images(over), discrete=True)


def test_validation_streams_in_batches(images):
    class Counting(ArraySource):
        largest = 0

        def batches(self, batch_size):
            for b in super().batches(batch_size):
                Counting.largest = max(Counting.largest, len(b))
                yield b

    validate_source(Counting(np.repeat(images, 50, axis=0), name="big"), batch_size=64)
    assert Counting.largest == 64  # never the whole 650-image set at once


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(MorphllrError, match="no such file"):
        open_images(tmp_path / "nope.npy")
    (tmp_path / "x.fits").write_bytes(b"SIMPLE")
    with pytest.raises(MorphllrError, match="morphllr prepare"):
        open_images(tmp_path / "x.fits")
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    with pytest.raises(MorphllrError, match="bad.npy"):
        open_images(tmp_path / "bad.npy")
    (tmp_path / "bad.h5").write_bytes(b"not hdf5")
    with pytest.raises(MorphllrError, match="cannot open as HDF5"):
        open_images(tmp_path / "bad.h5")


def test_imageset_files_open_as_imagesets(tmp_path, images):
    imageset = pytest.importorskip("morphllr.data.imageset")
    path = tmp_path / "set.h5"
    imageset.write_imageset(path, images, None, {"crop": 64})
    src = open_images(path)
    assert type(src).__name__ == "ImageSet"
    assert src.shape == (13, 1, 8, 12)
    # the same pixels as a bare array share the fingerprint
    assert src.fingerprint() == open_images(images).fingerprint()
    # naming the dataset reads the pixels as a bare array
    bare = open_images(f"{path}:images")
    np.testing.assert_array_equal(_all(bare), _all(src))
