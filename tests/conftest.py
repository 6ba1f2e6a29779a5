"""Shared fixtures. Tests that read ../shared/ skip with a reason where it is absent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgehema import Sample, SampleInfo, get_profile

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
FCS_DIR = SHARED / "data" / "fcs"


def require_shared_fcs() -> Path:
    if not FCS_DIR.is_dir():
        pytest.skip(f"shared FCS corpus not found at {FCS_DIR} (it sits beside the project on every machine here)")
    return FCS_DIR


@pytest.fixture
def small_sample() -> Sample:
    """A small, deterministic optical-11 sample with realistic magnitudes (no simulator involved)."""
    rng = np.random.default_rng(3)
    prof = get_profile("optical-11")
    n = 500
    events = np.column_stack(
        [
            rng.integers(60, 40000, n),
            rng.integers(100, 900000, n),
            rng.integers(60, 40000, n),
            rng.integers(100, 900000, n),
            rng.integers(0, 20000, n),
            rng.integers(0, 400000, n),
            rng.integers(0, 30000, n),
            rng.integers(0, 600000, n),
            rng.integers(60, 30000, n),
            rng.integers(100, 800000, n),
            np.round(rng.uniform(1.5, 9.0, n), 2),
        ]
    ).astype(np.float32)
    info = SampleInfo(sample_id="S-001", species="dog", dilution=625.0, volume_ul=18.5, instrument_id="bench-1")
    return Sample(events=events, profile=prof, info=info)
