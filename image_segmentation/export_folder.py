"""The export folder: what the export stage writes and the upload stage publishes.

It holds the Core ML model (an `.mlpackage` folder or an `.mlmodel` file), optionally TFLite
files, `labels.txt`, and `export.json`, which describes the export and lists every file with
its size. On Vertex AI the folder is a Cloud Storage FUSE mount, where folders cannot be
renamed, so it is written in place and `export.json` is written last: a folder without it is
incomplete, and the upload stage refuses it, or one whose files differ from that list, with a
one-line StageError. No TensorFlow here.
"""

import json
import shutil
from pathlib import Path

from image_segmentation import files
from image_segmentation.errors import StageError

FORMAT_VERSION = 1
RECORD_FILE = "export.json"  # written last: the folder's completion marker
LABELS_FILE = "labels.txt"
TFLITE_SUFFIXES = {"float32": ".tflite", "float16": "_fp16.tflite"}


def coreml_file(model_name: str, format: str) -> str:
    """An ML Program is an .mlpackage folder; a legacy neural network an .mlmodel file."""
    return f"{model_name}{'.mlpackage' if format == 'mlprogram' else '.mlmodel'}"


def tflite_file(model_name: str, precision: str) -> str:
    return f"{model_name}{TFLITE_SUFFIXES[precision]}"


def file_names(model_name: str, format: str, tflite: bool) -> list[str]:
    """The files an export writes besides export.json, the Core ML model first."""
    names = [coreml_file(model_name, format), LABELS_FILE]
    if tflite:
        names += [tflite_file(model_name, precision) for precision in TFLITE_SUFFIXES]
    return names


def prepare(output_dir: Path, names: list[str]) -> None:
    """Remove an earlier run's files of these names (a retried step), export.json first so the
    folder reads as incomplete; refuse a folder that holds anything else, which is not ours."""
    output_dir = Path(output_dir)
    if output_dir.is_dir():
        ours = [RECORD_FILE, *names]
        others = sorted(p.name for p in output_dir.iterdir() if p.name not in ours)
        if others:
            raise StageError(
                f"output dir {output_dir} holds other files ({', '.join(others[:3])}): "
                "export into an empty folder"
            )
        for name in ours:
            target = output_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
    output_dir.mkdir(parents=True, exist_ok=True)


def path_bytes(path: Path) -> int:
    """Size of a file, or of every file in a folder (an .mlpackage)."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def write_record(output_dir: Path, names: list[str], description: dict) -> dict:
    """Write export.json, last: format_version, each file's size, then `description`.
    Returns what it wrote."""
    output_dir = Path(output_dir)
    record = {
        "format_version": FORMAT_VERSION,
        "files": {name: path_bytes(output_dir / name) for name in names},
        **description,
    }
    files.write_json(output_dir / RECORD_FILE, record)
    return record


def require_complete(export_dir: Path) -> dict:
    """export.json of a complete export folder, after checking that every file it lists is
    there with the size it records."""
    export_dir = Path(export_dir)
    if not export_dir.is_dir():
        raise StageError(f"export dir {export_dir} does not exist or is not a folder")
    path = export_dir / RECORD_FILE
    if not path.is_file():
        raise StageError(
            f"{export_dir} has no {RECORD_FILE}: the export did not finish, or it is not "
            "the export stage's output"
        )
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise StageError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(record, dict) or record.get("format_version") != FORMAT_VERSION:
        version = record.get("format_version") if isinstance(record, dict) else None
        raise StageError(
            f"{path}: unsupported format_version {version!r} (this code reads {FORMAT_VERSION})"
        )
    listed = record.get("files")
    if not isinstance(listed, dict) or not listed:
        raise StageError(f"{path} lists no files")
    problems = []
    for name, size in listed.items():
        target = export_dir / name
        if name in ("", ".", "..", RECORD_FILE) or Path(name).name != name:
            problems.append(f"{name!r} is not a file name in the folder")
        elif not target.exists():
            problems.append(f"{name} is missing")
        elif path_bytes(target) != size:
            problems.append(f"{name} is {path_bytes(target)} bytes, not {size}")
    if problems:
        raise StageError(f"{export_dir} does not match its {RECORD_FILE}: {'; '.join(problems)}")
    return record


def files_to_publish(export_dir: Path) -> dict[str, Path]:
    """Every file of a complete export by its POSIX path relative to the folder, sorted:
    those export.json lists (an .mlpackage's files one by one) and export.json itself."""
    export_dir = Path(export_dir)
    entries = [export_dir / name for name in require_complete(export_dir)["files"]]
    paths = [p for entry in entries for p in (entry.rglob("*") if entry.is_dir() else [entry])]
    paths.append(export_dir / RECORD_FILE)
    return {
        path.relative_to(export_dir).as_posix(): path for path in sorted(paths) if path.is_file()
    }
