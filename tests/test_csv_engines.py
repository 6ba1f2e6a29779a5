"""The fast CSV parsers (edgehema's compiled tokenizer, pandas' C engine) and the fallback (numpy)
accept and refuse exactly the same files, with the same values and the same error lines: a device
without a compiler (numpy only) and a workstation never disagree about a file."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgehema.exceptions import EdgehemaError
from edgehema.formats import _table, read_sample

pytest.importorskip("pandas", reason="the fast parser's tests need pandas (the test extra installs it)")
FAST = ["pandas", "native"]


def _need(engine):
    if engine == "native" and not _table.native_available():
        pytest.skip("edgehema's compiled CSV tokenizer was not built here (no C compiler at install time)")


def test_the_tokenizer_is_built_where_a_compiler_exists():
    """The extension is optional at install time (a device without a compiler reads CSV with numpy);
    where cc exists (CI, workstations) it must have been built, or the tests above would only skip."""
    import shutil

    if not (shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("no C compiler here: the tokenizer is not expected")
    import sysconfig
    from pathlib import Path

    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").is_file():
        pytest.skip("no Python headers here (python3-dev): the tokenizer cannot be built")
    assert _table.native_available(), "a C compiler is present but edgehema/formats/_fastcsv.c was not built"

HEADER = "fsc_lo_peak,fsc_lo_area,fsc_hi_peak,fsc_hi_area,ssc_peak,ssc_area,fl_peak,fl_area,ext_peak,ext_area,ext_width"
ROW = "1000,20000,1500,30000,300,6000,150,3000,400,9000,3.25"

CASES = {
    "good": HEADER + "\n" + ROW + "\n" + ROW.replace("1000", "1001") + "\n",
    "crlf": HEADER + "\r\n" + ROW + "\r\n" + ROW + "\r\n",
    "bom": "\ufeff" + HEADER + "\n" + ROW + "\n",
    "no final newline": HEADER + "\n" + ROW + "\n" + ROW,
    "blank line inside": HEADER + "\n" + ROW + "\n\n" + ROW + "\n",
    "exponent": HEADER + "\n" + ROW.replace("20000", "2e4") + "\n",
    "spaces": HEADER + "\n" + ROW.replace(",", ", ") + "\n",
    "short row": HEADER + "\n" + ROW + "\n" + ROW.rsplit(",", 1)[0] + "\n",
    "long row": HEADER + "\n" + ROW + ",7\n",
    "every row long": HEADER + "\n" + ROW + ",7\n" + ROW + ",8\n",
    "first row long": HEADER + "\n" + ROW + ",7\n" + ROW + "\n",
    "last row long": HEADER + "\n" + ROW + "\n" + ROW + ",7\n",
    "trailing delimiter": HEADER + "\n" + ROW + ",\n",
    "empty cell": HEADER + "\n" + ROW.replace(",300,", ",,") + "\n",
    "text": HEADER + "\n" + ROW.replace("300", "abc") + "\n",
    "quoted number": HEADER + "\n" + ROW.replace("300", '"300"') + "\n",
    "nan": HEADER + "\n" + ROW.replace(",150,", ",nan,") + "\n",
    "inf": HEADER + "\n" + ROW.replace("9000", "inf") + "\n",
    "beyond float32": HEADER + "\n" + ROW.replace("9000", "1e300") + "\n",
    "negative": HEADER + "\n" + ROW.replace("1000", "-5", 1) + "\n",
    "decimal comma": HEADER + "\n" + ROW.replace("3.25", "3,25") + "\n",
    "header only": HEADER + "\n",
    "whitespace line": HEADER + "\n" + ROW + "\n   \n" + ROW + "\n",
    "latin-1 byte": HEADER + "\n" + ROW + "\n" + ROW.replace("300", "3\xe90") + "\n",
    "semicolons": HEADER.replace(",", ";") + "\n" + ROW.replace(",", ";") + "\n",
    "tabs": HEADER.replace(",", "\t") + "\n" + ROW.replace(",", "\t") + "\n",
    "crlf no final newline": HEADER + "\r\n" + ROW + "\r\n" + ROW,
    "lone cr line ends": HEADER + "\r" + ROW + "\r" + ROW + "\r",
    "two blank lines at the end": HEADER + "\n" + ROW + "\n\n\n",
    "plus signs and fractions": HEADER + "\n" + ROW.replace("1000", "+1000.").replace("3.25", ".325e+1") + "\n",
    "exponent without digits": HEADER + "\n" + ROW.replace("3.25", "3.25e") + "\n",
    "hex number": HEADER + "\n" + ROW.replace("300", "0x1F") + "\n",
    "underscore digits": HEADER + "\n" + ROW.replace("20000", "20_000") + "\n",
    "thirty digits": HEADER + "\n" + ROW.replace("3.25", "3.25000000000000000000000000001") + "\n",
    "long zeros": HEADER + "\n" + ROW.replace("3.25", "0.000000000000000000000000325e25") + "\n",
    "very long number": HEADER + "\n" + ROW.replace("3.25", "3." + "2" * 80) + "\n",
    "just beyond float32": HEADER + "\n" + ROW.replace("9000", "3.4028236e38") + "\n",
    "largest float32": HEADER + "\n" + ROW.replace("9000", "3.4028234e38") + "\n",
    "rounds to the largest float32": HEADER + "\n" + ROW.replace("9000", "3.40282356e38") + "\n",
    "tiny": HEADER + "\n" + ROW.replace("3.25", "1e-50") + "\n",
    "minus zero": HEADER + "\n" + ROW.replace("3.25", "-0") + "\n",
    "NUL byte": HEADER + "\n" + ROW + "\n" + ROW.replace("300", "3\x000") + "\n",
    "utf-16": "\ufeff" + HEADER + "\n" + ROW + "\n",
}


def outcome(path, engine, monkeypatch):
    monkeypatch.setattr(_table, "CSV_ENGINE", engine)
    try:
        return read_sample(path).events
    except EdgehemaError as exc:
        return str(exc)


def _encode(name, text):
    if name == "latin-1 byte":
        return text.encode("latin-1")
    return text.encode("utf-16") if name == "utf-16" else text.encode("utf-8")


@pytest.mark.parametrize("engine", FAST)
@pytest.mark.parametrize("name", sorted(CASES))
def test_fast_engines_agree_with_numpy(tmp_path, monkeypatch, name, engine):
    _need(engine)
    path = tmp_path / "s.csv"
    path.write_bytes(_encode(name, CASES[name]))
    a = outcome(path, "numpy", monkeypatch)
    b = outcome(path, engine, monkeypatch)
    if isinstance(a, str) or isinstance(b, str):
        assert a == b
    else:
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype == np.float32 and b.flags["C_CONTIGUOUS"]


def test_the_tokenizer_reads_good_files_itself(tmp_path):
    """The agreement above would hold trivially if the tokenizer refused everything: it must read
    the plain files itself, and hand the odd ones on."""
    _need("native")
    names = HEADER.split(",")
    for name, read_itself in [("good", True), ("crlf", True), ("bom", True), ("no final newline", True),
                              ("tabs", True), ("thirty digits", True), ("rounds to the largest float32", True),
                              ("just beyond float32", False), ("quoted number", False),
                              ("spaces", False), ("blank line inside", False), ("nan", False), ("utf-16", False)]:
        path = tmp_path / f"{len(name)}.csv"
        path.write_bytes(_encode(name, CASES[name]))
        got = _table._parse_native(path, "\t" if name == "tabs" else ",", len(names), np.dtype(np.float32),
                                   _table.text_encoding(path))
        assert (got is not None) == read_itself, name


def test_engine_choice(monkeypatch):
    monkeypatch.setattr(_table, "CSV_ENGINE", "numpy")
    assert _table.csv_engine(10**9) == "numpy" and _table.load_fast_parser() == "numpy"
    monkeypatch.setattr(_table, "CSV_ENGINE", "pandas")
    assert _table.csv_engine(100) == "pandas"
    monkeypatch.setattr(_table, "CSV_ENGINE", "auto")
    if _table.native_available():
        assert _table.csv_engine(100) == "native" and _table.load_fast_parser() == "native"
    monkeypatch.setattr(_table, "_fastcsv", None)  # an installation built without a compiler
    assert _table.csv_engine(100) == "numpy"  # a small file is not worth pandas' import
    assert _table.load_fast_parser() == "pandas" and _table.csv_engine(10**7) == "pandas"


@pytest.mark.parametrize("engine", FAST)
def test_large_simulated_file_identical_with_every_engine(tmp_path, monkeypatch, engine):
    _need(engine)
    from edgehema.formats import write_sample
    from edgehema.simulator import SampleSimulator

    path = tmp_path / "big.csv"
    write_sample(SampleSimulator("horse", seed=4).generate(60_000).sample, path)
    np.testing.assert_array_equal(outcome(path, "numpy", monkeypatch), outcome(path, engine, monkeypatch))


NUMBER = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.floats(allow_nan=False, allow_infinity=False, width=32).map(lambda x: f"{x:.9g}"),
    st.integers(-10**25, 10**25).map(str),
    st.from_regex(r"\A[+-]?[0-9]{1,22}(\.[0-9]{0,22})?([eE][+-]?[0-9]{1,3})?\Z"),
    # Around float32's largest value, where rounding decides between FLT_MAX and inf.
    st.floats(min_value=3.4028230e38, max_value=3.4028240e38).map(repr),
)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.lists(NUMBER, min_size=3, max_size=3), min_size=1, max_size=20), st.booleans())
def test_tokenizer_rounds_every_number_as_numpy_does(tmp_path_factory, rows, as_double):
    """Correct rounding (Clinger's fast path, else CPython's conversion), to float64 and to float32,
    on numbers of every length and exponent: bit for bit what numpy's loadtxt gives."""
    _need("native")
    path = tmp_path_factory.mktemp("n") / "t.csv"
    path.write_text("a,b,c\n" + "\n".join(",".join(r) for r in rows) + "\n")
    dtype = np.dtype(np.float64 if as_double else np.float32)
    with np.errstate(over="ignore"):
        ref = np.loadtxt(path, delimiter=",", skiprows=1, dtype=dtype, ndmin=2, comments=None)
    got = _table._parse_native(path, ",", 3, dtype, "utf-8-sig")
    if got is None:  # only a float32 beyond range may be handed on
        assert not as_double and not np.isfinite(ref).all()
    else:
        assert got.dtype == dtype and got.tobytes() == ref.tobytes()


def test_the_tokenizer_result_holds_its_rows_and_at_most_one_more(tmp_path):
    """The array is sized from the rows' line breaks, with or without a last one (the reservation
    itself, once a bound from the file size of up to 3x, is not visible here)."""
    _need("native")
    n = len(HEADER.split(","))
    for text, rows in [(HEADER + "\n" + (ROW + "\n") * 3, 3), (HEADER + "\n" + (ROW + "\n") * 2 + ROW, 3)]:
        path = tmp_path / "s.csv"
        path.write_text(text)
        got = _table._parse_native(path, ",", n, np.dtype(np.float32), "utf-8-sig")
        assert got.shape == (rows, n)
        reserved = got.base.size if got.base is not None else got.size
        assert reserved <= (rows + 1) * n


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(min_value=0, max_value=200))
def test_line_breaks_counts_every_lf_from_start(data, start):
    """The tokenizer's row count (eight bytes at a time) against bytes.count, for any bytes."""
    _need("native")
    start = min(start, len(data))
    assert _table._fastcsv.line_breaks(data, start) == data[start:].count(b"\n")
    assert _table._fastcsv.line_breaks(b"\n" * 64 + data, 0) == 64 + data.count(b"\n")


def _cpu_has_avx2() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            return any(line.startswith("flags") and " avx2" in line for line in fh)
    except OSError:
        return False


def test_the_structural_pass_is_on_where_the_cpu_has_avx2():
    """Otherwise the tests below would compare the byte loop with itself."""
    _need("native")
    import platform

    if platform.machine() not in ("x86_64", "AMD64") or not _cpu_has_avx2():
        pytest.skip("the structural pass needs x86-64 with AVX2: the byte loop reads every file here")
    assert _table._fastcsv.STRUCTURAL == 1
    assert "AVX2 structural pass" in _table.csv_reader_state()


def test_the_structural_pass_can_be_turned_off(tmp_path, monkeypatch):
    """EDGEHEMA_CSV_STRUCTURAL=0: the byte loop alone, said so, and the same events."""
    _need("native")
    from edgehema.formats import write_sample
    from edgehema.simulator import SampleSimulator

    path = tmp_path / "s.csv"
    write_sample(SampleSimulator("cat", seed=9).generate(5_000).sample, path)
    monkeypatch.setattr(_table, "CSV_ENGINE", "native")
    with_pass = read_sample(path).events
    monkeypatch.setattr(_table, "STRUCTURAL_PASS", False)
    assert "byte by byte" in _table.csv_reader_state()
    np.testing.assert_array_equal(read_sample(path).events, with_pass)


def _parse_both(data: bytes, delimiter: str, n_columns: int, as_double: bool):
    dtype = np.float64 if as_double else np.float32
    results = []
    for structural in (True, False):
        out = np.full((data.count(b"\n") + 1) * n_columns, 7.5, dtype)
        rows = _table._fastcsv.parse(data, 0, delimiter, n_columns, out, as_double, structural)
        results.append((rows, out[: max(rows, 0) * n_columns].tobytes()))
    return results


PLAIN_CELL = st.one_of(
    st.from_regex(r"\A[0-9]{1,9}\Z"),
    st.from_regex(r"\A([0-9]{1,8}\.[0-9]{0,8}|[0-9]{0,8}\.[0-9]{1,8})\Z"),
    st.integers(0, 99_999).map(str),
)
ODD_CELL = st.sampled_from(["-0", "-12", "+7", "1e3", "2.5E-2", "", " 5", '"300"', "nan", "abc", "1,", "3\r", "\x00",
                            "123456789012345678901234", "1" * 70, "0." + "3" * 30, "7.", ".5", "."])


@st.composite
def event_table(draw):
    """Many rows of mostly plain cells, sometimes an odd cell, row or line end: long enough (well
    over 64 bytes) that the structural pass reads most of it and hands the odd rows on."""
    n_columns = draw(st.integers(1, 6))
    delimiter = draw(st.sampled_from([",", ";", "\t"]))
    odd_share = draw(st.sampled_from([0.0, 0.01, 0.2]))
    crlf = draw(st.booleans())
    lines = []
    for _ in range(draw(st.integers(20, 120))):
        kind = draw(st.sampled_from(["plain"] * 12 + ["short", "long", "blank"])) if odd_share else "plain"
        width = {"plain": n_columns, "short": max(n_columns - 1, 0), "long": n_columns + 1, "blank": 0}[kind]
        cells = [draw(ODD_CELL) if odd_share and draw(st.floats(0, 1)) < odd_share else draw(PLAIN_CELL)
                 for _ in range(width)]
        lines.append(delimiter.join(cells))
    end = "\r\n" if crlf else "\n"
    text = end.join(lines) + (end if draw(st.booleans()) else "")
    return text.encode("latin-1"), delimiter, n_columns


@settings(max_examples=200, deadline=None)
@given(event_table(), st.booleans())
def test_the_structural_pass_gives_what_the_byte_loop_gives(table, as_double):
    """Any table, plain or not: the same verdict (rows, or -1) and bit for bit the same values."""
    _need("native")
    data, delimiter, n_columns = table
    with_pass, byte_loop = _parse_both(data, delimiter, n_columns, as_double)
    assert with_pass == byte_loop


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(PLAIN_CELL, min_size=4, max_size=4), min_size=30, max_size=60), st.booleans())
def test_plain_cells_round_as_numpy_does(tmp_path_factory, rows, as_double):
    """The structural pass's own conversions (up to 8 digits, with or without a point, the point
    closed up in one word) against numpy's loadtxt, bit for bit, float32 and float64."""
    _need("native")
    path = tmp_path_factory.mktemp("p") / "t.csv"
    path.write_text("a,b,c,d\n" + "\n".join(",".join(r) for r in rows) + "\n")
    dtype = np.dtype(np.float64 if as_double else np.float32)
    ref = np.loadtxt(path, delimiter=",", skiprows=1, dtype=dtype, ndmin=2, comments=None)
    got = _table._parse_native(path, ",", 4, dtype, "utf-8-sig")
    assert got is not None and got.dtype == dtype and got.tobytes() == ref.tobytes()
