"""Sets of single-cell images for the per-cell classifiers: one folder per class (PBC:
``basophil/``, ``eosinophil/``, ... each of JPEG crops), and the seeded, stratified split the
classifier's training, its export and ``evaluate-smear --cells`` all use, so that the test part a
model is measured on is the one it never saw.

Two splits, named by ``by``:

* ``class`` (PBC, one cell per field): within each class the files sorted by name, shuffled by
  ``numpy.random.default_rng([seed, k])`` (k the class's index in sorted order), then cut into
  train / val / test by ``fractions``.
* ``field`` (Chula RBC-12, many cells per field; a file is ``<field>_<cell>.jpg``): whole fields go
  to one part, so that cells of one field never sit on both sides. Fields are shuffled by
  ``default_rng(seed)``, then taken rarest class first (the class held by the fewest fields) and each
  given to the part furthest below its share of that class's cells: a greedy stratified group split."""

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
SPLIT_BY = ("class", "field")


@dataclass(frozen=True)
class CellImage:
    path: Path
    label: str


def split_by(training: dict) -> str:
    """How a classifier's training card says its set was split (cards before ``field``: by class)."""
    by = (training.get("split") or {}).get("by")
    return by if by in SPLIT_BY else "class"


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
             fractions: tuple[float, float, float] = FRACTIONS, classes: list[str] | None = None,
             by: str = "class") -> list[CellImage]:
    """Every image of ``split`` (None: all), with its class; ``classes`` keeps only those."""
    if split is not None and split not in SPLITS:
        raise ValueError(f"split {split!r}: one of {', '.join(SPLITS)}")
    if by not in SPLIT_BY:
        raise ValueError(f"split by {by!r}: one of {', '.join(SPLIT_BY)}")
    root = Path(root)
    names = class_folders(root)
    files = {name: sorted(_images(root / name)) for name in names}
    part = _by_field(files, seed, fractions) if by == "field" else _by_class(files, seed, fractions)
    out = [CellImage(f, name) for name in names for f in files[name]
           if (classes is None or name in classes) and (split is None or part[f] == split)]
    return out


def _by_class(files: dict[str, list[Path]], seed: int, fractions) -> dict[Path, str]:
    part: dict[Path, str] = {}
    for k, name in enumerate(files):
        order = np.random.default_rng([seed, k]).permutation(len(files[name]))
        n_train = int(round(fractions[0] * len(order)))
        n_val = int(round(fractions[1] * len(order)))
        for rank, i in enumerate(order):
            part[files[name][i]] = SPLITS[0] if rank < n_train else SPLITS[1] if rank < n_train + n_val else SPLITS[2]
    return part


def field_of(path: Path) -> str:
    """The field a crop was cut from: its name before the last ``_`` (``101_035.jpg``: ``101``)."""
    return path.stem.rsplit("_", 1)[0]


def _by_field(files: dict[str, list[Path]], seed: int, fractions) -> dict[Path, str]:
    cells: dict[str, dict[str, int]] = {}  # field -> class -> cells
    for name, paths in files.items():
        for f in paths:
            counts = cells.setdefault(field_of(f), {})
            counts[name] = counts.get(name, 0) + 1
    fields = sorted(cells)
    fields = [fields[i] for i in np.random.default_rng(seed).permutation(len(fields))]
    held = {name: sum(1 for c in cells.values() if name in c) for name in files}
    total = {name: len(paths) for name, paths in files.items()}
    rarest = {f: min(cells[f], key=lambda n: (held[n], n)) for f in fields}
    fields.sort(key=lambda f: held[rarest[f]])  # stable: the seeded order within a class
    got = {s: {name: 0 for name in files} for s in SPLITS}
    where: dict[str, str] = {}
    for f in fields:
        name = rarest[f]
        # the part furthest below its share of this class (ties: the larger share first)
        s = min(SPLITS, key=lambda s: (got[s][name] / total[name] - fractions[SPLITS.index(s)], -fractions[SPLITS.index(s)]))
        where[f] = s
        for n, k in cells[f].items():
            got[s][n] += k
    return {p: where[field_of(p)] for paths in files.values() for p in paths}
