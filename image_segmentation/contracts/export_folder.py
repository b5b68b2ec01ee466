"""The export folder: what the export stage writes and the upload stage publishes.

It holds the Core ML model (an `.mlpackage` folder or an `.mlmodel` file), optionally TFLite
files, `labels.txt`, and `export.json`, which describes the export and lists every file with
its size. On Vertex AI the folder is a Cloud Storage FUSE mount, where folders cannot be
renamed, so the export is made in a staging folder elsewhere and then copied in, `export.json`
last: an earlier export stays intact until the copy starts, and from then until the new
`export.json` lands the folder has none. A folder without it is incomplete, and the upload
stage refuses it, or one whose files differ from what a whole export holds, with a one-line
StageError. No TensorFlow here.
"""

import shutil
from pathlib import Path

from image_segmentation import files
from image_segmentation.data import labels
from image_segmentation.errors import StageError

FORMAT_VERSION = 1
RECORD_FILE = "export.json"  # written last: the folder's completion marker
LABELS_FILE = "labels.txt"
COREML_SUFFIXES = {"mlprogram": ".mlpackage", "neuralnetwork": ".mlmodel"}
TFLITE_SUFFIXES = {"float32": ".tflite", "float16": "_fp16.tflite"}


def coreml_file(model_name: str, format: str) -> str:
    """An ML Program is an .mlpackage folder; a legacy neural network an .mlmodel file."""
    return f"{model_name}{COREML_SUFFIXES[format]}"


def tflite_file(model_name: str, precision: str) -> str:
    return f"{model_name}{TFLITE_SUFFIXES[precision]}"


def file_names(model_name: str, format: str, tflite: bool) -> list[str]:
    """The files an export writes besides export.json, the Core ML model first."""
    names = [coreml_file(model_name, format), LABELS_FILE]
    if tflite:
        names += [tflite_file(model_name, precision) for precision in TFLITE_SUFFIXES]
    return names


def check_output_dir(output_dir: Path, names: list[str]) -> None:
    """Refuse an output folder that is a file or holds anything but export.json and these
    names (an earlier export's own files, as a retried step finds them): it is not ours."""
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise StageError(f"output dir {output_dir} is a file, not a folder")
    if output_dir.is_dir():
        ours = {RECORD_FILE, *names}
        others = sorted(p.name for p in output_dir.iterdir() if p.name not in ours)
        if others:
            raise StageError(
                f"output dir {output_dir} holds other files ({', '.join(others[:3])}): "
                "export into an empty folder"
            )


def publish(staging_dir: Path, output_dir: Path, names: list[str], description: dict) -> dict:
    """Replace whatever export `output_dir` holds with the files `names` of `staging_dir`,
    then write export.json (returned, see `write_record`).

    The earlier export.json goes first, so the folder reads as incomplete until the new one
    lands. Files are copied as new files, with the permissions the umask gives (a staging
    folder, or what coremltools saves, may be private).
    """
    output_dir = Path(output_dir)
    check_output_dir(output_dir, names)
    try:
        for name in [RECORD_FILE, *names]:
            target = output_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
        output_dir.mkdir(parents=True, exist_ok=True)
        for name in names:
            _copy(Path(staging_dir) / name, output_dir / name)
        return write_record(output_dir, names, description)
    except OSError as error:
        raise StageError(f"cannot write the export to {output_dir}: {error}") from error


def _copy(source: Path, target: Path) -> None:
    """Copy a file, or a folder with everything in it, making each file and folder anew."""
    for path in [source, *sorted(source.rglob("*"))]:
        destination = target / path.relative_to(source)
        if path.is_dir():
            destination.mkdir()
        else:
            shutil.copyfile(path, destination)


def path_bytes(path: Path) -> int:
    """Size of a file, or of every file in a folder (an .mlpackage)."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def write_record(output_dir: Path, names: list[str], description: dict) -> dict:
    """Write export.json, last: format_version, each file's size, then `description`, which
    names the model, its format, its labels and its TFLite figures (None without TFLite).
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
    """export.json of a complete export folder, after checking that it lists exactly the files
    an export of its kind writes (the Core ML model and labels.txt at least), that each is
    there with the size it records, and that labels.txt holds its labels."""
    export_dir = Path(export_dir)
    path = export_dir / RECORD_FILE
    record = files.read_completion_marker(export_dir, RECORD_FILE, "export dir", "export")
    files.check_format(record, str(path), FORMAT_VERSION)
    _check_description(record, path)
    problems = []
    for name, size in record["files"].items():
        target = export_dir / name
        if name in ("", ".", "..", RECORD_FILE) or Path(name).name != name:
            problems.append(f"{name!r} is not a file name in the folder")
        elif not target.exists():
            problems.append(f"{name} is missing")
        elif path_bytes(target) != size:
            problems.append(f"{name} is {path_bytes(target)} bytes, not {size}")
    if not problems and labels.read_labels_file(export_dir / LABELS_FILE) != record["labels"]:
        problems.append(f"{LABELS_FILE} holds other labels")
    if problems:
        raise StageError(f"{export_dir} does not match its {RECORD_FILE}: {'; '.join(problems)}")
    return record


def _check_description(record: dict, path: Path) -> None:
    """Refuse a record that does not say what it exports, or that lists other files than an
    export of that model name, format and TFLite choice writes."""
    model_name, format, names = record.get("model_name"), record.get("format"), record.get("labels")
    if not isinstance(model_name, str) or not model_name or format not in COREML_SUFFIXES:
        raise StageError(
            f"{path} does not say what it exports (model_name {model_name!r}, format {format!r})"
        )
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
        raise StageError(f"{path} lists no labels")
    listed = record.get("files")
    if not isinstance(listed, dict):
        raise StageError(f"{path} lists no files")
    tflite = record.get("tflite") is not None
    expected = file_names(model_name, format, tflite)
    problems = [f"no {name}" for name in expected if name not in listed]
    problems += [f"{name!r} is not part of one" for name in listed if name not in expected]
    if problems:
        kind = f"{format}{', with TFLite' if tflite else ''}"
        raise StageError(
            f"{path} does not list a complete {model_name} export ({kind}): {'; '.join(problems)}"
        )


def files_to_publish(export_dir: Path, record: dict) -> dict[str, Path]:
    """Every file of the complete export `record` describes (see `require_complete`) by its
    POSIX path relative to the folder, sorted: those it lists (an .mlpackage's files one by
    one) and export.json itself."""
    export_dir = Path(export_dir)
    entries = [export_dir / name for name in record["files"]]
    paths = [p for entry in entries for p in (entry.rglob("*") if entry.is_dir() else [entry])]
    paths.append(export_dir / RECORD_FILE)
    return {
        path.relative_to(export_dir).as_posix(): path for path in sorted(paths) if path.is_file()
    }


def require_tflite(path: Path) -> dict:
    """export.json of the complete export folder holding the TFLite file `path`."""
    if path.is_dir():
        raise StageError(f"--tflite {path} is a folder, not a .tflite file of an export")
    if not path.is_file():
        raise StageError(f"--tflite {path} does not exist")
    record = require_complete(path.parent)
    made = [entry["file"] for entry in (record.get("tflite") or {}).values()]
    if path.name not in made:
        raise StageError(
            f"{path.name} is not a TFLite file of {path.parent / RECORD_FILE} "
            f"(it lists {', '.join(made) or 'none'})"
        )
    return record
