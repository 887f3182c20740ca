"""Compare image sets by their log-likelihood ratio under p_obs and p_arch.

``compare()`` streams every set through both models once (per batch: one forward pass
per model gives each image's log p and its per-pixel map), keeps only per-image numbers
and a few fixed-size accumulators (mean LLR map, radial profile), then re-scores the
handful of gallery galaxies to get their maps.  Memory is flat in the number of images
apart from one row of numbers per galaxy.

Each image's LLR is also split into its empty-sky pixels and the rest (columns
``llr_sky``, ``llr_rest``, ``n_sky_pixels``, ``llr_sky_per_pixel``; per set
``summary["sets"][name]["sky"]``): the background cancels in the ratio only when a set
shares sky, PSF and noise with the training data, and this split shows whether it did.

**Masked pixels** (an ImageSet's ``/mask_model``, 1 = excluded: user-masked or beyond the image
edge; they hold sky noise in ``/images``): the PixelCNN's later conditionals still see them as
context, so the images are scored unchanged, but their own terms are dropped from every per-image
sum: ``llr`` = sum over the unmasked pixels of (log p_obs map - log p_arch map), and likewise
``logp_obs``, ``logp_arch``, ``llr_segmap``, the sky split, the rotation-averaged LLR (the mask is
rotated with the image) and the domain statistics.  Columns ``n_masked_pixels``,
``masked_share`` (of the H x W model pixels) and ``llr_per_pixel`` (``llr`` / unmasked pixels);
``bpd_obs`` / ``bpd_arch`` are per unmasked dimension; per set ``masked_share`` (mean) and
``mean_llr_per_pixel``.  Sets with different masked shares sum different numbers of terms: a note
says so, and a set whose mean masked share differs from the reference's by more than
:data:`~morphllr.comparison.guards.MASKED_SHARE_TOLERANCE` gets a warning.  Masked pixels are NaN in the maps written
(``maps.h5``, gallery figures) and left out of the mean map and radial profiles.

Every comparison is also checked against what the models saw in training (:mod:`morphllr.domain`,
:func:`morphllr.comparison.guards.guards`): ``summary["warnings"]`` (always a list) and ``summary["sets"][name]["warnings"]``
name sets outside the models' recorded domain (sky bits/dim, whole-image bits/dim, galaxy
sizes), sets of fewer than 30 images, a reference with mean LLR <= 0, models of different
recipes and models that had not converged; ``summary["provenance"]`` says what each model
was trained on.

Outputs in ``out`` (written atomically): ``scores.csv`` / ``scores.parquet`` (one row per
image), ``summary.json`` (per set: n, mean, interval, ΔLLR vs the reference, AUROC, KS,
sky split, mass panels, matched ΔLLR), ``summary.csv``, ``maps.h5`` (all maps, only with
``maps="all"``), ``ranking.tex`` (the ranking as a LaTeX table), ``report_data.h5`` (what the figures draw
beyond summary.json and scores.csv: :mod:`morphllr.comparison.report_data`) and the report (``index.html`` +
``figures/``, every figure as PNG and PDF, see :mod:`morphllr.report.html`), drawn from those files
(:func:`redraw_report`, ``morphllr compare --figures-only OUT``, re-draws it from them later).
The report only reads the result: everything it shows, notes included, is in the result (and in
``summary.json``) before either is written.

The pieces, one module each under :mod:`morphllr.comparison`: ``models`` (both sides), ``sets``
(opening and checking the sets), ``pixels`` (their masks, the empty sky), ``scoring`` (the
streaming scorer), ``maps`` (mean map, radial profiles, ``maps.h5``), ``gallery``, ``summary``
(the statistics), ``ensemble`` (model variance), ``guards`` (domain warnings), ``figure_data``
(what the report's figures can show), ``result`` and ``tables`` (the outputs); this module runs
them in order.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from morphllr.atomic import atomic_dir, atomic_file, claim_output, claims
from morphllr.comparison.figure_data import figure_notes
from morphllr.comparison.gallery import OUTLIER_QUANTILE, fill_gallery
from morphllr.comparison.guards import guards
from morphllr.comparison.models import Side, check_models, config_value, load_side, side_notes
from morphllr.data.pixels import OpenedSet
from morphllr.comparison.result import CompareResult
from morphllr.comparison.scoring import SideScorer, score_all
from morphllr.comparison.sets import central_flags, check_central, check_names, check_set, opened_sets
from morphllr.comparison.summary import attach_groups, build_summary, merge_notes
from morphllr.comparison.report_data import REPORT_DATA, ReportInputs, write_report_data
from morphllr.comparison.tables import (parquet_note, write_panels_csv, write_ranking_tex, write_scores,
                                        write_summary_csv, write_summary_json)
from morphllr.distributed import launched_rank, models_on, resolve, run_sharded
from morphllr.errors import MorphllrError
from morphllr.report.html import write_report


def _model_inputs(spec: Any) -> list:
    """Model folders (or objects with a ``path``) of one side, lists and ensembles flattened."""
    if isinstance(spec, (list, tuple)):
        return [x for item in spec for x in _model_inputs(item)]
    if hasattr(spec, "members") and not isinstance(spec, (str, os.PathLike)):
        return [getattr(spec, "path", None), *(getattr(m, "path", None) for m in spec.members)]
    return [spec]


def _inputs(arguments: dict) -> list:
    """Everything :func:`compare` reads: both models and every set (for the claim on ``out``)."""
    reference, sets = arguments["reference"], arguments["sets"]
    named = [reference[1]] if isinstance(reference, tuple) and len(reference) == 2 else []
    return [*_model_inputs(arguments["obs"]), *_model_inputs(arguments["arch"]), *named,
            *(sets.values() if isinstance(sets, dict) else [])]


def _outputs(arguments: dict) -> list:
    """The report folder; claimed only by the process that writes it (rank 0 of a multi-process run)."""
    return [("--out", arguments["out"])] if launched_rank() == 0 else []


@claims(_outputs, inputs=_inputs, kind="dir")  # checked and locked before any model is loaded
def compare(obs: Any, arch: Any, reference: tuple[str, Any], sets: dict[str, Any] | None = None,
            out: str | os.PathLike | None = None, *, rotations: int = 0, maps: str = "gallery",
            batch_size: int = 64, gallery_size: int = 8, n_boot: int = 1000, matched_draws: int = 200,
            seed: int = 0, overwrite: bool = False, progress: bool = False,
            report: bool = True, group_col: str | None = None, devices: int | str = 1,
            accelerator: str | None = None, num_nodes: int = 1, threads: int | None = None,
            keep_no_central: bool = False) -> CompareResult | None:
    """Score every set under both models and compare each to the reference.

    Either side may be an ensemble (K models trained with different seeds): every set is
    then scored under all K_obs x K_arch model pairs from K_obs + K_arch forward passes
    per batch, the per-image LLR is the mean over pairs (mean_i log p_obs,i - mean_j
    log p_arch,j) and summary.json says how far the ranking survives retraining
    (``mean_llr_by_pair``, ``model_std``, ``ci95_total``, ``ranking_agreement``; see
    :func:`morphllr.comparison.ensemble.model_variance`).

    Several processes or GPUs (``devices``, ``num_nodes``, or a launcher such as torchrun;
    :mod:`morphllr.distributed`): each rank scores a contiguous shard of every set; rank 0
    receives the per-image numbers in input order, the summed mean-map and profile
    accumulators and (``maps="all"``) the maps batch by batch, re-scores the few gallery
    galaxies itself, computes every statistic and alone writes the report.

    Args:
        obs: p_obs model folder, ensemble folder, LoadedModel, Ensemble or a list of those.
        arch: p_arch, the same way.
        reference: ``(name, set)``: the held-out real test set.
        sets: name -> set to compare with the reference (path, ImageSet, array).
        out: report folder (None: compute only, write nothing).
        rotations: also average the LLR over this many random rotations (0–180°); image i's angles
            depend only on ``seed``, its set and its index.
        maps: ``"gallery"`` (maps only for the gallery galaxies) or ``"all"`` (also
            ``maps.h5`` with every per-pixel map).
        batch_size: images per forward pass.
        gallery_size: galaxies per gallery.
        n_boot: bootstrap replicates for intervals and errors.
        matched_draws: draws of the matched comparison.
        seed: seed of every random choice (bootstrap, rotations, matched draws).
        overwrite: replace an existing ``out``.
        progress: show a rich progress bar.
        report: write figures + index.html (needs matplotlib).
        group_col: catalogue column naming the object each image shows (several projections,
            snapshots or repeated insertions of one simulated galaxy, e.g. ``galaxy`` from
            ``morphllr mock --repeat``): intervals and errors then resample groups, not images.
            A set without the column is resampled per image, with a note.
        devices: processes (CPU) or GPUs per node, as ``morphllr train --devices``.
        accelerator: "auto", "cpu", "cuda" / "gpu"; None: where the models are for one process, else "auto".
        num_nodes: nodes (with a launcher, or NODE_RANK / MASTER_ADDR / MASTER_PORT on every node).
        threads: CPU threads per process (None: automatic; several processes share the idle cores).
        keep_no_central: keep the images without a central source (catalogue ``central_found`` False, or an
            all-zero ``/segmap_model``: empty or off-centre frames) in every statistic.  By default they are
            scored and listed (``scores.csv`` ``central_source`` = 0) but left out of their set's statistics,
            maps, profiles and galleries, reference included, with a warning per set; summary.json per set
            ``n_no_central`` (None for a set that does not say, e.g. a bare array), ``no_central_ids``,
            ``no_central_excluded``.  A set with no image left is refused.

    Returns:
        a :class:`CompareResult` (None on the ranks other than 0 of a run joined from a launcher).
    """
    if maps not in ("gallery", "all"):
        raise MorphllrError(f"--maps {maps!r}: choose 'gallery' or 'all'")
    if rotations < 0 or batch_size < 1 or gallery_size < 0:
        raise MorphllrError("--rotations, --batch-size and --gallery must be non-negative (batch size >= 1)")
    if not (isinstance(reference, tuple) and len(reference) == 2):
        raise MorphllrError("reference: give (name, set), e.g. ('SDSS', 'sdss_test.h5')")
    sets = dict(sets or {})
    check_names([reference[0], *sets])
    if reference[0] in sets:
        raise MorphllrError(f"set name {reference[0]!r} is used twice; give every set its own NAME=")
    if group_col is not None and (not isinstance(group_col, str) or not group_col.strip()):
        raise MorphllrError(f"--group-col {group_col!r}: give a catalogue column name, e.g. galaxy")
    plan = resolve(devices, accelerator, num_nodes)
    obs_side, arch_side = load_side(obs, "--obs"), load_side(arch, "--arch")
    check_models(obs_side, arch_side)
    specs = [(reference[0], reference[1]), *sets.items()]
    with opened_sets(specs) as opened:
        central = {}
        for s in opened:  # once per set: every batch of it fits the models
            check_set(s, obs_side.members[0])
            central[s.name] = central_flags(s)  # which images show a central source (None: unknown)
            check_central(s, central[s.name][0], keep_no_central)
        options = dict(out=out, rotations=rotations, maps=maps, batch_size=batch_size, gallery_size=gallery_size,
                       n_boot=n_boot, matched_draws=matched_draws, seed=seed, overwrite=overwrite,
                       progress=progress, report=report, group_col=group_col, central=central,
                       keep_no_central=keep_no_central)
        result = run_sharded(_compare_job, (obs_side, arch_side, opened, reference[0]), options,
                                         plan=plan, threads=threads)
    return result


def _compare_job(ctx, obs_side: Side, arch_side: Side, opened: list[OpenedSet], reference: str, *, out,
                 rotations: int, maps: str, batch_size: int, gallery_size: int, n_boot: int, matched_draws: int,
                 seed: int, overwrite: bool, progress: bool, report: bool,
                 group_col: str | None, keep_no_central: bool,
                 central: dict | None = None) -> CompareResult | None:
    """One rank of :func:`compare`: score its shards; rank 0 gathers, re-scores the gallery and writes."""
    obs_model = obs_side.members[0]
    t0 = time.perf_counter()
    writes = out is not None and ctx.is_main
    with models_on(ctx.device, [*obs_side.members, *arch_side.members]), \
            SideScorer(obs_side, ctx.threads) as obs_scorer, SideScorer(arch_side, ctx.threads) as arch_scorer, \
            (atomic_dir(out, overwrite=overwrite) if writes else _nullfolder()) as folder:
        scorers = (obs_scorer, arch_scorer)  # set up once (threads, layout, evaluation mode) for every set
        results = score_all(opened, scorers, folder if maps == "all" else None, batch_size=batch_size,
                            rotations=rotations, progress=progress and ctx.is_main, seed=seed, ctx=ctx,
                            gather_maps=maps == "all" and out is not None, central=central,
                            keep_no_central=keep_no_central)
        ctx.done()  # the other ranks are finished; rank 0 computes and writes alone
        if not ctx.is_main:
            return None
        ref_cut = float(np.quantile(results[reference].llr, OUTLIER_QUANTILE))
        for s in opened:
            fill_gallery(results[s.name], s, scorers, ref_cut, gallery_size)
        timing = {"forward_s": obs_scorer.seconds + arch_scorer.seconds, "scoring_s": time.perf_counter() - t0,
                  "forward_passes_per_batch": len(obs_side) + len(arch_side)}
        group_notes = attach_groups(results, group_col) + side_notes(obs_side, "--obs") \
            + side_notes(arch_side, "--arch")
        notes = merge_notes([note for r in results.values() for note in r.notes] + group_notes, results)
        summary = build_summary(results, reference, ref_cut, n_boot, matched_draws, seed, notes,
                                sides=(obs_side, arch_side), group_col=group_col)
        summary.update(models={"obs": obs_side.paths[0] if len(obs_side) == 1 else obs_side.paths,
                               "arch": arch_side.paths[0] if len(arch_side) == 1 else arch_side.paths,
                               "head": config_value(obs_model.config, "head")},
                       sources={s.name: s.label for s in opened}, rotations=rotations, timing=timing)
        guards(results, reference, summary, notes, obs_side, arch_side, tuple(opened[0].source.shape[1:]))
        if folder is not None:  # what the files will say about themselves, before any is written
            # figure notes with or without the report: report_data.h5 is written either way, and a later
            # --figures-only redraw shows these notes with the figures they describe
            notes += parquet_note() + figure_notes(results)
        # the notes added since the first merge fold too; summary.json and the report show this one list
        summary["notes"] = notes = merge_notes(notes, results)
        timing["processes"] = ctx.world
        result = CompareResult(reference=reference, sets=results, summary=summary,
                               ranking=summary["ranking"], notes=notes,
                               out=Path(out) if out is not None else None, timing=timing)
        if folder is not None:
            _write_outputs(result, folder, report)
        timing["total_s"] = time.perf_counter() - t0
    return result


def _write_outputs(result: CompareResult, folder: Path, report: bool) -> None:
    """Tables, summary.json, report_data.h5, ranking.tex, then figures and index.html into the (temporary) report
    folder; none changes the result.

    The report is drawn from the files just written (:meth:`ReportInputs.from_folder`), exactly as
    :func:`redraw_report` (``morphllr compare --figures-only``) draws it later.
    """
    write_scores(result.sets, folder)
    write_summary_json(result.summary, folder / "summary.json")
    write_summary_csv(result.summary, folder / "summary.csv")
    if result.summary["mass_panels"]:
        write_panels_csv(result.summary, folder / "mass_panels.csv")
    write_report_data(result, folder / REPORT_DATA)
    write_ranking_tex(result.summary, folder / "ranking.tex")
    if report:
        write_report(ReportInputs.from_folder(folder, option="--out"), folder)


def redraw_report(out: str | os.PathLike) -> ReportInputs:
    """Re-draw ``figures/`` (PNG + PDF), ``index.html`` and ``ranking.tex`` of a compare output folder from its files.

    ``morphllr compare --figures-only OUT``: no model, no set, no scoring.  The figures and the page are drawn
    from ``summary.json``, ``scores.csv`` and ``report_data.h5`` (:meth:`ReportInputs.from_folder`), as compare
    draws its own, so the same files give the same report; nothing else in ``out`` is touched (``summary.json``
    stays byte-identical).  The three outputs are each written to a temporary name and renamed over the old
    ones (figures/ as a whole folder), the folder locked meanwhile.

    Args:
        out: the ``--out`` folder of a ``morphllr compare`` run.

    Returns:
        the inputs the report was drawn from.

    Raises:
        MorphllrError: ``out`` is not such a folder, or a file is missing (named, with how to make it).
    """
    import shutil
    import tempfile

    folder = Path(out)
    if not folder.is_dir():
        raise MorphllrError(f"--figures-only {folder}: not a folder; give the --out folder of a `morphllr compare` "
                            "run")
    with claim_output(folder, option="--figures-only", kind="dir", existing="update"):
        inputs = ReportInputs.from_folder(folder)  # every file present and readable, before anything is written
        with atomic_dir(folder / "figures", overwrite=True) as new_figures, \
                atomic_file(folder / "index.html") as new_page, atomic_file(folder / "ranking.tex") as new_tex:
            # write_report fills STAGE/index.html and STAGE/figures/; the stage lies inside the new figures folder,
            # so it goes with it if anything fails
            stage = Path(tempfile.mkdtemp(prefix=".stage.", dir=new_figures))
            write_report(inputs, stage)
            for item in sorted((stage / "figures").iterdir()):
                os.replace(item, new_figures / item.name)
            os.replace(stage / "index.html", new_page)
            shutil.rmtree(stage)
            write_ranking_tex(inputs.summary, new_tex)
    return inputs


class _nullfolder:
    """No report folder (``out`` None, or a rank other than 0): ``with`` gives None."""

    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
