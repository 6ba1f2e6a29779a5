"""Training recipe of the smear detector: a small CenterNet-style network on BCCD (workstation, torch).

CenterNet (Zhou et al., "Objects as Points", 2019) finds each cell as the peak of a per-class
heat map and reads its box size and sub-pixel offset at that peak: no anchors and no box NMS, which
suits cells (round, of a few sizes, often touching) and a small int8 network on a CPU.

Network: depthwise-separable backbone (strides 2-16), a light feature pyramid back to stride 4,
three heads (3-class heat map, box width/height, offset), about 0.2 M weights, input 320 x 240 (the
640 x 480 field halved). Loss: CenterNet's focal loss on Gaussian heat maps, L1 on size and offset
at the centres. Augmentation: flips, 180-degree turns, colour jitter (hue, saturation, brightness),
scale 0.8-1.25. Deterministic for a seed on the CPU.

    python -m export.training.smear_detector --data ../shared/data/bccd --epochs 140 --out build/smear
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

from edgehema.smear.detections import SMEAR_CLASSES as CLASSES
from edgehema.smear.learned import INPUT, STRIDE, preprocess
from export.smear_detector.network import build_model


def load_split(root: Path, split: str):
    import cv2

    from edgehema.smear.voc import read_annotation

    out = []
    for i in (root / f"{split}.txt").read_text().split():
        img = cv2.imread(str(root / "JPEGImages" / f"{i}.jpg"))
        boxes = [(CLASSES.index(g.kind), g.x0, g.y0, g.x1, g.y1) for g, _ in read_annotation(root / "Annotations" / f"{i}.xml")]
        out.append((i, img, np.array(boxes, np.float32).reshape(-1, 5)))
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


def augment(img: np.ndarray, boxes: np.ndarray, rng: np.random.Generator):
    """Scale, flips, 180-degree turns and colour jitter; the result is INPUT-sized (BGR) with its
    boxes in INPUT pixels."""
    import cv2

    h, w = img.shape[:2]
    s = rng.uniform(0.8, 1.25) * INPUT[0] / w
    out_w, out_h = INPUT
    # Scale about a random centre, then crop/pad to the input size.
    nw, nh = int(round(w * s)), int(round(h * s))
    scaled = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    ox = int(rng.integers(min(0, out_w - nw), max(0, out_w - nw) + 1))
    oy = int(rng.integers(min(0, out_h - nh), max(0, out_h - nh) + 1))
    canvas = np.full((out_h, out_w, 3), np.median(img.reshape(-1, 3), axis=0), np.uint8)
    sx0, sy0 = max(0, -ox), max(0, -oy)
    dx0, dy0 = max(0, ox), max(0, oy)
    cw, ch = min(nw - sx0, out_w - dx0), min(nh - sy0, out_h - dy0)
    canvas[dy0:dy0 + ch, dx0:dx0 + cw] = scaled[sy0:sy0 + ch, sx0:sx0 + cw]
    b = boxes.copy()
    b[:, 1:] = b[:, 1:] * s
    b[:, [1, 3]] += ox
    b[:, [2, 4]] += oy
    b[:, [1, 3]] = b[:, [1, 3]].clip(0, out_w)
    b[:, [2, 4]] = b[:, [2, 4]].clip(0, out_h)
    keep = ((b[:, 3] - b[:, 1]) > 4) & ((b[:, 4] - b[:, 2]) > 4)
    b = b[keep]
    if rng.random() < 0.5:
        canvas = canvas[:, ::-1]
        b[:, [1, 3]] = out_w - b[:, [3, 1]]
    if rng.random() < 0.5:
        canvas = canvas[::-1]
        b[:, [2, 4]] = out_h - b[:, [4, 2]]
    hsv = cv2.cvtColor(np.ascontiguousarray(canvas), cv2.COLOR_BGR2HSV).astype(np.int16)
    hsv[:, :, 0] = (hsv[:, :, 0] + int(rng.integers(-6, 7))) % 180
    hsv[:, :, 1] = np.clip(hsv[:, :, 1] * rng.uniform(0.75, 1.3), 0, 255)
    hsv[:, :, 2] = np.clip(hsv[:, :, 2] * rng.uniform(0.8, 1.2), 0, 255)
    canvas = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR)
    return canvas, b


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
          log=print, limit: int | None = None) -> dict:
    import cv2
    import torch

    torch.manual_seed(seed)
    torch.set_num_threads(2)
    # Deterministic kernels (oneDNN's weight-gradient reductions included). Two runs in one long
    # process can still differ in the last bits (float sums in MKL/oneDNN depend on memory
    # alignment): the recipe is reproducible run for run, as a command.
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng(seed)
    cv2.setRNGSeed(seed)
    items = load_split(data, "train")[:limit]
    model = build_model()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * math.ceil(len(items) / batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    out_w, out_h = INPUT[0] // STRIDE, INPUT[1] // STRIDE
    t0 = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = rng.permutation(len(items))
        total = 0.0
        for start in range(0, len(order), batch):
            xs, hms, whs, offs, idxs, masks = [], [], [], [], [], []
            for j in order[start:start + batch]:
                _, img, boxes = items[j]
                a_img, a_boxes = augment(img, boxes, rng)
                xs.append(preprocess(a_img)[0])
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
            loss = l_hm + 0.1 * l_wh + l_off
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        if epoch % 10 == 0 or epoch == epochs - 1:
            log(f"epoch {epoch + 1}/{epochs}: loss {total / math.ceil(len(items) / batch):.3f} "
                f"({time.perf_counter() - t0:.0f} s)")
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    torch.save(model.state_dict(), out / "cellnet.pt")
    dummy = torch.zeros(1, 3, INPUT[1], INPUT[0])
    torch.onnx.export(model, dummy, str(out / "model-float.onnx"), input_names=["image"],
                      output_names=["heatmap", "size", "offset"], opset_version=17, dynamo=False)
    card = {"recipe": "export.training.smear_detector", "seed": seed, "epochs": epochs, "batch": batch, "lr": lr,
            "train_images": len(items), "seconds": round(time.perf_counter() - t0, 1),
            "weights": int(sum(p.numel() for p in model.parameters()))}
    (out / "training.json").write_text(json.dumps(card, indent=1) + "\n")
    return card


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "bccd")
    ap.add_argument("--epochs", type=int, default=140)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("build/smear"))
    ap.add_argument("--limit", type=int, help="Train on the first N training images only (a quick check of the recipe).")
    args = ap.parse_args()
    print(json.dumps(train(args.data, args.epochs, args.out, args.seed, limit=args.limit)))


if __name__ == "__main__":
    main()
