"""Model folders: save -> load round trip, atomic writes, and refusal of damaged folders."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from morphllr.data.inputs import file_sha256
from morphllr.errors import MorphllrError
from morphllr.model import io as modelio
from morphllr.model.pixelcnn import NETWORK_PRESETS, PixelCNN
from morphllr.model.io import META_FILE, WEIGHTS_FILE, load_model, save_model
from morphllr.score import log_likelihood


@pytest.fixture
def net() -> PixelCNN:
    torch.manual_seed(3)
    return PixelCNN(NETWORK_PRESETS["tiny"].with_(nr_filters=4))


@pytest.fixture
def saved(tmp_path, net):
    return save_model(net, tmp_path / "model", preprocessing={"crop": 64, "zoom": 0.5},
                      data_fingerprint="abc123", metrics={"train_bits_per_dim": np.float32(1.5),
                                                          "val_bits_per_dim": 1.7})


def test_round_trip_gives_identical_weights_and_scores(saved, net):
    loaded = load_model(saved)
    assert not loaded.net.training
    assert loaded.config == net.config
    for name, tensor in net.state_dict().items():
        assert torch.equal(tensor, loaded.net.state_dict()[name]), name
    x = np.random.default_rng(0).random((6, 8, 8), dtype=np.float32)
    a = log_likelihood(net, x, bf16=False, threads=1)
    b = log_likelihood(loaded, x, bf16=False, threads=1)
    assert np.array_equal(a, b)


def test_model_json_records_what_a_reader_needs(saved):
    meta = json.loads((saved / META_FILE).read_text())
    assert meta["format"] == "morphllr.model" and meta["format_version"] == modelio.FORMAT_VERSION
    assert meta["head"] == "gaussian" and meta["config"]["nr_filters"] == 4
    assert meta["preprocessing"] == {"crop": 64, "zoom": 0.5}
    assert meta["data_fingerprint"] == "abc123"
    assert meta["metrics"]["train_bits_per_dim"] == pytest.approx(1.5)  # numpy scalar became a JSON number
    assert {"morphllr", "torch", "python"} <= set(meta["versions"])
    assert meta["weights_sha256"] == file_sha256(saved / WEIGHTS_FILE)
    assert sorted(os.listdir(saved)) == [META_FILE, WEIGHTS_FILE]
    assert not [p for p in os.listdir(saved.parent) if p.startswith(".")]  # no temp leftovers


def test_existing_folder_is_kept_unless_overwrite(saved, net):
    before = (saved / WEIGHTS_FILE).read_bytes()
    torch.manual_seed(99)
    other = PixelCNN(net.config)
    with pytest.raises(MorphllrError, match="already exists.*--overwrite"):
        save_model(other, saved, preprocessing={}, data_fingerprint=None, metrics={})
    assert (saved / WEIGHTS_FILE).read_bytes() == before
    save_model(other, saved, preprocessing={}, data_fingerprint=None, metrics={}, overwrite=True)
    assert (saved / WEIGHTS_FILE).read_bytes() != before


def test_a_crash_while_saving_leaves_nothing(tmp_path, net, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(modelio, "_meta", boom)
    with pytest.raises(RuntimeError):
        save_model(net, tmp_path / "m", preprocessing={}, data_fingerprint=None, metrics={})
    assert os.listdir(tmp_path) == []


def _edit_meta(folder, **changes):
    path = folder / META_FILE
    meta = json.loads(path.read_text())
    meta.update(changes)
    path.write_text(json.dumps(meta))


def test_missing_pieces_are_named(tmp_path, saved):
    with pytest.raises(MorphllrError, match="no such model folder"):
        load_model(tmp_path / "nothing")
    (saved / WEIGHTS_FILE).unlink()
    with pytest.raises(MorphllrError, match=rf"{WEIGHTS_FILE}: missing"):
        load_model(saved)
    (saved / META_FILE).unlink()
    with pytest.raises(MorphllrError, match=rf"{META_FILE}: missing"):
        load_model(saved)
    (saved / "checkpoints").mkdir()
    with pytest.raises(MorphllrError, match="did not finish.*--resume"):
        load_model(saved)


def test_tampered_or_truncated_weights_are_refused(saved):
    weights = saved / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(MorphllrError, match="checksum does not match"):
        load_model(saved)
    # without a recorded checksum, a truncated file is still caught by safetensors
    weights.write_bytes(bytes(data[: len(data) // 2]))
    _edit_meta(saved, weights_sha256=None)
    with pytest.raises(MorphllrError, match="unreadable weights"):
        load_model(saved)


def test_pickles_are_never_loaded(saved, net):
    """A weights file that is really a pickle (torch.save) is rejected, not executed."""
    weights = saved / WEIGHTS_FILE
    torch.save(net.state_dict(), weights)
    _edit_meta(saved, weights_sha256=file_sha256(weights))
    with pytest.raises(MorphllrError, match="unreadable weights"):
        load_model(saved)


@pytest.mark.parametrize("changes, pattern", [
    ({"format_version": 2}, "newer morphllr.*upgrade"),
    ({"head": "poisson"}, "unknown likelihood head 'poisson'"),
    ({"format": "something"}, "not a morphllr model"),
])
def test_unreadable_descriptions_are_refused(saved, changes, pattern):
    _edit_meta(saved, **changes)
    with pytest.raises(MorphllrError, match=pattern):
        load_model(saved)


def test_damaged_json_and_mismatched_config(saved):
    meta = json.loads((saved / META_FILE).read_text())
    meta["config"]["nr_filters"] = 8  # the weights were made with 4
    (saved / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(MorphllrError, match="do not fit the network"):
        load_model(saved)
    (saved / META_FILE).write_text("{not json")
    with pytest.raises(MorphllrError, match="not valid JSON"):
        load_model(saved)
