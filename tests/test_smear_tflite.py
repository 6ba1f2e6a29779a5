"""The smear detector as int8 TFLite on LiteRT: the shipped model's figures on BCCD val, its refusals
(damaged file, wrong known answer, a file its manifest does not describe), and the conversion
(export.smear_detector.tflite) with its release gates."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from edgehema.exceptions import BundleError
from edgehema.smear.learned import DEFAULT_MODEL, MODELS, PREVIOUS_MODEL, session

from .test_smear import require_bccd

pytest.importorskip("ai_edge_litert", reason="LiteRT (ai-edge-litert, a core dependency) is not installed")

#: The BCCD-trained detector (model 1.1.0): these tests hold its TFLite form to its BCCD figures.
SHIPPED = MODELS / PREVIOUS_MODEL


def test_the_shipped_tflite_detector_gives_its_recorded_figures_on_bccd_val():
    from edgehema.smear.evaluate import evaluate

    data = require_bccd()
    recorded = json.loads((SHIPPED / "manifest.json").read_text())["tflite"]
    assert recorded["gates"]["failed"] == []
    got = evaluate(data, "val", f"model:{SHIPPED / 'model.tflite'}")
    assert got["map50"] >= 0.90 and got["classes"]["wbc"]["ap50"] >= 0.97
    # int8 arithmetic is integer arithmetic: another CPU gives the same detections, or very nearly.
    assert abs(got["map50"] - recorded["evaluation_bccd_val"]["map50"]) <= 0.003
    # and within 0.01 of the float model's mAP (the int8 target)
    float_map = json.loads((SHIPPED / "manifest.json").read_text())["evaluation_bccd_val"]["float"]["map50"]
    assert abs(got["map50"] - float_map) <= 0.01


def test_the_smear_command_runs_the_tflite_engine():
    data = require_bccd()
    proc = subprocess.run([sys.executable, "-m", "edgehema", "smear", "--json", "--engine", "model-tflite",
                           str(data / "JPEGImages" / "BloodImage_00000.jpg")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # LiteRT's delegate announcement is held back
    result = json.loads(proc.stdout)
    assert result["engine"] == "model-tflite" and result["counts"]["wbc"] == 1 and result["counts"]["rbc"] > 5


def _copy(tmp_path):
    folder = tmp_path / "bccd-copy"
    shutil.copytree(SHIPPED, folder)
    return folder


def test_a_damaged_or_undescribed_tflite_model_is_refused_in_one_line(tmp_path):
    folder = _copy(tmp_path)
    target = str(folder / "model.tflite")
    data = bytearray((folder / "model.tflite").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / "model.tflite").write_bytes(data)
    with pytest.raises(BundleError, match="sha256 differs from its manifest"):
        session(target)
    session.cache_clear()
    shutil.copy2(SHIPPED / "model.tflite", folder / "model.tflite")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["tflite"]["known_answer"]["heatmap_max"][1] -= 0.3  # an engine computing something else
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="fails its known answer on this machine"):
        session(target)
    session.cache_clear()
    del manifest["tflite"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="not described by its folder's manifest"):
        session(target)
    session.cache_clear()


def test_export_converts_the_float_detector_to_tflite_int8_within_its_gates(tmp_path):
    pytest.importorskip("tensorflow", reason="the TFLite converter (tensorflow, the export extra) is not installed")
    data = require_bccd()
    folder = _copy(tmp_path)
    (folder / "model.tflite").unlink()
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["tflite"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    proc = subprocess.run([sys.executable, "-m", "export.smear_detector.tflite", str(folder), "--data", str(data)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    member = json.loads((folder / "manifest.json").read_text())["tflite"]
    assert member["gates"]["failed"] == []
    assert set(member["outputs"]) == {"heatmap", "size", "offset"}
    assert member["evaluation"]["map50"] >= 0.90
    assert max(abs(v) for v in member["parity"]["count_delta_pct"].values()) <= 1.0
    # the converted model runs, as the device runs it, through the folder's manifest
    from edgehema.smear.pipeline import count_image

    result, _ = count_image(data / "JPEGImages" / "BloodImage_00000.jpg", f"model:{folder / 'model.tflite'}")
    assert result["counts"]["wbc"] == 1


def test_edgehema_export_makes_a_gated_smear_folder_from_a_float_onnx_file(tmp_path):
    """The one command a data scientist runs on their own float detector: int8 ONNX and int8 TFLite
    side by side, evaluated and gated (the shipped float model here; the int8 ONNX misses the count
    gate, which the command reports with exit 1 and the folder still written)."""
    pytest.importorskip("tensorflow", reason="the TFLite converter (tensorflow, the export extra) is not installed")
    data = require_bccd()
    out = tmp_path / "mine"
    proc = subprocess.run([sys.executable, "-m", "edgehema", "export", str(SHIPPED / "model-float.onnx"),
                           "--target", "tflite-int8", "-c", str(data), "-o", str(out)],
                          capture_output=True, text=True, timeout=900)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "smear" and manifest["name"] == "edgehema-smear-mine"
    assert {p.name for p in out.iterdir()} == {"manifest.json", "model.onnx", "model-float.onnx", "model.tflite"}
    failed = manifest["gates"]["failed"] + manifest["tflite"]["gates"]["failed"]
    assert proc.returncode == (1 if failed else 0), proc.stderr
    if failed:
        assert proc.stderr.count("\n") == 1 and "release gate failed" in proc.stderr
    assert "int8 ONNX: bccd val mAP@0.5" in proc.stdout and "int8 TFLite: bccd val mAP@0.5" in proc.stdout
    # Both run through the folder's manifest, hashes checked.
    from edgehema.smear.pipeline import count_image

    for engine in (f"model:{out}", f"model:{out / 'model.tflite'}"):
        assert count_image(data / "JPEGImages" / "BloodImage_00000.jpg", engine)[0]["counts"]["wbc"] == 1
    # and a second export into the same folder is refused in one line
    again = subprocess.run([sys.executable, "-m", "edgehema", "export", str(out), "--target", "onnx-int8",
                            "-c", str(data), "-o", str(out)], capture_output=True, text=True, timeout=300)
    assert again.returncode == 1 and "must not exist or be empty" in again.stderr and "Traceback" not in again.stderr


def test_an_event_command_given_a_smear_folder_says_what_it_is():
    from edgehema.model.bundle import Bundle

    with pytest.raises(BundleError, match="a smear detector \\(kind smear\\), not an event bundle: count images with "
                                          "edgehema smear --engine model:"):
        Bundle.load(SHIPPED)


def test_the_default_engine_runs_the_gated_tflite_and_falls_back_to_onnx_where_litert_cannot(monkeypatch):
    from edgehema.exceptions import BackendError
    from edgehema.smear import learned
    from edgehema.smear.pipeline import detector_file

    learned.default_model.cache_clear()
    assert learned.default_model() == f"{DEFAULT_MODEL}/model.tflite"
    assert detector_file("model") == f"{DEFAULT_MODEL}/model.tflite"

    def no_litert():
        raise BackendError("neither ai-edge-litert (LiteRT) nor tflite-runtime is installed")

    monkeypatch.setattr("edgehema.model.backends.tflite_backend.load_interpreter_class", no_litert)
    learned.default_model.cache_clear()
    session.cache_clear()
    try:
        assert learned.default_model() == DEFAULT_MODEL
        assert detector_file("model") == f"{DEFAULT_MODEL}/model.onnx"
        assert "running the int8 ONNX on onnxruntime" in learned.ENGINE_NOTES["model"]
        assert "LiteRT" in learned.ENGINE_NOTES["model"]
    finally:
        learned.ENGINE_NOTES.pop("model", None)
        learned.default_model.cache_clear()
        session.cache_clear()


def test_info_describes_the_tflite_model_and_the_stain_reference():
    proc = subprocess.run([sys.executable, "-m", "edgehema", "info", DEFAULT_MODEL], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "model.tflite (LiteRT; the default engine where LiteRT runs it" in proc.stdout
    assert "gates passed" in proc.stdout
    assert "stain reference: txl-pbc train (982 images): CIELAB means [179.73, 139.75, 130.21]" in proc.stdout
