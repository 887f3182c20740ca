"""``morphllr prepare``: survey or simulation files -> one ImageSet (.h5)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from . import app

PREPARE_HELP = """Turn images (FITS, FITS cubes, HDF5, .npy/.npz, JPEG/PNG, IllustrisTNG SKIRT mocks) into an image set: model-ready cutouts + flux cutouts + segmentation maps + catalogue, in one HDF5 file.

Each image is converted to linear flux (SDSS r counts; mag/arcsec^2 and nanomaggies via the preset's zero point), sky-subtracted if asked, resampled to the preset's pixel scale, cut out around the central galaxy, segmented (sky sigma, central source, companions: catalogue columns sky_sigma, central_found) and stretched exactly as the models expect.  NaN/inf pixels become 0 flux and are counted (catalogue column n_nonfinite; a recipe with nonfinite = "fail" refuses them instead).

Presets: [bold]zanisi21[/bold] (default, Zanisi et al. 2021): 128x128 cutout at 0.396"/px, central 64x64, 2x2 mean -> 32x32, arcsinh(flux/1000) clipped to [-1, 1].  [bold]none[/bold]: the arrays already are model inputs.  [bold]jpeg8bit[/bold]: 8-bit survey JPEGs, central 256x256 -> 32x32, value/255 (JPEGs are already arcsinh-stretched by the survey: not linear flux, compare only with images made the same way).  Or a .toml/.yaml recipe file.

Examples:

  morphllr prepare sdss_cutouts/ --out obs.h5 --catalog sdss.csv

  morphllr prepare 'tng/*.fits' --hdu SUBARU_HSC.R --out tng.h5 --like models/obs
"""


@app.command("prepare", help=PREPARE_HELP)
def prepare(
    inputs: List[str] = typer.Argument(..., help="Files, folders (searched recursively) or quoted globs."),
    out: Path = typer.Option(..., "--out", "-o", help="Output image set (.h5)."),
    preset: str = typer.Option(
        "zanisi21", "--preset", help="Preprocessing: zanisi21, none, jpeg8bit, or a .toml/.yaml recipe file."
    ),
    like: Optional[Path] = typer.Option(
        None, "--like", help="Prepare exactly like this model folder (model.json) or image set (.h5); overrides --preset."
    ),
    catalog: Optional[Path] = typer.Option(
        None, "--catalog", help="Catalogue (FITS table, CSV, ECSV, Parquet) with an `id` column = file name without suffix."
    ),
    channel: Optional[int] = typer.Option(
        None, "--channel", help="Channel to keep: JPEG/PNG default 1 (green ~ SDSS r); (N,C,H,W) arrays default all."
    ),
    hdu: Optional[str] = typer.Option(
        None, "--hdu", help="FITS HDU index or EXTNAME (e.g. the band of a TNG mock), or HDF5/npz dataset name."
    ),
    pixel_scale: Optional[float] = typer.Option(
        None, "--pixel-scale", help="Input pixel scale in arcsec/px (overrides FITS headers); images are resampled "
        "to the preset's scale."
    ),
    units: Optional[str] = typer.Option(
        None, "--units", help="Input units when files do not say: counts, nanomaggies or mag_arcsec2."
    ),
    sky: Optional[str] = typer.Option(
        None, "--sky", help="Sky subtraction: none (already subtracted), estimate (SExtractor-style clipped background) or a number "
        "(constant sky in input units)."
    ),
    pad: bool = typer.Option(
        False, "--pad", help="Pad images smaller than the cutout with zero flux (noise-free simulations) instead of "
        "refusing them."
    ),
    segmentation: str = typer.Option("sep", "--segmentation", help="Segmentation engine: sep (fast) or photutils."),
    no_flux: bool = typer.Option(
        False, "--no-flux", help="Do not store the flux cutouts (smaller file; fit-sersic and archetypes need them)."
    ),
    workers: int = typer.Option(
        0, "--workers", help="Processes cutting and segmenting in parallel (0 = min(4, CPU cores); 1 = no extra processes)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out if it exists."),
) -> None:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from .. import readers
    from ..errors import MorphllrError
    from ..imageset import prepare_imageset
    from ..preprocess import Preprocessing

    console = Console(stderr=True, soft_wrap=True)  # long paths stay on one line in logs
    if out.exists() and not overwrite:
        raise MorphllrError(f"--out {out}: already exists; pass --overwrite to replace it")
    prep = preprocessing_like(like) if like is not None else Preprocessing.preset(preset)
    prep = _override(prep, units=units, sky=sky)
    if pad:
        prep = prep.replace(pad=True)
    files = readers.expand_inputs(inputs, exclude=[out] + ([catalog] if catalog else []))
    table = readers.read_catalog(catalog) if catalog is not None else None
    n = readers.count_images(files, hdu)
    console.print(f"preparing {n} image(s) from {len(files)} file(s) with preset [bold]{prep.name}[/bold]")
    columns = [TextColumn("prepare"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("prepare", total=n)
        report = prepare_imageset(
            readers.iter_images(files, hdu=hdu, channel=channel),
            out,
            prep,
            n=n,
            catalog=table,
            catalog_name=str(catalog) if catalog else "",
            pixel_scale=pixel_scale,
            segmentation=segmentation,
            store_flux=not no_flux,
            overwrite=overwrite,
            workers=_workers(workers, n),
            progress=lambda k: bar.advance(task, k),
        )
    _print_report(console, out, report)


def preprocessing_like(reference: Path):
    """The recipe recorded in a model folder (model.json) or an image set (.h5).

    Args:
        reference: model directory or ``.h5`` image set.

    Returns:
        Preprocessing.
    """
    from ..errors import MorphllrError
    from ..imageset import ImageSet
    from ..preprocess import Preprocessing

    if reference.is_dir():
        meta_path = reference / "model.json"
        if not meta_path.is_file():
            raise MorphllrError(f"--like {reference}: folder has no model.json; give a model folder or an image set .h5")
        try:
            recipe = json.loads(meta_path.read_text()).get("preprocessing") or {}
        except json.JSONDecodeError as exc:
            raise MorphllrError(f"--like {meta_path}: not valid JSON ({exc})") from None
    elif reference.is_file():
        with ImageSet.open(reference) as reference_set:
            recipe = reference_set.preprocessing
    else:
        raise MorphllrError(f"--like {reference}: not found; give a model folder or an image set .h5")
    if not recipe:
        raise MorphllrError(f"--like {reference}: records no preprocessing; use --preset instead")
    return Preprocessing.from_dict(recipe, source=f"--like {reference}")


def _workers(requested: int, n_images: int) -> int:
    """Worker processes: as asked, or min(4, cores) for sets big enough to pay the start-up."""
    import os

    from ..errors import MorphllrError

    if requested < 0:
        raise MorphllrError(f"--workers {requested}: must be 0 (auto) or a positive number")
    if requested:
        return requested
    return 1 if n_images < 500 else max(1, min(4, os.cpu_count() or 1))


def _override(prep, units: str | None, sky: str | None):
    from ..errors import MorphllrError

    changes = {}
    if units is not None:
        changes["units"] = units
    if sky is not None:
        if sky in ("none", "estimate"):
            changes["sky"] = sky
        else:
            try:
                changes.update(sky="given", sky_value=float(sky))
            except ValueError:
                raise MorphllrError(f"--sky {sky}: use none, estimate or a number") from None
    return prep.replace(**changes) if changes else prep


def _print_report(console, out: Path, report: dict) -> None:
    console.print(
        f"wrote [bold]{out}[/bold]: {report['n_images']} images {tuple(report['image_shape'])} "
        f"(flux cutouts {tuple(report['flux_shape'])})"
    )
    if report["n_nonfinite_pixels"]:
        console.print(
            f"[yellow]{report['n_nonfinite_pixels']} NaN/inf pixel(s) in {report['n_images_with_nonfinite']} image(s) "
            "were set to 0 flux (catalogue column n_nonfinite)[/yellow]"
        )
    if report["n_central_missing"]:
        console.print(
            f"[yellow]{report['n_central_missing']} image(s) with no central source (catalogue column "
            "central_found = False)[/yellow]"
        )
    join = report.get("catalog")
    if join:
        missing = join["images_without_row"]
        console.print(
            f"catalogue {join['catalog']}: {join['n_matched']} image(s) matched; "
            f"{len(missing)} image(s) without a row{' (e.g. ' + ', '.join(missing[:5]) + ')' if missing else ''}; "
            f"{join['rows_without_image']} row(s) without an image"
        )
