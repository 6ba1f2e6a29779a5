"""The in-memory sample: one blood measurement's events plus what is known about it.

Events are a C-contiguous ``float32`` array of shape ``(n_events, n_features)`` whose columns
follow the instrument profile's feature order. Metadata that a laboratory needs to turn
counts into concentrations (dilution, analyzed volume) travels with the events.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Mapping

import numpy as np

from edgehema.exceptions import ProfileMismatchError
from edgehema.profiles import Profile, get_profile


@dataclass(frozen=True)
class SampleInfo:
    """What is known about a sample besides its events.

    ``dilution`` is the dilution factor of blood in the measured suspension (e.g. 625 for 1:625);
    ``volume_ul`` the volume of that suspension that passed the sensing zone, in microlitres.
    Concentration in blood = cells / volume_ul * dilution (cells per microlitre of blood).
    Timestamps are ISO 8601 strings (UTC) as the instrument or file states them.
    """

    sample_id: str = ""
    species: str | None = None
    dilution: float | None = None
    volume_ul: float | None = None
    instrument_id: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SampleInfo":
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data and data[k] is not None}
        for key in ("dilution", "volume_ul"):
            if key in known:
                known[key] = float(known[key])
        for key in ("sample_id", "species", "instrument_id", "started_at", "ended_at", "source"):
            if key in known:
                known[key] = str(known[key])
        return cls(**known)

    def merged(self, **overrides: Any) -> "SampleInfo":
        """A copy with the given fields replaced; ``None`` and ``""`` mean "not given" and change nothing."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None and v != ""})

    def given(self) -> dict[str, Any]:
        """The fields that are set (neither ``None`` nor ``""``)."""
        return {k: v for k, v in self.to_dict().items() if v is not None and v != ""}

    def overlay(self, overrides: "SampleInfo | None") -> "SampleInfo":
        """This info with every field that ``overrides`` sets put over it (command-line options win
        over what a file says; a field the options leave unset keeps the file's value)."""
        return self if overrides is None else self.merged(**overrides.given())


@dataclass
class Sample:
    """One sample's events in a profile's feature order, plus its metadata."""

    events: np.ndarray
    profile: Profile
    info: SampleInfo = field(default_factory=SampleInfo)
    #: Bookkeeping columns some exports carry (e.g. Sysmex ParticleID): kept for round trips.
    auxiliary: dict[str, np.ndarray] = field(default_factory=dict)
    #: What the file itself says is wrong (code -> text), e.g. an FCS $TOT that disagrees with its
    #: DATA: each becomes a flag of the sample's result, so it is never reported clean.
    flags: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ev = np.ascontiguousarray(self.events, dtype=np.float32)
        if ev.ndim != 2 or ev.shape[1] != self.profile.n_features:
            raise ProfileMismatchError(
                f"events of shape {tuple(np.shape(self.events))} do not fit profile "
                f"{self.profile.name} ({self.profile.n_features} features)"
            )
        self.events = ev
        for name, col in self.auxiliary.items():
            if len(col) != len(ev):
                raise ProfileMismatchError(f"auxiliary column {name} has {len(col)} rows, events have {len(ev)}")

    @property
    def n_events(self) -> int:
        return int(self.events.shape[0])

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self.profile.feature_names

    def column(self, name: str) -> np.ndarray:
        """A view of one feature column."""
        return self.events[:, self.profile.index(name)]

    def __len__(self) -> int:
        return self.n_events

    def __repr__(self) -> str:
        return (
            f"Sample(id={self.info.sample_id!r}, profile={self.profile.name!r}, "
            f"events={self.n_events}, species={self.info.species!r})"
        )

    @classmethod
    def from_columns(
        cls,
        columns: Mapping[str, np.ndarray],
        profile: "Profile | str | None" = None,
        info: SampleInfo | None = None,
    ) -> "Sample":
        """Build a sample from named columns, ordering them as the profile says."""
        prof = get_profile(profile)
        lower = {k.lower(): v for k, v in columns.items()}
        missing = [n for n in prof.feature_names if n.lower() not in lower]
        if missing:
            raise ProfileMismatchError(f"profile {prof.name} needs columns missing here: {', '.join(missing)}")
        events = np.column_stack([np.asarray(lower[n.lower()], dtype=np.float32) for n in prof.feature_names])
        aux = {a: np.asarray(lower[a.lower()]) for a in prof.auxiliary if a.lower() in lower}
        return cls(events=events, profile=prof, info=info or SampleInfo(), auxiliary=aux)
