"""The ADEChallengeData2016 layout: where the images and masks of each split live."""

from dataclasses import dataclass
from pathlib import Path

DATASET_DIR = "ADEChallengeData2016"
SPLITS = ("training", "validation")
SPLIT_PREFIX = {"training": "ADE_train", "validation": "ADE_val"}
OFFICIAL_URL = "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip"
OFFICIAL_SHA1 = "219e1696abb36c8ba3a3afe7fb2f4b4606a897c7"
OFFICIAL_SIZE = 967_382_037
OFFICIAL_COUNTS = {"training": 20_210, "validation": 2_000}


@dataclass(frozen=True)
class Sample:
    name: str  # e.g. ADE_train_00000001
    image: Path
    annotation: Path  # may not exist: prepare counts it as missing


def find_dataset(path: Path) -> Path:
    """Accept the dataset folder itself or the folder that holds ADEChallengeData2016/."""
    path = Path(path)
    if (path / DATASET_DIR / "images").is_dir():
        return path / DATASET_DIR
    return path


def list_samples(dataset: Path, split: str) -> list[Sample]:
    """Every image of a split, sorted by name, with the path its annotation should have."""
    images = Path(dataset) / "images" / split
    return [
        Sample(path.stem, path, Path(dataset) / "annotations" / split / f"{path.stem}.png")
        for path in sorted(images.glob("*.jpg"))
    ]
