"""CSV parsers side by side on the same event file, in one process: which one edgehema should use.

Candidates: numpy's ``loadtxt`` (the fallback, always there), pandas' C engine and pyarrow.csv (one
and two threads each), polars, edgehema's compiled tokenizer alone (with its AVX2 structural pass
where the CPU has it, and its byte loop alone); and edgehema's own reader
(line check, parse, validation) with each of its three engines. Each parses one 150k-event optical-11 file into a float32 array; the
figure is the median of interleaved rounds (machines here are noisy), with the ratio to numpy.
Also: the installed size of each library (the device's constraint) and edgehema's own reader.

    python benchmarks/bench_csv.py [--events 150000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import machine  # noqa: E402

from edgehema.formats import read_sample, write_sample  # noqa: E402
from edgehema.simulator import SampleSimulator  # noqa: E402


def candidates() -> dict:
    out = {"numpy.loadtxt": lambda p: np.loadtxt(p, delimiter=",", skiprows=1, dtype=np.float32, ndmin=2)}
    try:
        import pandas as pd

        def pandas_read(p, threads):
            try:
                pd.set_option("mode.max_threads", threads)
            except Exception:  # noqa: BLE001 - older pandas: one thread anyway
                pass
            return pd.read_csv(p, dtype=np.float32, engine="c").to_numpy()

        out["pandas C engine, 1 thread"] = lambda p: pandas_read(p, 1)
        out["pandas C engine, 2 threads"] = lambda p: pandas_read(p, 2)
    except ImportError:
        pass
    try:
        import pyarrow as pa
        import pyarrow.csv as pc

        def arrow(p, threads):
            pa.set_cpu_count(threads)
            t = pc.read_csv(p, read_options=pc.ReadOptions(use_threads=threads > 1))
            return np.column_stack([c.to_numpy() for c in t.columns]).astype(np.float32)

        out["pyarrow.csv, 1 thread"] = lambda p: arrow(p, 1)
        out["pyarrow.csv, 2 threads"] = lambda p: arrow(p, 2)
    except ImportError:
        pass
    try:
        import polars as pl

        out["polars"] = lambda p: pl.read_csv(p).to_numpy().astype(np.float32)
    except ImportError:
        pass
    from edgehema.formats import _table

    def ours(p, engine):
        _table.CSV_ENGINE = engine
        _table.load_fast_parser(1)
        return read_sample(p).events

    if _table.native_available():
        def tokenizer(p):
            names, delimiter = _table.read_header(p)
            return _table._parse_native(p, delimiter, len(names), np.dtype(np.float32), "utf-8-sig")

        out["edgehema's compiled tokenizer (parse only)"] = tokenizer
        if getattr(_table._fastcsv, "STRUCTURAL", 0):
            def byte_loop(p):
                _table.STRUCTURAL_PASS = False
                try:
                    return tokenizer(p)
                finally:
                    _table.STRUCTURAL_PASS = True

            out["edgehema's tokenizer, byte loop only (parse only)"] = byte_loop
    out["edgehema read_sample, numpy (check, parse, validate)"] = lambda p: ours(p, "numpy")
    if "pandas C engine, 1 thread" in out:
        out["edgehema read_sample, pandas 1 thread"] = lambda p: ours(p, "pandas")
    if _table.native_available():
        out["edgehema read_sample, compiled tokenizer"] = lambda p: ours(p, "native")
    return out


#: Modules whose compiled part ships in a package of its own.
PARTS = {"polars": ("polars", "_polars_runtime_32", "_polars_runtime_64", "_polars_runtime_compat")}


def installed_mb(module: str) -> float | None:
    total, found = 0, False
    for name in PARTS.get(module, (module,)):
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        found = True
        root = Path(mod.__file__).parent
        total += sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    return total / 1e6 if found else None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=150_000)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.csv"
        write_sample(SampleSimulator("dog", seed=3).generate(args.events).sample, path)
        print(f"one optical-11 file of {args.events:,} events, {path.stat().st_size / 1e6:.1f} MB")
        parsers = candidates()
        reference = parsers["numpy.loadtxt"](path)
        times: dict[str, list[float]] = {k: [] for k in parsers}
        for _ in range(args.rounds):  # interleaved, so that a slow moment hits every parser alike
            for name, fn in parsers.items():
                t0 = time.perf_counter()
                got = fn(path)
                times[name].append(time.perf_counter() - t0)
                assert np.array_equal(np.asarray(got, np.float32), reference), name
        base = statistics.median(times["numpy.loadtxt"])
        print(f"{'parser':<54} {'median ms':>9} {'vs numpy':>9}")
        for name, ts in times.items():
            m = statistics.median(ts)
            print(f"{name:<54} {1000 * m:9.1f} {base / m:8.1f}x")
    print("installed size (site-packages folder of the module):")
    for module in ("numpy", "pandas", "pyarrow", "polars"):
        mb = installed_mb(module)
        print(f"  {module:<8} " + ("not installed" if mb is None else f"{mb:.0f} MB"))
    from edgehema.formats import _table

    if _table.native_available():
        print(f"  edgehema's tokenizer: {Path(_table._fastcsv.__file__).stat().st_size / 1e3:.0f} kB")


if __name__ == "__main__":
    main()
