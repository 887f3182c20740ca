"""The galaxies stage: ``morphllr degrade``, ``fit-sersic``, ``archetypes``, ``sky-patches`` and ``mock``.

Commands that make or measure galaxies in an image set: degraded copies, single-Sérsic fits, their smooth
archetypes, real empty sky to place them in, and simulated galaxies observed like the survey's.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import List, Optional

import typer

from morphllr.cli.application import app
from morphllr.cli.data import preprocessing_like
from morphllr.galaxies.sersic import GALSIM_N_RANGE_TEXT
from morphllr.limits import (GAIN_MAX, GAIN_MIN, MIN_FIT_SIZE, PIXEL_SCALE_MAX, PIXEL_SCALE_MIN, PSF_BETA_MAX,
                             PSF_BETA_MIN, PSF_FWHM_MAX, PSF_FWHM_MIN, SEED_MAX, WORKERS_MAX, ZERO_POINT_MAX,
                             ZERO_POINT_MIN)


@contextlib.contextmanager
def _progress_bar(label: str):
    """A rich progress bar kept on screen when the command finishes, erased when it fails (so no stale
    "0/N" line stands above the `error:` line)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  transient=False) as bar:
        try:
            yield bar
        except BaseException:
            bar.live.transient = True
            raise


DEGRADE_HELP = """Make a copy of an image set with one thing made worse, through the set's own preprocessing: the same galaxies, so their LLR tells what the models respond to (the synthetic twin of comparing TNG50-1/-2/-3, one simulation at three resolutions).

Exactly one of:

  --psf-broaden F   the PSF F times broader: each flux cutout convolved with a Gaussian of FWHM sqrt(F^2 - 1) x the PSF FWHM (FWHMs add in quadrature).  PSF FWHM: --psf-fwhm, else the catalogue's sersic_psf_fwhm_arcsec (recorded by fit-sersic), else psf_fwhm_arcsec.

  --smooth-centre   the centre smoothed: blurred with sigma = R_e / 2 (at least 1 px) inside ~1.5 R_e (weight 1 within 0.75 R_e, falling to 0 at 2.25 R_e from the cutout centre), the outskirts kept; R_e = the catalogue's sersic_re_pix (run fit-sersic first; 4 px where it is missing, counted in the record).

  --resolution K    the resolution K times coarser: every K x K block of the flux cutout replaced by its mean.

Afterwards white Gaussian noise is added until each image's sky rms (sep background) is the original's again (catalogue column degrade_noise_sigma, flux units per pixel), drawn from --seed image after image: a copy is reproducible.  The copy is re-segmented and stretched with the set's own recipe; its attribute `degrade` records every degradation applied so far (operation, parameters, seed, PSF source, the source's images_sha256).  Chain calls for several degradations.

Examples:

  morphllr degrade val_real.h5 --psf-broaden 2 --psf-fwhm 1.4 --seed 7 --out val_psf2x.h5

  morphllr degrade val_real.h5 --resolution 2 --out val_res2.h5
"""


@app.command("degrade", help=DEGRADE_HELP)
def degrade_command(
    ctx: typer.Context,
    imageset: Path = typer.Argument(..., help="Image set (.h5) with flux cutouts (/flux)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output image set (.h5)."),
    psf_broaden: Optional[float] = typer.Option(
        None, "--psf-broaden", min=1.0, max=100.0, help="Make the PSF FWHM this many times broader (> 1; 2 = twice)."
    ),
    smooth_centre: bool = typer.Option(False, "--smooth-centre", help="Smooth the galaxies inside ~1.5 R_e "
                                       "(catalogue sersic_re_pix)."),
    resolution: Optional[int] = typer.Option(
        None, "--resolution", min=2, max=1024, help="Block size K: K x K block means, the resolution K times coarser."
    ),
    psf_fwhm: Optional[float] = typer.Option(
        None, "--psf-fwhm", min=PSF_FWHM_MIN, max=PSF_FWHM_MAX, help="PSF FWHM of the set in arcsec, for --psf-broaden "
        "(default: the catalogue's sersic_psf_fwhm_arcsec, else psf_fwhm_arcsec)."
    ),
    seed: int = typer.Option(0, "--seed", min=0, max=SEED_MAX, help="Seed of the restored noise."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out if it exists."),
) -> None:
    from rich.console import Console

    from morphllr.atomic import claim_output
    from morphllr.galaxies.degrade import degrade_set

    console = Console(stderr=True, soft_wrap=True)
    ctx.with_resource(claim_output(out, inputs=[imageset], overwrite=overwrite))
    record = degrade_set(imageset, out, psf_broaden=psf_broaden, smooth_centre=smooth_centre, resolution=resolution,
                         psf_fwhm=psf_fwhm, seed=seed, overwrite=overwrite)
    what = {"psf_broaden": f"PSF {record.get('factor', 0):g}x broader (FWHM from {record.get('psf_fwhm_from')})",
            "smooth_centre": f"centres smoothed ({record.get('n_fallback', 0)} without sersic_re_pix: 4 px assumed)",
            "resolution": f"resolution {record.get('block', 0)}x coarser"}[record["operation"]]
    console.print(f"wrote [bold]{out}[/bold]: {record['n_images']} images of {imageset.name}, {what}, noise restored "
                  f"(seed {record['seed']})")


FIT_HELP = f"""Fit a single Sérsic profile to every galaxy of an image set and store the result in its catalogue.

Each flux cutout (central --fit-size pixels; default = the part the model sees) is fitted with an elliptical Sérsic convolved with the PSF and integrated over the pixels (3x3 sub-pixels with a sub-pixel PSF convolution in the central 11x11 pixels, finer still at the cusp; 2x2 sub-pixels further out), with companions (segmentation label > 1) masked and the sky noise from the catalogue's sky_sigma as weights (plus Poisson noise when a `gain` column exists).  Astropy Levenberg-Marquardt; initial guesses from image moments; one process per core.

Columns written: sersic_n, sersic_re_pix (half-light radius along the MAJOR axis, pixels of the flux cutout), sersic_q (b/a), sersic_pa_deg (major axis, degrees counter-clockwise from the +x/column axis; GalSim's beta), sersic_flux (total flux, flux units of the set), sersic_x0_pix, sersic_y0_pix (centre, 0-based pixels of the flux cutout), sersic_chi2nu, sersic_flag (bit mask, 0 = good: 1 n at the search bound 0.2 or 8; 2 R_e or q at a bound, e.g. unresolved; 4 not converged; 8 no fit, parameters NaN; 16 R_e beyond the fitted window, i.e. the major-axis R_e exceeds half the --fit-size side, so R_e, n and the flux extrapolate the wings; 32 n at or beyond GalSim's {GALSIM_N_RANGE_TEXT}, which the archetype clips), and the PSF and window used: sersic_psf_fwhm_arcsec, sersic_psf_beta (NaN for a PSF image, a Gaussian or --no-psf), sersic_fit_size; the set's catalogue metadata `sersic_fit` records the PSF (kind, FWHM, beta and where they came from; a PSF image's file, sha256 and pixels), the window (x0, y0, side) and the flag bits.  `morphllr archetypes` renders with that PSF by default, and `archetypes --drop-flagged` skips every galaxy whose flag is not 0.

PSF per galaxy, each part in order option > catalogue column > default: FWHM (--psf-fwhm, else psf_fwhm_arcsec) and, for a Moffat, beta (--psf-beta, else psf_beta, else 4.765); or --psf-image for every galaxy.  A wrong beta biases n: when the true beta is 3.5 and the fit assumes the default 4.765, the median |dn| on GalSim mocks rises from 0.04 with the right beta to 0.23 (benchmarks/psf_beta.py, 200 mocks n 0.5-5, R_e 2.5-9 px, FWHM 1.4": 0.08 -> 0.28 with SDSS-like noise, 0.01 -> 0.22 noise-free); n comes out too low, since the assumed PSF lacks the true one's wings and the galaxy profile is made to supply them.  Give the survey's beta, or its PSF image, when it is known.

Example:  morphllr fit-sersic obs.h5 --psf-fwhm 1.4 --psf-beta 3.5
"""


@app.command("fit-sersic", help=FIT_HELP)
def fit_sersic_command(
    ctx: typer.Context,
    imageset: Path = typer.Argument(..., help="Image set (.h5) with flux cutouts, from `morphllr prepare`."),
    psf_fwhm: Optional[float] = typer.Option(
        None, "--psf-fwhm", min=PSF_FWHM_MIN, max=PSF_FWHM_MAX, help="PSF FWHM in arcsec for every galaxy (SDSS r median ~1.4). Default: the "
        "catalogue's psf_fwhm_arcsec column (and psf_beta)."),
    psf: str = typer.Option("moffat", "--psf", help="PSF shape: moffat (beta: --psf-beta, else the psf_beta column, else 4.765) or gaussian."),
    psf_beta: Optional[float] = typer.Option(
        None, "--psf-beta", min=PSF_BETA_MIN, max=PSF_BETA_MAX, help="Moffat index for every galaxy. Default: the catalogue's "
        "psf_beta column, else 4.765. A wrong beta biases n low (true 3.5, assumed 4.765: median |dn| 0.04-0.08 -> 0.22-0.28)."),
    psf_image: Optional[Path] = typer.Option(
        None, "--psf-image", help="PSF image (FITS or .npy, 2-D, finite, centred on the image): the image of a "
        "point source at the set's pixel scale, pixel response included, for every galaxy; instead of --psf-fwhm/--psf-beta. Recorded with its sha256 and pixels."),
    no_psf: bool = typer.Option(False, "--no-psf", help="Fit without PSF convolution (only for PSF-free images)."),
    channel: int = typer.Option(0, "--channel", min=0, max=1023, help="Band to fit (0-based) for multi-band sets."),
    fit_size: Optional[int] = typer.Option(
        None, "--fit-size", min=MIN_FIT_SIZE, max=4096, help="Side in pixels of the central square fitted. Default: the preset's crop (64 for "
        "zanisi21); at most the flux cutout's side."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, max=WORKERS_MAX,
                                          help="Processes to use (default: all usable cores)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace Sérsic columns the catalogue already has."),
) -> None:
    from rich.console import Console

    from morphllr.atomic import claim_output
    from morphllr.data.imageset import ImageSet
    from morphllr.galaxies.sersic_fit import fit_imageset

    console = Console(stderr=True)
    # the one in-place command: it locks the set whose catalogue it rewrites, before fitting
    ctx.with_resource(claim_output(imageset, option="IMAGESET", existing="update", inputs=[psf_image]))
    n = len(ImageSet.open(imageset))
    with _progress_bar("fit-sersic") as bar:
        task = bar.add_task("fit", total=n)
        _, summary = fit_imageset(imageset, psf_fwhm=psf_fwhm, psf_kind=psf, no_psf=no_psf, psf_beta=psf_beta,
                                  psf_image_path=psf_image, channel=channel, fit_size=fit_size, workers=workers,
                                  overwrite=overwrite, progress=lambda k: bar.update(task, completed=k))
    from morphllr.galaxies.sersic_fit import FLAG_BITS

    bits = "; ".join(f"{count} with bit {bit} ({FLAG_BITS[bit]})" for bit, count in summary["flag_bits"].items()
                     if count)
    console.print(f"fitted {summary['n']} galaxies ({summary['psf']}, central {summary['window']} px), "
                  f"{summary['n_good']} with flag 0; flags {summary['flag_counts']}; "
                  f"median n = {summary['median_n']:.2f}, median R_e = {summary['median_re_pix']:.2f} px"
                  + (f"\nflagged: {bits}" if bits else ""))
    typer.echo(json.dumps(summary))


ARCH_HELP = f"""Render the smooth Sérsic archetype of every galaxy of an image set (Zanisi et al. 2021, sec. 2.2).

Each archetype is a GalSim Sérsic with the galaxy's n (clipped to GalSim's {GALSIM_N_RANGE_TEXT}, column sersic_n_clipped), half-light radius, axis ratio, position angle, total flux and centre, convolved with the PSF its fit used (recorded by `morphllr fit-sersic`; a --psf-fwhm, --psf-beta, --psf or --psf-image that differs from it is refused: archetypes and observations share everything but morphology; sets without that record take the options, else the psf_fwhm_arcsec and psf_beta columns), drawn at the set's pixel scale on the flux-cutout grid, and given the same background: Gaussian sky noise of the catalogue's sky_sigma plus Poisson noise when a `gain` column (electrons per flux unit) exists, or, with --sky-patches, a random real empty-sky cutout (as RealSim does).  The result goes through the set's own preprocessing, so both density models see pixels made the same way.  Same ids as the input.

Parameters come from `morphllr fit-sersic` (sersic_* columns) or your own columns (--n-col etc.; R_e in pixels along the major axis, PA in degrees counter-clockwise from +x).  Galaxies whose fit is flagged (sersic_flag not 0, e.g. 16 R_e beyond the fitted window, 32 n at GalSim's bounds) are rendered, counted and warned about; --drop-flagged skips them.  --drop-bad skips galaxies whose values are unusable (NaN, R_e or flux <= 0) instead of stopping.

Everything that changes the pixels is recorded in the output set (file attribute and catalogue metadata `archetypes`): the observed set and its images' sha256, the seed, the PSF and where it came from, the noise (sky library file + sha256, or the sky_sigma / gain columns), the parameter columns and --drop-bad with its counts; the preprocessing is the observed set's.

Example:  morphllr archetypes obs.h5 --out arch.h5
"""


@app.command("archetypes", help=ARCH_HELP)
def archetypes_command(
    ctx: typer.Context,
    imageset: Path = typer.Argument(..., help="Observed image set (.h5) with flux cutouts and Sérsic columns."),
    out: Path = typer.Option(..., "--out", "-o", help="Output archetype image set (.h5)."),
    psf_fwhm: Optional[float] = typer.Option(
        None, "--psf-fwhm", min=PSF_FWHM_MIN, max=PSF_FWHM_MAX,
        help="PSF FWHM in arcsec for every galaxy. Default: the PSF the Sérsic fits used (refused if different), else "
        "the catalogue's psf_fwhm_arcsec."),
    psf: Optional[str] = typer.Option(None, "--psf", help="PSF shape: moffat or gaussian. Default: the fits', else moffat."),
    psf_beta: Optional[float] = typer.Option(
        None, "--psf-beta", min=PSF_BETA_MIN, max=PSF_BETA_MAX, help="Moffat index for every galaxy. Default: the fits', "
        "else the psf_beta column, else 4.765."),
    psf_image: Optional[Path] = typer.Option(
        None, "--psf-image", help="PSF image (FITS or .npy, centred on the image; the image of a point source at "
        "the set's pixel scale). Default: the fits' PSF image, if they used one."),
    sky_patches: Optional[Path] = typer.Option(
        None, "--sky-patches", help="Empty-sky cutouts (image set with flux, .npy/.npz or FITS cube; same flux units "
        "and pixel scale, at least as large as the cutouts) used as background instead of Gaussian noise."),
    n_col: str = typer.Option("sersic_n", "--n-col", help="Catalogue column with the Sérsic index."),
    re_col: str = typer.Option("sersic_re_pix", "--re-col", help="Column with the major-axis half-light radius (pixels)."),
    q_col: str = typer.Option("sersic_q", "--q-col", help="Column with the axis ratio b/a."),
    pa_col: str = typer.Option("sersic_pa_deg", "--pa-col", help="Column with the PA (deg, counter-clockwise from +x)."),
    flux_col: str = typer.Option("sersic_flux", "--flux-col", help="Column with the total flux (set's flux units)."),
    drop_bad: bool = typer.Option(False, "--drop-bad", help="Skip galaxies with unusable parameters (NaN, R_e or flux "
                                  "<= 0) instead of stopping."),
    drop_flagged: bool = typer.Option(False, "--drop-flagged", help="Also skip galaxies whose fit is flagged "
                                      f"(sersic_flag not 0, or n outside GalSim's {GALSIM_N_RANGE_TEXT}) instead of "
                                      "rendering them "
                                      "(they are counted and warned about)."),
    seed: int = typer.Option(0, "--seed", min=0, max=SEED_MAX,
                             help="Random seed of the noise (results do not depend on --workers)."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, max=WORKERS_MAX,
                                          help="Processes to use (default: all usable cores)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out if it exists."),
) -> None:
    from rich.console import Console

    from morphllr.galaxies.archetypes import make_archetype_set
    from morphllr.atomic import claim_output
    from morphllr.data.imageset import ImageSet
    from morphllr.galaxies.sersic_fit import default_workers

    console = Console(stderr=True)
    ctx.with_resource(claim_output(out, inputs=[imageset, psf_image, sky_patches], overwrite=overwrite))
    n = len(ImageSet.open(imageset))
    columns = {"n": n_col, "re_pix": re_col, "q": q_col, "pa_deg": pa_col, "flux": flux_col}
    with _progress_bar("archetypes") as bar:
        task = bar.add_task("render", total=n)
        summary = make_archetype_set(
            imageset, out, psf_fwhm=psf_fwhm, psf_kind=psf, psf_beta=psf_beta, psf_image_path=psf_image,
            sky_patches_path=sky_patches, columns=columns, seed=seed, drop_bad=drop_bad, drop_flagged=drop_flagged,
            overwrite=overwrite,
            workers=workers or default_workers(), progress=lambda k: bar.update(task, completed=k))
    console.print(f"wrote {summary['n']} archetypes to {out} (PSF: {summary['psf']}; noise: {summary['noise']}; "
                  f"{summary['n_clipped']} n clipped to GalSim's range; {summary['n_dropped']} dropped, "
                  f"{summary['n_dropped_flagged']} of them for a flagged fit)")
    if summary["n_flagged"]:
        console.print(f"[yellow]warning: {summary['n_flagged']} archetype(s) rendered from flagged Sérsic fits "
                      f"(sersic_flag not 0 or n outside {GALSIM_N_RANGE_TEXT}); --drop-flagged skips them[/yellow]")
    typer.echo(json.dumps(summary))


SKY_HELP = """Cut real empty sky out of frames for archetypes and mocks placed in real sky (`morphllr archetypes --sky-patches`, `morphllr mock --sky-patches`).

Every frame is segmented (sep, 1.5 sigma, no deblending) and every source grown by --dilate pixels; NaN/inf pixels are never sky.  Every --block x --block square of the remaining sky, starting on a --grid pixel lattice, is an empty block.  Each frame is cut into regions of about --region pixels (a frame smaller than two regions is one region) and a block belongs to the region it lies wholly in.  Each SIZE x SIZE patch is tiled from blocks of different regions (so its blocks never overlap; one large SDSS frame is enough, small frames such as survey JPEG cutouts give one block per frame), each turned by a random quarter turn and flip; the regions of one patch are drawn from the --neighbours regions whose frames are closest in sky noise, so a patch has one noise level.  Pixels are the frames' own, never resampled or smoothed; patches have seams every --block pixels.

--part K/M uses only blocks lying wholly inside part K of M of every frame: every M-th stripe of --region columns starting with the K-th, so each part samples the whole frame (crowded and empty sides alike): --part 1/2 for the sky of training sets, --part 2/2 for the sky of mocks and test archetypes; the two never share a pixel.

FRAMES: SDSS frames frame-{band}-{run}-{camcol}-{field}.fits[.bz2] (sky-subtracted nanomaggies, put into the working flux unit of --preset/--like through its zero point: zanisi21 = SDSS r counts, AB 28.2; one band at a time; their pixel scale must be the preset's), or files already in the working unit with the sky subtracted: an image set (its /flux), .npy/.npz or FITS cube of (N, H, W) or (N, C, H, W).

Outputs: OUT.npy, float32 (N, C, SIZE, SIZE) in working flux units, and OUT.json recording the frames, part and strips, block, grid, region, dilate, seed, working unit, sky statistics and, under "blocks", for every patch slot (row-major) the frame index, y, x of the block's top-left frame pixel, quarter turns and flip.  The real and tiled sky statistics (rms, skew, neighbour correlation) are printed for comparison.

Examples:

  morphllr sky-patches ../shared/data/sdss_frame/frame-r-002583-2-0136.fits.bz2 --size 128 --part 1/2 --out sky_train.npy

  morphllr sky-patches frames.npy --size 64 --out sky.npy && morphllr archetypes obs.h5 --sky-patches sky.npy --out arch_sky.h5
"""


@app.command("sky-patches", help=SKY_HELP)
def sky_patches_command(
    ctx: typer.Context,
    frames: List[Path] = typer.Argument(..., help="SDSS frame files (frame-*.fits[.bz2]) or files of frames (image set "
                                                  ".h5, .npy/.npz, FITS cube) in working flux units."),
    size: int = typer.Option(..., "--size", min=4, max=4096, help="Patch side in pixels: the flux-cutout side of the set the archetypes are for."),
    out: Path = typer.Option(..., "--out", "-o", help="Output .npy of float32 (N, C, SIZE, SIZE) patches (+ OUT.json record)."),
    n: Optional[int] = typer.Option(
        None, "--n", min=1, max=10_000_000, help="Number of patches (default: as many as the used empty sky fills once, empty pixels / SIZE^2, "
        "at least one per frame)."),
    part: Optional[str] = typer.Option(
        None, "--part", help="K/M: only part K of M of every frame, interleaved stripes of --region columns (1/2 training sky, 2/2 scoring sky)."),
    preset: str = typer.Option("zanisi21", "--preset", help="Working flux unit and pixel scale for SDSS frames: a preset "
                                                           "or recipe file."),
    like: Optional[Path] = typer.Option(
        None, "--like", help="Take the working unit from this model folder or image set instead of --preset."),
    block: int = typer.Option(16, "--block", min=1, max=4096, help="Side of the empty blocks in pixels (a multiple of --grid; SIZE a multiple of it)."),
    grid: int = typer.Option(4, "--grid", min=1, max=4096, help="Blocks start at multiples of this many pixels (keep a compression-block phase)."),
    region: Optional[int] = typer.Option(
        None, "--region", min=1, max=1_000_000, help="Side of the regions a patch takes one block from, pixels (default 4 x --block)."),
    dilate: int = typer.Option(4, "--dilate", min=0, max=1000, help="Pixels every detected source is grown by before looking for sky."),
    neighbours: int = typer.Option(32, "--neighbours", min=1, max=1_000_000, help="Regions of similar sky noise one patch draws its blocks from."),
    seed: int = typer.Option(0, "--seed", min=0, max=SEED_MAX, help="Random seed of the tiling."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out (and its .json) if they exist."),
) -> None:
    from rich.console import Console

    from morphllr.atomic import claim_outputs
    from morphllr.data.preprocess import Preprocessing
    from morphllr.galaxies.sky_patches import make_sky_patches

    # OUT.npy and its record OUT.json, claimed together before any frame is read (a bad suffix is refused below)
    record = out.with_suffix(".json") if out.suffix.lower() == ".npy" else None
    ctx.with_resource(claim_outputs([("--out", out), ("--out", record)], inputs=[*frames, like, preset],
                                    overwrite=overwrite))
    prep = preprocessing_like(like) if like is not None else Preprocessing.preset(preset)
    summary = make_sky_patches(frames, out, size, n=n, block=block, grid=grid, dilate=dilate, neighbours=neighbours,
                               seed=seed, overwrite=overwrite, part=part, region=region, preprocessing=prep)
    real, tiled = summary["frames_sky"], summary["patches_sky"]
    unit = summary["working_unit"]
    files = summary["frames"]
    Console(stderr=True, soft_wrap=True).print(
        f"{summary['n_patches']} patches of {size}x{size} from {summary['n_blocks']} empty {block}x{block} blocks in "
        f"{summary['n_regions_with_blocks']} regions of {summary['n_frames_with_blocks']} of {summary['n_frames']} "
        f"frames -> {out} (record {summary['record']})\n"
        f"frames {', '.join(files[:3])}{' ...' if len(files) > 3 else ''}; part {summary['part'] or 'all'}; "
        f"block {block}, region {summary['region']}, seed {seed}"
        + (f"; working unit: preset {unit['preset']} zero point {unit['zero_point']}" if unit else "") + "\n"
        f"sky rms {real['rms_median']:.4g} (frames) vs {tiled['rms_median']:.4g} (patches); mean {real['mean']:.3g} vs "
        f"{tiled['mean']:.3g}; skew {real['z_skew']:+.2f} vs {tiled['z_skew']:+.2f}; neighbour correlation "
        f"{real['corr_1']:.3f} vs {tiled['corr_1']:.3f}")
    typer.echo(json.dumps(summary))


MOCK_HELP = """Observe idealised simulation images the way the survey observed the real galaxies (RealSim-style insertion), written as an image set.

Inputs: TNG / Illustris SKIRT broadband cubes (BUNIT counts/s/pixel, FILTER0.. band names, PIXSCALE, USE_Z, CDELT1 in pc; choose the band with --band r and give --zero-point, the AB magnitude of 1 count/s, since the products document none), or idealised AB mag/arcsec^2 maps (SKIRT / RealSim; empty pixels +inf), as cubes or one file per band (photo_r_NAME.fits; several --band values stack them).  NaN/inf pixels are masked as empty and counted (column n_nonfinite).

Per galaxy, in order: the redshift (default: the image's own USE_Z/REDSHIFT, so no extra dimming; another redshift uses the physical pixel CDELT1 through --cosmology and (1+z)^4 surface-brightness dimming, without K-correction: warned beyond |dz| = 0.05); flux in the preset's working unit (zanisi21: SDSS r counts, AB zero point 28.2); PSF convolution and flux-conserving resampling onto a cutout-sized canvas (an image smaller than the cutout is padded with zero flux first); shot noise of the galaxy's own light (gain, electrons per working unit); then the sky: a real empty-sky patch from --sky-patches (the same library `archetypes --sky-patches` uses, added as its own pixels) or Gaussian noise of --sky-sigma; then the preset's model preprocessing.

PSF, sky and gain per galaxy: options (all galaxies) > --catalog columns (psf_fwhm_arcsec, psf_beta, sky_sigma, gain, redshift) > drawn from an observed set with --match (the PSF its Sérsic fits used when it records one - FWHM, beta, shape or PSF image, the PSF its archetypes get - else its psf_fwhm_arcsec and psf_beta; its sky_sigma, gain and, with --match-redshift, redshift; the galaxy drawn is recorded as match_id) > the preset (zanisi21: 0.396"/px, Moffat 1.4", sky sigma 5.7 counts, gain 4.8 e-/count).  --catalog also joins simulation properties by id (file name without suffix): log_mstar, SFR, subhalo id, ...

Everything that changes pixels is recorded in the set's preprocessing (zero points, cosmology, PSF, sky library sha256, gain, seed), so a model trained in other units or another cosmology refuses the set.  Catalogue: redshift, sim_redshift, sim_pixel_kpc, sim_pixel_arcsec, dimming_mag, psf_fwhm_arcsec, gain, sky_patch, match_id, n_nonfinite, + joined columns.

Example:  morphllr mock TNG/*.fits --band r --zero-point 23.9 --sky-patches sky_score.npy --match obs.h5 --like models/obs --out tng50.h5
"""


@app.command("mock", help=MOCK_HELP)
def mock_command(
    ctx: typer.Context,
    inputs: List[Path] = typer.Argument(..., help="Files, folders or globs of idealised images, one galaxy each (or one per band)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output image set (.h5)."),
    band: Optional[str] = typer.Option(
        None, "--band", help="Band(s) by name, comma-separated: r matches sloan/sdss_r in a SKIRT cube; g,r,i stacks "
        "bands (channels in this order)."),
    zero_point: Optional[float] = typer.Option(
        None, "--zero-point", min=ZERO_POINT_MIN, max=ZERO_POINT_MAX, help="AB magnitude of 1 count/s of count-rate inputs (TNG SKIRT cubes); recorded."),
    redshift: Optional[float] = typer.Option(
        None, "--redshift", min=1e-5, max=20.0, help="Redshift to observe every galaxy at. Default: catalogue/match, else the image's "
        "own (USE_Z / REDSHIFT)."),
    cosmology: Optional[str] = typer.Option(
        None, "--cosmology", help="Planck18 (default) or realsim = FlatLambdaCDM(H0=70, Om0=0.3), RealSim's."),
    sim_pixel_kpc: Optional[float] = typer.Option(
        None, "--sim-pixel-kpc", min=1e-6, max=1e4, help="Physical pixel size of the inputs in kpc (default: header CDELT1 in pc/kpc)."),
    sky_patches: Optional[Path] = typer.Option(
        None, "--sky-patches", help="Real empty-sky library (.npy from `morphllr sky-patches`, working units, at least "
        "the cutout size) to insert the mocks into, instead of Gaussian sky noise."),
    match: Optional[Path] = typer.Option(
        None, "--match", help="Observed image set to draw each mock's PSF FWHM, sky noise and gain from."),
    match_redshift: bool = typer.Option(False, "--match-redshift", help="With --match: draw the redshift too."),
    catalog: Optional[Path] = typer.Option(
        None, "--catalog", help="Catalogue (CSV, FITS, ECSV, Parquet) with `id` = file name without suffix: "
        "per-galaxy redshift, psf_fwhm_arcsec, psf_beta, sky_sigma, gain, and properties joined into the set."),
    like: Optional[Path] = typer.Option(
        None, "--like", help="Observe and preprocess exactly like this model folder or image set (overrides --preset)."),
    preset: str = typer.Option("zanisi21", "--preset", help="Survey + preprocessing preset (zanisi21) or recipe file."),
    pixel_scale: Optional[float] = typer.Option(None, "--pixel-scale", min=PIXEL_SCALE_MIN, max=PIXEL_SCALE_MAX,
                                                help="Survey pixel scale, arcsec/px (0.396)."),
    psf_fwhm: Optional[float] = typer.Option(None, "--psf-fwhm", min=PSF_FWHM_MIN, max=PSF_FWHM_MAX,
                                             help="Seeing FWHM in arcsec for every galaxy (1.4)."),
    psf: Optional[str] = typer.Option(None, "--psf", help="PSF shape: moffat or gaussian."),
    psf_beta: Optional[float] = typer.Option(None, "--psf-beta", min=PSF_BETA_MIN, max=PSF_BETA_MAX,
                                             help="Moffat index (default: catalogue/match psf_beta, else 4.765)."),
    psf_image: Optional[Path] = typer.Option(
        None, "--psf-image", help="PSF image (FITS or .npy, centred on the image) sampled at the survey pixel "
        "scale, for every galaxy."),
    sky_sigma: Optional[float] = typer.Option(None, "--sky-sigma", min=0.0, max=1e12,
                                              help="Gaussian sky noise per pixel, working units."),
    gain: Optional[float] = typer.Option(None, "--gain", min=GAIN_MIN, max=GAIN_MAX,
                                         help="Electrons per working flux unit (shot noise)."),
    working_zero_point: Optional[float] = typer.Option(
        None, "--working-zero-point", min=ZERO_POINT_MIN, max=ZERO_POINT_MAX, help="AB magnitude of one output flux unit (default: the preset's, 28.2 = "
        "SDSS r counts); recorded, so models trained in other units refuse the set."),
    repeat: int = typer.Option(
        1, "--repeat", min=1, max=1000, help="Observations per galaxy, each with its own sky, noise and matched PSF (ids NAME-0, "
        "NAME-1, ...; column galaxy)."),
    seed: int = typer.Option(0, "--seed", min=0, max=SEED_MAX, help="Random seed of the noise, sky-patch and match draws."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out if it exists."),
) -> None:
    from rich.console import Console

    from morphllr.atomic import claim_output
    from morphllr.errors import MorphllrError
    from morphllr.galaxies.mock import make_mock_set

    console = Console(stderr=True)
    ctx.with_resource(claim_output(out, inputs=[*inputs, catalog, like, preset, sky_patches, match, psf_image],
                                   overwrite=overwrite))
    if match_redshift and match is None:
        raise MorphllrError("--match-redshift: needs --match OBSERVED.h5 to draw redshifts from")
    recipe = preprocessing_like(like) if like is not None else preset
    bands = [b.strip() for b in band.split(",") if b.strip()] if band else None
    with _progress_bar("mock") as bar:
        task = bar.add_task("observe", total=None)
        summary = make_mock_set(
            [str(p) for p in inputs], out, preset=recipe, redshift=redshift, sim_pixel_kpc=sim_pixel_kpc,
            pixel_scale=pixel_scale, psf_fwhm=psf_fwhm, psf=psf, psf_beta=psf_beta, psf_image=psf_image,
            zero_point=zero_point, working_zero_point=working_zero_point, sky_sigma=sky_sigma, gain=gain,
            sky_patches=sky_patches, catalog=catalog, match=match, match_redshift=match_redshift, bands=bands,
            cosmology=cosmology, repeat=repeat, seed=seed, overwrite=overwrite,
            progress=lambda k: bar.update(task, completed=k), recipe_source=None if like is None else f"--like {like}")
    for warning in summary["warnings"]:
        console.print(f"[yellow]warning: {warning}[/yellow]")
    sky = summary["sky"]
    sky_text = f"real sky from {sky['file']} ({sky['n_patches']} patches)" if "file" in sky else \
        f"Gaussian sky sigma {sky['gaussian_sigma']:g}"
    console.print(f"wrote {summary['n']} mock observation(s) to {out}: {sky_text}; PSF {summary['psf']}; "
                  f"{summary['cosmology']}")
    typer.echo(json.dumps(summary, default=str))
