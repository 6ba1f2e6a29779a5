"""Scattergrams: the right class colour where the events are, every view of both shipped profiles,
the commands that write them, and a PNG small enough to send to a LIS."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from edgehema.model import classes as C
from edgehema import get_profile
from edgehema.counts import scattergram
from edgehema.simulator import SampleSimulator


def decode(png: bytes) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None
    return img


def pixel_of(profile, view, event, panel_index):
    """Where ``event`` lands in panel ``panel_index`` of the rendered picture (row, column)."""
    fx, ix = scattergram._axis(profile, view.x)
    fy, iy = scattergram._axis(profile, view.y)
    px = scattergram._scale(fx, np.array([event[ix]]))[0][0]
    py = scattergram._scale(fy, np.array([event[iy]]))[0][0]
    width = scattergram.LEFT + scattergram.SIZE + scattergram.RIGHT
    return 34 + scattergram.TOP + scattergram.SIZE - 1 - py, panel_index * width + scattergram.LEFT + px


def test_each_class_is_drawn_in_its_colour_where_its_events_are():
    profile = get_profile("optical-11")
    rbc = np.array([200, 2e5, 5000, 5e5, 3000, 2e5, 100, 3000, 8000, 5e4, 3.0], np.float32)
    plt = np.array([900, 8000, 300, 4000, 700, 9000, 800, 9000, 500, 2000, 2.5], np.float32)
    events = np.vstack([np.tile(rbc, (500, 1)), np.tile(plt, (300, 1))])
    labels = np.array([C.RBC] * 500 + [C.PLT] * 300, np.uint8)
    img = decode(scattergram.render(events, labels, profile, "t"))
    assert img.shape[1] == 3 * (scattergram.LEFT + scattergram.SIZE + scattergram.RIGHT)
    for k, view in enumerate(scattergram.VIEWS):
        r, c = pixel_of(profile, view, rbc, k)
        assert tuple(img[r, c]) == scattergram.COLOURS[C.RBC], (view.title, img[r, c])
        r, c = pixel_of(profile, view, plt, k)
        if (r, c) != pixel_of(profile, view, rbc, k):
            # Fewer events (300 of the densest 500): PLT's colour, paler (blended with white).
            colour = np.array(scattergram.COLOURS[C.PLT], float)
            depth = (255 - img[r, c].astype(float)) / (255 - colour)
            assert 0.25 <= depth.mean() < 1 and np.ptp(depth) < 0.05, (view.title, img[r, c])
    # Where there are no events the plot is white.
    assert tuple(img[34 + scattergram.TOP + 3, scattergram.LEFT + 3]) == (255, 255, 255)


def test_density_is_on_a_log_scale():
    """A pixel with 1 event is paler than one with 1,000, but still visible."""
    profile = get_profile("optical-11")
    a = np.array([200, 2e5, 5000, 5e5, 3000, 2e5, 100, 3000, 8000, 5e4, 3.0], np.float32)
    b = a * np.array([1, 1, 1, 1, 10, 1, 1, 1, 1, 1, 1], np.float32)  # same size, more side scatter
    events = np.vstack([np.tile(a, (1000, 1)), b[None]])
    labels = np.full(len(events), C.RBC, np.uint8)
    img = decode(scattergram.render(events, labels, profile, "t")).astype(int)
    ra, ca = pixel_of(profile, scattergram.VIEWS[0], a, 0)
    rb, cb = pixel_of(profile, scattergram.VIEWS[0], b, 0)
    assert img[rb, cb].sum() > img[ra, ca].sum() and img[rb, cb].sum() < 3 * 250


@pytest.mark.parametrize("profile_name", ["optical-11", "sysmex-xn-ret"])
def test_three_views_for_every_shipped_profile(profile_name):
    profile = get_profile(profile_name)
    rng = np.random.default_rng(0)
    lo = np.array([max(f.range[0], 1) for f in profile.features])
    hi = np.array([f.range[1] for f in profile.features])
    events = (lo + rng.random((2000, profile.n_features)) * (hi - lo) * 0.1).astype(np.float32)
    labels = rng.integers(0, 5, 2000).astype(np.uint8)
    img = decode(scattergram.render(events, labels, profile, "t"))
    assert img.shape[1] == 3 * (scattergram.LEFT + scattergram.SIZE + scattergram.RIGHT)


def test_a_150k_event_sample_is_a_png_of_tens_of_kb():
    sim = SampleSimulator("dog", seed=2).generate(150_000)
    png = scattergram.render(sim.sample.events, sim.labels, sim.sample.profile, "dog-2")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and 10_000 < len(png) < 100_000


def test_plot_classify_and_replay_write_pictures(tmp_path):
    samples = tmp_path / "s"
    subprocess.run([sys.executable, "-m", "edgehema", "simulate", "--species", "cat", "--samples", "2", "--seed", "4",
                    "-n", "5000", "-o", str(samples)], check=True, capture_output=True, timeout=120)
    files = sorted(map(str, samples.glob("*.csv")))
    p = subprocess.run([sys.executable, "-m", "edgehema", "plot", "-o", str(tmp_path / "plots"), *files],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert sorted(x.name for x in (tmp_path / "plots").glob("*.png")) == ["cat-4-0001.png", "cat-4-0002.png"]
    c = subprocess.run([sys.executable, "-m", "edgehema", "classify", "--json", "--jobs", "1", "--plots",
                        str(tmp_path / "cp"), *files], capture_output=True, text=True, timeout=120)
    assert c.returncode == 0, c.stderr
    for line in c.stdout.splitlines():
        r = json.loads(line)
        assert decode(open(r["scattergram"], "rb").read()).shape[0] > 300
    bad = subprocess.run([sys.executable, "-m", "edgehema", "plot", "-o", files[0], files[0]],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "is a file" in bad.stderr


def test_stream_replay_writes_pictures(tmp_path):
    from edgehema.model.classifier import Classifier
    from edgehema.simulator.emulator import InstrumentEmulator, write_file
    from edgehema.stream.runner import replay_bytes

    emu = InstrumentEmulator("dog", samples=2, events=6000, seed=3)
    write_file(emu, str(tmp_path / "capture.ehw"))
    results = replay_bytes((tmp_path / "capture.ehw").read_bytes(), Classifier(), tmp_path / "rp")
    assert len(results) == 2
    assert results and all((tmp_path / "rp" / f"{r['sample_id']}.png").exists() for r in results)
