"""Fused CPU kernels for the PixelCNN++'s elementwise chains, compiled once per machine.

With bf16 convolutions on AVX512-BF16 or AMX the convolutions are cheap, and the eager
elementwise ops around them (concat-ELU: ``abs``, ``neg``, ``exp``, ``sub``, two ``maximum``,
``cat``; the gate and the residual and auxiliary adds) cost as much again: each is one more
pass over the activations.  ``fused_cpu.cpp`` does each chain in one pass:

* :func:`concat_elu_pad`: ``pad(dropout(elu([s, -s])))`` with ``s = x + crop(aux_1) + ...``;
* :func:`gated_residual`: ``x + a * sigmoid(b)``,

with hand-written backward kernels for training.  The source is compiled with the machine's
own C++ compiler (``-O3 -march=native``) on first use and cached under
``~/.cache/morphllr/kernels`` (``MORPHLLR_CACHE`` moves it), keyed by the source, torch's
version and the CPU; later processes load the cached library in well under a second.

When there is no compiler (or ``MORPHLLR_FUSED_KERNELS=0``), or a tensor is not a CPU
float32/bfloat16 channels-last tensor (CUDA, NCHW), the model uses its eager ops instead;
:func:`status` says which and why.  Both give the same numbers to float32 rounding
(``tests/model/test_fused.py``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import shutil
import sys
import sysconfig
import threading
import warnings
from pathlib import Path

import torch

_SOURCE = Path(__file__).with_name("fused_cpu.cpp")
_CFLAGS = ["-O3", "-march=native", "-fopenmp", "-fno-math-errno"]
# the plain-loop variant (x86-64 baseline: neither AVX2 nor AVX-512), built by the tests and benchmarks
PORTABLE_CFLAGS = ["-O3", "-march=x86-64", "-fopenmp", "-fno-math-errno"]
_DTYPES = (torch.float32, torch.bfloat16)

_lock = threading.Lock()
_state: dict = {"loaded": None, "reason": "not loaded yet", "enabled": True}
_ops = None  # torch.ops.morphllr_fused once loaded


def cache_dir() -> Path:
    """Where compiled kernels are kept: ``$MORPHLLR_CACHE/kernels`` or ``~/.cache/morphllr/kernels``."""
    root = os.environ.get("MORPHLLR_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "morphllr")
    return Path(root) / "kernels"


def _build_name(namespace: str, cflags: list[str]) -> str:
    from morphllr import runtime

    key = hashlib.sha256()
    key.update(_SOURCE.read_bytes())
    key.update(" ".join(cflags).encode())
    key.update(torch.__version__.encode())
    # -march=native: a library built for one CPU may not run on another (the CPU's name and
    # instruction sets, not cpu_description(), whose usable-core count changes with the load)
    key.update(platform.machine().encode())
    key.update(runtime.cpu_description().rsplit(",", 1)[0].encode())
    key.update(" ".join(sorted(runtime._cpu_flags())).encode())
    return f"{namespace}_{key.hexdigest()[:16]}"


def _ninja_on_path() -> None:
    """torch runs ``ninja`` from PATH; the ``ninja`` wheel puts it beside this Python, which an
    un-activated virtual environment (``.venv/bin/python ...``) does not have on PATH."""
    if shutil.which("ninja") is None:
        scripts = sysconfig.get_path("scripts")
        if os.path.exists(os.path.join(scripts, "ninja")):
            os.environ["PATH"] = scripts + os.pathsep + os.environ.get("PATH", "")


def build(namespace: str = "morphllr_fused", cflags: list[str] | None = None):
    """Compile (first time) or load the kernels as ``torch.ops.<namespace>``.

    Args:
        namespace: op namespace (one library per namespace and process).
        cflags: compiler flags (default ``-O3 -march=native -fopenmp -fno-math-errno``).

    Returns:
        The ``torch.ops`` namespace holding ``concat_elu_pad``, ``concat_elu_pad_grad``,
        ``gate`` and ``gate_grad``.  Raises whatever the compiler or loader raised.
    """
    from torch.utils import cpp_extension

    _ninja_on_path()
    cflags = list(_CFLAGS if cflags is None else cflags) + [f"-DMORPHLLR_OPS={namespace}"]
    name = _build_name(namespace, cflags)
    folder = cache_dir() / name
    folder.mkdir(parents=True, exist_ok=True)
    if not any(folder.glob("*.so")):
        print(f"morphllr: compiling the fused CPU kernels once for this machine (~20 s; cached in {folder})",
              file=sys.stderr, flush=True)
    # built from a copy inside the cache folder: ninja's rules name the source's path, so two checkouts
    # building from their own trees would rebuild the shared library in turn
    source = folder / _SOURCE.name
    text = _SOURCE.read_bytes()
    if not source.exists() or source.read_bytes() != text:
        scratch = folder / f"{_SOURCE.name}.{os.getpid()}.tmp"
        scratch.write_bytes(text)
        os.replace(scratch, source)
    with contextlib.redirect_stdout(sys.stderr):
        cpp_extension.load(name=name, sources=[str(source)], extra_cflags=cflags, extra_ldflags=["-fopenmp"],
                           build_directory=str(folder), is_python_module=False, verbose=False)
    ops = getattr(torch.ops, namespace)
    ops.gate  # noqa: B018  (AttributeError if the library did not register its ops)
    return ops


def avx512_emulation_cflags() -> list[str]:
    """Flags that build the AVX-512 code path on any x86-64 CPU, through SIMDe's portable intrinsics.

    For tests: a CPU without AVX-512 can then check the arithmetic of the AVX-512 primitives
    (all but the AVX512-BF16 store, which SIMDe lacks).  Slow code; never the model's build.

    Returns:
        compiler flags for :func:`build`.  Raises ImportError without ``pip install simde-py``.
    """
    import simde_py

    return PORTABLE_CFLAGS + ["-DMORPHLLR_EMULATE_AVX512", f"-I{simde_py.get_include()}"]


def _load() -> bool:
    """Build or load the default kernels once; True when :data:`_ops` is usable."""
    global _ops
    with _lock:
        if _state["loaded"] is not None:
            return _state["loaded"]
        if os.environ.get("MORPHLLR_FUSED_KERNELS", "1") == "0":
            _state.update(loaded=False, reason="disabled by MORPHLLR_FUSED_KERNELS=0")
            return False
        compiler = os.environ.get("CXX", "c++")
        reason = None
        if shutil.which(compiler) is None:
            reason = f"no C++ compiler ({compiler}) on PATH to build the fused CPU kernels"
        else:
            try:
                _ops = build()
            except Exception as exc:  # no ninja, a compile or load error: fall back, say why once
                text = str(exc).strip()
                reason = (f"could not build the fused CPU kernels ({type(exc).__name__}: "
                          f"{text.splitlines()[-1] if text else ''})")
        if reason is not None:
            _state.update(loaded=False, reason=reason)
            warnings.warn(f"morphllr: {reason}; using the slower eager ops (install a C++ compiler and ninja for "
                          "faster scoring and training)", stacklevel=3)
            return False
        _state.update(loaded=True, reason=f"fused CPU kernels in use ({cache_dir()})")
        return True


def status() -> str:
    """One line: whether the fused kernels are in use, and why not if not."""
    if _state["enabled"] and _state["loaded"] is None:
        _load()
    if not _state["enabled"]:
        return "fused CPU kernels switched off (morphllr.model.fused.disabled())"
    return _state["reason"]


@contextlib.contextmanager
def disabled():
    """Run the block with the eager ops (the tests compare both paths)."""
    before = _state["enabled"]
    _state["enabled"] = False
    try:
        yield
    finally:
        _state["enabled"] = before


def usable(*tensors: torch.Tensor) -> bool:
    """True when the fused kernels can take these tensors: CPU, float32/bfloat16, 4-D channels-last."""
    for t in tensors:
        if t.device.type != "cpu" or t.dtype not in _DTYPES or t.dim() != 4 or (t.stride(1) != 1 and t.shape[1] > 1):
            return False
    if not _state["enabled"]:
        return False
    return _state["loaded"] if _state["loaded"] is not None else _load()


def dropout_threshold(drop: float) -> tuple[int, float]:
    """The drop rate as the kernels (and the eager path) apply it: a byte threshold out of 256.

    Returns:
        (threshold, keep probability): an element is dropped when its random byte is below the
        threshold, so the rate is rounded to 1/256.
    """
    threshold = min(255, int(round(drop * 256)))
    return threshold, 1.0 - threshold / 256.0


def _as_gradient_for(grad: torch.Tensor, saved: torch.Tensor) -> torch.Tensor:
    """An incoming gradient as the backward kernels take it: channels innermost, and the saved
    tensor's dtype unless it is float32 beside a bf16 tensor (a mix the kernels accept)."""
    if grad.stride(1) != 1 and grad.shape[1] > 1:
        grad = grad.contiguous(memory_format=torch.channels_last)
    if grad.dtype != saved.dtype and not (grad.dtype == torch.float32 and saved.dtype == torch.bfloat16):
        grad = grad.to(saved.dtype)
    return grad


def concat_elu_pad(x: torch.Tensor, pad: tuple[int, int, int, int], dropout: float = 0.0,
                   addends: tuple = ()) -> torch.Tensor:
    """``F.pad(dropout(elu(cat([s, -s]))), pad)`` with ``s = x + sum(crop(y_i))`` in one pass.

    Args:
        x: ``(N, F, H, W)`` channels-last activations.
        pad: zero border ``(left, right, top, bottom)``.
        dropout: drop probability (0 in eval), rounded to 1/256: an element is dropped when the
            top byte of a hash of its index and a seed drawn from torch's generator is below
            ``256 * dropout`` (so ``torch.manual_seed`` fixes the masks, and backward recomputes
            the mask instead of storing it); kept values are scaled by ``1 / keep``.
        addends: ``(y_i, (top_i, left_i))``: ``y_i[:, :, top_i:top_i + H, left_i:left_i + W]``
            is added to ``x`` first.

    Returns:
        ``(N, 2F, H + top + bottom, W + left + right)`` channels-last, x's dtype.
    """
    ys = tuple(y for y, _ in addends)
    offsets = tuple(o for _, off in addends for o in off)
    if not torch.is_grad_enabled() and dropout == 0:  # scoring: the op itself, without autograd's bookkeeping
        left, right, top, bottom = pad
        return _ops.concat_elu_pad(x, top, bottom, left, right, list(ys), list(offsets), 0, 0, 1.0)
    return _FusedConcatEluPad.apply(pad, dropout, offsets, x, *ys)


class _FusedConcatEluPad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pad, dropout, offsets, x, *ys):
        left, right, top, bottom = pad
        seed, (threshold, keep_prob) = 0, dropout_threshold(dropout)
        if dropout > 0:
            seed = int(torch.randint(0, 2**31 - 1, (1,)))
        buf = _ops.concat_elu_pad(x, top, bottom, left, right, list(ys), list(offsets), seed, threshold,
                                  1.0 / keep_prob)
        ctx.geometry = (top, left, x.shape[2], x.shape[3], seed, threshold, 1.0 / keep_prob, offsets,
                        tuple(y.shape for y in ys))
        ctx.save_for_backward(buf)
        return buf

    @staticmethod
    def backward(ctx, grad_buf):
        (buf,) = ctx.saved_tensors
        top, left, h, w, seed, threshold, scale, offsets, y_shapes = ctx.geometry
        grad_buf = _as_gradient_for(grad_buf, buf)
        sizes = [n for shape in y_shapes for n in shape[2:]]
        grads = _ops.concat_elu_pad_grad(grad_buf, buf, top, left, h, w, seed, threshold, scale, sizes, list(offsets))
        return (None, None, None, *grads)


def gated_residual(t: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
    """``x + a * sigmoid(b)`` for ``t = [a, b]`` along channels (``x`` optional), one pass.

    Args:
        t: ``(N, 2F, H, W)`` channels-last.
        x: ``(N, F, H, W)`` residual in t's dtype, or None.

    Returns:
        ``(N, F, H, W)`` channels-last.
    """
    if not torch.is_grad_enabled():
        return _ops.gate(t, x)
    if x is None:
        return _FusedGate.apply(t)
    return _FusedGate.apply(t, x)


class _FusedGate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t, x=None):
        ctx.save_for_backward(t)
        ctx.has_residual = x is not None
        return _ops.gate(t, x)

    @staticmethod
    def backward(ctx, grad):
        (t,) = ctx.saved_tensors
        grad = _as_gradient_for(grad, t)
        grad_t = _ops.gate_grad(grad, t)
        return (grad_t, grad) if ctx.has_residual else grad_t
