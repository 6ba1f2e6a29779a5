"""A table for a person, rendered once all samples are in (plain columns to a file or pipe)."""

from __future__ import annotations

from typing import IO

from edgehema.sinks.text_table import Column, render

COLUMNS = (
    Column("sample", "left", keep=9),
    Column("species", "left", keep=2),
    Column("events", keep=3),
    Column("RBC cells", keep=6),
    Column("PLT cells", keep=6),
    Column("retic %", keep=6),
    Column("coinc. events", keep=2),
    Column("RBC x10^6/uL", keep=5),
    Column("PLT x10^3/uL", keep=5),
    Column("RET x10^6/uL", keep=1),
    Column("flags", "left", keep=8, wrap=True),
)


def _conc(v, scale: float, digits: int) -> str:
    return "-" if v is None else f"{v / scale:.{digits}f}"


def result_row(r: dict) -> list[str]:
    k = r["concentration"]
    return [
        r["sample_id"] or "-", r.get("species") or "-", f"{r['events']['total']:,}", f"{r['cells']['rbc']:,}",
        f"{r['cells']['plt']:,}", "-" if r["retic_percent"] is None else f"{r['retic_percent']:.2f}",
        f"{r['events']['coincidence']:,}", _conc(k["rbc_per_uL"], 1e6, 2), _conc(k["plt_per_uL"], 1e3, 0),
        _conc(k.get("retic_per_uL"), 1e6, 3), ", ".join(r["flags"]) or "ok",
    ]


class TableSink:
    def __init__(self, stream: IO[str]):
        self.stream = stream
        self.rows: list[dict] = []

    def write(self, result: dict) -> None:
        self.rows.append(result)

    def close(self) -> None:
        if not self.rows:
            return
        model = self.rows[0]["model"]
        title = (f"{len(self.rows)} sample(s): model {model['name']} {model['version']} "
                 f"({model['sha256'][:12]}), backend {model['backend']} running {model.get('file', '?')} "
                 f"({model.get('precision', '?')})")
        notes = [f"{r['sample_id']}: {r['concentration_note']}" for r in self.rows if r.get("concentration_note")]
        note = None
        if notes:
            note = ("concentrations '-': " + "; ".join(notes[:3])
                    + (f"; and {len(notes) - 3} more sample(s) alike" if len(notes) > 3 else ""))
        render(title, COLUMNS, [result_row(r) for r in self.rows], self.stream, note=note)
