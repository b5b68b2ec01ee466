"""Writing stage outputs so that a crash never leaves a half-written file that looks complete."""

import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path


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
