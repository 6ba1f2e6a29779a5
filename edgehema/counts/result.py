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
    counts = count_sample(
        sample.events, inf.probabilities, inf.labels, sample.profile, sample.info,
        list(settings.area_features or DEFAULT_AREA_FEATURES),
        recon_err=inf.recon_err,
        recon_threshold=settings.limits.recon_err_p999,
        coincidence_window_us=sample.profile.coincidence_window_us,
        elapsed_s=elapsed_seconds(sample),
        complete=complete,
        adaptation=inf.adaptation,
        stage2_shift_limit=settings.limits.stage2_shift_max,
        stain_skew_limit=settings.limits.rbc_stain_skew_max,
    )
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
