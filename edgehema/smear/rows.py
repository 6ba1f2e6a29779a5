"""An image as rows read from the top down: the one interface the tiling, the quality figures and
the stain statistics need, for an image decoded whole and for one too large to decode whole.

A whole-slide scan or a stitched field can be 20,000 x 20,000 pixels: 1.2 GB as 8-bit colour, more
than the device has. Such an image is decoded as a stream of rows by libvips (``pyvips``, the
``large-images`` extra), which reads JPEG, PNG and TIFF top to bottom in bounded memory; edgehema
asks for each row once, in order, and keeps the few rows that neighbouring tiles share.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import numpy as np

from edgehema.exceptions import InputFileError

#: Widest image streamed: a band of tiles (480 rows, 8-bit colour) of this width takes 94 MB.
MAX_STREAM_WIDTH = 65_536
#: Rows pulled from libvips at a time: libvips keeps buffers in proportion to a request, so large
#: requests cost memory (a 20,480-pixel-wide JPEG: 500 MB peak pulling 512 rows at a time, 210 MB
#: pulling 16), while small ones cost no time.
STRIP = 16


class Rows(Protocol):
    """Rows of an 8-bit BGR image, asked for from the top down."""

    width: int
    height: int

    def rows(self, y0: int, y1: int) -> np.ndarray:
        """Rows ``y0`` to ``y1`` (exclusive), shape (y1 - y0, width, 3), uint8 BGR. ``y0`` never goes
        back more than the rows of the previous call."""


class InMemory:
    """An image already decoded whole."""

    def __init__(self, image: np.ndarray):
        self.image = image
        self.height, self.width = image.shape[:2]

    def rows(self, y0: int, y1: int) -> np.ndarray:
        return self.image[y0:y1]


def to_bgr8(image: np.ndarray, rgb: bool = False) -> np.ndarray:
    """8-bit BGR from what decoders give: 16-bit scaled down, greyscale made colour, alpha dropped.
    ``rgb``: the channels come in RGB order (libvips) rather than BGR (OpenCV)."""
    import cv2

    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 2:  # grey and alpha
        return cv2.cvtColor(np.ascontiguousarray(image[:, :, 0]), cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_RGBA2BGR if rgb else cv2.COLOR_BGRA2BGR)
    return cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if rgb else image


class Streamed:
    """An image decoded row by row by libvips, each row once (sequential access): memory holds the
    rows asked for last, whatever the image's size. Open it again for another pass."""

    def __init__(self, path: Path, kind: str):
        try:
            import pyvips
        except (ImportError, OSError):  # OSError: pyvips installed without its libvips
            raise ImportError("pyvips") from None
        self.path, self.kind, self._pyvips = path, kind, pyvips
        os.environ.setdefault("VIPS_CONCURRENCY", "1")  # one core per image, as the detector uses
        pyvips.cache_set_max(0)  # no operation cache: it would keep a finished stream's buffers alive
        try:
            # A file that ends early is an error, not rows of grey; so is a JPEG with corrupt data (libjpeg
            # only warns and fills in garbage). Other formats' warnings (a TIFF tag unknown to libtiff) pass.
            pyvips.vips_lib.vips_error_clear()  # libvips's error text accumulates: name only this file's
            self._image = pyvips.Image.new_from_file(str(path), access="sequential",
                                                     fail_on="warning" if kind == "jpeg" else "truncated")
        except pyvips.Error as exc:
            raise InputFileError(path, f"corrupt {kind.upper()} image: {_first_line(exc)}") from None
        self.width, self.height = self._image.width, self._image.height
        if self._image.format not in ("uchar", "ushort"):
            raise InputFileError(path, f"{self._image.format} pixels: an image this large is streamed only "
                                       f"with 8- or 16-bit pixels")
        if self.width > MAX_STREAM_WIDTH:
            raise InputFileError(path, f"{self.width:,} pixels wide: more than the {MAX_STREAM_WIDTH:,} a row of "
                                       f"tiles is read at")
        # One region over one pipeline, pulled strictly downwards: what sequential access allows.
        self._region = pyvips.Region.new(self._image)
        self._dtype = np.uint8 if self._image.format == "uchar" else np.uint16
        self._kept = np.zeros((0, self.width, 3), np.uint8)  # rows [self._top, self._next)
        self._top = self._next = 0

    def rows(self, y0: int, y1: int) -> np.ndarray:
        if y0 < self._top:
            raise ValueError(f"rows {y0}-{y1} asked for after rows from {self._top}: a stream goes down only")
        y1 = min(y1, self.height)
        if y1 > self._next:
            self._pyvips.vips_lib.vips_error_clear()
            try:
                fresh = np.empty((y1 - self._next, self.width, self._image.bands), self._dtype)
                for y in range(self._next, y1, STRIP):
                    n = min(STRIP, y1 - y)
                    fresh[y - self._next:y - self._next + n] = np.frombuffer(
                        self._region.fetch(0, y, self.width, n), self._dtype).reshape(n, self.width, -1)
            except self._pyvips.Error as exc:
                raise InputFileError(self.path, f"corrupt {self.kind.upper()} image: {_first_line(exc)}",
                                     f"rows {self._next}-{y1}") from None
            self._kept = np.concatenate([self._kept[max(0, y0 - self._top):], to_bgr8(fresh, rgb=True)])
            self._top, self._next = min(max(y0, self._top), self._next), y1
        return self._kept[y0 - self._top:y1 - self._top]


def _first_line(exc: Exception) -> str:
    """libvips's reason, one line (its text repeats a reason per thread that met it)."""
    lines = [line.strip() for line in (getattr(exc, "detail", "") or str(exc)).splitlines() if line.strip()]
    return " ".join(dict.fromkeys(lines))[:200] or str(exc)[:200]
