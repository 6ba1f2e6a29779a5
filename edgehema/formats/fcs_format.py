"""FCS 2.0 / 3.0 / 3.1 through flowio.

Reading: the HEADER is checked first, so a truncated or corrupt file gets an error naming the
byte offset; then flowio parses it. Real-world quirks are handled with flowio's own options and
reported (``quirks``) rather than hidden: a data offset that is off by one
(``ignore_offset_error``), HEADER and TEXT offsets that disagree (``ignore_offset_discrepancy``),
and files holding several data sets (``read_multiple_data_sets``; the first is used unless
another is asked for).

Channels map to profile features by ``$PnN`` first, then ``$PnS`` (case-insensitive).
edgehema writes float32 list-mode files with ``$PnN`` = feature name, ``$PnS`` = description,
sample metadata in ``$SMNO`` (sample id), ``$SRC`` (species), ``$VOL`` (FCS 3.1, nanolitres),
``$CYT`` (instrument id), ``$BTIM``/``$ETIM``/``$DATE`` and ``EDGEHEMA_*`` keywords.
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import flowio
import numpy as np
from flowio.exceptions import DataOffsetDiscrepancyError, FCSParsingError, MultipleDataSetsError

from edgehema.exceptions import InputFileError, ProfileMismatchError
from edgehema.profiles import Profile, builtin_profiles, get_profile
from edgehema.sample import Sample, SampleInfo
from edgehema.formats._table import check_events

NAME = "fcs"
EXTENSIONS = (".fcs", ".lmd")
_HEADER_FIELDS = ("TEXT start", "TEXT end", "DATA start", "DATA end", "ANALYSIS start", "ANALYSIS end")


def sniff(path: Path, head: bytes) -> bool:
    return head.startswith(b"FCS") or path.suffix.lower() in EXTENSIONS


def check_header(path: Path) -> str:
    """Validate the 58-byte HEADER against the file size; return the FCS version."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(58)
    except FileNotFoundError:
        raise InputFileError(path, "no such file") from None
    except OSError as exc:
        raise InputFileError(path, f"cannot read: {exc.strerror}") from None
    if size == 0:
        raise InputFileError(path, "empty file")
    if not head.startswith(b"FCS"):
        raise InputFileError(path, f"not an FCS file: it starts with {head[:6]!r}, not 'FCS'", "byte 0")
    if len(head) < 58:
        raise InputFileError(path, f"truncated FCS HEADER: {size} bytes, the HEADER alone needs 58", f"byte {size}")
    version = head[3:6].decode("ascii", "replace")
    if version not in ("2.0", "3.0", "3.1", "3.2"):
        raise InputFileError(path, f"unsupported FCS version {head[:6]!r}", "byte 0")
    offsets = []
    for i, name in enumerate(_HEADER_FIELDS):
        raw = head[10 + 8 * i : 18 + 8 * i]
        text = raw.strip()
        if not text:
            offsets.append(0)
            continue
        if not text.isdigit():
            raise InputFileError(path, f"HEADER field '{name}' is not a number: {raw!r}", f"byte {10 + 8 * i}")
        offsets.append(int(text))
    t0, t1, d0, d1 = offsets[:4]
    if t0 < 58 or t1 < t0:
        raise InputFileError(path, f"HEADER gives an impossible TEXT segment {t0}-{t1}", "byte 10")
    if t1 >= size:
        raise InputFileError(
            path, f"truncated: TEXT segment ends at byte {t1} but the file has {size} bytes", f"byte {size}"
        )
    if d1 and d1 >= size:
        raise InputFileError(
            path,
            f"truncated: DATA segment runs to byte {d1} but the file has only {size} bytes "
            f"({d1 - size + 1} bytes missing)",
            f"byte {size}",
        )
    return version


@dataclass
class _Parsed:
    flow: "flowio.FlowData"
    quirks: list[str] = field(default_factory=list)
    n_datasets: int = 1
    #: Byte offset of this data set's HEADER in the file (0 but for later data sets of one file).
    base: int = 0
    #: Every data set of the file (one for most files), and the chosen one's index.
    sets: list = field(default_factory=list)
    index: int = 0


def parse(path: Path, dataset: int | None = None, profile: Profile | str | None = None) -> _Parsed:
    """Parse with flowio, retrying with its quirk options and recording which were needed; the
    retries apply alike to files of one data set and of several. ``dataset`` is 0-based; ``None``
    takes the first data set whose channels match ``profile`` (or any shipped profile)."""
    check_header(path)
    quirks: list[str] = []
    options: dict = {}
    multi = False
    for _attempt in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # quirks are reported through ``quirks``
                if not multi:
                    flow = _flowdata(path, options, quirks=quirks)
                    if dataset not in (None, 0):
                        raise InputFileError(path, f"has 1 data set; data set {dataset + 1} does not exist")
                    return _Parsed(flow, quirks, 1, 0, [flow], 0)
                sets = _all_data_sets(path, options, quirks)
            return _choose(path, sets, dataset, profile, quirks)
        except MultipleDataSetsError:
            multi = True
        except DataOffsetDiscrepancyError:
            if options.get("ignore_offset_discrepancy"):
                raise InputFileError(path, "HEADER and TEXT disagree on the data offsets") from None
            options["ignore_offset_discrepancy"] = True
            if _header_gives_data_offsets(path):  # 0 or blank: the TEXT's are the offsets, no quirk
                quirks.append("HEADER and TEXT data offsets disagree; used the TEXT offsets")
        except FCSParsingError as exc:
            # flowio's messages span lines and name its own options: one line, in the user's terms.
            msg = " ".join(str(exc).replace(str(path), path.name).replace(path.name, "").split())
            if "off by" in msg and not options.get("ignore_offset_error"):
                options["ignore_offset_error"] = True
                quirks.append("data offset is off by one; read with flowio's ignore_offset_error")
                continue
            msg = msg.split(" Set `")[0]
            raise InputFileError(path, f"corrupt FCS file: {msg[:200]}") from None
        except _FlowioFailed as exc:
            raise InputFileError(path, f"corrupt FCS file: the parser failed ({exc})") from None
        except KeyError as exc:
            # flowio looks keywords up by lower-case name; the user knows them as $P5R etc.
            raise InputFileError(path, f"corrupt FCS file: the required keyword "
                                       f"${str(exc.args[0]).upper()[:40]} is missing", "TEXT") from None
        except (ValueError, IndexError, UnicodeDecodeError, OSError, ArithmeticError, MemoryError, struct.error) as exc:
            raise InputFileError(path, f"corrupt FCS file: {type(exc).__name__}: {_one_line(exc)}") from None
    raise InputFileError(path, "corrupt FCS file: could not be parsed with any reader option")


def _header_gives_data_offsets(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(42)
    return any(f.strip() not in (b"", b"0") for f in (head[26:34], head[34:42]))


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]


#: TEXT delimiters flowio puts into a regular expression unescaped (it escapes only | \\ and *).
#: The standard allows any byte from 1 to 126 as delimiter.
_REGEX_DELIMITERS = frozenset(b".^$+?()[]{}-")
#: Delimiters the TEXT is rewritten with (first one not in the TEXT), length unchanged.
_SAFE_DELIMITERS = b"/|\x0c\x1e\x1f*"


def _flowdata(path: Path, options: dict, nextdata_offset: int | None = None,
              quirks: list[str] | None = None) -> "flowio.FlowData":
    """One data set. The file handle is ours so that it is closed when flowio raises (flowio
    closes its own only on success, and a refused file would leak one handle per read).
    ``nextdata_offset`` None: the file's first data set, and flowio raises MultipleDataSetsError
    if there are more; a number: the data set at that byte offset.

    Two valid layouts flowio cannot parse are handed to it rewritten in memory, every offset
    unchanged: a TEXT delimiter that is a regular-expression character, and HEADER offset fields
    left blank (the standard says 0 when an offset does not fit; some writers leave spaces)."""
    base = nextdata_offset or 0
    with open(path, "rb") as fh:
        fh.seek(base)
        head = fh.read(58)
        patches: list[tuple[int, bytes]] = []
        fields = [head[10 + 8 * i:18 + 8 * i] for i in range(6)]
        blank = [i for i, f in enumerate(fields) if len(f) == 8 and not f.strip()]
        if blank and len(blank) < 6 and all(f.strip().isdigit() for f in fields[:2]):
            for i in blank:
                patches.append((base + 10 + 8 * i, b"       0"))
            note = "HEADER leaves offsets blank (the standard says 0); read them as 0"
            if quirks is not None and note not in quirks:
                quirks.append(note)
        try:
            t0, t1 = int(fields[0]), int(fields[1])
        except ValueError:
            t0 = t1 = -1
        if 0 < t0 < t1:
            fh.seek(base + t0)
            text = fh.read(t1 - t0 + 1)
            new = next((d for d in _SAFE_DELIMITERS if d not in text), None)
            if text[:1] and text[0] in _REGEX_DELIMITERS and new is not None:
                # Doubled (escaped) delimiters stay doubled.
                patches.append((base + t0, text.replace(text[:1], bytes([new]))))
        if patches:
            fh.seek(0)
            data = bytearray(fh.read())  # rare files only: memory of one file
            for at, new_bytes in patches:
                data[at:at + len(new_bytes)] = new_bytes
            return _call_flowio(io.BytesIO(bytes(data)), nextdata_offset, options)
        fh.seek(0)
        return _call_flowio(fh, nextdata_offset, options)


class _FlowioFailed(Exception):
    """flowio raised something other than its own errors while parsing."""


def _call_flowio(fh, nextdata_offset: int | None, options: dict) -> "flowio.FlowData":
    # flowio parses whatever bytes it is given; on a malformed file its internals fail with
    # whatever Python raises there (EOFError, TypeError, struct.error, re.error... found by
    # tests/test_reader_fuzz.py). Those are facts about the file, not bugs of edgehema.
    try:
        return flowio.FlowData(fh, nextdata_offset=nextdata_offset, **options)
    except (FCSParsingError, MultipleDataSetsError, DataOffsetDiscrepancyError, MemoryError, KeyError):
        raise
    except Exception as exc:  # noqa: BLE001 - see above
        raise _FlowioFailed(f"{type(exc).__name__}: {_one_line(exc)}") from None


#: More data sets than this in one file is a $NEXTDATA loop or garbage, not an instrument's file.
MAX_DATA_SETS = 256


def _all_data_sets(path: Path, options: dict, quirks: list[str] | None = None) -> list:
    """Every data set, following $NEXTDATA (relative to the data set that carries it) as
    flowio.read_multiple_data_sets does, but with our handles and a guard against loops."""
    sets, offset, seen = [], 0, set()
    while True:
        flow = _flowdata(path, options, offset, quirks if not sets else None)
        sets.append(flow)
        step = int(flow.text.get("nextdata", 0) or 0)
        if step == 0:
            return sets
        offset += step
        if step < 0 or offset in seen or len(sets) >= MAX_DATA_SETS:
            raise InputFileError(path, f"$NEXTDATA of data set {len(sets)} points to byte {offset}, "
                                       "which loops back or is not a data set", "TEXT")
        seen.add(offset)


def _choose(path: Path, sets: list, dataset: int | None, profile, quirks: list[str]) -> _Parsed:
    if dataset is None:
        matching = [k for k, flow in enumerate(sets) if _best_profile(_channels(flow), profile)[1] is not None]
        dataset = matching[0] if matching else 0
        how = "the first whose channels match a profile" if matching else "none matches a profile"
    elif not 0 <= dataset < len(sets):
        raise InputFileError(path, f"has {len(sets)} data sets; data set {dataset + 1} does not exist")
    else:
        how = "as asked"
    quirks.append(f"file holds {len(sets)} data sets; read data set {dataset + 1} ({how})")
    # $NEXTDATA is relative to the start of the data set that carries it.
    base = sum(int(sets[k].text.get("nextdata", 0) or 0) for k in range(dataset))
    return _Parsed(sets[dataset], quirks, len(sets), base, sets, dataset)


def _channels(flow) -> list[tuple[str, str]]:
    """(PnN, PnS) per channel in file order."""
    out = []
    for idx in sorted(flow.channels, key=int):
        ch = flow.channels[idx]
        out.append((str(ch.get("pnn", "")).strip(), str(ch.get("pns", "") or "").strip()))
    return out


def map_channels(channels: list[tuple[str, str]], profile: Profile) -> tuple[list[int] | None, list[str]]:
    """Column index per profile feature (by $PnN, then $PnS), and the features not found."""
    pnn = [c[0].lower() for c in channels]
    pns = [c[1].lower() for c in channels]
    order, missing = [], []
    for name in profile.feature_names:
        key = name.lower()
        if key in pnn:
            order.append(pnn.index(key))
        elif key and key in pns:
            order.append(pns.index(key))
        else:
            missing.append(name)
    return (None if missing else order), missing


def _best_profile(channels, profile) -> tuple[Profile | None, list[int] | None, str]:
    if profile is not None:
        prof = get_profile(profile)
        order, missing = map_channels(channels, prof)
        return prof, order, ("" if order else f"profile {prof.name} needs channel(s) missing here: {', '.join(missing)}")
    best = None
    for prof in builtin_profiles().values():
        order, missing = map_channels(channels, prof)
        if order is not None:
            return prof, order, ""
        if best is None or len(missing) < len(best[1]):
            best = (prof, missing)
    prof, missing = best
    if len(missing) == prof.n_features:
        return None, None, (
            f"no instrument profile matches its channels: none of them is a feature of "
            f"{', '.join(sorted(builtin_profiles()))} (use a custom profile, --profile FILE.toml)"
        )
    return None, None, (
        f"no instrument profile matches its channels; closest is {prof.name}, "
        f"missing {len(missing)} of {prof.n_features}: {', '.join(missing[:6])}{'...' if len(missing) > 6 else ''}"
    )


def _info_from_text(text: dict, path: Path) -> SampleInfo:
    t = {str(k).lower().lstrip("$"): v for k, v in text.items()}

    def num(key):
        try:
            return float(t[key]) if key in t and str(t[key]).strip() else None
        except ValueError:
            return None

    vol_nl = num("vol")
    return SampleInfo(
        sample_id=str(t.get("smno") or t.get("edgehema_sample_id") or path.stem),
        # $SRC is free text ("Specimen_001" in most cytometers), so species only from our own keyword.
        species=t.get("edgehema_species") or None,
        dilution=num("edgehema_dilution"),
        volume_ul=(vol_nl / 1000.0) if vol_nl is not None else num("edgehema_volume_ul"),
        instrument_id=t.get("cyt") or None,
        started_at=t.get("edgehema_started_at") or None,
        ended_at=t.get("edgehema_ended_at") or None,
        source=str(path),
    )


_STANDARD_BYTEORD = ("1,2,3,4", "4,3,2,1", "1,2", "2,1")


def _needs_own_decoder(flow) -> bool:
    """flowio unpacks integers of 8, 16 and 32 bits in the two usual byte orders; the rest is ours."""
    if flow.events is None:
        return True
    byteord = str(flow.text.get("byteord", "")).replace(" ", "")
    return byteord not in _STANDARD_BYTEORD


def _data_span(flow, base: int) -> tuple[int, int]:
    """(first, last) byte of DATA in the file, as flowio locates it (TEXT first in FCS 3.x)."""
    start, stop = int(flow.header["data_start"]), int(flow.header["data_stop"])
    if str(flow.version) != "2.0":
        try:
            t0, t1 = int(flow.text.get("begindata", 0)), int(flow.text.get("enddata", 0))
        except ValueError:
            t0 = t1 = 0
        if t1:
            start, stop = t0, t1
    return base + start, base + stop


def _byte_significance(byteord: str, nbytes: int, path: Path) -> list[int]:
    """For each byte of an ``nbytes`` value in file order, its significance (0: least)."""
    try:
        order = [int(x) for x in byteord.replace(" ", "").split(",") if x]
    except ValueError:
        raise InputFileError(path, f"$BYTEORD {byteord!r} is not a list of byte numbers") from None
    if sorted(order) != list(range(1, len(order) + 1)):
        raise InputFileError(path, f"$BYTEORD {byteord!r} is not a permutation of 1..{len(order)}")
    if order == sorted(order):
        return list(range(nbytes))  # little-endian
    if order == sorted(order, reverse=True):
        return list(range(nbytes - 1, -1, -1))  # big-endian
    if len(order) == nbytes:  # a mixed order (e.g. 3,4,1,2) applies to values of its own length
        return [o - 1 for o in order]
    raise InputFileError(path, f"$BYTEORD {byteord!r} cannot order values of {nbytes} bytes")


def decode_data(raw: bytes, text: dict, path: Path) -> np.ndarray:
    """List-mode DATA as an (events, channels) float64 array, for every $DATATYPE and $PnB the
    standard allows: I with any width (byte-aligned in $BYTEORD, or bit-packed most significant
    bit first) masked to $PnR, F and D in either byte order. Vectorised: a million events in well
    under a second."""
    t = {str(k).lower().lstrip("$"): v for k, v in text.items()}
    where = "DATA segment"
    try:
        n_par = int(t["par"])
    except (KeyError, ValueError):
        raise InputFileError(path, "$PAR is missing or not a number", where) from None
    mode = str(t.get("mode", "L")).upper()
    if mode != "L":
        raise InputFileError(path, f"$MODE {mode}: only list mode (L) holds events", where)
    dtype = str(t.get("datatype", "")).upper()
    byteord = str(t.get("byteord", "1,2,3,4"))
    if dtype in ("F", "D"):
        size = 4 if dtype == "F" else 8
        little = _byte_significance(byteord, size, path) == list(range(size))
        n = len(raw) // (size * n_par)
        arr = np.frombuffer(raw[: n * size * n_par], dtype=("<" if little else ">") + ("f4" if size == 4 else "f8"))
        return arr.reshape(n, n_par).astype(np.float64)
    if dtype != "I":
        raise InputFileError(path, f"$DATATYPE {dtype!r} is not supported (I, F or D)", where)
    try:
        widths = [int(t[f"p{i}b"]) for i in range(1, n_par + 1)]
        ranges = [int(float(t.get(f"p{i}r", 0) or 0)) for i in range(1, n_par + 1)]
    except (KeyError, ValueError) as exc:
        raise InputFileError(path, f"$PnB or $PnR missing or not a number ({exc})", where) from None
    if any(w < 1 or w > 64 for w in widths):
        raise InputFileError(path, f"$PnB {widths}: integer widths must be 1-64 bits", where)
    out = np.empty((0, n_par), dtype=np.float64)
    if all(w % 8 == 0 for w in widths):
        per_event = sum(widths) // 8
        n = len(raw) // per_event
        b = np.frombuffer(raw[: n * per_event], dtype=np.uint8).reshape(n, per_event)
        out = np.empty((n, n_par), dtype=np.float64)
        offset = 0
        for i, w in enumerate(widths):
            k = w // 8
            sig = _byte_significance(byteord, k, path)
            v = np.zeros(n, dtype=np.uint64)
            for j in range(k):
                v |= b[:, offset + j].astype(np.uint64) << np.uint64(8 * sig[j])
            out[:, i] = _masked(v, w, ranges[i])
            offset += k
        return out
    # Bit-packed values (FCS 2.0 allows any $PnB): one bit stream, most significant bit first.
    per_event = sum(widths)
    bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8))
    n = len(bits) // per_event
    bits = bits[: n * per_event].reshape(n, per_event)
    out = np.empty((n, n_par), dtype=np.float64)
    offset = 0
    for i, w in enumerate(widths):
        weights = (np.uint64(1) << np.arange(w - 1, -1, -1, dtype=np.uint64))
        v = (bits[:, offset:offset + w].astype(np.uint64) * weights).sum(axis=1, dtype=np.uint64)
        out[:, i] = _masked(v, w, ranges[i])
        offset += w
    return out


def _masked(v: np.ndarray, width: int, pnr: int) -> np.ndarray:
    """Bits above $PnR (rounded up to a power of two) are not data (FCS 3.1, $PnR)."""
    if pnr > 0:
        top = 1 << max(int(pnr - 1).bit_length(), 0)
        if top < (1 << width):
            v = v & np.uint64(top - 1)
    return v.astype(np.float64)


def _event_array(flow, path: Path, preprocess: bool, base: int = 0) -> np.ndarray:
    try:
        if _needs_own_decoder(flow):
            start, stop = _data_span(flow, base)
            with open(path, "rb") as fh:
                fh.seek(start)
                raw = fh.read(max(stop - start + 1, 0))
            # flowio's own preprocessing ($PnE, $PnG, $TIMESTEP) then applies to our decoded values.
            flow.events = decode_data(raw, flow.text, path).ravel()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.asarray(flow.as_array(preprocess=preprocess), dtype=np.float64)
    except (ValueError, IndexError, OSError) as exc:
        raise InputFileError(path, f"corrupt FCS DATA segment: {str(exc)[:200]}") from None


def _check_width(data: np.ndarray, flow, path: Path) -> None:
    """TEXT may describe channels beyond $PAR (a damaged $PAR): the DATA then has fewer columns."""
    n_channels = len(flow.channels)
    if data.size and (data.ndim != 2 or data.shape[1] != n_channels):
        raise InputFileError(path, f"$PAR gives {flow.text.get('par')} parameters but TEXT describes "
                                   f"{n_channels} channels", "TEXT")


def read(path: Path, profile: Profile | str | None = None, info: SampleInfo | None = None,
         dataset: int | None = None) -> Sample:
    parsed = parse(path, dataset, profile)
    prof, order, why = _best_profile(_channels(parsed.flow), profile)
    if order is None:
        raise ProfileMismatchError(f"{path}: {why}")
    data = _event_array(parsed.flow, path, preprocess=True, base=parsed.base)
    if data.shape[0] == 0:
        raise InputFileError(path, "no events: $TOT is 0")
    _check_width(data, parsed.flow, path)
    events = data[:, order]
    check_events(events, prof, path, locate="event", first_index=1)
    meta = _info_from_text(parsed.flow.text, path)
    if info is not None:
        meta = meta.overlay(info)
    flags = {}
    declared = int(parsed.flow.event_count)
    if declared != data.shape[0]:
        flags["file_event_total_mismatch"] = (f"the file's $TOT says {declared:,} events but its DATA segment holds "
                                              f"{data.shape[0]:,}: the {data.shape[0]:,} events in DATA were counted")
    return Sample(events=events.astype(np.float32), profile=prof, info=meta, flags=flags)


def write(sample: Sample, path: Path) -> list[Path]:
    path = Path(path)
    info = sample.info
    meta: dict[str, str] = {"CYT": info.instrument_id or "edgehema", "EDGEHEMA_PROFILE": sample.profile.name}
    if info.sample_id:
        meta["SMNO"] = info.sample_id
    if info.species:
        meta["SRC"] = info.species
        meta["EDGEHEMA_SPECIES"] = info.species
    if info.dilution is not None:
        meta["EDGEHEMA_DILUTION"] = repr(float(info.dilution))
    if info.volume_ul is not None:
        meta["VOL"] = repr(float(info.volume_ul) * 1000.0)
        meta["EDGEHEMA_VOLUME_UL"] = repr(float(info.volume_ul))
    for key, value in (("EDGEHEMA_STARTED_AT", info.started_at), ("EDGEHEMA_ENDED_AT", info.ended_at)):
        if value:
            meta[key] = value
    names = list(sample.feature_names)
    descriptions = [f.description[:60] or f.name for f in sample.profile.features]
    with open(path, "wb") as fh:
        flowio.create_fcs(fh, sample.events.ravel().tolist(), names, opt_channel_names=descriptions, metadata_dict=meta)
    return [path]


def describe(path: Path, profile: Profile | str | None = None, dataset: int | None = None) -> dict:
    parsed = parse(path, dataset, profile)
    flow = parsed.flow
    channels = _channels(flow)
    prof, order, why = _best_profile(channels, profile)
    if order is None:
        prof = None
    raw = _event_array(flow, path, preprocess=False, base=parsed.base)
    _check_width(raw, flow, path)
    if order is not None:  # inspect refuses what classify refuses
        check_events(_event_array(flow, path, preprocess=True, base=parsed.base)[:, order], prof, path, locate="event",
                     first_index=1)
    out = {
        "format": "fcs",
        "version": str(flow.version),
        "events": int(flow.event_count),
        "channels": [c[0] for c in channels],
        "channel_labels": [c[1] for c in channels],
        "profile": prof.name if prof else None,
        "metadata": _info_from_text(flow.text, path).to_dict(),
        "quirks": parsed.quirks,
        "data_sets": parsed.n_datasets,
        "data_set": parsed.index + 1,
    }
    if parsed.n_datasets > 1:
        out["data_set_list"] = [
            {"data_set": k + 1, "version": str(f.version), "events": int(f.event_count),
             "channels": [c[0] for c in _channels(f)], "profile": (_best_profile(_channels(f), profile)[0] or None)
             and _best_profile(_channels(f), profile)[0].name}
            for k, f in enumerate(parsed.sets)]
    # ``events`` is what classify reads (the DATA segment); ``events_tot`` what $TOT declares.
    out["events_tot"] = out["events"]
    if raw.shape[0] != out["events"]:
        out["quirks"].append(f"$TOT says {out['events']:,} events, DATA holds {raw.shape[0]:,} (classify reads "
                             f"{raw.shape[0]:,} and flags file_event_total_mismatch)")
        out["events"] = int(raw.shape[0])
    if raw.shape[0]:
        out["first_event"] = dict(zip(out["channels"], (float(v) for v in raw[0])))
    if why:
        out["profile_mismatch"] = why
    return out
