"""The predict stage: segment your own photos with a trained model folder or an exported TFLite
file, to see what a model makes of them.

For each photo it writes into the output folder `NAME.overlay.png` (the photo with each class
tinted in its colour, the evaluation report's colours; "none" and unpredicted pixels are left
untinted), `NAME.labels.png` (the class index of every pixel at the photo's own size, 255 where
the model gives no class) and `NAME.json` (each class's share of the photo's pixels, the model
and the resize mode used). Photos are read as they are shown (EXIF orientation applied) and
converted to RGB, then fed to the model as `preprocessing.py` says.

This module is the command line, finding the photos and checking them, the output folder and
the model without TensorFlow, so mistakes are told at once; the work is predictor.py's,
imported only when the stage runs. A file that is not a readable image is skipped, counted and
named at the end, as prepare skips bad samples; the run fails only when no photo is left.
Photos are decoded whole: a 100-megapixel photo takes several gigabytes of memory.
"""

import argparse
import logging
import tempfile
from pathlib import Path

from PIL import Image

from image_segmentation import disk
from image_segmentation.contracts import export_folder, model_folder
from image_segmentation.contracts.prediction_folder import LABELS_SUFFIX, OVERLAY_SUFFIX
from image_segmentation.errors import StageError

log = logging.getLogger(__name__)

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "Each PHOTO is an image file, a folder (its .jpg/.jpeg/.png files, sorted), a gs:// "
        "object or a gs:// prefix ending in / (its photo files). For each photo NAME writes "
        "OUTPUT/NAME.overlay.png, OUTPUT/NAME.labels.png (class index per pixel at the "
        "photo's size; 255: no class) and OUTPUT/NAME.json (share of the photo per class), "
        "and prints a one-line summary."
    )
    add = parser.add_argument
    add(
        "photos",
        nargs="+",
        metavar="PHOTO",
        help="a photo, a folder of photos, or a gs:// photo or prefix/",
    )
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--model-dir", type=Path, help="the train stage's output")
    model.add_argument(
        "--tflite", type=Path, help="a .tflite file of an export folder (export.json beside it)"
    )
    add("--output-dir", type=Path, required=True, help="where the overlays, labels and JSON go")


def find_photos(inputs: list[str], output_dir: Path) -> list[Path]:
    """The local photos named: files as given, folders' photo files sorted, except this
    stage's own outputs (a run into a folder inside the photo folder must not predict them
    next time). gs:// inputs are `download_photos`'s; a missing path or a folder without
    photos is refused."""
    photos = []
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            found = sorted(
                p
                for p in path.iterdir()
                if p.suffix.lower() in PHOTO_SUFFIXES and not is_output(p, output_dir)
            )
            if not found:
                raise StageError(f"{path} holds no {'/'.join(PHOTO_SUFFIXES)} photos")
            photos += found
        elif path.is_file():
            photos.append(path)
        else:
            raise StageError(f"{path} does not exist")
    return photos


def is_output(path: Path, output_dir: Path) -> bool:
    """Whether `path` is an output of this stage: in the output folder, or named like one."""
    inside = path.resolve().parent == Path(output_dir).resolve()
    return inside or path.name.endswith((OVERLAY_SUFFIX, LABELS_SUFFIX))


def readable(sources: dict[str, Path]) -> tuple[dict[str, Path], list[str]]:
    """The photos Pillow can open and check, and one line for each file it cannot."""
    good, skipped = {}, []
    for source, path in sources.items():
        try:
            with Image.open(path) as image:
                image.verify()
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
            skipped.append(f"{source} ({error})")
        else:
            good[source] = path
    return good, skipped


def download_photos(inputs: list[str], folder: Path) -> dict[str, Path]:
    """Each gs:// photo downloaded into its own subfolder of `folder`, by its URI; a prefix
    ending in / stands for the photo files under it."""
    from image_segmentation.cloud import storage

    uris = []
    for uri in inputs:
        if not uri.endswith("/"):
            uris.append(uri)
            continue
        with storage.explained_errors(uri):
            found = [u for u in storage.list_objects(uri) if u.lower().endswith(PHOTO_SUFFIXES)]
        if not found:
            raise StageError(f"{uri} holds no {'/'.join(PHOTO_SUFFIXES)} files")
        uris += found
    downloaded = {}
    for number, uri in enumerate(uris):
        target = folder / str(number)  # photos of one name in two places stay apart
        target.mkdir(parents=True)
        with storage.explained_errors(uri):
            downloaded[uri] = storage.download_file(uri, target)
    return downloaded


def output_names(sources: dict[str, Path]) -> list[str]:
    """The name each photo's outputs start with (its file name without the suffix); two
    photos of one name would overwrite each other's, so they are refused, named as the user
    named them."""
    names, seen = [], {}
    for source, photo in sources.items():
        name = photo.stem
        if name in seen:
            raise StageError(
                f"{seen[name]} and {source} would both write {name}.*: predict them into "
                "separate --output-dir folders"
            )
        seen[name] = source
        names.append(name)
    return names


def run(args: argparse.Namespace) -> int:
    remote = [text for text in args.photos if text.startswith("gs://")]
    local = find_photos(
        [text for text in args.photos if not text.startswith("gs://")], args.output_dir
    )
    if args.model_dir is not None:
        config = model_folder.require_complete(args.model_dir)  # now, not after TensorFlow loads
    else:
        record = export_folder.require_tflite(args.tflite)
    with (
        disk.usable_folder(args.output_dir, "--output-dir"),
        tempfile.TemporaryDirectory(prefix="predict-") as download_dir,
    ):
        downloaded = download_photos(remote, Path(download_dir))
        sources, skipped = readable({str(path): path for path in local} | downloaded)
        if not sources:
            raise StageError(f"no photo can be read: {'; '.join(skipped)}")
        names = output_names(sources)
        from image_segmentation.evaluation import predictor

        if args.model_dir is not None:
            model = predictor.load_keras_model(args.model_dir, config)
        else:
            model = predictor.tflite_model(args.tflite, record)
        skipped += predictor.predict_photos(model, sources, names, args.output_dir)
    if skipped:
        unread = "; ".join(skipped)
        log.warning("skipped %d file(s) that are not readable photos: %s", len(skipped), unread)
    return 0
