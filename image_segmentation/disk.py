"""The local folders a stage writes into: checked before any work, held by one run at a time,
removed again when a failed run leaves them empty, and a full disk told in one line instead of
a traceback."""

import contextlib
import errno
import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
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


LEASE_FILE = ".writer.json"
LEASE_SECONDS = 120.0  # a lease not renewed for this long belongs to a run that died
RENEW_SECONDS = 20.0


@contextlib.contextmanager
def sole_writer(folder: Path, option: str) -> Iterator[None]:
    """Hold `folder` for this run alone while the block runs; a second run into it is refused
    at once, naming the first.

    The hold is a small lease file in the folder, created exclusively and renewed by a thread
    every RENEW_SECONDS. A run that is killed leaves it behind, but it never sticks: the next
    run takes it over at once when its holder ran on this machine and is gone, and otherwise
    once it is LEASE_SECONDS old. It is a plain file, so it works on a Cloud Storage FUSE mount
    and between machines too; taking over a dead run's lease is not atomic there.
    """
    path = Path(folder) / LEASE_FILE
    _acquire(path, option)
    stop = threading.Event()
    renewer = threading.Thread(target=_renew, args=(path, stop), daemon=True)
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join()
        path.unlink(missing_ok=True)


def release_lease(folder: Path) -> None:
    """Drop this process's lease on `folder`, for a run ending without its `finally` blocks
    (on SIGTERM); a lease of another run is left alone."""
    path = Path(folder) / LEASE_FILE
    if _read_lease(path).get("pid") == os.getpid():
        path.unlink(missing_ok=True)


def _acquire(path: Path, option: str) -> None:
    holder = {}
    for _ in range(2):  # once more after removing an abandoned lease
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            holder = _read_lease(path)
            if not _abandoned(path, holder):
                break
            path.unlink(missing_ok=True)
            continue
        me = {"pid": os.getpid(), **_process_space(), "started": _now()}
        with os.fdopen(descriptor, "w") as file:
            json.dump(me, file)
        return
    who = (
        f"pid {holder['pid']} on {holder.get('host')}, since {holder.get('started')}"
        if "pid" in holder
        else "it is just starting"
    )
    raise StageError(
        f"{option} {path.parent} is being written by another run ({who}): wait for it to end, "
        "or choose another folder"
    )


def _read_lease(path: Path) -> dict:
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):  # being written this instant, or damaged
        return {}
    return holder if isinstance(holder, dict) else {}


def _abandoned(path: Path, holder: dict) -> bool:
    """Whether the lease's run is gone: on this machine its process no longer exists, or
    anywhere its lease has not been renewed for LEASE_SECONDS."""
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return True
    if age > LEASE_SECONDS:
        return True
    here = _process_space()
    if any(holder.get(key) != value for key, value in here.items()):
        return False  # another machine or container: its process cannot be looked up here
    if not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, someone else's
        return False
    return False


def _process_space() -> dict:
    """Where a process ID means something: this machine and this PID namespace (containers
    on one machine share its host name but not its process IDs)."""
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        namespace = None
    return {"host": socket.gethostname(), "pid_namespace": namespace}


def _renew(path: Path, stop: threading.Event) -> None:
    while not stop.wait(RENEW_SECONDS):
        with contextlib.suppress(OSError):
            os.utime(path)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


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
                f"{free} are free; free some space or choose another folder"
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
