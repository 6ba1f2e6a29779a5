"""Turn a float bundle into device bundles, with a parity report against the float model.

Targets: ``onnx-fp32`` (the float graph, re-sealed) and ``onnx-int8`` (onnxruntime's
``quant_pre_process`` then ``quantize_static``: QDQ format, signed int8 activations and weights,
per-channel weights, calibration by MinMax, Entropy or Percentile on event files of the bundle's
profile). The parity report (``parity.json``, inside the bundle and covered by its hashes) compares
the new bundle's per-event labels, probabilities and per-sample counts with the float bundle's on
the calibration files and on held-out files.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgehema.model import classes as C
from edgehema.model.bundle import MANIFEST, REFERENCE_BUNDLE, Bundle, amend, seal
from edgehema.model.classifier import Classifier
from edgehema.exceptions import BundleError, EdgehemaError, ProfileMismatchError
from edgehema.formats import read_sample
from edgehema.counts.result import classify_sample
from edgehema.sample import Sample
from edgehema.model.selftest import attach_known_answer, compare, spread_events

from export.common import CALIBRATION_BATCH, ExportError
from export.graph import float_graph_outputs, compact_names, head_outputs, name_nodes_and_find_heads  # noqa: F401 - re-exported

TARGETS = ("onnx-fp32", "onnx-int8", "tflite-fp32", "tflite-int8")
METHODS = ("minmax", "entropy", "percentile")
#: Default release gates (the export issue's targets).
#: The size gate is 40 %, not the issue's 35 % target (missed, README): on a 9,000-weight model the
#: int8 weights alone are 23 % of the float file, and scales, float biases and heads and the graph
#: itself add a sixth of it. A default gate the shipped reference itself fails would fail every
#: export, the README's example included.
#: ood_delta_pt: the share of a sample's events scored out of distribution may move by at most this
#: many percentage points (the flag fires at 1 %): an int8 graph can keep every class and still
#: miscompute the reconstruction (docs/device.md).
DEFAULT_GATES = {"agreement": 0.995, "count_delta_pct": 0.2, "size_ratio": 0.40, "ood_delta_pt": 0.5}
#: Python modules each kind of export needs (the ``export`` extra), checked before any work starts.
CONVERTERS = {"onnx-fp32": ("onnx",), "onnx-int8": ("onnx", "onnxruntime.quantization"),
              "tflite-fp32": ("onnx", "onnx2tf", "tensorflow"), "tflite-int8": ("onnx", "onnx2tf", "tensorflow"),
              "pytorch": ("torch", "onnx")}


def require_converters(kind: str) -> None:
    """One line naming the extra to install when a converter is missing (the device venv has none)."""
    import importlib.util

    missing = []
    for module in CONVERTERS.get(kind, ()):
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(module.split(".")[0])
    if missing:
        raise ExportError(f"edgehema export to {kind} runs on a workstation with the export extra: "
                          f"pip install 'edgehema[export]' (missing here: {', '.join(dict.fromkeys(missing))})")


def default_gates(target: str) -> dict[str, float]:
    """The release gates for ``target`` when none are given: agreement and count deltas for all;
    the size ratio only where it is a target (int8 ONNX: the float targets are the float size by
    design, and a TFLite bundle carries its own format)."""
    return {k: v for k, v in DEFAULT_GATES.items() if k != "size_ratio" or target == "onnx-int8"}


@dataclass
class ExportResult:
    bundle: Path
    parity: dict
    failures: list[str]


def load_calibration(bundle: Bundle, files: list[Path]) -> list:
    samples = []
    for f in files:
        s = read_sample(f)
        try:
            bundle.check_profile(s.profile, str(f))
        except ProfileMismatchError as exc:
            raise ExportError(f"calibration file {exc}") from None
        samples.append(s)
    if not samples:
        raise ExportError("no calibration files given")
    return samples


class _Reader:
    """onnxruntime CalibrationDataReader over equal-size batches (the Percentile and Entropy
    calibrators stack batches, so a short last batch would break them)."""

    def __init__(self, bundle: Bundle, samples: list):
        self.batches = []
        for s in samples:
            x = bundle.preprocess(s.events)
            for i in range(0, len(x) - CALIBRATION_BATCH + 1, CALIBRATION_BATCH):
                self.batches.append({bundle.settings.graph_input: x[i : i + CALIBRATION_BATCH]})
        if not self.batches:
            raise ExportError(f"calibration needs at least {CALIBRATION_BATCH} events in one file")
        self._it = iter(self.batches)

    def get_next(self):
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self.batches)


def quantize_int8(bundle: Bundle, samples: list, out_model: Path, method: str, float_heads: bool = True) -> dict:
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    reader = _Reader(bundle, samples)

    class Reader(CalibrationDataReader):
        def get_next(self):
            return reader.get_next()

    calib = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
             "percentile": CalibrationMethod.Percentile}[method]
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(bundle.model_file), str(pre))
        heads = name_nodes_and_find_heads(pre)
        # Biases stay float: int32 biases need a per-channel scale and zero point each, tripling
        # their bytes in a model this small, and onnxruntime fuses float-bias Gemms just the same.
        # The heads stay float: their outputs are the latents the clustering reads, and 8-bit
        # latents moved boundary events between classes (mean per-sample count delta over 25
        # samples 0.065 % with int8 heads, 0.035 % with float heads; docs/export.md).
        # Weights in a 7-bit range (reduce_range): onnxruntime's fused int8 kernels on x86 without
        # VNNI add pairs of products in 16 bits, and full-range weights saturated the decoder there
        # (model 2.0.0's first int8 export: every event scored out of distribution on such a CPU).
        quantize_static(str(pre), str(out_model), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, calibrate_method=calib,
                        nodes_to_exclude=heads if float_heads else [], reduce_range=True,
                        extra_options={"QuantizeBias": False})
    if float_heads:
        float_graph_outputs(out_model)
    compact_names(out_model)
    return {"tool": "onnxruntime.quantization.quantize_static after quant_pre_process", "format": "QDQ",
            "activations": "int8 (signed)", "weights": "int8 (signed), per channel, 7-bit range (reduce_range)",
            "float": (["biases"] + ([f"heads {', '.join(heads)}"] if float_heads and heads else [])),
            "calibration": method, "calibration_batches": len(reader.batches),
            "calibration_events": len(reader.batches) * CALIBRATION_BATCH}


def parity(float_bundle: Bundle, new_bundle: Bundle, calibration: list, heldout: list, backend: str = "onnx") -> dict:
    """Agreement of the new bundle (on ``backend``) with the float one, per event and per sample."""
    ref = Classifier(float_bundle, backend="onnx")
    new = Classifier(new_bundle, backend=backend)
    sets = {"calibration": calibration, "heldout": heldout}
    report: dict = {"sets": {}}
    conf = np.zeros((len(C.EVENT_CLASSES), len(C.EVENT_CLASSES)), dtype=np.int64)
    agree_n = total_n = 0
    dev_max, dev_sum = 0.0, 0.0
    deltas = []
    for name, samples in sets.items():
        rows = []
        for s in samples:
            ri, ni = ref.infer(s.events), new.infer(s.events)
            np.add.at(conf, (ri.labels.astype(np.int64), ni.labels.astype(np.int64)), 1)
            agree_n += int(np.sum(ri.labels == ni.labels))
            total_n += len(ri.labels)
            d = np.abs(ri.probabilities - ni.probabilities)
            dev_max = max(dev_max, float(d.max()))
            dev_sum += float(d.sum())
            rc = classify_sample(s, ref).counts
            nc = classify_sample(s, new).counts
            gc = classify_sample(_with_gain(s, GAIN_STEP), ref).counts
            row = {
                "sample_id": s.info.sample_id,
                "events": s.n_events,
                **_deltas(nc, rc),
                # Where a PLT delta comes from: platelet events, platelets read in coincidences,
                # platelets hidden under red cells (Poisson estimate).
                "plt_delta_parts": {
                    "plt_events": nc.events["plt"] - rc.events["plt"],
                    "in_coincidences": nc.qc["platelets_in_coincidences"] - rc.qc["platelets_in_coincidences"],
                    "hidden": round(float(nc.qc["hidden_platelets"] - rc.qc["hidden_platelets"]), 1),
                },
                "label_agreement": float(np.mean(ri.labels == ni.labels)),
                "float_gain_step": _deltas(gc, rc),
                "ood_delta_pt": 100.0 * (nc.qc.get("ood_fraction", 0.0) - rc.qc.get("ood_fraction", 0.0)),
                "flags_gained": sorted(set(nc.flags) - set(rc.flags)),
                "flags_lost": sorted(set(rc.flags) - set(nc.flags)),
            }
            rows.append(row)
            deltas.append(row)
        report["sets"][name] = rows
    report["label_agreement"] = agree_n / max(total_n, 1)
    report["events"] = total_n
    report["confusion_vs_float"] = {"rows_float_cols_new": list(C.EVENT_CLASSES), "matrix": conf.tolist()}
    report["per_class_agreement"] = {
        c: (float(conf[i, i] / conf[i].sum()) if conf[i].sum() else None) for i, c in enumerate(C.EVENT_CLASSES)
    }
    report["probability_deviation"] = {"max": dev_max, "mean": dev_sum / max(total_n * len(C.EVENT_CLASSES), 1)}
    report["max_count_delta_pct"] = max(max(abs(r["rbc_delta_pct"]), abs(r["plt_delta_pct"])) for r in deltas)
    report["max_retic_delta_pt"] = max(abs(r["retic_delta_pt"]) for r in deltas)
    report["max_ood_delta_pt"] = max(abs(r["ood_delta_pt"]) for r in deltas)
    report["samples_with_flag_changes"] = sum(1 for r in deltas if r["flags_gained"] or r["flags_lost"])
    # An engine that ran other than as built here (an int8 graph unfused after failing its known answer).
    report["engine_notes"] = list(new.refused)
    report["mean_count_delta_pct"] = float(np.mean([max(abs(r["rbc_delta_pct"]), abs(r["plt_delta_pct"])) for r in deltas]))
    # The yardstick: how far the float model's own counts move when every optical signal changes
    # by GAIN_STEP (far inside any analyzer's gain tolerance), on the same samples.
    steps = [max(abs(r["float_gain_step"]["rbc_delta_pct"]), abs(r["float_gain_step"]["plt_delta_pct"])) for r in deltas]
    report["float_gain_step"] = {"gain_step": GAIN_STEP, "max_count_delta_pct": float(max(steps)),
                                 "mean_count_delta_pct": float(np.mean(steps))}
    # Size and speed of the graph alone, float and new, on the same events (medians of 5).
    x = float_bundle.preprocess(np.concatenate([s.events for s in heldout or calibration])[:150_000])
    report["float_size_bytes"] = float_bundle.model_file.stat().st_size
    device_file = (new_bundle.path / new_bundle.settings.tflite_file
                   if backend == "tflite" else new_bundle.model_file)
    report["size_bytes"] = device_file.stat().st_size
    report["size_ratio"] = report["size_bytes"] / report["float_size_bytes"]
    for key, clf in (("float_events_per_s", ref), ("events_per_s", new)):
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            clf.backend.run(x)
            times.append(time.perf_counter() - t0)
        report[key] = len(x) / float(np.median(times))
    report["speedup_vs_float"] = report["events_per_s"] / report["float_events_per_s"]
    return report


#: Relative change of every peak and area signal for the float model's stability yardstick (0.1 %).
GAIN_STEP = 0.001


def _with_gain(sample: Sample, step: float) -> Sample:
    """The sample as the instrument would report it with every optical gain ``step`` higher
    (peaks and areas scale, pulse widths do not)."""
    scale = np.array([1.0 + step if f.measure in ("peak", "area") else 1.0 for f in sample.profile.features],
                     dtype=np.float32)
    return Sample(sample.events * scale, sample.profile, sample.info)


def _deltas(new, ref) -> dict[str, float]:
    return {
        "rbc_delta_pct": 100.0 * (new.cells["rbc"] - ref.cells["rbc"]) / max(ref.cells["rbc"], 1.0),
        "plt_delta_pct": 100.0 * (new.cells["plt"] - ref.cells["plt"]) / max(ref.cells["plt"], 1.0),
        "retic_delta_pt": (new.retic_percent or 0.0) - (ref.retic_percent or 0.0),
    }


def check_gates(report: dict, gates: dict[str, float]) -> list[str]:
    failures = []
    if "agreement" in gates and report["label_agreement"] < gates["agreement"]:
        failures.append(f"label agreement {report['label_agreement']:.4%} < {gates['agreement']:.2%}")
    if "count_delta_pct" in gates and report["max_count_delta_pct"] > gates["count_delta_pct"]:
        failures.append(f"largest per-sample count delta {report['max_count_delta_pct']:.3f} % > {gates['count_delta_pct']} %")
    if "ood_delta_pt" in gates and report.get("max_ood_delta_pt", 0.0) > gates["ood_delta_pt"]:
        failures.append(f"out-of-distribution share moved by {report['max_ood_delta_pt']:.2f} points on a sample "
                        f"> {gates['ood_delta_pt']} (the engine miscomputes the reconstruction?)")
    if "size_ratio" in gates and report["size_ratio"] > gates["size_ratio"]:
        failures.append(f"size {report['size_ratio']:.0%} of float > {gates['size_ratio']:.0%}")
    return failures


def export_bundle(source: str | Path | None, target: str, calibration_files: list[Path], out: Path,
                  method: str = "minmax", heldout_files: list[Path] | None = None,
                  gates: dict[str, float] | None = None, manifest_template: Path | None = None) -> ExportResult:
    """Export ``source`` (a float bundle, or a PyTorch file with ``manifest_template``) to ``target``."""
    require_converters(target)
    if source is not None and Path(str(source)).suffix in (".pt", ".pth", ".ts", ".torchscript"):
        require_converters("pytorch")
        from export.event_model.from_torch import float_source

        with tempfile.TemporaryDirectory() as tmp:
            made = float_source(str(source), manifest_template, Path(tmp))
            return _export(made, target, calibration_files, out, method, heldout_files, gates)
    return _export(source, target, calibration_files, out, method, heldout_files, gates)


def _export(source, target, calibration_files, out, method, heldout_files, gates) -> ExportResult:
    if target not in TARGETS:
        raise ExportError(f"unknown target {target!r} (known: {', '.join(TARGETS)})")
    if method not in METHODS:
        raise ExportError(f"unknown calibration method {method!r} (known: {', '.join(METHODS)})")
    src = Bundle.load(REFERENCE_BUNDLE if source is None else source)
    if src.settings.target != "onnx-fp32":
        raise ExportError(f"{src.path}: export starts from a float bundle, this one is {src.settings.target}")
    calibration = load_calibration(src, calibration_files)
    heldout = load_calibration(src, heldout_files) if heldout_files else []
    if out.exists() and any(out.iterdir()):
        raise ExportError(f"{out}: output folder exists and is not empty")
    out.mkdir(parents=True, exist_ok=True)
    try:
        manifest = amend(json.loads(json.dumps(src.manifest)), name=f"{src.name}-{target}", target=target,
                         source={"name": src.name, "version": src.version, "sha256": src.sha256})
        files = {"model.onnx": ""}
        if target == "onnx-fp32":
            shutil.copy2(src.model_file, out / "model.onnx")
            manifest = amend(manifest, quantization=None)
        elif target.startswith("tflite"):
            from export.event_model.tflite import convert

            # The float ONNX graph stays in the bundle: `--backend onnx` runs it, `--backend tflite`
            # the converted model, and the parity report says how far apart they are.
            shutil.copy2(src.model_file, out / "model.onnx")
            member = convert(src, calibration, target, out)
            manifest = amend(manifest, model={"tflite": member}, quantization=member["quantization"])
            files["model.tflite"] = ""
        else:
            try:
                manifest = amend(manifest, quantization=quantize_int8(src, calibration, out / "model.onnx", method))
            except ExportError:
                raise
            except Exception as exc:  # onnxruntime's quantizer raises many kinds; one line for the user
                first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
                raise ExportError(f"{src.model_file}: int8 quantization failed: {first}") from None
        own_profile = src.settings.profile_file
        if own_profile:  # a user's own profile travels with the model
            shutil.copy2(src.path / own_profile, out / own_profile)
            files[own_profile] = ""
        manifest = amend(manifest, model={"file": "model.onnx"}, files=dict(files))
        (out / MANIFEST).write_text(json.dumps(seal(manifest, out), indent=1) + "\n", encoding="utf-8")
        new = Bundle.load(out)
        report = parity(src, new, calibration, heldout, "tflite" if target.startswith("tflite") else "onnx")
        report["target"] = target
        report["calibration_files"] = [str(f) for f in calibration_files]
        report["heldout_files"] = [str(f) for f in heldout_files or []]
        gates = default_gates(target) if gates is None else gates
        failures = check_gates(report, gates)
        # The known answer the device checks its engine against at start-up: calibration events and
        # the classes the float source gives them. The new model must pass it here first.
        events = spread_events([s.events for s in calibration])
        answer = Classifier(src, backend="onnx", adapt=False, selftest=False).infer(events, adapt=False).labels
        engine = "tflite" if target.startswith("tflite") else "onnx"
        try:
            result = compare(Classifier(new, backend=engine, selftest=False), events, answer)
            report["selftest"] = result.to_dict()
            if not result.passed:
                failures.append(result.line())
        except EdgehemaError as exc:
            report["selftest"] = None
            failures.append(f"known-answer self-test could not run on {engine}: {exc}")
        report["gates"] = {"thresholds": gates, "failures": failures}
        (out / "parity.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        files["parity.json"] = ""
        manifest = attach_known_answer(amend(manifest, files=dict(files)), out, events, answer)
        manifest = amend(manifest, parity_summary={
            "label_agreement": report["label_agreement"], "max_count_delta_pct": report["max_count_delta_pct"],
            "max_retic_delta_pt": report["max_retic_delta_pt"], "mean_count_delta_pct": report["mean_count_delta_pct"],
            "float_gain_step_max_count_delta_pct": report["float_gain_step"]["max_count_delta_pct"],
            "size_ratio": report["size_ratio"], "max_ood_delta_pt": report["max_ood_delta_pt"],
            "speedup_vs_float": report["speedup_vs_float"], "gate_failures": failures,
        })
        (out / MANIFEST).write_text(json.dumps(seal(manifest, out), indent=1) + "\n", encoding="utf-8")
        Bundle.load(out)
    except (BundleError, ExportError):
        shutil.rmtree(out, ignore_errors=True)
        raise
    return ExportResult(out, report, failures)
