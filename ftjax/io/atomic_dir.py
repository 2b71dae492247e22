"""Write an output directory (or file) whole or not at all, and never over what is already there.

    check_target(out, overwrite=False)          refuse before any work: OutputExistsError if
                                                `out` is a file, or a non-empty directory and
                                                overwrite is False
    with atomic_dir(out, overwrite=False) as tmp:
        ...write every file into tmp...         tmp replaces `out` only when the block ends
                                                without an exception

The files are written into a fresh hidden sibling of `out` (`.NAME.tmp-<pid>-<random>`, same
filesystem, so the final rename is cheap). When the block fails, the sibling is removed and `out`
is exactly as it was. When it succeeds, the sibling is renamed to `out`: a missing or empty `out`
is replaced by one atomic rename; with overwrite, a non-empty `out` is first renamed aside
(`.NAME.old-...`), the new directory renamed into place, and only then the old one deleted (if
the second rename fails the old one is renamed back). A process killed with SIGKILL mid-write can
leave a hidden `.NAME.tmp-*` sibling behind; nothing reads it, and `out` is untouched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path


class OutputExistsError(FileExistsError):
    """The output path holds something an export would destroy; the message says what."""


def check_target(out: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """`out` as a Path if a directory may be written there; OutputExistsError otherwise."""
    out = Path(out)
    if out.is_symlink():
        raise OutputExistsError(f"{out} is a symbolic link; write to the directory it points to "
                                f"or to a new path")
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out} exists and is not a directory")
    if not overwrite and out.is_dir() and any(out.iterdir()):
        raise OutputExistsError(f"{out} is not empty and nothing is written over existing files: "
                                f"choose a new directory, or pass --overwrite (overwrite=True) "
                                f"to replace it")
    return out


def check_file_target(out: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """`out` as a Path if a file may be written there; OutputExistsError otherwise."""
    out = Path(out)
    if out.is_dir() or out.is_symlink():
        raise OutputExistsError(f"{out} is a directory or a symbolic link, not a file to write")
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} exists: choose a new path, or pass --overwrite "
                                f"(overwrite=True) to replace it")
    return out


def _sibling(out: Path, kind: str) -> Path:
    return out.with_name(f".{out.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary directory beside `out`; it becomes `out` when the block ends
    without an exception (see the module docstring), and is removed when it raises."""
    out = check_target(out, overwrite=overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(out, "tmp")
    tmp.mkdir()
    try:
        yield tmp
        # Checked again: something may have appeared at `out` while the files were written.
        check_target(out, overwrite=overwrite)
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace(new: Path, out: Path) -> None:
    if not out.exists() or not any(out.iterdir()):
        os.replace(new, out)  # rename(2) replaces a missing or empty directory atomically
        return
    old = _sibling(out, "old")
    os.replace(out, old)
    try:
        os.replace(new, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(out: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside the file `out`; it replaces `out` (one rename) when the
    block ends without an exception and is removed when it raises. An existing `out` is
    refused (OutputExistsError) unless `overwrite`."""
    out = check_file_target(out, overwrite=overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(out, "tmp")
    try:
        yield tmp
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
