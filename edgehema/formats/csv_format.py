"""Plain CSV: one file is one sample, as in the reference paper.

Layout: a header naming the profile's features (any order, case-insensitive, comma, semicolon
or tab separated), one event per row. Sample metadata lives in an optional sidecar JSON next to
the file, ``NAME.meta.json`` for ``NAME.csv``, with the keys of :class:`~edgehema.sample.SampleInfo`;
command-line options override it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgehema.exceptions import InputFileError, ProfileMismatchError
from edgehema.profiles import Profile, builtin_profiles, get_profile
from edgehema.sample import Sample, SampleInfo
from edgehema.formats._table import check_events, format_rows, load_numeric_table, read_header

NAME = "csv"
EXTENSIONS = (".csv", ".tsv", ".txt")


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.stem + ".meta.json")


def sniff(path: Path, head: bytes) -> bool:
    if head.startswith(b"FCS"):
        return False
    return path.suffix.lower() in EXTENSIONS


def read_sidecar(path: Path) -> SampleInfo | None:
    side = sidecar_path(path)
    if not side.exists():
        return None
    try:
        data = json.loads(side.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("top level is not an object")
        return SampleInfo.from_dict(data)
    except (ValueError, TypeError) as exc:
        raise InputFileError(side, f"invalid sample metadata JSON: {exc}") from None


def match_profile(columns: list[str], path: Path, profile: Profile | str | None) -> Profile:
    """The profile whose columns the header carries: the given one, or the one that fits exactly."""
    if profile is not None:
        prof = get_profile(profile)
        missing, extra = prof.match_columns(columns)
        if missing or extra:
            raise ProfileMismatchError(f"{path}: header does not fit profile {prof.name}: " + _diff(missing, extra))
        return prof
    candidates = []
    for prof in builtin_profiles().values():
        missing, extra = prof.match_columns(columns)
        if not missing and not extra:
            return prof
        candidates.append((len(missing) + len(extra), prof, missing, extra))
    _, best, missing, extra = min(candidates, key=lambda c: c[0])
    raise ProfileMismatchError(
        f"{path}: header matches no instrument profile; closest is {best.name}: " + _diff(missing, extra)
    )


def _names(names: list[str], most: int = 12) -> str:
    """A list of column names for an error line: a file with thousands of columns stays one line."""
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most:,} more" if len(names) > most else "")


def _diff(missing: list[str], extra: list[str]) -> str:
    parts = []
    if missing:
        parts.append("missing column(s) " + _names(missing))
    if extra:
        parts.append("unexpected column(s) " + _names(extra))
    return "; ".join(parts)


def read_table(path: Path, profile: Profile | str | None) -> tuple[Profile, np.ndarray, dict[str, np.ndarray]]:
    """Read one delimited table: (profile, float32 events in profile order, auxiliary columns)."""
    names, delimiter = read_header(path)
    prof = match_profile(names, path, profile)
    lower = [n.lower() for n in names]
    aux_cols = [a for a in prof.auxiliary if a.lower() in lower]
    # Bookkeeping integers (Sysmex ParticleID) may exceed float32's exact range: float64 then.
    table = load_numeric_table(path, names, delimiter, np.float64 if aux_cols else np.float32)
    order = [lower.index(n.lower()) for n in prof.feature_names]
    # A float64 value beyond float32's range becomes inf here, which check_events names.
    with np.errstate(over="ignore"):
        if order == list(range(table.shape[1])):  # already in profile order (edgehema's own files): no copy
            events = np.ascontiguousarray(table, dtype=np.float32)
        else:
            events = np.ascontiguousarray(table[:, order], dtype=np.float32)
    check_events(events, prof, path)
    aux = {}
    for a in aux_cols:
        col = table[:, lower.index(a.lower())]
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(col) | (np.abs(col) >= 2.0**63)
        if bad.any():
            k = int(np.argmax(bad))  # line k + 2: the header is line 1
            raise InputFileError(path, f"column {a}: {col[k]!r} is not a whole number", f"line {k + 2}")
        aux[a] = col.astype(np.int64)
    return prof, events, aux


def read(path: Path, profile: Profile | str | None = None, info: SampleInfo | None = None) -> Sample:
    prof, events, aux = read_table(path, profile)
    base = read_sidecar(path) or SampleInfo()
    if not base.sample_id:
        base = base.merged(sample_id=path.stem)
    base = base.merged(source=str(path))
    if info is not None:
        base = base.overlay(info)
    return Sample(events=events, profile=prof, info=base, auxiliary=aux)


def column_format(col: np.ndarray) -> str:
    """Shortest %-format that gives back exactly the same float32 values.

    %.9g always round-trips float32 but prints 3.08 as 3.07999992; a column whose values are
    below 1000 and quantized to 4 decimals (pulse widths) is exact with %.7g.
    """
    c64 = col.astype(np.float64)
    if c64.size and np.abs(c64).max() < 1000 and np.array_equal(np.round(c64, 4).astype(np.float32), col):
        return "%.7g"
    return "%.9g"


def write(sample: Sample, path: Path, metadata: bool = True) -> list[Path]:
    path = Path(path)
    header = ",".join(sample.feature_names) + "\n"
    formats = [column_format(sample.events[:, j]) for j in range(sample.profile.n_features)]
    text = header + format_rows(sample.events, formats)
    path.write_text(text, encoding="utf-8")
    written = [path]
    if metadata:
        side = sidecar_path(path)
        side.write_text(json.dumps(sample.info.to_dict() | {"profile": sample.profile.name}, indent=2) + "\n")
        written.append(side)
    return written


def describe(path: Path, profile: Profile | str | None = None) -> dict:
    names, delimiter = read_header(path)
    info: dict = {"format": "csv", "version": None}
    try:
        prof = match_profile(names, path, profile)
        info["profile"] = prof.name
    except ProfileMismatchError as exc:
        info["profile"] = None
        info["profile_mismatch"] = str(exc).split(": ", 1)[1]
    table = load_numeric_table(path, names, delimiter)
    # inspect must refuse what classify refuses: the profile's ranges, or at least finite numbers.
    if info["profile"]:
        prof = get_profile(info["profile"]) if profile is None else get_profile(profile)
        lower = [n.lower() for n in names]
        check_events(table[:, [lower.index(n.lower()) for n in prof.feature_names]], prof, path)
    elif not np.isfinite(table).all():
        r, c = np.argwhere(~np.isfinite(table))[0]
        raise InputFileError(path, f"{table[r, c]} in column {names[c]} (events must be finite numbers)", f"line {r + 2}")
    info["events"] = int(table.shape[0])
    info["channels"] = names
    side = read_sidecar(path)
    info["metadata"] = side.to_dict() if side else {}
    info["first_event"] = dict(zip(names, (float(v) for v in table[0])))
    return info
