"""`make demo`: every stage end to end on generated ADE20K-layout data, on this machine.

The data are photo-like rooms (`rooms/generate.py`: living rooms among other scenes, at
ADE20K's photo sizes, JPEG) plus one broken sample of each kind prepare must handle.

The dataset zip is served over loopback HTTP and the models go to a local GCS emulator, so the
stages run exactly as in the pipeline (same commands), with nothing fetched from the internet.
Last, the trained model segments a real ADE20K photo from the shared sample data, if there is one.
"""

import argparse
import functools
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from PIL import Image

from image_segmentation import cli
from image_segmentation.data import synthetic
from image_segmentation.data.labels import LIVING_ROOM_WHITELIST
from image_segmentation.data.rooms import generate
from image_segmentation.errors import StageError

log = logging.getLogger(__name__)
BUCKET = "demo-models"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=Path("work/demo"),
        help="folder for everything the demo makes; emptied first",
    )
    parser.add_argument("--train-images", type=int, default=64)
    parser.add_argument("--val-images", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=256, help="training size (pixels)")
    parser.add_argument("--epochs", type=int, default=30)


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args) -> None:
        log.debug(format, *args)


def _serve(folder: Path) -> tuple[ThreadingHTTPServer, str]:
    """Serve `folder` on 127.0.0.1 from a background thread."""
    server = ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(folder))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _start_gcs_emulator(log_file: Path) -> subprocess.Popen:
    """A local gcp-storage-emulator; STORAGE_EMULATOR_HOST points the stages at it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with open(log_file, "wb") as output:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gcp_storage_emulator",
                "start",
                "--host=127.0.0.1",
                f"--port={port}",
                "--in-memory",
                f"--default-bucket={BUCKET}",
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 30
    while not _listening(port):
        if time.monotonic() > deadline or server.poll() is not None:
            server.kill()
            raise StageError(f"the GCS emulator did not start; see {log_file}")
        time.sleep(0.2)
    os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{port}"
    return server


def _stage(stage: str, *arguments: object, **options: object) -> None:
    """Run one stage through the same command line its container uses: `arguments` as they are,
    then `key=v` as `--key v`."""
    argv = [stage, *(str(argument) for argument in arguments)]
    for key, value in options.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    print(f"\n$ python -m image_segmentation {' '.join(argv)}", flush=True)
    if cli.main(argv) != 0:
        raise StageError(f"the {stage} stage failed (see above)")


def _sample_photo(work: Path) -> tuple[Path, str]:
    """A real ADE20K validation photo from the shared sample data beside the repository, or,
    where there is none, a generated one; and what it is, for the summary."""
    samples = Path(__file__).resolve().parents[3] / "shared" / "data" / "ade20k-sample" / "images"
    photos = sorted(samples.glob("*.jpg")) if samples.is_dir() else []
    if photos:
        return photos[0], "a real ADE20K photo"
    print(f"No ADE20K sample photos in {samples}: predicting a generated photo instead")
    image, _ = synthetic.render_room(np.random.default_rng(0), 384, 512)
    photo = work / "photo.png"
    Image.fromarray(image).save(photo)
    return photo, "a generated photo"


def run(args: argparse.Namespace) -> int:
    work = args.work_dir.resolve()
    shutil.rmtree(work, ignore_errors=True)
    source = work / "source"
    print(
        f"Generating {args.train_images}+{args.val_images} photo-like rooms in the ADE20K "
        f"layout in {source}"
    )
    dataset = generate.generate_rooms(source, args.train_images, args.val_images)
    synthetic.add_bad_samples(dataset)
    archive = source / "ADEChallengeData2016.zip"
    sha1 = synthetic.make_zip(dataset, archive)
    shutil.rmtree(dataset)

    server, url = _serve(source)
    emulator = _start_gcs_emulator(work / "gcs-emulator.log")
    try:
        _stage(
            "download",
            source=f"{url}/{archive.name}",
            output_dir=work / "ade20k",
            sha1=sha1,
            size=archive.stat().st_size,
        )
        _stage(
            "prepare",
            dataset_dir=work / "ade20k",
            output_dir=work / "data",
            whitelist=LIVING_ROOM_WHITELIST,
            threshold=0.2,
            train_shards=4,
            val_shards=2,
        )
        _stage(
            "train",
            data_dir=work / "data",
            output_dir=work / "model",
            image_size=args.image_size,
            alpha=0.25,
            epochs=args.epochs,
            batch_size=8,
        )
        _stage(
            "evaluate",
            model_dir=work / "model",
            data_dir=work / "data",
            output_dir=work / "evaluation",
        )
        _stage(
            "export",
            model_dir=work / "model",
            evaluation_dir=work / "evaluation",
            data_dir=work / "data",
            output_dir=work / "export",
        )
        _stage(
            "challenge",
            evaluation_dir=work / "evaluation",
            data_dir=work / "data",
            destination=f"gs://{BUCKET}/segmentation",
            model_name="living-room",
            output_dir=work / "challenge",
        )
        _stage(
            "upload",
            export_dir=work / "export",
            model_dir=work / "model",
            evaluation_dir=work / "evaluation",
            challenge_dir=work / "challenge",
            destination=f"gs://{BUCKET}/segmentation",
            model_name="living-room",
            version=1,
            output_uris=work / "uploaded.json",
        )
    finally:
        server.shutdown()
        emulator.terminate()
        emulator.wait(timeout=10)
    photo, photo_kind = _sample_photo(work)
    _stage("predict", photo, model_dir=work / "model", output_dir=work / "predictions")

    metrics = json.loads((work / "evaluation" / "metrics.json").read_text())
    uploaded = json.loads((work / "uploaded.json").read_text())
    coreml = json.loads((work / "export" / "export.json").read_text())["coreml"]
    print("\nDemo finished. What it made:")
    print(f"  downloaded dataset  {work / 'ade20k'} (the verified zip and download.json)")
    print(f"  prepared TFRecords  {work / 'data'}")
    print(f"  trained model       {work / 'model'}")
    for path in sorted((work / "export").iterdir()):
        print(f"  exported            {path}")
    print(f"  uploaded to         {uploaded['uri']} (local emulator, gone when the demo ends)")
    print(f"  champion pointer    {uploaded['champion_pointer']} (names version 1)")
    print(f"  evaluation report   {work / 'evaluation' / 'report.html'}")
    print(
        f"  predicted overlay   {work / 'predictions' / f'{photo.stem}.overlay.png'} "
        f"({photo_kind}; the demo model trained briefly on generated images, so expect a "
        "poor segmentation)"
    )
    print(
        f"  validation metrics  mIoU {metrics['miou']:.3f} and pixel accuracy "
        f"{metrics['pixel_accuracy']:.3f} (the quality gate's convention: 'none' scored as a "
        "class, unlabelled pixels not)"
    )
    print(
        f"  Core ML file's own  mIoU {coreml['quality']['miou']:.3f} on its float16 weights, "
        f"{coreml['quality']['miou_change']:+.4f} against FP32 ({coreml['bytes']} bytes; "
        "export --max-miou-drop picks the smallest compression within a drop)"
    )
    return 0
