"""Annotated smear image sets in either layout detectors are published in: Pascal VOC (BCCD:
``JPEGImages/``, ``Annotations/*.xml``, ``train.txt`` / ``val.txt``) and YOLO (TXL-PBC:
``images/<split>/``, ``labels/<split>/*.txt`` with ``class x_centre y_centre width height``
normalised, class names in ``data.yaml``). One list of images with their boxes either way."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

from edgehema.exceptions import InputFileError
from edgehema.smear.detections import Detection
from edgehema.smear.image_io import probe
from edgehema.smear.voc import NAMES, read_annotation

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class AnnotatedImage:
    name: str
    path: Path
    #: (box, difficult) of every annotated cell, in the image's pixels.
    truth: list[tuple[Detection, bool]]


def layout(root: Path) -> str:
    """``voc`` or ``yolo``; InputFileError naming the folder where it is neither."""
    root = Path(root)
    if (root / "JPEGImages").is_dir() and (root / "Annotations").is_dir():
        return "voc"
    if (root / "images").is_dir() and (root / "labels").is_dir():
        return "yolo"
    raise InputFileError(root, "not an annotated image set: a VOC set has JPEGImages/ and Annotations/, "
                               "a YOLO set images/<split>/ and labels/<split>/")


def annotated_set(root: str | Path, split: str = "val") -> list[AnnotatedImage]:
    """Every image of ``split`` with its annotation, sorted by name."""
    root = Path(root)
    if layout(root) == "voc":
        listing = root / f"{split}.txt"
        if not listing.is_file():
            raise InputFileError(listing, f"a VOC set lists its {split} images in {split}.txt")
        return [AnnotatedImage(i, root / "JPEGImages" / f"{i}.jpg", read_annotation(root / "Annotations" / f"{i}.xml"))
                for i in listing.read_text().split()]
    names = yolo_names(root)
    folder = root / "images" / split
    if not folder.is_dir():
        raise InputFileError(folder, f"a YOLO set keeps its {split} images in images/{split}/")
    out = []
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        out.append(AnnotatedImage(path.stem, path, read_yolo(root / "labels" / split / f"{path.stem}.txt", path, names)))
    return out


def yolo_names(root: Path) -> list[str | None]:
    """edgehema's class for each YOLO class index (None for a class it does not count), from
    ``data.yaml``'s ``names``."""
    spec = Path(root) / "data.yaml"
    if not spec.is_file():
        raise InputFileError(spec, "a YOLO set names its classes in data.yaml")
    m = re.search(r"^names\s*:\s*(\[.*?\])", spec.read_text(encoding="utf-8"), re.M | re.S)
    try:
        names = ast.literal_eval(m.group(1)) if m else None
    except (ValueError, SyntaxError):
        names = None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise InputFileError(spec, "names: must be a list of class names, e.g. names: ['WBC', 'RBC', 'Platelets']")
    return [NAMES.get(n.strip().lower()) for n in names]


def image_size(image: Path) -> tuple[int, int]:
    """(width, height) from the image's header, decoding it only for a kind whose header is not read."""
    import cv2

    _, size = probe(image)
    if size is not None:
        return size
    img = cv2.imread(str(image), cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise InputFileError(image, "cannot be decoded as an image")
    return img.shape[1], img.shape[0]


def read_yolo(label: Path, image: Path, names: list[str | None]) -> list[tuple[Detection, bool]]:
    """The boxes of one YOLO label file, in the image's pixels (the image's size read from its header)."""
    if not label.is_file():
        return []  # YOLO's convention: an image without a label file has no objects
    w, h = image_size(image)
    out = []
    for k, line in enumerate(label.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            c, x, y, bw, bh = line.split()[:5]
            c, x, y, bw, bh = int(c), float(x), float(y), float(bw), float(bh)
        except ValueError:
            raise InputFileError(label, f"line {k}: not 'class x_centre y_centre width height'") from None
        if not 0 <= c < len(names):
            raise InputFileError(label, f"line {k}: class {c} is not in data.yaml's names")
        if names[c] is None:
            continue
        out.append((Detection(names[c], (x - bw / 2) * w, (y - bh / 2) * h, (x + bw / 2) * w, (y + bh / 2) * h), False))
    return out

