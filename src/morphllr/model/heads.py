"""Likelihood heads: turn the PixelCNN++ output map into per-pixel log-probabilities.

A head reads the network output ``params`` of shape ``(N, P, H, W)`` and the image in the
network's own units ``x_net`` of shape ``(N, C, H, W)`` and returns the log-probability of
every channel of every pixel, ``(N, C, H, W)`` in nats, channel ``c`` conditioned on the
channels ``< c`` of the same pixel (and, through ``params``, on all earlier pixels).

Three heads (Salimans et al. 2017; Zanisi et al. 2021 use the Gaussian one):

* ``gaussian``: one Normal per channel, ``scale = softplus(raw) + MIN_SCALE``.
* ``logistic_mixture``: a continuous mixture of logistics (a density).
* ``discretized_logistic_mixture``: the original 8-bit PixelCNN++ likelihood, 256 bins of
  width 2/255 on [-1, 1], edge bins extended to +-inf (a probability mass).

Multi-band images (C > 1) follow PixelCNN++'s RGB scheme: inside each mixture component the
mean of channel ``c`` is ``mu_c + sum_{k<c} tanh(a_ck) * x_k`` with the *true* values ``x_k``.
Because each component is autoregressive over channels, the marginal of the first ``c``
channels is the same mixture with the later channels dropped, which gives the exact
chain-rule split into per-channel conditionals that :meth:`Head.log_prob` returns.

Parameter layout along dim 1 (``M`` mixture components, ``K = C (C - 1) / 2`` pairs):
mixtures ``[logits M | means C*M | log_scales C*M | coeffs K*M]`` (channel-major);
gaussian ``[means C | raw_scales C | coeffs K]``.  Coefficient pairs are ordered
``(1,0), (2,0), (2,1), (3,0), ...`` as in PixelCNN++ for RGB.

All head math runs in float32 with autocast disabled, whatever precision the network used.
Numerical guards (documented so that users know what extreme inputs do): scales are floored
at ``MIN_SCALE`` (continuous) / ``exp(MIN_LOG_SCALE_DISCRETE)`` (discretized, as in the
original) and log-scales capped at ``MAX_LOG_SCALE``; the discretized bin mass uses an exact,
overflow-free form of ``log(sigmoid(a) - sigmoid(b))`` instead of the original
``cdf_delta < 1e-5`` mid-bin approximation, so every bin is finite and the 256 bins sum to 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from morphllr.errors import MorphllrError

HEAD_NAMES = ("gaussian", "logistic_mixture", "discretized_logistic_mixture")

# Continuous heads: smallest scale, in network units.  Keeps a collapsed pixel (e.g. one
# clipped at the stretch maximum) from giving an unbounded density.
MIN_SCALE = 1e-4
# Discretized head: the original PixelCNN++ floor (scale >= 9e-4, about a quarter bin).
MIN_LOG_SCALE_DISCRETE = -7.0
# Upper cap so exp(-log_scale) never underflows to exactly 0.
MAX_LOG_SCALE = 30.0

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def n_pairs(channels: int) -> int:
    """Number of (c, k < c) channel pairs, i.e. autoregressive coefficients per component."""
    return channels * (channels - 1) // 2


def bits_per_dim(log_prob_nats, n_dims: int):
    """Convert a log-likelihood in nats to bits per dimension (the usual PixelCNN unit).

    Args:
        log_prob_nats: log p of whole images in nats (float, numpy array or tensor).
        n_dims: dimensions per image, ``C * H * W``.

    Returns:
        ``-log_prob_nats / (n_dims * ln 2)``, same type as the input.  Lower is better.
    """
    return -log_prob_nats / (n_dims * math.log(2.0))


def _conditional_means(means: torch.Tensor, coeffs: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Add the within-pixel channel dependence to the component means.

    Args:
        means: ``(N, C, M, H, W)`` unconditional means.
        coeffs: ``(N, K, M, H, W)`` raw coefficients (tanh-squashed here).
        x: ``(N, C, H, W)`` true values in network units.

    Returns:
        ``(N, C, M, H, W)`` means, channel ``c`` shifted by ``sum_{k<c} tanh(a_ck) x_k``.
    """
    channels = x.shape[1]
    if channels == 1:
        return means
    slopes = torch.tanh(coeffs)
    out = [means[:, 0]]
    pair = 0
    for c in range(1, channels):
        mean_c = means[:, c]
        for k in range(c):
            mean_c = mean_c + slopes[:, pair] * x[:, k].unsqueeze(1)
            pair += 1
        out.append(mean_c)
    return torch.stack(out, dim=1)


def _mixture_to_channels(log_pi: torch.Tensor, comp_log_probs: torch.Tensor) -> torch.Tensor:
    """Chain-rule split of a mixture of channel-autoregressive components.

    Args:
        log_pi: ``(N, M, H, W)`` log mixture weights.
        comp_log_probs: ``(N, C, M, H, W)`` log p of channel c under component m.

    Returns:
        ``(N, C, H, W)``: ``log p(x_c | x_<c)``; summed over C it is the joint log p.
    """
    cumulative = torch.cumsum(comp_log_probs, dim=1) + log_pi.unsqueeze(1)
    marginal = torch.logsumexp(cumulative, dim=2)  # log p(x_1..x_c), (N, C, H, W)
    if marginal.shape[1] == 1:
        return marginal
    return torch.cat([marginal[:, :1], marginal[:, 1:] - marginal[:, :-1]], dim=1)


@dataclass(frozen=True)
class Head:
    """A per-pixel likelihood model.

    Attributes:
        name: one of :data:`HEAD_NAMES`.
        discrete: True when log_prob is a probability mass over 0..255 (no Jacobian).
    """

    name: str
    discrete: bool

    def n_params(self, channels: int, nr_mix: int) -> int:
        """Network output channels this head needs.

        Args:
            channels: image channels C.
            nr_mix: mixture components M (ignored by ``gaussian``).

        Returns:
            P, the size of dim 1 of ``params``.
        """
        if self.name == "gaussian":
            return 2 * channels + n_pairs(channels)
        return nr_mix * (1 + 2 * channels + n_pairs(channels))

    def nr_mix(self, params: torch.Tensor, channels: int) -> int:
        """Mixture components encoded in ``params`` (1 for ``gaussian``)."""
        if self.name == "gaussian":
            return 1
        return params.shape[1] // (1 + 2 * channels + n_pairs(channels))

    def _check(self, params: torch.Tensor, x_net: torch.Tensor) -> None:
        if params.dim() != 4 or x_net.dim() != 4 or params.shape[0] != x_net.shape[0] or params.shape[2:] != x_net.shape[2:]:
            raise MorphllrError(
                f"{self.name} head: params {tuple(params.shape)} and image {tuple(x_net.shape)} must be "
                "(N, P, H, W) and (N, C, H, W) with the same N, H, W; pass the output of PixelCNN.forward"
            )
        channels = x_net.shape[1]
        per = 2 * channels + n_pairs(channels) if self.name == "gaussian" else 1 + 2 * channels + n_pairs(channels)
        if params.shape[1] % per or params.shape[1] == 0 or (self.name == "gaussian" and params.shape[1] != per):
            raise MorphllrError(
                f"{self.name} head: {params.shape[1]} parameter channels do not fit C={channels}; "
                "the model was built for a different number of image channels"
            )

    def log_prob(self, params: torch.Tensor, x_net: torch.Tensor) -> torch.Tensor:
        """Per-channel conditional log-probabilities.

        Args:
            params: ``(N, P, H, W)`` network output (any float dtype; used in float32).
            x_net: ``(N, C, H, W)`` image in network units (discretized: values k/127.5 - 1).

        Returns:
            ``(N, C, H, W)`` float32, nats, in network units (the model adds the Jacobian).
        """
        self._check(params, x_net)
        with torch.autocast(device_type=params.device.type, enabled=False):
            params = params.float()
            x_net = x_net.float()
            if self.name == "gaussian":
                return _gaussian_log_prob(params, x_net)
            return _mixture_log_prob(params, x_net, self.discrete)

    def sample(self, params: torch.Tensor, channels: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw one value per pixel and channel from the head, channels in order.

        Args:
            params: ``(N, P, H, W)`` network output.
            channels: image channels C.
            generator: optional torch random generator.

        Returns:
            ``(N, C, H, W)`` float32 sample in network units (discretized: on the bin grid).
        """
        params = params.float()
        n, _, h, w = params.shape
        if self.name == "gaussian":
            means, raw, coeffs = _split_gaussian(params, channels)
            means, scales = means.unsqueeze(2), (F.softplus(raw) + MIN_SCALE).unsqueeze(2)
            coeffs = coeffs.unsqueeze(2)
            chosen = torch.zeros(n, 1, h, w, dtype=torch.long, device=params.device)
            noise = torch.randn(n, channels, h, w, generator=generator, device=params.device)
        else:
            logits, means, log_scales, coeffs = _split_mixture(params, channels)
            low = MIN_LOG_SCALE_DISCRETE if self.discrete else math.log(MIN_SCALE)
            scales = log_scales.clamp(low, MAX_LOG_SCALE).exp()
            # Gumbel-max: argmax(logits + Gumbel noise) picks component m with probability softmax(logits)_m.
            gumbel = -torch.log(-torch.log(torch.rand(logits.shape, generator=generator, device=params.device).clamp(1e-7, 1 - 1e-7)))
            chosen = (logits + gumbel).argmax(dim=1, keepdim=True)
            u = torch.rand(n, channels, h, w, generator=generator, device=params.device).clamp(1e-6, 1 - 1e-6)
            noise = torch.log(u) - torch.log1p(-u)  # standard logistic by inverse CDF
        slopes = torch.tanh(coeffs)
        values = []
        pair = 0
        for c in range(channels):
            mean_c = torch.gather(means[:, c], 1, chosen).squeeze(1)
            for k in range(c):
                mean_c = mean_c + torch.gather(slopes[:, pair], 1, chosen).squeeze(1) * values[k]
                pair += 1
            scale_c = torch.gather(scales[:, c], 1, chosen).squeeze(1)
            value = mean_c + scale_c * noise[:, c]
            if self.discrete:
                value = torch.round((value.clamp(-1, 1) + 1) * 127.5) / 127.5 - 1
            values.append(value)
        return torch.stack(values, dim=1)


def _split_gaussian(params: torch.Tensor, channels: int):
    means = params[:, :channels]
    raw_scales = params[:, channels : 2 * channels]
    coeffs = params[:, 2 * channels :]
    return means, raw_scales, coeffs


def _split_mixture(params: torch.Tensor, channels: int):
    n, p, h, w = params.shape
    m = p // (1 + 2 * channels + n_pairs(channels))
    logits = params[:, :m]
    means = params[:, m : m + channels * m].reshape(n, channels, m, h, w)
    log_scales = params[:, m + channels * m : m + 2 * channels * m].reshape(n, channels, m, h, w)
    coeffs = params[:, m + 2 * channels * m :].reshape(n, n_pairs(channels), m, h, w)
    return logits, means, log_scales, coeffs


def _gaussian_log_prob(params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    channels = x.shape[1]
    means, raw_scales, coeffs = _split_gaussian(params, channels)
    means = _conditional_means(means.unsqueeze(2), coeffs.unsqueeze(2), x).squeeze(2)
    scales = F.softplus(raw_scales) + MIN_SCALE
    z = (x - means) / scales
    return -0.5 * z * z - torch.log(scales) - _HALF_LOG_2PI


def _mixture_log_prob(params: torch.Tensor, x: torch.Tensor, discrete: bool) -> torch.Tensor:
    channels = x.shape[1]
    logits, means, log_scales, coeffs = _split_mixture(params, channels)
    means = _conditional_means(means, coeffs, x)
    low = MIN_LOG_SCALE_DISCRETE if discrete else math.log(MIN_SCALE)
    log_scales = log_scales.clamp(low, MAX_LOG_SCALE)
    centered = x.unsqueeze(2) - means
    inv_scale = torch.exp(-log_scales)
    if discrete:
        comp = _discretized_logistic_log_mass(centered, inv_scale, x.unsqueeze(2))
    else:
        z = centered * inv_scale
        comp = -z - log_scales - 2.0 * F.softplus(-z)
    return _mixture_to_channels(F.log_softmax(logits, dim=1), comp)


def _discretized_logistic_log_mass(centered: torch.Tensor, inv_scale: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log P(bin of x) for a logistic; 256 bins of width 2/255, edge bins open.

    Uses ``sigmoid(a) - sigmoid(b) = sigmoid(a) sigmoid(-b) (1 - exp(b - a))`` so that the
    mass stays exact (and finite) in the far tails where the plain difference is 0.
    """
    half_bin = 1.0 / 255.0
    upper = inv_scale * (centered + half_bin)
    lower = inv_scale * (centered - half_bin)
    log_cdf_upper = -F.softplus(-upper)  # log sigmoid(upper): the whole lower tail (x = 0 bin)
    log_sf_lower = -F.softplus(lower)  # log (1 - sigmoid(lower)): the x = 255 bin
    width = (2.0 * half_bin) * inv_scale
    log_mid = log_cdf_upper + log_sf_lower + torch.log(-torch.expm1(-width))
    return torch.where(x < -0.999, log_cdf_upper, torch.where(x > 0.999, log_sf_lower, log_mid))


#: Heads whose log_prob is a probability mass over the integers 0..255 (the network sees 8-bit pixels).
DISCRETE_HEADS = frozenset({"discretized_logistic_mixture"})


def is_discrete_head(name) -> bool:
    """Whether the head named ``name`` models 8-bit integer pixels (a probability mass, no Jacobian)."""
    return str(name) in DISCRETE_HEADS


_HEADS = {name: Head(name, discrete=is_discrete_head(name)) for name in HEAD_NAMES}


def get_head(name: str) -> Head:
    """Look up a likelihood head by name.

    Args:
        name: ``gaussian``, ``logistic_mixture`` or ``discretized_logistic_mixture``.

    Returns:
        The :class:`Head`.
    """
    if name not in _HEADS:
        raise MorphllrError(f"head {name!r} is unknown; choose one of {', '.join(HEAD_NAMES)}")
    return _HEADS[name]
