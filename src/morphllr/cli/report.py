"""CLI commands (placeholder until this stage lands)."""
from . import app  # noqa: F401
