"""Smear images in (OpenCV): JPEG, PNG, TIFF, BMP; 8 or 16 bit; colour or greyscale.

A file is recognised by its first bytes, not its name, so a PDF renamed ``.jpg`` is refused as
what it is. The size is read from the header before anything is decoded: an image larger than
``max_pixels()`` is not decoded whole but streamed row by row (``rows.Streamed``, with the
``large-images`` extra, refused in one line without it; an uncompressed BMP by ``bmp.BmpRows``). A JPEG
without its end-of-image marker is truncated: OpenCV would decode it with grey bands and only a
libjpeg warning on stderr, so edgehema refuses it. Every refusal is one line naming the file.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from edgehema.exceptions import InputFileError

#: Largest image decoded whole, in pixels (an 8-bit colour image of this size takes 300 MB); larger
#: ones are streamed. ``EDGEHEMA_MAX_IMAGE_PIXELS`` sets it (read at each image).
MAX_PIXELS = 100_000_000


def max_pixels() -> int:
    return int(os.environ.get("EDGEHEMA_MAX_IMAGE_PIXELS", MAX_PIXELS))
#: Smallest side worth counting cells on (a cell is tens of pixels wide).
MIN_SIDE = 32

SIGNATURES = {
    b"\xff\xd8\xff": "jpeg",
    b"\x89PNG\r\n\x1a\n": "png",
    b"II*\x00": "tiff",
    b"MM\x00*": "tiff",
    b"II+\x00": "tiff",  # BigTIFF (files over 4 GB: whole-slide scans)
    b"MM\x00+": "tiff",
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


def header_size(path: Path, kind: str) -> tuple[int, int] | None:
    """(width, height) from the header without decoding (None where the header does not say)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(32)
            if kind == "png" and len(head) >= 24:
                return struct.unpack(">II", head[16:24])
            if kind == "bmp" and len(head) >= 26:
                w, h = struct.unpack("<ii", head[18:26])
                return abs(w), abs(h)
            if kind == "jpeg":
                return _jpeg_size(fh)
            if kind == "tiff":
                return _tiff_size(fh, head)
    except (struct.error, OSError):
        return None
    return None


def _jpeg_size(fh) -> tuple[int, int] | None:
    """Walk the marker segments (seeking past each, so a large EXIF block costs nothing) to the frame header."""
    fh.seek(2)
    for _ in range(1000):
        marker = fh.read(4)
        if len(marker) < 4 or marker[0] != 0xFF:
            return None
        length = struct.unpack(">H", marker[2:4])[0]
        if 0xC0 <= marker[1] <= 0xCF and marker[1] not in (0xC4, 0xC8, 0xCC):
            h, w = struct.unpack(">xHH", fh.read(5))
            return w, h
        fh.seek(length - 2, 1)
    return None


def _tiff_size(fh, head: bytes) -> tuple[int, int] | None:
    """ImageWidth (256) and ImageLength (257) of the first image file directory, classic or BigTIFF."""
    order = "<" if head[:2] == b"II" else ">"
    big = struct.unpack(order + "H", head[2:4])[0] == 43
    fh.seek(struct.unpack(order + "Q", head[8:16])[0] if big else struct.unpack(order + "I", head[4:8])[0])
    count = struct.unpack(order + ("Q" if big else "H"), fh.read(8 if big else 2))[0]
    entry, found = (20 if big else 12), {}
    table = fh.read(entry * min(count, 4096))
    for k in range(len(table) // entry):
        tag, typ = struct.unpack(order + "HH", table[k * entry:k * entry + 4])
        if tag in (256, 257):
            value = table[k * entry + (12 if big else 8):(k + 1) * entry]
            found[tag] = struct.unpack(order + ("H" if typ == 3 else "I"), value[:2 if typ == 3 else 4])[0]
    return (found[256], found[257]) if len(found) == 2 else None


def probe(path: str | os.PathLike) -> tuple[str, tuple[int, int] | None]:
    """(kind, (width, height) or None) of an image file, from its first bytes and header; refuses,
    in one line, what is no image or a truncated JPEG. Reads only the header and the last bytes."""
    path = Path(path)
    if path.is_dir():
        raise InputFileError(path, "is a folder, not an image")
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
            kind = image_kind(path, head)
            if kind == "jpeg":
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                fh.seek(max(0, size - 4096))
                if not fh.read().rstrip(b"\x00").endswith(b"\xff\xd9"):
                    raise InputFileError(path, f"truncated JPEG: no end-of-image marker ({size:,} bytes)",
                                         f"byte {size}")
    except FileNotFoundError:
        raise InputFileError(path, "no such file") from None
    except IsADirectoryError:
        raise InputFileError(path, "is a folder, not an image") from None
    except OSError as exc:
        raise InputFileError(path, f"cannot read: {exc.strerror}") from None
    return kind, header_size(path, kind)


def png_interlaced(path: Path) -> bool:
    """An Adam7-interlaced PNG (IHDR's last byte): its rows come in seven passes over the whole
    image, so it cannot be decoded row by row in bounded memory (libvips decodes it whole)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(29)
    except OSError:
        return False
    return len(head) == 29 and head[12:16] == b"IHDR" and head[28] == 1


def too_large(size: tuple[int, int] | None) -> bool:
    """Whether an image of this size is streamed rather than decoded whole."""
    return size is not None and size[0] * size[1] > max_pixels()


def open_rows(path: str | os.PathLike):
    """The image as rows (``rows.Rows``): decoded whole where it fits, else streamed (an uncompressed
    BMP from the file itself, the other formats by libvips); an image too large to decode whole is
    refused in one line where pyvips is needed and not installed."""
    from edgehema.smear.bmp import BmpRows
    from edgehema.smear.rows import InMemory, Streamed

    path = Path(path)
    kind, size = probe(path)
    if not too_large(size):
        return InMemory(read_image(path))
    w, h = size
    if kind == "png" and png_interlaced(path):
        # Measured: a 12,000 x 12,000 interlaced PNG peaked at 718 MB where the same image not
        # interlaced streams in 401 MB.
        raise InputFileError(path, f"{w:,} x {h:,} pixels is more than this device decodes whole "
                                   f"({max_pixels():,} pixels; EDGEHEMA_MAX_IMAGE_PIXELS) and this PNG is interlaced "
                                   f"(Adam7), which cannot be streamed row by row: save it again without interlacing "
                                   f"(e.g. vips copy in.png out.png), or as JPEG, TIFF or BMP")
    try:
        source = BmpRows(path) if kind == "bmp" else Streamed(path, kind)
    except ImportError:
        raise InputFileError(path, f"{w:,} x {h:,} pixels is more than this device decodes whole "
                                   f"({max_pixels():,} pixels; EDGEHEMA_MAX_IMAGE_PIXELS), and streaming it "
                                   f"needs pyvips: pip install 'edgehema[large-images]'") from None
    if min(source.width, source.height) < MIN_SIDE:
        raise InputFileError(path, f"{source.width} x {source.height} pixels: too small to hold a cell")
    return source


def read_image(path: str | os.PathLike) -> np.ndarray:
    """The image as 8-bit BGR (16-bit scaled down, greyscale made colour, alpha dropped)."""
    import cv2

    from edgehema.smear.rows import to_bgr8

    path = Path(path)
    kind, size = probe(path)
    if too_large(size):
        w, h = size
        raise InputFileError(path, f"{w:,} x {h:,} pixels is more than this device decodes whole "
                                   f"({max_pixels():,} pixels; EDGEHEMA_MAX_IMAGE_PIXELS): count it as rows "
                                   f"(edgehema smear streams it)")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputFileError(path, f"cannot read: {exc.strerror}") from None
    _quiet(cv2)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED | cv2.IMREAD_ANYDEPTH)
    if image is None:
        raise InputFileError(path, f"corrupt {kind.upper()} image: it cannot be decoded")
    if image.dtype not in (np.uint8, np.uint16):
        image = cv2.normalize(image, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    image = to_bgr8(image)
    h, w = image.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise InputFileError(path, f"{w} x {h} pixels: too small to hold a cell (at least {MIN_SIDE} pixels a side)")
    return image


def _quiet(cv2) -> None:
    """No OpenCV log lines on stderr (a truncated BMP printed one): edgehema names the problem itself."""
    try:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    except AttributeError:  # pragma: no cover - builds without the logging module
        pass


def image_files(paths: list[str | os.PathLike]) -> list[Path]:
    """Files to count: the files named, and the images in the folders named (by extension, sorted)."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in EXTENSIONS)
        else:
            out.append(p)
    return out
