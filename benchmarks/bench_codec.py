"""COBS decoders side by side on the emulator's own wire stream, in one process: the cobs C
extension, edgehema's block walk (what runs where the extension is missing, as on aarch64 without
a compiler) and cobs' own pure-Python fallback. Medians of interleaved rounds, ms per MB and ratios.

    python benchmarks/bench_codec.py [--events 60000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import machine  # noqa: E402

from edgehema.simulator.emulator import InstrumentEmulator  # noqa: E402
from firmware_bridge import codec  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=60_000)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    print(f"machine: {machine()}")
    emu = InstrumentEmulator("human", samples=2, events=args.events, seed=1)
    data = b"".join(c.data for c in emu.chunks())
    frames = [f for f in data.split(b"\x00") if f]
    mb = len(data) / 1e6
    from cobs.cobs import _cobs_py

    decoders = {"cobs C extension": codec._cobs_decode_c, "block walk (edgehema, no C extension)": codec.cobs_decode_walk,
                "cobs pure Python fallback": _cobs_py.decode}
    for f in frames[:50]:
        assert len({d(f) for d in decoders.values()}) == 1
    times: dict[str, list[float]] = {k: [] for k in decoders}
    for _ in range(args.rounds):
        for name, decode in decoders.items():
            t0 = time.perf_counter()
            for f in frames:
                decode(f)
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["cobs C extension"])
    print(f"{len(frames)} frames, {mb:.2f} MB of wire stream (two samples of {args.events:,} events)")
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"{name:<40} {1000 * m / mb:8.2f} ms/MB  {m / base:6.1f}x the C extension's time")
    name, speed = codec.decode_speed(0.5)
    print(f"in use here: {name}, {speed:,.0f} MB/s on random frames with 10 % zero bytes")


if __name__ == "__main__":
    main()
