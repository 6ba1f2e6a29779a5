"""Instrument profiles: which features an instrument delivers, in which order, units and ranges.

A profile is data: one TOML file in this folder per instrument (``optical-11.toml``,
``sysmex-xn-ret.toml``). A third instrument is one new file; nothing else changes.
Users can also load a profile from any path with :func:`load_profile`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Sequence

from edgehema._utils.toml import tomllib, read_toml
from edgehema.exceptions import ProfileError

#: Optical channels the simulator's forward model produces; a feature's ``channel`` names one.
CHANNELS = ("fsc_lo", "fsc_hi", "ssc", "fl", "ext")
#: Pulse measures per channel.
MEASURES = ("peak", "area", "width")


@dataclass(frozen=True)
class Feature:
    """One per-event feature as the instrument reports it."""

    name: str
    unit: str
    range: tuple[float, float]
    description: str = ""
    #: Where the simulator takes this feature from: optical channel and pulse measure.
    channel: str | None = None
    measure: str | None = None
    #: Simulator-only factor from the forward model's units to this instrument's units.
    scale: float = 1.0


@dataclass(frozen=True)
class Profile:
    """An instrument's event layout: ordered features plus how its files are laid out."""

    name: str
    description: str
    features: tuple[Feature, ...]
    auxiliary: tuple[str, ...] = ()
    file_layout: str = "plain"
    rows_per_part: int | None = None
    default: bool = False
    #: Resolving window of the instrument's pulse electronics (None: unknown).
    coincidence_window_us: float | None = None
    source: str = field(default="", compare=False)

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    @property
    def n_features(self) -> int:
        return len(self.features)

    def index(self, name: str) -> int:
        """Column index of a feature, case-insensitive."""
        lowered = [n.lower() for n in self.feature_names]
        try:
            return lowered.index(name.lower())
        except ValueError:
            raise ProfileError(f"profile {self.name} has no feature {name!r}") from None

    def match_columns(self, columns: Sequence[str]) -> tuple[list[str], list[str]]:
        """Return (missing, extra) column names of ``columns`` against this profile (case-insensitive)."""
        wanted = {n.lower() for n in self.feature_names} | {a.lower() for a in self.auxiliary}
        present = {c.strip().lower() for c in columns}
        missing = [n for n in self.feature_names if n.lower() not in present]
        extra = [c for c in columns if c.strip().lower() not in wanted]
        return missing, extra


def _parse(data: dict, source: str) -> Profile:
    try:
        feats = []
        for f in data["features"]:
            lo, hi = (float(v) for v in f["range"])
            if not lo < hi:
                raise ValueError(f"feature {f['name']}: range must be increasing")
            if f.get("channel") is not None and f["channel"] not in CHANNELS:
                raise ValueError(f"feature {f['name']}: unknown channel {f['channel']!r}")
            if f.get("measure") is not None and f["measure"] not in MEASURES:
                raise ValueError(f"feature {f['name']}: unknown measure {f['measure']!r}")
            feats.append(
                Feature(
                    name=str(f["name"]),
                    unit=str(f.get("unit", "")),
                    range=(lo, hi),
                    description=str(f.get("description", "")),
                    channel=f.get("channel"),
                    measure=f.get("measure"),
                    scale=float(f.get("scale", 1.0)),
                )
            )
        names = [f.name.lower() for f in feats]
        if len(set(names)) != len(names):
            raise ValueError("duplicate feature names")
        if not feats:
            raise ValueError("no features")
        return Profile(
            name=str(data["name"]),
            description=str(data.get("description", "")),
            features=tuple(feats),
            auxiliary=tuple(str(a) for a in data.get("auxiliary", ())),
            file_layout=str(data.get("file_layout", "plain")),
            rows_per_part=data.get("rows_per_part"),
            default=bool(data.get("default", False)),
            coincidence_window_us=(float(data["coincidence_window_us"]) if "coincidence_window_us" in data else None),
            source=source,
        )
    except (KeyError, TypeError, ValueError) as exc:
        detail = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc)
        raise ProfileError(f"{source}: invalid instrument profile: {detail}") from None


def load_profile(path: str | Path) -> Profile:
    """Load a profile from a TOML file anywhere on disk."""
    return _parse(read_toml(path, ProfileError, "profile"), str(path))


@lru_cache(maxsize=None)
def builtin_profiles() -> dict[str, Profile]:
    """All profiles shipped with the package, by name."""
    out: dict[str, Profile] = {}
    for entry in resources.files(__name__).iterdir():
        if entry.name.endswith(".toml"):
            prof = _parse(tomllib.loads(entry.read_text(encoding="utf-8")), entry.name)
            out[prof.name] = prof
    return out


def get_profile(name_or_path: "str | Profile | None" = None) -> Profile:
    """A shipped profile by name, a profile file by path, or the default profile for ``None``."""
    if isinstance(name_or_path, Profile):
        return name_or_path
    profiles = builtin_profiles()
    if name_or_path is None:
        return next(p for p in profiles.values() if p.default)
    if name_or_path in profiles:
        return profiles[name_or_path]
    if str(name_or_path).endswith(".toml"):
        return load_profile(name_or_path)
    raise ProfileError(
        f"unknown instrument profile {name_or_path!r} (known: {', '.join(sorted(profiles))})"
    )


def default_profile() -> Profile:
    return get_profile(None)


__all__ = ["CHANNELS", "MEASURES", "Feature", "Profile", "builtin_profiles", "default_profile", "get_profile", "load_profile"]
