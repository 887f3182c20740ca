"""Log-likelihoods of images under a trained PixelCNN, streamed in batches.

``log_likelihood(model, images)`` returns log p(x) in nats for every image (float64),
or the per-pixel map log p(x_ij | x_<ij) with ``per_pixel=True``.  Images are read
batch by batch from any :class:`~morphllr.data.inputs.ImageSource`, so memory stays flat
for any number of images; only the per-image sums are kept unless maps are asked for.

Speed on CPUs: inference mode, channels-last tensors (oneDNN's preferred layout),
bf16 autocast where the CPU has native bf16 (the head's log-probabilities are still
computed in fp32 by the model, and sums are accumulated here in float64), and a
default batch size that keeps the largest activation under glibc's 32 MiB mmap
threshold so buffers are recycled instead of page-faulted in on every batch.

Masked pixels: :func:`score_to_files` drops the own terms of an ImageSet's masked pixels
(``/mask_model``, 1 = excluded: user-masked or beyond the image edge, holding sky noise) from
each image's log p; the images are scored unchanged, so those pixels stay context for the
later pixels' conditionals.  :func:`log_likelihood` and :func:`iter_log_prob_maps` return
every pixel's term (the maps are whole; apply the mask yourself).

Each model is made ready once per run (:class:`ModelScorer`: CPU threads, channels-last
layout, one check that the images fit it), then scored batch by batch; ``compare`` uses the
same scorer.  :func:`record_domain` scores a model's own validation (or training) images for
the domain record :mod:`morphllr.domain` judges scored sets by.
"""

from __future__ import annotations

import contextlib
import csv
import warnings
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from morphllr import distributed, domain, runtime
from morphllr.atomic import atomic_file, claims
from morphllr.data.pixels import excluded_pixels, model_grid_mask
from morphllr.data.inputs import ImageSource, check_batch, open_images
from morphllr.data.preprocess import check_compatible
from morphllr.errors import MorphllrError, MorphllrWarning
from morphllr.model.heads import bits_per_dim, is_discrete_head
from morphllr.model.ensemble import Ensemble
from morphllr.model.pixelcnn import NET_INPUT_LIMIT


def _unpack(model: Any):
    """(net, config, preprocessing, name) from a LoadedModel or a bare PixelCNN."""
    net = getattr(model, "net", model)
    config = getattr(model, "config", None) or getattr(net, "config", None)
    if config is None or not hasattr(net, "log_prob_pixels"):
        raise MorphllrError(
            f"model: expected a LoadedModel (morphllr.load_model) or a PixelCNN, got {type(model).__name__}")
    preprocessing = dict(getattr(model, "preprocessing", None) or {})
    name = str(getattr(model, "path", "model"))
    return net, config, preprocessing, name


def default_batch_size(config) -> int:
    """Batch size keeping the largest activation below runtime.ACTIVATION_BUDGET_BYTES.

    The widest tensor in PixelCNN++ is the concatenated-ELU output at full resolution:
    2 x nr_filters channels of H x W float32 values per image.

    Args:
        config: the network's PixelCNNConfig.

    Returns:
        images per batch (1..256).
    """
    per_image = 2 * int(config.nr_filters) * int(config.height) * int(config.width) * 4
    return runtime.batch_size_for_budget(per_image)


def check_images_fit(source: ImageSource, config, model_preprocessing: dict, model_name: str = "model") -> None:
    """Refuse images whose shape or preprocessing differs from the model's training data.

    Args:
        source: the images.
        config: the model's PixelCNNConfig.
        model_preprocessing: the model's ``preprocessing`` dict.
        model_name: label of the model for the message.

    Returns:
        None; raises MorphllrError.
    """
    _, c, h, w = source.shape
    want = (int(config.in_channels), int(config.height), int(config.width))
    if (c, h, w) != want:
        raise MorphllrError(
            f"{source.name}: images are {c}x{h}x{w} (channels x height x width) but {model_name} was trained on "
            f"{want[0]}x{want[1]}x{want[2]}; prepare them with the model's preprocessing (same cutout, zoom, bands)")
    set_prep = dict(getattr(source, "preprocessing", None) or {})
    if model_preprocessing and set_prep:
        check_compatible(model_preprocessing, set_prep, f"model {model_name} vs set {source.name}")


def check_input_range(batch: np.ndarray, config, name: str, model_name: str = "model", start: int = 0) -> None:
    """Refuse pixels beyond the network's input limit (they would be clamped, giving wrong numbers).

    A continuous head sees ``(x - input_shift) / input_scale``, clamped to
    :data:`morphllr.model.pixelcnn.NET_INPUT_LIMIT` network units; a pixel that far out is not in the
    units the model was trained on (e.g. linear flux given to a model of stretched images).

    Args:
        batch: float32 (B, C, H, W) finite pixels.
        config: the model's PixelCNNConfig.
        name: the images' name for the message.
        model_name: the model's name for the message.
        start: index of the batch's first image in the whole set.

    Returns:
        None; raises MorphllrError naming the images and the model's valid range.
    """
    if is_discrete_head(getattr(config, "head", "")):
        return  # integer values 0..255, checked by check_batch
    shift = float(getattr(config, "input_shift", 0.0))
    scale = float(getattr(config, "input_scale", 1.0))
    lo, hi = shift - NET_INPUT_LIMIT * scale, shift + NET_INPUT_LIMIT * scale
    outside = (batch < lo) | (batch > hi)
    if outside.any():
        images = np.flatnonzero(outside.reshape(len(batch), -1).any(axis=1)) + start
        shown = ", ".join(str(int(i)) for i in images[:5]) + (" ..." if len(images) > 5 else "")
        worst = float(batch[outside].flat[np.argmax(np.abs(batch[outside]))])
        raise MorphllrError(
            f"{name}: image(s) {shown} hold values like {worst:g}, beyond the input range of {model_name} "
            f"([{lo:.4g}, {hi:.4g}] = {NET_INPUT_LIMIT:g} of its input scale around its training data); these "
            "images are not in the model's units - prepare them with the model's preprocessing "
            "(`morphllr prepare --like MODEL_DIR`)")


def _check_scores(maps: np.ndarray, name: str, model_name: str, start: int) -> None:
    """Refuse NaN/inf log-likelihoods instead of reporting them as results."""
    finite = np.isfinite(maps)
    if not finite.all():
        images = np.flatnonzero(~finite.reshape(len(maps), -1).all(axis=1)) + start
        shown = ", ".join(str(int(i)) for i in images[:5]) + (" ..." if len(images) > 5 else "")
        raise MorphllrError(
            f"{name}: {model_name} gives NaN/inf log-likelihoods for image(s) {shown}; the model is broken (retrain "
            "it, e.g. with --precision 32 or a lower --lr) or these images are far from its training data")


def _device_of(net) -> torch.device:
    for p in net.parameters():
        return p.device
    return torch.device("cpu")


@contextlib.contextmanager
def _eval_mode(net) -> Iterator[None]:
    was_training = net.training
    net.eval()
    try:
        yield
    finally:
        net.train(was_training)


def _is_ensemble(model: Any) -> bool:
    return isinstance(model, Ensemble)


class ModelScorer:
    """One model made ready to score, once: CPU threads and the channels-last layout are set up here.

    ``scorer(batch, start, bf16, images)`` gives the float32 ``(B, H, W)`` per-pixel log p (nats) of
    one model-input batch, its pixels checked against the network's input range and the result for
    NaN/inf (``images`` and ``start``, the batch's first image, name them in messages).  Whether the
    images fit the model is checked once per set (:meth:`check_fits`); score inside
    :meth:`evaluating` (the network in evaluation mode, restored after).
    """

    def __init__(self, model: Any, threads: int | None):
        self.net, self.config, self.preprocessing, self.name = _unpack(model)
        self.device = _device_of(self.net)
        if self.device.type == "cpu":
            runtime.configure_cpu(threads)
        self.net = self.net.to(memory_format=torch.channels_last)

    def check_fits(self, source: ImageSource) -> None:
        """Refuse a source whose image shape or preprocessing differs from the model's (:func:`check_images_fit`)."""
        check_images_fit(source, self.config, self.preprocessing, self.name)

    def evaluating(self) -> contextlib.AbstractContextManager:
        """The network in evaluation mode for the ``with`` block."""
        return _eval_mode(self.net)

    def __call__(self, batch: np.ndarray, start: int, bf16: bool | None, images: str) -> np.ndarray:
        check_input_range(batch, self.config, images, self.name, start)
        # inference mode only around the forward pass: a generator must not leave it
        # switched on in the caller's code between batches
        with torch.inference_mode(), runtime.autocast_context(self.device, bf16):
            x = torch.from_numpy(batch).to(self.device).contiguous(memory_format=torch.channels_last)
            maps = self.net.log_prob_pixels(x).float().cpu().numpy()
        _check_scores(maps, images, self.name, start)
        return maps


def _ready(members: list, source: ImageSource, threads: int | None) -> list[ModelScorer]:
    """A ModelScorer per member, each checked once against ``source``."""
    scorers = [ModelScorer(m, threads) for m in members]
    for scorer in scorers:
        scorer.check_fits(source)
    return scorers


def _iter_side_maps(sides: list, source: ImageSource, batch_size: int | None, bf16: bool | None, progress: bool,
                    threads: int | None) -> Iterator[list[np.ndarray]]:
    """Per batch, each side's float32 (K, B, H, W) maps, one per member: every batch read once for all models."""
    members = [list(side.members) if _is_ensemble(side) else [side] for side in sides]
    scorers = [_ready(side, source, threads) for side in members]
    flat = [scorer for side in scorers for scorer in side]
    batch_size = int(batch_size) if batch_size else min(default_batch_size(s.config) for s in flat)
    if batch_size < 1:
        raise MorphllrError(f"--batch-size: must be at least 1, got {batch_size}")
    discrete = sorted({is_discrete_head(getattr(s.config, "head", None)) for s in flat})
    with contextlib.ExitStack() as modes, _progress(progress, len(source), source.name) as advance:
        for scorer in flat:
            modes.enter_context(scorer.evaluating())
        start = 0
        for batch in source.batches(batch_size):
            for kind in discrete:  # once per kind of head among the models
                check_batch(batch, source.name, kind, start)
            yield [np.stack([scorer(batch, start, bf16, source.name) for scorer in side]) for side in scorers]
            start += len(batch)
            advance(len(batch))


def iter_log_prob_maps(model: Any, source: Any, batch_size: int | None = None, *, bf16: bool | None = None,
                       progress: bool = False, threads: int | None = None) -> Iterator[np.ndarray]:
    """Yield per-pixel log-probability maps, one float32 array per batch, in order.

    Shape rule (as in :func:`log_likelihood`): a single model (LoadedModel or PixelCNN) gives (B, H, W);
    an :class:`~morphllr.model.ensemble.Ensemble` gives (K, B, H, W), one map per member in ``ensemble.names``
    order, even when K = 1.  Each batch is read once and run through every member.

    Args:
        model: LoadedModel, PixelCNN or Ensemble.
        source: ImageSource, path or float32 array (N, H, W) / (N, C, H, W).
        batch_size: images per forward pass; None picks :func:`default_batch_size`.
        bf16: use bf16 autocast; None means where the hardware supports it natively.
        progress: show a rich progress bar.
        threads: CPU threads (None: all usable cores).

    Returns:
        (yields) float32 maps of log p(x_ij | x_<ij) in nats, summed over channels.
    """
    for (maps,) in _iter_side_maps([model], open_images(source), batch_size, bf16, progress, threads):
        yield maps if _is_ensemble(model) else maps[0]


def log_likelihood(model: Any, images: Any, per_pixel: bool = False, batch_size: int | None = None,
                   progress: bool = False, *, bf16: bool | None = None, threads: int | None = None) -> np.ndarray:
    """log p(x) of every image under ``model``, in nats.

    Shape rule: a single model (LoadedModel, PixelCNN) gives (N,) (or (N, H, W) maps); an
    :class:`~morphllr.model.ensemble.Ensemble` (``morphllr.load_ensemble``) gives a leading member axis,
    (K, N) (or (K, N, H, W)), rows in ``ensemble.names`` order, always, also for K = 1 (a plain model
    folder loaded with ``load_ensemble``).  Row k equals ``log_likelihood(ensemble.members[k], images)``
    bit for bit (same batches); the member mean over axis 0 is the mean of log p, not the log of a
    mixture density.

    `images` given as a plain array (numpy, .npy/.npz, bare HDF5 dataset) is taken as already in
    the model's input space: no preprocessing record is checked, the caller vouches for it; pass
    an `ImageSet` to have its recorded preprocessing (input kind included) checked against the
    model's.

    An ImageSet's mask (``/mask_model``) is not applied here: every pixel's term is summed (and
    every pixel is in the maps); :func:`score_to_files` and ``compare`` drop masked pixels' terms.

    Args:
        model: LoadedModel (``morphllr.load_model``), PixelCNN, or Ensemble.
        images: float32 array (N, H, W) / (N, C, H, W), a path, or any ImageSource.
        per_pixel: return the per-pixel maps instead of per-image sums.
        batch_size: images per forward pass (None: automatic).
        progress: show a progress bar.
        bf16: bf16 autocast (None: automatic; False for exact fp32).
        threads: CPU threads (None: all usable cores).

    Returns:
        float64 array (N,) / (K, N) of log p(x), or (N, H, W) / (K, N, H, W) per-pixel log-probabilities.
    """
    source = open_images(images)
    _, _, h, w = source.shape
    n = len(source)
    lead = (len(model),) if _is_ensemble(model) else ()
    out = np.empty(lead + ((n, h, w) if per_pixel else (n,)), dtype=np.float64)
    start = 0
    for maps in iter_log_prob_maps(model, source, batch_size, bf16=bf16, progress=progress, threads=threads):
        stop = start + maps.shape[-3]
        if per_pixel:
            out[..., start:stop, :, :] = maps
        else:
            out[..., start:stop] = maps.astype(np.float64).sum(axis=(-2, -1))
        start = stop
    return out


# --------------------------------------------------------------------------- the LLR in one call
@dataclass
class LLRResult:
    """The log-likelihood ratio of images under two models, from one forward pass of each.

    Attributes:
        llr: float64 (N,) ``log p_obs(x) - log p_arch(x)`` in nats per image (higher = closer to the
            observations); for an ensemble side, log p is the mean over its members.
        logp_obs, logp_arch: float64 (N,) the two log-likelihoods in nats (member means for an ensemble).
        n_pixels: int (N,) model pixels summed per image (masked ones left out).
        maps: float32 (N, H, W) per-pixel LLR in nats (masked pixels NaN) with ``per_pixel=True``, else None.
    """

    llr: np.ndarray
    logp_obs: np.ndarray
    logp_arch: np.ndarray
    n_pixels: np.ndarray
    maps: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.llr)

    @property
    def llr_per_pixel(self) -> np.ndarray:
        """float64 (N,) LLR per summed model pixel, in nats (NaN for an image with every pixel masked)."""
        return np.where(self.n_pixels > 0, self.llr / np.maximum(self.n_pixels, 1), np.nan)


def llr(obs: Any, arch: Any, images: Any, per_pixel: bool = False, *, batch_size: int | None = None,
        bf16: bool | None = None, threads: int | None = None, progress: bool = False) -> LLRResult:
    """LLR(x) = log p_obs(x) - log p_arch(x) of every image, and its per-pixel maps, in one call.

    Each batch is read once and run once through every member of both models, so the maps come with
    the sums (``log_likelihood`` of each model, then again with ``per_pixel=True``, would take four
    passes).  An ImageSet's masked pixels (``/mask_model``) are left out of the sums, as in ``morphllr
    compare``; the images are scored whole, so those pixels stay context for later pixels.  Without a
    mask, ``llr`` equals ``log_likelihood(obs, x) - log_likelihood(arch, x)`` bit for bit (member means
    for ensembles) with the same batch size.

    Args:
        obs: p_obs: LoadedModel (``morphllr.load_model``), PixelCNN, or Ensemble (``morphllr.load_ensemble``).
        arch: p_arch, any of the same kinds; it must take the same image size and channels as ``obs``.
        images: an ImageSet (its recipe is checked against both models'), a path, an ImageSource, or a
            float32 array (N, H, W) / (N, C, H, W) already in the models' input space.
        per_pixel: also return the (N, H, W) per-pixel LLR maps.
        batch_size: images per forward pass (None: automatic).
        bf16: bf16 autocast (None: where the CPU supports it natively; False for exact fp32).
        threads: CPU threads (None: all usable cores).
        progress: show a progress bar.

    Returns:
        :class:`LLRResult` (``.llr``, ``.logp_obs``, ``.logp_arch``, ``.n_pixels``, ``.maps``).
    """
    source = open_images(images)
    n, _, h, w = source.shape
    mask = model_grid_mask(source)
    logp = np.empty((2, n), np.float64)
    n_pixels = np.full(n, h * w, np.int64)
    maps_out = np.empty((n, h, w), np.float32) if per_pixel else None
    start = 0
    for obs_maps, arch_maps in _iter_side_maps([obs, arch], source, batch_size, bf16, progress, threads):
        stop = start + obs_maps.shape[1]
        excluded = excluded_pixels(mask, start, stop)
        for side, maps in enumerate((obs_maps, arch_maps)):
            if excluded is not None:
                maps = np.where(excluded[None], np.float32(0), maps)
            logp[side, start:stop] = maps.astype(np.float64).sum(axis=(-2, -1)).mean(axis=0)
        if excluded is not None:
            n_pixels[start:stop] -= excluded.sum(axis=(1, 2))
        if per_pixel:
            part = (obs_maps.astype(np.float64).mean(axis=0) - arch_maps.astype(np.float64).mean(axis=0))
            maps_out[start:stop] = part if excluded is None else np.where(excluded, np.nan, part)
        start = stop
    return LLRResult(llr=logp[0] - logp[1], logp_obs=logp[0], logp_arch=logp[1], n_pixels=n_pixels, maps=maps_out)


# --------------------------------------------------------------------------- domain records
def record_domain(model: Any, source: Any, indices: Sequence[int] | None = None, *, images: str = "validation",
                  batch_size: int | None = None, threads: int | None = None, bf16: bool | None = False) -> dict:
    """The domain record of one model (:mod:`morphllr.domain`): its per-image statistics over ``indices`` of ``source``.

    Args:
        model: a LoadedModel or PixelCNN (one model; an ensemble member each on its own split).
        source: the training ImageSource (ImageSet for the sky and size statistics).
        indices: rows to use (default all), e.g. the validation split.
        images: which images these are ("validation" or "training"), recorded.
        batch_size: images per forward pass (None: automatic).
        threads: CPU threads.
        bf16: bf16 autocast (default exact fp32, as the recorded val bits/dim).

    Returns:
        the dict stored under ``metrics["domain"]``.
    """
    source = open_images(source)
    n, c, h, w = source.shape
    rows = np.arange(n) if indices is None else np.sort(np.asarray(indices, dtype=np.int64))
    scorer = _ready([model], source, threads)[0]
    batch_size = int(batch_size or default_batch_size(scorer.config))
    discrete = is_discrete_head(getattr(scorer.config, "head", None))
    reader = domain.SkyReader(source)
    logp = np.empty(len(rows))
    n_valid = np.full(len(rows), float(h * w))  # unmasked pixels
    sky_logp = np.full(len(rows), np.nan)
    n_sky = np.zeros(len(rows))
    area = np.full(len(rows), np.nan)
    with scorer.evaluating():
        for start in range(0, len(rows), batch_size):
            part = rows[start:start + batch_size]
            batch = source.read(part)
            check_batch(batch, source.name, discrete, start)
            maps = scorer(batch, start, bf16, source.name)
            stop = start + len(part)
            excluded = reader.excluded(part)
            if excluded is None:
                logp[start:stop] = maps.sum(axis=(1, 2), dtype=np.float64)
            else:  # masked pixels' own terms are not in the statistics (they stay context)
                logp[start:stop] = np.where(excluded, np.float32(0), maps).sum(axis=(1, 2), dtype=np.float64)
                n_valid[start:stop] = (~excluded).sum(axis=(1, 2))
            sky = reader.sky(part)  # never a masked pixel
            if sky is not None:
                sky_logp[start:stop] = np.where(sky, maps.astype(np.float64), 0.0).sum(axis=(1, 2))
                n_sky[start:stop] = sky.sum(axis=(1, 2))
            central = reader.central(part)
            if central is not None:
                area[start:stop] = central.sum(axis=(1, 2))
    re, _ = domain.re_model_pixels(reader.opened.catalog, source.preprocessing)
    with np.errstate(invalid="ignore", divide="ignore"):
        whole = domain.whole_bpd(logp, np.where(n_valid > 0, c * n_valid, np.nan))
    stats = {"whole_bpd": domain.describe(whole),
             "sky_bpd": domain.describe(domain.sky_bpd(sky_logp, n_sky, c)) if reader.kind else None,
             "size_area": domain.describe(area) if reader.opened.segmap is not None else None,
             "size_re": domain.describe(re[rows]) if re is not None else None}
    return {"version": domain.VERSION, "images": images, "n_images": int(len(rows)), "data": str(source.name),
            "sky_mask": reader.kind, "image_shape": [int(c), int(h), int(w)], "definition": domain.DEFINITION,
            "stats": stats}


def record_training_domain(net: Any, source: Any, val_idx: Sequence[int], train_idx: Sequence[int]) -> dict:
    """The record ``train`` writes into ``metrics["domain"]``: the validation images, else the training ones.

    Args:
        net: the trained PixelCNN (final weights).
        source: the training ImageSource.
        val_idx: validation rows (may be empty).
        train_idx: training rows (the same subsample the training bits/dim is measured on).
    """
    if len(val_idx):
        return record_domain(net, source, val_idx, images="validation")
    return record_domain(net, source, train_idx, images="training")


def rich_progress(description: str):
    """A rich progress bar with images/s, shared by scoring and the CLI.

    Args:
        description: text format for the left column (may use {task.description}).

    Returns:
        a rich Progress (use as a context manager).
    """
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)
    from rich.text import Text

    class ImagesPerSecond(ProgressColumn):
        def render(self, task):  # noqa: D102
            speed = task.finished_speed or task.speed
            return Text(f"{speed:,.0f} img/s" if speed else "- img/s")

    return Progress(TextColumn(description), BarColumn(), MofNCompleteColumn(), ImagesPerSecond(),
                    TimeElapsedColumn(), TimeRemainingColumn())


@contextlib.contextmanager
def _progress(enabled: bool, total: int, label: str):
    if not enabled:
        yield lambda k: None
        return
    with rich_progress("scoring {task.description}") as bar:
        task = bar.add_task(label, total=total)
        yield lambda k: bar.advance(task, k)


def image_ids(source: ImageSource) -> list:
    """Identifiers of the images: the catalogue ``id`` column of an ImageSet, else 0..N-1.

    Args:
        source: the images.

    Returns:
        list of N ids (str or int).
    """
    catalog = getattr(source, "catalog", None)
    try:
        if catalog is not None and "id" in catalog.colnames and len(catalog) == len(source):
            return [v.decode() if isinstance(v, bytes) else (v.item() if hasattr(v, "item") else v)
                    for v in catalog["id"]]
    except (AttributeError, TypeError):
        pass
    return list(range(len(source)))


def _score_inputs(arguments: dict) -> list:
    """What :func:`score_to_files` reads: the images and the model (an ensemble's folder and members)."""
    model = arguments["model"]
    return [model, *(getattr(model, "members", None) or []), arguments["images"]]


def _per_member(model: Any) -> bool:
    """Per-member columns for an ensemble folder or any ensemble of several models; a plain model: none."""
    return _is_ensemble(model) and (len(model) > 1 or model.index is not None)


def _score_outputs(arguments: dict) -> list:
    """The files :func:`score_to_files` writes; claimed only by the process that writes them (rank 0)."""
    if distributed.launched_rank() != 0:
        return []
    return [("--out", arguments["csv_path"]), ("--maps", arguments["maps_path"])]


@claims(_score_outputs, inputs=_score_inputs)  # before the model runs
def score_to_files(model: Any, images: Any, csv_path, *, maps_path=None, batch_size: int | None = None,
                   bf16: bool | None = None, threads: int | None = None, progress: bool = False,
                   overwrite: bool = False, devices: int | str = 1, accelerator: str | None = None,
                   num_nodes: int = 1) -> dict | None:
    """Score a set and write ``id, logp, bits_per_dim`` CSV (and optional HDF5 maps), atomically.

    Both outputs are claimed first (:func:`morphllr.atomic.claim_outputs`): an existing one needs
    ``overwrite``, neither may be the model or the images, and each is locked while it is written.

    An ensemble (an ensemble folder, or an Ensemble of several models) adds per-member columns:
    ``logp`` and ``bits_per_dim`` become the member means (mean of log p), ``logp_std`` the spread
    of log p across members (sample standard deviation; NaN for one member), then ``logp_NAME``,
    ``bits_per_dim_NAME`` per member; the maps file gets ``logp`` (member mean) and ``logp_NAME``
    per member.  A plain model folder (a 1-member Ensemble from ``load_ensemble``) writes the
    single-model columns only.

    Masked pixels: for an ImageSet with ``/mask_model`` (1 = excluded pixel: user-masked or beyond
    the image edge; it holds sky noise), each image's ``logp`` sums the unmasked pixels' terms only
    (the masked pixels stay in the image as context for the later conditionals),
    ``bits_per_dim`` is per unmasked dimension (``-logp / (C n_unmasked ln 2)``), the CSV gains a
    column ``n_masked_pixels`` and the maps hold NaN at masked pixels.  Sets without a mask give
    the files they always did.

    Several processes or GPUs (:mod:`morphllr.distributed`): each rank scores a contiguous shard
    of the images; rank 0 receives the per-image numbers (and, batch by batch, the maps: memory
    stays flat) in input order and alone claims and writes the files.  The files equal a single
    process's (to float32 rounding of the forward pass; bit for bit when the shards are whole
    batches and the thread counts match).

    Args:
        model: LoadedModel, PixelCNN or Ensemble.
        images: ImageSource, path or array.
        csv_path: output CSV.
        maps_path: optional HDF5 file for the float32 (N, H, W) per-pixel maps (dataset ``logp``).
        batch_size: images per forward pass (None: automatic).
        bf16: bf16 autocast (None: automatic, per device).
        threads: CPU threads per process (None: automatic; several processes share the idle cores).
        progress: show a progress bar (rank 0).
        overwrite: replace existing output files.
        devices: processes (CPU) or GPUs per node, as ``morphllr train --devices``.
        accelerator: "auto", "cpu", "cuda" / "gpu"; None: where the models are for one process, else "auto".
        num_nodes: nodes (with a launcher such as torchrun or srun, or NODE_RANK/MASTER_ADDR/MASTER_PORT).

    Returns:
        summary dict: n, mean_logp, mean_bits_per_dim (+ members: {name: mean logp} for an ensemble;
        + masked_share, the mean share of masked model pixels, for a set with a mask);
        None on the ranks other than 0 of a run joined from a launcher.
    """
    plan = distributed.resolve(devices, accelerator, num_nodes)
    if _is_ensemble(model) and not _per_member(model):
        model = model.members[0]  # a plain model folder: exactly the single-model file
    source = open_images(images)
    for member in (model.members if _is_ensemble(model) else [model]):  # refused here, before any process starts
        _, config, model_prep, name = _unpack(member)
        check_images_fit(source, config, model_prep, name)
    summary = distributed.run_sharded(_score_job, (model, source, csv_path, maps_path, batch_size, bf16, progress,
                                                   overwrite), plan=plan, threads=threads)
    if summary is not None:
        summary["processes"] = plan.world
    return summary


def _score_job(ctx, model: Any, source: ImageSource, csv_path, maps_path, batch_size: int | None,
               bf16: bool | None, progress: bool, overwrite: bool) -> dict | None:
    """One rank of :func:`score_to_files`: score its shard; rank 0 gathers and writes the files."""
    names = list(model.names) if _is_ensemble(model) else []
    members = list(model.members) if names else [model]
    n, c, h, w = source.shape
    with distributed.models_on(ctx.device, members), contextlib.ExitStack() as stack:
        scorers = _ready(members, source, ctx.threads)
        for scorer in scorers:
            stack.enter_context(scorer.evaluating())
        batch_size = int(batch_size) if batch_size else min(default_batch_size(s.config) for s in scorers)
        if batch_size < 1:
            raise MorphllrError(f"--batch-size: must be at least 1, got {batch_size}")
        discrete = is_discrete_head(getattr(scorers[0].config, "head", None))
        mine = ctx.shard(n, batch_size)
        logp = np.empty((len(members), mine.stop - mine.start), dtype=np.float64)
        # the domain guards' numbers (morphllr.domain): each member's log p over the empty sky, the sky
        # pixel counts, the central-source areas and the masked pixels; rows of (K + 3, shard), gathered with logp
        guard = _DomainNumbers(source, len(members), mine.stop - mine.start)
        datasets: list = []
        advance = lambda k: None  # noqa: E731
        if ctx.is_main:
            tmp_csv = stack.enter_context(atomic_file(csv_path, overwrite=overwrite))
            if maps_path is not None:
                datasets = _open_maps_file(stack, maps_path, overwrite, model, names, source.name, n, h, w)
                if guard.has_mask:
                    datasets[0].file.attrs["masked_pixels"] = "NaN (the set's /mask_model: their terms are not in logp)"
            advance = stack.enter_context(_progress(progress, n, source.name))
        for step, (start, batch) in enumerate(ctx.batches(source, batch_size)):
            if batch is not None:
                check_batch(batch, source.name, discrete, start)
                maps = np.stack([scorer(batch, start, bf16, source.name) for scorer in scorers])  # (K, B, H, W)
                excluded = guard.excluded(start, len(batch))
                at = slice(start - mine.start, start - mine.start + len(batch))
                if excluded is None:
                    logp[:, at] = maps.astype(np.float64).sum(axis=(-2, -1))
                else:  # masked pixels stay context; their own terms leave the sums, and they are NaN in --maps
                    logp[:, at] = np.where(excluded[None], 0.0, maps.astype(np.float64)).sum(axis=(-2, -1))
                    guard.n_masked[at] = excluded.sum(axis=(1, 2))
                guard.add(maps, start, start - mine.start)
                if excluded is not None:
                    maps = np.where(excluded[None], np.float32(np.nan), maps)
            else:
                maps = np.empty((len(members), 0, h, w), np.float32)
            if maps_path is None:  # the same on every rank: every rank makes the same collectives
                advance(sum(ctx.exchange(maps.shape[1])))
                continue
            parts = ctx.gather(np.ascontiguousarray(maps.transpose(1, 0, 2, 3)))  # rows = images
            if ctx.is_main:
                for rank, part in enumerate(parts):
                    if len(part):
                        _write_maps(datasets, ctx.batch_start(n, batch_size, rank, step), part, bool(names))
                        advance(len(part))
        gathered = ctx.gather_rows(np.ascontiguousarray(np.vstack([logp, guard.rows()]).T))  # (N, 2K + 3)
        ctx.done()  # the other ranks are finished; rank 0 writes alone
        if not ctx.is_main:
            return None
        gathered = np.ascontiguousarray(gathered.T)
        logp, guard_rows = gathered[:len(members)], gathered[len(members):]
        if datasets:
            datasets[0].file.close()
        mean = logp.mean(axis=0)
        masked = guard.has_mask
        n_masked = guard_rows[-1]
        dims: Any = c * h * w
        if masked:  # per unmasked dimension
            dims = np.where(n_masked < h * w, c * (h * w - n_masked), np.nan)
        with np.errstate(invalid="ignore", divide="ignore"):  # float64 first: the CSV's numbers
            bpd = bits_per_dim(np.asarray(mean, np.float64), dims)
            member_bpd = bits_per_dim(np.asarray(logp, np.float64), dims)
        spread = logp.std(axis=0, ddof=1) if len(logp) > 1 else np.full(n, np.nan)
        header = ["id", "logp", "bits_per_dim"]
        if names:
            header += ["logp_std"] + [f"{col}_{name}" for name in names for col in ("logp", "bits_per_dim")]
        if masked:
            header.append("n_masked_pixels")
        with open(tmp_csv, "w", newline="", encoding="utf-8") as fh_csv:
            writer = csv.writer(fh_csv)
            writer.writerow(header)
            for i, ident in enumerate(image_ids(source)):
                row = [ident, repr(float(mean[i])), repr(float(bpd[i]))]
                if names:
                    row.append(repr(float(spread[i])))
                    for k in range(len(names)):
                        row += [repr(float(logp[k, i])), repr(float(member_bpd[k, i]))]
                if masked:
                    row.append(int(n_masked[i]))
                writer.writerow(row)
    summary = {"n": int(n), "mean_logp": float(mean.mean()), "mean_bits_per_dim": float(np.nanmean(bpd))
               if masked else float(bpd.mean())}
    if names:
        summary["members"] = {name: float(logp[k].mean()) for k, name in enumerate(names)}
    if masked:
        summary["masked_share"] = float(n_masked.mean() / (h * w))
    summary.update(guard.judge(logp, guard_rows, members, names or ["model"], source, (c, h, w)))
    return summary


class _DomainNumbers:
    """What :mod:`morphllr.domain` judges a scored set by, collected batch by batch in :func:`score_to_files`."""

    def __init__(self, source: ImageSource, k: int, m: int):
        self.reader = domain.SkyReader(source)
        self.k = k
        self.sky = np.full((k, m), np.nan)
        self.n_sky = np.full(m, np.nan)
        self.area = np.full(m, np.nan)
        self.has_mask = self.reader.opened.mask is not None
        self.n_masked = np.zeros(m)  # masked model pixels per image (filled by the scoring loop)

    def excluded(self, start: int, b: int) -> np.ndarray | None:
        """bool (B, H, W) masked pixels of images ``start:start + b`` (None without a mask)."""
        return self.reader.excluded(np.arange(start, start + b)) if self.has_mask else None

    def add(self, maps: np.ndarray, start: int, at: int) -> None:
        """One batch of maps ``(K, B, H, W)`` of images ``start..``; ``at`` = its position in this shard."""
        rows = np.arange(start, start + maps.shape[1])
        sky = self.reader.sky(rows)
        stop = at + len(rows)
        if sky is not None:
            self.sky[:, at:stop] = np.where(sky[None], maps.astype(np.float64), 0.0).sum(axis=(-2, -1))
            self.n_sky[at:stop] = sky.sum(axis=(1, 2))
        central = self.reader.central(rows)
        if central is not None:
            self.area[at:stop] = central.sum(axis=(1, 2))

    def rows(self) -> np.ndarray:
        return np.vstack([self.sky, self.n_sky[None], self.area[None], self.n_masked[None]])

    def judge(self, logp: np.ndarray, rows: np.ndarray, members: list, names: list[str], source: ImageSource,
              shape: tuple[int, int, int]) -> dict:
        """``warnings`` and ``notes`` for the score summary; each warning is also a MorphllrWarning."""
        sky, n_sky, area, n_masked = rows[:self.k], rows[self.k], rows[self.k + 1], rows[self.k + 2]
        has_sky = self.reader.kind is not None
        _, h, w = shape
        re, _ = domain.re_model_pixels(self.reader.opened.catalog, getattr(source, "preprocessing", None))
        values = {"model": domain.set_statistics(logp, sky if has_sky else None, n_sky if has_sky else None,
                                                 area if self.reader.opened.segmap is not None else None, re, shape,
                                                 n_valid=h * w - n_masked if self.has_mask else None)}
        records = [domain.domain_record(m) for m in members]
        found, notes = domain.convergence_findings("model", names, members)
        notes += domain.domain_notes("model", names, members)
        judged: dict = {}
        if any(r is not None for r in records):
            judged, out_of_domain = domain.domain_check(str(source.name), values,
                                                        [("model", "the model", names, records)], self.reader.kind)
            found = out_of_domain + found
        for text in found:
            warnings.warn(text, MorphllrWarning, stacklevel=4)
        return {"warnings": found, "notes": notes, "domain": judged or None}


def _open_maps_file(stack: contextlib.ExitStack, maps_path, overwrite: bool, model: Any, names: list[str],
                    images_name: str, n: int, h: int, w: int) -> list:
    """The ``--maps`` HDF5 file's datasets (``logp`` and, for an ensemble, ``logp_NAME``), opened for writing."""
    import h5py

    tmp_maps = stack.enter_context(atomic_file(maps_path, overwrite=overwrite))
    fh = stack.enter_context(h5py.File(tmp_maps, "w"))
    datasets = []
    for ds_name, what in [("logp", "log p(x_ij | earlier pixels), summed over channels"
                           + (", mean over the ensemble's members" if names else ""))] + [
            (f"logp_{name}", f"log p(x_ij | earlier pixels), summed over channels, member {name}")
            for name in names]:
        ds = fh.create_dataset(ds_name, shape=(n, h, w), dtype="f4", chunks=(1, h, w),
                               compression="gzip", compression_opts=4, shuffle=True)
        ds.attrs["units"] = "nats"
        ds.attrs["description"] = what
        datasets.append(ds)
    fh.attrs["format"] = "morphllr.logp_maps"
    fh.attrs["model"] = str(getattr(model, "path", None) or "model")
    fh.attrs["images"] = images_name
    if names:
        fh.attrs["members"] = names
    return datasets


def _write_maps(datasets: list, start: int, part: np.ndarray, ensemble: bool) -> None:
    """Write one gathered batch ``(B, K, H, W)`` of member maps at image ``start``."""
    stop = start + len(part)
    if ensemble:
        datasets[0][start:stop] = part.astype(np.float64).mean(axis=1).astype(np.float32)
        for k, ds in enumerate(datasets[1:]):
            ds[start:stop] = part[:, k]
    else:
        datasets[0][start:stop] = part[:, 0]
