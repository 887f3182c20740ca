"""``morphllr degrade``: controlled, degraded copies of an image set (broader PSF, smoothed centres, lower resolution)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from morphllr.limits import PSF_FWHM_MAX, PSF_FWHM_MIN, SEED_MAX
from morphllr.cli import app

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
