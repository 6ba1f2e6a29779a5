"""Classification end to end: accuracy against simulator truth, outputs, adaptation, errors."""

import csv
import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from edgehema.model import classes as C
from edgehema import write_sample
from edgehema.model.bundle import Bundle
from edgehema.model.classifier import Classifier
from edgehema.counts.result import classify_sample
from edgehema.simulator import InstrumentSettings, SampleSimulator


def run(*args, cwd=None):
    env = dict(os.environ, COLUMNS="160")
    return subprocess.run([sys.executable, "-m", "edgehema", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300, env=env)


@pytest.fixture(scope="module")
def clf():
    return Classifier()


@pytest.mark.parametrize("species,seed", [("human", 1), ("dog", 2), ("cat", 3), ("horse", 4), ("cattle", 5)])
def test_counts_match_truth(clf, species, seed):
    """Fresh samples (seeds unlike training): counts within clinical tolerances of the truth."""
    s = SampleSimulator(species, seed=880_000 + seed).generate(150_000)
    r = classify_sample(s.sample, clf).to_dict()
    t = s.truth
    assert abs(r["cells"]["rbc"] / t["cells"]["rbc"] - 1) < 0.015
    assert abs(r["cells"]["plt"] / t["cells"]["plt"] - 1) < (0.12 if species == "cat" else 0.08)
    assert abs(r["retic_percent"] - t["retic_percent"]) < 0.5
    # Concentrations come back from dilution and analyzed volume.
    assert r["concentration"]["rbc_per_uL"] == pytest.approx(t["concentration"]["rbc_per_uL"], rel=0.03)


def test_event_level_agreement(clf):
    s = SampleSimulator("human", seed=881_000).generate(100_000)
    inf = clf.infer(s.sample.events)
    for c, floor in ((C.RBC, 0.99), (C.PLT, 0.97), (C.COINCIDENCE, 0.7), (C.RETIC, 0.6)):
        tp = np.sum((inf.labels == c) & (s.labels == c))
        recall = tp / np.sum(s.labels == c)
        assert recall > floor, (C.EVENT_CLASSES[c], recall)
    assert np.allclose(inf.probabilities.sum(1), 1.0, atol=1e-6)


def test_adaptation_helps_on_drifting_gain():
    """Gain drift of +10 % and -10 % over the sample: adapting the mixtures per sample lowers the error."""
    adapted, fixed = Classifier(adapt=True), Classifier(adapt=False)
    gains = []
    for drift in (0.10, -0.10):
        s = SampleSimulator("cat", seed=882_000, instrument=InstrumentSettings(gain_drift=drift)).generate(150_000)
        err = []
        for c in (adapted, fixed):
            inf = c.infer(s.sample.events)
            err.append(np.mean(inf.labels != s.labels))
        gains.append(err[1] - err[0])
    assert all(g > 0 for g in gains), gains


def test_json_csv_events_out_and_table(tmp_path):
    files = []
    for i, species in enumerate(("human", "cat")):
        s = SampleSimulator(species, seed=883_000 + i).generate(20_000)
        p = tmp_path / f"{species}.csv"
        write_sample(s.sample, p)
        files.append(str(p))
    proc = run("classify", "--json", "--events-out", str(tmp_path / "ev"), *files)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["species"] for r in rows] == ["human", "cat"]  # input order kept across workers
    for r in rows:
        assert {"sample_id", "events", "cells", "retic_percent", "concentration", "flags", "model"} <= set(r)
        assert set(r["events"]) == {"rbc", "retic", "coincidence", "plt", "noise", "total"}
        assert sum(r["events"][k] for k in C.EVENT_CLASSES) == r["events"]["total"] == 20_000
        assert r["model"]["backend"] == "tflite" and len(r["model"]["sha256"]) == 64
        assert r["model"]["adaptation"]["adapted"] is True
        events = (tmp_path / "ev" / f"{r['sample_id']}.events.csv").read_text().splitlines()
        assert events[0].startswith("event,class,p_noise") and len(events) == 20_001
    proc = run("classify", "--csv", "--no-adapt", files[0])
    assert proc.returncode == 0, proc.stderr
    table = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert len(table) == 1 and int(table[0]["events_total"]) == 20_000
    proc = run("classify", files[1])
    assert proc.returncode == 0 and "cat" in proc.stdout and "RBC cells" in proc.stdout


def test_bad_file_among_good_ones(tmp_path):
    s = SampleSimulator("dog", seed=884_000).generate(12_000)
    good = tmp_path / "good.csv"
    write_sample(s.sample, good)
    bad = tmp_path / "bad.csv"
    bad.write_text("fsc_lo_peak\n1\n")
    proc = run("classify", "--json", str(good), str(bad), str(good))
    assert proc.returncode == 1
    assert len(proc.stdout.splitlines()) == 2  # both good results are out
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"edgehema: error: {bad}: header matches no instrument profile")


def test_wrong_profile_and_tampered_model(tmp_path):
    s = SampleSimulator("dog", profile="sysmex-xn-ret", seed=1).generate(5_000)
    xn = write_sample(s.sample, tmp_path / "X.116.csv")[0]
    proc = run("classify", str(xn))
    assert proc.returncode == 1 and "expects profile optical-11 features" in proc.stderr
    assert "Traceback" not in proc.stderr
    ref = tmp_path / "ref"
    shutil.copytree(Bundle.load().path, ref)
    data = bytearray((ref / "model.onnx").read_bytes())
    data[100] ^= 0xFF
    (ref / "model.onnx").write_bytes(bytes(data))
    proc = run("classify", "--model", str(ref), str(xn))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and "sha256 mismatch" in lines[0]


def test_flags(clf):
    few = SampleSimulator("human", seed=885_000).generate(3_000)
    assert "too_few_events" in classify_sample(few.sample, clf).counts.flags
    crowded = SampleSimulator("cat", seed=885_001, instrument=InstrumentSettings(dilution=150)).generate(60_000)
    r = classify_sample(crowded.sample, clf)
    assert "high_coincidence" in r.counts.flags
    clean = SampleSimulator("human", seed=885_002).generate(60_000)
    assert classify_sample(clean.sample, clf).counts.flags == []
