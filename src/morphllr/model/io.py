"""Model folders: ``weights.safetensors`` + ``model.json``, never pickle.

A trained model is a folder that can be mailed, archived with a paper and loaded
years later without executing any code from it:

* ``weights.safetensors``: the network's tensors (safetensors cannot carry code);
* ``model.json``: ``format="morphllr.model"``, ``format_version``, the network
  ``config`` and ``head``, the ``preprocessing`` the training images went through,
  the training data's ``data_fingerprint`` (sha256) and ``data_sketch`` (a summary that
  survives last-bit rounding, :func:`morphllr.data.imageset.sketch_batches`), ``metrics`` (train/val bits/dim, steps),
  software ``versions``, ``created`` (UTC) and ``weights_sha256``, which is checked
  on load so that a truncated copy or an edited file is refused.

:func:`save_model` writes one, :func:`read_meta` and :func:`load_model` read it.  Folders of
several models trained with different seeds are ensembles (:mod:`morphllr.model.ensemble`);
their file names (:data:`ENSEMBLE_FILE`, :data:`MEMBER_DIR`) are defined here because
:func:`read_meta` recognises such a folder to refuse it as a single model.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from morphllr import __version__
from morphllr.atomic import atomic_dir, atomic_file
from morphllr.data.inputs import file_sha256
from morphllr.errors import MorphllrError
from morphllr.model.heads import HEAD_NAMES
from morphllr.model.pixelcnn import PixelCNN, PixelCNNConfig

FORMAT = "morphllr.model"
FORMAT_VERSION = 1
WEIGHTS_FILE = "weights.safetensors"
META_FILE = "model.json"
#: an ensemble folder's index (:mod:`morphllr.model.ensemble`)
ENSEMBLE_FILE = "ensemble.json"
#: the member folders `morphllr train --seeds` writes
MEMBER_DIR = re.compile(r"seed[0-9]+\Z")


@dataclass
class LoadedModel:
    """A model read from a folder, ready to score (``net`` is in eval mode).

    Attributes:
        net: the PixelCNN.
        config: its PixelCNNConfig.
        preprocessing: how the training images were made (dict, may be empty).
        meta: the whole model.json.
        path: the folder it came from.
    """

    net: Any
    config: Any
    preprocessing: dict
    meta: dict = field(repr=False)
    path: Path

    @property
    def head(self) -> str:
        return self.config.head

    @property
    def data_fingerprint(self) -> str | None:
        return self.meta.get("data_fingerprint")

    @property
    def data_sketch(self) -> dict | None:
        return self.meta.get("data_sketch")


def _versions() -> dict:
    import numpy
    import torch

    return {"morphllr": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "python": platform.python_version()}


def _plain_state_dict(net) -> dict:
    # safetensors refuses tensors that share memory (tied or view parameters): copy each
    return {name: tensor.detach().to("cpu").contiguous().clone() for name, tensor in net.state_dict().items()}


def jsonable(value: Any) -> Any:
    """Turn numpy/torch scalars and paths into plain JSON values."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):
        try:
            return value.item()
        except (ValueError, RuntimeError):
            pass
    return value


def save_model(net, out_dir: str | Path, *, preprocessing: dict | None, data_fingerprint: str | None,
               metrics: dict | None, extra: dict | None = None, overwrite: bool = False,
               in_place: bool = False, data_sketch: dict | None = None) -> Path:
    """Write ``net`` as a model folder, atomically.

    A new folder is filled under a temporary name and renamed at the end.  With
    ``in_place`` (used by training, whose folder already holds checkpoints and logs)
    each file is written to a temporary name and renamed, ``model.json`` last, so a
    folder with a ``model.json`` always holds a complete model.

    Args:
        net: a PixelCNN (its ``config`` attribute is stored).
        out_dir: destination folder.
        preprocessing: how the training images were made (dict; {} when unknown).
        data_fingerprint: sha256 of the training images (``ImageSource.fingerprint()``).
        metrics: e.g. ``{"train_bits_per_dim": .., "val_bits_per_dim": .., "steps": ..}``.
        extra: additional JSON-able information (stored under ``"extra"``).
        overwrite: replace an existing folder.
        in_place: write into an existing folder, keeping its other files.
        data_sketch: the training images' rounding-tolerant summary
            (:func:`morphllr.data.imageset.sketch_batches`), so that the same set rebuilt on another
            CPU kind is still recognised.

    Returns:
        the folder path.
    """
    out_dir = Path(out_dir)
    if in_place and out_dir.is_dir():
        with atomic_file(out_dir / WEIGHTS_FILE) as tmp_weights:
            _write_weights(net, tmp_weights)
            weights_sha = file_sha256(tmp_weights)
        meta = _meta(net, preprocessing, data_fingerprint, metrics, extra, weights_sha, data_sketch)
        with atomic_file(out_dir / META_FILE) as tmp_meta:
            tmp_meta.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        return out_dir
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        _write_weights(net, tmp / WEIGHTS_FILE)
        meta = _meta(net, preprocessing, data_fingerprint, metrics, extra, file_sha256(tmp / WEIGHTS_FILE),
                     data_sketch)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return out_dir


def _write_weights(net, path: Path) -> None:
    from safetensors.torch import save_file

    save_file(_plain_state_dict(net), str(path), metadata={"format": "pt", "producer": FORMAT})


def _meta(net, preprocessing, data_fingerprint, metrics, extra, weights_sha256: str, data_sketch=None) -> dict:
    config = net.config
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": config.to_dict(),
        "head": config.head,
        "preprocessing": jsonable(dict(preprocessing or {})),
        "data_fingerprint": data_fingerprint,
        "metrics": jsonable(dict(metrics or {})),
        "versions": _versions(),
        "created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "weights_sha256": weights_sha256,
    }
    if data_sketch:
        meta["data_sketch"] = jsonable(dict(data_sketch))
    if extra:
        meta["extra"] = jsonable(dict(extra))
    return meta


def read_meta(model_dir: str | Path) -> dict:
    """Read and check a folder's ``model.json`` (without touching the weights).

    Args:
        model_dir: the model folder.

    Returns:
        the metadata dict.
    """
    model_dir = Path(model_dir)
    if not model_dir.exists():
        raise MorphllrError(f"{model_dir}: no such model folder; train one with `morphllr train DATA --out {model_dir}`")
    if not model_dir.is_dir():
        raise MorphllrError(f"{model_dir}: a model is a folder holding {META_FILE} and {WEIGHTS_FILE}; "
                            "pass the folder, not a file")
    meta_path = model_dir / META_FILE
    if not meta_path.is_file() and os.path.exists(model_dir / ENSEMBLE_FILE):
        raise MorphllrError(f"{model_dir}: is an ensemble of models ({ENSEMBLE_FILE}), not a single model; load it with "
                            f"morphllr.load_ensemble({str(model_dir)!r}), or give one member folder ({model_dir}/seedK)")
    if not meta_path.is_file() and _member_dirs(model_dir):
        seeds = ",".join(name[len("seed"):] for name in _member_dirs(model_dir))
        raise MorphllrError(f"{model_dir}: holds an unfinished ensemble training run (member folders but no "
                            f"{ENSEMBLE_FILE}); continue it with `morphllr train DATA --out {model_dir} --seeds {seeds} "
                            "--resume`")
    if not meta_path.is_file() and (model_dir / "checkpoints").is_dir():
        raise MorphllrError(f"{meta_path}: missing - training in this folder did not finish; continue it with "
                            f"`morphllr train DATA --out {model_dir} --resume`")
    if not meta_path.is_file():
        raise MorphllrError(f"{meta_path}: missing; this is not a complete morphllr model folder "
                            "(copy the whole folder, or retrain)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MorphllrError(f"{meta_path}: is not valid JSON ({exc}); the file is damaged - recopy or retrain") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise MorphllrError(f"{meta_path}: not a morphllr model description (format={meta.get('format') if isinstance(meta, dict) else None!r})")
    version = meta.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise MorphllrError(f"{meta_path}: invalid format_version {version!r}; the file is damaged")
    if version > FORMAT_VERSION:
        raise MorphllrError(
            f"{meta_path}: written by a newer morphllr (model format {version}, this one reads up to "
            f"{FORMAT_VERSION}); upgrade with `pip install -U morphllr`")
    head = meta.get("head") or (meta.get("config") or {}).get("head")
    if head not in HEAD_NAMES:
        raise MorphllrError(
            f"{meta_path}: unknown likelihood head {head!r} (this morphllr knows {', '.join(HEAD_NAMES)}); "
            "upgrade morphllr or retrain")
    if not isinstance(meta.get("config"), dict):
        raise MorphllrError(f"{meta_path}: has no network 'config'; the file is damaged - recopy or retrain")
    return meta


def _check_finite(state: dict, weights_path: Path) -> None:
    """Refuse weights holding NaN or inf: every score would be NaN (a diverged run, or a damaged file).

    Args:
        state: the tensors read from ``weights.safetensors``.
        weights_path: the file, for the message.

    Returns:
        None; raises MorphllrError naming the file and the first bad tensor.
    """
    import torch

    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            n_bad = int((~torch.isfinite(tensor)).sum())
            raise MorphllrError(
                f"{weights_path}: {n_bad} NaN/inf value(s) in weight {name!r}, so every score would be NaN (training "
                "diverged or the file was damaged); retrain, e.g. with a lower --lr or --precision 32")


def load_model(model_dir: str | Path, device: str = "cpu", *, meta: dict | None = None,
               weights_checked: bool = False) -> LoadedModel:
    """Load a model folder written by :func:`save_model` (no code is executed from it).

    Args:
        model_dir: the folder holding ``model.json`` and ``weights.safetensors``.
        device: torch device for the network.
        meta: the folder's model.json, when the caller has read it already (:func:`read_meta`).
        weights_checked: the caller has checked the weights' sha256 already (an ensemble index).

    Returns:
        a :class:`LoadedModel` with the network in eval mode.
    """
    model_dir = Path(model_dir)
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if meta is None:
        meta = read_meta(model_dir)
    meta_path = model_dir / META_FILE
    weights_path = model_dir / WEIGHTS_FILE
    if not weights_path.is_file():
        raise MorphllrError(f"{weights_path}: missing; copy the whole model folder, or retrain")
    expected = meta.get("weights_sha256")
    if expected and not weights_checked and file_sha256(weights_path) != expected:
        raise MorphllrError(
            f"{weights_path}: checksum does not match {META_FILE} (truncated or modified copy); "
            "recopy the model folder or retrain")
    try:
        config = PixelCNNConfig.from_dict(meta["config"])
    except (TypeError, ValueError, KeyError) as exc:
        raise MorphllrError(f"{meta_path}: network config is invalid ({exc}); recopy or retrain") from None
    try:
        state = load_file(str(weights_path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise MorphllrError(f"{weights_path}: unreadable weights ({exc}); recopy the model folder or retrain") from None
    _check_finite(state, weights_path)
    net = PixelCNN(config)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "mismatch"
        raise MorphllrError(
            f"{weights_path}: weights do not fit the network in {META_FILE} ({first}); recopy or retrain") from None
    net.to(device).eval()
    return LoadedModel(net=net, config=config, preprocessing=dict(meta.get("preprocessing") or {}),
                       meta=meta, path=model_dir)


# ---------------------------------------------------------------------- ensembles
def _member_dirs(folder: Path) -> list[str]:
    """Names of the ``seedK`` sub-folders of ``folder`` (an ensemble's members, finished or not), by seed."""
    try:
        names = [e.name for e in os.scandir(folder) if MEMBER_DIR.match(e.name) and e.is_dir()]
    except OSError:
        return []
    return sorted(names, key=lambda n: int(n[len("seed"):]))


