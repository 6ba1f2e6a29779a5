"""Sysmex XN RET-channel raw exports: ``NAME.116.csv`` plus roll-over parts past 65,535 rows.

The instrument writes one sample as ``NAME.116.csv``, then ``NAME.116(1).csv``,
``NAME.116(2).csv``, ... each with its own header row. Pointing the reader at any part reads
the whole sample, in part order; a gap in the part numbers is an error, because a silently
missing part would undercount every population.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from edgehema.exceptions import InputFileError, ProfileMismatchError
from edgehema.profiles import Profile, get_profile
from edgehema.sample import Sample, SampleInfo
from edgehema.formats._table import format_rows, read_header
from edgehema.formats.csv_format import column_format, read_sidecar, read_table, sidecar_path

NAME = "sysmex-xn"
PROFILE = "sysmex-xn-ret"
_PART = re.compile(r"^(?P<base>.+\.116)(?:\((?P<part>\d+)\))?\.csv$", re.IGNORECASE)


def sniff(path: Path, head: bytes) -> bool:
    if _PART.match(path.name):
        return True
    first = head.split(b"\n", 1)[0].lstrip(b"\xef\xbb\xbf").strip().lower()
    return first.startswith(b"repeatcount,phase,particleid")


def parts(path: Path) -> list[Path]:
    """All parts of the sample ``path`` belongs to, in order; checks none is missing."""
    m = _PART.match(path.name)
    if not m:
        return [path]
    base = m.group("base")
    found: dict[int, Path] = {}
    for candidate in path.parent.iterdir():
        cm = _PART.match(candidate.name)
        if cm and cm.group("base") == base:
            found[int(cm.group("part") or 0)] = candidate
    if 0 not in found:
        raise InputFileError(path.with_name(base + ".csv"), "first part of the Sysmex XN sample is missing")
    numbers = sorted(found)
    for expected, got in enumerate(numbers):
        if expected != got:
            raise InputFileError(
                path.with_name(f"{base}({expected}).csv"),
                f"roll-over part {expected} is missing (found parts up to {numbers[-1]})",
            )
    return [found[k] for k in numbers]


def sample_name(path: Path) -> str:
    m = _PART.match(path.name)
    return m.group("base")[: -len(".116")] if m else path.stem


def read(path: Path, profile: Profile | str | None = None, info: SampleInfo | None = None) -> Sample:
    prof = get_profile(profile or PROFILE)
    files = parts(path)
    chunks, aux_chunks = [], []
    for part in files:
        try:
            _, events, aux = read_table(part, prof)
        except ProfileMismatchError as exc:
            raise ProfileMismatchError(str(exc) + _named_profile_hint(files[0], prof)) from None
        chunks.append(events)
        aux_chunks.append(aux)
    events = np.concatenate(chunks) if len(chunks) > 1 else chunks[0]
    aux = {k: np.concatenate([a[k] for a in aux_chunks]) for k in aux_chunks[0]}
    base = read_sidecar(files[0]) or SampleInfo()
    base = base.merged(sample_id=base.sample_id or sample_name(files[0]), source=str(files[0]))
    if info is not None:
        base = base.overlay(info)
    return Sample(events=events, profile=prof, info=base, auxiliary=aux)


def _named_profile_hint(path: Path, prof: Profile) -> str:
    """What the metadata beside a file says its profile is, where that is not the one tried."""
    try:
        named = json.loads(sidecar_path(path).read_text(encoding="utf-8")).get("profile")
    except (OSError, ValueError, AttributeError):
        return ""
    if not named or named == prof.name:
        return ""
    plain = path.name[: -len(".116.csv")] if path.name.lower().endswith(".116.csv") else path.stem
    return (f"; its metadata ({sidecar_path(path).name}) names profile {named}: the file is not a Sysmex XN "
            f"export; rename it and its metadata without .116 ({plain}.csv, {plain}.meta.json)")


def write(sample: Sample, path: Path) -> list[Path]:
    """Write ``sample`` as ``path`` (``NAME.116.csv``) plus roll-over parts of ``rows_per_part`` rows."""
    path = Path(path)
    m = _PART.match(path.name)
    if not m or m.group("part"):
        raise InputFileError(path, "a Sysmex XN export must be named NAME.116.csv")
    if sample.profile.name != PROFILE and not sample.profile.auxiliary:
        # A file named .116.csv is read as a Sysmex XN export: other columns there would be refused.
        raise InputFileError(path, f"NAME.116.csv is the Sysmex XN layout, for samples of profile {PROFILE}; this "
                                   f"sample's profile is {sample.profile.name}: write it as .csv or .fcs (or simulate "
                                   f"it with --profile {PROFILE})")
    base = m.group("base")
    prof = sample.profile
    per_part = int(prof.rows_per_part or 65535)
    n = sample.n_events
    aux_cols = []
    for name in prof.auxiliary:
        if name in sample.auxiliary:
            aux_cols.append(np.asarray(sample.auxiliary[name], dtype=np.int64))
        elif name == "ParticleID":
            aux_cols.append(np.arange(1, n + 1, dtype=np.int64))
        else:
            aux_cols.append(np.ones(n, dtype=np.int64))
    header = ",".join(list(prof.auxiliary) + list(prof.feature_names)) + "\n"
    formats = ["%d"] * len(aux_cols) + [column_format(sample.events[:, j]) for j in range(prof.n_features)]
    table = np.column_stack([c.astype(np.float64) for c in aux_cols] + [sample.events.astype(np.float64)])
    written = []
    for k, start in enumerate(range(0, max(n, 1), per_part)):
        target = path if k == 0 else path.with_name(f"{base}({k}).csv")
        target.write_text(header + format_rows(table[start : start + per_part], formats), encoding="utf-8")
        written.append(target)
    # The export itself has no place for dilution and volume: keep them in the sidecar, as for CSV.
    side = sidecar_path(path)
    side.write_text(json.dumps(sample.info.to_dict() | {"profile": prof.name}, indent=2) + "\n", encoding="utf-8")
    written.append(side)
    return written


def describe(path: Path, profile: Profile | str | None = None) -> dict:
    files = parts(path)
    sample = read(path, profile)
    names, _ = read_header(files[0])
    return {
        "format": "sysmex-xn",
        "version": None,
        "events": sample.n_events,
        "channels": names,
        "parts": [p.name for p in files],
        "profile": sample.profile.name,
        "metadata": sample.info.to_dict(),
        "first_event": dict(zip(sample.feature_names, (float(v) for v in sample.events[0]))),
    }
