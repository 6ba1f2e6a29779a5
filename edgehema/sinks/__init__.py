"""Result sinks: where per-sample results go. One small module per sink, chosen by name.

A sink is ``Sink(stream)`` with ``write(result_dict)`` and ``close()``. ``table`` renders for a
person on a terminal, ``json`` writes one JSON object per line (the schema of ``classify --json``,
docs/classifier.md), ``csv`` one row per sample. A new sink is one module registered in :data:`SINKS`.
"""

from __future__ import annotations

from typing import IO, Protocol

from edgehema.sinks.csv_sink import CsvSink
from edgehema.sinks.json_sink import JsonLinesSink
from edgehema.sinks.table_sink import TableSink


class Sink(Protocol):
    def write(self, result: dict) -> None: ...

    def close(self) -> None: ...


SINKS = {"table": TableSink, "json": JsonLinesSink, "csv": CsvSink}


def open_sink(name: str, stream: IO[str]) -> Sink:
    return SINKS[name](stream)


__all__ = ["SINKS", "CsvSink", "JsonLinesSink", "Sink", "TableSink", "open_sink"]
