"""Speed of ``edgehema train`` on 2 cores: the whole run (read and check every file, K-fold
cross-validation with each fold's bundle counting its held-out files, final model) on simulated
files of another instrument (optical-b, docs/training.md), next to its parts measured in the same
run: one fit alone, the first pass over the files, and the held-out counting.

    python benchmarks/bench_train.py                      # 100 files x 150,000 events, --folds 5
    python benchmarks/bench_train.py --files 12 --events 20000 --folds 2 --scale tiny   # CI size
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import Measured, machine  # noqa: E402

from export.training import FitSettings, train  # noqa: E402
from export.training.simulated import simulate_instrument  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=100)
    ap.add_argument("--events", type=int, default=150_000)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--scale", choices=("full", "tiny"), default="full")
    args = ap.parse_args()
    print(f"machine: {machine()}")
    settings = FitSettings.tiny() if args.scale == "tiny" else FitSettings()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        t0 = time.perf_counter()
        files, ref, _ = simulate_instrument("optical-b", d / "data", args.files, args.events, seed=1)
        print(f"simulated {args.files} files x {args.events:,} events in {time.perf_counter() - t0:.1f} s")
        phases: dict[str, float] = {}
        last = {"label": None, "t": time.perf_counter()}

        def progress(label: str, step: int, total: int, losses: dict) -> None:
            head = label.split(":")[0]
            now = time.perf_counter()
            if last["label"] is not None:
                phases[last["label"]] = phases.get(last["label"], 0.0) + (now - last["t"])
            last.update(label=head, t=now)

        with Measured() as m:
            result = train([d / "data"], ref, d / "model", folds=args.folds, settings=settings, log=lambda _: None,
                           progress=progress)
        phases[last["label"]] = phases.get(last["label"], 0.0) + (time.perf_counter() - last["t"])
        fits = {k: v for k, v in phases.items() if k}
        final = fits.get("final model", float("nan"))
        fold_time = sum(v for k, v in fits.items() if k.startswith("cross-validation"))
        print(f"edgehema train --folds {args.folds} ({args.scale}): {m.wall:.1f} s wall, {m.cpu:.1f} s CPU "
              f"(load {m.load_before[0]:.2f} -> {m.load_after[0]:.2f}); {args.files / m.wall:.3f} samples/s over the whole run")
        print(f"  final fit alone {final:.1f} s; {args.folds} fold fits + held-out counting {fold_time:.1f} s "
              f"({fold_time / max(final, 1e-9):.2f}x the final fit); the rest (reading and checking every file, "
              f"writing bundles) {m.wall - final - fold_time:.1f} s")
        budget = 30 * 60
        print(f"  budget for 100 files x 150k, --folds 5: {budget} s; this run used {m.wall / budget:.1%} of it"
              + ("" if (args.files, args.events, args.folds) == (100, 150_000, 5) else " (at another size)"))
        s = result.crossval
        if s:
            print("  cross-validated p95: " + ", ".join(
                f"{k} {s[k]['p95_abs']:.2f}" for k in ("rbc_err_pct", "plt_err_pct", "retic_err_pt") if s.get(k, {}).get("n")))


if __name__ == "__main__":
    main()
