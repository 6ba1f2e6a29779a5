"""The smear image path: image input and its refusals, tiling that counts a border cell once,
the VOC AP measure, quality flags, the classical baseline on BCCD val, and the commands."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgehema.exceptions import InputFileError
from edgehema.smear import count_image, read_image
from edgehema.smear.detections import Detection
from edgehema.smear.pipeline import ENGINES, detect_tiled, flags_for, quality, tiles
from edgehema.smear.voc import average_precision

from .conftest import SHARED

BCCD = SHARED / "data" / "bccd"


def require_bccd() -> Path:
    if not (BCCD / "val.txt").is_file():
        pytest.skip(f"BCCD not found at {BCCD} (it sits beside the project on every machine here)")
    return BCCD


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (a bomb: the data are not there)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))


def smear_like(w=640, h=480, seed=0) -> np.ndarray:
    """A pale background with pink discs of a red cell's size and one purple nucleus."""
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), (215, 210, 212), np.uint8)
    for _ in range(int(w * h / 25000)):
        cv2.circle(img, (int(rng.integers(50, w - 50)), int(rng.integers(50, h - 50))), 45, (175, 160, 205), -1)
    cv2.circle(img, (w // 2, h // 2), 40, (180, 60, 90), -1)
    return img


# --- input -----------------------------------------------------------------------------------

def field_mosaic(rows: int, cols: int) -> np.ndarray:
    """Smear-like fields side by side, each different."""
    return np.concatenate([np.concatenate([smear_like(seed=cols * r + c) for c in range(cols)], 1)
                           for r in range(rows)], 0)


def whole_and_streamed(path: Path, monkeypatch, stain: str):
    """The image analysed decoded whole, then streamed (a pixel limit below its size), with what every
    streamed format must give: the whole image's detections, counts, quality figures and flags.
    Returns both (result, image or preview, detections) triples."""
    from edgehema.smear.pipeline import analyse

    monkeypatch.delenv("EDGEHEMA_MAX_IMAGE_PIXELS", raising=False)
    whole = analyse(path, stain=stain)
    monkeypatch.setenv("EDGEHEMA_MAX_IMAGE_PIXELS", "1000000")
    streamed = analyse(path, stain=stain)
    w, s = whole[0], streamed[0]
    assert "decoded" not in w and s["decoded"] == "streamed"
    assert [d.to_dict() for d in streamed[2]] == [d.to_dict() for d in whole[2]], (path.name, stain)
    assert s["counts"] == w["counts"] and s["quality"] == w["quality"] and s["flags"] == w["flags"]
    return whole, streamed


def test_bad_images_are_one_line_each(tmp_path):
    good = tmp_path / "good.png"
    cv2.imwrite(str(good), smear_like())
    jpeg = cv2.imencode(".jpg", smear_like())[1].tobytes()
    cases = {
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "truncated JPEG"),
        "report.jpg": (b"%PDF-1.7\n...", "not an image: a PDF document"),
        "empty.png": (b"", "empty file"),
        "bomb.png": (png_header_only(20_000, 20_000), "20,000 x 20,000 pixels is more than this device decodes"),
        "notes.bmp": (b"hello world", "not an image this reader knows"),
    }
    for name, (data, _) in cases.items():
        (tmp_path / name).write_bytes(data)
    tiny = tmp_path / "tiny.png"
    cv2.imwrite(str(tiny), np.zeros((1, 1, 3), np.uint8))
    cases["tiny.png"] = (None, "1 x 1 pixels: too small")
    for name, (_, message) in cases.items():
        with pytest.raises(InputFileError, match=message):
            read_image(tmp_path / name)
    proc = subprocess.run([sys.executable, "-m", "edgehema", "smear", "--json", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    errors = proc.stderr.strip().splitlines()
    assert len(errors) == len(cases) and all(e.startswith("edgehema: error: ") for e in errors)
    assert "Traceback" not in proc.stderr
    counted = [r for r in map(json.loads, proc.stdout.splitlines()) if r["kind"] == "smear"]  # (a folder's slide line follows)
    assert [Path(r["source"]).name for r in counted] == ["good.png"]  # the other image is still counted
    assert counted[0]["engine"] == "model"


def test_greyscale_16_bit_and_alpha_images_read_as_8_bit_colour(tmp_path):
    base = smear_like()
    cv2.imwrite(str(tmp_path / "grey.png"), cv2.cvtColor(base, cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(tmp_path / "deep.tif"), base.astype(np.uint16) * 257)
    cv2.imwrite(str(tmp_path / "alpha.png"), cv2.cvtColor(base, cv2.COLOR_BGR2BGRA))
    for name in ("grey.png", "deep.tif", "alpha.png"):
        img = read_image(tmp_path / name)
        assert img.dtype == np.uint8 and img.shape == (480, 640, 3), name
    np.testing.assert_array_equal(read_image(tmp_path / "deep.tif"), base)


# --- tiling ----------------------------------------------------------------------------------

def _disc_engine(image: np.ndarray) -> list[Detection]:
    """A stand-in detector: one detection per dark disc (connected component)."""
    dark = (image[:, :, 0] < 128).astype(np.uint8)
    n, _, stats, cents = cv2.connectedComponentsWithStats(dark)
    return [Detection("rbc", x, y, x + w, y + h) for x, y, w, h, a in stats[1:] if a > 50]


def test_a_cell_on_a_tile_border_is_counted_once():
    h, w = 1500, 2000
    img = np.full((h, w, 3), 255, np.uint8)
    rng = np.random.default_rng(1)
    centres = []
    grid = tiles((h, w))
    assert len(grid) > 4
    # Discs right on every tile edge, and some elsewhere.
    for x0, y0, x1, y1, _ in grid:
        for cx, cy in ((x1 - 64, y0 + 100), (x0 + 300, y1 - 64), (x1 - 40, y1 - 40)):
            if 30 < cx < w - 30 and 30 < cy < h - 30 and all((cx - a) ** 2 + (cy - b) ** 2 > 900 for a, b in centres):
                centres.append((cx, cy))
    for _ in range(40):
        cx, cy = int(rng.integers(30, w - 30)), int(rng.integers(30, h - 30))
        if all((cx - a) ** 2 + (cy - b) ** 2 > 900 for a, b in centres):
            centres.append((cx, cy))
    for cx, cy in centres:
        cv2.circle(img, (cx, cy), 12, (0, 0, 0), -1)
    found = detect_tiled(img, _disc_engine)
    assert len(found) == len(centres)
    got = sorted((round((d.x0 + d.x1 - 1) / 2), round((d.y0 + d.y1 - 1) / 2)) for d in found)
    assert got == sorted(centres)  # each disc found whole, by one tile


# --- the measure -----------------------------------------------------------------------------

def test_average_precision_on_known_cases():
    truth = {"a": [(Detection("rbc", 0, 0, 10, 10), False), (Detection("rbc", 20, 20, 30, 30), False)]}
    perfect = {"a": [Detection("rbc", 0, 0, 10, 10, 0.9), Detection("rbc", 20, 20, 30, 30, 0.8)]}
    assert average_precision(perfect, truth, "rbc")[0] == pytest.approx(1.0)
    # One hit ranked below a false detection: precision 1/2 at recall 1/2, nothing more found.
    half = {"a": [Detection("rbc", 50, 50, 60, 60, 0.9), Detection("rbc", 0, 0, 10, 10, 0.8)]}
    ap, precision, recall = average_precision(half, truth, "rbc")
    assert ap == pytest.approx(0.25) and precision == 0.5 and recall == 0.5
    # A duplicate of a found cell is a false detection.
    dup = {"a": [Detection("rbc", 0, 0, 10, 10, 0.9), Detection("rbc", 1, 1, 10, 10, 0.8),
                 Detection("rbc", 20, 20, 30, 30, 0.7)]}
    assert average_precision(dup, truth, "rbc")[0] == pytest.approx(0.5 * 1 + 0.5 * (2 / 3))


# --- quality flags ---------------------------------------------------------------------------

def test_quality_flags():
    img = smear_like()
    cells = [Detection("rbc", 0, 0, 90, 90)] * 8
    assert flags_for(quality(img), cells, img.shape[:2]) == {}
    blurred = cv2.GaussianBlur(img, (0, 0), 6)
    assert "out_of_focus" in flags_for(quality(blurred), cells, img.shape[:2])
    assert "too_dark" in flags_for(quality((img * 0.3).astype(np.uint8)), cells, img.shape[:2])
    green = img.copy()
    green[:, :, 1] = 255
    assert "stain_unlike_training" in flags_for(quality(green), cells, img.shape[:2])
    assert "too_few_cells" in flags_for(quality(img), cells[:2], img.shape[:2])
    crowded = [Detection("rbc", 0, 0, 640, 480)]
    assert "too_crowded" in flags_for(quality(img), crowded * 5, img.shape[:2])


# --- BCCD ------------------------------------------------------------------------------------

def test_baseline_on_bccd_val_measured():
    """The classical baseline's figures on BCCD val (docs/smear.md): it finds white cells (AP 0.97
    here) and is poor on red cells and platelets (0.40, 0.32): the floor a learned detector must beat."""
    from edgehema.smear.evaluate import evaluate

    report = evaluate(require_bccd(), "val", "baseline")
    assert report["images"] == 87
    c = report["classes"]
    assert c["wbc"]["ap50"] >= 0.9 and report["wbc_all_found"] >= 0.9
    assert 0.3 <= c["rbc"]["ap50"] < 0.6 and 0.2 <= c["plt"]["ap50"] < 0.5
    assert report["map50"] == pytest.approx(np.mean([c[k]["ap50"] for k in ("rbc", "wbc", "plt")]), abs=1e-3)


def test_smear_command_counts_and_overlays_a_bccd_image(tmp_path):
    image = require_bccd() / "JPEGImages" / "BloodImage_00000.jpg"
    proc = subprocess.run([sys.executable, "-m", "edgehema", "smear", "--json", "--engine", "baseline", "--overlay",
                           str(tmp_path), str(image)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["kind"] == "smear" and result["counts"]["wbc"] == 1 and result["counts"]["rbc"] >= 8
    assert len(result["detections"]) == sum(result["counts"].values())
    drawn = cv2.imread(result["overlay"])
    assert drawn.shape == (480, 640, 3)
    assert not np.array_equal(drawn, cv2.imread(str(image)))
    assert "baseline" in ENGINES
    r, _ = count_image(image, "baseline")
    assert r["counts"] == result["counts"]
