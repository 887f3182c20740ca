"""Bad PSF input to fit-sersic / archetypes / mock (issue 13): one `error:` line naming file, row or option; exit 2;
nothing written.  The same pattern as tests/cli/test_faults.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("galsim")

from morphllr.cli import main  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def cli(argv, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as stop:
        main([str(a) for a in argv])
    _, err = capsys.readouterr()
    return (stop.value.code if isinstance(stop.value.code, int) else 1), err


def refused(argv, capsys, *fragments: str) -> str:
    code, err = cli(argv, capsys)
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    assert code == 2, err
    return errors[0]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.suffix in (".tmp", ".lock"))


@pytest.fixture(scope="module")
def observed(tmp_path_factory) -> Path:
    """3 galaxies, 64^2 flux cutouts, a psf_fwhm_arcsec column; no Sérsic columns yet."""
    from morphllr.data.prepare import write_flux_set

    folder = tmp_path_factory.mktemp("observed")
    yy, xx = np.mgrid[:64, :64]
    blob = 3000 * np.exp(-np.hypot(xx - 31.7, yy - 31.2) / 3)
    flux = (blob + np.random.default_rng(0).normal(0, 5.7, (3, 64, 64)))[:, None].astype(np.float32)
    write_flux_set(folder / "obs.h5", flux, {"id": ["g0", "g1", "g2"], "psf_fwhm_arcsec": [1.4, 1.4, 1.4]},
                   "zanisi21")
    return folder / "obs.h5"


@pytest.fixture(scope="module")
def fitted(observed, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fitted")
    shutil.copy(observed, folder / "obs.h5")
    with pytest.raises(SystemExit) as stop:
        main(["fit-sersic", str(folder / "obs.h5"), "--psf-beta", "3.5", "--workers", "1"])
    assert stop.value.code == 0
    return folder / "obs.h5"


def copy_with(src: Path, dst: Path, **columns) -> Path:
    from astropy.table import Column

    from morphllr.data.imageset import ImageSet

    shutil.copy(src, dst)
    with ImageSet.open(dst) as s:
        table = s.catalog.copy()
    for name, values in columns.items():
        table[name] = Column(values)
    ImageSet.open(dst).update_catalog(table)
    return dst


def no_fit_written(path: Path) -> bool:
    from morphllr.data.imageset import ImageSet

    with ImageSet.open(path) as s:
        return "sersic_n" not in s.catalog.colnames and "sersic_fit" not in s.catalog.meta


def bad_psf_files(folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, fragment of the error)."""
    np.save(folder / "cube.npy", np.ones((2, 9, 9)))
    nan = np.ones((9, 9))
    nan[4, 4] = np.nan
    np.save(folder / "nan.npy", nan)
    np.save(folder / "zero.npy", np.zeros((9, 9)))
    np.save(folder / "text.npy", np.array([["a"] * 9] * 9))
    (folder / "fake.fits").write_text("not a FITS file\n")
    (folder / "psf.txt").write_text("1 2 3\n")
    return {
        "missing": (folder / "missing.fits", "file not found"),
        "cube": (folder / "cube.npy", "must be 2-D, got shape (2, 9, 9)"),
        "nan": (folder / "nan.npy", "1 NaN/inf pixel(s)"),
        "zero": (folder / "zero.npy", "sums to 0"),
        "text": (folder / "text.npy", "not numbers"),
        "fake": (folder / "fake.fits", "not a readable FITS image"),
        "suffix": (folder / "psf.txt", "unknown file type"),
    }


@pytest.mark.parametrize("case", ["missing", "cube", "nan", "zero", "text", "fake", "suffix"])
def test_bad_psf_image_for_fit_sersic(tmp_path, observed, capsys, case):
    target = shutil.copy(observed, tmp_path / "obs.h5")
    psf, fragment = bad_psf_files(tmp_path)[case]
    refused(["fit-sersic", target, "--psf-image", psf, "--workers", "1"], capsys, f"--psf-image {psf}", fragment)
    assert no_fit_written(target) and leftovers(tmp_path) == []


@pytest.mark.parametrize("case", ["cube", "nan"])
def test_bad_psf_image_for_archetypes_and_mock(tmp_path, observed, capsys, case):
    psf, fragment = bad_psf_files(tmp_path)[case]
    target = copy_with(observed, tmp_path / "obs.h5", sersic_n=[1.0, 2.0, 3.0], sersic_re_pix=[3.0, 3.0, 3.0],
                       sersic_q=[0.8, 0.8, 0.8], sersic_pa_deg=[0.0, 0.0, 0.0], sersic_flux=[1e4, 1e4, 1e4])
    refused(["archetypes", target, "--out", tmp_path / "arch.h5", "--psf-image", psf, "--workers", "1"], capsys,
            f"--psf-image {psf}", fragment)
    assert not (tmp_path / "arch.h5").exists()
    from astropy.io import fits

    hdu = fits.PrimaryHDU(np.full((40, 40), 20.0))
    hdu.header.update(BUNIT="AB mag/arcsec2", CDELT1=200.0, CTYPE1="pc", REDSHIFT=0.04)
    hdu.writeto(tmp_path / "sim.fits")
    refused(["mock", tmp_path / "sim.fits", "--out", tmp_path / "m.h5", "--psf-image", psf], capsys,
            f"--psf-image {psf}", fragment)
    assert not (tmp_path / "m.h5").exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("values,fragment", [
    (["3.5", "abc", ""], "column 'psf_beta' must hold numbers, but row 2 (id g1) holds 'abc'"),
    ([3.5, 0.5, 4.0], "column 'psf_beta' holds a Moffat index outside 1-50 (e.g. 0.5) for id(s) g1"),
])
def test_bad_beta_column_names_the_row(tmp_path, observed, capsys, values, fragment):
    target = copy_with(observed, tmp_path / "obs.h5", psf_beta=values)
    refused(["fit-sersic", target, "--workers", "1"], capsys, str(target), fragment)
    assert no_fit_written(target) and leftovers(tmp_path) == []


@pytest.mark.parametrize("argv,fragments", [
    (["--psf-beta", "0.5"], ["--psf-beta", "0.5", "see `morphllr fit-sersic --help`"]),
    (["--psf-beta", "3", "--psf", "gaussian"], ["--psf-beta 3.0: only a Moffat PSF has a beta"]),
    (["--no-psf", "--psf-beta", "3"], ["--no-psf: cannot be combined with --psf-beta"]),
    (["--psf-fwhm", "1.4", "--psf-image", "PSF"], ["a PSF image replaces --psf-fwhm"]),
])
def test_conflicting_psf_options_are_one_line(tmp_path, observed, capsys, argv, fragments):
    target = shutil.copy(observed, tmp_path / "obs.h5")
    np.save(tmp_path / "psf.npy", np.ones((9, 9)))
    argv = [str(tmp_path / "psf.npy") if a == "PSF" else a for a in argv]
    refused(["fit-sersic", target, *argv, "--workers", "1"], capsys, *fragments)
    assert no_fit_written(target) and leftovers(tmp_path) == []


@pytest.mark.parametrize("argv,option", [
    (["--psf-fwhm", "1.3"], "--psf-fwhm 1.3"),
    (["--psf-beta", "4.765"], "--psf-beta 4.765"),
    (["--psf", "gaussian"], "--psf gaussian"),
    (["--psf-image", "PSF"], "--psf-image"),
])
def test_archetypes_refuse_a_psf_other_than_the_fits(tmp_path, fitted, capsys, argv, option):
    np.save(tmp_path / "psf.npy", np.ones((9, 9)))
    argv = [str(tmp_path / "psf.npy") if a == "PSF" else a for a in argv]
    line = refused(["archetypes", fitted, "--out", tmp_path / "arch.h5", *argv, "--workers", "1"], capsys,
                   option, "deconvolved moffat FWHM 1.4 arcsec, beta 3.5", "fit-sersic")
    assert "drop " in line
    assert not (tmp_path / "arch.h5").exists() and leftovers(tmp_path) == []
    # the same PSF given explicitly, or none, is fine
    code, err = cli(["archetypes", fitted, "--out", tmp_path / "ok.h5", "--psf-fwhm", "1.4", "--psf-beta", "3.5",
                     "--workers", "1"], capsys)
    assert code == 0, err


def test_mock_match_and_archetypes_share_the_fits_psf(tmp_path, fitted, capsys):
    """Fitted with --psf-beta 3.5: archetypes and `mock --match` both use beta 3.5 (not the default 4.765)."""
    from astropy.io import fits

    from morphllr.data.imageset import ImageSet

    hdu = fits.PrimaryHDU(np.full((40, 40), 20.0))
    hdu.header.update(BUNIT="AB mag/arcsec2", CDELT1=200.0, CTYPE1="pc", REDSHIFT=0.04)
    hdu.writeto(tmp_path / "sim.fits")
    code, err = cli(["mock", tmp_path / "sim.fits", "--out", tmp_path / "m.h5", "--match", fitted], capsys)
    assert code == 0, err
    code, err = cli(["archetypes", fitted, "--out", tmp_path / "a.h5", "--workers", "1"], capsys)
    assert code == 0, err
    with ImageSet.open(tmp_path / "m.h5") as mock, ImageSet.open(tmp_path / "a.h5") as arch:
        assert list(mock.catalog["psf_beta"]) == [3.5] and list(mock.catalog["psf_fwhm_arcsec"]) == [1.4]
        assert np.allclose(arch.catalog["psf_beta"], 3.5) and np.allclose(arch.catalog["psf_fwhm_arcsec"], 1.4)
