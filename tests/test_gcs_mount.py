"""download -> prepare -> train with every output on a stand-in for the Cloud Storage FUSE mount.

On Vertex AI each step's artifacts are paths on a gcsfuse mount (/gcs/...): renaming a folder
there fails with EMFILE ("Too many open files") and every file is an object. No FUSE mount can
be made here, so the stages run as real subprocesses that start with a sitecustomize making
os.rename and os.replace (and so pathlib's rename/replace and shutil.move) refuse a folder under
the mount's root the same way. Each refusal is also logged, since shutil.move would hide one by
copying instead. Only renames made from Python are seen, not those inside native libraries.
"""

import errno
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from http_fixtures import FileServer

from image_segmentation.contracts import data_folder
from image_segmentation.data import ade20k, synthetic

REPO = Path(__file__).resolve().parents[1]
ROOT_VARIABLE = "REFUSE_FOLDER_RENAMES_UNDER"
LOG_VARIABLE = "REFUSED_FOLDER_RENAMES_LOG"
SITECUSTOMIZE = f'''"""Refuse folder renames under ${ROOT_VARIABLE}, as on a Cloud Storage mount."""

import errno
import os

_ROOT = os.environ.get("{ROOT_VARIABLE}")


def _refusing(rename):
    def refusing_rename(src, dst, *args, **kwargs):
        path = os.path.realpath(os.fsdecode(src))
        if os.path.isdir(path) and (path + os.sep).startswith(_ROOT + os.sep):
            with open(os.environ["{LOG_VARIABLE}"], "a") as log:
                log.write(f"{{path}} -> {{os.fsdecode(dst)}}\\n")
            raise OSError(errno.EMFILE, "Too many open files", src)
        return rename(src, dst, *args, **kwargs)

    return refusing_rename


if _ROOT:
    os.rename = _refusing(os.rename)
    os.replace = _refusing(os.replace)
'''
PROBE = """
import os, pathlib, shutil, sys

root, outside = map(pathlib.Path, sys.argv[1:])
(root / "folder").mkdir()
(root / "file").write_text("kept")
(root / "file").rename(root / "renamed-file")
(outside / "folder").mkdir()
(outside / "folder").rename(outside / "renamed-folder")
for rename in (os.rename, os.replace, pathlib.Path.rename, pathlib.Path.replace):
    try:
        rename(root / "folder", root / "renamed-folder")
    except OSError as error:
        print(error.errno, error.strerror)
shutil.move(root / "folder", root / "moved-folder")  # falls back to copying: only the log tells
"""


@dataclass(frozen=True)
class Mount:
    root: Path  # the stand-in for /gcs/BUCKET
    hooks: Path  # holds sitecustomize.py and a log of refused renames per process

    def env(self, log_name: str) -> dict[str, str]:
        """The environment of a process whose folder renames under `root` are refused."""
        python_path = [str(self.hooks), str(REPO), os.environ.get("PYTHONPATH", "")]
        return {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, python_path)),
            ROOT_VARIABLE: str(self.root),
            LOG_VARIABLE: str(self.hooks / f"{log_name}.log"),
        }

    def refused(self, log_name: str) -> list[str]:
        log = self.hooks / f"{log_name}.log"
        return log.read_text().splitlines() if log.exists() else []

    def stage(self, stage: str, *options: object) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "image_segmentation", stage, *map(str, options)],
            env=self.env(stage),
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr[-3000:]


def files_in(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())


@pytest.fixture(scope="module")
def mount(tmp_path_factory) -> Mount:
    hooks = tmp_path_factory.mktemp("hooks")
    (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return Mount(tmp_path_factory.mktemp("gcs").resolve(), hooks)


@pytest.fixture(scope="module")
def downloaded(mount, tmp_path_factory) -> Path:
    """The download stage's output on the mount; the zip is served over loopback HTTP."""
    source = tmp_path_factory.mktemp("source")
    dataset = synthetic.generate_ade20k(source, num_train=8, num_val=4, sizes=((96, 128),))
    sha1 = synthetic.make_zip(dataset, source / ade20k.ARCHIVE_NAME)
    server = FileServer().start()
    server.behaviour.files["/" + ade20k.ARCHIVE_NAME] = (source / ade20k.ARCHIVE_NAME).read_bytes()
    output = mount.root / "download" / "dataset"
    try:
        mount.stage(
            "download",
            "--source", f"{server.url}/{ade20k.ARCHIVE_NAME}",
            "--sha1", sha1,
            "--output-dir", output,
            "--archive-dir", tmp_path_factory.mktemp("ade20k-archive"),  # as the component does
        )  # fmt: skip
    finally:
        server.stop()
    return output


@pytest.fixture(scope="module")
def prepared(mount, downloaded) -> Path:
    output = mount.root / "prepare" / "prepared"
    mount.stage(
        "prepare",
        "--dataset-dir", downloaded,
        "--output-dir", output,
        "--train-shards", 2,
        "--val-shards", 1,
        "--workers", 2,
    )  # fmt: skip
    return output


def test_the_stand_in_refuses_folder_renames_only_under_its_root(mount, tmp_path):
    root, outside = mount.root / "probe", tmp_path
    root.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(root), str(outside)],
        env=mount.env("probe"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"{errno.EMFILE} Too many open files"] * 4
    assert (root / "renamed-file").read_text() == "kept"  # a file rename still works
    assert (outside / "renamed-folder").is_dir()  # and so does a folder rename elsewhere
    assert len(mount.refused("probe")) == 5  # four refused, one hidden by shutil.move's copy
    assert (root / "moved-folder").is_dir() and not (root / "folder").exists()


def test_download_writes_only_the_zip_and_its_manifest(mount, downloaded):
    assert mount.refused("download") == []
    assert files_in(downloaded) == [ade20k.ARCHIVE_NAME, ade20k.MANIFEST_NAME]
    print(f"\ndownload artifact: {len(files_in(downloaded))} files")


def test_prepare_reads_the_zip_and_writes_only_shards_labels_and_stats(mount, prepared):
    assert mount.refused("prepare") == []
    assert files_in(prepared) == [
        "labels.txt",
        "stats.json",
        "train-00000-of-00002.tfrecord",
        "train-00001-of-00002.tfrecord",
        "val-00000-of-00001.tfrecord",
    ]
    print(f"\nprepare artifact: {len(files_in(prepared))} files")


def test_a_rerun_of_prepare_replaces_its_output_in_place(mount, downloaded):
    """A rerun writes a new generation of shards beside the first and then deletes the first:
    no folder is renamed."""
    output = mount.root / "prepare" / "rerun"
    for train_shards in (2, 3):
        mount.stage(
            "prepare",
            "--dataset-dir", downloaded,
            "--output-dir", output,
            "--train-shards", train_shards,
            "--val-shards", 1,
            "--workers", 1,
        )  # fmt: skip
    assert mount.refused("prepare") == []
    shards = data_folder.shard_names("train", 3, 2) + data_folder.shard_names("val", 1, 2)
    assert files_in(output) == ["labels.txt", "stats.json", *shards]


@pytest.mark.slow
def test_train_writes_a_small_model_folder(mount, prepared):
    model = mount.root / "train" / "model"
    mount.stage(
        "train",
        "--data-dir", prepared,
        "--output-dir", model,
        "--image-size", 64,
        "--alpha", 0.25,
        "--epochs", 1,
        "--steps-per-epoch", 2,
        "--batch-size", 2,
    )  # fmt: skip
    assert mount.refused("train") == []
    print(f"\ntrain artifact: {len(files_in(model))} files: {', '.join(files_in(model))}")
    assert 0 < len(files_in(model)) < 20
