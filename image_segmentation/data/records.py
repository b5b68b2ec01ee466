"""TFRecord files of tf.train.Example, and the mask PNGs in them, written and read without
TensorFlow.

The data stages stay light (no TensorFlow in their images); the format is byte-compatible with
`tf.io.TFRecordWriter` and `tf.train.Example`, which the tests check against TensorFlow itself.
Feature keys are DeepLab's, as the legacy tool wrote them.
"""

import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import google_crc32c
from PIL import Image

IMAGE_ENCODED = "image/encoded"
IMAGE_FILENAME = "image/filename"
IMAGE_FORMAT = "image/format"
IMAGE_HEIGHT = "image/height"
IMAGE_WIDTH = "image/width"
IMAGE_CHANNELS = "image/channels"
MASK_ENCODED = "image/segmentation/class/encoded"
MASK_FORMAT = "image/segmentation/class/format"

_LEN, _VARINT = 2, 0


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | _LEN) + _varint(len(payload)) + payload


def _feature(value: bytes | int) -> bytes:
    if isinstance(value, bytes):  # Feature.bytes_list (1) -> BytesList.value (1)
        return _field(1, _field(1, value))
    return _field(3, _field(1, _varint(value)))  # Feature.int64_list (3), packed value (1)


def encode_example(features: dict[str, bytes | int]) -> bytes:
    """Serialize a tf.train.Example whose features are single bytes or non-negative ints."""
    entries = b"".join(
        _field(1, _field(1, key.encode()) + _field(2, _feature(value)))
        for key, value in features.items()
    )
    return _field(1, entries)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(mask: Image.Image) -> bytes:
    """An 8-bit grayscale PNG of unfiltered rows at zlib level 1.

    Class masks are long runs of a few values, so this is about as small as PIL's encoder with
    its per-row filter search, in a third of the time.
    """
    width, height = mask.size
    rows = Image.new("L", (width + 1, height))  # column 0: each row's filter type, 0 (none)
    rows.paste(mask, (1, 0))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8 bits, grayscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(rows.tobytes(), 1))
        + _chunk(b"IEND", b"")
    )


def segmentation_example(
    image: bytes, filename: str, height: int, width: int, mask_png: bytes
) -> bytes:
    """One image with its class mask, with the DeepLab/legacy feature keys."""
    return encode_example(
        {
            IMAGE_ENCODED: image,
            IMAGE_FILENAME: filename.encode(),
            IMAGE_FORMAT: b"jpeg",
            IMAGE_HEIGHT: height,
            IMAGE_WIDTH: width,
            IMAGE_CHANNELS: 3,
            MASK_ENCODED: mask_png,
            MASK_FORMAT: b"png",
        }
    )


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _fields(data: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) pairs of a protobuf message: varints and length-delimited only."""
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        if key & 7 == _VARINT:
            value, pos = _read_varint(data, pos)
        elif key & 7 == _LEN:
            size, pos = _read_varint(data, pos)
            value, pos = data[pos : pos + size], pos + size
        else:
            raise ValueError(f"unsupported protobuf wire type {key & 7}")
        yield key >> 3, value


def _decode_feature(data: bytes) -> bytes | int:
    for kind, payload in _fields(data):
        for number, value in _fields(payload):
            if number != 1:
                continue
            if kind == 1:
                return value
            if kind == 3:  # packed (bytes) or not (int)
                return value if isinstance(value, int) else _read_varint(value, 0)[0]
    raise ValueError("feature holds no bytes or int64 value")


def decode_example(record: bytes) -> dict[str, bytes | int]:
    """The first value of each feature of a serialized tf.train.Example."""
    features = {}
    for _, entries in _fields(record):
        for _, entry in _fields(entries):
            parts = dict(_fields(entry))
            features[parts[1].decode()] = _decode_feature(parts.get(2, b""))
    return features


def _masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


class TFRecordWriter:
    """Writes records to `path` through a temporary file, renamed into place on close."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._partial = self.path.with_name(self.path.name + ".partial")
        self._file = open(self._partial, "wb")  # noqa: SIM115 - closed in close()

    def write(self, record: bytes) -> None:
        header = struct.pack("<Q", len(record))
        self._file.write(header + struct.pack("<I", _masked_crc(header)))
        self._file.write(record + struct.pack("<I", _masked_crc(record)))

    def close(self) -> None:
        self._file.close()
        self._partial.replace(self.path)

    def __enter__(self) -> "TFRecordWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._file.close()
            self._partial.unlink(missing_ok=True)


def read_records(path: Path) -> Iterator[bytes]:
    """The records of a TFRecord file, each checked against its CRCs."""
    with open(path, "rb") as file:
        while header := file.read(12):
            if len(header) < 12:
                raise ValueError(f"{path}: truncated record header")
            (length,) = struct.unpack("<Q", header[:8])
            if _masked_crc(header[:8]) != struct.unpack("<I", header[8:])[0]:
                raise ValueError(f"{path}: corrupt record length")
            body = file.read(length + 4)
            if (
                len(body) < length + 4
                or _masked_crc(body[:length]) != struct.unpack("<I", body[length:])[0]
            ):
                raise ValueError(f"{path}: truncated or corrupt record")
            yield body[:length]
