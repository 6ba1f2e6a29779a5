"""Export to device bundles: int8 quantization with a parity report, release gates, bad inputs."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("onnx", reason="export needs the workstation extra (pip install -e '.[export]')")

from edgehema import BackendError, write_sample  # noqa: E402
from edgehema.model.bundle import MANIFEST, Bundle, seal  # noqa: E402
from edgehema.model.classifier import Classifier  # noqa: E402
from edgehema.counts.result import classify_sample  # noqa: E402
from edgehema.simulator import SampleSimulator  # noqa: E402
from export.event_model.quantize import ExportError, export_bundle  # noqa: E402


def run(*args):
    return subprocess.run([sys.executable, "-m", "edgehema", *args], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, COLUMNS="160"))


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    d = tmp_path_factory.mktemp("calib")
    files = []
    for i, sp in enumerate(("human", "cat", "dog")):
        p = d / f"{sp}.csv"
        write_sample(SampleSimulator(sp, seed=6100 + i).generate(12_288).sample, p)
        files.append(p)
    return files


def test_int8_export_with_parity_report(tmp_path, calib):
    res = export_bundle(None, "onnx-int8", calib[:2], tmp_path / "int8", heldout_files=calib[2:], gates={})
    b = Bundle.load(res.bundle)
    assert b.manifest["target"] == "onnx-int8" and b.manifest["quantization"]["format"] == "QDQ"
    assert "parity.json" in b.manifest["files"]  # the report is covered by the hashes
    report = json.loads((res.bundle / "parity.json").read_text())
    assert report["label_agreement"] >= 0.99
    assert report["max_count_delta_pct"] < 1.0
    assert len(report["sets"]["calibration"]) == 2 and len(report["sets"]["heldout"]) == 1
    assert np.array(report["confusion_vs_float"]["matrix"]).sum() == report["events"] == 3 * 12_288
    assert report["size_ratio"] < 0.45
    # Where each PLT delta comes from, and the float model's own movement under a 0.1 % gain step.
    row = report["sets"]["heldout"][0]
    assert set(row["plt_delta_parts"]) == {"plt_events", "in_coincidences", "hidden"}
    assert set(row["float_gain_step"]) == {"rbc_delta_pct", "plt_delta_pct", "retic_delta_pt"}
    assert report["float_gain_step"]["gain_step"] == 0.001
    assert 0 <= report["mean_count_delta_pct"] <= report["max_count_delta_pct"]
    # Weights and activations int8, biases and the two heads (the latents' layers) float.
    import onnx
    from onnx import numpy_helper

    g = onnx.load(str(b.model_file)).graph
    inits = {i.name: i for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    assert not any(i.data_type == onnx.TensorProto.INT32 for i in g.initializer)  # no int32 biases
    assert sum(i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 2 for i in g.initializer) == 7
    for out in ("z1", "z2"):
        head = producer[out]
        assert head.op_type == "Gemm" and inits[head.input[1]].data_type == onnx.TensorProto.FLOAT
        assert producer[head.input[0]].op_type == "DequantizeLinear"  # its input is still int8
    assert b.manifest["quantization"]["float"][0] == "biases"
    assert numpy_helper.to_array(inits[producer["z1"].input[1]]).shape == (4, 32)
    # The quantized bundle classifies like the float one.
    s = SampleSimulator("human", seed=6200).generate(30_000).sample
    a = classify_sample(s, Classifier("reference")).to_dict()
    q = classify_sample(s, Classifier(b)).to_dict()
    assert abs(q["cells"]["rbc"] / a["cells"]["rbc"] - 1) < 0.005
    assert abs(q["cells"]["plt"] / a["cells"]["plt"] - 1) < 0.02


def test_release_gate_fails_with_one_line(tmp_path, calib):
    proc = run("export", "--target", "onnx-fp32", "--calibration", str(calib[0]), "--out", str(tmp_path / "fp32"),
               "--fail-under", "agreement=1.01")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and "release gate failed: label agreement" in lines[0]
    assert Bundle.load(tmp_path / "fp32").manifest["parity_summary"]["label_agreement"] == 1.0
    # The default gates: a float target passes them (the size gate is for int8 ONNX only) ...
    proc = run("export", "--target", "onnx-fp32", "--calibration", str(calib[0]), "--out", str(tmp_path / "fp32b"))
    assert proc.returncode == 0, proc.stderr
    gates = Bundle.load(tmp_path / "fp32b")
    assert json.loads((gates.path / "parity.json").read_text())["gates"]["thresholds"] == {"agreement": 0.995, "count_delta_pct": 0.2,
                                                                                       "ood_delta_pt": 0.5}
    # The out-of-distribution share is compared per sample too (the float graph: no move at all).
    assert json.loads((gates.path / "parity.json").read_text())["max_ood_delta_pt"] == 0.0
    # ... and the int8 ONNX target is held to a size gate: the default (40 %) passes what the shipped
    # model meets (39 %, the README's example), the 35 % target fails it with one line.
    proc = run("export", "--target", "onnx-int8", "--calibration", str(calib[0]), "--out", str(tmp_path / "int8"))
    assert proc.returncode == 0, proc.stderr
    proc = run("export", "--target", "onnx-int8", "--calibration", str(calib[0]), "--out", str(tmp_path / "int8b"),
               "--fail-under", "agreement=0.995,count_delta_pct=0.2,size_ratio=0.35")
    assert proc.returncode == 1 and "release gate failed: size 39% of float > 35%" in proc.stderr


def test_bad_inputs(tmp_path, calib):
    xn = write_sample(SampleSimulator("dog", profile="sysmex-xn-ret", seed=1).generate(5000).sample, tmp_path / "X.116.csv")[0]
    with pytest.raises(ExportError, match="calibration file .*X.116.csv: model edgehema-reference expects profile optical-11"):
        export_bundle(None, "onnx-int8", [xn], tmp_path / "o1")
    with pytest.raises(ExportError, match="unknown target 'tflite-int16'"):
        export_bundle(None, "tflite-int16", calib, tmp_path / "o2")
    bad = tmp_path / "bad"
    shutil.copytree(Bundle.load("reference").path, bad)
    (bad / "model.onnx").write_bytes((bad / "model.onnx").read_bytes()[:-10])
    proc = run("export", str(bad), "--target", "onnx-int8", "--calibration", str(calib[0]), "--out", str(tmp_path / "o3"))
    assert proc.returncode == 1 and "sha256 mismatch" in proc.stderr and "Traceback" not in proc.stderr


def test_model_with_unexpected_inputs_is_refused(tmp_path):
    odd = tmp_path / "odd"
    shutil.copytree(Bundle.load("reference").path, odd)
    m = json.loads((odd / MANIFEST).read_text())
    m["model"]["input"] = "events"
    (odd / MANIFEST).write_text(json.dumps(seal(m, odd)))
    with pytest.raises(BackendError, match=r"model inputs \['x'\] do not match the manifest's 'events'"):
        Classifier(str(odd))
    s = tmp_path / "s.csv"
    write_sample(SampleSimulator("dog", seed=2).generate(2000).sample, s)
    proc = run("classify", "--model", str(odd), str(s))
    assert proc.returncode == 1 and "do not match the manifest" in proc.stderr and "Traceback" not in proc.stderr


def test_models_and_info_commands():
    proc = run("models")
    assert proc.returncode == 0
    for name in ("reference", "reference-int8", "reference-tflite-int8", "supervised-mlp", "bccd-int8", "txl-pbc-int8",
                 "wbc-pbc-int8", "rbc-chula-int8"):
        assert name in proc.stdout
    # the four event bundles; the two smear detectors and the two cell classifiers, ONNX and TFLite each
    assert proc.stdout.count("verified") == 12
    assert "bccd-int8/model.tflite" in proc.stdout and "txl-pbc-int8 (smear default)" in proc.stdout
    proc = run("info", "reference-int8")
    assert proc.returncode == 0 and "hashes: verified" in proc.stdout and "parity vs float: label agreement" in proc.stdout


def test_tflite_int8_export(tmp_path, calib, capfd):
    pytest.importorskip("tensorflow", reason="the TFLite targets need the tflite extra (pip install -e '.[export]')")
    pytest.importorskip("onnx2tf", reason="the TFLite targets need the tflite extra (pip install -e '.[export]')")
    capfd.readouterr()
    res = export_bundle(None, "tflite-int8", calib, tmp_path / "tfl", gates={})
    chatter = capfd.readouterr()
    assert "fully_quantize" not in chatter.err + chatter.out  # the converter's logging is held back
    b = Bundle.load(res.bundle)
    assert b.manifest["target"] == "tflite-int8" and set(b.manifest["files"]) == {"model.onnx", "model.tflite", "parity.json", "selftest.npz"}
    assert set(b.manifest["model"]["tflite"]["outputs"]) == {"z1", "recon_err", "z2"}
    # Full integer except the heads: the latents come from float layers, everything else is int8.
    q = b.manifest["quantization"]
    assert q["float_heads"] == ["recon_err", "z1", "z2"][1:] and q["calibration_events"] == 3 * 12_288
    from edgehema.model.backends.tflite_backend import load_interpreter_class

    Interpreter, _ = load_interpreter_class()
    it = Interpreter(model_path=str(b.path / "model.tflite"))
    ops = [o["op_name"] for o in it._get_ops_details()]
    assert ops.count("FULLY_CONNECTED") == 9 and ops[0] == "QUANTIZE"
    weights = [d for d in it.get_tensor_details() if len(d["shape"]) == 2 and d["shape"][0] != 4096]
    assert sorted(str(d["dtype"].__name__) for d in weights) == ["float32"] * 2 + ["int8"] * 7
    assert res.parity["label_agreement"] >= 0.99
    assert Classifier(b).backend_name == "tflite"
    # The source model file is untouched by the converter (it rewrites what it is given).
    Bundle.load("reference")


def test_pytorch_model_to_device_bundle(tmp_path, calib):
    """A data scientist's TorchScript file plus a manifest template, to an int8 bundle in one command."""
    torch = pytest.importorskip("torch", reason="PyTorch input needs torch (pip install -e '.[export]')")
    import onnx
    from onnx import numpy_helper

    from export.event_model.network import IDEC, InferenceGraph, VaDE

    ref = Bundle.load("reference")
    settings = ref.manifest["model_card"]["settings"]  # edgehema train's model card
    graph = InferenceGraph(IDEC(11, settings["latent1"], tuple(settings["hidden"]), 3),
                           VaDE(11, settings["latent2"], tuple(settings["hidden"]), 3))
    graph.load_state_dict({i.name: torch.from_numpy(numpy_helper.to_array(i).copy())
                           for i in onnx.load(str(ref.model_file)).graph.initializer})
    scripted = torch.jit.trace(graph.eval(), torch.zeros(4, 11))
    pt = tmp_path / "my_model.pt"
    scripted.save(str(pt))
    template = {k: v for k, v in ref.manifest.items() if k not in ("files", "integrity")}
    template["name"] = "my-model"
    (tmp_path / "manifest.json").write_text(json.dumps(template))
    proc = run("export", str(pt), "--manifest", str(tmp_path / "manifest.json"), "--target", "onnx-int8",
               "--calibration", str(calib[0]), "--out", str(tmp_path / "mine"), "--fail-under", "agreement=0.99")
    assert proc.returncode == 0, proc.stderr
    b = Bundle.load(tmp_path / "mine")
    assert b.name == "my-model-onnx-int8" and b.manifest["parity_summary"]["label_agreement"] > 0.99
    proc = run("export", str(pt), "--target", "onnx-int8", "--calibration", str(calib[0]), "--out", str(tmp_path / "x"))
    assert proc.returncode == 1 and "needs --manifest" in proc.stderr
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    proc = run("export", str(tmp_path / "junk.pt"), "--manifest", str(tmp_path / "manifest.json"), "--target", "onnx-int8",
               "--calibration", str(calib[0]), "--out", str(tmp_path / "y"))
    assert proc.returncode == 1 and "not a TorchScript file" in proc.stderr and "Traceback" not in proc.stderr


def test_tflite_fp32_export(tmp_path, calib):
    pytest.importorskip("onnx2tf", reason="the TFLite targets need the tflite extra (pip install -e '.[export]')")
    res = export_bundle(None, "tflite-fp32", calib[:1], tmp_path / "tf32", gates={"agreement": 0.999})
    assert res.failures == [] and res.parity["label_agreement"] >= 0.999
    assert Bundle.load(res.bundle).manifest["target"] == "tflite-fp32"


@pytest.fixture(scope="module")
def recipe_files(tmp_path_factory):
    """The calibration and held-out files of the shipped device bundles (docs/export.md): five
    species x 150,000 events, seeds 4242 (calibration) and 4343 (held out)."""
    d = tmp_path_factory.mktemp("recipe")
    cal, held = [], []
    for sp in ("human", "dog", "cat", "horse", "cattle"):
        for seed, into in ((4242, cal), (4343, held)):
            p = d / f"{'cal' if seed == 4242 else 'held'}-{sp}.csv"
            proc = run("simulate", "--species", sp, "--events", "150000", "--seed", str(seed), "--out", str(p), "-q")
            assert proc.returncode == 0, proc.stderr
            into.append(p)
    return cal, held


@pytest.mark.parametrize("target", ["onnx-fp32", "onnx-int8", "tflite-fp32", "tflite-int8"])
def test_reference_model_to_every_target_within_the_parity_thresholds(tmp_path, recipe_files, target):
    """The issue's acceptance: the bundled reference model exported to all four targets, each parity
    report (1.5 million events, 10 samples) within the thresholds: label agreement >= 99.5 % and
    per-sample RBC/PLT count deltas <= 0.2 % (0.5 % from model 2.0.0 until 2026-12-08: two events of
    one sample of 150,000 that only int8 read as 14- and 15-platelet clumps moved its PLT by 0.44 %;
    red-cell-sized events are no longer read as big clumps, docs/export.md).
    The int8 ones reproduce the shipped bundles' reports."""
    if target.startswith("tflite"):
        pytest.importorskip("onnx2tf", reason="the TFLite targets need the tflite extra (pip install -e '.[export]')")
    cal, held = recipe_files
    res = export_bundle(None, target, cal, tmp_path / target, heldout_files=held,
                        gates={"agreement": 0.995, "count_delta_pct": 0.2})
    assert res.failures == [], res.failures
    r = res.parity
    assert r["events"] == 1_500_000 and len(r["sets"]["heldout"]) == 5
    if target.endswith("int8"):
        shipped = Bundle.load({"onnx-int8": "reference-int8", "tflite-int8": "reference-tflite-int8"}[target])
        s = json.loads((shipped.path / "parity.json").read_text())
        assert abs(r["label_agreement"] - s["label_agreement"]) < 1e-4
        assert abs(r["max_count_delta_pct"] - s["max_count_delta_pct"]) < 0.05
        assert r["size_ratio"] < (0.40 if target == "onnx-int8" else 0.65)
    else:
        assert r["label_agreement"] > 0.9999 and r["max_count_delta_pct"] < 0.02


def test_tflite_converter_failure_is_one_line(tmp_path, calib, monkeypatch, capfd):
    """TensorFlow's logging is held back; a failure is one line with its reason, the folder removed."""
    pytest.importorskip("onnx2tf", reason="the TFLite targets need the export extra (pip install -e '.[export]')")
    import export.event_model.tflite as tfl

    def broken(*args, **kwargs):
        os.write(2, b"W0000 some converter chatter\nE0000 'tfl.fully_connected' op quantization failed\n")
        raise RuntimeError()

    monkeypatch.setattr(tfl, "_full_integer", broken)
    capfd.readouterr()
    with pytest.raises(ExportError, match=r"TFLite int8 conversion failed: E0000 'tfl.fully_connected' op quantization failed$"):
        export_bundle(None, "tflite-int8", calib[:1], tmp_path / "t")
    assert "chatter" not in capfd.readouterr().err
    assert not (tmp_path / "t").exists()
