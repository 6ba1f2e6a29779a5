"""The driver of a fleet re-analysis: expand the inputs, skip those already done, hand batches to a
Dask distributed cluster, and write each finished batch to a Parquet dataset as it arrives.

The output folder is a Hive-partitioned Parquet dataset (``date=YYYY-MM-DD/device=NAME/part-*.parquet``)
plus two bookkeeping entries that readers ignore (their names start with ``_``):

* ``_run.json``: the models (manifest digests) and settings the results belong to; a re-run with
  other models into the same folder is refused, so a dataset never mixes two analyses;
* ``_done/TASK.json``: written after every Parquet part of a batch is in place (each written to a
  temporary name and renamed). A batch counts as done only with its marker: a re-run after a crash
  deletes parts without one and analyses their inputs again, so nothing is lost or counted twice.

A worker lost mid-batch (killed, out of memory) costs only the batch, which Dask runs again on
another worker; results are written by the driver alone, once per batch.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
from contextlib import contextmanager
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from edgehema.exceptions import EdgehemaError
from edgehema.fleet.work import FleetJob, InputFile, analyse_batch
from edgehema.formats import csv_format, fcs_format
from edgehema.model.bundle import Bundle

RUN_FILE = "_run.json"
DONE_DIR = "_done"
#: Batches per worker in flight: enough to keep every worker busy while results are written.
IN_FLIGHT_PER_WORKER = 3


#: Columns given by the folder names (Hive partitioning), not stored in the files.
PARTITIONS = ("date", "device")


def file_schema():
    """The columns stored in each Parquet part."""
    import pyarrow as pa

    return pa.schema([f for f in schema() if f.name not in PARTITIONS])


def schema():
    """Every column of the dataset, the partition columns included."""
    import pyarrow as pa

    return pa.schema([
        ("input_key", pa.string()), ("input", pa.string()), ("input_bytes", pa.int64()), ("input_mtime", pa.float64()),
        ("sample_index", pa.int32()), ("role", pa.string()), ("error", pa.string()),
        ("date", pa.string()), ("device", pa.string()),
        ("sample_id", pa.string()), ("species", pa.string()), ("profile", pa.string()), ("complete", pa.bool_()),
        ("events_total", pa.int64()), ("rbc_cells", pa.int64()), ("plt_cells", pa.int64()), ("retic_cells", pa.int64()),
        ("retic_percent", pa.float64()), ("rbc_per_ul", pa.float64()), ("plt_per_ul", pa.float64()),
        ("retic_per_ul", pa.float64()), ("flags", pa.list_(pa.string())),
        ("model_name", pa.string()), ("model_version", pa.string()), ("model_sha256", pa.string()),
        ("model_signed_by", pa.string()), ("backend", pa.string()), ("result_json", pa.string()),
    ])


# ---------------------------------------------------------------- inputs
def expand_inputs(patterns: list[str]) -> list[InputFile]:
    """Files named by paths, folders (every file inside, recursively), globs or fsspec URLs; sorted,
    each once. A pattern that matches nothing is an error (a typo must not look like an empty archive)."""
    found: dict[str, InputFile] = {}
    for pattern in patterns:
        matched = _expand_local(pattern) if "://" not in pattern or pattern.startswith("file://") else _expand_url(pattern)
        if not matched:
            raise EdgehemaError(f"{pattern}: matches no file")
        for item in matched:
            found.setdefault(item.url, item)
    return [found[k] for k in sorted(found)]


def _expand_local(pattern: str) -> list[InputFile]:
    pattern = pattern[len("file://"):] if pattern.startswith("file://") else pattern
    p = Path(pattern)
    if p.is_dir():
        paths = sorted(f for f in p.rglob("*") if f.is_file() and _is_input(f.name))
    elif any(c in pattern for c in "*?["):
        paths = sorted(Path(f) for f in glob.glob(pattern, recursive=True) if Path(f).is_file())
    elif p.is_file():
        paths = [p]
    else:
        return []
    out = []
    for f in paths:
        st = f.stat()
        out.append(InputFile(str(f.resolve()), st.st_size, st.st_mtime))
    return out


def _is_input(name: str) -> bool:
    """In a folder, the files that are samples: event files and stream archives (not the sidecars,
    truth files and notes kept beside them)."""
    from edgehema.fleet.work import ARCHIVE_SUFFIX

    suffix = Path(name).suffix.lower()
    return not name.startswith(".") and suffix in (*csv_format.EXTENSIONS, *fcs_format.EXTENSIONS, ARCHIVE_SUFFIX)


def _expand_url(pattern: str) -> list[InputFile]:
    import fsspec

    try:
        fs, _, paths = fsspec.get_fs_token_paths(pattern)
    except (ImportError, ValueError) as exc:
        raise EdgehemaError(f"{pattern}: cannot open this URL here ({exc}); install its fsspec driver") from None
    out = []
    protocol = pattern.split("://", 1)[0]
    for path in paths:
        info = fs.info(path)
        if info.get("type") == "directory":
            for sub in fs.find(path):
                if _is_input(sub.rsplit("/", 1)[-1]):
                    out.append(_remote(fs, protocol, sub))
        else:
            out.append(_remote(fs, protocol, path, info))
    return out


def _remote(fs, protocol: str, path: str, info: dict | None = None) -> InputFile:
    info = info or fs.info(path)
    mtime = info.get("mtime") or info.get("LastModified") or info.get("created") or 0
    if hasattr(mtime, "timestamp"):
        mtime = mtime.timestamp()
    url = path if "://" in path else f"{protocol}://{path}"
    return InputFile(url, int(info.get("size") or 0), float(mtime))


# ---------------------------------------------------------------- output
@dataclass
class Summary:
    inputs: int = 0
    skipped: int = 0
    analysed: int = 0
    failed_inputs: int = 0
    rows: int = 0
    batches: int = 0
    lost_batches: list[str] = field(default_factory=list)
    seconds: float = 0.0
    dashboard: str | None = None
    workers: int = 0


class ResultStore:
    """The Parquet dataset of one re-analysis, written batch by batch, resumable."""

    def __init__(self, folder: Path, identity: dict):
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise EdgehemaError(f"{self.folder}: the results are a folder (a Parquet dataset), and this is a file")
        self.folder.mkdir(parents=True, exist_ok=True)
        run = self.folder / RUN_FILE
        if run.is_file():
            try:
                before = json.loads(run.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise EdgehemaError(f"{run}: unreadable ({exc}); not an edgehema reanalyze folder?") from None
            if before.get("identity") != identity:
                raise EdgehemaError(f"{self.folder}: holds results of another analysis (model {_short(before.get('identity'))}, "
                                    f"this one {_short(identity)}); choose another --out")
        elif any(self.folder.iterdir()):
            raise EdgehemaError(f"{self.folder}: not empty and not an edgehema reanalyze folder; choose another --out")
        else:
            _atomic_write(run, json.dumps({"identity": identity, "created": time.time()}, indent=1))
        (self.folder / DONE_DIR).mkdir(exist_ok=True)
        self.done_keys, done_tasks = self._done()
        # Parts of a batch whose marker never came (the driver died between them): analysed again.
        for part in self.folder.glob("date=*/device=*/part-*.parquet"):
            if part.name.split("-")[1] not in done_tasks:
                part.unlink()
        for tmp in self.folder.rglob("*.tmp"):
            tmp.unlink()

    def _done(self) -> tuple[set[str], set[str]]:
        keys: set[str] = set()
        tasks: set[str] = set()
        for marker in (self.folder / DONE_DIR).glob("*.json"):
            try:
                keys.update(json.loads(marker.read_text(encoding="utf-8"))["inputs"])
                tasks.add(marker.stem)
            except (OSError, ValueError, KeyError):
                marker.unlink()  # a marker cut short by a crash: its batch is not done
        return keys, tasks

    def write(self, task: str, keys: list[str], rows: list[dict]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        groups: dict[tuple[str, str], list[dict]] = {}
        for row in rows:
            groups.setdefault((row["date"], row["device"]), []).append(row)
        for n, ((date, device), group) in enumerate(sorted(groups.items())):
            folder = self.folder / f"date={date}" / f"device={device}"
            folder.mkdir(parents=True, exist_ok=True)
            table = pa.Table.from_pylist(group, schema=file_schema())
            final = folder / f"part-{task}-{n}.parquet"
            tmp = final.with_suffix(".tmp")
            pq.write_table(table, tmp)
            os.replace(tmp, final)
        _atomic_write(self.folder / DONE_DIR / f"{task}.json", json.dumps({"inputs": keys, "rows": len(rows)}))
        self.done_keys.update(keys)


def _short(identity) -> str:
    if not isinstance(identity, dict):
        return "?"
    return ", ".join(f"{k} {str(v)[:12]}" for k, v in identity.items() if k in ("model", "baseline") and v)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def identity_of(job: FleetJob) -> dict:
    """What the results depend on: each model's manifest digest (its identity, covering every file) and
    the settings; paths do not matter."""

    out = {"model": Bundle.load(job.model).sha256, "baseline": Bundle.load(job.baseline).sha256 if job.baseline else None,
           "backend": job.backend, "adapt": job.adapt}
    return out


def batches_of(items: list[InputFile], size: int) -> list[tuple[str, list[InputFile]]]:
    """Batches with a stable name (the hash of their inputs' keys): a re-run names a batch as before."""
    out = []
    for start in range(0, len(items), size):
        chunk = items[start:start + size]
        name = hashlib.sha256("\n".join(i.key for i in chunk).encode()).hexdigest()[:16]
        out.append((name, chunk))
    return out


# ----------------------------------------------------------------- run
def reanalyze(patterns: list[str], job: FleetJob, out: Path, cluster: str | None = None, workers: int = 2,
              batch_size: int | None = None, progress: Callable[[int, int], None] | None = None,
              log: Callable[[str], None] = lambda s: None) -> Summary:
    """Re-analyse every input with ``job``'s models on a Dask cluster; results in the dataset ``out``."""
    try:
        from dask.distributed import Client, LocalCluster, as_completed
    except ImportError as exc:
        raise EdgehemaError(f"edgehema reanalyze needs the fleet extra: pip install 'edgehema[fleet]' ({exc})") from None

    t0 = time.perf_counter()
    # The models are checked here first (hashes, signatures): a wrong model is one line, not a
    # failure on every worker.
    identity = identity_of(job)
    inputs = expand_inputs(patterns)
    store = ResultStore(out, identity)
    todo = [i for i in inputs if i.key not in store.done_keys]
    summary = Summary(inputs=len(inputs), skipped=len(inputs) - len(todo))
    if todo:
        with _dask_client(cluster, workers, Client, LocalCluster) as client:
            summary.dashboard = client.dashboard_link
            log(f"Dask dashboard: {summary.dashboard}")
            _run_batches(client, as_completed(), todo, job, store, summary, batch_size, workers, progress, log)
    summary.seconds = time.perf_counter() - t0
    return summary


@contextmanager
def _dask_client(cluster: str | None, workers: int, Client, LocalCluster):
    """A client of the scheduler at ``cluster``, or of a local cluster of ``workers`` processes
    started for this run (and closed after it, the environment as it was)."""
    local = None
    saved = {k: os.environ.get(k) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    try:
        if cluster:
            try:
                client = Client(cluster, timeout="20s")
            except (OSError, TimeoutError) as exc:
                raise EdgehemaError(f"{cluster}: cannot reach the Dask scheduler: {exc}") from None
        else:
            # Worker processes inherit one BLAS/OpenMP thread each: the workers use the cores.
            os.environ.update({k: "1" for k in saved})
            import dask

            # Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536, which hands memory back
            # to the OS so eagerly that a sample's large temporary arrays are mapped afresh each
            # time: classification ran 1.7x slower (measured, docs/fleet.md). The default stays.
            with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
                try:
                    local = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                                         silence_logs=logging.ERROR)
                except (RuntimeError, OSError, TimeoutError) as exc:  # a worker process that cannot start
                    cause = exc.__cause__ or exc
                    raise EdgehemaError(f"cannot start a local Dask cluster of {workers} worker(s): "
                                        f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}") from None
            client = Client(local)
        with client:
            yield client
    finally:
        if local is not None:
            local.close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _run_batches(client, futures, todo: list, job: FleetJob, store: ResultStore, summary: Summary,
                 batch_size: int | None, workers: int, progress, log) -> None:
    """Submit the inputs in batches, a few in flight per worker; write each batch's rows as it
    comes back. A batch lost to the cluster is counted and analysed again by the next run."""
    n_workers = max(1, len(client.scheduler_info().get("workers", {})) or workers)
    summary.workers = n_workers
    size = batch_size or max(1, min(16, -(-len(todo) // (n_workers * 4))))
    pending = batches_of(todo, size)
    summary.batches = len(pending)
    names = {}

    def submit_next() -> None:
        name, chunk = pending.pop(0)
        # pure=False: a batch is run again if its worker is lost, never served from a cache.
        fut = client.submit(analyse_batch, chunk, job, key=f"edgehema-batch-{name}", pure=False, retries=0)
        names[fut.key] = (name, chunk)
        futures.add(fut)

    for _ in range(min(len(pending), n_workers * IN_FLIGHT_PER_WORKER)):
        submit_next()
    finished = 0
    for fut in futures:
        name, chunk = names.pop(fut.key)
        try:
            rows = fut.result()
        except Exception as exc:  # noqa: BLE001 - a batch lost to the cluster (KilledWorker...): retried next run
            summary.lost_batches.append(f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}")
            log(f"batch {name} ({len(chunk)} inputs) lost: {type(exc).__name__}; a re-run analyses it again")
        else:
            store.write(name, [i.key for i in chunk], rows)
            summary.rows += len(rows)
            summary.analysed += len(chunk)
            summary.failed_inputs += len({r["input_key"] for r in rows if r["error"]})
        finished += len(chunk)
        if progress:
            progress(finished, len(todo))
        fut.release()
        if pending:
            submit_next()


def read_results(out: Path):
    """The dataset as a pyarrow Table (every part; bookkeeping entries ignored)."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    folder = Path(out)
    if not (folder / RUN_FILE).is_file():
        raise EdgehemaError(f"{folder}: not an edgehema reanalyze folder ({RUN_FILE} missing)")
    parts = ds.partitioning(pa.schema([(p, pa.string()) for p in PARTITIONS]), flavor="hive")
    dataset = ds.dataset(str(folder), format="parquet", partitioning=parts, schema=schema())
    table = dataset.to_table()
    return table.sort_by([("input", "ascending"), ("sample_index", "ascending"), ("role", "ascending")])
