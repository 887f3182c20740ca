"""``morphllr train`` and ``morphllr ensemble``: fit PixelCNN++ density models, join them into an ensemble."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from morphllr.cli.application import app
from morphllr.limits import SEED_MAX, THREADS_MAX

TRAIN_HELP = """Train a PixelCNN++ density model p(x) on an image set and save it as a model folder.

DATA is an image set from `morphllr prepare` (.h5) or a bare array: .npy, .npz (one array, or --key), .h5 with one image dataset or FILE.h5:group/dataset.  Images are (N, H, W) or (N, C, H, W), H and W divisible by 4, already in model units (the zanisi21 preprocessing gives arcsinh-stretched values in [-1, 1]).

The loss is the mean negative log-likelihood in [bold]bits per dimension[/bold] (lower = the model finds the images more likely).  A seeded --val-fraction of the images is held out and its bits/dim is measured every epoch; the best epoch is saved.

MODEL_DIR (--out) receives weights.safetensors + model.json (config, preprocessing, training-data fingerprint, train/val bits/dim), plus checkpoints/ (best.ckpt, last.ckpt), logs/metrics.csv and training.json.  An interrupted run continues with --resume.

[bold]Ensembles[/bold] (model variance: a retrained model moves every score): --seeds 0,1,2 (or 0-4) trains one model per seed, one after another with the same options except the seed (initial weights, validation split, augmentation), into an ensemble folder: --out/seed0/, --out/seed1/, ... (ordinary model folders) and --out/ensemble.json (index with every member's sha256, written last: an interrupted run leaves no ensemble).  score --model, prepare --like and mock --like take an ensemble folder where they take a model folder.  --resume with the same --seeds keeps the finished members, continues the interrupted one from its last checkpoint and trains the missing ones (more seeds than before add members).  --seed and --seeds exclude each other.

Paper recipe (Zanisi et al. 2021): --preset zanisi21 (nr_resnet 3, nr_filters 64, dropout 0.5, gaussian head) with --augment rot (random 0-180 deg rotations).  On a laptop try --preset small first.

Examples:

  morphllr train obs.h5 --out models/obs --epochs 50

  morphllr train arch.h5 --out models/arch --epochs 50 --devices 4 --strategy ddp

  morphllr train obs.h5 --out models/obs_ens --epochs 50 --seeds 0,1,2
"""



@app.command("train", help=TRAIN_HELP)
def train(
    ctx: typer.Context,
    data: str = typer.Argument(..., help="Training images: image set .h5, .npy, .npz or FILE.h5:dataset."),
    out: Path = typer.Option(..., "--out", "-o", help="Model folder to create (checkpoints and logs go inside)."),
    preset: str = typer.Option("zanisi21", "--preset", help="Network preset: zanisi21 (paper), small, tiny."),
    head: Optional[str] = typer.Option(
        None, "--head", help="Likelihood per pixel: gaussian (paper; continuous images), logistic_mixture, or "
        "discretized_logistic_mixture (8-bit images with integer values 0..255)."),
    nr_resnet: Optional[int] = typer.Option(None, "--nr-resnet", min=1, max=64, help="Gated residual blocks per resolution "
                                            "(preset value if omitted; paper 3)."),
    nr_filters: Optional[int] = typer.Option(None, "--nr-filters", min=1, max=4096, help="Feature channels (paper 64)."),
    nr_logistic_mix: Optional[int] = typer.Option(None, "--nr-logistic-mix", min=1, max=100,
                                                  help="Mixture components of the logistic heads."),
    dropout: Optional[float] = typer.Option(None, "--dropout", min=0.0, max=0.99, help="Dropout rate in [0, 1) (paper 0.5)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, max=1_000_000, help="Passes over the training images "
                                         "(default 20 unless --max-steps is given)."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", min=1, max=1_000_000_000, help="Stop after this many optimizer steps "
                                            "(overrides --epochs)."),
    batch_size: int = typer.Option(64, "--batch-size", min=1, max=65536, help="Images per step and device."),
    lr: float = typer.Option(1e-3, "--lr", min=1e-9, max=10.0, help="Peak Adam learning rate (linear warm-up, then cosine decay to 5%)."),
    warmup_steps: int = typer.Option(200, "--warmup-steps", min=0, max=1_000_000_000, help="Learning-rate warm-up steps."),
    weight_average: float = typer.Option(0.0, "--weight-average", min=0.0, max=0.999999,
                                         help="Keep an exponential moving average of the weights with this decay "
                                         "per step (Polyak averaging, as PixelCNN++; e.g. 0.999) and save it as "
                                         "the model; 0 = off.  benchmarks/convergence.py measures when it helps."),
    val_fraction: float = typer.Option(0.1, "--val-fraction", min=0.0, max=0.9, help="Share of images held out for validation "
                                       "(seeded split; 0 = none)."),
    augment: str = typer.Option("rot,flip", "--augment", help="Comma list: rot (random 0-180 deg rotation; "
                                "90 deg steps for the discretized head), flip (mirror), or none."),
    precision: Optional[str] = typer.Option(
        None, "--precision", help="bf16-mixed (default where the CPU/GPU has native bf16: about 2x faster) or 32."),
    devices: str = typer.Option("1", "--devices", help="Processes (CPU) or GPUs per node; 'auto' = all GPUs."),
    num_nodes: int = typer.Option(1, "--num-nodes", min=1, max=100_000, help="Nodes for multi-node DDP (e.g. under SLURM)."),
    strategy: str = typer.Option("auto", "--strategy", help="Lightning strategy: auto, ddp (several devices/nodes)."),
    accelerator: str = typer.Option("auto", "--accelerator", help="auto, cpu or gpu."),
    seed: Optional[int] = typer.Option(None, "--seed", min=0, max=SEED_MAX, show_default=False,
                                       help="Seed for the split, initial weights and augmentation (default 0)."),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="Train an ensemble: one member per seed, e.g. 0,1,2 "
                                        "or 0-4, into --out/seedK/ + --out/ensemble.json (see above)."),
    patience: Optional[int] = typer.Option(None, "--patience", min=1, max=1_000_000, help="Early stopping: epochs without validation "
                                           "improvement before stopping (default: off)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, max=THREADS_MAX, help="CPU threads per process (default: usable cores "
                                          "/ processes; on a busy shared machine fewer is faster)."),
    key: Optional[str] = typer.Option(None, "--key", help="Array name inside an .npz or dataset inside an .h5."),
    input_norm: str = typer.Option("auto", "--input-norm", help="Network input mapping (x - shift) / scale for "
                                   "continuous heads: auto (mean and std of the training pixels), preset (the "
                                   "preset's 0.5, 0.5) or SHIFT,SCALE.  Densities stay in the data's units."),
    resume: bool = typer.Option(False, "--resume", help="Continue the interrupted run in --out from its last checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing model / run in --out."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    from morphllr.atomic import claim_output
    from morphllr.distributed import parse_devices
    from morphllr.errors import MorphllrError
    from morphllr.train.ensemble import parse_seeds, train_ensemble
    from morphllr.train.folders import check_ensemble_dir, check_out_dir
    from morphllr.train.run import build_config, train_model
    from morphllr.train.trainer import launched_rank

    if seed is not None and seeds is not None:
        raise MorphllrError(f"--seed {seed} and --seeds {seeds}: give one of them (--seeds trains one ensemble member "
                            "per seed)")
    seed_list = parse_seeds(seeds) if seeds is not None else None
    if launched_rank() == 0:  # the folder is claimed before any work; only rank 0 of a DDP run writes it
        ctx.with_resource(claim_output(out, inputs=[data], kind="dir", existing="keep"))
        if seed_list is None:
            check_out_dir(out, resume, overwrite)
        else:
            check_ensemble_dir(out, seed_list, resume, overwrite)
    overrides = dict(head=head, nr_resnet=nr_resnet, nr_filters=nr_filters, nr_logistic_mix=nr_logistic_mix,
                     dropout=dropout)
    config = build_config(preset, **overrides)
    devices_arg = parse_devices(devices)
    norm: str | list[str] = input_norm if input_norm in ("auto", "preset") else input_norm.split(",")
    options = dict(config=config, max_steps=max_steps, max_epochs=epochs, batch_size=batch_size, lr=lr,
                   val_fraction=val_fraction, augment=augment, precision=precision, devices=devices_arg,
                   num_nodes=num_nodes, strategy=strategy, accelerator=accelerator, resume=resume, overwrite=overwrite,
                   early_stopping_patience=patience, warmup_steps=warmup_steps, progress=not quiet, threads=threads,
                   key=key, input_norm=norm, weight_average=weight_average)
    if seed_list is not None:
        ensemble = train_ensemble(data, out, seed_list, **options)
        if ensemble is None:  # non-zero rank of a multi-process run
            return
        for name, member in ensemble.members.items():
            kept = "" if name in ensemble.trained else " (kept from the earlier run)"
            typer.echo(f"  {name}: {_metrics_text(member.metrics)}{kept}")
        typer.echo(f"ensemble of {len(ensemble.members)} models written to {ensemble.ensemble_dir} "
                   f"(ensemble.json + {', '.join(ensemble.members)})")
        return
    result = train_model(data, out, seed=0 if seed is None else seed, **options)
    if result is None:  # non-zero rank of a multi-process run
        return
    typer.echo(f"model written to {result.model_dir}: {_metrics_text(result.metrics)}")


ENSEMBLE_HELP = """Join separately trained models into one ensemble folder (as `train --seeds` writes).

For models trained one seed per job (`morphllr train DATA --out m_seed3 --seed 3` on a cluster array), or to add
members to an existing single model: each MODEL folder is copied into OUT/seedK/ (K = its recorded training seed) and
OUT/ensemble.json indexes them with their checksums.  The models must have distinct seeds and the same network,
preprocessing and training images (data fingerprint); the first difference is named otherwise.  The ensemble is then
accepted wherever a model is (`score`, `compare --obs/--arch`)."""


@app.command("ensemble", help=ENSEMBLE_HELP)
def ensemble(
    ctx: typer.Context,
    models: list[Path] = typer.Argument(..., help="Model folders (model.json + weights.safetensors), two or more."),
    out: Path = typer.Option(..., "--out", help="Ensemble folder to create (ensemble.json + seedK/ per model)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out if it exists."),
) -> None:
    from morphllr.atomic import claim_output
    from morphllr.model.ensemble import assemble_ensemble

    ctx.with_resource(claim_output(out, inputs=list(models), kind="dir", overwrite=overwrite))
    index = assemble_ensemble(models, out, overwrite=overwrite)
    typer.echo(f"ensemble of {len(index['members'])} models written to {out} "
               f"({', '.join(m['name'] for m in index['members'])})")


def _metrics_text(m: dict) -> str:
    val = f"{m['val_bits_per_dim']:.4f}" if m.get("val_bits_per_dim") is not None else "n/a"
    train = f"{m['train_bits_per_dim']:.4f}" if m.get("train_bits_per_dim") is not None else "n/a"
    return f"train {train} bits/dim, val {val} bits/dim after {m.get('steps', '?')} steps"
