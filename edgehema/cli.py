"""The ``edgehema`` command line (typer). Each command is a thin shell over the library.

Errors a user can cause end as one line on stderr (``edgehema: error: ...``) and a non-zero
exit status; a traceback means a bug.
"""

from __future__ import annotations

import json
import math
import os
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


# ---------------------------------------------------------------- classify
@app.command()
def classify(
    files: List[Path] = typer.Argument(..., help="Event files (CSV, FCS, Sysmex XN), one sample each."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per sample (same meaning as the simulator's truth JSON)."),
    as_csv: bool = typer.Option(False, "--csv", help="One CSV row per sample."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write results to this file instead of stdout."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model bundle directory or shipped name (default: reference-tflite-int8; float: reference)."),
    backend: str = typer.Option("auto", "--backend", help="Inference backend: onnx, tflite (LiteRT), or auto (the bundle's own engine first)."),
    adapt: bool = typer.Option(True, "--adapt/--no-adapt", help="Refine the latent mixtures on each sample (a few EM iterations)."),
    events_out: Optional[Path] = typer.Option(None, "--events-out", help="Folder for per-event labels and probabilities (SAMPLE.events.csv)."),
    profile: Optional[str] = typer.Option(None, "--profile", help="Instrument profile of the files (default: recognised from the columns)."),
    species: Optional[str] = typer.Option(None, "--species", help="Species, when the files do not say."),
    dilution: Optional[float] = typer.Option(None, "--dilution", min=1.0, help="Dilution factor, when the files do not say."),
    volume_ul: Optional[float] = typer.Option(None, "--volume-ul", min=0.0, help="Analyzed volume in uL, when the files do not say."),
    jobs: int = typer.Option(0, "--jobs", "-j", min=0, help="Worker processes (0: one per core, at most 2 here)."),
) -> None:
    """Classify every event of each sample and report RBC, PLT and reticulocyte counts with flags.

    Exit status 1 if any file failed; the results of the others are still written.
    """
    from .batch import BatchJob, classify_files
    from .bundle import Bundle
    from .sample import SampleInfo
    from .sinks import open_sink

    if as_json and as_csv:
        raise typer.BadParameter("choose one of --json and --csv")
    Bundle.load(model)  # refuse a bad bundle once, before any worker starts
    info = SampleInfo().merged(species=species, dilution=dilution, volume_ul=volume_ul)
    job = BatchJob(model, backend, adapt, profile, info if info != SampleInfo() else None,
                   str(events_out) if events_out else None, None)
    stream = open(output, "w", encoding="utf-8") if output else sys.stdout
    sink = open_sink("json" if as_json else "csv" if as_csv else "table", stream)
    failed = 0
    paths = [str(p) for p in files]
    try:
        with _progress(len(paths)) as advance:
            for _path, status, value in classify_files(paths, job, jobs, progress=advance):
                if status == "ok":
                    sink.write(value)
                else:
                    failed += 1
                    _error(str(value))
    finally:
        sink.close()
        if output:
            stream.close()
    if failed:
        raise typer.Exit(1)


class _progress:
    """A progress bar on stderr when it is a terminal; silent otherwise (scripts, CI)."""

    def __init__(self, total: int):
        self.total = total
        self.bar = None

    def __enter__(self):
        if sys.stderr.isatty() and self.total > 1:
            from rich.progress import Progress

            self.bar = Progress(console=err, transient=True)
            self.bar.start()
            task = self.bar.add_task("classifying", total=self.total)
            return lambda: self.bar.advance(task)
        return lambda: None

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()
        return False


# ---------------------------------------------------------------- evaluate
@app.command()
def evaluate(
    species: str = typer.Option("human,dog,cat,horse,cattle", "--species", help="Comma-separated species presets."),
    samples: int = typer.Option(20, "--samples", min=1, help="Fresh simulated samples per species."),
    events: int = typer.Option(150_000, "--events", min=1000, help="Events per sample."),
    seed: int = typer.Option(0, "--seed", help="Evaluation seed (sample seeds never overlap the training recipe's)."),
    methods: str = typer.Option(",".join(("reference", "reference-no-adapt", "fixed-gate", "gmm-raw", "supervised-mlp")), "--methods", help="Comma-separated methods."),
    pathology: Optional[str] = typer.Option(None, "--pathology", help="Evaluate on one pathology preset."),
    gain: float = typer.Option(1.0, "--gain", min=0.1, help="Static detector gain of the evaluation instrument."),
    gain_drift: float = typer.Option(0.0, "--gain-drift", min=-0.9, help="Gain drift over each evaluation sample (e.g. 0.1 or -0.1)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Bundle to evaluate as 'reference' (default: the shipped float reference)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    jobs: int = typer.Option(0, "--jobs", "-j", min=0, help="Worker processes (0: one per core, at most 2 here)."),
) -> None:
    """Reference model against simulator truth and baselines: one side-by-side table per species."""
    from . import evaluate as ev
    from .bundle import Bundle
    from .simulator import species_preset

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
    with _progress(len(sp) * samples) as advance:
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
    from . import evaluate as ev

    wide = _wide()

    shift = []
    if cfg.gain != 1.0:
        shift.append(f"gain {cfg.gain:g}")
    if cfg.gain_drift:
        shift.append(f"gain drift {cfg.gain_drift:+.0%}")
    if cfg.pathology:
        shift.append(cfg.pathology)
    for species in cfg.species:
        rows = [s for s in summary if s.species == species]
        table = Table(title=f"{species}: {rows[0].n} samples x {cfg.events:,} events" + (f" ({', '.join(shift)})" if shift else ""))
        for col in ("method", "macro-F1", "recall noise/rbc/retic/coinc/plt", "RBC err % mean/p95",
                    "PLT err % mean/p95", "retic err pt mean/p95", "R2 RBC frac."):
            table.add_column(col, justify="left" if col.startswith(("method", "recall")) else "right")
        for s in rows:
            rec = "/".join("-" if math.isnan(v) else f"{v:.3f}" for v in s.recall.values())
            table.add_row(s.method, f"{s.macro_f1:.4f}", rec, f"{s.rbc_err[0]:.2f} / {s.rbc_err[1]:.2f}",
                          f"{s.plt_err[0]:.2f} / {s.plt_err[1]:.2f}", f"{s.retic_err[0]:.3f} / {s.retic_err[1]:.3f}",
                          "-" if math.isnan(s.r2_rbc_fraction) else f"{s.r2_rbc_fraction:.5f}")
        wide.print(table)
    overall = ", ".join(f"{m} {ev.overall_r2(scores, m):.5f}" for m in methods)
    wide.print(f"R2 of the RBC fraction across all samples: {overall}")
    wide.print(f"({elapsed:.1f} s)")


# ------------------------------------------------------------ emulate
@app.command()
def emulate(
    tcp: Optional[int] = typer.Option(None, "--tcp", help="Listen on 127.0.0.1:PORT; the host connects with socket://127.0.0.1:PORT."),
    pty: bool = typer.Option(False, "--pty", help="Stream over a pseudo-terminal pair; prints the port for the host."),
    file: Optional[Path] = typer.Option(None, "--file", help="Write the byte stream to a file (no pacing)."),
    species: str = typer.Option("human", "--species", "-s", help="Species preset of the simulated samples."),
    pathology: Optional[str] = typer.Option(None, "--pathology", help="Pathology preset."),
    samples: int = typer.Option(3, "--samples", min=1, help="Samples to stream."),
    events: int = typer.Option(150_000, "--events", "-n", min=1, help="Events per sample."),
    rate: float = typer.Option(20_000.0, "--rate", min=0.0, help="Events per second (0: as fast as the link takes)."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    fault: List[str] = typer.Option([], "--fault", help="Inject a fault: KIND[@SAMPLE], KIND one of bitflip, drop, truncate, total, disconnect, reboot; SAMPLE 1-based (default 2). Repeatable."),
) -> None:
    """An instrument on a wire: streams simulator samples with the wire protocol, optionally with faults."""
    from .emulator import InstrumentEmulator, parse_faults, serve_tcp, write_file, write_pty

    chosen = [x for x in (tcp is not None, pty, file is not None) if x]
    if len(chosen) != 1:
        raise typer.BadParameter("choose exactly one of --tcp PORT, --pty, --file PATH")
    emu = InstrumentEmulator(species, samples, events, seed, parse_faults(list(fault)), pathology=pathology)
    if file is not None:
        n = write_file(emu, str(file))
        err.print(f"wrote {n:,} bytes, {samples} samples, to {file}")
    elif pty:
        n = write_pty(emu, rate, ready=lambda name: (print(name, flush=True), err.print(f"instrument on {name}")))
        err.print(f"sent {n:,} bytes")
    else:
        n = serve_tcp(emu, int(tcp), rate, ready=lambda p: err.print(f"instrument listening on socket://127.0.0.1:{p}"))
        err.print(f"sent {n:,} bytes")


# ------------------------------------------------------------- stream
@app.command()
def stream(
    port: Optional[str] = typer.Option(None, "--port", "-p", help="pyserial URL: /dev/ttyUSB0, socket://HOST:PORT, rfc2217://HOST:PORT, loop://"),
    baud: Optional[int] = typer.Option(None, "--baud", help="Baud rate (default 3000000)."),
    config: Optional[Path] = typer.Option(None, "--config", help="TOML file with the same settings (options win)."),
    journal: Optional[Path] = typer.Option(None, "--journal", help="SQLite result journal (default edgehema-journal.sqlite)."),
    archive: Optional[Path] = typer.Option(None, "--archive", help="Folder of per-sample frame archives (default edgehema-archive)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Append JSON lines here instead of stdout."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model bundle (default: reference-tflite-int8; float: reference)."),
    backend: str = typer.Option("auto", "--backend", help="Inference backend."),
    adapt: bool = typer.Option(True, "--adapt/--no-adapt", help="Per-sample adaptation of the latent mixtures."),
    max_samples: Optional[int] = typer.Option(None, "--max-samples", min=1, help="Stop after this many results."),
    idle_exit: Optional[float] = typer.Option(None, "--idle-exit", min=0.1, help="Stop after this many seconds without data."),
    no_reconnect: bool = typer.Option(False, "--no-reconnect", help="Exit when the port goes away instead of waiting for it."),
    cpu: Optional[int] = typer.Option(None, "--cpu", min=0, help="Pin the stream to this CPU core (steadier latency; systemd's CPUAffinity does the same)."),
) -> None:
    """Sit on the instrument's link: classify events as they arrive and emit one JSON result per sample.

    Every frame is archived and every result committed to the journal before it is reported; after a
    crash, samples that were interrupted are reported (flagged incomplete) at the next start.
    """
    from .sinks import open_sink
    from .stream.runner import StreamConfig, StreamRunner

    settings = _load_stream_config(config) if config else {}
    cpu = cpu if cpu is not None else settings.get("cpu")
    if cpu is not None:
        try:
            os.sched_setaffinity(0, {int(cpu)})
        except (OSError, AttributeError, ValueError) as exc:
            raise EdgehemaError(f"cannot pin the stream to CPU {cpu}: {exc}") from None
    port = port or settings.get("port")
    if not port:
        raise typer.BadParameter("a port is needed: --port URL or port = ... in --config")
    cfg = StreamConfig(
        port=port,
        baud=baud or int(settings.get("baud", 3_000_000)),
        journal=journal or Path(settings.get("journal", "edgehema-journal.sqlite")),
        archive_dir=archive or Path(settings.get("archive", "edgehema-archive")),
        model=model or settings.get("model"),
        backend=backend if backend != "auto" else settings.get("backend", "auto"),
        adapt=adapt and bool(settings.get("adapt", True)),
        reconnect=not no_reconnect and bool(settings.get("reconnect", True)),
        max_samples=max_samples or settings.get("max_samples"),
        idle_exit=idle_exit or settings.get("idle_exit"),
    )
    stream_out = open(output, "a", encoding="utf-8") if output else sys.stdout
    sink = open_sink("json", stream_out)
    live = sys.stderr.isatty()
    runner = StreamRunner(cfg, sink.write, log=lambda m: err.print(f"[dim]{m}[/dim]") if live else sys.stderr.write(m + "\n"))
    try:
        if live:
            _run_live(runner)
        else:
            runner.run()
    except KeyboardInterrupt:
        runner.stop()
    finally:
        sink.close()
        if output:
            stream_out.close()


def _run_live(runner) -> None:
    """Run the stream in a thread; show events/s and the current sample until it ends."""
    import threading

    from rich.live import Live

    t = threading.Thread(target=runner.run, daemon=True)
    t.start()
    with Live(console=err, refresh_per_second=4, transient=True) as live:
        try:
            while t.is_alive():
                st = runner.stats
                rate = st.events / max(time.perf_counter() - st.started, 1e-9)
                live.update(f"{st.samples} sample(s) reported, {st.events:,} events, {rate:,.0f} events/s, current: {st.current or '-'}")
                t.join(0.25)
        except KeyboardInterrupt:
            runner.stop()
            t.join(5)


def _load_stream_config(path: Path) -> dict:
    from ._toml import read_toml

    data = read_toml(path, EdgehemaError, "the stream settings")
    return data.get("stream", data)


# ------------------------------------------------------------- replay
@app.command()
def replay(
    archives: List[Path] = typer.Argument(..., help="Frame archives written by edgehema stream (or any captured byte stream)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model bundle (default: reference-tflite-int8; float: reference)."),
    adapt: bool = typer.Option(True, "--adapt/--no-adapt", help="Per-sample adaptation (as the stream had it)."),
) -> None:
    """Recompute results from archived frames, exactly as the stream computed them (JSON lines)."""
    from .classifier import Classifier
    from .stream.runner import replay_bytes

    clf = Classifier(model, adapt=adapt)
    failed = 0
    for path in archives:
        try:
            data = path.read_bytes()
        except OSError as exc:
            failed += 1
            _error(f"{path}: cannot read: {exc.strerror}")
            continue
        results = replay_bytes(data, clf)
        if not results:
            failed += 1
            _error(f"{path}: no sample in this archive (not an edgehema frame stream?)")
        for r in results:
            typer.echo(json.dumps(r, separators=(",", ":")))
    if failed:
        raise typer.Exit(1)


# --------------------------------------------------------------- demo
@app.command()
def demo(
    samples: int = typer.Option(3, "--samples", min=1, help="Samples the simulated instrument measures."),
    events: int = typer.Option(60_000, "--events", "-n", min=1000, help="Events per sample."),
    rate: float = typer.Option(40_000.0, "--rate", min=0.0, help="Events per second on the link."),
    species: str = typer.Option("cat", "--species", "-s", help="Species preset."),
    seed: int = typer.Option(1, "--seed", help="Random seed."),
    workdir: Path = typer.Option(Path("edgehema-demo"), "--workdir", help="Where the demo's journal and archive go."),
) -> None:
    """The whole chain on this machine: a simulated instrument on a pseudo-terminal, edgehema streaming
    from it, live progress, and each sample's counts next to the simulator's truth."""
    import threading

    from .emulator import InstrumentEmulator, start_pty_instrument
    from .stream.runner import StreamConfig, StreamRunner

    emu = InstrumentEmulator(species, samples, events, seed)
    # The instrument runs in a process of its own, as a real one would. (Pinning the two to separate
    # cores, as the TCP benchmark does, made pty latencies worse here: the kernel's tty work then
    # shares the stream's core.)
    instrument, port_name, truths, go = start_pty_instrument(emu, rate)
    box = {"port": port_name}
    workdir.mkdir(parents=True, exist_ok=True)
    results: list[dict] = []
    cfg = StreamConfig(port=box["port"], journal=workdir / "journal.sqlite", archive_dir=workdir / "archive",
                       reconnect=False, max_samples=samples, idle_exit=10.0)
    logs: list[str] = []

    def log(line: str) -> None:
        logs.append(line)
        if line.startswith("connected to"):
            go.set()  # the host has the port open: the instrument may start

    runner = StreamRunner(cfg, results.append, log=log)
    out.print(f"simulated instrument on {box['port']}: {samples} {species} samples x {events:,} events at {rate:,.0f} events/s")
    out.print(f"model {runner.classifier.bundle.name} on {runner.classifier.backend_name}")
    t = threading.Thread(target=runner.run, daemon=True)
    t.start()
    from rich.live import Live

    with Live(console=out, refresh_per_second=4, auto_refresh=False, transient=True) as live:
        while t.is_alive():
            st = runner.stats
            rate_now = st.events / max(time.perf_counter() - st.started, 1e-9)
            live.update(f"streaming: {st.samples}/{samples} samples done, {st.events:,} events, "
                        f"{rate_now:,.0f} events/s, current {st.current or '-'}", refresh=True)
            t.join(0.25)
    table = Table(title="edgehema stream vs simulator truth")
    wide = _wide()
    for col in ("sample", "events", "RBC cells", "truth", "PLT cells", "truth", "retic %", "truth", "flags", "latency ms"):
        table.add_column(col, justify="left" if col in ("sample", "flags") else "right")
    for r, lat in zip(results, runner.stats.result_latency_ms):
        truth = next((t for t in truths if t["sample_id"] == r["sample_id"]), None)
        if truth is None:
            continue
        table.add_row(r["sample_id"], f"{r['events']['total']:,}", f"{r['cells']['rbc']:,}", f"{truth['cells']['rbc']:,}",
                      f"{r['cells']['plt']:,}", f"{truth['cells']['plt']:,}", f"{r['retic_percent']:.2f}",
                      f"{truth['retic_percent']:.2f}", ", ".join(r["flags"]) or "ok", f"{lat:.0f}")
    wide.print(table)
    out.print(f"journal {cfg.journal}, archives in {cfg.archive_dir}; replay one with: edgehema replay {cfg.archive_dir}/<file>.ehw")
    if len(results) < samples:
        raise EdgehemaError(f"only {len(results)} of {samples} samples came through: {'; '.join(logs[-3:])}")


# ---------------------------------------------------------- models
@app.command()
def export(
    source: str = typer.Argument("reference", help="Float bundle (a directory or a shipped name), or a PyTorch file (.pt/.pth TorchScript or nn.Module) with --manifest."),
    manifest: Optional[Path] = typer.Option(None, "--manifest", help="Manifest template for a PyTorch model (docs/bundle.md, without files and integrity)."),
    target: str = typer.Option(..., "--target", "-t", help="onnx-fp32, onnx-int8, tflite-fp32 or tflite-int8."),
    calibration: List[Path] = typer.Option(..., "--calibration", "-c", help="Event files for calibration and parity (any format, the bundle's profile). Repeatable."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Folder for the new bundle (must not exist or be empty)."),
    method: str = typer.Option("minmax", "--method", help="Calibration: minmax, entropy or percentile."),
    heldout: List[Path] = typer.Option([], "--heldout", help="Event files for the held-out part of the parity report. Repeatable."),
    fail_under: Optional[str] = typer.Option(None, "--fail-under", help="Release gates, e.g. agreement=0.995,count_delta_pct=0.2,size_ratio=0.35 (default those; size_ratio for onnx-int8 only; 'none' for no gate)."),
) -> None:
    """Workstation: turn a float bundle into a device bundle (quantized), with a parity report.

    Needs the export extra (pip install 'edgehema[export]'). Exit status 1 if a release gate fails;
    the bundle is written either way, with the failures in its parity report.
    """
    try:
        from export.quantize import export_bundle
    except ImportError as exc:
        raise EdgehemaError(f"edgehema export needs the workstation extra: pip install 'edgehema[export]' ({exc})") from None
    gates = None
    if fail_under:
        gates = {} if fail_under.strip().lower() == "none" else {}
        for part in fail_under.split(","):
            if not part.strip() or part.strip().lower() == "none":
                continue
            key, _, value = part.partition("=")
            try:
                gates[key.strip()] = float(value)
            except ValueError:
                raise typer.BadParameter(f"--fail-under: {part!r} is not NAME=NUMBER") from None
    result = export_bundle(source, target, list(calibration), out_dir, method, list(heldout) or None, gates, manifest)
    r = result.parity
    out.print(f"wrote {result.bundle} ({target}): label agreement {r['label_agreement']:.4%} over {r['events']:,} events, "
              f"count delta largest {r['max_count_delta_pct']:.3f} % / mean {r['mean_count_delta_pct']:.3f} % "
              f"(float model under a {r['float_gain_step']['gain_step']:.1%} gain step: {r['float_gain_step']['max_count_delta_pct']:.3f} / "
              f"{r['float_gain_step']['mean_count_delta_pct']:.3f} %), retic delta {r['max_retic_delta_pt']:.3f} pt, "
              f"size {r['size_bytes']:,} bytes ({r['size_ratio']:.0%} of float), graph {r['speedup_vs_float']:.2f}x float speed")
    if result.failures:
        raise EdgehemaError(f"{result.bundle}: release gate failed: " + "; ".join(result.failures))


@app.command()
def models() -> None:
    """List the model bundles shipped with edgehema (and in $EDGEHEMA_MODELS, if set)."""
    from .bundle import Bundle, bundled_models, bundled_root

    places = [bundled_root() / n for n in bundled_models()]
    extra = os.environ.get("EDGEHEMA_MODELS")
    if extra and Path(extra).is_dir():
        places += sorted(p for p in Path(extra).iterdir() if (p / "manifest.json").is_file())
    table = Table(title="model bundles")
    for col in ("bundle", "name", "version", "kind", "target", "size", "sha256", "hashes"):
        table.add_column(col)
    for path in places:
        try:
            b = Bundle.load(path)
            status = "verified"
        except EdgehemaError as exc:
            table.add_row(str(path), "-", "-", "-", "-", "-", "-", f"[red]{exc}[/red]")
            continue
        tfl = b.manifest["model"].get("tflite")
        device_file = b.path / tfl["file"] if tfl else b.model_file
        table.add_row(path.name, b.name, b.version, b.kind, b.manifest.get("target", "onnx-fp32"),
                      f"{device_file.stat().st_size:,}", b.sha256[:12], status)
    _wide().print(table)


@app.command()
def info(bundle: str = typer.Argument("reference", help="Bundle directory or shipped name.")) -> None:
    """Print a bundle's manifest summary and parity report, after verifying every hash."""
    from .bundle import Bundle

    b = Bundle.load(bundle)
    m = b.manifest
    out.print(f"[bold]{b.name}[/bold] {b.version} ({b.kind}, {m.get('target', 'onnx-fp32')}) at {b.path}")
    out.print(f"  hashes: verified ({len(m['files'])} file(s)), manifest sha256 {b.sha256}")
    out.print(f"  profile {m['profile']}: {', '.join(m['features'])}")
    out.print(f"  classes: {', '.join(m['classes'])}; supervision: {m.get('supervision', '-')}")
    t = m.get("training", {})
    if t:
        out.print(f"  trained on {t.get('samples')} samples x {t.get('events_per_sample')} events of "
                  f"{', '.join(t.get('species', []))} ({t.get('seconds')} s, torch {t.get('torch')})")
    tfl = m["model"].get("tflite")
    if tfl:
        out.print(f"  TFLite model {tfl['file']} (batch {tfl['batch']}, {tfl['converter']}); float ONNX graph kept for --backend onnx")
    q = m.get("quantization")
    if isinstance(q, dict):
        parts = [q.get("format") or q.get("tool", "")]
        parts += [f"{k.replace('_', ' ')} {q[k]}" for k in ("activations", "weights", "calibration", "calibration_events") if k in q]
        floats = q.get("float") or [f"heads {', '.join(q['float_heads'])}"] * bool(q.get("float_heads"))
        if floats:
            parts.append(f"float: {'; '.join(floats)}")
        out.print(f"  quantization: {', '.join(p for p in parts if p)}")
    elif isinstance(q, str):
        out.print(f"  quantization: {q}")
    p = m.get("parity_summary")
    if p:
        out.print(f"  parity vs float: label agreement {p['label_agreement']:.4%}, largest count delta "
                  f"{p['max_count_delta_pct']:.3f} %"
                  + (f" (mean {p['mean_count_delta_pct']:.3f} %; the float model itself under a 0.1 % gain step: largest "
                     f"{p['float_gain_step_max_count_delta_pct']:.3f} %)" if "mean_count_delta_pct" in p else "")
                  + f", retic delta {p['max_retic_delta_pt']:.3f} pt, size {p['size_ratio']:.0%}, "
                  f"speed {p['speedup_vs_float']:.2f}x; gate failures: {'; '.join(p['gate_failures']) or 'none'}")


@app.command()
def profiles() -> None:
    """List the instrument profiles shipped with edgehema and their features."""
    from .profiles import builtin_profiles

    for prof in builtin_profiles().values():
        out.print(f"[bold]{prof.name}[/bold]{' (default)' if prof.default else ''}: {prof.description}")
        for f in prof.features:
            out.print(f"  {f.name:<12} {f.unit:<16} [{f.range[0]:g}, {f.range[1]:g}]  {f.description}")


def _wide() -> Console:
    """Tables with many columns need their width, even in a pipe (rich assumes 80 there)."""
    return Console(width=max(out.width, 140))


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
