"""``evaluate``: the reference model against simulator truth and baselines."""

from __future__ import annotations

import json
import math
import sys
import time
from typing import Optional

import typer
from edgehema.sinks.text_table import Column, render
from edgehema.cli._app import app, out, progress
from edgehema.model.bundle import Bundle


@app.command()
def evaluate(
    species: str = typer.Option("human,dog,cat,horse,cattle", "--species", help="Comma-separated species presets (any of the simulator's 10: human, dog, cat, horse, cattle, goat, sheep, alpaca, rabbit, ferret)."),
    samples: int = typer.Option(20, "--samples", min=1, help="Fresh simulated samples per species."),
    events: int = typer.Option(150_000, "--events", min=1000, help="Events per sample."),
    seed: int = typer.Option(0, "--seed", help="Evaluation seed (sample seeds never overlap the training recipe's)."),
    methods: str = typer.Option(",".join(("default", "reference", "reference-no-adapt", "fixed-gate", "gmm-raw", "supervised-mlp")), "--methods", help="Comma-separated methods: default (the int8 model the device runs), reference (its float source, or --model), reference-no-adapt, fixed-gate, gmm-raw, supervised-mlp."),
    pathology: Optional[str] = typer.Option(None, "--pathology", help="Evaluate on one pathology preset."),
    gain: float = typer.Option(1.0, "--gain", min=0.1, help="Static detector gain of the evaluation instrument."),
    gain_drift: float = typer.Option(0.0, "--gain-drift", min=-0.9, help="Gain drift over each evaluation sample (e.g. 0.1 or -0.1)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Bundle to evaluate as 'reference' (default: the shipped float reference; 'default' is always the device's default model)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    jobs: int = typer.Option(0, "--jobs", "-j", min=0, help="Worker processes (0: one per core, at most 2 here)."),
    suite: Optional[str] = typer.Option(None, "--suite", help="'stress': interferences, unseen species and instrument shifts; per scenario the errors, the flags and the silent failures (docs/accuracy.md)."),
    scenarios: Optional[str] = typer.Option(None, "--scenarios", help="With --suite stress: comma-separated scenario names (default: all)."),
) -> None:
    """Reference model against simulator truth and baselines: one side-by-side table per species.

    With ``--suite stress``: every stress scenario, the device's default model beside the fixed-gate
    baseline, and the count of silent failures (results outside the acceptance limits without a flag).
    """
    if suite is not None:
        _stress(suite, scenarios, samples, events, seed, model, as_json, jobs)
        return
    from edgehema.evaluation import evaluate as ev
    from edgehema.simulator import species_preset

    sp = tuple(s.strip() for s in species.split(",") if s.strip())
    for name in sp:
        species_preset(name)
    meth = tuple(m.strip() for m in methods.split(",") if m.strip())
    bad = [m for m in meth if m not in ev.METHODS]
    if bad:
        raise typer.BadParameter(f"unknown method(s) {', '.join(bad)} (known: {', '.join(ev.METHODS)})")
    Bundle.load(model)
    cfg = ev.EvalConfig(sp, samples, events, seed, meth, pathology, gain, gain_drift, model)
    t0 = time.perf_counter()
    with progress(len(sp) * samples) as advance:
        summary, scores = ev.run(cfg, jobs, progress=advance)
    elapsed = time.perf_counter() - t0
    if as_json:
        typer.echo(json.dumps({
            "config": cfg.__dict__,
            "seconds": round(elapsed, 1),
            "summary": [s.__dict__ for s in summary],
            "overall_r2_rbc_fraction": {m: ev.overall_r2(scores, m) for m in meth},
        }, default=float))
        return
    _print_evaluation(summary, scores, meth, cfg, elapsed)


def _print_evaluation(summary, scores, methods, cfg, elapsed: float) -> None:
    from edgehema.evaluation import evaluate as ev

    shift = []
    if cfg.gain != 1.0:
        shift.append(f"gain {cfg.gain:g}")
    if cfg.gain_drift:
        shift.append(f"gain drift {cfg.gain_drift:+.0%}")
    if cfg.pathology:
        shift.append(cfg.pathology)
    columns = [Column("method", "left", keep=9), Column("macro-F1", keep=3),
               Column("recall noise/rbc/retic/coinc/plt", "left", keep=2), Column("RBC err % mean/p95", keep=8),
               Column("PLT err % mean/p95", keep=8), Column("retic err pt mean/p95", keep=7),
               Column("R2 RBC frac.", keep=4)]
    for species in cfg.species:
        rows = [s for s in summary if s.species == species]
        table = []
        for s in rows:
            rec = "/".join("-" if math.isnan(v) else f"{v:.3f}" for v in s.recall.values())
            table.append([s.method, f"{s.macro_f1:.4f}", rec, f"{s.rbc_err[0]:.2f} / {s.rbc_err[1]:.2f}",
                          f"{s.plt_err[0]:.2f} / {s.plt_err[1]:.2f}", f"{s.retic_err[0]:.3f} / {s.retic_err[1]:.3f}",
                          "-" if math.isnan(s.r2_rbc_fraction) else f"{s.r2_rbc_fraction:.5f}"])
        title = f"{species}: {rows[0].n} samples x {cfg.events:,} events" + (f" ({', '.join(shift)})" if shift else "")
        render(title, columns, table, sys.stdout)
    overall = ", ".join(f"{m} {ev.overall_r2(scores, m):.5f}" for m in methods)
    out.print(f"R2 of the RBC fraction across all samples: {overall}")
    out.print(f"({elapsed:.1f} s)")


def _stress(suite: str, scenarios: Optional[str], samples: int, events: int, seed: int, model: Optional[str],
            as_json: bool, jobs: int) -> None:
    from edgehema.evaluation import stress as st
    from edgehema.model.bundle import Bundle

    if suite != "stress":
        raise typer.BadParameter(f"unknown suite {suite!r} (known: stress)", param_hint="--suite")
    names = tuple(s.strip() for s in (scenarios or "").split(",") if s.strip()) or tuple(s.name for s in st.SCENARIOS)
    for name in names:
        try:
            st.scenario(name)
        except KeyError as exc:
            raise typer.BadParameter(str(exc.args[0]), param_hint="--scenarios") from None
    Bundle.load(model)
    cfg = st.StressConfig(samples=samples, events=events, seed=seed, scenarios=names, model=model)
    t0 = time.perf_counter()
    with progress(len(names) * samples) as advance:
        rows = st.run(cfg, jobs, progress=advance)
    elapsed = time.perf_counter() - t0
    summary = st.summarize(rows, cfg)
    totals = {m: {"samples": sum(1 for r in rows if r.method == m),
                  "outside_limits": sum(r.outside for r in rows if r.method == m),
                  "silent_failures": sum(r.silent for r in rows if r.method == m),
                  "silent_failures_species_undeclared": sum(r.silent_undeclared for r in rows if r.method == m)}
              for m in cfg.methods}
    if as_json:
        typer.echo(json.dumps({"suite": "stress", "config": cfg.__dict__, "seconds": round(elapsed, 1),
                               "limits": st.limits(), "totals": totals,
                               "summary": [s.to_dict() for s in summary],
                               "silent": [r.__dict__ for r in rows if r.silent_undeclared]}, default=float))
        return
    columns = [Column("scenario", "left", keep=9), Column("method", "left", keep=9),
               Column("RBC err %\nmean/p95", keep=6), Column("PLT err %\nmean/p95", keep=6),
               Column("PLT err\np95 10^3/uL", keep=4), Column("RET err pt\nmean/p95", keep=6),
               Column("outside\nlimits", keep=8), Column("flagged", keep=7), Column("silent", keep=9),
               Column("silent if species\nundeclared", keep=8),
               Column("flags fired", "left", keep=3, wrap=True)]
    table = [[s.scenario, s.method, f"{s.rbc_err[0]:.2f} / {s.rbc_err[1]:.2f}", f"{s.plt_err[0]:.1f} / {s.plt_err[1]:.1f}",
              f"{s.plt_err_abs[1]:.1f}", f"{s.retic_err[0]:.2f} / {s.retic_err[1]:.2f}", f"{s.outside}/{s.n}",
              f"{s.flagged}/{s.n}", str(s.silent), str(s.silent_undeclared), ", ".join(f"{k} {v}" for k, v in s.flags.items()) or "-"]
             for s in summary]
    render(f"stress suite: {samples} samples x {events:,} events per scenario, seed {seed}", columns, table, sys.stdout,
           note=st.LIMITS_NOTE)
    for m, t in totals.items():
        out.print(f"{m}: {t['silent_failures']} silent failures ({t['silent_failures_species_undeclared']} if the "
                  f"species were not declared), {t['outside_limits']} results outside the limits, of {t['samples']} samples")
    out.print(f"({elapsed:.1f} s)")
