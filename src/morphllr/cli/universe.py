"""``morphllr synth`` and ``morphllr demo``: the generated universe with a known answer."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..limits import N_GALAXIES_MAX, SEED_MAX, WORKERS_MAX
from . import app

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

    from ..atomic import claim_output
    from ..synth import SET_NAMES, check_set_names, write_universe

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
    train: bool = typer.Option(False, "--train", help="Retrain p_obs and p_arch first instead of using the "
                               "shipped models (~20-30 min on 2 CPU cores)."),
    n: int = typer.Option(300, "--n", min=2, max=N_GALAXIES_MAX, help="Galaxies per set."),
    seed: int = typer.Option(0, "--seed", min=0, max=SEED_MAX, help="Universe seed (the shipped models were trained on seed 0)."),
    workers: int = typer.Option(2, "--workers", min=1, max=WORKERS_MAX, help="Processes for the single-Sérsic fits behind the archetypes."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out folder."),
) -> None:
    """Run the whole method on a generated universe whose answer is known (about 1-2 min).

    Generates SDSS-r-like "observed" test galaxies and three "simulations" of known, decreasing fidelity (sim-good > sim-softened > sim-smooth) plus the Sérsic archetypes of the observed galaxies (see `morphllr synth --help`), scores them with the two shipped PixelCNN++ models (p_obs trained on observed galaxies, p_arch on their archetypes) and writes a report (OUT/report/index.html).  The ranking table shows each set's mean LLR = log p_obs - log p_arch with its 95% bootstrap interval; the demo then says whether the known order was recovered.
    """
    from rich.console import Console

    from ..atomic import claim_output
    from ..demo import check_ranking, pretrained_dir, run_demo
    from ..report import print_ranking

    # claimed before anything is generated; it may not hold the shipped models it reads
    ctx.with_resource(claim_output(out, inputs=[] if train else [pretrained_dir()], overwrite=overwrite, kind="dir"))
    console = Console()
    result = run_demo(out, train=train, overwrite=overwrite, n=n, seed=seed, workers=workers,
                      say=lambda message: console.print(f"[dim]{message}[/dim]"))
    print_ranking(result.summary, console)
    problems = check_ranking(result.summary)
    if problems:
        console.print("[yellow]the known order was NOT fully recovered:[/yellow]")
        for p in problems:
            console.print(f"  - {p}")
    else:
        console.print("[green]recovered the known order[/green] observed-test > sim-good > sim-softened > "
                      "sim-smooth >= archetypes")
    console.print(f"report: {result.out / 'index.html'}  ({result.timing['demo_total_s']:.0f} s)")
