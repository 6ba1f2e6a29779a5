"""A table for a person on a terminal, rendered once all samples are in."""

from __future__ import annotations

from typing import IO

from rich.console import Console
from rich.table import Table


def _conc(v, scale: float, unit: str) -> str:
    return "-" if v is None else f"{v / scale:.2f}{unit}"


class TableSink:
    def __init__(self, stream: IO[str]):
        self.console = Console(file=stream)
        self.rows: list[dict] = []

    def write(self, result: dict) -> None:
        self.rows.append(result)

    def close(self) -> None:
        if not self.rows:
            return
        model = self.rows[0]["model"]
        table = Table(title=f"{len(self.rows)} sample(s): model {model['name']} {model['version']} "
                            f"({model['sha256'][:12]}), backend {model['backend']}")
        for col, justify in (("sample", "left"), ("events", "right"), ("RBC cells", "right"), ("PLT cells", "right"),
                             ("retic %", "right"), ("coinc. ev.", "right"), ("RBC /uL", "right"), ("PLT /uL", "right"),
                             ("flags", "left")):
            table.add_column(col, justify=justify)
        for r in self.rows:
            k = r["concentration"]
            table.add_row(
                r["sample_id"], f"{r['events']['total']:,}", f"{r['cells']['rbc']:,}", f"{r['cells']['plt']:,}",
                "-" if r["retic_percent"] is None else f"{r['retic_percent']:.2f}", f"{r['events']['coincidence']:,}",
                _conc(k["rbc_per_uL"], 1e6, "e6"), _conc(k["plt_per_uL"], 1e3, "e3"),
                ", ".join(r["flags"]) or "ok",
            )
        self.console.print(table)
