"""Log lines that can repeat many times a second (a garbage flood, an instrument that is off) are
counted, not printed each time: the first of a kind is printed, then at most one line per window
with how many were held back."""

from __future__ import annotations

import time
from typing import Callable


class RateLimitedLog:
    def __init__(self, log: Callable[[str], None], window: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.log = log
        self.window = window
        self.clock = clock
        self._kinds: dict[str, list] = {}  # kind -> [window start, held back, last line]

    def __call__(self, line: str, kind: str = "") -> None:
        if not kind:
            self.log(line)
            return
        now = self.clock()
        state = self._kinds.get(kind)
        if state is None or now - state[0] >= self.window:
            held = state[1] if state else 0
            self._kinds[kind] = [now, 0, line]
            self.log(line + (f" (and {held:,} more like it in the last {self.window:g} s)" if held else ""))
        else:
            state[1] += 1
            state[2] = line

    def flush(self) -> None:
        """Say what is still held back (at the end of a run)."""
        for state in self._kinds.values():
            if state[1]:
                self.log(f"{state[1]:,} more like this since the last report, the last: {state[2]}")
        self._kinds.clear()
