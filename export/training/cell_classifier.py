"""Training recipe of the per-cell classifiers (workstation, torch): the white-cell type from PBC's
single-cell images (``python -m export.wbc_train``), the red-cell shape from Chula RBC-12's crops
(``python -m export.rbc_train``).

Every image is brought to the detector's scale first (its red cells MODEL_RBC_PX across: the tile
the device classifies a detected cell from) and cropped as the device crops
(edgehema.smear.cells.crop: CROP_RBC red-cell diameters around the cell, resized to CELL_INPUT).
Split: edgehema.smear.cell_sets (seeded, 70 / 15 / 15; per class for PBC, by whole field for
Chula); train on train, choose the epoch on val's balanced accuracy, never look at test
(``evaluate-smear --cells`` measures it).
Augmentation, for other laboratories' microscopes: the scale (white cells 0.85-1.18, the scale
stage's error; red cells only 0.95-1.05, since a macrocyte or a microcyte is told by its size), the
cell off centre by up to 8 % of the crop (the detector's box), flips and quarter turns (a cell has
no up), hue / saturation / brightness, blur and sensor noise (export.training.smear_detector's
stain jitter). Loss: cross-entropy with label smoothing 0.05. AdamW, one-cycle schedule.
Imbalance (Chula: normal 5,445 crops, teardrop 268): each epoch draws its cells with probability
proportional to 1/sqrt(class size) per cell (a class's share goes as the square root of its size,
so 20:1 becomes 4.5:1), without weighting the loss; the epoch is chosen on val's balanced accuracy.
Deterministic for a seed on the CPU; resumable from ``out/checkpoint.pt``.

    python -m export.wbc_train --data ../shared/data/pbc --epochs 30 --out build/wbc-pbc
    python -m export.rbc_train --data ../shared/data/chula-rbc-crops --epochs 40 --out build/rbc-chula
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

from edgehema.smear.cell_sets import SEED, cell_set, split_by
from edgehema.smear.cells import CELL_INPUT, CROP_RBC, crop
from edgehema.smear.learned import background
from edgehema.smear.scale import MODEL_RBC_PX
from export.cell_classifier.network import build_model
from export.training.smear_detector import stain_jitter
from export.training.torch_run import checkpoint, deterministic, resume, save, step

#: Each task: its data's red-cell size (px, one microscope: PBC's CellaVision DM96, measured on
#: TXL-PBC's annotation of PBC fields; Chula's Nikon DS-Fi2 at 1000x, its normal cells' median
#: equivalent diameter 38.6 px by Otsu on green, 40 px as a box), the classes reported under another
#: name, the crop's side in red-cell diameters, the network's input side, the scale jitter, the
#: split (edgehema.smear.cell_sets), how an epoch draws cells, the classes the epoch is not chosen on,
#: the network's width (export.cell_classifier.network), the views of each cell the device averages
#: (edgehema.smear.cells.views_of), the int8 activations' calibration (onnxruntime's MinMax, or its
#: Percentile 99.999: on Chula val it kept float's class on 99.03 % of cells where MinMax kept 98.97 %).
TASKS = {
    "wbc_type": {"rbc_px": 71.0, "report_as": {"platelet": "unclassified"}, "crop_rbc": CROP_RBC,
                 "input": CELL_INPUT, "scale_jitter": (0.85, 1.18), "split_by": "class", "draw": "uniform",
                 "not_chosen_on": (), "width": 1.0, "views": 1, "calibration": "minmax"},
    "rbc_morphology": {"rbc_px": 40.0, "report_as": {}, "crop_rbc": 1.6, "input": 64,
                       "scale_jitter": (0.95, 1.05), "split_by": "field", "draw": "sqrt_balanced",
                       "not_chosen_on": ("uncategorised",), "width": 1.5, "views": 2,
                       "calibration": "percentile"},
}
SHIFT = 0.08


def load(data: Path, split: str, spec: dict) -> tuple[list[np.ndarray], np.ndarray, list[str], list[str]]:
    """(images at the detector's scale, cut to what augmentation can reach; labels; class names;
    file names) of one split."""
    import cv2

    items = cell_set(data, split, by=spec["split_by"])
    classes = sorted({i.label for i in items})
    f = MODEL_RBC_PX / spec["rbc_px"]
    keep = int(math.ceil(spec["crop_rbc"] * MODEL_RBC_PX * spec["scale_jitter"][1] * (1 + 2 * SHIFT))) + 2
    images = []
    for item in items:
        img = cv2.imread(str(item.path))
        if img is None:
            raise SystemExit(f"{item.path}: cannot be decoded as an image")
        small = cv2.resize(img, (round(img.shape[1] * f), round(img.shape[0] * f)), interpolation=cv2.INTER_AREA)
        h, w = small.shape[:2]
        images.append(crop(small, (w / 2, h / 2), 1.0, background(small), keep, keep))
    return images, np.array([classes.index(i.label) for i in items]), classes, [i.path.name for i in items]


def task_spec(card_or_task: dict | str) -> dict:
    """A task's settings, from its name or a training card (which records them)."""
    if isinstance(card_or_task, str):
        return TASKS[card_or_task]
    card = card_or_task
    spec = dict(TASKS[card["task"]])
    spec.update(rbc_px=float(card["data_rbc_px"]), crop_rbc=float(card.get("crop_rbc_diameters", spec["crop_rbc"])),
                input=int(card.get("input", spec["input"])), views=int(card.get("views", spec["views"])))
    spec["split_by"] = split_by(card)
    return spec


def sample(img: np.ndarray, rng: np.random.Generator | None, spec: dict) -> np.ndarray:
    """The crop the device would take of this cell (``rng`` None: centred, no jitter)."""
    h, w = img.shape[:2]
    diameters, size = spec["crop_rbc"], spec["input"]
    if rng is None:
        return crop(img, (w / 2, h / 2), MODEL_RBC_PX, background(img), diameters, size)
    lo, hi = spec["scale_jitter"]
    s = float(np.exp(rng.uniform(math.log(lo), math.log(hi))))
    side = diameters * MODEL_RBC_PX
    cx, cy = w / 2 + rng.uniform(-SHIFT, SHIFT) * side, h / 2 + rng.uniform(-SHIFT, SHIFT) * side
    out = crop(img, (cx, cy), MODEL_RBC_PX * s, background(img), diameters, size)
    out = np.rot90(out, int(rng.integers(4)))
    if rng.random() < 0.5:
        out = out[:, ::-1]
    return stain_jitter(np.ascontiguousarray(out), rng)


def evaluate(model, images: list, labels: np.ndarray, classes: list[str], spec: dict) -> dict:
    """Accuracy, balanced accuracy, per-class recall and the confusion matrix (rows: truth)."""
    import torch

    from edgehema.smear.cells import to_input

    model.eval()
    with torch.no_grad():
        x = torch.from_numpy(to_input(np.stack([sample(i, None, spec) for i in images])))
        pred = torch.cat([model(x[k:k + 256]) for k in range(0, len(x), 256)]).argmax(1).numpy()
    model.train()
    return figures(labels, pred, classes, spec["not_chosen_on"])


def figures(labels: np.ndarray, pred: np.ndarray, classes: list[str], not_scored: tuple = ()) -> dict:
    """Figures on ``labels``; balanced accuracy is the mean recall over the classes not in
    ``not_scored`` (Chula's uncategorised: a class of leftovers, not a finding)."""
    n = len(classes)
    cm = np.zeros((n, n), int)
    for t, p in zip(labels, pred):
        cm[t, p] += 1
    recall = cm.diagonal() / np.maximum(cm.sum(1), 1)
    scored = [k for k, c in enumerate(classes) if c not in not_scored]
    return {"accuracy": round(float(cm.diagonal().sum() / max(cm.sum(), 1)), 4),
            "balanced_accuracy": round(float(recall[scored].mean()), 4),
            "recall": {c: round(float(r), 4) for c, r in zip(classes, recall)}, "confusion": cm.tolist()}


def draw(labels: np.ndarray, rng: np.random.Generator, how: str) -> np.ndarray:
    """One epoch's order of training cells: a permutation (``uniform``), or as many cells drawn
    with replacement, each with probability proportional to 1/sqrt(its class's size)."""
    if how == "uniform":
        return rng.permutation(len(labels))
    size = np.bincount(labels)
    p = 1.0 / np.sqrt(size[labels])
    return rng.choice(len(labels), size=len(labels), replace=True, p=p / p.sum())


def train(task: str, data: Path, epochs: int, out: Path, seed: int = SEED, batch: int = 64, lr: float = 4e-3,
          log=print, limit: int | None = None, stop_after: int | None = None) -> dict | None:
    """Train ``task``'s classifier; keep the epoch with the best val balanced accuracy. Resumes from
    ``out/checkpoint.pt`` (same settings); ``stop_after``: stop after that epoch, return None."""
    import torch

    deterministic(seed)
    out.mkdir(parents=True, exist_ok=True)
    spec = TASKS[task]
    images, labels, classes, _ = load(data, "train", spec)
    if limit:
        pick = np.random.default_rng(seed).permutation(len(images))[:limit]
        images, labels = [images[i] for i in pick], labels[pick]
    val_images, val_labels, val_classes, _ = load(data, "val", spec)
    assert val_classes == classes, "train and val hold the same classes"
    model = build_model(len(classes), spec["width"])
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    per_epoch = math.ceil(len(images) / batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * per_epoch, pct_start=0.15)
    settings = {"task": task, "data": str(data), "epochs": epochs, "seed": seed, "batch": batch, "lr": lr, "limit": limit,
                "width": spec["width"]}
    state = resume(out / "checkpoint.pt", settings, model, opt, sched, log)
    t0 = time.perf_counter() - state["seconds"]
    for epoch in range(state["epoch"], epochs):
        rng = np.random.default_rng([seed, epoch])  # per epoch: a resumed run draws what it would have
        order = draw(labels, rng, spec["draw"])
        total = 0.0
        for start in range(0, len(order), batch):
            picked = order[start:start + batch]
            total += _step(model, opt, sched, [images[j] for j in picked], labels[picked], rng, spec)
        entry = {"epoch": epoch + 1, "loss": round(total / per_epoch, 4), "seconds": round(time.perf_counter() - t0, 1),
                 "val": evaluate(model, val_images, val_labels, classes, spec)}
        entry["val"].pop("confusion")
        if state["best"] is None or entry["val"]["balanced_accuracy"] > state["best"]["val"]["balanced_accuracy"]:
            state["best"] = entry
            torch.save(model.state_dict(), out / "best.pt")
        state["history"].append(entry)
        state["epoch"], state["seconds"] = epoch + 1, time.perf_counter() - t0
        checkpoint(out / "checkpoint.pt", settings, model, opt, sched, state)
        log(json.dumps(entry))
        if stop_after is not None and epoch + 1 >= stop_after and epoch + 1 < epochs:
            log(f"stopped after epoch {epoch + 1} of {epochs}: run the same command again to go on")
            return None
    model.load_state_dict(torch.load(out / "best.pt"))
    model.eval()
    save(model, out, (1, 3, spec["input"], spec["input"]), ["probabilities"])
    card = {"recipe": "export.training.cell_classifier", "task": task, "data": Path(data).name, "seed": seed,
            "epochs": epochs, "batch": batch, "lr": lr, "classes": classes, "train_images": len(images),
            "val_images": len(val_images), "split": {"seed": SEED, "fractions": [0.7, 0.15, 0.15],
                                                      "by": spec["split_by"], "module": "edgehema.smear.cell_sets"},
            "data_rbc_px": spec["rbc_px"], "model_rbc_px": MODEL_RBC_PX, "crop_rbc_diameters": spec["crop_rbc"],
            "input": spec["input"], "scale_jitter": list(spec["scale_jitter"]), "report_as": spec["report_as"],
            "draw": spec["draw"], "width": spec["width"], "views": spec["views"], "balanced_accuracy_over": [c for c in classes if c not in spec["not_chosen_on"]],
            "seconds": round(time.perf_counter() - t0, 1), "chosen_epoch": state["best"]["epoch"],
            "val_at_chosen_epoch": state["best"]["val"], "weights": int(sum(p.numel() for p in model.parameters()))}
    (out / "training.json").write_text(json.dumps(card, indent=1) + "\n")
    return card


def _step(model, opt, sched, batch_images: list, batch_labels: np.ndarray, rng: np.random.Generator, spec: dict) -> float:
    import torch

    from edgehema.smear.cells import to_input

    x = torch.from_numpy(to_input(np.stack([sample(i, rng, spec) for i in batch_images])))
    return step(opt, sched, torch.nn.functional.cross_entropy(model.logits(x), torch.from_numpy(batch_labels),
                                                              label_smoothing=0.05))


def main(task: str = "wbc_type", default_data: str = "pbc", default_out: str = "build/wbc-pbc", epochs: int = 30) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[3] / "shared" / "data" / default_data)
    ap.add_argument("--epochs", type=int, default=epochs)
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--out", type=Path, default=Path(default_out))
    ap.add_argument("--limit", type=int, help="Train on N training images only (a quick check of the recipe).")
    ap.add_argument("--stop-after", type=int, help="Stop after this epoch (checkpoint kept; the same command goes on).")
    args = ap.parse_args()
    card = train(task, args.data, args.epochs, args.out, args.seed, limit=args.limit, stop_after=args.stop_after)
    if card:
        print(json.dumps(card, indent=1))


if __name__ == "__main__":
    main()
