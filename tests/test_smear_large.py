"""Smear images too large to decode whole (a whole-slide scan, a stitched field): streamed row by row
by libvips, with the answer of the whole image and memory bounded by a row of tiles."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgehema.exceptions import InputFileError
from edgehema.smear.image_io import probe
from edgehema.smear.pipeline import PREVIEW_SIDE, analyse

from .test_smear import field_mosaic, smear_like, whole_and_streamed

pyvips = pytest.importorskip("pyvips", reason="pyvips (the large-images extra, in the test extra) is not installed")


def separate_cells_field() -> np.ndarray:
    """A 640 x 480 field whose 8 red cells and 1 white cell (160 pixels across, nucleus and
    cytoplasm) all lie well inside it: copies side by side hold 8 and 1 cells per copy, none cut."""
    img = np.full((480, 640, 3), (215, 210, 212), np.uint8)
    for x in (90, 230, 410, 550):
        for y in (100, 380):
            cv2.circle(img, (x, y), 45, (175, 160, 205), -1)
    cv2.circle(img, (320, 240), 80, (200, 170, 215), -1)
    cv2.circle(img, (320, 240), 55, (180, 60, 90), -1)
    return img


def test_every_cell_of_a_mosaic_is_counted_once_wherever_the_tiles_cut():
    # 7 x 6 copies: tiles (640 x 480, overlapping) cut across cells everywhere. With an overlap of
    # 128 this gave 330 red and 49 white cells (big cells cut by a tile edge counted twice, cells
    # near an edge scored low).
    # The scale is given (red cells 90 px across: 7.5 / 90 um per px), so the mosaic and the field
    # are detected at the same scale: tiles of the detector's input at its scale, cut anywhere.
    field = separate_cells_field()
    one, _, _ = analyse("field.png", "model", image=field, um_per_px=7.5 / 90, wbc="none")
    assert one["counts"] == {"rbc": 8, "wbc": 1, "plt": 0}
    many, _, _ = analyse("mosaic.png", "model", image=np.tile(field, (7, 6, 1)), um_per_px=7.5 / 90, wbc="none")
    assert many["counts"] == {"rbc": 8 * 42, "wbc": 42, "plt": 0}


@pytest.mark.parametrize("ext", ["png", "jpg", "tif"])
def test_a_streamed_image_gives_the_whole_images_answer(tmp_path, monkeypatch, ext):
    # 1920 x 1440: 12 tiles in 4 rows, so tiles share rows and columns with their neighbours.
    path = tmp_path / f"field.{ext}"
    cv2.imwrite(str(path), field_mosaic(3, 3))
    for stain in ("never", "always"):  # "always": normalised with the whole image's colour statistics
        (_, image, _), (streamed, preview, _) = whole_and_streamed(path, monkeypatch, stain)
        assert streamed["counts"]["rbc"] > 50
        # The preview of an image under PREVIEW_SIDE is the image itself.
        assert streamed["overlay_scale"] == 1.0 and preview.shape == image.shape
        if ext != "jpg":
            np.testing.assert_array_equal(preview, image)


def test_a_20000_pixel_image_is_counted_in_bounded_memory(tmp_path):
    # 20,480 x 20,160 pixels: 1.24 GB as 8-bit colour, were it decoded whole. Measured in the child
    # process itself (its own peak resident size).
    if not Path("/proc/self/status").is_file():
        pytest.skip("the peak resident size is read from /proc (Linux)")
    field = tmp_path / "field.png"
    cv2.imwrite(str(field), separate_cells_field())
    big = tmp_path / "slide.jpg"
    pyvips.Image.new_from_file(str(field)).replicate(32, 42).jpegsave(str(big), Q=95)
    assert probe(big) == ("jpeg", (20_480, 20_160))
    decoded = 20_480 * 20_160 * 3
    # VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over from the parent (pytest, large by now).
    code = ("import sys\nfrom edgehema.cli import main\ntry:\n    main()\nfinally:\n"
            "    hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
            "    sys.stderr.write(f'peak_kb={hwm}\\n')\n")
    out = tmp_path / "overlays"
    proc = subprocess.run([sys.executable, "-c", code, "smear", "--json", "--overlay", str(out), "--um-per-px",
                           str(7.5 / 90), str(big)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    peak = 1024 * int(proc.stderr.strip().splitlines()[-1].split("=")[1])
    assert peak < 0.6 * decoded, f"peak resident memory {peak / 1e6:.0f} MB for a {decoded / 1e6:.0f} MB image"
    result = json.loads(proc.stdout)
    assert (result["width"], result["height"], result["decoded"]) == (20_480, 20_160, "streamed")
    # 1,344 copies of one field: its 8 red cells and 1 white cell each, every copy counted once.
    assert result["counts"] == {"rbc": 8 * 1344, "wbc": 1344, "plt": 0}
    overlay = cv2.imread(result["overlay"])
    assert max(overlay.shape[:2]) == PREVIEW_SIDE and result["overlay_scale"] == pytest.approx(PREVIEW_SIDE / 20_480)


def test_without_pyvips_a_large_image_is_refused_in_one_line(tmp_path, monkeypatch):
    path = tmp_path / "field.png"
    cv2.imwrite(str(path), field_mosaic(3, 3))
    monkeypatch.setenv("EDGEHEMA_MAX_IMAGE_PIXELS", "1000000")
    monkeypatch.setitem(sys.modules, "pyvips", None)  # import pyvips now raises ImportError
    with pytest.raises(InputFileError, match=r"1,920 x 1,440 pixels is more than this device decodes whole .*"
                                             r"pip install 'edgehema\[large-images\]'"):
        analyse(path)


def test_corrupt_large_images_are_one_line_each_and_the_others_counted(tmp_path):
    image = field_mosaic(3, 3)
    cv2.imwrite(str(tmp_path / "good.png"), image)
    jpeg = bytearray(cv2.imencode(".jpg", image)[1].tobytes())
    jpeg[len(jpeg) // 2:len(jpeg) // 2 + 5000] = bytes(5000)  # corrupt data, end marker intact
    (tmp_path / "corrupt.jpg").write_bytes(jpeg)
    png = cv2.imencode(".png", image)[1].tobytes()
    (tmp_path / "short.png").write_bytes(png[: len(png) // 2])
    env = {**__import__("os").environ, "EDGEHEMA_MAX_IMAGE_PIXELS": "1000000"}
    proc = subprocess.run([sys.executable, "-m", "edgehema", "smear", "--json", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    errors = proc.stderr.strip().splitlines()
    assert len(errors) == 2, errors
    assert any("corrupt.jpg: rows" in e and "corrupt JPEG image" in e for e in errors), errors
    assert any("short.png: rows" in e and "corrupt PNG image" in e for e in errors), errors
    counted = [r for r in map(json.loads, proc.stdout.splitlines()) if r["kind"] == "smear"]  # (a folder's slide line follows)
    assert [(Path(r["source"]).name, r["decoded"]) for r in counted] == [("good.png", "streamed")]


def test_sizes_come_from_headers_without_decoding(tmp_path):
    image = smear_like()
    cv2.imwrite(str(tmp_path / "a.tif"), image)
    pyvips.Image.new_from_array(image[:, :, ::-1].copy()).tiffsave(str(tmp_path / "big.tif"), bigtiff=True, tile=True)
    jpeg = cv2.imencode(".jpg", image)[1].tobytes()
    # A 60 kB APP1 (EXIF) segment before the frame header, as cameras write.
    app1 = b"\xff\xe1" + (60_002).to_bytes(2, "big") + bytes(60_000)
    (tmp_path / "exif.jpg").write_bytes(jpeg[:2] + app1 + jpeg[2:])
    for name in ("a.tif", "big.tif", "exif.jpg"):
        kind, size = probe(tmp_path / name)
        assert size == (640, 480), name
    assert probe(tmp_path / "big.tif")[0] == "tiff"
    assert (tmp_path / "big.tif").read_bytes()[:4] == b"II+\x00"  # it is a BigTIFF
