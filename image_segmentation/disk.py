"""The local folders a stage writes into: checked before any work, removed again when a failed
run leaves them empty, and a full disk told in one line instead of a traceback."""

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from image_segmentation.errors import StageError

_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


@contextlib.contextmanager
def usable_folder(path: Path, option: str) -> Iterator[None]:
    """Make `path` if missing and check that it can be written, before any work; on the
    way out remove the folders made here that are still empty, so a failed run leaves none."""
    made = [folder for folder in (path, *path.parents) if not folder.exists()]  # deepest first
    try:
        if path.exists() and not path.is_dir():
            raise StageError(f"{option} {path} is a file, not a folder")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StageError(f"cannot create {option} {path}: {error.strerror}") from None
        if os.statvfs(path).f_flag & os.ST_RDONLY:
            raise StageError(f"{option} {path} is on a read-only filesystem")
        if not os.access(path, os.W_OK | os.X_OK):
            raise StageError(f"{option} {path} is not writable by this user")
        yield
    finally:
        for folder in made:
            try:
                folder.rmdir()
            except OSError:  # not empty (or never made): everything above it stays too
                break


def check_writable_file(path: Path, what: str) -> None:
    """Refuse, before any work, a file that could not be written when the work is done: one
    that is a folder, or whose nearest existing folder is a file, read-only or not ours to
    write. Nothing is created."""
    path = Path(path)
    if path.is_dir():
        raise StageError(f"{what} {path} is a folder, not a file")
    existing = next(folder for folder in path.parents if folder.exists())
    if not existing.is_dir():
        raise StageError(f"{what} {path} cannot be written: {existing} is a file")
    if os.statvfs(existing).f_flag & os.ST_RDONLY:
        raise StageError(f"{what} {path} cannot be written: {existing} is read-only")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise StageError(f"{what} {path} cannot be written: {existing} is not writable")


def file_size(path: Path) -> int:
    """The size of a file that may not exist (0 then)."""
    return path.stat().st_size if path.exists() else 0


def check_free_space(needs: list[tuple[Path, int]], name: str) -> None:
    """Refuse to start when a filesystem has less free space than the bytes of file `name` bound
    for it.

    Needs on one filesystem add up: the download stays until its copy in the output is complete.
    """
    per_device: dict[int, tuple[Path, int]] = {}
    for folder, amount in needs:
        device = folder.stat().st_dev
        first, total = per_device.get(device, (folder, 0))
        per_device[device] = (first, total + amount)
    for folder, amount in per_device.values():
        free = shutil.disk_usage(folder).free
        if amount > free:
            raise StageError(
                f"not enough space in {folder}: {name} needs {amount} bytes there, "
                f"{free} are free; free some space or choose another --output-dir/--archive-dir"
            )


@contextlib.contextmanager
def disk_full_error(path: Path, needed: int | None) -> Iterator[None]:
    """Turn a full disk (or a file size limit) while writing `path` into one clear error."""
    try:
        yield
    except OSError as error:
        if error.errno not in _DISK_FULL:
            raise
        free = shutil.disk_usage(path.parent).free
        need = f", {needed} needed" if needed is not None else ""
        raise StageError(
            f"cannot write {path}: {error.strerror} ({free} bytes free in {path.parent}{need}); "
            "free some space or choose another folder, then run again"
        ) from None
