"""``morphllr synth`` and ``morphllr demo``: the generated universe with a known answer."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from morphllr.cli.application import app
from morphllr.limits import N_GALAXIES_MAX, SEED_MAX, WORKERS_MAX

_SETS_HELP = (
    "Comma-separated sets to write: observed-train, observed-test, sim-good, sim-softened, sim-smooth, "
    "archetypes (Sérsic archetypes of observed-test, in the same sky: each archetype keeps its galaxy's companion/star layer and gets fresh noise, the synthetic equivalent of inserting archetypes into real sky), archetypes-train (of observed-train; p_arch's "
    "training set).  Default: all."
)

_SKY_HELP = (
    "Place every observed, sim-* and archetype image in real sky: a .npy (or image set / .npz / FITS cube) "
    "of float32 (M, 1, S, S) empty-sky patches, sky-subtracted, in SDSS r counts (DN, AB zero point 28.2) at "
    "0.396\"/px, S >= 128 (the flux cutout side), as written by `morphllr sky-patches FRAME --size 128 --part 1/2 "
    "--out SKY.npy` (--part 1/2: the training sky; keep the frame's other part for the sets you score).  "
    "Each image is then its noiseless galaxy + companions/stars, their own Poisson noise, and one random patch "
    "(random patch, crop, quarter turn, flip; the library's pixels as they are, as `morphllr archetypes --sky-patches` does) instead of "
    "the synthetic Gaussian sky; archetypes get another patch than their galaxy.  Catalogue: sky_patch (index), "
    "sky_sigma (rms of that patch).  The library (file, sha256, M, S) is recorded in universe.json and every set.  "
    "Default: synthetic sky (what the shipped models were trained on)."
)


@app.command("synth")
def synth_command(
    ctx: typer.Context,
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (created; refused if it exists unless --overwrite)."),
    n_train: int = typer.Option(2000, "--n-train", min=1, max=N_GALAXIES_MAX, help="Galaxies in observed-train and archetypes-train."),
    n_test: int = typer.Option(500, "--n-test", min=1, max=N_GALAXIES_MAX, help="Galaxies in observed-test and archetypes."),
    n_sim: int = typer.Option(None, "--n-sim", min=1, max=N_GALAXIES_MAX, help="Galaxies in each sim-* set (default: same as --n-test).", show_default=False),
    sets: str = typer.Option("all", "--sets", help=_SETS_HELP),
    seed: int = typer.Option(0, "--seed", min=0, max=SEED_MAX, help="Universe seed; the same seed gives identical files."),
    workers: int = typer.Option(2, "--workers", min=1, max=WORKERS_MAX, help="Processes for the single-Sérsic fits behind the archetypes."),
    preprocessing: str = typer.Option("zanisi21", "--preprocessing",
                                      help="Preprocessing preset or recipe file for the model-input /images."),
    sky_patches: Optional[Path] = typer.Option(None, "--sky-patches", metavar="SKY.npy", help=_SKY_HELP,
                                               show_default=False),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out folder."),
) -> None:
    """Generate a synthetic SDSS-r-like galaxy universe whose realism ranking is known.

    "Observed" galaxies are Sérsic bulges + exponential disks with spiral arms, bars, star-forming clumps, dust lanes, companions (10%) and foreground stars (10%) (sizes from Shen et al. 2003, masses from the GAMA mass function, r < 17.77 at 0.02 < z < 0.05, near enough that arms and clumps span several 0.79" model pixels), a Moffat PSF of 1.2-1.6" FWHM and SDSS-like sky and shot noise (or real sky: --sky-patches).  Pixels are SDSS r counts (DN, AB zero point 28.2) at 0.396"/px in 128x128 cutouts (/flux); /images holds the model input (zanisi21: central 64x64, 2x2 mean, arcsinh(counts/1000) -> 32x32).

    The "simulation" sets have known, decreasing fidelity: sim-good (arms 8% weaker, clump light 15% lower) > sim-softened (a low-resolution run: no structure inside a 4 kpc core, whose light is flattened and spread around it; observed beyond ~5 kpc) ; all three are the observed-test galaxies re-rendered (paired sets) > sim-smooth (no arms/bars/clumps/dust) >= archetypes.  A likelihood-ratio comparison should recover this order (stored in universe.json).

    Writes OUT/<set>.h5 (morphllr ImageSets whose catalogues hold the true parameters and single-Sérsic fits) and OUT/universe.json.  Speed: ~90 images/s per CPU core, plus ~0.05 CPU-s per Sérsic fit for the archetypes.
    """
    import time

    from rich.console import Console

    from morphllr.atomic import claim_output
    from morphllr.synth.sets import SET_NAMES, check_set_names
    from morphllr.synth.universe import write_universe

    # claimed before anything is generated (the sky library and a recipe file are inputs)
    ctx.with_resource(claim_output(out, inputs=[sky_patches, preprocessing], overwrite=overwrite, kind="dir"))
    names = list(SET_NAMES) if sets.strip() == "all" else check_set_names(sets.split(","), "--sets")
    console = Console(stderr=True)
    start = time.perf_counter()
    with console.status("generating the universe") as status:
        written = write_universe(out, names, n_train=n_train, n_test=n_test, n_sim=n_sim, seed=seed,
                                 overwrite=overwrite, workers=workers, preprocessing=preprocessing,
                                 progress=lambda message: status.update(message), sky_patches=sky_patches)
    for name, path in written.items():
        console.print(f"  {name:17s} {path}")
    console.print(f"wrote {len(written)} sets to {out} in {time.perf_counter() - start:.1f} s")


@app.command("demo")
def demo_command(
    ctx: typer.Context,
    out: Path = typer.Option(Path("morphllr-demo"), "--out", "-o", help="Demo folder: data/ (the generated sets), "
                             "report/ (scores, summary.json, index.html) and, with --train, models/."),
    train: bool = typer.Option(False, "--train", help="Retrain the p_obs and p_arch ensembles first instead of using "
                               "the shipped ones, as `make models` does (~35 min on 2 CPU cores for 3 seeds)."),
    seeds: Optional[str] = typer.Option(None, "--seeds", metavar="0,1,2", help="With --train: the training seeds, one "
                                        "model of each ensemble per seed (0,1,2 or a range 0-4).  Default: 0,1,2, "
                                        "the shipped ensembles' seeds.", show_default=False),
    n: int = typer.Option(300, "--n", min=2, max=N_GALAXIES_MAX, help="Galaxies per set."),
    seed: int = typer.Option(0, "--seed", min=0, max=SEED_MAX, help="Universe seed (the shipped models were trained on "
                             "seed 0's training sets; with --train, the training sets' seed too)."),
    workers: int = typer.Option(2, "--workers", min=1, max=WORKERS_MAX, help="Processes for the single-Sérsic fits behind the archetypes."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out folder."),
) -> None:
    """Run the whole method on a generated universe whose answer is known (about 1.5-2 min).

    Generates SDSS-r-like "observed" test galaxies and three "simulations" of known, decreasing fidelity (sim-good > sim-softened > sim-smooth) plus the Sérsic archetypes of the observed galaxies (see `morphllr synth --help`), scores them with the two shipped PixelCNN++ ensembles (p_obs: 3 models trained with seeds 0, 1, 2 on observed galaxies, p_arch: 3 on their archetypes; src/morphllr/pretrained/obs and .../arch, members seed0/ seed1/ seed2/) under all 3 x 3 model pairs and writes a report (OUT/report/index.html).  The ranking table shows each set's mean LLR = log p_obs - log p_arch (ensemble means) with its 95% bootstrap interval, its spread over the model pairs (model_std) and whether its difference from the reference survives retraining; the demo then says whether the known order was recovered (galaxy by galaxy, on the ensemble mean) and by how many model pairs on their own.  summary.json: `paired` (per consecutive sets: mean, ci95, by_pair, model_std, stable, ci95_total) and `known_order`.
    """
    from rich.console import Console

    from morphllr.atomic import claim_output
    from morphllr.demo import check_ranking, pretrained_dir, run_demo
    from morphllr.errors import MorphllrError
    from morphllr.report.terminal import print_ranking
    from morphllr.train.ensemble import parse_seeds

    if seeds is not None and not train:
        raise MorphllrError(f"--seeds {seeds}: only with --train (the shipped ensembles have seeds 0,1,2)")
    seed_list = parse_seeds(seeds) if seeds is not None else None
    # claimed before anything is generated; it may not hold the shipped models it reads
    ctx.with_resource(claim_output(out, inputs=[] if train else [pretrained_dir()], overwrite=overwrite, kind="dir"))
    console = Console()
    result = run_demo(out, train=train, overwrite=overwrite, n=n, seed=seed, seeds=seed_list, workers=workers,
                      say=lambda message: console.print(f"[dim]{message}[/dim]"))
    print_ranking(result.summary, console)
    problems = check_ranking(result.summary)
    known = result.summary.get("known_order") or {}
    if problems:
        console.print("[yellow]the known order was NOT fully recovered:[/yellow]")
        for p in problems:
            console.print(f"  - {p}")
    else:
        console.print("[green]recovered the known order[/green] observed-test > sim-good > sim-softened > "
                      "sim-smooth >= archetypes" + (" (ensemble mean)" if known.get("by_pair") else ""))
    if known.get("by_pair"):
        recovering, pairs = known["model_pairs_recovering"], known["model_pairs"]
        colour = "green" if recovering == pairs else "yellow"
        console.print(f"[{colour}]{recovering} of {pairs} model pairs recover it on their own[/{colour}] "
                      f"(ranking agreement {result.summary.get('ranking_agreement', float('nan')):.3f})")
    console.print(f"report: {result.out / 'index.html'}  ({result.timing['demo_total_s']:.0f} s)")
