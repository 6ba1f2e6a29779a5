"""Per-cell classifiers on the device: the type of each white cell (``wbc_type``), and in the same
shape the shape of each red cell. A classifier is a smear model folder like the detector's
(manifest with sha256, known answer, optional signature and TFLite member) whose ``task`` names
what it tells, run by onnxruntime or LiteRT on one core.

Every cell is seen at one physical scale whatever the microscope: a square ``crop.rbc_diameters``
red-cell diameters wide around the detection's centre (the field's scale from
edgehema.smear.scale), padded with the slide's colour where the field ends, resized to the
network's input. A cell whose most likely class is below the manifest's ``unsure_below`` is
``unclassified``: never forced into a type.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np

from edgehema.exceptions import BundleError
from edgehema.model.bundle import SMEAR_GRAPH, SmearFolder
from edgehema.model.signing import TrustPolicy
from edgehema.smear.detections import Detection

#: The network's input side (pixels) and the crop's side in red-cell diameters, as trained.
CELL_INPUT = 80
CROP_RBC = 3.2
#: The type reported where the classifier is unsure.
UNCLASSIFIED = "unclassified"
#: What each task classifies: the detection class it runs on and the result keys it fills.
TASKS = {"wbc_type": "wbc", "rbc_morphology": "rbc"}
#: Shipped classifiers by task (edgehema/smear/models/).
DEFAULT_CLASSIFIERS = {"wbc_type": "wbc-pbc-int8", "rbc_morphology": "rbc-chula-int8"}
#: Agreement asked of an engine with the recorded answer (class probabilities).
KNOWN_ANSWER_TOLERANCE = 0.03


def crop(image: np.ndarray, centre: tuple[float, float], px_per_rbc: float, fill: np.ndarray,
         diameters: float = CROP_RBC, size: int = CELL_INPUT) -> np.ndarray:
    """The ``size`` x ``size`` BGR crop a classifier sees of the cell at ``centre``: ``diameters``
    red cells wide, ``fill`` (the slide's colour) where it passes the image's edge."""
    import cv2

    h, w = image.shape[:2]
    side = max(2, int(round(diameters * px_per_rbc)))
    x0, y0 = int(round(centre[0] - side / 2)), int(round(centre[1] - side / 2))
    part = image[max(0, y0):min(h, y0 + side), max(0, x0):min(w, x0 + side)]
    if part.shape[:2] != (side, side):
        canvas = np.empty((side, side, 3), np.uint8)
        canvas[:] = fill
        if part.size:
            canvas[max(0, -y0):max(0, -y0) + part.shape[0], max(0, -x0):max(0, -x0) + part.shape[1]] = part
        part = canvas
    return cv2.resize(part, (size, size), interpolation=cv2.INTER_AREA if side > size else cv2.INTER_LINEAR)


def to_input(crops: np.ndarray) -> np.ndarray:
    """(N, S, S, 3) BGR uint8 -> (N, 3, S, S) float32 RGB in [0, 1], as trained."""
    return np.ascontiguousarray(crops[..., ::-1].astype(np.float32).transpose(0, 3, 1, 2) * (1.0 / 255.0))


def views_of(x: np.ndarray, views: int) -> list[np.ndarray]:
    """The first ``views`` of a batch of NCHW crops: as it is, mirrored, turned a quarter either way,
    flipped upside down, turned half, and the two transposes (a cell has no up)."""
    ops = (lambda a: a, lambda a: a[..., ::-1], lambda a: np.rot90(a, 1, (2, 3)), lambda a: np.rot90(a, 3, (2, 3)),
           lambda a: a[..., ::-1, :], lambda a: np.rot90(a, 2, (2, 3)), lambda a: np.swapaxes(a, 2, 3),
           lambda a: np.rot90(np.swapaxes(a, 2, 3), 2, (2, 3)))
    return [np.ascontiguousarray(op(x)) for op in ops[:views]]


def run_views(engine, x: np.ndarray, views: int = 1) -> np.ndarray:
    """Probabilities of NCHW crops ``x``, one cell at a time (the graphs take a batch of one),
    averaged over ``views`` views of each."""
    name = engine.get_inputs()[0].name
    if not len(x):
        return np.zeros((0, 0), np.float32)
    return np.mean([np.concatenate([engine.run(None, {name: v[i:i + 1]})[0] for i in range(len(v))])
                    for v in views_of(x, views)], axis=0)


#: The drawn cell each task's known answer is recorded on (a white cell for the white-cell types, a
#: red cell for the shapes: an input like its own keeps int8 and float comparable there).
KNOWN_ANSWER_INPUT = {"wbc_type": "known_answer_cell/1", "rbc_morphology": "known_answer_red_cell/1"}


def known_answer_cell(size: int = CELL_INPUT, drawing: str = "known_answer_cell/1") -> np.ndarray:
    """A fixed synthetic cell (BGR), drawn from fixed numbers. ``known_answer_cell/1``: pale slide,
    pink red cells at the corners, one lobed dark-violet nucleus in a lilac cytoplasm at the centre.
    ``known_answer_red_cell/1``: a pink red cell with a paler centre filling most of the crop, its
    neighbours' edges at the corners."""
    import cv2

    img = np.full((size, size, 3), (205, 200, 215), np.uint8)
    if drawing == "known_answer_red_cell/1":
        c, r = size // 2, int(round(size * 0.31))
        for cx, cy in ((0, 0), (size, 2), (2, size), (size, size)):
            cv2.circle(img, (cx, cy), r, (150, 140, 210), -1, cv2.LINE_AA)
        cv2.circle(img, (c, c), r, (150, 140, 210), -1, cv2.LINE_AA)
        cv2.circle(img, (c + 1, c - 1), r // 3, (185, 178, 225), -1, cv2.LINE_AA)
        return img
    if drawing != "known_answer_cell/1":
        raise BundleError(f"known answer input {drawing!r}: not a drawing this version knows")
    for cx, cy in ((8, 8), (72, 10), (10, 70), (70, 72)):
        cv2.circle(img, (cx, cy), 12, (150, 140, 210), -1, cv2.LINE_AA)
    cv2.circle(img, (40, 40), 22, (200, 150, 175), -1, cv2.LINE_AA)
    for cx, cy, r in ((32, 36, 8), (44, 32, 7), (46, 46, 8)):
        cv2.circle(img, (cx, cy), r, (140, 40, 90), -1, cv2.LINE_AA)
    return img


@dataclass
class CellClassifier:
    """One opened classifier: ``classify`` takes crops, gives probabilities per class."""

    folder: SmearFolder
    engine: object  # answers ``run`` like an onnxruntime session
    file: str  # the model file that runs, e.g. ``wbc-pbc-int8/model.tflite``

    @property
    def task(self) -> str:
        return self.folder.task

    @property
    def classes(self) -> tuple[str, ...]:
        return self.folder.classes

    def probabilities(self, crops: np.ndarray) -> np.ndarray:
        if not len(crops):
            return np.zeros((0, len(self.classes)), np.float32)
        return run_views(self.engine, to_input(crops), self.folder.views)

    def label(self, p: np.ndarray) -> tuple[str, float]:
        """(reported class, its probability) for one cell's probabilities."""
        k = int(np.argmax(p))
        name = self.folder.report_as.get(self.classes[k], self.classes[k])
        if float(p[k]) < self.folder.unsure_below:
            name = UNCLASSIFIED
        return name, float(p[k])

    def crop_diameters(self) -> float:
        return self.folder.crop_rbc or CROP_RBC

    def annotate(self, image: np.ndarray, found: list[Detection], px_per_rbc: float,
                 min_score: float) -> list[Detection]:
        """``found`` with the type of each cell of this classifier's kind scored ``min_score`` or
        more (in ``image``'s pixels, whose red cells are ``px_per_rbc`` across)."""
        from edgehema.smear.learned import background

        kind = TASKS[self.task]
        picked = [i for i, d in enumerate(found) if d.kind == kind and d.score >= min_score]
        if not picked:
            return found
        fill = background(image)
        size = self.folder.input_size[0] if self.folder.input_size else CELL_INPUT
        crops = np.stack([crop(image, found[i].centre, px_per_rbc, fill, self.crop_diameters(), size) for i in picked])
        out = list(found)
        for i, p in zip(picked, self.probabilities(crops)):
            name, prob = self.label(p)
            out[i] = replace(out[i], cell_type=name, cell_type_p=round(prob, 4))
        return out


def known_answer(engine, size: int = CELL_INPUT, drawing: str = "known_answer_cell/1") -> dict:
    p = engine.run(None, {engine.get_inputs()[0].name: to_input(known_answer_cell(size, drawing)[None])})[0][0]
    return {"input": drawing, "probabilities": [round(float(v), 5) for v in p]}


def check_known_answer(engine, want: dict, size: int = CELL_INPUT) -> str | None:
    got = known_answer(engine, size, want.get("input", "known_answer_cell/1"))["probabilities"]
    for k, (g, w) in enumerate(zip(got, want["probabilities"])):
        if abs(g - w) > KNOWN_ANSWER_TOLERANCE:
            return f"class {k} probability {g:.3f}, recorded {w:.3f}"
    return None


def _folder_of(model: str) -> tuple[Path, bool]:
    from edgehema.smear.learned import MODELS

    path = Path(model)
    tflite = path.suffix == ".tflite"
    if tflite and not path.is_file() and (MODELS / path).is_file():
        path = MODELS / path
    folder = path.parent if tflite else path if path.is_dir() else MODELS / model
    if not (folder / SMEAR_GRAPH).is_file():
        raise BundleError(f"{model}: no cell classifier folder of that name or path")
    return (path if tflite else folder), tflite


@lru_cache(maxsize=8)
def open_classifier(model: str, task: str) -> CellClassifier:
    """A classifier for ``task`` from a shipped name, a folder, or a folder's ``model.tflite``: its
    sha256 checked, its signature where the device enforces signed models, its known answer."""
    from edgehema.smear import learned
    from edgehema.smear.litert import SmearInterpreter

    path, tflite = _folder_of(model)
    folder = SmearFolder.load(path.parent if tflite else path)
    if folder.task != task:
        raise BundleError(f"{folder.path}: a {folder.task or 'detector'} model, not a {task} classifier")
    trust = TrustPolicy.from_environment()
    if trust.enforced:
        trust.check(folder.path, folder.digest)
    size = folder.input_size[0] if folder.input_size else CELL_INPUT
    if tflite:
        member = folder.tflite_for(path)
        engine = SmearInterpreter(path, member.outputs, order=("probabilities",))
        if member.known_answer:
            problem = check_known_answer(engine, member.known_answer, size)
            if problem:
                raise BundleError(f"{path}: the classifier fails its known answer on this machine ({problem})")
        return CellClassifier(folder, engine, f"{folder.path.name}/{path.name}")
    answer = folder.known_answer
    engine = learned.verified_session(folder.path / SMEAR_GRAPH, None if not answer else
                                      (lambda sess: check_known_answer(sess, answer, size)), str(model))
    return CellClassifier(folder, engine, f"{folder.path.name}/{SMEAR_GRAPH}")


def default_classifier(task: str, onnx_only: bool = False) -> str | None:
    """The shipped classifier for ``task`` on the best engine here (its TFLite on LiteRT, else its
    int8 ONNX), or None where none is shipped."""
    from edgehema.smear.learned import MODELS

    name = DEFAULT_CLASSIFIERS.get(task)
    if name is None or not (MODELS / name).is_dir():
        return None
    if not onnx_only and (MODELS / name / "model.tflite").is_file():
        try:
            open_classifier(f"{name}/model.tflite", task)
            return f"{name}/model.tflite"
        except BundleError:
            pass
    return name
