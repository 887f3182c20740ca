"""Compare image sets by their log-likelihood ratio under p_obs and p_arch.

``compare()`` streams every set through both models once (per batch: one forward pass
per model gives each image's log p and its per-pixel map), keeps only per-image numbers
and a few fixed-size accumulators (mean LLR map, radial profile), then re-scores the
handful of gallery galaxies to get their maps.  Memory is flat in the number of images
apart from one row of numbers per galaxy.

Each image's LLR is also split into its empty-sky pixels and the rest (columns
``llr_sky``, ``llr_rest``, ``n_sky_pixels``, ``llr_sky_per_pixel``; per set
``summary["sets"][name]["sky"]``): the background cancels in the ratio only when a set
shares sky, PSF and noise with the training data, and this split shows whether it did.

**Masked pixels** (an ImageSet's ``/mask_model``, 1 = excluded: user-masked or beyond the image
edge; they hold sky noise in ``/images``): the PixelCNN's later conditionals still see them as
context, so the images are scored unchanged, but their own terms are dropped from every per-image
sum: ``llr`` = sum over the unmasked pixels of (log p_obs map - log p_arch map), and likewise
``logp_obs``, ``logp_arch``, ``llr_segmap``, the sky split, the rotation-averaged LLR (the mask is
rotated with the image) and the domain statistics.  Columns ``n_masked_pixels``,
``masked_share`` (of the H x W model pixels) and ``llr_per_pixel`` (``llr`` / unmasked pixels);
``bpd_obs`` / ``bpd_arch`` are per unmasked dimension; per set ``masked_share`` (mean) and
``mean_llr_per_pixel``.  Sets with different masked shares sum different numbers of terms: a note
says so, and a set whose mean masked share differs from the reference's by more than
:data:`MASKED_SHARE_TOLERANCE` gets a warning.  Masked pixels are NaN in the maps written
(``maps.h5``, gallery figures) and left out of the mean map and radial profiles.

Every comparison is also checked against what the models saw in training (:mod:`morphllr.domain`,
:func:`guards`): ``summary["warnings"]`` (always a list) and ``summary["sets"][name]["warnings"]``
name sets outside the models' recorded domain (sky bits/dim, whole-image bits/dim, galaxy
sizes), sets of fewer than 30 images, a reference with mean LLR <= 0, models of different
recipes and models that had not converged; ``summary["provenance"]`` says what each model
was trained on.

Outputs in ``out`` (written atomically): ``scores.csv`` / ``scores.parquet`` (one row per
image), ``summary.json`` (per set: n, mean, interval, ΔLLR vs the reference, AUROC, KS,
sky split, mass panels, matched ΔLLR), ``summary.csv``, ``maps.h5`` (all maps, only with
``maps="all"``) and the report (``index.html`` + ``figures/``, see :mod:`morphllr.report.html`).
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from morphllr.comparison import stats
from morphllr.atomic import claims
from morphllr.data.catalog import MASS_COLUMNS, RE_PIX_COLUMNS, SERSIC_N_COLUMNS, SIZE_COLUMNS, catalog_values, find_column
from morphllr.data.geometry import model_sky_mask
from morphllr.errors import MorphllrError

#: Catalogue column names understood for each galaxy property (first match wins).
#: fewest images a set may have: one image has no spread, so no interval, AUROC or verdict
MIN_SET_SIZE = 2

#: Radial-profile bins: in units of the half-light radius, or in model pixels as fallback.
PROFILE_RE_EDGES = np.linspace(0.0, 4.0, 17)
SCORE_COLUMNS = ("set", "id", "logp_obs", "logp_arch", "llr", "llr_segmap", "llr_sky", "llr_rest", "n_sky_pixels",
                 "llr_sky_per_pixel", "bpd_obs", "bpd_arch", "n_masked_pixels", "masked_share", "llr_per_pixel")
#: a set whose mean masked share differs from the reference's by more than this gets a warning
MASKED_SHARE_TOLERANCE = 0.05
OUTLIER_QUANTILE = 0.0015  # the paper's outliers: below the reference's 0.15th percentile


# --------------------------------------------------------------------------- data types
@dataclass
class OpenedSet:
    """One input set, opened.

    Attributes:
        name: the user's label.
        label: where it came from (file name), for messages.
        source: the ImageSource (batches / read / shape / preprocessing).
        catalog: astropy Table row-aligned with the images, or None.
        segmap: lazy ``(N, H, W)`` central-source mask or None.
        flux_segmap: lazy ``(N, Hf, Wf)`` segmentation on the flux-cutout grid (``/segmap``:
            0 sky, 1 central source, >1 companions) or None.
        mask: lazy ``(N, H, W)`` excluded pixels on the model grid (``/mask_model``, 1 = excluded)
            or None: their own terms are dropped from the sums (:func:`excluded_pixels`).
    """

    name: str
    label: str
    source: Any
    catalog: Any = None
    segmap: Any = None
    flux_segmap: Any = None
    mask: Any = None

    def __getstate__(self) -> dict:
        # h5py datasets cannot be pickled: a scoring process (morphllr.distributed) reopens them from the source
        return {"name": self.name, "label": self.label, "source": self.source}

    def __setstate__(self, state: dict) -> None:
        self.name, self.label, self.source = state["name"], state["label"], state["source"]
        self.catalog = getattr(self.source, "catalog", None)
        self.segmap = getattr(self.source, "segmap_model", None)
        self.flux_segmap = getattr(self.source, "segmap", None)
        self.mask = model_grid_mask(self.source, self.name)


def model_grid_mask(source: Any, name: str | None = None) -> Any:
    """The source's ``/mask_model`` (lazy ``(N, H, W)``, 1 = excluded pixel) or None; refused when misshapen."""
    mask = getattr(source, "mask_model", None)
    if mask is None:
        return None
    n, _, h, w = source.shape
    if tuple(mask.shape) != (n, h, w):
        raise MorphllrError(f"{name or source.name}: /mask_model has shape {tuple(mask.shape)} but the images are "
                            f"{n} x {h}x{w}; rebuild the set with `morphllr prepare`")
    return mask


def excluded_pixels(mask: Any, start: int | None = None, stop: int | None = None, rows: Any = None) -> np.ndarray | None:
    """bool ``(B, H, W)`` masked pixels of images ``start:stop`` (or sorted ``rows``), or None without a mask."""
    if mask is None:
        return None
    if rows is not None:
        from morphllr.domain import _rows

        return _rows(mask, np.asarray(rows)) != 0
    return np.asarray(mask[start:stop]) != 0


@dataclass
class SetResult:
    """Everything measured for one set.

    Attributes:
        name: set label.
        scores: column -> per-image array (``logp_obs``, ``logp_arch``, ``llr``,
            ``llr_segmap``, ``llr_sky``, ``llr_rest``, ``n_sky_pixels``, ``llr_sky_per_pixel``,
            ``bpd_obs``, ``bpd_arch``, ``n_masked_pixels``, ``masked_share``, ``llr_per_pixel``
            and ``llr_rot`` with rotations); see :class:`_SkyMasks` for the sky split; sums run
            over the unmasked pixels only.
        ids: per-image identifiers (catalogue ``id`` or the index).
        catalog: the set's catalogue (astropy Table) or None.
        mean_map: mean pixel LLR map after centring each galaxy, ``(H, W)``.
        profile_re: mean pixel LLR per bin of r / R_e (None without sizes).
        profile_pix: mean pixel LLR per 1-pixel bin of r.
        gallery: selection name -> dict(indices, images, map_obs, map_arch, llr).
        notes: what could not be measured and why.
        sky_mask: where the empty-sky mask came from: ``"segmap"``, ``"segmap_model"``
            (companions count as sky) or None (sky columns are NaN).
        member_logp: ``{"obs": (K_obs, N), "arch": (K_arch, N)}`` float64 log p of every image
            under every member (``scores["logp_obs"]`` is the mean over the obs members);
            LLR_ij = member_logp["obs"][i] - member_logp["arch"][j].
        groups: per-image label of the object it shows (``group_col``), or None.
        domain_values: what the domain guards judge (:mod:`morphllr.domain`): ``sky_logp``
            ``{"obs": (K_obs, N), "arch": (K_arch, N)}`` every member's log p summed over the
            empty-sky pixels (NaN without a mask), ``area`` (N,) central-source areas and
            ``n_valid`` (N,) unmasked model pixels.
        warnings: this set's warnings (``summary["sets"][name]["warnings"]``).
    """

    name: str
    scores: dict[str, np.ndarray]
    ids: np.ndarray
    catalog: Any
    mean_map: np.ndarray
    profile_re: np.ndarray | None
    profile_pix: np.ndarray
    gallery: dict[str, dict] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    sky_mask: str | None = None
    member_logp: dict[str, np.ndarray] = field(default_factory=dict)
    groups: np.ndarray | None = None
    domain_values: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def llr(self) -> np.ndarray:
        return self.scores["llr"]


@dataclass
class CompareResult:
    """Outcome of :func:`compare`.

    Attributes:
        reference: name of the reference set.
        sets: name -> SetResult, reference first.
        summary: the content of ``summary.json``.
        ranking: set names ordered by mean LLR, highest (most realistic) first.
        notes: report-wide notes (skipped plots and why).
        out: the report folder or None.
        timing: seconds in forward passes vs total.
    """

    reference: str
    sets: dict[str, SetResult]
    summary: dict
    ranking: list[str]
    notes: list[str]
    out: Path | None
    timing: dict


# --------------------------------------------------------------------------- models
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
    from morphllr.model import io as modelio

    if not path.exists():
        raise MorphllrError(f"{what} {path}: no such model folder; give the folder written by `morphllr train`")
    loader = getattr(modelio, "load_ensemble", None)  # ensemble folders (train --seeds); plain folders too
    if loader is not None:
        ens = loader(path)
        members = list(ens.members)
        names = list(getattr(ens, "names", None) or [])
        if len(names) != len(members):
            names = [Path(getattr(m, "path", "") or f"{path.name}_{k}").name for k, m in enumerate(members)]
        return members, names
    return [modelio.load_model(path)], [path.name]


def load_side(spec: Any, what: str) -> Side:
    """The members of one side from a model or ensemble folder, a LoadedModel, an Ensemble or a list of those.

    Args:
        spec: folder path, LoadedModel, ``morphllr.model.io.Ensemble`` (``.members``, ``.names``)
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


def _config_value(config: Any, key: str):
    return config.get(key) if isinstance(config, dict) else getattr(config, key, None)


_SHAPE_KEYS = ("head", "in_channels", "height", "width")


def _shape_diffs(one: Any, other: Any) -> list[str]:
    """``"key: a vs b"`` for every :data:`_SHAPE_KEYS` entry where two network configs differ."""
    return [f"{k}: {_config_value(one, k)!r} vs {_config_value(other, k)!r}"
            for k in _SHAPE_KEYS if _config_value(one, k) != _config_value(other, k)]


def _check_models(obs: Side, arch: Side) -> None:
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
                _check_prep(first.preprocessing, m.preprocessing, f"{what} ensemble member {side.names[0]} vs {name}")
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
    _check_prep(o.preprocessing, a.preprocessing, "--obs model vs --arch model")


def _check_prep(model_prep: dict, set_prep: dict, what: str) -> None:
    from morphllr.data.preprocess import check_compatible

    check_compatible(model_prep or {}, set_prep or {}, what)


# --------------------------------------------------------------------------- sets
def _open_set(name: str, spec: Any) -> OpenedSet:
    from morphllr.data.inputs import open_images

    label = str(spec) if isinstance(spec, (str, os.PathLike)) else type(spec).__name__
    if isinstance(spec, (str, os.PathLike)) and not Path(str(spec).split(":")[0]).exists() \
            and not Path(spec).exists():
        raise MorphllrError(f"set {name}={spec}: no such file; check the path")
    source = open_images(spec)
    catalog = getattr(source, "catalog", None)
    segmap = getattr(source, "segmap_model", None)
    flux_segmap = getattr(source, "segmap", None)
    if catalog is not None and len(catalog) != len(source):
        raise MorphllrError(f"set {name}={label}: catalogue has {len(catalog)} rows for {len(source)} images; "
                            "rebuild the set with `morphllr prepare`")
    return OpenedSet(name=name, label=label, source=source, catalog=catalog, segmap=segmap, flux_segmap=flux_segmap,
                     mask=model_grid_mask(source, f"set {name}={label}"))


def _check_set(s: OpenedSet, obs) -> None:
    if len(s.source) < MIN_SET_SIZE:
        raise MorphllrError(
            f"set {s.name}={s.label}: has {len(s.source)} image(s); a mean LLR with a bootstrap interval needs at "
            f"least {MIN_SET_SIZE} (one image gives a zero-width interval and no verdict); give a larger set")
    want = tuple(_config_value(obs.config, k) for k in ("in_channels", "height", "width"))
    have = tuple(s.source.shape[1:])
    if None not in want and have != want:
        raise MorphllrError(
            f"set {s.name}={s.label}: images are (C,H,W)={have} but the models expect {want}; "
            "prepare the set with the models' preprocessing (`morphllr prepare --like MODEL_DIR`)")
    _check_prep(obs.preprocessing, s.source.preprocessing, f"models vs set {s.name}={s.label}")


def _check_names(names: Iterable[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if not name or any(c in name for c in ",\n\"<>&"):
            raise MorphllrError(f"set name {name!r}: use a short label without commas, quotes or <>&, e.g. TNG50")
        if name in seen:
            raise MorphllrError(f"set name {name!r} is used twice; give every set its own NAME=")
        seen.add(name)



# --------------------------------------------------------------------------- forward passes
class _Scorer:
    """Per-pixel log p maps of numpy batches under one side's members, timing the forward passes.

    One forward pass per member and batch: K_obs + K_arch passes give every one of the
    K_obs x K_arch pairs, LLR_ij = log p_obs,i - log p_arch,j, from the per-member sums.
    """

    def __init__(self, side: Side | Any, threads: int | None = None):
        self.side = side if isinstance(side, Side) else Side([side], ["0"], [""])
        self.model = self.side.members[0]
        self.seconds = 0.0
        self.threads = threads  # CPU threads of this process (None: automatic)

    def maps_and_sums(self, batch: np.ndarray, keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The members' mean map ``(B, H, W)`` float32 and each member's per-image log p ``(K, B)`` float64
        (summed over the ``keep`` pixels, bool ``(B, H, W)``; None: all)."""
        return self.maps_sums_sky(batch, None, keep)[:2]

    def maps_sums_sky(self, batch: np.ndarray, sky: np.ndarray | None,
                      keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`maps_and_sums` plus each member's log p summed over the ``sky`` pixels ``(K, B)`` (NaN: no mask).

        ``keep`` (bool ``(B, H, W)`` or None): the pixels whose terms are summed; the maps are of
        the whole image (masked pixels stay context for the later conditionals).
        """
        start = time.perf_counter()
        total = None
        sums = np.empty((len(self.side), len(batch)))
        sky_sums = np.full((len(self.side), len(batch)), np.nan)
        for k, member in enumerate(self.side.members):
            maps = _log_prob_maps(member, batch, self.threads)
            if keep is None:
                sums[k] = maps.sum(axis=(1, 2), dtype=np.float64)
            else:  # float32 zeros: with nothing masked the sum is bit-identical to the unmasked one
                sums[k] = np.where(keep, maps, np.float32(0)).sum(axis=(1, 2), dtype=np.float64)
            if sky is not None:  # per member: each is judged against its own training record (domain.py)
                sky_sums[k] = np.where(sky, maps.astype(np.float64), 0.0).sum(axis=(1, 2))
            if len(self.side) == 1:
                total = maps
            elif total is None:
                total = maps.astype(np.float64)
            else:
                total += maps
        self.seconds += time.perf_counter() - start
        mean = total if len(self.side) == 1 else (total / len(self.side)).astype(np.float32)
        return mean, sums, sky_sums

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.maps_and_sums(batch)[0]


def _log_prob_maps(model, batch: np.ndarray, threads: int | None = None) -> np.ndarray:
    """``(B, H, W)`` float32 log p per pixel (nats) of one model-input batch."""
    from morphllr.score import iter_log_prob_maps  # threads, bf16 autocast, channels-last: owned by score.py

    # one batch in, one map array out; the generator is run to the end so its contexts close
    return np.concatenate(list(iter_log_prob_maps(model, batch, batch_size=len(batch), threads=threads)))


#: rotation draws come in blocks of this many images, each from its own seeded stream
ROTATION_BLOCK = 1024


def _rotation_draws(seed: int, set_index: int, start: int, stop: int, rotations: int, discrete: bool) -> np.ndarray:
    """``(rotations, stop - start)`` random angles (deg, [0, 180)) or quarter turns of images ``start:stop``.

    Image i's draws come from the stream ``(seed, set, i // ROTATION_BLOCK)``, so they do not
    depend on the batch size nor on how the set is split between processes.
    """
    out = np.empty((rotations, stop - start), dtype=np.int64 if discrete else np.float64)
    for block in range(start // ROTATION_BLOCK, (stop - 1) // ROTATION_BLOCK + 1 if stop > start else 0):
        rng = np.random.default_rng([seed, 11, set_index, block])
        draws = rng.integers(0, 4, (rotations, ROTATION_BLOCK)) if discrete else \
            rng.uniform(0.0, 180.0, (rotations, ROTATION_BLOCK))
        lo, hi = max(start, block * ROTATION_BLOCK), min(stop, (block + 1) * ROTATION_BLOCK)
        out[:, lo - start:hi - start] = draws[:, lo - block * ROTATION_BLOCK:hi - block * ROTATION_BLOCK]
    return out


def _rotate(batch: np.ndarray, draws: np.ndarray, discrete: bool) -> np.ndarray:
    """Rotate each image the way training augments (``morphllr.train.run``), by its drawn angle.

    Continuous heads: any angle in [0, 180) deg, bicubic with reflected edges; the
    discretized head only has mass on integers, so it gets exact quarter turns.
    """
    import torch

    from morphllr.train.run import rotate_continuous, rotate_lossless  # same interpolation as the models saw

    x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
    if discrete:
        return rotate_lossless(x, torch.from_numpy(np.asarray(draws, dtype=np.int64))).numpy()
    return rotate_continuous(x, torch.from_numpy(np.asarray(draws, dtype=np.float32))).numpy()


def _rotate_mask(excluded: np.ndarray, draws: np.ndarray, discrete: bool) -> np.ndarray:
    """bool ``(B, H, W)`` masked pixels turned exactly as :func:`_rotate` turns their images.

    Quarter turns are exact; an arbitrary angle resamples the 0/1 mask with the images'
    interpolation and reflected edges, and a rotated pixel is masked when at least half of it is.
    """
    turned = _rotate(excluded[:, None].astype(np.float32), draws, discrete)[:, 0]
    return turned >= 0.5


# --------------------------------------------------------------------------- accumulators
def _centroids(images: np.ndarray, masks: np.ndarray | None) -> np.ndarray:
    """(B, 2) light-weighted centre (y, x) of each galaxy, from its mask if there is one."""
    light = images.sum(axis=1)
    light = light - np.median(light, axis=(1, 2), keepdims=True)
    weights = np.clip(light, 0, None) ** 2  # squared: the bright core dominates, noise does not
    if masks is not None:
        weights = np.where(masks > 0, np.clip(light, 0, None) + 1e-12, 0.0)
    total = weights.sum(axis=(1, 2))
    h, w = light.shape[1:]
    yy, xx = np.mgrid[0:h, 0:w]
    centre = np.stack([np.full(len(light), (h - 1) / 2), np.full(len(light), (w - 1) / 2)], 1)
    ok = total > 0
    centre[ok, 0] = (weights[ok] * yy).sum(axis=(1, 2)) / total[ok]
    centre[ok, 1] = (weights[ok] * xx).sum(axis=(1, 2)) / total[ok]
    return centre


class _MapAccumulator:
    """Running mean of centred LLR maps and radial profiles, fixed memory."""

    def __init__(self, h: int, w: int, with_re: bool):
        self.h, self.w = h, w
        self.sum = np.zeros((h, w))
        self.count = np.zeros((h, w))
        self.n_pix_bins = int(math.ceil(math.hypot(h, w) / 2)) + 1
        self.pix_sum = np.zeros(self.n_pix_bins)
        self.pix_count = np.zeros(self.n_pix_bins)
        self.with_re = with_re
        n_re = len(PROFILE_RE_EDGES) - 1
        self.re_sum = np.zeros(n_re)
        self.re_count = np.zeros(n_re)
        self._yy, self._xx = np.mgrid[0:h, 0:w]

    def add(self, llr_maps: np.ndarray, centres: np.ndarray, re_model: np.ndarray | None,
            keep: np.ndarray | None = None) -> None:
        """Add a batch of LLR maps; ``keep`` (bool, like the maps): only those pixels count (None: all)."""
        if keep is not None:
            self._add_kept(llr_maps, centres, re_model, keep)
            return
        h, w = self.h, self.w
        shifts = np.rint(np.array([(h - 1) / 2, (w - 1) / 2]) - centres).astype(int)
        shifts = np.clip(shifts, [-(h // 4), -(w // 4)], [h // 4, w // 4])  # never trust a wild centroid
        for m, (dy, dx) in zip(llr_maps, shifts):
            # place the map so that its centroid lands on the stamp centre; no wrap-around
            ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
            xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
            self.sum[yd, xd] += m[ys, xs]
            self.count[yd, xd] += 1
        r = np.hypot(self._yy[None] - centres[:, 0, None, None], self._xx[None] - centres[:, 1, None, None])
        k = np.minimum(r.astype(int), self.n_pix_bins - 1)
        self.pix_sum += np.bincount(k.ravel(), llr_maps.ravel(), self.n_pix_bins)
        self.pix_count += np.bincount(k.ravel(), minlength=self.n_pix_bins)
        if self.with_re and re_model is not None:
            ok = np.isfinite(re_model) & (re_model > 0)
            if ok.any():
                x = r[ok] / re_model[ok, None, None]
                kb = np.searchsorted(PROFILE_RE_EDGES, x, side="right") - 1
                inside = (kb >= 0) & (kb < len(self.re_sum))
                self.re_sum += np.bincount(kb[inside], llr_maps[ok][inside], len(self.re_sum))
                self.re_count += np.bincount(kb[inside], minlength=len(self.re_sum))

    def _add_kept(self, llr_maps: np.ndarray, centres: np.ndarray, re_model: np.ndarray | None,
                  keep: np.ndarray) -> None:
        """:meth:`add` counting only the ``keep`` pixels (masked pixels: neither sum nor count)."""
        h, w = self.h, self.w
        values = np.where(keep, llr_maps, 0.0)
        shifts = np.rint(np.array([(h - 1) / 2, (w - 1) / 2]) - centres).astype(int)
        shifts = np.clip(shifts, [-(h // 4), -(w // 4)], [h // 4, w // 4])
        for m, ok, (dy, dx) in zip(values, keep, shifts):
            ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
            xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
            self.sum[yd, xd] += m[ys, xs]
            self.count[yd, xd] += ok[ys, xs]
        r = np.hypot(self._yy[None] - centres[:, 0, None, None], self._xx[None] - centres[:, 1, None, None])
        k = np.minimum(r.astype(int), self.n_pix_bins - 1)
        self.pix_sum += np.bincount(k[keep], values[keep], self.n_pix_bins)
        self.pix_count += np.bincount(k[keep], minlength=self.n_pix_bins)
        if self.with_re and re_model is not None:
            ok = np.isfinite(re_model) & (re_model > 0)
            if ok.any():
                x = r[ok] / re_model[ok, None, None]
                kb = np.searchsorted(PROFILE_RE_EDGES, x, side="right") - 1
                inside = (kb >= 0) & (kb < len(self.re_sum)) & keep[ok]
                self.re_sum += np.bincount(kb[inside], values[ok][inside], len(self.re_sum))
                self.re_count += np.bincount(kb[inside], minlength=len(self.re_sum))

    def set_totals(self, flat: np.ndarray) -> None:
        """Replace the sums by ``flat`` (this accumulator's arrays concatenated, summed over processes)."""
        sizes = [self.sum.size, self.count.size, self.pix_sum.size, self.pix_count.size, self.re_sum.size,
                 self.re_count.size]
        parts = np.split(np.asarray(flat, dtype=np.float64), np.cumsum(sizes)[:-1])
        self.sum, self.count = parts[0].reshape(self.sum.shape), parts[1].reshape(self.count.shape)
        self.pix_sum, self.pix_count, self.re_sum, self.re_count = parts[2:]

    def results(self) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_map = self.sum / self.count
            prof_re = self.re_sum / self.re_count if self.with_re and self.re_count.any() else None
            prof_pix = self.pix_sum / self.pix_count
        return mean_map, prof_re, prof_pix


class _MapsWriter:
    """All per-pixel maps to ``maps.h5`` (one group per set), written batch by batch."""

    def __init__(self, path: Path | None):
        self.fh = None
        if path is not None:
            import h5py

            self.fh = h5py.File(path, "w")
            self.fh.attrs["format"] = "morphllr.maps"
            self.fh.attrs["units"] = "nats per pixel"
            self.fh.attrs["masked_pixels"] = "NaN (the set's /mask_model: their terms are not in the sums)"

    def start(self, name: str, n: int, h: int, w: int) -> None:
        if self.fh is None:
            return
        group = self.fh.create_group(name)
        for key in ("llr", "logp_obs", "logp_arch"):
            group.create_dataset(key, shape=(n, h, w), dtype="f4", chunks=(min(n, 64), h, w), compression="lzf")

    def write(self, name: str, start: int, obs: np.ndarray, arch: np.ndarray) -> None:
        if self.fh is None:
            return
        stop = start + len(obs)
        self.fh[name]["logp_obs"][start:stop] = obs
        self.fh[name]["logp_arch"][start:stop] = arch
        self.fh[name]["llr"][start:stop] = obs - arch

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()


# --------------------------------------------------------------------------- empty-sky split
SKY_COLUMNS = ("llr_sky", "llr_rest", "n_sky_pixels", "llr_sky_per_pixel")


class _SkyMasks:
    """Empty-sky masks of one set on the model grid, read in the same batches as its images.

    The background cancels in the LLR only when a set shares sky, PSF and noise with the
    training data, so each image's LLR is split into its empty-sky pixels and the rest.
    Preferred source: ``/segmap`` (flux grid) through the set's crop and zoom
    (:func:`morphllr.data.geometry.model_sky_mask`); fallback ``/segmap_model == 0``, where
    companions and stars count as sky; with neither, ``kind`` is None.  Masked pixels
    (``/mask_model``) are never sky: their terms are in no sum.

    Attributes:
        kind: ``"segmap"``, ``"segmap_model"`` or None.
        notes: what the choice means for this set (for the report's notes).
    """

    def __init__(self, s: OpenedSet, hw: tuple[int, int]):
        self._set = s
        self._prep = s.source.preprocessing or {}
        self.kind: str | None = None
        self.notes: list[str] = []
        mismatch = None
        if s.flux_segmap is not None:
            mismatch = self._mismatch(hw)
            if mismatch is None:
                self.kind = "segmap"
                return
        if s.segmap is not None:
            self.kind = "segmap_model"
            why = mismatch or "no /segmap in the set"
            self.notes.append(f"{s.name}: {why}, so empty sky = outside the central-source mask /segmap_model; "
                              "companions, stars and the central galaxy's faint outskirts then count as sky")
            return
        why = mismatch or "no segmentation (/segmap or /segmap_model) in the set"
        self.notes.append(f"{s.name}: {why}; the sky split ({', '.join(SKY_COLUMNS)}) is NaN")

    def _mismatch(self, hw: tuple[int, int]) -> str | None:
        """Why ``/segmap`` cannot be mapped onto the model grid, or None when it can."""
        hf, wf = self._set.flux_segmap.shape[1:]
        try:
            got = model_sky_mask(np.zeros((1, hf, wf), np.int32), self._prep).shape[1:]
        except MorphllrError as exc:
            got = str(exc)
        if got == tuple(hw):
            return None
        result = f"{got[0]}x{got[1]} pixels" if isinstance(got, tuple) else got
        return (f"/segmap ({hf}x{wf}) does not map onto the {hw[0]}x{hw[1]} model grid with the set's "
                f"crop={self._prep.get('crop')} and zoom={self._prep.get('zoom')} (gives {result})")

    def read(self, start: int, stop: int) -> np.ndarray | None:
        """bool ``(B, H, W)`` empty-sky mask of images ``start:stop`` (None without a mask)."""
        sky = None
        if self.kind == "segmap":
            sky = model_sky_mask(np.asarray(self._set.flux_segmap[start:stop]), self._prep)
        elif self.kind == "segmap_model":
            sky = np.asarray(self._set.segmap[start:stop]) == 0
        return self._unmasked(sky, excluded_pixels(self._set.mask, start, stop))

    def read_rows(self, rows: np.ndarray) -> np.ndarray | None:
        """The same mask for sorted, not necessarily contiguous ``rows`` (a training set's validation split)."""
        from morphllr.domain import _rows
        sky = None
        if self.kind == "segmap":
            sky = model_sky_mask(_rows(self._set.flux_segmap, rows), self._prep)
        elif self.kind == "segmap_model":
            sky = _rows(self._set.segmap, rows) == 0
        return self._unmasked(sky, excluded_pixels(self._set.mask, rows=rows))

    @staticmethod
    def _unmasked(sky: np.ndarray | None, excluded: np.ndarray | None) -> np.ndarray | None:
        if sky is None or excluded is None:
            return sky
        return np.asarray(sky, bool) & ~excluded


def _split_sky(out: dict[str, np.ndarray], start: int, stop: int, map_obs: np.ndarray, map_arch: np.ndarray,
               sky: np.ndarray | None) -> None:
    """Fill ``llr_sky`` and ``n_sky_pixels`` of images ``start:stop`` (NaN without a mask)."""
    if sky is None:
        out["llr_sky"][start:stop] = np.nan
        out["n_sky_pixels"][start:stop] = np.nan
        return
    # float64 before subtracting, as for the llr column, so sky + rest adds up to the llr
    llr_map = map_obs.astype(np.float64) - map_arch
    out["llr_sky"][start:stop] = np.where(sky, llr_map, 0.0).sum(axis=(1, 2))
    out["n_sky_pixels"][start:stop] = sky.sum(axis=(1, 2))


def _finish_sky(out: dict[str, np.ndarray]) -> None:
    """Derived sky columns, once ``llr`` is known."""
    out["llr_rest"] = out["llr"] - out["llr_sky"]
    with np.errstate(invalid="ignore", divide="ignore"):
        out["llr_sky_per_pixel"] = np.where(out["n_sky_pixels"] > 0, out["llr_sky"] / out["n_sky_pixels"], np.nan)


# --------------------------------------------------------------------------- scoring one set
def _re_model_pixels(s: OpenedSet, prep: dict) -> tuple[np.ndarray | None, str | None]:
    """Half-light radii in model pixels, or None with the reason."""
    col = find_column(s.catalog, RE_PIX_COLUMNS)
    if col is None:
        return None, (f"{s.name}: no half-light radius column ({' / '.join(RE_PIX_COLUMNS)}) in the catalogue; "
                      "radial profile in model pixels instead of R_e")
    zoom = (prep or {}).get("zoom")
    if zoom is None:
        return None, (f"{s.name}: the preprocessing records no zoom, so {col} cannot be converted to model "
                      "pixels; radial profile in model pixels instead of R_e")
    return catalog_values(s.catalog, col) * float(zoom), None


#: per-image numbers of one set, gathered from every process in input order
_PER_IMAGE = ("logp_obs", "logp_arch", "llr_segmap", "llr_sky", "n_sky_pixels", "n_masked_pixels")


def _score_set(s: OpenedSet, scorers: tuple[_Scorer, _Scorer], batch_size: int, rotations: int,
               discrete: bool, prep: dict, maps_writer: _MapsWriter, rng_seed: int, set_index: int,
               advance: Callable[[int], None], ctx=None, gather_maps: bool = False) -> SetResult | None:
    """Stream one set (this process's shard of it) through both models; per-image numbers + accumulators.

    With several processes (``ctx``, :mod:`morphllr.distributed`) every rank scores a contiguous
    shard; rank 0 receives the per-image numbers in input order, the summed map accumulators and
    (``gather_maps``: ``maps="all"``) every batch's maps for ``maps.h5``, and returns the SetResult
    (None on the other ranks).
    """
    from morphllr.distributed import Context

    ctx = ctx or Context()
    n, c, h, w = s.source.shape
    mine = ctx.shard(n, batch_size)
    m = mine.stop - mine.start
    out = {key: np.empty(m) for key in _PER_IMAGE}
    obs_scorer, arch_scorer = scorers
    members = {"obs": np.empty((len(obs_scorer.side), m)), "arch": np.empty((len(arch_scorer.side), m)),
               "obs_sky": np.empty((len(obs_scorer.side), m)), "arch_sky": np.empty((len(arch_scorer.side), m))}
    out["central_area"] = np.empty(m)  # the domain guard's galaxy size (domain.py)
    if rotations:
        out["llr_rot"] = np.empty(m)
    re_model, re_note = _re_model_pixels(s, prep)
    notes = [re_note] if re_note else []
    if s.segmap is None:
        notes.append(f"{s.name}: no central-source mask (/segmap_model) in the set; llr_segmap is NaN")
    sky_masks = _SkyMasks(s, (h, w))
    notes += sky_masks.notes
    acc = _MapAccumulator(h, w, with_re=re_model is not None)
    if ctx.is_main:
        maps_writer.start(s.name, n, h, w)
    from morphllr.data.inputs import check_batch

    head = _config_value(obs_scorer.model.config, "head")
    for step, (start, batch) in enumerate(ctx.batches(s.source, batch_size)):
        if batch is not None:
            stop = start + len(batch)
            i0, i1 = start - mine.start, stop - mine.start  # positions in this shard's arrays
            check_batch(batch, f"set {s.name}={s.label}", head, start)  # names the user's file, not "array"
            sky = sky_masks.read(start, stop)  # masked pixels are never sky
            # masked pixels (sky noise) stay in the images as context; their own terms leave every sum
            excluded = excluded_pixels(s.mask, start, stop)
            keep = None if excluded is None else ~excluded
            (map_obs, sums_obs, sky_obs), (map_arch, sums_arch, sky_arch) = \
                obs_scorer.maps_sums_sky(batch, sky, keep), arch_scorer.maps_sums_sky(batch, sky, keep)
            llr_map = map_obs - map_arch  # members' mean maps: the mean over pairs of the per-pixel LLR
            out["n_masked_pixels"][i0:i1] = 0 if excluded is None else excluded.sum(axis=(1, 2))
            members["obs"][:, i0:i1] = sums_obs
            members["arch"][:, i0:i1] = sums_arch
            members["obs_sky"][:, i0:i1] = sky_obs
            members["arch_sky"][:, i0:i1] = sky_arch
            out["logp_obs"][i0:i1] = sums_obs.mean(axis=0)
            out["logp_arch"][i0:i1] = sums_arch.mean(axis=0)
            masks = None
            if s.segmap is not None:
                masks = np.asarray(s.segmap[start:stop]) == 1
                central = masks if keep is None else masks & keep
                out["llr_segmap"][i0:i1] = np.where(central, llr_map, 0.0).sum(axis=(1, 2), dtype=np.float64)
                out["central_area"][i0:i1] = masks.sum(axis=(1, 2))  # the galaxy's size, masked pixels included
            else:
                out["llr_segmap"][i0:i1] = np.nan
                out["central_area"][i0:i1] = np.nan
            _split_sky(out, i0, i1, map_obs, map_arch, sky)
            if rotations:
                draws = _rotation_draws(rng_seed, set_index, start, stop, rotations, discrete)
                total = np.zeros(len(batch))
                for k in range(rotations):
                    turned = _rotate(batch, draws[k], discrete)
                    turned_llr = obs_scorer(turned) - arch_scorer(turned)
                    if excluded is not None:  # the mask turns with its image
                        turned_llr = np.where(_rotate_mask(excluded, draws[k], discrete), np.float32(0), turned_llr)
                    total += turned_llr.sum(axis=(1, 2), dtype=np.float64)
                out["llr_rot"][i0:i1] = total / rotations
            acc.add(llr_map, _centroids(batch, masks), None if re_model is None else re_model[start:stop], keep)
            pair = np.stack([map_obs, map_arch], axis=1)  # (B, 2, H, W)
            if excluded is not None:  # masked pixels are NaN in maps.h5
                pair = np.where(excluded[:, None], np.float32(np.nan), pair)
        else:
            pair = np.empty((0, 2, h, w), np.float32)
        if not gather_maps:  # the same on every rank: every rank makes the same collectives
            advance(sum(ctx.exchange(len(pair))))
            continue
        parts = ctx.gather(pair)
        if ctx.is_main:
            for rank, part in enumerate(parts):
                if len(part):
                    maps_writer.write(s.name, ctx.batch_start(n, batch_size, rank, step), part[:, 0], part[:, 1])
                    advance(len(part))
    keys = list(out)
    member_keys = ("obs", "arch", "obs_sky", "arch_sky")
    rows = np.vstack([out[k][None] for k in keys] + [members[k] for k in member_keys])  # (columns, shard)
    table = ctx.gather_rows(np.ascontiguousarray(rows.T))  # (N, columns) in input order on rank 0
    sums = ctx.sum(np.concatenate([acc.sum.ravel(), acc.count.ravel(), acc.pix_sum, acc.pix_count, acc.re_sum,
                                   acc.re_count]))
    if not ctx.is_main:
        return None
    acc.set_totals(sums)
    out = {k: np.ascontiguousarray(table[:, j]) for j, k in enumerate(keys)}
    counts = {"obs": len(obs_scorer.side), "arch": len(arch_scorer.side)}
    members, col = {}, len(keys)
    for k in member_keys:
        width = counts[k.split("_")[0]]
        members[k] = np.ascontiguousarray(table[:, col:col + width].T)
        col += width
    n_valid = h * w - out["n_masked_pixels"]  # unmasked model pixels per image
    domain_values = {"sky_logp": {"obs": members.pop("obs_sky"), "arch": members.pop("arch_sky")},
                     "area": out.pop("central_area"), "n_valid": n_valid}
    out["llr"] = out["logp_obs"] - out["logp_arch"]
    _finish_sky(out)
    # bits per dimension: the usual PixelCNN unit (negative for continuous densities of
    # narrow-range images, which is fine: only differences matter), per unmasked dimension
    with np.errstate(invalid="ignore", divide="ignore"):
        dims = np.where(n_valid > 0, c * n_valid, np.nan) * math.log(2)
        out["bpd_obs"] = -out["logp_obs"] / dims
        out["bpd_arch"] = -out["logp_arch"] / dims
        out["masked_share"] = out["n_masked_pixels"] / (h * w)
        out["llr_per_pixel"] = out["llr"] / np.where(n_valid > 0, n_valid, np.nan)
    for side, scorer in (("obs", obs_scorer), ("arch", arch_scorer)):
        if len(scorer.side) > 1:  # per-member columns of scores.csv / .parquet
            for name, row in zip(scorer.side.names, members[side]):
                out[f"logp_{side}_{name}"] = row
    ids = _ids(s.catalog, n)
    mean_map, prof_re, prof_pix = acc.results()
    return SetResult(name=s.name, scores=out, ids=ids, catalog=s.catalog, mean_map=mean_map,
                     profile_re=prof_re, profile_pix=prof_pix, notes=notes, sky_mask=sky_masks.kind,
                     member_logp=members, domain_values=domain_values)


def _ids(catalog: Any, n: int) -> np.ndarray:
    if catalog is not None and "id" in catalog.colnames:
        return np.asarray(catalog["id"])
    return np.arange(n)


# --------------------------------------------------------------------------- galleries
def _gallery_indices(llr: np.ndarray, ref_cut: float, k: int) -> dict[str, np.ndarray]:
    """Which galaxies to show: most / least realistic, outliers, and a spread for the maps."""
    order = np.argsort(llr, kind="stable")
    k = min(k, len(llr))
    outliers = order[llr[order] < ref_cut][:k]
    spread = order[np.unique(np.linspace(0, len(llr) - 1, min(k, len(llr))).round().astype(int))]
    return {"most_realistic": order[::-1][:k], "least_realistic": order[:k], "outliers": outliers,
            "maps": spread[::-1]}


def _fill_gallery(res: SetResult, s: OpenedSet, scorers: tuple[_Scorer, _Scorer], ref_cut: float,
                  k: int) -> None:
    """Re-score the few gallery galaxies to get their images and maps."""
    picks = _gallery_indices(res.llr, ref_cut, k)
    wanted = np.unique(np.concatenate(list(picks.values()))).astype(int)
    if wanted.size == 0:
        return
    images = s.source.read(wanted)
    map_obs, map_arch = scorers[0](images), scorers[1](images)
    excluded = excluded_pixels(s.mask, rows=wanted)
    if excluded is not None:  # shown as NaN: their terms are not in the LLR
        map_obs = np.where(excluded, np.float32(np.nan), map_obs)
        map_arch = np.where(excluded, np.float32(np.nan), map_arch)
    where = {int(i): j for j, i in enumerate(wanted)}
    n_outliers = int(np.sum(res.llr < ref_cut))
    for key, idx in picks.items():
        rows = [where[int(i)] for i in idx]
        res.gallery[key] = {"indices": np.asarray(idx, dtype=int), "ids": res.ids[np.asarray(idx, dtype=int)],
                            "images": images[rows], "map_obs": map_obs[rows], "map_arch": map_arch[rows],
                            "llr": res.llr[np.asarray(idx, dtype=int)], "n_total": n_outliers}


# --------------------------------------------------------------------------- statistics
def _set_summaries(results: dict[str, SetResult], reference: str, n_boot: int, seed: int,
                   ref_cut: float) -> dict:
    ref = results[reference].llr
    ref_groups = results[reference].groups
    out = {}
    for name, res in results.items():
        entry = stats.summarize(res.llr, None if name == reference else ref, n_boot=n_boot, rng=seed,
                                groups=res.groups, reference_groups=ref_groups)
        entry.setdefault("n_groups", entry["n"])
        # the reference itself has ~0.15 % here by construction; a simulation with many more is suspicious
        entry["outlier_fraction"] = float(np.mean(res.llr < ref_cut))
        entry["mean_logp_obs"] = float(np.nanmean(res.scores["logp_obs"]))
        entry["mean_logp_arch"] = float(np.nanmean(res.scores["logp_arch"]))
        entry["mean_bpd_obs"] = float(np.nanmean(res.scores["bpd_obs"]))
        entry["mean_bpd_arch"] = float(np.nanmean(res.scores["bpd_arch"]))
        # masked pixels' terms are not in the LLR: sets of different masked shares compare per pixel
        entry["masked_share"] = float(np.mean(res.scores["masked_share"]))
        per_pixel = res.scores["llr_per_pixel"]
        entry["mean_llr_per_pixel"] = float(np.nanmean(per_pixel)) if np.isfinite(per_pixel).any() else None
        seg = res.scores["llr_segmap"]
        entry["mean_llr_segmap"] = float(np.mean(seg)) if np.isfinite(seg).all() else None
        if "llr_rot" in res.scores:
            entry["mean_llr_rotation_averaged"] = float(np.mean(res.scores["llr_rot"]))
        entry["sky"] = sky_summary(res, results[reference], name == reference, n_boot, seed)
        out[name] = entry
    return out


#: Keys of ``summary["sets"][name]["sky"]`` that hold numbers (None when not computable).
SKY_SUMMARY_KEYS = ("llr_per_sky_pixel", "llr_per_sky_pixel_ci95", "sky_share", "sky_pixel_fraction",
                    "mean_llr_sky", "mean_llr_rest", "auroc_sky_vs_reference", "auroc_rest_vs_reference")


def sky_summary(res: SetResult, ref: SetResult, is_reference: bool, n_boot: int, seed: int) -> dict:
    """Per-set numbers of the empty-sky / rest split of the LLR (``summary.json`` ``sets[name]["sky"]``).

    When the scored images share sky, PSF and noise with the training data, the two
    models assign the same density to the empty sky and it cancels in the ratio: the
    sky LLR per pixel is then ~0 and the per-image sky LLRs are indistinguishable from
    the reference's (AUROC ~0.5).

    Args:
        res: the set.
        ref: the reference set.
        is_reference: ``res`` is the reference (its AUROCs are 0.5 by definition).
        n_boot: bootstrap replicates of the interval.
        seed: bootstrap seed.

    Returns:
        dict with ``mask`` (``"segmap"``, ``"segmap_model"`` or None), ``llr_per_sky_pixel``
        (pooled: sum of llr_sky / sum of n_sky_pixels, nats per pixel),
        ``llr_per_sky_pixel_ci95`` ([lo, hi], bootstrap over images), ``sky_share``
        (mean llr_sky / mean llr, see :func:`morphllr.comparison.stats.share_of_mean` for when it is None),
        ``sky_pixel_fraction`` (empty-sky share of all model pixels), ``mean_llr_sky``,
        ``mean_llr_rest`` (nats per image), ``auroc_sky_vs_reference`` (on llr_sky_per_pixel),
        ``auroc_rest_vs_reference`` (on llr_rest) and ``null_reasons`` (key -> why it is None).
    """
    out: dict[str, Any] = {"mask": res.sky_mask, **dict.fromkeys(SKY_SUMMARY_KEYS)}
    why: dict[str, str] = {}
    out["null_reasons"] = why
    if res.sky_mask is None:
        why.update(dict.fromkeys(SKY_SUMMARY_KEYS, "the set has no segmentation map (/segmap or /segmap_model)"))
        return out
    sc = res.scores
    n_sky = sc["n_sky_pixels"]
    out["sky_pixel_fraction"] = float(n_sky.sum() / (len(n_sky) * res.mean_map.size))
    out["mean_llr_sky"] = float(np.mean(sc["llr_sky"]))
    out["mean_llr_rest"] = float(np.mean(sc["llr_rest"]))
    if n_sky.sum() > 0:
        out["llr_per_sky_pixel"] = stats.ratio_of_sums(sc["llr_sky"], n_sky)
        out["llr_per_sky_pixel_ci95"] = list(stats.bootstrap_ratio_ci(sc["llr_sky"], n_sky, 0.95, n_boot, seed,
                                                                      groups=res.groups))
    else:
        for key in ("llr_per_sky_pixel", "llr_per_sky_pixel_ci95", "auroc_sky_vs_reference"):
            why[key] = "no model pixel of the set is empty sky (a source pixel falls into every one)"
    share = stats.share_of_mean(sc["llr_sky"], res.llr, groups=res.groups)
    if np.isfinite(share):
        out["sky_share"] = share
    else:
        why["sky_share"] = "the set's mean LLR is within 2 standard errors of 0, so a share of it is undefined"
    if ref.sky_mask is None:
        for key in ("auroc_sky_vs_reference", "auroc_rest_vs_reference"):
            why.setdefault(key, "the reference has no segmentation map")
        return out
    if ref.sky_mask != res.sky_mask:  # /segmap vs /segmap_model == 0: two definitions of sky
        for key in ("auroc_sky_vs_reference", "auroc_rest_vs_reference"):
            why.setdefault(key, f"the set's sky comes from {res.sky_mask}, the reference's from {ref.sky_mask}")
        return out
    out["auroc_rest_vs_reference"] = 0.5 if is_reference else stats.auroc(sc["llr_rest"], ref.scores["llr_rest"])
    if "auroc_sky_vs_reference" not in why:
        if not np.isfinite(ref.scores["llr_sky_per_pixel"]).any():
            why["auroc_sky_vs_reference"] = "no model pixel of the reference is empty sky"
        else:
            out["auroc_sky_vs_reference"] = 0.5 if is_reference else stats.auroc(
                sc["llr_sky_per_pixel"], ref.scores["llr_sky_per_pixel"])
    return out


def _mass_panels(results: dict[str, SetResult], reference: str, n_boot: int, seed: int,
                 notes: list[str]) -> dict[str, dict]:
    ref_mass = catalog_values(results[reference].catalog, find_column(results[reference].catalog, MASS_COLUMNS))
    if ref_mass is None:
        notes.append(f"stellar-mass panels skipped: the reference {reference} has no mass column "
                     f"({' / '.join(MASS_COLUMNS)})")
        return {}
    ref_masks = stats.mass_panel_masks(ref_mass)
    panels: dict[str, dict] = {}
    for name, res in results.items():
        mass = catalog_values(res.catalog, find_column(res.catalog, MASS_COLUMNS))
        if mass is None:
            notes.append(f"stellar-mass panels: set {name} has no mass column; left out")
            continue
        for label, mask in stats.mass_panel_masks(mass).items():
            ref_vals = results[reference].llr[ref_masks[label]]
            if mask.sum() < 2 or ref_vals.size < 2:
                continue
            ref_groups = results[reference].groups
            entry = stats.summarize(res.llr[mask], None if name == reference else ref_vals, n_boot=n_boot, rng=seed,
                                    groups=None if res.groups is None else res.groups[mask],
                                    reference_groups=None if ref_groups is None else ref_groups[ref_masks[label]])
            entry.pop("reading")
            panels.setdefault(name, {})[label] = entry
    return panels


def _matched(results: dict[str, SetResult], reference: str, n_draws: int, seed: int,
             notes: list[str]) -> dict:
    """ΔLLR with identical mass x size x Sérsic-index make-up in every set."""
    props = {"log_mstar": MASS_COLUMNS, "size": SIZE_COLUMNS, "sersic_n": SERSIC_N_COLUMNS}
    columns: dict[str, dict[str, np.ndarray]] = {name: {} for name in results}
    used = {}
    for prop, cands in props.items():
        chosen = [find_column(r.catalog, cands) for r in results.values()]
        if any(c is None for c in chosen):
            continue
        used[prop] = chosen[0]
        for (name, res), col in zip(results.items(), chosen):
            values = catalog_values(res.catalog, col)
            columns[name][prop] = np.log10(np.where(values > 0, values, np.nan)) if prop == "size" else values
    if not used:
        notes.append("matched comparison skipped: no catalogue property (mass, size, Sérsic index) is present "
                     "in every set")
        return {}
    edges = stats.grid_edges(columns[reference], n_bins=3,
                             fixed={"log_mstar": [9.5, 10.0, 10.5]} if "log_mstar" in used else None)
    cells = {name: stats.cell_index(columns[name], edges) for name in results}
    res = stats.matched_delta({n: r.llr for n, r in results.items()}, cells, reference, n_draws=n_draws, rng=seed)
    if res.n_per_set == 0:
        notes.append("matched comparison skipped: no grid cell is populated by every set")
        return {}
    return {"properties": used, "n_per_set": res.n_per_set, "n_cells": res.n_cells, "n_draws": n_draws,
            "delta_llr": res.delta, "delta_llr_err": res.error}


# --------------------------------------------------------------------------- tables
def _catalog_columns(catalog: Any, taken: Iterable[str]) -> dict[str, np.ndarray]:
    """1-D scalar catalogue columns to carry into scores.csv (renamed when they clash)."""
    if catalog is None:
        return {}
    taken = set(taken)
    out = {}
    for name in catalog.colnames:
        col = catalog[name]
        if col.ndim != 1 or name == "id":
            continue
        key = f"cat_{name}" if name in taken else name
        values = np.ma.asarray(col)
        if np.issubdtype(values.dtype, np.number) or values.dtype == bool:
            out[key] = np.ma.filled(values.astype(np.float64), np.nan)
        else:
            out[key] = np.asarray([x.decode() if isinstance(x, bytes) else str(x) for x in np.ma.filled(values)])
    return out


def _rows_table(res: SetResult, score_cols: list[str]) -> dict[str, np.ndarray]:
    n = len(res.llr)
    table: dict[str, np.ndarray] = {"set": np.full(n, res.name, dtype=object), "id": res.ids}
    for col in score_cols:
        table[col] = res.scores.get(col, np.full(n, np.nan))
    table.update(_catalog_columns(res.catalog, list(table)))
    return table


def _write_scores(results: dict[str, SetResult], folder: Path, notes: list[str]) -> None:
    """scores.csv (always) and scores.parquet (when pyarrow is installed), one set at a time."""
    score_cols = [c for c in SCORE_COLUMNS[2:]]
    if any("llr_rot" in r.scores for r in results.values()):
        score_cols.append("llr_rot")
    for r in results.values():  # per-member log p of an ensemble (K > 1 on that side)
        score_cols += [c for c in r.scores if c.startswith(("logp_obs_", "logp_arch_")) and c not in score_cols]
    tables = {name: _rows_table(res, score_cols) for name, res in results.items()}
    columns: list[str] = []
    for t in tables.values():
        columns += [c for c in t if c not in columns]
    text_cols = {c for t in tables.values() for c, v in t.items() if v.dtype.kind in "OUS"}
    with open(folder / "scores.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for t in tables.values():
            n = len(t["llr"])
            cols = [t.get(c, np.full(n, "" if c in text_cols else np.nan)) for c in columns]
            writer.writerows(zip(*[_csv_values(v) for v in cols]))
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        notes.append("scores.parquet not written: install pyarrow (pip install 'morphllr[parquet]')")
        return
    schema = pa.schema([(c, pa.string() if c in text_cols else pa.float64()) for c in columns])
    with pq.ParquetWriter(folder / "scores.parquet", schema) as writer:
        for t in tables.values():
            n = len(t["llr"])
            arrays = []
            for c in columns:
                v = t.get(c)
                if c in text_cols:
                    arrays.append(pa.array([None] * n if v is None else [str(x) for x in v], pa.string()))
                else:
                    arrays.append(pa.array(np.full(n, np.nan) if v is None else np.asarray(v, np.float64)))
            writer.write_table(pa.Table.from_arrays(arrays, schema=schema))


def _csv_values(v: np.ndarray) -> list:
    if v.dtype.kind == "f":
        return [repr(float(x)) if np.isfinite(x) else "nan" for x in v]
    return [x.decode() if isinstance(x, bytes) else x for x in v.tolist()]


def _write_summary_csv(summary: dict, path: Path) -> None:
    keys = ["n", "mean_llr", "median_llr", "std_llr", "ci95_lo", "ci95_hi", "delta_llr", "delta_llr_err",
            "auroc_vs_reference", "ks_vs_reference", "ks_pvalue", "mean_llr_segmap",
            "matched_delta_llr", "matched_delta_llr_err", "llr_per_sky_pixel", "sky_share", "sky_pixel_fraction",
            "auroc_sky_vs_reference", "auroc_rest_vs_reference", "n_groups", "delta_llr_pairing", "n_paired",
            "delta_llr_paired", "delta_llr_paired_err", "model_std", "sign_agreement", "stable", "ci95_total_lo",
            "ci95_total_hi", "delta_llr_ci95_total_lo", "delta_llr_ci95_total_hi", "masked_share",
            "mean_llr_per_pixel"]
    matched = summary.get("matched") or {}
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["set", *keys])
        for name in summary["ranking"]:
            e = dict(summary["sets"][name])
            e["ci95_lo"], e["ci95_hi"] = e["ci95"]
            for key in ("ci95_total", "delta_llr_ci95_total"):
                e[f"{key}_lo"], e[f"{key}_hi"] = e.get(key) or (None, None)
            e["matched_delta_llr"] = (matched.get("delta_llr") or {}).get(name)
            e["matched_delta_llr_err"] = (matched.get("delta_llr_err") or {}).get(name)
            e.update({k: v for k, v in (e.get("sky") or {}).items() if k in keys})
            writer.writerow([name, *["" if e.get(k) is None else e.get(k) for k in keys]])


def _write_panels_csv(summary: dict, path: Path) -> None:
    """One row per set and stellar-mass panel (only when the catalogues have masses)."""
    keys = ["n", "mean_llr", "median_llr", "std_llr", "delta_llr", "delta_llr_err", "auroc_vs_reference",
            "ks_vs_reference"]
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["set", "log_mstar_panel", *keys, "ci95_lo", "ci95_hi"])
        for name, panels in summary["mass_panels"].items():
            for label, e in panels.items():
                writer.writerow([name, label, *[e.get(k) for k in keys], *e["ci95"]])


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


# --------------------------------------------------------------------------- the entry point
def _progress(show: bool, total: int):
    """A rich progress bar (or a silent stand-in) over ``total`` images."""
    if not show:
        class _Silent:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

            def advance(self, n: int, label: str = "") -> None:
                pass
        return _Silent()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    class _Bar:
        def __enter__(self):
            self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("images"), TimeRemainingColumn(), transient=False)
            self.bar.__enter__()
            self.task = self.bar.add_task("scoring", total=total)
            return self

        def __exit__(self, *exc):
            return self.bar.__exit__(*exc)

        def advance(self, n: int, label: str = "") -> None:
            self.bar.update(self.task, advance=n, description=f"scoring {label}")
    return _Bar()


def _model_inputs(spec: Any) -> list:
    """Model folders (or objects with a ``path``) of one side, lists and ensembles flattened."""
    if isinstance(spec, (list, tuple)):
        return [x for item in spec for x in _model_inputs(item)]
    if hasattr(spec, "members") and not isinstance(spec, (str, os.PathLike)):
        return [getattr(spec, "path", None), *(getattr(m, "path", None) for m in spec.members)]
    return [spec]


def _inputs(arguments: dict) -> list:
    """Everything :func:`compare` reads: both models and every set (for the claim on ``out``)."""
    reference, sets = arguments["reference"], arguments["sets"]
    named = [reference[1]] if isinstance(reference, tuple) and len(reference) == 2 else []
    return [*_model_inputs(arguments["obs"]), *_model_inputs(arguments["arch"]), *named,
            *(sets.values() if isinstance(sets, dict) else [])]


def _outputs(arguments: dict) -> list:
    """The report folder; claimed only by the process that writes it (rank 0 of a multi-process run)."""
    from morphllr.distributed import launched_rank

    return [("--out", arguments["out"])] if launched_rank() == 0 else []


@claims(_outputs, inputs=_inputs, kind="dir")  # checked and locked before any model is loaded
def compare(obs: Any, arch: Any, reference: tuple[str, Any], sets: dict[str, Any] | None = None,
            out: str | os.PathLike | None = None, *, rotations: int = 0, maps: str = "gallery",
            batch_size: int = 64, gallery_size: int = 8, n_boot: int = 1000, matched_draws: int = 200,
            seed: int = 0, overwrite: bool = False, progress: bool = False,
            report: bool = True, group_col: str | None = None, devices: int | str = 1,
            accelerator: str | None = None, num_nodes: int = 1, threads: int | None = None) -> CompareResult | None:
    """Score every set under both models and compare each to the reference.

    Either side may be an ensemble (K models trained with different seeds): every set is
    then scored under all K_obs x K_arch model pairs from K_obs + K_arch forward passes
    per batch, the per-image LLR is the mean over pairs (mean_i log p_obs,i - mean_j
    log p_arch,j) and summary.json says how far the ranking survives retraining
    (``mean_llr_by_pair``, ``model_std``, ``ci95_total``, ``ranking_agreement``; see
    :func:`model_variance`).

    Several processes or GPUs (``devices``, ``num_nodes``, or a launcher such as torchrun;
    :mod:`morphllr.distributed`): each rank scores a contiguous shard of every set; rank 0
    receives the per-image numbers in input order, the summed mean-map and profile
    accumulators and (``maps="all"``) the maps batch by batch, re-scores the few gallery
    galaxies itself, computes every statistic and alone writes the report.

    Args:
        obs: p_obs model folder, ensemble folder, LoadedModel, Ensemble or a list of those.
        arch: p_arch, the same way.
        reference: ``(name, set)``: the held-out real test set.
        sets: name -> set to compare with the reference (path, ImageSet, array).
        out: report folder (None: compute only, write nothing).
        rotations: also average the LLR over this many random rotations (0–180°); image i's angles
            depend only on ``seed``, its set and its index.
        maps: ``"gallery"`` (maps only for the gallery galaxies) or ``"all"`` (also
            ``maps.h5`` with every per-pixel map).
        batch_size: images per forward pass.
        gallery_size: galaxies per gallery.
        n_boot: bootstrap replicates for intervals and errors.
        matched_draws: draws of the matched comparison.
        seed: seed of every random choice (bootstrap, rotations, matched draws).
        overwrite: replace an existing ``out``.
        progress: show a rich progress bar.
        report: write figures + index.html (needs matplotlib).
        group_col: catalogue column naming the object each image shows (several projections,
            snapshots or repeated insertions of one simulated galaxy, e.g. ``galaxy`` from
            ``morphllr mock --repeat``): intervals and errors then resample groups, not images.
            A set without the column is resampled per image, with a note.
        devices: processes (CPU) or GPUs per node, as ``morphllr train --devices``.
        accelerator: "auto", "cpu", "cuda" / "gpu"; None: where the models are for one process, else "auto".
        num_nodes: nodes (with a launcher, or NODE_RANK / MASTER_ADDR / MASTER_PORT on every node).
        threads: CPU threads per process (None: automatic; several processes share the idle cores).

    Returns:
        a :class:`CompareResult` (None on the ranks other than 0 of a run joined from a launcher).
    """
    from morphllr import distributed

    if maps not in ("gallery", "all"):
        raise MorphllrError(f"--maps {maps!r}: choose 'gallery' or 'all'")
    if rotations < 0 or batch_size < 1 or gallery_size < 0:
        raise MorphllrError("--rotations, --batch-size and --gallery must be non-negative (batch size >= 1)")
    if not (isinstance(reference, tuple) and len(reference) == 2):
        raise MorphllrError("reference: give (name, set), e.g. ('SDSS', 'sdss_test.h5')")
    sets = dict(sets or {})
    _check_names([reference[0], *sets])
    if reference[0] in sets:
        raise MorphllrError(f"set name {reference[0]!r} is used twice; give every set its own NAME=")
    if group_col is not None and (not isinstance(group_col, str) or not group_col.strip()):
        raise MorphllrError(f"--group-col {group_col!r}: give a catalogue column name, e.g. galaxy")
    plan = distributed.resolve(devices, accelerator, num_nodes)
    obs_side, arch_side = load_side(obs, "--obs"), load_side(arch, "--arch")
    _check_models(obs_side, arch_side)
    specs = [(reference[0], reference[1]), *sets.items()]
    with _opened_sets(specs) as opened:
        for s in opened:
            _check_set(s, obs_side.members[0])
        options = dict(out=out, rotations=rotations, maps=maps, batch_size=batch_size, gallery_size=gallery_size,
                       n_boot=n_boot, matched_draws=matched_draws, seed=seed, overwrite=overwrite,
                       progress=progress, report=report, group_col=group_col)
        result = distributed.run_sharded(_compare_job, (obs_side, arch_side, opened, reference[0]), options,
                                         plan=plan, threads=threads)
    return result


def _compare_job(ctx, obs_side: Side, arch_side: Side, opened: list[OpenedSet], reference: str, *, out,
                 rotations: int, maps: str, batch_size: int, gallery_size: int, n_boot: int, matched_draws: int,
                 seed: int, overwrite: bool, progress: bool, report: bool,
                 group_col: str | None) -> CompareResult | None:
    """One rank of :func:`compare`: score its shards; rank 0 gathers, re-scores the gallery and writes."""
    from morphllr.atomic import atomic_dir
    from morphllr.distributed import models_on

    obs_model = obs_side.members[0]
    t0 = time.perf_counter()
    scorers = (_Scorer(obs_side, ctx.threads), _Scorer(arch_side, ctx.threads))
    writes = out is not None and ctx.is_main
    with models_on(ctx.device, [*obs_side.members, *arch_side.members]), \
            (atomic_dir(out, overwrite=overwrite) if writes else _nullfolder()) as folder:
        results = _score_all(opened, scorers, folder if maps == "all" else None, batch_size=batch_size,
                             rotations=rotations, progress=progress and ctx.is_main, seed=seed, ctx=ctx,
                             gather_maps=maps == "all" and out is not None)
        ctx.done()  # the other ranks are finished; rank 0 computes and writes alone
        if not ctx.is_main:
            return None
        ref_cut = float(np.quantile(results[reference].llr, OUTLIER_QUANTILE))
        for s in opened:
            _fill_gallery(results[s.name], s, scorers, ref_cut, gallery_size)
        timing = {"forward_s": scorers[0].seconds + scorers[1].seconds, "scoring_s": time.perf_counter() - t0,
                  "forward_passes_per_batch": len(obs_side) + len(arch_side)}
        group_notes = _attach_groups(results, group_col) + side_notes(obs_side, "--obs") \
            + side_notes(arch_side, "--arch")
        notes = merge_notes([note for r in results.values() for note in r.notes] + group_notes, results)
        summary = _summary(results, reference, ref_cut, n_boot, matched_draws, seed, notes,
                           sides=(obs_side, arch_side), group_col=group_col)
        summary.update(models={"obs": obs_side.paths[0] if len(obs_side) == 1 else obs_side.paths,
                               "arch": arch_side.paths[0] if len(arch_side) == 1 else arch_side.paths,
                               "head": _config_value(obs_model.config, "head")},
                       sources={s.name: s.label for s in opened}, rotations=rotations, timing=timing)
        guards(results, reference, summary, notes, obs_side, arch_side, tuple(opened[0].source.shape[1:]))
        result = CompareResult(reference=reference, sets=results, summary=summary,
                               ranking=summary["ranking"], notes=notes,
                               out=Path(out) if out is not None else None, timing=timing)
        timing["processes"] = ctx.world
        if folder is not None:
            _write_outputs(result, folder, report)
        timing["total_s"] = time.perf_counter() - t0
    return result


def _score_all(opened: list[OpenedSet], scorers: tuple[_Scorer, _Scorer], maps_folder: Path | None, *,
               batch_size: int, rotations: int, progress: bool, seed: int, ctx=None,
               gather_maps: bool = False) -> dict[str, SetResult]:
    """Stream every set through both models (one progress bar over all images; rank 0 only)."""
    obs_model = scorers[0].model
    discrete = str(_config_value(obs_model.config, "head")).startswith("discretized")
    maps_writer = _MapsWriter(maps_folder / "maps.h5" if maps_folder is not None else None)
    results: dict[str, SetResult] = {}
    try:
        with _progress(progress, sum(len(s.source) for s in opened)) as bar:
            for k, s in enumerate(opened):
                res = _score_set(s, scorers, batch_size, rotations, discrete, obs_model.preprocessing,
                                 maps_writer, seed, k, lambda n, _n=s.name: bar.advance(n, _n), ctx=ctx,
                                 gather_maps=gather_maps)
                if res is not None:
                    results[s.name] = res
    finally:
        maps_writer.close()
    return results


def _summary(results: dict[str, SetResult], reference: str, ref_cut: float, n_boot: int, matched_draws: int,
             seed: int, notes: list[str], sides: tuple[Side, Side] | None = None,
             group_col: str | None = None) -> dict:
    """The content of summary.json (statistics only; ``notes`` collects what was skipped)."""
    per_set = _set_summaries(results, reference, n_boot, seed, ref_cut)
    ranking = sorted(per_set, key=lambda n: per_set[n]["mean_llr"], reverse=True)
    summary = {
        "reference": reference,
        "ranking": ranking,
        "sets": per_set,
        "mass_panels": _mass_panels(results, reference, n_boot, seed, notes),
        "matched": _matched(results, reference, matched_draws, seed, notes),
        "outlier_threshold_llr": ref_cut,
        "identity": "E_q[LLR] = KL(q||p_arch) - KL(q||p_obs); higher = closer to the observations",
        "group_col": group_col,
        "notes": notes,
    }
    names = (sides[0].names, sides[1].names) if sides is not None else (["0"], ["0"])
    per_set_extra, top = model_variance(results, reference, ranking, per_set, names, n_boot, seed, notes)
    for name, extra in per_set_extra.items():
        per_set[name].update(extra)
    summary.update(top)
    return summary


# --------------------------------------------------------------------------- groups and model variance
#: ci95_total / delta_llr_ci95_total need this many members on each side (fewer: null).
MIN_MEMBERS_TOTAL = 3
#: share of model pairs whose ΔLLR must have the ensemble's sign for a difference to count as stable
STABLE_SIGN_SHARE = 0.95
STABILITY_RULE = (
    "stable: the set's ΔLLR against the reference (paired over the shared galaxies when the two sets show the "
    "same galaxies, else the difference of the means) survives retraining when |ΔLLR| >= 2 sqrt(err^2 + "
    "model_std^2) (err = galaxy-bootstrap error of ΔLLR, model_std = spread of ΔLLR over the model pairs) and "
    "ΔLLR_ij has the sign of ΔLLR for at least 95 % of the model pairs ij")
BOOTSTRAP_METHOD = {
    "ci95": "percentile bootstrap of the set's mean LLR over images (over groups with group_col); models fixed",
    "ci95_total": "galaxies (groups) and model members: the ensemble mean's variance = the galaxy-bootstrap "
                  "variance (one galaxy resample for all members) + var_obs / K_obs + var_arch / K_arch (between-"
                  "member variances, ddof=1), with Student's t on Welch-Satterthwaite degrees of freedom (few "
                  "members: a percentile bootstrap over 3 members would cover ~80 %); the reported interval is its "
                  "hull with the galaxy-only interval and ci95, so it is never narrower than ci95",
    "delta_llr_ci95_total": "the same for ΔLLR vs the reference (each member's ΔLLR: the same models score both "
                            "sets); paired over shared galaxies where the sets show the same galaxies, else the two "
                            "sets' galaxies resampled independently; hull with delta_llr_ci95",
    "model_std": "sqrt(var_obs + var_arch) of the per-member contributions to the paired ΔLLR: how far one "
                 "retrained model pair's ΔLLR moves (the K_obs x K_arch pair values share members, so their "
                 "plain std would understate it by ~sqrt(K / (K + 1)))",
}


def _attach_groups(results: dict[str, SetResult], group_col: str | None) -> list[str]:
    """Set ``res.groups`` from the catalogue column ``group_col``; notes for sets without it."""
    notes: list[str] = []
    if group_col is None:
        return notes
    for name, res in results.items():
        cat = res.catalog
        col = None
        if cat is not None:
            col = next((c for c in cat.colnames if c.lower() == group_col.lower()), None)
        if col is None or cat[col].ndim != 1:
            notes.append(f"{name}: no catalogue column {group_col!r} (--group-col), so its intervals resample "
                         "images, treating every image as an independent galaxy")
            continue
        values = np.ma.asarray(cat[col])
        labels = np.asarray([x.decode() if isinstance(x, bytes) else str(x) for x in np.ma.filled(values)],
                            dtype=object)
        masked = np.ma.getmaskarray(values)
        # a blank label is its own object, in this set only (never "shared" with another set's blank row)
        labels[masked] = [f"<{name}: blank {group_col} row {i}>" for i in np.flatnonzero(masked)]
        res.groups = labels.astype(str)
        n_groups = len(np.unique(res.groups))
        if n_groups < MIN_SET_SIZE:
            raise MorphllrError(f"{name}: all its images belong to {n_groups} {group_col} group; an interval over "
                                f"groups needs at least {MIN_SET_SIZE} (one group gives a zero-width interval); "
                                "add galaxies or drop --group-col")
        if n_groups < 10:
            notes.append(f"{name}: only {n_groups} {group_col} groups; intervals over so few groups are rough")
    if any(r.groups is not None for r in results.values()):
        notes.append(f"--group-col {group_col}: ci95, ΔLLR errors, the sky ratio interval and the model-variance "
                     "intervals resample groups; AUROC, KS (and its p-value) and the matched ΔLLR still treat "
                     "images as independent")
    return notes


def _pair_keys(res: SetResult, name: str, use_groups: bool) -> np.ndarray | None:
    """Galaxy key of every image for pairing sets, or None when the set has no catalogue ids.

    Keys are the group labels (when both sets have ``group_col``), else the catalogue ids
    with a leading ``"<set name>-"`` removed when every id carries it (the demo's
    ``sim-good-000012`` and ``observed-test-000012`` are one galaxy).
    """
    if use_groups:
        return np.asarray(res.groups, dtype=str)
    if res.catalog is None or "id" not in res.catalog.colnames:
        return None
    ids = [x.decode() if isinstance(x, bytes) else str(x) for x in res.ids]
    prefix = f"{name}-"
    if ids and all(i.startswith(prefix) and len(i) > len(prefix) for i in ids):
        return np.asarray([i[len(prefix):] for i in ids], dtype=str)
    if ids and all(i.isdigit() for i in ids):
        return None  # plain running numbers (0, 1, 2 ...) of two unrelated sets name no galaxy
    return np.asarray(ids, dtype=str)


def _key_means(values: np.ndarray, keys: np.ndarray, shared: np.ndarray) -> np.ndarray:
    """``(K, S)`` mean of each row of ``values (K, N)`` over the images of each shared key."""
    pos = np.clip(np.searchsorted(shared, keys), 0, len(shared) - 1)
    inside = shared[pos] == keys
    counts = np.bincount(pos[inside], minlength=len(shared)).astype(np.float64)
    sums = np.stack([np.bincount(pos[inside], row[inside], len(shared)) for row in values])
    return sums / counts


def shared_galaxies(res: SetResult, ref: SetResult, name: str, ref_name: str) -> tuple | None:
    """How ``res`` and ``ref`` pair up, or None when they do not show the same galaxies.

    Two sets are paired when they have the same galaxy keys (:func:`_pair_keys`; plain running
    numbers as ids name no galaxy), at least :data:`MIN_SET_SIZE` of them.

    Returns:
        ``(keys of res, keys of ref, sorted shared keys)`` or None.
    """
    use_groups = res.groups is not None and ref.groups is not None
    ks, kr = _pair_keys(res, name, use_groups), _pair_keys(ref, ref_name, use_groups)
    if ks is None or kr is None:
        return None
    us, ur = np.unique(ks), np.unique(kr)
    # the same galaxies: equal key sets (a subset of a larger reference would be a biased sample of it)
    if us.size < MIN_SET_SIZE or not np.array_equal(us, ur):
        return None
    return ks, kr, us


def _units(res: SetResult) -> tuple[np.ndarray, np.ndarray]:
    """Per-unit (group, or image) sums of every member's log p, obs rows first, and the unit sizes."""
    logp = np.vstack([res.member_logp["obs"], res.member_logp["arch"]])
    if res.groups is None:
        return logp, np.ones(logp.shape[1])
    return stats.group_sums(logp, res.groups)


def _by_pair(obs_values: np.ndarray, arch_values: np.ndarray) -> np.ndarray:
    """``(K_obs, K_arch)`` table of obs_values[i] - arch_values[j]."""
    return np.asarray(obs_values, dtype=np.float64)[:, None] - np.asarray(arch_values, dtype=np.float64)[None, :]


def model_variance(results: dict[str, SetResult], reference: str, ranking: list[str], per_set: dict,
                   names: tuple[list[str], list[str]], n_boot: int, seed: int,
                   notes: list[str]) -> tuple[dict[str, dict], dict]:
    """How far each number survives retraining: per-pair means, model spread, hierarchical intervals.

    With K_obs p_obs and K_arch p_arch members, LLR_ij = log p_obs,i - log p_arch,j for all
    pairs comes from the per-member log p (``SetResult.member_logp``).  The absolute LLR
    level moves between seeds while the order need not, so the spread is measured on the
    paired ΔLLR against the reference: per shared galaxy where the two sets show the same
    galaxies (:func:`shared_galaxies`), else as the difference of the two sets' means.

    Args:
        results: the scored sets.
        reference: the reference set's name.
        ranking: set names, best first (the ensemble ranking).
        per_set: summary["sets"] so far (``ci95``, ``delta_llr``, ``delta_llr_err`` are read).
        names: member names of the obs and the arch side.
        n_boot: bootstrap replicates.
        seed: seed of the resampling.
        notes: report notes (the single-pair and too-few-members notes are added here).

    Returns:
        ``(per-set additions, top-level additions)`` for summary.json (see ARCHITECTURE.md).
    """
    k_obs, k_arch = len(names[0]), len(names[1])
    n_pairs = k_obs * k_arch
    with_total = k_obs >= MIN_MEMBERS_TOTAL and k_arch >= MIN_MEMBERS_TOTAL
    if n_pairs == 1:
        notes.append("model variance is not measured: one p_obs and one p_arch model give one model pair, so every "
                     "interval covers galaxy sampling only and says nothing about whether the ranking survives "
                     "retraining; train each model with several seeds (`morphllr train --seeds`) and compare the "
                     "ensembles to measure it")
    elif not with_total:
        notes.append(f"ci95_total and delta_llr_ci95_total need at least {MIN_MEMBERS_TOTAL} models per side "
                     f"(have {k_obs} p_obs, {k_arch} p_arch): null; model_std and the stability mark use the "
                     f"{n_pairs} model pairs")
    ref = results[reference]
    ref_units = _units(ref)
    ref_draws = stats.resample_member_means(*ref_units, n_boot, np.random.default_rng([seed, 7, 0]))
    ref_means = ref_units[0].sum(axis=1) / ref_units[1].sum()  # per-member mean over the reference's images
    extra: dict[str, dict] = {}
    means_by_pair: dict[str, np.ndarray] = {}
    for k, (name, res) in enumerate(results.items()):
        units = ref_units if name == reference else _units(res)
        member_means = units[0].sum(axis=1) / units[1].sum()
        table = _by_pair(member_means[:k_obs], member_means[k_obs:])
        means_by_pair[name] = table.ravel()
        e: dict[str, Any] = {"mean_llr_by_pair": table.tolist(), "model_std": None, "sign_agreement": None,
                             "ci95_total": None, "delta_llr_pairing": None, "n_paired": 0,
                             "delta_llr_paired": None, "delta_llr_paired_err": None, "delta_llr_by_pair": None,
                             "delta_llr_ci95": None, "delta_llr_ci95_total": None, "stable": None}
        draws = ref_draws if name == reference else stats.resample_member_means(
            *units, n_boot, np.random.default_rng([seed, 7, k]))
        if with_total:
            iv = stats.hierarchical_intervals(draws[:, :k_obs], draws[:, k_obs:], 0.95)
            e["ci95_total"] = stats.hull(iv["total"], per_set[name]["ci95"])
        extra[name] = e
        if name == reference:
            continue
        pairing = shared_galaxies(res, ref, name, reference)
        if pairing is not None:
            ks, kr, shared = pairing
            logp_set = np.vstack([res.member_logp["obs"], res.member_logp["arch"]])
            logp_ref = np.vstack([ref.member_logp["obs"], ref.member_logp["arch"]])
            diff = _key_means(logp_set, ks, shared) - _key_means(logp_ref, kr, shared)  # (K_obs + K_arch, S)
            d_means = diff.mean(axis=1)
            d_draws = stats.resample_member_means(diff, np.ones(diff.shape[1]), n_boot,
                                                  np.random.default_rng([seed, 9, k]))
            e.update(delta_llr_pairing="paired", n_paired=int(shared.size))
        else:
            d_means = member_means - ref_means
            d_draws = draws - ref_draws
            e["delta_llr_pairing"] = "unpaired"
        deltas = _by_pair(d_means[:k_obs], d_means[k_obs:])
        delta = float(deltas.mean())
        iv = stats.hierarchical_intervals(d_draws[:, :k_obs], d_draws[:, k_obs:], 0.95)
        e["delta_llr_by_pair"] = deltas.tolist()
        e["delta_llr_ci95"] = iv["galaxy"]
        if pairing is not None:
            e["delta_llr_paired"], e["delta_llr_paired_err"] = delta, iv["galaxy_std"]
            err = iv["galaxy_std"]
        else:
            delta, err = per_set[name]["delta_llr"], per_set[name]["delta_llr_err"]
        if with_total:
            e["delta_llr_ci95_total"] = iv["total"]
        if n_pairs > 1:
            # the spread of one retrained pair's answer: var_obs + var_arch (the K^2 pair values share members,
            # so their plain std would be too small by ~sqrt(K / (K + 1)))
            model_std = float(np.sqrt(sum(stats.member_variance(d_means[:k_obs], d_means[k_obs:]))))
            share = stats.sign_agreement(deltas, delta)
            e.update(model_std=model_std, sign_agreement=share,
                     stable=bool(abs(delta) >= 2.0 * math.hypot(err, model_std) and share >= STABLE_SIGN_SHARE))
    top: dict[str, Any] = {"n_models": {"obs": k_obs, "arch": k_arch}, "model_pairs": n_pairs,
                           "model_names": {"obs": list(names[0]), "arch": list(names[1])},
                           "ranking_agreement": None, "ranking_by_pair": None,
                           "stability_rule": STABILITY_RULE, "bootstrap": BOOTSTRAP_METHOD}
    if n_pairs > 1:
        matrix = np.stack([means_by_pair[n] for n in ranking], axis=1)  # (pairs, sets) in ranking order
        agreement, per_pair = stats.ranking_agreement(matrix, range(len(ranking)))
        top["ranking_agreement"] = agreement if len(ranking) > 1 else None
        pairs = [(o, a) for o in names[0] for a in names[1]]
        top["ranking_by_pair"] = [
            {"obs": o, "arch": a, "ranking": [ranking[s] for s in np.argsort(-matrix[p], kind="stable")],
             "agreement": float(per_pair[p]) if len(ranking) > 1 else None}
            for p, (o, a) in enumerate(pairs)]
    return extra, top


def guards(results: dict[str, SetResult], reference: str, summary: dict, notes: list[str], obs: Side, arch: Side,
           shape: tuple[int, int, int]) -> list[str]:
    """The warnings of a comparison (:mod:`morphllr.domain`), into ``summary`` and each SetResult.

    ``summary["warnings"]`` (always a list: the models' warnings, then every set's) and
    ``summary["sets"][name]["warnings"]`` (that set's), ``summary["sets"][name]["domain"]`` (the
    numbers each guard judged), ``summary["provenance"]`` (what each model was trained on) and
    ``summary["domain_rules"]``; models lacking the recorded fields add a note to ``notes``.
    Each top-level warning is also issued as a :class:`~morphllr.errors.MorphllrWarning`.

    Returns:
        the top-level warnings.
    """
    import warnings as _warnings

    from morphllr import domain
    from morphllr.errors import MorphllrWarning

    sides = [("obs", "p_obs", obs.names, [domain.domain_record(m) for m in obs.members]),
             ("arch", "p_arch", arch.names, [domain.domain_record(m) for m in arch.members])]
    top: list[str] = []
    top += domain.recipe_warnings(obs.members[0].preprocessing, arch.members[0].preprocessing)
    for label, side in (("p_obs (--obs)", obs), ("p_arch (--arch)", arch)):
        found, side_notes_ = domain.convergence_findings(label, side.names, side.members)
        top += found
        notes += side_notes_ + domain.domain_notes(label, side.names, side.members)
    checked = any(any(r is not None for r in recs) for *_, recs in sides)
    for name, res in results.items():
        entry = summary["sets"][name]
        own: list[str] = []
        if name == reference:
            own += domain.reference_warning(name, entry["mean_llr"])
        own += domain.small_sample_warning(name, int(min(entry["n"], entry.get("n_groups") or entry["n"])))
        values = res.domain_values or {}
        sky = values.get("sky_logp") or {}
        n_sky = res.scores.get("n_sky_pixels")
        re = None
        if res.catalog is not None:
            col = find_column(res.catalog, RE_PIX_COLUMNS)
            zoom = (obs.members[0].preprocessing or {}).get("zoom")
            if col is not None and zoom is not None:
                re = catalog_values(res.catalog, col) * float(zoom)
        stat = {side: domain.set_statistics(res.member_logp[side], sky.get(side), n_sky, values.get("area"), re, shape,
                                            n_valid=values.get("n_valid"))
                for side in ("obs", "arch")}
        judged, found = domain.domain_check(name, stat, sides, res.sky_mask) if checked else ({}, [])
        own += found
        own += masked_share_warning(name, reference, summary["sets"])
        if judged.get("sky_not_comparable"):
            notes.append(f"{name}: its empty sky comes from {res.sky_mask} but the training record of "
                         f"{', '.join(judged['sky_not_comparable'])} used the other mask, so the sky guard skips them")
        entry["domain"] = judged or None
        entry["warnings"] = own
        res.warnings = list(own)
        top += own
    masked = [name for name in results if summary["sets"][name].get("masked_share", 0.0) > 0]
    if masked:
        notes.append(f"masked pixels ({', '.join(masked)}): each LLR is summed over the unmasked pixels only "
                     "(masked pixels stay context for the later pixels' conditionals), so sets with different "
                     "masked shares sum different numbers of terms; compare them per pixel (llr_per_pixel, "
                     "mean_llr_per_pixel); scores.csv has n_masked_pixels and masked_share")
    summary["warnings"] = top
    summary["provenance"] = {"obs": domain.provenance("p_obs", obs.names, obs.members, obs.paths),
                             "arch": domain.provenance("p_arch", arch.names, arch.members, arch.paths)}
    summary["domain_rules"] = domain.RULES
    for text in top:
        _warnings.warn(text, MorphllrWarning, stacklevel=3)
    return top


def masked_share_warning(name: str, reference: str, per_set: dict) -> list[str]:
    """A warning when set ``name``'s mean masked share differs from the reference's by more than
    :data:`MASKED_SHARE_TOLERANCE` (its LLR then sums a different number of pixels' terms)."""
    if name == reference:
        return []
    share = float(per_set[name].get("masked_share") or 0.0)
    ref_share = float(per_set[reference].get("masked_share") or 0.0)
    if abs(share - ref_share) <= MASKED_SHARE_TOLERANCE:
        return []
    return [f"{name}: {share:.1%} of its model pixels are masked against {ref_share:.1%} in the reference "
            f"{reference} (more than {MASKED_SHARE_TOLERANCE:.0%} apart); its LLR sums the terms of "
            f"{'fewer' if share > ref_share else 'more'} pixels, so compare it per pixel (llr_per_pixel, "
            "mean_llr_per_pixel), not by the mean LLR"]


def _write_outputs(result: CompareResult, folder: Path, report: bool) -> None:
    """Tables, figures, index.html and summary.json into the (temporary) report folder."""
    _write_scores(result.sets, folder, result.notes)
    if report:
        from morphllr.report.html import write_report

        write_report(result, folder)
    with open(folder / "summary.json", "w") as fh:
        json.dump(_jsonable(result.summary), fh, indent=2)
    _write_summary_csv(result.summary, folder / "summary.csv")
    if result.summary["mass_panels"]:
        _write_panels_csv(result.summary, folder / "mass_panels.csv")


def merge_notes(notes: list[str], set_names: Iterable[str]) -> list[str]:
    """Fold per-set notes with the same text ("A: no mask", "B: no mask" -> "A, B: no mask").

    Args:
        notes: notes in order; per-set ones start with "<set name>: ".
        set_names: the set names.

    Returns:
        the merged notes, first occurrence order kept.
    """
    grouped: dict[str, list[str]] = {}
    names = sorted(set_names, key=len, reverse=True)  # longest first so "sim" does not eat "sim2"
    for note in notes:
        owner = next((n for n in names if note.startswith(f"{n}: ")), None)
        text = note[len(owner) + 2:] if owner else note
        grouped.setdefault(text, [])
        if owner:
            grouped[text].append(owner)
    return [f"{', '.join(owners)}: {text}" if owners else text for text, owners in grouped.items()]


@contextlib.contextmanager
def _opened_sets(specs: list[tuple[str, Any]]) -> Iterator[list[OpenedSet]]:
    """Open every set; close their files (HDF5 handles) however the comparison ends."""
    opened: list[OpenedSet] = []
    try:
        for name, spec in specs:
            opened.append(_open_set(name, spec))
        yield opened
    finally:
        for s in opened:
            close = getattr(s.source, "close", None)
            if callable(close):
                close()


class _nullfolder:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
