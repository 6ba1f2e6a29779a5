"""Readers and writers: round trips and the bad-input corpus."""

import json
from pathlib import Path

import flowio
import numpy as np
import pytest

from edgehema import (
    InputFileError,
    ProfileMismatchError,
    Sample,
    SampleInfo,
    UnknownFormatError,
    describe_file,
    get_profile,
    read_sample,
    write_sample,
)


# ------------------------------------------------------------------ CSV
def test_csv_round_trip_exact_with_metadata(tmp_path, small_sample):
    path = tmp_path / "s.csv"
    written = write_sample(small_sample, path)
    assert written == [path, tmp_path / "s.meta.json"]
    back = read_sample(path)
    assert back.profile.name == "optical-11"
    np.testing.assert_array_equal(back.events, small_sample.events)
    assert back.info.sample_id == "S-001" and back.info.species == "dog"
    assert back.info.dilution == 625.0 and back.info.volume_ul == 18.5
    assert back.info.source == str(path)


def test_csv_columns_in_any_order_and_case(tmp_path, small_sample):
    names = list(small_sample.feature_names)
    perm = np.random.default_rng(0).permutation(len(names))
    header = ";".join(names[i].upper() for i in perm)
    rows = "\n".join(";".join(repr(float(v)) for v in row[perm]) for row in small_sample.events[:20])
    path = tmp_path / "perm.csv"
    path.write_text(header + "\n" + rows + "\n")
    back = read_sample(path)
    np.testing.assert_array_equal(back.events, small_sample.events[:20])
    assert back.info.sample_id == "perm"  # no sidecar: the file name


def test_command_line_metadata_overrides_sidecar(tmp_path, small_sample):
    path = tmp_path / "s.csv"
    write_sample(small_sample, path)
    back = read_sample(path, info=SampleInfo(species="cat", dilution=500.0))
    assert back.info.species == "cat" and back.info.dilution == 500.0 and back.info.volume_ul == 18.5


HEADER = "fsc_lo_peak,fsc_lo_area,fsc_hi_peak,fsc_hi_area,ssc_peak,ssc_area,fl_peak,fl_area,ext_peak,ext_area,ext_width"
ROW = "1000,5000,900,4000,300,1500,150,700,2000,9000,3.1"


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("empty.csv", "", r"empty\.csv: empty file"),
        ("header_only.csv", HEADER + "\n", r"header_only\.csv: no events"),
        ("missing.csv", HEADER.rsplit(",", 1)[0] + "\n" + ROW.rsplit(",", 1)[0] + "\n",
         r"missing\.csv: header matches no instrument profile; closest is optical-11: missing column\(s\) ext_width"),
        ("extra.csv", HEADER + ",temp\n" + ROW + ",3\n",
         r"extra\.csv: header matches no instrument profile; closest is optical-11: unexpected column\(s\) temp"),
        ("text.csv", HEADER + "\n" + ROW + "\n" + ROW.replace("300", "abc") + "\n",
         r"text\.csv: line 3: non-numeric value 'abc' in column ssc_peak"),
        ("ragged.csv", HEADER + "\n" + ROW + "\n" + ROW + "\n" + ROW.rsplit(",", 1)[0] + "\n",
         r"ragged\.csv: line 4: 10 cells where the header has 11 columns"),
        ("nan.csv", HEADER + "\n" + ROW + "\n" + ROW.replace(",150,", ",nan,") + "\n",
         r"nan\.csv: line 3: nan in column fl_peak \(events must be finite float32 numbers\)"),
        ("inf.csv", HEADER + "\n" + ROW.replace("9000", "inf") + "\n",
         r"inf\.csv: line 2: inf, or a number beyond float32's 3\.4e38, in column ext_area"),
        ("range.csv", HEADER + "\n" + ROW + "\n" + ROW.replace("1000", "-5", 1) + "\n",
         r"range\.csv: line 3: value -5 in column fsc_lo_peak is outside the range \[0, 65535\]"),
        ("dup.csv", HEADER + ",ssc_peak\n" + ROW + ",1\n", r"dup\.csv: line 1: header names column 'ssc_peak' twice"),
        ("blank.csv", HEADER + "\n" + ROW + "\n\n" + ROW + "\n", None),
    ],
)
def test_csv_bad_input_names_file_line_and_problem(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    if message is None:  # a blank line inside the table is skipped by numpy: both rows are read
        assert read_sample(path).n_events == 2
        return
    with pytest.raises((InputFileError, ProfileMismatchError), match=message) as info:
        read_sample(path)
    assert "\n" not in str(info.value)


def test_binary_garbage_named_csv(tmp_path):
    path = tmp_path / "bin.csv"
    path.write_bytes(b"\xff\xfe\x00\x01garbage")
    with pytest.raises(InputFileError, match=r"bin\.csv: line 1: not a text file"):
        read_sample(path)


def test_wrong_profile_requested(tmp_path, small_sample):
    path = tmp_path / "s.csv"
    write_sample(small_sample, path)
    with pytest.raises(ProfileMismatchError, match="does not fit profile sysmex-xn-ret: missing column"):
        read_sample(path, profile="sysmex-xn-ret")


def test_unknown_extension_and_missing_file(tmp_path):
    path = tmp_path / "x.parquet"
    path.write_bytes(b"PAR1")
    with pytest.raises(UnknownFormatError, match=r"x\.parquet: unrecognised file type \.parquet"):
        read_sample(path)
    with pytest.raises(InputFileError, match="no such file"):
        read_sample(tmp_path / "absent.csv")


def test_bad_sidecar_json(tmp_path, small_sample):
    path = tmp_path / "s.csv"
    write_sample(small_sample, path)
    (tmp_path / "s.meta.json").write_text("{not json")
    with pytest.raises(InputFileError, match=r"s\.meta\.json: invalid sample metadata JSON"):
        read_sample(path)


# ------------------------------------------------------------------ FCS
def test_fcs_round_trip_and_flowio_reads_it(tmp_path, small_sample):
    path = tmp_path / "s.fcs"
    write_sample(small_sample, path)
    flow = flowio.FlowData(str(path))
    assert flow.event_count == small_sample.n_events
    assert [flow.channels[i + 1]["pnn"] for i in range(11)] == list(small_sample.feature_names)
    np.testing.assert_array_equal(np.asarray(flow.as_array(preprocess=False), dtype=np.float32), small_sample.events)
    back = read_sample(path)
    np.testing.assert_array_equal(back.events, small_sample.events)
    assert back.info.sample_id == "S-001" and back.info.species == "dog"
    assert back.info.dilution == 625.0 and back.info.volume_ul == pytest.approx(18.5)
    assert back.info.instrument_id == "bench-1"


def test_fcs_maps_channels_by_pns(tmp_path, small_sample):
    """Channels named only in $PnS (long names) still map to the profile."""
    path = tmp_path / "pns.fcs"
    names = [f"P{i}" for i in range(11)]
    with open(path, "wb") as fh:
        flowio.create_fcs(fh, small_sample.events[:, ::-1].ravel().tolist(), names,
                          opt_channel_names=list(small_sample.feature_names)[::-1])
    back = read_sample(path)
    np.testing.assert_array_equal(back.events, small_sample.events)


def test_truncated_fcs_names_byte_offset(tmp_path, small_sample):
    path = tmp_path / "s.fcs"
    write_sample(small_sample, path)
    data = path.read_bytes()
    cut = tmp_path / "cut.fcs"
    cut.write_bytes(data[: len(data) - 1000])
    with pytest.raises(InputFileError, match=rf"cut\.fcs: byte {len(data) - 1000}: truncated: DATA segment"):
        read_sample(cut)
    tiny = tmp_path / "tiny.fcs"
    tiny.write_bytes(data[:30])
    with pytest.raises(InputFileError, match=r"tiny\.fcs: byte 30: truncated FCS HEADER"):
        read_sample(tiny)
    garbled = bytearray(data)
    garbled[26:34] = b"  12x456"
    bad = tmp_path / "garbled.fcs"
    bad.write_bytes(bytes(garbled))
    with pytest.raises(InputFileError, match=r"garbled\.fcs: byte 26: HEADER field 'DATA start' is not a number"):
        read_sample(bad)


def test_fcs_of_another_instrument_fails_profile_clearly(tmp_path):
    path = tmp_path / "other.fcs"
    with open(path, "wb") as fh:
        flowio.create_fcs(fh, [1.0, 2.0, 3.0, 4.0], ["FSC-A", "SSC-A"])
    with pytest.raises(ProfileMismatchError, match=r"other\.fcs: no instrument profile matches its channels"):
        read_sample(path)
    desc = describe_file(path)
    assert desc["profile"] is None and desc["events"] == 2 and desc["channels"] == ["FSC-A", "SSC-A"]


# ----------------------------------------------------------- Sysmex XN
def _sysmex_sample(n: int) -> Sample:
    rng = np.random.default_rng(1)
    prof = get_profile("sysmex-xn-ret")
    ev = np.column_stack([rng.integers(0, 255, n), rng.integers(0, 255, n), rng.integers(0, 255, n), rng.integers(0, 120, n)])
    return Sample(events=ev.astype(np.float32), profile=prof, info=SampleInfo(sample_id="XN-7"))


def test_sysmex_rollover_parts_read_as_one_sample(tmp_path):
    sample = _sysmex_sample(140_000)
    path = tmp_path / "PAT0001.116.csv"
    written = write_sample(sample, path)
    assert [p.name for p in written] == [
        "PAT0001.116.csv", "PAT0001.116(1).csv", "PAT0001.116(2).csv", "PAT0001.116.meta.json"
    ]
    assert sum(1 for _ in open(written[0])) == 65535 + 1
    # Any part leads to the whole sample.
    for start in (written[0], written[2]):
        back = read_sample(start)
        assert back.profile.name == "sysmex-xn-ret" and back.n_events == 140_000
        np.testing.assert_array_equal(back.events, sample.events)
        np.testing.assert_array_equal(back.auxiliary["ParticleID"], np.arange(1, 140_001))
    desc = describe_file(written[1])
    assert back.info.sample_id == "XN-7"
    assert desc["format"] == "sysmex-xn" and desc["events"] == 140_000 and len(desc["parts"]) == 3


def test_sysmex_missing_part_is_an_error(tmp_path):
    written = write_sample(_sysmex_sample(140_000), tmp_path / "P.116.csv")
    written[1].unlink()
    with pytest.raises(InputFileError, match=r"P\.116\(1\)\.csv: roll-over part 1 is missing \(found parts up to 2\)"):
        read_sample(written[0])


def test_sysmex_bad_cell_names_the_part(tmp_path):
    written = write_sample(_sysmex_sample(70_000), tmp_path / "Q.116.csv")
    lines = written[1].read_text().splitlines()
    lines[5] = lines[5].replace(",", ",x", 1)
    written[1].write_text("\n".join(lines) + "\n")
    with pytest.raises(InputFileError, match=r"Q\.116\(1\)\.csv: line 6: non-numeric value 'x1' in column Phase|Q\.116\(1\)\.csv: line 6: non-numeric"):
        read_sample(written[0])


def test_describe_csv_reports_profile_and_metadata(tmp_path, small_sample):
    path = tmp_path / "s.csv"
    write_sample(small_sample, path)
    d = describe_file(path)
    assert d["format"] == "csv" and d["events"] == 500 and d["profile"] == "optical-11"
    assert d["metadata"]["sample_id"] == "S-001"
    json.dumps(d)


@pytest.mark.parametrize("bound", [0.1, 1e-7, 123.456789, 65535.0, 3.4e38, 1e39])
def test_range_check_fast_path_decides_like_the_cell_check(bound):
    """check_events' one-reduction pre-check must accept exactly the tables the cell-by-cell
    check accepts, at float32 values next to bounds that float32 cannot hold exactly."""
    import dataclasses

    from edgehema.exceptions import InputFileError
    from edgehema.formats._table import check_events
    base = get_profile("optical-11")
    features = [dataclasses.replace(f, range=(-bound, bound)) for f in base.features]
    profile = dataclasses.replace(base, features=features)
    with np.errstate(over="ignore"):
        b32 = np.float32(bound)
    near = [np.nextafter(b32, np.float32(0)), b32, np.nextafter(b32, np.float32(np.inf))]
    for v in near + [-x for x in near]:
        events = np.zeros((300, len(features)), np.float32)
        events[123, 4] = v
        inside = -bound <= float(v) <= bound
        if inside:
            check_events(events, profile, Path("t.csv"))
        else:
            why = "inf, or a number beyond float32's 3.4e38, in column ssc_peak" if np.isinf(v) else "value .* in column ssc_peak is outside the range"
            with pytest.raises(InputFileError, match=f"line 125: {why}"):
                check_events(events, profile, Path("t.csv"))
