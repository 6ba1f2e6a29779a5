"""``edgehema train``: the reference CSV, the supervision it turns into, bad input, and a tiny
end-to-end run (train -> info -> export int8 -> classify) on a simulated instrument the shipped
model was not designed on. The accuracy figures at full scale are in docs/training.md."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

torch = pytest.importorskip("torch", reason="edgehema train needs torch (pip install -e '.[export]')")

from edgehema.model.bundle import Bundle  # noqa: E402
from edgehema.cli import app  # noqa: E402
from edgehema.exceptions import EdgehemaError  # noqa: E402
from edgehema.simulator import SampleSimulator  # noqa: E402
from export.training import FitSettings, TrainingDataProblems, read_reference, train  # noqa: E402
from export.training import crossval  # noqa: E402
from export.training.dataset import EventStore, discover, scan  # noqa: E402
from export.training.errors import TrainingError  # noqa: E402
from export.training.fit import Preprocessing, fit  # noqa: E402
from export.training.reference import ReferenceProblems  # noqa: E402
from export.training.simulated import simulate_instrument  # noqa: E402
from export.training.supervision import targets_for, unit_rate  # noqa: E402

runner = CliRunner()


def _csv(tmp_path: Path, text: str | bytes, name: str = "ref.csv") -> Path:
    p = tmp_path / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return p


# ------------------------------------------------------------------ the reference CSV
def test_reference_units_as_analyzers_report_them(tmp_path):
    p = _csv(tmp_path, "sample_id,RBC (10^12/L),PLT [10^9/L],RET %,dilution,volume_ul,comment\n"
                       "A,4.5,250,1.2,625,0.5,ok\nB,,180,,,,\n")
    t = read_reference(p)
    a, b = t.rows
    assert a.rbc_per_ul == pytest.approx(4.5e6) and a.plt_per_ul == pytest.approx(250e3)
    assert a.retic_percent == 1.2 and a.dilution == 625 and a.volume_ul == 0.5
    assert a.plt_to_rbc == pytest.approx(250e3 / 4.5e6)
    assert b.rbc_per_ul is None and b.plt_per_ul == pytest.approx(180e3) and b.plt_to_rbc is None
    assert t.columns["rbc"] == "RBC (10^12/L)"


@pytest.mark.parametrize("encoding,bom", [("utf-8", b"\xef\xbb\xbf"), ("utf-16", b""), ("cp1252", b"")])
def test_reference_encodings_and_bom(tmp_path, encoding, bom):
    text = "sample_id;rbc (cells/\u00b5L);plt (cells/\u00b5L);retic_percent\r\nS1;4500000;250000;1,5\r\n"
    p = _csv(tmp_path, bom + text.encode(encoding))
    (row,) = read_reference(p).rows
    assert row.key == "S1" and row.rbc_per_ul == 4.5e6 and row.plt_per_ul == 2.5e5
    assert row.retic_percent == 1.5  # decimal comma with semicolons


def test_reference_problems_are_listed_together(tmp_path):
    p = _csv(tmp_path, "sample_id,rbc,plt (10^9/L),retic_percent\n"
                       "A,4.5,250,1\n"          # RBC without a unit, as 10^12/L: implausible
                       "B,4500000,-3,1\n"       # negative
                       "C,4500000,abc,1\n"      # not a number
                       "D,4500000,200,140\n"    # over 100 %
                       "E,4500000,200,1\n"
                       "E,4600000,210,1\n")     # duplicated id
    with pytest.raises(ReferenceProblems) as exc:
        read_reference(p)
    lines = exc.value.problems
    assert len(lines) == 5, lines
    joined = "\n".join(lines)
    for expected in ("line 2: rbc 4.5 cells/uL is implausible", "line 3: plt (10^9/L) -3 is negative",
                     "line 4: plt (10^9/L) 'abc' is not a number", "line 5: retic_percent 140 is over 100 %",
                     "line 7: sample_id 'E' again (first on line 6)"):
        assert expected in joined


def test_reference_header_problems(tmp_path):
    with pytest.raises(ReferenceProblems, match="no sample_id or file column"):
        read_reference(_csv(tmp_path, "name,rbc\nA,4500000\n"))
    with pytest.raises(ReferenceProblems, match="unit 'mmol/l'"):
        read_reference(_csv(tmp_path, "sample_id,rbc (mmol/L)\nA,4\n"))
    with pytest.raises(ReferenceProblems, match="is empty"):
        read_reference(_csv(tmp_path, b""))


# ------------------------------------------------------------------ supervision
def test_unit_rate_inverts_the_recorded_rate():
    for lam, tau in ((0.001, 5.0), (0.01, 5.0), (0.05, 3.0)):
        assert unit_rate(lam * math.exp(-lam * tau), tau) == pytest.approx(lam, rel=1e-6)


def _targets_beside_truth(files, table, truths):
    """Per file: its training targets, the simulator's hidden event counts, the red-cell side and
    the targets by share name."""
    found, _ = scan(files, table, None, 2000, 64.0)
    assert not found.problems
    for f, t in zip(found.files, truths):
        tg = targets_for(f, found.profile.coincidence_window_us)
        e = t["events"]
        yield f, tg, e, e["rbc"] + e["retic"] + e["coincidence"], {s.name: s.target for s in tg.stage1 + tg.stage2}


def test_poisson_targets_match_the_simulators_event_counts(tmp_path):
    """From PLT:RBC, RET % and the acquisition time alone, the event shares each stage is trained on
    are those the simulator actually produced (which the trainer never sees), within what Poisson
    occupancy cannot know: aggregates (rouleaux, platelet clumps) are coincidences by adhesion, not
    by chance, and move the shares by up to 9 % (coincidence) and 8 % (platelets) here."""
    files, ref, truths = simulate_instrument("optical-b", tmp_path / "d", 6, 60_000, seed=11)
    for f, tg, e, side, shares in _targets_beside_truth(files, read_reference(ref), truths):
        assert tg.coincidence == "poisson"
        assert shares["plt/(plt+rbc_side)"] == pytest.approx(e["plt"] / (e["plt"] + side), rel=0.10), f.stem
        assert shares["coincidence/side"] == pytest.approx(e["coincidence"] / side, rel=0.2), f.stem
        assert shares["retic/(rbc+retic)"] == pytest.approx(e["retic"] / (e["rbc"] + e["retic"]), rel=0.1, abs=2e-4)


def test_event_counts_per_class_supervise_every_share(tmp_path):
    """A reference that counted each file's events per class (expert gates; the simulator for the
    shipped model) supervises every share as given, noise and coincidences included; a class absent
    from a sample (a horse's reticulocytes) is floored, not a log of zero."""
    files, ref, truths = simulate_instrument("optical-b", tmp_path / "d", 3, 20_000, seed=12, event_counts=True)
    table = read_reference(ref)
    assert table.rows[0].event_counts is not None and "events_noise" in table.columns
    for f, tg, e, side, shares in _targets_beside_truth(files, table, truths):
        assert tg.coincidence == "counted"
        assert shares["noise/all"] == pytest.approx(max(e["noise"] / e["total"], 1e-5), rel=1e-4)
        assert shares["coincidence/side"] == pytest.approx(e["coincidence"] / side, rel=1e-4)
        assert shares["retic/side"] == pytest.approx(max(e["retic"] / side, 1e-5), rel=1e-4)
    horse = tmp_path / "horse.csv"
    horse.write_text("sample_id,rbc,plt,events_noise,events_rbc,events_retic,events_coincidence,events_plt\n"
                     f"{files[0].stem},7000000,200000,10,9000,0,500,489\n", encoding="utf-8")
    found, _ = scan(files[:1], read_reference(horse), None, 2000, 64.0)
    shares = {s.name: s.target for s in targets_for(found.files[0], found.profile.coincidence_window_us).stage2}
    assert shares["retic/side"] == 1e-5 and all(v > 0 for v in shares.values())


def test_event_counts_are_all_five_or_none(tmp_path):
    p = _csv(tmp_path, "sample_id,rbc,events_noise,events_rbc\nA,5000000,1,2\n")
    with pytest.raises(ReferenceProblems) as e:
        read_reference(p)
    assert "event counts per class need all of" in e.value.problems[0] and "missing events_retic" in e.value.problems[0]
    p = _csv(tmp_path, "sample_id,rbc,events_noise,events_rbc,events_retic,events_coincidence,events_plt\n"
                       "A,5000000,1,2,3,4,5\nB,5000000,1,2,,4,5\nC,5000000,0,0,0,0,0\n")
    with pytest.raises(ReferenceProblems) as e:
        read_reference(p)
    assert e.value.problems[0].endswith("line 3: event counts per class are all five or none; empty: events_retic")
    assert e.value.problems[1].endswith("line 4: the event counts per class add up to 0")


def test_event_store_rereads_what_its_budget_cannot_hold(tmp_path):
    files, ref, _ = simulate_instrument("optical-b", tmp_path / "d", 4, 5000, seed=3)
    found, store = scan(files, read_reference(ref), None, 3000, cache_mb=0.2)  # 3000 x 11 x 4 B = 0.13 MB each
    assert store.cached_mb <= 0.2
    first = [store.events(i).copy() for i in range(4)]
    assert store.reads >= 3
    again = EventStore(found.files, found.profile, 3000, 1024.0)
    for i in range(4):
        np.testing.assert_array_equal(again.events(i), first[i])


# ------------------------------------------------------------------ bad input through the CLI
@pytest.fixture(scope="module")
def instrument_b(tmp_path_factory):
    d = tmp_path_factory.mktemp("optical-b")
    files, ref, truths = simulate_instrument("optical-b", d / "train", 9, 8000, seed=5)
    held, held_ref, _ = simulate_instrument("optical-b", d / "held", 3, 8000, seed=6)
    return d, files, ref, held, held_ref


def _train(args):
    return runner.invoke(app, ["train", *map(str, args)])


def _error_lines(result) -> list[str]:
    """The error lines a user sees: printed ones, and the EdgehemaError edgehema.cli.main prints."""
    lines = [line for line in result.stderr.splitlines() if line.startswith("edgehema: error:")]
    if isinstance(result.exception, EdgehemaError):
        lines.append(f"edgehema: error: {result.exception}")
    return lines


def test_bad_data_is_listed_line_by_line_and_nothing_is_trained(instrument_b, tmp_path):
    d, files, ref, _, _ = instrument_b
    data = tmp_path / "data"
    data.mkdir()
    for f in files[:4]:
        (data / f.name).write_bytes(f.read_bytes())
    (data / "empty.csv").write_bytes(b"")
    other = SampleSimulator("dog", profile="sysmex-xn-ret", seed=1).generate(3000)
    from edgehema.formats import write_sample

    write_sample(other.sample, data / "other.116.csv", "sysmex-xn")
    rows = ref.read_text(encoding="utf-8").splitlines()
    bad = "\n".join(rows[:5] + [rows[4], "ghost-sample,7.1,300,1.0,300,0.8", rows[1].split(",")[0] + "x,-1,300,1,300,0.8"]) + "\n"
    ref2 = _csv(tmp_path, bad)
    result = _train([data, "--reference", ref2, "--out", tmp_path / "m", "--scale", "tiny", "--folds", "0"])
    assert result.exit_code == 1
    lines = _error_lines(result)
    text = "\n".join(lines)
    # Every problem of the reference and of the data, together, before anything is trained.
    assert "line 6: sample_id" in lines[0] and "again (first on line 5)" in lines[0]  # duplicated id
    assert "line 8: rbc (10^12/L) -1 is negative" in lines[1]
    assert "empty.csv: empty file" in lines[2]
    assert "other.116.csv: profile sysmex-xn-ret, the other files are optical-11" in lines[3]
    assert lines[4].endswith("4 problem(s) above; nothing was trained") and len(lines) == 5, text
    assert "Traceback" not in result.output and not (tmp_path / "m").exists()


def test_tune_without_optuna_is_one_line(instrument_b, tmp_path, monkeypatch):
    d, files, ref, _, _ = instrument_b
    monkeypatch.setitem(sys.modules, "optuna", None)  # as if the extra were not installed
    result = _train([d / "train", "--reference", ref, "--out", tmp_path / "m", "--tune", "2", "--folds", "2"])
    assert result.exit_code == 1
    (line,) = _error_lines(result)
    assert "--tune needs optuna" in line and "edgehema[export]" in line


def test_init_from_a_bundle_of_another_profile_is_refused(tmp_path):
    files, ref, _ = simulate_instrument("sysmex-c", tmp_path / "s", 3, 3000, seed=2)
    result = _train([tmp_path / "s", "--reference", ref, "--init", "reference", "--out", tmp_path / "m",
                     "--scale", "tiny", "--folds", "0"])
    assert result.exit_code == 1
    (line,) = _error_lines(result)
    assert "trained on profile optical-11" in line and "train from scratch" in line


def test_cuda_without_a_gpu_is_one_line(instrument_b, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    d, files, ref, _, _ = instrument_b
    result = _train([d / "train", "--reference", ref, "--out", tmp_path / "m", "--device", "cuda", "--scale", "tiny"])
    assert result.exit_code == 1 and "no CUDA GPU" in _error_lines(result)[0]


# ------------------------------------------------------------------ end to end, tiny
@pytest.fixture(scope="module")
def trained(instrument_b, tmp_path_factory):
    d, files, ref, held, held_ref = instrument_b
    # One file loses its row: it is used unsupervised, and said so.
    rows = ref.read_text(encoding="utf-8").splitlines()
    ref2 = d / "partial.csv"
    ref2.write_text("\n".join(rows[:-1]) + "\n", encoding="utf-8")
    out = tmp_path_factory.mktemp("model") / "b-model"
    # Files named one by one (the folder also holds the full reference CSV, which is no event file).
    result = _train([*files, "--reference", ref2, "--out", out, "--scale", "tiny", "--folds", "3", "--seed", "4"])
    return out, result, held, held_ref


def test_train_writes_a_bundle_with_model_card_and_report(trained):
    out, result, _, _ = trained
    assert result.exit_code == 0, result.output
    assert "3-fold cross-validation: 8 held-out samples" in result.stdout
    assert "used unsupervised" in result.stdout
    b = Bundle.load(out)  # every member hash-checked, crossval files included
    card = b.manifest["model_card"]
    assert card["data"]["files"] == 9 and card["data"]["with_reference"] == 8 and card["data"]["unsupervised"] == 1
    assert card["data"]["species"] == {"cat": 3, "dog": 3, "horse": 3}
    assert card["supervision"]["coincidences"] == ["poisson"]
    assert card["crossval"]["samples"] == 8 and card["crossval"]["plt_err_pct"]["n"] == 8
    assert card["seed"] == 4 and card["settings"]["seed"] == 4
    report = json.loads((out / "crossval.json").read_text())
    assert len(report["predictions"]) == 8 and {p["fold"] for p in report["predictions"]} == {0, 1, 2}
    assert (out / "crossval.csv").read_text().count("\n") == 9
    info = runner.invoke(app, ["info", str(out)])
    assert info.exit_code == 0 and "model card: 9 files" in info.stdout and "cross-validation (3 folds, 8 samples)" in info.stdout


def test_trained_model_exports_to_int8_and_classifies_held_out_files(trained, tmp_path):
    out, _, held, held_ref = trained
    int8 = tmp_path / "int8"
    r = runner.invoke(app, ["export", str(out), "--target", "onnx-int8", "--calibration", str(held[0]),
                            "--out", str(int8), "--fail-under", "none"])
    assert r.exit_code == 0, r.output
    assert Bundle.load(int8).manifest["model_card"]["data"]["files"] == 9
    r = runner.invoke(app, ["classify", "--json", "--model", str(int8), *map(str, held)])
    assert r.exit_code == 0, r.output
    results = [json.loads(line) for line in r.stdout.splitlines()]
    assert [x["events"]["total"] for x in results] == [8000] * 3
    assert all(x["model"]["precision"] == "int8" for x in results)


def test_fit_is_deterministic_on_cpu(instrument_b):
    d, files, ref, _, _ = instrument_b
    found, store = scan(files[:4], read_reference(ref), None, 2000, 64.0)
    targets = [targets_for(f, found.profile.coincidence_window_us) for f in found.files]
    pre = Preprocessing(found.log_mean, found.log_std)
    cfg = FitSettings.tiny(pretrain_steps=20, stage1_steps=30, stage2_steps=30, events_per_sample=2000)
    a = fit(cfg, store, [0, 1, 2, 3], targets, pre)
    b = fit(cfg, store, [0, 1, 2, 3], targets, pre)
    assert torch.equal(a.idec.centroids, b.idec.centroids) and torch.equal(a.vade.mu_c, b.vade.mu_c)
    assert np.mean(a.history["stage1"][-5:]) < np.mean(a.history["stage1"][:5])


def test_fine_tune_from_reference_and_own_profile_file(tmp_path):
    """--init reference keeps the shipped architecture; a user's TOML profile (here the 4-feature
    Sysmex profile under another name) travels inside the bundle and the bundle runs without it."""
    files, ref, _ = simulate_instrument("optical-b", tmp_path / "b", 3, 4000, seed=8)
    res = train([tmp_path / "b"], ref, tmp_path / "ft", init="reference", folds=0,
                settings=FitSettings.tiny(pretrain_steps=10, stage1_steps=20, stage2_steps=20), log=lambda _: None)
    card = res.manifest["model_card"]
    assert card["init"]["name"] == "edgehema-reference"
    assert res.manifest["training"]["recipe_settings"]["hidden"] == [64, 32]
    shipped = Bundle.load("reference").manifest["preprocessing"]
    assert res.manifest["preprocessing"] == shipped  # the fine-tuned weights read the same inputs

    from importlib import resources

    text = (resources.files("edgehema.profiles") / "sysmex-xn-ret.toml").read_text(encoding="utf-8")
    own = tmp_path / "my-xn.toml"
    own.write_text(text.replace('name = "sysmex-xn-ret"', 'name = "my-xn"'), encoding="utf-8")
    sim_files = []
    from edgehema.formats import write_sample

    (tmp_path / "x").mkdir()
    rows = ["sample_id,rbc,plt,retic_percent"]
    for k in range(3):
        s = SampleSimulator(["human", "dog", "cattle"][k], profile=str(own), seed=k).generate(4000)
        sim_files += write_sample(s.sample, tmp_path / "x" / f"x{k}.csv", "csv")[:1]
        rows.append(f"x{k},{s.truth['cells']['rbc'] * 100},{s.truth['cells']['plt'] * 100},{s.truth['retic_percent']}")
    ref = _csv(tmp_path, "\n".join(rows) + "\n", "x.csv")
    res = train(sim_files, ref, tmp_path / "xm", profile=str(own), folds=0,
                settings=FitSettings.tiny(pretrain_steps=10, stage1_steps=20, stage2_steps=20), log=lambda _: None)
    b = Bundle.load(tmp_path / "xm")
    assert b.manifest["profile"] == "my-xn" and "profile.toml" in b.manifest["files"]
    own.unlink()  # the device has no copy of the user's profile: the bundle's own is used
    assert b.profile().feature_names == ("FSC", "SSC", "SFL", "FSCW")
    assert res.manifest["model_card"]["supervision"]["coincidences"] == ["unsupervised"]  # CSV without times
    r = runner.invoke(app, ["selftest", "--model", str(tmp_path / "xm")])
    assert r.exit_code == 0, r.output


def test_discover_skips_reference_truth_and_part_files(tmp_path):
    (tmp_path / "a.csv").write_text("x")
    (tmp_path / "a.truth.json").write_text("{}")
    (tmp_path / "S.116.csv").write_text("x")
    (tmp_path / "S.116(1).csv").write_text("x")
    (tmp_path / "ref.csv").write_text("x")
    found, problems = discover([tmp_path, tmp_path / "missing"], exclude=[tmp_path / "ref.csv"])
    assert [f.name for f in found] == ["S.116.csv", "a.csv"]
    assert problems == [f"{tmp_path / 'missing'}: no such file or folder"]


def test_training_data_problems_name_every_line():
    exc = TrainingDataProblems(["a.csv: empty", "b.csv: profile x"])
    assert exc.problems == ["a.csv: empty", "b.csv: profile x"] and "2 problem(s)" in str(exc)


def test_restarts_keep_the_seed_with_the_best_held_out_error(instrument_b, tmp_path):
    d, files, ref, _, _ = instrument_b
    cfg = FitSettings.tiny(pretrain_steps=10, stage1_steps=20, stage2_steps=20, events_per_sample=2000)
    lines = []
    # (verify_final off: a tiny model's final fit is no better than chance at reproducing anything.)
    res = train(files[:6], ref, tmp_path / "r", folds=2, restarts=2, seed=3, settings=cfg, log=lines.append,
                verify_final=False)
    card = Bundle.load(res.bundle).manifest["model_card"]
    runs = card["restarts"]
    assert [r["seed"] for r in runs] == [3, 3 + 1009]
    best = min(runs, key=lambda r: r["score"])
    assert card["settings"]["seed"] == best["seed"]
    assert all("plt_err_pct" in r and "bias" in r["plt_err_pct"] for r in runs)
    assert any(line.startswith("restarts: scores") for line in lines)
    # The cross-validation reported is the chosen restart's.
    assert crossval.score(card["crossval"]) == pytest.approx(best["score"])
    with pytest.raises(TrainingError, match="--restarts needs cross-validation"):
        train(files[:6], ref, tmp_path / "r2", folds=0, restarts=2, settings=cfg, log=lambda _: None)


def _summary(plt_p95: float, plt_bias: float) -> dict:
    return {"samples": 6, "plt_err_pct": {"n": 6, "p95_abs": plt_p95, "bias": plt_bias}}


def test_a_final_model_that_does_not_reproduce_its_cross_validation_is_not_shipped(instrument_b, tmp_path, monkeypatch):
    """The final fit on every sample can land elsewhere than the folds did (measured on optical-b:
    seed 1 cross-validated at PLT -2 %, its final fit counted its own training samples at -38 %).
    Its in-sample error is checked against its seed's cross-validated one; the next seed by
    cross-validated error is tried; where none passes, nothing is written."""
    from export.training import run as run_mod

    d, files, ref, _, _ = instrument_b
    cfg = FitSettings.tiny(pretrain_steps=10, stage1_steps=20, stage2_steps=20, events_per_sample=2000)
    # In-sample figures as a collapsed and then a sound final fit would give them (a tiny model is
    # neither: the decision, not the network, is under test).
    answers = iter([_summary(500.0, -90.0), _summary(1.0, -0.2)])
    monkeypatch.setattr(run_mod, "_in_sample", lambda *a: next(answers))
    lines = []
    res = train(files[:6], ref, tmp_path / "r", folds=2, restarts=2, seed=3, settings=cfg, log=lines.append)
    card = Bundle.load(res.bundle).manifest["model_card"]
    checks = card["final_model_checks"]
    by_cv = sorted(card["restarts"], key=lambda r: r["score"])
    assert [c["seed"] for c in checks] == [r["seed"] for r in by_cv]  # best cross-validated first
    assert [c["passed"] for c in checks] == [False, True]
    assert checks[0]["score_on_training_samples"] == pytest.approx(100.0) and checks[0]["plt_err_pct"]["bias"] == -90.0
    assert checks[0]["limit"] == pytest.approx(1.5 * by_cv[0]["score"] + 0.5)
    # The model written is the second seed's, and so is the cross-validation its card reports.
    assert card["settings"]["seed"] == by_cv[1]["seed"]
    assert crossval.score(card["crossval"]) == pytest.approx(by_cv[1]["score"])
    assert any("does not reproduce its cross-validated accuracy: trying seed" in line for line in lines)
    info = runner.invoke(app, ["info", str(res.bundle)])
    assert info.exit_code == 0 and f"rejected before it: seed {by_cv[0]['seed']}" in info.stdout

    monkeypatch.setattr(run_mod, "_in_sample", lambda *a: _summary(500.0, -90.0))
    with pytest.raises(TrainingError, match=r"no final model reproduced its cross-validated accuracy .*"
                                            r"nothing written to .*r2: train with more --restarts"):
        train(files[:6], ref, tmp_path / "r2", folds=2, restarts=2, seed=3, settings=cfg, log=lambda _: None)
    assert not (tmp_path / "r2").exists() or not any((tmp_path / "r2").iterdir())


def test_without_cross_validation_a_final_model_that_cannot_count_its_own_samples_is_warned_of(
        instrument_b, tmp_path, monkeypatch):
    from export.training import run as run_mod

    d, files, ref, _, _ = instrument_b
    cfg = FitSettings.tiny(pretrain_steps=10, stage1_steps=20, stage2_steps=20, events_per_sample=2000)
    monkeypatch.setattr(run_mod, "_in_sample", lambda *a: _summary(95.0, -38.0))
    lines = []
    train(files[:6], ref, tmp_path / "r", folds=0, seed=3, settings=cfg, log=lines.append)
    assert any(line.startswith("warning: the final model counts its own training samples with p95 errors 19.0x")
               for line in lines), lines
    monkeypatch.setattr(run_mod, "_in_sample", lambda *a: _summary(6.0, -1.0))
    lines = []
    train(files[:6], ref, tmp_path / "r2", folds=0, seed=3, settings=cfg, log=lines.append)
    assert not any(line.startswith("warning:") for line in lines)


def test_the_final_model_check_uses_the_real_counts(instrument_b, tmp_path):
    """Unpatched: the check counts the training files with the final model as the device would, and
    its figures go into the model card."""
    d, files, ref, _, _ = instrument_b
    cfg = FitSettings.tiny(pretrain_steps=10, stage1_steps=20, stage2_steps=20, events_per_sample=2000)
    res = train(files[:6], ref, tmp_path / "r", folds=0, seed=3, settings=cfg, log=lambda _: None)
    (check,) = Bundle.load(res.bundle).manifest["model_card"]["final_model_checks"]
    assert check["passed"] and check["crossval_score"] is None and check["limit"] is None  # no folds: nothing to hold it to
    assert math.isfinite(check["score_on_training_samples"]) and check["plt_err_pct"]["p95_abs"] >= 0


def test_tune_is_deterministic_for_a_seed(instrument_b, tmp_path):
    """--tune: the same seed gives the same trials, the same chosen settings and the same model."""
    pytest.importorskip("optuna", reason="--tune needs the export extra (optuna)")
    d, files, ref, _, _ = instrument_b
    cfg = FitSettings.tiny(pretrain_steps=10, stage1_steps=20, stage2_steps=20, events_per_sample=2000)
    runs = []
    for k in range(2):
        res = train(files[:6], ref, tmp_path / f"t{k}", folds=2, tune=3, seed=7, settings=cfg, log=lambda _: None,
                    verify_final=False)
        card = Bundle.load(res.bundle).manifest["model_card"]
        runs.append((card["tuning"], card["settings"], (res.bundle / "model.onnx").read_bytes()))
    (tune_a, set_a, onnx_a), (tune_b, set_b, onnx_b) = runs
    assert tune_a["trials"] == 3 and len(tune_a["scores"]) == 3
    assert tune_a == tune_b and set_a == set_b and onnx_a == onnx_b
    # The search really tried different settings, and the chosen ones are in the model.
    assert set_a["lr"] == pytest.approx(tune_a["best"]["lr"])
    other = train(files[:6], ref, tmp_path / "t-other", folds=2, tune=3, seed=8, settings=cfg, log=lambda _: None,
                  verify_final=False)
    assert Bundle.load(other.bundle).manifest["model_card"]["tuning"]["best"] != tune_a["best"]


def test_a_trained_bundle_carries_its_own_population_limit(trained):
    """The population check's limit is the model's own (its latent space), measured on its training
    samples; the check uses it, and the old fixed limit only for bundles without one."""
    from edgehema.counts import plausibility
    from edgehema.profiles import get_profile

    out, _, held, _ = trained
    t = Bundle.load(out).manifest["thresholds"]
    q1, q3 = t["stage2_shift_training"]["quartiles"]
    assert t["stage2_shift_training"]["samples"] == 9
    assert t["stage2_shift_max"] == pytest.approx(q3 + 1.5 * (q3 - q1), abs=2e-4)
    r = runner.invoke(app, ["classify", "--json", "--model", str(out), str(held[0])])
    res = json.loads(r.stdout)
    assert ("population_not_recognised" in res["flags"]) == (res["qc"]["stage2_shift"] > t["stage2_shift_max"])
    events = np.ones((100, 11))
    labels = np.full(100, 1)
    probs = np.eye(5)[labels]

    def flagged(limit):
        qc: dict = {}
        return "population_not_recognised" in plausibility.check(
            events, labels, probs, get_profile("optical-11"), qc, {"adapted": True, "stage2_mean_shift": 1.5}, None, None, limit)

    assert flagged(1.0) and not flagged(1.6)
    assert not flagged(None) and plausibility.MAX_STAGE2_SHIFT == 2.0  # bundles made before the limit travelled


def test_a_trained_bundle_carries_its_own_stain_skew_limit(trained):
    """The reticulocyte-signal check's limit is the model's own too: Tukey's fence of the mature red
    cells' stain asymmetry over its training samples, as the model classifies them."""
    from edgehema.counts import plausibility
    from edgehema.profiles import get_profile

    out, _, held, _ = trained
    t = Bundle.load(out).manifest["thresholds"]
    q1, q3 = t["rbc_stain_skew_training"]["quartiles"]
    assert t["rbc_stain_skew_training"]["samples"] == 9
    assert t["rbc_stain_skew_max"] == pytest.approx(q3 + 1.5 * (q3 - q1), abs=2e-4)
    res = json.loads(runner.invoke(app, ["classify", "--json", "--model", str(out), str(held[0])]).stdout)
    assert ("retic_abnormal_distribution" in res["flags"]) == (res["qc"]["rbc_stain_skew"] > t["rbc_stain_skew_max"])
    # The check itself: a log-normal stain signal with a long upper tail, against two limits.
    rng = np.random.default_rng(1)
    fl = np.exp(np.concatenate([rng.normal(5.0, 0.2, 4000), rng.normal(5.6, 0.1, 150)]))
    events = np.ones((len(fl), 11))
    events[:, get_profile("optical-11").index("fl_peak")] = fl
    labels = np.full(len(fl), 1)
    skew = plausibility.stain_skew(events, labels, get_profile("optical-11"))
    assert skew > 0.02

    def flagged(limit):
        return "retic_abnormal_distribution" in plausibility.check(
            events, labels, np.eye(5)[labels], get_profile("optical-11"), {}, None, None, None, max_stain_skew=limit)

    assert flagged(skew - 0.01) and not flagged(skew + 0.01)
    assert flagged(None) == (skew > plausibility.MAX_STAIN_SKEW)  # bundles made before the limit travelled


def test_the_shipped_models_carry_their_stain_skew_limit():
    """Measured on model 2.0.0's own 40 training samples (the ones its population limit came from)."""
    for name in ("reference", "reference-int8", "reference-tflite-int8"):
        t = Bundle.load(name).manifest["thresholds"]
        assert t["rbc_stain_skew_max"] == 0.0117 and t["stage2_shift_training"]["samples"] == 40


def test_flag_rates_count_false_alarms_on_samples_that_meet_their_reference():
    from export.training import crossval

    def pred(rbc_err, plt_err, ret_err, flags):
        return crossval.Prediction("s", "f", 0, 5e6, 300e3, 1.0, 5e6 * (1 + rbc_err / 100), 300e3 * (1 + plt_err / 100),
                                   1.0 + ret_err, None, None, flags)

    preds = [pred(0.5, 3, 0.1, "retic_abnormal_distribution species_not_validated"), pred(-1, -5, 0.0, ""),
             pred(0.2, 1, 0.2, ""), pred(0.1, 2, 0.1, "plt_interference_debris"),
             pred(9.0, 0, 0.0, "retic_abnormal_distribution plt_interference_debris"),  # outside: not a false alarm
             crossval.Prediction("u", "g", -1, None, None, None, 5e6, 3e5, 1.0, None, None, "retic_abnormal_distribution")]
    r = crossval.flag_rates(preds)
    assert r["samples_meeting_reference"] == 4 and r["of"] == 5
    assert r["flags"] == {"plt_interference_debris": {"fired": 1, "rate": 0.25},
                          "retic_abnormal_distribution": {"fired": 1, "rate": 0.25}}
    assert r["defects"] == ["plt_interference_debris", "retic_abnormal_distribution"]  # 25 % > 5 %
    lines = crossval.format_flag_rates(r, "held-out")
    assert "4 of 5 held-out samples" in lines[0] and sum("DEFECT" in line for line in lines) == 2
    quiet = crossval.flag_rates([pred(0.1, 1, 0.0, "")] * 25 + [pred(0.1, 1, 0.0, "retic_abnormal_distribution")])
    assert quiet["defects"] == [] and quiet["flags"]["retic_abnormal_distribution"]["rate"] == pytest.approx(1 / 26, abs=1e-4)


def test_train_reports_flag_rates_in_its_output_and_model_card(trained):
    out, result, _, _ = trained
    card = Bundle.load(out).manifest["model_card"]
    rates = card["crossval"]["flag_rates"]
    report = json.loads((out / "crossval.json").read_text())
    from export.training import crossval

    preds = [crossval.Prediction(**{k: p[k] for k in crossval.Prediction.__dataclass_fields__}) for p in report["predictions"]]
    assert rates == crossval.flag_rates(preds)
    # The report says each flag's rate, or that no held-out sample met its reference (a tiny model).
    for line in crossval.format_flag_rates(rates, "held-out"):
        assert line in result.stdout
    assert card["flag_defects"] == sorted(set(rates["defects"]) | set(card["final_model_checks"][-1]["flag_rates"]["defects"]))
    assert ("DEFECT" in result.stdout) == bool(card["flag_defects"])
    info = runner.invoke(app, ["info", str(out)])
    assert "  flags: " in info.stdout


def test_limits_are_fitted_on_samples_spread_over_the_whole_training_set():
    from export.training.run import LIMIT_SAMPLES, limit_samples

    assert limit_samples(9) == list(range(9))
    spread = limit_samples(100)
    assert len(spread) == LIMIT_SAMPLES and spread[0] == 0 and spread[-1] == 99
    assert max(b - a for a, b in zip(spread, spread[1:])) <= 3  # not the first 40 files only


def test_a_trained_bundle_carries_its_own_unstained_platelet_limit(trained):
    """The platelet stain check's limit is fitted on the training samples too (an instrument's own
    dye and trigger set how many platelet-sized events take no stain in a plain sample)."""
    from edgehema.counts import plausibility
    from edgehema.profiles import get_profile

    from export.training.fit import sample_check_limits
    from edgehema.simulator import SampleSimulator

    # Fitted where the model finds platelets: the shipped model on eight simulated samples.
    events = [SampleSimulator(sp, seed=70 + k).generate(20_000).sample.events
              for k, sp in enumerate(("human", "dog", "cat", "horse") * 2)]
    t = sample_check_limits(Bundle.load("reference"), events)
    q1, q3 = t["plt_unstained_share_training"]["quartiles"]
    assert t["plt_unstained_share_training"]["samples"] == 8
    assert t["plt_unstained_share_max"] == pytest.approx(q3 + 1.5 * (q3 - q1), abs=2e-4)
    # A model that finds no platelets in its training samples (the tiny one) gets no limit: the
    # fixed one of older bundles applies.
    out, _, held, _ = trained
    assert "plt_unstained_share_max" not in Bundle.load(out).manifest["thresholds"]
    assert Bundle.load(out).settings.limits.plt_unstained_share_max is None
    # The check itself: 10 % of platelet events unstained, against two limits.
    prof = get_profile("optical-11")
    events = np.ones((2000, 11))
    labels = np.full(2000, 1)  # red cells
    labels[:200] = 4  # platelets (classes.PLT)
    fl = prof.index("fl_peak")
    events[:, fl] = 100.0
    events[:20, fl] = 1.0  # 20 of 200 platelet events without stain
    unstained = plausibility.unstained_platelet_events(events, labels, prof)

    def fires(limit):
        found = plausibility.check(events, labels, np.eye(5)[labels], prof, {}, None, None, unstained,
                                   max_unstained_share=limit)
        return bool({"plt_interference_debris", "plt_interference_lipid"} & set(found))

    assert fires(0.05) and not fires(0.15) and fires(None)  # None: the fixed 5 % of older bundles


def test_a_trained_bundle_fits_its_background_coincidence_and_clump_limits(monkeypatch):
    """The limits of the unstained background per red-cell event, the coincidence share and the
    clump share are fitted on the training samples too; the coincidence and clump limits only widen
    the fixed ones; the background holds back the lipid flag, never the debris flag."""
    from edgehema.counts import counting, plausibility
    from edgehema.profiles import get_profile

    from export.training.fit import sample_check_limits
    from edgehema.simulator import SampleSimulator

    events = [SampleSimulator(sp, seed=70 + k).generate(20_000).sample.events
              for k, sp in enumerate(("human", "dog", "cat", "horse") * 2)]
    t = sample_check_limits(Bundle.load("reference"), events)
    for name in ("plt_unstained_per_rbc", "coincidence_fraction", "plt_clump_share"):
        q1, q3 = t[f"{name}_training"]["quartiles"]
        assert t[f"{name}_training"]["samples"] == 8, name
        assert t[f"{name}_max"] == pytest.approx(q3 + 1.5 * (q3 - q1), abs=2e-4), name
    assert counting.widened(0.08, 0.12) == 0.12 and counting.widened(0.08, 0.05) == 0.08
    assert counting.widened(0.03, None) == 0.03
    # 20 of 200 platelet events (10 %) unstained, 20 of 1,800 red cells (1.1 %); side scatter for
    # their size above the stained platelets' (lipid) or below (debris).
    prof = get_profile("optical-11")
    labels = np.full(2000, 1)
    labels[:200] = 4

    def found(scatter: float, background):
        ev = np.ones((2000, 11))
        ev[:, prof.index("fl_peak")] = 100.0
        ev[:20, prof.index("fl_peak")] = 1.0
        ev[:, prof.index("ext_peak")] = 100.0
        ev[:, prof.index("ssc_peak")] = 100.0
        ev[:20, prof.index("ssc_peak")] = scatter
        unstained = plausibility.unstained_platelet_events(ev, labels, prof)
        qc = {}
        out = plausibility.check(ev, labels, np.eye(5)[labels], prof, qc, None, None, unstained,
                                 max_unstained_share=0.05, max_unstained_per_rbc=background)
        assert qc["plt_unstained_per_rbc"] == pytest.approx(20 / 1800, abs=1e-6)
        return {f for f in out if f.startswith("plt_interference")}

    assert found(400.0, None) == {"plt_interference_lipid"} == found(400.0, 0.005)
    assert found(400.0, 0.02) == set()  # lipid within the instrument's background
    assert found(20.0, 0.02) == {"plt_interference_debris"}  # debris: the share alone
    # A sample whose coincidence share is above the fixed 8 % but inside the bundle's fence.
    from dataclasses import replace

    from edgehema.model import classes as C
    from edgehema.model.classifier import Classifier

    lim = Bundle.load("reference").settings.limits
    sim = SampleSimulator("human", seed=5).generate(20_000)
    inf = Classifier(Bundle.load("reference"), backend="onnx", selftest=False).infer(sim.sample.events)
    frac = float(np.mean(inf.labels == C.COINCIDENCE))

    def high(limits):
        c = counting.count_sample(sim.sample.events, inf.probabilities, inf.labels, sim.sample.profile,
                                  sim.sample.info, ["ext_area", "ssc_area", "fsc_hi_area"], limits=limits)
        return "high_coincidence" in c.flags

    assert frac > 0.0
    monkeypatch.setattr(counting, "MAX_COINCIDENCE_FRACTION", frac / 2)
    assert high(lim) and not high(replace(lim, coincidence_fraction_max=frac * 1.5))


def test_stage1_is_fitted_again_when_it_misses_its_samples_shares(monkeypatch):
    """A collapsed platelet cluster (stage 1 far from the samples' own shares) is fitted again from
    another seed; the best attempt is kept, and which ones ran is in the history."""
    from export.training import fit as F

    errors = iter([0.6, 0.1, 0.05])
    seeds = []

    def fake_fit(cfg, data, progress, history, model=None):
        seeds.append(cfg.seed)
        history.append(cfg.seed)
        return f"idec-{cfg.seed}"

    monkeypatch.setattr(F, "fit_stage1", fake_fit)
    monkeypatch.setattr(F, "stage1_share_error", lambda idec, data: next(errors))
    history = {"stage1": []}
    chosen = F._stage1_that_fits(F.FitSettings(seed=4), None, None, history, None)
    assert seeds == [4, 4 + F.STAGE1_SEED_STEP] and chosen == f"idec-{4 + F.STAGE1_SEED_STEP}"
    assert history["stage1"] == [4 + F.STAGE1_SEED_STEP]
    assert [a["share_error"] for a in history["stage1_attempts"]] == [0.6, 0.1]
    errors = iter([0.9, 0.5, 0.7])
    seeds.clear()
    chosen = F._stage1_that_fits(F.FitSettings(seed=4), None, None, {"stage1": []}, None)
    assert len(seeds) == F.STAGE1_ATTEMPTS and chosen == f"idec-{4 + F.STAGE1_SEED_STEP}"  # none fits: the best
