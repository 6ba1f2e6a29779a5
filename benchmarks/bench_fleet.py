"""Fleet re-analysis on Dask: samples/s of ``edgehema reanalyze`` on a local cluster of 1 and 2
workers against single-process ``classify`` (edgehema.batch, one process) on the same files, in the
same run; the scaling; Dask's overhead per task; the memory of each worker.

    python benchmarks/bench_fleet.py [--files 200] [--events 50000] [--model reference-tflite-int8]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import machine  # noqa: E402
from bench_classify import make_files  # noqa: E402

from edgehema.batch import BatchJob, classify_files  # noqa: E402
from edgehema.fleet import FleetJob  # noqa: E402
from edgehema.fleet.run import read_results, reanalyze  # noqa: E402


def noop(x):
    return x


def task_overhead(n: int = 400) -> tuple[float, float]:
    """Seconds per task of a 2-worker local cluster on a task that does nothing (round trip through
    the scheduler), and the cluster's start-up time."""
    from dask.distributed import Client, LocalCluster

    t0 = time.perf_counter()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, Client(cluster) as client:
        start = time.perf_counter() - t0
        client.gather(client.map(noop, range(20)))  # warm
        t = time.perf_counter()
        client.gather([client.submit(noop, i, pure=False) for i in range(n)])
        per_task = (time.perf_counter() - t) / n
    return per_task, start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--events", type=int, default=50_000)
    ap.add_argument("--model", default="reference-tflite-int8")
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "edgehema-bench-fleet")
    args = ap.parse_args()
    files = make_files(args.data / f"{args.events}", args.files, args.events)
    size = sum(Path(f).stat().st_size for f in files)
    print(f"machine: {machine()}")
    print(f"{len(files)} CSV files x {args.events:,} events ({size / 1e6:.0f} MB), model {args.model}")

    # Single process: what one workstation core does with classify.
    job = BatchJob(model=args.model, backend="auto", adapt=True, profile=None, info=None, events_out=None, threads=1)
    t = time.perf_counter()
    single = [v for _, status, v in classify_files(files, job, jobs=1) if status == "ok"]
    single_s = time.perf_counter() - t
    print(f"classify, one process:          {single_s:7.1f} s  {len(files) / single_s:6.1f} samples/s  1.00x")

    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        for workers in (1, 2):
            out = Path(tmp) / f"w{workers}"
            summary = reanalyze(files, FleetJob(args.model), out, workers=workers,
                                log=lambda m: None)
            rates[workers] = len(files) / summary.seconds
            rows = read_results(out).to_pylist()
            # Same counts as classify, sample for sample (the test suite checks the whole result).
            by_source = {r["source"]: r["cells"] for r in single}
            results = [json.loads(r["result_json"]) for r in rows]
            same = sum(r["cells"] == by_source.get(r["source"]) for r in results)
            print(f"reanalyze, {workers} worker(s) (local):  {summary.seconds:7.1f} s  {rates[workers]:6.1f} samples/s  "
                  f"{rates[workers] / (len(files) / single_s):4.2f}x  ({summary.batches} tasks; start-up included; "
                  f"{same}/{len(rows)} identical to classify)")
    print(f"scaling 1 -> 2 workers: {rates[2] / rates[1]:.2f}x (2 cores)")
    per_task, start = task_overhead()
    print(f"Dask overhead: {per_task * 1000:.2f} ms per task round trip (no-op), cluster start {start:.1f} s; "
          f"a sample costs {1000 * single_s / len(files):.0f} ms")
    from dask.distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, Client(cluster) as client:
        client.gather(client.map(_classify_one, files[:4], [args.model] * 4, pure=False))
        rss = client.run(_rss)
    print(f"memory per worker after loading the model and classifying: "
          f"{statistics.median(rss.values()) / 1e6:.0f} MB (median of {len(rss)})")


def _classify_one(path: str, model: str) -> int:
    from edgehema.fleet.work import FleetJob, InputFile, analyse_input

    return len(analyse_input(InputFile(path, 0, 0.0), FleetJob(model)))


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


if __name__ == "__main__":
    main()
