"""What a fleet worker does with a batch of inputs: read each one, classify it with the new model (and
the baseline), and return one row per sample and model. Nothing here imports Dask: the same code
runs in a Dask worker, in a test, or in one process.

Each worker process loads a bundle once (inference sessions cannot be pickled or shared) and keeps
it for every batch it is given. A row carries the full result JSON beside the flat columns a
report needs, so nothing of ``edgehema classify``'s result is lost.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import re
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from edgehema.exceptions import EdgehemaError
from edgehema.counts.result import classify_sample
from edgehema.formats import read_sample
from edgehema.formats._table import load_fast_parser
from edgehema.formats.csv_format import sidecar_path
from edgehema.model.classifier import Classifier
from edgehema.sample import SampleInfo
from edgehema.stream.runner import replay_bytes

#: Stream archives (edgehema stream's per-sample frame files); every other input is an event file.
ARCHIVE_SUFFIX = ".ehw"
#: A row's role: the new model's result, the baseline's, or an input no model could read.
ROLES = ("model", "baseline", "input")


@dataclass(frozen=True)
class FleetJob:
    """The models and settings of a re-analysis; the same on every worker."""

    model: str
    baseline: str | None = None
    backend: str = "auto"
    adapt: bool = True


@dataclass(frozen=True)
class InputFile:
    """One archived input: where it is, and what identifies this version of it."""

    url: str
    size: int
    mtime: float

    @property
    def key(self) -> str:
        # A file replaced by another of a different size or time is a new input (analysed again).
        return hashlib.sha256(f"{self.url}\0{self.size}\0{self.mtime:.6f}".encode()).hexdigest()[:24]

    @property
    def is_local(self) -> bool:
        return "://" not in self.url or self.url.startswith("file://")


_classifiers: dict = {}


def classifier(model: str, backend: str, adapt: bool):
    """This process's classifier for a bundle, loaded (hashes, signature, known answer) once."""

    key = (model, backend, adapt)
    if key not in _classifiers:
        if not _classifiers:
            # A worker reads many files: the fast CSV parser's import (0.3 s) pays off (as in batch).

            load_fast_parser(1)
        # One thread per worker: the workers themselves use the cores.
        _classifiers[key] = Classifier(model, backend=backend, adapt=adapt, threads=1)
    return _classifiers[key]


def analyse_batch(inputs: list[InputFile], job: FleetJob) -> list[dict]:
    """Rows for every input of a batch; an input that cannot be analysed gives one error row."""
    rows: list[dict] = []
    for item in inputs:
        rows += analyse_input(item, job)
    return rows


def analyse_input(item: InputFile, job: FleetJob) -> list[dict]:
    """Rows of one input: read once, then classified by each model. An input that cannot be read is
    one row with role ``input``; a model that cannot classify it is one row with that model's role."""
    roles = [("model", job.model)] + ([("baseline", job.baseline)] if job.baseline else [])
    try:
        with local_copy(item) as path:
            loaded = load(path, None if item.is_local else item.url)
    except EdgehemaError as exc:
        return [error_row(item, "input", str(exc))]
    except OSError as exc:
        return [error_row(item, "input", f"{item.url}: cannot read: {exc.strerror or exc}")]
    except Exception as exc:  # noqa: BLE001 - a bug on one file must not cost the other million; it is named as one
        return [error_row(item, "input", f"{item.url}: internal error (a bug, please report it): {type(exc).__name__}: {exc}")]
    rows = []
    for role, model in roles:
        try:
            results = results_of(loaded, classifier(model, job.backend, job.adapt))
        except EdgehemaError as exc:
            rows.append(error_row(item, role, f"{item.url}: {exc}"))
            continue
        except Exception as exc:  # noqa: BLE001 - as above
            rows.append(error_row(item, role, f"{item.url}: internal error (a bug, please report it): {type(exc).__name__}: {exc}"))
            continue
        if not results:
            return [error_row(item, "input", f"{item.url}: no sample in this archive (not an edgehema frame stream?)")]
        for index, (result, info) in enumerate(results):
            rows.append(result_row(item, role, index, result, info))
    return rows


def load(path: Path, source: str | None = None):
    """An archive's bytes, or an event file's sample: what every model of the job then classifies.
    ``source``: the URL a fetched copy came from (the result names it, not the temporary copy)."""
    if path.suffix.lower() == ARCHIVE_SUFFIX:
        return path.read_bytes()

    return read_sample(path, info=SampleInfo(source=source) if source else None)


def results_of(loaded, clf) -> list[tuple[dict, object]]:
    """(result dict, SampleInfo) of every sample, exactly as ``classify`` or ``replay`` make them."""
    if isinstance(loaded, bytes):

        origins: list = []
        results = replay_bytes(loaded, clf, origins=origins)
        return list(zip(results, origins))

    return [(classify_sample(loaded, clf).to_dict(), loaded.info)]


@contextmanager
def local_copy(item: InputFile) -> Iterator[Path]:
    """A local path of the input: itself, or a temporary copy fetched with fsspec (any URL whose
    driver is installed on the worker: s3://, gs://, http://, ...), with its CSV metadata sidecar
    (``NAME.meta.json``) when there is one, as a local file would be read with it."""
    if item.is_local:
        yield Path(item.url[len("file://"):] if item.url.startswith("file://") else item.url)
        return
    import fsspec


    name = Path(item.url.split("?")[0]).name
    with tempfile.TemporaryDirectory(prefix="edgehema-fleet-") as tmp:
        local = Path(tmp) / name
        _fetch(fsspec, item.url, local)
        side = sidecar_path(local).name
        side_url = item.url.split("?")[0].rsplit("/", 1)[0] + "/" + side
        try:
            _fetch(fsspec, side_url, Path(tmp) / side)
        except (FileNotFoundError, OSError):
            pass  # no sidecar: the file says what it says
        yield local


def _fetch(fsspec, url: str, to: Path) -> None:
    with open(to, "wb") as out, fsspec.open(url, "rb") as src:
        while block := src.read(1 << 20):
            out.write(block)


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def partition_value(text: str) -> str:
    """A date or device as a folder name (Hive partitioning): nothing that needs escaping."""
    return _UNSAFE.sub("_", text).strip("._") or "unknown"


def _date_and_device(item: InputFile, info) -> tuple[str, str]:
    started = getattr(info, "started_at", None)
    if started:
        date = str(started)[:10]
    else:  # no acquisition time in the file: the archive file's own time
        date = _dt.datetime.fromtimestamp(item.mtime, _dt.timezone.utc).date().isoformat()
    device = getattr(info, "instrument_id", None)
    if not device:
        # Fleet archives are kept one folder per device: its name is the device when the data do not say.
        parent = Path(item.url.split("?")[0].rstrip("/")).parent.name
        device = parent or "unknown"
    return partition_value(date), partition_value(str(device))


def result_row(item: InputFile, role: str, index: int, result: dict, info) -> dict:
    date, device = _date_and_device(item, info)
    conc = result.get("concentration") or {}
    cells = result.get("cells") or {}
    model = result.get("model") or {}
    return {
        "input_key": item.key, "input": item.url, "input_bytes": item.size, "input_mtime": item.mtime,
        "sample_index": index, "role": role, "error": None, "date": date, "device": device,
        "sample_id": result.get("sample_id"), "species": result.get("species"), "profile": result.get("profile"),
        "complete": result.get("complete"),
        "events_total": (result.get("events") or {}).get("total"),
        "rbc_cells": cells.get("rbc"), "plt_cells": cells.get("plt"), "retic_cells": cells.get("retic"),
        "retic_percent": result.get("retic_percent"),
        "rbc_per_ul": conc.get("rbc_per_uL"), "plt_per_ul": conc.get("plt_per_uL"), "retic_per_ul": conc.get("retic_per_uL"),
        "flags": list(result.get("flags") or []),
        "model_name": model.get("name"), "model_version": model.get("version"), "model_sha256": model.get("sha256"),
        "model_signed_by": model.get("signed_by"), "backend": model.get("backend"),
        "result_json": json.dumps(result, separators=(",", ":"), sort_keys=True),
    }


def error_row(item: InputFile, role: str, message: str) -> dict:
    date, device = _date_and_device(item, None)
    row = {k: None for k in result_row(item, "model", 0, {}, None)}
    row.update({"input_key": item.key, "input": item.url, "input_bytes": item.size, "input_mtime": item.mtime,
                "sample_index": 0, "role": role, "error": " ".join(message.splitlines()), "date": date,
                "device": device, "flags": []})
    return row
