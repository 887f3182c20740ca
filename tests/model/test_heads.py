"""Likelihood heads: normalisation, agreement with scipy, stability, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import logsumexp, softplus

from morphllr.errors import MorphllrError
from morphllr.model.heads import HEAD_NAMES, MIN_SCALE, bits_per_dim, get_head


pytestmark = pytest.mark.usefixtures("one_thread")

torch.manual_seed(1234)


def random_params(head, channels, nr_mix=3, n=2, h=3, w=4, spread=1.0):
    p = head.n_params(channels, nr_mix)
    return torch.randn(n, p, h, w, dtype=torch.float32) * spread


def test_n_params_matches_pixelcnnpp_rgb_layout():
    # PixelCNN++ for RGB uses 10 numbers per mixture component.
    assert get_head("discretized_logistic_mixture").n_params(3, 5) == 50
    assert get_head("logistic_mixture").n_params(1, 5) == 15
    assert get_head("gaussian").n_params(1, 5) == 2
    assert get_head("gaussian").n_params(3, 5) == 9


def test_unknown_head_is_a_clear_error():
    with pytest.raises(MorphllrError, match="unknown"):
        get_head("normal")


def test_bits_per_dim_converts_nats():
    assert bits_per_dim(-10 * math.log(2.0), 10) == pytest.approx(1.0)


@pytest.mark.parametrize("name", HEAD_NAMES)
def test_mismatched_shapes_raise(name):
    head = get_head(name)
    params = random_params(head, channels=1)
    with pytest.raises(MorphllrError):
        head.log_prob(params, torch.zeros(2, 1, 5, 4))
    with pytest.raises(MorphllrError):
        head.log_prob(params, torch.zeros(2, 2, 3, 4))  # wrong C for these params


# ---------------------------------------------------------------- normalisation
def bin_grid():
    return torch.arange(256, dtype=torch.float32) / 127.5 - 1.0


def test_discretized_bins_sum_to_one_single_channel():
    head = get_head("discretized_logistic_mixture")
    params = random_params(head, 1, spread=2.0)
    # Make some scales tiny and some huge, and put some means far outside [-1, 1].
    params[0, 3:6] = -10.0
    params[1, 3:6] = 4.0
    params[1, 6:9] += 3.0
    grid = bin_grid()
    log_p = torch.stack([head.log_prob(params, torch.full((2, 1, 3, 4), float(v))) for v in grid])
    total = torch.exp(log_p.double()).sum(0)
    assert torch.allclose(total, torch.ones_like(total), atol=1e-5)


def test_discretized_channel_conditionals_sum_to_one():
    head = get_head("discretized_logistic_mixture")
    params = random_params(head, 2, n=1, h=2, w=2, spread=1.5)
    grid = bin_grid()
    for x0 in (-1.0, grid[77].item(), 1.0):
        log_p1 = []
        for v in grid:
            x = torch.empty(1, 2, 2, 2)
            x[:, 0], x[:, 1] = x0, v
            log_p1.append(head.log_prob(params, x)[:, 1])
        total = torch.exp(torch.stack(log_p1).double()).sum(0)
        assert torch.allclose(total, torch.ones_like(total), atol=1e-5)


@pytest.mark.parametrize("name", ["gaussian", "logistic_mixture"])
def test_continuous_density_integrates_to_one(name):
    head = get_head(name)
    params = random_params(head, 1, n=1, h=2, w=3, spread=0.7)
    grid = torch.linspace(-60.0, 60.0, 60001)
    x = grid[:, None, None, None].expand(-1, 1, 2, 3)
    log_p = head.log_prob(params.expand(len(grid), -1, -1, -1), x)
    integral = np.trapezoid(np.exp(log_p.double().numpy()), grid.double().numpy(), axis=0)
    np.testing.assert_allclose(integral, 1.0, atol=2e-4)


@pytest.mark.parametrize("name", ["gaussian", "logistic_mixture"])
def test_continuous_second_channel_conditional_integrates_to_one(name):
    head = get_head(name)
    params = random_params(head, 2, n=1, h=1, w=2, spread=0.7)
    grid = torch.linspace(-60.0, 60.0, 30001)
    for x0 in (-2.0, 0.3, 5.0):
        x = torch.empty(len(grid), 2, 1, 2)
        x[:, 0] = x0
        x[:, 1] = grid[:, None, None]
        log_p1 = head.log_prob(params.expand(len(grid), -1, -1, -1), x)[:, 1]
        integral = np.trapezoid(np.exp(log_p1.double().numpy()), grid.double().numpy(), axis=0)
        np.testing.assert_allclose(integral, 1.0, atol=2e-4)


def test_logistic_joint_two_channel_density_integrates_to_one():
    head = get_head("logistic_mixture")
    params = random_params(head, 2, n=1, h=1, w=1, spread=0.7)
    g = torch.linspace(-40.0, 40.0, 1601)
    x0, x1 = torch.meshgrid(g, g, indexing="ij")
    x = torch.stack([x0.reshape(-1), x1.reshape(-1)], dim=1)[:, :, None, None]
    log_p = head.log_prob(params.expand(len(x), -1, -1, -1), x).sum(1).reshape(len(g), len(g))
    dens = np.exp(log_p.double().numpy())
    integral = np.trapezoid(np.trapezoid(dens, g.numpy(), axis=1), g.numpy())
    assert integral == pytest.approx(1.0, abs=2e-3)


# ---------------------------------------------------------------- brute force vs scipy
def split_numpy(params, channels, nr_mix):
    p = params.double().numpy()
    k = channels * (channels - 1) // 2
    logits = p[:, :nr_mix]
    means = p[:, nr_mix : nr_mix + channels * nr_mix].reshape(p.shape[0], channels, nr_mix, *p.shape[2:])
    log_s = p[:, nr_mix + channels * nr_mix : nr_mix + 2 * channels * nr_mix].reshape(means.shape)
    coeffs = p[:, nr_mix + 2 * channels * nr_mix :].reshape(p.shape[0], k, nr_mix, *p.shape[2:])
    return logits, means, log_s, coeffs


def conditional_mean_numpy(means, coeffs, x, c):
    """mean of channel c, component axis kept; pairs ordered (1,0),(2,0),(2,1)."""
    m = means[:, c].copy()
    pair = c * (c - 1) // 2
    for k in range(c):
        m += np.tanh(coeffs[:, pair + k]) * x[:, k][:, None]
    return m


@pytest.mark.parametrize("channels", [1, 3])
def test_gaussian_matches_scipy(channels):
    head = get_head("gaussian")
    params = random_params(head, channels)
    x = torch.randn(2, channels, 3, 4)
    ours = head.log_prob(params, x).double().numpy()
    p, xn = params.double().numpy(), x.double().numpy()
    for c in range(channels):
        mean = p[:, c].copy()
        pair = c * (c - 1) // 2
        for j in range(c):
            mean += np.tanh(p[:, 2 * channels + pair + j]) * xn[:, j]
        scale = softplus(p[:, channels + c]) + MIN_SCALE
        expected = stats.norm.logpdf(xn[:, c], loc=mean, scale=scale)
        np.testing.assert_allclose(ours[:, c], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("channels", [1, 2, 3])
def test_logistic_mixture_matches_scipy(channels):
    nr_mix = 3
    head = get_head("logistic_mixture")
    params = random_params(head, channels, nr_mix)
    x = torch.randn(2, channels, 3, 4)
    ours = head.log_prob(params, x).double().numpy()
    logits, means, log_s, coeffs = split_numpy(params, channels, nr_mix)
    xn = x.double().numpy()
    log_pi = logits - logsumexp(logits, axis=1, keepdims=True)
    comp = np.zeros_like(means)
    for c in range(channels):
        mean = conditional_mean_numpy(means, coeffs, xn, c)
        comp[:, c] = stats.logistic.logpdf(xn[:, c][:, None], loc=mean, scale=np.exp(log_s[:, c]))
    joint = logsumexp(log_pi + comp.sum(1), axis=1)
    np.testing.assert_allclose(ours.sum(1), joint, rtol=1e-5, atol=1e-4)
    first = logsumexp(log_pi + comp[:, 0], axis=1)
    np.testing.assert_allclose(ours[:, 0], first, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("channels", [1, 3])
def test_discretized_logistic_mixture_matches_scipy(channels):
    nr_mix = 4
    head = get_head("discretized_logistic_mixture")
    params = random_params(head, channels, nr_mix, spread=0.5)
    values = torch.randint(0, 256, (2, channels, 3, 4))
    values[0, :, 0, 0] = 0  # both edge bins
    values[0, :, 0, 1] = 255
    x = values.float() / 127.5 - 1.0
    ours = head.log_prob(params, x).double().numpy()
    logits, means, log_s, coeffs = split_numpy(params, channels, nr_mix)
    xn = x.double().numpy()
    log_pi = logits - logsumexp(logits, axis=1, keepdims=True)
    comp = np.zeros_like(means)
    for c in range(channels):
        mean = conditional_mean_numpy(means, coeffs, xn, c)
        scale = np.exp(np.maximum(log_s[:, c], -7.0))
        xc = xn[:, c][:, None]
        upper = np.where(xc > 0.999, 1.0, stats.logistic.cdf(xc + 1 / 255, loc=mean, scale=scale))
        lower = np.where(xc < -0.999, 0.0, stats.logistic.cdf(xc - 1 / 255, loc=mean, scale=scale))
        comp[:, c] = np.log(upper - lower)
    joint = logsumexp(log_pi + comp.sum(1), axis=1)
    np.testing.assert_allclose(ours.sum(1), joint, rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------- stability
@pytest.mark.parametrize("name", HEAD_NAMES)
@pytest.mark.parametrize("channels", [1, 3])
def test_extreme_params_and_values_stay_finite(name, channels):
    head = get_head(name)
    params = random_params(head, channels, n=4)
    params[0] = 1e4
    params[1] = -1e4
    params[2, ::2] = 80.0
    params[3] = 0.0
    lim = 1.0 if head.discrete else 1e4
    for value in (-lim, 0.0, lim):
        out = head.log_prob(params, torch.full((4, channels, 3, 4), value))
        assert torch.isfinite(out).all(), (name, value)


def test_discretized_tail_bins_are_finite_and_exact():
    # A sharp logistic far from the bin: the naive sigmoid difference underflows to 0.
    head = get_head("discretized_logistic_mixture")
    params = torch.zeros(1, 3, 1, 1)
    params[0, 0] = 0.0  # one component
    params[0, 1] = -0.9  # mean
    params[0, 2] = -7.0  # scale e^-7
    x = torch.full((1, 1, 1, 1), 0.5)
    out = head.log_prob(params, x).item()
    scale = math.exp(-7.0)
    z_hi, z_lo = (0.5 + 0.9 + 1 / 255) / scale, (0.5 + 0.9 - 1 / 255) / scale
    expected = -z_lo + math.log1p(-math.exp(z_lo - z_hi))  # log(sf(z_lo) - sf(z_hi)) for large z
    assert math.isfinite(out)
    assert out == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("name", HEAD_NAMES)
def test_samples_have_the_head_statistics(name):
    head = get_head(name)
    params = torch.zeros(1, head.n_params(1, 2), 64, 64)
    if name == "gaussian":
        params[:, 0], params[:, 1] = 0.25, math.log(math.expm1(0.1))  # mean .25, sd ~ .1
        expected_mean, expected_sd = 0.25, 0.1 + MIN_SCALE
    else:
        params[:, 0], params[:, 1] = 5.0, -5.0  # nearly all weight on component 0
        params[:, 2], params[:, 3] = 0.25, -0.6
        params[:, 4], params[:, 5] = math.log(0.05), math.log(0.05)
        expected_mean, expected_sd = 0.25, 0.05 * math.pi / math.sqrt(3)
    draws = head.sample(params, 1, torch.Generator().manual_seed(0))
    assert draws.shape == (1, 1, 64, 64)
    assert draws.mean().item() == pytest.approx(expected_mean, abs=0.01)
    assert draws.std().item() == pytest.approx(expected_sd, rel=0.08)
    if head.discrete:
        k = (draws + 1) * 127.5
        assert torch.allclose(k, k.round(), atol=1e-3)
