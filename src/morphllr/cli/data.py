"""The data stage: ``morphllr prepare`` (survey or simulation files -> one ImageSet .h5), ``subset`` and ``check``.

Also :func:`preprocessing_like`, the recipe behind every ``--like`` option (prepare, sky-patches, mock).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from morphllr.cli.application import app
from morphllr.limits import (GAIN_MAX, GAIN_MIN, PIXEL_SCALE_MAX, PIXEL_SCALE_MIN, WORKERS_MAX, ZERO_POINT_MAX,
                             ZERO_POINT_MIN)

PREPARE_HELP = """Turn images (FITS, FITS cubes, HDF5, .npy/.npz, JPEG/PNG, IllustrisTNG SKIRT mocks) into an image set: model-ready cutouts + flux cutouts + segmentation maps + catalogue, in one HDF5 file.

Each image is converted to linear flux (SDSS r counts; mag/arcsec^2 and nanomaggies via the preset's zero point), sky-subtracted if asked, resampled to the preset's pixel scale, cut out around the central galaxy, segmented (sky sigma, central source, companions: catalogue columns sky_sigma, central_found) and stretched exactly as the models expect.  NaN/inf pixels (e.g. beyond a survey cutout's footprint) are filled with sky noise like masked pixels, stored in /mask and counted (catalogue columns n_nonfinite, nonfinite_fraction; a recipe with nonfinite = "fail" refuses them instead, except under the user's mask).

Cutouts are never moved: a galaxy whose window runs past its image's edge keeps its centre at the cutout centre, and the missing pixels are drawn from the image's own sky (its measured level and noise; catalogue columns edge_padded = share of the cutout padded, cutout_x0/cutout_y0 = where the window lies in the frame); the same holds for images smaller than the cutout; more than half the cutout beyond the image is refused; --edge refuse drops such galaxies instead and prints their count.  With --pad (noise-free simulations) the pixels around are 0 flux instead (column zero_padded), never dropped.

Masks: NAME_mask.fits beside NAME.fits (also NAME_mask_cutout.fits for NAME_cutout.fits) is paired with it automatically, or give --mask FILE_OR_DIR; nonzero = excluded pixel.  Masked pixels take no part in segmentation, are filled with sky noise in the model images, and are stored as /mask (flux grid) and /mask_model (model grid); catalogue column masked_fraction.

The set records what its pixels are (input_kind: calibrated flux from FITS/HDF5/npy, 8-bit JPEG/PNG levels, linearised JPEG levels when the recipe says so, model-space arrays with --preset none), and models refuse sets of another kind.

Presets: [bold]zanisi21[/bold] (default, Zanisi et al. 2021): 128x128 cutout at 0.396"/px, central 64x64, 2x2 mean -> 32x32, arcsinh(flux/1000) clipped to [-1, 1].  [bold]none[/bold]: the arrays already are model inputs.  [bold]jpeg8bit[/bold]: 8-bit survey JPEGs, central 256x256 -> 32x32, value/255 (JPEGs are already arcsinh-stretched by the survey: not linear flux, compare only with images made the same way).  [bold]gz2_linear[/bold]: Galaxy Zoo 2 / SDSS gri JPEGs un-stretched to approximately linear flux, the recipe of the shipped validation models (validation/models): green channel, flux = (255/8) sinh(8 v/255), 4x4 bin (424 -> 106 px), central 64x64, 2x2 mean -> 32x32, arcsinh(flux/31.875) clipped to [-1, 8].  Or a .toml/.yaml recipe file; its keys unstretch = "asinh", unstretch_q (Q) and bin (k x k block mean) undo a survey's JPEG stretch first.

SDSS frames (frame-{band}-{run}-{camcol}-{field}.fits[.bz2], calibrated nanomaggies with a WCS): give the frames and --catalog positions.csv with `id` and `ra`, `dec` (degrees, through each frame's WCS) or `x`, `y` (0-based frame pixels, plus a `frame` column naming the file when there are several frames).  Each galaxy is cut as a window of 2 x the cutout (the cutout itself when the preset does not centre; pixels beyond the frame edge are not data: a cutout reaching them is padded with the frame's sky noise, see below) and then goes the normal way.  Nanomaggies become the working unit through the preset's zero point, not the frame's NMGY, which varies by frame and only sets the shot noise: column gain = --gain x DN per working unit (electrons per working unit).  Added columns: frame, band, x, y, ra, dec, nmgy, gain, window_x0, window_y0 (frame column of the cutout centre = window_x0 + center_x), frame_edge_px (distance to the frame edge; below half the cutout, part of the cutout lies beyond the edge: edge_padded).  Every frame is read once and the cutouts are streamed, frame by frame.  Positions outside every frame are an error listing them, unless --skip-outside drops them (count and ids printed).

Examples:

  morphllr prepare sdss_cutouts/ --out obs.h5 --catalog sdss.csv

  morphllr prepare ../shared/data/sdss_frame/frame-r-002583-2-0136.fits.bz2 --catalog positions.csv --out sdss_r.h5

  morphllr prepare 'tng/*.fits' --hdu SUBARU_HSC.R --out tng.h5 --like models/obs

  morphllr prepare my_jpegs/ --like validation/models/obs --out mine.h5
"""


@app.command("prepare", help=PREPARE_HELP)
def prepare(
    ctx: typer.Context,
    inputs: List[str] = typer.Argument(..., help="Files, folders (searched recursively) or quoted globs."),
    out: Path = typer.Option(..., "--out", "-o", help="Output image set (.h5)."),
    preset: str = typer.Option(
        "zanisi21", "--preset", help="Preprocessing: zanisi21, none, jpeg8bit, gz2_linear, or a .toml/.yaml recipe file."
    ),
    like: Optional[Path] = typer.Option(
        None, "--like", help="Prepare exactly like this model folder (model.json) or image set (.h5); overrides --preset."
    ),
    catalog: Optional[Path] = typer.Option(
        None, "--catalog", help="Catalogue (FITS table, CSV, ECSV, Parquet) with an `id` column = file name without suffix."
    ),
    channel: Optional[int] = typer.Option(
        None, "--channel", min=0, max=1023, help="Channel to keep: JPEG/PNG default 1 (green ~ SDSS r); (N,C,H,W) arrays default all."
    ),
    hdu: Optional[str] = typer.Option(
        None, "--hdu", help="FITS HDU index or EXTNAME (e.g. the band of a TNG mock), or HDF5/npz dataset name."
    ),
    pixel_scale: Optional[float] = typer.Option(
        None, "--pixel-scale", min=PIXEL_SCALE_MIN, max=PIXEL_SCALE_MAX, help="Input pixel scale in arcsec/px (overrides FITS headers); images are resampled "
        "to the preset's scale, or, with a preset that does not resample (none), it is recorded as the set's scale."
    ),
    mask: Optional[Path] = typer.Option(
        None, "--mask", help="Mask file (one image, or every image; nonzero = excluded pixel) or folder of masks named "
        "after the images (NAME_mask.fits or NAME.fits).  Default: NAME_mask.fits beside NAME.fits."
    ),
    edge: str = typer.Option(
        "pad", "--edge", help="A cutout running past its image's edge: pad (sky noise from the image, flagged in the "
        "catalogue column edge_padded) or refuse (drop the galaxy; the count is printed)."
    ),
    units: Optional[str] = typer.Option(
        None, "--units", help="Input units when files do not say: counts, nanomaggies or mag_arcsec2."
    ),
    sky: Optional[str] = typer.Option(
        None, "--sky", help="Sky subtraction: none (already subtracted), estimate (SExtractor-style clipped background) or a number "
        "(constant sky in input units)."
    ),
    band: Optional[str] = typer.Option(
        None, "--band", help="Band(s) by name for multi-band cubes (TNG SKIRT: r matches sloan/sdss_r), "
        "comma-separated; several also stack one-file-per-band images (photo_g_X, photo_r_X) per galaxy."
    ),
    zero_point: Optional[float] = typer.Option(
        None, "--zero-point", min=ZERO_POINT_MIN, max=ZERO_POINT_MAX, help="AB magnitude of 1 count/s for count-rate inputs (TNG SKIRT cubes, BUNIT "
        "counts/s/pixel), whose products document none; recorded in the set."
    ),
    cosmology: Optional[str] = typer.Option(
        None, "--cosmology", help="Cosmology for pixel scales from a physical CDELT: Planck18 (default) or realsim "
        "(FlatLambdaCDM(H0=70, Om0=0.3)); recorded."
    ),
    pad: bool = typer.Option(
        False, "--pad", help="Noise-free simulations: pad images smaller than the cutout (and windows past the edge, "
        "masked and NaN pixels) with zero flux instead of sky noise (catalogue column zero_padded)."
    ),
    gain: Optional[float] = typer.Option(
        None, "--gain", min=GAIN_MIN, max=GAIN_MAX, help="SDSS frames: CCD gain in electrons per DN (default 4.8, a typical SDSS r-band gain; the "
        "six camcols' r gains lie within 4.6-4.9, other bands differ); with the frame's NMGY it gives the `gain` "
        "column, electrons per working flux unit."
    ),
    skip_outside: bool = typer.Option(
        False, "--skip-outside", help="SDSS frames: drop catalogue positions outside every frame (count and ids are "
        "printed) instead of refusing."
    ),
    segmentation: str = typer.Option("sep", "--segmentation", help="Segmentation engine: sep (fast) or photutils."),
    no_flux: bool = typer.Option(
        False, "--no-flux", help="Do not store the flux cutouts (smaller file; fit-sersic and archetypes need them)."
    ),
    workers: int = typer.Option(
        0, "--workers", min=0, max=WORKERS_MAX, help="Processes cutting and segmenting in parallel (0 = min(4, CPU cores); 1 = no extra processes)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out if it exists."),
) -> None:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from morphllr.data import sdss_frames as frames
    from morphllr.data import catalog as catalogs
    from morphllr.data import files as readers
    from morphllr.atomic import claim_output
    from morphllr.data.prepare import prepare_imageset
    from morphllr.data.preprocess import Preprocessing

    from morphllr.errors import MorphllrError
    from morphllr.data.preprocess import EDGE_MODES

    console = Console(stderr=True, soft_wrap=True)  # long paths stay on one line in logs
    if edge not in EDGE_MODES:
        raise MorphllrError(f"--edge {edge}: use pad (sky noise, flagged) or refuse (drop such galaxies); "
                            "see `morphllr prepare --help`")
    # claimed before any input is read; files named one by one are inputs (folders and globs skip --out)
    named = [p for p in inputs if Path(p).is_file()]
    ctx.with_resource(claim_output(out, inputs=[*named, catalog, like, mask if mask and mask.is_file() else None],
                                   overwrite=overwrite))
    prep = preprocessing_like(like) if like is not None else Preprocessing.preset(preset)
    prep = _override(prep, units=units, sky=sky)
    prep = prep.replace(edge=edge)
    if pad:
        prep = prep.replace(pad=True)
    if zero_point is not None:
        prep = prep.replace(input_zero_point=zero_point)
    if cosmology is not None:
        prep = prep.replace(cosmology=cosmology)
    bands = [b.strip() for b in band.split(",") if b.strip()] if band else None
    files, pairs = readers.expand_inputs_with_masks(inputs, exclude=[out] + ([catalog] if catalog else []))
    masks = readers.mask_plan(files, pairs, mask)
    # the reader options that choose pixels are recorded with the recipe (informative; not compared)
    read = {"channel": channel, "hdu": hdu, "bands": bands, "input_pixel_scale": pixel_scale,
            "mask": str(mask) if mask is not None else ("paired NAME_mask files" if pairs else None),
            "segmentation": segmentation}  # the engine finds the centre, so it places the window
    prep = prep.replace(read={k: v for k, v in read.items() if v is not None} or None)
    table = catalogs.read_catalog(catalog) if catalog is not None else None
    attrs = None
    if any(frames.is_frame_file(f) for f in files):  # SDSS frames: the catalogue says where the galaxies are
        if len(masks):
            raise MorphllrError(f"--mask {mask or next(iter(pairs.values()))}: masks of SDSS frames are not supported; "
                                "prepare the frames without masks")
        records, n, attrs, table = _frame_cutouts(console, files, table, catalog, prep, gain, skip_outside)
    else:
        n = readers.count_images(files, hdu, bands)
        records = readers.iter_images(files, hdu=hdu, channel=channel, bands=bands, cosmology=prep.cosmology,
                                      masks=masks)
    if len(masks):
        console.print(f"masks: {len(masks.by_file)} image file(s) paired with a mask"
                      + (f"; {masks.common} applies to every image" if masks.common is not None else ""))
    console.print(f"preparing {n} image(s) from {len(files)} file(s) with preset [bold]{prep.name}[/bold]")
    columns = [TextColumn("prepare"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("prepare", total=n)
        report = prepare_imageset(
            records,
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
            attrs=attrs,
        )
    _print_report(console, out, report)


def preprocessing_like(reference: Path):
    """The recipe recorded in a model folder (model.json), an ensemble folder (ensemble.json) or an image set (.h5).

    Args:
        reference: model or ensemble directory, or ``.h5`` image set.

    Returns:
        Preprocessing.
    """
    from morphllr.errors import MorphllrError
    from morphllr.data.imageset import ImageSet
    from morphllr.data.preprocess import Preprocessing, recorded_recipe

    if reference.is_dir():
        meta_path = reference / "ensemble.json"  # an ensemble records its members' shared preprocessing
        if not meta_path.is_file():
            meta_path = reference / "model.json"
        if not meta_path.is_file():
            raise MorphllrError(f"--like {reference}: folder has no model.json; give a model folder, an ensemble "
                                "folder or an image set .h5")
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
    # a record written before some keys existed: fill them where its name makes them certain (gz2_linear)
    return Preprocessing.from_dict(recorded_recipe(recipe), source=f"--like {reference}")


def _frame_cutouts(console, files, table, catalog, prep, gain, skip_outside):
    """SDSS frames + a catalogue of positions -> (records, n, file attributes, catalogue to join).

    Cutouts are streamed frame by frame (each frame read once); the catalogue's position
    columns are not joined again (frames.py writes ra, dec, x, y, frame itself).
    """
    import math

    from morphllr.data import sdss_frames as frames
    from morphllr.errors import MorphllrError

    others = [str(f) for f in files if not frames.is_frame_file(f)]
    if others:
        raise MorphllrError(f"{others[0]}: SDSS frames and other images cannot be prepared together; "
                            "prepare the frames (with --catalog positions) and the other files separately")
    if table is None:
        raise MorphllrError(f"{files[0]}: an SDSS frame holds many galaxies; pass --catalog positions.csv with `id` and "
                            "`ra`, `dec` (degrees) or `x`, `y` (0-based frame pixels, + `frame` with several frames)")
    if prep.cutout is None or prep.zero_point is None:
        raise MorphllrError(f"--preset {prep.name}: cutting galaxies out of SDSS frames needs a cutout size and a "
                            "zero point (working unit) in the recipe; use --preset zanisi21 or a recipe that sets both")
    gain = frames.DEFAULT_GAIN if gain is None else float(gain)
    if not (gain > 0 and math.isfinite(gain)):
        raise MorphllrError(f"--gain {gain}: must be a positive number of electrons per DN (SDSS r: about 4.8)")
    plan = frames.plan_cutouts(files, table, str(catalog), skip_outside=skip_outside)
    if plan.outside_ids:
        shown = ", ".join(plan.outside_ids[:20]) + (", ..." if len(plan.outside_ids) > 20 else "")
        console.print(f"[yellow]--skip-outside: dropped {len(plan.outside_ids)} catalogue position(s) outside every "
                      f"frame: {shown} (all listed in the set's attribute frames_outside_ids)[/yellow]")
    window = 2 * prep.cutout if prep.center else prep.cutout  # centring needs room around the galaxy
    console.print(f"cutting {len(plan)} galaxies ({plan.positions} positions) out of {len(plan.frames)} SDSS frame(s), "
                  f"{window}x{window} px windows, gain {gain} e-/DN")
    attrs = {"frames": [str(f.path) for f in plan.frames], "frames_positions": plan.positions,
             "frames_gain_e_per_dn": gain, "frames_outside_ids": plan.outside_ids}
    keep = [c for c in table.colnames if c == "id" or c.lower() not in frames.POSITION_COLUMNS]
    return frames.cutout_records(plan, window, prep.zero_point, gain), len(plan), attrs, table[keep]


def _workers(requested: int, n_images: int) -> int:
    """Worker processes: as asked, or min(4, cores) for sets big enough to pay the start-up."""
    import os

    from morphllr.errors import MorphllrError

    if requested < 0:
        raise MorphllrError(f"--workers {requested}: must be 0 (auto) or a positive number")
    if requested:
        return requested
    return 1 if n_images < 500 else max(1, min(4, os.cpu_count() or 1))


def _override(prep, units: str | None, sky: str | None):
    import math

    from morphllr.errors import MorphllrError

    changes = {}
    if units is not None:
        changes["units"] = units
    if sky is not None:
        if sky in ("none", "estimate"):
            changes["sky"] = sky
        else:
            try:
                value = float(sky)
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                raise MorphllrError(f"--sky {sky}: use none, estimate or a finite number (the constant sky level "
                                    "in input units)")
            changes.update(sky="given", sky_value=value)
    return prep.replace(**changes) if changes else prep


def _print_report(console, out: Path, report: dict) -> None:
    console.print(
        f"wrote [bold]{out}[/bold]: {report['n_images']} images {tuple(report['image_shape'])} "
        f"(flux cutouts {tuple(report['flux_shape'])})"
    )
    if report["n_nonfinite_pixels"]:
        console.print(
            f"[yellow]{report['n_nonfinite_pixels']} NaN/inf pixel(s) in {report['n_images_with_nonfinite']} image(s) "
            "were filled with sky noise and masked (dataset mask; catalogue columns n_nonfinite, "
            "nonfinite_fraction)[/yellow]"
        )
    if report.get("n_edge_padded"):
        console.print(
            f"[yellow]{report['n_edge_padded']} cutout(s) run past their image's edge; the missing pixels hold sky "
            "noise drawn from the image (catalogue column edge_padded; --edge refuse drops them)[/yellow]"
        )
    if report.get("n_zero_padded"):
        console.print(
            f"{report['n_zero_padded']} cutout(s) of noise-free simulations padded with 0 flux (--pad; catalogue "
            "column zero_padded)"
        )
    if report.get("n_edge_dropped"):
        ids = report["edge_dropped_ids"]
        console.print(
            f"[yellow]--edge refuse: dropped {report['n_edge_dropped']} galaxy(ies) whose cutout runs past the image's "
            f"edge: {', '.join(ids[:20])}{', ...' if len(ids) > 20 else ''} (all listed in the set's attribute "
            "edge_dropped_ids)[/yellow]"
        )
    if report.get("n_masked"):
        console.print(f"{report['n_masked']} image(s) with masked pixels, filled with sky noise (datasets mask, "
                      "mask_model; catalogue column masked_fraction)")
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


SUBSET_HELP = """Copy the images of an image set whose catalogue rows satisfy every --where condition (e.g. one class of galaxies), as they are: images, flux cutouts, segmentation, catalogue, preprocessing record and attributes (plus the attribute `subset`: source, its images_sha256, conditions, counts).

A condition is COLUMN OP VALUE with OP one of == != < <= > >=: number columns compare as numbers (missing values never match), text columns as text (== and != only).  Several --where must all hold.

Example:  morphllr subset val_real.h5 --where 'label == spiral' --out val_spirals.h5
"""


@app.command("subset", help=SUBSET_HELP)
def subset_command(
    ctx: typer.Context,
    imageset: Path = typer.Argument(..., help="Image set (.h5)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output image set (.h5)."),
    where: List[str] = typer.Option(..., "--where", help="Condition COLUMN OP VALUE, e.g. 'label == spiral' "
                                    "(repeatable: all must hold)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out if it exists."),
) -> None:
    from rich.console import Console

    from morphllr.atomic import claim_output
    from morphllr.data.prepare import write_subset

    ctx.with_resource(claim_output(out, inputs=[imageset], overwrite=overwrite))
    record = write_subset(imageset, out, where, overwrite=overwrite)
    Console(stderr=True, soft_wrap=True).print(
        f"wrote [bold]{out}[/bold]: {record['n_images']} of the {record['n_source']} images of {imageset.name} "
        f"({' and '.join(record['where'])})")


CHECK_HELP = """Check that an image set was prepared like a model's training data, before scoring it: the recipe keys that change model-input pixels (pixel scale, crop, zoom, stretch, clip, un-stretch, bin, input kind, ...), and the image size and channels the network takes.

Prints one line and exits 0 when the set fits the model, or prints `error: ...` naming the difference and the fix and exits 2.  MODEL is a model folder or an ensemble folder (all members are checked by loading them).  --trained-on also requires the set to be the very set the model was trained on: its images' sha256 equals the model's data_fingerprint, or, for a set rebuilt on another CPU kind (whose pixels differ in their last bits), its pixel sketch (rms and 8 random-sign projections) agrees with the model's data_sketch to 1e-5 of the rms pixel.  Use it e.g. before reusing shipped models on a rebuilt training set.

Examples:

  morphllr check validation/models/obs mine.h5

  morphllr check validation/models/obs runs/gz2/train_real.h5 --trained-on
"""


def _why_not_the_training_set(ensemble, source) -> tuple[str | None, float | None]:
    """For a set whose sha256 is not the model's data_fingerprint: why it is not the training set, or None.

    Returns:
        ``(reason, None)`` when the set is refused, ``(None, difference)`` when its pixel sketch agrees
        with the model's data_sketch to within rounding (a set rebuilt on another CPU kind).
    """
    from morphllr.data.imageset import SKETCH_RTOL, sketch_batches, sketch_difference

    sketch = ensemble.data_sketch
    unreadable = "the model's data_sketch is unreadable (edited or damaged model.json)"
    if ensemble.data_fingerprint is None:
        return "the model records no fingerprint of its training images", None
    if not sketch:
        return ("the model records no rounding-tolerant sketch of its training pixels (it was trained before "
                "morphllr kept one), so a set rebuilt on another CPU kind, whose last bits differ, cannot be "
                "recognised"), None
    if not isinstance(sketch, dict) or not isinstance(sketch.get("n_images"), int):
        return unreadable, None
    if sketch["n_images"] != len(source):
        return f"it holds {len(source)} images, the training set {sketch['n_images']}", None
    difference = sketch_difference(sketch, sketch_batches(source.batches(256)))
    if difference is None:
        return unreadable, None
    if difference > SKETCH_RTOL:
        return (f"its pixels differ from the training set's by more than rounding (largest sketch difference "
                f"{difference:.2g} of the rms pixel, allowed {SKETCH_RTOL:g})"), None
    return None, difference


@app.command("check", help=CHECK_HELP)
def check_command(
    model: Path = typer.Argument(..., help="Model folder or ensemble folder."),
    imageset: Path = typer.Argument(..., help="Image set (.h5) or images (.npy/.npz/HDF5 dataset)."),
    trained_on: bool = typer.Option(False, "--trained-on", help="Also require the set to be the model's training "
                                    "set (images sha256 = data_fingerprint, or, rebuilt on another CPU kind, the "
                                    "same pixels to within rounding by the model's data_sketch)."),
) -> None:
    from morphllr.errors import MorphllrError
    from morphllr.model.ensemble import load_ensemble
    from morphllr.data.preprocess import check_compatible, input_kind_of
    from morphllr.data.inputs import open_images

    if not model.exists():
        raise MorphllrError(f"MODEL {model}: not found; give a model folder or an ensemble folder")
    ensemble = load_ensemble(model)
    source = open_images(str(imageset))
    model_prep, set_prep = ensemble.preprocessing or {}, source.preprocessing or {}
    check_compatible(model_prep, set_prep, f"model {model} vs set {imageset}")
    cfg = ensemble.config
    want, have = (cfg.in_channels, cfg.height, cfg.width), tuple(int(v) for v in source.shape[1:])
    if have != want:
        raise MorphllrError(f"{imageset}: images are {have[0]} x {have[1]} x {have[2]} (C x H x W), but {model} takes "
                            f"{want[0]} x {want[1]} x {want[2]}; prepare the images with `morphllr prepare ... "
                            f"--like {model}`")
    fingerprint = source.fingerprint()
    same = fingerprint == ensemble.data_fingerprint
    rebuilt = None  # the sketch's difference when the bytes differ (another CPU kind rounds differently)
    if trained_on and not same:
        why, rebuilt = _why_not_the_training_set(ensemble, source)
        if why is not None:
            recorded = ensemble.data_fingerprint
            raise MorphllrError(f"{imageset}: images sha256 {fingerprint[:12]} is not the set {model} was trained on "
                                f"({recorded[:12] if recorded else 'not recorded'}): {why}; train the model on this "
                                "set, or rebuild the set exactly as the model's was")
    members = f"{len(ensemble)}-member ensemble" if len(ensemble) > 1 else "model"
    if not set_prep:
        text = "records no preprocessing (bare array): taken as already in the model's input space"
    else:
        text = (f"prepared like the {members}'s training data (recipe {set_prep.get('name', '?')}, "
                f"input kind {input_kind_of(set_prep) or 'unrecorded'})")
    if rebuilt is not None:
        text += (f"; it is the model's training set to within rounding (sketch difference {rebuilt:.1g} of the rms "
                 "pixel; the bytes differ, as when a set is rebuilt on another CPU kind)")
    typer.echo(f"compatible: {imageset} ({len(source)} images {have[0]}x{have[1]}x{have[2]}) {text}"
               + ("; it is the model's training set" if same else ""))
