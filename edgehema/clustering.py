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

from dataclasses import dataclass

import numpy as np


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
        for _ in range(iterations):
            r = cur.responsibilities(z) * w[:, None]
            nk = r.sum(axis=0)
            tau = prior_share * total * self.weights[:, None]
            mu = (r.T @ z + tau * self.means) / (nk[:, None] + tau)
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
    for _ in range(iterations):
        hard = student_t_assign(z, mu, alpha).argmax(axis=1)
        w = np.zeros((len(z), len(mu)), dtype=z.dtype)
        w[np.arange(len(z)), hard] = 1.0
        nk = w.sum(axis=0)
        tau = prior_share * np.maximum(nk, 1.0)
        mu = (w.T @ z + tau[:, None] * centroids) / (nk[:, None] + tau[:, None])
    return mu


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
