"""Time each fused CPU kernel alone on the shapes of the zanisi21 preset at 32x32, batch 64.

Compares this CPU's native build (``-march=native``: AVX-512 or AVX2 where present) with the
portable plain-loop build (``-march=x86-64``), both from ``morphllr/model/fused_cpu.cpp``, in the
dtype the default path uses here (bf16 where the CPU has it natively, else float32).  The
allocator is tuned as scoring and training tune it (runtime.configure_cpu), since the largest
buffers (~35 MiB in float32) otherwise page-fault on every call.

Usage::

    python benchmarks/fused_kernels.py
"""

from __future__ import annotations

import time

import torch

from morphllr import runtime
from morphllr.model import fused


def best_time(fn, calls: int = 20, rounds: int = 3) -> float:
    fn()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def kernel_times(ops, dtype: torch.dtype) -> dict[str, float]:
    def cl(t):
        return t.contiguous(memory_format=torch.channels_last).to(dtype)

    x, y, t = cl(torch.randn(64, 64, 32, 32)), cl(torch.randn(64, 64, 33, 33)), cl(torch.randn(64, 128, 32, 32))
    buf = ops.concat_elu_pad(x, 1, 0, 1, 1, [y], [1, 1], 7, 128, 2.0)
    g_buf, g = cl(torch.randn(buf.shape)), cl(torch.randn(x.shape))
    return {
        "concat_elu_pad": best_time(lambda: ops.concat_elu_pad(x, 1, 0, 1, 1, [y], [1, 1], 0, 0, 1.0)),
        "concat_elu_pad + dropout": best_time(lambda: ops.concat_elu_pad(x, 1, 0, 1, 1, [y], [1, 1], 7, 128, 2.0)),
        "concat_elu_pad_grad": best_time(
            lambda: ops.concat_elu_pad_grad(g_buf, buf, 1, 1, 32, 32, 7, 128, 2.0, [33, 33], [1, 1])),
        "gate": best_time(lambda: ops.gate(t, x)),
        "gate_grad": best_time(lambda: ops.gate_grad(g, t)),
    }


def main() -> None:
    threads = runtime.configure_cpu(None)
    dtype = torch.bfloat16 if runtime.bf16_supported() else torch.float32
    native = fused.build()
    portable = fused.build("morphllr_fused_portable", fused.PORTABLE_CFLAGS)
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  torch {torch.__version__}  "
          f"{runtime.cpu_description()}  threads={threads}  dtype={dtype}")
    print("| kernel (64 x 64 channels x 32x32) | native ms | portable ms | portable / native |")
    print("|---|---|---|---|")
    fast, slow = kernel_times(native, dtype), kernel_times(portable, dtype)
    for name in fast:
        print(f"| {name} | {1e3 * fast[name]:.2f} | {1e3 * slow[name]:.2f} | {slow[name] / fast[name]:.1f}x |")


if __name__ == "__main__":
    main()
