"""A verification as people read it: one table per experiment (terminal and HTML share them) and
the self-contained HTML page with a plot per experiment (inline SVG, :mod:`edgehema._utils.svg`)."""

from __future__ import annotations

import html
from datetime import datetime, timezone

from edgehema._utils.svg import Plot
from edgehema.validation.experiments import Verification


def _n(v, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and abs(v) >= 1e4:
        return f"{v:,.0f}"
    return f"{v:.{digits}g}"


def _ok(item: dict) -> str:
    return "pass" if item["pass"] else "FAIL"


def _scaled(name: str, v: float | None) -> str:
    """Concentrations in the units a laboratory reads: RBC x10^6/uL, PLT and RET# x10^3/uL."""
    if v is None:
        return "-"
    if name == "RBC":
        return f"{v / 1e6:.3f}"
    if name in ("PLT", "RET#"):
        return f"{v / 1e3:.1f}"
    return f"{v:.3f}"


UNITS = {"RBC": "x10^6/uL", "PLT": "x10^3/uL", "RET#": "x10^3/uL", "RET%": "%"}
_DIVISOR = {"RBC": 1e6, "PLT": 1e3, "RET#": 1e3, "RET%": 1.0}


def _in_units(name: str, values) -> list:
    """Plot values in the units of the tables (x10^6/uL, x10^3/uL)."""
    return [None if x is None else x / _DIVISOR[name] for x in values]


def tables(v: Verification) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, headers, rows) per experiment that the plan holds."""
    out = []
    if v.repeatability:
        out.append(("Repeatability (replicates of one sample)",
                    ["analyte", "group", "n", "mean", "SD", "CV %", "limit CV %", ""],
                    [[i["analyte"], i["group"], str(i["n"]), f"{_scaled(i['analyte'], i['mean'])} {UNITS[i['analyte']]}",
                      _scaled(i["analyte"], i["sd"]), _n(i["cv_percent"], 3), _n(i["limit_cv_percent"]), _ok(i)]
                     for i in v.repeatability]))
    if v.carryover:
        out.append(("Carry-over, ICSH: (L1 - L3) / (H3 - L3)",
                    ["analyte", "group", "H1 H2 H3", "L1 L2 L3", "carry-over %", "limit %", ""],
                    [[i["analyte"], i["group"], " ".join(_scaled(i["analyte"], x) for x in i["high"]),
                      " ".join(_scaled(i["analyte"], x) for x in i["low"]), _n(i["carryover_percent"], 3),
                      _n(i["limit_percent"]), _ok(i)] for i in v.carryover]))
    if v.linearity:
        out.append(("Linearity (dilution series of one high sample)",
                    ["analyte", "slope", "intercept", "r2", "levels", "largest deviation %", "allowable %", ""],
                    [[i["analyte"], f"{_scaled(i['analyte'], i['slope'])} {UNITS[i['analyte']]}",
                      _scaled(i["analyte"], i["intercept"]), f"{i['r2']:.5f}", str(len(i["levels"])),
                      _n(i["max_deviation_percent"], 3), _n(i["allowable_percent"]), _ok(i)] for i in v.linearity]))
    if v.comparison:
        out.append(("Method comparison against the reference (Passing-Bablok, Bland-Altman)",
                    ["analyte", "n", "slope (95 % CI)", "intercept (95 % CI)", "bias", "95 % limits of agreement",
                     "allowable", ""],
                    [[i["analyte"], str(i["n"]), f"{i['slope']:.4f} ({i['slope_ci'][0]:.4f} to {i['slope_ci'][1]:.4f})",
                      f"{_scaled(i['analyte'], i['intercept'])} ({_scaled(i['analyte'], i['intercept_ci'][0])} to "
                      f"{_scaled(i['analyte'], i['intercept_ci'][1])})",
                      f"{i['bias']:+.3g} {_unit(i)}", f"{i['loa_low']:+.3g} to {i['loa_high']:+.3g} {_unit(i)}",
                      f"+-{i['allowable']:g} {_unit(i)}", _ok(i) + _differences(i)] for i in v.comparison]))
    for i in v.loq:
        rows = [[lv["group"], str(lv["n"]), f"{_scaled(i['analyte'], lv['mean'])} {UNITS[i['analyte']]}",
                 _n(lv["cv_percent"], 3), "within" if lv["within"] else "above"] for lv in i["levels"]]
        need = f", required at most {_scaled(i['analyte'], i['required'])}" if i["required"] else ""
        out.append((f"Limit of quantitation, {i['analyte']}: {_scaled(i['analyte'], i['loq'])} {UNITS[i['analyte']]} "
                    f"(CV goal {i['cv_goal_percent']:g} %{need}): {_ok(i)}",
                    ["level", "n", "mean", "CV %", "goal"], rows))
    return out


def _differences(item: dict) -> str:
    said = [w for w, key in (("proportional", "proportional_difference"), ("constant", "constant_difference")) if item[key]]
    return f" ({' and '.join(said)} difference)" if said else ""


def _unit(item: dict) -> str:
    return "%" if item["difference_unit"] == "%" else "pt"


def write_html(v: Verification, path, plan_path: str = "") -> None:
    e = html.escape
    run = v.run
    parts = ["<!doctype html><meta charset='utf-8'><title>edgehema method verification</title>",
             "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:6px 0}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child,th:first-child"
             "{text-align:left}.fail{color:#b00}.pass{color:#070}</style>",
             "<h1>Method verification</h1>",
             f"<p>Plan: {e(plan_path)}<br>Model: {e(run.get('model', '-'))}<br>Engine: {e(run.get('engine', '-'))}<br>"
             f"Software: edgehema {e(run.get('software', '-'))}<br>Limits: {e(run.get('limits', 'defaults'))}<br>"
             f"Made: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}</p>",
             f"<h2 class='{v.verdict}'>Verdict: {v.verdict.upper()}</h2>"]
    if v.problems:
        parts.append("<ul>" + "".join(f"<li class='fail'>{e(p)}</li>" for p in v.problems) + "</ul>")
    plots = {"Repeatability": _repeatability_plots, "Carry-over": _carryover_plots, "Linearity": _linearity_plots,
             "Method comparison": _comparison_plots, "Limit of quantitation": _loq_plots}
    for title, headers, rows in tables(v):
        parts.append(f"<h2>{e(title)}</h2><table><tr>" + "".join(f"<th>{e(h)}</th>" for h in headers) + "</tr>")
        for r in rows:
            parts.append("<tr>" + "".join(f"<td class='{'fail' if c.startswith('FAIL') else ''}'>{e(c)}</td>" for c in r) + "</tr>")
        parts.append("</table>")
        for prefix, fn in plots.items():
            if title.startswith(prefix):
                parts.append(fn(v, title))
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(parts) + "\n")


def _repeatability_plots(v: Verification, _title: str) -> str:
    out = []
    for i in v.repeatability:
        name = i["analyte"]
        mean = i["mean"] / _DIVISOR[name]
        limit = i["limit_cv_percent"] / 100 * mean
        xs = list(range(1, len(i["values"]) + 1))
        p = Plot(f"{name}, {i['group']}: CV {_n(i['cv_percent'], 3)} % (band: the CV limit)", "replicate",
                 f"{name} ({UNITS[name]})")
        p.band([0.5, len(xs) + 0.5], [mean - limit] * 2, [mean + limit] * 2, "#070")
        p.hline(mean, "#06c", "mean").points(xs, _in_units(name, i["values"]))
        out.append(p.svg())
    return "".join(out)


def _carryover_plots(v: Verification, _title: str) -> str:
    out = []
    for i in v.carryover:
        ys = _in_units(i["analyte"], i["high"] + i["low"])
        p = Plot(f"{i['analyte']}: carry-over {_n(i['carryover_percent'], 3)} %", "run (1-3 high, 4-6 low)",
                 f"{i['analyte']} ({UNITS[i['analyte']]})")
        out.append(p.line(list(range(1, 7)), ys, "#999").points(list(range(1, 7)), ys).svg())
    return "".join(out)


def _linearity_plots(v: Verification, _title: str) -> str:
    out = []
    for i in v.linearity:
        lv, name = i["levels"], i["analyte"]
        fr = [x["fraction"] for x in lv]
        fit = _in_units(name, [x["fitted"] for x in lv])
        allowed = _in_units(name, [x["allowable"] for x in lv])
        p = Plot(f"{name}: r2 {i['r2']:.5f} (band: allowable)", "fraction of the high sample", f"{name} ({UNITS[name]})")
        p.band(fr, [f - a for f, a in zip(fit, allowed)], [f + a for f, a in zip(fit, allowed)], "#070")
        out.append(p.line(fr, fit, "#06c", label="least squares").points(fr, _in_units(name, [x["mean"] for x in lv])).svg())
    return "".join(out)


def _comparison_plots(v: Verification, _title: str) -> str:
    out = []
    for i in v.comparison:
        name = i["analyte"]
        xs, ys = _in_units(name, i["reference"]), _in_units(name, i["values"])
        lo_x, hi_x = min(xs), max(xs)
        a, a_ci = i["intercept"] / _DIVISOR[name], _in_units(name, i["intercept_ci"])
        p = Plot(f"{name}: Passing-Bablok {i['slope']:.4f} x {'+' if a >= 0 else '-'} {abs(a):.3g}",
                 f"reference ({UNITS[name]})", f"edgehema ({UNITS[name]})")
        p.line([lo_x, hi_x], [lo_x, hi_x], "#999", "4 3", "identity")
        p.band([lo_x, hi_x], [a_ci[1] + i["slope_ci"][0] * x for x in (lo_x, hi_x)],
               [a_ci[0] + i["slope_ci"][1] * x for x in (lo_x, hi_x)])
        p.line([lo_x, hi_x], [a + i["slope"] * x for x in (lo_x, hi_x)], "#06c")
        out.append(p.points(xs, ys).svg())
        relative = i["difference_unit"] == "%"
        means = [(x + y) / 2 for x, y in zip(xs, ys)]
        diffs = [((y - x) / m * 100 if m else 0.0) if relative else y - x for x, y, m in zip(xs, ys, means)]
        b = Plot(f"{name}: Bland-Altman", f"mean of the pair ({UNITS[name]})", f"edgehema - reference ({_unit(i)})")
        b.hline(0.0, "#999").hline(i["bias"], "#06c", f"bias {i['bias']:+.3g}")
        b.hline(i["loa_low"], "#c60", f"{i['loa_low']:+.3g}").hline(i["loa_high"], "#c60", f"{i['loa_high']:+.3g}")
        b.hline(-i["allowable"], "#070", "allowable", "1 3").hline(i["allowable"], "#070", "allowable", "1 3")
        out.append(b.points(means, diffs).svg())
    return "".join(out)


def _loq_plots(v: Verification, title: str) -> str:
    out = []
    for i in v.loq:
        if not title.startswith(f"Limit of quantitation, {i['analyte']}:"):
            continue
        lv = i["levels"]
        name = i["analyte"]
        means = _in_units(name, [x["mean"] for x in lv])
        p = Plot(f"{name}: CV by level", f"mean ({UNITS[name]})", "CV %")
        p.hline(i["cv_goal_percent"], "#c60", "goal")
        out.append(p.line(means, [x["cv_percent"] for x in lv], "#999").points(means, [x["cv_percent"] for x in lv]).svg())
    return "".join(out)
