"""``morphllr compare``: rank image sets by their log-likelihood ratio and write the report."""

from __future__ import annotations

from pathlib import Path
from typing import List

import typer

from morphllr.cli.application import accelerator_option, app, devices_option, num_nodes_option
from morphllr.limits import SEED_MAX, THREADS_MAX


def parse_named_set(text: str, what: str) -> tuple[str, str]:
    """Split ``NAME=path`` into ``(NAME, path)``.

    Args:
        text: the command-line word.
        what: the argument it came from, for the message.

    Returns:
        ``(name, path)``.
    """
    from morphllr.errors import MorphllrError

    name, sep, path = text.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise MorphllrError(f"{what} {text!r}: write NAME=FILE, e.g. TNG50=tng50_mocks.h5")
    return name.strip(), path.strip()


COMPARE_HELP = (
    "Score every set under both models and rank the sets by mean LLR (higher = closer to the observations).\n\n"
    "LLR(x) = log p_obs(x) - log p_arch(x) in nats per image; the mean over a set estimates "
    "KL(q||p_arch) - KL(q||p_obs).\n\n"
    "The report (REPORT/index.html, one self-contained page) gives per-set means with bootstrap 95 % intervals, "
    "ΔLLR against the reference (raw; in stellar-mass panels 9.5-10 / 10-10.5 / >10.5 when the catalogue has "
    "log_mstar; and matched in mass x size x Sérsic index), AUROC and KS against the reference, per-pixel LLR "
    "maps, radial LLR profiles in units of R_e, scaling relations coloured by LLR and galleries. Missing "
    "catalogue columns only skip the plots that need them.\n\n"
    "Background check: each image's LLR is also split into its empty-sky pixels (model pixels into which no "
    "source pixel of the set's /segmap falls, after the set's crop and zoom; without /segmap, pixels outside "
    "/segmap_model, so companions count as sky) and the rest: scores.csv columns llr_sky and llr_rest (nats per "
    "image, llr_sky + llr_rest = llr), n_sky_pixels and llr_sky_per_pixel (nats per pixel), and per set the "
    "pooled sky LLR per pixel with a 95 % interval, its share of the mean LLR and the AUROC of the sky (and of "
    "the rest) against the reference. The sky cancels in the ratio only when a set shares sky, PSF and noise "
    "with the training data: then the sky LLR per pixel is near 0 and its AUROC near 0.5; otherwise part of the "
    "set's LLR measures its background, not its galaxies.\n\n"
    "Masked pixels (an image set's /mask_model: user-masked or beyond the image edge, filled with sky noise by "
    "`morphllr prepare`): the later pixels' conditionals still see them as context, but their own terms are "
    "dropped, so each LLR (and llr_segmap, the sky split, the rotation-averaged LLR) sums the unmasked pixels "
    "only; scores.csv gains n_masked_pixels, masked_share and llr_per_pixel (LLR / unmasked pixels), summary.json "
    "per set masked_share and mean_llr_per_pixel, and masked pixels are NaN in maps.h5 and blank in the pixel "
    "maps. Sets with different masked shares should be compared per pixel: a set whose mean masked share "
    "differs from the reference's by more than 0.05 gets a warning.\n\n"
    "Images without a central source (catalogue central_found = False from `morphllr prepare`'s segmentation, "
    "or an all-zero /segmap_model mask: empty frames, or a galaxy off the image centre): counted per set "
    "(summary.json n_no_central, null for a set that does not record it, e.g. a bare array; no_central_ids, the "
    "first 50; summary.csv n_no_central), still scored and listed in scores.csv (column central_source: 1, 0, or "
    "nan when unknown), but by default left out of their set's statistics, reference included: mean LLR, "
    "intervals, ΔLLR, AUROC, KS, matched ΔLLR, mass panels, maps, profiles and galleries (summary.json "
    "no_central_excluded = true, and n counts the others), with a warning per set. --keep-no-central keeps "
    "them in (the warning then says so). A set with no image left is refused.\n\n"
    "Warnings (printed after the ranking as `warning: ...`, in a box at the top of the report, beside each set's "
    "row and in summary.json `warnings`, top level and per set, always present): a set outside the models' "
    "training domain (its empty-sky bits/dim under either model, its whole-image bits/dim far beyond anything "
    "the validation images reached, or its galaxy sizes outside the training range; the rules are in "
    "summary.json `domain_rules` and morphllr.domain), a set of fewer than 30 images (intervals unreliable), a "
    "reference with mean LLR <= 0, p_obs and p_arch trained on data of different input kinds or recipes, and a "
    "model whose training had not converged. Models trained before these checks existed get a note; add their "
    "domain statistics with scripts/record_domain.py MODEL TRAINING_SET.\n\n"
    "Stability under retraining: --obs and --arch each take a model folder or an ensemble folder (`morphllr train "
    "--seeds`), and may be repeated to pool folders into one ensemble. With K_obs x K_arch model pairs every set is "
    "scored under all pairs from K_obs + K_arch forward passes; the LLR column and every statistic use the mean "
    "over pairs, scores.csv gains logp_obs_<member> / logp_arch_<member> columns, and summary.json per set "
    "mean_llr_by_pair (rows = p_obs members), delta_llr_by_pair, model_std (spread over model pairs of the ΔLLR "
    "against the reference, paired per galaxy when the two sets show the same galaxies), ci95_total and "
    "delta_llr_ci95_total (hierarchical bootstrap: models, then galaxies; at least 3 models per side; never "
    "narrower than ci95) and stable; at the top ranking_agreement (share of pairs of sets each model pair orders "
    "as the ensemble ranking, averaged over model pairs), n_models and model_pairs. The ranking table marks a set "
    "✓ when its ΔLLR survives retraining (|ΔLLR| >= 2 sqrt(err^2 + model_std^2) and the same sign under >= 95 % "
    "of the model pairs), ✗ otherwise. With one model pair these are null and the report says that model "
    "variance is not measured.\n\n"
    "Several images of one object (projections, snapshots, repeated insertions: `morphllr mock --repeat` writes a "
    "galaxy column): --group-col galaxy makes every interval and error resample whole groups instead of images "
    "(summary.json records group_col and per set n_groups); a set without the column is resampled per image, "
    "with a note. AUROC and KS stay per image.\n\n"
    "Any hardware, at scale: --accelerator cpu | cuda (= gpu) | auto, --devices N (CPU: N processes started by "
    "morphllr, gloo, the idle cores split between them or --threads each; GPUs: one process per GPU, NCCL, bf16 "
    "autocast where supported) and --num-nodes, as for `morphllr train`; under torchrun, srun or Lightning's "
    "launcher its processes are joined. Each process scores a contiguous shard of every set; process 0 receives "
    "the per-image numbers in input order, the summed mean-map and radial-profile sums and (--maps all) the maps "
    "batch by batch, re-scores the few gallery galaxies itself and alone computes the statistics and writes the "
    "report: the same numbers as one process (float32 rounding of the forward pass). Rotation angles (--rotations) "
    "depend only on --seed, the set and the image.\n\n"
    "Outputs for a paper: every figure is saved as PNG (embedded in index.html) and as vector PDF with the same "
    "stem under figures/ (sets in ranking order with one colour-blind-safe colour each, the reference black; LLR "
    "maps blue = realistic, red = Sérsic-like; per set gallery_<set> and profile_<set>, its radial LLR profile "
    "against the reference's); ranking.tex is the ranking table as a captioned LaTeX table (astropy ascii.latex: "
    "LLRs in nats per image, rounded to two significant digits of the smallest error; Table.read(path, "
    "format='ascii.latex') reads it back). report_data.h5 holds what the figures draw beyond summary.json and "
    "scores.csv (per-set mean LLR maps, radial profiles with their bin edges, gallery images with their per-pixel "
    "maps and ids, the set order), so `morphllr compare --figures-only REPORT` re-draws figures/, index.html and "
    "ranking.tex from REPORT's files without models, sets or re-scoring (summary.json is left byte-identical).\n\n"
    "Example: morphllr compare --obs obs_model --arch arch_model --reference SDSS=sdss_test.h5 "
    "TNG=tng_mocks.h5 Illustris=illustris_mocks.h5 --out report\n\n"
    "Several processes: morphllr compare ... --devices 2 --accelerator cpu; on 4 GPUs: "
    "torchrun --nproc-per-node 4 -m morphllr compare ... --accelerator cuda"
)


@app.command("compare", help=COMPARE_HELP)
def compare_command(
    ctx: typer.Context,
    sets: List[str] = typer.Argument(
        None, metavar="NAME=SET.h5 ...",
        help="Sets to compare with the reference, each as NAME=FILE (an ImageSet from `morphllr prepare`, "
             "or .npy/.npz/.h5 images already in the models' input space). NAME labels the set in tables "
             "and figures."),
    obs: List[Path] = typer.Option(
        None, "--obs", metavar="DIR", help="Model folder or ensemble folder of p_obs, trained on observed galaxies; repeat to pool "
                           "several folders into one ensemble. Required (unless --figures-only)."),
    arch: List[Path] = typer.Option(
        None, "--arch", metavar="DIR", help="Model folder or ensemble folder of p_arch, trained on their Sérsic archetypes; "
                            "repeat to pool several. Required (unless --figures-only)."),
    reference: str = typer.Option(
        None, "--reference", metavar="NAME=SET.h5",
        help="The held-out real test set, as NAME=FILE (e.g. SDSS=sdss_test.h5). Every other set is compared "
             "to it: ΔLLR = mean LLR(set) - mean LLR(reference). Required (unless --figures-only)."),
    out: Path = typer.Option(None, "--out", help="Report folder to create: index.html, figures/ (PNG + PDF), "
                                                "ranking.tex, scores.csv, scores.parquet, summary.json, summary.csv, "
                                                "report_data.h5. Required (unless --figures-only)."),
    figures_only: Path = typer.Option(
        None, "--figures-only", metavar="REPORT",
        help="Re-draw the report of REPORT, the --out folder of an earlier compare, from its summary.json, "
             "scores.csv and report_data.h5: no models, sets or re-scoring (give none of --obs, --arch, "
             "--reference, --out or sets). OVERWRITES REPORT's figures/, index.html and ranking.tex (each "
             "written to a temporary name, then renamed) and nothing else; summary.json stays byte-identical."),
    rotations: int = typer.Option(
        0, "--rotations", min=0, max=1000,
        help="Also average each image's LLR over K random rotations (0-180°), as in the paper; costs K extra "
             "forward passes per model. Adds column llr_rot."),
    maps: str = typer.Option(
        "gallery", "--maps",
        help="'gallery': per-pixel LLR maps only for the gallery galaxies; 'all': also maps.h5 with every "
             "map (N x H x W float32 per set and model)."),
    batch_size: int = typer.Option(64, "--batch-size", min=1, max=65536, help="Images per forward pass."),
    gallery: int = typer.Option(8, "--gallery", min=0, max=1000, help="Galaxies per gallery (most/least realistic, outliers)."),
    bootstrap: int = typer.Option(1000, "--bootstrap", min=10, max=1_000_000,
                                  help="Bootstrap replicates for the 95 % intervals and ΔLLR errors."),
    seed: int = typer.Option(0, "--seed", min=0, max=SEED_MAX, help="Seed for bootstrap, rotations and matched draws."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out folder."),
    group_col: str = typer.Option(
        None, "--group-col", metavar="COLUMN",
        help="Catalogue column naming the object each image shows (e.g. galaxy, written by `morphllr mock "
             "--repeat`): intervals and errors resample these groups, not images."),
    keep_no_central: bool = typer.Option(
        False, "--keep-no-central",
        help="Keep images in which no central source was found (catalogue central_found = False or an all-zero "
             "/segmap_model: empty or off-centre frames) in every set's statistics. Default: they are scored and "
             "listed in scores.csv (central_source = 0) but left out of the mean LLR, intervals, ΔLLR, AUROC, KS, "
             "matched, mass panels, maps, profiles and galleries, with a warning naming how many."),
    devices: str = devices_option(),
    num_nodes: int = num_nodes_option(),
    accelerator: str = accelerator_option(),
    threads: int = typer.Option(None, "--threads", min=1, max=THREADS_MAX, help="CPU threads per process "
                                "(default: usable idle cores / processes on this node)."),
) -> None:
    """Rank image sets by mean LLR and write the comparison report (see ``COMPARE_HELP``)."""
    if figures_only is not None:
        _figures_only(figures_only, given=[("--obs", obs), ("--arch", arch), ("--reference", reference),
                                           ("--out", out), ("NAME=SET.h5", sets)])
        return
    from morphllr.errors import MorphllrError

    for option, value, what in (("--obs", obs, "the p_obs model folder"), ("--arch", arch, "the p_arch model folder"),
                                ("--reference", reference, "NAME=SET.h5, the held-out real test set"),
                                ("--out", out, "the report folder to create")):
        if not value:
            raise MorphllrError(f"missing option {option} ({what}); only --figures-only REPORT runs without the "
                                "models and sets; see `morphllr compare --help`")
    from morphllr.comparison.run import compare
    from morphllr.distributed import launched_rank, parse_devices, resolve
    from morphllr.report.terminal import print_ranking

    ref_name, ref_path = parse_named_set(reference, "--reference")
    others: dict[str, str] = {}
    for text in sets or []:
        name, path = parse_named_set(text, "set")
        if name in others or name == ref_name:
            from morphllr.errors import MorphllrError

            raise MorphllrError(f"set name {name!r} is used twice; give every set its own NAME=")
        others[name] = path
    from morphllr.atomic import claim_output

    devices_arg = parse_devices(devices)
    resolve(devices_arg, accelerator, num_nodes)  # impossible requests refused in one line, before any work
    if launched_rank() == 0:  # only rank 0 of a multi-process run writes the report
        # the report folder is claimed before any model is loaded; it may not hold a model or a set
        ctx.with_resource(claim_output(out, inputs=[*obs, *arch, ref_path, *others.values()], overwrite=overwrite,
                                       kind="dir"))
    import warnings

    from morphllr.errors import MorphllrWarning

    # the comparison's own warnings are printed after the ranking, where they are read; others pass through
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = compare(obs[0] if len(obs) == 1 else list(obs), arch[0] if len(arch) == 1 else list(arch),
                         reference=(ref_name, ref_path), sets=others, out=out, rotations=rotations,
                         maps=maps, batch_size=batch_size, gallery_size=gallery, n_boot=bootstrap, seed=seed,
                         overwrite=overwrite, progress=True, group_col=group_col, devices=devices_arg,
                         accelerator=accelerator, num_nodes=num_nodes, threads=threads,
                         keep_no_central=keep_no_central)
    own = set(result.summary.get("warnings") or []) if result is not None else set()
    for w in caught:
        if not (issubclass(w.category, MorphllrWarning) and str(w.message) in own):
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    if result is None:  # a rank other than 0 of a launched run: rank 0 reports
        return
    print_ranking(result.summary)
    for note in result.notes:
        typer.secho(f"note: {note}", fg=typer.colors.YELLOW, err=True)
    for text in result.summary.get("warnings") or []:
        typer.secho(f"warning: {text}", fg=typer.colors.RED, err=True)
    typer.echo(f"report: {out / 'index.html'}")


def _figures_only(folder: Path, given: list) -> None:
    """``--figures-only REPORT``: re-draw REPORT's figures, index.html and ranking.tex from its files."""
    from morphllr.comparison.run import redraw_report
    from morphllr.errors import MorphllrError

    extra = [option for option, value in given if value]
    if extra:
        raise MorphllrError(f"--figures-only {folder}: re-draws a report from its files alone; drop "
                            f"{', '.join(extra)} (to score again, run compare without --figures-only)")
    inputs = redraw_report(folder)
    n = len(list((folder / "figures").glob("*.png")))
    typer.echo(f"re-drawn from {folder}'s summary.json, scores.csv and report_data.h5: {n} figures (PNG + PDF) in "
               f"{folder / 'figures'}, {folder / 'ranking.tex'} ({len(inputs.set_order)} sets)")
    typer.echo(f"report: {folder / 'index.html'}")
