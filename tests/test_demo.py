"""The demo: the shipped models must recover the generated universe's known answer."""

from __future__ import annotations

import numpy as np
import pytest

from morphllr import demo, synth
from morphllr.errors import MorphllrError


def _summary(means: dict[str, float], half_width: float = 0.5) -> dict:
    return {"sets": {name: {"mean_llr": m, "ci95": [m - half_width, m + half_width]} for name, m in means.items()}}


def test_check_ranking_accepts_the_known_order_and_names_inversions():
    good = _summary({"observed-test": 10, "sim-good": 8, "sim-softened": 5, "sim-smooth": 2, "archetypes": 1.5})
    assert demo.check_ranking(good) == []
    swapped = _summary({"observed-test": 10, "sim-good": 4, "sim-softened": 5, "sim-smooth": 2, "archetypes": 1})
    problems = demo.check_ranking(swapped)
    assert len(problems) == 1 and "sim-good" in problems[0] and "sim-softened" in problems[0]
    overlapping = _summary({"observed-test": 10, "sim-good": 9.8, "sim-softened": 5, "sim-smooth": 2,
                            "archetypes": 1})
    assert len(demo.check_ranking(overlapping)) == 1  # touching intervals are not a separation
    # the declared tie may go either way within its intervals, but not clearly inverted
    tie = _summary({"observed-test": 10, "sim-good": 8, "sim-softened": 5, "sim-smooth": 2, "archetypes": 2.3})
    assert demo.check_ranking(tie) == []
    inverted_tie = _summary({"observed-test": 10, "sim-good": 8, "sim-softened": 5, "sim-smooth": 2,
                             "archetypes": 4})
    assert len(demo.check_ranking(inverted_tie)) == 1


def test_missing_models_give_a_clear_message(tmp_path):
    with pytest.raises(MorphllrError, match="make models"):
        demo.shipped_models(tmp_path)


def test_install_models_copies_only_weights_and_config(tmp_path):
    runs = {}
    for name in ("obs", "arch"):
        run = tmp_path / "runs" / name
        (run / "checkpoints").mkdir(parents=True)
        (run / "checkpoints" / "last.ckpt").write_bytes(b"x" * 100)
        (run / "weights.safetensors").write_bytes(name.encode())
        (run / "model.json").write_text("{}")
        runs[name] = run
    dest = demo.install_models(runs["obs"], runs["arch"], tmp_path / "pretrained")
    assert sorted(p.name for p in (dest / "obs").iterdir()) == sorted(demo.MODEL_FILES)
    assert (dest / "arch" / "weights.safetensors").read_bytes() == b"arch"
    assert demo.shipped_models(dest) == (dest / "obs", dest / "arch")


def test_demo_refuses_an_existing_folder(tmp_path, capsys):
    from morphllr.cli import main

    (tmp_path / "d").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--out", str(tmp_path / "d")])
    assert exit_info.value.code == 2
    assert "already exists" in capsys.readouterr().err


@pytest.fixture(scope="module")
def demo_result(tmp_path_factory):
    try:
        demo.shipped_models()
    except MorphllrError as exc:
        pytest.skip(str(exc))
    return demo.run_demo(tmp_path_factory.mktemp("demo") / "out", n=demo.DEMO_N, progress=False,
                         say=lambda message: None)


@pytest.mark.slow
def test_shipped_models_recover_the_known_order(demo_result):
    summary = demo_result.summary
    assert demo.check_ranking(summary) == [], summary["ranking"]
    assert summary["ranking"][0] == "observed-test"
    assert (demo_result.out / "index.html").is_file()


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="known open problem (issue 6): sim-softened also has weaker arms and clumps, "
                   "which keeps the order test's intervals apart but moves its LLR profile in the outskirts too")
def test_softened_llr_profile_departs_at_the_centre_not_the_outskirts(demo_result):
    obs = demo_result.sets["observed-test"].profile_pix
    soft = demo_result.sets["sim-softened"].profile_pix
    # model pixels are 0.79": the 2 kpc softening core is ~1.5 px, the outskirts start at ~6 px
    centre = np.abs(soft[:2] - obs[:2]).mean()
    outskirts = np.abs(soft[6:12] - obs[6:12]).mean()
    assert np.isfinite(centre) and np.isfinite(outskirts)
    assert centre > 3 * outskirts, (soft - obs)[:12]


def test_expected_order_is_part_of_the_universe():
    assert synth.EXPECTED_ORDER[0] == "observed-test"
    assert set(synth.EXPECTED_ORDER) == set(synth.DEMO_SETS)
