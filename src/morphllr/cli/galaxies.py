"""``morphllr fit-sersic``, ``morphllr archetypes``, ``morphllr sky-patches`` and ``morphllr mock``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from . import app

FIT_HELP = """Fit a single Sérsic profile to every galaxy of an image set and store the result in its catalogue.

Each flux cutout (central --fit-size pixels; default = the part the model sees) is fitted with an elliptical Sérsic convolved with the PSF and integrated over the pixels (3x3 sub-pixels with a sub-pixel PSF convolution in the central 11x11 pixels, finer still at the cusp; 2x2 sub-pixels further out), with companions (segmentation label > 1) masked and the sky noise from the catalogue's sky_sigma as weights (plus Poisson noise when a `gain` column exists).  Astropy Levenberg-Marquardt; initial guesses from image moments; one process per core.

Columns written: sersic_n, sersic_re_pix (half-light radius along the MAJOR axis, pixels of the flux cutout), sersic_q (b/a), sersic_pa_deg (major axis, degrees counter-clockwise from the +x/column axis; GalSim's beta), sersic_flux (total flux, flux units of the set), sersic_x0_pix, sersic_y0_pix (centre, 0-based pixels of the flux cutout), sersic_chi2nu, sersic_flag (bit mask, 0 = good: 1 n at the search bound 0.2 or 8; 2 R_e or q at a bound, e.g. unresolved; 4 not converged; 8 no fit, parameters NaN).

Example:  morphllr fit-sersic obs.h5 --psf-fwhm 1.4
"""


def _progress_bar(label: str):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=False)


@app.command("fit-sersic", help=FIT_HELP)
def fit_sersic_command(
    imageset: Path = typer.Argument(..., help="Image set (.h5) with flux cutouts, from `morphllr prepare`."),
    psf_fwhm: Optional[float] = typer.Option(
        None, "--psf-fwhm", help="PSF FWHM in arcsec for every galaxy (SDSS r median ~1.4). Default: the "
        "catalogue's psf_fwhm_arcsec column (and psf_beta)."),
    psf: str = typer.Option("moffat", "--psf", help="PSF shape: moffat (beta 4.765 unless psf_beta is given) or gaussian."),
    no_psf: bool = typer.Option(False, "--no-psf", help="Fit without PSF convolution (only for PSF-free images)."),
    channel: int = typer.Option(0, "--channel", help="Band to fit (0-based) for multi-band sets."),
    fit_size: Optional[int] = typer.Option(
        None, "--fit-size", help="Side in pixels of the central square fitted. Default: the preset's crop (64 for "
        "zanisi21)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Processes to use (default: all usable cores)."),
) -> None:
    from rich.console import Console

    from ..imageset import ImageSet
    from ..sersic_fit import fit_imageset

    console = Console(stderr=True)
    n = len(ImageSet.open(imageset))
    with _progress_bar("fit-sersic") as bar:
        task = bar.add_task("fit", total=n)
        _, summary = fit_imageset(imageset, psf_fwhm=psf_fwhm, psf_kind=psf, no_psf=no_psf, channel=channel,
                                  fit_size=fit_size, workers=workers,
                                  progress=lambda k: bar.update(task, completed=k))
    console.print(f"fitted {summary['n']} galaxies, {summary['n_good']} with flag 0; flags {summary['flag_counts']}; "
                  f"median n = {summary['median_n']:.2f}, median R_e = {summary['median_re_pix']:.2f} px")
    typer.echo(json.dumps(summary))


ARCH_HELP = """Render the smooth Sérsic archetype of every galaxy of an image set (Zanisi et al. 2021, sec. 2.2).

Each archetype is a GalSim Sérsic with the galaxy's n (clipped to GalSim's 0.3-6.2, column sersic_n_clipped), half-light radius, axis ratio, position angle, total flux and centre, convolved with the PSF, drawn at the set's pixel scale on the flux-cutout grid, and given the same background: Gaussian sky noise of the catalogue's sky_sigma plus Poisson noise when a `gain` column (electrons per flux unit) exists, or, with --sky-patches, a random real empty-sky cutout (as RealSim does).  The result goes through the set's own preprocessing, so both density models see pixels made the same way.  Same ids as the input.

Parameters come from `morphllr fit-sersic` (sersic_* columns) or your own columns (--n-col etc.; R_e in pixels along the major axis, PA in degrees counter-clockwise from +x).

Example:  morphllr archetypes obs.h5 --out arch.h5 --psf-fwhm 1.4
"""


@app.command("archetypes", help=ARCH_HELP)
def archetypes_command(
    imageset: Path = typer.Argument(..., help="Observed image set (.h5) with flux cutouts and Sérsic columns."),
    out: Path = typer.Option(..., "--out", "-o", help="Output archetype image set (.h5)."),
    psf_fwhm: Optional[float] = typer.Option(
        None, "--psf-fwhm", help="PSF FWHM in arcsec for every galaxy. Default: the catalogue's psf_fwhm_arcsec."),
    psf: str = typer.Option("moffat", "--psf", help="PSF shape: moffat or gaussian."),
    psf_image: Optional[Path] = typer.Option(
        None, "--psf-image", help="PSF image (FITS or .npy) sampled at the set's pixel scale; overrides --psf-fwhm."),
    sky_patches: Optional[Path] = typer.Option(
        None, "--sky-patches", help="Empty-sky cutouts (image set with flux, .npy/.npz or FITS cube; same flux units "
        "and pixel scale, at least as large as the cutouts) used as background instead of Gaussian noise."),
    n_col: str = typer.Option("sersic_n", "--n-col", help="Catalogue column with the Sérsic index."),
    re_col: str = typer.Option("sersic_re_pix", "--re-col", help="Column with the major-axis half-light radius (pixels)."),
    q_col: str = typer.Option("sersic_q", "--q-col", help="Column with the axis ratio b/a."),
    pa_col: str = typer.Option("sersic_pa_deg", "--pa-col", help="Column with the PA (deg, counter-clockwise from +x)."),
    flux_col: str = typer.Option("sersic_flux", "--flux-col", help="Column with the total flux (set's flux units)."),
    drop_bad: bool = typer.Option(False, "--drop-bad", help="Skip galaxies with unusable parameters instead of stopping."),
    seed: int = typer.Option(0, "--seed", help="Random seed of the noise (results do not depend on --workers)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Processes to use (default: all usable cores)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out if it exists."),
) -> None:
    from rich.console import Console

    from ..archetypes import make_archetype_set
    from ..errors import MorphllrError
    from ..imageset import ImageSet
    from ..sersic_fit import default_workers

    console = Console(stderr=True)
    if out.exists() and not overwrite:
        raise MorphllrError(f"--out {out}: already exists; pass --overwrite to replace it")
    n = len(ImageSet.open(imageset))
    columns = {"n": n_col, "re_pix": re_col, "q": q_col, "pa_deg": pa_col, "flux": flux_col}
    with _progress_bar("archetypes") as bar:
        task = bar.add_task("render", total=n)
        summary = make_archetype_set(
            imageset, out, psf_fwhm=psf_fwhm, psf_kind=psf, psf_image_path=psf_image, sky_patches_path=sky_patches,
            columns=columns, seed=seed, drop_bad=drop_bad, overwrite=overwrite,
            workers=workers or default_workers(), progress=lambda k: bar.update(task, completed=k))
    console.print(f"wrote {summary['n']} archetypes to {out} (noise: {summary['noise']}; "
                  f"{summary['n_clipped']} n clipped to GalSim's range; {summary['n_dropped']} dropped)")
    typer.echo(json.dumps(summary))


SKY_HELP = """Cut real empty sky out of frames for archetypes placed in real sky (`morphllr archetypes --sky-patches`).

Every frame is segmented (sep, 1.5 sigma) and every source grown by --dilate pixels; every --block x --block square of the remaining sky, starting on a --grid pixel lattice, is an empty block.  Each SIZE x SIZE patch is tiled from blocks of different frames (random quarter turns and flips), the frames of one patch drawn from the --neighbours frames closest in sky noise, so a patch has one noise level.  Use it when the frames are too small to hold an empty region as large as a cutout (e.g. survey JPEG cutouts); with large frames, cut whole empty patches yourself.  Patches mix the sky of many frames and have seams every --block pixels.

FRAMES: linear flux with the sky level subtracted, same units and pixel scale as the set the archetypes are for: an image set (its /flux), .npy/.npz or FITS cube of (N, H, W) or (N, C, H, W).  The real and tiled sky statistics (rms, skew, neighbour correlation) are printed for comparison.

Example:  morphllr sky-patches frames.npy --size 64 --out sky.npy && morphllr archetypes obs.h5 --sky-patches sky.npy --out arch_sky.h5
"""


@app.command("sky-patches", help=SKY_HELP)
def sky_patches_command(
    frames: Path = typer.Argument(..., help="Frames (image set .h5, .npy/.npz or FITS cube), sky-subtracted linear flux."),
    size: int = typer.Option(..., "--size", help="Patch side in pixels: the flux-cutout side of the set the archetypes are for."),
    out: Path = typer.Option(..., "--out", "-o", help="Output .npy of float32 (N, C, SIZE, SIZE) patches."),
    n: Optional[int] = typer.Option(None, "--n", help="Number of patches (default: one per frame)."),
    block: int = typer.Option(16, "--block", help="Side of the empty blocks in pixels (a multiple of --grid; SIZE a multiple of it)."),
    grid: int = typer.Option(4, "--grid", help="Blocks start at multiples of this many pixels (keep a compression-block phase)."),
    dilate: int = typer.Option(4, "--dilate", help="Pixels every detected source is grown by before looking for sky."),
    neighbours: int = typer.Option(32, "--neighbours", help="Frames of similar sky noise one patch draws its blocks from."),
    seed: int = typer.Option(0, "--seed", help="Random seed of the tiling."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out if it exists."),
) -> None:
    from rich.console import Console

    from ..skypatches import make_sky_patches

    summary = make_sky_patches(frames, out, size, n=n, block=block, grid=grid, dilate=dilate,
                               neighbours=neighbours, seed=seed, overwrite=overwrite)
    real, tiled = summary["frames_sky"], summary["patches_sky"]
    Console(stderr=True).print(
        f"{summary['n_patches']} patches of {size}x{size} from {summary['n_blocks']} empty {block}x{block} blocks in "
        f"{summary['n_frames_with_blocks']} of {summary['n_frames']} frames -> {out}\n"
        f"sky rms {real['rms_median']:.4g} (frames) vs {tiled['rms_median']:.4g} (patches); skew {real['z_skew']:+.2f} vs "
        f"{tiled['z_skew']:+.2f}; neighbour correlation {real['corr_1']:.3f} vs {tiled['corr_1']:.3f}")
    typer.echo(json.dumps(summary))


MOCK_HELP = """Turn idealised simulation images (noise-free, PSF-free, AB mag/arcsec^2, empty pixels = +inf, e.g. SKIRT / RealSim) into survey-like mock observations, written as an image set.

Steps: the redshift gives the angular pixel size (physical size from the FITS header CDELT1/CTYPE1 or --sim-pixel-kpc; Planck18) and the cosmological (1+z)^4 dimming relative to the header REDSHIFT the surface brightnesses refer to (rest frame, z = 0, when the header has none; no K-correction); surface brightness becomes flux per pixel in the preset's working unit (AB zero point: 28.2 = SDSS r counts for zanisi21, 22.5 = nanomaggies); PSF convolution and flux-conserving resampling to the survey pixel scale; Gaussian sky noise and Poisson shot noise (gain); then the preset's preprocessing.

Preset zanisi21 (SDSS r): 0.396"/px, 128x128 cutout, Moffat PSF FWHM 1.4", sky sigma 5.7 counts, gain 4.8 e-/count.  Any option overrides it (a different --zero-point is recorded, so models trained in other units will refuse the set).

Example:  morphllr mock sims/photo_r_*.fits --out mock.h5 --redshift 0.05
"""


@app.command("mock", help=MOCK_HELP)
def mock_command(
    inputs: List[Path] = typer.Argument(..., help="FITS files of idealised images (mag/arcsec^2), one galaxy each."),
    out: Path = typer.Option(..., "--out", "-o", help="Output image set (.h5)."),
    redshift: Optional[float] = typer.Option(None, "--redshift", help="Redshift to observe at. Default: header REDSHIFT."),
    sim_pixel_kpc: Optional[float] = typer.Option(
        None, "--sim-pixel-kpc", help="Physical pixel size of the inputs in kpc (default: header CDELT1 in pc/kpc)."),
    pixel_scale: Optional[float] = typer.Option(None, "--pixel-scale", help="Survey pixel scale, arcsec/px (0.396)."),
    psf_fwhm: Optional[float] = typer.Option(None, "--psf-fwhm", help="Seeing FWHM in arcsec (1.4)."),
    psf: Optional[str] = typer.Option(None, "--psf", help="PSF shape: moffat or gaussian."),
    zero_point: Optional[float] = typer.Option(
        None, "--zero-point", help="AB magnitude of one output flux unit (default: the preset's; 22.5 = nanomaggies)."),
    sky_sigma: Optional[float] = typer.Option(None, "--sky-sigma", help="Sky noise per pixel in output flux units."),
    gain: Optional[float] = typer.Option(None, "--gain", help="Electrons per output flux unit (Poisson shot noise)."),
    preset: str = typer.Option("zanisi21", "--preset", help="Survey + preprocessing preset (zanisi21)."),
    seed: int = typer.Option(0, "--seed", help="Random seed of the noise."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out if it exists."),
) -> None:
    from rich.console import Console

    from ..errors import MorphllrError
    from ..mock import make_mock_set

    console = Console(stderr=True)
    if out.exists() and not overwrite:
        raise MorphllrError(f"--out {out}: already exists; pass --overwrite to replace it")
    with _progress_bar("mock") as bar:
        task = bar.add_task("observe", total=len(inputs))
        summary = make_mock_set(
            [str(p) for p in inputs], out, preset=preset, redshift=redshift, sim_pixel_kpc=sim_pixel_kpc,
            pixel_scale=pixel_scale, psf_fwhm=psf_fwhm, psf=psf, zero_point=zero_point, sky_sigma=sky_sigma,
            gain=gain, seed=seed, overwrite=overwrite, progress=lambda k: bar.update(task, completed=k))
    console.print(f"wrote {summary['n']} mock observation(s) to {out}")
    typer.echo(json.dumps(summary))
