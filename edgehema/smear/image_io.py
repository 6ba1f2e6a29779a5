"""Smear images in (OpenCV): JPEG, PNG, TIFF, BMP; 8 or 16 bit; colour or greyscale.

A file is recognised by its first bytes, not its name, so a PDF renamed ``.jpg`` is refused as
what it is. The size is read from the header before anything is decoded, so an image too large for
the device is refused before it can take the memory (the limit is set by ``MAX_PIXELS``). A JPEG
without its end-of-image marker is truncated: OpenCV would decode it with grey bands and only a
libjpeg warning on stderr, so edgehema refuses it. Every refusal is one line naming the file.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from ..exceptions import InputFileError

#: Largest image decoded whole, in pixels (an 8-bit colour image of this size takes 300 MB).
MAX_PIXELS = int(os.environ.get("EDGEHEMA_MAX_IMAGE_PIXELS", 100_000_000))
#: Smallest side worth counting cells on (a cell is tens of pixels wide).
MIN_SIDE = 32

SIGNATURES = {
    b"\xff\xd8\xff": "jpeg",
    b"\x89PNG\r\n\x1a\n": "png",
    b"II*\x00": "tiff",
    b"MM\x00*": "tiff",
    b"BM": "bmp",
}
KNOWN_OTHERS = {b"%PDF": "a PDF document", b"PK\x03\x04": "a ZIP archive", b"GIF8": "a GIF (not supported)",
                b"RIFF": "a RIFF file (WebP/AVI; not supported)"}
EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")


def image_kind(path: Path, head: bytes) -> str:
    for sig, kind in SIGNATURES.items():
        if head.startswith(sig):
            return kind
    for sig, what in KNOWN_OTHERS.items():
        if head.startswith(sig):
            raise InputFileError(path, f"not an image: {what}", "byte 0")
    if not head:
        raise InputFileError(path, "empty file")
    raise InputFileError(path, f"not an image this reader knows (JPEG, PNG, TIFF, BMP): it starts with {head[:8]!r}",
                         "byte 0")


def header_size(path: Path, kind: str, data: bytes) -> tuple[int, int] | None:
    """(width, height) from the header without decoding, where the format makes that easy."""
    try:
        if kind == "png" and len(data) >= 24:
            return struct.unpack(">II", data[16:24])
        if kind == "bmp" and len(data) >= 26:
            w, h = struct.unpack("<ii", data[18:26])
            return abs(w), abs(h)
        if kind == "jpeg":
            i = 2
            while i + 9 < len(data):
                if data[i] != 0xFF:
                    return None
                marker = data[i + 1]
                length = struct.unpack(">H", data[i + 2:i + 4])[0]
                if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                    h, w = struct.unpack(">HH", data[i + 5:i + 9])
                    return w, h
                i += 2 + length
    except struct.error:
        return None
    return None


def read_image(path: str | os.PathLike) -> np.ndarray:
    """The image as 8-bit BGR (16-bit scaled down, greyscale made colour, alpha dropped)."""
    import cv2

    path = Path(path)
    if path.is_dir():
        raise InputFileError(path, "is a folder, not an image")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputFileError(path, "no such file") from None
    except OSError as exc:
        raise InputFileError(path, f"cannot read: {exc.strerror}") from None
    kind = image_kind(path, data[:16])
    if kind == "jpeg" and not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        raise InputFileError(path, f"truncated JPEG: no end-of-image marker ({len(data):,} bytes)", f"byte {len(data)}")
    size = header_size(path, kind, data)
    if size is not None:
        w, h = size
        if w * h > MAX_PIXELS:
            raise InputFileError(path, f"{w:,} x {h:,} pixels is more than this device decodes whole "
                                       f"({MAX_PIXELS:,} pixels; EDGEHEMA_MAX_IMAGE_PIXELS)")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED | cv2.IMREAD_ANYDEPTH)
    if image is None:
        raise InputFileError(path, f"corrupt {kind.upper()} image: it cannot be decoded")
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        image = cv2.normalize(image, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    elif image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    h, w = image.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise InputFileError(path, f"{w} x {h} pixels: too small to hold a cell (at least {MIN_SIDE} pixels a side)")
    return image


def image_files(paths: list[str | os.PathLike]) -> list[Path]:
    """Files to count: the files named, and the images in the folders named (by extension, sorted)."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in EXTENSIONS)
        else:
            out.append(p)
    return out
