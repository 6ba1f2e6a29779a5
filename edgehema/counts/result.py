"""A sample's result, and the one function that makes it from a sample and a classifier.

The JSON form (``SampleResult.to_dict``) has the meaning of the simulator's truth JSON, so a
result can be compared with truth key by key: ``events.*`` count events by class, ``cells.*``
count cells (coincidences contribute their estimated cells; ``cells.rbc`` includes reticulocytes).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from edgehema.model.classifier import Classifier, EventInference
from edgehema.counts import plausibility
from edgehema.counts.counting import Counts, count_sample
from edgehema.sample import Sample

#: Area features the reference bundles decompose coincidences with (optical-11).
DEFAULT_AREA_FEATURES = ["ext_area", "ssc_area", "fsc_hi_area"]


@dataclass
class SampleResult:
    sample_id: str
    species: str | None
    source: str | None
    profile: str
    counts: Counts
    model: dict
    seconds: float
    inference: EventInference | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        c = self.counts
        out = {
            "sample_id": self.sample_id,
            "species": self.species,
            "source": self.source,
            "profile": self.profile,
            "events": c.events,
            "cells": {k: int(round(v)) for k, v in c.cells.items()},
            "retic_percent": None if c.retic_percent is None else round(c.retic_percent, 4),
            "concentration": {k: (None if v is None else round(v, 1)) for k, v in c.concentration.items()},
            "flags": c.flags,
            "flag_details": c.flag_details,
            "qc": {k: round(v, 6) if isinstance(v, float) else v for k, v in c.qc.items()},
            "model": self.model,
            "seconds": round(self.seconds, 4),
        }
        if c.concentration_note:
            out["concentration_note"] = c.concentration_note
        return out


def judged_adaptation(inf: EventInference, counts: Counts, classifier, count) -> tuple[EventInference, Counts]:
    """The adaptation kept only where it leaves the sample no less plausible, by the model's own data
    checks (:func:`plausibility.severity`), than the trained populations; else the unadapted
    assignment with the flag ``adaptation_rejected``. Deterministic, and the same for every path that
    counts (classify, batch, stream, replay): they all count here."""
    adapted = plausibility.severity(counts.flags)
    unadapted = getattr(classifier, "unadapted", None)
    if adapted == (0, 0) or unadapted is None:
        return inf, counts
    plain = unadapted(inf)
    if plain is None:
        return inf, counts
    plain_counts = count(plain)
    # Ties keep the adaptation: how far it moved is not itself a check of the result (measured on
    # ferret: rejecting adaptations that only moved far made RET worse, median 1.3 -> 2.1 pt).
    if plausibility.severity(plain_counts.flags) >= adapted:
        return inf, counts
    failed = [f for f in plausibility.COUNT_CHECKS + plausibility.RETIC_CHECKS
              if f in counts.flags and f not in plain_counts.flags]
    shift = float(inf.adaptation.get("stage2_mean_shift", 0.0))
    plain.adaptation = {"adapted": False, "rejected": {**inf.adaptation, "failed": failed}}
    found = {"adaptation_rejected": plausibility.ADAPTATION_REJECTED.format(failed=", ".join(failed), shift=shift)}
    if "population_not_recognised" in counts.flag_details:
        # What the adaptation needed to move still says the populations are not the trained ones; and
        # of populations not recognised, coincidences at a Poisson-like level do not mean "dilute".
        found["population_not_recognised"] = counts.flag_details["population_not_recognised"]
        if "high_coincidence" in plain_counts.flag_details:
            plain_counts.flags.remove("high_coincidence")
            del plain_counts.flag_details["high_coincidence"]
    for code, text in found.items():
        if code not in plain_counts.flag_details:
            plain_counts.flags.append(code)
            plain_counts.flag_details[code] = text
    plain_counts.qc["stage2_shift"] = round(shift, 4)
    return plain, plain_counts


def elapsed_seconds(sample: Sample) -> float | None:
    try:
        if sample.info.started_at and sample.info.ended_at:
            t0 = datetime.fromisoformat(sample.info.started_at)
            t1 = datetime.fromisoformat(sample.info.ended_at)
            return max((t1 - t0).total_seconds(), 0.0) or None
    except ValueError:
        return None
    return None


def classify_sample(sample: Sample, classifier: Classifier, keep_events: bool = False, complete: bool = True) -> SampleResult:
    """Classify every event of ``sample`` and count it."""
    t0 = time.perf_counter()
    classifier.check(sample.profile, sample.info.source or sample.info.sample_id or "sample")
    inf = classifier.infer(sample.events)
    return result_from_inference(sample, inf, classifier, t0, keep_events=keep_events, complete=complete)


def result_from_inference(
    sample: Sample,
    inf: EventInference,
    classifier: Classifier,
    t0: float,
    keep_events: bool = False,
    complete: bool = True,
    extra_flags: dict[str, str] | None = None,
) -> SampleResult:
    """Count a classified sample; ``extra_flags`` come from the link (sequence gaps, CRC errors...)."""
    settings = classifier.bundle.settings

    def count(inference: EventInference) -> Counts:
        return count_sample(
            sample.events, inference.probabilities, inference.labels, sample.profile, sample.info,
            list(settings.area_features or DEFAULT_AREA_FEATURES),
            recon_err=inference.recon_err,
            recon_threshold=settings.limits.recon_err_p999,
            coincidence_window_us=sample.profile.coincidence_window_us,
            elapsed_s=elapsed_seconds(sample),
            complete=complete,
            adaptation=inference.adaptation,
            limits=settings.limits,
        )

    inf, counts = judged_adaptation(inf, count(inf), classifier, count)
    trained = settings.training_species
    species = (sample.info.species or "").strip().lower()
    if species and trained and species not in {str(t).lower() for t in trained}:
        # A veterinary analyzer counts only the species it was validated for; the data checks may miss
        # an unseen species whose cells sit where trained ones did (docs/accuracy.md).
        counts.flags.append("species_not_validated")
        counts.flag_details["species_not_validated"] = (
            f"species {species!r} is not among the model's training species ({', '.join(trained)}): "
            "counts are not validated for it; review by a validated method")
    for code, text in {**sample.flags, **(extra_flags or {})}.items():
        if code not in counts.flag_details:
            counts.flags.append(code)
            counts.flag_details[code] = text
    model = {
        "name": classifier.bundle.name,
        "version": classifier.bundle.version,
        "sha256": classifier.bundle.sha256,
        # The trusted key whose signature was verified at load; None when no keys are configured.
        "signed_by": classifier.bundle.signed_by.key_id if classifier.bundle.signed_by else None,
        "backend": classifier.backend_name,
        **classifier.ran,
        "selftest": classifier.selftest.summary() if classifier.selftest else None,
        "adaptation": inf.adaptation,
    }
    return SampleResult(
        sample_id=sample.info.sample_id, species=sample.info.species, source=sample.info.source,
        profile=sample.profile.name, counts=counts, model=model, seconds=time.perf_counter() - t0,
        inference=inf if keep_events else None,
    )


def events_table(result: SampleResult, classes: tuple[str, ...]) -> np.ndarray:
    """Per-event label and probabilities, for ``--events-out``."""
    inf = result.inference
    assert inf is not None
    return np.column_stack([inf.labels.astype(np.float64), inf.probabilities])
