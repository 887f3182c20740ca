"""PixelCNN++ model: causality, agreement with the plain reference, stability, config errors."""

from __future__ import annotations

import math

import pytest
import torch

from morphllr.errors import MorphllrError
from morphllr.model.pixelcnn import NETWORK_PRESETS, PixelCNN, PixelCNNConfig, concat_elu_padded, gate
from morphllr.model.plain import ReferencePixelCNN


pytestmark = pytest.mark.usefixtures("one_thread")

CONFIGS = [
    PixelCNNConfig(in_channels=1, height=8, width=8, nr_resnet=1, nr_filters=8, dropout=0.0, head="gaussian"),
    PixelCNNConfig(in_channels=2, height=8, width=12, nr_resnet=2, nr_filters=8, dropout=0.0, head="logistic_mixture", nr_logistic_mix=3),
    PixelCNNConfig(in_channels=3, height=12, width=8, nr_resnet=1, nr_filters=8, dropout=0.0, head="discretized_logistic_mixture", nr_logistic_mix=2),
]
IDS = ["c1-8x8-gauss", "c2-8x12-logmix", "c3-12x8-disc"]


def make_net(cfg, seed=0):
    torch.manual_seed(seed)
    net = PixelCNN(cfg).eval()
    # Random biases/weights everywhere (default init zeroes some output biases), so that no
    # path is silently dead and the causality test would see any leak.
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


def random_images(cfg, n=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    shape = (n, cfg.in_channels, cfg.height, cfg.width)
    if cfg.head == "discretized_logistic_mixture":
        return torch.randint(0, 256, shape, generator=g).float()
    return torch.rand(shape, generator=g)


def perturb(cfg, x, i, j, channel=None):
    y = x.clone()
    chans = slice(None) if channel is None else slice(channel, channel + 1)
    if cfg.head == "discretized_logistic_mixture":
        y[:, chans, i, j] = (y[:, chans, i, j] + 101) % 256
    else:
        y[:, chans, i, j] += 0.7
    return y


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_changing_a_pixel_only_affects_later_pixels(cfg):
    net = make_net(cfg)
    x = random_images(cfg)
    h, w = cfg.height, cfg.width
    with torch.no_grad():
        base = net.log_prob_pixels(x).flatten(1)
        for i, j in [(0, 0), (0, w - 1), (h // 2, 0), (h // 2, w // 2), (h - 1, 0), (h - 1, w - 2), (h - 1, w - 1)]:
            k = i * w + j
            changed = net.log_prob_pixels(perturb(cfg, x, i, j)).flatten(1)
            assert torch.equal(changed[:, :k], base[:, :k]), f"pixel {(i, j)} leaks into earlier pixels"
            assert not torch.equal(changed[:, k], base[:, k])  # its own likelihood changes
            if k < h * w - 1:
                assert (changed[:, k + 1 :] != base[:, k + 1 :]).any(), f"pixel {(i, j)} influences no later pixel"


@pytest.mark.parametrize("cfg", CONFIGS[1:], ids=IDS[1:])
def test_channels_of_a_pixel_are_conditioned_in_order(cfg):
    net = make_net(cfg)
    x = random_images(cfg)
    i, j = cfg.height // 2, 1
    with torch.no_grad():
        base = net.log_prob_channels(x)
        for c in range(cfg.in_channels):
            changed = net.log_prob_channels(perturb(cfg, x, i, j, channel=c))
            assert torch.equal(changed[:, :c, i, j], base[:, :c, i, j]), f"channel {c} leaks into earlier channels"
            if c + 1 < cfg.in_channels:
                assert not torch.equal(changed[:, c + 1 :, i, j], base[:, c + 1 :, i, j])


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_head_parameters_have_no_gradient_from_current_or_later_pixels(cfg):
    net = make_net(cfg)
    x = random_images(cfg, n=1)
    h, w = cfg.height, cfg.width
    for i, j in [(0, 0), (1, w - 1), (h - 1, w // 2)]:
        x_in = net.to_net_units(x).requires_grad_(True)
        params = net._network(x_in)
        params[0, :, i, j].sum().backward()
        grad = x_in.grad[0].abs().sum(0).flatten()
        k = i * w + j
        assert grad[k:].max() == 0, f"params at {(i, j)} depend on pixel >= itself"
        if k > 0:
            assert grad[:k].max() > 0


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_matches_plain_reference_implementation(cfg):
    net = make_net(cfg)
    ref = ReferencePixelCNN(cfg).eval()
    ref.load_state_dict(net.state_dict())
    x = random_images(cfg, n=3)
    with torch.no_grad():
        fast, plain = net.log_prob_pixels(x), ref.log_prob_pixels(x)
    assert torch.allclose(fast, plain, rtol=1e-5, atol=1e-5)
    assert torch.allclose(net(x).float(), ref(x), rtol=1e-5, atol=1e-5)


def test_training_gradients_match_reference():
    cfg = CONFIGS[1]
    net = make_net(cfg).train()
    ref = ReferencePixelCNN(cfg).train()
    ref.load_state_dict(net.state_dict())
    x = random_images(cfg, n=2)
    net.log_prob(x).mean().backward()
    ref.log_prob(x).mean().backward()
    for (name, p), q in zip(net.named_parameters(), ref.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-5), name


def test_bf16_autocast_returns_float32_close_to_fp32():
    cfg = CONFIGS[0]
    net = make_net(cfg)
    x = random_images(cfg, n=2)
    with torch.no_grad():
        exact = net.log_prob_pixels(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            approx = net.log_prob_pixels(x)
    assert approx.dtype == torch.float32
    assert (approx - exact).abs().max() < 0.1 * exact.abs().max() + 0.5


def test_continuous_density_is_in_user_units():
    # Scaling the input space by s must shift every pixel's log-density by exactly -log(s).
    cfg = CONFIGS[0]
    net = make_net(cfg)
    scaled = PixelCNN(cfg.with_(input_shift=cfg.input_shift * 10, input_scale=cfg.input_scale * 10)).eval()
    scaled.load_state_dict(net.state_dict())
    x = random_images(cfg)
    with torch.no_grad():
        diff = scaled.log_prob_pixels(x * 10) - net.log_prob_pixels(x)
    assert torch.allclose(diff, torch.full_like(diff, -math.log(10.0)), atol=1e-4)


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_extreme_inputs_give_finite_log_likelihoods(cfg):
    net = make_net(cfg)
    shape = (1, cfg.in_channels, cfg.height, cfg.width)
    top = 255.0 if cfg.head == "discretized_logistic_mixture" else 1.0
    cases = [torch.zeros(shape), torch.full(shape, top), torch.full(shape, 0.37 * top), torch.full(shape, 1e30),
             torch.full(shape, -1e30), torch.full(shape, float("inf")), torch.full(shape, -3e38)]
    with torch.no_grad():
        for x in cases:
            assert torch.isfinite(net.log_prob_pixels(x)).all(), x.flatten()[0].item()


def test_nan_input_is_refused():
    net = make_net(CONFIGS[0])
    x = random_images(CONFIGS[0])
    x[0, 0, 3, 3] = float("nan")
    with pytest.raises(MorphllrError, match="NaN"):
        net.log_prob(x)


def test_bad_shapes_raise_clear_errors():
    net = make_net(CONFIGS[1])
    for shape in [(2, 1, 8, 12), (2, 2, 12, 8), (2, 2, 8), (2, 8, 12)]:
        with pytest.raises(MorphllrError, match="expects"):
            net.log_prob(torch.zeros(shape))


def test_single_channel_model_accepts_n_h_w():
    cfg = CONFIGS[0]
    net = make_net(cfg)
    x = random_images(cfg)
    with torch.no_grad():
        assert torch.equal(net.log_prob(x[:, 0]), net.log_prob(x))


@pytest.mark.parametrize(
    "changes",
    [dict(height=30), dict(width=6), dict(nr_filters=0), dict(dropout=1.0), dict(head="poisson"), dict(input_scale=0.0),
     dict(in_channels=1.5)],
)
def test_bad_config_values_raise(changes):
    with pytest.raises(MorphllrError):
        PixelCNNConfig(**changes)


def test_config_round_trips_and_rejects_unknown_fields():
    cfg = CONFIGS[1]
    assert PixelCNNConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(MorphllrError, match="unknown field"):
        PixelCNNConfig.from_dict({**cfg.to_dict(), "nr_resnets": 3})


def test_zanisi21_preset_is_the_paper_architecture():
    cfg = NETWORK_PRESETS["zanisi21"]
    assert (cfg.nr_resnet, cfg.nr_filters, cfg.dropout, cfg.height, cfg.width, cfg.head) == (3, 64, 0.5, 32, 32, "gaussian")
    assert {"zanisi21", "small", "tiny"} <= set(NETWORK_PRESETS)


def test_dropout_only_acts_in_training():
    cfg = CONFIGS[0].with_(dropout=0.5)
    net = make_net(cfg)
    x = random_images(cfg)
    with torch.no_grad():
        assert torch.equal(net.log_prob(x), net.log_prob(x))
        net.train()
        assert not torch.equal(net.log_prob(x), net.log_prob(x))


def test_sampling_gives_images_of_the_right_shape():
    cfg = NETWORK_PRESETS["tiny"]
    net = make_net(cfg)
    draws = net.sample(2, torch.Generator().manual_seed(0))
    assert draws.shape == (2, cfg.in_channels, cfg.height, cfg.width)
    assert torch.isfinite(net.log_prob(draws)).all()


# ---------------------------------------------------------------- fused building blocks
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("pad", [(0, 0, 0, 0), (1, 1, 1, 0), (1, 0, 1, 0)])
def test_fused_concat_elu_matches_elu_pad_and_has_exact_gradient(channels_last, pad):
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    expected = torch.nn.functional.pad(torch.nn.functional.elu(torch.cat([x, -x], 1)), pad)
    assert torch.allclose(concat_elu_padded(x, pad), expected, atol=1e-12)
    assert torch.autograd.gradcheck(lambda t: concat_elu_padded(t, pad), (x,))
    with torch.no_grad():  # the inference branch writes into a preallocated buffer
        assert torch.allclose(concat_elu_padded(x, pad), expected, atol=1e-12)


def test_fused_dropout_keeps_the_right_fraction_and_backpropagates_through_kept_values():
    torch.manual_seed(3)
    x = torch.randn(4, 16, 8, 8, dtype=torch.float64).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    out = concat_elu_padded(x, (1, 1, 1, 0), dropout=0.5)
    inner = out[:, :, 1:, 1:-1]
    elu = torch.nn.functional.elu(torch.cat([x, -x], 1))
    keep = inner != 0
    assert 0.45 < keep.double().mean().item() < 0.55
    assert torch.allclose(inner[keep], 2.0 * elu[keep])  # kept values scaled by 1 / keep probability
    weights = torch.randn_like(out)
    (out * weights).sum().backward()
    x2 = x.detach().clone().requires_grad_(True)
    elu2 = torch.nn.functional.elu(torch.cat([x2, -x2], 1))
    (elu2 * keep * 2.0 * weights[:, :, 1:, 1:-1]).sum().backward()
    assert torch.allclose(x.grad, x2.grad, atol=1e-12)


@pytest.mark.parametrize("channels_last", [False, True])
def test_gate_matches_glu_and_keeps_the_gradient_layout(channels_last):
    t = torch.randn(2, 6, 4, 5, dtype=torch.float64)
    if channels_last:
        t = t.contiguous(memory_format=torch.channels_last)
    t.requires_grad_(True)
    assert torch.allclose(gate(t), torch.nn.functional.glu(t, dim=1), atol=1e-12)
    assert torch.autograd.gradcheck(gate, (t,))
    (grad,) = torch.autograd.grad((gate(t) * torch.randn(2, 3, 4, 5, dtype=torch.float64)).sum(), t)
    # a channels-last gradient stays channels-last, so the convolution before it needs no transpose
    assert grad.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
