"""Latent-space assignment of the two clustering stages, and per-sample adaptation.

Stage 1 (IDEC) assigns each event to clusters with a Student's t kernel around centroids
(``q_ij`` of the reference paper, section 4.2). Stage 2 (VaDE) assigns red-cell-side events to the
components of a Gaussian mixture (diagonal covariances) that is the VAE's prior.

Adaptation: a sample from a shifted instrument (gain drift) or an unusual animal moves its
clusters a little in latent space. A few EM iterations on the sample's own latent points, started
from the bundled parameters and held near them by a conjugate prior (MAP), follow that move
without letting a small population collapse or wander off.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from edgehema.model import classes as C

try:  # built from _fastassign.c at install time where a C compiler is present (optional)
    from edgehema.model import _fastassign
except ImportError:  # pragma: no cover - depends on the build
    _fastassign = None

#: Latent-space kernels: ``auto`` (the compiled ones where built, else numpy) or ``numpy``.
#: Environment: EDGEHEMA_KERNELS.
KERNELS = os.environ.get("EDGEHEMA_KERNELS", "auto").strip().lower()


def kernels_available() -> bool:
    """True when the compiled latent-space kernels were built with this installation."""
    return _fastassign is not None


def _compiled(*shapes: tuple[int, int]) -> bool:
    """Whether to use the kernels for (clusters, latent units) shapes like these: larger models than
    the kernels take (their MAX_CLUSTERS, MAX_LATENT) are assigned by numpy."""
    return (KERNELS != "numpy" and _fastassign is not None
            and all(1 <= k <= _fastassign.MAX_CLUSTERS and 1 <= d <= _fastassign.MAX_LATENT for k, d in shapes))


def _f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def _f64(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float64)


def student_t_assign(z: np.ndarray, centroids: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    """q_ij = (1 + |z_i - mu_j|^2 / alpha)^(-(alpha+1)/2), normalised over j."""
    d2 = _sq_dist(z, centroids)
    if alpha == 1.0:
        # The common case (IDEC's alpha = 1) is a plain reciprocal: no log and exp per entry.
        w = 1.0 / (1.0 + d2)
        total = w[:, 0].copy()
        for k in range(1, w.shape[1]):
            total += w[:, k]
        w /= total[:, None]
        return w
    logits = -0.5 * (alpha + 1.0) * np.log1p(d2 / alpha)
    return _softmax(logits)


@dataclass
class DiagonalGMM:
    weights: np.ndarray  # (K,)
    means: np.ndarray  # (K, D)
    variances: np.ndarray  # (K, D)

    def log_joint(self, z: np.ndarray) -> np.ndarray:
        """log pi_k + log N(z | mu_k, diag var_k), shape (N, K)."""
        inv = 1.0 / self.variances  # (K, D)
        # sum_d (z - mu)^2 / var expanded into matrix products: no (N, K, D) temporary.
        quad = (z * z) @ inv.T - 2.0 * z @ (self.means * inv).T + np.sum(self.means**2 * inv, axis=1)[None, :]
        const = np.sum(np.log(2 * np.pi * self.variances), axis=1) - 2.0 * np.log(np.maximum(self.weights, 1e-12))
        return -0.5 * (quad + const[None, :])

    def responsibilities(self, z: np.ndarray) -> np.ndarray:
        return _softmax(self.log_joint(z))

    def kernel_terms(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(1 / variances, means, sum log(2 pi var) - 2 log weight) in float64, for the kernels."""
        var = _f64(self.variances)
        const = np.sum(np.log(2 * np.pi * var), axis=1) - 2.0 * np.log(np.maximum(_f64(self.weights), 1e-12))
        return 1.0 / var, _f64(self.means), const

    def adapt(self, z: np.ndarray, iterations: int = 5, prior_share: float = 1.0, mask: np.ndarray | None = None,
              min_weight: float = 1e-4) -> "DiagonalGMM":
        """MAP-EM of the means and weights on the points ``z`` (optionally weighted by ``mask``).

        Each component's mean is held by a prior worth ``prior_share`` times the events the
        bundled weights expect in it, so it moves halfway to where the sample puts it: far enough
        to follow a gain drift, not so far that EM re-clusters the bulk of red cells into new
        components. Variances stay as trained (refitting them lets a component swallow another).
        """
        w = np.ones(len(z), dtype=z.dtype) if mask is None else np.asarray(mask, dtype=z.dtype)
        total = w.sum()
        cur = DiagonalGMM(self.weights.copy(), self.means.copy(), self.variances.copy())
        compiled = _compiled(self.means.shape) and z.dtype == np.float32
        if compiled:
            z, w = _f32(z), _f32(w)
            k, d = self.means.shape
            nk64, rz64 = np.empty(k), np.empty((k, d))
        for _ in range(iterations):
            if compiled:
                _fastassign.gmm_sums(len(z), z, d, w, *cur.kernel_terms(), k, nk64, rz64)
                nk, rz = nk64.astype(z.dtype), rz64.astype(z.dtype)
            else:
                r = cur.responsibilities(z) * w[:, None]
                nk, rz = r.sum(axis=0), r.T @ z
            tau = prior_share * total * self.weights[:, None]
            mu = (rz + tau * self.means) / (nk[:, None] + tau)
            pi = np.maximum(nk / max(total, 1e-12), min_weight)
            cur = DiagonalGMM(pi / pi.sum(), mu, self.variances.copy())
        return cur


def adapt_centroids(z: np.ndarray, centroids: np.ndarray, alpha: float = 1.0, iterations: int = 5,
                    prior_share: float = 1.0) -> np.ndarray:
    """Stage-1 centroids re-estimated on one sample, held near the bundled ones (MAP).

    Each centroid moves towards the mean of the events assigned to it, against a prior worth
    ``prior_share`` times those events: halfway at 1.0. Hard assignment, not the soft q: the
    Student's t kernel is heavy-tailed, so soft means would drag a small cluster (platelets)
    towards the bulk of red cells.
    """
    mu = centroids.copy()
    compiled = _compiled(centroids.shape) and z.dtype == np.float32
    if compiled:
        z = _f32(z)
        k, d = centroids.shape
        nk64, sums64 = np.empty(k), np.empty((k, d))
    for _ in range(iterations):
        if compiled:
            # The largest Student's t weight is the nearest centroid, whatever alpha.
            _fastassign.nearest_sums(len(z), z, d, _f64(mu), k, nk64, sums64)
            nk, sums = nk64.astype(z.dtype), sums64.astype(z.dtype)
        else:
            hard = student_t_assign(z, mu, alpha).argmax(axis=1)
            w = np.zeros((len(z), len(mu)), dtype=z.dtype)
            w[np.arange(len(z)), hard] = 1.0
            nk, sums = w.sum(axis=0), w.T @ z
        tau = prior_share * np.maximum(nk, 1.0)
        mu = (sums + tau[:, None] * centroids) / (nk[:, None] + tau[:, None])
    return mu


def assign_events(z1: np.ndarray, z2: np.ndarray, centroids: np.ndarray, alpha: float, gmm: DiagonalGMM,
                  stage1_classes: tuple[str, ...], stage2_classes: tuple[str, ...],
                  kernels: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities (n, 5) in classes.EVENT_CLASSES order, labels (n,) uint8) of every event.

    Stage 1 gives noise, platelets and the red-cell side; stage 2 splits the red-cell side into
    normal red cells, reticulocytes and coincidences. The label is the first largest probability.
    ``kernels=False``: numpy, whatever is built (the reference the kernels are checked against).
    """
    n = len(z1)
    p = np.empty((n, len(C.EVENT_CLASSES)), dtype=np.float32)
    s1 = [stage1_classes.index(x) for x in ("noise", "plt", "rbc_side")]
    s2 = [stage2_classes.index(x) for x in ("rbc", "retic", "coincidence")]
    if kernels and _compiled(centroids.shape, gmm.means.shape) and z1.dtype == np.float32 and z2.dtype == np.float32:
        labels = np.empty(n, dtype=np.uint8)
        layout = bytes(s1 + s2 + [C.NOISE, C.PLT, C.RBC, C.RETIC, C.COINCIDENCE])
        z1, z2 = _f32(z1), _f32(z2)
        _fastassign.assign(n, z1, z2, z1.shape[1], z2.shape[1], _f64(centroids), len(centroids), float(alpha),
                           *gmm.kernel_terms(), len(gmm.weights), layout, p, labels)
        return p, labels
    q1 = student_t_assign(z1, centroids, alpha)
    side = q1[:, s1[2]]
    g = gmm.responsibilities(z2)
    p[:, C.NOISE] = q1[:, s1[0]]
    p[:, C.PLT] = q1[:, s1[1]]
    for code, k in zip((C.RBC, C.RETIC, C.COINCIDENCE), s2):
        p[:, code] = side * g[:, k]
    return p, p.argmax(1).astype(np.uint8)


def kernel_disagreement(z1: np.ndarray, z2: np.ndarray, centroids: np.ndarray, alpha: float, gmm: DiagonalGMM,
                        stage1_classes: tuple[str, ...], stage2_classes: tuple[str, ...]) -> str | None:
    """Why the compiled kernels cannot be trusted on these latents (None: they agree with numpy).

    A start-up check, as the bundle's known answer is for the graph engines: a compiler or a CPU
    that computes the kernels differently is caught before counting, not found in the counts.
    Agreement asked: probabilities within 1e-4, and a class different only where numpy's two
    largest probabilities tie to 1e-5.
    """
    if not _compiled(centroids.shape, gmm.means.shape):
        return None
    z1, z2 = _f32(z1), _f32(z2)
    args = (z1, z2, centroids, alpha, gmm, stage1_classes, stage2_classes)
    p_fast, l_fast = assign_events(*args)
    p_ref, l_ref = assign_events(*args, kernels=False)
    worst = float(np.abs(p_fast - p_ref).max()) if len(p_ref) else 0.0
    differ = l_fast != l_ref
    top2 = np.sort(p_ref[differ], axis=1)[:, -2:]
    if worst > 1e-4 or not np.all(top2[:, 1] - top2[:, 0] < 1e-5):
        return (f"the compiled latent-space kernels disagree with numpy on this machine (largest probability "
                f"difference {worst:.2g}, {int(differ.sum())} of {len(l_ref):,} classes differ)")
    return None


_FAILED_CHECK = False


def use_numpy_kernels() -> None:
    """Assign with numpy from now on, in this process (the kernels failed their check)."""
    global KERNELS, _FAILED_CHECK
    KERNELS, _FAILED_CHECK = "numpy", True


def kernels_state() -> str:
    """What assigns events in this process, in words (``edgehema selftest``)."""
    if _FAILED_CHECK:
        return "numpy (the compiled kernels disagreed with numpy on this machine's known answer)"
    if _fastassign is None:
        return "numpy (the compiled kernels were not built: no C compiler at install time)"
    if KERNELS == "numpy":
        return "numpy (EDGEHEMA_KERNELS=numpy)"
    return "compiled (edgehema/model/_fastassign.c), checked against numpy on the known answer at load"


def _sq_dist(z: np.ndarray, c: np.ndarray) -> np.ndarray:
    # |z|^2 by einsum: numpy reduces a short last axis (D = 4) slowly with .sum(1).
    zz = np.einsum("ij,ij->i", z, z)
    return np.maximum(zz[:, None] - 2 * z @ c.T + (c * c).sum(1)[None, :], 0.0)


def _softmax(logits: np.ndarray) -> np.ndarray:
    # Row max and sum column by column: numpy reduces a short last axis (K = 3) slowly, row by row.
    m = logits[:, 0].copy()
    for k in range(1, logits.shape[1]):
        np.maximum(m, logits[:, k], out=m)
    e = np.exp(logits - m[:, None])
    total = e[:, 0].copy()
    for k in range(1, e.shape[1]):
        total += e[:, k]
    e /= total[:, None]
    return e
