"""Known-answer self-test at start-up, and a frame decoder that needs no C extension.

An engine that computes wrong numbers on this CPU must never count: here a backend wrapper that
shuffles the engine's outputs stands for such an engine (as LiteRT did under an emulated SME CPU).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgehema.model import backends
from edgehema.model.bundle import Bundle
from edgehema.model.classifier import Classifier
from edgehema.exceptions import BackendError
from edgehema.model.selftest import KNOWN_ANSWER, check
from firmware_bridge import codec


class Shuffled:
    """An engine whose numbers are wrong: each output's rows come back in another order."""

    def __init__(self, inner):
        self.inner = inner
        self.name = inner.name

    def run(self, x):
        rng = np.random.default_rng(len(x))
        return {k: v[rng.permutation(len(v))] for k, v in self.inner.run(x).items()}


@pytest.fixture
def broken_tflite(monkeypatch):
    real = backends.BACKENDS["tflite"]
    monkeypatch.setitem(backends.BACKENDS, "tflite", lambda bundle, threads: Shuffled(real(bundle, threads)))


def test_every_shipped_bundle_passes_its_known_answer_on_every_engine_here():
    for name in ("reference", "reference-int8", "reference-tflite-int8", "supervised-mlp"):
        bundle = Bundle.load(name)
        assert KNOWN_ANSWER in bundle.manifest["files"]
        for engine in backends.engine_order(bundle, "auto"):
            try:
                clf = Classifier(bundle, backend=engine, selftest=False)
            except BackendError:
                continue  # this bundle has no model for that engine
            result = check(clf)
            assert result.passed and result.agreement >= 0.995, result.line()


def test_auto_refuses_a_wrong_engine_and_falls_back(broken_tflite):
    clf = Classifier("reference-tflite-int8")
    assert clf.backend_name == "onnx" and clf.selftest.passed
    assert len(clf.refused) == 1 and "engine tflite FAILED the known-answer self-test" in clf.refused[0]


def test_an_explicit_wrong_engine_is_an_error(broken_tflite):
    with pytest.raises(BackendError, match="engine tflite FAILED the known-answer self-test") as info:
        Classifier("reference-tflite-int8", backend="tflite")
    assert "\n" not in str(info.value)


def test_result_records_the_engine_that_passed(small_sample):
    from edgehema.counts.result import classify_sample

    r = classify_sample(small_sample, Classifier("reference-tflite-int8")).to_dict()
    assert r["model"]["selftest"]["engine"] == "tflite" and r["model"]["selftest"]["passed"] is True


INJECT = ("import sys, numpy as np\n"
          "from edgehema.model import backends\n"
          "real = backends.BACKENDS['tflite']\n"
          "class Shuffled:\n"
          "    def __init__(self, inner): self.inner, self.name = inner, inner.name\n"
          "    def run(self, x):\n"
          "        rng = np.random.default_rng(len(x))\n"
          "        return {k: v[rng.permutation(len(v))] for k, v in self.inner.run(x).items()}\n"
          "backends.BACKENDS['tflite'] = lambda b, t: Shuffled(real(b, t))\n"
          "sys.argv = ['edgehema'] + sys.argv[1:]\n"
          "from edgehema.cli import main\nmain()\n")


def test_cli_start_up_refuses_the_wrong_engine_with_one_line(tmp_path):
    sample = tmp_path / "s.csv"
    subprocess.run([sys.executable, "-m", "edgehema", "simulate", "--events", "3000", "--out", str(sample), "-q"],
                   check=True)
    proc = subprocess.run([sys.executable, "-c", INJECT, "classify", str(sample), "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    warnings = proc.stderr.strip().splitlines()
    assert len(warnings) == 1 and warnings[0].startswith("edgehema: warning: ") and "tflite FAILED" in warnings[0]
    assert "counting on onnx" in warnings[0]
    assert json.loads(proc.stdout)["model"]["selftest"]["engine"] == "onnx"
    proc = subprocess.run([sys.executable, "-c", INJECT, "classify", str(sample), "--backend", "tflite"],
                          capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and "tflite FAILED the known-answer self-test" in lines[0]
    proc = subprocess.run([sys.executable, "-c", INJECT, "selftest"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "engine tflite FAILED" in proc.stdout and "engine onnx passed" in proc.stdout


def test_selftest_command_runs_both_engines():
    proc = subprocess.run([sys.executable, "-m", "edgehema", "selftest"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "engine tflite passed" in proc.stdout and "engine onnx passed" in proc.stdout
    assert "frame decoder: " in proc.stdout and "MB/s" in proc.stdout
    assert "latent-space assignment: " in proc.stdout and "CSV reader: " in proc.stdout


def test_a_bundle_without_known_answer_still_loads_and_says_so(tmp_path):
    import shutil

    from edgehema.model.bundle import MANIFEST, seal

    folder = tmp_path / "old"
    shutil.copytree(Bundle.load("reference").path, folder)
    (folder / KNOWN_ANSWER).unlink()
    m = json.loads((folder / MANIFEST).read_text())
    m["files"].pop(KNOWN_ANSWER)
    (folder / MANIFEST).write_text(json.dumps(seal(m, folder)))
    clf = Classifier(Bundle.load(folder))
    assert clf.selftest is None and clf.refused == []
    info = subprocess.run([sys.executable, "-m", "edgehema", "info", str(folder)], capture_output=True, text=True)
    assert "known answer: none" in info.stdout
    proc = subprocess.run([sys.executable, "-m", "edgehema", "selftest", "--model", str(folder)],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "carries no known answer" in proc.stderr


# ------------------------------------------------------------------------- the frame decoder
@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=1200), st.integers(0, 6))
def test_block_walk_decodes_exactly_as_the_c_extension(raw, zero_every):
    from cobs import cobs

    if zero_every:
        raw = bytes(b if i % (zero_every * 37) else 0 for i, b in enumerate(raw))
    enc = cobs.encode(raw)
    assert codec.cobs_decode_walk(enc) == raw


@settings(max_examples=400, deadline=None)
@given(st.binary(min_size=1, max_size=600).map(lambda b: b.replace(b"\x00", b"\x01")))
def test_block_walk_refuses_what_the_c_extension_refuses(garbage):
    from cobs import cobs

    try:
        want = cobs.decode(garbage)
    except cobs.DecodeError:
        want = None
    try:
        got = codec.cobs_decode_walk(garbage)
    except codec.CobsError:
        got = None
    assert got == want


def test_stream_end_to_end_without_the_c_extension(tmp_path):
    """The whole stream on the block-walk decoder: same results as with the C extension."""
    from edgehema.simulator.emulator import InstrumentEmulator, write_file

    emu = InstrumentEmulator("dog", samples=2, events=8000, seed=3)
    data = tmp_path / "wire.bin"
    write_file(emu, str(data))
    out = {}
    for decoder in ("c", "walk"):
        proc = subprocess.run([sys.executable, "-m", "edgehema", "replay", str(data)], capture_output=True, text=True,
                              env=dict(os.environ, EHWIRE_COBS=decoder), timeout=120)
        assert proc.returncode == 0, proc.stderr
        out[decoder] = [json.loads(line) for line in proc.stdout.splitlines()]
    for a, b in zip(out["c"], out["walk"]):
        a.pop("seconds"), b.pop("seconds")
        assert a == b
    assert len(out["walk"]) == 2 and all(r["events"]["total"] == 8000 for r in out["walk"])


@pytest.fixture
def saturating_fused_kernels(monkeypatch):
    """What onnxruntime's fused int8 kernels did on an x86 CPU without VNNI with full-range weights:
    the classes right, the reconstruction error wrong (every event out of distribution)."""
    from edgehema.model.backends.onnx_backend import OnnxBackend

    real = OnnxBackend.run

    def run(self, x):
        out = real(self, x)
        if self.fused and "recon_err" in out:
            out["recon_err"] = out["recon_err"] + 10.0
        return out

    monkeypatch.setattr(OnnxBackend, "run", run)


def test_the_known_answer_checks_the_out_of_distribution_score(saturating_fused_kernels):
    # A float bundle has no unfused fallback: the engine is refused, naming the reconstruction.
    with pytest.raises(BackendError, match="scored out of distribution .*miscomputes the reconstruction"):
        Classifier("reference", backend="onnx")


def test_int8_onnx_falls_back_to_the_unfused_graph_and_counts_right(saturating_fused_kernels):
    from edgehema.counts.result import classify_sample
    from edgehema.simulator import SampleSimulator

    sample = SampleSimulator("dog", seed=11).generate(30_000).sample
    clf = Classifier("reference-int8", backend="onnx")
    assert clf.backend.fused is False and clf.selftest.passed
    assert any("running the graph unfused" in line for line in clf.refused)
    r = classify_sample(sample, clf).to_dict()
    assert r["model"]["graph"] == "unfused" and "out_of_distribution" not in r["flags"]
    assert r["model"]["selftest"]["ood_fraction"] < 0.01


def test_shipped_int8_onnx_runs_fused_here():
    """The shipped int8 ONNX graph (7-bit weights) passes its known answer with the fused kernels on
    this machine's CPU, out-of-distribution score included."""
    clf = Classifier("reference-int8", backend="onnx")
    assert clf.backend.fused is True and clf.selftest.passed and clf.selftest.ood_fraction < 0.01


def test_selftest_command_shows_the_unfused_fallback(saturating_fused_kernels):
    from typer.testing import CliRunner

    from edgehema.cli import app

    r = CliRunner().invoke(app, ["selftest", "--model", "reference-int8"])
    assert r.exit_code == 0, r.output
    assert "engine onnx FAILED" in r.output and "unfused graph: engine onnx passed" in r.output


def test_demo_shows_the_engine_fallback(tmp_path):
    """Issue 32 item 10: demo printed no warning when the default engine failed its self-test (the
    stream's log went to a list it never showed)."""
    proc = subprocess.run([sys.executable, "-c", INJECT, "demo", "--samples", "1", "--events", "5000"],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("edgehema: warning: ")]
    assert len(warnings) == 1 and "tflite FAILED" in warnings[0] and "counting on onnx" in warnings[0], proc.stderr
    assert "on onnx" in proc.stdout
