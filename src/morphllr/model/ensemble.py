"""Ensembles: K models of the same images differing only in their training seed, scored together.

An **ensemble folder** (``morphllr train DATA --out DIR --seeds 0,1,2``) holds K model folders
(:mod:`morphllr.model.io`) trained on the same data with the same options except the seed
(``DIR/seed0/``, ...) and the index ``DIR/ensemble.json`` (written last: an ensemble folder without
it is unfinished): ``format="morphllr.ensemble"``, ``format_version``, ``members`` (``name``,
``seed``, ``path`` relative to DIR, ``model_json_sha256``, ``weights_sha256``), the shared
``data_fingerprint``, ``preprocessing``, ``config`` and ``head``, ``created_by`` (morphllr version)
and ``created``.  :func:`load_ensemble` reads one (a plain model folder as a 1-member
:class:`Ensemble`), checking every member's files against the index and the members against each
other; :func:`write_ensemble_index` writes the index and :func:`assemble_ensemble` joins models
trained one seed per job (``morphllr ensemble``).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from morphllr import __version__
from morphllr.atomic import atomic_dir, atomic_file
from morphllr.data.inputs import file_sha256
from morphllr.errors import MorphllrError
from morphllr.model.io import ENSEMBLE_FILE, META_FILE, WEIGHTS_FILE, LoadedModel, jsonable, load_model, read_meta
from morphllr.model.pixelcnn import PixelCNNConfig


ENSEMBLE_FORMAT = "morphllr.ensemble"
ENSEMBLE_FORMAT_VERSION = 1
#: most members one ensemble may hold (each is trained and scored in turn)
MAX_ENSEMBLE_MEMBERS = 100
#: member names become CSV column suffixes and HDF5 dataset names: no separators, no spaces
MEMBER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")


def member_name(seed: int) -> str:
    """Name (and sub-folder) of the ensemble member trained with ``seed``: ``seed0``, ``seed1``, ..."""
    return f"seed{int(seed)}"


def is_ensemble(path: str | Path) -> bool:
    """True when ``path`` is an ensemble folder (holds ``ensemble.json``); a plain model folder gives False."""
    path = Path(path)
    return path.is_dir() and os.path.exists(path / ENSEMBLE_FILE)


def _normal_config(config: Any) -> Any:
    """A config (dataclass or dict) as a comparable dict with every field (older files omit defaults)."""
    if hasattr(config, "to_dict"):
        return config.to_dict()
    try:
        return PixelCNNConfig.from_dict(dict(config)).to_dict()
    except (MorphllrError, TypeError, ValueError):
        return config


def _without_input_mapping(config: Any) -> Any:
    """A config without ``input_shift`` / ``input_scale``: densities are reported in the data's units whatever the
    network's input mapping (the Jacobian is added), and ``--input-norm auto`` picks it from each seed's own split,
    so members trained one job per seed may differ there and still model the same thing."""
    if isinstance(config, dict):
        return {k: v for k, v in config.items() if k not in ("input_shift", "input_scale")}
    return config


def _first_difference(a: dict, b: dict) -> str:
    for key in sorted(set(a) | set(b), key=str):
        if a.get(key) != b.get(key):
            return f"{key}: {a.get(key)!r} vs {b.get(key)!r}"
    return "they differ"


def _check_consistent(described: list[tuple[str, Any, dict, str | None]], where: str, fix: str) -> None:
    """Refuse members that are not models of the same thing.

    Args:
        described: per member ``(name, config, preprocessing, data_fingerprint)``.
        where: what the message names first (the ensemble folder, or ``Ensemble.from_models``).
        fix: the end of the message.
    """
    def normal_prep(prep: Any) -> dict:  # a field an older record lacks is its default, None
        return {k: v for k, v in jsonable(dict(prep or {})).items() if v is not None}

    name0, config0, prep0, data0 = described[0]
    config0 = _normal_config(config0)
    prep0 = normal_prep(prep0)
    for name, config, prep, data in described[1:]:
        pair = f"members {name0} and {name}"
        if data != data0:
            raise MorphllrError(f"{where}: {pair} were trained on different images (data_fingerprint "
                                f"{str(data0)[:12]}... vs {str(data)[:12]}...); {fix}")
        prep = normal_prep(prep)
        if prep != prep0:
            raise MorphllrError(f"{where}: {pair} were trained on differently preprocessed images "
                                f"({_first_difference(prep0, prep)}); {fix}")
        config = _normal_config(config)
        if _without_input_mapping(config) != _without_input_mapping(config0):
            what = "likelihood heads" if config.get("head") != config0.get("head") else "network configs"
            raise MorphllrError(f"{where}: {pair} have different {what} ({_first_difference(config0, config)}); {fix}")


@dataclass
class Ensemble:
    """K models of the same images, scored together so that results can show model variance.

    Members share image size, head, network config, preprocessing and training data (checked);
    they differ in the training seed (initial weights, validation split, augmentation).  Build one
    with :func:`load_ensemble` (an ensemble folder, or a plain model folder as one member) or
    :meth:`from_models` (models in memory).

    Attributes:
        members: the LoadedModels, in index order.
        names: their names (``seed0``, ...; CSV column suffixes), unique.
        path: the folder read (None when built in memory).
        index: the ``ensemble.json`` content (None for a plain model folder or one built in memory).
    """

    members: list
    names: list[str]
    path: Path | None = None
    index: dict | None = field(default=None, repr=False)

    def __post_init__(self):
        self.members = list(self.members)
        self.names = [str(n) for n in self.names]
        if not self.members:
            raise MorphllrError("ensemble: holds no model; give at least one")
        if len(self.names) != len(self.members):
            raise MorphllrError(f"ensemble: {len(self.names)} names for {len(self.members)} models; give one name each")
        bad = [n for n in self.names if not MEMBER_NAME.match(n)]
        if bad:
            raise MorphllrError(f"ensemble: member name {bad[0]!r} is not usable as a column name; use letters, "
                                "digits, '_', '-' or '.' (at most 64, starting with a letter or digit)")
        if len(set(self.names)) != len(self.names):
            raise MorphllrError(f"ensemble: member names repeat ({', '.join(self.names)}); give each its own name")

    def __len__(self) -> int:
        return len(self.members)

    def __iter__(self):
        return iter(self.members)

    def __getitem__(self, key: int | str) -> LoadedModel:
        """A member by position or by name."""
        if isinstance(key, str):
            if key not in self.names:
                raise KeyError(f"no member {key!r}; members: {', '.join(self.names)}")
            return self.members[self.names.index(key)]
        return self.members[key]

    @property
    def config(self):
        """The network config shared by every member."""
        return self.members[0].config

    @property
    def preprocessing(self) -> dict:
        """The preprocessing of the shared training images."""
        return self.members[0].preprocessing

    @property
    def head(self) -> str:
        return self.members[0].config.head

    @property
    def data_fingerprint(self) -> str | None:
        return getattr(self.members[0], "data_fingerprint", None)

    @property
    def data_sketch(self) -> dict | None:
        # members share one training set (data_fingerprint); one assembled from older models may lack it in some
        return next((m.data_sketch for m in self.members if getattr(m, "data_sketch", None)), None)

    @property
    def seeds(self) -> list[int | None]:
        """Training seed of each member (from the index or the members' model.json; None when unknown)."""
        if self.index is not None:
            return [m.get("seed") for m in self.index["members"]]
        return [((getattr(m, "meta", None) or {}).get("extra") or {}).get("training", {}).get("seed")
                for m in self.members]

    @classmethod
    def from_models(cls, models: Any, names: list[str] | None = None, path: str | Path | None = None) -> "Ensemble":
        """An ensemble of models already in memory (LoadedModels, or bare PixelCNNs).

        Args:
            models: the members (at least one).
            names: their names (default: each model's folder name, else ``member0``, ``member1``, ...).
            path: a folder to record as the ensemble's (messages, output claims), or None.

        Returns:
            the Ensemble; members that differ in data, preprocessing, config or head are refused.
        """
        wrapped = []
        for model in models:
            if not hasattr(model, "net"):  # a bare PixelCNN
                if not hasattr(model, "log_prob_pixels") or getattr(model, "config", None) is None:
                    raise MorphllrError(f"Ensemble.from_models: expected LoadedModels or PixelCNNs, got "
                                        f"{type(model).__name__}")
                model = LoadedModel(net=model, config=model.config, preprocessing={}, meta={}, path=None)
            wrapped.append(model)
        if not wrapped:
            raise MorphllrError("Ensemble.from_models: no model given; give at least one")
        if names is None:
            names = [Path(m.path).name if getattr(m, "path", None) else "" for m in wrapped]
            if len(set(names)) != len(names) or not all(MEMBER_NAME.match(n) for n in names):
                names = [f"member{i}" for i in range(len(wrapped))]
        _check_consistent([(n, m.config, m.preprocessing, getattr(m, "data_fingerprint", None))
                           for n, m in zip(names, wrapped)], "Ensemble.from_models",
                          "an ensemble holds models of the same data trained with the same settings")
        return cls(wrapped, list(names), path=Path(path) if path is not None else None)


def _seeds_hint(index: dict | None) -> str:
    seeds = [m.get("seed") for m in (index or {}).get("members", []) if isinstance(m, dict)]
    return ",".join(str(s) for s in seeds) if seeds and all(isinstance(s, int) for s in seeds) else "..."


def read_ensemble_index(folder: str | Path) -> dict:
    """Read and check an ensemble folder's ``ensemble.json`` (without touching the members).

    Args:
        folder: the ensemble folder.

    Returns:
        the index dict; a damaged or foreign one raises MorphllrError naming the file and the fix.
    """
    folder = Path(folder)
    path = folder / ENSEMBLE_FILE
    damaged = (f"the ensemble index is damaged - recopy the whole ensemble folder, or retrain it with "
               f"`morphllr train DATA --out {folder} --seeds ... --overwrite`")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MorphllrError(f"{path}: missing; {folder} is not an ensemble folder") from None
    except IsADirectoryError:
        raise MorphllrError(f"{path}: is a folder, not an ensemble index; {damaged}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MorphllrError(f"{path}: is not valid JSON ({exc}); {damaged}") from None
    if not isinstance(index, dict) or index.get("format") != ENSEMBLE_FORMAT:
        found = index.get("format") if isinstance(index, dict) else None
        raise MorphllrError(f"{path}: not a morphllr ensemble index (format={found!r}); {damaged}")
    version = index.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise MorphllrError(f"{path}: invalid format_version {version!r}; {damaged}")
    if version > ENSEMBLE_FORMAT_VERSION:
        raise MorphllrError(f"{path}: written by a newer morphllr (ensemble format {version}, this one reads up to "
                            f"{ENSEMBLE_FORMAT_VERSION}); upgrade with `pip install -U morphllr`")
    members = index.get("members")
    if not isinstance(members, list) or not members or not all(isinstance(m, dict) for m in members):
        raise MorphllrError(f"{path}: 'members' must be a non-empty list of objects; {damaged}")
    if len(members) > MAX_ENSEMBLE_MEMBERS:
        raise MorphllrError(f"{path}: lists {len(members)} members, more than {MAX_ENSEMBLE_MEMBERS}; {damaged}")
    names = []
    for k, member in enumerate(members):
        for key in ("name", "path", "model_json_sha256", "weights_sha256"):
            if not isinstance(member.get(key), str) or not member[key]:
                raise MorphllrError(f"{path}: member {k} has no {key!r}; {damaged}")
        if not MEMBER_NAME.match(member["name"]):
            raise MorphllrError(f"{path}: member name {member['name']!r} is not a valid name; {damaged}")
        rel = Path(member["path"])
        if rel.is_absolute() or ".." in rel.parts or rel == Path("."):
            raise MorphllrError(f"{path}: member {member['name']} has path {member['path']!r} outside the ensemble "
                                f"folder; members are sub-folders of {folder} - {damaged}")
        names.append(member["name"])
    if len(set(names)) != len(names):
        raise MorphllrError(f"{path}: member names repeat ({', '.join(names)}); {damaged}")
    return index


def _read_member(folder: Path, index: dict, member: dict) -> tuple[Path, dict]:
    """A member's folder and model.json, checked against the index (files present, sha256 equal)."""
    name = member["name"]
    member_dir = folder / member["path"]
    retrain = (f"recopy the whole ensemble folder, or delete its {member['path']}/ and retrain the member with "
               f"`morphllr train DATA --out {folder} --seeds {_seeds_hint(index)} --resume`")
    if not member_dir.is_dir():
        raise MorphllrError(f"{member_dir}: member {name} listed in {ENSEMBLE_FILE} is missing; recopy the "
                            f"whole ensemble folder, or retrain the member with `morphllr train DATA --out {folder} "
                            f"--seeds {_seeds_hint(index)} --resume`")
    real_folder = Path(os.path.realpath(folder))
    if not Path(os.path.realpath(member_dir)).is_relative_to(real_folder):
        raise MorphllrError(f"{member_dir}: member {name} leads outside the ensemble folder {folder} (a link); "
                            "copy the member folder itself into the ensemble")
    for file_name in (META_FILE, WEIGHTS_FILE):
        if not (member_dir / file_name).is_file():
            raise MorphllrError(f"{member_dir / file_name}: missing (member {name} of this ensemble); {retrain}")
    for file_name, key in ((META_FILE, "model_json_sha256"), (WEIGHTS_FILE, "weights_sha256")):
        if file_sha256(member_dir / file_name) != member[key]:
            raise MorphllrError(f"{member_dir / file_name}: does not match its sha256 in {ENSEMBLE_FILE} "
                                f"(member {name} was modified or is a truncated copy); {retrain}")
    meta = read_meta(member_dir)
    if meta.get("weights_sha256") not in (None, member["weights_sha256"]):
        raise MorphllrError(f"{member_dir / META_FILE}: records other weights than {folder / ENSEMBLE_FILE}; {retrain}")
    return member_dir, meta


def load_ensemble(path: str | Path, device: str = "cpu") -> Ensemble:
    """Load an ensemble folder (or a plain model folder as a 1-member ensemble); no code is executed from it.

    Every member's ``model.json`` and ``weights.safetensors`` must match the sha256 recorded in
    ``ensemble.json``, and the members must share training data, preprocessing, network config
    and head; otherwise one MorphllrError line names the folder and the fix.

    Args:
        path: the ensemble folder (``ensemble.json`` + member folders) or a model folder.
        device: torch device for the networks.

    Returns:
        an :class:`Ensemble` (``index`` is None for a plain model folder).
    """
    path = Path(path)
    if not is_ensemble(path):
        model = load_model(path, device)  # a plain model folder, or its own one-line refusal
        name = path.name if MEMBER_NAME.match(path.name) else "model"
        return Ensemble([model], [name], path=path)
    index = read_ensemble_index(path)
    fix = (f"an ensemble's members must be models of the same images trained with the same settings - retrain it "
           f"with `morphllr train DATA --out {path} --seeds {_seeds_hint(index)} --overwrite`")
    checked = [(member["name"], *_read_member(path, index, member)) for member in index["members"]]
    described = [(name, meta["config"], meta.get("preprocessing") or {}, meta.get("data_fingerprint"))
                 for name, _, meta in checked]
    _check_consistent(described, str(path), fix)
    first = checked[0][2]
    same = {"data_fingerprint": index.get("data_fingerprint") == first.get("data_fingerprint"),
            "preprocessing": jsonable(index.get("preprocessing") or {}) == jsonable(first.get("preprocessing") or {}),
            "config": _normal_config(index.get("config") or {}) == _normal_config(first["config"])}
    for key, equal in same.items():
        if key in index and not equal:
            raise MorphllrError(f"{path / ENSEMBLE_FILE}: its {key} differs from its members'; {fix}")
    models = [load_model(member_dir, device, meta=meta, weights_checked=True) for _, member_dir, meta in checked]
    return Ensemble(models, [name for name, _, _ in checked], path=path, index=index)


def write_ensemble_index(folder: str | Path, members: list[tuple[str, int | None, str]]) -> dict:
    """Write ``folder/ensemble.json`` for finished member folders, atomically (the last step of training).

    Args:
        folder: the ensemble folder.
        members: ``(name, seed, path relative to folder)`` per member, in order.

    Returns:
        the index written.
    """
    folder = Path(folder)
    entries, described, first = [], [], None
    for name, seed, rel in members:
        member_dir = folder / rel
        meta = read_meta(member_dir)
        weights_sha = file_sha256(member_dir / WEIGHTS_FILE)
        if meta.get("weights_sha256") not in (None, weights_sha):
            raise MorphllrError(f"{member_dir / WEIGHTS_FILE}: checksum does not match {META_FILE}; retrain the member")
        entries.append({"name": name, "seed": seed, "path": str(rel), "model_json_sha256": file_sha256(member_dir / META_FILE),
                        "weights_sha256": weights_sha})
        described.append((name, meta["config"], meta.get("preprocessing") or {}, meta.get("data_fingerprint")))
        first = first or meta
    _check_consistent(described, str(folder), "retrain the ensemble with --overwrite")
    index = {
        "format": ENSEMBLE_FORMAT,
        "format_version": ENSEMBLE_FORMAT_VERSION,
        "members": entries,
        "data_fingerprint": first.get("data_fingerprint"),
        "preprocessing": first.get("preprocessing") or {},
        "config": first["config"],
        "head": first.get("head") or first["config"].get("head"),
        "created_by": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
    }
    with atomic_file(folder / ENSEMBLE_FILE) as tmp:
        tmp.write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return index


def assemble_ensemble(models: list[str | Path], out: str | Path, overwrite: bool = False) -> dict:
    """Join separately trained models into an ensemble folder (``morphllr ensemble``).

    For models trained one seed per job (a cluster array, or one member added to shipped
    models): each model folder is copied into ``out/seedK/`` (K = its recorded training seed)
    and ``out/ensemble.json`` is written, all in a temporary folder renamed at the end.
    The members must have distinct seeds and share network, preprocessing and training data
    (:func:`write_ensemble_index` refuses otherwise, naming the first difference).

    Args:
        models: model folders (``model.json`` + ``weights.safetensors``; checked as
            :func:`~morphllr.model.io.load_model` checks them).
        out: the ensemble folder to create.
        overwrite: replace an existing ``out``.

    Returns:
        the index written.
    """
    if len(models) < 2:
        raise MorphllrError(f"ensemble: give at least two model folders, got {len(models)}")
    members: list[tuple[str, int, Path, dict]] = []
    for model in models:
        model = Path(model)
        meta = read_meta(model)
        load_model(model, "cpu", meta=meta)  # weights readable, finite and matching their checksum
        seed = ((meta.get("extra") or {}).get("training") or {}).get("seed")
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise MorphllrError(f"{model / META_FILE}: records no training seed (extra.training.seed); only models "
                                "trained by `morphllr train` can join an ensemble")
        members.append((member_name(seed), seed, model, meta))
    recipe_keys = ("augment", "batch_size", "lr", "val_fraction", "precision", "weight_average")

    def recipe(meta: dict) -> dict:
        training = (meta.get("extra") or {}).get("training") or {}
        return {**{k: training.get(k) for k in recipe_keys}, "steps": (meta.get("metrics") or {}).get("steps")}

    first = recipe(members[0][3])
    for _, _, model, meta in members[1:]:
        other = recipe(meta)
        differs = [k for k in first if first[k] != other[k]]
        if differs:
            k = differs[0]
            raise MorphllrError(f"ensemble: {members[0][2]} and {model} were trained with different recipes ({k}: "
                                f"{first[k]!r} vs {other[k]!r}); an ensemble measures seed noise only when its members "
                                "differ in nothing but the seed - retrain with the same options")
    names = [name for name, *_ in members]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise MorphllrError(f"ensemble: several models were trained with the same seed ({', '.join(repeated)}); "
                            "members must differ in their training seed")
    if len(members) > MAX_ENSEMBLE_MEMBERS:
        raise MorphllrError(f"ensemble: {len(members)} models, more than {MAX_ENSEMBLE_MEMBERS}")
    # the check write_ensemble_index makes, here naming the user's folders, before anything is copied
    _check_consistent([(f"{name} ({model})", meta["config"], meta.get("preprocessing") or {},
                        meta.get("data_fingerprint")) for name, _, model, meta in members], "ensemble",
                      "only models of the same training set, network and recipe form an ensemble")
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for name, _, model, _ in members:
            (tmp / name).mkdir()
            for file in (WEIGHTS_FILE, META_FILE):
                shutil.copy2(model / file, tmp / name / file)
        return write_ensemble_index(tmp, [(name, seed, name) for name, seed, _, _ in members])
