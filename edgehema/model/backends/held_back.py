"""Holding back what native libraries write on the process's stdout/stderr.

LiteRT announces its XNNPACK delegate on every start and TensorFlow's converter logs at length from
C++, below Python's ``sys.stderr``; only redirecting the file descriptors keeps that off the user's
terminal. What was held back stays readable, for the one-line error when something fails.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from typing import Callable, Iterator


@contextlib.contextmanager
def held_back(*fds: int) -> Iterator[Callable[[], str]]:
    """While the block runs, what is written on ``fds`` (default: 2) goes to a temporary file;
    yields a function that returns the last non-empty line written (or "")."""
    fds = fds or (2,)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(fd) for fd in fds]
    with tempfile.TemporaryFile() as log:
        for fd in fds:
            os.dup2(log.fileno(), fd)

        def last_line() -> str:
            log.seek(0)
            lines = log.read().decode(errors="replace").strip().splitlines()
            return lines[-1] if lines else ""

        try:
            yield last_line
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in zip(fds, saved):
                os.dup2(copy, fd)
                os.close(copy)
