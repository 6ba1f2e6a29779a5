"""``classify``: counts, concentrations and flags for event files."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from edgehema.exceptions import EdgehemaError
from edgehema.cli._app import app, error, open_classifier, open_output, progress
from edgehema.batch import BatchJob, classify_files
from edgehema.counts import scattergram
from edgehema.counts.result import classify_sample
from edgehema.formats import read_sample
from edgehema.sample import SampleInfo
from edgehema.sinks import open_sink
from edgehema.species import check_species


@app.command()
def classify(
    files: List[Path] = typer.Argument(..., metavar="FILE...", help="Event files (CSV, FCS, Sysmex XN), one sample each."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per sample (same meaning as the simulator's truth JSON)."),
    as_csv: bool = typer.Option(False, "--csv", help="One CSV row per sample."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write results to this file instead of stdout."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model bundle directory or shipped name (default: reference-tflite-int8; float: reference)."),
    backend: str = typer.Option("auto", "--backend", help="Inference backend: onnx, tflite (LiteRT), or auto (the bundle's own engine first)."),
    adapt: bool = typer.Option(True, "--adapt/--no-adapt", help="Refine the latent mixtures on each sample (a few EM iterations)."),
    events_out: Optional[Path] = typer.Option(None, "--events-out", help="Folder for per-event labels and probabilities (SAMPLE.events.csv)."),
    profile: Optional[str] = typer.Option(None, "--profile", help="Instrument profile of the files (default: recognised from the columns)."),
    species: Optional[str] = typer.Option(None, "--species", help="Species, when the files do not say: one of 21 (human and 20 veterinary species; edgehema classify --species x lists them). The shipped models are trained on 5: human, dog, cat, horse, cattle; others are flagged species_not_validated."),
    dilution: Optional[float] = typer.Option(None, "--dilution", min=1.0, help="Dilution factor, when the files do not say."),
    volume_ul: Optional[float] = typer.Option(None, "--volume-ul", min=0.0, help="Analyzed volume in uL, when the files do not say."),
    jobs: int = typer.Option(0, "--jobs", "-j", min=0, help="Worker processes (0: one per core, at most 2 here)."),
    dataset: Optional[int] = typer.Option(None, "--dataset", min=1, help="Data set of multi-data-set FCS files (from 1; default: the first whose channels match the profile)."),
    plots: Optional[Path] = typer.Option(None, "--plots", help="Folder for each sample's scattergrams (SAMPLE_ID.png)."),
    lis: Optional[List[str]] = typer.Option(None, "--lis", metavar="URL", help="Also send each result to a LIS: mllp://HOST:PORT (HL7 v2.5.1), astm+tcp://HOST:PORT, astm+serial:///dev/ttyUSB0?baud=9600 (ASTM E1394). Repeatable."),
    outbox: Path = typer.Option(Path("edgehema-outbox.sqlite"), "--outbox", help="With --lis: the queue results wait in until the LIS acknowledges them."),
    lis_wait: float = typer.Option(30.0, "--lis-wait", min=0.0, help="With --lis: seconds to wait at the end for the LIS to acknowledge (what is left stays queued)."),
    lis_correct: bool = typer.Option(False, "--lis-correct", help="With --lis: send results the LIS was given before (the same file again, or another result of the same sample) as corrected results (HL7 OBR-25 / ASTM status C). Without it a re-run sends only what the LIS has not acknowledged, and another result of a sample already reported is not sent."),
    lis_queue_ok: bool = typer.Option(False, "--lis-queue-ok", help="With --lis: exit 0 although results are left queued for the LIS (they go at the next run or with edgehema outbox --send)."),
) -> None:
    """Classify every event of each sample and report RBC, PLT and reticulocyte counts with flags.

    Exit status 1 if any file failed (the results of the others are still written), or if with
    --lis a result is left unacknowledged by the LIS (queued; see --lis-queue-ok); 2 for a usage error.
    """

    if as_json and as_csv:
        raise typer.BadParameter("choose one of --json and --csv")
    open_classifier(model, backend, adapt)  # a bad bundle or an engine that fails its self-test: once, before any worker
    if species is not None:
        species = check_species(species)
    info = SampleInfo().merged(species=species, dilution=dilution, volume_ul=volume_ul)
    if plots is not None and plots.exists() and not plots.is_dir():
        raise EdgehemaError(f"{plots}: is a file; --plots names a folder")
    job = BatchJob(model, backend, adapt, profile, info if info != SampleInfo() else None,
                   str(events_out) if events_out else None, None, dataset, str(plots) if plots else None)
    from edgehema.cli.lis import lis_sinks

    senders = lis_sinks(lis or [], outbox, lis_wait, policy="correct" if lis_correct else "hold", resend=lis_correct)
    stream = open_output(output) if output else sys.stdout
    sink = open_sink("json" if as_json else "csv" if as_csv else "table", stream)
    failed = 0
    paths = [str(p) for p in files]
    try:
        with progress(len(paths)) as advance:
            for _path, status, value in classify_files(paths, job, jobs, progress=advance):
                if status == "ok":
                    for sender in senders:  # queued (durably) first: the LIS gets what the screen shows
                        sender.write(value)
                    sink.write(value)
                else:
                    failed += 1
                    error(str(value))
    finally:
        sink.close()
        if output:
            stream.close()
        for sender in senders:
            sender.close()
    left = sum(report_lis(sender) for sender in senders)
    if failed or (left and not lis_queue_ok):
        raise typer.Exit(1)


def report_lis(sender) -> int:
    """One line per LIS at the end of a run: what was sent, what the LIS had already, what is left.
    Returns how many results are left unacknowledged (pending or refused)."""
    t, left = sender.tally, sender.left
    parts = [f"{t['queued']} new result(s)"]
    if t["corrected"]:
        parts.append(f"{t['corrected']} corrected")
    if t["already"]:
        parts.append(f"{t['already']} queued or sent before (not sent again)")
    if t["held"]:
        parts.append(f"{t['held']} not sent: another result of the sample was given to the LIS before "
                     f"(--lis-correct sends them as corrections)")
    if t["review"]:
        parts.append(f"{t['review']} held for review (no sample id)")
    unacked = left["pending"] + left["failed"]
    state = ("every one acknowledged" if not unacked else
             f"NOT acknowledged: {left['pending']} pending, {left['failed']} refused, kept in {sender.outbox.path}")
    line = f"LIS {sender.destination.url}: {', '.join(parts)}; {state}"
    if unacked:
        error(line)
    else:
        sys.stderr.write(f"edgehema: {line}\n")
    return unacked


@app.command()
def plot(
    files: List[Path] = typer.Argument(..., metavar="FILE...", help="Event files (CSV, FCS, Sysmex XN), one sample each."),
    out: Path = typer.Option(Path("."), "--out", "-o", help="Folder the pictures go to (SAMPLE_ID.png)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model bundle directory or shipped name."),
    profile: Optional[str] = typer.Option(None, "--profile", help="Instrument profile of the files."),
) -> None:
    """Classify each file and draw its scattergrams (size/structure, size/RNA stain, extinction
    area/width), events coloured by class on a log density scale, as one PNG per sample."""

    if out.exists() and not out.is_dir():
        raise EdgehemaError(f"{out}: is a file; --out names a folder")
    clf = open_classifier(model, "auto", True)
    failed = 0
    for path in files:
        try:
            sample = read_sample(path, profile=profile)
            result = classify_sample(sample, clf, keep_events=True)
        except EdgehemaError as exc:
            failed += 1
            error(str(exc))
            continue
        written = scattergram.write(out, result.to_dict(), sample.events, result.inference.labels, sample.profile)
        typer.echo(str(written))
    if failed:
        raise typer.Exit(1)
