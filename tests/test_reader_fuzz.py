"""Property-based fuzzing of every event-file reader (FCS, CSV, Sysmex XN, the sidecar JSON).

Whatever the bytes, reading a file either gives a sample or raises one :class:`EdgehemaError`
whose message is one line naming the file; never a traceback, never a library's raw warning,
never a hang (each read is time-bounded here) and never memory out of proportion to the file.

Mutations: FCS keyword values, HEADER offsets, delimiters, truncation at and around every segment
boundary, bit flips, inserted and deleted bytes; CSV encodings (UTF-8 with BOM, UTF-16, Latin-1),
CRLF, quoted cells, odd cell values, thousands of columns, a 10 MB line; broken sidecars.

CI runs a few thousand cases (derandomized, so a failure reproduces). The long run
(``EDGEHEMA_LONG_FUZZ=1 pytest -m long tests/test_reader_fuzz.py``) runs 100,000 and more.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import tempfile
import time
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgehema import Sample, SampleInfo, get_profile
from edgehema.exceptions import EdgehemaError
from edgehema.formats import describe_file, read_sample, write_sample

from .test_fcs_decode import fcs_block, keywords, pack_bytes

#: Seconds one read may take before it counts as a hang (files here are a few kB to 10 MB).
TIME_LIMIT_S = 10

LONG = os.environ.get("EDGEHEMA_LONG_FUZZ") == "1"
#: Examples per property: a few thousand in all in CI; the long run multiplies them.
CI_EXAMPLES = 1500
LONG_EXAMPLES = int(os.environ.get("EDGEHEMA_LONG_FUZZ_EXAMPLES", "25000"))

FUZZ = settings(max_examples=CI_EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@functools.lru_cache(maxsize=1)
def seed_files() -> dict[str, dict[str, bytes]]:
    """Valid files of every reader and layout, by the name read: {name: {file name: bytes}}."""
    rng = np.random.default_rng(11)
    n = 60
    opt = get_profile("optical-11")
    ev = np.column_stack([rng.integers(60, 40000, n), rng.integers(100, 900000, n)] * 5
                         + [np.round(rng.uniform(1.5, 9.0, n), 2)]).astype(np.float32)
    s = Sample(events=ev, profile=opt,
               info=SampleInfo(sample_id="S1", species="dog", dilution=625.0, volume_ul=18.5))
    xn = Sample(events=rng.integers(0, 255, (n, 4)).astype(np.float32), profile=get_profile("sysmex-xn-ret"),
                info=SampleInfo(sample_id="X"))
    out: dict[str, dict[str, bytes]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, sample in (("a.fcs", s), ("a.csv", s), ("X.116.csv", xn)):
            out[name] = {f.name: f.read_bytes() for f in write_sample(sample, Path(tmp) / name)}
    vals = rng.integers(0, 90, (n, 11))
    out["i16.fcs"] = {"i16.fcs": fcs_block(vals.astype("<u2").tobytes(), keywords([16] * 11, [65536] * 11, n=n))}
    out["i24.fcs"] = {"i24.fcs": fcs_block(pack_bytes(vals, [24] * 11, lambda k: list(range(k))),
                                           keywords([24] * 11, [1 << 24] * 11, n=n))}
    first = fcs_block(vals.astype("<u2").tobytes(), keywords([16] * 11, [65536] * 11, n=n), version="2.0")
    first = fcs_block(vals.astype("<u2").tobytes(), keywords([16] * 11, [65536] * 11, n=n), version="2.0",
                      nextdata=len(first))
    out["multi.fcs"] = {"multi.fcs": first + fcs_block(vals.astype(">u4").tobytes(),
                                                       keywords([32] * 11, [1 << 32] * 11, byteord="4,3,2,1", n=n))}
    return out


FCS_SEEDS = ["a.fcs", "i16.fcs", "i24.fcs", "multi.fcs"]
CSV_SEEDS = ["a.csv", "X.116.csv"]


class Hang(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: int):
    def on_alarm(signum, frame):
        raise Hang(f"read took more than {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def read_case(files: dict[str, bytes], main: str, measure_memory: bool = False) -> str:
    """Write the files into a fresh folder, read ``main`` and describe it. Returns "ok" or the
    error line; fails the test on anything but an EdgehemaError, on a warning, a hang, or memory
    out of proportion to the input."""
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in files.items():
            (Path(tmp) / name).write_bytes(data)
        path = Path(tmp) / main
        size = sum(len(b) for b in files.values())
        outcome = "ok"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if measure_memory:
                tracemalloc.start()
            try:
                with time_limit(TIME_LIMIT_S):
                    try:
                        read_sample(path)
                        describe_file(path)
                    except EdgehemaError as exc:
                        outcome = str(exc)
            finally:
                if measure_memory:
                    peak = tracemalloc.get_traced_memory()[1]
                    tracemalloc.stop()
        assert not caught, f"{main}: a warning reached the user: {caught[0].category.__name__}: {caught[0].message} ({caught[0].filename}:{caught[0].lineno})"
        if outcome != "ok":
            assert "\n" not in outcome, f"error over several lines: {outcome!r}"
            assert any(name in outcome for name in files), f"error does not name the file: {outcome!r}"
        if measure_memory:
            # Decoded events are float32 per value, at most ~4 values per input byte (24-bit
            # integers → float64 while decoding): 40x the input plus a fixed allowance.
            assert peak < 40 * size + 32e6, f"{main}: {peak / 1e6:.1f} MB peak for a {size / 1e6:.2f} MB input"
        return outcome


# --- mutations ------------------------------------------------------------------------------

INTERESTING_NUMBERS = ["", "0", "-1", "1", "2", "3", "7", "8", "9", "12", "17", "24", "33", "64", "65", "255",
                       "65536", "4294967296", "99999999999999999999", "1e308", "1.5", "nan", "-0", " 16 ",
                       "abc", "1,2", "4,3,2,1", "1,2,3,4", "2,1", "3,4,1,2", "I", "F", "D", "A", "L", "C",
                       "\u00e9", "\u4e00", "/", "//", "\x00"]


def text_segment(data: bytes) -> tuple[int, int] | None:
    try:
        t0, t1 = int(data[10:18]), int(data[18:26])
    except ValueError:
        return None
    return (t0, t1) if 58 <= t0 < t1 < len(data) else None


def segment_boundaries(data: bytes) -> list[int]:
    out = [0, 6, 10, 58, len(data)]
    for i in range(6):
        with contextlib.suppress(ValueError):
            out.append(int(data[10 + 8 * i:18 + 8 * i]))
    seg = text_segment(data)
    if seg:
        text = data[seg[0]:seg[1] + 1]
        for key in (b"$BEGINDATA", b"$ENDDATA", b"$NEXTDATA"):
            k = text.find(key)
            if k >= 0:
                with contextlib.suppress(ValueError, IndexError):
                    out.append(int(text[k + len(key) + 1:].split(b"/")[0]))
    return sorted({b for b in out if 0 <= b <= len(data)})


@st.composite
def byte_mutations(draw, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        if not b:
            break
        i = draw(st.integers(0, len(b) - 1))
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        if op == "flip":
            b[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            b[i] = draw(st.sampled_from(b"/|\\,;\"\r\n\t\x00 09-.eE\xff\xfe"))
        elif op == "insert":
            b[i:i] = draw(st.binary(min_size=1, max_size=24))
        elif op == "delete":
            del b[i:i + draw(st.integers(1, 32))]
        else:
            del b[i:]
    return bytes(b)


@st.composite
def fcs_mutations(draw, data: bytes) -> bytes:
    kind = draw(st.sampled_from(["keyword", "header", "truncate", "delimiter", "bytes"]))
    seg = text_segment(data)
    if kind == "keyword" and seg:
        text = data[seg[0]:seg[1] + 1]
        delim = text[:1]
        parts = text[1:-1].split(delim)
        k = 2 * draw(st.integers(0, len(parts) // 2 - 1)) + 1  # a value's index
        value = draw(st.one_of(st.sampled_from(INTERESTING_NUMBERS), st.text(max_size=12)))
        parts[k] = value.encode("utf-8")
        if draw(st.booleans()):  # or drop a keyword altogether
            del parts[k - 1:k + 1]
        new = delim + delim.join(parts) + delim
        # The TEXT may change length: HEADER keeps its offsets (as a careless editor would).
        return data[:seg[0]] + new + data[seg[1] + 1:]
    if kind == "header":
        field = draw(st.integers(0, 5))
        value = draw(st.sampled_from(["", "0", "-1", "1", "57", "58", "99999999", "abcdefgh", str(len(data)),
                                      str(len(data) - 1), str(len(data) + 1)]))
        start = 10 + 8 * field
        return data[:start] + value.rjust(8)[:8].encode() + data[start + 8:]
    if kind == "truncate":
        cut = draw(st.sampled_from(segment_boundaries(data))) + draw(st.integers(-2, 2))
        return data[:max(cut, 0)]
    if kind == "delimiter" and seg:
        new_delim = draw(st.sampled_from([b"|", b"\\", b",", b"\x0c", b"\x00", b" ", b"$"]))
        text = data[seg[0]:seg[1] + 1].replace(data[seg[0]:seg[0] + 1], new_delim)
        if draw(st.booleans()):
            text = text.replace(new_delim, new_delim * 2, draw(st.integers(1, 4)))  # escaped delimiters
        return data[:seg[0]] + text + data[seg[1] + 1:]
    return draw(byte_mutations(data))


ODD_CELLS = ["", " ", "nan", "NaN", "inf", "-inf", "1e309", "1e300", "-0", "1,5", "1.5.5", '"', '""', "abc", "0x10",
             "\uff11\uff12", "1_000", "+3", " 7 ", "1e-320", "\u00e9", "NULL", "#N/A"]


@st.composite
def csv_mutations(draw, data: bytes) -> bytes:
    text = data.decode("utf-8")
    lines = text.split("\n")
    ops = draw(st.lists(st.sampled_from(["cell", "quote", "columns", "long_line", "delimiter", "blank",
                                         "header", "drop_line", "bytes"]), min_size=1, max_size=3))
    raw_bytes = False
    for op in ops:
        body = [i for i, line in enumerate(lines) if line]
        if not body:
            break
        row = draw(st.sampled_from(body))
        cells = lines[row].split(",")
        if op == "cell":
            cells[draw(st.integers(0, len(cells) - 1))] = draw(st.one_of(st.sampled_from(ODD_CELLS),
                                                                          st.text(max_size=8)))
        elif op == "quote":
            cells = [f'"{c}"' for c in cells]
        elif op == "columns":
            cells += ["1"] * draw(st.sampled_from([1, 5, 5000]))
        elif op == "long_line":
            cells[0] = "9" * draw(st.sampled_from([1000, 10_000_000]))
        elif op == "delimiter":
            cells = [";".join(cells)]
        elif op == "blank":
            lines.insert(row, draw(st.sampled_from(["", ",,,", " ", "#comment"])))
        elif op == "header":
            cells[draw(st.integers(0, len(cells) - 1))] = draw(st.text(max_size=10))
        elif op == "drop_line":
            cells = None
        else:
            raw_bytes = True
        if cells is None:
            del lines[row]
        else:
            lines[row] = ",".join(cells)
    newline = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    out = newline.join(lines)
    encoding = draw(st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "latin-1", "cp1252"]))
    encoded = out.encode(encoding, errors="replace")
    if raw_bytes:
        encoded = draw(byte_mutations(encoded))
    return encoded


@st.composite
def sidecar_mutations(draw, data: bytes) -> bytes:
    choice = draw(st.sampled_from(["value", "truncate", "garbage"]))
    if choice == "truncate":
        return data[:draw(st.integers(0, len(data)))]
    if choice == "garbage":
        return draw(st.binary(max_size=64))
    key = draw(st.sampled_from(["sample_id", "species", "dilution", "volume_ul", "started_at", "profile"]))
    value = draw(st.sampled_from(['"abc"', "-1", "0", "1e999", "[]", "{}", "null", "true", '"\u00e9"',
                                  '"2026-13-45T99:99"', '"optical-11"', '"sysmex-xn-ret"', '"nonsense"']))
    text = data.decode("utf-8")
    import re

    return re.sub(rf'("{key}": )[^,\n]*', lambda m: m.group(1) + value, text, count=1).encode("utf-8")


@st.composite
def mutated_case(draw, names: list[str]) -> tuple[dict[str, bytes], str]:
    main = draw(st.sampled_from(names))
    files = dict(seed_files()[main])
    target = draw(st.sampled_from(sorted(files)))
    data = files[target]
    if target.endswith(".json"):
        files[target] = draw(sidecar_mutations(data))
    elif target.endswith(".fcs"):
        files[target] = draw(fcs_mutations(data))
    else:
        files[target] = draw(csv_mutations(data))
    return files, main


# --- properties -----------------------------------------------------------------------------

def test_every_seed_file_reads():
    """The unmutated seeds are valid: a mutation that fails is the mutation's doing."""
    for main, files in seed_files().items():
        assert read_case(files, main) == "ok", main


@FUZZ
@given(mutated_case(FCS_SEEDS))
def test_fcs_reader_never_fails_with_a_traceback(case):
    read_case(*case)


@FUZZ
@given(mutated_case(CSV_SEEDS))
def test_csv_and_sysmex_readers_never_fail_with_a_traceback(case):
    read_case(*case)


@settings(FUZZ, max_examples=60)
@given(mutated_case(FCS_SEEDS + CSV_SEEDS))
def test_memory_stays_in_proportion_to_the_file(case):
    read_case(*case, measure_memory=True)


def test_some_mutations_still_read_and_many_are_refused():
    """The fuzzing reaches past the first check: mutated files are read as well as refused."""
    outcomes = []

    @settings(FUZZ, max_examples=300)
    @given(mutated_case(FCS_SEEDS + CSV_SEEDS))
    def collect(case):
        outcomes.append(read_case(*case))

    collect()
    ok = outcomes.count("ok")
    assert 0.05 * len(outcomes) < ok < 0.95 * len(outcomes), f"{ok} of {len(outcomes)} read"


@pytest.mark.long
@pytest.mark.skipif(not LONG, reason="the long fuzzing run: set EDGEHEMA_LONG_FUZZ=1 (100,000+ cases, ~1 h)")
def test_long_fuzzing_run():
    counts = {"cases": 0, "ok": 0}
    t0 = time.perf_counter()

    @settings(FUZZ, max_examples=LONG_EXAMPLES, derandomize=False)
    @given(mutated_case(FCS_SEEDS + CSV_SEEDS))
    def run(case):
        counts["cases"] += 1
        counts["ok"] += read_case(*case) == "ok"

    for _ in range(int(os.environ.get("EDGEHEMA_LONG_FUZZ_ROUNDS", "4"))):
        run()
    print(f"\nlong fuzzing: {counts['cases']} cases, {counts['ok']} read, "
          f"{counts['cases'] - counts['ok']} refused with one line, {time.perf_counter() - t0:.0f} s")
