"""Give the shipped bundles their known answer (``selftest.npz``) and re-seal their manifests.

The events are simulated (``edgehema.model.selftest.known_answer_events``); the answer is the class the
*float* reference gives each event on onnxruntime without adaptation. Bundles exported or trained
from now on get theirs from ``export`` and the training recipe; this script did it once for the
bundles that were shipped before the self-test existed, and can be run again after retraining:

    python tools/add_known_answers.py [edgehema/model/shipped]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgehema.model.bundle import MANIFEST, Bundle, seal  # noqa: E402
from edgehema.model.classifier import Classifier  # noqa: E402
from edgehema.model.selftest import attach_known_answer, check, simulated_known_answer  # noqa: E402

#: bundle -> the float bundle whose answers it must reproduce
FLOAT_SOURCE = {"reference": "reference", "reference-int8": "reference", "reference-tflite-int8": "reference",
                "supervised-mlp": "supervised-mlp"}


def main(root: Path) -> None:
    for name, source in FLOAT_SOURCE.items():
        folder = root / name
        float_model = Classifier(Bundle.load(root / source), backend="onnx", adapt=False, selftest=False)
        manifest = json.loads((folder / MANIFEST).read_text())
        manifest = seal(attach_known_answer(manifest, folder, *simulated_known_answer(float_model)), folder)
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        for engine in ("onnx", "tflite"):
            try:
                result = check(Classifier(Bundle.load(folder), backend=engine, selftest=False))
            except Exception as exc:  # noqa: BLE001 - an engine this bundle has no model for
                print(f"{name}: {engine}: {exc}")
                continue
            print(f"{name}: {result.line()}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "edgehema" / "model" / "shipped")
