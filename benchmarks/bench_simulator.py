"""Simulator throughput (target: >= 1M events/s), per species, against a peer in the same run.

Peer: numpy drawing 11 independent normal features per event, the cheapest "simulator" there is
(blobs, no physics). The ratio says what the physics (arrivals, coincidences, Mie lookups, pulse
merging, noise, trigger) costs on top of drawing the random numbers.

    python benchmarks/bench_simulator.py [--events 1000000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import median_time  # noqa: E402

from edgehema.simulator import SPECIES, SampleSimulator  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    n = args.events
    rng = np.random.default_rng(0)
    peer = median_time(lambda: rng.standard_normal((n, 11), dtype=np.float32), args.repeat)
    print(f"peer: numpy normal blobs, {n:,} x 11 float32: {peer * 1e3:.0f} ms ({n / peer / 1e6:.1f} M events/s)")
    print(f"{'species':<8} {'median s':>9} {'M events/s':>11} {'x peer time':>12}")
    rates = []
    for species in SPECIES:
        sim = SampleSimulator(species, seed=1)
        t = median_time(lambda: sim.generate(n), args.repeat)
        rates.append(n / t)
        print(f"{species:<8} {t:9.3f} {n / t / 1e6:11.2f} {t / peer:12.1f}")
    print(f"slowest species: {min(rates) / 1e6:.2f} M events/s (target >= 1.0)")


if __name__ == "__main__":
    main()
