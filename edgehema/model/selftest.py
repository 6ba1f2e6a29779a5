"""Known-answer self-test: the control material of an inference engine.

An analyzer runs control material before it reports patients; edgehema runs a known answer before an
engine counts anything. Every bundle made by ``export`` or the training recipe carries
``selftest.npz``: a few thousand events and the class its *float* model gives each of them (no
per-sample adaptation, so the answer does not depend on anything but the events). At start-up each
engine that is about to count runs those events and must agree within the bundle's parity
thresholds; an engine that computes wrong numbers on this CPU (an emulator's or a kernel's fault,
a corrupted library) is refused with one line, and ``--backend auto`` moves on to the next engine.
It costs a few milliseconds (measured by ``edgehema selftest``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from edgehema.model import classes as C
from edgehema.simulator import SampleSimulator

if TYPE_CHECKING:
    from edgehema.model.bundle import Bundle


class Counter(Protocol):
    """What the self-test runs the known answer through: an engine with the bundle's latent stages
    (a :class:`~edgehema.model.classifier.Classifier`; named here by what it does, so that the
    self-test needs nothing of the classifier's module)."""

    bundle: "Bundle"
    backend_name: str

    def run_graph(self, events: np.ndarray) -> dict[str, np.ndarray]: ...

    def from_graph(self, out: dict[str, np.ndarray], adapt: bool | None = None): ...

#: The bundle member that holds the known answer.
KNOWN_ANSWER = "selftest.npz"
#: Events in a known answer: a thousand per species of a human, a cat and a horse sample.
KNOWN_ANSWER_SPECIES = ("human", "cat", "horse")
KNOWN_ANSWER_EVENTS = 1000
#: Thresholds when the bundle states none (those of the export's parity report).
DEFAULT_AGREEMENT = 0.995
#: Largest change of a class's event count, in % of all events. Over 3,000 events this allows
#: 9 events to change class, twice what int8 against float changes (parity reports: 99.9 %).
DEFAULT_CLASS_SHIFT_PCT = 0.3
#: Largest share of the known answer's events scored out of distribution: the sample flag's limit
#: (counting.MAX_OOD_FRACTION); the float models score 0.0-0.2 % of them.
MAX_KNOWN_ANSWER_OOD = 0.01


@dataclass(frozen=True)
class SelfTest:
    engine: str
    passed: bool
    events: int
    agreement: float
    class_shift_pct: float  # largest |events of a class - known answer| in % of all events
    ms: float
    reason: str = ""
    #: Share of the known answer's events the engine scores as unlike the training data (None: the
    #: bundle has no such score). They are training-like events: the float model scores about 0.1 %.
    ood_fraction: float | None = None
    #: The graph's outputs on the known answer (for the latent-space kernels' check: not run twice).
    graph: dict | None = field(default=None, repr=False, compare=False)

    def line(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        ood = f", {self.ood_fraction:.2%} scored out of distribution" if self.ood_fraction is not None else ""
        text = (f"engine {self.engine} {verdict} the known-answer self-test: {self.agreement:.2%} of {self.events:,} "
                f"events agree with the float model, largest class shift {self.class_shift_pct:.2f} %{ood} ({self.ms:.0f} ms)")
        return text + (f"; {self.reason}" if self.reason else "")

    def to_dict(self) -> dict:
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "graph"}
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in values.items()}

    def summary(self) -> dict:
        """What a result records: which engine passed and how closely (no timing, so that a replay
        of an archive gives the same result to the last digit)."""
        out = {"engine": self.engine, "passed": self.passed, "events": self.events,
               "agreement": round(self.agreement, 6), "class_shift_pct": round(self.class_shift_pct, 4)}
        if self.ood_fraction is not None:
            out["ood_fraction"] = round(self.ood_fraction, 6)
        return out


def known_answer_events(profile=None, seed: int = 20_261_124) -> np.ndarray:
    """The events of a known answer: simulated, from three species, in the profile's order."""

    parts = [SampleSimulator(s, profile=profile, seed=seed + k).generate(KNOWN_ANSWER_EVENTS).sample.events
             for k, s in enumerate(KNOWN_ANSWER_SPECIES)]
    return np.concatenate(parts).astype(np.float32)


def simulated_known_answer(float_classifier: "Counter") -> tuple[np.ndarray, np.ndarray]:
    """(events, classes) of a known answer from simulated samples, answered by a float model."""
    events = known_answer_events(float_classifier.bundle.profile())
    return events, float_classifier.infer(events, adapt=False).labels


def spread_events(samples_events: list[np.ndarray], n: int = len(KNOWN_ANSWER_SPECIES) * KNOWN_ANSWER_EVENTS) -> np.ndarray:
    """About ``n`` events taken evenly from several samples (a known answer from a user's own data)."""
    every = np.concatenate(samples_events)
    return np.ascontiguousarray(every[:: max(1, len(every) // n)][:n], dtype=np.float32)


def attach_known_answer(draft: dict, directory: str | Path, events: np.ndarray, labels: np.ndarray) -> dict:
    """Write ``selftest.npz`` (events, and the float model's classes for them, without adaptation)
    into ``directory`` and list it in the files of ``draft``, a manifest being made (seal it afterwards)."""
    write_known_answer(directory, events, labels)
    return dict(draft, files=dict(draft.get("files", {}), **{KNOWN_ANSWER: ""}))


def write_known_answer(directory: str | Path, events: np.ndarray, labels: np.ndarray) -> Path:
    """Store events and the float model's class per event as the bundle member ``selftest.npz``."""
    path = Path(directory) / KNOWN_ANSWER
    with open(path, "wb") as fh:  # a file handle: savez would otherwise add .npz to odd names
        np.savez_compressed(fh, events=np.asarray(events, np.float32), labels=np.asarray(labels, np.uint8))
    return path


def read_known_answer(bundle: "Bundle") -> tuple[np.ndarray, np.ndarray] | None:
    if KNOWN_ANSWER not in bundle.settings.files:
        return None
    with np.load(bundle.path / KNOWN_ANSWER) as data:
        return data["events"].astype(np.float32), data["labels"].astype(np.int64)


def thresholds(bundle: "Bundle") -> tuple[float, float]:
    s = bundle.settings
    return (DEFAULT_AGREEMENT if s.selftest_agreement is None else s.selftest_agreement,
            DEFAULT_CLASS_SHIFT_PCT if s.selftest_class_shift_pct is None else s.selftest_class_shift_pct)


def check(classifier: "Counter") -> SelfTest | None:
    """Run the bundle's known answer on the classifier's engine; None if the bundle carries none."""
    answer = read_known_answer(classifier.bundle)
    if answer is None:
        return None
    return compare(classifier, *answer)


def compare(classifier: "Counter", events: np.ndarray, want: np.ndarray) -> SelfTest:
    """Classes the classifier's engine gives ``events`` (no adaptation) against the known ``want``."""
    want = np.asarray(want, np.int64)
    t0 = time.perf_counter()
    ood = None
    graph = None
    try:
        graph = classifier.run_graph(events)
        inference = classifier.from_graph(graph, adapt=False)
        got = inference.labels.astype(np.int64)
        reason = ""
        limit = classifier.bundle.settings.limits.recon_err_p999
        if inference.recon_err is not None and limit:
            # The out-of-distribution score is checked too: an engine can keep every class and still
            # miscompute the reconstruction (fused int8 kernels saturating on x86 without VNNI put
            # 100 % of normal events out of distribution, and every sample was flagged).
            ood = float(np.mean(inference.recon_err > float(limit)))
    except Exception as exc:  # noqa: BLE001 - an engine that crashes on the known answer fails it
        got, reason = np.full(len(want), -1), f"the engine raised {type(exc).__name__}: {str(exc)[:120]}"
    ms = 1000 * (time.perf_counter() - t0)
    n = len(want)
    agreement = float(np.mean(got == want)) if n else 1.0
    k = len(C.EVENT_CLASSES)
    shift = np.abs(np.bincount(got[got >= 0], minlength=k)[:k] - np.bincount(want, minlength=k)[:k])
    class_shift = 100.0 * float(shift.max()) / n if n else 0.0
    need_agreement, need_shift = thresholds(classifier.bundle)
    passed = not reason and agreement >= need_agreement and class_shift <= need_shift
    if not passed and not reason:
        reason = f"needs at least {need_agreement:.1%} agreement and at most {need_shift:.2f} % class shift"
    if passed and ood is not None and ood > MAX_KNOWN_ANSWER_OOD:
        passed = False
        reason = (f"{ood:.1%} of the known answer's training-like events scored out of distribution "
                  f"(at most {MAX_KNOWN_ANSWER_OOD:.0%}): the engine miscomputes the reconstruction")
    return SelfTest(classifier.backend_name, passed, n, agreement, class_shift, ms, reason, ood, graph)
