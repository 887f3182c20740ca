"""ImageSet HDF5 files: round trip, streaming writer, atomicity, bad files, catalogue updates."""

from __future__ import annotations

import hashlib
import pickle

import h5py
import numpy as np
import pytest
from astropy.table import Table

from morphllr.errors import MorphllrError
from morphllr.data.imageset import ImageSet, ImageSetWriter, write_imageset
from morphllr.data.prepare import write_flux_set
from morphllr.data.preprocess import Preprocessing


@pytest.fixture
def images():
    return np.random.default_rng(0).normal(size=(7, 2, 8, 8)).astype(np.float32)


@pytest.fixture
def small_set(tmp_path, images):
    catalog = Table({"id": [f"g{i}" for i in range(7)], "mass": np.arange(7.0)})
    return write_imageset(tmp_path / "s.h5", images, catalog, Preprocessing.preset("none"))


def test_round_trip(small_set, images):
    with ImageSet.open(small_set) as s:
        assert len(s) == 7 and s.shape == (7, 2, 8, 8) and s.name == "s.h5"
        np.testing.assert_array_equal(s.images[2:4], images[2:4])  # lazy, indexable
        np.testing.assert_array_equal(s.read([5, 1, 5]), images[[5, 1, 5]])
        np.testing.assert_array_equal(np.concatenate(list(s.batches(3))), images)
        assert list(s.catalog["id"]) == [f"g{i}" for i in range(7)]
        assert s.catalog["id"].dtype.kind == "U"
        assert s.preprocessing["name"] == "none"
        assert s.flux is None and s.segmap is None and s.segmap_model is None
        assert s.images.chunks == (1, 2, 8, 8) and s.images.compression is not None


def test_fingerprint_is_sha256_of_float32_pixels(small_set, images):
    expected = hashlib.sha256(images.astype("<f4").tobytes()).hexdigest()
    with ImageSet.open(small_set) as s:
        assert s.fingerprint() == expected
    with h5py.File(small_set, "r+") as f:  # a file without the recorded digest is hashed on read
        del f.attrs["images_sha256"]
    with ImageSet.open(small_set) as s:
        assert s.fingerprint() == expected


def test_fingerprint_matches_sources(small_set, images):
    sources = pytest.importorskip("morphllr.data.inputs")
    assert sources.open_images(images).fingerprint() == ImageSet.open(small_set).fingerprint()


def test_streaming_writer_accepts_batches_and_row_dicts(tmp_path):
    path = tmp_path / "stream.h5"
    with ImageSetWriter(path, n=4, image_shape=(1, 4, 4), flux_shape=(1, 8, 8), preprocessing={"name": "x"}) as w:
        for start in range(0, 10, 3):  # more images than the capacity hint
            b = min(3, 10 - start)
            w.append(np.full((b, 4, 4), start, np.float32), [{"id": start + i, "k": 1.0} for i in range(b)],
                     flux=np.ones((b, 8, 8)), segmap=np.ones((b, 8, 8)), segmap_model=np.ones((b, 4, 4)))
    with ImageSet.open(path) as s:
        assert s.shape == (10, 1, 4, 4) and s.flux.shape == (10, 1, 8, 8)
        assert s.segmap.dtype == np.int32 and s.segmap_model.dtype == np.uint8
        assert list(s.catalog["id"]) == list(range(10))


def test_failed_write_leaves_nothing(tmp_path):
    path = tmp_path / "out.h5"
    with pytest.raises(RuntimeError):
        with ImageSetWriter(path, n=2, image_shape=(1, 4, 4), preprocessing={}) as w:
            w.append(np.zeros((1, 4, 4)), [{"id": 1}])
            raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []


def test_existing_file_needs_overwrite(small_set, images):
    with pytest.raises(MorphllrError, match="--overwrite"):
        write_imageset(small_set, images, None, {})
    write_imageset(small_set, images[:2], None, {}, overwrite=True)
    assert len(ImageSet.open(small_set)) == 2


def test_duplicated_ids_are_refused(tmp_path, images):
    with pytest.raises(MorphllrError, match=r"duplicated id.*g1"):
        write_imageset(tmp_path / "d.h5", images[:3], {"id": ["g0", "g1", "g1"]}, {})
    assert not (tmp_path / "d.h5").exists()


def test_wrong_shapes_are_refused(tmp_path):
    with pytest.raises(MorphllrError, match="expected"):
        with ImageSetWriter(tmp_path / "w.h5", n=1, image_shape=(1, 4, 4), preprocessing={}) as w:
            w.append(np.zeros((1, 1, 5, 5)), [{"id": 0}])


def test_empty_set_opens(tmp_path):
    path = write_imageset(tmp_path / "e.h5", np.zeros((0, 1, 4, 4)), None, {})
    with ImageSet.open(path) as s:
        assert len(s) == 0 and len(s.catalog) == 0 and list(s.batches(4)) == []


@pytest.mark.parametrize("damage", ["garbage", "truncate", "plain_hdf5", "missing"])
def test_bad_files_give_one_clear_error(tmp_path, small_set, damage):
    path = tmp_path / "bad.h5"
    if damage == "garbage":
        path.write_bytes(b"not hdf5 at all" * 10)
    elif damage == "truncate":
        path.write_bytes(small_set.read_bytes()[:3000])
    elif damage == "plain_hdf5":
        with h5py.File(path, "w") as f:
            f["x"] = np.zeros((2, 4, 4))
    with pytest.raises(MorphllrError, match="bad.h5"):
        ImageSet.open(path)


def test_update_catalog_adds_columns_and_persists(small_set):
    s = ImageSet.open(small_set)
    table = s.catalog
    table["sersic_n"] = np.linspace(0.5, 4, 7)
    s.update_catalog(table)
    assert "sersic_n" in s.catalog.colnames  # the open set sees the new table
    s.close()
    with ImageSet.open(small_set) as again:
        np.testing.assert_allclose(again.catalog["sersic_n"], np.linspace(0.5, 4, 7))
        assert len(again.images) == 7
    with ImageSet.open(small_set) as again, pytest.raises(MorphllrError, match="rows"):
        again.update_catalog(again.catalog[:3])


def test_pickles_for_dataloader_workers(small_set, images):
    clone = pickle.loads(pickle.dumps(ImageSet.open(small_set)))
    np.testing.assert_array_equal(clone.read([0]), images[:1])


def test_write_flux_set_applies_the_recipe(tmp_path):
    prep = Preprocessing.preset("zanisi21")
    rng = np.random.default_rng(4)
    yy, xx = np.indices((128, 128))
    flux = (2000 * np.exp(-np.hypot(xx - 64, yy - 64) / 5) + rng.normal(0, 6, (3, 128, 128)))[:, None]
    path = write_flux_set(tmp_path / "arch.h5", flux.astype(np.float32), {"id": ["a", "b", "c"]}, prep)
    with ImageSet.open(path) as s:
        np.testing.assert_allclose(s.images[:], prep.flux_to_model(flux), atol=1e-6)
        np.testing.assert_allclose(s.flux[:], flux, rtol=1e-6)
        assert s.segmap.shape == (3, 128, 128) and s.segmap_model.shape == (3, 32, 32)
        assert np.all(s.catalog["central_found"])
        np.testing.assert_allclose(s.catalog["sky_sigma"], 6.0, rtol=0.15)
        assert s.preprocessing == prep.to_dict()
