"""The download stage's work: fetch ADEChallengeData2016.zip and verify it; the verified zip is
the output.

The output folder gets the zip itself, not extracted, and then `download.json`, written last as
the completion marker. On Vertex AI the output is a Cloud Storage FUSE mount, where every file
is an object, appending rewrites one and a folder cannot be renamed: so the zip is downloaded to
a scratch folder on local disk and copied into the output once (elsewhere the scratch folder is
the output folder itself, and nothing is copied).

The MIT server is slow and flaky, so HTTP downloads resume with Range requests (also across
runs, from the `.partial` file a killed run leaves in the scratch folder) and retry transient
failures, including a server that keeps the connection alive with a trickle of bytes. The zip is
accepted only after its size and SHA-1 match and it opens as a zip whose members are all safe
to extract (no absolute path, `..` or symlink), declare sane sizes (no zip bomb), pass their
CRC-32 check and hold the ADEChallengeData2016 layout. A zip that fails a check is deleted, also
one left by an earlier run, so a bad file is never reused. A rerun over a complete output does
nothing. Folders are checked (writable, enough free space) before anything is downloaded, and
those this run created are removed again if it fails before writing anything into them.

This module is the plan (its command line is stages/download.py); `fetch` downloads, `archive`
checks the zip, `disk` checks the folders, contracts/download_folder.py owns the output folder.
"""

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from image_segmentation import disk
from image_segmentation.contracts import download_folder
from image_segmentation.contracts.download_folder import ARCHIVE_NAME, MANIFEST_NAME
from image_segmentation.data import ade20k, archive, fetch
from image_segmentation.errors import StageError

log = logging.getLogger(__name__)


def download_dataset(
    source: str,
    output_dir: Path,
    sha1: str | None = ade20k.OFFICIAL_SHA1,
    size: int | None = ade20k.OFFICIAL_SIZE,
    *,
    archive_dir: Path | None = None,
    retries: int = 5,
    timeout: float = 60.0,
    backoff: float = 1.0,
) -> Path:
    """Put the verified zip in `output_dir`, then `download.json`; return the zip's path.

    `sha1`/`size` None skip that check. A download goes to `archive_dir` (see `archive_folder`)
    and is deleted there once copied; a local source file is copied and never deleted.
    """
    output_dir = Path(output_dir)
    target = output_dir / ARCHIVE_NAME
    sha1 = normalize_sha1(sha1)
    local = local_source(source)
    if download_folder.is_complete(output_dir, sha1):
        log.info("%s is complete (it matches %s); nothing to do", target, MANIFEST_NAME)
        return target
    started = time.monotonic()
    with (
        disk.usable_folder(output_dir, "--output-dir"),
        archive_folder(archive_dir, output_dir) as folder,
    ):
        disk.check_free_space(space_needed(local, folder, output_dir, size), ARCHIVE_NAME)
        with disk.disk_full_error(folder / ARCHIVE_NAME, size):
            checked, actual_sha1, counts = verified_archive(
                source, local, folder, sha1, size, retries=retries, timeout=timeout, backoff=backoff
            )
        if not (target.exists() and os.path.samefile(checked, target)):
            copy_into_output(checked, target)
            if local is None:
                checked.unlink()
    manifest = {
        "format_version": download_folder.MANIFEST_FORMAT,
        "source": fetch.public_source(source),
        "archive": ARCHIVE_NAME,
        "sha1": actual_sha1,
        "sha1_verified": sha1 is not None,
        "size": target.stat().st_size,
        "counts": counts,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": round(time.monotonic() - started, 1),
    }
    download_folder.write_manifest(output_dir, manifest)
    log.info("%s: %s", target, json.dumps(counts))
    return target


@contextlib.contextmanager
def archive_folder(archive_dir: Path | None, output_dir: Path) -> Iterator[Path]:
    """Where the zip is downloaded: `archive_dir` if given, else `output_dir`, unless that is a
    FUSE mount (Vertex AI's /gcs/): then a temporary folder on local disk, removed afterwards."""
    if archive_dir is not None:
        with disk.usable_folder(Path(archive_dir), "--archive-dir"):
            yield Path(archive_dir)
    elif ade20k.on_fuse_mount(output_dir):
        with tempfile.TemporaryDirectory(prefix="ade20k-archive-") as folder:
            yield Path(folder)
    else:
        yield output_dir


def space_needed(
    local: Path | None, folder: Path, output_dir: Path, size: int | None
) -> list[tuple[Path, int]]:
    """The bytes still to be written into each folder, when the archive's size is known: the
    rest of the download, then the copy into the output (net of what those files hold now)."""
    expected = local.stat().st_size if local is not None else size
    if expected is None:
        return []
    target = output_dir / ARCHIVE_NAME
    if local is not None:
        copied = not (target.exists() and os.path.samefile(local, target))
        return [(output_dir, expected - disk.file_size(target))] if copied else []
    needs = []
    download = folder / ARCHIVE_NAME
    if not download.exists():
        needs.append((folder, expected - disk.file_size(fetch.partial_path(download))))
    if not os.path.samefile(folder, output_dir):
        needs.append((output_dir, expected - disk.file_size(target)))
    return needs


def copy_into_output(checked: Path, target: Path) -> None:
    """Copy the verified zip into the output in place (on a FUSE mount a rename is a copy too);
    an incomplete copy is removed, never left to look like the archive."""
    log.info("copying %s to %s", checked, target)
    try:
        with disk.disk_full_error(target, checked.stat().st_size):
            shutil.copyfile(checked, target)
    except BaseException:
        target.unlink(missing_ok=True)
        raise


def verified_archive(
    source: str, local: Path | None, folder: Path, sha1: str | None, size: int | None, **http
) -> tuple[Path, str, dict[str, dict[str, int]]]:
    """The checked archive, its SHA-1 and counts: the local file, or a download into `folder`.

    A download that fails a check is deleted. So is a zip an earlier run left in `folder`
    (killed before its checks ended) that fails one; it is then downloaded afresh.
    """
    if local is not None:
        try:
            return local, *validate(local, sha1, size)
        except StageError as error:
            raise StageError(f"{error}; the file was left in place") from None
    dest = folder / ARCHIVE_NAME
    if dest.exists():
        log.info("checking %s from an earlier run", dest)
        try:
            return dest, *validate(dest, sha1, size)
        except StageError as error:
            log.warning("deleting %s from an earlier run and downloading afresh: %s", dest, error)
            dest.unlink()
    fetch.fetch(source, dest, size=size, **http)
    try:
        return dest, *validate(dest, sha1, size)
    except StageError as error:
        dest.unlink()
        raise StageError(
            f"{error}; deleted the download, run again to fetch it afresh "
            "(or give the right --sha1/--size, or none, for a different archive)"
        ) from None


def validate(path: Path, sha1: str | None, size: int | None) -> tuple[str, dict]:
    """The archive's SHA-1 and counts, once every check passed; else a StageError."""
    return archive.verify_archive(path, sha1, size), archive.check_archive(path)


def normalize_sha1(sha1: str | None) -> str | None:
    """Lower-case hex, or None for "do not check"; reject anything that is not a SHA-1."""
    if sha1 is None or sha1.strip().lower() in ("", "none"):
        return None
    sha1 = sha1.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{40}", sha1):
        raise StageError(f"--sha1 must be 40 hex digits or 'none', got {sha1!r}")
    return sha1


def local_source(source: str) -> Path | None:
    """The source file when `source` is a local path (checked before any folder is made), None
    for a URL."""
    if fetch.source_kind(source) != "local":
        return None
    path = Path(source).expanduser()
    if not path.is_file():
        raise StageError(f"source {path} {'is not a file' if path.exists() else 'does not exist'}")
    return path


def resolve_size(text: str, sha1: str | None) -> int | None:
    """`--size` as bytes: "auto" is the official size for the official SHA-1, else no check."""
    text = text.strip().lower()
    if text == "auto":
        return ade20k.OFFICIAL_SIZE if sha1 == ade20k.OFFICIAL_SHA1 else None
    if text in ("", "none"):
        return None
    if not text.isdigit() or int(text) == 0:
        raise StageError(f"--size must be a positive byte count, 'auto' or 'none', got {text!r}")
    return int(text)
