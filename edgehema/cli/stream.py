"""The instrument link: ``emulate``, ``stream``, ``replay`` and ``demo``."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer

from edgehema.exceptions import EdgehemaError
from edgehema.sinks.text_table import Column, render
from edgehema.cli._app import app, err, error, open_classifier, open_output, out, warn
from edgehema.sinks import open_sink


@app.command()
def emulate(
    tcp: Optional[int] = typer.Option(None, "--tcp", help="Listen on 127.0.0.1:PORT; the host connects with socket://127.0.0.1:PORT."),
    pty: bool = typer.Option(False, "--pty", help="Stream over a pseudo-terminal pair; prints the port for the host."),
    file: Optional[Path] = typer.Option(None, "--file", help="Write the byte stream to a file (no pacing)."),
    species: str = typer.Option("human", "--species", "-s", help="Species preset of the simulated samples (one of simulate's 10)."),
    pathology: Optional[str] = typer.Option(None, "--pathology", help="Pathology preset."),
    samples: int = typer.Option(3, "--samples", min=1, help="Samples to stream."),
    events: int = typer.Option(150_000, "--events", "-n", min=1, help="Events per sample."),
    rate: float = typer.Option(20_000.0, "--rate", min=0.0, help="Events per second (0: as fast as the link takes)."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    fault: List[str] = typer.Option([], "--fault", metavar="KIND[@SAMPLE]", help="Inject a fault: KIND[@SAMPLE], KIND one of bitflip, drop, truncate, total, disconnect, reboot; SAMPLE 1-based (default 2). Repeatable."),
) -> None:
    """An instrument on a wire: streams simulator samples with the wire protocol, optionally with faults."""
    from edgehema.simulator.emulator import InstrumentEmulator, parse_faults, serve_tcp, write_file, write_pty

    chosen = [x for x in (tcp is not None, pty, file is not None) if x]
    if len(chosen) != 1:
        raise typer.BadParameter("choose exactly one of --tcp PORT, --pty, --file PATH")
    emu = InstrumentEmulator(species, samples, events, seed, parse_faults(list(fault), samples), pathology=pathology)
    if file is not None:
        n = write_file(emu, str(file))
        err.print(f"wrote {n:,} bytes, {samples} samples, to {file}")
    elif pty:
        n = write_pty(emu, rate, ready=lambda name: (print(name, flush=True), err.print(
            f"instrument on {name}; it starts when a host opens the port (edgehema stream --port {name})")))
        err.print(f"sent {n:,} bytes")
    else:
        n = serve_tcp(emu, int(tcp), rate, ready=lambda p: err.print(f"instrument listening on socket://127.0.0.1:{p}"))
        err.print(f"sent {n:,} bytes")


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
    lis: Optional[List[str]] = typer.Option(None, "--lis", metavar="URL", help="Also send each result to a LIS (mllp://, astm+tcp://, astm+serial://), queued in the journal until acknowledged. Repeatable."),
    plots: Optional[Path] = typer.Option(None, "--plots", help="Folder for each sample's scattergrams (SAMPLE_ID.png)."),
) -> None:
    """Sit on the instrument's link: classify events as they arrive and emit one JSON result per sample.

    Every frame is archived and every result committed to the journal before it is reported; a
    sample open when the host stopped is joined to the instrument's continuation at the next start,
    or reported once, flagged incomplete.
    """
    import signal

    from edgehema.stream.runner import StreamRunner
    from edgehema.stream.settings import load_stream_settings

    settings = load_stream_settings(config) if config else {}
    _pin_cpu(cpu if cpu is not None else settings.get("cpu"))
    cfg = _stream_config(settings, config, port=port, baud=baud, journal=journal, archive=archive, model=model,
                         backend=backend, adapt=adapt, no_reconnect=no_reconnect, max_samples=max_samples,
                         idle_exit=idle_exit, plots=plots)
    output = output or (Path(settings["output"]) if "output" in settings else None)
    from edgehema.cli.lis import lis_sinks

    # The outbox is the journal's database: a result is journaled, then queued, then sent.
    senders = lis_sinks(lis or ([settings["lis"]] if "lis" in settings else []), cfg.journal, wait_s=10.0)

    def emit(result: dict) -> None:
        for sender in senders:
            sender.write(result)
        sink.write(result)

    live = sys.stderr.isatty()
    runner = StreamRunner(cfg, emit,
                          log=lambda m: err.print(m, style="dim", markup=False, highlight=False) if live else sys.stderr.write(m + "\n"))
    stream_out = open_output(output, "a") if output else sys.stdout
    sink = open_sink("json", stream_out)
    # systemd stops a service with SIGTERM: close the open sample as cleanly as Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: runner.stop())
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
        for sender in senders:
            sender.close()


def _pin_cpu(cpu) -> None:
    if cpu is not None:
        try:
            os.sched_setaffinity(0, {int(cpu)})
        except (OSError, AttributeError, ValueError) as exc:
            raise EdgehemaError(f"cannot pin the stream to CPU {cpu}: {exc}") from None


def _stream_config(settings: dict, config: Optional[Path], *, port, baud, journal, archive, model, backend, adapt,
                   no_reconnect, max_samples, idle_exit, plots):
    """The stream's settings: the options, else the --config file's, else the defaults."""
    from edgehema.stream.runner import StreamConfig

    port = port or settings.get("port")
    if not port:
        raise typer.BadParameter("a port is needed: --port URL or port = ... in --config")
    return StreamConfig(
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
        plots=plots or (Path(settings["plots"]) if "plots" in settings else None),
        **_trusted_keys(settings, config),
    )


def _trusted_keys(settings: dict, config: Optional[Path]) -> dict:
    """The settings file's trusted keys, relative to the file (it travels with its keys on a device)."""
    keys = settings.get("trusted_keys")
    if not keys:
        return {}
    keys = [keys] if isinstance(keys, str) else keys
    base = config.parent if config else Path(".")
    return {"trusted_keys": tuple(str(base / Path(k).expanduser()) for k in keys),
            "trusted_keys_origin": f"{config}: trusted_keys"}


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


@app.command()
def replay(
    archives: List[Path] = typer.Argument(..., metavar="ARCHIVE...", help="Frame archives written by edgehema stream (or any captured byte stream)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model bundle (default: reference-tflite-int8; float: reference)."),
    adapt: bool = typer.Option(True, "--adapt/--no-adapt", help="Per-sample adaptation (as the stream had it)."),
    lis: Optional[List[str]] = typer.Option(None, "--lis", metavar="URL", help="Also send each result to a LIS (mllp://, astm+tcp://, astm+serial://). Repeatable."),
    outbox: Path = typer.Option(Path("edgehema-outbox.sqlite"), "--outbox", help="With --lis: the queue results wait in until the LIS acknowledges them."),
    lis_wait: float = typer.Option(30.0, "--lis-wait", min=0.0, help="With --lis: seconds to wait at the end for the LIS."),
    plots: Optional[Path] = typer.Option(None, "--plots", help="Folder for each sample's scattergrams (SAMPLE_ID.png)."),
) -> None:
    """Recompute results from archived frames, exactly as the stream computed them (JSON lines)."""
    from edgehema.stream.runner import replay_bytes
    from edgehema.cli.lis import lis_sinks

    clf = open_classifier(model, adapt=adapt)
    senders = lis_sinks(lis or [], outbox, lis_wait)
    failed = 0
    for path in archives:
        try:
            data = path.read_bytes()
        except OSError as exc:
            failed += 1
            error(f"{path}: cannot read: {exc.strerror}")
            continue
        results = replay_bytes(data, clf, plots)
        if not results:
            failed += 1
            error(f"{path}: no sample in this archive (not an edgehema frame stream?)")
        for r in results:
            for sender in senders:
                sender.write(r)
            typer.echo(json.dumps(r, separators=(",", ":")))
    for sender in senders:
        sender.close()
    if failed:
        raise typer.Exit(1)


@app.command()
def demo(
    samples: int = typer.Option(3, "--samples", min=1, help="Samples the simulated instrument measures."),
    events: int = typer.Option(60_000, "--events", "-n", min=1000, help="Events per sample."),
    rate: float = typer.Option(40_000.0, "--rate", min=0.0, help="Events per second on the link."),
    species: str = typer.Option("cat", "--species", "-s", help="Species preset (one of simulate's 10)."),
    seed: int = typer.Option(1, "--seed", help="Random seed."),
    workdir: Optional[Path] = typer.Option(None, "--workdir", help="Keep the demo's journal and archives in this folder (default: a temporary folder, removed at the end)."),
    lis: Optional[str] = typer.Option(None, "--lis", metavar="URL", help="Also send each result to a LIS (mllp://HOST:PORT; edgehema lis-listen is one)."),
) -> None:
    """The whole chain on this machine: a simulated instrument on a pseudo-terminal, edgehema streaming
    from it, live progress, and each sample's counts next to the simulator's truth."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="edgehema-demo-") as tmp:
        _demo(samples, events, rate, species, seed, workdir, Path(tmp), lis)


def _demo(samples: int, events: int, rate: float, species: str, seed: int, workdir: Optional[Path], tmp: Path,
          lis: Optional[str] = None) -> None:
    import threading

    from edgehema.simulator.emulator import InstrumentEmulator, start_pty_instrument
    from edgehema.stream.runner import StreamConfig, StreamRunner

    keep = workdir is not None
    workdir = _demo_folder(workdir) if keep else tmp
    emu = InstrumentEmulator(species, samples, events, seed)
    # The instrument runs in a process of its own, as a real one would. (Pinning the two to separate
    # cores, as the TCP benchmark does, made pty latencies worse here: the kernel's tty work then
    # shares the stream's core.)
    instrument, port_name, truths, go = start_pty_instrument(emu, rate)
    box = {"port": port_name}
    results: list[dict] = []
    cfg = StreamConfig(port=box["port"], journal=workdir / "journal.sqlite", archive_dir=workdir / "archive",
                       reconnect=False, max_samples=samples, idle_exit=10.0)
    logs: list[str] = []

    def log(line: str) -> None:
        logs.append(line)
        if line.startswith("connected to"):
            go.set()  # the host has the port open: the instrument may start

    from edgehema.cli.lis import lis_sinks

    senders = lis_sinks([lis] if lis else [], cfg.journal, wait_s=30.0)

    def emit(result: dict) -> None:
        for sender in senders:
            sender.write(result)
        results.append(result)

    runner = StreamRunner(cfg, emit, log=log)
    clf = runner.classifier
    for line in clf.refused:  # an engine passed over (not installed, or failed its self-test): said, as classify does
        warn(f"{clf.bundle.name}: {line}; counting on {clf.backend_name}")
    out.print(f"simulated instrument on {box['port']}: {samples} {species} samples x {events:,} events at {rate:,.0f} events/s")
    out.print(f"model {clf.bundle.name} on {clf.backend_name}")
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
    # What the stream said that is not routine (a corrupted frame, a lost link, a full disk): shown.
    routine = ("model ", "engine ", "connected to ", "HELLO from ", f"{clf.bundle.name}: ")
    for line in logs:
        if not line.startswith(routine):
            sys.stderr.write(f"edgehema: stream: {line}\n")
    _demo_table(results, runner.stats.result_latency_ms, truths)
    for sender in senders:
        pending = sender.pending()
        sender.close()  # waits for the LIS (30 s at most); what is left stays queued in the journal
        out.print(f"LIS {sender.destination.url}: each result sent as HL7 v2.5.1 ORU^R01"
                  + (f" ({pending} were still waiting when the table was drawn)" if pending else ""))
    if keep:
        out.print(f"journal {cfg.journal}, archives in {cfg.archive_dir}; replay one with: edgehema replay {cfg.archive_dir}/<file>.ehw")
    else:
        out.print("(the journal and archives were in a temporary folder, now removed: --workdir DIR keeps them)")
    if len(results) < samples:
        raise EdgehemaError(f"only {len(results)} of {samples} samples came through: {'; '.join(logs[-3:])}")


def _demo_folder(workdir: Path) -> Path:
    if workdir.exists() and not workdir.is_dir():
        raise EdgehemaError(f"{workdir}: is a file; --workdir names a folder")
    if not workdir.parent.is_dir():
        raise EdgehemaError(f"{workdir}: the folder {workdir.parent} does not exist")
    workdir.mkdir(exist_ok=True)
    return workdir


def _demo_table(results: list[dict], latencies_ms: list[float], truths: list[dict]) -> None:
    """Each sample's counts next to the simulator's truth, and how long its result took."""
    columns = [Column("sample", "left", keep=9), Column("events", keep=3), Column("RBC cells", keep=7),
               Column("truth", keep=7), Column("PLT cells", keep=7), Column("truth", keep=7), Column("retic %", keep=6),
               Column("truth", keep=6), Column("RBC x10^6/uL", keep=2), Column("PLT x10^3/uL", keep=2),
               Column("flags", "left", keep=8, wrap=True), Column("latency ms", keep=1)]
    rows = []
    for r, lat in zip(results, latencies_ms):
        truth = next((t for t in truths if t["sample_id"] == r["sample_id"]), None)
        if truth is None:
            continue
        k = r["concentration"]
        rows.append([r["sample_id"], f"{r['events']['total']:,}", f"{r['cells']['rbc']:,}", f"{truth['cells']['rbc']:,}",
                     f"{r['cells']['plt']:,}", f"{truth['cells']['plt']:,}", f"{r['retic_percent']:.2f}",
                     f"{truth['retic_percent']:.2f}",
                     "-" if k["rbc_per_uL"] is None else f"{k['rbc_per_uL'] / 1e6:.2f}",
                     "-" if k["plt_per_uL"] is None else f"{k['plt_per_uL'] / 1e3:.0f}",
                     ", ".join(r["flags"]) or "ok", f"{lat:.0f}"])
    render("edgehema stream vs simulator truth (cells counted per sample; concentrations in blood)", columns, rows,
           sys.stdout)
