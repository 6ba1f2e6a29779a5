"""Classify many files: both cores, one classifier per worker process, results in input order.

A file that cannot be read or classified yields an error line for that file; every other file's
result is still produced (nothing already done is lost).
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from edgehema.model import classes as C
from edgehema.model.classifier import Classifier
from edgehema.exceptions import EdgehemaError
from edgehema.formats import read_sample
from edgehema.formats._table import load_fast_parser
from edgehema.counts.result import classify_sample
from edgehema.sample import SampleInfo
from edgehema.counts import scattergram


@dataclass(frozen=True)
class BatchJob:
    model: str | None
    backend: str
    adapt: bool
    profile: str | None
    info: SampleInfo | None
    events_out: str | None
    threads: int | None
    #: The data set of multi-data-set FCS files (1-based); None: the first that matches the profile.
    dataset: int | None = None
    #: Folder for each sample's scattergram PNG (None: no pictures).
    plots: str | None = None


_worker: dict = {}
#: From this many files on, workers load the fast CSV parser.
MANY_FILES = 4


def _init(job: BatchJob, many_files: bool = True) -> None:
    _worker["clf"] = Classifier(job.model, backend=job.backend, adapt=job.adapt, threads=job.threads)
    _worker["job"] = job
    if many_files:  # the fast CSV parser's import (0.3 s) pays off over several files
        load_fast_parser(job.threads)


def _one(path: str) -> tuple[str, dict | str]:
    job: BatchJob = _worker["job"]
    try:
        sample = read_sample(path, profile=job.profile, info=job.info, dataset=job.dataset)
        result = classify_sample(sample, _worker["clf"], keep_events=job.events_out is not None or job.plots is not None)
        if job.events_out is not None:
            write_events(Path(job.events_out), result.sample_id, result.inference)
        out = result.to_dict()
        if job.plots is not None:

            out["scattergram"] = str(scattergram.write(Path(job.plots), out, sample.events, result.inference.labels,
                                                       sample.profile))
        return "ok", out
    except EdgehemaError as exc:
        return "error", str(exc)


def write_events(folder: Path, sample_id: str, inference) -> Path:
    """Per-event label and class probabilities: ``FOLDER/SAMPLE_ID.events.csv``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{sample_id}.events.csv"
    names = np.array(C.EVENT_CLASSES)[inference.labels]
    probs = inference.probabilities
    header = "event,class," + ",".join(f"p_{c}" for c in C.EVENT_CLASSES) + "\n"
    lines = [f"{i},{n}," + ",".join(f"{v:.5f}" for v in row) for i, (n, row) in enumerate(zip(names.tolist(), probs.tolist()))]
    path.write_text(header + "\n".join(lines) + "\n", encoding="utf-8")
    return path


def classify_files(paths: list[str], job: BatchJob, jobs: int = 0,
                   progress: Callable[[], None] | None = None) -> Iterator[tuple[str, str, dict | str]]:
    """Yield (path, "ok"|"error", result dict or error line) in input order."""
    jobs = jobs or min(len(paths), os.cpu_count() or 1, 2)
    if jobs <= 1 or len(paths) <= 1:
        _init(job, many_files=len(paths) >= MANY_FILES)
        for p in paths:
            status, value = _one(p)
            if progress:
                progress()
            yield p, status, value
        return
    # One ONNX thread per worker: the workers themselves use the cores.
    per_worker = BatchJob(**{**job.__dict__, "threads": 1})
    with single_threaded_workers(jobs, _init, (per_worker, len(paths) >= MANY_FILES * jobs)) as pool:
        for p, (status, value) in zip(paths, pool.map(_one, paths, chunksize=1)):
            if progress:
                progress()
            yield p, status, value


@contextmanager
def single_threaded_workers(jobs: int, initializer, initargs):
    """A process pool whose workers run BLAS and OpenMP on one thread each.

    numpy's BLAS otherwise starts a thread per core in every worker, and two workers on two cores
    then fight over them (measured: 109 files took 15.1 s instead of 9.2 s). The thread count is
    read when numpy loads, so workers are spawned fresh with it in their environment.
    """
    keys = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
    saved = {k: os.environ.get(k) for k in keys}
    # Workers start at the first submit, so the setting stays until the pool is done.
    os.environ.update({k: "1" for k in keys})
    try:
        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=initializer, initargs=initargs) as pool:
            yield pool
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
