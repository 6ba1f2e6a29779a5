"""Uncompressed BMP images too large to decode whole, read as rows straight from the file.

libvips (which streams JPEG, PNG and TIFF) has no BMP loader in its binary wheels, and a BMP
needs none: an uncompressed BMP is its pixel rows, padded to 4 bytes, stored bottom-up (or
top-down where the height is negative). Each band of rows asked for is one read at a known
offset, so memory holds that band only (no memory map: mapped pages of a 1 GB file would stay
resident). 24- and 32-bit colour and 8-bit palette images are read this way; compressed (RLE) and
other depths are refused in one line, as is a file shorter than its header says.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from edgehema.exceptions import InputFileError
from edgehema.smear.rows import MAX_STREAM_WIDTH

#: BI_RGB (none) and BI_BITFIELDS / BI_ALPHABITFIELDS (masks; accepted where they are plain BGR(A)).
_UNCOMPRESSED, _BITFIELDS, _ALPHABITFIELDS = 0, 3, 6
_PLAIN_MASKS = (0x00FF0000, 0x0000FF00, 0x000000FF)
#: Sizes of the info headers that carry 32-bit width and height (BITMAPINFOHEADER and its successors).
_INFO_HEADERS = (40, 52, 56, 108, 124)


class BmpRows:
    """Rows of an uncompressed BMP, 8-bit BGR, read from the file as asked (``rows.Rows``)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as fh:
                head = fh.read(14 + 124 + 1024)
                size = os.fstat(fh.fileno()).st_size
        except OSError as exc:
            raise InputFileError(self.path, f"cannot read: {exc.strerror}") from None
        if len(head) < 54:
            raise InputFileError(self.path, f"truncated BMP: {len(head)} bytes, shorter than its headers")
        offset, dib = struct.unpack("<I", head[10:14])[0], struct.unpack("<I", head[14:18])[0]
        if dib not in _INFO_HEADERS:
            raise InputFileError(self.path, f"BMP with a {dib}-byte info header: an image this large is streamed "
                                            f"only with a Windows info header (40 to 124 bytes)")
        width, height, _planes, bits, compression = struct.unpack("<iiHHI", head[18:34])
        if compression in (_BITFIELDS, _ALPHABITFIELDS) and bits == 32:
            # The masks follow a 40-byte header and sit at the same place inside the longer ones.
            if struct.unpack("<III", head[54:66]) != _PLAIN_MASKS:
                raise InputFileError(self.path, "BMP with unusual colour masks: an image this large is streamed "
                                                "only with plain 8-bit channels")
        elif compression != _UNCOMPRESSED:
            raise InputFileError(self.path, f"compressed BMP (compression {compression}): an image this large is "
                                            f"streamed only uncompressed")
        if bits not in (8, 24, 32):
            raise InputFileError(self.path, f"{bits}-bit BMP: an image this large is streamed only as 8-, 24- or "
                                            f"32-bit")
        if width <= 0 or height == 0:
            raise InputFileError(self.path, f"BMP header says {width} x {height} pixels")
        if width > MAX_STREAM_WIDTH:
            raise InputFileError(self.path, f"{width:,} pixels wide: more than the {MAX_STREAM_WIDTH:,} a row of "
                                            f"tiles is read at")
        self.width, self.height = width, abs(height)
        self._top_down = height < 0
        self._bytes = bits // 8
        self._stride = (bits * width + 31) // 32 * 4
        self._offset = offset
        end = offset + self._stride * self.height
        if size < end:
            raise InputFileError(self.path, f"truncated BMP: {size:,} bytes where its header needs {end:,}",
                                 f"byte {size}")
        self._palette = None
        if bits == 8:
            used = struct.unpack("<I", head[46:50])[0] or 256
            start = 14 + dib
            table = np.frombuffer(head[start:start + 4 * used], np.uint8)
            if len(table) < 4 * min(used, 256):
                raise InputFileError(self.path, "truncated BMP: its colour table is cut short")
            palette = np.zeros((256, 3), np.uint8)
            palette[:min(used, 256)] = table[:4 * min(used, 256)].reshape(-1, 4)[:, :3]  # B, G, R, reserved
            self._palette = palette

    def rows(self, y0: int, y1: int) -> np.ndarray:
        y1 = min(y1, self.height)
        n = max(0, y1 - y0)
        # The rows y0..y1 of the picture are one block of the file, in reverse order when bottom-up.
        first = y0 if self._top_down else self.height - y1
        block = bytearray(n * self._stride)
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._offset + first * self._stride)
                got = fh.readinto(block)
        except OSError as exc:
            raise InputFileError(self.path, f"cannot read: {exc.strerror}", f"rows {y0}-{y1}") from None
        if got != len(block):
            raise InputFileError(self.path, "truncated BMP: the file ended while its rows were read",
                                 f"rows {y0}-{y1}")
        raw = np.frombuffer(block, np.uint8).reshape(n, self._stride)[:, :self.width * self._bytes]
        if not self._top_down:
            raw = raw[::-1]
        if self._palette is not None:
            return self._palette[raw]
        return np.ascontiguousarray(raw.reshape(n, self.width, self._bytes)[:, :, :3])
