"""FCS DATA in every width and type the standard allows, from files written byte by byte here.

flowio unpacks 8/16/32-bit integers in the two usual byte orders; 24-bit integers (as some Cytek
instruments write), bit-packed widths, odd byte orders and $PnR masks are decoded by edgehema. Each
file is checked against the values it was written from.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from edgehema.exceptions import InputFileError
from edgehema.formats import read_sample
from edgehema.formats.fcs_format import decode_data
from edgehema.profiles import get_profile

NAMES = list(get_profile("optical-11").feature_names)


def fcs_file(path, values_bytes: bytes, keywords: dict, version: str = "3.0") -> None:
    """HEADER, TEXT ('/'-delimited) and DATA; offsets in TEXT with fixed widths so they are exact."""
    text_start = 256
    kw = dict(keywords)
    kw.update({"$BEGINANALYSIS": "0", "$ENDANALYSIS": "0", "$BEGINSTEXT": "0", "$ENDSTEXT": "0", "$NEXTDATA": "0"})
    if version != "2.0":
        kw.update({"$BEGINDATA": "0" * 12, "$ENDDATA": "0" * 12})

    def render(k):
        return ("/" + "/".join(f"{a}/{b}" for a, b in k.items()) + "/").encode("ascii")

    text = render(kw)
    data_start = text_start + len(text)
    data_end = data_start + len(values_bytes) - 1
    if version != "2.0":
        kw.update({"$BEGINDATA": f"{data_start:012d}", "$ENDDATA": f"{data_end:012d}"})
        text = render(kw)
        assert data_start == text_start + len(text)
    header = f"FCS{version}    ".encode() + b"".join(
        f"{v:8d}".encode() for v in (text_start, text_start + len(text) - 1, data_start, data_end, 0, 0))
    path.write_bytes(header.ljust(text_start, b" ") + text + values_bytes)


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
