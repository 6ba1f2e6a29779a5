"""Fuzzing the host's wire session: a million mutated frames.

The decoder and session must never crash, never put one sample's events into another, and keep
their memory bounded, whatever the bytes. Mutations: bit flips, dropped bytes, inserted garbage,
duplicated, truncated and reordered frames.
"""

import numpy as np

from edgehema.stream.session import EventBatch, SampleClosed, SampleOpened, WireSession
from firmware_bridge import codec
from firmware_bridge import protocol as P

N_FEATURES = 3


def base_frames(n_samples: int, events_per_frame: int = 4, frames_per_sample: int = 20) -> list[bytes]:
    seq = 0
    out = []

    def add(msg):
        nonlocal seq
        out.append(codec.encode_message(msg, seq))
        seq += 1

    add(P.Hello("FUZZ", "1", "optical-11", tuple(P.FeatureScale(f"f{i}", 1.0) for i in range(N_FEATURES))))
    for tag in range(1, n_samples + 1):
        add(P.SampleBegin(tag, f"S{tag}", "dog", 0, 625.0, 0))
        for i in range(frames_per_sample):
            # Every event value encodes its sample's tag, so mixing would be visible.
            raw = np.full((events_per_frame, N_FEATURES), tag, dtype=np.uint16)
            add(P.Events(tag, i * events_per_frame, raw))
        add(P.SampleEnd(tag, frames_per_sample * events_per_frame, 1000, 10))
    return out


def mutate(frames: list[bytes], rng: np.random.Generator) -> bytes:
    out = []
    for f in frames:
        r = rng.random()
        if r < 0.02:
            continue  # dropped
        b = bytearray(f)
        if r < 0.06:
            b[int(rng.integers(0, len(b)))] ^= 1 << int(rng.integers(0, 8))
        elif r < 0.08:
            del b[int(rng.integers(0, len(b))):]  # truncated (delimiter lost too)
        elif r < 0.10:
            b[int(rng.integers(0, len(b))):int(rng.integers(0, len(b)))] = rng.integers(0, 256, int(rng.integers(1, 40)), dtype=np.uint8).tobytes()
        elif r < 0.11:
            b += f  # duplicated
        out.append(bytes(b))
    if rng.random() < 0.3 and len(out) > 4:  # swap two frames
        i, j = rng.integers(0, len(out), 2)
        out[i], out[j] = out[j], out[i]
    return b"".join(out)


def test_a_million_mutated_frames():
    rng = np.random.default_rng(2026)
    frames = base_frames(n_samples=8)
    total_frames = 0
    closed = 0
    while total_frames < 1_000_000:
        session = WireSession()
        data = mutate(frames, rng)
        owner = {}
        # Feed in random chunk sizes, as a serial port delivers.
        pos = 0
        while pos < len(data):
            step = int(rng.integers(1, 2048))
            for item in session.feed(data[pos:pos + step]):
                if isinstance(item, SampleOpened):
                    owner[id(item.sample)] = item.sample.tag
                elif isinstance(item, EventBatch):
                    # The batch belongs to the open sample, and its values say which sample sent it.
                    assert owner[id(item.sample)] == item.sample.tag
                    assert np.all(item.events == item.sample.tag)
                elif isinstance(item, SampleClosed):
                    closed += 1
                    if item.complete and not item.sample.flags:
                        assert item.sample.received == item.event_total
            assert session.decoder.buffered <= codec.MAX_ENCODED
            pos += step
        list(session.disconnect())
        total_frames += len(frames)
    assert closed > 10_000
