"""``validate``: the laboratory's method verification (precision, carry-over, linearity, comparison,
limit of quantitation) from the device's own results on a plan of event files."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from edgehema import __version__
from edgehema.batch import BatchJob, classify_files
from edgehema.cli._app import app, error, open_classifier, open_output, progress
from edgehema.exceptions import ValidationPlanError
from edgehema.sinks.text_table import Column, render
from edgehema.validation import load_limits, read_plan, verify
from edgehema.validation.report import tables, write_html

#: A stream archive (frames as the instrument sent them), replayed as ``edgehema replay`` does.
ARCHIVE_SUFFIX = ".ehw"


@app.command()
def validate(
    plan_path: Path = typer.Argument(..., metavar="PLAN.csv", help="The plan: columns file, experiment, group, order, and optional ref_rbc_per_ul, ref_plt_per_ul, ref_retic_percent, ref_retic_per_ul (docs/validation.md)."),
    limits_path: Optional[Path] = typer.Option(None, "--limits", help="TOML file with the laboratory's own limits (only what it changes; the defaults and their sources: edgehema/validation/limits.toml)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object: repeatability, carryover, linearity, comparison, loq, verdict."),
    html_path: Optional[Path] = typer.Option(None, "--html", help="Also write one self-contained HTML page with a plot per experiment."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model bundle directory or shipped name (default: reference-tflite-int8)."),
    backend: str = typer.Option("auto", "--backend", help="Inference backend: onnx, tflite (LiteRT), or auto."),
    adapt: bool = typer.Option(True, "--adapt/--no-adapt", help="Refine the latent mixtures on each sample (as classify does)."),
    jobs: int = typer.Option(0, "--jobs", "-j", min=0, help="Worker processes (0: one per core, at most 2 here)."),
) -> None:
    """Verify the method on a plan of event files; exit status 1 when any figure fails its limit.

    A plan with problems (a missing file, an unknown experiment, too few replicates, a carry-over
    sequence out of order) is one line per problem and exit status 1, before anything is classified.
    """
    try:
        limits = load_limits(limits_path)
        plan = read_plan(plan_path, limits)
    except ValidationPlanError as exc:
        for line in exc.problems:
            error(line)
        raise typer.Exit(1)
    clf = open_classifier(model, backend, adapt)
    run = {"model": f"{clf.bundle.name} {clf.bundle.version}", "engine": clf.backend_name,
           "software": __version__, "limits": limits.source, "plan": str(plan_path)}
    results = _results(plan.files, clf, BatchJob(model, backend, adapt, None, None, None, None), jobs)
    verification = verify(plan, results, limits, run)
    if html_path is not None:
        stream = open_output(html_path)
        stream.close()
        write_html(verification, html_path, str(plan_path))
    if as_json:
        typer.echo(json.dumps(verification.to_dict()))
    else:
        _print(verification)
    if verification.verdict != "pass":
        raise typer.Exit(1)


def _results(files: list[Path], clf, job: BatchJob, jobs: int) -> dict[Path, dict | None]:
    """Each file's result (None, with one error line, where it has none): event files classified in
    worker processes, stream archives (.ehw) replayed exactly as the stream computed them."""
    results: dict[Path, dict | None] = {}
    archives = [p for p in files if p.suffix.lower() == ARCHIVE_SUFFIX]
    if archives:
        # Only plans with archives need the stream's machinery (kept off every command's start-up,
        # as edgehema replay does).
        from edgehema.stream.runner import replay_bytes
    for path in archives:
        try:
            samples = replay_bytes(path.read_bytes(), clf)
        except OSError as exc:
            samples, why = [], f"cannot read: {exc.strerror}"
        else:
            why = (f"holds {len(samples)} samples; a plan row is one run: one sample per archive" if samples
                   else "no sample in this archive (not an edgehema frame stream?)")
        results[path] = samples[0] if len(samples) == 1 else None
        if len(samples) != 1:
            error(f"{path}: {why}")
    paths = [str(p) for p in files if p.suffix.lower() != ARCHIVE_SUFFIX]
    with progress(len(paths)) as advance:
        for path, status, value in classify_files(paths, job, jobs, progress=advance):
            if status != "ok":
                error(str(value))
            results[Path(path)] = value if status == "ok" else None
    return results


def _print(v) -> None:
    for title, headers, rows in tables(v):
        columns = [Column(h, "left" if k < 2 else "right", keep=len(headers) - k) for k, h in enumerate(headers)]
        render(title, columns, rows, sys.stdout)
        sys.stdout.write("\n")
    for line in v.problems:
        error(line)
    run = v.run
    sys.stdout.write(f"model {run['model']} on {run['engine']}, edgehema {run['software']}, limits: {run['limits']}\n")
    failed = sum(not item["pass"] for _, item in v.items())
    sys.stdout.write(f"verdict: {v.verdict.upper()}" + (f" ({failed} figure(s) outside their limits)" if failed else "")
                     + "\n")
