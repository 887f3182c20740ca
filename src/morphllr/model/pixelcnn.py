"""PixelCNN++ (Salimans et al. 2017) as used by Zanisi et al. (2021), with its config and presets.

The network sees the image through two causal streams: ``u`` (everything in the rows above a
pixel, down-shifted 2x3 convolutions) and ``ul`` (rows above plus the pixels to the left in the
same row, down-right-shifted 2x2 convolutions).  A U-Net of gated residual blocks runs at three
resolutions (H, H/2, H/4); the last 1x1 convolution gives the parameters of the likelihood head
for every pixel, depending only on pixels before it in raster order.

Weight normalisation of the original is left out: it costs speed at inference and the plain
convolutions with a 0.1-scaled residual output train stably here.

Speed (see BENCHMARKS.md): concat-ELU, dropout and the causal zero padding are one fused op
with its own backward (:func:`concat_elu_padded`), each stream tensor's concat-ELU is computed
once and shared by the blocks that read it, and the stride-2 transposed convolutions run as a
1x1 convolution plus a sub-pixel shuffle.  On the CPU, with channels-last float32/bf16
tensors, the concat-ELU (with the auxiliary convolutions' sum) and the gate + residual are
single-pass compiled kernels (:mod:`morphllr.model.fused`); elsewhere the eager ops here run.  :mod:`morphllr.model.plain` is the plain version the
tests hold this one to.  Use channels-last inputs and bf16 autocast on CPUs with native bf16.

Units: continuous heads take images in the user's units, feed ``(x - input_shift) /
input_scale`` to the network and report densities in the user's units (the Jacobian
``-log(input_scale)`` per dimension is added).  The discretized head takes integers 0..255.
Extreme inputs are clamped (see :data:`NET_INPUT_LIMIT`), NaN is refused.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from morphllr.errors import MorphllrError
from morphllr.model import fused
from morphllr.model.heads import HEAD_NAMES, get_head

# Continuous heads: network-unit inputs are clamped to +-this, so that a stray 1e30 (or inf)
# gives a very low but finite log-likelihood instead of inf/NaN.
NET_INPUT_LIMIT = 1e4


@dataclass
class PixelCNNConfig:
    """Architecture and likelihood of a PixelCNN++.

    Attributes:
        in_channels: image channels C (bands).
        height, width: image size in pixels, both divisible by 4.
        nr_resnet: gated residual blocks per resolution (paper: 3).
        nr_filters: feature channels (paper: 64).
        nr_logistic_mix: mixture components of the logistic heads.
        dropout: dropout rate inside the residual blocks during training (paper: 0.5).
        head: ``gaussian`` (paper), ``logistic_mixture`` or ``discretized_logistic_mixture``.
        input_shift, input_scale: continuous heads feed ``(x - shift) / scale`` to the network.
    """

    in_channels: int = 1
    height: int = 32
    width: int = 32
    nr_resnet: int = 3
    nr_filters: int = 64
    nr_logistic_mix: int = 5
    dropout: float = 0.5
    head: str = "gaussian"
    input_shift: float = 0.5
    input_scale: float = 0.5

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`MorphllrError` naming the first bad field and its fix."""
        for name in ("in_channels", "height", "width", "nr_resnet", "nr_filters", "nr_logistic_mix"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise MorphllrError(f"model config: {name}={value!r} must be a positive integer")
        if self.height % 4 or self.width % 4:
            raise MorphllrError(
                f"model config: image size {self.height}x{self.width} must be divisible by 4 "
                "(the network works at 1, 1/2 and 1/4 resolution); crop or resize the images"
            )
        if not (isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0):
            raise MorphllrError(f"model config: dropout={self.dropout!r} must be in [0, 1)")
        if self.head not in HEAD_NAMES:
            raise MorphllrError(f"model config: head={self.head!r} is unknown; choose one of {', '.join(HEAD_NAMES)}")
        if not (isinstance(self.input_scale, (int, float)) and math.isfinite(self.input_scale) and self.input_scale > 0):
            raise MorphllrError(f"model config: input_scale={self.input_scale!r} must be a positive number")
        if not (isinstance(self.input_shift, (int, float)) and math.isfinite(self.input_shift)):
            raise MorphllrError(f"model config: input_shift={self.input_shift!r} must be a finite number")

    def to_dict(self) -> dict:
        """Plain JSON-able dict of all fields."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PixelCNNConfig":
        """Build (and validate) a config from :meth:`to_dict` output.

        Args:
            d: mapping of field names to values; missing fields take their defaults.

        Returns:
            The config.  Unknown keys raise :class:`MorphllrError`.
        """
        if not isinstance(d, dict):
            raise MorphllrError(f"model config must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise MorphllrError(
                f"model config: unknown field(s) {', '.join(unknown)}; known fields are {', '.join(sorted(known))}"
            )
        return cls(**d)

    def with_(self, **changes) -> "PixelCNNConfig":
        """A copy with some fields changed (validated)."""
        return replace(self, **changes)


NETWORK_PRESETS: dict[str, PixelCNNConfig] = {
    "zanisi21": PixelCNNConfig(nr_resnet=3, nr_filters=64, dropout=0.5, head="gaussian"),
    "small": PixelCNNConfig(nr_resnet=1, nr_filters=32, dropout=0.5, head="gaussian"),
    "tiny": PixelCNNConfig(nr_resnet=1, nr_filters=8, dropout=0.0, head="gaussian", height=8, width=8),
}


# ---------------------------------------------------------------------------------------------
# Shifted convolutions.  Padding tuples are (left, right, top, bottom) as F.pad wants them.
# "down" = 2x3 kernel seeing the row above and the current row's neighbours above;
# "downright" = 2x2 kernel seeing above and to the left.
# ---------------------------------------------------------------------------------------------
_PADS = {"down": (1, 1, 1, 0), "downright": (1, 0, 1, 0)}
_KERNELS = {"down": (2, 3), "downright": (2, 2)}
_DOWN, _DOWNRIGHT, _NO_PAD = _PADS["down"], _PADS["downright"], (0, 0, 0, 0)


def concat_elu(x: torch.Tensor) -> torch.Tensor:
    """ELU of ``[x, -x]`` along channels: keeps both signs' information (doubles channels)."""
    return concat_elu_padded(x, (0, 0, 0, 0))


def concat_elu_padded(x: torch.Tensor, pad: tuple[int, int, int, int], dropout: float = 0.0,
                      addends: tuple = ()) -> torch.Tensor:
    """``F.pad(dropout(elu(cat([s, -s]))), pad)`` with ``s = x + crop(y_1) + ...``, so a shifted conv can run unpadded.

    Args:
        x: ``(N, F, H, W)`` activations.
        pad: zero padding ``(left, right, top, bottom)``.
        dropout: drop probability (0 in eval); kept values are scaled by ``1 / keep``.
        addends: ``(y, (top, left))`` pairs: ``y[:, :, top:top + H, left:left + W]`` is added to x
            first (the auxiliary 1x1 convolutions, run on padded buffers).

    Returns:
        ``(N, 2F, H + top + bottom, W + left + right)``, channels-last when x is.
    """
    if fused.usable(x, *(y for y, _ in addends)) and all(y.dtype == x.dtype for y, _ in addends):
        return fused.concat_elu_pad(x, pad, dropout, addends)
    h, w = x.shape[2], x.shape[3]
    for i, (y, (top, left)) in enumerate(addends):
        crop = y[:, :, top : top + h, left : left + w]
        # in place only into a sum made here: x itself may be read elsewhere
        x = x + crop if i == 0 or torch.is_grad_enabled() else x.add_(crop)
    return _ConcatEluPad.apply(x, pad, dropout)


def gated_residual(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``x + a * sigmoid(b)`` for ``t = [a, b]``: the end of a gated residual block (x is not modified)."""
    if fused.usable(t, x) and t.dtype == x.dtype:
        return fused.gated_residual(t, x)
    if torch.is_grad_enabled():
        return x + gate(t)
    return gate(t).add_(x)


def _empty_like_layout(x: torch.Tensor, channels: int, height: int, width: int, dtype=None) -> torch.Tensor:
    """Uninitialised (N, channels, height, width) tensor in x's memory format."""
    n = x.shape[0]
    dtype = dtype or x.dtype
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.empty(n, height, width, channels, dtype=dtype, device=x.device).permute(0, 3, 1, 2)
    return torch.empty(n, channels, height, width, dtype=dtype, device=x.device)


def _keep_mask(like: torch.Tensor, drop: float) -> tuple[torch.Tensor, float]:
    """Random dropout keep-mask shaped and laid out like ``like``, as 0/1 in its dtype.

    ``torch.bernoulli`` draws one float per element and costs more than the convolutions
    it sits between; here each element gets one random byte (drop probability rounded
    to 1/256), compared straight into ``like``'s dtype.  Boolean masks are slower on
    the CPU: ``masked_fill_`` or a product with a bool tensor on the strided activations
    cost ~10x a product of two float tensors of the same layout (measured, bf16).

    Returns:
        (mask, exact keep probability).
    """
    threshold, keep_prob = fused.dropout_threshold(drop)
    n, c, h, w = like.shape
    words = (like.numel() + 7) // 8
    if like.device.type == "cpu":
        # numpy's SFC64 makes the bytes ~3x faster than torch's CPU generator (mt19937); seeded
        # from torch's generator, so torch.manual_seed still fixes every mask
        seed = int(torch.randint(0, 2**63 - 1, (1,)))
        bits = torch.from_numpy(np.random.SFC64(seed).random_raw(words).view(np.int64))
    else:
        bits = torch.randint(-(2**63), 2**63 - 1, (words,), dtype=torch.int64, device=like.device)
    raw = bits.view(torch.uint8)[: like.numel()]
    # compared as flat vectors (the comparison into a float dtype through 4-D permuted views is
    # ~5x slower), then laid out like ``like`` (channels fastest for channels-last)
    keep = torch.ge(raw, threshold, out=torch.empty(like.numel(), dtype=like.dtype, device=like.device))
    if like.stride(1) == 1:
        keep = keep.view(n, h, w, c).permute(0, 3, 1, 2)
    else:
        keep = keep.view(n, c, h, w)
    return keep, keep_prob


class _ConcatEluPad(torch.autograd.Function):
    """Fused concat-ELU + dropout + zero padding with a hand-written backward.

    Forward uses ``elu(x) = max(x, m)`` and ``elu(-x) = max(-x, m)`` with ``m = exp(-|x|) - 1``
    (one exp for both halves; ``e^t >= 1 + t`` makes the max pick the right branch) and writes
    straight into the interior of a zero-bordered buffer.  Backward needs only that buffer
    (which the following convolution keeps anyway): ``elu'(t) = 1 + min(elu(t), 0)``.
    """

    @staticmethod
    def forward(ctx, x, pad, dropout):
        n, c, h, w = x.shape
        left, right, top, bottom = pad
        buf = _empty_like_layout(x, 2 * c, h + top + bottom, w + left + right)
        if top:  # only the border needs zeros: the interior is overwritten below
            buf[:, :, :top].zero_()
        if bottom:
            buf[:, :, top + h :].zero_()
        if left:
            buf[:, :, :, :left].zero_()
        if right:
            buf[:, :, :, left + w :].zero_()
        inner = buf[:, :, top : top + h, left : left + w]
        m = torch.abs(x).neg_().exp_().sub_(1.0)
        # Two contiguous results + one cat into the strided interior beat writing each half
        # through a strided ``out=`` (measured ~2x on channels-last bf16).
        torch.cat([torch.maximum(x, m), torch.maximum(torch.neg(x), m)], dim=1, out=inner)
        keep, keep_prob = None, 1.0
        if dropout > 0:
            keep, keep_prob = _keep_mask(inner, dropout)
            # 0/1 mask, scale as a Python float: a bf16 1/keep would be off by up to 0.4 %
            inner.mul_(keep).mul_(1.0 / keep_prob)
        ctx.geometry = (c, h, w, top, left, keep_prob)
        ctx.save_for_backward(buf, keep)
        return buf

    @staticmethod
    def backward(ctx, grad_buf):
        buf, keep = ctx.saved_tensors
        c, h, w, top, left, keep_prob = ctx.geometry
        grad = grad_buf[:, :, top : top + h, left : left + w]
        elu = buf[:, :, top : top + h, left : left + w]
        if keep is not None:
            grad = (grad * keep).mul_(1.0 / keep_prob)
            elu = elu * keep_prob  # undo the scaling; dropped entries are 0 and get 0 gradient
        slope = elu.clamp(max=0.0).add_(1.0)  # elu'(x) and elu'(-x)
        slope.mul_(grad)
        return slope[:, :c] - slope[:, c:], None, None


def gate(t: torch.Tensor) -> torch.Tensor:
    """Gated linear unit ``a * sigmoid(b)`` for ``t = [a, b]`` along channels (``F.glu``).

    Same numbers as ``F.glu``; under autograd its backward keeps the gradient in ``t``'s
    memory layout.  ``glu_backward`` returns a contiguous (NCHW) gradient for a channels-last
    input, which the convolution before it then transposes back: measured ~10 % of a bf16
    training step at 32x32.
    """
    if not torch.is_grad_enabled() or not t.requires_grad:
        return F.glu(t, dim=1)
    return _Gate.apply(t)


class _Gate(torch.autograd.Function):
    """``a * sigmoid(b)``; backward ``[g s, g a s (1 - s)]`` written into one buffer laid out like the input."""

    @staticmethod
    def forward(ctx, t):
        c = t.shape[1] // 2
        s = torch.sigmoid(t[:, c:])
        ctx.save_for_backward(t, s)  # t, not its half a: the same storage, and it carries the layout
        return t[:, :c] * s

    @staticmethod
    def backward(ctx, grad):
        t, s = ctx.saved_tensors
        a = t[:, : s.shape[1]]
        grad_a = grad * s
        grad_b = (1.0 - s).mul_(a).mul_(grad_a)
        out = _empty_like_layout(t, t.shape[1], t.shape[2], t.shape[3], dtype=grad_a.dtype)
        torch.cat([grad_a, grad_b], dim=1, out=out)
        return out


def down_shift(x: torch.Tensor) -> torch.Tensor:
    """Move the map one row down (zero first row) so a pixel cannot see its own row."""
    return F.pad(x[:, :, :-1, :], (0, 0, 1, 0))


def right_shift(x: torch.Tensor) -> torch.Tensor:
    """Move the map one column right (zero first column) so a pixel cannot see itself."""
    return F.pad(x[:, :, :, :-1], (1, 0, 0, 0))


class ShiftedConv(nn.Conv2d):
    """Causal convolution: pad above (and left/right) so the output never sees later pixels."""

    def __init__(self, c_in: int, c_out: int, kind: str, kernel=None, stride: int = 1):
        kernel = kernel or _KERNELS[kind]
        super().__init__(c_in, c_out, kernel, stride=stride)
        kh, kw = kernel
        if kind == "down":
            self.pad = ((kw - 1) // 2, (kw - 1) // 2, kh - 1, 0)
        else:
            self.pad = (kw - 1, 0, kh - 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, self.pad))


class ShiftedDeconv(nn.ConvTranspose2d):
    """Stride-2 transposed convolution cropped so that it stays causal.

    Computed as one 1x1 convolution to ``kh * kw * C_out`` channels followed by a
    sub-pixel rearrangement (each input pixel feeds a 2 x kw output patch; for kw = 3
    neighbouring patches overlap by one column, which is added).  Same numbers as
    ``ConvTranspose2d`` + crop, but oneDNN's bf16 channels-last transposed convolution
    is ~20x slower than this.
    """

    def __init__(self, c_in: int, c_out: int, kind: str):
        super().__init__(c_in, c_out, _KERNELS[kind], stride=2, output_padding=1)
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        c_in, c_out, kh, kw = self.weight.shape
        # weight[c, o, a, b] -> 1x1 conv producing channel (a * kw + b) * c_out + o
        w1 = self.weight.permute(2, 3, 1, 0).reshape(kh * kw * c_out, c_in, 1, 1)
        # the bias rides on the taps that start an output pixel (every tap for kw = 2; b = 1 and 2 for
        # kw = 3, whose b = 0 tap is added to a neighbour's b = 2), so each output gets it once
        bias = self.bias.repeat(kh * kw).view(kh, kw, c_out)
        if self.kind == "down":
            bias = bias * torch.tensor([0.0, 1.0, 1.0], dtype=bias.dtype, device=bias.device).view(1, kw, 1)
        taps = F.conv2d(x, w1, bias.reshape(-1)).permute(0, 2, 3, 1).reshape(n, h, w, kh, kw, c_out)
        if self.kind == "down":
            # cropped column 2j <- tap b=1 at j;  column 2j+1 <- tap b=2 at j + tap b=0 at j+1
            even = taps[:, :, :, :, 1]
            odd = taps[:, :, :, :, 2] + F.pad(taps[:, :, 1:, :, 0], (0, 0, 0, 0, 0, 1))
            taps = torch.stack([even, odd], dim=4)  # (n, h, w, a, 2, c_out)
        out = taps.permute(0, 1, 3, 2, 4, 5).reshape(n, 2 * h, 2 * w, c_out)
        return out.permute(0, 3, 1, 2)


class GatedResnet(nn.Module):
    """Gated residual block: x + a * sigmoid(b), [a, b] = conv(elu(conv(elu(x)) + nin(elu(aux)))).

    Args:
        filters: feature channels F.
        kind: ``down`` (u stream) or ``downright`` (ul stream).
        aux_mult: 0 for no auxiliary input, else the auxiliary input has aux_mult * F channels.
        dropout: dropout rate applied (in training only) before the second convolution.
    """

    def __init__(self, filters: int, kind: str, aux_mult: int, dropout: float):
        super().__init__()
        self.conv_in = ShiftedConv(2 * filters, filters, kind)
        self.aux = nn.Conv2d(2 * aux_mult * filters, filters, 1) if aux_mult else None
        self.conv_out = ShiftedConv(2 * filters, 2 * filters, kind)
        self.dropout = dropout
        with torch.no_grad():  # start close to identity, as the original's init_scale=0.1
            self.conv_out.weight.mul_(0.1)
            self.conv_out.bias.zero_()

    def forward(self, x: torch.Tensor, aux: torch.Tensor | None = None) -> torch.Tensor:
        """Apply the block to ``x`` (and the auxiliary input ``aux``, if the block has one)."""
        aux_elus = [(concat_elu(aux), _NO_PAD)] if aux is not None else []
        return self.run(x, concat_elu_padded(x, self.conv_in.pad), aux_elus)

    def run(self, x: torch.Tensor, x_elu: torch.Tensor, aux_elus: list) -> torch.Tensor:
        """:meth:`forward` with the concat-ELUs already computed (the network shares them).

        Args:
            x: ``(N, F, H, W)`` block input.
            x_elu: ``concat_elu_padded(x, self.conv_in.pad)``.
            aux_elus: for ``aux = cat([a_1, ..., a_k])``, the list of ``(concat_elu_padded(a_i, pad_i),
                pad_i)``; the 1x1 convolution runs on each padded buffer and the border is cropped.

        Returns:
            ``(N, F, H, W)`` block output.
        """
        h = F.conv2d(x_elu, self.conv_in.weight, self.conv_in.bias)
        drop = self.dropout if self.training else 0.0
        h_elu = concat_elu_padded(h, self.conv_in.pad, drop, self._aux_terms(h.shape[1], aux_elus))
        # x stays untouched: it is also a skip connection
        return gated_residual(F.conv2d(h_elu, self.conv_out.weight, self.conv_out.bias), x)

    def _aux_terms(self, f: int, aux_elus: list) -> tuple:
        """The auxiliary 1x1 convolution, one part per padded buffer, as addends for concat_elu_padded."""
        parts = len(aux_elus)
        weight = self.aux.weight if parts else None  # input channels: [elu(a_1) .. elu(a_k), elu(-a_1) .. elu(-a_k)]
        terms = []
        for i, (buf, (left, _, top, _)) in enumerate(aux_elus):
            w_i = torch.cat([weight[:, i * f : (i + 1) * f], weight[:, (parts + i) * f : (parts + i + 1) * f]], dim=1)
            terms.append((F.conv2d(buf, w_i, self.aux.bias if i == 0 else None), (top, left)))
        return tuple(terms)


class _Stage(nn.Module):
    """One resolution of the up or down pass: paired u and ul residual blocks."""

    def __init__(self, n_blocks: int, filters: int, dropout: float, up: bool):
        super().__init__()
        self.u_blocks = nn.ModuleList(GatedResnet(filters, "down", 0 if up else 1, dropout) for _ in range(n_blocks))
        self.ul_blocks = nn.ModuleList(GatedResnet(filters, "downright", 1 if up else 2, dropout) for _ in range(n_blocks))


class PixelCNN(nn.Module):
    """PixelCNN++ density model over ``(C, H, W)`` images.

    Args:
        config: a :class:`PixelCNNConfig` (or a dict accepted by ``from_dict``).
    """

    def __init__(self, config: PixelCNNConfig):
        super().__init__()
        if isinstance(config, dict):
            config = PixelCNNConfig.from_dict(config)
        config.validate()
        self.config = config
        self.head = get_head(config.head)
        c, f = config.in_channels, config.nr_filters
        self.u_init = ShiftedConv(c + 1, f, "down", kernel=(2, 3))
        self.ul_init_down = ShiftedConv(c + 1, f, "down", kernel=(1, 3))
        self.ul_init_right = ShiftedConv(c + 1, f, "downright", kernel=(2, 1))
        self.up = nn.ModuleList(_Stage(config.nr_resnet, f, config.dropout, up=True) for _ in range(3))
        self.downsample_u = nn.ModuleList(ShiftedConv(f, f, "down", stride=2) for _ in range(2))
        self.downsample_ul = nn.ModuleList(ShiftedConv(f, f, "downright", stride=2) for _ in range(2))
        sizes = (config.nr_resnet, config.nr_resnet + 1, config.nr_resnet + 1)
        self.down = nn.ModuleList(_Stage(n, f, config.dropout, up=False) for n in sizes)
        self.upsample_u = nn.ModuleList(ShiftedDeconv(f, f, "down") for _ in range(2))
        self.upsample_ul = nn.ModuleList(ShiftedDeconv(f, f, "downright") for _ in range(2))
        self.out = nn.Conv2d(f, self.head.n_params(c, config.nr_logistic_mix), 1)

    # ------------------------------------------------------------------ input handling
    def _check_input(self, x) -> torch.Tensor:
        cfg = self.config
        if not isinstance(x, torch.Tensor):
            x = torch.as_tensor(x)
        if x.dim() == 3 and cfg.in_channels == 1:
            x = x.unsqueeze(1)
        expected = (cfg.in_channels, cfg.height, cfg.width)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise MorphllrError(
                f"images of shape {tuple(x.shape)} do not fit this model, which expects (N, {expected[0]}, "
                f"{expected[1]}, {expected[2]}); prepare the images with the model's preprocessing"
            )
        if x.is_floating_point() and bool(torch.isnan(x).any()):
            raise MorphllrError("images contain NaN pixels; replace or mask them before scoring")
        return x

    def to_net_units(self, x: torch.Tensor) -> torch.Tensor:
        """Map user-space images to what the network and head see (float32, clamped)."""
        x = x.float()
        if self.head.discrete:
            return x.round().clamp(0.0, 255.0) / 127.5 - 1.0
        x = (x - self.config.input_shift) / self.config.input_scale
        return x.clamp(-NET_INPUT_LIMIT, NET_INPUT_LIMIT)

    # ------------------------------------------------------------------ network
    def _network(self, x_net: torch.Tensor) -> torch.Tensor:
        # Every stream tensor travels with its concat-ELU, zero-padded for its own stream's
        # shifted conv, so that each is computed once although up to three blocks read it.
        def with_elu(t, pad):
            return t, concat_elu_padded(t, pad)

        ones = torch.ones_like(x_net[:, :1])
        x = torch.cat([x_net, ones], dim=1)
        u_list = [with_elu(down_shift(self.u_init(x)), _DOWN)]
        ul_list = [with_elu(down_shift(self.ul_init_down(x)) + right_shift(self.ul_init_right(x)), _DOWNRIGHT)]
        for level, stage in enumerate(self.up):
            for u_block, ul_block in zip(stage.u_blocks, stage.ul_blocks):
                u_list.append(with_elu(u_block.run(*u_list[-1], []), _DOWN))
                ul_list.append(with_elu(ul_block.run(*ul_list[-1], [(u_list[-1][1], _DOWN)]), _DOWNRIGHT))
            if level < 2:
                u_list.append(with_elu(self.downsample_u[level](u_list[-1][0]), _DOWN))
                ul_list.append(with_elu(self.downsample_ul[level](ul_list[-1][0]), _DOWNRIGHT))
        (u, u_elu), (ul, ul_elu) = u_list.pop(), ul_list.pop()
        for level, stage in enumerate(self.down):
            if level > 0:
                u, u_elu = with_elu(self.upsample_u[level - 1](u), _DOWN)
                ul, ul_elu = self.upsample_ul[level - 1](ul), None
            for u_block, ul_block in zip(stage.u_blocks, stage.ul_blocks):
                u, u_elu = with_elu(u_block.run(u, u_elu, [(u_list.pop()[1], _DOWN)]), _DOWN)
                if ul_elu is None:
                    ul_elu = concat_elu_padded(ul, _DOWNRIGHT)
                ul = ul_block.run(ul, ul_elu, [(u_elu, _DOWN), (ul_list.pop()[1], _DOWNRIGHT)])
                ul_elu = None
        return self.out(F.elu(ul))

    def forward(self, x) -> torch.Tensor:
        """Head parameters for every pixel.

        Args:
            x: ``(N, C, H, W)`` images in input space (user units; 0..255 for the discretized head).

        Returns:
            ``(N, P, H, W)`` raw head parameters (dtype of the network's compute).
        """
        x = self._check_input(x)
        return self._network(self.to_net_units(x))

    def log_prob_channels(self, x) -> torch.Tensor:
        """Per-channel conditional log-probabilities.

        Args:
            x: ``(N, C, H, W)`` (or ``(N, H, W)`` when C = 1) images in input space.

        Returns:
            ``(N, C, H, W)`` float32 nats: ``log p(x_c | earlier pixels, channels < c)`` in user units.
        """
        x = self._check_input(x)
        x_net = self.to_net_units(x)
        params = self._network(x_net)
        log_p = self.head.log_prob(params, x_net)
        if not self.head.discrete:
            log_p = log_p - math.log(self.config.input_scale)
        return log_p

    def log_prob_pixels(self, x) -> torch.Tensor:
        """Log-probability of every pixel (summed over channels), ``(N, H, W)`` float32 nats."""
        return self.log_prob_channels(x).sum(dim=1)

    def log_prob(self, x) -> torch.Tensor:
        """Log-likelihood of each image, ``(N,)`` float32 nats."""
        return self.log_prob_pixels(x).sum(dim=(1, 2))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Generate images pixel by pixel (slow: H*W network passes; for sanity plots).

        Args:
            n: number of images.
            generator: optional torch random generator for reproducibility.

        Returns:
            ``(n, C, H, W)`` float32 images in input space.
        """
        cfg = self.config
        x_net = torch.zeros(n, cfg.in_channels, cfg.height, cfg.width, device=self.out.weight.device)
        for i in range(cfg.height):
            for j in range(cfg.width):
                params = self._network(x_net)
                draw = self.head.sample(params[:, :, i : i + 1, j : j + 1], cfg.in_channels, generator)
                x_net[:, :, i, j] = draw[:, :, 0, 0]
        if self.head.discrete:
            return torch.round((x_net + 1.0) * 127.5)
        return x_net * cfg.input_scale + cfg.input_shift
