"""The ``morphllr`` Typer application and its one boundary to the terminal.

:data:`app` is the application every stage module of :mod:`morphllr.cli` registers its commands on;
:func:`main` runs it and turns every outcome into an exit status and one readable line (see
:func:`main`).  Also the option factories shared by several commands (``--devices``,
``--num-nodes``, ``--accelerator`` of score and compare).
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import signal
import sys
from typing import Iterator

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


#: Exit statuses of the command line.
EXIT_OK, EXIT_INTERNAL, EXIT_USER, EXIT_INTERRUPTED = 0, 1, 2, 130
#: OS errors that come from the user's files or machine (a bad path, permissions, a full disk), not from a bug.
_USER_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EISDIR, errno.ENOTDIR,
                errno.ENAMETOOLONG, errno.ENOENT, errno.EEXIST, errno.ENOTEMPTY, errno.EMFILE, errno.ENFILE,
                errno.EFBIG, errno.ELOOP, errno.EXDEV, errno.EIO}
_OS_FIX = {errno.ENOSPC: "free some disk space or write to another disk",
           errno.EDQUOT: "free some space (disk quota exceeded) or write elsewhere",
           errno.EACCES: "check the permissions or choose another path",
           errno.EPERM: "check the permissions or choose another path",
           errno.EROFS: "the file system is read-only; choose another path",
           errno.EISDIR: "give a file name, not a folder",
           errno.ENOTDIR: "a part of the path is a file, not a folder; check the path",
           errno.ENAMETOOLONG: "use a shorter file name",
           errno.ENOENT: "check the path",
           errno.EFBIG: "the file is too large for this file system; write elsewhere"}


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``morphllr`` and ``python -m morphllr``: always ends with :func:`sys.exit`.

    The one boundary between the library and the person at the terminal:

    * success: exit 0;
    * a user mistake (:class:`MorphllrError`, a bad option value, a missing argument, an
      unusable file or folder, a full disk): one line ``error: ...`` on stderr, exit 2;
    * Ctrl-C: one line, exit 130 (outputs are written atomically, so nothing half-written stays);
    * anything else is a bug: the traceback, then ``internal error, please report: ...``, exit 1.

    Args:
        argv: the arguments after the program name (None: ``sys.argv[1:]``).

    Returns:
        never returns; raises SystemExit with the exit status.
    """
    sys.exit(run(argv))


def run(argv: list[str] | None = None) -> int:
    """Run the app and turn every outcome into an exit status (see :func:`main`).

    Args:
        argv: the arguments after the program name (None: ``sys.argv[1:]``).

    Returns:
        the exit status.
    """
    from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError

    from morphllr.errors import MorphllrError

    args = list(sys.argv[1:] if argv is None else argv)
    try:
        with _interrupts_never_swallowed(), _warnings_as_lines():
            status = app(args=args, prog_name="morphllr", standalone_mode=False)
    except MorphllrError as exc:
        return _error(str(exc))
    except NoArgsIsHelpError:
        app(args=["--help"], prog_name="morphllr", standalone_mode=False)
        return EXIT_USER
    except UsageError as exc:
        return _error(_usage_message(exc, args))
    except ClickException as exc:
        return _error(exc.format_message())
    except (KeyboardInterrupt, typer.Abort):
        status = EXIT_INTERRUPTED
    except OSError as exc:
        message = _os_error_message(exc)
        if message is None:
            return _internal_error(exc)
        if message == "":
            if not _stdout_closed():  # a broken pipe to anything but our own output is a bug
                return _internal_error(exc)
            # the reader of our output went away (`morphllr ... | head`): stop quietly, as the shell expects
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - no flush error at exit either
            return 128 + signal.SIGPIPE
        return _error(message)
    except MemoryError as exc:
        return _error(f"out of memory{f' ({exc})' if str(exc) else ''}; use a smaller --batch-size or fewer "
                      "--workers, smaller inputs, or a machine with more memory")
    except Exception as exc:  # noqa: BLE001 - the last resort: a bug
        return _internal_error(exc)
    # standalone_mode=False returns the command's result, or the status of an Exit (130 after Ctrl-C)
    status = EXIT_OK if status is None or not isinstance(status, int) else status
    if status == EXIT_INTERRUPTED:
        typer.secho("interrupted (Ctrl-C): stopped; nothing half-written was kept", fg=typer.colors.YELLOW,
                    err=True)
    return status


@contextlib.contextmanager
def _interrupts_never_swallowed() -> Iterator[None]:
    """Re-deliver a Ctrl-C that Python swallowed.

    A KeyboardInterrupt raised while Python runs a ``__del__`` method or a weakref callback
    (garbage collection happens anywhere, e.g. in h5py or concurrent.futures) cannot propagate:
    Python prints "Exception ignored ... KeyboardInterrupt" and carries on, so the command would
    finish as if nothing had happened.  This hook sends such an interrupt again to the main
    thread from a helper thread, so that it lands at the next ordinary line of code.

    Returns:
        (yields) nothing; the previous :data:`sys.unraisablehook` is restored afterwards.
    """
    import _thread
    import threading

    previous = sys.unraisablehook
    timers: list = []

    def hook(unraisable) -> None:
        if issubclass(unraisable.exc_type, KeyboardInterrupt):
            # from another thread, a moment later: raised here it would be swallowed again
            timer = threading.Timer(0.01, _thread.interrupt_main)
            timer.daemon = True
            timers.append(timer)
            timer.start()
            return
        previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = previous
        for timer in timers:  # the command has ended (interrupted or not): nothing left to re-deliver
            timer.cancel()


@contextlib.contextmanager
def _warnings_as_lines() -> Iterator[None]:
    """Show each :class:`~morphllr.errors.MorphllrWarning` as one line ``warning: ...`` on stderr.

    Returns:
        (yields) nothing; other warnings keep Python's format, and the previous hook is restored.
    """
    import warnings

    from morphllr.errors import MorphllrWarning

    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if issubclass(category, MorphllrWarning):
            typer.secho(f"warning: {' '.join(str(message).split())}", fg=typer.colors.YELLOW, err=True)
        else:
            previous(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = previous


def _error(message: str) -> int:
    """Print one ``error:`` line (newlines folded) and return the user-error status."""
    line = " ".join(str(message).split())
    typer.secho(f"error: {line}", fg=typer.colors.RED, err=True)
    return EXIT_USER


def _usage_message(exc, args: list[str]) -> str:
    """One line for a click usage error: the option, the value given, what is valid and where to read more.

    Args:
        exc: the click UsageError (a BadParameter knows its option).
        args: the command line, to quote the value given.

    Returns:
        the message (without ``error:``).
    """
    from typer._click.exceptions import BadParameter, MissingParameter

    ctx = getattr(exc, "ctx", None)
    command = ctx.command_path if ctx is not None else "morphllr"
    param = getattr(exc, "param", None)
    text = exc.format_message()
    opts = list(getattr(param, "opts", None) or [])
    if isinstance(exc, BadParameter) and not isinstance(exc, MissingParameter) and param is not None and opts:
        value = _given_value(args, opts) if getattr(param, "param_type_name", "") == "option" else None
        name = opts[0] if getattr(param, "param_type_name", "") == "option" else (param.human_readable_name or opts[0])
        reason = exc.message
        valid = _valid_range(param)
        try:
            if valid and value is not None and not math.isfinite(float(value)):
                reason = "must be a finite number"
        except ValueError:
            pass
        text = f"{name}{f' {value}' if value is not None else ''}: {reason.rstrip('.')}"
        if valid:
            text += f" (valid: {valid})"
    return f"{text.rstrip('.')}; see `{command} --help`"


def _given_value(args: list[str], opts: list[str]) -> str | None:
    """The word that followed an option's last use (``--opt VALUE`` or ``--opt=VALUE``): the one click kept."""
    found = None
    for i, word in enumerate(args):
        for opt in opts:
            if word == opt and i + 1 < len(args):
                found = args[i + 1]
            elif word.startswith(opt + "=") and opt.startswith("--"):
                found = word[len(opt) + 1:]
    return found


def _valid_range(param) -> str | None:
    """``8<=x<=4096`` for a numeric option declared with ``min=``/``max=``."""
    low, high = getattr(param, "min", None), getattr(param, "max", None)
    if low is None and high is None:
        return None
    low, high = (v if v is None or isinstance(v, int) else f"{v:g}" for v in (low, high))
    if low is None:
        return f"x<={high}"
    if high is None:
        return f"x>={low}"
    return f"{low}<=x<={high}"


def _stdout_closed() -> bool:
    """True when standard output's reader is gone (writing to it raises a broken pipe)."""
    try:
        sys.stdout.flush()
        os.write(sys.stdout.fileno(), b"")
    except (BrokenPipeError, OSError, ValueError):
        return True
    import select

    try:  # a pipe whose reader closed polls as an error / hang-up
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLERR | select.POLLHUP)
        return bool(poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


def _os_error_message(exc: OSError) -> str | None:
    """One line naming the file for an OS error caused by the user's files or machine.

    Args:
        exc: the error (h5py's OSErrors carry the file name and errno only in their text).

    Returns:
        the message; "" for a closed pipe (``morphllr ... | head``: stop quietly); None for an OS error
        that is not the user's (a bug: shown with its traceback).
    """
    import re

    number = exc.errno
    text = str(exc)
    found = re.search(r"errno = (\d+)", text)
    if number is None and found:
        number = int(found.group(1))
    if number == errno.EPIPE:
        return ""
    name = exc.filename
    found = re.search(r"(?:file)?name = '([^']*)'", text)
    if name is None and found:
        name = found.group(1)
    if number not in _USER_ERRNOS and name is None:
        return None
    reason = exc.strerror or (os.strerror(number) if number else text)
    where = f"{os.fsdecode(name)}" + (f" -> {os.fsdecode(exc.filename2)}" if exc.filename2 else "") if name else \
        "a file"
    return f"{where}: {reason}; {_OS_FIX.get(number, 'check the path, its permissions and the free disk space')}"


def _internal_error(exc: BaseException) -> int:
    """A bug: the full traceback, then one line asking for a report."""
    import traceback

    from morphllr import __version__

    traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    typer.secho(f"internal error, please report: {type(exc).__name__}: {exc} (morphllr {__version__}; include the "
                "command and the traceback above)", fg=typer.colors.RED, err=True)
    return EXIT_INTERNAL


def devices_option():
    """``--devices`` of score and compare (checked by :func:`morphllr.distributed.parse_devices`, as train's)."""
    return typer.Option("1", "--devices", help="Processes (CPU: started by morphllr, gloo) or GPUs per node (NCCL; "
                        "a count, 'auto' = all, or indices such as 0,1); under torchrun / srun the launcher's "
                        "processes are joined.")


def num_nodes_option():
    """``--num-nodes`` of score and compare (the same range as train's)."""
    return typer.Option(1, "--num-nodes", min=1, max=100_000, help="Nodes (with torchrun / srun, or NODE_RANK, "
                        "MASTER_ADDR and MASTER_PORT set on every node).")


def accelerator_option():
    """``--accelerator`` of score and compare."""
    return typer.Option("auto", "--accelerator", help="auto (CUDA when a GPU is visible, else CPU), cpu, or cuda "
                        "(= gpu).")
