"""CPU set-up for training and scoring: threads, bf16 detection, allocator tuning.

PixelCNN++ on a laptop or a cluster node is bound by convolution throughput and by
memory traffic.  Three things matter and are handled here once, so that ``train``
and ``score`` behave the same way:

* the number of intra-op threads should equal the cores this process may use
  (``os.sched_getaffinity`` respects cgroups / ``taskset`` / SLURM binding, unlike
  ``os.cpu_count``) and are not busy with other work, with a single inter-op thread
  (the network is one sequential stream of ops; extra pools only oversubscribe);
* bf16 autocast speeds convolutions up on CPUs with native bf16 (AVX512_BF16 or
  AMX; measured on a 2-core EPYC: training the ``small`` preset 12.9 -> 25.8 img/s,
  scoring with ``zanisi21`` 9.6 -> 13.7 img/s) and is slower than fp32 elsewhere;
* glibc returns every allocation above its mmap threshold (32 MiB at most with the
  dynamic threshold) straight to the kernel, so a large activation tensor is
  page-faulted in again on every batch.  Raising the threshold keeps freed blocks
  in the heap for reuse.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import platform
from typing import Iterator

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

# Largest activation we aim for when choosing a default batch size: glibc's maximum
# dynamic mmap threshold, so that tensors stay in reusable heap memory even when
# the allocator tuning below is unavailable (musl, macOS, Windows).
ACTIVATION_BUDGET_BYTES = 32 * 1024 * 1024

_allocator_tuned: bool | None = None
_configured = False


def usable_cores() -> int:
    """Number of CPU cores this process is allowed to run on.

    Returns:
        cores from the affinity mask (falls back to ``os.cpu_count()``), at least 1.
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@functools.lru_cache(maxsize=1)
def idle_cores() -> int:
    """Usable cores minus those other processes keep busy (1-minute load average).

    Decided once per process (later calls would see this process's own load).

    OpenMP threads spin-wait for each other, so on an oversubscribed machine one
    thread per core is much slower than fewer threads: on a 2-core machine with load
    ~6, scoring the zanisi21 network ran at 4.5 img/s with 2 threads and 9.6 img/s
    with 1.  An idle machine (load below 3/4 of the cores) gets every core.

    Returns:
        threads to use, at least 1.
    """
    cores = usable_cores()
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return cores
    if load < 0.75 * cores:
        return cores
    return max(1, min(cores, int(round(cores - (load - 0.75 * cores)))))


def configure_cpu(threads: int | None = None, tune_allocator: bool = True) -> int:
    """Set torch's thread pools (and the allocator) for this process.

    Args:
        threads: intra-op threads; None keeps an earlier configuration of this
            process, else uses ``MORPHLLR_THREADS`` when set, else :func:`idle_cores`.
        tune_allocator: also apply :func:`tune_glibc_allocator`.

    Returns:
        the number of intra-op threads now in use.
    """
    import torch

    global _configured
    if threads is None and _configured:
        return torch.get_num_threads()  # keep an earlier explicit choice (e.g. train --threads)
    _configured = True
    if threads is None:
        env = os.environ.get("MORPHLLR_THREADS")
        threads = int(env) if env and env.isdigit() and int(env) > 0 else idle_cores()
    threads = max(1, int(threads))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    # set_num_interop_threads may only be called before the first parallel op;
    # later calls raise, and then the existing pool is simply kept.
    with contextlib.suppress(RuntimeError):
        if torch.get_num_interop_threads() != 1:
            torch.set_num_interop_threads(1)
    if tune_allocator:
        tune_glibc_allocator()
    return threads


def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux":
        return None
    libc_name, _ = platform.libc_ver()
    if libc_name != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt  # noqa: B018  (AttributeError if absent)
    except (OSError, AttributeError):
        return None
    return libc


def tune_glibc_allocator(mmap_threshold: int = 1 << 30, trim_threshold: int = 1 << 30) -> bool:
    """Keep large freed tensors in glibc's heap instead of unmapping them.

    Measured on a 2-core AMD EPYC (scoring 256-512 32x32 images with zanisi21,
    1 thread, fp32): minor page faults per batch fell from 13 000 / 420 000 /
    3 000 000 to 2 000 / 6 200 / 10 000 at batch 16 / 64 / 128, and throughput rose
    by about 10 % at batch 64 and 40 % at batch 128 (largest activation 32 and
    64 MiB).  M_ARENA_MAX is left alone: torch runs its work in one process-wide
    thread pool, so extra arenas were not measured to matter.  Only applied on glibc
    Linux, once per process; set ``MORPHLLR_NO_MALLOPT=1`` to skip it.

    Args:
        mmap_threshold: allocations at least this large still go to mmap (bytes).
        trim_threshold: free memory at the top of the heap kept before trimming (bytes).

    Returns:
        True when the allocator was tuned (now or earlier), False when not possible.
    """
    global _allocator_tuned
    if _allocator_tuned is not None:
        return _allocator_tuned
    if os.environ.get("MORPHLLR_NO_MALLOPT"):
        _allocator_tuned = False
        return False
    libc = _glibc()
    if libc is None:
        _allocator_tuned = False
        return False
    ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(min(mmap_threshold, 2**31 - 1))))
    ok &= bool(libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(min(trim_threshold, 2**31 - 1))))
    _allocator_tuned = ok
    return ok


def cpu_description() -> str:
    """This CPU as benchmarks print it: model name, family and model number, usable cores.

    Returns:
        e.g. ``"AMD EPYC 9R45 (family 26, model 2), 2 usable cores"``.
    """
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip()
                if not key and fields:
                    break  # the first processor is enough
                fields.setdefault(key, value.strip())
    except OSError:
        pass
    import platform

    name = fields.get("model name") or platform.processor() or platform.machine()
    family = f" (family {fields['cpu family']}, model {fields.get('model', '?')})" if "cpu family" in fields else ""
    return f"{name}{family}, {usable_cores()} usable cores"


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@functools.lru_cache(maxsize=1)
def bf16_supported() -> bool:
    """Whether this CPU computes bf16 natively (AVX512_BF16 or AMX) and torch uses it.

    A flag in /proc/cpuinfo is not enough (a VM may hide the instruction from
    oneDNN), so a small bf16 convolution is also run and checked against fp32.
    ``MORPHLLR_BF16=0`` / ``=1`` overrides the detection.

    Returns:
        True when bf16 autocast is expected to be fast and correct here.
    """
    override = os.environ.get("MORPHLLR_BF16")
    if override in ("0", "1"):
        return override == "1"
    # Without native bf16 (or where /proc/cpuinfo is missing: macOS, Windows) the
    # bf16 kernels are emulated and slower than fp32, so autocast stays off.
    if not ({"avx512_bf16", "amx_bf16"} & _cpu_flags()):
        return False
    return _bf16_conv_runs()


def _bf16_conv_runs() -> bool:
    import torch

    try:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(2, 8, 8, 8, generator=gen)
        w = torch.randn(8, 8, 3, 3, generator=gen)
        ref = torch.nn.functional.conv2d(x, w, padding=1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = torch.nn.functional.conv2d(x, w, padding=1)
        if out.dtype != torch.bfloat16:
            return False
        rel = (out.float() - ref).abs().max() / ref.abs().max()
        return bool(torch.isfinite(rel) and rel < 0.05)
    except (RuntimeError, TypeError):
        return False


def autocast_context(device: str | "torch.device" = "cpu", enabled: bool | None = None):
    """bf16 autocast for ``device`` (a no-op context when disabled).

    Args:
        device: "cpu", "cuda" or a torch.device.
        enabled: force on/off; None means on for CUDA with bf16 and for CPUs with
            :func:`bf16_supported`.

    Returns:
        a context manager.
    """
    import torch

    dev_type = torch.device(device).type
    if enabled is None:
        if dev_type == "cuda":
            enabled = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        elif dev_type == "cpu":
            enabled = bf16_supported()
        else:
            enabled = False
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(dev_type, dtype=torch.bfloat16)


def default_precision() -> str:
    """Lightning precision string to use by default: "bf16-mixed" where fast, else "32".

    Returns:
        "bf16-mixed" or "32".
    """
    import torch

    if torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "32"
    return "bf16-mixed" if bf16_supported() else "32"


def batch_size_for_budget(bytes_per_image: int, budget: int = ACTIVATION_BUDGET_BYTES,
                          lo: int = 1, hi: int = 256) -> int:
    """Largest batch whose biggest activation fits in ``budget`` bytes.

    Args:
        bytes_per_image: size of the largest single activation for one image.
        budget: byte budget per activation tensor.
        lo: smallest batch returned.
        hi: largest batch returned.

    Returns:
        the batch size.
    """
    return int(max(lo, min(hi, budget // max(1, bytes_per_image))))


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Temporarily use ``threads`` intra-op threads (None leaves them unchanged)."""
    import torch

    if threads is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(max(1, int(threads)))
    try:
        yield
    finally:
        torch.set_num_threads(old)
