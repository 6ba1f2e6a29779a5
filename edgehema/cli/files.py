"""``simulate`` and ``inspect``: making event files and telling what a file holds."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer

from edgehema.exceptions import EdgehemaError, SimulationError
from edgehema.sinks.text_table import Column, render
from edgehema.cli._app import app, out, error
from edgehema.formats import describe_file
from edgehema.formats import write_sample
from edgehema.formats._table import format_rows
from edgehema.model.classes import EVENT_CLASSES
from edgehema.profiles import get_profile


@app.command()
def simulate(
    out_path: Path = typer.Option(..., "--out", "-o", help="Event file to write (.csv, .fcs, NAME.116.csv); a directory when --samples > 1."),
    truth: Optional[Path] = typer.Option(None, "--truth", help="Truth JSON to write (single sample). With --samples > 1 each sample's truth goes next to its events as ID.truth.json."),
    species: str = typer.Option("human", "--species", "-s", help="Species preset, one of 10: human, dog, cat, horse, cattle (the shipped models' training species), goat, sheep, alpaca, rabbit, ferret (unseen by them)."),
    pathology: Optional[str] = typer.Option(None, "--pathology", help="Pathology preset: anemia-reticulocytosis, thrombocytopenia, thrombocytosis, macrocytosis, microcytosis."),
    events: int = typer.Option(150_000, "--events", "-n", min=1, help="Recorded events per sample."),
    samples: int = typer.Option(1, "--samples", min=1, help="Number of samples to generate."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same samples."),
    fmt: Optional[str] = typer.Option(None, "--format", "-f", help="csv, fcs or sysmex-xn (default: from the file name)."),
    profile: Optional[str] = typer.Option(None, "--profile", help="Instrument profile name or TOML file (default optical-11; sysmex-xn format implies sysmex-xn-ret)."),
    dilution: Optional[float] = typer.Option(None, "--dilution", min=1.0, help="Dilution factor of blood in the measured suspension (default 625)."),
    gain: float = typer.Option(1.0, "--gain", min=0.1, help="Static detector gain factor on every channel (calibration offset)."),
    gain_drift: float = typer.Option(0.0, "--gain-drift", min=-0.9, help="Linear gain drift over each sample, e.g. 0.1 = +10 % by its end."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="Also write per-event truth (class, cells per event) as CSV (single sample)."),
    experiment: Optional[str] = typer.Option(None, "--experiment", help="Make a method verification's files and their plan (--out is a folder; OUT/plan.csv for edgehema validate): repeatability, carryover, linearity, comparison, loq, a comma-separated list, or all."),
    carryover: float = typer.Option(0.003, "--carryover", min=0.0, max=0.5, help="With --experiment: the fraction of each run the instrument leaves for the next (0.003 = 0.3 %)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing on success."),
) -> None:
    """Generate synthetic blood samples with per-event ground truth."""
    from dataclasses import replace

    from edgehema.simulator import InstrumentSettings, SampleSimulator

    if fmt == "sysmex-xn" and profile is None:
        profile = "sysmex-xn-ret"
    if fmt is None and out_path.name.lower().endswith(".116.csv") and profile is None:
        profile = "sysmex-xn-ret"
    ins = InstrumentSettings(gain=gain, gain_drift=gain_drift)
    if dilution is not None:
        ins = replace(ins, dilution=dilution)
    if experiment is not None:
        _simulate_experiments(out_path, experiment, species, seed, events, carryover, ins, quiet)
        return
    sim = SampleSimulator(species=species, pathology=pathology, instrument=ins, profile=profile, seed=seed)
    _check_simulation_target(out_path, samples, fmt)
    if samples > 1:
        if truth is not None or labels is not None:
            raise SimulationError("--truth and --labels name one file: with --samples > 1 truth is written per sample into --out")
        out_path.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    results = []
    for i in range(samples):
        sim_sample = sim.generate(events)
        sid = sim_sample.truth["sample_id"]
        if samples > 1:
            ext = {"fcs": ".fcs", "sysmex-xn": ".116.csv"}.get(fmt or "", ".csv")
            target = out_path / f"{sid}{ext}"
            truth_path = out_path / f"{sid}.truth.json"
        else:
            target, truth_path = out_path, truth
        try:
            written = write_sample(sim_sample.sample, target, fmt)
            if truth_path is not None:
                truth_path.write_text(json.dumps(sim_sample.truth, indent=2) + "\n", encoding="utf-8")
                written.append(truth_path)
            if labels is not None:
                _write_labels(sim_sample, labels)
                written.append(labels)
        except OSError as exc:
            raise EdgehemaError(f"{exc.filename or target}: cannot write: {exc.strerror}") from None
        results.append((sim_sample, written))
    elapsed = time.perf_counter() - t0
    if not quiet:
        _print_simulation(results, elapsed)


def _simulate_experiments(out_path: Path, experiment: str, species: str, seed: int, events: int, carryover: float,
                          ins, quiet: bool) -> None:
    from edgehema.simulator.experiments import EXPERIMENTS, write_experiments

    if out_path.exists() and not out_path.is_dir():
        raise EdgehemaError(f"{out_path}: is a file; with --experiment, --out names a folder")
    if not out_path.parent.is_dir():
        raise EdgehemaError(f"{out_path}: the folder {out_path.parent} does not exist")
    names = list(EXPERIMENTS) if experiment == "all" else [e.strip() for e in experiment.split(",") if e.strip()]
    events = 100_000 if events == 150_000 else events  # a verification's runs: 100,000 events a normal sample
    t0 = time.perf_counter()
    plan = write_experiments(out_path, names, species=species, seed=seed, events=events, carryover=carryover,
                             instrument=ins)
    if not quiet:
        with open(plan, encoding="utf-8") as fh:
            runs = sum(1 for _ in fh) - 1
        out.print(f"wrote {runs} runs of {', '.join(names)} under {out_path} in {time.perf_counter() - t0:.1f} s; "
                  f"the plan: {plan} (edgehema validate {plan})")


#: File names the readers recognise (``inspect`` and ``classify`` read what ``simulate`` writes).
_EVENT_FILE_ENDINGS = (".csv", ".tsv", ".txt", ".fcs", ".lmd")


def _check_simulation_target(out_path: Path, samples: int, fmt: str | None) -> None:
    """One error line for an --out that cannot be right, before anything is simulated."""
    looks_like_file = out_path.name.lower().endswith(_EVENT_FILE_ENDINGS)
    if samples > 1:
        if out_path.exists() and not out_path.is_dir():
            raise EdgehemaError(f"{out_path}: is a file; with --samples {samples}, --out names a folder")
        if looks_like_file and not out_path.exists():
            raise EdgehemaError(f"{out_path}: with --samples {samples}, --out names a folder (one file per sample "
                                f"goes into it), and this looks like a file name")
        if not out_path.parent.is_dir():
            raise EdgehemaError(f"{out_path}: the folder {out_path.parent} does not exist")
        return
    if out_path.is_dir():
        raise EdgehemaError(f"{out_path}: is a folder; name the event file to write (.csv, .fcs or NAME.116.csv)")
    if not out_path.parent.is_dir():
        raise EdgehemaError(f"{out_path}: the folder {out_path.parent} does not exist")
    if fmt is None and not looks_like_file:
        raise EdgehemaError(f"{out_path}: unknown file type {out_path.suffix or '(no extension)'}: name it .csv, .fcs "
                            f"or NAME.116.csv (Sysmex XN), or choose --format csv|fcs|sysmex-xn")


def _write_labels(sim_sample, path: Path) -> None:
    import numpy as np


    names = np.array(EVENT_CLASSES)[sim_sample.labels]
    rows = np.column_stack([sim_sample.labels, sim_sample.n_rbc, sim_sample.n_retic, sim_sample.n_plt])
    text = format_rows(rows.astype(np.int64), ["%d"] * 4).splitlines()
    body = "".join(f"{n},{r}\n" for n, r in zip(names.tolist(), text))
    path.write_text("class,class_code,n_rbc,n_retic,n_plt\n" + body, encoding="utf-8")


def _print_simulation(results, elapsed: float) -> None:
    shown = results[:4]
    columns = [Column("", "left", keep=9)]
    for k, (sim_sample, _) in enumerate(shown):
        t = sim_sample.truth
        columns.append(Column(t["sample_id"] + (f" ({t['pathology']})" if t["pathology"] else ""), keep=8 - k))
    rows = []

    def row(label: str, fn) -> None:
        rows.append([label, *(fn(s.truth) for s, _ in shown)])

    row("species", lambda t: t["species"])
    row("events", lambda t: f"{t['events']['total']:,}")
    for key in ("rbc", "retic", "coincidence", "plt", "noise"):
        row(f"  {key} events", lambda t, k=key: f"{t['events'][k]:,}")
    row("RBC cells (incl. retic)", lambda t: f"{t['cells']['rbc']:,}")
    row("PLT cells", lambda t: f"{t['cells']['plt']:,}")
    row("retic %", lambda t: f"{t['retic_percent']:.2f}")
    row("RBC x10^6/uL blood", lambda t: f"{t['concentration']['rbc_per_uL'] / 1e6:.2f}")
    row("PLT x10^3/uL blood", lambda t: f"{t['concentration']['plt_per_uL'] / 1e3:.0f}")
    row("coincidence events %", lambda t: f"{100 * t['events']['coincidence'] / t['events']['total']:.2f}")
    row("Poisson occupancy", lambda t: f"{t['coincidence']['mean_occupancy']:.4f}")
    row("analyzed volume uL", lambda t: f"{t['volume_ul']:.2f}")
    render(f"Simulated {len(results)} sample(s) in {elapsed:.2f} s (truth)", columns, rows, sys.stdout)
    if len(results) > len(shown):
        out.print(f"({len(results) - len(shown)} more samples not shown)")
    for _, written in results[:3]:
        out.print("wrote " + ", ".join(str(p) for p in written))
    if len(results) > 3:
        out.print(f"... and the files of {len(results) - 3} more samples")


@app.command()
def inspect(
    files: List[Path] = typer.Argument(..., metavar="FILE...", help="Event files: CSV, FCS 2.0/3.0/3.1, Sysmex XN .116.csv."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per file on stdout."),
    fmt: Optional[str] = typer.Option(None, "--format", "-f", help="Force a format: csv, fcs, sysmex-xn."),
    profile: Optional[str] = typer.Option(None, "--profile", help="Check the file against this profile (name or TOML file) instead of the shipped ones."),
    dataset: Optional[int] = typer.Option(None, "--dataset", min=1, help="Data set of multi-data-set FCS files to describe (from 1; default: the first whose channels match a profile)."),
) -> None:
    """Tell what event files hold: format, version, events, channels, metadata, matching profile.

    Exit status 1 if any file cannot be read; the others are still described.
    """

    prof = get_profile(profile) if profile else None
    failed = 0
    for path in files:
        try:
            info = describe_file(path, fmt, prof, dataset)
        except EdgehemaError as exc:
            failed += 1
            error(str(exc))
            continue
        if as_json:
            typer.echo(json.dumps(info))
        else:
            _print_inspect(info)
    if failed:
        raise typer.Exit(1)


def _print_inspect(info: dict) -> None:
    version = f" {info['version']}" if info.get("version") else ""
    tot = info.get("events_tot")
    declared = f" ($TOT says {tot:,})" if tot is not None and tot != info["events"] else ""
    out.print(f"{info['path']}: {info['format'].upper()}{version}, {info['events']:,} events{declared}, "
              f"{len(info['channels'])} channels")
    out.print("  channels: " + ", ".join(info["channels"]))
    if info.get("parts") and len(info["parts"]) > 1:
        out.print(f"  parts: {', '.join(info['parts'])}")
    if info.get("profile"):
        out.print(f"  profile: {info['profile']}")
    else:
        out.print(f"  profile: none ({info.get('profile_mismatch', 'no match')})")
    meta = {k: v for k, v in (info.get("metadata") or {}).items() if v not in (None, "")}
    if meta:
        out.print("  metadata: " + ", ".join(f"{k}={v}" for k, v in meta.items()))
    for quirk in info.get("quirks") or []:
        out.print(f"  quirk: {quirk}")
    for ds in info.get("data_set_list") or []:
        mark = "*" if ds["data_set"] == info.get("data_set") else " "
        out.print(f"  {mark} data set {ds['data_set']}: FCS {ds['version']}, {ds['events']:,} events, "
                  f"{len(ds['channels'])} channels, profile {ds['profile'] or 'none'}")
