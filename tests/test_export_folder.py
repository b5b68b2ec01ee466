"""The export folder: named files, published from staging with export.json written last,
refused when incomplete."""

import json
import os
import re
import stat
from pathlib import Path

import pytest

from image_segmentation.contracts import export_folder
from image_segmentation.data import labels
from image_segmentation.errors import StageError

LABELS = ["none", "wall"]
NAMES = export_folder.file_names("icnet", "mlprogram", tflite=True)
DESCRIPTION = {"model_name": "icnet", "format": "mlprogram", "tflite": {}, "labels": LABELS}


def stage_export(directory: Path, tflite_bytes: bytes = b"tflite") -> Path:
    """The files of an ML Program export with TFLite, as export makes them: a private folder
    (coremltools saves .mlpackage folders with mode 0700) and files."""
    package = directory / "icnet.mlpackage" / "Data"
    package.mkdir(parents=True)
    (package / "model.mlmodel").write_bytes(b"spec" * 10)
    (directory / "icnet.mlpackage" / "Manifest.json").write_text("{}")
    for folder in (directory / "icnet.mlpackage", package):
        folder.chmod(0o700)
    (directory / "labels.txt").write_text(labels.format_labels_file(LABELS))
    for name in NAMES[2:]:
        (directory / name).write_bytes(tflite_bytes + name.encode())
    return directory


def write_export(directory: Path) -> dict:
    """A complete export in `directory`, written in place, and its record."""
    stage_export(directory)
    return export_folder.write_record(directory, NAMES, DESCRIPTION)


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_file_names_follow_format_and_tflite():
    assert NAMES == ["icnet.mlpackage", "labels.txt", "icnet.tflite", "icnet_fp16.tflite"]
    assert export_folder.file_names("m", "neuralnetwork", tflite=False) == [
        "m.mlmodel",
        "labels.txt",
    ]


def test_a_written_export_is_complete_and_lists_what_to_publish(tmp_path):
    record = write_export(tmp_path)
    assert record["format_version"] == export_folder.FORMAT_VERSION
    assert record["files"]["icnet.mlpackage"] == 40 + 2
    assert record["files"]["labels.txt"] == len(labels.format_labels_file(LABELS))
    assert export_folder.require_complete(tmp_path) == record
    assert json.loads((tmp_path / "export.json").read_text()) == record
    assert list(export_folder.files_to_publish(tmp_path, record)) == [
        "export.json",
        "icnet.mlpackage/Data/model.mlmodel",
        "icnet.mlpackage/Manifest.json",
        "icnet.tflite",
        "icnet_fp16.tflite",
        "labels.txt",
    ]


def test_files_the_record_does_not_list_are_not_published(tmp_path):
    record = write_export(tmp_path)
    (tmp_path / "notes.txt").write_text("not part of the export")
    assert "notes.txt" not in export_folder.files_to_publish(tmp_path, record)


def edit_record(directory: Path, **changes) -> None:
    record = json.loads((directory / "export.json").read_text())
    (directory / "export.json").write_text(json.dumps({**record, **changes}))


def drop_from_record(directory: Path, name: str) -> None:
    record = json.loads((directory / "export.json").read_text())
    edit_record(directory, files={k: v for k, v in record["files"].items() if k != name})


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "export.json").unlink(), "has no export.json: the export stage"),
        (lambda d: (d / "export.json").write_text("{"), "export.json is not valid JSON"),
        (
            lambda d: (d / "icnet.tflite").unlink(),
            "does not match its export.json: icnet.tflite is missing",
        ),
        (
            lambda d: (d / "icnet.mlpackage" / "Manifest.json").write_text("{ }"),
            "icnet.mlpackage is 43 bytes, not 42",
        ),
        (
            lambda d: (d / "icnet_fp16.tflite").write_bytes(b"trunc"),
            "icnet_fp16.tflite is 5 bytes, not 23",
        ),
        (
            lambda d: drop_from_record(d, "icnet.mlpackage"),
            "does not list a complete icnet export (mlprogram, with TFLite): no icnet.mlpackage",
        ),
        (
            lambda d: edit_record(d, tflite=None),
            "(mlprogram): 'icnet.tflite' is not part of one; 'icnet_fp16.tflite' is not part",
        ),
        (
            lambda d: (d / "labels.txt").write_text(labels.format_labels_file(["none", "sofa"])),
            "does not match its export.json: labels.txt holds other labels",
        ),
        (lambda d: edit_record(d, format_version=2), "unsupported format_version 2"),
        (lambda d: edit_record(d, format="onnx"), "does not say what it exports"),
        (lambda d: edit_record(d, labels=[]), "export.json lists no labels"),
        (lambda d: edit_record(d, files=[]), "export.json lists no files"),
        (
            lambda d: edit_record(d, files={"../model": 1}),
            "no icnet.mlpackage; no labels.txt; no icnet.tflite; no icnet_fp16.tflite; "
            "'../model' is not part of one",
        ),
        (
            lambda d: edit_record(
                d, model_name="../up", tflite=None, files={"../up.mlpackage": 1, "labels.txt": 1}
            ),
            "'../up.mlpackage' is not a file name in the folder",
        ),
    ],
)
def test_an_incomplete_or_changed_export_is_a_one_line_error(tmp_path, damage, message):
    write_export(tmp_path)
    damage(tmp_path)
    with pytest.raises(StageError, match=re.escape(message)) as error:
        export_folder.require_complete(tmp_path)
    assert "\n" not in str(error.value)


def test_a_missing_folder_is_refused(tmp_path):
    with pytest.raises(StageError, match=r"export dir \S+ does not exist"):
        export_folder.require_complete(tmp_path / "nowhere")


def test_publish_makes_a_complete_export_with_normal_permissions(tmp_path, umask_022):
    staging = stage_export(tmp_path / "staging")
    record = export_folder.publish(staging, tmp_path / "out", NAMES, DESCRIPTION)
    out = tmp_path / "out"
    assert export_folder.require_complete(out) == record
    published = folder_bytes(out)
    assert published.pop("export.json") and published == folder_bytes(staging)
    modes = {p.relative_to(out).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*")}
    assert modes["icnet.mlpackage"] == modes["icnet.mlpackage/Data"] == 0o755
    assert set(modes.values()) == {0o644, 0o755}


def test_publish_replaces_an_earlier_export_of_ours_but_refuses_others(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    write_export(out)
    (out / "icnet.mlpackage" / "Data" / "model.mlmodel").write_bytes(b"old")
    staging = stage_export(tmp_path / "staging", tflite_bytes=b"newer tflite")
    record = export_folder.publish(staging, out, NAMES, DESCRIPTION)  # a retried export
    assert export_folder.require_complete(out) == record
    assert (out / "icnet.tflite").read_bytes() == b"newer tfliteicnet.tflite"
    (out / "notes.txt").write_text("mine")
    before = folder_bytes(out)
    with pytest.raises(StageError, match=r"holds other files \(notes.txt\)"):
        export_folder.check_output_dir(out, NAMES)
    with pytest.raises(StageError, match=r"holds other files \(notes.txt\)"):
        export_folder.publish(staging, out, NAMES, DESCRIPTION)
    assert folder_bytes(out) == before


def test_a_publish_that_fails_midway_leaves_no_export_json(tmp_path):
    """Once publishing starts the earlier export is going: the folder must read as
    incomplete until the new export.json lands."""
    out = tmp_path / "out"
    out.mkdir()
    write_export(out)
    staging = stage_export(tmp_path / "staging")
    (staging / "icnet_fp16.tflite").unlink()  # the last file to copy
    with pytest.raises(StageError, match=r"cannot write the export to \S+/out: .*icnet_fp16"):
        export_folder.publish(staging, out, NAMES, DESCRIPTION)
    assert (out / "icnet.tflite").exists() and not (out / "export.json").exists()
    with pytest.raises(StageError, match=r"has no export\.json: the export stage did not finish"):
        export_folder.require_complete(out)


def test_an_output_dir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("someone's notes")
    with pytest.raises(StageError, match=r"output dir \S+/file is a file, not a folder"):
        export_folder.check_output_dir(tmp_path / "file", NAMES)
    staging = stage_export(tmp_path / "staging")
    with pytest.raises(StageError, match=r"cannot write the export to \S+/file/out: "):
        export_folder.publish(staging, tmp_path / "file" / "out", NAMES, DESCRIPTION)
    assert (tmp_path / "file").read_text() == "someone's notes"
