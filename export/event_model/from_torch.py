"""A data scientist's own PyTorch model into a float bundle (then into device bundles).

Input: a TorchScript file (``torch.jit.save``) or a pickled ``nn.Module`` (``torch.save``), plus a
manifest template: the bundle manifest (docs/bundle.md) without ``files`` and ``integrity``. The
module takes the preprocessed events ``x`` (events x features) and returns the outputs the
template's ``model.outputs`` names, in that order.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from edgehema.exceptions import BundleError
from edgehema.model.bundle import MANIFEST, Bundle, amend, parse_settings, read_manifest, seal

from export.common import ExportError


def bundle_from_torch(model_path: Path, manifest_path: Path, out: Path) -> Bundle:
    try:
        import torch
    except ImportError:
        raise ExportError("a PyTorch model needs torch: pip install 'edgehema[export]'") from None
    try:
        template = amend(read_manifest(Path(manifest_path)), model={"file": "model.onnx"}, files={"model.onnx": ""})
        settings = parse_settings(Path(manifest_path), template)
    except BundleError as exc:
        raise ExportError(str(exc)) from None
    try:
        try:
            module = torch.jit.load(str(model_path), map_location="cpu")
        except RuntimeError:
            module = torch.load(str(model_path), map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many kinds for a file that is not a model
        raise ExportError(f"{model_path}: not a TorchScript file or a saved nn.Module: {str(exc).splitlines()[0][:160]}") from None
    if not isinstance(module, torch.nn.Module):
        raise ExportError(f"{model_path}: holds a {type(module).__name__}, not a PyTorch module")
    module.eval()
    outputs = list(settings.graph_outputs)
    n_features = len(template.get("features", []))
    if not outputs or not n_features:
        raise ExportError(f"{manifest_path}: the template needs features and model.outputs")
    out.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(8, n_features)
    try:
        with torch.no_grad():
            got = module(example)
        got = got if isinstance(got, (tuple, list)) else (got,)
        if len(got) != len(outputs):
            raise ExportError(f"{model_path}: the module returns {len(got)} output(s), the template names {len(outputs)}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (example,), str(out / "model.onnx"), input_names=[settings.graph_input],
                              output_names=outputs, opset_version=17, dynamo=False,
                              dynamic_axes={settings.graph_input: {0: "events"},
                                            **{o: {0: "events"} for o in outputs}})
    except ExportError:
        raise
    except Exception as exc:  # the exporter raises many kinds
        raise ExportError(f"{model_path}: ONNX export failed: {str(exc).splitlines()[0][:200]}") from None
    (out / MANIFEST).write_text(json.dumps(seal(template, out), indent=1) + "\n", encoding="utf-8")
    return Bundle.load(out)


def float_source(source: str | None, manifest: Path | None, workdir: Path) -> str | None:
    """The float bundle to export from: as given, or made from a PyTorch file with its template."""
    if source and Path(source).suffix in (".pt", ".pth", ".ts", ".torchscript"):
        if manifest is None:
            raise ExportError(f"{source}: a PyTorch model needs --manifest TEMPLATE.json (docs/bundle.md)")
        return str(bundle_from_torch(Path(source), manifest, workdir / "float").path)
    return source

