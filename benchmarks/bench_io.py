"""Reader and writer speed on a 150k-event sample, each against a peer in the same run.

* CSV read: edgehema.read_sample (header check, profile match, finite/range validation)
  against bare numpy.loadtxt of the same file.
* CSV write: edgehema.write_sample against numpy.savetxt.
* FCS read: edgehema.read_sample against bare flowio.FlowData + as_array.

    python benchmarks/bench_io.py [--events 150000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import flowio
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import median_time  # noqa: E402

from edgehema import read_sample, write_sample  # noqa: E402
from edgehema.simulator import SampleSimulator  # noqa: E402


def row(name: str, ours: float, peer: float, peer_name: str) -> None:
    print(f"{name:<10} edgehema {ours * 1e3:8.1f} ms   {peer_name:<22} {peer * 1e3:8.1f} ms   ratio {ours / peer:5.2f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=150_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    sample = SampleSimulator("cat", seed=7).generate(args.events).sample
    with tempfile.TemporaryDirectory() as tmp:
        csv_path, fcs_path = Path(tmp) / "s.csv", Path(tmp) / "s.fcs"
        write_sample(sample, csv_path)
        write_sample(sample, fcs_path)
        print(f"{args.events:,} events, CSV {csv_path.stat().st_size / 1e6:.1f} MB, FCS {fcs_path.stat().st_size / 1e6:.1f} MB")
        ours = median_time(lambda: read_sample(csv_path), args.repeat)
        peer = median_time(
            lambda: np.loadtxt(csv_path, delimiter=",", skiprows=1, dtype=np.float64, ndmin=2), args.repeat
        )
        row("CSV read", ours, peer, "numpy.loadtxt")
        out = Path(tmp) / "w.csv"
        ours = median_time(lambda: write_sample(sample, out), args.repeat)
        peer = median_time(lambda: np.savetxt(out, sample.events, fmt="%.9g", delimiter=","), args.repeat)
        row("CSV write", ours, peer, "numpy.savetxt")
        ours = median_time(lambda: read_sample(fcs_path), args.repeat)
        peer = median_time(lambda: flowio.FlowData(str(fcs_path)).as_array(preprocess=True), args.repeat)
        row("FCS read", ours, peer, "flowio FlowData")
        ours = median_time(lambda: write_sample(sample, Path(tmp) / "w.fcs"), args.repeat)
        print(f"FCS write  edgehema {ours * 1e3:8.1f} ms   (flowio.create_fcs does the work)")


if __name__ == "__main__":
    main()
