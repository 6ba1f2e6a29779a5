"""Red-cell morphology (issue 36): the split of Chula RBC-12 by whole field, the ICSH grades and flags
of a slide, the shipped shape classifier folder (sha256, known answer, TFLite member), its figures on
the held-out fields' crops, ``smear`` reporting each red cell's shape per image and the graded
findings per slide, the training path, and the LIS message."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from edgehema.smear import cells  # noqa: E402
from edgehema.smear.learned import MODELS  # noqa: E402
from edgehema.smear.morphology import FINDINGS, Morphology, grade, image_counts  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHULA = ROOT.parent / "shared" / "data" / "chula-rbc-crops"
BCCD = ROOT.parent / "shared" / "data" / "bccd"
needs_chula = pytest.mark.skipif(not CHULA.is_dir(), reason="../shared/data/chula-rbc-crops is absent (Chula RBC-12 crops)")
needs_bccd = pytest.mark.skipif(not BCCD.is_dir(), reason="../shared/data/bccd is absent (BCCD fields)")
SHIPPED = cells.DEFAULT_CLASSIFIERS["rbc_morphology"]
FINDING = {f.name: f for f in FINDINGS}


def run(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "edgehema", *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("name,percent,want", [
    ("target_cells", 4.9, None), ("target_cells", 5.0, "1+"), ("target_cells", 20.9, "1+"), ("target_cells", 21.0, "2+"),
    ("target_cells", 50.0, "2+"), ("target_cells", 50.1, "3+"), ("spherocytes", 12.0, "1+"),
    ("macrocytes", 10.9, None), ("macrocytes", 11.0, "1+"), ("macrocytes", 21.0, "2+"), ("microcytes", 60.0, "3+"),
    ("hypochromia", 15.0, "1+"), ("schistocytes", 30.0, None)])
def test_grades_follow_the_icsh_scales(name, percent, want):
    """Size and colour (and the summary terms) 11 / 21 / >50 %, specific poikilocytes 5 / 21 / >50 %;
    schistocytes are a percentage, never a grade."""
    assert grade(FINDING[name], percent) == want


def _slide(per_class: dict[str, int]) -> Morphology:
    m = Morphology()
    m.add(per_class)
    return m


def test_a_slide_is_graded_over_the_classified_red_cells_and_flagged():
    m = _slide({"normal": 840, "target": 120, "schistocyte": 15, "spherocyte": 25, "unclassified": 30, "uncategorised": 5})
    assert m.classified == 1000 and m.typed == 1035
    f = m.findings()
    assert f["target_cells"]["percent"] == 12.0 and f["target_cells"]["grade"] == "1+"
    assert f["target_cells"]["loinc"] == "10381-2"
    assert f["spherocytes"]["grade"] is None  # 2.5 %: below 1+, not reported
    assert f["schistocytes"]["percent"] == 1.5 and f["schistocytes"]["grade"] is None
    assert f["poikilocytosis"]["percent"] == 16.0 and f["poikilocytosis"]["grade"] == "1+"
    lo, hi = f["schistocytes"]["ci95"]
    assert lo < 1.5 < hi
    flags = m.flags()
    assert set(flags) == {"schistocytes_present", "target_cells_present"}
    assert "1.5 %" in flags["schistocytes_present"]
    t = m.table()
    assert t["normal"]["percent"] == 84.0 and t["unclassified"]["percent_of_typed"] == pytest.approx(2.9)


def test_too_few_red_cells_give_percentages_but_no_grade():
    m = _slide({"normal": 150, "target": 60, "schistocyte": 10})
    f = m.findings()
    assert f["target_cells"]["percent"] == pytest.approx(27.27) and f["target_cells"]["grade"] is None
    flags = m.flags()
    assert "too_few_red_cells" in flags and "schistocytes_present" not in flags
    assert "target_cells_present" not in flags


def test_many_unclassified_red_cells_are_flagged_never_forced():
    m = _slide({"normal": 900, "unclassified": 200})
    assert "many_unclassified_red_cells" in m.flags(minimum=0)
    c = image_counts([{"class": "rbc", "rbc_morphology": "burr"}, {"class": "rbc"}, {"class": "wbc", "wbc_type": "ig"},
                      {"class": "rbc", "rbc_morphology": "something else"}])
    assert c["burr"] == 1 and c["unclassified"] == 1 and sum(c.values()) == 2


@needs_chula
def test_the_split_keeps_each_field_on_one_side():
    from edgehema.smear.cell_sets import cell_set, field_of

    parts = {s: cell_set(CHULA, s, by="field") for s in ("train", "val", "test")}
    fields = {s: {field_of(i.path) for i in items} for s, items in parts.items()}
    assert not (fields["train"] & fields["val"]) and not (fields["train"] & fields["test"]) and not (fields["val"] & fields["test"])
    assert sum(len(v) for v in parts.values()) == len(cell_set(CHULA, by="field")) == 19021
    n = {s: len(v) for s, v in parts.items()}
    assert 0.6 < n["train"] / 19021 < 0.8 and 0.1 < n["test"] / 19021 < 0.2
    for label in ("normal", "teardrop", "elliptocyte", "macrocyte"):  # every class on every side
        assert all(any(i.label == label for i in parts[s]) for s in parts), label
    assert [i.path for i in cell_set(CHULA, "test", by="field")] == [i.path for i in parts["test"]]
    assert {i.path for i in cell_set(CHULA, "test", by="field", seed=2)} != {i.path for i in parts["test"]}


def test_the_shipped_classifier_opens_with_its_known_answer():
    c = cells.open_classifier(SHIPPED, "rbc_morphology")
    assert c.folder.task == "rbc_morphology" and "target" in c.classes and len(c.classes) == 13
    assert c.folder.input_size == (64, 64) and c.crop_diameters() == pytest.approx(1.6) and c.folder.views == 2
    assert c.folder.known_answer["input"] == "known_answer_red_cell/1" and 0 < c.folder.unsure_below <= 0.5
    assert cells.check_known_answer(c.engine, c.folder.known_answer, 64) is None
    assert c.folder.training["split"]["by"] == "field"
    t = cells.open_classifier(f"{SHIPPED}/model.tflite", "rbc_morphology")
    assert t.file.endswith("model.tflite")
    assert c.folder.manifest["gates"]["failed"] == []


@needs_chula
def test_held_out_field_figures():
    """The crops of the test fields (never trained or chosen on), the classifier alone."""
    from edgehema.smear.evaluate_cells import evaluate_cells

    r = evaluate_cells(CHULA, "test", f"{SHIPPED}/model.tflite", task="rbc_morphology")
    assert r["split_by"] == "field" and r["cells"] == 2846
    assert "uncategorised" not in r["balanced_accuracy_over"] and len(r["balanced_accuracy_over"]) == 12
    assert r["accuracy"] >= 0.80 and r["balanced_accuracy"] >= 0.75 and r["normal_vs_abnormal"] >= 0.85, r
    onnx = evaluate_cells(CHULA, "test", SHIPPED, task="rbc_morphology")
    assert abs(onnx["accuracy"] - r["accuracy"]) <= 0.02
    proc = run("evaluate-smear", "--cells", str(CHULA), "--morphology", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["task"] == "rbc_morphology"
    proc = run("evaluate-smear", "--cells", str(CHULA), "--morphology", "--mode", "pipeline")
    assert proc.returncode != 0 and "--mode classifier" in proc.stderr


@needs_bccd
def test_smear_reports_each_red_cell_shape_and_the_slide_grading(tmp_path):
    slide = tmp_path / "slide-3"
    slide.mkdir()
    for name in ("BloodImage_00000", "BloodImage_00001", "BloodImage_00003"):
        shutil.copy(BCCD / "JPEGImages" / f"{name}.jpg", slide)
    proc = run("smear", str(slide), "--json", "--overlay", str(tmp_path / "over"))
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(x) for x in proc.stdout.splitlines()]
    images, summary = lines[:-1], lines[-1]
    for r in images:
        assert {"sample_id", "source", "detections", "morphology", "rbc_classifier"} <= set(r)
        red = [d for d in r["detections"] if d["class"] == "rbc"]
        assert red and all("rbc_morphology" in d and 0 <= d["rbc_morphology_p"] <= 1 for d in red)
        assert all("rbc_morphology" not in d for d in r["detections"] if d["class"] != "rbc")
        assert sum(r["morphology"].values()) == len(red) == r["counts"]["rbc"]
    assert summary["rbc_typed"] == sum(r["counts"]["rbc"] for r in images)
    assert summary["findings"]["target_cells"]["loinc"] == "10381-2"
    assert "too_few_red_cells" in summary["flags"]  # three fields: far below 1,000 red cells
    assert len(list((tmp_path / "over").glob("*.png"))) == 3
    proc = run("smear", str(slide), "--csv")
    header = proc.stdout.splitlines()[0].split(",")
    assert header[-1] == "rbc_unclassified" and "rbc_target" in header
    assert all(len(row.split(",")) == len(header) for row in proc.stdout.splitlines())
    proc = run("smear", str(slide))
    assert "red-cell morphology over" in proc.stdout and "ICSH grade" in proc.stdout
    proc = run("smear", str(slide / "BloodImage_00000.jpg"), "--json", "--rbc", "none")
    one = json.loads(proc.stdout)
    assert "morphology" not in one and all("rbc_morphology" not in d for d in one["detections"])


def test_a_wrong_rbc_classifier_is_refused_in_one_line(tmp_path):
    image = tmp_path / "field.png"
    cv2.imwrite(str(image), np.full((240, 320, 3), 220, np.uint8))
    proc = run("smear", str(image), "--rbc", str(MODELS / "wbc-pbc-int8"))
    assert proc.returncode != 0 and proc.stderr.count("\n") == 1 and "not a rbc_morphology classifier" in proc.stderr
    proc = run("smear", str(image), "--rbc", str(tmp_path / "nowhere"))
    assert proc.returncode != 0 and "--rbc" in proc.stderr and proc.stderr.count("\n") == 1


def test_a_slide_morphology_goes_to_the_lis_with_the_erythrocyte_morphology_loinc_terms():
    """HL7: each finding graded 1+ or more as its LOINC [Presence] term (erythrocyte morphology
    panel 58408-6) with the grade as a string; schistocytes as a percentage under a local code."""
    import hl7

    from edgehema.lis.astm import build_records
    from edgehema.lis.hl7_message import build_oru
    from edgehema.smear.slide import SlideAccumulator

    acc = SlideAccumulator("S-4")
    acc.add({"source": "a.jpg", "counts": {"rbc": 1200, "wbc": 0, "plt": 0},
             "morphology": {"normal": 700, "target": 250, "spherocyte": 60, "schistocyte": 20, "unclassified": 10}})
    slide = acc.result()
    assert slide["findings"]["target_cells"]["grade"] == "2+"
    text = build_oru(slide, "7")
    msg = hl7.parse(text)
    obx = {str(s[3]).split("^")[0]: (str(s[2]), str(s[5])) for s in msg.segments("OBX")}
    assert obx["10381-2"] == ("ST", "2+") and obx["802-9"] == ("ST", "1+")
    assert obx["EHM-SMEAR-SCHIST"] == ("NM", "1.94") and obx["EHM-SMEAR-RBC-N"][1] == "1030"
    assert "741-9" not in obx  # no microcytes: nothing graded, nothing sent
    assert "FLAG schistocytes_present" in text
    records = build_records(slide, "9")
    assert any("^^^TARGET^10381-2" in r for r in records) and any(r.startswith("R|") and "|2+|" in r for r in records)


@needs_chula
def test_the_training_path_is_deterministic_and_splits_by_field(tmp_path):
    """``python -m export.rbc_train`` at a small scale, twice: the same weights; its card records
    the split by field, the crop, the input, the draw and the classes balanced accuracy is over."""
    torch = pytest.importorskip("torch", reason="the training recipe needs the export extra (torch)")

    def train(out):
        proc = subprocess.run([sys.executable, "-m", "export.rbc_train", "--data", str(CHULA), "--epochs", "1",
                               "--seed", "3", "--limit", "96", "--out", str(tmp_path / out)],
                              capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-2000:]

    train("a")
    train("b")
    a, b = (torch.load(tmp_path / x / "cellnet.pt") for x in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)
    card = json.loads((tmp_path / "a" / "training.json").read_text())
    assert card["task"] == "rbc_morphology" and card["split"]["by"] == "field" and card["input"] == 64
    assert card["draw"] == "sqrt_balanced" and card["crop_rbc_diameters"] == 1.6
    assert "uncategorised" not in card["balanced_accuracy_over"] and len(card["classes"]) == 13


def test_a_slide_reaches_the_lis_once_across_re_runs_named_another_way(tmp_path):
    """The same folder counted again (named relative, then absolute) with the same outbox: each image
    and the slide (differential and morphology) are delivered once, never as a second final or a
    correction."""
    from .test_lis import Peer
    from .test_smear import smear_like

    slide = tmp_path / "slide-9"
    slide.mkdir()
    for k in range(2):
        cv2.imwrite(str(slide / f"f{k}.png"), smear_like(seed=k))
    peer = Peer()
    try:
        for target, cwd in (("slide-9", tmp_path), (str(slide), None), (str(slide) + "/", ROOT)):
            proc = subprocess.run([sys.executable, "-m", "edgehema", "smear", "--json", "--engine", "baseline", "--lis",
                                   peer.url, "--outbox", str(tmp_path / "box.sqlite"), target],
                                  capture_output=True, text=True, timeout=300, cwd=cwd)
            assert proc.returncode == 0, proc.stderr
            assert json.loads(proc.stdout.splitlines()[-1])["kind"] == "smear_slide"
        assert sorted(sid for _, sid in peer.received) == ["f0", "f1", "slide-9"] and not peer.invalid
    finally:
        peer.close()


def test_size_findings_from_estimated_scales_are_flagged_relative():
    from edgehema.smear.slide import SlideAccumulator

    def slide(source):
        acc = SlideAccumulator("S")
        acc.add({"source": "a.jpg", "counts": {"rbc": 1100, "wbc": 0, "plt": 0}, "scale": {"source": source},
                 "morphology": {"normal": 850, "macrocyte": 250}})
        return acc.result()

    relative, given = slide("estimated"), slide("given")
    assert relative["findings"]["macrocytes"]["grade"] == "2+" == given["findings"]["macrocytes"]["grade"]
    assert "rbc_size_relative" in relative["flags"] and relative["rbc_size_reference"] == "each field's red cells"
    assert "rbc_size_relative" not in given["flags"] and given["rbc_size_reference"] == "physical"


@needs_bccd
def test_shape_stability_matches_red_cells_across_a_magnification(tmp_path):
    """--rbc-stability on a one-field set: the red cells are found again at 0.75x and matched by box."""
    from edgehema.smear.evaluate_cells import type_stability

    (tmp_path / "JPEGImages").mkdir()
    (tmp_path / "Annotations").mkdir()
    shutil.copy(BCCD / "JPEGImages" / "BloodImage_00001.jpg", tmp_path / "JPEGImages")
    shutil.copy(BCCD / "Annotations" / "BloodImage_00001.xml", tmp_path / "Annotations")
    (tmp_path / "val.txt").write_text("BloodImage_00001\n")
    r = type_stability(tmp_path, "val", magnifications=(0.75,), restains={}, task="rbc_morphology")
    assert r["task"] == "rbc_morphology" and r["cells"] >= 10 and sum(r["given"].values()) == r["cells"]
    t = r["changes"]["0.75x"]
    assert t["matched"] >= 0.7 * r["cells"] and t["same_type"] is not None


def test_a_slide_unlike_the_training_gets_no_grade_and_no_finding_flag():
    """A third of the red cells unclassified (as on BCCD's fields): the shapes given are not trusted."""
    from edgehema.lis.hl7_message import build_oru
    from edgehema.smear.slide import SlideAccumulator

    acc = SlideAccumulator("S-5")
    acc.add({"source": "a.jpg", "counts": {"rbc": 1600, "wbc": 0, "plt": 0},
             "morphology": {"normal": 300, "schistocyte": 300, "spherocyte": 400, "unclassified": 600}})
    slide = acc.result()
    assert all(f["grade"] is None for f in slide["findings"].values())
    assert "rbc_morphology_unreliable" in slide["flags"] and "schistocytes_present" not in slide["flags"]
    assert not any(k.endswith("_present") for k in slide["flags"])
    text = build_oru(slide, "3")
    assert "EHM-SMEAR-SCHIST" not in text and "802-9" not in text and "FLAG rbc_morphology_unreliable" in text
