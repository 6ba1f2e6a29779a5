"""FCS DATA in every width and type the standard allows, from files written byte by byte here.

flowio unpacks 8/16/32-bit integers in the two usual byte orders; 24-bit integers (as some Cytek
instruments write), bit-packed widths, odd byte orders and $PnR masks are decoded by edgehema. Each
file is checked against the values it was written from.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from edgehema.exceptions import InputFileError, ProfileMismatchError
from edgehema.formats import describe_file, read_sample
from edgehema.formats.fcs_format import decode_data
from edgehema.profiles import get_profile

NAMES = list(get_profile("optical-11").feature_names)


def fcs_block(values_bytes: bytes, keywords: dict, version: str = "3.0", nextdata: int = 0,
              off_by_one: bool = False) -> bytes:
    """One data set: HEADER, TEXT ('/'-delimited) and DATA, offsets relative to its own start.
    Offsets in TEXT have fixed widths so they are exact; ``off_by_one`` makes DATA end one byte
    late in HEADER and TEXT (a common real-world defect)."""
    text_start = 256
    kw = dict(keywords)
    kw.update({"$BEGINANALYSIS": "0", "$ENDANALYSIS": "0", "$BEGINSTEXT": "0", "$ENDSTEXT": "0",
               "$NEXTDATA": f"{nextdata:012d}"})
    if version != "2.0":
        kw.update({"$BEGINDATA": "0" * 12, "$ENDDATA": "0" * 12})

    def render(k):
        return ("/" + "/".join(f"{a}/{b}" for a, b in k.items()) + "/").encode("ascii")

    text = render(kw)
    data_start = text_start + len(text)
    data_end = data_start + len(values_bytes) - 1 + (1 if off_by_one else 0)
    if version != "2.0":
        kw.update({"$BEGINDATA": f"{data_start:012d}", "$ENDDATA": f"{data_end:012d}"})
        text = render(kw)
        assert data_start == text_start + len(text)
    header = f"FCS{version}    ".encode() + b"".join(
        f"{v:8d}".encode() for v in (text_start, text_start + len(text) - 1, data_start, data_end, 0, 0))
    return header.ljust(text_start, b" ") + text + values_bytes + (b"\0" if off_by_one else b"")


def fcs_file(path, values_bytes: bytes, keywords: dict, version: str = "3.0") -> None:
    path.write_bytes(fcs_block(values_bytes, keywords, version))


def keywords(widths, ranges, datatype="I", byteord="1,2,3,4", n=0):
    kw = {"$BYTEORD": byteord, "$DATATYPE": datatype, "$MODE": "L", "$PAR": str(len(widths)), "$TOT": str(n)}
    for i, (w, r) in enumerate(zip(widths, ranges), start=1):
        kw.update({f"$P{i}B": str(w), f"$P{i}E": "0,0", f"$P{i}N": NAMES[i - 1], f"$P{i}R": str(r)})
    return kw


def pack_bytes(values: np.ndarray, widths, significance) -> bytes:
    """Byte-aligned integers: per event, each channel's bytes in file order by ``significance``."""
    cols = []
    for i, w in enumerate(widths):
        k = w // 8
        sig = significance(k)
        v = values[:, i].astype(np.uint64)
        for j in range(k):
            cols.append(((v >> np.uint64(8 * sig[j])) & np.uint64(0xFF)).astype(np.uint8))
    return np.column_stack(cols).tobytes()


#: Largest value per feature that optical-11 accepts (peaks 16-bit, areas 2e6, width 100 us).
HI = [int(f.range[1]) for f in get_profile("optical-11").features]


def _values(rng, n, widths, ranges, cap=True):
    return np.column_stack([rng.integers(0, min(r, 1 << w, HI[i] + 1 if cap else 1 << 62), n)
                            for i, (w, r) in enumerate(zip(widths, ranges))])


@pytest.mark.parametrize("byteord,sig", [("1,2,3,4", lambda k: list(range(k))),
                                         ("4,3,2,1", lambda k: list(range(k - 1, -1, -1)))])
def test_24_bit_integers_read_in_both_byte_orders(tmp_path, byteord, sig):
    rng = np.random.default_rng(1)
    n, widths = 23_126, [24] * 11
    ranges = [1 << 24] * 11
    vals = _values(rng, n, widths, ranges)
    p = tmp_path / "cytek24.fcs"
    fcs_file(p, pack_bytes(vals, widths, sig), keywords(widths, ranges, byteord=byteord, n=n))
    s = read_sample(p)
    assert s.n_events == n
    np.testing.assert_array_equal(s.events, vals.astype(np.float32))


def test_mixed_widths_with_range_masks(tmp_path):
    rng = np.random.default_rng(2)
    n = 5000
    widths = [8, 16, 24, 32, 16, 16, 8, 24, 32, 16, 16]
    ranges = [256, 1024, 1 << 20, 1 << 30, 65536, 1000, 200, 1 << 24, 1 << 32, 4096, 65536]
    vals = _values(rng, n, widths, ranges)
    # Bits above $PnR (rounded up to a power of two) carry garbage; the reader must mask them.
    dirty = vals.copy()
    for i, (w, r) in enumerate(zip(widths, ranges)):
        top = 1 << (r - 1).bit_length()
        if top < (1 << w):
            dirty[:, i] |= rng.integers(1, (1 << w) // top, n) * top
    p = tmp_path / "mixed.fcs"
    fcs_file(p, pack_bytes(dirty, widths, lambda k: list(range(k))), keywords(widths, ranges, n=n))
    np.testing.assert_array_equal(read_sample(p).events, vals.astype(np.float32))


def test_bit_packed_widths_fcs2(tmp_path):
    rng = np.random.default_rng(3)
    n = 3001
    widths = [10, 12, 10, 12, 10, 12, 10, 12, 10, 12, 9]
    ranges = [1 << w for w in widths]
    vals = _values(rng, n, widths, ranges)
    bits = np.concatenate([((vals[:, [i]] >> np.arange(w - 1, -1, -1)) & 1) for i, w in enumerate(widths)], axis=1)
    p = tmp_path / "packed.fcs"
    fcs_file(p, np.packbits(bits.astype(np.uint8).ravel()).tobytes(), keywords(widths, ranges, n=n), version="2.0")
    np.testing.assert_array_equal(read_sample(p).events, vals.astype(np.float32))


def test_odd_byte_order_32_bit(tmp_path):
    rng = np.random.default_rng(4)
    n, widths = 2000, [32] * 11
    ranges = [1 << 32] * 11
    vals = _values(rng, n, widths, ranges)
    p = tmp_path / "pdp.fcs"
    fcs_file(p, pack_bytes(vals, widths, lambda k: [2, 3, 0, 1]), keywords(widths, ranges, byteord="3,4,1,2", n=n))
    np.testing.assert_array_equal(read_sample(p).events, vals.astype(np.float32))


@pytest.mark.parametrize("datatype,fmt", [("F", ">f4"), ("D", ">f8"), ("F", "<f4")])
def test_float_and_double_in_either_byte_order(tmp_path, datatype, fmt):
    rng = np.random.default_rng(5)
    vals = (rng.uniform(0, 1, (4000, 11)) * np.array(HI)).astype(np.float32)
    byteord = "4,3,2,1" if fmt.startswith(">") else "1,2,3,4"
    if datatype == "D":
        byteord = "8,7,6,5,4,3,2,1"
    size = 32 if datatype == "F" else 64
    p = tmp_path / f"float-{datatype}.fcs"
    fcs_file(p, vals.astype(fmt).tobytes(), keywords([size] * 11, [262144] * 11, datatype, byteord, n=4000))
    np.testing.assert_array_equal(read_sample(p).events, vals)


def test_bad_keywords_are_one_error_line(tmp_path):
    with pytest.raises(InputFileError, match=r"\$BYTEORD '1,1,2,3' is not a permutation"):
        decode_data(b"\0" * 24, keywords([24] * 2, [1 << 24] * 2, byteord="1,1,2,3"), tmp_path / "x.fcs")
    with pytest.raises(InputFileError, match=r"\$MODE C: only list mode"):
        decode_data(b"", {**keywords([8], [256]), "$MODE": "C"}, tmp_path / "x.fcs")
    with pytest.raises(InputFileError, match="integer widths must be 1-64"):
        decode_data(b"", keywords([72], [256]), tmp_path / "x.fcs")


def test_a_million_24_bit_events_decode_in_well_under_a_second():
    # Correctness of the vectorised path at scale; the time is printed, not asserted (benchmarks).
    rng = np.random.default_rng(6)
    widths = [24] * 8
    vals = _values(rng, 1_000_000, widths, [1 << 24] * 8, cap=False)
    raw = pack_bytes(vals, widths, lambda k: list(range(k)))
    t0 = time.perf_counter()
    out = decode_data(raw, keywords(widths, [1 << 24] * 8), __import__("pathlib").Path("big.fcs"))
    print(f"1M x 8 24-bit events decoded in {time.perf_counter() - t0:.3f} s")
    np.testing.assert_array_equal(out, vals.astype(np.float64))


def _two_data_sets(tmp_path):
    """An LMD-like file: an FCS 2.0 data set of other channels, then an FCS 3.0 data set of
    optical-11 channels whose DATA offset is off by one."""
    rng = np.random.default_rng(7)
    widths = [16] * 11
    ranges = [65536] * 11
    first_vals = rng.integers(0, 1000, (300, 4))
    kw1 = {"$BYTEORD": "1,2,3,4", "$DATATYPE": "I", "$MODE": "L", "$PAR": "4", "$TOT": "300"}
    for i in range(1, 5):
        kw1.update({f"$P{i}B": "16", f"$P{i}E": "0,0", f"$P{i}N": f"FL{i} INT LIN", f"$P{i}R": "1024"})
    vals = _values(rng, 2500, widths, ranges)
    second = fcs_block(pack_bytes(vals, widths, lambda k: list(range(k))), keywords(widths, ranges, n=2500),
                       "3.0", off_by_one=True)
    probe = fcs_block(first_vals.astype("<u2").tobytes(), kw1, "2.0", nextdata=0)
    first = fcs_block(first_vals.astype("<u2").tobytes(), kw1, "2.0", nextdata=len(probe))
    assert len(first) == len(probe)
    p = tmp_path / "beckman.lmd"
    p.write_bytes(first + second)
    return p, vals


def test_multi_data_set_file_with_a_quirk_in_the_second(tmp_path):
    p, vals = _two_data_sets(tmp_path)
    s = read_sample(p)  # the data set whose channels match the profile, despite its off-by-one offset
    np.testing.assert_array_equal(s.events, vals.astype(np.float32))
    info = describe_file(p)
    assert info["data_sets"] == 2 and info["data_set"] == 2
    assert [d["events"] for d in info["data_set_list"]] == [300, 2500]
    assert [d["profile"] for d in info["data_set_list"]] == [None, "optical-11"]
    assert any("off by one" in q for q in info["quirks"])
    with pytest.raises(ProfileMismatchError):
        read_sample(p, dataset=1)  # asked for explicitly: the data set of other channels
    with pytest.raises(InputFileError, match="has 2 data sets; data set 3 does not exist"):
        read_sample(p, dataset=3)


def test_cli_dataset_option_and_listing(tmp_path):
    from typer.testing import CliRunner

    from edgehema.cli import app

    p, _ = _two_data_sets(tmp_path)
    runner = CliRunner()
    r = runner.invoke(app, ["inspect", str(p)])
    assert r.exit_code == 0, r.output
    assert "* data set 2: FCS 3.0, 2,500 events, 11 channels, profile optical-11" in r.stdout
    assert "  data set 1: FCS 2.0, 300 events, 4 channels, profile none" in r.stdout
    r = runner.invoke(app, ["classify", "--json", "--jobs", "1", "--dataset", "2", str(p)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["classify", "--jobs", "1", "--dataset", "1", str(p)])
    assert r.exit_code == 1 and "no instrument profile matches" in r.output
    csv = tmp_path / "x.csv"
    csv.write_text("a,b\n1,2\n")
    r = runner.invoke(app, ["inspect", "--dataset", "2", str(csv)])
    assert r.exit_code == 1 and "only FCS files hold several data sets" in r.output


def _plain_file(tmp_path, name="plain.fcs"):
    rng = np.random.default_rng(21)
    widths, ranges = [16] * 11, [65536] * 11
    vals = _values(rng, 400, widths, ranges)
    data = fcs_block(pack_bytes(vals, widths, lambda k: list(range(k))), keywords(widths, ranges, n=400))
    return data, vals


@pytest.mark.parametrize("delimiter", [b"+", b".", b"?", b"^", b"(", b"\x0c"])
def test_any_delimiter_the_standard_allows(tmp_path, delimiter):
    """flowio puts the delimiter into a regular expression unescaped; the file is valid and reads
    (found by tests/test_reader_fuzz.py)."""
    data, vals = _plain_file(tmp_path)
    t0, t1 = int(data[10:18]), int(data[18:26])
    text = data[t0:t1 + 1]
    assert delimiter not in text
    p = tmp_path / "d.fcs"
    p.write_bytes(data[:t0] + text.replace(b"/", delimiter) + data[t1 + 1:])
    np.testing.assert_array_equal(read_sample(p).events, vals.astype(np.float32))


def test_blank_header_offsets_read_from_text(tmp_path):
    """Writers of large files leave HEADER's DATA offsets blank instead of 0 (fcsparser's
    fake_large_fcs test file): TEXT has them, and the file reads with the quirk reported."""
    data, vals = _plain_file(tmp_path)
    p = tmp_path / "blank.fcs"
    p.write_bytes(data[:26] + b" " * 16 + data[42:])
    np.testing.assert_array_equal(read_sample(p).events, vals.astype(np.float32))
    assert any("blank" in q for q in describe_file(p)["quirks"])


def test_refused_files_leave_no_open_handle(tmp_path):
    """flowio closes its file only on success; a refused file must not leak a handle (a stream
    or a batch over thousands of files would run out of them)."""
    import gc
    import warnings

    data, _ = _plain_file(tmp_path)
    p = tmp_path / "missing_keyword.fcs"
    p.write_bytes(data.replace(b"$P5R/65536/", b"$P5X/65536/"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(InputFileError, match=r"TEXT: corrupt FCS file: the required keyword \$P5R is missing"):
            read_sample(p)
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]
