"""Checks of the ADE20K zip, without extracting it: size and SHA-1, members safe to extract,
no zip bomb, every member's CRC-32, and the ADEChallengeData2016 layout."""

import hashlib
import logging
import re
import stat
import zipfile
import zlib
from pathlib import Path

from image_segmentation.data import ade20k
from image_segmentation.errors import StageError

log = logging.getLogger(__name__)

# ADE20K's JPEG and PNG files barely compress (the whole zip's ratio is about 1.0): members that
# claim more in total than this many times the zip's size are a zip bomb.
MAX_COMPRESSION_RATIO = 10
_BLOCK = 1 << 20
# What zipfile raises for a damaged or unsupported member, besides BadZipFile.
_DAMAGED_MEMBER = (
    zipfile.BadZipFile,
    zlib.error,
    EOFError,
    NotImplementedError,
    RuntimeError,
    ValueError,
    OSError,
)


def file_sha1(path: Path) -> str:
    """SHA-1 of a file, read in blocks so a 1 GB archive needs no 1 GB of memory."""
    digest = hashlib.sha1()
    with open(path, "rb") as file:
        while block := file.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def verify_archive(path: Path, sha1: str | None, size: int | None) -> str:
    """Check size (cheap) then SHA-1; return the actual SHA-1 or raise StageError."""
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        raise StageError(f"{path} is {actual_size} bytes, expected {size}")
    actual = file_sha1(path)
    if sha1 is not None and actual != sha1:
        raise StageError(f"SHA-1 of {path} is {actual}, expected {sha1}")
    log.info("%s: %d bytes, SHA-1 %s%s", path, actual_size, actual, "" if sha1 else " (unchecked)")
    return actual


def unsafe_member(info: zipfile.ZipInfo) -> str | None:
    """Why a member would be unsafe to extract (absolute, `..`, symlink), or None when safe."""
    name = info.filename
    if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name):
        return "has an absolute path"
    if ".." in re.split(r"[\\/]", name):
        return "would land outside the target folder"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "is a symbolic link"
    return None


def check_archive(path: Path) -> dict[str, dict[str, int]]:
    """Check the zip without extracting it; return the image and annotation counts per split.

    The artifact is meant to be unzipped or read by later steps, so a member that would be
    unsafe to extract is refused here, as is a zip bomb, a damaged member or a zip without the
    ADEChallengeData2016 layout. Cheap checks of the central directory come first.
    """
    try:
        source = ade20k.ZipSource(path)
    except NotImplementedError as error:  # e.g. a zip split over several files
        raise StageError(f"{path} is not a zip archive this tool can read: {error}") from None
    with source:
        members = source.archive.infolist()
        for info in members:
            if reason := unsafe_member(info):
                raise StageError(f"refusing {path}: member {info.filename!r} {reason}")
        check_declared_sizes(path, members)
        if missing := source.missing_folders():
            raise StageError(
                f"the archive does not hold the {ade20k.DATASET_DIR} layout: missing "
                + ", ".join(f"{ade20k.DATASET_DIR}/{folder}/" for folder in missing)
            )
        check_members_intact(path, source.archive)
        return source.count_files()


def check_declared_sizes(path: Path, members: list[zipfile.ZipInfo]) -> None:
    """Refuse a zip bomb from the sizes its members declare, before reading any of them.

    zipfile never inflates a member past its declared size, so these limits also bound the
    reading that checks the members, and prepare's reading of them.
    """
    for info in members:
        if info.file_size > ade20k.MAX_MEMBER_BYTES:
            raise StageError(
                f"refusing {path}: member {info.filename!r} claims {info.file_size} bytes, "
                f"more than {ade20k.MAX_MEMBER_BYTES} (a zip bomb?)"
            )
    declared, actual = sum(info.file_size for info in members), path.stat().st_size
    if declared > MAX_COMPRESSION_RATIO * actual:
        raise StageError(
            f"refusing {path}: its members claim {declared} bytes, {declared / actual:.0f} times "
            f"its size, more than {MAX_COMPRESSION_RATIO} (a zip bomb?)"
        )


def check_members_intact(path: Path, archive: zipfile.ZipFile) -> None:
    """Read every member through zipfile, which checks its CRC-32; nothing is written to disk."""
    for info in archive.infolist():
        try:
            with archive.open(info) as member:
                while member.read(_BLOCK):
                    pass
        except _DAMAGED_MEMBER as error:
            raise StageError(f"{path} is damaged: member {info.filename!r}: {error}") from None
