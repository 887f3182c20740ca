"""PixelCNN++ throughput on this CPU: plain fp32 reference vs the optimised default path.

For the paper architecture (preset ``zanisi21``) at 32x32 and 64x64 it measures, in images
per second:

* eval: ``log_prob_pixels`` under ``torch.no_grad`` (what ``morphllr score`` does);
* train: forward + backward of the mean negative log-likelihood + an Adam step, dropout on
  (what ``morphllr train`` does per batch),

for (a) ``morphllr.reference.ReferencePixelCNN``: NCHW, float32, eager, no fusion, and
(b) ``morphllr.model.PixelCNN`` as score/train run it: channels-last, bf16 autocast where the
CPU has native bf16 (``morphllr.runtime.bf16_supported``), head in float32.

FLOPs per image are counted from the convolution shapes (``torch.utils.flop_counter``, one
multiply-add = 2 FLOPs; training counts forward + backward).  The bf16 and fp32 matmul peaks
(2048^2) are measured in the same run, before and after, and the best is used, so the
"% of bf16 peak" column is relative to what this machine delivered just now.  The two paths
are timed in alternation and the fastest repeat is kept, which makes the *ratios* robust to
other load on a shared machine; absolute numbers are not.

Usage::

    python benchmarks/throughput.py            # full run (a few minutes)
    python benchmarks/throughput.py --quick    # short run, 32x32 only
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from morphllr import runtime
from morphllr.model import PRESETS, PixelCNN
from morphllr.reference import ReferencePixelCNN


def matmul_peak(dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> float:
    """Best GFLOP/s of a square matmul in ``dtype``."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
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


class Path:
    """One way of running the network: its eval and train step closures."""

    def __init__(self, name, net, x, bf16: bool, channels_last: bool):
        self.name = name
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        self.net, self.x, self.bf16 = net, x, bf16
        self.optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)

    def _autocast(self):
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16)

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


def best_times(paths, step: str, repeats: int) -> dict[str, float]:
    """Fastest of ``repeats`` alternating runs of ``step`` for every path (after a warm-up)."""
    for path in paths:
        getattr(path, step)()
    best = {path.name: float("inf") for path in paths}
    for _ in range(repeats):
        for path in paths:
            best[path.name] = min(best[path.name], _timed(getattr(path, step)))
    return best


def bench_size(size: int, repeats: int, bf16: bool, batch: int | None) -> list[dict]:
    """Measure both paths at ``size`` x ``size``; one row per path."""
    from morphllr.score import default_batch_size

    cfg = PRESETS["zanisi21"].with_(height=size, width=size)
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
    t_eval = best_times(paths, "eval_step", repeats)
    t_train = best_times(paths, "train_step", max(1, repeats // 2))
    rows = []
    for path in paths:
        rows.append(dict(size=size, batch=batch, path=path.name,
                         eval_ips=batch / t_eval[path.name], train_ips=batch / t_train[path.name],
                         gflop_eval=flops_eval / 1e9, gflop_train=flops_train / 1e9))
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="32x32 only, fewer repeats (a few minutes on a busy 2-core machine)")
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="image sizes (default 32 64)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per path (default 6, quick 3)")
    parser.add_argument("--batch", type=int, default=None, help="images per batch (default: score's default)")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: morphllr.runtime.configure_cpu's choice, i.e. all usable "
                        "cores on an idle machine, fewer when other processes keep cores busy)")
    args = parser.parse_args(argv)
    sizes = args.sizes or ([32] if args.quick else [32, 64])
    repeats = args.repeats or (3 if args.quick else 6)
    threads = runtime.configure_cpu(args.threads)
    bf16 = runtime.bf16_supported()

    peak_bf16 = matmul_peak(torch.bfloat16)
    peak_fp32 = matmul_peak(torch.float32)
    rows = []
    for size in sizes:
        rows += bench_size(size, repeats, bf16, args.batch)
    peak_bf16 = max(peak_bf16, matmul_peak(torch.bfloat16))
    peak_fp32 = max(peak_fp32, matmul_peak(torch.float32))

    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  torch {torch.__version__}  "
          f"{platform.processor() or platform.machine()}  threads={threads}  bf16={bf16}")
    print(f"# measured matmul peak: bf16 {peak_bf16:.0f} GFLOP/s, fp32 {peak_fp32:.0f} GFLOP/s (2048^2)")
    header = ("| size | batch | path | eval img/s | train img/s | GFLOP/img eval (train) | eval GFLOP/s | "
              "eval % bf16 peak | train GFLOP/s | train % bf16 peak | speed-up eval / train |")
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for size in sizes:
        base = next(r for r in rows if r["size"] == size and r["path"].startswith("a)"))
        for r in (r for r in rows if r["size"] == size):
            eval_gfs = r["eval_ips"] * r["gflop_eval"]
            train_gfs = r["train_ips"] * r["gflop_train"]
            print(f"| {size}x{size} | {r['batch']} | {r['path']} | {r['eval_ips']:.1f} | {r['train_ips']:.1f} | "
                  f"{r['gflop_eval']:.2f} ({r['gflop_train']:.2f}) | {eval_gfs:.0f} | {100 * eval_gfs / peak_bf16:.0f} % | "
                  f"{train_gfs:.0f} | {100 * train_gfs / peak_bf16:.0f} % | "
                  f"{r['eval_ips'] / base['eval_ips']:.1f}x / {r['train_ips'] / base['train_ips']:.1f}x |")


if __name__ == "__main__":
    main()
