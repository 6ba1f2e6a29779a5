"""The ``edgehema`` command line (typer). Each command is a thin shell over the library.

Errors a user can cause end as one line on stderr (``edgehema: error: ...``) and a non-zero
exit status; a traceback means a bug.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from . import __version__
from .exceptions import EdgehemaError, SimulationError

app = typer.Typer(
    name="edgehema",
    help="Classify hematology-analyzer cell events (RBC, PLT, reticulocytes) on the device attached to the instrument.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
out = Console()
err = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"edgehema {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """edgehema: real-time RBC / PLT / reticulocyte event classification for hematology analyzers."""


# ---------------------------------------------------------------- simulate
@app.command()
def simulate(
    out_path: Path = typer.Option(..., "--out", "-o", help="Event file to write (.csv, .fcs, NAME.116.csv); a directory when --samples > 1."),
    truth: Optional[Path] = typer.Option(None, "--truth", help="Truth JSON to write (single sample). With --samples > 1 each sample's truth goes next to its events as ID.truth.json."),
    species: str = typer.Option("human", "--species", "-s", help="Species preset: human, dog, cat, horse, cattle."),
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
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing on success."),
) -> None:
    """Generate synthetic blood samples with per-event ground truth."""
    from dataclasses import replace

    from .formats import write_sample
    from .simulator import InstrumentSettings, SampleSimulator

    if fmt == "sysmex-xn" and profile is None:
        profile = "sysmex-xn-ret"
    if fmt is None and out_path.name.lower().endswith(".116.csv") and profile is None:
        profile = "sysmex-xn-ret"
    ins = InstrumentSettings(gain=gain, gain_drift=gain_drift)
    if dilution is not None:
        ins = replace(ins, dilution=dilution)
    sim = SampleSimulator(species=species, pathology=pathology, instrument=ins, profile=profile, seed=seed)
    if samples > 1:
        if truth is not None or labels is not None:
            raise SimulationError("--truth and --labels name one file: with --samples > 1 truth is written per sample into --out")
        out_path.mkdir(parents=True, exist_ok=True)
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
        written = write_sample(sim_sample.sample, target, fmt)
        if truth_path is not None:
            truth_path.write_text(json.dumps(sim_sample.truth, indent=2) + "\n", encoding="utf-8")
            written.append(truth_path)
        if labels is not None:
            _write_labels(sim_sample, labels)
            written.append(labels)
        results.append((sim_sample, written))
    elapsed = time.perf_counter() - t0
    if not quiet:
        _print_simulation(results, elapsed)


def _write_labels(sim_sample, path: Path) -> None:
    import numpy as np

    from .classes import EVENT_CLASSES
    from .formats._table import format_rows

    names = np.array(EVENT_CLASSES)[sim_sample.labels]
    rows = np.column_stack([sim_sample.labels, sim_sample.n_rbc, sim_sample.n_retic, sim_sample.n_plt])
    text = format_rows(rows.astype(np.int64), ["%d"] * 4).splitlines()
    body = "".join(f"{n},{r}\n" for n, r in zip(names.tolist(), text))
    path.write_text("class,class_code,n_rbc,n_retic,n_plt\n" + body, encoding="utf-8")


def _print_simulation(results, elapsed: float) -> None:
    shown = results[:4]
    table = Table(title=f"Simulated {len(results)} sample(s) in {elapsed:.2f} s (truth)")
    table.add_column("")
    for sim_sample, _ in shown:
        t = sim_sample.truth
        table.add_column(t["sample_id"] + (f"\n{t['pathology']}" if t["pathology"] else ""), justify="right")

    def row(label: str, fn) -> None:
        table.add_row(label, *(fn(s.truth) for s, _ in shown))

    row("species", lambda t: t["species"])
    row("events", lambda t: f"{t['events']['total']:,}")
    for key in ("rbc", "retic", "coincidence", "plt", "noise"):
        row(f"  {key} events", lambda t, k=key: f"{t['events'][k]:,}")
    row("RBC cells (incl. retic)", lambda t: f"{t['cells']['rbc']:,}")
    row("PLT cells", lambda t: f"{t['cells']['plt']:,}")
    row("retic %", lambda t: f"{t['retic_percent']:.2f}")
    row("RBC /uL blood", lambda t: f"{t['concentration']['rbc_per_uL'] / 1e6:.2f} x10^6")
    row("PLT /uL blood", lambda t: f"{t['concentration']['plt_per_uL'] / 1e3:.0f} x10^3")
    row("coincidence events %", lambda t: f"{100 * t['events']['coincidence'] / t['events']['total']:.2f}")
    row("Poisson occupancy", lambda t: f"{t['coincidence']['mean_occupancy']:.4f}")
    row("analyzed volume uL", lambda t: f"{t['volume_ul']:.2f}")
    out.print(table)
    if len(results) > len(shown):
        out.print(f"({len(results) - len(shown)} more samples not shown)")
    for _, written in results[:3]:
        out.print("wrote " + ", ".join(str(p) for p in written))
    if len(results) > 3:
        out.print(f"... and the files of {len(results) - 3} more samples")


# ----------------------------------------------------------------- inspect
@app.command()
def inspect(
    files: List[Path] = typer.Argument(..., help="Event files: CSV, FCS 2.0/3.0/3.1, Sysmex XN .116.csv."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per file on stdout."),
    fmt: Optional[str] = typer.Option(None, "--format", "-f", help="Force a format: csv, fcs, sysmex-xn."),
    profile: Optional[str] = typer.Option(None, "--profile", help="Check the file against this profile (name or TOML file) instead of the shipped ones."),
) -> None:
    """Tell what event files hold: format, version, events, channels, metadata, matching profile.

    Exit status 1 if any file cannot be read; the others are still described.
    """
    from .formats import describe_file
    from .profiles import get_profile

    prof = get_profile(profile) if profile else None
    failed = 0
    for path in files:
        try:
            info = describe_file(path, fmt, prof)
        except EdgehemaError as exc:
            failed += 1
            _error(str(exc))
            continue
        if as_json:
            typer.echo(json.dumps(info))
        else:
            _print_inspect(info)
    if failed:
        raise typer.Exit(1)


def _print_inspect(info: dict) -> None:
    version = f" {info['version']}" if info.get("version") else ""
    out.print(f"[bold]{info['path']}[/bold]: {info['format'].upper()}{version}, {info['events']:,} events, {len(info['channels'])} channels")
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


@app.command()
def profiles() -> None:
    """List the instrument profiles shipped with edgehema and their features."""
    from .profiles import builtin_profiles

    for prof in builtin_profiles().values():
        out.print(f"[bold]{prof.name}[/bold]{' (default)' if prof.default else ''}: {prof.description}")
        for f in prof.features:
            out.print(f"  {f.name:<12} {f.unit:<16} [{f.range[0]:g}, {f.range[1]:g}]  {f.description}")


def _error(message: str) -> None:
    # One line, no markup interpretation of file names.
    sys.stderr.write(f"edgehema: error: {message}\n")


def main() -> None:
    try:
        app()
    except EdgehemaError as exc:
        _error(str(exc))
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write("edgehema: interrupted\n")
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
