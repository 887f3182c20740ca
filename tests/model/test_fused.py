"""Fused CPU kernels (model/fused_cpu.cpp): the same numbers as the eager ops, values and gradients.

Every kernel is checked against the eager op it replaces on awkward shapes (channel counts that
are not a multiple of the 8 AVX2 or 16 AVX-512 lanes, strided views, auxiliary addends at offsets), in
float32 (to rounding) and bfloat16 (to bf16 rounding), forward and backward; dropout is checked
for its rate, scaling, reproducibility and for a backward that uses the forward's mask.  The
whole network on the fused path is held to the plain reference (values and training gradients),
and to causality.  Two other variants of the same source are built and compared too, kernel by
kernel and in the whole network: the portable one (plain loops, the fallback of other CPUs) and,
on CPUs without AVX-512, the AVX-512 code path run through SIMDe's portable intrinsics.  The AVX2
and AVX-512 (+BF16) builds this CPU cannot run are at least compiled warning-free.
"""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F

from morphllr import runtime
from morphllr.model import fused
from morphllr.model.pixelcnn import PixelCNN, PixelCNNConfig
from morphllr.model.plain import ReferencePixelCNN

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", autouse=True)
def kernels():
    probe = torch.zeros(1, 2, 2, 2).contiguous(memory_format=torch.channels_last)
    if not fused.usable(probe):
        if shutil.which("c++") or shutil.which("g++"):
            pytest.fail(f"a C++ compiler is installed but {fused.status()}")
        pytest.skip(f"no C++ compiler: {fused.status()}")


def cl(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last)


def eager_concat_elu(x, pad, addends=()):
    """The eager definition: pad(elu(cat([s, -s]))) with s = x + crops, in float64."""
    s = x.double()
    h, w = x.shape[2], x.shape[3]
    for y, (top, left) in addends:
        s = s + y.double()[:, :, top : top + h, left : left + w]
    return F.pad(F.elu(torch.cat([s, -s], 1)), pad)


PADS = [(0, 0, 0, 0), (1, 1, 1, 0), (1, 0, 1, 0)]


@pytest.mark.parametrize("channels", [5, 16, 20, 64])
@pytest.mark.parametrize("pad", PADS)
def test_concat_elu_pad_matches_eager_in_float32(channels, pad):
    g = torch.Generator().manual_seed(channels)
    x = cl(3 * torch.randn(2, channels, 5, 7, generator=g))
    y = cl(torch.randn(2, channels, 6, 9, generator=g))
    for addends in [(), ((y, (1, 2)),), ((y, (0, 0)), (y, (1, 1)))]:
        got = fused.concat_elu_pad(x, pad, 0.0, addends)
        assert got.is_contiguous(memory_format=torch.channels_last) and got.dtype == torch.float32
        assert torch.allclose(got.double(), eager_concat_elu(x, pad, addends), rtol=3e-7, atol=3e-7)


def test_concat_elu_pad_takes_strided_views():
    t = cl(torch.randn(2, 40, 6, 6))
    x = t[:, :20]  # channels innermost, pixel stride 40: not dense
    assert x.stride(1) == 1 and not x.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(fused.concat_elu_pad(x, (1, 1, 1, 0)).double(), eager_concat_elu(x, (1, 1, 1, 0)), atol=3e-7)


def test_concat_elu_pad_in_bfloat16_is_within_bf16_rounding():
    x = cl(4 * torch.randn(3, 24, 8, 8)).bfloat16()
    got = fused.concat_elu_pad(x, (1, 1, 1, 0)).double()
    exact = eager_concat_elu(x, (1, 1, 1, 0))
    # bf16 keeps 8 significant bits: half a unit in the last place is 2^-9 of the value
    assert ((got - exact).abs() <= exact.abs() * 2.0**-8 + 1e-6).all()


def test_concat_elu_pad_gradients_match_eager():
    g = torch.Generator().manual_seed(1)
    x = cl(torch.randn(2, 20, 5, 6, generator=g)).requires_grad_()
    y1 = cl(torch.randn(2, 20, 6, 8, generator=g)).requires_grad_()
    y2 = cl(torch.randn(2, 20, 6, 7, generator=g)).requires_grad_()
    weights = torch.randn(2, 40, 6, 8, generator=g)
    addends = ((y1, (1, 1)), (y2, (1, 0)))
    (fused.concat_elu_pad(x, (1, 1, 1, 0), 0.0, addends) * weights).sum().backward()
    got = [t.grad.clone() for t in (x, y1, y2)]
    for t in (x, y1, y2):
        t.grad = None
    (eager_concat_elu(x, (1, 1, 1, 0), addends).float() * weights).sum().backward()
    for a, b in zip(got, (x.grad, y1.grad, y2.grad)):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-6)
    assert got[1][:, :, 0].abs().max() == 0  # the cropped-away border of an addend gets no gradient


def test_dropout_rate_scale_reproducibility_and_backward():
    x = cl(torch.randn(4, 48, 8, 8)).requires_grad_()
    torch.manual_seed(5)
    out = fused.concat_elu_pad(x, (1, 1, 1, 0), dropout=0.5)
    torch.manual_seed(5)
    again = fused.concat_elu_pad(x, (1, 1, 1, 0), dropout=0.5)
    assert torch.equal(out, again)  # torch.manual_seed fixes the masks
    assert not torch.equal(out, fused.concat_elu_pad(x, (1, 1, 1, 0), dropout=0.5))
    inner = out[:, :, 1:, 1:-1]
    full = eager_concat_elu(x.detach(), (0, 0, 0, 0)).float()
    keep = inner != 0
    assert 0.47 < keep.float().mean().item() < 0.53
    assert torch.allclose(inner[keep], 2.0 * full[keep], rtol=1e-6, atol=1e-6)
    # channels and positions are dropped independently: no channel or row is all kept or all dropped
    rate = keep.float().mean(dim=(0, 2, 3))
    assert rate.min() > 0.3 and rate.max() < 0.7
    weights = torch.randn_like(out)
    (out * weights).sum().backward()
    x2 = x.detach().clone().requires_grad_()
    (F.elu(torch.cat([x2, -x2], 1)) * keep * 2.0 * weights[:, :, 1:, 1:-1]).sum().backward()
    assert torch.allclose(x.grad, x2.grad, rtol=1e-5, atol=1e-6)  # backward recomputed the forward's mask


@pytest.mark.parametrize("channels", [3, 16, 40])
def test_gated_residual_matches_eager_with_gradients(channels):
    g = torch.Generator().manual_seed(channels)
    t = cl(3 * torch.randn(2, 2 * channels, 5, 6, generator=g)).requires_grad_()
    x = cl(torch.randn(2, channels, 5, 6, generator=g)).requires_grad_()
    weights = torch.randn(2, channels, 5, 6, generator=g)
    out = fused.gated_residual(t, x)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(out, x + F.glu(t, 1), rtol=1e-6, atol=1e-6)
    assert torch.allclose(fused.gated_residual(t), F.glu(t, 1), rtol=1e-6, atol=1e-6)
    (out * weights).sum().backward()
    got_t, got_x = t.grad.clone(), x.grad.clone()
    t.grad = x.grad = None
    ((x + F.glu(t, 1)) * weights).sum().backward()
    assert torch.allclose(got_t, t.grad, rtol=1e-5, atol=1e-6)
    assert torch.equal(got_x, x.grad)


def test_gate_in_bfloat16_is_within_bf16_rounding():
    t = cl(4 * torch.randn(2, 48, 6, 6)).bfloat16()
    exact = F.glu(t.double(), 1)
    got = fused.gated_residual(t).double()
    assert ((got - exact).abs() <= exact.abs() * 2.0**-8 + 1e-6).all()


def test_extreme_values_stay_finite_and_exact_in_the_limits():
    x = cl(torch.tensor([-1e4, -100.0, -88.0, -20.0, 0.0, 20.0, 100.0, 1e4]).view(1, 8, 1, 1))
    out = fused.concat_elu_pad(x, (0, 0, 0, 0))[0, :, 0, 0]
    expected = F.elu(torch.cat([x, -x], 1))[0, :, 0, 0]
    assert torch.isfinite(out).all() and torch.allclose(out, expected, rtol=1e-6, atol=1e-7)
    t = cl(torch.tensor([1.0, 1.0, 1.0, -1e4, 0.0, 1e4]).view(1, 6, 1, 1))
    assert torch.allclose(fused.gated_residual(t)[0, :, 0, 0], torch.tensor([0.0, 0.5, 1.0]), atol=1e-7)


def test_the_model_falls_back_to_eager_ops_where_kernels_do_not_apply():
    x = torch.randn(2, 3, 4, 5)  # NCHW: not channels-last
    assert not fused.usable(x) and not fused.usable(x.double())
    with fused.disabled():
        assert not fused.usable(cl(x))
        assert "switched off" in fused.status()
    assert fused.usable(cl(x))


# ---------------------------------------------------------------- the whole network
CONFIGS = [
    PixelCNNConfig(in_channels=1, height=8, width=8, nr_resnet=1, nr_filters=8, dropout=0.0, head="gaussian"),
    PixelCNNConfig(in_channels=3, height=12, width=8, nr_resnet=2, nr_filters=20, dropout=0.0,
                   head="discretized_logistic_mixture", nr_logistic_mix=2),
]


def make_pair(cfg):
    torch.manual_seed(0)
    net = PixelCNN(cfg)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ref = ReferencePixelCNN(cfg)
    ref.load_state_dict(net.state_dict())
    x = torch.rand(3, cfg.in_channels, cfg.height, cfg.width)
    if cfg.head == "discretized_logistic_mixture":
        x = (255 * x).round()
    return net.to(memory_format=torch.channels_last), ref, x


@pytest.mark.parametrize("cfg", CONFIGS, ids=["gauss-8", "disc-rgb-20"])
def test_fused_network_matches_the_plain_reference_in_values_and_gradients(cfg):
    net, ref, x = make_pair(cfg)
    with torch.no_grad():
        assert torch.allclose(net.log_prob_pixels(cl(x)), ref.log_prob_pixels(x), rtol=1e-5, atol=1e-5)
    net.train(), ref.train()
    net.log_prob(cl(x)).mean().backward()
    ref.log_prob(x).mean().backward()
    for (name, p), q in zip(net.named_parameters(), ref.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-5), name


def test_fused_network_is_causal():
    cfg = CONFIGS[0]
    net, _, x = make_pair(cfg)
    with torch.no_grad():
        base = net.log_prob_pixels(cl(x)).flatten(1)
        for i, j in [(0, 0), (3, 5), (7, 7)]:
            y = x.clone()
            y[:, :, i, j] += 0.7
            changed = net.log_prob_pixels(cl(y)).flatten(1)
            k = i * cfg.width + j
            assert torch.equal(changed[:, :k], base[:, :k]), f"pixel {(i, j)} leaks into earlier pixels"
            assert not torch.equal(changed[:, k], base[:, k])


def test_fused_and_eager_bf16_paths_agree():
    cfg = CONFIGS[0].with_(nr_filters=32)
    net, _, x = make_pair(cfg)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        fast = net.log_prob_pixels(cl(x))
        with fused.disabled():
            eager = net.log_prob_pixels(cl(x))
    assert fast.dtype == torch.float32
    # both round to bf16 at every layer; they differ by a few bf16 units, far below the per-pixel spread
    assert (fast - eager).abs().mean() < 0.02 * eager.abs().mean() + 0.02


def test_fused_dropout_trains_like_the_eager_dropout():
    cfg = CONFIGS[0].with_(dropout=0.5, nr_filters=16)
    net, _, x = make_pair(cfg)
    net.train()
    torch.manual_seed(1)
    a = net.log_prob(cl(x))
    torch.manual_seed(1)
    b = net.log_prob(cl(x))
    assert torch.equal(a, b)  # reproducible under torch.manual_seed
    with torch.no_grad():
        samples = torch.stack([net.log_prob(cl(x)) for _ in range(40)])
        with fused.disabled():
            eager = torch.stack([net.log_prob(cl(x)) for _ in range(40)])
    # same dropout rate and scaling: the two give the same distribution of training log-likelihoods
    assert (samples.mean(0) - eager.mean(0)).abs().max() < 4 * (eager.std(0).max() / 40**0.5) + 1e-3


# ---------------------------------------------------------------- the other instruction sets
def _variant_flags(variant: str) -> list[str]:
    if variant == "portable":
        return fused.PORTABLE_CFLAGS
    try:
        return fused.avx512_emulation_cflags()
    except ImportError:
        pytest.skip("the AVX-512 emulation needs SIMDe's headers: pip install simde-py (in the test extra)")


@pytest.fixture(scope="module", params=["portable", "avx512-emulated"])
def other_variant(request):
    """This source built as another CPU's variant: plain loops (x86-64 baseline), or the AVX-512
    primitives through SIMDe, whose arithmetic a CPU without AVX-512 can then check."""
    if request.param == "avx512-emulated" and "avx512f" in runtime._cpu_flags():
        pytest.skip("this CPU runs the AVX-512 path natively: the tests above check it")
    flags = _variant_flags(request.param)
    return fused.build(f"morphllr_fused_{request.param.replace('-', '_')}", flags)


@pytest.mark.slow
def test_other_variants_give_the_numbers_of_the_native_build(other_variant):
    """Each kernel of the other variant against this CPU's native build (itself held to the eager ops above)."""
    ops = other_variant
    g = torch.Generator().manual_seed(2)
    for dtype in (torch.float32, torch.bfloat16):
        # 20 and 40 channels: whole 8- and 16-lane vectors and a tail of leftover channels
        x = cl(3 * torch.randn(2, 20, 5, 6, generator=g)).to(dtype)
        y = cl(torch.randn(2, 20, 6, 8, generator=g)).to(dtype)
        t = cl(3 * torch.randn(2, 40, 5, 6, generator=g)).to(dtype)
        tol = 3e-7 if dtype == torch.float32 else 2.0**-7
        for seed, threshold in [(0, 0), (7, 128)]:
            args = (x, 1, 0, 1, 1, [y], [1, 1], seed, threshold, 2.0 if threshold else 1.0)
            a, b = ops.concat_elu_pad(*args).double(), fused._ops.concat_elu_pad(*args).double()
            assert torch.equal(a == 0, b == 0)  # the same dropout mask
            assert ((a - b).abs() <= tol * (1 + b.abs())).all()
            grad = cl(torch.randn(a.shape, generator=g)).to(dtype)
            other, native = (o.concat_elu_pad_grad(grad, o.concat_elu_pad(*args), 1, 1, 5, 6, seed, threshold,
                                                   args[-1], [6, 8], [1, 1]) for o in (ops, fused._ops))
            assert len(other) == len(native) == 2  # x's gradient and the addend's
            for ga, gb in zip(other, native):
                assert ((ga.double() - gb.double()).abs() <= 2 * tol * (1 + gb.double().abs())).all()
        assert ((ops.gate(t, x).double() - fused._ops.gate(t, x).double()).abs() <= tol * 4).all()
        assert ((ops.gate(t, None).double() - fused._ops.gate(t, None).double()).abs() <= tol * 4).all()
        grad = cl(torch.randn(2, 20, 5, 6, generator=g)).to(dtype)
        assert ((ops.gate_grad(grad, t).double() - fused._ops.gate_grad(grad, t).double()).abs() <= tol * 4).all()


@pytest.mark.slow
@pytest.mark.parametrize("cfg", CONFIGS, ids=["gauss-8", "disc-rgb-20"])
def test_the_network_on_other_variants_matches_the_plain_reference(other_variant, cfg, monkeypatch):
    """The whole network with the other variant's kernels in place of the native ones: values and gradients."""
    monkeypatch.setattr(fused, "_ops", other_variant)
    test_fused_network_matches_the_plain_reference_in_values_and_gradients(cfg)


@pytest.mark.slow
@pytest.mark.parametrize("march", [["-march=x86-64-v3"], ["-march=x86-64-v4"], ["-march=x86-64-v4", "-mavx512bf16"]])
def test_every_vector_variant_compiles_without_warnings(march, tmp_path):
    """AVX2 and AVX-512 (with and without AVX512-BF16) variants compile cleanly, including those this CPU
    cannot run; the variant it runs is the native build the tests above compare with the eager ops."""
    import subprocess

    from torch.utils import cpp_extension

    compiler = shutil.which("c++") or shutil.which("g++")
    includes = [arg for path in cpp_extension.include_paths() for arg in ("-isystem", path)]
    source = fused._SOURCE
    result = subprocess.run([compiler, "-std=c++17", "-O3", *march, "-fopenmp", "-fno-math-errno", "-fPIC", "-Wall",
                             "-Wextra", *includes, "-c", str(source), "-o", str(tmp_path / "fused.o")],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    own = [line for line in result.stderr.splitlines() if f"{source.name}:" in line and "warning" in line]
    assert not own, own
