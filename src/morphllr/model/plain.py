"""A deliberately plain PixelCNN++: the yardstick for :mod:`morphllr.model.pixelcnn`.

Written to be read next to Salimans et al. (2017) / the openai/pixel-cnn ``nn.py`` structure,
one step per line, NCHW float32, explicit ``F.pad`` before every causal convolution, no fusion.
It holds parameters under the same names and shapes as :class:`morphllr.model.pixelcnn.PixelCNN`, so
``ReferencePixelCNN(cfg).load_state_dict(fast.state_dict())`` gives the same function; the
tests use that to check the optimised model, and ``benchmarks/throughput.py`` uses it as the
"plain fp32 eager" baseline.  Not used by train/score.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from morphllr.model.heads import get_head
from morphllr.model.pixelcnn import NET_INPUT_LIMIT, PixelCNNConfig


def concat_elu(x):
    """elu([x, -x]) along channels."""
    return F.elu(torch.cat([x, -x], dim=1))


def down_shift(x):
    """Shift one row down, zero top row."""
    n, c, h, w = x.shape
    return torch.cat([torch.zeros(n, c, 1, w, dtype=x.dtype), x[:, :, : h - 1, :]], dim=2)


def right_shift(x):
    """Shift one column right, zero left column."""
    n, c, h, w = x.shape
    return torch.cat([torch.zeros(n, c, h, 1, dtype=x.dtype), x[:, :, :, : w - 1]], dim=3)


def down_shifted_conv(conv, x, stride=1):
    """Pad (kh-1) rows on top and (kw-1)/2 columns each side, then a valid convolution."""
    kh, kw = conv.weight.shape[2:]
    x = F.pad(x, ((kw - 1) // 2, (kw - 1) // 2, kh - 1, 0))
    return F.conv2d(x, conv.weight, conv.bias, stride=stride)


def down_right_shifted_conv(conv, x, stride=1):
    """Pad (kh-1) rows on top and (kw-1) columns on the left, then a valid convolution."""
    kh, kw = conv.weight.shape[2:]
    x = F.pad(x, (kw - 1, 0, kh - 1, 0))
    return F.conv2d(x, conv.weight, conv.bias, stride=stride)


def down_shifted_deconv(deconv, x):
    """Stride-2 transposed 2x3 convolution, cropped to (2H, 2W) keeping it causal."""
    h, w = x.shape[2], x.shape[3]
    y = F.conv_transpose2d(x, deconv.weight, deconv.bias, stride=2, output_padding=1)
    return y[:, :, : 2 * h, 1 : 2 * w + 1]


def down_right_shifted_deconv(deconv, x):
    """Stride-2 transposed 2x2 convolution, cropped to (2H, 2W)."""
    h, w = x.shape[2], x.shape[3]
    y = F.conv_transpose2d(x, deconv.weight, deconv.bias, stride=2, output_padding=1)
    return y[:, :, : 2 * h, : 2 * w]


class _Block(nn.Module):
    def __init__(self, filters, kernel, aux_mult):
        super().__init__()
        self.conv_in = nn.Conv2d(2 * filters, filters, kernel)
        self.aux = nn.Conv2d(2 * aux_mult * filters, filters, 1) if aux_mult else None
        self.conv_out = nn.Conv2d(2 * filters, 2 * filters, kernel)


class _Stage(nn.Module):
    def __init__(self, n_blocks, filters, up):
        super().__init__()
        self.u_blocks = nn.ModuleList(_Block(filters, (2, 3), 0 if up else 1) for _ in range(n_blocks))
        self.ul_blocks = nn.ModuleList(_Block(filters, (2, 2), 1 if up else 2) for _ in range(n_blocks))


def gated_resnet(block, x, shifted_conv, aux, dropout, training):
    """x + a * sigmoid(b) with [a, b] = conv(dropout(elu(conv(elu(x)) + nin(elu(aux)))))."""
    c1 = shifted_conv(block.conv_in, concat_elu(x))
    if aux is not None:
        c1 = c1 + F.conv2d(concat_elu(aux), block.aux.weight, block.aux.bias)
    c1 = concat_elu(c1)
    c1 = F.dropout(c1, dropout, training=training)
    c2 = shifted_conv(block.conv_out, c1)
    a, b = torch.chunk(c2, 2, dim=1)
    return x + a * torch.sigmoid(b)


class ReferencePixelCNN(nn.Module):
    """Plain PixelCNN++ with the same parameters (names, shapes) as ``morphllr.model.pixelcnn.PixelCNN``.

    Args:
        config: the :class:`~morphllr.model.pixelcnn.PixelCNNConfig`.
    """

    def __init__(self, config: PixelCNNConfig):
        super().__init__()
        self.config = config
        self.head = get_head(config.head)
        c, f = config.in_channels, config.nr_filters
        self.u_init = nn.Conv2d(c + 1, f, (2, 3))
        self.ul_init_down = nn.Conv2d(c + 1, f, (1, 3))
        self.ul_init_right = nn.Conv2d(c + 1, f, (2, 1))
        self.up = nn.ModuleList(_Stage(config.nr_resnet, f, up=True) for _ in range(3))
        self.downsample_u = nn.ModuleList(nn.Conv2d(f, f, (2, 3), stride=2) for _ in range(2))
        self.downsample_ul = nn.ModuleList(nn.Conv2d(f, f, (2, 2), stride=2) for _ in range(2))
        sizes = (config.nr_resnet, config.nr_resnet + 1, config.nr_resnet + 1)
        self.down = nn.ModuleList(_Stage(n, f, up=False) for n in sizes)
        self.upsample_u = nn.ModuleList(nn.ConvTranspose2d(f, f, (2, 3), stride=2) for _ in range(2))
        self.upsample_ul = nn.ModuleList(nn.ConvTranspose2d(f, f, (2, 2), stride=2) for _ in range(2))
        self.out = nn.Conv2d(f, self.head.n_params(c, config.nr_logistic_mix), 1)

    def to_net_units(self, x):
        """Same input mapping as the fast model."""
        x = x.float()
        if self.head.discrete:
            return x.round().clamp(0.0, 255.0) / 127.5 - 1.0
        x = (x - self.config.input_shift) / self.config.input_scale
        return x.clamp(-NET_INPUT_LIMIT, NET_INPUT_LIMIT)

    def forward(self, x):
        """Head parameters ``(N, P, H, W)`` for images ``(N, C, H, W)`` in input space."""
        cfg, p, training = self.config, self.config.dropout, self.training
        x = self.to_net_units(x)
        ones = torch.ones(x.shape[0], 1, x.shape[2], x.shape[3])
        x = torch.cat([x, ones], dim=1)

        # up pass
        u_list = [down_shift(down_shifted_conv(self.u_init, x))]
        ul_list = [down_shift(down_shifted_conv(self.ul_init_down, x)) + right_shift(down_right_shifted_conv(self.ul_init_right, x))]
        for level in range(3):
            stage = self.up[level]
            for i in range(cfg.nr_resnet):
                u_list.append(gated_resnet(stage.u_blocks[i], u_list[-1], down_shifted_conv, None, p, training))
                ul_list.append(gated_resnet(stage.ul_blocks[i], ul_list[-1], down_right_shifted_conv, u_list[-1], p, training))
            if level < 2:
                u_list.append(down_shifted_conv(self.downsample_u[level], u_list[-1], stride=2))
                ul_list.append(down_right_shifted_conv(self.downsample_ul[level], ul_list[-1], stride=2))

        # down pass
        u = u_list.pop()
        ul = ul_list.pop()
        for level in range(3):
            stage = self.down[level]
            if level > 0:
                u = down_shifted_deconv(self.upsample_u[level - 1], u)
                ul = down_right_shifted_deconv(self.upsample_ul[level - 1], ul)
            for i in range(len(stage.u_blocks)):
                u = gated_resnet(stage.u_blocks[i], u, down_shifted_conv, u_list.pop(), p, training)
                ul = gated_resnet(stage.ul_blocks[i], ul, down_right_shifted_conv, torch.cat([u, ul_list.pop()], dim=1), p, training)
        assert not u_list and not ul_list
        return self.out(F.elu(ul))

    def log_prob_pixels(self, x):
        """``(N, H, W)`` log p per pixel in nats, user units."""
        params = self.forward(x)
        log_p = self.head.log_prob(params, self.to_net_units(x))
        if not self.head.discrete:
            log_p = log_p - math.log(self.config.input_scale)
        return log_p.sum(dim=1)

    def log_prob(self, x):
        """``(N,)`` log p per image in nats."""
        return self.log_prob_pixels(x).sum(dim=(1, 2))
