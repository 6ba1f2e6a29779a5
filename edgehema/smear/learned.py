"""The learned smear detector on the device: a small CenterNet-style network (``export/training/smear_detector.py``)
run by onnxruntime, int8 by default.

The network sees the field at 320 x 240 (BCCD's 640 x 480 halved) and gives, at stride 4, a heat
map per class (RBC, WBC, platelets), the box size and the sub-pixel offset of each centre. A cell is
a peak of its class's heat map (the maximum of its 3 x 3 neighbourhood) above ``THRESHOLD``.
"""

from __future__ import annotations

from functools import lru_cache, partial
from pathlib import Path

import numpy as np

from edgehema.exceptions import BundleError
from edgehema.smear.detections import SMEAR_CLASSES, Detection, iou
from edgehema.model.bundle import MANIFEST, SMEAR_GRAPH, SmearFolder, smear_stain_reference
from edgehema.model.signing import TrustPolicy

INPUT = (320, 240)  # width, height
STRIDE = 4
#: Peaks below this are not reported (AP is computed over every reported detection).
THRESHOLD = 0.05
#: Peaks counted as cells, per class: chosen on BCCD train for the smallest mean count error
#: (docs/smear.md); the evaluation on val never saw them chosen.
COUNT_THRESHOLDS = {"rbc": 0.45, "wbc": 0.7, "plt": 0.5}
#: Boxes of one class overlapping this much are one cell (after the heat map's own 3 x 3 peak test).
NMS_IOU = 0.5
#: Shipped smear models (apart from the event bundles of edgehema/model/shipped: the bundle contract's
#: ``kind`` field, which would let them share a folder, is not there yet).
MODELS = Path(__file__).resolve().parent / "models"
DEFAULT_MODEL = "txl-pbc-int8"
#: The detector before the scale stage (BCCD's boxes, BCCD's scale): kept for comparison
#: (``evaluate-smear --engine model:edgehema/smear/models/bccd-int8``).
PREVIOUS_MODEL = "bccd-int8"


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


def smear_manifest_digest(directory: Path) -> str:
    """A smear model folder's identity (what a signature covers): the sha256 of its manifest file,
    after checking that the model file has the sha256 the manifest gives."""
    return SmearFolder.load(directory).digest


@lru_cache(maxsize=4)
def session(model: str = DEFAULT_MODEL):
    """An engine for a smear model: a shipped one (by name), a model folder (model.onnx and
    manifest.json), a bare ONNX file, or a folder's ``model.tflite`` (run by LiteRT; named by its
    path, or ``NAME/model.tflite`` for a shipped one). A folder's model file must have the sha256
    its manifest gives; on a device with trusted keys the folder must be signed and a bare file is
    refused (edgehema.model.signing). Every engine answers ``run`` like an onnxruntime session."""
    import onnxruntime as ort

    path = Path(model)
    tflite = path.suffix == ".tflite"
    if tflite and not path.is_file() and (MODELS / path).is_file():
        path = MODELS / path
    trust = TrustPolicy.from_environment()
    answer = None
    if path.is_file() and not tflite:
        if trust.enforced:
            raise BundleError(f"{path}: a bare smear model file is refused: this device runs only signed model folders "
                              f"({trust.describe()})")
        if path.name == SMEAR_GRAPH and (path.parent / MANIFEST).is_file():
            answer = SmearFolder.load(path.parent).known_answer
    else:
        folder_path = path.parent if tflite else path if path.is_dir() else MODELS / model
        if not (folder_path / SMEAR_GRAPH).is_file():
            shipped = ", ".join(sorted(p.name for p in MODELS.iterdir() if p.is_dir())) if MODELS.is_dir() else "none"
            raise BundleError(f"{model}: no smear model of that name, folder or file (shipped: {shipped})")
        folder = SmearFolder.load(folder_path)
        if trust.enforced:
            trust.check(folder.path, folder.digest)
        if tflite:
            return _tflite_session(path, folder)
        path, answer = folder.path / SMEAR_GRAPH, folder.known_answer
    return verified_session(path, None if answer is None else partial(check_known_answer, want=answer), str(model))


def verified_session(path: Path, check, note_key: str):
    """onnxruntime on ``path``, fully optimised, where ``check(session)`` (its known answer; None:
    none recorded) passes; else the same graph unfused, with a note in ENGINE_NOTES[note_key]: the
    fused int8 kernels of some CPUs disagree with the model's arithmetic (x86 without VNNI
    saturates u8 x s8 products), the unfused graph is exact. A model failing both is refused."""
    import onnxruntime as ort

    sess = open_session(ort, path, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    problem = check(sess) if check is not None else None
    if not problem:
        return sess
    basic = open_session(ort, path, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC)
    again = check(basic)
    if again:
        raise BundleError(f"{path}: the model fails its known answer on this machine ({again})")
    ENGINE_NOTES[note_key] = (f"{path.parent.name}: fused int8 kernels failed the known answer ({problem}); "
                              "running the graph unfused (exact, slower)")
    return basic


def _tflite_session(path: Path, folder: SmearFolder):
    """LiteRT on a folder's TFLite model, which its manifest must describe (sha256, outputs, known answer)."""
    from edgehema.smear.litert import SmearInterpreter

    member = folder.tflite_for(path)
    interpreter = SmearInterpreter(path, member.outputs)
    if member.known_answer:
        problem = check_known_answer(interpreter, member.known_answer)
        if problem:
            raise BundleError(f"{path}: the model fails its known answer on this machine ({problem})")
    return interpreter


def stain_reference(model: str = DEFAULT_MODEL):
    """The stain a smear model was trained on (its manifest's ``stain_reference``), or None where
    the model names no folder or its manifest has none."""
    from edgehema.smear.stain import StainReference

    path = Path(model)
    if path.suffix == ".tflite" and not path.is_file():
        path = MODELS / path
    folder = path.parent if path.is_file() else path if path.is_dir() else MODELS / model
    found = smear_stain_reference(folder)
    try:
        return StainReference.from_dict(found) if found else None
    except (ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{folder / MANIFEST}: stain_reference is not a stain reference ({exc})") from None


#: Why a smear model runs other than fully optimised on this machine (model -> one line).
ENGINE_NOTES: dict[str, str] = {}


def open_session(ort, path: Path, level):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # one core per image, as the device runs it
    opts.graph_optimization_level = level
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime's errors are many types; the file is at fault
        raise BundleError(f"{path}: not a smear model onnxruntime can run: {str(exc).splitlines()[0][:200]}") from None


def known_answer_field() -> np.ndarray:
    """A fixed synthetic smear field (BGR, 240 x 320): pale background, pink discs of red cells, two
    dark-violet white cells, small platelets. Drawn from fixed numbers (no random generator), so it
    is the same image on every machine and numpy version."""
    import cv2

    img = np.full((INPUT[1], INPUT[0], 3), (205, 200, 215), np.uint8)
    for i in range(42):
        cx, cy = 18 + (i * 53) % 290, 16 + (i * 37) % 210
        r = 13 + (i * 7) % 6
        cv2.circle(img, (cx, cy), r, (150, 140, 210), -1, cv2.LINE_AA)
        cv2.circle(img, (cx, cy), r // 2, (175, 165, 220), -1, cv2.LINE_AA)
    for cx, cy in ((80, 60), (230, 170)):
        cv2.circle(img, (cx, cy), 24, (190, 120, 150), -1, cv2.LINE_AA)
        cv2.circle(img, (cx - 5, cy), 13, (140, 40, 90), -1, cv2.LINE_AA)
        cv2.circle(img, (cx + 8, cy + 6), 9, (140, 40, 90), -1, cv2.LINE_AA)
    for cx, cy in ((150, 30), (40, 200), (290, 100), (160, 220)):
        cv2.circle(img, (cx, cy), 4, (150, 60, 120), -1, cv2.LINE_AA)
    return img


def known_answer(sess) -> dict:
    """What a model answers on :func:`known_answer_field`: each class's heat-map maximum and sum."""
    hm = sess.run(None, {sess.get_inputs()[0].name: preprocess(known_answer_field())})[0][0]
    return {"input": "known_answer_field/1", "heatmap_max": [round(float(v), 5) for v in hm.max(axis=(1, 2))],
            "heatmap_sum": [round(float(v), 3) for v in hm.sum(axis=(1, 2))]}


#: Agreement asked of an engine with the recorded answer: a heat-map peak is a score, and a count
#: turns on scores near 0.5; the saturation this guards against moved peaks from 0.85 to 0.16.
KNOWN_ANSWER_TOLERANCE = {"heatmap_max": 0.02, "heatmap_sum_rel": 0.02}


def check_known_answer(sess, want: dict) -> str | None:
    got = known_answer(sess)
    for k, (g, w) in enumerate(zip(got["heatmap_max"], want["heatmap_max"])):
        if abs(g - w) > KNOWN_ANSWER_TOLERANCE["heatmap_max"]:
            return f"{SMEAR_CLASSES[k]} heat-map peak {g:.3f}, recorded {w:.3f}"
    for k, (g, w) in enumerate(zip(got["heatmap_sum"], want["heatmap_sum"])):
        if abs(g - w) > KNOWN_ANSWER_TOLERANCE["heatmap_sum_rel"] * max(abs(w), 1.0):
            return f"{SMEAR_CLASSES[k]} heat-map sum {g:.2f}, recorded {w:.2f}"
    return None


@lru_cache(maxsize=1)
def default_model() -> str:
    """What the default engine (``model``) runs: the shipped detector as int8 TFLite on LiteRT, which
    meets the release gates (total counts within 1 % of the float model on BCCD val; the int8 ONNX
    does not: docs/smear.md), else, where LiteRT cannot run it here, as int8 ONNX on onnxruntime,
    with a note saying why (``ENGINE_NOTES["model"]``)."""
    tflite = f"{DEFAULT_MODEL}/model.tflite"
    if (MODELS / tflite).is_file():
        try:
            session(tflite)
            return tflite
        except BundleError as exc:
            ENGINE_NOTES["model"] = f"{DEFAULT_MODEL}: int8 TFLite not run here ({exc}); running the int8 ONNX on onnxruntime"
    return DEFAULT_MODEL


def engine_model(engine: str) -> str | None:
    """The model a smear engine name runs (what ``session`` takes), or None for ``baseline``:
    ``model`` the default choice here, ``model-tflite`` / ``model-onnx`` the shipped detector's
    TFLite / ONNX file, ``model:PATH`` that folder or file."""
    if engine == "baseline":
        return None
    if engine == "model":
        return default_model()
    if engine == "model-tflite":
        return f"{DEFAULT_MODEL}/model.tflite"
    if engine == "model-onnx":
        return DEFAULT_MODEL
    if engine.startswith("model:"):
        return engine[len("model:"):]
    raise ValueError(f"unknown smear engine {engine!r} (model, model-tflite, model-onnx, baseline, model:PATH)")


def detect(image: np.ndarray, model: str | None = None) -> list[Detection]:
    sess = session(model or default_model())
    hm, wh, off = sess.run(None, {sess.get_inputs()[0].name: preprocess(image)})
    h, w = image.shape[:2]
    return decode(hm[0], wh[0], off[0], w / INPUT[0], h / INPUT[1])


@lru_cache(maxsize=8)
def model_rbc_px(model: str) -> float | None:
    """The red-cell size (pixels) a smear model sees cells at: its folder's ``scale.rbc_px``, or for
    a bare ONNX file the ``model_rbc_px`` of the training card beside it; None for a detector made
    before the scale stage (it is run on the field as it comes)."""
    folder, card = _described_by(model)
    if folder is not None:
        return folder.rbc_px
    return float(card["model_rbc_px"]) if isinstance(card.get("model_rbc_px"), (int, float)) else None


@lru_cache(maxsize=8)
def count_thresholds(model: str) -> dict[str, float]:
    """Per class, the score from which a smear model's peak counts as a cell. The float model's are
    chosen on the training split (its card's ``count_thresholds``); quantization moves scores (the
    int8 forms' platelet peaks sit lower), so each int8 form has its own, set on the training split
    to count what the float model counts there: a folder's int8 ONNX its ``count_thresholds``, its
    TFLite form the ``tflite`` member's. A bare file: its card's; else COUNT_THRESHOLDS (BCCD's)."""
    folder, card = _described_by(model)
    if folder is None:
        own = card.get("count_thresholds")
    elif Path(model).suffix == ".tflite" and folder.tflite is not None and folder.tflite.count_thresholds:
        own = folder.tflite.count_thresholds
    elif Path(model).name == "model-float.onnx" and isinstance(folder.training.get("count_thresholds"), dict):
        own = folder.training["count_thresholds"]
    else:
        own = folder.count_thresholds
    return {**COUNT_THRESHOLDS, **(own or {})}


def _described_by(model: str) -> tuple[SmearFolder | None, dict]:
    """The folder a smear model is in (None for a bare file) and, for a bare file, the training card
    beside it ({} where there is none)."""
    import json

    path = Path(model)
    if path.suffix == ".tflite" and not path.is_file():
        path = MODELS / path
    if path.is_file():
        # A file of a model folder (its int8 graph, TFLite form or float source) is described by
        # the folder's manifest; a folder still being written (no model.onnx yet) by its card.
        if (path.parent / SMEAR_GRAPH).is_file() and (path.parent / MANIFEST).is_file():
            return SmearFolder.load(path.parent), {}
        card = path.parent / "training.json"
        try:
            found = json.loads(card.read_text()) if card.is_file() else {}
        except ValueError:
            found = {}
        return None, found if isinstance(found, dict) else {}
    folder = path if path.is_dir() else MODELS / model
    return (SmearFolder.load(folder), {}) if (folder / MANIFEST).is_file() else (None, {})


def padded(image: np.ndarray, size: tuple[int, int] = INPUT) -> np.ndarray:
    """``image`` at the top left of a canvas at least ``size`` (width, height), filled with the
    image's background colour (the detector sees no black border it never saw in training)."""
    h, w = image.shape[:2]
    if w >= size[0] and h >= size[1]:
        return image
    canvas = np.empty((max(h, size[1]), max(w, size[0]), 3), np.uint8)
    canvas[:] = background(image)
    canvas[:h, :w] = image
    return canvas


def detect_at_scale(tile: np.ndarray, model: str) -> list[Detection]:
    """Detections of a detector that works at its own scale on a tile already at that scale (at most
    INPUT): the tile is padded with its background colour, never stretched."""
    sess = session(model)
    tile = tile[:INPUT[1], :INPUT[0]]
    h, w = tile.shape[:2]
    tile = padded(tile)
    hm, wh, off = sess.run(None, {sess.get_inputs()[0].name: preprocess(tile)})
    return [d for d in decode(hm[0], wh[0], off[0], 1.0, 1.0) if d.centre[0] < w and d.centre[1] < h]


def background(image: np.ndarray) -> np.ndarray:
    """A field's background colour: the median of its brightest quarter (the slide between cells).
    The training crops are padded with the same (export.training.smear_detector)."""
    grey = image.mean(axis=2)
    return np.median(image[grey >= np.percentile(grey, 75)], axis=0).astype(np.uint8)


def forget() -> None:
    """Drop what was read of smear model files (after a workstation rewrote a folder)."""
    for cached in (session, model_rbc_px, count_thresholds, default_model):
        cached.cache_clear()
