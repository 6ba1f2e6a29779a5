"""Fleet scale (workstation or cluster): ``reanalyze`` archives on Dask, ``rollout-report`` from its results."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from edgehema.exceptions import EdgehemaError
from edgehema.sinks.text_table import Column, render
from edgehema.cli._app import app, err, out, warn


@app.command()
def reanalyze(
    inputs: List[str] = typer.Argument(..., metavar="INPUT...", help="Stream archives (.ehw) and event files: paths, folders, globs or fsspec URLs (s3://..., with its driver installed)."),
    model: str = typer.Option(..., "--model", "-m", help="The new model bundle (directory or shipped name)."),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="The model it would replace: both run on every sample in the same pass."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Results: a Parquet dataset folder, partitioned by date and device; a re-run skips what it holds."),
    cluster: Optional[str] = typer.Option(None, "--cluster", help="An existing Dask scheduler (tcp://host:8786); default a local cluster."),
    workers: int = typer.Option(2, "--workers", "-w", min=1, help="Worker processes of the local cluster."),
    batch: Optional[int] = typer.Option(None, "--batch", min=1, help="Inputs per task (default: about four tasks per worker, at most 16)."),
    backend: str = typer.Option("auto", "--backend", help="Inference backend on the workers."),
    adapt: bool = typer.Option(True, "--adapt/--no-adapt", help="Per-sample adaptation (as classify)."),
) -> None:
    """Re-analyse an archive of samples with a new model (and the old one) on a Dask cluster.

    Needs the fleet extra (pip install 'edgehema[fleet]'). Results match edgehema classify and
    replay sample for sample. An input that fails is recorded with its error line and the run goes
    on; a batch lost with its worker runs again on another; after a crash, run the same command
    again: what is done is skipped, nothing is counted twice.
    """
    from edgehema.fleet import FleetJob
    from edgehema.fleet.run import reanalyze as run

    job = FleetJob(model=model, baseline=baseline, backend=backend, adapt=adapt)
    bar = None
    if sys.stderr.isatty():
        from rich.progress import Progress

        bar = Progress(console=err, transient=True)
        bar.start()
        task = bar.add_task("re-analysing", total=None)

    def progress(done: int, total: int) -> None:
        if bar is not None:
            bar.update(task, completed=done, total=total)

    try:
        summary = run(list(inputs), job, out_dir, cluster=cluster, workers=workers, batch_size=batch,
                      progress=progress, log=lambda m: err.print(m, markup=False, highlight=False))
    finally:
        if bar is not None:
            bar.stop()
    out.print(f"{summary.inputs} inputs: {summary.analysed} analysed now in {summary.batches} tasks on {summary.workers} "
              f"worker(s), {summary.skipped} already done; {summary.rows} result rows, {summary.failed_inputs} input(s) failed "
              f"(their error lines are in the results); {summary.seconds:.1f} s -> {out_dir}")
    for lost in summary.lost_batches:
        warn(f"task {lost}: not done; run the same command again to analyse its inputs")
    if summary.lost_batches:
        raise typer.Exit(1)


@app.command("rollout-report")
def rollout_report(
    results: Path = typer.Argument(..., help="A reanalyze --baseline results folder."),
    html_out: Optional[Path] = typer.Option(None, "--html", help="Also write the report as one HTML page (tables and Bland-Altman plots)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the report as JSON."),
    limit: List[str] = typer.Option([], "--limit", metavar="ANALYTE=V1,V2", help="Decision limits (plt_per_ul, retic_percent, rbc_per_ul); default PLT 20,50,100,150 x10^3/uL and RET 2.5 %. Repeatable."),
    max_: List[str] = typer.Option([], "--max", metavar="NAME=VALUE", help="Verdict thresholds: bias_rbc, bias_plt (%), bias_retic (pt), loa_rbc, loa_plt, loa_retic, crossing_pct, flag_change_pct. Repeatable."),
    show: int = typer.Option(10, "--show", min=0, help="Samples listed per section in the terminal."),
) -> None:
    """What a rollout would change: bias and limits of agreement new vs baseline per species and
    device, samples crossing decision limits, changed flags, and a verdict. Exit status 1 on FAIL."""
    from edgehema.fleet import report as R
    from edgehema.fleet.run import read_results

    limits = {}
    for item in limit:
        name, _, values = item.partition("=")
        name = R.SHORT.get(name.strip().lower(), name.strip())
        try:
            limits[name] = tuple(float(v) for v in values.split(",") if v.strip())
        except ValueError:
            raise typer.BadParameter(f"--limit {item!r}: ANALYTE=NUMBER,NUMBER...") from None
        if name not in ("rbc_per_ul", "plt_per_ul", "retic_percent") or not limits[name]:
            raise typer.BadParameter(f"--limit {item!r}: analyte one of rbc_per_ul, plt_per_ul, retic_percent, with values")
    thresholds = {}
    for item in max_:
        name, _, value = item.partition("=")
        if name.strip() not in R.DEFAULT_THRESHOLDS:
            raise typer.BadParameter(f"--max {item!r}: NAME one of {', '.join(R.DEFAULT_THRESHOLDS)}")
        try:
            thresholds[name.strip()] = float(value)
        except ValueError:
            raise typer.BadParameter(f"--max {item!r}: NAME=NUMBER") from None
    rows = read_results(results).to_pylist()
    if not rows:
        raise EdgehemaError(f"{results}: holds no results yet")
    rep = R.build(rows, limits, thresholds)
    out.print(f"new: {rep.models.get('model', '-')}; baseline: {rep.models.get('baseline', '-')}")
    columns = [Column("group", "left", keep=9), Column("samples", keep=8)] + \
        [Column(f"{label} bias (95 % LoA)", keep=7) for _, label, _, _ in R.ANALYTES] + \
        [Column("crossings", keep=6), Column("flag changes", keep=6)]
    render("new vs baseline (RBC, PLT: % of the pair's mean; RET: percentage points)", columns, R.table_rows(rep), sys.stdout)
    if rep.crossings:
        out.print(f"decision limits crossed: {len(rep.crossings)}")
        for c in rep.crossings[:show]:
            out.print(f"  {c['input']} {c['sample_id']}: {c['analyte']} {c['baseline']:.4g} -> {c['model']:.4g} "
                      f"(limit {', '.join(f'{v:g}' for v in c['limits'])})")
    if rep.flag_changes:
        out.print(f"flags changed: {len(rep.flag_changes)}")
        for c in rep.flag_changes[:show]:
            out.print(f"  {c['input']} {c['sample_id']}: +{','.join(c['gained']) or '-'} -{','.join(c['lost']) or '-'}")
    if rep.new_only_errors:
        out.print(f"inputs only the new model fails: {len(rep.new_only_errors)}")
        for e in rep.new_only_errors[:show]:
            out.print(f"  {e['error']}")
    if rep.both_errors:
        out.print(f"inputs both models fail (bad files): {rep.both_errors}")
    if html_out:
        R.write_html(rep, html_out)
        out.print(f"wrote {html_out}")
    if json_out:
        json_out.write_text(json.dumps(R.to_dict(rep), indent=1) + "\n", encoding="utf-8")
        out.print(f"wrote {json_out}")
    if rep.passed:
        out.print("verdict: PASS")
    else:
        out.print("verdict: FAIL: " + "; ".join(rep.verdict_failures))
        raise typer.Exit(1)
