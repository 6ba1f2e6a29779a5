"""Smear images end to end on one core: JPEG file to counts (read, scale estimate, resample, tile,
detect, count, flags), the shipped int8 detector (TFLite on LiteRT, the default, and ONNX on
onnxruntime) against its float source, the same with the scale given (no estimate), the previous
detector (bccd-int8, no scale stage) and the classical baseline in the same run; and the scale
estimate alone; the white-cell type and red-cell shape classifiers per cell (TFLite and ONNX) and
what each adds per image.

    python benchmarks/bench_smear.py [--images 40] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import machine  # noqa: E402

import cv2  # noqa: E402

from edgehema.smear import count_image  # noqa: E402
from edgehema.smear.scale import estimate  # noqa: E402
from edgehema.smear.learned import MODELS, DEFAULT_MODEL  # noqa: E402

BCCD = Path(__file__).resolve().parents[2] / "shared" / "data" / "bccd"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    try:
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    except (AttributeError, OSError):
        pass
    ids = (BCCD / "val.txt").read_text().split()[: args.images]
    files = [BCCD / "JPEGImages" / f"{i}.jpg" for i in ids]
    engines = {"int8 TFLite (default)": ("model", {}), "int8 ONNX": ("model-onnx", {}),
               "float": (f"model:{MODELS / DEFAULT_MODEL / 'model-float.onnx'}", {}),
               "int8 TFLite, scale given": ("model", {"um_per_px": 0.078}),
               "int8 TFLite, no WBC types": ("model", {"wbc": "none"}),
               "int8 TFLite, no RBC shapes": ("model", {"rbc": "none"}),
               "int8 TFLite, no cell classes": ("model", {"wbc": "none", "rbc": "none"}),
               "previous (bccd-int8)": (f"model:{MODELS / 'bccd-int8' / 'model.tflite'}", {}),
               "classical baseline": ("baseline", {})}
    for e, kw in engines.values():  # warm up: sessions, OpenCV
        count_image(files[0], e, **kw)
    rates: dict[str, list[float]] = {k: [] for k in engines}
    images = [cv2.imread(str(f)) for f in files]
    estimates = []
    for _ in range(args.rounds):
        for name, (e, kw) in engines.items():
            t = time.perf_counter()
            for f in files:
                count_image(f, e, **kw)
            rates[name].append(len(files) / (time.perf_counter() - t))
        t = time.perf_counter()
        for img in images:
            estimate(img)
        estimates.append((time.perf_counter() - t) / len(images))
    print(f"machine: {machine()}; one core; {len(files)} BCCD val images (640 x 480 JPEG), median of {args.rounds} rounds")
    base = statistics.median(rates["float"])
    for name in engines:
        r = statistics.median(rates[name])
        print(f"{name:<20} {r:7.1f} images/s   {1000 / r:6.1f} ms/image   {r / base:4.2f}x float")
    print(f"scale estimate alone: {1000 * statistics.median(estimates):.1f} ms/image")
    with_types, without = (statistics.median(rates[k]) for k in ("int8 TFLite (default)", "int8 TFLite, no WBC types"))
    print(f"white-cell types add {1000 / with_types - 1000 / without:.1f} ms/image (BCCD: about one white cell per image)")
    no_shapes = statistics.median(rates["int8 TFLite, no RBC shapes"])
    print(f"red-cell shapes add {1000 / with_types - 1000 / no_shapes:.1f} ms/image "
          f"(BCCD val: about 15-30 red cells per field)")
    from edgehema.smear import cells

    for task, target in (("wbc_type", 0.010), ("rbc_morphology", 0.001)):
        for name in (cells.default_classifier(task), cells.default_classifier(task, onnx_only=True)):
            c = cells.open_classifier(name, task)
            size = c.folder.input_size[0]
            crops = __import__("numpy").stack([cells.known_answer_cell(size)] * 200)
            c.probabilities(crops[:5])
            per = []
            for _ in range(args.rounds):
                t = time.perf_counter()
                c.probabilities(crops)
                per.append((time.perf_counter() - t) / len(crops))
            print(f"{task} classifier {c.file}: {1000 * statistics.median(per):.2f} ms/cell, "
                  f"{200 * 1000 * statistics.median(per):.0f} ms for a field of 200 cells "
                  f"(target <= {1000 * target:g} ms/cell: {'met' if statistics.median(per) <= target else 'MISSED'})")
    print(f"target >= 20 images/s int8 with the estimate: "
          f"{'met' if statistics.median(rates['int8 TFLite (default)']) >= 20 else 'MISSED'}")


if __name__ == "__main__":
    main()
