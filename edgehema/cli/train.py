"""``train`` (workstation): a model from an instrument's own event files and reference counts."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import List, Optional

import typer

from edgehema.exceptions import EdgehemaError
from edgehema.cli._app import app, err, error, out


class _Progress:
    """One bar per training phase on a terminal (losses, ETA of the whole plan); a line every few
    seconds otherwise, with the share of the plan done and the time left."""

    def __init__(self):
        self.tty = sys.stderr.isatty()
        self.bar = None
        self.task = None
        self.label = None
        self.last = 0.0
        self.total_steps: int | None = None
        self.done_before = 0  # steps of the phases finished
        self.phase_total = 0
        self.t0: float | None = None

    def plan(self, total_steps: int) -> None:
        """The whole plan's steps (every fit): the ETA is over all of them."""
        self.total_steps = total_steps

    def overall(self, step: int) -> str:
        if not self.total_steps or self.t0 is None:
            return ""
        done = min(self.done_before + step, self.total_steps)
        elapsed = time.monotonic() - self.t0
        if done <= 0 or elapsed < 1.0:
            return f"plan {100 * done / self.total_steps:.0f} %"
        left = elapsed * (self.total_steps - done) / done
        return f"plan {100 * done / self.total_steps:.0f} %, about {_clock(left)} left"

    def __call__(self, label: str, step: int, total: int, losses: dict) -> None:
        if self.t0 is None:
            self.t0 = time.monotonic()
        if label != self.label:
            if self.label is not None:
                self.done_before += self.phase_total
            self.phase_total = total
        text = " ".join(f"{k} {v:.4f}" for k, v in losses.items())
        whole = self.overall(step)
        if self.tty:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            if self.bar is None:
                self.bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[losses]}"),
                                    TimeRemainingColumn(), TextColumn("{task.fields[whole]}"), console=err,
                                    transient=True)
                self.bar.start()
            if label != self.label:
                if self.task is not None:
                    self.bar.remove_task(self.task)
                self.task = self.bar.add_task(label, total=total, losses="", whole="")
            self.bar.update(self.task, completed=step, losses=text, whole=whole)
        elif time.monotonic() - self.last > 10 or step == total:
            self.last = time.monotonic()
            sys.stderr.write(f"edgehema: {label} {step}/{total}: {text}" + (f" ({whole})" if whole else "") + "\n")
        self.label = label

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


@app.command()
def train(
    data: List[Path] = typer.Argument(..., metavar="DATA...", help="Event files or folders (CSV, FCS, Sysmex XN), one sample per file."),
    reference: Path = typer.Option(..., "--reference", "-r", help="CSV of reference counts per sample: sample_id or file; rbc, plt (unit in the header), retic_percent; optional dilution, volume_ul, and events per class where counted (events_noise, events_rbc, events_retic, events_coincidence, events_plt)."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="New folder for the trained float bundle."),
    profile: Optional[str] = typer.Option(None, "--profile", help="Instrument profile name or TOML file (default: recognised from the files)."),
    init: Optional[str] = typer.Option(None, "--init", help="Fine-tune from this float bundle (e.g. reference) instead of training from scratch."),
    folds: int = typer.Option(5, "--folds", min=0, help="K-fold cross-validation by sample (0: none); the final model uses every sample."),
    tune: int = typer.Option(0, "--tune", min=0, help="Optuna trials of hyperparameter search on the cross-validated count error (0: none)."),
    restarts: int = typer.Option(1, "--restarts", min=1, help="Train from this many seeds, each cross-validated on the same folds; the final model uses the seed with the best held-out count error (needs --folds)."),
    device: str = typer.Option("cpu", "--device", help="cpu (deterministic) or cuda."),
    seed: int = typer.Option(1, "--seed", help="Random seed; the same seed and data give the same model on CPU."),
    scale: str = typer.Option("full", "--scale", help="full, or tiny (a few steps: to check the data and the pipeline)."),
    events_per_sample: Optional[int] = typer.Option(None, "--events-per-sample", min=1000, help="Events kept per sample for training (default 20,000)."),
    cache_mb: float = typer.Option(1024.0, "--cache-mb", min=1.0, help="Memory for cached training events; beyond it files are read again."),
    name: Optional[str] = typer.Option(None, "--name", help="Model name in the manifest (default: the folder's name)."),
) -> None:
    """Workstation: train the two-stage model on an instrument's own event files from sample-level
    reference counts (PLT:RBC, RET %), cross-validated by sample. Needs the export extra."""
    try:
        from export.training import FitSettings, TrainingDataProblems
        from export.training import train as run_training
    except ImportError as exc:
        raise EdgehemaError(f"edgehema train needs the workstation extra: pip install 'edgehema[export]' ({exc})") from None
    if scale not in ("full", "tiny"):
        raise typer.BadParameter("--scale: full or tiny")
    settings = FitSettings.tiny() if scale == "tiny" else FitSettings()
    if events_per_sample:
        settings.events_per_sample = events_per_sample
    if init is not None and scale == "full":
        settings = settings.fine_tune()
    bar = _Progress()
    try:
        result = run_training(list(data), reference, out_dir, profile=profile, init=init, folds=folds, tune=tune, restarts=restarts,
                              device=device, seed=seed, settings=settings, cache_mb=cache_mb, name=name,
                              verify_final=scale != "tiny",
                              log=out.print, progress=bar)
    except TrainingDataProblems as exc:
        bar.close()
        for line in exc.problems:
            error(line)
        error(f"{len(exc.problems)} problem(s) above; nothing was trained")
        raise typer.Exit(1) from None
    finally:
        bar.close()
    out.print(f"next: edgehema export {result.bundle} --target onnx-int8 --calibration FILES --out {result.bundle}-int8")
