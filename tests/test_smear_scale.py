"""The scale stage (edgehema.smear.scale) and annotated sets in either layout (VOC, YOLO): the
estimate on drawn fields of known size and on TXL-PBC val at other magnifications, given scales
and microscope profiles, the flags, and evaluate-smear on a YOLO set per source and magnification."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from edgehema.exceptions import InputFileError, ProfileError  # noqa: E402
from edgehema.smear import scale as S  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TXL = ROOT.parent / "shared" / "data" / "txl-pbc"
BCCD = ROOT.parent / "shared" / "data" / "bccd"


def field(diameter: float, size=(640, 480), cells: int = 40, seed: int = 1, wbc: bool = True) -> np.ndarray:
    """A drawn smear field: pink red cells with pale centres, some touching, one violet white cell."""
    rng = np.random.default_rng(seed)
    img = np.full((size[1], size[0], 3), (222, 214, 232), np.uint8)
    r = diameter / 2
    for _ in range(cells):
        x, y = rng.uniform(0, size[0]), rng.uniform(0, size[1])
        rr = r * rng.uniform(0.93, 1.07)
        cv2.circle(img, (int(x), int(y)), int(rr), (150, 120, 205), -1, cv2.LINE_AA)
        cv2.circle(img, (int(x), int(y)), int(rr * 0.4), (185, 165, 222), -1, cv2.LINE_AA)
    if wbc:
        cv2.circle(img, (size[0] // 2, size[1] // 2), int(1.7 * r), (200, 150, 170), -1, cv2.LINE_AA)
        cv2.circle(img, (size[0] // 2, size[1] // 2), int(1.2 * r), (140, 40, 90), -1, cv2.LINE_AA)
    return cv2.GaussianBlur(img, (0, 0), 1.0)


@pytest.mark.parametrize("diameter", [24, 40, 80, 130])
def test_the_estimate_finds_drawn_red_cells_of_known_size(diameter):
    """Red cells drawn d px across (touching, pale centres, a white cell among them) are estimated
    d / CALIBRATION (the annotation's boxes are that much larger than a cell's inscribed circle)."""
    s = S.estimate(field(diameter, cells=int(1.4e5 / diameter ** 2)))
    assert s.source == "estimated" and s.cells >= 5
    assert abs(s.rbc_px * S.CALIBRATION / diameter - 1) <= 0.12, s
    assert s.um_per_px == pytest.approx(S.RBC_UM["human"] / s.rbc_px)


def test_the_estimate_follows_the_magnification():
    img = field(50)
    one = S.estimate(img).rbc_px
    for m in (0.5, 2.0):
        other = S.estimate(cv2.resize(img, None, fx=m, fy=m, interpolation=cv2.INTER_AREA if m < 1 else cv2.INTER_CUBIC))
        assert abs(other.rbc_px / (m * one) - 1) <= 0.12, (m, other.rbc_px, one)


def test_a_field_without_cells_is_assumed_and_flagged_unsure():
    s = S.estimate(np.full((240, 320, 3), 220, np.uint8))
    assert s.source == "assumed" and s.confidence == 0.0 and s.factor() == 1.0
    assert "scale_unsure" in s.flags()


def test_given_scales_and_their_flags(tmp_path):
    g = S.given(0.08)
    assert g.rbc_px == pytest.approx(7.5 / 0.08) and g.source == "given" and g.flags() == {}
    assert S.given(0.08, "cat").rbc_px == pytest.approx(5.8 / 0.08)
    assert "scale_outside_training" in S.given(0.5).flags()  # red cells 15 px across
    assert "scale_outside_training" in S.given(0.01).flags()  # 750 px
    with pytest.raises(ValueError):
        S.given(0.0)
    (tmp_path / "m.toml").write_text('name = "bench scope, 100x oil"\num_per_px = 0.1\n')
    assert S.microscope(tmp_path / "m.toml").source == "profile"
    (tmp_path / "bad.toml").write_text("um_per_px = -1\n")
    with pytest.raises(ProfileError, match="bad.toml: um_per_px must be a positive number"):
        S.microscope(tmp_path / "bad.toml")
    (tmp_path / "broken.toml").write_text("um_per_px = \n")
    with pytest.raises(ProfileError, match="broken.toml: invalid TOML"):
        S.microscope(tmp_path / "broken.toml")


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "edgehema", *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def test_smear_takes_a_scale_and_refuses_two(tmp_path):
    img = field(90)
    cv2.imwrite(str(tmp_path / "f.png"), img)
    proc = run("smear", tmp_path / "f.png", "--json", "--um-per-px", "0.08")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["scale"]["source"] == "given" and r["scale"]["um_per_px"] == 0.08
    auto = json.loads(run("smear", tmp_path / "f.png", "--json").stdout)
    assert auto["scale"]["source"] == "estimated" and 0 < auto["scale"]["confidence"] <= 1
    (tmp_path / "m.toml").write_text("um_per_px = 0.08\n")
    proc = run("smear", tmp_path / "f.png", "--um-per-px", "0.08", "--microscope", tmp_path / "m.toml")
    assert proc.returncode == 2 and "not both" in proc.stderr
    (tmp_path / "bad.toml").write_text('um_per_px = "x"\n')
    proc = run("smear", tmp_path / "f.png", "--microscope", tmp_path / "bad.toml")
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "bad.toml" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.skipif(not TXL.is_dir(), reason="needs ../shared/data/txl-pbc (TXL-PBC) beside the project")
def test_the_estimate_on_txl_pbc_val_at_other_magnifications():
    """Measured on all 283 val images: 83-86 % within 25 % of the annotation's red-cell size at 0.5x,
    0.75x, 1x, 1.5x and 2x (docs/smear.md); on every second one, the lowest 79 % (0.5x)."""
    from edgehema.smear.annotations import annotated_set

    items = annotated_set(TXL, "val")
    for m in (0.5, 1.0, 2.0):
        errors = []
        for item in items[::2]:
            sides = [np.sqrt((g.x1 - g.x0) * (g.y1 - g.y0)) for g, _ in item.truth if g.kind == "rbc"]
            if len(sides) < 3:
                continue
            img = cv2.imread(str(item.path))
            if m != 1.0:
                img = cv2.resize(img, None, fx=m, fy=m, interpolation=cv2.INTER_AREA if m < 1 else cv2.INTER_CUBIC)
            errors.append(abs(S.estimate(img).rbc_px / (m * np.median(sides)) - 1))
        assert np.mean(np.array(errors) <= 0.25) >= 0.75, m


def yolo_set(root: Path) -> Path:
    """A YOLO set of drawn fields at two sizes (two 'sources'), every cell boxed."""
    (root / "images" / "val").mkdir(parents=True)
    (root / "labels" / "val").mkdir(parents=True)
    (root / "data.yaml").write_text("train: ./images/train/\nval: ./images/val/\nnc: 3\nnames: ['WBC', 'RBC','Platelets']")
    for k, (size, d) in enumerate([((640, 480), 90), ((416, 416), 70), ((416, 416), 72)]):
        rng = np.random.default_rng(k)
        img = np.full((size[1], size[0], 3), (222, 214, 232), np.uint8)
        lines = []
        for i in range(4):
            x, y = 70 + i * (size[0] - 140) / 3, size[1] / 3 + rng.uniform(-10, 10)
            cv2.circle(img, (int(x), int(y)), d // 2, (150, 120, 205), -1)
            lines.append(f"1 {x / size[0]:.5f} {y / size[1]:.5f} {d / size[0]:.5f} {d / size[1]:.5f}")
        cv2.circle(img, (size[0] // 2, 3 * size[1] // 4), d // 2 + 20, (140, 40, 90), -1)
        lines.append(f"0 0.5 0.75 {(d + 40) / size[0]:.5f} {(d + 40) / size[1]:.5f}")
        cv2.imwrite(str(root / "images" / "val" / f"f{k}.jpg"), img)
        (root / "labels" / "val" / f"f{k}.txt").write_text("\n".join(lines) + "\n")
    return root


def test_a_yolo_set_reads_as_boxes_in_pixels(tmp_path):
    from edgehema.smear.annotations import annotated_set, layout

    root = yolo_set(tmp_path / "y")
    items = annotated_set(root, "val")
    assert layout(root) == "yolo" and [i.name for i in items] == ["f0", "f1", "f2"]
    wbc = [g for g, _ in items[0].truth if g.kind == "wbc"][0]
    assert (wbc.x1 - wbc.x0) == pytest.approx(130, abs=0.1) and wbc.centre == pytest.approx((320, 360), abs=0.1)
    assert sum(g.kind == "rbc" for g, _ in items[1].truth) == 4
    (root / "labels" / "val" / "f2.txt").write_text("1 0.5 0.5 0.1\n")
    with pytest.raises(InputFileError, match=r"f2.txt.*line 1: not 'class x_centre"):
        annotated_set(root, "val")
    (root / "labels" / "val" / "f2.txt").write_text("7 0.5 0.5 0.1 0.1\n")
    with pytest.raises(InputFileError, match="class 7 is not in data.yaml"):
        annotated_set(root, "val")
    with pytest.raises(InputFileError, match="not an annotated image set"):
        annotated_set(tmp_path, "val")


def test_evaluate_smear_on_a_yolo_set_per_source_and_magnification(tmp_path):
    root = yolo_set(tmp_path / "y")
    proc = run("evaluate-smear", "--data", root, "--engine", "baseline", "--magnification", "0.5,1", "--json")
    assert proc.returncode == 0, proc.stderr
    reports = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["magnification"] for r in reports] == [0.5, 1.0] and all(r["images"] == 3 for r in reports)
    assert set(reports[1]["by_source"]) == {"640x480", "416x416"}
    assert reports[1]["by_source"]["416x416"]["images"] == 2
    for key in ("map50", "rbc_count_within_10pct", "wbc_exact", "plt_within_1"):
        assert 0 <= reports[1][key] <= 1
    table = run("evaluate-smear", "--data", root, "--engine", "baseline", "--by-source")
    assert table.returncode == 0 and "416x416" in table.stdout and "WBC exact" in table.stdout
    bad = run("evaluate-smear", "--data", tmp_path, "--engine", "baseline")
    assert bad.returncode == 1 and "not an annotated image set" in bad.stderr and "Traceback" not in bad.stderr
