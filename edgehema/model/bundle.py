"""Model bundles: the contract between training (on a workstation) and the device.

A bundle is a directory holding a float ONNX graph (or several) and ``manifest.json``. The manifest
says what the graph expects (instrument profile and feature order), how raw features become its
input (preprocessing), what it outputs, how outputs become the event classes (mixture parameters
of the two clustering stages), what it was trained on, and the sha256 of every file. The
manifest's own content is covered by ``integrity.manifest_sha256`` (the sha256 of the canonical
JSON of the manifest without its ``integrity`` member), so no byte of a bundle can change
unnoticed. The full contract, for data scientists producing a bundle from their own code, is
docs/bundle.md.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from edgehema._utils.arrays import row_blocks
from edgehema.exceptions import BundleError, ProfileMismatchError
from edgehema.profiles import Profile, get_profile
from edgehema.model.signing import TrustedKey, TrustPolicy

FORMAT = "edgehema-bundle/1"
MANIFEST = "manifest.json"
#: Where the shipped bundles live inside the package.
BUNDLED_DIR = "shipped"
#: The float reference model: what training makes, export starts from and evaluation measures.
REFERENCE_BUNDLE = "reference"
#: What the device runs unless told otherwise: of the shipped forms that meet the parity thresholds
#: (label agreement >= 99.5 %, per-sample count deltas <= 0.2 %), the fastest here (benchmarks/
#: bench_backends.py: the graph 2x, a whole sample 1.3x faster than float). On a machine without a
#: TFLite engine, ``--backend auto`` runs the float graph the bundle also carries.
DEFAULT_BUNDLE = "reference-tflite-int8"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def manifest_digest(manifest: dict) -> str:
    """sha256 of the canonical JSON of the manifest without its ``integrity`` member."""
    body = {k: v for k, v in manifest.items() if k != "integrity"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def seal(manifest: dict, directory: Path) -> dict:
    """Fill ``files`` hashes and ``integrity`` for a manifest whose files sit in ``directory``."""
    manifest = dict(manifest)
    manifest["files"] = {name: sha256_file(directory / name) for name in sorted(manifest.get("files", {}))}
    manifest.pop("integrity", None)
    manifest["integrity"] = {"manifest_sha256": manifest_digest(manifest)}
    return manifest


#: The top-level members of an event bundle's manifest (docs/bundle.md) and of a smear model
#: folder's: what a writer (export, training) may set through :func:`amend`.
EVENT_MEMBERS = frozenset({
    "format", "name", "version", "description", "profile", "profile_file", "features", "preprocessing", "model",
    "classes", "files", "integrity", "stage1", "stage2", "thresholds", "selftest_thresholds", "counting", "training",
    "model_card", "supervision", "target", "source", "quantization", "parity_summary", "known_answer", "kind"})
SMEAR_MEMBERS = frozenset({
    "kind", "name", "version", "description", "classes", "input", "stride", "threshold", "sha256", "float_sha256",
    "training", "quantization", "known_answer", "evaluation_bccd_val", "bytes", "stain_reference", "tflite",
    "parity_bccd_val", "gates", "scale", "evaluation", "count_thresholds", "parity",
    # per-cell classifiers (edgehema.smear.cells): what they tell, how they crop, when unsure
    "task", "crop", "unsure_below", "report_as", "split", "float_known_answer", "views"})
#: ``amend(manifest, member=DROP)`` removes a member.
DROP = object()


def amend(manifest: dict, *, model: dict | None = None, update: dict[str, dict] | None = None,
          **members: Any) -> dict:
    """A new manifest: ``manifest`` with ``members`` set (``DROP`` removes one), the object members
    in ``update`` (and ``model``) updated key by key; ``integrity`` left out (seal writes it). Every
    member must be one the contract knows for the manifest's kind, so a writer's misspelt field
    fails where it is written, not on a device that then reads a default."""
    update = {**(update or {}), **({"model": model} if model else {})}
    known = SMEAR_MEMBERS if manifest.get("kind", members.get("kind")) == "smear" else EVENT_MEMBERS
    unknown = sorted((set(members) | set(update)) - known)
    if unknown:
        raise BundleError(f"manifest members {', '.join(unknown)} are not in the bundle contract (docs/bundle.md)")
    out = {k: v for k, v in manifest.items() if k != "integrity"}
    for k, v in members.items():
        if v is DROP:
            out.pop(k, None)
        else:
            out[k] = v
    for k, v in update.items():
        out[k] = {**(out.get(k) or {}), **v}
    return out


def read_manifest(path: Path) -> dict:
    """A manifest file's JSON object, or one BundleError line naming the file."""
    try:
        manifest = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: manifest is not readable JSON: {exc}") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{path}: manifest is not a JSON object")
    return manifest


_REQUIRED = ("format", "name", "version", "profile", "features", "preprocessing", "model", "classes", "files",
             "integrity")
#: Model kinds this runtime can run, and the manifest members each needs besides the common ones.
KINDS = {"two-stage-idec-vade": ("stage1", "stage2"), "softmax-classifier": ()}
#: What a model folder's top-level ``kind`` says it counts: events (this class; the default where a
#: manifest has no ``kind``, as every event bundle made before it existed) or smear images
#: (edgehema.smear.learned, its own manifest).
BUNDLE_KINDS = ("events", "smear")


#: Rows per block of the standardisation (bundle.preprocess).
PRE_ROWS = 256


@dataclass(frozen=True)
class Limits:
    """The sample checks' limits a bundle carries (None: the runtime's defaults)."""

    recon_err_p999: float | None = None  # out-of-distribution score of the training events' 99.9th percentile
    stage2_shift_max: float | None = None  # how far adaptation may move the stage-2 means
    rbc_stain_skew_max: float | None = None  # red cells' stain asymmetry
    plt_unstained_share_max: float | None = None  # platelet-sized events without platelet stain
    plt_unstained_per_rbc_max: float | None = None  # the same events per red-cell event (lipid: background)
    coincidence_fraction_max: float | None = None  # coincidence events of all (widens the fixed 8 %)
    plt_clump_share_max: float | None = None  # platelets read in clumps (widens the fixed 3 %)


@dataclass(frozen=True)
class Settings:
    """What the runtime reads of a manifest, typed, parsed and checked once at load."""

    target: str
    graph_file: str
    graph_input: str
    graph_outputs: tuple[str, ...]
    tflite_file: str | None
    #: The graph's output name -> the TFLite tensor that holds it.
    tflite_outputs: dict[str, str]
    files: dict[str, str]
    limits: Limits
    #: Known-answer thresholds (agreement share, largest class shift in %): None where not stated.
    selftest_agreement: float | None
    selftest_class_shift_pct: float | None
    area_features: tuple[str, ...] | None
    training_species: tuple[str, ...] | None
    #: A user's own instrument profile in the bundle (``profile.toml``), or None for a shipped one.
    profile_file: str | None = None
    stage1_alpha: float = 1.0
    stage1_cluster_classes: tuple[str, ...] = ()
    stage2_component_classes: tuple[str, ...] = ()
    #: For people (``edgehema info``, ``models``): shown, never computed with.
    supervision: str = "-"
    training: dict[str, Any] | None = None
    model_card: dict[str, Any] | None = None
    tflite: dict[str, Any] | None = None  # batch, converter
    quantization: dict[str, Any] | str | None = None
    parity_summary: dict[str, Any] | None = None


def parse_settings(mpath: Path, m: dict) -> Settings:
    """The manifest's runtime settings, or one BundleError line naming the field (also for a
    manifest template that has no files yet: export.event_model.from_torch)."""
    def number(v, where):
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise BundleError(f"{mpath}: {where} must be a number, not {v!r}")
        return float(v)

    def names(v, where):
        if v is None:
            return None
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise BundleError(f"{mpath}: {where} must be a list of names, not {v!r}")
        return tuple(v)

    def section(key):
        v = m.get(key) or {}
        if not isinstance(v, dict):
            raise BundleError(f"{mpath}: {key} must be an object, not {v!r}")
        return v

    model = section("model")
    if not isinstance(model.get("file"), str):
        raise BundleError(f"{mpath}: model.file must name the graph file")
    tflite = model.get("tflite")
    if tflite is not None and not (isinstance(tflite, dict) and isinstance(tflite.get("file"), str)):
        raise BundleError(f"{mpath}: model.tflite must be an object with its file")
    files = section("files")
    thresholds, selftest, counting, training = (section(k) for k in ("thresholds", "selftest_thresholds", "counting",
                                                                     "training"))
    stage1, stage2 = section("stage1"), section("stage2")
    out = Settings(
        target=str(m.get("target", "onnx-fp32")),
        graph_file=model["file"], graph_input=str(model.get("input", "x")),
        graph_outputs=names(model.get("outputs", []), "model.outputs") or (),
        tflite_file=tflite["file"] if tflite else None,
        tflite_outputs=dict(tflite.get("outputs") or {}) if tflite else {}, files=dict(files),
        limits=Limits(*(number(thresholds.get(k), f"thresholds.{k}")
                        for k in ("recon_err_p999", "stage2_shift_max", "rbc_stain_skew_max",
                                  "plt_unstained_share_max", "plt_unstained_per_rbc_max", "coincidence_fraction_max",
                                  "plt_clump_share_max"))),
        selftest_agreement=number(selftest.get("agreement"), "selftest_thresholds.agreement"),
        selftest_class_shift_pct=number(selftest.get("class_shift_pct"), "selftest_thresholds.class_shift_pct"),
        area_features=names(counting.get("area_features"), "counting.area_features"),
        profile_file=str(m["profile_file"]) if m.get("profile_file") else None,
        training_species=names(training.get("species"), "training.species"),
        stage1_alpha=number(stage1.get("alpha", 1.0), "stage1.alpha"),
        stage1_cluster_classes=names(stage1.get("cluster_classes", []), "stage1.cluster_classes") or (),
        stage2_component_classes=names(stage2.get("component_classes", []), "stage2.component_classes") or (),
        supervision=str(m.get("supervision", "-")), training=training or None,
        model_card=m.get("model_card") if isinstance(m.get("model_card"), dict) else None,
        tflite=tflite, quantization=m.get("quantization"),
        parity_summary=m.get("parity_summary") if isinstance(m.get("parity_summary"), dict) else None,
    )
    return out


@dataclass(frozen=True)
class Bundle:
    """A verified model bundle."""

    path: Path
    manifest: dict[str, Any]
    #: The trusted key whose signature was verified at load (``None``: no trusted keys configured).
    signed_by: "TrustedKey | None" = None

    # ----------------------------------------------------------- loading
    @classmethod
    def load(cls, path: str | os.PathLike | None = None, verify: bool = True,
             trust: "TrustPolicy | None" = None) -> "Bundle":
        """Load a bundle directory (or a shipped bundle by name; the default model for ``None``).

        ``trust``: the public keys whose signature the bundle must carry (edgehema.model.signing); ``None``
        reads them from $EDGEHEMA_TRUSTED_KEYS, and no keys means hash checks only. With trusted keys
        the hashes are always checked, whatever ``verify`` says: a signature covers the hashes only.
        """
        directory = resolve_bundle_path(path)
        mpath = directory / MANIFEST
        if not mpath.is_file():
            raise BundleError(f"{directory}: not a model bundle: {MANIFEST} is missing")
        try:
            manifest = json.loads(mpath.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BundleError(f"{mpath}: manifest is not valid JSON: {exc}") from None
        if not isinstance(manifest, dict):
            raise BundleError(f"{mpath}: manifest is not a JSON object")
        bundle_kind = manifest.get("kind", "events")
        if bundle_kind == "smear":
            raise BundleError(f"{directory}: a smear detector (kind smear), not an event bundle: count images with "
                              f"edgehema smear --engine model:{directory}")
        if bundle_kind not in BUNDLE_KINDS:
            raise BundleError(f"{mpath}: unknown bundle kind {bundle_kind!r} (known: {', '.join(BUNDLE_KINDS)})")
        missing = [k for k in _REQUIRED if k not in manifest]
        if missing:
            raise BundleError(f"{mpath}: manifest lacks {', '.join(missing)}")
        if manifest["format"] != FORMAT:
            raise BundleError(f"{mpath}: unsupported bundle format {manifest['format']!r} (this edgehema reads {FORMAT})")
        kind = manifest["model"].get("kind") if isinstance(manifest["model"], dict) else None
        if kind not in KINDS:
            raise BundleError(f"{mpath}: unknown model kind {kind!r} (known: {', '.join(KINDS)})")
        missing = [k for k in KINDS[kind] if k not in manifest]
        if missing:
            raise BundleError(f"{mpath}: a {kind} manifest needs {', '.join(missing)}")
        bundle = cls(directory, manifest)
        bundle.settings  # parsed and checked now: one clear error at load, not a KeyError later
        trust = TrustPolicy.from_environment() if trust is None else trust
        if verify or trust.enforced:
            bundle.verify()
        if trust.enforced:
            bundle = cls(directory, manifest, trust.check(directory, bundle.sha256))
        return bundle

    def verify(self) -> None:
        """Check every file's sha256 and the manifest's own digest; raise BundleError on any mismatch."""
        m = self.manifest
        want = m["integrity"].get("manifest_sha256") if isinstance(m["integrity"], dict) else None
        if want != manifest_digest(m):
            raise BundleError(f"{self.path / MANIFEST}: manifest content does not match its integrity digest (modified?)")
        for name, digest in m["files"].items():
            f = self.path / name
            if not f.is_file():
                raise BundleError(f"{f}: file listed in the manifest is missing")
            got = sha256_file(f)
            if got != digest:
                raise BundleError(f"{f}: sha256 mismatch (manifest {digest[:12]}..., file {got[:12]}...): bundle is corrupt or was modified")

    # -------------------------------------------------------- properties
    @cached_property
    def settings(self) -> Settings:
        """What the runtime reads of the manifest, typed (:class:`Settings`)."""
        return parse_settings(self.path / MANIFEST, self.manifest)

    @property
    def profile_name(self) -> str:
        return str(self.manifest["profile"])

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(self.manifest["features"])

    @property
    def kind(self) -> str:
        return str(self.manifest["model"]["kind"])

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.manifest["classes"])

    @property
    def model_file(self) -> Path:
        return self.path / self.manifest["model"]["file"]

    @property
    def sha256(self) -> str:
        """Identity of the bundle: the manifest digest (which covers every file's hash)."""
        return str(self.manifest["integrity"]["manifest_sha256"])

    def profile(self) -> Profile:
        """The instrument profile: shipped by name, or the bundle's own ``profile_file`` (a model
        trained on a user's profile carries it)."""
        own = self.settings.profile_file
        if own:
            return get_profile(str(self.path / own))
        return get_profile(self.manifest["profile"])

    def check_profile(self, profile: Profile, where: str = "input") -> None:
        """Refuse events whose features are not the ones the bundle was trained on, in order."""
        if tuple(n.lower() for n in profile.feature_names) != tuple(n.lower() for n in self.feature_names):
            fitting = shipped_for(profile)
            if fitting:
                hint = f"use --model {' or --model '.join(fitting)}"
            else:
                hint = (f"no shipped model is trained for profile {profile.name} (they read "
                        f"{', '.join(sorted(shipped_profiles()))}): these files can be read and inspected, but "
                        f"classifying them needs a model trained on this instrument's data: make one with "
                        f"edgehema train FOLDER --reference REF.csv --out BUNDLE (docs/training.md), then give "
                        f"--model BUNDLE")
            raise ProfileMismatchError(
                f"{where}: model {self.name} expects profile {self.profile_name} features "
                f"({', '.join(self.feature_names[:4])}...), the data has profile {profile.name} "
                f"({', '.join(profile.feature_names[:4])}...); {hint}"
            )

    def preprocess(self, events: np.ndarray) -> np.ndarray:
        """Raw features -> the graph's input, as the manifest's ``preprocessing`` says."""
        pre = self.manifest["preprocessing"]
        x = np.asarray(events, dtype=np.float32)
        transform = pre.get("transform", "none")
        if transform == "log1p":
            x = np.maximum(x, np.float32(0.0))  # a new array: the events are not touched
            np.log1p(x, out=x)
        elif transform == "none":
            x = x.copy()
        else:
            raise BundleError(f"{self.path / MANIFEST}: unknown preprocessing transform {transform!r}")
        mean, std, mean_rows, std_rows = self._standardisation
        if x.ndim != 2 or x.shape[1] != len(mean):
            return ((x - mean) / std).astype(np.float32, copy=False)
        # In place, in blocks of PRE_ROWS rows against the repeated mean and std (same results).
        blocks, tail = row_blocks(x, PRE_ROWS)
        blocks -= mean_rows
        blocks /= std_rows
        tail -= mean
        tail /= std
        return x

    @cached_property
    def _standardisation(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(mean, std) in float32, and both repeated PRE_ROWS times (made once per bundle)."""
        pre = self.manifest["preprocessing"]
        mean = np.asarray(pre["mean"], dtype=np.float32)
        std = np.asarray(pre["std"], dtype=np.float32)
        return mean, std, np.tile(mean, PRE_ROWS), np.tile(std, PRE_ROWS)

    def array(self, stage: str, key: str) -> np.ndarray:
        return np.asarray(self.manifest[stage][key], dtype=np.float64)


def bundled_root() -> Path:
    return Path(str(resources.files("edgehema.model").joinpath(BUNDLED_DIR)))


def bundled_models() -> list[str]:
    root = bundled_root()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / MANIFEST).is_file())


def resolve_bundle_path(path: str | os.PathLike | None) -> Path:
    if path is None:
        path = DEFAULT_BUNDLE
    p = Path(path)
    if p.is_dir():
        return p
    shipped = bundled_root() / str(path)
    if shipped.is_dir():
        return shipped
    if p.exists():
        raise BundleError(f"{p}: a model bundle is a directory holding {MANIFEST}")
    raise BundleError(f"{path}: no such model bundle (shipped: {', '.join(bundled_models()) or 'none'})")


def _shipped_manifests() -> dict[str, dict]:
    out = {}
    for name in bundled_models():
        try:
            out[name] = json.loads((bundled_root() / name / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
    return out


def shipped_profiles() -> set[str]:
    """The instrument profiles the shipped models read."""
    return {m.get("profile", "") for m in _shipped_manifests().values()}


def shipped_for(profile: Profile) -> list[str]:
    """Shipped bundles whose features are the profile's, in order."""
    want = tuple(n.lower() for n in profile.feature_names)
    return [name for name, m in _shipped_manifests().items()
            if tuple(n.lower() for n in m.get("features", ())) == want]


# ------------------------------------------------------------------ smear model folders
#: A smear model folder: model.onnx (its sha256 in the manifest), manifest.json, optionally
#: model.tflite (its own member) and model-float.onnx. Its identity is the manifest file's sha256.
SMEAR_GRAPH = "model.onnx"


@dataclass(frozen=True)
class SmearTflite:
    """A smear folder's TFLite member: the LiteRT form of the same detector."""

    file: str
    sha256: str
    #: The graph's output name (heatmap, size, offset) -> the TFLite tensor that holds it.
    outputs: dict[str, str]
    known_answer: dict[str, Any] | None
    size_bytes: int | None
    evaluation: dict[str, Any] | None  # on the export's val list (for people)
    parity: dict[str, Any] | None
    quantization: dict[str, Any] | None = None
    gates: dict[str, Any] | None = None  # limits, and the ones it failed
    #: Its own count thresholds (matched to the float model's counts on the training split), or
    #: None: the folder's.
    count_thresholds: dict[str, float] | None = None


@dataclass(frozen=True)
class SmearFolder:
    """A smear detector's folder, its manifest typed, the model file's sha256 checked at load."""

    path: Path
    #: sha256 of manifest.json: what a signature covers.
    digest: str
    manifest: dict[str, Any]
    name: str
    version: str
    classes: tuple[str, ...]
    input_size: tuple[int, int] | None  # width, height
    layout: str
    stride: int | None
    sha256: str
    known_answer: dict[str, Any] | None
    quantization: dict[str, Any] | None
    evaluation: dict[str, dict[str, Any]]  # "float" / "int8" -> report on the export's val list
    stain_reference: dict[str, Any] | None
    training: dict[str, Any]
    tflite: SmearTflite | None
    #: Red-cell diameter in pixels at which the detector sees cells (its ``scale.rbc_px``): images
    #: are resampled to it first. None: a detector made before the scale stage, run on the field as
    #: it comes (resized to its input).
    rbc_px: float | None = None
    #: Score from which a peak counts as a cell, per class (chosen on the training split), or None.
    count_thresholds: dict[str, float] | None = None
    #: A per-cell classifier's task (``wbc_type``, ``rbc_morphology``); "" for a detector.
    task: str = ""
    #: A classifier's crop side in red-cell diameters, the probability below which a cell is
    #: unclassified, and classes reported under another name (a platelet among white cells).
    crop_rbc: float | None = None
    unsure_below: float = 0.0
    report_as: dict[str, str] = field(default_factory=dict)
    #: Views of each cell a classifier averages its probabilities over (the crop, mirrored, turned):
    #: a cell has no up, and the average is steadier, int8 as float.
    views: int = 1
    #: The export's release gates: limits, and the ones this folder failed.
    gates: dict[str, Any] | None = None

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "SmearFolder":
        directory = Path(directory)
        path, mpath = directory / SMEAR_GRAPH, directory / MANIFEST
        if not path.is_file() or not mpath.is_file():
            raise BundleError(f"{directory}: a smear model folder holds {SMEAR_GRAPH} and {MANIFEST}")
        raw = mpath.read_bytes()
        m = read_manifest(mpath)
        if m.get("kind", "smear") != "smear":
            raise BundleError(f"{mpath}: kind {m.get('kind')!r}, not a smear model folder")
        if sha256_file(path) != m.get("sha256"):
            raise BundleError(f"{path}: sha256 differs from its manifest: the model file is damaged or replaced")

        def obj(v, where):
            if v is not None and not isinstance(v, dict):
                raise BundleError(f"{mpath}: {where} must be an object, not {v!r}")
            return v or None

        inp = obj(m.get("input"), "input") or {}
        t = obj(m.get("tflite"), "tflite")
        if t is not None and not (isinstance(t.get("file"), str) and isinstance(t.get("sha256"), str)):
            raise BundleError(f"{mpath}: tflite must name its file and sha256")
        scale = obj(m.get("scale"), "scale") or {}
        try:
            size = (int(inp["width"]), int(inp["height"])) if inp else None
            stride = int(m["stride"]) if m.get("stride") is not None else None
            rbc_px = float(scale["rbc_px"]) if scale else None
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{mpath}: input needs width and height, stride a whole number, scale its rbc_px "
                              f"({exc})") from None
        task = m.get("task", "")
        crop = obj(m.get("crop"), "crop") or {}
        try:
            crop_rbc = float(crop["rbc_diameters"]) if crop else None
            unsure = float(m.get("unsure_below", 0.0))
            views = int(m.get("views", 1))
            if views not in (1, 2, 4, 8):
                raise ValueError(f"views {views}: 1, 2, 4 or 8")
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{mpath}: crop needs rbc_diameters, unsure_below and views numbers ({exc})") from None
        report_as = obj(m.get("report_as"), "report_as") or {}
        if not isinstance(task, str) or (task and not m.get("classes")):
            raise BundleError(f"{mpath}: task must be a name, and a classifier must list its classes")
        return cls(
            task=task, crop_rbc=crop_rbc, gates=obj(m.get("gates"), "gates"), unsure_below=unsure, views=views,
            report_as={str(k): str(v) for k, v in report_as.items()},
            path=directory, digest=hashlib.sha256(raw).hexdigest(), manifest=m, name=str(m.get("name", directory.name)),
            version=str(m.get("version", "-")), classes=tuple(m.get("classes") or ()), input_size=size, rbc_px=rbc_px,
            count_thresholds=_thresholds(mpath, obj(m.get("count_thresholds"), "count_thresholds")),
            layout=str(inp.get("layout", "")), stride=stride, sha256=str(m["sha256"]),
            known_answer=obj(m.get("known_answer"), "known_answer"), quantization=obj(m.get("quantization"), "quantization"),
            evaluation=obj(m.get("evaluation") or m.get("evaluation_bccd_val"), "evaluation") or {},
            stain_reference=obj(m.get("stain_reference"), "stain_reference"), training=obj(m.get("training"), "training") or {},
            tflite=None if t is None else SmearTflite(
                file=t["file"], sha256=t["sha256"], outputs=dict(obj(t.get("outputs"), "tflite.outputs") or {}),
                known_answer=obj(t.get("known_answer"), "tflite.known_answer"), size_bytes=t.get("bytes"),
                evaluation=obj(t.get("evaluation") or t.get("evaluation_bccd_val"), "tflite.evaluation"),
                parity=obj(t.get("parity") or t.get("parity_bccd_val"), "tflite.parity"),
                quantization=obj(t.get("quantization"), "tflite.quantization"), gates=obj(t.get("gates"), "tflite.gates"),
                count_thresholds=_thresholds(mpath, obj(t.get("count_thresholds"), "tflite.count_thresholds"))))

    def tflite_for(self, path: Path) -> SmearTflite:
        """The member describing ``path`` (a file of this folder), its sha256 checked."""
        t = self.tflite
        if t is None or t.file != path.name:
            raise BundleError(f"{path}: not described by its folder's manifest (no tflite member for it)")
        if sha256_file(path) != t.sha256:
            raise BundleError(f"{path}: sha256 differs from its manifest: the model file is damaged or replaced")
        return t


def _thresholds(mpath: Path, v: dict | None) -> dict[str, float] | None:
    if v is None:
        return None
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and 0 <= x <= 1 for x in v.values()):
        raise BundleError(f"{mpath}: count_thresholds must give each class a score between 0 and 1, not {v!r}")
    return {k: float(x) for k, x in v.items()}


def folder_kind(directory: Path) -> str | None:
    """What a model folder's manifest says it is (``events``, the default, or ``smear``); None where
    the folder holds no readable manifest."""
    mpath = Path(directory) / MANIFEST
    try:
        return str(read_manifest(mpath).get("kind", "events")) if mpath.is_file() else None
    except BundleError:
        return None


def smear_stain_reference(directory: Path) -> dict[str, Any] | None:
    """The ``stain_reference`` of a smear folder's manifest, or None. Read without the model checks:
    an export writes it first, and evaluates the float model against it before model.onnx exists."""
    mpath = Path(directory) / MANIFEST
    if not mpath.is_file():
        return None
    found = read_manifest(mpath).get("stain_reference")
    if found is not None and not isinstance(found, dict):
        raise BundleError(f"{mpath}: stain_reference must be an object, not {found!r}")
    return found


def write_manifest(directory: Path, manifest: dict) -> None:
    """Write a smear folder's manifest (its identity is the file's own sha256, so no seal)."""
    (Path(directory) / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
