"""One JSON object per line, flushed per sample so a reader never sees half a result."""

from __future__ import annotations

import json
from typing import IO


class JsonLinesSink:
    def __init__(self, stream: IO[str]):
        self.stream = stream

    def write(self, result: dict) -> None:
        self.stream.write(json.dumps(result, separators=(",", ":")) + "\n")
        self.stream.flush()

    def close(self) -> None:
        self.stream.flush()
