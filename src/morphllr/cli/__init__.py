"""The ``morphllr`` command line.

One sub-module per pipeline stage registers its commands on :data:`app`; heavy
libraries (torch, galsim, matplotlib) are imported inside the commands so that
``morphllr --help`` answers instantly.
"""

from __future__ import annotations

import sys

import typer

app = typer.Typer(
    name="morphllr",
    help=(
        "How realistic is the morphology of simulated galaxies?\n\n"
        "morphllr trains two PixelCNN++ density models, one on real survey cutouts (p_obs) and one on "
        "smooth Sérsic archetypes of the same galaxies (p_arch), and scores any image x by the "
        "log-likelihood ratio LLR(x) = log p_obs(x) - log p_arch(x) (Zanisi et al. 2021). "
        "Higher mean LLR over a set = closer to the observations.\n\n"
        "Typical run: prepare -> fit-sersic -> archetypes -> train (twice) -> compare.  "
        "Try `morphllr demo` for the whole thing on generated data."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="rich",
)

# Each stage's commands.  Imported for their side effect of registering on `app`.
from . import engine as _engine  # noqa: E402,F401  train, score
from . import data as _data  # noqa: E402,F401  prepare
from . import galaxies as _galaxies  # noqa: E402,F401  fit-sersic, archetypes, sky-patches, mock
from . import universe as _universe  # noqa: E402,F401  synth, demo
from . import report as _report  # noqa: E402,F401  compare


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, turning :class:`MorphllrError` into one clear line."""
    from ..errors import MorphllrError

    try:
        app(args=argv, standalone_mode=True)
    except MorphllrError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.secho("interrupted; nothing half-written was kept", fg=typer.colors.YELLOW, err=True)
        sys.exit(130)
