"""Overlap correction of red-cell counts (edgehema.smear.overlap, ``--overlap area``)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import cv2
import numpy as np
import pytest

from edgehema.smear.detections import Detection, counts
from edgehema.smear.overlap import MAX_CELLS, correct, red_cell_mask

from .test_smear import require_bccd, smear_like

BACKGROUND = (215, 210, 212)
RED = (175, 160, 205)
R = 40  # a red cell's radius here: its box is 80 x 80


def red_cell(img: np.ndarray, x: int, y: int) -> None:
    cv2.circle(img, (x, y), R, RED, -1)
    cv2.circle(img, (x, y), 12, BACKGROUND, -1)  # the pale centre of a biconcave cell


def box(kind: str, x0: float, y0: float, x1: float, y1: float) -> Detection:
    return Detection(kind, x0, y0, x1, y1, 0.9)


@pytest.fixture(autouse=True)
def exact_boxes(monkeypatch):
    """The boxes drawn here fit their cells exactly: no slack for BCCD's loose regions."""
    monkeypatch.setattr("edgehema.smear.overlap.AREA_SLACK", 1.0)


def field() -> tuple[np.ndarray, list[Detection]]:
    """Three single red cells with a box each, a touching pair under one box, a touching pair with
    a box on each cell, and a white cell."""
    img = np.full((480, 800, 3), BACKGROUND, np.uint8)
    found = []
    for x in (80, 200, 320):
        red_cell(img, x, 80)
        found.append(box("rbc", x - R, 80 - R, x + R, 80 + R))
    red_cell(img, 100, 300)
    red_cell(img, 180, 300)  # touching the first
    found.append(box("rbc", 100 - R, 300 - R, 180 + R, 300 + R))
    red_cell(img, 400, 300)
    red_cell(img, 480, 300)
    found += [box("rbc", 400 - R, 300 - R, 400 + R, 300 + R), box("rbc", 480 - R, 300 - R, 480 + R, 300 + R)]
    cv2.circle(img, (660, 240), 90, (180, 60, 90), -1)
    found.append(box("wbc", 570, 150, 750, 330))
    return img, found


def test_a_box_on_two_touching_red_cells_counts_two():
    img, found = field()
    out = correct(img, found)
    assert [d.cells for d in out] == [1, 1, 1, 2, 1, 1, 1]
    assert counts(out) == {"rbc": 7, "wbc": 1, "plt": 0}
    assert [(d.kind, d.x0, d.y0) for d in out] == [(d.kind, d.x0, d.y0) for d in found]  # boxes unchanged


def test_pale_centres_are_filled_and_white_cells_taken_out():
    img, found = field()
    mask = red_cell_mask(img, [d for d in found if d.kind == "wbc"], math.pi * R * R)
    assert mask[80, 80] == 255  # a pale centre belongs to its cell
    assert mask[240, 660] == 0  # the white cell is not red-cell area
    assert mask[200, 400] == 0  # background


def test_nothing_changes_without_enough_red_cells_to_know_a_single_cells_area():
    img, found = field()
    few = [found[3], found[6]]  # the pair's box and the white cell
    assert correct(img, few) == few


def test_a_region_never_counts_more_than_four_cells_per_box():
    img = np.full((480, 640, 3), BACKGROUND, np.uint8)
    found = []
    for x in (60, 160, 260):
        red_cell(img, x, 60)
        found.append(box("rbc", x - R, 60 - R, x + R, 60 + R))
    cv2.rectangle(img, (20, 150), (620, 460), RED, -1)  # a confluent sheet under one box
    found.append(box("rbc", 280, 260, 360, 340))
    out = correct(img, found)
    assert out[3].cells == MAX_CELLS and [d.cells for d in out[:3]] == [1, 1, 1]


def test_smear_command_overlap_option(tmp_path):
    path = tmp_path / "field.png"
    cv2.imwrite(str(path), smear_like())
    proc = subprocess.run([sys.executable, "-m", "edgehema", "smear", "--json", "--overlap", "area", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["overlap_correction"] == "area"
    assert result["counts"]["rbc"] == sum(d["cells"] for d in result["detections"] if d["class"] == "rbc")
    bad = subprocess.run([sys.executable, "-m", "edgehema", "smear", "--overlap", "sam", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--overlap must be one of none, area" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_on_bccd_the_correction_helps_on_train_not_on_val(monkeypatch):
    """AREA_SLACK was chosen on BCCD train with the BCCD detector (which leaves touching cells out,
    as BCCD's boxes do), where the correction brings the red-cell counts nearer the annotation; on
    val it does not (docs/smear.md): why it is off by default."""
    from edgehema.smear.evaluate import evaluate
    from edgehema.smear.learned import MODELS, PREVIOUS_MODEL

    root = require_bccd()
    monkeypatch.undo()  # BCCD's own slack, not the exact boxes' one
    bccd = f"model:{MODELS / PREVIOUS_MODEL}"
    mae = {(split, mode): evaluate(root, split, bccd, overlap=mode)["classes"]["rbc"]["count_mae"]
           for split in ("train", "val") for mode in ("none", "area")}
    assert mae["train", "area"] < mae["train", "none"] - 0.2
    assert mae["val", "area"] > mae["val", "none"] - 0.1


def test_an_image_too_large_for_the_region_labels_is_left_as_it_is(monkeypatch):
    img, found = field()
    monkeypatch.setattr("edgehema.smear.overlap.MAX_PIXELS", img.shape[0] * img.shape[1] - 1)
    assert correct(img, found) == found


def test_the_same_field_at_twice_the_magnification_counts_the_same():
    img, found = field()
    big = cv2.resize(img, None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
    twice = [Detection(d.kind, 2 * d.x0, 2 * d.y0, 2 * d.x1, 2 * d.y1, d.score) for d in found]
    assert [d.cells for d in correct(big, twice)] == [d.cells for d in correct(img, found)]
    mask = red_cell_mask(big, [d for d in twice if d.kind == "wbc"], math.pi * (2 * R) ** 2)
    assert mask[160, 160] == 255  # a pale centre four times the pixels is still a centre


def test_a_watched_folder_counts_with_the_overlap_correction(tmp_path):
    from edgehema.smear.watch import SmearJournal, watch

    folder = tmp_path / "in"
    folder.mkdir()
    img, _ = field()
    cv2.imwrite(str(folder / "f.png"), img)
    journal = SmearJournal(tmp_path / "j.sqlite")
    out: list = []
    watch(folder, journal, out.append, lambda e: None, engine="baseline", interval=0.1, settle_s=0.0,
          max_images=1, overlap="area")
    journal.close()
    assert len(out) == 1 and out[0]["overlap_correction"] == "area"
