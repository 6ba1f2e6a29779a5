"""Tables for people that never cut a number.

A laboratory copies figures out of these tables, so a cell is never shortened: to a file or a
pipe the table is plain text, every column as wide as its widest cell; on a terminal it is a rich
table, and when the terminal is too narrow for every column it is a block per row instead (the
first cell, whole, on a line of its own, then one line per column: label and value), so that
nothing is hidden and no two rows look alike. Only columns marked ``wrap`` (free text such as
flags) may wrap onto more lines.
"""

from __future__ import annotations

import textwrap
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
    console = Console(file=stream, width=width, soft_wrap=False, highlight=False)
    shown = fit(columns, rows, console.width)
    if len(shown) < len(columns):
        stream.write(vertical(title, columns, rows, console.width, note))
        stream.flush()
        return
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


def vertical(title: str, columns: Sequence[Column], rows: Sequence[Sequence[str]], width: int,
             note: str | None = None) -> str:
    """A block per row for a narrow terminal: the first cell whole (folded, never cut), then one
    ``label  value`` line per other column; free text wraps under its value, numbers never do."""
    width = max(width, 20)
    labels = [c.header.replace("\n", " ") for c in columns]
    pad = max(len(h) for h in labels[1:]) + 4 if len(columns) > 1 else 4
    out = textwrap.wrap(title, width) if title else []
    for r in rows:
        out.append("")
        first = r[0]
        out += [first[k:k + width] for k in range(0, max(len(first), 1), width)]
        for i in range(1, len(columns)):
            lead = f"  {labels[i]}".ljust(pad)
            if columns[i].wrap and len(lead) + len(r[i]) > width:
                out += textwrap.wrap(r[i], width, initial_indent=lead, subsequent_indent=" " * pad,
                                     break_long_words=False, break_on_hyphens=False)
            else:
                out.append(lead + r[i])
    if note:
        out += [""] + textwrap.wrap(note, width)
    return "\n".join(out) + "\n"


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
