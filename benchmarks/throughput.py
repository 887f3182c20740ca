"""PixelCNN++ throughput on this CPU: plain fp32 reference vs the optimised default path.

For the paper architecture (preset ``zanisi21``) at 32x32 and 64x64 it measures, in images
per second:

* eval: ``log_prob_pixels`` under ``torch.no_grad`` (what ``morphllr score`` does);
* train: forward + backward of the mean negative log-likelihood + an Adam step, dropout on
  (what ``morphllr train`` does per batch),

for (a) ``morphllr.model.plain.ReferencePixelCNN``: NCHW, float32, eager, no fusion, and
(b) ``morphllr.model.pixelcnn.PixelCNN`` as score/train run it: channels-last, bf16 autocast where the
CPU has native bf16 (``morphllr.runtime.bf16_supported``), head in float32.

The yardstick (issue 17) is the network's own convolutions: every ``aten.convolution`` (and, for
training, ``aten.convolution_backward``) call of the default path is recorded once with its exact
shapes, strides (layout) and dtype, then replayed alone on fresh tensors and timed the same way.
That is the fastest this network can run on this CPU with oneDNN's kernels; the columns
``eval / conv`` and ``train / conv`` say how much the rest (elementwise, layout, head, optimizer,
Python) adds.  Targets at 32x32: eval <= 1.15, train <= 1.30.

FLOPs per image are counted from the convolution shapes (``torch.utils.flop_counter``, one
multiply-add = 2 FLOPs; training counts forward + backward).  The bf16 and fp32 matmul peaks
(2048^2) are measured in the same run, before and after, and the best is used, so the
"% of bf16 peak" column is relative to what this machine delivered just now.  On a CPU without
native bf16 the default path runs in fp32 and the column is "% of fp32 peak" instead.  The two paths
are timed in alternation and the fastest repeat is kept, which makes the *ratios* robust to
other load on a shared machine; absolute numbers are not.

Usage::

    python benchmarks/throughput.py            # full run (a few minutes)
    python benchmarks/throughput.py --quick    # short run, 32x32 only
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map
from torch.utils.flop_counter import FlopCounterMode

from morphllr import runtime
from morphllr.model import fused
from morphllr.model.pixelcnn import NETWORK_PRESETS, PixelCNN
from morphllr.model.plain import ReferencePixelCNN


def matmul_peak(dtype: torch.dtype, size: int = 2048, repeats: int = 5, device: str = "cpu") -> float:
    """Best GFLOP/s of a square matmul in ``dtype``."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    a @ b
    best = min(_timed(lambda: a @ b, device) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def _timed(fn, device: str = "cpu") -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def count_flops(net, x, train: bool) -> float:
    """FLOPs per image of one forward (eval) or forward + backward (train) pass."""
    with FlopCounterMode(display=False) as counter:
        if train:
            net.log_prob(x).mean().backward()
        else:
            with torch.no_grad():
                net.log_prob_pixels(x)
    net.zero_grad(set_to_none=True)
    return counter.get_total_flops() / x.shape[0]


CONV_OPS = (torch.ops.aten.convolution.default, torch.ops.aten.convolution_backward.default)


class ConvolutionRecorder(TorchDispatchMode):
    """Records every convolution call (forward and backward) as (op, argument specs)."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in CONV_OPS:
            spec = tree_map(lambda a: _TensorSpec(a) if isinstance(a, torch.Tensor) else a, args)
            self.calls.append((func, spec))
        return func(*args, **(kwargs or {}))


class _TensorSpec:
    """Shape, strides and dtype of a recorded tensor; ``make`` gives a fresh one just like it."""

    def __init__(self, t: torch.Tensor):
        self.shape, self.stride, self.dtype = tuple(t.shape), t.stride(), t.dtype

    def make(self) -> torch.Tensor:
        return torch.empty_strided(self.shape, self.stride, dtype=self.dtype).normal_()


def convolutions_of(step) -> list[tuple]:
    """The convolution calls one run of ``step`` makes, with input tensors ready to replay.

    Calls whose arguments have the same shape, strides and dtype share one tensor: a fresh one per
    call held ~10 GB at once in float32 (268 training calls at batch 64).  Sharing can only warm
    the caches for the replay, i.e. make the yardstick faster and the ratios conservative.
    """
    recorder = ConvolutionRecorder()
    with recorder:
        step()
    made: dict[tuple, torch.Tensor] = {}

    def tensor_for(spec: _TensorSpec) -> torch.Tensor:
        key = (spec.shape, spec.stride, spec.dtype)
        if key not in made:
            made[key] = spec.make()
        return made[key]

    return [(func, tree_map(lambda a: tensor_for(a) if isinstance(a, _TensorSpec) else a, spec))
            for func, spec in recorder.calls]


def replay(calls: list[tuple]) -> None:
    """Run the recorded convolutions alone, in order."""
    with torch.no_grad():
        for func, args in calls:
            func(*args)


class Path:
    """One way of running the network: its eval and train step closures."""

    def __init__(self, name, net, x, bf16: bool, channels_last: bool, device: str = "cpu"):
        self.name, self.device = name, device
        net, x = net.to(device), x.to(device)
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        self.net, self.x, self.bf16 = net, x, bf16
        self.optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)

    def _autocast(self):
        return torch.autocast(self.device, dtype=torch.bfloat16, enabled=self.bf16)

    def eval_step(self) -> None:
        self.net.eval()
        with torch.no_grad(), self._autocast():
            self.net.log_prob_pixels(self.x)

    def train_step(self) -> None:
        self.net.train()
        with self._autocast():
            loss = -self.net.log_prob(self.x).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


def all_times(paths, step: str, repeats: int) -> dict[str, list[float]]:
    """``repeats`` alternating runs of ``step`` for every path (after a warm-up): path name -> seconds per run."""
    for path in paths:
        getattr(path, step)()
    times = {path.name: [] for path in paths}
    for _ in range(repeats):
        for path in paths:
            times[path.name].append(_timed(getattr(path, step), getattr(path, "device", "cpu")))
    return times


def best_times(paths, step: str, repeats: int) -> dict[str, float]:
    """Fastest of ``repeats`` alternating runs of ``step`` for every path (after a warm-up)."""
    return {name: min(runs) for name, runs in all_times(paths, step, repeats).items()}


def paired_ratio(times: dict[str, list[float]], name: str, yardstick: str) -> float:
    """Median over repeats of ``name``'s time over the yardstick's time in the same round.

    The two were run back to back, so a machine whose speed drifts over minutes (a shared VM)
    changes both alike; the ratio of the two fastest runs, taken minutes apart, does not.
    """
    ratios = sorted(a / b for a, b in zip(times[name], times[yardstick]))
    mid = len(ratios) // 2
    return ratios[mid] if len(ratios) % 2 else 0.5 * (ratios[mid - 1] + ratios[mid])


def gpu_table(sizes, repeats: int) -> None:
    """The default path on the GPU (bf16 autocast where supported, channels-last), beside its matmul peak."""
    name = torch.cuda.get_device_name()
    bf16 = torch.cuda.is_bf16_supported()
    peak = matmul_peak(torch.bfloat16 if bf16 else torch.float16, 8192, device="cuda")
    print(f"# GPU: {name}, bf16={bf16}, measured matmul peak {peak:.0f} GFLOP/s "
          f"({'bf16' if bf16 else 'fp16'}, 8192^2); fused CPU kernels do not apply, the eager ops run on the GPU")
    print("| size | batch | path | eval img/s | train img/s | eval % matmul peak | train % matmul peak |")
    print("|---|---|---|---|---|---|---|")
    for size in sizes:
        cfg = NETWORK_PRESETS["zanisi21"].with_(height=size, width=size)
        torch.manual_seed(0)
        batch = 256 if size <= 32 else 64
        x = torch.rand(batch, 1, size, size)
        path = Path("GPU default (channels-last, bf16)", PixelCNN(cfg), x, bf16=bf16, channels_last=True, device="cuda")
        flops_eval = count_flops(ReferencePixelCNN(cfg).eval(), x[:1], train=False)
        flops_train = count_flops(ReferencePixelCNN(cfg).train(), x[:2], train=True)
        t_eval = best_times([path], "eval_step", repeats)[path.name]
        t_train = best_times([path], "train_step", max(1, repeats // 2))[path.name]
        print(f"| {size}x{size} | {batch} | {path.name} | {batch / t_eval:.0f} | {batch / t_train:.0f} | "
              f"{100 * batch * flops_eval / t_eval / 1e9 / peak:.0f} % | "
              f"{100 * batch * flops_train / t_train / 1e9 / peak:.0f} % |")


def bench_size(size: int, repeats: int, bf16: bool, batch: int | None) -> list[dict]:
    """Measure both paths at ``size`` x ``size``; one row per path."""
    from morphllr.score import default_batch_size

    cfg = NETWORK_PRESETS["zanisi21"].with_(height=size, width=size)
    batch = batch or default_batch_size(cfg)
    torch.manual_seed(0)
    fast = PixelCNN(cfg)
    plain = ReferencePixelCNN(cfg)
    plain.load_state_dict(fast.state_dict())
    x = torch.rand(batch, 1, size, size)
    flops_eval = count_flops(plain.eval(), x[:1], train=False)
    flops_train = count_flops(plain.train(), x[:2], train=True)
    paths = [Path("a) reference fp32 NCHW", plain, x, bf16=False, channels_last=False),
             Path("b) default (CL" + (", bf16)" if bf16 else ", fp32)"), fast, x, bf16=bf16, channels_last=True)]
    yardsticks = [Yardstick("conv eval", convolutions_of(paths[1].eval_step)),
                  Yardstick("conv train", convolutions_of(paths[1].train_step))]
    runs_eval = all_times(paths + yardsticks[:1], "eval_step", repeats)
    runs_train = all_times(paths + yardsticks[1:], "train_step", max(1, repeats // 2))
    t_eval = {name: min(runs) for name, runs in runs_eval.items()}
    t_train = {name: min(runs) for name, runs in runs_train.items()}
    rows = []
    for path in paths:
        rows.append(dict(size=size, batch=batch, path=path.name,
                         eval_ips=batch / t_eval[path.name], train_ips=batch / t_train[path.name],
                         gflop_eval=flops_eval / 1e9, gflop_train=flops_train / 1e9,
                         eval_over_conv=paired_ratio(runs_eval, path.name, "conv eval"),
                         train_over_conv=paired_ratio(runs_train, path.name, "conv train"),
                         n_conv=(len(yardsticks[0].calls), len(yardsticks[1].calls))))
    return rows


class Yardstick:
    """The recorded convolutions of the default path, timed like a path (eval or train step)."""

    def __init__(self, name: str, calls: list[tuple]):
        self.name, self.calls = name, calls

    def eval_step(self) -> None:
        replay(self.calls)

    train_step = eval_step


# torch.profiler op names -> the categories of issue 17's split (first match wins; the rest is "other ops")
CATEGORIES = (
    ("fused elementwise", ("morphllr_fused",)),
    ("convolutions", ("convolution", "conv2d", "mkldnn_conv", "_convolution")),
    ("optimizer", ("adam", "_foreach", "optimizer")),
    ("layout", ("copy_", "cat", "contiguous", "permute", "fill_", "zero_", "empty", "pad", "clone", "to_copy",
                "_to_copy", "as_strided", "pixel_shuffle", "reshape", "view", "narrow", "slice", "select")),
    ("elementwise", ("add", "mul", "sub", "div", "exp", "elu", "neg", "maximum", "minimum", "abs", "sigmoid",
                     "tanh", "glu", "where", "clamp", "log", "dropout", "bernoulli", "threshold", "sqrt", "pow",
                     "sum", "mean", "softplus")),
)


def profile_split(path: "Path", step: str, repeats: int = 3) -> dict[str, float]:
    """Share of one step's wall time per category, from torch.profiler's self CPU times (indicative)."""
    from torch.profiler import ProfilerActivity, profile

    getattr(path, step)()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(repeats):
            getattr(path, step)()
        wall = (time.perf_counter() - start) * 1e6  # microseconds, like the profiler
    totals = {name: 0.0 for name, _ in CATEGORIES}
    totals["other ops"] = 0.0
    for event in prof.key_averages():
        name = event.key.lower().removeprefix("aten::")  # fused ops keep their "morphllr_fused::" prefix
        if name.startswith(("autograd::", "profilerstep", "[memory]")) or event.self_cpu_time_total <= 0:
            continue
        category = next((c for c, keys in CATEGORIES if any(k in name for k in keys)), "other ops")
        totals[category] += event.self_cpu_time_total
    # self times of the ops on the main thread; what the ops do not account for is Python and dispatch
    totals["python + dispatch"] = max(0.0, wall - sum(totals.values()))
    return {k: v / wall for k, v in totals.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="32x32 only, fewer repeats (a few minutes on a busy 2-core machine)")
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="image sizes (default 32 64)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per path (default 6, quick 3)")
    parser.add_argument("--batch", type=int, default=None, help="images per batch (default: score's default)")
    parser.add_argument("--profile", action="store_true",
                        help="also split the default path's eval and train time into convolutions, elementwise, "
                        "layout, optimizer, other ops and Python (torch.profiler; indicative shares)")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: morphllr.runtime.configure_cpu's choice, i.e. all usable "
                        "cores on an idle machine, fewer when other processes keep cores busy)")
    args = parser.parse_args(argv)
    sizes = args.sizes or ([32] if args.quick else [32, 64])
    repeats = args.repeats or (3 if args.quick else 6)
    threads = runtime.configure_cpu(args.threads)
    bf16 = runtime.bf16_supported()

    # without native bf16 (e.g. AMD Zen 3) bf16 matmuls are emulated at ~1 GFLOP/s: not worth timing, and the
    # default path then runs in fp32, so its fraction of the fp32 peak is the one that says something
    peak_bf16 = matmul_peak(torch.bfloat16) if bf16 else float("nan")
    peak_fp32 = matmul_peak(torch.float32)
    rows = []
    for size in sizes:
        rows += bench_size(size, repeats, bf16, args.batch)
    if bf16:
        peak_bf16 = max(peak_bf16, matmul_peak(torch.bfloat16))
    peak_fp32 = max(peak_fp32, matmul_peak(torch.float32))
    peak, peak_name = (peak_bf16, "bf16") if bf16 else (peak_fp32, "fp32")

    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  torch {torch.__version__}  "
          f"{runtime.cpu_description()}  threads={threads}  bf16={bf16}")
    bf16_text = f"bf16 {peak_bf16:.0f} GFLOP/s" if bf16 else "bf16 not native on this CPU (not measured)"
    print(f"# measured matmul peak: {bf16_text}, fp32 {peak_fp32:.0f} GFLOP/s (2048^2)")
    print(f"# default path elementwise ops: {fused.status()}")
    header = ("| size | batch | path | eval img/s | train img/s | GFLOP/img eval (train) | eval GFLOP/s | "
              f"eval % {peak_name} peak | train GFLOP/s | train % {peak_name} peak | speed-up eval / train | "
              "eval / conv | train / conv |")
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for size in sizes:
        base = next(r for r in rows if r["size"] == size and r["path"].startswith("a)"))
        for r in (r for r in rows if r["size"] == size):
            eval_gfs = r["eval_ips"] * r["gflop_eval"]
            train_gfs = r["train_ips"] * r["gflop_train"]
            print(f"| {size}x{size} | {r['batch']} | {r['path']} | {r['eval_ips']:.1f} | {r['train_ips']:.1f} | "
                  f"{r['gflop_eval']:.2f} ({r['gflop_train']:.2f}) | {eval_gfs:.0f} | {100 * eval_gfs / peak:.0f} % | "
                  f"{train_gfs:.0f} | {100 * train_gfs / peak:.0f} % | "
                  f"{r['eval_ips'] / base['eval_ips']:.1f}x / {r['train_ips'] / base['train_ips']:.1f}x | "
                  f"{r['eval_over_conv']:.2f} | {r['train_over_conv']:.2f} |")
    print(f"# eval / conv, train / conv: the path's time over its own {rows[0]['n_conv'][0]} forward convolutions "
          f"(eval) or {rows[0]['n_conv'][1]} forward + backward convolutions (train, which adds Adam), replayed alone "
          "with the same shapes, layout and dtype (default path's; the reference path is compared with the same "
          "yardstick; median over rounds of the ratio within a round); targets at 32x32: eval <= 1.15, train <= 1.30")
    if torch.cuda.is_available():
        gpu_table(sizes, repeats)
    else:
        print("# no GPU here: no GPU table (it is printed when torch.cuda.is_available())")
    if args.profile:
        for size in sizes:
            cfg = NETWORK_PRESETS["zanisi21"].with_(height=size, width=size)
            torch.manual_seed(0)
            from morphllr.score import default_batch_size

            x = torch.rand(args.batch or default_batch_size(cfg), 1, size, size)
            path = Path("default", PixelCNN(cfg), x, bf16=bf16, channels_last=True)
            for step in ("eval_step", "train_step"):
                split = profile_split(path, step)
                print(f"# profile {size}x{size} {step.split('_')[0]}: "
                      + ", ".join(f"{k} {100 * v:.0f} %" for k, v in split.items()))


if __name__ == "__main__":
    main()
