"""Training recipe of the smear detector: a small CenterNet-style network trained for counting
(workstation, torch). The command: ``python -m export.smear_train`` (this module's ``main``).

CenterNet (Zhou et al., "Objects as Points", 2019) finds each cell as the peak of a per-class
heat map and reads its box size and sub-pixel offset at that peak: no anchors and no box NMS, which
suits cells (round, of a few sizes, often touching) and a small int8 network on a CPU.

Data: an annotated set with every cell boxed (TXL-PBC by default: four sources, several
microscopes and stains), its train split only; its val split chooses the epoch, never trains.
Every image is first brought to the model's scale (its red cells MODEL_RBC_PX across, from its own
annotation), as the device's scale stage does at run time.

Network: depthwise-separable backbone (strides 2-16), a light feature pyramid back to stride 4,
three heads (3-class heat map, box width/height, offset), about 0.2 M weights; trained on CROP
crops, run on INPUT tiles (it is convolutional). Loss: CenterNet's focal loss on Gaussian heat
maps, L1 on size and offset at the centres. Augmentation: scale SCALE_JITTER (0.7-1.43x), flips,
quarter turns, hue/saturation/brightness, blur and sensor noise; cells cut by a crop kept while a
quarter is seen. Deterministic for a seed on the CPU; resumable from ``out/checkpoint.pt``.

    python -m export.smear_train --data ../shared/data/txl-pbc --epochs 36 --val-every 4 --out build/smear-txl
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

from edgehema.smear.detections import SMEAR_CLASSES as CLASSES
from edgehema.smear.learned import INPUT, STRIDE, background
from edgehema.smear.scale import MODEL_RBC_PX
from export.smear_detector.network import build_model
from export.training.torch_run import checkpoint, deterministic, resume, save, step

#: Training crops (the network is convolutional: the device runs it on INPUT-sized fields).
CROP = (192, 192)
#: Scale jitter around the model's scale: the scale stage's error and the spread of cell sizes.
SCALE_JITTER = (0.7, 1.43)


def load_split(root: Path, split: str):
    """(name, BGR image, boxes (class, x0, y0, x1, y1)) of every image of a VOC or YOLO set."""
    import cv2

    from edgehema.smear.annotations import annotated_set

    out = []
    for item in annotated_set(root, split):
        boxes = [(CLASSES.index(g.kind), g.x0, g.y0, g.x1, g.y1) for g, _ in item.truth]
        out.append((item.name, cv2.imread(str(item.path)), np.array(boxes, np.float32).reshape(-1, 5)))
    return out


def rbc_size(boxes: np.ndarray) -> float | None:
    """The median red-cell box size (geometric mean of width and height), or None below 3 red cells."""
    r = boxes[boxes[:, 0] == CLASSES.index("rbc")]
    if len(r) < 3:
        return None
    return float(np.median(np.sqrt((r[:, 3] - r[:, 1]) * (r[:, 4] - r[:, 2]))))


def to_model_scale(items: list) -> list:
    """Each image resampled so that its red cells are MODEL_RBC_PX across (from its own annotation;
    an image with fewer than 3 red cells takes the median of images of its size), boxes alike."""
    import cv2

    sizes = {}
    for _, img, boxes in items:
        sizes.setdefault(img.shape[:2], []).append(rbc_size(boxes))
    by_shape = {k: float(np.median([v for v in vs if v])) if any(vs) else None for k, vs in sizes.items()}
    overall = float(np.median([v for v in by_shape.values() if v]))
    out = []
    for name, img, boxes in items:
        d = rbc_size(boxes) or by_shape[img.shape[:2]] or overall
        f = MODEL_RBC_PX / d
        h, w = img.shape[:2]
        small = cv2.resize(img, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
        b = boxes.copy()
        b[:, 1:] *= f
        out.append((name, small, b))
    return out


def gaussian_radius(h: float, w: float, overlap: float = 0.7) -> float:
    """CenterNet's radius: the largest centre shift keeping IoU >= ``overlap`` (its third case)."""
    a, b = 4 * overlap, 2 * overlap * (h + w)
    c = (overlap - 1) * w * h
    return max(0.0, (b + math.sqrt(b * b - 4 * a * c)) / (2 * a))


def targets(boxes: np.ndarray, out_w: int, out_h: int, max_objects: int = 128):
    hm = np.zeros((len(CLASSES), out_h, out_w), np.float32)
    wh = np.zeros((max_objects, 2), np.float32)
    off = np.zeros((max_objects, 2), np.float32)
    idx = np.zeros(max_objects, np.int64)
    mask = np.zeros(max_objects, np.float32)
    ys, xs = np.mgrid[0:out_h, 0:out_w]
    for k, (c, x0, y0, x1, y1) in enumerate(boxes[:max_objects]):
        w, h = (x1 - x0) / STRIDE, (y1 - y0) / STRIDE
        if w <= 0 or h <= 0:
            continue
        cx, cy = (x0 + x1) / 2 / STRIDE, (y0 + y1) / 2 / STRIDE
        ix, iy = int(min(max(cx, 0), out_w - 1)), int(min(max(cy, 0), out_h - 1))
        r = max(0.0, gaussian_radius(h, w))
        sigma = (2 * int(r) + 1) / 6
        g = np.exp(-((xs - ix) ** 2 + (ys - iy) ** 2) / (2 * sigma * sigma))
        hm[int(c)] = np.maximum(hm[int(c)], g)
        wh[k] = (w, h)
        off[k] = (cx - ix, cy - iy)
        idx[k] = iy * out_w + ix
        mask[k] = 1
    return hm, wh, off, idx, mask


def augment(img: np.ndarray, boxes: np.ndarray, rng: np.random.Generator, size: tuple[int, int] = CROP):
    """An image at the model's scale -> a ``size`` crop (BGR) and its boxes: scale jitter (the scale
    stage's error, and cells' own spread), flips, 90-degree turns, stain and focus variation."""
    import cv2

    s = float(np.exp(rng.uniform(math.log(SCALE_JITTER[0]), math.log(SCALE_JITTER[1]))))
    h, w = img.shape[:2]
    out_w, out_h = size
    nw, nh = max(1, int(round(w * s))), max(1, int(round(h * s)))
    scaled = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    # Crop or pad to the input; the padding is the field's background colour, as at run time.
    ox = int(rng.integers(min(0, out_w - nw), max(0, out_w - nw) + 1))
    oy = int(rng.integers(min(0, out_h - nh), max(0, out_h - nh) + 1))
    canvas = np.empty((out_h, out_w, 3), np.uint8)
    canvas[:] = background(img)
    sx0, sy0 = max(0, -ox), max(0, -oy)
    dx0, dy0 = max(0, ox), max(0, oy)
    cw, ch = min(nw - sx0, out_w - dx0), min(nh - sy0, out_h - dy0)
    canvas[dy0:dy0 + ch, dx0:dx0 + cw] = scaled[sy0:sy0 + ch, sx0:sx0 + cw]
    b = boxes.copy()
    b[:, 1:] = b[:, 1:] * s
    b[:, [1, 3]] += ox
    b[:, [2, 4]] += oy
    full = (b[:, 3] - b[:, 1]) * (b[:, 4] - b[:, 2])
    b[:, [1, 3]] = b[:, [1, 3]].clip(max(dx0, 0), min(dx0 + cw, out_w))
    b[:, [2, 4]] = b[:, [2, 4]].clip(max(dy0, 0), min(dy0 + ch, out_h))
    # A cell cut by the crop stays a cell while a quarter of it is seen (the annotation boxes
    # cells cut by the field's edge; docs/smear.md, "cells at the edge").
    seen = (b[:, 3] - b[:, 1]) * (b[:, 4] - b[:, 2])
    b = b[(seen >= 0.25 * np.maximum(full, 1e-6)) & ((b[:, 3] - b[:, 1]) > 2) & ((b[:, 4] - b[:, 2]) > 2)]
    if rng.random() < 0.5:
        canvas = canvas[:, ::-1]
        b[:, [1, 3]] = out_w - b[:, [3, 1]]
    if rng.random() < 0.5:
        canvas = canvas[::-1]
        b[:, [2, 4]] = out_h - b[:, [4, 2]]
    canvas = np.ascontiguousarray(canvas)
    if out_w == out_h and rng.random() < 0.5:  # a quarter turn: x' = y, y' = W - x
        canvas = np.ascontiguousarray(np.rot90(canvas))
        b = b[:, [0, 2, 1, 4, 3]].copy()
        b[:, [2, 4]] = out_w - b[:, [4, 2]]
    return stain_jitter(canvas, rng), b


def stain_jitter(canvas: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Stain, illumination and focus unlike the training images' (other labs' microscopes)."""
    import cv2

    hsv = cv2.cvtColor(canvas, cv2.COLOR_BGR2HSV).astype(np.float32)
    hsv[:, :, 0] = (hsv[:, :, 0] + rng.uniform(-12, 12)) % 180
    hsv[:, :, 1] = np.clip(hsv[:, :, 1] * rng.uniform(0.6, 1.5), 0, 255)
    hsv[:, :, 2] = np.clip(hsv[:, :, 2] * rng.uniform(0.75, 1.2) + rng.uniform(-15, 15), 0, 255)
    out = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR)
    if rng.random() < 0.3:  # a softer focus
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.5, 1.5))
    if rng.random() < 0.3:  # sensor noise
        out = np.clip(out + rng.normal(0, rng.uniform(2, 8), out.shape), 0, 255).astype(np.uint8)
    return out


def focal_loss(pred, gt):
    import torch

    pred = pred.clamp(1e-4, 1 - 1e-4)
    pos = gt.eq(1).float()
    neg = 1 - pos
    pos_loss = torch.log(pred) * (1 - pred) ** 2 * pos
    neg_loss = torch.log(1 - pred) * pred ** 2 * (1 - gt) ** 4 * neg
    n = pos.sum()
    return -(pos_loss.sum() + neg_loss.sum()) / n.clamp(min=1)


def gather(feature, idx):
    b, c = feature.shape[:2]
    f = feature.view(b, c, -1).permute(0, 2, 1)
    return f.gather(1, idx.unsqueeze(2).expand(-1, -1, c))


def train(data: Path, epochs: int, out: Path, seed: int = 1, batch: int = 16, lr: float = 3e-3,
          log=print, limit: int | None = None, val_every: int = 5, stop_after: int | None = None) -> dict | None:
    """Train on ``data``'s train split at the model's scale; every ``val_every`` epochs measure on
    its val split (never trained on) and keep the best checkpoint by val mAP@0.5. Resumes from
    ``out/checkpoint.pt`` (same settings) where a run was stopped: the same weights as a run that
    was not (each epoch draws from its own generator). ``stop_after``: stop after that epoch (a
    session's time), checkpoint written, nothing exported; returns None."""
    import torch

    deterministic(seed)
    out.mkdir(parents=True, exist_ok=True)
    items = to_model_scale(load_split(data, "train")[:limit])
    val = to_model_scale(load_split(data, "val")) if val_every else []
    model = build_model()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    per_epoch = math.ceil(len(items) / batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * per_epoch, pct_start=0.1)
    settings = {"data": str(data), "epochs": epochs, "seed": seed, "batch": batch, "lr": lr, "limit": limit}
    ckpt = out / "checkpoint.pt"
    state = resume(ckpt, settings, model, opt, sched, log)
    t0 = time.perf_counter() - state["seconds"]
    for epoch in range(state["epoch"], epochs):
        model.train()
        rng = np.random.default_rng([seed, epoch])  # per epoch: a resumed run draws what it would have
        order = rng.permutation(len(items))
        total = 0.0
        for start in range(0, len(order), batch):
            total += _step(model, opt, sched, [items[j] for j in order[start:start + batch]], rng)
        entry = {"epoch": epoch + 1, "loss": round(total / per_epoch, 4), "seconds": round(time.perf_counter() - t0, 1)}
        if val and ((epoch + 1) % val_every == 0 or epoch + 1 == epochs):
            entry["val"] = measure(model, val)
            if state["best"] is None or entry["val"]["map50"] > state["best"]["val"]["map50"]:
                state["best"] = entry
                torch.save(model.state_dict(), out / "best.pt")
        state["history"].append(entry)
        state["epoch"], state["seconds"] = epoch + 1, time.perf_counter() - t0
        checkpoint(ckpt, settings, model, opt, sched, state)
        log(json.dumps(entry))
        if stop_after is not None and epoch + 1 >= stop_after and epoch + 1 < epochs:
            log(f"stopped after epoch {epoch + 1} of {epochs}: run the same command again to go on")
            return None
    model.eval()
    if state["best"] is not None:
        model.load_state_dict(torch.load(out / "best.pt"))
    save(model, out, (1, 3, INPUT[1], INPUT[0]), ["heatmap", "size", "offset"])
    card = {"recipe": "export.training.smear_detector", "data": Path(data).name, "seed": seed, "epochs": epochs,
            "batch": batch, "lr": lr, "train_images": len(items), "model_rbc_px": MODEL_RBC_PX,
            "scale_jitter": list(SCALE_JITTER), "crop": list(CROP), "seconds": round(time.perf_counter() - t0, 1),
            "chosen_epoch": state["best"]["epoch"] if state["best"] else epochs,
            "val_at_chosen_epoch": state["best"]["val"] if state["best"] else None,
            "weights": int(sum(p.numel() for p in model.parameters()))}
    (out / "training.json").write_text(json.dumps(card, indent=1) + "\n")
    return card


def _step(model, opt, sched, batch_items: list, rng: np.random.Generator) -> float:
    """One optimiser step on augmented crops of ``batch_items``; returns the batch's loss."""
    import torch

    out_w, out_h = CROP[0] // STRIDE, CROP[1] // STRIDE
    xs, hms, whs, offs, idxs, masks = [], [], [], [], [], []
    for _, img, boxes in batch_items:
        a_img, a_boxes = augment(img, boxes, rng)
        xs.append(to_input(a_img))
        hm, wh, off, idx, mask = targets(a_boxes, out_w, out_h)
        hms.append(hm), whs.append(wh), offs.append(off), idxs.append(idx), masks.append(mask)
    x = torch.from_numpy(np.stack(xs))
    p_hm, p_wh, p_off = model(x)
    idx = torch.from_numpy(np.stack(idxs))
    mask = torch.from_numpy(np.stack(masks)).unsqueeze(2)
    l_hm = focal_loss(p_hm, torch.from_numpy(np.stack(hms)))
    n = mask.sum().clamp(min=1)
    l_wh = (torch.abs(gather(p_wh, idx) - torch.from_numpy(np.stack(whs))) * mask).sum() / n
    l_off = (torch.abs(gather(p_off, idx) - torch.from_numpy(np.stack(offs))) * mask).sum() / n
    return step(opt, sched, l_hm + 0.1 * l_wh + l_off)


def to_input(img: np.ndarray) -> np.ndarray:
    """BGR uint8 -> (3, H, W) float32 RGB in [0, 1], as edgehema.smear.learned.preprocess (any size)."""
    return np.ascontiguousarray(img[:, :, ::-1].astype(np.float32).transpose(2, 0, 1) * (1.0 / 255.0))


def measure(model, val: list) -> dict:
    """mAP@0.5 and count agreement on images already at the model's scale (padded to INPUT)."""
    import torch

    from edgehema.smear.detections import Detection, counts
    from edgehema.smear.learned import decode, padded
    from edgehema.smear.voc import average_precision

    model.eval()
    preds, truth, rbc_ok, wbc_ok, plt_ok = {}, {}, 0, 0, 0
    with torch.no_grad():
        for name, img, boxes in val:
            h, w = img.shape[:2]
            hm, wh, off = (t[0].numpy() for t in model(torch.from_numpy(to_input(padded(img))[None])))
            found = [d for d in decode(hm, wh, off, 1.0, 1.0) if d.centre[0] < w and d.centre[1] < h]
            preds[name] = found
            truth[name] = [(Detection(CLASSES[int(c)], x0, y0, x1, y1), False) for c, x0, y0, x1, y1 in boxes]
            got = counts([d for d in found if d.score >= 0.4])
            true = counts([g for g, _ in truth[name]])
            rbc_ok += abs(got["rbc"] - true["rbc"]) <= 0.1 * max(true["rbc"], 1)
            wbc_ok += got["wbc"] == true["wbc"]
            plt_ok += abs(got["plt"] - true["plt"]) <= 1
    model.train()
    aps = {k: round(average_precision(preds, truth, k)[0], 4) for k in CLASSES}
    n = len(val)
    return {"map50": round(float(np.mean(list(aps.values()))), 4), "ap50": aps, "rbc_within_10pct": round(rbc_ok / n, 4),
            "wbc_exact": round(wbc_ok / n, 4), "plt_within_1": round(plt_ok / n, 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[3] / "shared" / "data" / "txl-pbc")
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("build/smear"))
    ap.add_argument("--limit", type=int, help="Train on the first N training images only (a quick check of the recipe).")
    ap.add_argument("--val-every", type=int, default=5, help="Measure on the val split every N epochs (0: never).")
    ap.add_argument("--stop-after", type=int, help="Stop after this epoch (checkpoint kept; the same command goes on).")
    args = ap.parse_args()
    card = train(args.data, args.epochs, args.out, args.seed, limit=args.limit, val_every=args.val_every,
                 stop_after=args.stop_after)
    if card is not None:
        print(json.dumps(card))


if __name__ == "__main__":
    main()
