"""``edgehema emulate --pty`` started first, ``edgehema stream`` on its port a few seconds later (as a
person types the two commands): the first sample arrives whole (issue 32 item 4: it used to lose its
start every time, because the emulator began after 2 s whether or not a host had opened the port,
and opening the port flushed what was waiting)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest


@pytest.mark.parametrize("delay", [3.0])
def test_stream_started_after_emulate_pty_gets_every_sample_whole(tmp_path, delay):
    emu = subprocess.Popen([sys.executable, "-m", "edgehema", "emulate", "--pty", "--samples", "2", "--events",
                            "20000", "--rate", "40000", "--seed", "3"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        port = emu.stdout.readline().strip()
        assert port.startswith("/dev/"), emu.stderr.read()
        time.sleep(delay)  # the person types the second command
        run = subprocess.run([sys.executable, "-m", "edgehema", "stream", "--port", port, "--journal",
                              str(tmp_path / "j.sqlite"), "--archive", str(tmp_path / "a"), "--max-samples", "2",
                              "--idle-exit", "5", "--no-reconnect"], capture_output=True, text=True, timeout=120)
        results = [json.loads(line) for line in run.stdout.splitlines()]
        assert [r["sample_id"] for r in results] == ["human-3-0001", "human-3-0002"], run.stderr
        for r in results:
            assert r["events"]["total"] == 20_000, (r["flags"], run.stderr)
            assert not {"missing_sample_begin", "event_index_gap", "corrupted_frames"} & set(r["flags"]), r["flags"]
        assert "corrupted frame" not in run.stderr
    finally:
        emu.kill()
        emu.wait(10)
