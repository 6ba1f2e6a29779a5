"""The white-cell differential (issue 35): the exact binomial intervals, the differential's table and
flags, the seeded stratified split of PBC, the crop at one physical scale, the shipped classifier
folder (sha256, known answer, TFLite member), its figures on PBC's held-out test part, and
``smear`` reporting each white cell's type per image and the differential per slide."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from edgehema.exceptions import BundleError  # noqa: E402
from edgehema.smear import cells  # noqa: E402
from edgehema.smear.differential import Differential, binomial_ci, image_counts  # noqa: E402
from edgehema.smear.learned import MODELS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PBC = ROOT.parent / "shared" / "data" / "pbc"
needs_pbc = pytest.mark.skipif(not PBC.is_dir(), reason="../shared/data/pbc is absent (PBC single-cell images)")
SHIPPED = cells.DEFAULT_CLASSIFIERS["wbc_type"]


def run(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "edgehema", *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("k,n", [(0, 100), (1, 100), (5, 100), (50, 100), (60, 200), (3, 10), (200, 200)])
def test_the_intervals_are_the_exact_clopper_pearson_ones(k, n):
    beta = pytest.importorskip("scipy.stats").beta
    lo, hi = binomial_ci(k, n)
    assert lo == pytest.approx(0.0 if k == 0 else beta.ppf(0.025, k, n - k + 1), abs=1e-6)
    assert hi == pytest.approx(1.0 if k == n else beta.ppf(0.975, k + 1, n - k), abs=1e-6)


def test_rumke_table_rows():
    """Rümke's table at 95 %: 5 of 100 cells 2-11 %, 50 of 100 40-60 %, 10 of 200 2-9 %."""
    for (k, n), (lo, hi) in {(5, 100): (2, 11), (50, 100): (40, 60), (10, 200): (2, 9)}.items():
        a, b = binomial_ci(k, n)
        assert round(100 * a) == lo and round(100 * b) == hi


def test_the_differential_counts_leukocytes_and_reports_nrbc_per_100():
    d = Differential()
    d.add({"neutrophil": 60, "lymphocyte": 30, "monocyte": 6, "eosinophil": 3, "basophil": 1, "ig": 0,
           "erythroblast": 5, "unclassified": 2})
    t = d.table()
    assert d.leukocytes == 100 and d.typed == 107
    assert t["neutrophil"]["percent"] == 60.0 and t["neutrophil"]["ci95"] == [49.7, 69.7]
    assert t["erythroblast"] == {"count": 5, "per_100_leukocytes": 5.0}
    assert t["unclassified"]["percent_of_typed"] == pytest.approx(1.9)
    flags = d.flags()
    assert set(flags) == {"nucleated_red_cells_present"}
    d.add({"ig": 2, "unclassified": 20})
    assert {"immature_granulocytes_present", "many_unclassified"} <= set(d.flags())
    few = Differential()
    few.add({"lymphocyte": 12})
    assert "too_few_leukocytes" in few.flags() and "too_few_leukocytes" not in few.flags(minimum=0)


def test_image_counts_take_only_typed_white_cells():
    dets = [{"class": "wbc", "wbc_type": "monocyte"}, {"class": "wbc"}, {"class": "rbc"},
            {"class": "wbc", "wbc_type": "unclassified"}]
    c = image_counts(dets)
    assert c["monocyte"] == 1 and c["unclassified"] == 1 and sum(c.values()) == 2


def test_the_crop_is_at_one_physical_scale():
    """A cell drawn at two magnifications gives the same crop when the scale is given for each."""
    def drawn(m):
        img = np.full((round(300 * m), round(300 * m), 3), (220, 215, 230), np.uint8)
        cv2.circle(img, (round(150 * m), round(150 * m)), round(30 * m), (140, 40, 90), -1, cv2.LINE_AA)
        return img
    a = cells.crop(drawn(1.0), (150, 150), 40.0, np.array([220, 215, 230], np.uint8))
    b = cells.crop(drawn(2.0), (300, 300), 80.0, np.array([220, 215, 230], np.uint8))
    assert a.shape == b.shape == (cells.CELL_INPUT, cells.CELL_INPUT, 3)
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 4
    # near the edge the crop is padded with the slide's colour, never black
    edge = cells.crop(drawn(1.0), (5, 5), 40.0, np.array([220, 215, 230], np.uint8))
    assert edge[0, 0].tolist() == [220, 215, 230]


@needs_pbc
def test_the_split_is_stratified_seeded_and_disjoint():
    from edgehema.smear.cell_sets import cell_set

    parts = {s: cell_set(PBC, s) for s in ("train", "val", "test")}
    assert [len(parts[s]) for s in ("train", "val", "test")] == [2800, 600, 600]
    names = [{i.path for i in parts[s]} for s in parts]
    assert not (names[0] & names[1]) and not (names[0] & names[2]) and not (names[1] & names[2])
    for s, n in (("val", 75), ("test", 75)):
        labels = [i.label for i in parts[s]]
        assert all(labels.count(c) == n for c in set(labels)), s
    assert [i.path for i in cell_set(PBC, "test")] == [i.path for i in parts["test"]]
    assert [i.path for i in cell_set(PBC, "test", seed=2)] != [i.path for i in parts["test"]]


def test_the_shipped_classifier_opens_with_its_known_answer():
    c = cells.open_classifier(SHIPPED, "wbc_type")
    assert c.folder.task == "wbc_type" and "neutrophil" in c.classes and c.folder.report_as["platelet"] == "unclassified"
    assert cells.check_known_answer(c.engine, c.folder.known_answer) is None
    t = cells.open_classifier(f"{SHIPPED}/model.tflite", "wbc_type")
    assert t.file.endswith("model.tflite")
    assert c.folder.manifest["gates"]["failed"] == []
    with pytest.raises(BundleError, match="not a wbc_type classifier"):
        cells.open_classifier("txl-pbc-int8", "wbc_type")


def test_a_damaged_or_wrong_classifier_is_refused_in_one_line(tmp_path):
    folder = tmp_path / "wbc"
    shutil.copytree(MODELS / SHIPPED, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["known_answer"]["probabilities"] = [round(1 - p, 5) for p in manifest["known_answer"]["probabilities"]]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    cells.open_classifier.cache_clear()
    with pytest.raises(BundleError, match="known answer"):
        cells.open_classifier(str(folder), "wbc_type")
    data = bytearray((folder / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        cells.open_classifier(str(folder), "wbc_type")
    image = tmp_path / "field.png"
    cv2.imwrite(str(image), np.full((240, 320, 3), 220, np.uint8))
    proc = run("smear", str(image), "--wbc", str(folder))
    assert proc.returncode != 0 and proc.stderr.count("\n") == 1 and "sha256" in proc.stderr


@needs_pbc
def test_held_out_pbc_figures():
    """PBC's test part (never trained or chosen on): the classifier alone on the centre crop."""
    from edgehema.smear.evaluate_cells import evaluate_cells

    r = evaluate_cells(PBC, "test", f"{SHIPPED}/model.tflite")
    assert r["cells"] == 600 and r["balanced_accuracy"] >= 0.90, r
    for t in ("neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil", "erythroblast"):
        assert r["recall"][t] >= 0.85, (t, r["recall"])
    onnx = evaluate_cells(PBC, "test", SHIPPED)
    assert abs(onnx["balanced_accuracy"] - r["balanced_accuracy"]) <= 0.02


@needs_pbc
def test_smear_reports_each_white_cell_type_and_the_slide_differential(tmp_path):
    from edgehema.smear.cell_sets import cell_set

    slide = tmp_path / "slide-7"
    slide.mkdir()
    picked = [i for i in cell_set(PBC, "test") if i.label in ("neutrophil", "lymphocyte", "eosinophil")][::25][:4]
    for i in picked:
        shutil.copy(i.path, slide / i.path.name)
    proc = run("smear", str(slide), "--json")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(x) for x in proc.stdout.splitlines()]
    images, summary = lines[:-1], lines[-1]
    assert len(images) == 4 and summary["kind"] == "smear_slide" and summary["slide_id"] == "slide-7"
    for r in images:
        assert {"sample_id", "source", "detections", "differential", "wbc_classifier"} <= set(r)
        typed = [d for d in r["detections"] if d["class"] == "wbc"]
        assert typed and all("wbc_type" in d and 0 <= d["wbc_type_p"] <= 1 for d in typed)
        assert sum(r["differential"].values()) == len(typed)
    assert summary["images"] == 4 and summary["wbc_typed"] == sum(sum(r["differential"].values()) for r in images)
    assert "too_few_leukocytes" in summary["flags"]
    right = sum(any(d.get("wbc_type") == i.label for d in r["detections"]) for r, i in zip(images, sorted(picked, key=lambda i: i.path.name)))
    assert right >= 3
    # --slide groups files named alone; --wbc none keeps today's output
    files = sorted(slide.iterdir())[:2]
    proc = run("smear", *map(str, files), "--json", "--slide", "S1")
    assert json.loads(proc.stdout.splitlines()[-1])["slide_id"] == "S1"
    proc = run("smear", str(files[0]), "--json", "--wbc", "none")
    one = [json.loads(x) for x in proc.stdout.splitlines()]
    assert len(one) == 1 and "differential" not in one[0] and all("wbc_type" not in d for d in one[0]["detections"])
    proc = run("smear", str(slide), "--csv")
    assert ",seconds,neutrophil,lymphocyte,monocyte,eosinophil,basophil,ig,erythroblast,unclassified" in proc.stdout.splitlines()[0]
    assert proc.stdout.splitlines()[-1].startswith("slide:slide-7,")
    proc = run("smear", str(slide))
    assert "slide slide-7: differential over" in proc.stdout


@needs_pbc
def test_the_training_path_is_deterministic_resumes_and_exports_gated(tmp_path):
    """``python -m export.wbc_train`` at a small scale (two epochs on 64 train cells), as commands:
    once straight through, once stopped after the first epoch and run again: the same weights; then
    ``edgehema export`` makes its int8 folder, whose classifier opens with its known answer."""
    torch = pytest.importorskip("torch", reason="the training recipe needs the export extra (torch)")

    def train(out, *extra):
        proc = subprocess.run([sys.executable, "-m", "export.wbc_train", "--data", str(PBC), "--epochs", "2",
                               "--seed", "3", "--limit", "64", "--out", str(tmp_path / out), *extra],
                              capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout

    train("a")
    assert "stopped after epoch 1 of 2" in train("b", "--stop-after", "1")
    assert "resuming after epoch 1" in train("b")
    a, b = (torch.load(tmp_path / x / "cellnet.pt") for x in "ab")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    card = json.loads((tmp_path / "a" / "training.json").read_text())
    assert card["task"] == "wbc_type" and card["split"]["seed"] == 1 and card["train_images"] == 64
    proc = run("export", str(tmp_path / "a" / "model-float.onnx"), "--target", "onnx-int8", "-c", str(PBC),
               "-o", str(tmp_path / "device"))
    assert "cell classifier" in proc.stdout, proc.stderr  # two epochs may fail a gate: the folder is written either way
    c = cells.open_classifier(str(tmp_path / "device"), "wbc_type")
    assert c.folder.task == "wbc_type" and c.folder.known_answer and len(c.classes) == 8


@needs_pbc
def test_an_image_of_one_cell_is_classified_when_the_detector_finds_none():
    from edgehema.smear.cell_sets import cell_set
    from edgehema.smear.detections import Detection
    from edgehema.smear.pipeline import cell_image

    c = cells.open_classifier(SHIPPED, "wbc_type")
    item = next(i for i in cell_set(PBC, "test") if i.label == "eosinophil")
    image = cv2.imread(str(item.path))
    one = cell_image(image, [], 71.0, c)
    assert one is not None and one.kind == "wbc" and one.cell_type == "eosinophil" and one.score == 0.0
    cx, cy = one.centre
    assert abs(cx - image.shape[1] / 2) < 1 and abs(cy - image.shape[0] / 2) < 1
    assert cell_image(image, [Detection("wbc", 0, 0, 10, 10)], 71.0, c) is None  # the detector found it
    assert cell_image(np.tile(image, (3, 3, 1)), [], 71.0, c) is None  # a field, not one cell
    platelet = next(i for i in cell_set(PBC, "test") if i.label == "platelet")
    assert cell_image(cv2.imread(str(platelet.path)), [], 71.0, c) is None  # not a white cell: none added


def test_a_slide_differential_goes_to_the_lis_with_the_manual_differential_loinc_terms():
    """HL7: OBR names panel 24318-8, each leukocyte type its "/100 leukocytes in Blood" LOINC term
    with the percentage; immature granulocytes and nucleated red cells under local codes. ASTM alike."""
    import hl7

    from edgehema.lis.astm import build_records
    from edgehema.lis.hl7_message import build_oru
    from edgehema.smear.slide import SlideAccumulator

    acc = SlideAccumulator("S-12")
    acc.add({"source": "a.jpg", "counts": {"rbc": 300, "wbc": 60, "plt": 20},
             "differential": {"neutrophil": 30, "lymphocyte": 20, "monocyte": 5, "eosinophil": 3, "basophil": 1,
                              "ig": 1, "erythroblast": 2, "unclassified": 1}})
    slide = acc.result()
    msg = hl7.parse(build_oru(slide, "7"))
    assert str(msg.segment("OBR")[4]).startswith("24318-8^Manual differential panel - Blood^LN")
    obx = {str(s[3]).split("^")[0]: (str(s[5]), str(s[6]).split("^")[0]) for s in msg.segments("OBX")}
    assert obx["26511-6"] == ("50.0", "%") and obx["26478-8"] == ("33.3", "%") and obx["30180-4"] == ("1.7", "%")
    assert obx["26485-3"][0] == "8.3" and obx["26450-7"][0] == "5.0"
    assert obx["38518-7"][0] == "1.7" and obx["19048-8"] == ("3.3", "/100{WBCs}")
    assert "EHM-SMEAR-IG" not in obx and "EHM-SMEAR-NRBC" not in obx
    assert obx["EHM-SMEAR-LEUK-N"][0] == "60"
    assert "FLAG too_few_leukocytes" in build_oru(slide, "8")
    records = build_records(slide, "9")
    assert any("^^^NEUT%^26511-6" in r for r in records) and any("^^^IG%^38518-7" in r for r in records)
    assert any("^^^NRBC^19048-8" in r for r in records) and any(r.startswith("R|") and "|50.0|%|" in r for r in records)
