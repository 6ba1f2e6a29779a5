"""The reference paper's workload: 109 CSV files of 150k events, end to end, against two peers.

edgehema runs twice: the default model (int8 TFLite on LiteRT) and the float reference on
onnxruntime. End to end = read each CSV from disk, validate, preprocess, run the graph, assign both
clustering stages with per-sample adaptation, count cells and flags: ``edgehema classify`` minus
printing. The paper reports 109 files in 60.6 s.

Peers, in the same run, same files, same 2 worker processes:
* the plain pipeline a data scientist would write with the same model: pandas ``read_csv``,
  numpy preprocessing, one onnxruntime call on the whole array, the two stages' cluster posteriors
  in numpy, events counted per class (no per-sample adaptation, no coincidence decomposition: less
  work than edgehema does);
* the same plain pipeline with the graph in PyTorch eager (the model where it was trained, run the
  way its author runs it: one forward pass on the whole array);
* edgehema's own pipeline with the graph executed by PyTorch eager instead of onnxruntime: a
  stricter peer, where only the graph engine differs (reader, adaptation and counting shared).

Then, in one process on a subset of the files, the median time per file of each stage (read,
preprocess, graph, adaptation + assignment, counting) and their shares.

    python benchmarks/bench_classify.py [--files 109] [--events 150000] [--dir /tmp/edgehema-bench] [--warmup 0]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgehema.batch import BatchJob, classify_files  # noqa: E402
from edgehema.model.bundle import Bundle  # noqa: E402
from edgehema.formats import read_sample, write_sample  # noqa: E402
from edgehema.simulator import SPECIES, SampleSimulator  # noqa: E402

from _util import Measured, machine  # noqa: E402

PAPER_SECONDS = 60.6
PAPER_FILES = 109


def make_files(folder: Path, n: int, events: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    species = list(SPECIES)
    paths = []
    for i in range(n):
        p = folder / f"s{i:03d}.csv"
        if not p.exists():
            sim = SampleSimulator(species[i % len(species)], seed=700_000 + i).generate(events)
            write_sample(sim.sample, p)
        paths.append(str(p))
    return paths


class TorchBackend:
    """The bundle's graph in PyTorch eager, weights from the ONNX file (names match the modules)."""

    name = "torch-eager"

    def __init__(self, bundle: Bundle, threads: int = 1):
        import onnx
        import torch
        from onnx import numpy_helper

        from export.event_model.network import IDEC, InferenceGraph, VaDE

        torch.set_num_threads(threads)
        settings = bundle.manifest["training"]["recipe_settings"]
        settings = settings.get("fit", settings)  # edgehema train (model 2.0.0) nests the network's settings
        hidden = tuple(settings["hidden"])
        nf = len(bundle.feature_names)
        graph = InferenceGraph(IDEC(nf, settings["latent1"], hidden, 3), VaDE(nf, settings["latent2"], hidden, 3))
        weights = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy())
                   for i in onnx.load(str(bundle.model_file)).graph.initializer}
        graph.load_state_dict(weights, strict=True)
        self.graph = graph.eval()
        self.torch = torch

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        with self.torch.no_grad():
            z1, err, z2 = self.graph(self.torch.from_numpy(np.ascontiguousarray(x)))
        return {"z1": z1.numpy(), "recon_err": err.numpy(), "z2": z2.numpy()}


_peer: dict = {}


def _peer_one(path: str):
    from edgehema.model.classifier import Classifier
    from edgehema.counts.result import classify_sample

    if "clf" not in _peer:
        clf = Classifier("reference", threads=1)
        clf.backend = TorchBackend(clf.bundle)
        _peer["clf"] = clf
    return classify_sample(read_sample(path), _peer["clf"]).to_dict()


def _peer_init() -> None:
    pass


_plain: dict = {}


class _TorchSession:
    """The plain pipeline's one call, made by PyTorch eager on the whole array instead of onnxruntime."""

    def __init__(self, bundle: Bundle):
        self.backend = TorchBackend(bundle)

    def run(self, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        out = self.backend.run(feeds["x"])
        return [out[k] for k in names]


def _plain_one(path: str, engine: str = "onnxruntime") -> dict:
    """What a data scientist writes around the same model: no blocks, float64 numpy, one graph call
    on the whole array (onnxruntime, or PyTorch eager)."""
    import pandas as pd

    if engine not in _plain:
        bundle = Bundle.load("reference")
        if engine == "onnxruntime":
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 1
            _plain[engine] = ort.InferenceSession(str(bundle.model_file), opts, providers=["CPUExecutionProvider"])
        else:
            _plain[engine] = _TorchSession(bundle)
        m = bundle.manifest
        _plain["m"] = m
        _plain["mean"], _plain["std"] = np.array(m["preprocessing"]["mean"]), np.array(m["preprocessing"]["std"])
    m, sess = _plain["m"], _plain[engine]
    frame = pd.read_csv(path)
    x = (np.log1p(np.maximum(frame[m["features"]].to_numpy(), 0)) - _plain["mean"]) / _plain["std"]
    z1, _err, z2 = sess.run(["z1", "recon_err", "z2"], {"x": x.astype(np.float32)})
    # Stage 1: Student-t soft assignment to the IDEC centroids.
    mu = np.array(m["stage1"]["centroids"])
    q = (1.0 + ((z1[:, None, :] - mu[None]) ** 2).sum(-1) / m["stage1"]["alpha"]) ** (-(m["stage1"]["alpha"] + 1) / 2)
    stage1 = np.array(m["stage1"]["cluster_classes"])[q.argmax(1)]
    # Stage 2: posterior of the VaDE mixture (diagonal Gaussians).
    w, mean, var = (np.array(m["stage2"][k]) for k in ("weights", "means", "variances"))
    logp = np.log(w) - 0.5 * (np.log(2 * np.pi * var).sum(1) + (((z2[:, None, :] - mean) ** 2) / var).sum(-1))
    stage2 = np.array(m["stage2"]["component_classes"])[logp.argmax(1)]
    labels = np.where(stage1 == "rbc_side", stage2, stage1)
    names, counts = np.unique(labels, return_counts=True)
    return dict(zip(names.tolist(), counts.tolist()))


def run_plain(paths: list[str], jobs: int, engine: str = "onnxruntime") -> list[dict]:
    from functools import partial

    from edgehema.batch import single_threaded_workers

    with single_threaded_workers(jobs, _peer_init, ()) as pool:
        return list(pool.map(partial(_plain_one, engine=engine), paths, chunksize=1))


def stage_medians(paths: list[str], model: str | None, backend: str) -> dict[str, float]:
    """Median ms per file of each stage, one process, one thread, the edgehema pipeline taken apart."""
    import statistics

    from edgehema.model.classifier import Classifier
    from edgehema.formats._table import load_fast_parser
    from edgehema.counts.result import result_from_inference

    load_fast_parser()
    clf = Classifier(model, backend=backend, threads=1)
    stages: dict[str, list[float]] = {k: [] for k in ("read", "preprocess", "graph", "adaptation + assignment", "counting")}
    for path in paths:
        t0 = time.perf_counter()
        sample = read_sample(path)
        t1 = time.perf_counter()
        xs = [clf.bundle.preprocess(sample.events[i:i + clf.batch_size]) for i in range(0, sample.n_events, clf.batch_size)]
        t2 = time.perf_counter()
        outs: dict[str, list] = {}
        for x in xs:
            for k, v in clf.backend.run(x).items():
                outs.setdefault(k, []).append(v)
        out = {k: np.concatenate(v) for k, v in outs.items()}
        t3 = time.perf_counter()
        inf = clf.combine(out["z1"], out["z2"], out.get("recon_err"), True)
        t4 = time.perf_counter()
        result_from_inference(sample, inf, clf, t4)
        t5 = time.perf_counter()
        for k, a, b in zip(stages, (t0, t1, t2, t3, t4), (t1, t2, t3, t4, t5)):
            stages[k].append(1000 * (b - a))
    return {k: statistics.median(v) for k, v in stages.items()}


def run_peer(paths: list[str], jobs: int) -> list[dict]:
    # The same worker set-up as edgehema's own (spawned, one BLAS thread each): only the graph differs.
    from edgehema.batch import single_threaded_workers

    with single_threaded_workers(jobs, _peer_init, ()) as pool:
        return list(pool.map(_peer_one, paths, chunksize=1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=109)
    ap.add_argument("--events", type=int, default=150_000)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/edgehema-bench"))
    ap.add_argument("--jobs", type=int, default=min(os.cpu_count() or 1, 2))
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--warmup", type=int, default=1, help="0: no untimed job before the timed ones")
    ap.add_argument("--stage-files", type=int, default=15, help="files timed stage by stage")
    args = ap.parse_args()
    print(f"machine: {machine()} (figures hold only on an otherwise idle machine: compare the ratios)")
    t0 = time.perf_counter()
    paths = make_files(args.dir / f"{args.events}", args.files, args.events)
    print(f"{len(paths)} files x {args.events:,} events ready in {time.perf_counter() - t0:.1f} s ({args.dir})")
    total = len(paths) * args.events
    # A machine idle before the run gave its first timed job 30-40 % more time than the same job
    # later in the run (docs/classifier.md): a short untimed job first, so that every job and every
    # peer is timed on a machine in the same state.
    if args.warmup:
        with Measured() as m:
            list(classify_files(paths[: 4 * args.jobs], BatchJob(None, "auto", True, None, None, None, None), args.jobs))
        print(f"warm-up, untimed: edgehema's default model on {4 * args.jobs} files, {m.wall:.2f} s")
    timings = {}
    runs = {}
    # The default model (int8 on LiteRT) and the float reference (onnxruntime), the same files.
    for label, model, backend in (("default model (int8 TFLite, LiteRT)", None, "auto"),
                                  ("float reference (onnxruntime)", "reference", "onnx")):
        job = BatchJob(model, backend, True, None, None, None, None)
        with Measured() as m:
            runs[label] = [v for _, status, v in classify_files(paths, job, args.jobs) if status == "ok"]
        timings[label] = m.wall
        assert len(runs[label]) == len(paths)
        print(f"edgehema, {label}, {args.jobs} processes: {m}; {total / timings[label] / 1e6:.2f} M events/s, "
              f"{PAPER_SECONDS * len(paths) / PAPER_FILES / timings[label]:.1f}x the paper's rate (60.6 s for 109 files)")
    ours = timings["float reference (onnxruntime)"]
    results = runs["float reference (onnxruntime)"]
    d, f = runs["default model (int8 TFLite, LiteRT)"], results
    worst = max(max(abs(a["cells"][k] / b["cells"][k] - 1) for k in ("rbc", "plt")) for a, b in zip(d, f))
    print(f"default / float time: {timings['default model (int8 TFLite, LiteRT)'] / ours:.2f}; "
          f"largest RBC/PLT count difference default vs float: {100 * worst:.3f} %")
    default_time = timings["default model (int8 TFLite, LiteRT)"]
    if not args.no_peer:
        try:
            import pandas  # noqa: F401

            with Measured() as m:
                plain = run_plain(paths, args.jobs)
            print(f"peer: plain pandas + onnxruntime pipeline, same float model ({args.jobs} processes): {m}; "
                  f"{total / m.wall / 1e6:.2f} M events/s")
            print(f"ratio plain pipeline / edgehema: {m.wall / default_time:.2f}x (default model), "
                  f"{m.wall / ours:.2f}x (float model)")
        except ImportError:
            plain = None
            print("peer skipped: pandas is not installed (pip install -e '.[batch]')")
        try:
            import torch  # noqa: F401
        except ImportError:
            print("PyTorch peers skipped: torch is not installed (pip install -e '.[export]')")
        else:
            if plain is not None:
                with Measured() as m:
                    plain_torch = run_plain(paths, args.jobs, "torch")
                same = sum(a == b for a, b in zip(plain, plain_torch))
                print(f"peer: plain pandas + PyTorch eager pipeline, same float model ({args.jobs} processes): {m}; "
                      f"{total / m.wall / 1e6:.2f} M events/s")
                print(f"ratio plain PyTorch eager pipeline / edgehema: {m.wall / default_time:.2f}x (default model), "
                      f"{m.wall / ours:.2f}x (float model); event counts identical to the plain onnxruntime "
                      f"pipeline's in {same}/{len(paths)} samples")
            with Measured() as m:
                peer = run_peer(paths, args.jobs)
            same = sum(a["cells"] == b["cells"] for a, b in zip(results, peer))
            print(f"peer: edgehema's pipeline, PyTorch eager graph ({args.jobs} processes): {m}; "
                  f"{total / m.wall / 1e6:.2f} M events/s")
            print(f"ratio edgehema's pipeline with a PyTorch eager graph / edgehema: {m.wall / default_time:.2f}x "
                  f"(default model), {m.wall / ours:.2f}x (float model); identical cell counts with the float model "
                  f"in {same}/{len(paths)} samples")
    subset = paths[: args.stage_files]
    for label, model, backend in (("default model", None, "auto"), ("float model", "reference", "onnx")):
        med = stage_medians(subset, model, backend)
        whole = sum(med.values())
        parts = ", ".join(f"{k} {v:.1f} ms ({100 * v / whole:.0f} %)" for k, v in med.items())
        print(f"stages per file, {label}, one process, median of {len(subset)} files: {parts}; total {whole:.1f} ms")


if __name__ == "__main__":
    main()
