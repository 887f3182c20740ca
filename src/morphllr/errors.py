"""The one exception type users see.

Every check on user input raises :class:`MorphllrError` with a message that names the
offending file (or argument) and says how to fix it.  The command line prints that
message on one line and exits with status 2 instead of showing a traceback.
"""

from __future__ import annotations


class MorphllrError(ValueError):
    """Bad input, a bad file or an impossible request, explained for a person.

    Subclasses :class:`ValueError` so that library users can catch either.
    """


def require(condition: bool, message: str) -> None:
    """Raise :class:`MorphllrError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise MorphllrError(message)


class MorphllrWarning(UserWarning):
    """Something the user should know about their input that does not stop the run.

    The command line prints each as one line ``warning: ...`` on stderr.
    """
