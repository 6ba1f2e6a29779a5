"""Tables for people that never cut a number.

A laboratory copies figures out of these tables, so a cell is never shortened: to a file or a
pipe the table is plain text, every column as wide as its widest cell; on a terminal it is a rich
table, and when the terminal is too narrow whole columns are left out (the least important first,
and a line says which) rather than a digit being cut. Only columns marked ``wrap`` (free text such
as flags) may wrap onto more lines.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import IO, Sequence

from rich.console import Console
from rich.markup import escape
from rich.table import Table


@dataclass(frozen=True)
class Column:
    header: str
    justify: str = "right"
    #: Higher is kept longer when a terminal is too narrow; the first column should be highest.
    keep: int = 1
    #: Free text that may wrap onto more lines (never numbers).
    wrap: bool = False


def render(title: str, columns: Sequence[Column], rows: Sequence[Sequence[str]], stream: IO[str],
           terminal: bool | None = None, width: int | None = None, note: str | None = None) -> None:
    """Write a table to ``stream``: plain columns unless ``stream`` is a terminal."""
    if terminal is None:
        terminal = _isatty(stream)
    rows = [[str(c) for c in r] for r in rows]
    if not terminal:
        stream.write(plain(title, columns, rows, note))
        stream.flush()
        return
    console = Console(file=stream, width=width, soft_wrap=False)
    shown = fit(columns, rows, console.width)
    table = Table(title=escape(title), title_justify="left")
    for i in shown:
        col = columns[i]
        natural = max([len(col.header.split("\n")[0])] + [len(r[i]) for r in rows])
        if col.wrap:
            table.add_column(escape(col.header), justify=col.justify, overflow="fold", min_width=min(natural, 12))
        else:
            table.add_column(escape(col.header), justify=col.justify, no_wrap=True, min_width=natural)
    for r in rows:
        table.add_row(*(escape(r[i]) for i in shown))
    console.print(table)
    hidden = [columns[i].header.replace("\n", " ") for i in range(len(columns)) if i not in shown]
    if hidden:
        console.print(escape(f"(terminal too narrow: left out {', '.join(hidden)}; widen it, or write to a file)"),
                      soft_wrap=True)
    if note:
        console.print(escape(note), soft_wrap=True)


def plain(title: str, columns: Sequence[Column], rows: Sequence[Sequence[str]], note: str | None = None) -> str:
    """Plain text: a title line, a header, one line per row, columns two spaces apart, nothing cut."""
    headers = [c.header.replace("\n", " ") for c in columns]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        parts = [c.ljust(w) if col.justify == "left" else c.rjust(w) for c, w, col in zip(cells, widths, columns)]
        return "  ".join(parts).rstrip() + "\n"

    text = (title + "\n" if title else "") + line(headers) + "".join(line(r) for r in rows)
    return text + (note + "\n" if note else "")


def fit(columns: Sequence[Column], rows: Sequence[Sequence[str]], width: int) -> list[int]:
    """Indices of the columns that fit ``width`` uncut, dropping the lowest ``keep`` first."""
    def need(i: int) -> int:
        col = columns[i]
        natural = max([max(len(p) for p in col.header.split("\n"))] + [len(r[i]) for r in rows])
        return (min(natural, 12) if col.wrap else natural) + 3  # padding both sides and a border

    shown = list(range(len(columns)))
    # Drop the least important (and, among equals, the rightmost) until the table fits.
    order = sorted(shown, key=lambda i: (columns[i].keep, -i))
    while len(shown) > 1 and sum(need(i) for i in shown) + 1 > width:
        shown.remove(order.pop(0))
    return shown


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
