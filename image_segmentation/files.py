"""Writing stage outputs so that a crash never leaves a half-written file that looks complete."""

import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path

from image_segmentation.errors import StageError


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Let `write` fill a temporary file beside `path`, then rename it into place.

    The temporary file is made like any other file (mode 0666 less the umask, so usually 0644),
    not private as `tempfile` makes them, since it becomes the output.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    part_path = path.with_name(f".{path.name}.{secrets.token_hex(4)}.partial")
    os.close(os.open(part_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        write(part_path)
        part_path.replace(path)
    finally:
        part_path.unlink(missing_ok=True)


def write_json(path: Path, value: object) -> None:
    """Write `value` as indented JSON, atomically."""
    atomic_write(path, lambda part: part.write_text(json.dumps(value, indent=2) + "\n"))


def read_completion_marker(folder: Path, marker: str, kind: str, stage: str) -> object:
    """The JSON file a stage writes last into its output `folder`, parsed.

    Every stage's output folder has one (stats.json, config.json, export.json): its absence
    means the stage did not finish. `kind` names the folder ("model dir") and `stage` the stage
    that writes it ("train") in the one-line errors.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise StageError(f"{kind} {folder} does not exist")
    path = folder / marker
    if not path.is_file():
        raise StageError(
            f"{folder} has no {marker}: the {stage} stage did not finish there, or it is not "
            f"the {stage} stage's output"
        )
    return read_json(path)


def read_json(path: Path) -> object:
    """A JSON file the stages wrote; one that does not parse is a one-line error."""
    try:
        return json.loads(Path(path).read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise StageError(f"{path} is not valid JSON: {error}") from None


def check_format(data: object, source: str, version: int, advice: str = "") -> None:
    """Refuse JSON that is not an object of the `format_version` this code reads; `source`
    names it and `advice` (e.g. "; run prepare again") ends the one-line error."""
    if not isinstance(data, dict):
        raise StageError(f"{source} does not hold a JSON object")
    if data.get("format_version") != version:
        raise StageError(
            f"{source}: unsupported format_version {data.get('format_version')!r} "
            f"(this code reads {version}){advice}"
        )
