"""Model bundles and profiles: ``export`` (workstation), ``models``, ``info``, ``profiles``."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from edgehema.exceptions import EdgehemaError
from edgehema.sinks.text_table import Column, render
from edgehema.cli._app import app, out
from edgehema.exceptions import BackendError
from edgehema.exceptions import SignatureError
from edgehema.formats._table import csv_reader_state
from edgehema.model.backends import engine_order
from edgehema.model.bundle import DEFAULT_BUNDLE, Bundle, SmearFolder, bundled_models, bundled_root, folder_kind
from edgehema.model.classifier import Classifier
from edgehema.model.clustering import kernels_state
from edgehema.model.selftest import check
from edgehema.model.signing import TrustPolicy
from edgehema.model.signing import read_signatures
from edgehema.profiles import builtin_profiles


@app.command()
def export(
    source: str = typer.Argument("reference", help="Float bundle (a directory or a shipped name), or a PyTorch file (.pt/.pth TorchScript or nn.Module) with --manifest; or a smear detector: a smear model folder or its float .onnx file."),
    manifest: Optional[Path] = typer.Option(None, "--manifest", help="Manifest template for a PyTorch model (docs/bundle.md, without files and integrity)."),
    target: str = typer.Option(..., "--target", "-t", help="onnx-fp32, onnx-int8, tflite-fp32 or tflite-int8."),
    calibration: List[Path] = typer.Option(..., "--calibration", "-c", help="Event files for calibration and parity (any format, the bundle's profile). Repeatable. For a smear detector: one annotated set, VOC or YOLO (train calibrates, val measures); for a cell classifier: its cell set (one folder per class)."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Folder for the new bundle (must not exist or be empty)."),
    method: str = typer.Option("minmax", "--method", help="Calibration: minmax, entropy or percentile."),
    heldout: List[Path] = typer.Option([], "--heldout", help="Event files for the held-out part of the parity report. Repeatable."),
    fail_under: Optional[str] = typer.Option(None, "--fail-under", help="Release gates, e.g. agreement=0.995,count_delta_pct=0.2,size_ratio=0.40,ood_delta_pt=0.5 (default those; size_ratio for onnx-int8 only; 'none' for no gate)."),
) -> None:
    """Workstation: turn a float bundle into a device bundle (quantized), with a parity report.

    Needs the export extra (pip install 'edgehema[export]'). Exit status 1 if a release gate fails;
    the bundle is written either way, with the failures in its parity report. A smear detector
    (a folder whose manifest says kind smear, or a float .onnx file without --manifest) becomes a
    smear model folder: onnx-int8, or tflite-int8 (int8 ONNX and int8 TFLite side by side).
    """
    if _smear_folder(source) is not None or (source.endswith(".onnx") and manifest is None):
        _export_smear(Path(_smear_folder(source) or source), target, calibration, out_dir, heldout, fail_under)
        return
    try:
        from export.event_model.quantize import export_bundle
    except ImportError as exc:
        raise EdgehemaError(f"edgehema export needs the workstation extra: pip install 'edgehema[export]' ({exc})") from None
    gates = None
    if fail_under:
        gates = {} if fail_under.strip().lower() == "none" else {}
        for part in fail_under.split(","):
            if not part.strip() or part.strip().lower() == "none":
                continue
            key, _, value = part.partition("=")
            try:
                gates[key.strip()] = float(value)
            except ValueError:
                raise typer.BadParameter(f"--fail-under: {part!r} is not NAME=NUMBER") from None
    result = export_bundle(source, target, list(calibration), out_dir, method, list(heldout) or None, gates, manifest)
    r = result.parity
    out.print(f"wrote {result.bundle} ({target}): label agreement {r['label_agreement']:.4%} over {r['events']:,} events, "
              f"count delta largest {r['max_count_delta_pct']:.3f} % / mean {r['mean_count_delta_pct']:.3f} % "
              f"(float model under a {r['float_gain_step']['gain_step']:.1%} gain step: {r['float_gain_step']['max_count_delta_pct']:.3f} / "
              f"{r['float_gain_step']['mean_count_delta_pct']:.3f} %), retic delta {r['max_retic_delta_pt']:.3f} pt, "
              f"out-of-distribution share delta {r['max_ood_delta_pt']:.2f} pt, "
              f"size {r['size_bytes']:,} bytes ({r['size_ratio']:.0%} of float), graph {r['speedup_vs_float']:.2f}x float speed")
    if result.failures:
        raise EdgehemaError(f"{result.bundle}: release gate failed: " + "; ".join(result.failures))


def _export_smear(source: Path, target: str, calibration: List[Path], out_dir: Path, heldout: List[Path],
                  fail_under: Optional[str]) -> None:
    try:
        from export.smear_detector.export import export_smear
    except ImportError as exc:
        raise EdgehemaError(f"edgehema export needs the workstation extra: pip install 'edgehema[export]' ({exc})") from None
    if len(calibration) != 1 or heldout:
        raise typer.BadParameter("a smear detector takes one --calibration annotated set, VOC or YOLO (its train "
                                 "split calibrates, its val split measures) and no --heldout")
    if fail_under and fail_under.strip().lower() != "none":
        raise typer.BadParameter("a smear export has fixed gates (mAP within 0.01, counts within 1 %); --fail-under none "
                                 "writes the folder without failing on them")
    from export.cell_classifier.export import export_cells, is_classifier

    if is_classifier(source):  # a per-cell classifier: calibrated on a cell set's train split
        folder, failures, lines = export_cells(source, target, calibration[0], out_dir)
        what = "cell classifier"
    else:
        result = export_smear(source, target, calibration[0], out_dir)
        folder, failures, lines, what = result.folder, result.failures, result.lines, "smear detector"
    out.print(f"wrote {folder} ({target}, {what})")
    for line in lines:
        out.print("  " + line)
    if failures and not fail_under:
        raise EdgehemaError(f"{folder}: release gate failed: " + "; ".join(failures))


@app.command()
def models() -> None:
    """List the model bundles shipped with edgehema (and in $EDGEHEMA_MODELS, if set)."""

    places = [bundled_root() / n for n in bundled_models()]
    extra = os.environ.get("EDGEHEMA_MODELS")
    if extra and Path(extra).is_dir():
        places += sorted(p for p in Path(extra).iterdir() if (p / "manifest.json").is_file())
    columns = [Column("bundle", "left", keep=9), Column("name", "left", keep=3), Column("version", "left", keep=2),
               Column("kind", "left", keep=1), Column("target", "left", keep=6), Column("size", keep=4),
               Column("sha256", "left", keep=5), Column("hashes", "left", keep=8, wrap=True)]
    rows = []
    for path in places:
        mark = " (default)" if path.name == DEFAULT_BUNDLE and path.parent == bundled_root() else ""
        try:
            b = Bundle.load(path)
        except EdgehemaError as exc:
            rows.append([str(path) + mark, "-", "-", "-", "-", "-", "-", f"REFUSED: {exc}"])
            continue
        tfl = b.settings.tflite_file
        device_file = b.path / tfl if tfl else b.model_file
        rows.append([path.name + mark, b.name, b.version, b.kind, b.settings.target,
                     f"{device_file.stat().st_size:,}", b.sha256[:12],
                     "verified" + (f", signed by trusted key {b.signed_by.key_id}" if b.signed_by else "")])
    rows += _smear_rows()
    render("model bundles (size: the file the default engine runs)", columns, rows, sys.stdout)


def _smear_rows() -> list[list[str]]:
    """The shipped smear detectors (their own folder and manifest, kind smear), hashes checked."""
    from edgehema.exceptions import EdgehemaError
    from edgehema.smear.learned import DEFAULT_MODEL, MODELS, smear_manifest_digest

    rows = []
    trust = TrustPolicy.from_environment()
    for folder in sorted(p for p in MODELS.iterdir() if (p / "manifest.json").is_file()) if MODELS.is_dir() else []:
        mark = " (smear default)" if folder.name == DEFAULT_MODEL else ""
        try:
            digest = smear_manifest_digest(folder)
            signed = f", signed by trusted key {trust.check(folder, digest).key_id}" if trust.enforced else ""
        except EdgehemaError as exc:
            rows.append([folder.name + mark, "-", "-", "smear", "-", "-", "-", f"REFUSED: {exc}"])
            continue
        f = SmearFolder.load(folder)
        rows.append([folder.name + mark, f.name, f.version, "smear", "onnx-int8",
                     f"{(folder / 'model.onnx').stat().st_size:,}", digest[:12], "verified" + signed])
        if f.tflite:  # its sha256 is in the manifest, which the digest (and a signature) covers
            t = folder / f.tflite.file
            try:
                f.tflite_for(t)
                state = "verified" + signed
            except EdgehemaError:
                state = "REFUSED: sha256 differs from its manifest"
            rows.append([f"{folder.name}/{t.name}", f.name, f.version, "smear", "tflite-int8",
                         f"{t.stat().st_size:,}" if t.is_file() else "-", digest[:12], state])
    return rows


@app.command()
def info(bundle: Optional[str] = typer.Argument(None, help="Bundle directory or shipped name (default: the default model).")) -> None:
    """Print a bundle's manifest summary and parity report, after verifying every hash."""
    from edgehema.model.bundle import DEFAULT_BUNDLE, Bundle
    from edgehema.model.signing import TrustPolicy

    trust = TrustPolicy.from_environment()
    smear = _smear_folder(bundle)
    if smear is not None:
        return _smear_info(smear, trust)
    # Loaded without the signature check so that a refused bundle can still be described.
    b = Bundle.load(bundle, trust=TrustPolicy())
    s = b.settings
    default = " (the default model)" if bundle in (None, DEFAULT_BUNDLE) else ""
    out.print(f"{b.name}{default} {b.version} ({b.kind}, {s.target}) at {b.path}")
    out.print(f"  hashes: verified ({len(s.files)} file(s)), manifest sha256 {b.sha256}")
    refused = _print_signatures(b.path, b.sha256, trust)
    out.print(f"  profile {b.profile_name}: {', '.join(b.feature_names)}")
    out.print(f"  classes: {', '.join(b.classes)}; supervision: {s.supervision}")
    t = s.training or {}
    if t:
        out.print(f"  trained on {t.get('samples')} samples x {t.get('events_per_sample')} events of "
                  f"{', '.join(t.get('species', []))} ({t.get('seconds')} s, torch {t.get('torch')})")
    card = s.model_card
    if card:
        d = card["data"]
        species = ", ".join(f"{k} {v}" for k, v in d["species"].items())
        out.print(f"  model card: {d['files']} files of profile {d['profile']} ({d['with_reference']} with reference values, "
                  f"{d['unsupervised']} unsupervised; {species}); reference {card['reference']['file']} columns "
                  f"{', '.join(card['reference']['columns'].values())}; coincidences {', '.join(card['supervision']['coincidences'])}; "
                  f"edgehema {card['edgehema']}, seed {card['seed']}, {card.get('seconds')} s"
                  + (f"; fine-tuned from {card['init']['name']} {card['init']['sha256'][:12]}" if card.get("init") else ""))
        cv = card.get("crossval")
        if cv:
            parts = [f"{label} p95 {cv[k]['p95_abs']:.2f} {unit} (bias {cv[k]['bias']:+.2f})"
                     for k, label, unit in (("rbc_err_pct", "RBC", "%"), ("plt_err_pct", "PLT", "%"), ("retic_err_pt", "RET", "pt"))
                     if cv.get(k, {}).get("n")]
            r2 = f", R^2 PLT:RBC {cv['plt_rbc_r2']:.4f}" if cv.get("plt_rbc_r2") is not None else ""
            out.print(f"  cross-validation ({cv['folds']} folds, {cv['samples']} samples): {'; '.join(parts) or 'no values'}{r2}")
        if "flag_defects" in card:
            out.print("  flags: " + (f"DEFECT {', '.join(card['flag_defects'])}: fire on more than 5 % of the samples "
                                     "whose counts meet their reference" if card["flag_defects"] else
                                     "none fires on more than 5 % of the samples whose counts meet their reference"))
        checks = card.get("final_model_checks") or []
        if checks:
            kept = checks[-1]
            failed = [str(c["seed"]) for c in checks if not c["passed"]]
            limit = f" (limit {kept['limit']:.2f})" if kept.get("limit") is not None else ""
            out.print(f"  final model, seed {kept['seed']}, on its training samples: score "
                      f"{kept['score_on_training_samples']:.2f}{limit}"
                      + (f"; rejected before it: seed {', '.join(failed)}" if failed else ""))
    tfl = s.tflite
    if tfl:
        out.print(f"  TFLite model {tfl['file']} (batch {tfl['batch']}, {tfl['converter']}); float ONNX graph kept for --backend onnx")
    q = s.quantization
    if isinstance(q, dict):
        parts = [q.get("format") or q.get("tool", "")]
        parts += [f"{k.replace('_', ' ')} {q[k]}" for k in ("activations", "weights", "calibration", "calibration_events") if k in q]
        floats = q.get("float") or [f"heads {', '.join(q['float_heads'])}"] * bool(q.get("float_heads"))
        if floats:
            parts.append(f"float: {'; '.join(floats)}")
        out.print(f"  quantization: {', '.join(p for p in parts if p)}")
    elif isinstance(q, str):
        out.print(f"  quantization: {q}")
    if "selftest.npz" in s.files:
        out.print("  known answer: selftest.npz (checked on the engine at every start; edgehema selftest runs it)")
    else:
        out.print("  known answer: none (a bundle made before the self-test existed: its engine is not checked)")
    p = s.parity_summary
    if p:
        out.print(f"  parity vs float: label agreement {p['label_agreement']:.4%}, largest count delta "
                  f"{p['max_count_delta_pct']:.3f} %"
                  + (f" (mean {p['mean_count_delta_pct']:.3f} %; the float model itself under a 0.1 % gain step: largest "
                     f"{p['float_gain_step_max_count_delta_pct']:.3f} %)" if "mean_count_delta_pct" in p else "")
                  + f", retic delta {p['max_retic_delta_pt']:.3f} pt, size {p['size_ratio']:.0%}, "
                  f"speed {p['speedup_vs_float']:.2f}x; gate failures: {'; '.join(p['gate_failures']) or 'none'}")
    if refused is not None:
        raise refused


def _print_signatures(folder: Path, digest: str, trust):
    """The signatures a bundle carries and whether this device runs it; the refusal, if it would refuse it."""

    signatures = read_signatures(folder)
    out.print("  signatures: " + ("; ".join(f"key {s['key_id']}" + (f" ({s['signer']})" if s.get("signer") else "")
                                             + f" at {s.get('signed_at', '?')}" for s in signatures) or "none"))
    if not trust.enforced:
        out.print(f"  this device: {trust.describe()}")
        return None
    try:
        key = trust.check(folder, digest)
    except SignatureError as exc:
        out.print(f"  this device: REFUSES it ({trust.describe()})")
        return exc
    out.print(f"  this device: runs it (signed by trusted key {key.key_id}, {key.source})")
    return None


def _smear_folder(name: Optional[str]) -> Optional[Path]:
    """The smear model folder ``name`` names (a shipped name or a folder whose manifest says kind
    smear), or None for an event bundle."""
    from edgehema.smear.learned import MODELS

    if name is None:
        return None
    for folder in (Path(name), MODELS / name):
        if folder.is_dir() and (folder / "model.onnx").is_file() and folder_kind(folder) == "smear":
            return folder
    return None


def _classifier_info(f) -> None:
    """What ``info`` says of a per-cell classifier folder (edgehema.smear.cells)."""
    w, _ = f.input_size or (None, None)
    out.print(f"  classes: {', '.join(f.classes)}" + (f" (reported as: {', '.join(f'{k} -> {v}' for k, v in f.report_as.items())})"
                                                     if f.report_as else ""))
    out.print(f"  input: {w} x {w}, a crop {f.crop_rbc:g} red-cell diameters wide around each cell; unclassified below "
              f"probability {f.unsure_below:g}")
    out.print("  known answer: " + (f"class probabilities on {f.known_answer['input']} (checked at load)" if f.known_answer
                                    else "none"))
    for what, ev in (("int8 ONNX", f.evaluation.get("int8")), ("int8 TFLite", (f.tflite.evaluation if f.tflite else None))):
        if ev:
            out.print(f"  {what}: {f.evaluation.get('data', '?')} balanced accuracy {ev['balanced_accuracy']:.3f}, "
                      f"float's class on {ev.get('agreement_with_float', 0):.2%} of {ev.get('cells', '?')} cells")
    failed = (f.gates or {}).get("failed")
    out.print("  gates: " + ("passed" if not failed else "FAILED: " + "; ".join(failed)))


def _smear_info(folder: Path, trust) -> None:
    f = SmearFolder.load(folder)
    out.print(f"{f.name} {f.version} ({f.task.replace('_', ' ') + ' classifier' if f.task else 'smear detector'}) at {folder}")
    out.print(f"  hashes: verified (model.onnx sha256 {f.sha256[:12]}...), manifest sha256 {f.digest}")
    refused = _print_signatures(folder, f.digest, trust)
    if f.task:
        _classifier_info(f)
        if refused:
            raise typer.Exit(1)
        return
    w, h = f.input_size or (None, None)
    out.print(f"  classes: {', '.join(f.classes)}; input {w} x {h} {f.layout}, stride {f.stride}")
    q = f.quantization
    if q:
        out.print(f"  quantization: {q.get('format')}, activations {q.get('activations')}, weights {q.get('weights')}; "
                  f"float: {'; '.join(q.get('float', []))}")
    ka = f.known_answer
    out.print("  known answer: " + (f"heat-map peaks {ka['heatmap_max']} on {ka['input']} (checked at load)" if ka
                                    else "none (a model made before the known answer existed)"))
    where = f.evaluation.get("data", "BCCD val")
    if f.rbc_px is not None:
        out.print(f"  scale: images resampled so that red cells are {f.rbc_px:g} px across (given, a microscope "
                  f"profile, or estimated from each image: edgehema.smear.scale)")
    if f.count_thresholds:
        out.print("  counts peaks from: " + ", ".join(f"{k.upper()} {v:g}" for k, v in f.count_thresholds.items())
                  + " (chosen on the training split; an int8 form's matched there to the float model's counts)")
    ev = f.evaluation.get("int8")
    if ev:
        out.print(f"  {where}: mAP@0.5 {ev['map50']:.3f} ("
                  + ", ".join(f"{k.upper()} {v['ap50']:.3f}" for k, v in ev["classes"].items()) + ")")
    sr = f.stain_reference
    out.print("  stain reference: " + (f"{sr.get('source')}: CIELAB means {sr['mean']}, a*/b* tolerance {sr.get('tolerance')}, "
                                       f"colour spread at least {sr.get('spread_min')}" if sr
                                       else "none in the manifest: BCCD train's (the images are compared with, and normalised to, it)"))
    t = f.tflite
    if t:
        ev, p, tq, gates = t.evaluation or {}, t.parity or {}, t.quantization or {}, t.gates or {}
        out.print(f"  {t.file} (LiteRT; the default engine where LiteRT runs it, else model.onnx): {t.size_bytes or 0:,} bytes, "
                  f"activations {tq['activations']}, weights {tq['weights']}; {where} "
                  f"mAP@0.5 {ev.get('map50', float('nan')):.3f}; counts vs float "
                  + ", ".join(f"{k.upper()} {v:+.2f} %" for k, v in p.get("count_delta_pct", {}).items())
                  + f"; gates {'passed' if not gates.get('failed') else 'FAILED'}")
    if refused is not None:
        raise refused


@app.command()
def selftest(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Bundle directory or shipped name (default: the default model)."),
) -> None:
    """Run the bundle's known answer on every inference engine of this machine and measure the frame
    decoder: what start-up checks before counting (docs/device.md).

    Exit status 1 if an engine that loads here fails (an int8 ONNX graph counts as passing when
    its unfused form, which counting then uses, passes), or none passes.
    """
    from firmware_bridge.codec import decode_speed

    from edgehema.model.bundle import Bundle

    b = Bundle.load(model)
    passed = failed = 0
    last = None
    for engine in engine_order(b, "auto"):
        try:
            clf = Classifier(b, backend=engine, selftest=False)
        except BackendError as exc:
            out.print(f"engine {engine}: not available here ({exc})")
            continue
        result = check(clf)
        if result is None:
            raise EdgehemaError(f"{b.path}: the bundle carries no known answer (selftest.npz): it was made before "
                                f"the self-test existed; export or train it again")
        out.print(f"{b.name}: {result.line()}")
        if not result.passed and clf.can_run_unfused():
            # What counting does next: the same graph without the fused int8 kernels.
            result = clf.run_unfused()
            out.print(f"{b.name}: unfused graph: {result.line()}")
        passed += result.passed
        failed += not result.passed
        last, last_graph = clf, result.graph
    name, speed = decode_speed(0.5)
    out.print(f"frame decoder: {name}, {speed:,.0f} MB/s (a 3 Mbaud link carries 0.375 MB/s)")
    if last is not None:
        why = last.check_kernels(last_graph)
        if why:
            out.print(f"latent-space assignment: {why}: numpy assigns instead")
    out.print(f"latent-space assignment: {kernels_state()}")
    out.print(f"CSV reader: {csv_reader_state()}")
    if failed or not passed:
        raise typer.Exit(1)


@app.command()
def profiles() -> None:
    """List the instrument profiles shipped with edgehema and their features."""

    for prof in builtin_profiles().values():
        out.print(f"{prof.name}{' (default)' if prof.default else ''}: {prof.description}")
        # Every column as wide as its widest cell, so that the descriptions line up.
        rows = [(f.name, f.unit, f"[{f.range[0]:g}, {f.range[1]:g}]", f.description) for f in prof.features]
        widths = [max(len(r[k]) for r in rows) for k in range(3)]
        for r in rows:
            out.print("  " + "  ".join(r[k].ljust(widths[k]) for k in range(3)) + "  " + r[3])
