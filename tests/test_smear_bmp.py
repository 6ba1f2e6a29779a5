"""BMP images too large to decode whole: read as rows from the file itself (libvips has no BMP
loader in its wheels), with the whole image's answer; what cannot be streamed is one line."""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys

import cv2
import numpy as np
import pytest

from edgehema.exceptions import InputFileError
from edgehema.smear.bmp import BmpRows
from edgehema.smear.pipeline import analyse

from .test_smear import field_mosaic, whole_and_streamed


def mosaic(rows: int = 3, cols: int = 3) -> np.ndarray:
    return field_mosaic(rows, cols)


def write_bmp(path, image: np.ndarray, bits: int = 24, top_down: bool = False, compression: int = 0) -> None:
    """A BMP written field by field (OpenCV writes bottom-up 24-bit and 8-bit grey only)."""
    h, w = image.shape[:2]
    if bits == 8:
        grey = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        pixels, palette = grey, b"".join(bytes((i, i, i, 0)) for i in range(256))
    elif bits == 32:
        pixels, palette = np.dstack([image, np.full((h, w), 255, np.uint8)]), b""
    else:
        pixels, palette = image, b""
    stride = (bits * w + 31) // 32 * 4
    raw = np.zeros((h, stride), np.uint8)
    raw[:, :w * bits // 8] = pixels.reshape(h, -1)
    if not top_down:
        raw = raw[::-1]
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, w, -h if top_down else h, 1, bits, compression, raw.size, 2835, 2835,
                       256 if bits == 8 else 0, 0)
    path.write_bytes(b"BM" + struct.pack("<IHHI", offset + raw.size, 0, 0, offset) + info + palette + raw.tobytes())


@pytest.mark.parametrize("variant", ["opencv 24-bit", "32-bit", "8-bit grey", "24-bit top-down", "odd width"])
def test_a_streamed_bmp_gives_the_whole_images_answer(tmp_path, monkeypatch, variant):
    image = mosaic()
    if variant == "odd width":  # rows padded to 4 bytes
        image = image[:, :1917]
    path = tmp_path / "field.bmp"
    if variant in ("opencv 24-bit", "odd width"):
        cv2.imwrite(str(path), image)
    else:
        write_bmp(path, image, bits={"32-bit": 32, "8-bit grey": 8}.get(variant, 24), top_down="top-down" in variant)
    np.testing.assert_array_equal(BmpRows(path).rows(0, 1440), cv2.imread(str(path)))  # as OpenCV decodes it
    for stain in ("never", "always"):
        _, (streamed, _, _) = whole_and_streamed(path, monkeypatch, stain)
        # (A grey image loses the stain that tells cells apart: fewer are found, the same either way.)
        assert streamed["counts"]["rbc"] > (5 if "grey" in variant else 50)


def test_rows_come_in_any_band(tmp_path):
    image = mosaic(2, 1)
    path = tmp_path / "f.bmp"
    cv2.imwrite(str(path), image)
    rows = BmpRows(path)
    assert (rows.width, rows.height) == (640, 960)
    for y0, y1 in [(0, 1), (0, 480), (300, 781), (959, 960), (900, 2000)]:
        np.testing.assert_array_equal(rows.rows(y0, y1), image[y0:y1])


def test_what_cannot_be_streamed_is_one_line_and_the_others_are_counted(tmp_path, monkeypatch):
    image = mosaic()
    cv2.imwrite(str(tmp_path / "good.bmp"), image)
    write_bmp(tmp_path / "rle.bmp", image, bits=8, compression=1)
    write_bmp(tmp_path / "sixteen.bmp", image[:, :, :2].copy(), bits=16)
    data = (tmp_path / "good.bmp").read_bytes()
    (tmp_path / "short.bmp").write_bytes(data[: len(data) // 2])
    expected = {"rle.bmp": "compressed BMP (compression 1)", "sixteen.bmp": "16-bit BMP",
                "short.bmp": "truncated BMP"}
    monkeypatch.setenv("EDGEHEMA_MAX_IMAGE_PIXELS", "1000000")
    for name, why in expected.items():
        with pytest.raises(InputFileError, match=re.escape(why)):
            analyse(tmp_path / name)
    env = {**os.environ, "EDGEHEMA_MAX_IMAGE_PIXELS": "1000000"}
    proc = subprocess.run([sys.executable, "-m", "edgehema", "smear", "--json", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    errors = proc.stderr.strip().splitlines()
    assert len(errors) == 3, errors
    for name, why in expected.items():
        assert sum(f"/{name}: " in e and why in e for e in errors) == 1, (name, errors)
    counted = [r for r in map(json.loads, proc.stdout.splitlines()) if r["kind"] == "smear"]  # (a folder's slide line follows)
    assert [(r["source"].rsplit("/", 1)[-1], r["decoded"]) for r in counted] == [("good.bmp", "streamed")]


def test_a_large_bmp_does_not_need_pyvips(tmp_path, monkeypatch):
    path = tmp_path / "field.bmp"
    cv2.imwrite(str(path), mosaic())
    monkeypatch.setenv("EDGEHEMA_MAX_IMAGE_PIXELS", "1000000")
    monkeypatch.setitem(sys.modules, "pyvips", None)  # import pyvips now raises ImportError
    result, _, _ = analyse(path)
    assert result["decoded"] == "streamed" and result["counts"]["rbc"] > 50


def test_a_truncated_bmp_decoded_whole_is_one_line_too(tmp_path):
    path = tmp_path / "good.bmp"
    cv2.imwrite(str(path), mosaic())
    data = path.read_bytes()
    (tmp_path / "short.bmp").write_bytes(data[: len(data) // 2])
    proc = subprocess.run([sys.executable, "-m", "edgehema", "smear", str(tmp_path / "short.bmp")],
                          capture_output=True, text=True, timeout=300)
    # OpenCV's own log line ("imdecode_ ... Unexpected end of input stream") is silenced.
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
        f"edgehema: error: {tmp_path / 'short.bmp'}: corrupt BMP image: it cannot be decoded"]
