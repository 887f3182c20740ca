"""Safe outputs: claim every output before the work, write it under a temporary name, rename at the end.

One mechanism, used by every command and by the Python functions behind them:

* :func:`claim_output` / :func:`claim_outputs` (context managers) are taken at the start of a command,
  before any work.  They refuse, each with one :class:`MorphllrError` line naming the option, the path and
  the fix: an existing output without ``overwrite``; an output that is one of the command's inputs, holds
  one, or lies inside an input folder (even with ``overwrite``); a folder where a file is expected and vice
  versa; an output under a regular file; a name too long for the file system; a parent folder that cannot
  be created or written.  Then they take an exclusive, non-blocking ``flock`` on ``.NAME.lock`` beside the
  output, so a second run writing the same output fails at once (the kernel drops the lock when a process
  dies, even by SIGKILL), and delete what dead runs left for that output (``.NAME.*.tmp``, ``.NAME.*.old``).
* :func:`atomic_file` / :func:`atomic_dir` write to ``.NAME.XXXXXXXX.tmp`` in the destination's own folder
  (same file system, so the final ``os.replace`` is atomic), rename it when complete and delete it on error.
  The result gets the permissions the umask implies (``mkstemp``/``mkdtemp`` alone give 0600/0700).  They
  claim their own path, so every writer holds the lock, even a library caller who claimed nothing.

Where: each CLI command claims its outputs first thing (``ctx.with_resource(claim_output(...))``, released
when the command ends); the library function it calls is decorated with :func:`claims`, so Python callers
get the same checks and lock before its work starts.  Claims are re-entrant within a thread: the second
claim of a path re-runs the cheap checks but reuses the lock.  The lock file is removed at the end; after a
SIGKILL it stays (unlocked) until the next run to that output.
"""

from __future__ import annotations

import contextlib
import functools
import glob as globlib
import inspect
import itertools
import os
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

try:
    import fcntl
except ImportError:  # not POSIX: no advisory locks; every other check still applies
    fcntl = None  # type: ignore[assignment]

from morphllr.errors import MorphllrError

KINDS = ("file", "dir")
EXISTING = ("refuse", "update", "keep")
# The longest hidden name written beside NAME: ".NAME.XXXXXXXX.tmp" (mkstemp's 8 random characters).
_TEMP_OVERHEAD = len("..XXXXXXXX.tmp")
_LOCK_RETRIES = 50

_held: dict[tuple[int, str], "_Lock"] = {}  # (thread, output) -> lock held by this process
_held_guard = threading.Lock()


# ---------------------------------------------------------------------- claims
def claim_output(path: str | os.PathLike, *, option: str = "--out", inputs: Iterable[Any] = (),
                 overwrite: bool = False, kind: str = "file", existing: str = "refuse"):
    """Claim one output for the duration of a ``with`` block (see :func:`claim_outputs`).

    Args:
        path: the output file or folder.
        option: the command-line option that named it, for messages (``--out``, ``--maps``, ``IMAGESET``).
        inputs: everything the command reads (paths, ``FILE.h5:dataset``, globs, objects with a ``path``).
        overwrite: replace an existing output.
        kind: ``"file"`` or ``"dir"``.
        existing: ``"refuse"`` (an existing output needs ``overwrite``), ``"update"`` (the output must exist
            and is changed in place, e.g. fit-sersic's catalogue) or ``"keep"`` (an existing folder may be
            continued; the caller decides, e.g. ``train --resume``).

    Returns:
        a context manager yielding the output ``Path``.
    """
    return _claim_one(path, option, inputs, overwrite, kind, existing)


@contextlib.contextmanager
def _claim_one(path, option, inputs, overwrite, kind, existing) -> Iterator[Path]:
    with claim_outputs([(option, path)], inputs=inputs, overwrite=overwrite, kind=kind, existing=existing) as paths:
        yield paths[0]


@contextlib.contextmanager
def claim_outputs(outputs: Sequence[tuple[str, str | os.PathLike | None]], *, inputs: Iterable[Any] = (),
                  overwrite: bool = False, kind: str = "file", existing: str = "refuse") -> Iterator[list[Path]]:
    """Check and lock several outputs of one command (e.g. ``score --out --maps``) before any work.

    Every output is checked (see the module docstring) before any folder is created or lock taken, and the
    outputs must differ from each other.  While the block runs, each output's ``.NAME.lock`` is held; at the
    end the lock files are removed, and so are parent folders the claim created if they stayed empty.

    Args:
        outputs: ``(option, path)`` pairs; a ``None`` path (an output not asked for) is skipped.
        inputs, overwrite, kind, existing: as in :func:`claim_output`.

    Returns:
        a context manager yielding the claimed paths (``Path``), in order.
    """
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}: expected one of {KINDS}")
    if existing not in EXISTING:
        raise ValueError(f"existing={existing!r}: expected one of {EXISTING}")
    read = input_paths(inputs)
    targets = [_check(Path(p), option, read, overwrite, kind, existing) for option, p in outputs if p is not None]
    for a, b in itertools.combinations(targets, 2):
        if a.real == b.real or _within(a.real, b.real) or _within(b.real, a.real):
            raise MorphllrError(f"{b.option} {b.path}: is the same place as {a.option} {a.path}; "
                                "give each output its own name")
    with contextlib.ExitStack() as stack:
        for target in targets:
            stack.enter_context(_hold(target))
        yield [t.path for t in targets]


def claims(outputs: dict[str, str] | Callable[[dict], list], *, inputs: Sequence[str] | Callable[[dict], list] = (),
           overwrite: str | None = "overwrite", kind: str = "file", existing: str = "refuse"):
    """Decorator: claim a function's outputs, named by its parameters, before its body runs.

    The library functions behind the commands use it, so Python callers get the same checks and
    lock as the command line (where the command has claimed already, the claim is re-entered).

    Args:
        outputs: parameter name -> option label (``{"out": "--out"}``; a ``None`` value is skipped), or
            a callable(arguments dict) -> list of ``(option, path)``.
        inputs: names of parameters holding inputs (a list/tuple value counts item by item), or a
            callable(arguments dict) -> list of inputs.
        overwrite: name of the parameter that allows replacing (None: never).
        kind, existing: as in :func:`claim_output`.

    Returns:
        the decorator.
    """
    def decorate(func):
        signature = inspect.signature(func)

        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            arguments = bound.arguments
            if callable(outputs):
                pairs = outputs(arguments)
            else:
                pairs = [(option, arguments[name]) for name, option in outputs.items()]
            if callable(inputs):
                read = list(inputs(arguments))
            else:
                read = []
                for name in inputs:
                    value = arguments[name]
                    read.extend(value if isinstance(value, (list, tuple)) else [value])
            allowed = bool(arguments[overwrite]) if overwrite else False
            with claim_outputs(pairs, inputs=read, overwrite=allowed, kind=kind, existing=existing):
                return func(*args, **kwargs)

        return wrapper

    return decorate


def input_paths(inputs: Iterable[Any]) -> list[Path]:
    """The existing files and folders a command reads, as absolute paths.

    Args:
        inputs: paths, ``FILE.h5:group/dataset`` names, globs, objects with a ``path`` attribute
            (LoadedModel, ImageSet) or anything else (arrays: ignored).  Missing paths are ignored:
            the command itself says that they are missing.

    Returns:
        absolute paths (not resolved).
    """
    found: list[Path] = []
    for item in inputs:
        if item is None:
            continue
        if not isinstance(item, (str, os.PathLike)):
            item = getattr(item, "path", None)
            if not isinstance(item, (str, os.PathLike)):
                continue
        text = os.fspath(item)
        if not text:
            continue
        if os.path.lexists(text):
            found.append(Path(os.path.abspath(text)))
        elif any(ch in text for ch in "*?["):
            found.extend(Path(os.path.abspath(p)) for p in globlib.glob(text, recursive=True))
        else:  # FILE.h5:group/dataset names a file and a dataset inside it
            for match in re.finditer(":", text):
                if os.path.isfile(text[:match.start()]):
                    found.append(Path(os.path.abspath(text[:match.start()])))
                    break
    return found


@dataclass
class _Target:
    path: Path  # as given (messages)
    option: str
    where: Path  # the directory entry that will be replaced: resolved parent / name
    real: Path  # where, with a symlinked output followed
    missing: list[Path] = field(default_factory=list)  # parent folders to create, outermost first


def _check(path: Path, option: str, inputs: list[Path], overwrite: bool, kind: str, existing: str) -> _Target:
    """All checks of one output that need no lock; nothing is created."""
    what = f"{option} {path}"
    absolute = Path(os.path.abspath(path))
    name = absolute.name
    if not name:
        raise MorphllrError(f"{what}: names no {kind}; give a {'file' if kind == 'file' else 'folder'} name")
    # the nearest existing ancestor: it must be a folder we may write in
    missing: list[Path] = []
    base = absolute.parent
    while not os.path.lexists(base):
        missing.insert(0, base)
        base = base.parent
    if not base.is_dir():
        raise MorphllrError(f"{what}: {base} is a file, not a folder; choose an {option} in a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise MorphllrError(f"{what}: folder {base} is not writable; choose another {option}")
    name_max, path_max = _limits(base)
    for part in [m.name for m in missing]:
        if len(os.fsencode(part)) > name_max:
            raise MorphllrError(f"{what}: folder name {part[:40]}... is {len(os.fsencode(part))} bytes, more than "
                                f"the file system's {name_max}; choose a shorter name")
    n_bytes = len(os.fsencode(name))
    if n_bytes + _TEMP_OVERHEAD > name_max:
        raise MorphllrError(f"{what}: the name is {n_bytes} bytes; at most {name_max - _TEMP_OVERHEAD} fit (the "
                            f"file system allows {name_max}, and morphllr first writes to a hidden temporary name "
                            "14 bytes longer); choose a shorter name")
    where = Path(os.path.realpath(base)).joinpath(*[m.name for m in missing], name)
    if len(os.fsencode(str(where))) + _TEMP_OVERHEAD >= path_max:
        raise MorphllrError(f"{what}: the full path is longer than the file system's {path_max} bytes; "
                            "choose a shorter path")
    real = Path(os.path.realpath(where))
    present = os.path.lexists(where)
    if present and kind == "file" and where.is_dir():
        raise MorphllrError(f"{what}: is a folder, but a file is expected here; give a file name "
                            f"(e.g. inside it: {path / 'NAME'})")
    if present and kind == "dir" and not where.is_dir():
        raise MorphllrError(f"{what}: is a file, but a folder is expected here; choose another {option}")
    if existing == "update" and not present:
        raise MorphllrError(f"{what}: not found; give an existing file")
    for source in inputs:
        source_real = Path(os.path.realpath(source))
        if existing == "update" and source_real == real:
            continue
        if source_real in (real, where) or _same_inode(where, source):
            raise MorphllrError(f"{what}: is also an input of this command ({source}); morphllr never writes onto "
                                f"its inputs, even with --overwrite - choose another {option}")
        if _within(source_real, real):
            raise MorphllrError(f"{what}: holds the input {source}; writing it would replace that input - "
                                f"choose another {option}")
        if source_real.is_dir() and _within(real, source_real):
            raise MorphllrError(f"{what}: lies inside the input folder {source}; choose an {option} outside it")
    if kind == "dir" and existing != "update":
        cwd = Path(os.path.realpath(os.getcwd()))
        if cwd == real or _within(cwd, real):
            raise MorphllrError(f"{what}: holds the current folder; choose another {option}")
    # last: --overwrite must not be suggested when it would not help
    if existing == "refuse" and present and not overwrite:
        raise MorphllrError(f"{what}: already exists; pass --overwrite to replace it, or choose another {option}")
    return _Target(path=path, option=option, where=where, real=real, missing=missing)


def _limits(folder: Path) -> tuple[int, int]:
    """(longest file name, longest path) in bytes on the file system holding ``folder``."""
    limits = []
    for key, default in (("PC_NAME_MAX", 255), ("PC_PATH_MAX", 4096)):
        try:
            value = os.pathconf(folder, key)
        except (OSError, ValueError, AttributeError):
            value = -1
        limits.append(value if value and value > 0 else default)
    return limits[0], limits[1]


def _within(inner: Path, outer: Path) -> bool:
    return inner != outer and inner.is_relative_to(outer)


def _same_inode(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


@contextlib.contextmanager
def _hold(target: _Target) -> Iterator[None]:
    """Create the parent folders, lock the output, remove dead runs' temporaries; undo at the end."""
    key = (threading.get_ident(), str(target.where))
    with _held_guard:
        nested = key in _held
    if nested:  # this thread already holds it (the CLI claimed, now the library function does)
        yield
        return
    created = _make_parents(target)
    try:
        lock = _acquire(target)
    except BaseException:
        _remove_empty(created)
        raise
    with _held_guard:
        _held[key] = lock
    try:
        _remove_stale(target.where.parent, target.where.name)
        yield
    finally:
        with _held_guard:
            _held.pop(key, None)
        lock.release()
        _remove_empty(created)


def _make_parents(target: _Target) -> list[Path]:
    created = []
    for folder in target.missing:
        try:
            os.mkdir(folder)
        except FileExistsError:
            continue  # another process made it meanwhile
        except OSError as exc:
            _remove_empty(created)
            raise MorphllrError(f"{target.option} {target.path}: cannot create folder {folder} "
                                f"({exc.strerror}); choose another {target.option}") from None
        created.append(folder)
    return created


def _remove_empty(created: list[Path]) -> None:
    """Remove folders a claim created, innermost first, as long as they are empty (a failed run)."""
    for folder in reversed(created):
        try:
            os.rmdir(folder)
        except OSError:
            return


@dataclass
class _Lock:
    fd: int | None
    path: Path
    ident: tuple[int, int] | None
    pid: int

    def release(self) -> None:
        """Remove the lock file, then close it (a run that opened it meanwhile sees a stale inode and retries)."""
        if self.pid != os.getpid() or self.fd is None:  # a forked child never releases its parent's lock
            return
        try:
            st = os.stat(self.path)
            if (st.st_dev, st.st_ino) == self.ident:
                os.unlink(self.path)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None


def _acquire(target: _Target) -> _Lock:
    """Exclusive non-blocking flock on ``.NAME.lock``; the lock path must still name the inode locked."""
    lock_path = target.where.parent / f".{target.where.name}.lock"
    what = f"{target.option} {target.path}"
    for _ in range(_LOCK_RETRIES):
        try:
            target.where.parent.mkdir(parents=True, exist_ok=True)  # a failing run may have removed it
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as exc:
            raise MorphllrError(f"{what}: cannot create the lock file {lock_path} ({exc.strerror}); "
                                f"choose another {target.option}") from None
        if fcntl is None:
            return _Lock(fd, lock_path, _ident(os.fstat(fd)), os.getpid())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise MorphllrError(f"{what}: another morphllr run{holder} is writing it (lock {lock_path}); wait for "
                                f"it to finish, or choose another {target.option}") from None
        except OSError:  # a file system without locks (some network mounts): go on unprotected
            return _Lock(fd, lock_path, _ident(os.fstat(fd)), os.getpid())
        mine = _ident(os.fstat(fd))
        try:
            current = _ident(os.stat(lock_path))
        except FileNotFoundError:
            current = None
        if current == mine:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return _Lock(fd, lock_path, mine, os.getpid())
        os.close(fd)  # a finishing run unlinked the file we locked: lock the current one instead
    raise MorphllrError(f"{what}: could not lock {lock_path} (other runs keep replacing it); try again")


def _ident(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def _read_pid(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
    except (OSError, UnicodeDecodeError):
        return ""
    return f" (pid {text})" if text.isdigit() else ""


def _forget_locks_in_child() -> None:
    """A forked worker must not keep its parent's locks alive after the parent dies."""
    with contextlib.suppress(Exception):
        for lock in _held.values():
            if lock.fd is not None:
                with contextlib.suppress(OSError):
                    os.close(lock.fd)  # the parent's descriptor (and lock) is not affected
                lock.fd = None
        _held.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_locks_in_child)


def _remove_stale(folder: Path, name: str) -> None:
    """Delete ``.NAME.*.tmp`` / ``.NAME.*.old`` of ``name``: we hold its lock, so their writers are dead."""
    # the random part has no dot, so ".a.h5.XXXXXXXX.tmp" (output a.h5) never matches output "a"
    pattern = re.compile(r"\." + re.escape(name) + r"\.[^.]+\.(?:tmp|old)\Z")
    try:
        entries = [e for e in os.scandir(folder) if pattern.match(e.name)]
    except OSError:
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(entry.path)


# ---------------------------------------------------------------------- writing
def umask() -> int:
    """The process umask (read without changing it where /proc allows; threads may write meanwhile)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, overwrite: bool = True, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path; on success rename it to ``path``, on error delete it.

    The path is claimed (:func:`claim_output`) for the duration: locked, checked, stale temporaries removed.

    Args:
        path: final file name.
        overwrite: if False and ``path`` exists, refuse with a MorphllrError.
        mode: permissions of the final file (default ``0o666 & ~umask``, as ``open`` would give).

    Returns:
        (yields) the temporary path to write to.
    """
    path = Path(path)
    with claim_output(path, overwrite=overwrite, kind="file"):
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        except OSError as exc:
            raise MorphllrError(f"cannot write {path}: {exc.strerror}; choose another --out") from None
        os.close(fd)
        tmp_path = Path(tmp)
        try:
            yield tmp_path
            os.chmod(tmp_path, (0o666 & ~umask()) if mode is None else mode)  # mkstemp made it 0600
            os.replace(tmp_path, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp_path.unlink()
            raise


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Hold a Ctrl-C that arrives inside the block until it ends (main thread only; elsewhere a no-op)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list = []
    previous = signal.signal(signal.SIGINT, lambda *args: caught.append(args))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught and callable(previous):
            previous(*caught[0])
        elif caught:
            raise KeyboardInterrupt


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``path``, on error it is removed.

    The path is claimed (:func:`claim_output`) for the duration: locked, checked, stale temporaries removed.

    Args:
        path: final folder name.
        overwrite: replace an existing folder (otherwise refuse with a MorphllrError).
        mode: permissions of the final folder (default ``0o777 & ~umask``, as ``mkdir`` would give).

    Returns:
        (yields) the temporary folder to fill.
    """
    path = Path(path)
    with claim_output(path, overwrite=overwrite, kind="dir"):
        try:
            tmp_path = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        except OSError as exc:
            raise MorphllrError(f"cannot write {path}: {exc.strerror}; choose another --out") from None
        try:
            yield tmp_path
            os.chmod(tmp_path, (0o777 & ~umask()) if mode is None else mode)  # mkdtemp made it 0700
            if os.path.lexists(path):
                # the old folder goes aside under a name the next claim of `path` cleans if we die here
                old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
                # Ctrl-C between the two renames must not lose both results: no SIGINT in between
                with _sigint_deferred():
                    os.replace(path, old / "x")
                    try:
                        os.replace(tmp_path, path)
                    except BaseException:
                        os.replace(old / "x", path)  # put the old result back
                        raise
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp_path, path)
        except BaseException:
            shutil.rmtree(tmp_path, ignore_errors=True)
            raise
