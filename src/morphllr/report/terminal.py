"""The comparison in the terminal: the ranking table, the stability line and the sky-split table (rich)."""

from __future__ import annotations

from morphllr.report.formatting import (MARK_LEGEND, Footnotes, fmt, matched_delta, matched_reason, multi_pair,
                                       plus_minus, sky_split_rows, stability_mark, value_or_empty)

#: the sky-split table's columns in the terminal
SKY_HEADERS_SHORT = ("set", "sky LLR/px\n[nats/pixel]", "95% interval\n[nats/pixel]", "share\n[% of LLR]",
                     "sky px\n[% of pixels]", "AUROC\nsky", "AUROC\nrest")


#: the ranking table's columns in the terminal (units in the headers: LLR in nats per image)
RANKING_HEADERS = ("#", "set", "n", "mean LLR\n[nats/image]", "95% interval\n[nats/image]",
                   "ΔLLR vs ref ± 1σ\n[nats/image]", "matched ΔLLR ± 1σ\n[nats/image]", "AUROC\nvs ref")
MODEL_SIGMA_HEADER = "model σ\n[nats/image]"


def ranking_rows(summary: dict) -> tuple[list[str], list[list[str]], list[str]]:
    """The terminal ranking's headers, formatted rows and footnotes (an empty cell is ``– (a)``, explained once)."""
    notes = Footnotes()
    multi = multi_pair(summary)
    headers = list(RANKING_HEADERS)
    if multi:
        headers[-1:-1] = [MODEL_SIGMA_HEADER]
    rows = []
    for rank, name in enumerate(summary["ranking"], 1):
        e = summary["sets"][name]
        is_ref = name == summary["reference"]
        md, me = matched_delta(summary, name)
        ci = e.get("ci95")
        cells = [str(rank), name + (" (ref)" if is_ref else ""), str(e["n"]),
                 value_or_empty(e.get("mean_llr"), fmt, "not computed", notes),
                 value_or_empty(ci, lambda v: f"[{fmt(v[0])}, {fmt(v[1])}]", "not computed", notes),
                 "0 (ref)" if is_ref else plus_minus(e.get("delta_llr"), e.get("delta_llr_err"), "not computed", notes),
                 "0 (ref)" if is_ref else plus_minus(md, me, matched_reason(summary), notes)]
        if multi:
            cells.append("ref" if is_ref else
                         value_or_empty(e.get("model_std"), lambda v: f"{fmt(v, 3)} {stability_mark(e, is_ref)}",
                                        "not computed", notes))
        cells.append(value_or_empty(e.get("auroc_vs_reference"), lambda v: fmt(v, 3), "not computed", notes))
        rows.append(cells)
    return headers, rows, notes.lines()


def print_ranking(summary: dict, console=None) -> None:
    """Print the ranking table in the terminal (rich).

    Args:
        summary: the content of summary.json.
        console: a rich Console (default: a new one on stdout).
    """
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = console or Console()
    # A light box and no wrapping keep the whole table legible in an 80-column terminal or CI log.
    table = Table(title=f"LLR ranking (reference: {summary['reference']}; higher = more realistic)",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    headers, rows, footnotes = ranking_rows(summary)
    caption = ("LLR = log p_obs − log p_arch per image; ± = 1σ bootstrap error over galaxies; AUROC = chance that an "
               "image of the set has a higher LLR than one of the reference (0.5 = alike).")
    if multi_pair(summary):
        caption += (f" model σ = spread of ΔLLR over the {summary.get('model_pairs')} model pairs; " + MARK_LEGEND)
    table.caption = caption
    table.caption_justify = "left"
    for col in headers:  # Text: "[nats/image]" or a set name in brackets is not rich markup
        table.add_column(Text(col), justify="left" if col == "set" else "right", no_wrap=True)
    for cells in rows:
        table.add_row(*map(Text, cells))
    _print_full_width(console, table)
    for note in footnotes:
        console.print(note, highlight=False, soft_wrap=True)
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
            + (f"\npaired ΔLLR vs the reference over the same galaxies (what the mark judges) [nats per image]: "
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
    from rich.text import Text

    rows, footnotes = sky_split_rows(summary)
    if not rows:
        return
    console = console or Console()
    table = Table(title="LLR split: empty sky vs the rest", box=box.SIMPLE_HEAD, pad_edge=False,
                  caption="sky LLR/px in nats per empty-sky pixel; ≈ 0 (as in the reference) with AUROC sky ≈ 0.5 = "
                          "the background cancels. share = mean sky LLR / mean LLR; sky px = empty-sky share of "
                          "the model pixels.", caption_justify="left")
    for col in SKY_HEADERS_SHORT:
        table.add_column(Text(col), justify="left" if col == "set" else "right", no_wrap=True)
    for label, cells in rows:
        cells = [cells] + [""] * (len(SKY_HEADERS_SHORT) - 2) if isinstance(cells, str) else cells
        table.add_row(Text(label), *map(Text, cells))
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
