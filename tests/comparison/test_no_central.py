"""Images without a central source (empty frames) in ``morphllr compare``: counted, listed, left out or kept.

The sets are made the way ``morphllr prepare`` makes them: flux cutouts of exponential galaxies
and of pure sky noise go through the real segmentation (``write_flux_set``: catalogue
``central_found``, ``/segmap``, ``/segmap_model``), so the empty frames are found by the code
that finds them in real data, then scored by per-pixel Gaussian toy models (test_compare's): p_obs
around a round galaxy, p_arch around an empty frame, so a galaxy's LLR is large and an empty frame's very
negative and leaving the empty frames out visibly moves every number.
"""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from test_compare import PREP, _blob, _Config, _GaussianNet, _Model, _tiny_pixelcnn_dir

from morphllr.comparison.run import compare
from morphllr.errors import MorphllrError, MorphllrWarning

pytestmark = pytest.mark.timeout(120)

N_FLUX = 32  # flux cutouts (PREP: crop 32, zoom 0.5 -> 16 x 16 model images)
#: positions of the empty frames among the images of each set
EMPTY = {"ref": [3, 17], "mix": [0, 5, 11, 27]}
N = {"ref": 30, "mix": 28}


def _flux(n: int, empty: list[int], rng: np.random.Generator) -> np.ndarray:
    """(n, 1, 32, 32) sky-subtracted cutouts: exponential galaxies of random size and flux in sky noise
    (PREP's arcsinh stretch maps them to peaks of ~1-2, the toy models' scale), except ``empty``, which hold
    the noise alone."""
    yy, xx = np.mgrid[0:N_FLUX, 0:N_FLUX] - (N_FLUX - 1) / 2
    r = np.hypot(yy, xx)
    flux = rng.normal(0.0, 50.0, (n, 1, N_FLUX, N_FLUX))
    for i in range(n):
        if i not in empty:
            flux[i, 0] += rng.uniform(1000, 3000) * np.exp(-r / rng.uniform(1.8, 3.5))
    return flux.astype(np.float32)


def _ids(name: str, n: int, empty: list[int]) -> np.ndarray:
    return np.array([f"{name}-{'sky' if i in empty else 'gal'}{i:02d}" for i in range(n)])


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict[str, Path]:
    from morphllr.data.imageset import ImageSet, write_imageset
    from morphllr.data.prepare import write_flux_set

    rng = np.random.default_rng(11)
    folder = tmp_path_factory.mktemp("no_central")
    out = {}
    for name in ("ref", "mix"):
        flux = _flux(N[name], EMPTY[name], rng)
        out[name] = write_flux_set(folder / f"{name}.h5", flux, {"id": _ids(name, N[name], EMPTY[name])}, PREP)
        if name == "mix":  # the same galaxies alone, and the same pixels with only a central-source mask
            keep = np.setdiff1d(np.arange(N[name]), EMPTY[name])
            out["galaxies"] = write_flux_set(folder / "galaxies.h5", flux[keep],
                                             {"id": _ids(name, N[name], EMPTY[name])[keep]}, PREP)
            with ImageSet.open(out[name]) as s:
                images, seg = s.read(np.arange(len(s))), np.asarray(s.segmap_model)
                np.save(folder / "bare.npy", images)
            out["masked"] = write_imageset(folder / "masked.h5", images, {"id": _ids("m", N[name], EMPTY[name])},
                                           PREP, segmap_model=seg)
    out["bare"] = folder / "bare.npy"
    out["all_sky"] = write_flux_set(folder / "all_sky.h5", _flux(6, list(range(6)), rng),
                                    {"id": _ids("s", 6, list(range(6)))}, PREP)
    one = [0, 1, 2]
    out["one_left"] = write_flux_set(folder / "one_left.h5", _flux(4, one, rng), {"id": _ids("o", 4, one)}, PREP)
    return out


def _models():
    blob = _blob()
    return (_Model(_GaussianNet(blob), _Config(), PREP, {}),
            _Model(_GaussianNet(np.zeros_like(blob)), _Config(), PREP, {}))


def _run(sets: dict, out: Path, names=("mix", "masked", "bare"), reference: str = "ref", **kw):
    obs, arch = _models()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = compare(obs, arch, reference=(reference, sets[reference]), sets={n: sets[n] for n in names}, out=out,
                         n_boot=100, matched_draws=20, gallery_size=3, report=False, **kw)
    texts = [str(w.message) for w in caught if issubclass(w.category, MorphllrWarning)]
    summary = json.loads((out / "summary.json").read_text())
    with open(out / "scores.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return result, summary, rows, texts


@pytest.fixture(scope="module")
def left_out(sets, tmp_path_factory):
    return _run(sets, tmp_path_factory.mktemp("default") / "report")


def _llr(rows: list[dict], name: str, central: str | None = None) -> np.ndarray:
    return np.array([float(r["llr"]) for r in rows if r["set"] == name and (central is None or
                                                                            r["central_source"] == central)])


def test_empty_frames_are_found_counted_and_listed(left_out, sets):
    from morphllr.data.imageset import ImageSet

    with ImageSet.open(sets["mix"]) as s:  # the segmentation found exactly the empty frames
        assert np.flatnonzero(~np.asarray(s.catalog["central_found"], bool)).tolist() == EMPTY["mix"]
    _, summary, rows, _ = left_out
    for name, ids_of in (("ref", "ref"), ("mix", "mix"), ("masked", "m")):
        e = summary["sets"][name]
        empty = EMPTY["ref" if name == "ref" else "mix"]
        assert e["n_no_central"] == len(empty) and e["no_central_excluded"] is True, name
        assert e["no_central_ids"] == _ids(ids_of, N["ref" if name == "ref" else "mix"], empty)[empty].tolist()
        assert e["n_images"] == e["n"] + len(empty)
    assert summary["sets"]["mix"]["central_from"] == "catalogue column central_found"
    assert summary["sets"]["masked"]["central_from"] == "/segmap_model"
    # scores.csv keeps every image, with the flag
    mix = [r for r in rows if r["set"] == "mix"]
    assert len(mix) == N["mix"] and [i for i, r in enumerate(mix) if float(r["central_source"]) == 0] == EMPTY["mix"]
    with open(left_out[0].out / "summary.csv", newline="") as fh:
        table = {r["set"]: r for r in csv.DictReader(fh)}
    assert table["mix"]["n_no_central"] == "4" and table["ref"]["n_no_central"] == "2"
    assert table["bare"]["n_no_central"] == ""
    assert left_out[0].summary_table()["n_no_central"][list(left_out[0].ranking).index("mix")] == 4


def test_left_out_by_default_with_a_warning(left_out, sets):
    result, summary, rows, texts = left_out
    for name in ("ref", "mix", "masked"):
        kept, every = _llr(rows, name, "1.0"), _llr(rows, name)
        e = summary["sets"][name]
        assert e["n"] == kept.size and e["mean_llr"] == pytest.approx(kept.mean(), rel=1e-12, abs=1e-9)
        assert abs(kept.mean() - every.mean()) > 1.0, "the empty frames must move the mean, or this test proves nothing"
        assert result.sets[name].llr.size == kept.size
    ref, mix = _llr(rows, "ref", "1.0"), _llr(rows, "mix", "1.0")
    e = summary["sets"]["mix"]
    assert e["delta_llr"] == pytest.approx(mix.mean() - ref.mean(), rel=1e-12, abs=1e-9)
    brute = np.mean((mix[:, None] > ref[None]) + 0.5 * (mix[:, None] == ref[None]))
    assert e["auroc_vs_reference"] == pytest.approx(brute, abs=1e-12)
    assert summary["outlier_threshold_llr"] == pytest.approx(np.quantile(ref, 0.0015), rel=1e-12)
    # the galleries rank only galaxies; their rows point at the right images of the set
    from morphllr.data.imageset import ImageSet

    for key, g in result.sets["mix"].gallery.items():
        if len(g["rows"]):
            with ImageSet.open(sets["mix"]) as s:
                np.testing.assert_array_equal(g["images"], s.read(g["rows"]))
        assert all("gal" in str(i) for i in g["ids"]), key
        mix_rows = [r for r in rows if r["set"] == "mix"]
        assert [mix_rows[i]["id"] for i in g["rows"]] == list(g["ids"])
    for name, n in (("ref", 2), ("mix", 4)):
        text = next(t for t in texts if t.startswith(f"{name}: "))
        assert f"{n} of its {N[name]} images have no central source" in text and "left out" in text
        assert "--keep-no-central" in text and text in summary["sets"][name]["warnings"] and text in summary["warnings"]


def test_statistics_maps_and_profiles_equal_those_of_the_galaxies_alone(left_out, sets, tmp_path):
    """Leaving the empty frames out gives exactly the numbers of a set that never had them."""
    result, summary, _, _ = left_out
    alone, alone_summary, _, _ = _run(sets, tmp_path / "alone", names=("galaxies",))
    e, g = summary["sets"]["mix"], alone_summary["sets"]["galaxies"]
    differ = {"warnings", "n_images", "n_no_central", "no_central_ids", "no_central_excluded", "central_from"}
    assert {k: v for k, v in e.items() if k not in differ} == {k: v for k, v in g.items() if k not in differ}
    assert g["n_no_central"] == 0 and g["no_central_excluded"] is False
    np.testing.assert_array_equal(result.sets["mix"].mean_map, alone.sets["galaxies"].mean_map)
    np.testing.assert_array_equal(result.sets["mix"].profile_pix, alone.sets["galaxies"].profile_pix)
    assert not any("central source" in t for t in alone_summary["sets"]["galaxies"]["warnings"])
    # the small-set rule counts the 24 galaxies left, as for the set that never had the empty frames
    assert [t.replace("mix: ", "galaxies: ") for t in e["warnings"] if "central source" not in t] == g["warnings"]


def test_kept_with_the_option(sets, tmp_path):
    _, summary, rows, texts = _run(sets, tmp_path / "kept", names=("mix",), keep_no_central=True)
    e = summary["sets"]["mix"]
    every = _llr(rows, "mix")
    assert e["n"] == N["mix"] and e["mean_llr"] == pytest.approx(every.mean(), rel=1e-12, abs=1e-9)
    assert e["n_no_central"] == 4 and e["no_central_excluded"] is False
    text = next(t for t in texts if t.startswith("mix: "))
    assert "4 of its 28 images have no central source" in text and "included" in text


def test_a_bare_array_is_unknown_and_not_left_out(left_out):
    _, summary, rows, _ = left_out
    e = summary["sets"]["bare"]
    assert e["n_no_central"] is None and e["no_central_ids"] == [] and e["no_central_excluded"] is False
    bare = _llr(rows, "bare")
    assert e["n"] == bare.size == N["mix"] and e["mean_llr"] == pytest.approx(bare.mean(), rel=1e-12, abs=1e-9)
    assert all(r["central_source"] == "nan" for r in rows if r["set"] == "bare")
    assert not any("central source" in w for w in summary["sets"]["bare"]["warnings"])
    assert any(n.startswith("bare: no record of which images show a central source") for n in summary["notes"])


def test_figure_notes_are_recorded_without_the_report(left_out):
    """report=False still writes report_data.h5, so a later --figures-only redraw needs the figures' notes."""
    from morphllr.comparison.figure_data import figure_notes
    from morphllr.comparison.summary import merge_notes

    result, summary, _, _ = left_out
    expected = merge_notes(figure_notes(result.sets), result.sets)
    assert expected and set(expected) <= set(summary["notes"]), summary["notes"]


def test_no_note_about_unknown_sets_when_no_set_has_empty_frames(sets, tmp_path):
    _, summary, _, texts = _run(sets, tmp_path / "clean", names=("bare",), reference="galaxies")
    assert summary["sets"]["bare"]["n_no_central"] is None and summary["sets"]["galaxies"]["n_no_central"] == 0
    assert not any("central source" in n for n in summary["notes"]) and not any("central source" in t for t in texts)


def test_a_set_left_empty_or_with_one_image_is_refused(sets, tmp_path):
    obs, arch = _models()
    with pytest.raises(MorphllrError, match="set one_left=.*only 1 of its 4 images .*--keep-no-central"):
        compare(obs, arch, reference=("ref", sets["ref"]), sets={"one_left": sets["one_left"]})


def test_cli_refuses_an_all_empty_set_and_prints_the_warning(sets, tmp_path, capsys):
    from morphllr.cli import main

    obs_dir, arch_dir = _tiny_pixelcnn_dir(tmp_path / "obs", 0), _tiny_pixelcnn_dir(tmp_path / "arch", 1)
    base = ["compare", "--obs", str(obs_dir), "--arch", str(arch_dir), "--reference", f"SDSS={sets['ref']}",
            "--bootstrap", "20", "--gallery", "2"]
    with pytest.raises(SystemExit) as exc:
        main([*base, f"Sky={sets['all_sky']}", "--out", str(tmp_path / "r1")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err
    assert err.count("error:") == 1 and "set Sky=" in err and "none of its 6 images has a central source" in err
    assert not (tmp_path / "r1").exists()
    with pytest.raises(SystemExit) as exc:
        main([*base, f"Mix={sets['mix']}", "--out", str(tmp_path / "r2")])
    err = capsys.readouterr().err
    assert exc.value.code == 0, err
    assert "warning: Mix: 4 of its 28 images have no central source" in err
    assert "warning: SDSS: 2 of its 30 images have no central source" in err
    with pytest.raises(SystemExit) as exc:
        main(["compare", "--help"])
    assert "--keep-no-central" in capsys.readouterr().out
