"""The comparison in the terminal: the ranking table, the stability line and the sky-split table (rich)."""

from __future__ import annotations

from morphllr.report.formatting import MARK_LEGEND, fmt, multi_pair, sky_split_rows, stability_mark

#: the sky-split table's columns in the terminal
SKY_HEADERS_SHORT = ("set", "sky LLR/px [nats]", "95% interval", "share", "sky px", "AUROC sky", "AUROC rest")


def print_ranking(summary: dict, console=None) -> None:
    """Print the ranking table in the terminal (rich).

    Args:
        summary: the content of summary.json.
        console: a rich Console (default: a new one on stdout).
    """
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    matched = summary.get("matched") or {}
    # A light box and no wrapping keep the whole table legible in an 80-column terminal or CI log.
    table = Table(title=f"LLR ranking (reference: {summary['reference']}; higher = more realistic)",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    multi = multi_pair(summary)
    if multi:
        table.caption = ("LLR columns in nats per image. model σ = spread of ΔLLR over the "
                         f"{summary.get('model_pairs')} model pairs; " + MARK_LEGEND)
    else:
        table.caption = "LLR columns in nats per image."
    table.caption_justify = "left"
    columns = ["#", "set", "n", "mean LLR", "95% interval", "ΔLLR vs ref", "matched ΔLLR", "AUROC"]
    if multi:
        columns[-1:-1] = ["model σ"]
    for col in columns:
        table.add_column(col, justify="left" if col == "set" else "right", no_wrap=True)
    for rank, name in enumerate(summary["ranking"], 1):
        e = summary["sets"][name]
        md = (matched.get("delta_llr") or {}).get(name)
        me = (matched.get("delta_llr_err") or {}).get(name)
        is_ref = name == summary["reference"]
        cells = [str(rank), name + (" (ref)" if is_ref else ""), str(e["n"]),
                 fmt(e["mean_llr"]), f"[{fmt(e['ci95'][0])}, {fmt(e['ci95'][1])}]",
                 f"{fmt(e['delta_llr'])} ± {fmt(e['delta_llr_err'], 2)}",
                 "–" if md is None else f"{fmt(md)} ± {fmt(me, 2)}"]
        if multi:
            cells.append("ref" if is_ref else f"{fmt(e.get('model_std'), 3)} {stability_mark(e, is_ref)}")
        table.add_row(*cells, fmt(e["auroc_vs_reference"], 3))
    _print_full_width(console, table)
    console.print(stability_line(summary), highlight=False, soft_wrap=True)
    print_sky_split(summary, console)


def stability_line(summary: dict) -> str:
    """One line for the terminal: the ranking agreement over model pairs, or that it is not measured."""
    if not multi_pair(summary):
        return ("stability under retraining: not measured (one p_obs and one p_arch model); train with --seeds "
                "and compare the ensembles to measure it")
    n = summary.get("n_models") or {}
    unstable = [name for name in summary["ranking"] if summary["sets"][name].get("stable") is False]
    paired = [f"{name} {fmt(e['delta_llr_paired'])} ± {fmt(e['delta_llr_paired_err'], 2)}"
              for name in summary["ranking"] for e in [summary["sets"][name]]
              if e.get("delta_llr_pairing") == "paired" and e.get("delta_llr_paired") is not None]
    return (f"stability under retraining: {n.get('obs')} x {n.get('arch')} models = {summary.get('model_pairs')} "
            f"model pairs; ranking agreement {fmt(summary.get('ranking_agreement'), 3)} (share of pairs of sets "
            "ordered as the ensemble ranking, averaged over model pairs; 1 = all agree)"
            + (f"; may not survive retraining: {', '.join(unstable)}" if unstable else "")
            + (f"\npaired ΔLLR vs the reference over the same galaxies (what the mark judges) [nats]: "
               f"{'; '.join(paired)}" if paired else ""))


def print_sky_split(summary: dict, console=None) -> None:
    """Print the short "LLR split: empty sky vs the rest" table (see :func:`sky_split_rows`).

    Args:
        summary: the content of summary.json.
        console: a rich Console (default: a new one on stdout).
    """
    from rich import box
    from rich.console import Console
    from rich.table import Table

    rows, footnotes = sky_split_rows(summary)
    if not rows:
        return
    console = console or Console()
    table = Table(title="LLR split: empty sky vs the rest", box=box.SIMPLE_HEAD, pad_edge=False,
                  caption="sky LLR/px in nats per empty-sky pixel; ≈ 0 (as in the reference) with AUROC sky ≈ 0.5 = "
                          "the background cancels. share = mean sky LLR / mean LLR; sky px = empty-sky share of "
                          "the model pixels.", caption_justify="left")
    for col in SKY_HEADERS_SHORT:
        table.add_column(col, justify="left" if col == "set" else "right", no_wrap=True)
    for label, cells in rows:
        table.add_row(label, *([cells] + [""] * (len(SKY_HEADERS_SHORT) - 2) if isinstance(cells, str) else cells))
    _print_full_width(console, table)
    for note in footnotes:
        console.print(note, highlight=False, soft_wrap=True)


def _print_full_width(console, table) -> None:
    """Never cut numbers to fit a narrow terminal (or an 80-column CI log): print at full width."""
    from rich.measure import Measurement

    needed = Measurement.get(console, console.options.update_width(1000), table).maximum
    narrow = console.width
    console.width = max(narrow, needed)
    try:
        console.print(table)
    finally:
        console.width = narrow
