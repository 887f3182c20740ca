"""The ``morphllr`` command line: one module per pipeline stage, named after it.

:mod:`~morphllr.cli.application` holds the Typer app and :func:`main` (the entry point
``morphllr = "morphllr.cli:main"``); each stage module registers its commands on the app when
imported, here in the order ``morphllr --help`` lists them.  Heavy libraries (torch, galsim,
matplotlib) are imported inside the commands, so that ``morphllr --help`` answers instantly.
"""

from __future__ import annotations

from morphllr.cli import train  # noqa: F401  train, ensemble
from morphllr.cli import score  # noqa: F401  score
from morphllr.cli import data  # noqa: F401  prepare, subset, check
from morphllr.cli import galaxies  # noqa: F401  degrade, fit-sersic, archetypes, sky-patches, mock
from morphllr.cli import synth  # noqa: F401  synth, demo
from morphllr.cli import compare  # noqa: F401  compare
from morphllr.cli.application import app, main

__all__ = ["app", "main"]
