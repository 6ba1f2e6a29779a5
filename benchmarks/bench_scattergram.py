"""Scattergram rendering: edgehema's numpy + OpenCV renderer against matplotlib, side by side.

One 150k-event sample (simulated, per-event classes from the simulator's truth), the same three
views, events coloured by class on a log density scale, written as PNG. The figure is the median of
interleaved rounds on one core (machines here are noisy), with the ratio to matplotlib (Agg, the
plain way a data scientist would draw it: ``hist2d`` per class). The stream's budget is 30 ms.

    python benchmarks/bench_scattergram.py [--events 150000] [--rounds 9]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import machine  # noqa: E402

from edgehema.counts import scattergram  # noqa: E402
from edgehema.simulator import SampleSimulator  # noqa: E402


def matplotlib_peer(events, labels, profile):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    names = [f.name for f in profile.features]
    fig, axes = plt.subplots(1, 3, figsize=(9.8, 3.6), dpi=100)
    cmaps = ["Greys", "Reds", "Purples", "Oranges", "Blues"]
    for ax, view in zip(axes, scattergram.VIEWS):
        x = events[:, names.index(view.x[0])]
        y = events[:, names.index(view.y[0])]
        for k, cmap in enumerate(cmaps):
            sel = labels == k
            if sel.any():
                ax.hist2d(np.log10(np.maximum(x[sel], 1)), np.log10(np.maximum(y[sel], 1)), bins=256,
                          cmap=cmap, norm=LogNorm(), cmin=1)
        ax.set_xlabel(view.x[0])
        ax.set_ylabel(view.y[0])
        ax.set_title(view.title, fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=150_000)
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args()
    try:
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core, as on the device
    except (AttributeError, OSError):
        pass
    sim = SampleSimulator("cat", seed=5).generate(args.events)
    events, labels, profile = sim.sample.events, sim.labels, sim.sample.profile
    peers = {"edgehema (numpy + OpenCV)": lambda: scattergram.render(events, labels, profile, "cat-5"),
             "matplotlib hist2d (Agg)": lambda: matplotlib_peer(events, labels, profile)}
    times: dict[str, list[float]] = {k: [] for k in peers}
    sizes = {}
    for name, fn in peers.items():  # warm up: imports, font caches
        sizes[name] = len(fn())
    for _ in range(args.rounds):
        for name, fn in peers.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    print(f"machine: {machine()}; one core; {args.events:,} events, 3 views, median of {args.rounds} rounds")
    base = statistics.median(times["matplotlib hist2d (Agg)"])
    for name in peers:
        med = statistics.median(times[name])
        print(f"{name:<28} {1000 * med:8.1f} ms   PNG {sizes[name] / 1000:6.1f} kB   {base / med:5.1f}x matplotlib")
    ours = 1000 * statistics.median(times["edgehema (numpy + OpenCV)"])
    print(f"stream budget 30 ms: {'met' if ours <= 30 else 'MISSED'} ({ours:.1f} ms)")


if __name__ == "__main__":
    main()
