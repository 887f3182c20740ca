"""Readers: FITS (HDU by index/name, cubes, SKIRT mocks), arrays, JPEG/PNG, catalogues."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from morphllr.data import catalog as catalogs
from morphllr.data import files as readers
from morphllr.errors import MorphllrError
from morphllr.data.imageset import ImageSet
from morphllr.data.prepare import prepare_imageset
from morphllr.data.preprocess import Preprocessing


def galaxy(size=128, amp=900.0, noise=5.0, seed=0):
    yy, xx = np.indices((size, size))
    rng = np.random.default_rng(seed)
    return (amp * np.exp(-np.hypot(xx - size / 2, yy - size / 2) / 4) + rng.normal(0, noise, (size, size))).astype(
        np.float32
    )


def write_sdss_like(path, data, scale_deg=0.396 / 3600):
    header = fits.Header()
    header.update(CTYPE1="RA---TAN", CTYPE2="DEC--TAN", CRVAL1=180.0, CRVAL2=0.0, CRPIX1=64, CRPIX2=64,
                  CDELT1=-scale_deg, CDELT2=scale_deg)
    fits.PrimaryHDU(data, header=header).writeto(path)


def write_skirt_mock(path, mu_r, fovarc=25.0, redshift=0.05):
    """One subhalo, per-band HDUs in AB mag/arcsec^2 (the IllustrisTNG SKIRT layout)."""
    primary = fits.PrimaryHDU()
    primary.header.update(FOVARC=fovarc, REDSHIFT=redshift)
    bands = [fits.ImageHDU(mu_r + 0.5, name="SUBARU_HSC.G"), fits.ImageHDU(mu_r, name="SUBARU_HSC.R")]
    for band in bands:
        band.header["BUNIT"] = "AB mag/arcsec^2"
    fits.HDUList([primary] + bands).writeto(path)


# ---------------------------------------------------------------------- inputs
def test_expand_inputs_folder_glob_and_errors(tmp_path):
    (tmp_path / "sub").mkdir()
    write_sdss_like(tmp_path / "a.fits", galaxy())
    write_sdss_like(tmp_path / "sub" / "b.fits", galaxy())
    write_sdss_like(tmp_path / "sub" / "b_mask.fits", galaxy())
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in readers.expand_inputs([tmp_path])] == ["a.fits", "b.fits"]
    assert [p.name for p in readers.expand_inputs([str(tmp_path / "*.fits")])] == ["a.fits"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(MorphllrError, match="empty: folder holds no"):
        readers.expand_inputs([tmp_path / "empty"])
    with pytest.raises(MorphllrError, match="no such file"):
        readers.expand_inputs([tmp_path / "missing.fits"])
    with pytest.raises(MorphllrError, match="notes.txt: unsupported"):
        readers.expand_inputs([tmp_path / "notes.txt"])
    with pytest.raises(MorphllrError, match="matches no"):
        readers.expand_inputs([str(tmp_path / "*.jpg")])


def test_clashing_stems_get_relative_ids(tmp_path):
    for folder in ("spirals", "ellipticals"):
        (tmp_path / folder).mkdir()
        write_sdss_like(tmp_path / folder / "1.fits", galaxy())
    ids = readers.file_ids(readers.expand_inputs([tmp_path]))
    assert sorted(ids.values()) == ["ellipticals/1", "spirals/1"]


# ---------------------------------------------------------------------- FITS
def test_fits_image_with_wcs(tmp_path):
    write_sdss_like(tmp_path / "g.fits", galaxy())
    (record,) = readers.iter_images([tmp_path / "g.fits"])
    assert record.id == "g" and record.image.shape == (1, 128, 128)
    assert record.pixel_scale == pytest.approx(0.396, rel=1e-4)


def test_fits_hdu_by_index_and_name_and_cube(tmp_path):
    path = tmp_path / "multi.fits"
    cube = np.stack([galaxy(seed=i) for i in range(3)])
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(galaxy(), name="R"), fits.ImageHDU(cube, name="CUBE")]).writeto(path)
    assert readers.count_images([path]) == 1  # first image HDU
    assert next(readers.iter_images([path], hdu="1")).source.endswith("[R]")
    records = list(readers.iter_images([path], hdu="CUBE"))
    assert [r.id for r in records] == ["multi:0", "multi:1", "multi:2"]
    np.testing.assert_allclose(records[2].image[0], cube[2])
    assert readers.count_images([path], hdu="CUBE") == 3
    with pytest.raises(MorphllrError, match=r"no HDU 'G'.*\['PRIMARY', 'R', 'CUBE'\]"):
        list(readers.iter_images([path], hdu="G"))
    with pytest.raises(MorphllrError, match="holds no image"):
        list(readers.iter_images([path], hdu="0"))


def test_corrupt_fits_names_the_file(tmp_path):
    good = tmp_path / "good.fits"
    write_sdss_like(good, galaxy())
    (tmp_path / "broken.fits").write_bytes(good.read_bytes()[:4000])
    (tmp_path / "junk.fits").write_bytes(b"\x00garbage" * 100)
    for name in ("broken.fits", "junk.fits"):
        with pytest.raises(MorphllrError, match=name):
            list(readers.iter_images([tmp_path / name]))


def test_skirt_mock_layout(tmp_path):
    """mag/arcsec^2 per band, +inf where empty, FOVARC and REDSHIFT in the primary header."""
    size, fov = 300, 300 * 0.2
    yy, xx = np.indices((size, size))
    r = np.hypot(xx - size / 2, yy - size / 2)
    mu = np.where(r < 40, 20.0 + r / 10, np.inf)
    write_skirt_mock(tmp_path / "broadband_123.fits", mu, fovarc=fov, redshift=0.1)
    (record,) = readers.iter_images([tmp_path / "broadband_123.fits"], hdu="SUBARU_HSC.R")
    assert record.units == "mag_arcsec2" and record.pixel_scale == pytest.approx(0.2)
    assert record.meta["redshift"] == 0.1

    prep = Preprocessing.preset("zanisi21")
    out = tmp_path / "tng.h5"
    report = prepare_imageset(readers.iter_images([tmp_path / "broadband_123.fits"], hdu="SUBARU_HSC.R"), out, prep,
                              n=1)
    assert report["n_nonfinite_pixels"] == 0  # +inf mag is empty sky, not a bad pixel
    with ImageSet.open(out) as s:
        flux = s.flux[0, 0]
        assert np.isfinite(flux).all() and flux.min() >= 0
        expected = np.sum(10 ** (-0.4 * (mu[np.isfinite(mu)] - prep.zero_point)) * 0.2**2)
        assert flux.sum() == pytest.approx(expected, rel=0.03)  # resampled 0.2 -> 0.396"/px, flux kept
        assert s.catalog["redshift"][0] == 0.1 and s.catalog["central_found"][0]


def test_small_simulation_is_padded_when_asked(tmp_path):
    mu = np.full((60, 60), 22.0)
    write_skirt_mock(tmp_path / "small.fits", mu, fovarc=60 * 0.396)
    records = lambda: readers.iter_images([tmp_path / "small.fits"], hdu="SUBARU_HSC.R")  # noqa: E731
    prep = Preprocessing.preset("zanisi21")
    with pytest.raises(MorphllrError, match="small.fits.*--pad"):
        prepare_imageset(records(), tmp_path / "no.h5", prep, n=1)
    prepare_imageset(records(), tmp_path / "yes.h5", prep.replace(pad=True), n=1)
    with ImageSet.open(tmp_path / "yes.h5") as s:
        flux = s.flux[0, 0]
        assert flux.shape == (128, 128) and flux[0, 0] == 0 and flux[64, 64] > 0
        assert (flux > 0).sum() == 60 * 60


def test_physical_pixel_scale_from_redshift():
    header = fits.Header({"NAXIS1": 10, "CTYPE1": "kpc", "CDELT1": 1.0, "REDSHIFT": 0.05})
    # about 1 kpc per arcsec at z = 0.05 for any modern cosmology
    assert 0.9 < readers.fits_pixel_scale(header) < 1.1
    assert readers.fits_pixel_scale(fits.Header({"NAXIS1": 10})) is None


# ---------------------------------------------------------------------- arrays and pictures
def test_npy_npz_hdf5(tmp_path):
    import h5py

    stack = np.random.default_rng(0).normal(size=(4, 3, 16, 16))
    np.save(tmp_path / "a.npy", stack)
    np.savez(tmp_path / "b.npz", images=stack, other=np.zeros(3))
    with h5py.File(tmp_path / "c.h5", "w") as f:
        f["group/cutouts"] = stack
        f["labels"] = np.arange(4)
    for name in ("a.npy", "b.npz", "c.h5"):
        records = list(readers.iter_images([tmp_path / name], channel=2))
        assert len(records) == 4 and readers.count_images([tmp_path / name]) == 4
        np.testing.assert_allclose(records[3].image, stack[3, 2:3])
    assert list(readers.iter_images([tmp_path / "a.npy"]))[0].image.shape == (3, 16, 16)
    with pytest.raises(MorphllrError, match="--channel 5"):
        list(readers.iter_images([tmp_path / "a.npy"], channel=5))
    with pytest.raises(MorphllrError, match="no dataset 'nope'"):
        list(readers.iter_images([tmp_path / "c.h5"], hdu="nope"))


def test_jpeg_png_channel(tmp_path):
    from PIL import Image

    rgb = np.zeros((40, 40, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 10, 120, 200
    Image.fromarray(rgb).save(tmp_path / "g.png")
    Image.fromarray(rgb).save(tmp_path / "g2.jpg", quality=95)
    (png,) = readers.iter_images([tmp_path / "g.png"])
    assert png.image.shape == (1, 40, 40) and np.all(png.image == 120)  # green by default
    (red,) = readers.iter_images([tmp_path / "g.png"], channel=0)
    assert np.all(red.image == 10)
    (jpg,) = readers.iter_images([tmp_path / "g2.jpg"])
    assert abs(jpg.image.mean() - 120) < 3
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(MorphllrError, match="bad.jpg"):
        list(readers.iter_images([tmp_path / "bad.jpg"]))


# ---------------------------------------------------------------------- catalogues
@pytest.mark.parametrize("fmt", ["csv", "fits", "parquet"])
def test_read_catalog_formats(tmp_path, fmt):
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    table = Table({"ID": [1, 2, 3], "mass": [10.0, 10.5, 11.0]})
    path = tmp_path / f"cat.{fmt}"
    table.write(path, format={"csv": "ascii.csv", "fits": "fits", "parquet": "parquet"}[fmt])
    cat = catalogs.read_catalog(path)
    assert list(cat["id"]) == ["1", "2", "3"] and "mass" in cat.colnames


def test_catalog_errors(tmp_path):
    Table({"name": ["a"]}).write(tmp_path / "noid.csv")
    with pytest.raises(MorphllrError, match="no `id` column"):
        catalogs.read_catalog(tmp_path / "noid.csv")
    Table({"id": ["a", "a"]}).write(tmp_path / "dup.csv")
    with pytest.raises(MorphllrError, match="duplicated"):
        catalogs.read_catalog(tmp_path / "dup.csv")
    (tmp_path / "bad.fits").write_bytes(b"nonsense")
    with pytest.raises(MorphllrError, match="bad.fits"):
        catalogs.read_catalog(tmp_path / "bad.fits")


def test_join_catalog_reports_unmatched():
    images = Table({"id": ["a", "b", "c"]})
    catalog = Table({"id": ["c", "a", "z", "y"], "mass": [3.0, 1.0, 9.0, 8.0]})
    joined, report = catalogs.join_catalog(images, catalog, "cat.csv")
    assert list(joined["id"]) == ["a", "b", "c"]
    assert joined["mass"][0] == 1.0 and joined["mass"][2] == 3.0 and joined["mass"].mask[1]
    assert report["n_matched"] == 2 and report["images_without_row"] == ["b"] and report["rows_without_image"] == 2


# ---------------------------------------------------------------------- shared real data
@pytest.mark.shared_data
def test_real_sdss_fits(shared_data):
    files = readers.expand_inputs([shared_data / "sdss_r_fits"])
    assert all("_mask" not in p.name for p in files) and len(files) == 3
    records = list(readers.iter_images(files))
    assert all(r.image.ndim == 3 and np.isfinite(r.image).all() for r in records)


@pytest.mark.shared_data
def test_real_skirt_idealised_merger(shared_data):
    path = sorted((shared_data / "realsim_idealized").glob("photo_r_*.fits"))[0]
    (record,) = readers.iter_images([path])
    assert record.units == "mag_arcsec2" and np.isposinf(record.image).any()
    assert 0.05 < record.pixel_scale < 0.2  # 97.7 pc/px at z = 0.046
    flux, info = Preprocessing.preset("zanisi21").cut(record.image, units=record.units,
                                                      input_pixel_scale=record.pixel_scale)
    assert flux.shape == (1, 128, 128) and np.isfinite(flux).all() and flux.max() > 0
