"""One smear image to counts: image → tiles → detections → counts, flags and an overlay.

Large fields are cut into overlapping tiles the size the detector was made for; a detection is
kept by the one tile whose core (the tile less half the overlap on each inner side) holds its
centre, so a cell on a tile border is counted once. Quality flags say when counts should not be
trusted as they are: out of focus, too dark or bright, too few cells, too crowded to separate, a
stain unlike the images the detector was made on.
"""

from __future__ import annotations

import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np

from edgehema.smear import baseline
from edgehema.smear.detections import SMEAR_CLASSES, Detection, counts
from edgehema.smear.differential import Differential, image_counts
from edgehema.smear.image_io import open_rows
from edgehema.smear.learned import INPUT
from edgehema.smear.rows import InMemory, Rows

#: Tile size (the detector's field: BCCD's 640 x 480) and the overlap between tiles. A detection is
#: kept by the tile whose core holds its centre, and a core ends half the overlap from its tile's
#: edge: so the tile that keeps a cell sees it whole with context around it, for cells up to 256
#: pixels across (BCCD's white cells: median 206, 90th percentile 242). With 128, the detector's
#: scores fell near tile edges and 7 % of white cells on a mosaic of fields were lost.
TILE = (640, 480)
OVERLAP = 256
#: The same for a detector that works at its own scale (edgehema.smear.scale): tiles of its input
#: size at that scale, overlapping by 128 px there (cells up to 128 px across, 3.2 red cells, seen
#: whole by the tile that keeps them).
SCALED_OVERLAP = 128

#: Reference statistics of the images the detectors were made on (BCCD train, measured with
#: ``quality()``): focus = variance of the Laplacian 5.4-16.6; brightness 165-193. The stain's
#: (CIELAB a*, b* means 132.9 +- 1.1 and 126.9 +- 1.5; colour spread) is the model's own:
#: edgehema.smear.stain.StainReference, BCCD's by default.
FOCUS_MIN = 3.0
BRIGHTNESS = (120.0, 235.0)
#: Colour spread (the CIELAB a*, b* standard deviations' hypotenuse) below which BCCD's stain is
#: pale or faded (means alone miss such a stain): stain.BCCD.spread_min.
STAIN_SPREAD_MIN = 9.0
MIN_CELLS = 5
CROWDED = 0.85

FLAG_TEXT = {
    "out_of_focus": "image out of focus (variance of the Laplacian {focus:.1f} < {min:.1f}): refocus and retake",
    "too_dark": "image too dark (mean {brightness:.0f} of 255): check the illumination",
    "too_bright": "image too bright (mean {brightness:.0f} of 255): check the exposure",
    "stain_unlike_training": "staining unlike the images the detector was made on (CIELAB a* {a:.1f}, b* {b:.1f}, "
                             "colour spread {spread:.1f}): review the counts",
    "too_few_cells": "only {cells} cells found: a field with cells is needed",
    "too_crowded": "{crowded:.0%} of the field covered by cells: too crowded to separate them; use a thinner area",
}

Engine = Callable[[np.ndarray], list[Detection]]
#: Detectors by name: ``model`` is the shipped learned detector on the best engine here (int8
#: TFLite on LiteRT, else int8 ONNX on onnxruntime: learned.default_model), ``model-tflite`` and
#: ``model-onnx`` the one or the other, ``baseline`` the classical one; ``model:PATH`` runs another
#: model folder or file of the same network (a float export, a retrained one, a folder's model.tflite).
ENGINES = ("model", "model-tflite", "model-onnx", "baseline")


def engine_for(name: str) -> Engine:
    from functools import partial

    from edgehema.smear import learned

    model = learned.engine_model(name)
    if model is None:
        return baseline.detect
    if learned.model_rbc_px(model) is not None:
        return partial(learned.detect_at_scale, model=model)
    return partial(learned.detect, model=model)


def model_scale(name: str) -> float | None:
    """The red-cell size (px) the engine's detector works at, or None (the field as it comes)."""
    from edgehema.smear import learned

    model = learned.engine_model(name)
    return None if model is None else learned.model_rbc_px(model)


def tiles(shape: tuple[int, int], tile=TILE, overlap: int | None = None) -> list[tuple[int, int, int, int, tuple]]:
    """(x0, y0, x1, y1, core) per tile; core = (cx0, cy0, cx1, cy1), the region whose detections it
    keeps. The cores partition the image: neighbours meet in the middle of their overlap."""
    h, w = shape
    tw, th = tile
    overlap = OVERLAP if overlap is None else overlap

    def spans(size: int, length: int) -> list[tuple[int, int, int, int]]:
        """(start, end, core start, core end) along one axis."""
        if size <= length:
            return [(0, size, 0, size)]
        step = length - overlap
        starts = list(range(0, size - length, step)) + [size - length]
        bounds = [0] + [(starts[k + 1] + starts[k] + length) // 2 for k in range(len(starts) - 1)] + [size]
        return [(s0, s0 + length, bounds[k], bounds[k + 1]) for k, s0 in enumerate(starts)]

    return [(x0, y0, x1, y1, (cx0, cy0, cx1, cy1))
            for y0, y1, cy0, cy1 in spans(h, th) for x0, x1, cx0, cx1 in spans(w, tw)]


#: Longest side of the picture kept of a streamed image for its overlay.
PREVIEW_SIDE = 4096


def detect_tiled(image: np.ndarray | Rows, engine: Engine, transform: Callable | None = None,
                 preview: list | None = None, scale: float = 1.0, factor: float = 1.0,
                 tile: tuple[int, int] = TILE, overlap: int = OVERLAP,
                 classify: Callable | None = None) -> list[Detection]:
    """Detections of every tile, each kept by the tile whose core holds its centre. The image is
    read one row of tiles at a time, top down (a streamed image is never whole in memory);
    ``transform`` is applied to each row of tiles (stain normalisation); ``preview`` collects the
    image shrunk by ``scale``, for the overlay of an image too large to keep. ``factor``: each tile
    is resampled by it before detection (to the detector's scale; ``tile`` and ``overlap`` are at
    that scale) and its detections back, so boxes are in the image's pixels. ``classify(tile,
    detections)`` gives the detections a tile keeps their cell types, on the tile the detector saw
    (so a streamed image's cells are typed as it streams)."""
    import cv2

    source = InMemory(image) if isinstance(image, np.ndarray) else image
    found: list[tuple[int, Detection]] = []  # (tile, detection)
    n_tile = 0
    by_row: dict[tuple[int, int], list] = {}
    span = (max(1, int(tile[0] / factor)), max(1, int(tile[1] / factor)))
    for t in tiles((source.height, source.width), span, int(round(overlap / factor))):
        by_row.setdefault((t[1], t[3]), []).append(t)
    shown = 0  # rows of the image already in the preview
    for (y0, y1), row in by_row.items():
        band = source.rows(y0, y1)
        if preview is not None and y1 > shown:
            top, bottom = round(shown * scale), round(y1 * scale)
            if bottom > top:
                preview.append(cv2.resize(band[shown - y0:], (max(1, round(source.width * scale)), bottom - top),
                                          interpolation=cv2.INTER_AREA))
            shown = y1
        if transform is not None:
            band = transform(band)
        for x0, _, x1, _, (cx0, cy0, cx1, cy1) in row:
            part = band[:, x0:x1]
            if factor != 1.0:
                size = (min(tile[0], max(1, round(part.shape[1] * factor))), min(tile[1], max(1, round(part.shape[0] * factor))))
                part = cv2.resize(part, size, interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR)
            fx, fy = (band[:, x0:x1].shape[1] / part.shape[1], band.shape[0] / part.shape[0]) if factor != 1.0 else (1.0, 1.0)
            kept = [d for d in engine(part)
                    if cx0 <= d.centre[0] * fx + x0 < cx1 and cy0 <= d.centre[1] * fy + y0 < cy1]
            if classify is not None:
                kept = classify(part, kept)
            found += [(n_tile, replace(d, x0=d.x0 * fx + x0, y0=d.y0 * fy + y0, x1=d.x1 * fx + x0, y1=d.y1 * fy + y0))
                      for d in kept]
            n_tile += 1
    return merge_across_tiles(found, max(1.0, overlap / factor))


def merge_across_tiles(found: list[tuple[int, Detection]], cell: float) -> list[Detection]:
    """The detections of all tiles, a cell seen by two neighbouring tiles once: two tiles can place
    the centre of a cell on their shared core edge a few pixels apart, each on its own side, so each
    keeps it. Of two detections of one class from different tiles overlapping by IoU >= NMS_IOU, the
    higher-scored is kept (within a tile the decoder has done the same). ``cell``: the bucket size
    of the spatial hash (at least the distance between such centres: the tile overlap)."""
    from collections import defaultdict

    from edgehema.smear.detections import iou
    from edgehema.smear.learned import NMS_IOU

    buckets: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, (_, d) in enumerate(found):
        buckets[(int(d.centre[0] // cell), int(d.centre[1] // cell))].append(i)
    dropped: set[int] = set()
    for i in sorted(range(len(found)), key=lambda k: -found[k][1].score):
        if i in dropped:
            continue
        tile, d = found[i]
        bx, by = int(d.centre[0] // cell), int(d.centre[1] // cell)
        for j in (j for dx in (-1, 0, 1) for dy in (-1, 0, 1) for j in buckets.get((bx + dx, by + dy), ())):
            if j != i and j not in dropped and found[j][0] != tile and found[j][1].kind == d.kind \
                    and found[j][1].score <= d.score and iou(found[j][1], d) >= NMS_IOU:
                dropped.add(j)
    return [d for k, (_, d) in enumerate(found) if k not in dropped]


def quality(image: np.ndarray) -> dict[str, float]:
    return statistics(image)[0]


def statistics(image: np.ndarray) -> tuple[dict[str, float], tuple]:
    """The quality figures of a whole image, and its CIELAB (means, standard deviations)."""
    import cv2

    from edgehema.smear.stain import lab_statistics

    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    mean, std = lab_statistics(image)
    return _quality(float(cv2.Laplacian(grey, cv2.CV_64F).var()), float(grey.mean()), mean, std), (mean, std)


def _quality(focus: float, brightness: float, lab_mean, lab_std) -> dict[str, float]:
    return {"focus": focus, "brightness": brightness, "stain_a": float(lab_mean[1]), "stain_b": float(lab_mean[2]),
            "stain_spread": float(np.hypot(lab_std[1], lab_std[2]))}


def stain_unlike(q: dict, reference=None) -> bool:
    """Whether the stain is unlike the training images' (``reference``, BCCD's by default): colour
    means off, or colours pale."""
    from edgehema.smear.stain import BCCD

    return (reference or BCCD).unlike(q)


def detector_file(engine: str) -> str:
    """The model file an engine runs (``bccd-int8/model.tflite``), or ``baseline``."""
    from edgehema.smear import learned

    model = learned.engine_model(engine)
    if model is None:
        return "baseline"
    return f"{model}/model.onnx" if model == learned.DEFAULT_MODEL else model


def stain_reference(engine: str):
    """The stain the engine's detector was trained on: its manifest's, else BCCD's."""
    from edgehema.smear import learned
    from edgehema.smear.stain import BCCD

    model = learned.engine_model(engine)
    return (learned.stain_reference(model) if model is not None else None) or BCCD


#: The scale of an image streamed by rows is estimated on a field of its first rows, this size at most.
SCALE_SAMPLE = 1024


def scale_sample(image: np.ndarray) -> np.ndarray:
    """The part of a field its scale is estimated on: the central SCALE_SAMPLE columns of its first
    SCALE_SAMPLE rows (what streamed_statistics collects of a streamed image)."""
    x0 = max(0, (image.shape[1] - SCALE_SAMPLE) // 2)
    return image[:SCALE_SAMPLE, x0:x0 + SCALE_SAMPLE]


def streamed_statistics(source: Rows, band: int = 64, sample: list | None = None) -> tuple[dict[str, float], tuple]:
    """``quality()`` of an image read row by row, and its CIELAB (means, standard deviations) for
    stain normalisation, in one pass. The Laplacian of each band is taken with one row of the next
    and previous bands, so it equals the whole image's. ``sample`` collects the central
    SCALE_SAMPLE columns of the first SCALE_SAMPLE rows (for the scale estimate)."""
    import cv2

    x0 = max(0, (source.width - SCALE_SAMPLE) // 2)

    n = source.width * source.height
    lap_sum = lap_sq = grey_sum = 0.0
    lab_sum = np.zeros(3)
    lab_sq = np.zeros(3)
    for y in range(0, source.height, band):
        top, end = max(0, y - 1), min(source.height, y + band + 1)
        rows = source.rows(top, end)
        grey = cv2.cvtColor(rows, cv2.COLOR_BGR2GRAY)
        lap = cv2.Laplacian(grey, cv2.CV_64F)[y - top:y - top + min(band, source.height - y)]
        lap_sum += lap.sum()
        lap_sq += np.square(lap).sum()
        own = rows[y - top:y - top + min(band, source.height - y)]
        if sample is not None and y < SCALE_SAMPLE:
            sample.append(own[:SCALE_SAMPLE - y, x0:x0 + SCALE_SAMPLE].copy())
        grey_sum += float(grey[y - top:y - top + own.shape[0]].sum(dtype=np.float64))
        lab = cv2.cvtColor(own, cv2.COLOR_BGR2LAB).reshape(-1, 3).astype(np.float64)
        lab_sum += lab.sum(0)
        lab_sq += np.square(lab).sum(0)
    lab_mean = lab_sum / n
    lab_std = np.sqrt(np.maximum(lab_sq / n - lab_mean ** 2, 0.0))
    return _quality(float(lap_sq / n - (lap_sum / n) ** 2), grey_sum / n, lab_mean, lab_std), (lab_mean, lab_std)


def flags_for(q: dict, found: list[Detection], shape: tuple[int, int], reference=None) -> dict[str, str]:
    out = {}
    if q["focus"] < FOCUS_MIN:
        out["out_of_focus"] = FLAG_TEXT["out_of_focus"].format(focus=q["focus"], min=FOCUS_MIN)
    if q["brightness"] < BRIGHTNESS[0]:
        out["too_dark"] = FLAG_TEXT["too_dark"].format(**q)
    elif q["brightness"] > BRIGHTNESS[1]:
        out["too_bright"] = FLAG_TEXT["too_bright"].format(**q)
    if stain_unlike(q, reference):
        out["stain_unlike_training"] = FLAG_TEXT["stain_unlike_training"].format(a=q["stain_a"], b=q["stain_b"],
                                                                                 spread=q["stain_spread"])
    n = sum(d.cells for d in found)
    if n < MIN_CELLS:
        out["too_few_cells"] = FLAG_TEXT["too_few_cells"].format(cells=n)
    area = sum((d.x1 - d.x0) * (d.y1 - d.y0) for d in found if d.kind == "rbc")
    crowded = area / float(shape[0] * shape[1])
    if crowded > CROWDED:
        out["too_crowded"] = FLAG_TEXT["too_crowded"].format(crowded=crowded)
    return out


def count_thresholds(engine: str) -> dict[str, float]:
    """Score from which a detection counts as a cell: the learned detector reports every peak with
    its score (for AP), and counts those above its model's per-class thresholds; the baseline counts all."""
    from edgehema.smear import learned

    model = learned.engine_model(engine)
    if model is None:
        return {k: 0.0 for k in SMEAR_CLASSES}
    return learned.count_thresholds(model)


def analyse(path: str | Path, engine: str = "model", image: np.ndarray | None = None, stain: str = "auto",
            overlap: str = "none", um_per_px: float | None = None, microscope: str | Path | None = None,
            species: str | None = None, wbc: str = "auto", rbc: str = "auto"):
    """(result, image, every detection with its score) for one smear image. ``stain``: normalise the
    colours to the training images' before detection ``auto`` (when the stain is unlike them),
    ``always`` or ``never`` (edgehema.smear.stain). ``overlap``: ``area`` counts a region of
    touching red cells by its area (edgehema.smear.overlap), ``none`` one cell per box. The image's
    scale (``um_per_px``, a ``microscope`` profile, else estimated: edgehema.smear.scale) brings it
    to the detector's scale first. An image too large to decode whole is read twice as a stream of
    rows (statistics, then detection); the image returned is then a preview of it, shrunk by the
    result's ``overlay_scale``, and no overlap correction is made (it needs the whole image; nor
    above overlap.MAX_PIXELS). ``wbc``, ``rbc``: the white-cell type and red-cell shape classifiers
    (edgehema.smear.cells): ``auto`` the shipped one for the detector's engine, ``none``, a path."""
    from edgehema.smear import overlap as O
    from edgehema.smear import stain as S

    t0 = time.perf_counter()
    path = Path(path)
    source = InMemory(image) if image is not None else open_rows(path)
    streamed = not isinstance(source, InMemory)
    sample: list = []
    if streamed:
        q, lab_stats = streamed_statistics(source, sample=sample)
        source = open_rows(path)  # the second pass: a stream is read once
    else:
        q, lab_stats = statistics(source.image)
    reference = stain_reference(engine)
    normalised = stain == "always" or (stain == "auto" and stain_unlike(q, reference))
    transform = partial(S.normalise, stats=lab_stats, reference=reference) if normalised else None
    # The scale is estimated on the same part of the field whether it is decoded whole or streamed.
    field_scale = image_scale(np.concatenate(sample) if streamed else scale_sample(source.image),
                              um_per_px, microscope, species)
    model_px = model_scale(engine)
    preview_scale = min(1.0, PREVIEW_SIDE / max(source.width, source.height)) if streamed else 1.0
    preview: list | None = [] if streamed else None
    thresholds = count_thresholds(engine)
    typer, shaper = classifier_for("wbc_type", engine, wbc), classifier_for("rbc_morphology", engine, rbc)
    typers = [c for c in (typer, shaper) if c is not None]
    if model_px is None:  # a detector made before the scale stage: the field as it comes
        every = detect_tiled(source, engine_for(engine), transform, preview, preview_scale,
                             classify=cell_typer(typers, field_scale.rbc_px, thresholds))
    else:
        def detect(at, first: bool = False):
            # The tiles are at the detector's scale: their red cells are model_px across. A stream
            # is read once more for each detection after the first.
            rows = source if first or not streamed else open_rows(path)
            return detect_tiled(rows, engine_for(engine), transform, preview if first else None, preview_scale,
                                at.factor(model_px), INPUT, SCALED_OVERLAP, cell_typer(typers, model_px, thresholds))

        every, field_scale = scaled_detection(detect, field_scale, thresholds)
    found = [d for d in every if d.score >= thresholds[d.kind]]
    one_cell = None if typer is None or streamed else cell_image(source.image, found, field_scale.rbc_px, typer)
    if one_cell is not None:
        found.append(one_cell)
    corrected = overlap == "area" and not streamed and O.applies(source.image)
    if corrected:
        found = O.correct(source.image, found)
    # The flags judge the image as it came (a stain unlike training stays flagged: normalising
    # helps the detector, it does not make the slide a typical one).
    flags = flags_for(q, found, (source.height, source.width), reference)
    if model_px is not None:
        flags.update(field_scale.flags())
    detections = [d.to_dict() for d in found]
    typed = _typed(detections, typer, shaper, one_cell, flags)
    result = {
        "kind": "smear",
        "sample_id": path.stem,
        "source": str(path),
        "width": int(source.width),
        "height": int(source.height),
        "counts": counts(found),
        "detections": detections,
        "flags": sorted(flags),
        "flag_details": flags,
        "quality": {k: round(v, 2) for k, v in q.items()},
        "scale": {**field_scale.to_dict(), "resampled_by": round(field_scale.factor(model_px), 4) if model_px else 1.0},
        "stain_normalised": normalised,
        "overlap_correction": "area" if corrected else "none",
        "engine": engine,
        "detector": detector_file(engine),
        "seconds": round(time.perf_counter() - t0, 4),
        **typed,
    }
    if streamed:
        result["decoded"] = "streamed"
        result["overlay_scale"] = round(preview_scale, 6)
        return result, np.concatenate(preview), every
    return result, source.image, every


#: The detector's red cells (at its scale, boxes as the annotation draws them) tell the field's scale
#: better than the estimate: where their median size is more than this far from the estimate's, the
#: field is detected again at their scale (the detector is trained for sizes 0.7-1.43x its own).
REFINE_BEYOND = 0.15
#: Red cells the refinement needs.
REFINE_CELLS = 5


def refine(field_scale, every: list[Detection], thresholds: dict[str, float]):
    """The scale the detected red cells give, where it differs from an estimated one by more than
    REFINE_BEYOND; else None. Given scales are kept (the user knows the microscope)."""
    if field_scale.source not in ("estimated", "assumed"):
        return None
    sides = [np.sqrt((d.x1 - d.x0) * (d.y1 - d.y0)) for d in every if d.kind == "rbc" and d.score >= thresholds["rbc"]]
    if len(sides) < REFINE_CELLS:
        return None
    seen = float(np.median(sides))
    if abs(seen / field_scale.rbc_px - 1) <= REFINE_BEYOND:
        return None
    um = None if field_scale.um_per_px is None else field_scale.um_per_px * field_scale.rbc_px / seen
    return replace(field_scale, rbc_px=seen, um_per_px=um, source="estimated", cells=len(sides),
                   confidence=max(field_scale.confidence, len(sides) / (len(sides) + 4.0)), refined=True)


def _differential(detections: list[dict], one_cell: Detection | None, flags: dict[str, str]) -> dict[str, int]:
    """An image's counts per white-cell type; its flags (immature granulocytes, nucleated red cells,
    many unclassified, an image taken as one cell) added to ``flags``."""
    counted = image_counts(detections)
    image_diff = Differential()
    image_diff.add(counted)
    flags.update(image_diff.flags(minimum=0))
    if one_cell is not None:
        flags["cell_image"] = ("no white cell found by the detector in an image the size of one cell: its centre "
                               f"classified as one ({one_cell.cell_type})")
    return counted


#: An image at most this many red-cell diameters on its longer side may hold one cell (a gallery crop).
CELL_IMAGE_RBC = 6.0


def cell_image(image: np.ndarray, found: list[Detection], rbc_px: float, classifier) -> Detection | None:
    """For an image of one white cell (a crop such as PBC's or an analyzer's gallery export) in which
    the detector found none: the cell at its centre, where the classifier gives it a white-cell type
    (not unclassified, not a platelet); else None."""
    from edgehema.smear.cells import UNCLASSIFIED, crop
    from edgehema.smear.learned import background

    h, w = image.shape[:2]
    if any(d.kind == "wbc" for d in found) or max(h, w) > CELL_IMAGE_RBC * rbc_px:
        return None
    size = classifier.folder.input_size[0] if classifier.folder.input_size else 80
    p = classifier.probabilities(crop(image, (w / 2, h / 2), rbc_px, background(image), classifier.crop_diameters(),
                                      size)[None])[0]
    name, prob = classifier.label(p)
    if name == UNCLASSIFIED:
        return None
    half = min(w, h, 2.0 * rbc_px) / 2  # a white cell about two red cells across
    return Detection("wbc", w / 2 - half, h / 2 - half, w / 2 + half, h / 2 + half, 0.0, 1, name, round(prob, 4))


def classifier_for(task: str, engine: str, choice: str = "auto"):
    """The classifier of ``task`` an analysis runs (edgehema.smear.cells.CellClassifier), or None:
    ``auto`` the shipped one (its int8 ONNX beside the int8 ONNX detector, ``model-onnx``; else its
    TFLite where LiteRT runs here; None where none is shipped), ``none``, or a folder or file."""
    from edgehema.smear import cells

    if choice == "none":
        return None
    name = cells.default_classifier(task, onnx_only=engine == "model-onnx") if choice == "auto" else choice
    return None if name is None else cells.open_classifier(name, task)


def wbc_classifier(engine: str, wbc: str = "auto"):
    """The white-cell type classifier an analysis runs, or None (classifier_for)."""
    return classifier_for("wbc_type", engine, wbc)


def cell_typer(classifiers: list, px_per_rbc: float, thresholds: dict[str, float]) -> Callable | None:
    """The ``classify`` of detect_tiled: each classifier on the counted cells of its kind of a tile
    whose red cells are ``px_per_rbc`` across."""
    if not classifiers:
        return None
    from edgehema.smear.cells import TASKS

    steps = [partial(c.annotate, px_per_rbc=px_per_rbc, min_score=thresholds[TASKS[c.task]]) for c in classifiers]

    def classify(tile: np.ndarray, found: list[Detection]) -> list[Detection]:
        for step in steps:
            found = step(tile, found)
        return found

    return classify


def _typed(detections: list[dict], typer, shaper, one_cell: Detection | None, flags: dict[str, str]) -> dict:
    """The result's keys of the cell classifiers that ran: the image's white-cell differential and
    red-cell morphology counts, the classifiers' files; their flags added to ``flags``."""
    out: dict = {}
    if typer is not None:
        out["differential"] = _differential(detections, one_cell, flags)
        out["wbc_classifier"] = typer.file
    if shaper is not None:
        out["morphology"] = _morphology(detections, flags)
        out["rbc_classifier"] = shaper.file
    return out


def _morphology(detections: list[dict], flags: dict[str, str]) -> dict[str, int]:
    """An image's counts per red-cell shape; its flag for many unclassified red cells added to
    ``flags`` (grades and findings are the slide's: one field holds too few red cells)."""
    from edgehema.smear.morphology import Morphology, image_counts

    counted = image_counts(detections)
    one = Morphology()
    one.add(counted)
    flags.update({k: v for k, v in one.flags(minimum=0).items() if k == "many_unclassified_red_cells"})
    return counted


def scaled_detection(detect: Callable, field_scale, thresholds: dict[str, float]):
    """(detections, scale) of a field detected at its scale, refined by the red cells found there
    (refine). Where an estimate finds under REFINE_CELLS red cells, the estimate may be wrong by a
    factor of two (a clump taken for one cell, a cell's pale centre for a cell): the field is also
    detected at half and twice that size, and the scale that finds the most red cells is refined."""
    every = detect(field_scale, first=True)
    if field_scale.source in ("estimated", "assumed") and _rbc_counted(every, thresholds) < REFINE_CELLS:
        tried = [(every, field_scale)]
        for f in (0.5, 2.0):
            other = replace(field_scale, rbc_px=field_scale.rbc_px * f,
                            um_per_px=None if field_scale.um_per_px is None else field_scale.um_per_px / f)
            tried.append((detect(other), other))
        every, field_scale = max(tried, key=lambda t: _rbc_counted(t[0], thresholds))
    refined = refine(field_scale, every, thresholds)
    if refined is not None:  # detected again at the red cells' own scale
        return detect(refined), refined
    return every, field_scale


def _rbc_counted(every: list[Detection], thresholds: dict[str, float]) -> int:
    return sum(1 for d in every if d.kind == "rbc" and d.score >= thresholds["rbc"])


def image_scale(image: np.ndarray, um_per_px: float | None = None, microscope: str | Path | None = None,
                species: str | None = None):
    """The field's scale: given, from a microscope profile, else estimated (edgehema.smear.scale)."""
    from edgehema.smear import scale as SC

    if um_per_px is not None:
        return SC.given(um_per_px, species)
    if microscope is not None:
        return SC.microscope(microscope, species)
    return SC.estimate(image, species)


def count_image(path: str | Path, engine: str = "model", image: np.ndarray | None = None,
                stain: str = "auto", overlap: str = "none", um_per_px: float | None = None,
                microscope: str | Path | None = None, species: str | None = None,
                wbc: str = "auto", rbc: str = "auto") -> tuple[dict, np.ndarray]:
    """(result, image) for one smear image; the result in the smear schema (docs/smear.md)."""
    result, image, _ = analyse(path, engine, image, stain, overlap, um_per_px, microscope, species, wbc, rbc)
    return result, image


#: Short names of the white-cell types (overlay tags, tables).
TYPE_TAGS = {"neutrophil": "NEUT", "lymphocyte": "LYMPH", "monocyte": "MONO", "eosinophil": "EOS", "basophil": "BASO",
             "ig": "IG", "erythroblast": "NRBC", "unclassified": "?"}
#: Short names of the red-cell shapes (overlay tags on the abnormal ones, tables).
SHAPE_TAGS = {"normal": "N", "macrocyte": "MAC", "microcyte": "MIC", "hypochromia": "HYPO", "spherocyte": "SPH",
              "target": "TGT", "ovalocyte": "OVL", "elliptocyte": "ELL", "stomatocyte": "STO", "teardrop": "TDR",
              "burr": "BUR", "schistocyte": "SCH", "uncategorised": "UNC", "unclassified": "?"}
#: Overlay colours (BGR): RBC red, WBC blue, platelets green, as the counts in the corner.
OVERLAY_COLOURS = {"rbc": (40, 40, 220), "wbc": (220, 80, 20), "plt": (30, 170, 30)}


def overlay(image: np.ndarray, result: dict) -> np.ndarray:
    """The image with every detection drawn (colour per class) and the counts in the top-left corner."""
    import cv2

    out = image.copy()
    scale = result.get("overlay_scale", 1.0)  # a streamed image's overlay is drawn on its preview
    for d in result["detections"]:
        x0, y0, x1, y1 = (int(round(v * scale)) for v in d["box"])
        cv2.rectangle(out, (x0, y0), (x1, y1), OVERLAY_COLOURS[d["class"]], 2)
        if d.get("wbc_type"):  # the white cell's type above its box
            cv2.putText(out, TYPE_TAGS.get(d["wbc_type"], d["wbc_type"]), (x0, max(12, y0 - 4)),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.5, OVERLAY_COLOURS["wbc"], 2, cv2.LINE_AA)
        if d.get("rbc_morphology") not in (None, "normal"):  # an abnormal red cell's shape inside its box
            cv2.putText(out, SHAPE_TAGS.get(d["rbc_morphology"], d["rbc_morphology"]), (x0 + 2, min(y1 - 3, y0 + 14)),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.4, (20, 20, 120), 1, cv2.LINE_AA)
    lines = [f"{k.upper()} {result['counts'][k]}" for k in SMEAR_CLASSES] + [f"FLAG {f}" for f in result["flags"]]
    height = 22 * len(lines) + 10
    width = max(140, 10 + 11 * max(len(line) for line in lines))
    panel = out[:height, :width].astype(np.float32)
    out[:height, :width] = (0.35 * panel + 0.65 * 255).astype(np.uint8)
    for k, line in enumerate(lines):
        colour = OVERLAY_COLOURS.get(SMEAR_CLASSES[k], (0, 0, 0)) if k < len(SMEAR_CLASSES) else (0, 0, 200)
        cv2.putText(out, line, (8, 24 + 22 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.6, colour, 2, cv2.LINE_AA)
    return out
