"""The rollout report: what a new model would change against the model it replaces, from a
``reanalyze --baseline`` dataset.

Per species and device, and over all samples, for RBC, PLT and RET: bias and 95 % limits of
agreement (Bland-Altman; RBC and PLT as percent differences against the pair's mean, RET in
percentage points), the samples whose result crosses a clinical decision limit, the samples whose
flags change, and inputs that only one of the two models could analyse. A verdict against limits
the user sets.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from edgehema._utils.svg import Plot
from edgehema.exceptions import EdgehemaError
from edgehema.validation.statistics import BlandAltman as Agreement

#: Analytes compared: (column, label, unit of the difference, relative difference?)
ANALYTES = (("rbc_per_ul", "RBC", "%", True), ("plt_per_ul", "PLT", "%", True), ("retic_percent", "RET", "pt", False))
SHORT = {"rbc": "rbc_per_ul", "plt": "plt_per_ul", "retic": "retic_percent", "ret": "retic_percent"}
#: Decision limits crossed by a change of result (human defaults; set per species with --limit).
#: PLT: 20, 50 and 100 x10^3/uL (transfusion and procedure thresholds) and 150 x10^3/uL (the
#: thrombocytopenia limit); RET: 2.5 % (reticulocytosis).
DEFAULT_LIMITS = {"plt_per_ul": (20e3, 50e3, 100e3, 150e3), "retic_percent": (2.5,)}
#: Verdict thresholds: |bias|, half-width of the limits of agreement, share of samples crossing a
#: decision limit or changing flags (percent). Defaults follow analytical performance goals for
#: a model change that should change nothing a clinician sees.
DEFAULT_THRESHOLDS = {"bias_rbc": 1.0, "bias_plt": 3.0, "bias_retic": 0.2, "loa_rbc": 3.0, "loa_plt": 10.0,
                      "loa_retic": 0.5, "crossing_pct": 1.0, "flag_change_pct": 2.0}
#: Groups smaller than this are listed but not judged (their limits of agreement mean little).
MIN_GROUP = 10


@dataclass
class Group:
    name: str
    pairs: list[tuple[dict, dict]] = field(default_factory=list)

    def agreement(self, column: str, relative: bool) -> Agreement | None:
        d = [diff(new[column], old[column], relative) for new, old in self.pairs]
        d = [x for x in d if x is not None]
        if not d:
            return None
        mean = sum(d) / len(d)
        sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1)) if len(d) > 1 else 0.0
        return Agreement(len(d), mean, sd)


def diff(new, old, relative: bool) -> float | None:
    if new is None or old is None:
        return None
    if not relative:
        return float(new) - float(old)
    mean = (float(new) + float(old)) / 2
    return 0.0 if mean == 0 else (float(new) - float(old)) / mean * 100.0


@dataclass
class Report:
    groups: list[Group]
    crossings: list[dict]
    flag_changes: list[dict]
    new_only_errors: list[dict]
    both_errors: int
    unpaired: int
    verdict_failures: list[str]
    thresholds: dict
    limits: dict
    models: dict

    @property
    def passed(self) -> bool:
        return not self.verdict_failures

    @property
    def total(self) -> Group:
        return self.groups[0]


def build(rows: list[dict], limits: dict | None = None, thresholds: dict | None = None) -> Report:
    limits = {**DEFAULT_LIMITS, **(limits or {})}
    thresholds = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
    by_sample: dict[tuple[str, int], dict[str, dict]] = {}
    errors: dict[str, dict[str, dict]] = {}
    for r in rows:
        if r.get("error"):
            errors.setdefault(r["input_key"], {})[r["role"]] = r
        else:
            by_sample.setdefault((r["input_key"], r["sample_index"]), {})[r["role"]] = r
    roles = {r["role"] for r in rows}
    if rows and "baseline" not in roles and "model" in roles:

        raise EdgehemaError("these results hold one model only: run edgehema reanalyze with --baseline OLD to compare")
    models = {}
    for r in rows:
        if not r.get("error") and r["role"] not in models:
            models[r["role"]] = f"{r['model_name']} {r['model_version']} ({str(r['model_sha256'])[:12]})"
    total = Group("all")
    groups: dict[str, Group] = {}
    crossings, flag_changes, unpaired = [], [], 0
    for (key, index), pair in sorted(by_sample.items(), key=lambda kv: (kv[1].get("model", kv[1].get("baseline"))["input"], kv[0][1])):
        if "model" not in pair or "baseline" not in pair:
            unpaired += 1
            continue
        new, old = pair["model"], pair["baseline"]
        total.pairs.append((new, old))
        for name in (f"species {new['species'] or '-'}", f"device {new['device']}"):
            groups.setdefault(name, Group(name)).pairs.append((new, old))
        for column, values in limits.items():
            a, b = old.get(column), new.get(column)
            if a is None or b is None:
                continue
            crossed = [v for v in values if (a < v) != (b < v)]
            if crossed:
                crossings.append({"input": new["input"], "sample_id": new["sample_id"], "species": new["species"],
                                  "device": new["device"], "analyte": column, "baseline": a, "model": b,
                                  "limits": crossed})
        gained = sorted(set(new["flags"] or []) - set(old["flags"] or []))
        lost = sorted(set(old["flags"] or []) - set(new["flags"] or []))
        if gained or lost:
            flag_changes.append({"input": new["input"], "sample_id": new["sample_id"], "species": new["species"],
                                 "device": new["device"], "gained": gained, "lost": lost})
    new_only = [e["model"] for e in errors.values() if "model" in e and "baseline" not in e]
    both = sum(1 for e in errors.values() if "input" in e or ("model" in e and "baseline" in e))
    ordered = [total] + [groups[k] for k in sorted(groups)]
    report = Report(ordered, crossings, flag_changes, new_only, both, unpaired, [], thresholds,
                    {k: list(v) for k, v in limits.items()}, models)
    report.verdict_failures = judge(report)
    return report


def judge(report: Report) -> list[str]:
    t = report.thresholds
    failures = []
    for g in report.groups:
        if g is not report.total and len(g.pairs) < MIN_GROUP:
            continue
        for column, label, unit, relative in ANALYTES:
            a = g.agreement(column, relative)
            if a is None:
                continue
            key = {"rbc_per_ul": "rbc", "plt_per_ul": "plt", "retic_percent": "retic"}[column]
            if abs(a.bias) > t[f"bias_{key}"]:
                failures.append(f"{g.name}: {label} bias {a.bias:+.2f} {unit} beyond {t[f'bias_{key}']:g}")
            half = 1.96 * a.sd
            if half > t[f"loa_{key}"]:
                failures.append(f"{g.name}: {label} limits of agreement +-{half:.2f} {unit} beyond {t[f'loa_{key}']:g}")
    n = len(report.total.pairs)
    if n:
        crossing_samples = len({(c["input"], c["sample_id"]) for c in report.crossings})
        if crossing_samples / n * 100 > t["crossing_pct"]:
            failures.append(f"{crossing_samples} of {n} samples ({crossing_samples / n:.1%}) cross a decision limit, "
                            f"beyond {t['crossing_pct']:g} %")
        if len(report.flag_changes) / n * 100 > t["flag_change_pct"]:
            failures.append(f"{len(report.flag_changes)} of {n} samples ({len(report.flag_changes) / n:.1%}) change flags, "
                            f"beyond {t['flag_change_pct']:g} %")
    if report.new_only_errors:
        failures.append(f"{len(report.new_only_errors)} input(s) fail with the new model only")
    return failures


# ---------------------------------------------------------------- output
def table_rows(report: Report) -> list[list[str]]:
    out = []
    for g in report.groups:
        cells = [g.name, str(len(g.pairs))]
        for column, _, unit, relative in ANALYTES:
            a = g.agreement(column, relative)
            if a is None:
                cells.append("-")
                continue
            lo, hi = a.loa
            cells.append(f"{a.bias:+.2f} ({lo:+.2f}, {hi:+.2f}) {unit}")
        cells.append(str(len({(c["input"], c["sample_id"]) for c in report.crossings
                              if g is report.total or _in_group(g, c)})))
        cells.append(str(sum(1 for c in report.flag_changes if g is report.total or _in_group(g, c))))
        out.append(cells)
    return out


def _in_group(g: Group, item: dict) -> bool:
    kind, _, value = g.name.partition(" ")
    return (item["species"] or "-") == value if kind == "species" else item["device"] == value


def to_dict(report: Report) -> dict:
    groups = []
    for g in report.groups:
        entry = {"group": g.name, "samples": len(g.pairs)}
        for column, label, unit, relative in ANALYTES:
            a = g.agreement(column, relative)
            if a is not None:
                lo, hi = a.loa
                entry[label] = {"bias": round(a.bias, 4), "sd": round(a.sd, 4), "loa": [round(lo, 4), round(hi, 4)], "unit": unit}
        groups.append(entry)
    return {"models": report.models, "groups": groups, "crossings": report.crossings, "flag_changes": report.flag_changes,
            "new_only_errors": [{"input": e["input"], "error": e["error"]} for e in report.new_only_errors],
            "errors_with_both": report.both_errors, "unpaired": report.unpaired, "limits": report.limits,
            "thresholds": report.thresholds, "verdict": "pass" if report.passed else "fail",
            "verdict_failures": report.verdict_failures}


def write_html(report: Report, path) -> None:
    """One self-contained page: the table, a Bland-Altman plot per analyte (inline SVG), the lists."""
    e = html.escape
    parts = ["<!doctype html><meta charset='utf-8'><title>edgehema rollout report</title>",
             "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
             "padding:3px 8px;text-align:right}td:first-child,th:first-child{text-align:left}.fail{color:#b00}.pass{color:#070}"
             "</style>",
             "<h1>Rollout report</h1>",
             f"<p>New: {e(report.models.get('model', '-'))}<br>Baseline: {e(report.models.get('baseline', '-'))}</p>",
             f"<h2 class='{'pass' if report.passed else 'fail'}'>Verdict: {'PASS' if report.passed else 'FAIL'}</h2>"]
    if report.verdict_failures:
        parts.append("<ul>" + "".join(f"<li>{e(f)}</li>" for f in report.verdict_failures) + "</ul>")
    head = ["group", "samples"] + [f"{label} bias (95 % LoA)" for _, label, _, _ in ANALYTES] + ["crossings", "flag changes"]
    parts.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>")
    for row in table_rows(report):
        parts.append("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>")
    parts.append("</table><h2>Bland-Altman, all samples</h2>")
    for column, label, unit, relative in ANALYTES:
        parts.append(_bland_altman_svg(report.total, column, label, unit, relative))
    parts.append(f"<h2>Decision limits crossed ({len(report.crossings)})</h2><table><tr><th>input</th><th>sample</th>"
                 "<th>analyte</th><th>baseline</th><th>new</th><th>limits</th></tr>")
    for c in report.crossings[:500]:
        parts.append(f"<tr><td>{e(c['input'])}</td><td>{e(str(c['sample_id']))}</td><td>{e(c['analyte'])}</td>"
                     f"<td>{c['baseline']:.4g}</td><td>{c['model']:.4g}</td><td>{e(', '.join(f'{v:g}' for v in c['limits']))}</td></tr>")
    parts.append(f"</table><h2>Flags changed ({len(report.flag_changes)})</h2><table><tr><th>input</th><th>sample</th>"
                 "<th>gained</th><th>lost</th></tr>")
    for c in report.flag_changes[:500]:
        parts.append(f"<tr><td>{e(c['input'])}</td><td>{e(str(c['sample_id']))}</td><td>{e(', '.join(c['gained']))}</td>"
                     f"<td>{e(', '.join(c['lost']))}</td></tr>")
    parts.append("</table>")
    if report.new_only_errors:
        parts.append("<h2>Inputs only the new model fails</h2><ul>"
                     + "".join(f"<li>{e(x['error'])}</li>" for x in report.new_only_errors) + "</ul>")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(parts) + "\n")


def _bland_altman_svg(group: Group, column: str, label: str, unit: str, relative: bool) -> str:
    pts = []
    for new, old in group.pairs:
        d = diff(new[column], old[column], relative)
        if d is not None:
            pts.append(((float(new[column]) + float(old[column])) / 2, d))
    if not pts:
        return f"<p>{label}: no pairs</p>"
    a = group.agreement(column, relative)
    lo, hi = a.loa
    plot = Plot(f"{label}: new - baseline ({unit}) vs mean", "mean of the pair", f"difference ({unit})", 420, 260)
    plot.hline(0.0, "#999").hline(a.bias, "#06c", f"bias {a.bias:+.2f}")
    plot.hline(lo, "#c60", f"{lo:+.2f}").hline(hi, "#c60", f"{hi:+.2f}")
    return plot.points([p[0] for p in pts], [p[1] for p in pts]).svg()
