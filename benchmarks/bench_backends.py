"""Device forms of the reference model side by side: float ONNX, int8 ONNX, int8 TFLite (LiteRT).

Two figures per model and engine, on the same simulated samples, in interleaved rounds (one round
runs every contender once, so a noisy neighbour slows them all alike) and reported as medians with
the ratio against the float model on onnxruntime:

* graph: the neural network alone on one sample's preprocessed events, in the classifier's
  4,096-event batches (what quantization changes);
* sample: ``classify_sample`` end to end on an in-memory sample (preprocess, graph, clustering
  with per-sample adaptation, counting and flags: what the analyzer waits for).

Counts are checked too: every contender's RBC / PLT / retic against the float model's.

    python benchmarks/bench_backends.py [--events 150000] [--rounds 7] [--species human,dog,cat]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgehema.model.classifier import Classifier  # noqa: E402
from edgehema.exceptions import BackendError  # noqa: E402
from edgehema.counts.result import classify_sample  # noqa: E402
from edgehema.simulator import SampleSimulator  # noqa: E402

CONTENDERS = (  # (label, bundle, backend); the first is the peer the others are measured against
    ("float ONNX / onnxruntime", "reference", "onnx"),
    ("int8 ONNX / onnxruntime", "reference-int8", "onnx"),
    ("int8 TFLite / LiteRT", "reference-tflite-int8", "tflite"),
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=150_000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--species", default="human,dog,cat")
    args = ap.parse_args()

    samples = [SampleSimulator(sp, seed=910_000 + i).generate(args.events).sample
               for i, sp in enumerate(args.species.split(","))]
    contenders = []
    for label, bundle, backend in CONTENDERS:
        try:
            contenders.append((label, Classifier(bundle, backend=backend, threads=1)))
        except BackendError as exc:
            print(f"{label}: skipped ({exc})")
    peer = contenders[0][1]
    x = [peer.bundle.preprocess(s.events) for s in samples]

    def graph(clf: Classifier) -> None:
        for xs in x:
            for i in range(0, len(xs), clf.batch_size):
                clf.backend.run(xs[i : i + clf.batch_size])

    def sample(clf: Classifier) -> None:
        for s in samples:
            classify_sample(s, clf)

    times: dict[tuple[str, str], list[float]] = {}
    for fn in (graph, sample):  # warm-up: first calls allocate
        for _, clf in contenders:
            fn(clf)
    for _ in range(args.rounds):
        for what, fn in (("graph", graph), ("sample", sample)):
            for label, clf in contenders:
                t0 = time.perf_counter()
                fn(clf)
                times.setdefault((label, what), []).append(time.perf_counter() - t0)

    n = sum(len(s.events) for s in samples)
    print(f"{len(samples)} samples x {args.events:,} events ({args.species}), {args.rounds} interleaved rounds, "
          "one thread each; medians")
    print(f"{'model / engine':28} {'graph M ev/s':>12} {'vs float':>9} {'sample ms':>10} {'vs float':>9}")
    peer_label = contenders[0][0]
    for label, _ in contenders:
        g = statistics.median(times[(label, "graph")])
        s = statistics.median(times[(label, "sample")])
        g0 = statistics.median(times[(peer_label, "graph")])
        s0 = statistics.median(times[(peer_label, "sample")])
        print(f"{label:28} {n / g / 1e6:12.2f} {g0 / g:8.2f}x {1000 * s / len(samples):10.1f} {s0 / s:8.2f}x")

    print("counts against the float model (largest |delta| over the samples):")
    ref = [classify_sample(s, peer).counts for s in samples]
    for label, clf in contenders[1:]:
        got = [classify_sample(s, clf).counts for s in samples]
        d_rbc = max(abs(g.cells["rbc"] - r.cells["rbc"]) / max(r.cells["rbc"], 1) for g, r in zip(got, ref))
        d_plt = max(abs(g.cells["plt"] - r.cells["plt"]) / max(r.cells["plt"], 1) for g, r in zip(got, ref))
        d_ret = max(abs((g.retic_percent or 0) - (r.retic_percent or 0)) for g, r in zip(got, ref))
        print(f"  {label:28} RBC {100 * d_rbc:.3f} %   PLT {100 * d_plt:.3f} %   retic {d_ret:.4f} points")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
