"""The training data: event files found on disk, checked once, then read in bags.

Thousands of files do not fit in memory, so every file is read once at the start (to check it,
to learn the preprocessing statistics and to find its acquisition time) and afterwards only an
evenly spaced subset of each sample's events is kept, in a cache bounded in megabytes; a sample
pushed out of the cache is read again from disk when a bag needs it.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from edgehema.exceptions import EdgehemaError
from edgehema.formats import read_sample
from edgehema.profiles import Profile, get_profile
from edgehema.counts.result import elapsed_seconds
from edgehema.sample import Sample

from .reference import ReferenceRow, ReferenceTable

#: A file with fewer events than this teaches nothing reliable about proportions.
MIN_EVENTS = 1000
EVENT_SUFFIXES = (".csv", ".fcs", ".lmd")


def sample_stem(path: Path) -> str:
    """The sample name of an event file: 'A12.116.csv' -> 'A12', 'S1.fcs' -> 'S1'."""
    name = path.name
    for suffix in (".116.csv", ".csv", ".fcs", ".lmd"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _is_part(path: Path) -> bool:
    """Roll-over parts of a Sysmex export (NAME.116(1).csv): read with their first part."""
    return ".116(" in path.name


def discover(paths: Iterable[str | os.PathLike], exclude: Iterable[Path] = ()) -> tuple[list[Path], list[str]]:
    """Event files named or found (recursively) in folders; problems for names that do not exist."""
    skip = {Path(p).resolve() for p in exclude}
    found: list[Path] = []
    problems: list[str] = []
    for p in map(Path, paths):
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if (f.is_file() and f.name.lower().endswith(EVENT_SUFFIXES) and not _is_part(f)
                        and not f.name.lower().endswith((".events.csv", ".labels.csv")) and f.resolve() not in skip):
                    found.append(f)
        elif p.is_file():
            found.append(p)
        else:
            problems.append(f"{p}: no such file or folder")
    seen: set[Path] = set()
    unique = []
    for f in found:
        if f.resolve() not in seen:
            seen.add(f.resolve())
            unique.append(f)
    return unique, problems


@dataclass
class TrainingFile:
    path: Path
    stem: str
    sample_id: str  # as the file says (or the stem)
    n_events: int
    elapsed_s: float | None
    species: str | None
    dilution: float | None
    volume_ul: float | None
    profile: Profile | None = None
    reference: ReferenceRow | None = None

    @property
    def supervised(self) -> bool:
        return self.reference is not None and bool(self.reference.given())


@dataclass
class Scan:
    """What the first pass over the data found."""

    files: list[TrainingFile]
    profile: Profile
    log_mean: np.ndarray  # mean and sd of log1p(features) over every event of every file
    log_std: np.ndarray
    problems: list[str] = field(default_factory=list)  # stop: nothing is trained
    notices: list[str] = field(default_factory=list)  # go on, but the user should know


class EventStore:
    """Per-sample event subsets for training, in an LRU cache of at most ``cache_mb`` megabytes."""

    def __init__(self, files: list[TrainingFile], profile: Profile, events_per_sample: int, cache_mb: float = 1024.0):
        self.files = files
        self.profile = profile
        self.events_per_sample = events_per_sample
        self.budget = int(cache_mb * 1e6)
        self._cache: OrderedDict[Path, np.ndarray] = OrderedDict()
        self._bytes = 0
        self.reads = 0

    def subset(self, events: np.ndarray) -> np.ndarray:
        step = max(1, len(events) // self.events_per_sample)
        return np.ascontiguousarray(events[::step][: self.events_per_sample], dtype=np.float32)

    def put(self, key: Path, events: np.ndarray) -> None:
        if key in self._cache:
            return
        self._cache[key] = events
        self._bytes += events.nbytes
        while self._bytes > self.budget and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._bytes -= old.nbytes

    def events(self, i: int) -> np.ndarray:
        """Raw events (the kept subset) of sample ``i``."""
        key = self.files[i].path
        got = self._cache.get(key)
        if got is not None:
            self._cache.move_to_end(key)
            return got
        sample = read_sample(key, profile=self.profile)
        self.reads += 1
        ev = self.subset(sample.events)
        self.put(key, ev)
        return ev

    @property
    def cached_mb(self) -> float:
        return self._bytes / 1e6


def scan(
    paths: list[Path],
    reference: ReferenceTable | None,
    profile: str | Profile | None,
    store_events: int,
    cache_mb: float,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Scan, EventStore]:
    """Read every file once: check it, gather statistics, match it with its reference row."""
    problems: list[str] = []
    notices: list[str] = []
    wanted = get_profile(profile) if profile is not None else None
    samples: list[TrainingFile] = []
    profiles: list[str] = []
    s1 = s2 = None
    n_total = 0
    store = EventStore([], wanted or get_profile(None), store_events, cache_mb)
    for k, path in enumerate(paths):
        if progress:
            progress(k, len(paths))
        try:
            sample: Sample = read_sample(path, profile=wanted)
        except EdgehemaError as exc:
            problems.append(str(exc))
            continue
        if sample.n_events < MIN_EVENTS:
            problems.append(f"{path}: {sample.n_events} events; training needs at least {MIN_EVENTS:,} per sample")
            continue
        lx = np.log1p(np.maximum(sample.events.astype(np.float64), 0.0))
        s1 = lx.sum(0) if s1 is None or s1.shape != lx.shape[1:] else s1 + lx.sum(0)
        s2 = (lx * lx).sum(0) if s2 is None or s2.shape != lx.shape[1:] else s2 + (lx * lx).sum(0)
        n_total += len(lx)
        profiles.append(sample.profile.name)
        store.put(path, store.subset(sample.events))
        samples.append(TrainingFile(
            path=path, stem=sample_stem(path), sample_id=sample.info.sample_id or sample_stem(path),
            n_events=sample.n_events, elapsed_s=elapsed_seconds(sample), species=sample.info.species,
            dilution=sample.info.dilution, volume_ul=sample.info.volume_ul, profile=sample.profile,
        ))
    if progress:
        progress(len(paths), len(paths))
    if not samples and not problems:
        problems.append("no event files found in the data given")
    chosen = wanted
    if samples:
        names, counts = np.unique(profiles, return_counts=True)
        majority = str(names[counts.argmax()])
        if chosen is None:
            chosen = next(f.profile for f in samples if f.profile.name == majority)
        keep = []
        for f in samples:
            if f.profile.name != chosen.name:
                problems.append(f"{f.path}: profile {f.profile.name}, the other files are {chosen.name}: "
                                f"remove it, or give --profile")
            else:
                keep.append(f)
        samples = keep
    if reference is not None and samples:
        _match(samples, reference, problems, notices)
    if reference is not None and samples and not any(f.supervised for f in samples):
        problems.append("no sample has a reference value (rbc, plt or retic_percent): nothing to learn the classes from")
    mean = s1 / max(n_total, 1) if s1 is not None else np.zeros(0)
    std = np.sqrt(np.maximum(s2 / max(n_total, 1) - mean**2, 0.0)) if s2 is not None else np.zeros(0)
    result = Scan(samples, chosen or get_profile(None), mean, np.maximum(std, 1e-3), problems, notices)
    store.files, store.profile = samples, result.profile
    return result, store


def _match(files: list[TrainingFile], reference: ReferenceTable, problems: list[str], notices: list[str]) -> None:
    by_stem: dict[str, list[int]] = {}
    by_id: dict[str, list[int]] = {}
    by_path: dict[str, int] = {}
    for i, f in enumerate(files):
        by_stem.setdefault(f.stem, []).append(i)
        by_id.setdefault(f.sample_id, []).append(i)
        by_path[f.path.name] = i
        by_path[str(f.path)] = i
        by_path[str(f.path.resolve())] = i
    claimed: dict[int, ReferenceRow] = {}
    for row in reference.rows:
        if row.by == "file":
            i = by_path.get(row.key, by_path.get(Path(row.key).name))
            hits = [] if i is None else [i]
        else:
            hits = by_stem.get(row.key) or by_id.get(row.key) or []
        if not hits:
            notices.append(f"{reference.path}: line {row.line}: {row.by} {row.key!r} names no event file in the data")
            continue
        if len(hits) > 1:
            problems.append(f"{reference.path}: line {row.line}: {row.by} {row.key!r} names {len(hits)} files "
                            f"({', '.join(str(files[i].path) for i in hits[:3])}): sample ids must be unique")
            continue
        i = hits[0]
        if i in claimed:
            problems.append(f"{reference.path}: line {row.line}: {files[i].path} already has the row on line {claimed[i].line}")
            continue
        claimed[i] = row
        files[i].reference = row
    for i, f in enumerate(files):
        if i not in claimed:
            notices.append(f"{f.path}: no row in {reference.path.name}: used unsupervised (reconstruction and clustering only)")
