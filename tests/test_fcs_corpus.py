"""Every file of the shared FCS corpus, against figures recorded with an independent reader.

tests/fixtures/fcs_reference.json was written by tools/record_fcs_fixture.py with fcsparser
(which needs numpy < 2, so it is not a dependency): event counts, $PnN names and four rows of
raw values per file. The two broken files must fail with one clear line, here and in the CLI.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgehema import InputFileError, describe_file
from edgehema.formats import fcs_format

from .conftest import require_shared_fcs

REFERENCE = json.loads((Path(__file__).parent / "fixtures" / "fcs_reference.json").read_text())
READABLE = sorted(k for k, v in REFERENCE.items() if "error" not in v)
BROKEN = sorted(k for k, v in REFERENCE.items() if "error" in v)


def test_reference_covers_the_corpus():
    folder = require_shared_fcs()
    assert sorted(p.name for p in folder.glob("*.fcs")) == sorted(REFERENCE)
    assert BROKEN == ["corrupted_corrupted.fcs", "cytek-nl-2000_sample_header.fcs"]


@pytest.mark.parametrize("name", READABLE)
def test_corpus_file_matches_independent_reader(name):
    path = require_shared_fcs() / name
    ref = REFERENCE[name]
    desc = describe_file(path)
    assert desc["format"] == "fcs"
    assert desc["version"] == ref["version"]
    assert desc["events"] == ref["events"]
    assert desc["channels"] == ref["channels"]
    raw = np.asarray(fcs_format.parse(path).flow.as_array(preprocess=False), dtype=np.float64)
    assert raw.shape == (ref["events"], len(ref["channels"]))
    for row, values in ref["rows"].items():
        np.testing.assert_allclose(raw[int(row)], values, rtol=1e-6, atol=1e-9, err_msg=f"{name} row {row}")
    # These are not blood-count files: no profile matches, and inspect says why.
    assert desc["profile"] is None and "no instrument profile matches" in desc["profile_mismatch"]


def test_quirks_are_reported_not_hidden():
    folder = require_shared_fcs()
    desc = describe_file(folder / "FlowKit_LSRII_test_comp_example.fcs")
    assert any("off by one" in q for q in desc["quirks"])
    assert describe_file(folder / "FlowKit_FACSCalibur_data1.fcs")["quirks"] == []


@pytest.mark.parametrize(
    "name,message",
    [
        ("corrupted_corrupted.fcs", r"corrupted_corrupted\.fcs: byte 0: not an FCS file"),
        ("cytek-nl-2000_sample_header.fcs",
         r"cytek-nl-2000_sample_header\.fcs: byte 3931: truncated: DATA segment runs to byte 2165911 but the file has only 3931 bytes"),
    ],
)
def test_broken_files_fail_with_one_line(name, message):
    path = require_shared_fcs() / name
    with pytest.raises(InputFileError, match=message):
        describe_file(path)


def test_cli_inspect_whole_corpus():
    folder = require_shared_fcs()
    files = sorted(str(p) for p in folder.glob("*.fcs"))
    proc = subprocess.run(
        [sys.executable, "-m", "edgehema", "inspect", "--json", *files], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 1  # two files are broken
    described = [json.loads(line) for line in proc.stdout.splitlines()]
    assert {Path(d["path"]).name: d["events"] for d in described} == {n: REFERENCE[n]["events"] for n in READABLE}
    errors = proc.stderr.strip().splitlines()
    assert len(errors) == 2 and all(e.startswith("edgehema: error: ") for e in errors)
    assert "Traceback" not in proc.stderr
