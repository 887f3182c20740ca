"""``morphllr score``: the log-likelihood of every image under a trained model (or ensemble), as CSV."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from morphllr.cli.application import accelerator_option, app, devices_option, num_nodes_option
from morphllr.limits import THREADS_MAX

SCORE_HELP = """Log-likelihood of every image under a trained model (written as CSV).

DATA: an image set (.h5 from `morphllr prepare`) or a .npy / .npz / .h5[:dataset] array with the same image size, channels and preprocessing as the model's training data (checked when both record it).

The CSV has one row per image: [bold]id[/bold] (from the image set's catalogue, else the 0-based index), [bold]logp[/bold] = log p(x) in nats (higher = more typical of the training data) and [bold]bits_per_dim[/bold] = -logp / (C H W ln 2).  With --maps, the per-pixel log p(x_ij | earlier pixels) in nats is written as float32 (N, H, W) dataset `logp` of an HDF5 file.  The log-likelihood ratio of the paper is the difference of two such scores (see `morphllr compare`).

With an ensemble folder (`morphllr train --seeds`) as --model every image is scored by every member (images read once): logp and bits_per_dim are the member means (mean of log p), [bold]logp_std[/bold] the spread of log p across members (sample standard deviation), then logp_seed0, bits_per_dim_seed0, ... per member; --maps holds `logp` (member mean) and one dataset per member, `logp_seed0`, ...

[bold]Masked pixels[/bold]: an image set with masked pixels (`/mask_model`: user-masked or beyond the image edge, filled with sky noise by `morphllr prepare`) is scored as it is, so the later pixels' conditionals still see the masked pixels as context, but their own terms are dropped: logp sums the unmasked pixels only, bits_per_dim is per unmasked dimension, a column [bold]n_masked_pixels[/bold] is added and --maps holds NaN at masked pixels.

[bold]Any hardware, at scale[/bold]: --accelerator cpu | cuda (= gpu) | auto (CUDA when a GPU is visible); on a GPU the models run with bf16 autocast where it has bf16 and channels-last.  --devices N: on the CPU morphllr starts N processes itself (gloo; the idle cores are split between them, or --threads each); on GPUs one process per GPU (NCCL; a count, 'auto' = all, or indices such as 0,2).  Each process scores a contiguous shard of the images and process 0 alone writes the CSV (and maps, received batch by batch, so memory stays flat), in input order: the same file as one process (float32 rounding; bit for bit when the shards are whole batches).  Launched by torchrun, srun (SLURM) or Lightning's launcher (RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT, SLURM_PROCID / SLURM_NTASKS), the processes join each other instead of starting more; --num-nodes M without a launcher: run the command on every node with NODE_RANK, MASTER_ADDR and MASTER_PORT set, as for `morphllr train --num-nodes`.

Example:

  morphllr score --model models/obs sims.h5 --out sims_obs.csv --maps sims_obs_maps.h5

  morphllr score --model models/obs_ens sims.h5 --out sims_obs_ens.csv

  morphllr score --model models/obs sims.h5 --out sims_obs.csv --devices 2 --accelerator cpu

  torchrun --nproc-per-node 4 -m morphllr score --model models/obs sims.h5 --out sims_obs.csv --accelerator cuda
"""


@app.command("score", help=SCORE_HELP)
def score(
    ctx: typer.Context,
    data: str = typer.Argument(..., help="Images to score: image set .h5, .npy, .npz or FILE.h5:dataset."),
    model: Path = typer.Option(..., "--model", "-m", help="Model folder from `morphllr train`, or an ensemble "
                               "folder (`morphllr train --seeds`: per-member columns)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output CSV: id, logp (nats), bits_per_dim."),
    maps: Optional[Path] = typer.Option(None, "--maps", help="Also write per-pixel log p maps (HDF5, float32 "
                                        "(N, H, W), nats) to this file."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, max=65536, help="Images per forward pass (default: "
                                             "largest activation kept under 32 MiB)."),
    key: Optional[str] = typer.Option(None, "--key", help="Array name inside an .npz or dataset inside an .h5."),
    precision: Optional[str] = typer.Option(None, "--precision", help="bf16-mixed (default where the CPU or GPU has "
                                            "native bf16; scores agree with fp32 to ~1e-3 relative) or 32 (exact fp32)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, max=THREADS_MAX, help="CPU threads per process "
                                          "(default: usable idle cores / processes on this node)."),
    devices: str = devices_option(),
    num_nodes: int = num_nodes_option(),
    accelerator: str = accelerator_option(),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out / --maps if they exist (never an "
                                   "input: DATA or the model)."),
) -> None:
    from morphllr.atomic import claim_outputs
    from morphllr.distributed import describe_plan, launched_rank, parse_devices, resolve
    from morphllr.errors import MorphllrError
    from morphllr.model.ensemble import load_ensemble
    from morphllr.score import score_to_files
    from morphllr.data.inputs import open_images

    if precision not in (None, "bf16-mixed", "32"):
        raise MorphllrError(f"--precision: {precision!r} must be bf16-mixed or 32")
    devices_arg = parse_devices(devices)
    plan = resolve(devices_arg, accelerator, num_nodes)  # impossible requests refused in one line, before any work
    if launched_rank() == 0:  # both outputs checked and locked before the model is loaded; only rank 0 writes
        ctx.with_resource(claim_outputs([("--out", out), ("--maps", maps)], inputs=[model, data],
                                        overwrite=overwrite))
    loaded = load_ensemble(model)  # a plain model folder is a 1-member ensemble (single-model columns)
    source = open_images(data, key=key) if key else open_images(data)
    bf16 = None if precision is None else precision == "bf16-mixed"
    summary = score_to_files(loaded, source, out, maps_path=maps, batch_size=batch_size, bf16=bf16,
                             threads=threads, progress=not quiet, overwrite=overwrite, devices=devices_arg,
                             accelerator=accelerator, num_nodes=num_nodes)
    if summary is None:  # a rank other than 0 of a launched run: rank 0 reports
        return
    members = summary.get("members")
    spread = ""
    if members and len(members) > 1:
        import statistics

        spread = f", member means differ by {statistics.stdev(members.values()):.3f} nats (std over {len(members)})"
    procs = f" in {describe_plan(plan)}" if plan.world > 1 else ""
    typer.echo(f"scored {summary['n']} images{procs}: mean logp {summary['mean_logp']:.3f} nats "
               f"({summary['mean_bits_per_dim']:.4f} bits/dim){spread} -> {out}" + (f", maps -> {maps}" if maps else ""))
    if summary.get("masked_share"):
        typer.secho(f"note: {100 * summary['masked_share']:.3g} % of the model pixels are masked; their own terms "
                    "are not in logp (column n_masked_pixels; bits_per_dim is per unmasked dimension)",
                    fg=typer.colors.YELLOW, err=True)
    for note in summary.get("notes") or []:  # (the domain guards' warnings were printed as `warning: ...`)
        typer.secho(f"note: {note}", fg=typer.colors.YELLOW, err=True)
