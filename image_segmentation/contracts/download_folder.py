"""The download stage's output folder: the verified ADEChallengeData2016.zip, then download.json,
written last as the completion marker (the zip's source, SHA-1, size and member counts)."""

import json
from pathlib import Path

from image_segmentation import disk, files
from image_segmentation.errors import StageError

ARCHIVE_NAME = "ADEChallengeData2016.zip"
MANIFEST_NAME = "download.json"  # named for its stage, as export.json
MANIFEST_FORMAT = 2  # 1: the zip was extracted into ADEChallengeData2016/


def is_complete(output_dir: Path, sha1: str | None) -> bool:
    """True when a previous run finished here with the expected archive; raise on a conflict.

    A manifest that does not describe this stage's output was not written by it (or by this
    version of it): we refuse to touch the folder rather than overwrite someone's data.
    """
    manifest_path = output_dir / MANIFEST_NAME
    if not manifest_path.exists():
        return False
    zip_path = output_dir / ARCHIVE_NAME
    remove_hint = f"remove {manifest_path} to download again"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        raise StageError(f"{manifest_path} is not readable JSON; {remove_hint}") from None
    if not isinstance(manifest, dict) or manifest.get("format_version") != MANIFEST_FORMAT:
        raise StageError(
            f"{manifest_path} is not a manifest of this stage's format {MANIFEST_FORMAT} "
            f"(format 1 came with the zip extracted); {remove_hint}"
        )
    if sha1 is not None and manifest.get("sha1") != sha1:
        raise StageError(
            f"{manifest_path} records an archive with SHA-1 {manifest.get('sha1')}, not {sha1}; "
            f"{remove_hint}"
        )
    if not zip_path.is_file() or zip_path.stat().st_size != manifest.get("size"):
        raise StageError(
            f"{zip_path} is not the {manifest.get('size')}-byte file {manifest_path} lists; "
            f"{remove_hint}"
        )
    return True


def write_manifest(output_dir: Path, manifest: dict) -> None:
    """Mark the folder complete: the zip in it is verified and `manifest` describes it."""
    with disk.disk_full_error(output_dir / MANIFEST_NAME, None):
        files.write_json(output_dir / MANIFEST_NAME, manifest)
