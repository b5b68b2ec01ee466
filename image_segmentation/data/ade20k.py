"""ADE20K (ADEChallengeData2016): its layout, the download stage's output, where samples live.

The download stage's output folder holds `ADEChallengeData2016.zip` and `download.json`, written
last: a folder without the manifest is incomplete. Samples are read from that zip, member by
member, or from an extracted `ADEChallengeData2016/` folder; both sources list a split's samples
and read a sample's files the same way, so nothing needs extracting. A zip in Cloud Storage or
on a FUSE mount is read from a local copy.
"""

import contextlib
import logging
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from image_segmentation import disk
from image_segmentation.cloud import storage
from image_segmentation.contracts.download_folder import ARCHIVE_NAME, MANIFEST_NAME
from image_segmentation.errors import StageError

log = logging.getLogger(__name__)

DATASET_DIR = "ADEChallengeData2016"  # the folder of the zip (ARCHIVE_NAME) and of its copies
SPLITS = ("training", "validation")
SPLIT_PREFIX = {"training": "ADE_train", "validation": "ADE_val"}
OFFICIAL_URL = "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip"
OFFICIAL_SHA1 = "219e1696abb36c8ba3a3afe7fb2f4b4606a897c7"
OFFICIAL_SIZE = 967_382_037
# ADE20K's members are JPEG and PNG files of a few MB at most: one that claims more is a zip bomb.
MAX_MEMBER_BYTES = 100 * 2**20
LAYOUT_FOLDERS = tuple(f"{kind}/{split}" for kind in ("images", "annotations") for split in SPLITS)


@dataclass(frozen=True)
class Sample:
    name: str  # e.g. ADE_train_00000001
    split: str  # "training" or "validation"

    @property
    def image(self) -> str:
        """The image's path below ADEChallengeData2016/."""
        return f"images/{self.split}/{self.name}.jpg"

    @property
    def annotation(self) -> str:
        """The mask's path below ADEChallengeData2016/; it may not exist (prepare counts it)."""
        return f"annotations/{self.split}/{self.name}.png"


class Source:
    """Where the samples live; a subclass says how to list a folder and read a file."""

    def file_names(self, folder: str) -> list[str]:
        """Names of the files directly in `folder` (a path below the dataset); [] if none."""
        raise NotImplementedError

    def has_folder(self, folder: str) -> bool:
        raise NotImplementedError

    def read(self, path: str) -> bytes | None:
        """The bytes of the file at `path` below the dataset, or None when there is none."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def list_samples(self, split: str) -> list[Sample]:
        """Every image of a split, sorted by name."""
        names = sorted(name for name in self.file_names(f"images/{split}") if name.endswith(".jpg"))
        return [Sample(name.removesuffix(".jpg"), split) for name in names]

    def missing_folders(self) -> list[str]:
        """The folders of the layout (images/ and annotations/ of both splits) that are absent."""
        return [folder for folder in LAYOUT_FOLDERS if not self.has_folder(folder)]

    def count_files(self) -> dict[str, dict[str, int]]:
        """Images (.jpg) and annotations (.png) per split, as the download manifest records."""
        return {
            split: {
                kind: sum(name.endswith(suffix) for name in self.file_names(f"{kind}/{split}"))
                for kind, suffix in (("images", ".jpg"), ("annotations", ".png"))
            }
            for split in SPLITS
        }


class FolderSource(Source):
    """An extracted ADEChallengeData2016/ folder."""

    def __init__(self, dataset: Path) -> None:
        self.dataset = Path(dataset)

    def __str__(self) -> str:
        return str(self.dataset)

    def file_names(self, folder: str) -> list[str]:
        path = self.dataset / folder
        return os.listdir(path) if path.is_dir() else []

    def has_folder(self, folder: str) -> bool:
        return (self.dataset / folder).is_dir()

    def read(self, path: str) -> bytes | None:
        file = self.dataset / path
        return file.read_bytes() if file.is_file() else None


class ZipSource(Source):
    """ADEChallengeData2016.zip, read in place: members come straight out of the zip.

    Open one per process: a handle inherited over fork shares its file position with the
    parent's, so workers reading through it at once would read each other's bytes.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.archive = zipfile.ZipFile(self.path)
        except zipfile.BadZipFile:
            raise StageError(f"{self.path} is not a zip archive") from None

    def __str__(self) -> str:
        return str(self.path)

    def close(self) -> None:
        self.archive.close()

    def file_names(self, folder: str) -> list[str]:
        prefix = f"{DATASET_DIR}/{folder}/"
        rests = (name[len(prefix) :] for name in self.archive.namelist() if name.startswith(prefix))
        return [rest for rest in rests if rest and "/" not in rest]

    def has_folder(self, folder: str) -> bool:
        prefix = f"{DATASET_DIR}/{folder}/"
        return any(name.startswith(prefix) for name in self.archive.namelist())

    def read(self, path: str) -> bytes | None:
        """A member's bytes; one that claims more than MAX_MEMBER_BYTES is refused unread, so
        a doctored zip cannot fill memory (zipfile never inflates past the declared size)."""
        try:
            info = self.archive.getinfo(f"{DATASET_DIR}/{path}")
        except KeyError:
            return None
        if info.file_size > MAX_MEMBER_BYTES:
            raise StageError(
                f"{self.path}: member {info.filename!r} claims {info.file_size} bytes, more "
                f"than {MAX_MEMBER_BYTES}"
            )
        return self.archive.read(info)


def locate(path: Path) -> Path:
    """The zip or dataset folder that `path` names.

    Accepts the download stage's output folder (the zip plus download.json), the zip itself,
    an extracted ADEChallengeData2016/ folder or the folder that holds one.
    """
    path = Path(path)
    if path.is_file():
        return path
    if (path / ARCHIVE_NAME).is_file():
        if not (path / MANIFEST_NAME).is_file():
            raise StageError(
                f"{path} holds {ARCHIVE_NAME} but no {MANIFEST_NAME}: the download stage did "
                "not finish there (run it again, or give the zip's own path)"
            )
        return path / ARCHIVE_NAME
    if (path / DATASET_DIR / "images").is_dir():
        return path / DATASET_DIR
    return path


def open_source(path: Path) -> Source:
    """A zip file or a dataset folder, as `locate` returns them."""
    return ZipSource(path) if Path(path).is_file() else FolderSource(path)


def on_fuse_mount(path: Path, mounts: Path = Path("/proc/mounts")) -> bool:
    """True for a path under /gcs/ or on a FUSE filesystem, as Vertex AI mounts Cloud Storage.

    There every read is a request to Cloud Storage and appending to a file rewrites an object,
    so a zip is best copied to local disk before reading, and downloaded to local disk.
    """
    path = Path(path).resolve()
    if path.parts[:2] == ("/", "gcs"):
        return True
    try:
        lines = mounts.read_text().splitlines()
    except OSError:
        return False
    mount_point, fs_type = "", ""
    for fields in (line.split() for line in lines):
        if len(fields) < 3:
            continue
        # /proc/mounts writes a space in a mount point as \040 (octal escapes).
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[1])
        if path.is_relative_to(point) and len(point) >= len(mount_point):  # the last one wins
            mount_point, fs_type = point, fields[2]
    return fs_type.startswith("fuse")


@contextlib.contextmanager
def local_dataset(dataset_dir: str | Path, scratch_dir: Path | None) -> Iterator[Path]:
    """The zip or dataset folder that `dataset_dir` names, on local disk while in use.

    A zip in Cloud Storage (a gs:// URI of the zip or of the download stage's output) or on a
    FUSE mount is copied to a temporary folder in `scratch_dir` (default: the system's), removed
    afterwards: the workers read tens of thousands of members, each a request over the network.
    """
    text = str(dataset_dir)
    if storage.is_gcs_uri(text):
        uri = text if text.endswith(".zip") else f"{text.rstrip('/')}/{ARCHIVE_NAME}"
        if uri != text:  # a download output folder: complete only with its manifest, as locally
            folder = text.rstrip("/")
            with storage.explained_errors(folder):
                names = storage.list_objects(f"{folder}/")
            if f"{folder}/{ARCHIVE_NAME}" in names and f"{folder}/{MANIFEST_NAME}" not in names:
                raise StageError(
                    f"{folder} holds {ARCHIVE_NAME} but no {MANIFEST_NAME}: the download stage "
                    "did not finish there (run it again, or give the zip's own gs:// URI)"
                )
        with storage.explained_errors(uri):
            size = storage.object_size(uri)
        with _scratch_folder(scratch_dir, size) as scratch:
            with disk.disk_full_error(scratch / ARCHIVE_NAME, size):
                path = storage.download_file(uri, scratch / ARCHIVE_NAME)
            yield path
        return
    dataset = locate(Path(text))
    if not (dataset.is_file() and on_fuse_mount(dataset)):
        yield dataset
        return
    size = dataset.stat().st_size
    with _scratch_folder(scratch_dir, size) as scratch:
        log.info("copying %s to %s: reading it in place over FUSE would be slow", dataset, scratch)
        with disk.disk_full_error(scratch / ARCHIVE_NAME, size):
            path = Path(shutil.copyfile(dataset, scratch / ARCHIVE_NAME))
        yield path


@contextlib.contextmanager
def _scratch_folder(scratch_dir: Path | None, size: int | None = None) -> Iterator[Path]:
    """A temporary folder for the zip in `scratch_dir` (default: the system's), checked to be a
    writable folder with room for `size` bytes before anything is copied."""
    folder = Path(scratch_dir if scratch_dir is not None else tempfile.gettempdir())
    with disk.usable_folder(folder, "--scratch-dir"):
        if size is not None:
            disk.check_free_space([(folder, size)], "the dataset zip copied to --scratch-dir")
        with tempfile.TemporaryDirectory(prefix="prepare-dataset-", dir=folder) as scratch:
            yield Path(scratch)
