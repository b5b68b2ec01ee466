"""Writing stage outputs so that a crash never leaves a half-written file that looks complete."""

import json
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Let `write` fill a temporary file beside `path`, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        dir=path.parent, prefix=f".{path.name}.", suffix=".partial", delete=False
    ) as part:
        part_path = Path(part.name)
    try:
        write(part_path)
        part_path.replace(path)
    finally:
        part_path.unlink(missing_ok=True)


def write_json(path: Path, value: object) -> None:
    """Write `value` as indented JSON, atomically."""
    atomic_write(path, lambda part: part.write_text(json.dumps(value, indent=2) + "\n"))
