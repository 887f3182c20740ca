"""Write files and folders so that a crash never leaves half an output behind.

Everything morphllr writes goes to a temporary name in the destination's own folder
(same filesystem, so the final ``os.replace`` is atomic) and is renamed only once it
is complete.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import MorphllrError


def _check_parent_writable(path: Path) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.exists():
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MorphllrError(f"cannot create folder {parent} for {path}: {exc.strerror}") from None
    if not os.access(parent, os.W_OK):
        raise MorphllrError(f"cannot write {path}: folder {parent} is not writable; choose another --out")


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path; on success rename it to ``path``, on error delete it.

    Args:
        path: final file name.
        overwrite: if False and ``path`` exists, refuse with a MorphllrError.

    Returns:
        (yields) the temporary path to write to.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise MorphllrError(f"{path} already exists; pass --overwrite to replace it")
    _check_parent_writable(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``path``, on error it is removed.

    Args:
        path: final folder name.
        overwrite: replace an existing folder (otherwise refuse with a MorphllrError).

    Returns:
        (yields) the temporary folder to fill.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise MorphllrError(f"{path} already exists; pass --overwrite to replace it or choose another --out")
    if path.exists() and not path.is_dir():
        raise MorphllrError(f"{path} exists and is not a folder; choose another --out")
    _check_parent_writable(path)
    tmp_path = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp_path
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / "x")
            os.replace(tmp_path, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp_path, path)
    except BaseException:
        shutil.rmtree(tmp_path, ignore_errors=True)
        raise
