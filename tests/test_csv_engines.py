"""The fast CSV parser (pandas' C engine) and the fallback (numpy) accept and refuse exactly the same
files, with the same values and the same error lines: the device (numpy only) and a workstation
(pandas) never disagree about a file."""

import numpy as np
import pytest

from edgehema.exceptions import EdgehemaError
from edgehema.formats import _table, read_sample

pytest.importorskip("pandas", reason="the fast parser's tests need pandas (the test extra installs it)")

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
}


def outcome(path, engine, monkeypatch):
    monkeypatch.setattr(_table, "CSV_ENGINE", engine)
    try:
        return read_sample(path).events
    except EdgehemaError as exc:
        return str(exc)


@pytest.mark.parametrize("name", sorted(CASES))
def test_both_engines_agree(tmp_path, monkeypatch, name):
    path = tmp_path / "s.csv"
    text = CASES[name]
    path.write_bytes(text.encode("latin-1") if name == "latin-1 byte" else text.encode("utf-8"))
    a = outcome(path, "numpy", monkeypatch)
    b = outcome(path, "pandas", monkeypatch)
    if isinstance(a, str) or isinstance(b, str):
        assert a == b
    else:
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype == np.float32 and b.flags["C_CONTIGUOUS"]


def test_engine_choice(monkeypatch):
    monkeypatch.setattr(_table, "CSV_ENGINE", "numpy")
    assert _table.csv_engine(10**9) == "numpy" and _table.load_fast_parser() == "numpy"
    monkeypatch.setattr(_table, "CSV_ENGINE", "auto")
    assert _table.csv_engine(100) == "numpy"  # a small file is not worth pandas' import
    assert _table.load_fast_parser() == "pandas" and _table.csv_engine(10**7) == "pandas"


def test_large_simulated_file_identical_with_both_engines(tmp_path, monkeypatch):
    from edgehema.formats import write_sample
    from edgehema.simulator import SampleSimulator

    path = tmp_path / "big.csv"
    write_sample(SampleSimulator("horse", seed=4).generate(60_000).sample, path)
    np.testing.assert_array_equal(outcome(path, "numpy", monkeypatch), outcome(path, "pandas", monkeypatch))
