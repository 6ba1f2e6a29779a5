"""Sets of single-cell images for the per-cell classifiers: one folder per class (PBC:
``basophil/``, ``eosinophil/``, ... each of JPEG crops), and the seeded, stratified split the
classifier's training, its export and ``evaluate-smear --cells`` all use, so that the test part a
model is measured on is the one it never saw.

The split: within each class the files sorted by name, shuffled by ``numpy.random.default_rng([seed,
k])`` (k the class's index in sorted order), then cut into train / val / test by ``fractions``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgehema.exceptions import InputFileError
from edgehema.smear.annotations import IMAGE_SUFFIXES

SPLITS = ("train", "val", "test")
#: The split the shipped classifiers are made with: 70 % train, 15 % val (choices), 15 % test.
FRACTIONS = (0.7, 0.15, 0.15)
SEED = 1


@dataclass(frozen=True)
class CellImage:
    path: Path
    label: str


def class_folders(root: str | Path) -> list[str]:
    """The class names of a set: its subfolders holding images, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise InputFileError(root, "not a folder of single-cell images (one subfolder per class)")
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and any(_images(p)))
    if not names:
        raise InputFileError(root, "holds no class subfolders with images (e.g. neutrophil/*.jpg)")
    return names


def _images(folder: Path):
    return (p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def cell_set(root: str | Path, split: str | None = None, seed: int = SEED,
             fractions: tuple[float, float, float] = FRACTIONS, classes: list[str] | None = None) -> list[CellImage]:
    """Every image of ``split`` (None: all), with its class; ``classes`` keeps only those."""
    if split is not None and split not in SPLITS:
        raise ValueError(f"split {split!r}: one of {', '.join(SPLITS)}")
    root = Path(root)
    out: list[CellImage] = []
    for k, name in enumerate(class_folders(root)):
        if classes is not None and name not in classes:
            continue
        files = sorted(_images(root / name))
        order = np.random.default_rng([seed, k]).permutation(len(files))
        n_train = int(round(fractions[0] * len(files)))
        n_val = int(round(fractions[1] * len(files)))
        bounds = {"train": (0, n_train), "val": (n_train, n_train + n_val), "test": (n_train + n_val, len(files))}
        lo, hi = bounds[split] if split else (0, len(files))
        out += [CellImage(files[i], name) for i in sorted(order[lo:hi])]
    return out
