"""One CSV row per sample: the counts a laboratory system imports."""

from __future__ import annotations

import csv
from typing import IO

COLUMNS = [
    "sample_id", "species", "events_total", "events_rbc", "events_retic", "events_coincidence", "events_plt",
    "events_noise", "cells_rbc", "cells_retic", "cells_plt", "retic_percent", "rbc_per_uL", "plt_per_uL",
    "retic_per_uL", "flags", "model", "model_sha256", "backend", "source", "model_file", "model_precision",
]


class CsvSink:
    def __init__(self, stream: IO[str]):
        self.stream = stream
        self.writer = csv.writer(stream, lineterminator="\n")
        self.writer.writerow(COLUMNS)

    def write(self, r: dict) -> None:
        e, c, k = r["events"], r["cells"], r["concentration"]
        self.writer.writerow([
            r["sample_id"], r.get("species") or "", e["total"], e["rbc"], e["retic"], e["coincidence"], e["plt"],
            e["noise"], c["rbc"], c["retic"], c["plt"], "" if r["retic_percent"] is None else r["retic_percent"],
            *("" if k[key] is None else k[key] for key in ("rbc_per_uL", "plt_per_uL", "retic_per_uL")),
            ";".join(r["flags"]), r["model"]["name"], r["model"]["sha256"], r["model"]["backend"], r.get("source") or "",
            r["model"].get("file", ""), r["model"].get("precision", ""),
        ])
        self.stream.flush()

    def close(self) -> None:
        self.stream.flush()
