"""The two sides of a comparison (p_obs, p_arch): loading each model or ensemble, checking they fit together."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from morphllr.data.preprocess import check_compatible
from morphllr.errors import MorphllrError
from morphllr.model.ensemble import load_ensemble


@dataclass
class Side:
    """The models of one side (p_obs or p_arch): one model, or an ensemble of retrainings.

    Attributes:
        members: LoadedModel-like objects (``.net``, ``.config``, ``.preprocessing``).
        names: one short, distinct label per member (used in ``logp_<side>_<name>`` columns).
        paths: where the members came from (folder text, "" for in-memory models).
    """

    members: list
    names: list[str]
    paths: list[str]

    def __len__(self) -> int:
        return len(self.members)


def _member_name(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(text)).strip("._")


def _load_path(path: Path, what: str) -> tuple[list, list[str]]:
    if not path.exists():
        raise MorphllrError(f"{what} {path}: no such model folder; give the folder written by `morphllr train`")
    ensemble = load_ensemble(path)  # ensemble folders (train --seeds); a plain model folder is one member
    return list(ensemble.members), list(ensemble.names)


def load_side(spec: Any, what: str) -> Side:
    """The members of one side from a model or ensemble folder, a LoadedModel, an Ensemble or a list of those.

    Args:
        spec: folder path, LoadedModel, ``morphllr.model.ensemble.Ensemble`` (``.members``, ``.names``)
            or a list/tuple mixing them (all members are pooled).
        what: ``"--obs"`` or ``"--arch"``, for messages.

    Returns:
        a :class:`Side` with distinct member names.
    """
    items = list(spec) if isinstance(spec, (list, tuple)) else [spec]
    if not items:
        raise MorphllrError(f"{what}: no model given; give a model or ensemble folder")
    members: list = []
    names: list[str] = []
    paths: list[str] = []
    for k, item in enumerate(items):
        if isinstance(item, (str, os.PathLike)):
            got, got_names = _load_path(Path(item), what)
        elif hasattr(item, "members"):
            got = list(item.members)
            got_names = list(getattr(item, "names", None) or [])
            if len(got_names) != len(got):
                got_names = [f"{k}_{i}" for i in range(len(got))]
        elif hasattr(item, "net"):
            got, got_names = [item], [Path(str(getattr(item, "path", "") or "")).name or str(k)]
        else:
            raise MorphllrError(f"{what}: expected a model or ensemble folder, a LoadedModel or an Ensemble, "
                                f"got {type(item).__name__}")
        for m in got:
            if not hasattr(m, "net"):
                raise MorphllrError(f"{what}: ensemble member of type {type(m).__name__} is not a loaded model")
        members += got
        names += got_names
        paths += [str(getattr(m, "path", "") or "") for m in got]
    clean = [_member_name(n) for n in names]
    if len(set(clean)) != len(clean) or not all(clean):
        clean = [f"{n or 'm'}_{i}" for i, n in enumerate(clean)]
    return Side(members=members, names=clean, paths=paths)


def side_notes(side: Side, what: str) -> list[str]:
    """Notes on how one side's members differ beyond their seed (different training images)."""
    prints = {getattr(m, "data_fingerprint", None) or (getattr(m, "meta", None) or {}).get("data_fingerprint")
              for m in side.members}
    if len(side) > 1 and len(prints) > 1:
        return [f"{what}: the {len(side)} members were trained on different images (their data fingerprints "
                "differ), so the model variance also measures the change of training set, not only of the seed"]
    return []


def config_value(config: Any, key: str):
    """One network-config entry of a PixelCNNConfig or a plain dict (None when absent)."""
    return config.get(key) if isinstance(config, dict) else getattr(config, key, None)


_SHAPE_KEYS = ("head", "in_channels", "height", "width")


def _shape_diffs(one: Any, other: Any) -> list[str]:
    """``"key: a vs b"`` for every :data:`_SHAPE_KEYS` entry where two network configs differ."""
    return [f"{k}: {config_value(one, k)!r} vs {config_value(other, k)!r}"
            for k in _SHAPE_KEYS if config_value(one, k) != config_value(other, k)]


def check_models(obs: Side, arch: Side) -> None:
    """Refuse models that do not describe the same image space with the same head.

    Every member of a side must also share its preprocessing (and head and image size)
    with the side's first member: an ensemble averages densities over the same pixels.
    """
    for side, what in ((obs, "--obs"), (arch, "--arch")):
        seen: dict = {}
        for name, m in zip(side.names, side.members):
            # the same model twice is not two seeds: it would shrink model_std and ci95_total
            key = (getattr(m, "meta", None) or {}).get("weights_sha256") or id(m.net)
            if key in seen:
                raise MorphllrError(f"{what}: members {seen[key]} and {name} are the same model (same weights); "
                                    "give each trained model once")
            seen[key] = name
        first = side.members[0]
        for name, m in zip(side.names[1:], side.members[1:]):
            diffs = _shape_diffs(first.config, m.config)
            if diffs:
                raise MorphllrError(
                    f"{what}: ensemble members {side.names[0]} and {name} differ ({'; '.join(diffs)}); "
                    "an ensemble averages one density over the same images, so train every seed alike")
            try:
                check_prep(first.preprocessing, m.preprocessing, f"{what} ensemble member {side.names[0]} vs {name}")
            except MorphllrError as exc:
                text = str(exc)
                diffs = text.split("prepared differently (", 1)[-1].rsplit("); ", 1)[0] if "prepared differently (" \
                    in text else text
                raise MorphllrError(
                    f"{what}: ensemble members {side.names[0]} and {name} were trained on differently prepared "
                    f"images ({diffs}); an ensemble averages one density over the same pixels, so train every member "
                    "on the same prepared set") from None
    o, a = obs.members[0], arch.members[0]
    diffs = _shape_diffs(o.config, a.config)
    if diffs:
        raise MorphllrError(
            f"--obs / --arch: the two models differ ({'; '.join(diffs)}); an LLR needs two densities over "
            "the same images, so train both with the same --head and image size")
    check_prep(o.preprocessing, a.preprocessing, "--obs model vs --arch model")


def check_prep(model_prep: dict, set_prep: dict, what: str) -> None:
    """Refuse two preprocessing records that do not describe the same model space (``what`` names them)."""
    check_compatible(model_prep or {}, set_prep or {}, what)
