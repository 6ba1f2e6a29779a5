"""Regression tests for the defects a new user met (issue 16): metadata overrides, tables that cut
numbers, help text, bad paths and options, odd files. Each failed before its fix."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgehema import read_sample
from edgehema.sample import SampleInfo
from edgehema.sinks.text_table import Column, fit, plain

ROOT = Path(__file__).resolve().parents[1]


def run(*args, cwd=None, timeout=120, columns="80"):
    env = dict(os.environ, COLUMNS=columns)
    return subprocess.run([sys.executable, "-m", "edgehema", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env=env)


@pytest.fixture(scope="module")
def cat_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cat")
    for name, fmt in (("s.csv", "csv"), ("s.fcs", "fcs")):
        proc = run("simulate", "--species", "cat", "--events", "20000", "--seed", "7", "--out", str(d / name),
                   "--format", fmt, "-q")
        assert proc.returncode == 0, proc.stderr
    return d


# 1 ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["s.csv", "s.fcs"])
@pytest.mark.parametrize("option", [("--species", "dog"), ("--dilution", "500"), ("--volume-ul", "20")])
def test_overriding_metadata_keeps_the_sample_id(cat_files, name, option):
    proc = run("classify", str(cat_files / name), *option, "--csv")
    assert proc.returncode == 0, proc.stderr
    header, row = proc.stdout.strip().splitlines()
    values = dict(zip(header.split(","), row.split(",")))
    assert values["sample_id"] == "cat-7-0001"
    if option[0] == "--species":
        assert values["species"] == "dog"


def test_overlay_sets_only_given_fields():
    base = SampleInfo(sample_id="A", species="cat", dilution=625.0)
    assert base.overlay(SampleInfo(species="dog")) == SampleInfo(sample_id="A", species="dog", dilution=625.0)
    assert base.overlay(None) is base


# 2 ---------------------------------------------------------------------------------------------
def test_table_to_a_file_or_pipe_keeps_every_digit(cat_files, tmp_path):
    out = tmp_path / "out.txt"
    for proc, text in ((run("classify", str(cat_files / "s.csv"), "-o", str(out)), None),
                       (run("classify", str(cat_files / "s.csv")), "stdout")):
        assert proc.returncode == 0, proc.stderr
        text = proc.stdout if text == "stdout" else out.read_text()
        assert "…" not in text and "cat-7-0001" in text
        csv = run("classify", str(cat_files / "s.csv"), "--csv").stdout.splitlines()
        values = dict(zip(csv[0].split(","), csv[1].split(",")))
        # The full counts, with their thousands separators, stand in the table.
        assert f"{int(values['cells_rbc']):,}" in text and f"{int(values['events_total']):,}" in text
        assert "x10^6/uL" in text and "x10^3/uL" in text  # concentrations with units


def test_narrow_terminal_drops_columns_never_digits():
    cols = [Column("sample", "left", keep=9), Column("events", keep=3), Column("RBC cells", keep=6),
            Column("notes", "left", keep=1)]
    rows = [["cat-7-0001", "150,000", "148,570", "a fairly long note"]]
    shown = fit(cols, rows, 40)
    assert 0 in shown and 2 in shown and 3 not in shown
    text = plain("t", cols, rows)
    assert "150,000" in text and "148,570" in text and "a fairly long note" in text


def test_narrow_terminal_rendering(tmp_path):
    import io

    from edgehema.sinks.text_table import render

    cols = [Column("sample", "left", keep=9), Column("events", keep=3), Column("RBC cells", keep=6)]
    buf = io.StringIO()
    render("title", cols, [["cat-7-0001", "150,000", "148,570"]], buf, terminal=True, width=34)
    text = buf.getvalue()
    assert "148,570" in text and "cat-7-0001" in text and "…" not in text
    # Too narrow for every column: a block per sample, every column in it (issue 32 item 6).
    assert "  events" in text and "150,000" in text and "\x1b" not in text


def test_inspect_does_not_split_paths_when_piped(tmp_path):
    deep = tmp_path / ("a-rather-long-folder-name-" * 3)
    deep.mkdir()
    f = deep / "sample-with-a-long-name.csv"
    run("simulate", "--events", "500", "--out", str(f), "-q")
    proc = run("inspect", str(f), columns="40")
    assert proc.returncode == 0, proc.stderr
    assert str(f) in proc.stdout.splitlines()[0]


def test_help_shows_brackets_and_no_bool_type():
    proc = run("emulate", "--help")
    assert "KIND[@SAMPLE]" in proc.stdout and "<bool>" not in proc.stdout
    proc = run("export", "--help")
    assert "edgehema[export]" in proc.stdout
    proc = run("classify", "--help")
    assert "<bool>" not in proc.stdout


# 9 ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args,needle", [
    (("classify", "{csv}", "-o", "{tmp}"), "is a folder"),
    (("classify", "{csv}", "-o", "{tmp}/missing/out.txt"), "does not exist"),
    (("simulate", "--events", "100", "--out", "{tmp}"), "is a folder"),
    (("simulate", "--events", "100", "--out", "{tmp}/missing/x.csv"), "does not exist"),
    (("simulate", "--events", "100", "--out", "{tmp}/x.xyz"), "unknown file type .xyz"),
    (("simulate", "--events", "100", "--samples", "2", "--out", "{tmp}/x2.csv"), "names a folder"),
    (("classify", "{csv}", "--species", "unicorn"), "unknown species 'unicorn'"),
    (("emulate", "--file", "{tmp}/x.bin", "--samples", "2", "--fault", "drop@9"), "only 2 sample(s)"),
    (("stream", "--port", "socket://127.0.0.1:99999", "--no-reconnect", "--journal", "{tmp}/j.sqlite"),
     "PORT a number from 1 to 65535"),
    (("stream", "--port", "loop://", "--journal", "{tmp}/nonexistent/dir/j.sqlite"), "does not exist"),
    (("stream", "--port", "loop://", "--journal", "{tmp}/j.sqlite", "--archive", "{csv}"), "is a file, not a folder"),
    (("stream", "--config", "{tmp}/fast.toml"), "setting 'baud' (baud rate) must be a whole number, not 'fast'"),
    (("stream", "--config", "{tmp}/typo.toml"), "unknown setting 'recconect'; did you mean 'reconnect'?"),
])
def test_one_line_errors_instead_of_tracebacks(cat_files, tmp_path, args, needle):
    (tmp_path / "fast.toml").write_text('[stream]\nport = "loop://"\nbaud = "fast"\n')
    (tmp_path / "typo.toml").write_text('[stream]\nport = "loop://"\nrecconect = false\n')
    args = [a.format(csv=cat_files / "s.csv", tmp=tmp_path) for a in args]
    proc = run(*args, cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and lines[0].startswith("edgehema: error: "), proc.stderr
    assert needle in lines[0]
    assert not (tmp_path / "nonexistent").exists() and not (tmp_path / "x2.csv").exists()
    assert not (tmp_path / "x.xyz").exists()


def test_simulate_to_a_folder_is_read_back(tmp_path):
    proc = run("simulate", "--events", "300", "--samples", "2", "--out", str(tmp_path / "set"), "-q")
    assert proc.returncode == 0, proc.stderr
    files = sorted((tmp_path / "set").glob("*.csv"))
    assert len(files) == 2 and all(read_sample(f).n_events == 300 for f in files)
    assert np.all(np.isfinite(read_sample(files[0]).events))
    assert json.loads(run("inspect", "--json", str(files[0])).stdout)["events"] == 300


# 5 ---------------------------------------------------------------------------------------------
def _peak_rss_of(args, cwd):
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so a child of a big pytest process
    # would report the parent's peak.
    code = ("import sys, runpy; sys.argv = ['edgehema'] + sys.argv[1:]\n"
            "try:\n    runpy.run_module('edgehema', run_name='__main__')\n"
            "except SystemExit as e:\n    code = e.code\nelse:\n    code = 0\n"
            "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
            "print(hwm, file=sys.stderr); sys.exit(code)")
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=cwd, timeout=120)
    lines = proc.stderr.strip().splitlines()
    return proc.returncode, lines[:-1], int(lines[-1]) // 1024


def test_huge_sparse_file_is_refused_fast_in_bounded_memory(tmp_path):
    sparse = tmp_path / "sparse.csv"
    with open(sparse, "wb") as fh:
        fh.truncate(2 * 1024**3)  # 2 GB of NUL bytes, no line break
    for command in ("inspect", "classify"):
        code, lines, rss_mb = _peak_rss_of([command, str(sparse)], tmp_path)
        assert code == 1 and len(lines) == 1 and len(lines[0]) < 300, lines
        assert "longer than" in lines[0] and rss_mb < 400, (lines, rss_mb)


def test_huge_header_and_huge_cell_give_short_error_lines(tmp_path):
    header = tmp_path / "header.csv"
    header.write_text("x" * (20 * 1024 * 1024) + "\n1\n")
    cell = tmp_path / "cell.csv"
    head = "fsc_lo_peak,fsc_lo_area,fsc_hi_peak,fsc_hi_area,ssc_peak,ssc_area,fl_peak,fl_area,ext_peak,ext_area,ext_width"
    cell.write_text(head + "\n" + ",".join(["1"] * 11) + "\n" + "1" * 140_000 + "," + ",".join(["1"] * 10) + "\n")
    wide = tmp_path / "wide.csv"
    wide.write_text(",".join("c" + "x" * 300 + str(i) for i in range(3)) + "\n1,2,3\n")
    for path, needle in ((header, "longer than"), (cell, "line 3"), (wide, "column name of 302 characters")):
        proc = run("classify", str(path))
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and len(lines) == 1 and len(lines[0]) < 700 and needle in lines[0], lines
        assert "Traceback" not in proc.stderr


def test_inspect_refuses_what_classify_refuses(tmp_path, cat_files):
    text = (cat_files / "s.csv").read_text().splitlines()
    for name, value, needle in (("nan.csv", "nan", "nan in column"),
                                ("inf.csv", "inf", "inf, or a number beyond float32's 3.4e38, in column"),
                                ("big.csv", "1e39", "beyond float32's 3.4e38"),  # issue 32 item 8: was "inf"
                                ("neg.csv", "-5", "value -5 in column")):
        row = text[3].split(",")
        row[0] = value
        path = tmp_path / name
        path.write_text("\n".join(text[:3] + [",".join(row)] + text[4:50]) + "\n")
        for command in ("inspect", "classify"):
            proc = run(command, str(path))
            assert proc.returncode == 1 and "line 4" in proc.stderr and needle in proc.stderr, proc.stderr


def test_long_line_deep_in_a_file_is_found_with_its_line_number(tmp_path, cat_files, monkeypatch):
    from edgehema.formats import _table

    monkeypatch.setattr(_table, "BLOCK_BYTES", 997)  # line counting crosses many blocks
    lines = (cat_files / "s.csv").read_text().splitlines()
    lines[15_000] = "1" * 1_100_000  # over MAX_LINE: always caught (a shorter one is just parsed)
    path = tmp_path / "long.csv"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(Exception, match="line 15001: a line of more than 524,288 characters"):
        read_sample(path)
    # Line numbers of parse errors are right deep in a file too.
    lines = (cat_files / "s.csv").read_text().splitlines()
    lines[12_345] = lines[12_345].replace(",", ",oops", 1)
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(Exception, match="line 12346: non-numeric value 'oops"):
        read_sample(bad)
    nul = tmp_path / "nul.csv"
    nul.write_bytes(("\n".join(lines[:100]) + "\n").encode() + b"1,2\x00,3\n")
    with pytest.raises(Exception, match="line 101: NUL byte"):
        read_sample(nul)


# 6 ---------------------------------------------------------------------------------------------
def test_fcs_whose_tot_disagrees_with_data_is_flagged(tmp_path, cat_files):
    data = (cat_files / "s.fcs").read_bytes()
    i = data.find(b"$TOT")
    sep = data[i + 4:i + 5]
    bad = tmp_path / "tot.fcs"
    bad.write_bytes(data.replace(b"$TOT" + sep + b"20000", b"$TOT" + sep + b"19990"))
    proc = run("classify", str(bad), "--json")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["events"]["total"] == 20000 and "file_event_total_mismatch" in r["flags"]
    assert "19,990" in r["flag_details"]["file_event_total_mismatch"]
    clean = json.loads(run("classify", str(cat_files / "s.fcs"), "--json").stdout)
    assert "file_event_total_mismatch" not in clean["flags"]


# 7 ---------------------------------------------------------------------------------------------
def test_sysmex_files_say_plainly_that_no_shipped_model_reads_them(tmp_path):
    run("simulate", "--events", "3000", "--out", str(tmp_path / "x.116.csv"), "-q")
    assert run("inspect", str(tmp_path / "x.116.csv")).returncode == 0
    proc = run("classify", str(tmp_path / "x.116.csv"))
    assert proc.returncode == 1 and "no shipped model is trained for profile sysmex-xn-ret" in proc.stderr
    assert "--model BUNDLE" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


# 8 ---------------------------------------------------------------------------------------------
def test_shipped_int8_model_passes_the_default_export_gates():
    pytest.importorskip("onnx", reason="the export extra is not installed")
    from export.event_model.quantize import default_gates

    parity = json.loads((ROOT / "edgehema" / "model" / "shipped" / "reference-int8" / "parity.json").read_text())
    gates = default_gates("onnx-int8")
    assert parity["size_ratio"] <= gates["size_ratio"], (parity["size_ratio"], gates)


def test_export_without_the_extra_names_the_extra(tmp_path, cat_files):
    code = ("import sys\nfor m in ('onnx', 'onnx2tf', 'tensorflow', 'torch'): sys.modules[m] = None\n"
            "sys.argv = ['edgehema', 'export', '--target', 'onnx-int8', '--calibration', sys.argv[1], '--out', sys.argv[2]]\n"
            "from edgehema.cli import main\nmain()")
    proc = subprocess.run([sys.executable, "-c", code, str(cat_files / "s.csv"), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert "pip install 'edgehema[export]'" in lines[0] and "missing here: onnx" in lines[0]
    assert not (tmp_path / "out").exists()


def test_result_names_the_graph_that_ran(cat_files):
    tfl = json.loads(run("classify", str(cat_files / "s.csv"), "--json").stdout)["model"]
    onx = json.loads(run("classify", str(cat_files / "s.csv"), "--json", "--backend", "onnx").stdout)["model"]
    assert (tfl["backend"], tfl["file"], tfl["precision"]) == ("tflite", "model.tflite", "int8")
    assert (onx["backend"], onx["file"], onx["precision"]) == ("onnx", "model.onnx", "float32")
    assert tfl["file_sha256"] != onx["file_sha256"] and len(onx["file_sha256"]) == 64


def test_info_and_models_show_the_default_model():
    from edgehema.model.bundle import DEFAULT_BUNDLE

    proc = run("info")
    assert proc.returncode == 0 and "(the default model)" in proc.stdout.splitlines()[0]
    assert "tflite-int8" in proc.stdout.splitlines()[0]
    proc = run("models")
    marked = [line for line in proc.stdout.splitlines() if "(default)" in line]
    assert len(marked) == 1 and marked[0].startswith(DEFAULT_BUNDLE)


def test_evaluate_measures_the_default_model_next_to_the_float_one():
    proc = run("evaluate", "--species", "dog", "--samples", "1", "--events", "20000", "--json", timeout=300)
    assert proc.returncode == 0, proc.stderr
    methods = [s["method"] for s in json.loads(proc.stdout)["summary"]]
    assert methods[:2] == ["default", "reference"]


# 10 --------------------------------------------------------------------------------------------
def test_readme_python_example_runs_after_the_readme_commands(tmp_path):
    readme = (ROOT / "README.md").read_text()
    commands = readme.split("```text", 1)[1].split("```", 1)[0]
    first = next(line for line in commands.strip().splitlines() if line.startswith("edgehema simulate"))
    first = first.split("#")[0].split()
    assert run(*first[1:], cwd=tmp_path).returncode == 0
    example = readme.split("```python", 1)[1].split("```", 1)[0]
    proc = subprocess.run([sys.executable, "-c", example], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_demo_leaves_nothing_behind_and_shows_concentrations(tmp_path):
    proc = run("demo", "--samples", "1", "--events", "5000", "--rate", "50000", cwd=tmp_path, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert list(tmp_path.iterdir()) == []
    assert "x10^6/uL" in proc.stdout and "…" not in proc.stdout
    kept = tmp_path / "kept"
    proc = run("demo", "--samples", "1", "--events", "5000", "--rate", "50000", "--workdir", str(kept), cwd=tmp_path,
               timeout=180)
    assert proc.returncode == 0 and (kept / "journal.sqlite").exists() and list((kept / "archive").glob("*.ehw"))
