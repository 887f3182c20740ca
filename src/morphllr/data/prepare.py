"""Making image sets: raw images -> a prepared set (``morphllr prepare``), flux cutouts -> a set
(archetypes, mocks, degraded sets), and subsets of a set (``morphllr subset``).

Every path goes through the one recipe (:class:`morphllr.data.preprocess.Preprocessing`): raw
images through :meth:`~morphllr.data.preprocess.Preprocessing.cut` (:func:`process_record`), flux
cutouts through ``flux_to_model`` and the segmentation (:func:`flux_products`).  The file format
itself is :mod:`morphllr.data.imageset`.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from morphllr.atomic import claims
from morphllr.data.catalog import catalog_where, join_catalog
from morphllr.data.geometry import model_mask
from morphllr.data.imageset import ImageSet, ImageSetWriter, carried_attrs, catalog_table, chw_shape
from morphllr.data.preprocess import INPUT_KIND_TEXT, as_preprocessing, excluded_pixels
from morphllr.data.segmentation import segment_batch
from morphllr.errors import MorphllrError
from morphllr.parallel import map_items_in_processes


def flux_products(flux: np.ndarray, preprocessing, segmentation: str | None = "sep") -> dict[str, np.ndarray]:
    """Everything an ImageSet stores that derives from flux cutouts.

    Observed cutouts and archetypes both go through here, so both get identical
    model images (``preprocessing.flux_to_model``) and segmentation products.

    Args:
        flux: (B, C, Hf, Wf) sky-subtracted linear flux cutouts.
        preprocessing: Preprocessing (or its dict / preset name).
        segmentation: ``sep``, ``photutils`` or None (skip segmentation).

    Returns:
        dict with ``images`` (B, C, H, W) float32 and, when segmenting, ``segmap``,
        ``segmap_model``, ``sky_sigma``, ``central_found``.
    """
    prep = as_preprocessing(preprocessing)
    flux = np.asarray(flux, dtype=np.float32)
    if flux.ndim == 3:
        flux = flux[:, None]
    out = {"images": prep.flux_to_model(flux)}
    if segmentation:
        segmaps, sigmas, found = segment_batch(flux, method=segmentation)
        out.update(segmap=segmaps, segmap_model=model_mask(segmaps, prep), sky_sigma=sigmas, central_found=found)
    return out


def write_flux_set(path, flux, catalog, preprocessing, *, segmentation: str | None = "sep",
                   overwrite: bool = False, attrs=None, batch_size: int = 256) -> Path:
    """Write an ImageSet from flux cutouts (e.g. rendered archetypes), streaming in batches.

    Args:
        path: output ``.h5``.
        flux: (N, C, Hf, Wf) flux cutouts (numpy or lazy h5py dataset).
        catalog: astropy Table / dict / list of dicts with ``id`` (N rows).
        preprocessing: recipe (Preprocessing, dict or preset name); must match the
            observed set's so the two models see the same pixels.
        segmentation: ``sep``, ``photutils`` or None.
        overwrite: replace an existing file.
        attrs: extra file attributes.
        batch_size: images per batch.

    Returns:
        the written path.
    """
    prep = as_preprocessing(preprocessing)
    table = catalog_table(catalog)
    n = len(flux)
    if len(table) != n:
        raise MorphllrError(f"{path}: {n} flux cutouts but {len(table)} catalogue rows")
    flux_shape = chw_shape(np.shape(flux)[1:], "flux")
    image_shape = (flux_shape[0],) + prep.model_shape(flux_shape[1:])
    with ImageSetWriter(path, n=n, image_shape=image_shape, flux_shape=flux_shape,
                        preprocessing=prep, overwrite=overwrite, attrs=attrs) as writer:
        for start in range(0, n, batch_size):
            batch = np.asarray(flux[start : start + batch_size], dtype=np.float32)
            rows = table[start : start + batch_size]
            products = flux_products(batch, prep, segmentation)
            if segmentation:
                rows = rows.copy()
                rows["sky_sigma"] = products["sky_sigma"]
                rows["central_found"] = products["central_found"]
            writer.append(products["images"], rows, flux=batch, segmap=products.get("segmap"),
                          segmap_model=products.get("segmap_model"))
    return Path(path)


@claims({"out": "--out"}, inputs=("src",))
def write_subset(src, out, where: Sequence[str], *, overwrite: bool = False, batch_size: int = 256) -> dict[str, Any]:
    """Copy the images of a set whose catalogue rows satisfy every condition (``morphllr subset``).

    The rows are copied as they are (``/images``, ``/flux``, segmentation and masks, catalogue), with the
    source's preprocessing record and attributes, so a subset is exactly part of its set.

    Args:
        src: image set (.h5).
        out: output ``.h5``.
        where: conditions ``COLUMN OP VALUE`` (:func:`morphllr.data.catalog.catalog_where`), all must hold.
        overwrite: replace ``out``.
        batch_size: images copied together.

    Returns:
        the record stored in the attribute ``subset``: source, its images_sha256, conditions, ``n_source``,
        ``n_images``.
    """
    where = [where] if isinstance(where, str) else list(where)
    if not where:
        raise MorphllrError("subset: give at least one --where condition, e.g. --where 'label == spiral'")
    src = Path(src)
    with ImageSet.open(src) as s:
        catalog = s.catalog
        keep = np.ones(len(catalog), bool)
        for condition in where:
            keep &= catalog_where(catalog, condition)
        rows = np.flatnonzero(keep)
        if not len(rows):
            raise MorphllrError(f"--where {' and '.join(where)}: no image of {src} matches; check the column's "
                                "values (e.g. `label == spiral`)")
        attrs = s.attrs
        record = {"source": src.name, "source_images_sha256": attrs.get("images_sha256"), "where": where,
                  "n_source": len(catalog), "n_images": int(len(rows))}
        record = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in record.items()}
        extras = [name for name in ("flux", "segmap", "segmap_model", "mask", "mask_model")
                  if getattr(s, name) is not None]
        flux_shape = s.flux.shape[1:] if "flux" in extras else None
        with ImageSetWriter(out, n=len(rows), image_shape=s.shape[1:], flux_shape=flux_shape,
                            preprocessing=s.preprocessing, overwrite=overwrite,
                            attrs={**carried_attrs(attrs, drop=("subset",)), "subset": record}) as writer:
            for start in range(0, len(rows), batch_size):
                part = rows[start : start + batch_size]
                data = {name: np.asarray(getattr(s, name)[part]) for name in extras}
                writer.append(np.asarray(s.images[part]), catalog[part], **data)
    return record


def process_record(record, preprocessing, pixel_scale: float | None = None, segmentation: str | None = "sep"):
    """One raw image -> (flux cutout, segmentation map or None, catalogue row, excluded-pixel mask or None).

    The cutout is :meth:`Preprocessing.cut <morphllr.data.preprocess.Preprocessing.cut>`'s: the frame
    is segmented once, the segmentation centres the cutout (when the recipe says so) and, cut to the
    same window, becomes the stored ``/segmap``.  The window is never moved; the row says how much of
    it is sky-noise padding (``edge_padded``, ``masked_fraction``) and where it lies (``cutout_x0``,
    ``cutout_y0``: frame pixel of its first column/row, negative past the edge; the detected centre
    ``center_x`` = ``cutout_x0 + cutout // 2`` to within half a pixel).

    Args:
        record: :class:`morphllr.data.raw_image.RawImage`.
        preprocessing: Preprocessing.
        pixel_scale: arcsec/px overriding what the file says.
        segmentation: ``sep``, ``photutils`` or None.

    Returns:
        (flux (C, Hf, Wf) float32, int32 (Hf, Wf) segmap or None, row dict, uint8 (Hf, Wf) mask
        (1 = user-masked or beyond the image) or None when no pixel is); the row also carries
        ``_kind`` (the image's input kind) for :func:`prepare_imageset`.
    """
    prep = preprocessing
    scale = pixel_scale or record.pixel_scale
    kind = prep.resolve_input_kind(record.kind, record.source)
    cut, info = prep.cut(record.image, source=record.source, seed=record.id, segmentation=segmentation,
                         center_tolerance=record.center_tolerance, units=record.units, input_pixel_scale=scale,
                         mask=record.mask, outside=record.outside)
    row = {"id": record.id, "file": record.source, "input_pixel_scale": float(scale or np.nan),
           "sky_level": info["sky"], "n_nonfinite": info["n_nonfinite"], "center_x": info["center_x"],
           "center_y": info["center_y"], "cutout_x0": info["cutout_x0"], "cutout_y0": info["cutout_y0"],
           "edge_padded": info["edge_padded"], "masked_fraction": info["masked_fraction"],
           "nonfinite_fraction": info["nonfinite_fraction"]}
    if prep.pad:  # noise-free simulations: the share of 0 flux around them (not sky noise, not excluded)
        row["zero_padded"] = info["zero_padded"]
    row.update(record.meta)
    if segmentation:
        row.update(sky_sigma=info["sky_sigma"], central_found=info["central_found"])
    row["_kind"] = kind
    excluded = excluded_pixels(info)  # user-masked, beyond the image, NaN/inf: sky noise in the cutout
    return cut, info.get("segmap"), row, (excluded.astype(np.uint8) if excluded.any() else None)


@claims({"path": "--out"})  # checked and locked before the first image is read
def prepare_imageset(
    records,
    path,
    preprocessing,
    *,
    n: int,
    catalog=None,
    catalog_name: str = "catalog",
    pixel_scale: float | None = None,
    segmentation: str | None = "sep",
    store_flux: bool = True,
    overwrite: bool = False,
    batch_size: int = 64,
    workers: int = 1,
    progress=None,
    attrs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Cut, segment, stretch and write raw images as an ImageSet (``morphllr prepare``).

    Args:
        records: iterable of :class:`morphllr.data.raw_image.RawImage`.
        path: output ``.h5``.
        preprocessing: recipe (Preprocessing, dict or preset name).
        n: number of records (capacity hint and progress total).
        catalog: optional astropy Table with string ``id`` joined onto the images.
        catalog_name: catalogue file name for the report.
        pixel_scale: arcsec/px of the inputs, overriding what the files say.
        segmentation: ``sep``, ``photutils`` or None.
        store_flux: keep the flux cutouts in ``/flux`` (needed by fit-sersic/archetypes).
        overwrite: replace an existing file.
        batch_size: images written together.
        workers: processes cutting and segmenting in parallel (1 = in this process).
        progress: callable(advance: int) called after each batch (e.g. a rich progress bar).
        attrs: extra file attributes (e.g. which frames cutouts came from), strings, numbers or JSON-able.

    Returns:
        report dict: ``n_images``, ``n_nonfinite_pixels``, ``n_images_with_nonfinite``,
        ``n_central_missing``, ``n_edge_padded`` (cutouts running past the image edge, padded
        with sky noise), ``n_zero_padded`` (cutouts of ``pad`` recipes with 0 flux around), ``n_edge_dropped`` and ``edge_dropped_ids`` (such galaxies dropped by
        ``edge = "refuse"``), ``n_masked`` (images with masked pixels), ``input_kind``,
        ``image_shape``, ``flux_shape`` and, with a catalogue, ``catalog`` (the join report of
        :func:`morphllr.data.catalog.join_catalog`).

    The recipe recorded in the set is ``preprocessing`` with its ``input_kind`` resolved (the
    recipe's, else the readers'; one kind per set) and, when it does not resample
    (``pixel_scale`` None), ``pixel_scale`` set to a given ``pixel_scale`` with ``pixel_scale_given``:
    the set's pixels then are at that scale, and no model check compares it.
    """
    from astropy.table import Table

    prep = as_preprocessing(preprocessing)
    if prep.pixel_scale_given:  # a record's scale (--like a set of `--preset none --pixel-scale`): resample nothing
        prep = prep.replace(pixel_scale=None, pixel_scale_given=False)
    if pixel_scale is not None and prep.pixel_scale is None:  # nothing is resampled: the inputs' scale is the set's
        prep = prep.replace(pixel_scale=float(pixel_scale), pixel_scale_given=True)
    path = Path(path)
    report = {"n_images": 0, "n_nonfinite_pixels": 0, "n_images_with_nonfinite": 0, "n_central_missing": 0,
              "n_edge_padded": 0, "n_edge_dropped": 0, "edge_dropped_ids": [], "n_masked": 0, "n_zero_padded": 0,
              "input_kind": prep.input_kind}
    state = {"writer": None, "first": None, "kind": None}
    pending: list = []

    def flush():
        flux = np.stack([f for f, _, _, _ in pending])
        names = list(dict.fromkeys(k for _, _, r, _ in pending for k in r))  # files may differ in meta keys
        rows = Table(rows=[[r.get(k, np.nan) for k in names] for _, _, r, _ in pending], names=names)
        images = prep.flux_to_model(flux)
        segmaps = segmap_model = masks = mask_model = None
        if segmentation:
            segmaps = np.stack([s for _, s, _, _ in pending])
            segmap_model = model_mask(segmaps, prep)
        if any(m is not None for _, _, _, m in pending):
            masks = np.stack([np.zeros(f.shape[1:], np.uint8) if m is None else m for f, _, _, m in pending])
            mask_model = model_mask(masks, prep, rule="any")  # one masked flux pixel masks its model pixel
        if state["writer"] is None:
            writer = ImageSetWriter(path, n=n, image_shape=images.shape[1:],
                                    flux_shape=flux.shape[1:] if store_flux else None,
                                    preprocessing=prep.replace(input_kind=state["kind"]), overwrite=overwrite,
                                    attrs=attrs)
            writer.__enter__()
            state["writer"] = writer
            report.update(image_shape=list(images.shape[1:]), flux_shape=list(flux.shape[1:]))
        state["writer"].append(images, rows, flux=flux if store_flux else None, segmap=segmaps,
                               segmap_model=segmap_model, mask=masks, mask_model=mask_model)
        if progress:
            progress(len(pending))
        pending.clear()

    try:
        cut_one = functools.partial(process_record, preprocessing=prep, pixel_scale=pixel_scale,
                                    segmentation=segmentation)
        for flux, segmap, row, mask in map_items_in_processes(cut_one, records, workers, chunk=16):
            kind = row.pop("_kind")
            if state["kind"] is None:
                state["kind"] = kind
                report["input_kind"] = kind
            elif kind != state["kind"]:
                raise MorphllrError(
                    f"{row['file']}: holds {INPUT_KIND_TEXT[kind]}, but the images before it hold "
                    f"{INPUT_KIND_TEXT[state['kind']]}; one set holds one kind of pixels: prepare them separately")
            if row["edge_padded"] > 0:
                if prep.edge == "refuse":
                    report["n_edge_dropped"] += 1
                    report["edge_dropped_ids"].append(str(row["id"]))
                    if progress:
                        progress(1)
                    continue
                report["n_edge_padded"] += 1
            report["n_masked"] += bool(row["masked_fraction"] > 0)
            report["n_zero_padded"] += bool(row.get("zero_padded", 0) > 0)
            if state["first"] is None:
                state["first"] = (flux.shape, row["file"])
            elif flux.shape != state["first"][0]:
                shape0, file0 = state["first"]
                raise MorphllrError(
                    f"{row['file']}: cutout is {flux.shape[1]}x{flux.shape[2]} with {flux.shape[0]} channel(s), but "
                    f"{file0} gave {shape0[1]}x{shape0[2]} with {shape0[0]}; use a preset with a fixed cutout "
                    "size (e.g. zanisi21) or inputs of one size"
                )
            report["n_nonfinite_pixels"] += row["n_nonfinite"]
            report["n_images_with_nonfinite"] += bool(row["n_nonfinite"])
            pending.append((flux, segmap, row, mask))
            if len(pending) >= batch_size:
                flush()
        if pending:
            flush()
        writer = state["writer"]
        if writer is None and report["n_edge_dropped"]:
            raise MorphllrError(f"{path}: every one of the {report['n_edge_dropped']} galaxies has a cutout running past "
                                "its image's edge, and --edge refuse drops them all; use --edge pad (sky noise, "
                                "flagged in the catalogue column edge_padded) or larger images")
        if writer is None:
            raise MorphllrError(f"{path}: no images were read from the inputs; check the paths")
        # the catalogue join needs all rows: join them once, after the last image, before closing
        all_rows = writer.catalog_rows()
        if catalog is not None:
            all_rows, join_report = join_catalog(all_rows, catalog, catalog_name)
            report["catalog"] = join_report
        writer.replace_catalog_rows(all_rows)
        if report["n_edge_dropped"]:
            writer.extra_attrs["edge_dropped_ids"] = report["edge_dropped_ids"]
        report["n_images"] = writer.count
        if segmentation:
            report["n_central_missing"] = int(np.sum(~np.asarray(all_rows["central_found"], bool)))
        writer.__exit__(None, None, None)
    except BaseException:
        if state["writer"] is not None:
            state["writer"].__exit__(*sys.exc_info())
        raise
    return report
