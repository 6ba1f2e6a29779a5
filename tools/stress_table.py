"""The stress suite's table as docs/accuracy.md shows it, from ``edgehema evaluate --suite stress --json``.

    edgehema evaluate --suite stress --json > stress.json
    python tools/stress_table.py stress.json
"""

from __future__ import annotations

import json
import sys


def table(report: dict) -> str:
    head = ("| scenario | method | RBC err % mean / p95 | PLT err % mean / p95 | PLT err p95 x10^3/uL | "
            "RET err pt mean / p95 | outside limits | flagged | silent | silent, species undeclared | flags fired |")
    lines = [head, "| " + " | ".join(["---"] * 11) + " |"]
    for r in report["summary"]:
        n = r["n"]
        flags = ", ".join(f"{k} {v}" for k, v in sorted(r["flags"].items(), key=lambda kv: -kv[1])) or "-"
        lines.append(
            f"| {r['scenario']} | {r['method']} | {r['rbc_err'][0]:.2f} / {r['rbc_err'][1]:.2f} | "
            f"{r['plt_err'][0]:.1f} / {r['plt_err'][1]:.1f} | {r['plt_err_abs'][1]:.1f} | "
            f"{r['retic_err'][0]:.2f} / {r['retic_err'][1]:.2f} | {r['outside']}/{n} | {r['flagged']}/{n} | "
            f"{r['silent']} | {r['silent_undeclared']} | {flags} |")
    totals = "; ".join(f"{m}: {t['silent_failures']} silent of {t['samples']}, {t['outside_limits']} outside the limits"
                       for m, t in report["totals"].items())
    return "\n".join(lines) + f"\n\nTotals: {totals} ({report['seconds']:.1f} s).\n"


if __name__ == "__main__":
    print(table(json.loads(open(sys.argv[1], encoding="utf-8").read())), end="")
