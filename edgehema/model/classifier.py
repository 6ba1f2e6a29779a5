"""The event classifier: one object, one job (as onnxruntime's InferenceSession).

``Classifier(bundle, backend)`` turns a sample's raw events into per-event class probabilities:
preprocessing from the manifest, the graph on the chosen backend in large batches, then the two
clustering stages in latent space, optionally adapted to the sample (docs/classifier.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgehema.exceptions import BundleError
from edgehema.model import classes as C
from edgehema.model import engine
from edgehema.model.bundle import Bundle
from edgehema.model.clustering import DiagonalGMM, adapt_centroids, assign_events, student_t_assign
from edgehema.model.selftest import SelfTest
from edgehema.profiles import Profile

#: Events used to adapt the mixtures to a sample (an evenly spaced subset of larger samples).
ADAPT_EVENTS = 15_000


@dataclass
class EventInference:
    """Per-event outputs for one sample."""

    probabilities: np.ndarray  # (n, 5) in classes.EVENT_CLASSES order
    labels: np.ndarray  # (n,) argmax
    recon_err: np.ndarray | None = None  # stage-1 reconstruction error (out-of-distribution score)
    adaptation: dict = field(default_factory=dict)
    #: The latents (z1, z2) of an adapted sample, so that its unadapted assignment can be made when
    #: the adaptation is judged (counts.result); None otherwise.
    latents: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)


class Classifier:
    """Classify events with a bundle on a backend (``onnx``; ``auto`` picks what is installed)."""

    def __init__(
        self,
        bundle: Bundle | str | None = None,
        backend: str = "auto",
        adapt: bool = True,
        batch_size: int = 4096,  # cache-sized: 2.7x faster than one 150k batch (intermediates stay in cache)
        threads: int | None = None,
        adapt_prior: float = 3.0,
        selftest: bool = True,
    ) -> None:
        self.adapt_prior = adapt_prior
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
        self.adapt = adapt
        self.batch_size = batch_size
        if self.bundle.kind == "two-stage-idec-vade":
            s = self.bundle.settings
            # Latent-space work is float32 end to end: the latents are, and it halves the time.
            self.centroids = self.bundle.array("stage1", "centroids").astype(np.float32)
            self.alpha = s.stage1_alpha
            self.stage1_classes = s.stage1_cluster_classes
            self.gmm = DiagonalGMM(*(self.bundle.array("stage2", k).astype(np.float32)
                                     for k in ("weights", "means", "variances")))
            self.stage2_classes = s.stage2_component_classes
            if set(self.stage1_classes) != {"noise", "plt", "rbc_side"} or set(self.stage2_classes) != {"rbc", "retic", "coincidence"}:
                raise BundleError(f"{self.bundle.path}: stage class maps must be noise/plt/rbc_side and rbc/retic/coincidence")
        if tuple(self.bundle.classes) != C.EVENT_CLASSES:
            raise BundleError(f"{self.bundle.path}: classes {self.bundle.classes} are not {C.EVENT_CLASSES}")
        #: Why engines were passed over (not installed, or failed the known-answer self-test).
        self.refused: list[str] = []
        self.selftest: SelfTest | None = None
        self.backend = None
        # The first engine that loads and passes the bundle's known answer (edgehema.model.engine).
        choice = engine.open_engine(self, backend, threads, selftest)
        self.backend, self.selftest, self.refused = choice.backend, choice.selftest, choice.refused

    def check_kernels(self, out: dict[str, np.ndarray] | None = None) -> str | None:
        """The compiled latent-space kernels against numpy on the known answer (edgehema.model.engine)."""
        return engine.check_kernels(self, out)

    def can_run_unfused(self) -> bool:
        return engine.can_run_unfused(self)

    def run_unfused(self, threads: int | None = None) -> SelfTest:
        """The graph without onnxruntime's fused int8 kernels (exact on every CPU), its known answer run."""
        return engine.run_unfused(self, threads)

    @property
    def backend_name(self) -> str:
        return self.backend.name

    @property
    def ran(self) -> dict:
        """What computed the latents: the bundle's file this backend runs, its sha256 and precision.
        A TFLite bundle also carries its float ONNX graph, and ``--backend onnx`` runs that one."""
        s = self.bundle.settings
        if self.backend.name == "tflite":
            file = s.tflite_file
            precision = "int8" if s.target.endswith("int8") else "float32"
        else:
            file = s.graph_file
            precision = "int8" if s.target == "onnx-int8" else "float32"
        out = {"file": file, "file_sha256": s.files.get(file, ""), "precision": precision}
        if getattr(self.backend, "fused", True) is False:
            out["graph"] = "unfused"  # fused int8 kernels failed the known answer on this CPU
        return out

    def check(self, profile: Profile, where: str) -> None:
        self.bundle.check_profile(profile, where)

    def run_graph(self, events: np.ndarray) -> dict[str, np.ndarray]:
        """Preprocess and run the graph in batches; concatenated outputs."""
        outs: dict[str, list[np.ndarray]] = {}
        for start in range(0, max(len(events), 1), self.batch_size):
            x = self.bundle.preprocess(events[start : start + self.batch_size])
            for k, v in self.backend.run(x).items():
                outs.setdefault(k, []).append(v)
        return {k: np.concatenate(v) if len(v) > 1 else v[0] for k, v in outs.items()}

    def infer(self, events: np.ndarray, adapt: bool | None = None) -> EventInference:
        return self.from_graph(self.run_graph(events), adapt)

    def from_graph(self, out: dict[str, np.ndarray], adapt: bool | None = None) -> EventInference:
        """Classes from the graph's outputs (``run_graph``)."""
        adapt = self.adapt if adapt is None else adapt
        if self.bundle.kind == "softmax-classifier":
            p = out["probabilities"].astype(np.float32, copy=False)
            return EventInference(p, p.argmax(1).astype(np.uint8))
        return self.combine(out["z1"], out["z2"], out.get("recon_err"), adapt)

    def combine(self, z1: np.ndarray, z2: np.ndarray, recon_err: np.ndarray | None, adapt: bool) -> EventInference:
        """Stage 1 (RBC side / PLT / noise) times stage 2 (normal / retic / coincidence)."""
        z1 = np.asarray(z1, dtype=np.float32)
        z2 = np.asarray(z2, dtype=np.float32)
        centroids, gmm, info = self.centroids, self.gmm, {"adapted": False}
        if adapt and len(z1) >= 1000:
            # Population parameters need no more than a few tens of thousands of events: adapt on an
            # evenly spaced subset (deterministic, spans the whole acquisition), assign all events.
            step = max(1, len(z1) // ADAPT_EVENTS)
            sz1, sz2 = z1[::step], z2[::step]
            centroids = adapt_centroids(sz1, self.centroids, self.alpha, prior_share=self.adapt_prior)
            side_sub = student_t_assign(sz1, centroids, self.alpha)[:, self.stage1_classes.index("rbc_side")]
            gmm = self.gmm.adapt(sz2, mask=side_sub, prior_share=self.adapt_prior)
            info = {
                "adapted": True,
                "stage1_centroid_shift": float(np.linalg.norm(centroids - self.centroids, axis=1).max()),
                "stage2_mean_shift": float(np.linalg.norm(gmm.means - self.gmm.means, axis=1).max()),
            }
        p, labels = assign_events(z1, z2, centroids, self.alpha, gmm, self.stage1_classes, self.stage2_classes)
        return EventInference(p, labels, recon_err, info, (z1, z2) if info["adapted"] else None)

    def unadapted(self, inf: EventInference) -> EventInference | None:
        """The trained populations' assignment of an adapted sample (None: it was not adapted)."""
        if inf.latents is None:
            return None
        z1, z2 = inf.latents
        p, labels = assign_events(z1, z2, self.centroids, self.alpha, self.gmm, self.stage1_classes, self.stage2_classes)
        return EventInference(p, labels, inf.recon_err, {"adapted": False})
