"""``edgehema train``: an instrument's own event files + reference counts -> a float bundle with a
model card, cross-validated by sample (docs/training.md)."""

from __future__ import annotations

import json
import math
import platform
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from edgehema import __version__
from edgehema.model.bundle import Bundle

from . import crossval
from .dataset import discover, scan
from .errors import TrainingDataProblems, TrainingError
from .fit import FitSettings, Preprocessing, fit, load_init, save_bundle, settings_dict, step_costs
from .reference import ReferenceProblems, read_reference
from .supervision import targets_for


@dataclass
class TrainResult:
    bundle: Path
    crossval: dict | None
    notices: list[str]
    seconds: float
    manifest: dict
    #: Loss per step of the final model's fit, per stage.
    history: dict


#: The bundle's own check limits are fitted on at most this many of its training samples (a fold's
#: model, which only counts its held-out samples, on fewer).
LIMIT_SAMPLES = 40
FOLD_LIMIT_SAMPLES = 20


def limit_samples(n_files: int, most: int = LIMIT_SAMPLES) -> list[int]:
    """Training samples the limits are fitted on: evenly spread over all of them. (The first 40 of
    files sorted by name can be one family of samples only: fitted on it, the stain check fired on
    every sample of another family.)"""
    if n_files <= most:
        return list(range(n_files))
    return sorted({int(round(i)) for i in np.linspace(0, n_files - 1, most)})


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TrainingError(f"{out}: exists and is not an empty folder; name a new folder for the model")
    if not out.parent.exists():
        raise TrainingError(f"{out}: the folder {out.parent} does not exist")


def _need_optuna():
    try:
        import optuna
    except ImportError:
        raise TrainingError("--tune needs optuna, which is in the workstation extra: pip install 'edgehema[export]'") from None
    return optuna


def _device(name: str) -> str:
    import torch

    if name == "cpu":
        return name
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise TrainingError(f"--device {name}: no CUDA GPU is available to torch {torch.__version__} here; use --device cpu")
        return name
    raise TrainingError(f"--device {name}: unknown device (cpu or cuda)")


def train(
    data: list[str | Path],
    reference: str | Path,
    out: str | Path,
    profile: str | None = None,
    init: str | None = None,
    folds: int = 5,
    tune: int = 0,
    restarts: int = 1,
    device: str = "cpu",
    seed: int = 1,
    settings: FitSettings | None = None,
    cache_mb: float = 1024.0,
    name: str | None = None,
    description: str | None = None,
    version: str = "1.0.0",
    training_notes: dict | None = None,
    log: Callable[[str], None] = print,
    progress=None,
    scan_progress=None,
    verify_final: bool = True,
) -> TrainResult:
    """Check everything first (every problem listed together), then cross-validate, then train the
    final model on every sample, check that it counts its own training samples about as well as
    cross-validation promised (``verify_final``), and write it to ``out``. ``description`` and
    ``training_notes`` (added to the manifest's ``training``) describe where the data came from."""
    t0 = time.perf_counter()
    out = Path(out)
    _check_out(out)
    _check_arguments(folds, tune, restarts)
    cfg = replace(settings or FitSettings(), seed=seed, device=_device(device))
    run = _prepare(data, reference, profile, init, cfg, settings is None, folds, seed, cache_mb, log, progress,
                   scan_progress)
    estimate = _plan(run.cfg, folds, tune, restarts, len(run.files), run.store, run.targets, run.pre, log, progress)
    report: dict = {"folds": folds, "seed": seed}
    if tune:
        report["tuning"] = run.tune(tune, seed)
    runs = run.restarts(restarts, report) if folds else [(math.nan, 0, run.cfg, None, [])]
    fitted, summary, preds, report["final_model_checks"] = run.final_model(runs, verify_final, out)
    if restarts > 1:
        report["restart_chosen_seed"] = run.cfg.seed
    if summary is not None:
        for line in crossval.format_summary(summary, f"{folds}-fold cross-validation"):
            log(line)
        report["summary"] = summary
    card, training = run.model_card(report, summary, reference, seed), run.training_card(training_notes)
    with tempfile.TemporaryDirectory() as tmp:
        extra_files = _crossval_files(Path(tmp), report, summary, preds)
        training["seconds"] = card["seconds"] = round(time.perf_counter() - t0, 1)
        manifest = save_bundle(
            fitted, run.prof, out, name or out.name, description or "Two-stage deep clustering (AE + IDEC, then VaDE) "
            "trained with edgehema train on an instrument's own event files and sample-level reference counts", training,
            [run.store.events(i) for i in limit_samples(len(run.files))], extra={"model_card": card},
            extra_files=extra_files, profile_file=_profile_file(run.prof), version=version)
    log(f"wrote {out} in {time.perf_counter() - t0:.1f} s (estimated {estimate:.0f} s before training; files read "
        f"from disk again: {run.store.reads})")
    return TrainResult(out, summary, run.notices, time.perf_counter() - t0, manifest, fitted.history)


def _check_arguments(folds: int, tune: int, restarts: int) -> None:
    if folds == 1 or folds < 0:
        raise TrainingError(f"--folds {folds}: give 0 (no cross-validation) or 2 or more")
    if tune and not folds:
        raise TrainingError("--tune needs cross-validation: give --folds 2 or more")
    if tune:
        _need_optuna()
    if restarts < 1:
        raise TrainingError(f"--restarts {restarts}: give 1 or more")
    if restarts > 1 and not folds:
        raise TrainingError("--restarts needs cross-validation to choose between them: give --folds 2 or more")


def _prepare(data, reference, profile, init, cfg: FitSettings, default_settings: bool, folds: int, seed: int,
             cache_mb: float, log, progress, scan_progress) -> "_Run":
    """Read the reference and every event file, the --init bundle: every problem of them together,
    as one TrainingDataProblems. Then the shares each sample is trained on."""
    problems: list[str] = []
    try:
        table = read_reference(reference)
    except ReferenceProblems as exc:
        problems += exc.problems
        table = None
    paths, missing = discover(data, exclude=[Path(reference)])
    problems += missing
    init_bundle = None
    if init is not None:
        try:
            init_bundle = Bundle.load(init)
        except Exception as exc:  # BundleError: one line, listed with the rest
            problems.append(f"--init: {exc}")
    found, store = scan(paths, table, profile, cfg.events_per_sample, cache_mb, scan_progress)
    problems += found.problems
    if table is None and not problems:
        problems.append(f"{reference}: could not be read")
    n_sup = sum(f.supervised for f in found.files)
    if folds and n_sup and n_sup < folds:
        problems.append(f"--folds {folds}: only {n_sup} sample(s) have reference values; give --folds {max(n_sup, 2)} or fewer, or 0")
    if problems:
        raise TrainingDataProblems(problems)
    for line in found.notices:
        log(f"note: {line}")
    files, prof = found.files, found.profile
    if init_bundle is not None:
        idec0, vade0, pre, arch = load_init(init_bundle, prof)
        cfg = replace(cfg.fine_tune() if default_settings else cfg, **arch)
        init_pair = (idec0, vade0)
    else:
        pre, init_pair = Preprocessing(found.log_mean, found.log_std), None
    targets = [targets_for(f, prof.coincidence_window_us) for f in files]
    how = {t.coincidence for t in targets if t.supervised}
    log(f"training data: {len(files)} files of profile {prof.name}, {n_sup} with reference values "
        f"({', '.join(table.columns.get(k, '') for k in ('rbc', 'plt', 'retic_percent') if k in table.columns)}); "
        f"coincidences {_how(how)}")
    return _Run(files=files, store=store, targets=targets, pre=pre, init_pair=init_pair, init_bundle=init_bundle,
                prof=prof, cfg=cfg, table=table, how=how, notices=found.notices, folds=folds,
                fold_of=crossval.folds_for(files, folds, seed) if folds else [-1] * len(files), log=log,
                progress=progress)


@dataclass
class _Run:
    """One training run: its data, as read and checked, and the settings its steps refine (tuning,
    restarts, the final model's seed)."""

    files: list
    store: object
    targets: list
    pre: Preprocessing
    init_pair: tuple | None
    init_bundle: Bundle | None
    prof: object
    cfg: FitSettings
    table: object
    how: set
    notices: list
    folds: int
    fold_of: list
    log: Callable[[str], None]
    progress: object

    def cross_validate(self, c: FitSettings, label: str) -> tuple[dict, list]:
        preds = []
        for k in range(self.folds):
            train_idx = [i for i, f in enumerate(self.fold_of) if f != k]
            held = [self.files[i] for i, f in enumerate(self.fold_of) if f == k]
            fitted = fit(c, self.store, train_idx, self.targets, self.pre, self.init_pair,
                         _tagged(self.progress, f"{label} fold {k + 1}/{self.folds}"))
            preds += _count_with(fitted, self.prof, self.store, train_idx, held, k, f"fold-{k + 1}", "cross-validation fold")
        return crossval.summarize(preds), preds

    def tune(self, trials: int, seed: int) -> dict:
        """Optuna's TPE over the fit settings, each trial cross-validated; the best becomes ``cfg``."""
        optuna = _need_optuna()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed))
        cfg = self.cfg

        def objective(trial) -> float:
            c = replace(
                cfg,
                latent1=trial.suggest_int("latent1", 2, 8), latent2=trial.suggest_int("latent2", 2, 8),
                hidden=(trial.suggest_categorical("width", [32, 64, 128]),) * 1 + (trial.suggest_categorical("width2", [16, 32, 64]),),
                fine_clusters=trial.suggest_int("fine_clusters", max(6, cfg.fine_clusters // 2), cfg.fine_clusters * 2),
                llp_weight=trial.suggest_float("llp_weight", 5.0, 60.0, log=True),
                entropy_weight=trial.suggest_float("entropy_weight", 0.2, 3.0, log=True),
                lr=trial.suggest_float("lr", 5e-4, 5e-3, log=True),
            )
            if self.init_pair is not None:  # a fine-tuned model keeps its architecture
                c = replace(c, latent1=cfg.latent1, latent2=cfg.latent2, hidden=cfg.hidden)
            s, _ = self.cross_validate(c, f"tune {trial.number + 1}/{trials}")
            value = crossval.score(s)
            self.log(f"tune trial {trial.number + 1}/{trials}: score {value:.3f} ({trial.params})")
            return value if math.isfinite(value) else 1e9

        study.optimize(objective, n_trials=trials)
        best = study.best_trial.params
        cfg = replace(cfg, lr=best["lr"], llp_weight=best["llp_weight"], entropy_weight=best["entropy_weight"],
                      fine_clusters=best["fine_clusters"])
        if self.init_pair is None:
            cfg = replace(cfg, latent1=best["latent1"], latent2=best["latent2"], hidden=(best["width"], best["width2"]))
        self.cfg = cfg
        self.log(f"tuning: best score {study.best_value:.3f} with {best}")
        return {"trials": trials, "sampler": f"optuna TPESampler(seed={seed})", "best_score": study.best_value,
                "best": best, "scores": [t.value for t in study.trials]}

    def restarts(self, restarts: int, report: dict) -> list:
        """The same settings from other seeds, each cross-validated on the same folds; the final
        model takes the seed with the best held-out sample-count error (a recipe whose result
        depends on luck is measured, and the luck chosen on held-out data). The runs, best first."""
        runs = []
        for r in range(restarts):
            c = replace(self.cfg, seed=self.cfg.seed + RESTART_SEED_STEP * r)
            label = "cross-validation" if restarts == 1 else f"restart {r + 1}/{restarts} cross-validation"
            s_r, p_r = self.cross_validate(c, label)
            runs.append((crossval.score(s_r), r, c, s_r, p_r))
            if restarts > 1:
                self.log(f"restart {r + 1}/{restarts} (seed {c.seed}): score {runs[-1][0]:.3f}, " + restart_line(s_r))
        runs.sort(key=lambda t: (t[0] if math.isfinite(t[0]) else math.inf, t[1]))
        if restarts > 1:
            scores = [t[0] for t in runs]
            report["restarts"] = [{"seed": t[2].seed, "score": t[0], **restart_figures(t[3])}
                                  for t in sorted(runs, key=lambda t: t[1])]
            self.log(f"restarts: scores {min(scores):.3f}-{max(scores):.3f}; the final model uses seed {runs[0][2].seed}")
        return runs

    def final_model(self, runs: list, verify_final: bool, out: Path) -> tuple:
        """One more fit, on every sample: the same seed and settings can still land elsewhere than on
        the folds (a collapsed platelet cluster, measured: PLT -38 % on its own training samples where
        cross-validation said -2 %). It must count its own training samples about as well as
        cross-validation promised; if not, the next seed by cross-validated error is tried, and where
        none passes nothing is written. (fitted, cross-validation summary, predictions, checks)."""
        supervised = [f for f in self.files if f.supervised]
        final_checks = []
        for attempt, (cv_score, _, c, s_c, p_c) in enumerate(runs):
            fitted = fit(c, self.store, list(range(len(self.files))), self.targets, self.pre, self.init_pair,
                         _tagged(self.progress, "final model"))
            attempts = fitted.history.get("stage1_attempts") or []
            if len(attempts) > 1:
                self.log("final model: stage 1 fitted " + str(len(attempts)) + " times (its shares missed the samples' by "
                         + ", ".join(f"{a['share_error']:.0%} with seed {a['seed']}" for a in attempts) + "); the best kept")
            in_summary = _in_sample(fitted, self.prof, supervised, self.store, len(self.files))
            in_score = crossval.score(in_summary)
            limit = FINAL_SCORE_FACTOR * cv_score + FINAL_SCORE_MARGIN if math.isfinite(cv_score) else math.inf
            passed = not verify_final or in_score <= limit
            final_checks.append({"seed": c.seed, "score_on_training_samples": in_score,
                                 "crossval_score": cv_score if math.isfinite(cv_score) else None,
                                 "limit": limit if math.isfinite(limit) else None, "passed": passed,
                                 **restart_figures(in_summary), "flag_rates": in_summary.get("flag_rates")})
            self.log(f"final model (seed {c.seed}) on its {len(supervised)} training samples: score {in_score:.3f}"
                     + (f" (cross-validated {cv_score:.3f}, limit {limit:.3f})" if math.isfinite(limit) else "")
                     + (", " + restart_line(in_summary) if in_summary.get("samples") else ""))
            if in_summary.get("flag_rates"):
                for line in crossval.format_flag_rates(in_summary["flag_rates"], "training"):
                    self.log(line.strip())
            if passed:
                if verify_final and not math.isfinite(limit) and in_score > NO_CROSSVAL_WARN_SCORE:
                    # Nothing to hold it to, but a model that cannot count its own training samples
                    # (the collapse measured with --folds 0: PLT -37.6 %) must not go out unremarked.
                    self.log(f"warning: the final model counts its own training samples with p95 errors {in_score:.1f}x "
                             f"the targets on average; without cross-validation nothing else checks it: train with "
                             f"--folds 3 --restarts 3")
                self.cfg = c
                return fitted, s_c, p_c, final_checks
            more = attempt + 1 < len(runs)
            self.log(f"final model with seed {c.seed} does not reproduce its cross-validated accuracy"
                     + (f": trying seed {runs[attempt + 1][2].seed}, the next by cross-validated error" if more else ""))
        raise TrainingError(
            f"no final model reproduced its cross-validated accuracy on its own training samples (seeds "
            f"{', '.join(str(t['seed']) for t in final_checks)}: scores "
            f"{', '.join(format(t['score_on_training_samples'], '.2f') for t in final_checks)} against limits "
            f"{', '.join(format(t['limit'], '.2f') for t in final_checks)}); nothing written to {out}: "
            f"train with more --restarts or another --seed")

    def species(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for f in self.files:
            out[f.species or "not given"] = out.get(f.species or "not given", 0) + 1
        return out

    def model_card(self, report: dict, summary: dict | None, reference, seed: int) -> dict:
        """The manifest's ``model_card``: the data, the supervision, cross-validation, the checks."""
        files, cfg, how = self.files, self.cfg, self.how
        n_sup = sum(f.supervised for f in files)
        return {
            "data": {"files": len(files), "with_reference": n_sup, "unsupervised": len(files) - n_sup,
                     "profile": self.prof.name, "species": self.species(),
                     "events_per_file_median": int(np.median([f.n_events for f in files])),
                     "events_kept_per_sample": cfg.events_per_sample,
                     "files_with_acquisition_time": sum(f.elapsed_s is not None for f in files)},
            "reference": {"file": Path(reference).name, "columns": self.table.columns, "encoding": self.table.encoding},
            "supervision": {"coincidences": sorted(how), "noise": "counted per class in the reference" if how == {"counted"}
                            else f"unsupervised (share held under {cfg.noise_cap:.0%} by a prior)"
                            + (" where the reference gives no events per class" if "counted" in how else ""),
                            "shares": sorted({s.name for t in self.targets for s in t.stage1 + t.stage2})},
            "crossval": None if summary is None else {"folds": self.folds, **summary},
            "tuning": report.get("tuning"),
            "restarts": report.get("restarts"),
            "final_model_checks": report["final_model_checks"],
            # Flags firing on more than 5 % of the samples whose counts meet their reference (held out,
            # or the final model's own): defects of their limits for this model.
            "flag_defects": sorted({d for s in [summary or {}] + list(report["final_model_checks"][-1:])
                                    for d in ((s.get("flag_rates") or {}).get("defects") or [])}),
            "init": None if self.init_bundle is None else {"name": self.init_bundle.name, "version": self.init_bundle.version,
                                                           "sha256": self.init_bundle.sha256},
            "settings": settings_dict(cfg),
            "edgehema": __version__,
            "seed": seed,
            "machine": f"{platform.machine()}, torch device {cfg.device}",
        }

    def training_card(self, training_notes: dict | None) -> dict:
        """The manifest's ``training``. Only named species: a model from files without one is
        validated for no species in particular."""
        return {"species": sorted(k for k in self.species() if k != "not given"), "samples": len(self.files),
                "events_per_sample": self.cfg.events_per_sample, "recipe": "edgehema train (export/training)",
                "recipe_settings": settings_dict(self.cfg), "torch": _torch_version(), "seconds": None,
                **(training_notes or {})}


def _crossval_files(tmp: Path, report: dict, summary: dict | None, preds: list) -> dict[str, Path]:
    """crossval.json (the report and every prediction) and crossval.csv, for the bundle."""
    if summary is None:
        return {}
    rp = tmp / "crossval.json"
    rp.write_text(json.dumps({**report, "predictions": [{**p.__dict__, **p.errors()} for p in preds]}, indent=1) + "\n",
                  encoding="utf-8")
    return {"crossval.json": rp, "crossval.csv": crossval.write_predictions(tmp / "crossval.csv", preds)}


#: Seeds of restarts (the folds stay those of --seed, so restarts are compared on the same held-out samples).
RESTART_SEED_STEP = 1009
#: The final model passes when its score on its own training samples is at most this factor times
#: its seed's cross-validated score, plus this margin: a model counts the samples it was trained on
#: at least about as well as held-out ones, so only a final fit that landed elsewhere fails (the
#: collapse measured: 7.8 against 1.3).
FINAL_SCORE_FACTOR = 1.5
FINAL_SCORE_MARGIN = 0.5
#: Without cross-validation: a warning above this score on the model's own training samples.
NO_CROSSVAL_WARN_SCORE = 3.0


def _count_with(fitted, prof, store, calibration_idx: list[int], files: list, fold: int, name: str,
                description: str) -> list:
    """Count ``files`` with a fitted model as the device would (saved as a bundle, whole files,
    adaptation on): the predictions next to their reference values."""
    with tempfile.TemporaryDirectory() as tmp:
        b = Path(tmp) / "model"
        save_bundle(fitted, prof, b, name, description, {},
                    [store.events(calibration_idx[j]) for j in limit_samples(len(calibration_idx), FOLD_LIMIT_SAMPLES)],
                    profile_file=_profile_file(prof))
        return crossval.predict(b, files, fold, prof)


def _in_sample(fitted, prof, supervised: list, store, n_files: int) -> dict:
    """Sample-count errors of a fitted model on its own supervised training samples."""
    if not supervised:
        return {"samples": 0}
    return crossval.summarize(_count_with(fitted, prof, store, list(range(n_files)), supervised, -1, "final-check",
                                          "final model check"))


def restart_figures(summary: dict) -> dict:
    """Per restart: bias and p95 of each measurand with reference values."""
    out = {}
    for key in ("rbc_err_pct", "plt_err_pct", "retic_err_pt", "plt_rbc_err_pct"):
        s = summary.get(key, {})
        if s.get("n"):
            out[key] = {"bias": s["bias"], "p95_abs": s["p95_abs"]}
    return out


def restart_line(summary: dict) -> str:
    names = {"rbc_err_pct": "RBC", "plt_err_pct": "PLT", "retic_err_pt": "RET", "plt_rbc_err_pct": "PLT:RBC"}
    return ", ".join(f"{names[k]} bias {v['bias']:+.2f} p95 {v['p95_abs']:.2f}" for k, v in restart_figures(summary).items())


def _profile_file(profile) -> Path | None:
    """A profile loaded from the user's TOML file travels in the bundle; shipped ones go by name."""
    from edgehema.profiles import builtin_profiles

    if profile.name in builtin_profiles():
        return None
    src = getattr(profile, "source", None)
    return Path(src) if src else None


def _torch_version() -> str:
    import torch

    return torch.__version__


def _how(how: set[str]) -> str:
    if how == {"counted"}:
        return "and noise as counted per class in the reference"
    if how == {"poisson"}:
        return "from Poisson occupancy"
    if how == {"unsupervised"}:
        return "learned unsupervised"
    return "counted per class where the reference gives events per class, else from Poisson occupancy where " \
           "the file has its acquisition time, else unsupervised"


def _plan(cfg: FitSettings, folds: int, tune: int, restarts: int, n_files: int, store, targets, pre,
          log: Callable[[str], None], progress) -> float:
    """Say what will be trained and about how long it takes here, before it starts; give the
    progress display the whole plan (for an ETA over every fit, not one phase). The estimate."""
    fits = tune * folds + restarts * folds + 1
    steps = fits * cfg.steps_per_fit
    per_step, per_composition = step_costs(cfg, store, list(range(n_files)), targets, pre)
    # Each fit: its steps, the share regression of each stage's mixture, and about 2 s of k-means,
    # counting its samples and writing a bundle (measured: estimates within 10-15 % of the time
    # taken for 5 samples at the tiny recipe and at 900 steps of 4,096 events).
    estimate = fits * (cfg.steps_per_fit * per_step + 2 * cfg.composition_steps * per_composition + 2.0)
    parts = []
    if tune:
        parts.append(f"{tune} tuning trial(s) x {folds} folds")
    if folds:
        parts.append(f"{folds}-fold cross-validation" + (f" x {restarts} restarts" if restarts > 1 else ""))
    parts.append("the final model")
    log(f"plan: {' + '.join(parts)} = {fits} fit(s) x {cfg.steps_per_fit:,} steps (bags of {cfg.bag:,} events) on "
        f"{n_files} samples; estimated {_duration(estimate)} ({1000 * per_step:.0f} ms a step, measured here; one "
        f"more fit if the final model's check refuses it)")
    if progress is not None and hasattr(progress, "plan"):
        progress.plan(steps)
    return estimate


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _tagged(progress, label: str):
    if progress is None:
        return None
    return lambda stage, step, total, losses: progress(f"{label}: {stage}", step, total, losses)
