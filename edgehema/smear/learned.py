"""The learned smear detector on the device: a small CenterNet-style network (``export/smear_train.py``)
run by onnxruntime, int8 by default.

The network sees the field at 320 x 240 (BCCD's 640 x 480 halved) and gives, at stride 4, a heat
map per class (RBC, WBC, platelets), the box size and the sub-pixel offset of each centre. A cell is
a peak of its class's heat map (the maximum of its 3 x 3 neighbourhood) above ``THRESHOLD``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from ..exceptions import BundleError
from .detections import SMEAR_CLASSES, Detection, iou

INPUT = (320, 240)  # width, height
STRIDE = 4
#: Peaks below this are not reported (AP is computed over every reported detection).
THRESHOLD = 0.05
#: Peaks counted as cells, per class: chosen on BCCD train for the smallest mean count error
#: (docs/smear.md); the evaluation on val never saw them chosen.
COUNT_THRESHOLDS = {"rbc": 0.45, "wbc": 0.7, "plt": 0.5}
#: Boxes of one class overlapping this much are one cell (after the heat map's own 3 x 3 peak test).
NMS_IOU = 0.5
#: Shipped smear models (apart from the event bundles of edgehema/models: the bundle contract's
#: ``kind`` field, which would let them share a folder, is not there yet).
MODELS = Path(__file__).resolve().parent / "models"
DEFAULT_MODEL = "bccd-int8"


def preprocess(image: np.ndarray) -> np.ndarray:
    """BGR uint8 field -> the network's input (1, 3, 240, 320) float32 RGB in [0, 1]."""
    import cv2

    if image.shape[:2] != (INPUT[1], INPUT[0]):
        image = cv2.resize(image, INPUT, interpolation=cv2.INTER_AREA)
    x = image[:, :, ::-1].astype(np.float32) * (1.0 / 255.0)
    return np.ascontiguousarray(x.transpose(2, 0, 1))[None]


def decode(hm: np.ndarray, wh: np.ndarray, off: np.ndarray, scale_x: float, scale_y: float,
           threshold: float = THRESHOLD, top_k: int = 300) -> list[Detection]:
    """Detections in image pixels from one image's outputs (shapes (C,H,W), (2,H,W), (2,H,W))."""
    from numpy.lib.stride_tricks import sliding_window_view

    padded = np.pad(hm, ((0, 0), (1, 1), (1, 1)), constant_values=0)
    local_max = sliding_window_view(padded, (3, 3), axis=(1, 2)).max(axis=(3, 4))
    ks, ys, xs = np.nonzero((hm == local_max) & (hm >= threshold))
    scores = hm[ks, ys, xs]
    out: list[Detection] = []
    for i in np.argsort(-scores)[:top_k]:
        k, y, x = ks[i], ys[i], xs[i]
        cx = (x + off[0, y, x]) * STRIDE * scale_x
        cy = (y + off[1, y, x]) * STRIDE * scale_y
        bw, bh = max(wh[0, y, x], 0.5) * STRIDE * scale_x, max(wh[1, y, x], 0.5) * STRIDE * scale_y
        d = Detection(SMEAR_CLASSES[int(k)], float(cx - bw / 2), float(cy - bh / 2), float(cx + bw / 2),
                      float(cy + bh / 2), float(scores[i]))
        # A large cell (a lobed white cell) can have two peaks farther apart than the 3 x 3 window:
        # a box mostly inside a stronger one of its class is the same cell.
        if not any(o.kind == d.kind and iou(o, d) >= NMS_IOU for o in out):
            out.append(d)
    return out


@lru_cache(maxsize=4)
def session(model: str = DEFAULT_MODEL):
    """An onnxruntime session of a shipped smear model (by name) or a model file, one per process.
    A shipped model's file must have the sha256 its manifest gives."""
    import hashlib
    import json

    import onnxruntime as ort

    path = Path(model)
    if not path.is_file():
        path = MODELS / model / "model.onnx"
        if not path.is_file():
            shipped = ", ".join(sorted(p.name for p in MODELS.iterdir() if p.is_dir())) if MODELS.is_dir() else "none"
            raise BundleError(f"{model}: no smear model of that name or file (shipped: {shipped})")
        manifest = json.loads((path.parent / "manifest.json").read_text())
        if hashlib.sha256(path.read_bytes()).hexdigest() != manifest.get("sha256"):
            raise BundleError(f"{path}: sha256 differs from its manifest: the model file is damaged or replaced")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # one core per image, as the device runs it
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime's errors are many types; the file is at fault
        raise BundleError(f"{path}: not a smear model onnxruntime can run: {str(exc).splitlines()[0][:200]}") from None


def detect(image: np.ndarray, model: str = DEFAULT_MODEL) -> list[Detection]:
    sess = session(model)
    hm, wh, off = sess.run(None, {sess.get_inputs()[0].name: preprocess(image)})
    h, w = image.shape[:2]
    return decode(hm[0], wh[0], off[0], w / INPUT[0], h / INPUT[1])
