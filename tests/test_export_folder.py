"""The export folder: named files, export.json written last, refused when incomplete."""

import json
import re
from pathlib import Path

import pytest

from image_segmentation import export_folder
from image_segmentation.errors import StageError


def write_export(directory: Path) -> dict:
    """The files of an ML Program export with TFLite, and its record."""
    names = export_folder.file_names("icnet", "mlprogram", tflite=True)
    export_folder.prepare(directory, names)
    package = directory / "icnet.mlpackage" / "Data"
    package.mkdir(parents=True)
    (package / "model.mlmodel").write_bytes(b"spec" * 10)
    (directory / "icnet.mlpackage" / "Manifest.json").write_text("{}")
    for name in names[1:]:
        (directory / name).write_bytes(name.encode())
    return export_folder.write_record(directory, names, {"labels": ["none", "wall"]})


def test_file_names_follow_format_and_tflite():
    assert export_folder.file_names("icnet", "mlprogram", tflite=True) == [
        "icnet.mlpackage",
        "labels.txt",
        "icnet.tflite",
        "icnet_fp16.tflite",
    ]
    assert export_folder.file_names("m", "neuralnetwork", tflite=False) == [
        "m.mlmodel",
        "labels.txt",
    ]


def test_a_written_export_is_complete_and_lists_what_to_publish(tmp_path):
    record = write_export(tmp_path)
    assert record["format_version"] == export_folder.FORMAT_VERSION
    assert record["files"]["icnet.mlpackage"] == 40 + 2
    assert record["files"]["labels.txt"] == len("labels.txt")
    assert export_folder.require_complete(tmp_path) == record
    assert json.loads((tmp_path / "export.json").read_text()) == record
    assert list(export_folder.files_to_publish(tmp_path)) == [
        "export.json",
        "icnet.mlpackage/Data/model.mlmodel",
        "icnet.mlpackage/Manifest.json",
        "icnet.tflite",
        "icnet_fp16.tflite",
        "labels.txt",
    ]


def test_files_the_record_does_not_list_are_not_published(tmp_path):
    write_export(tmp_path)
    (tmp_path / "notes.txt").write_text("not part of the export")
    assert "notes.txt" not in export_folder.files_to_publish(tmp_path)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "export.json").unlink(), "has no export.json: the export did not finish"),
        (lambda d: (d / "export.json").write_text("{"), "export.json is not valid JSON"),
        (
            lambda d: (d / "icnet.tflite").unlink(),
            "does not match its export.json: icnet.tflite is missing",
        ),
        (
            lambda d: (d / "icnet.mlpackage" / "Manifest.json").write_text("{ }"),
            "icnet.mlpackage is 43 bytes, not 42",
        ),
        (lambda d: edit_record(d, format_version=2), "unsupported format_version 2"),
        (lambda d: edit_record(d, files={}), "export.json lists no files"),
        (lambda d: edit_record(d, files={"../model": 1}), "'../model' is not a file name"),
    ],
)
def test_an_incomplete_or_changed_export_is_a_one_line_error(tmp_path, damage, message):
    write_export(tmp_path)
    damage(tmp_path)
    with pytest.raises(StageError, match=re.escape(message)) as error:
        export_folder.files_to_publish(tmp_path)
    assert "\n" not in str(error.value)


def edit_record(directory: Path, **changes) -> None:
    record = json.loads((directory / "export.json").read_text())
    (directory / "export.json").write_text(json.dumps({**record, **changes}))


def test_a_missing_folder_is_refused(tmp_path):
    with pytest.raises(StageError, match=r"export dir \S+ does not exist"):
        export_folder.require_complete(tmp_path / "nowhere")


def test_prepare_removes_a_retried_exports_files_but_refuses_others(tmp_path):
    names = export_folder.file_names("icnet", "mlprogram", tflite=True)
    write_export(tmp_path)
    export_folder.prepare(tmp_path, names)  # a retried export: its own leftovers go
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(StageError, match=r"holds other files \(notes.txt\)"):
        export_folder.prepare(tmp_path, names)
    assert (tmp_path / "notes.txt").exists()
