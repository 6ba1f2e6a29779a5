"""PyTorch modules of the reference model (workstation side; needs the ``export`` extra).

Stage 1: an autoencoder whose latent space is clustered by IDEC (Student's t soft assignment to
learnable centroids, reconstruction loss kept). Stage 2: a VaDE, a variational autoencoder whose
prior is a Gaussian mixture, on the red-cell-side events. ``InferenceGraph`` is what is exported to
ONNX: preprocessed features in, stage-1 latent, reconstruction error and stage-2 latent out; the
mixture parameters travel in the bundle manifest so the device can adapt them per sample.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class IDEC(nn.Module):
    def __init__(self, n_features: int, latent: int, hidden: tuple[int, ...], n_clusters: int, alpha: float = 1.0):
        super().__init__()
        self.encoder = mlp([n_features, *hidden, latent])
        self.decoder = mlp([latent, *reversed(hidden), n_features])
        self.centroids = nn.Parameter(torch.zeros(n_clusters, latent))
        self.alpha = alpha

    def assign(self, z: torch.Tensor) -> torch.Tensor:
        d2 = torch.cdist(z, self.centroids).pow(2)
        logits = -0.5 * (self.alpha + 1.0) * torch.log1p(d2 / self.alpha)
        return torch.softmax(logits, dim=1)

    def forward(self, x: torch.Tensor):
        z = self.encoder(x)
        return z, self.decoder(z), self.assign(z)


class VaDE(nn.Module):
    def __init__(self, n_features: int, latent: int, hidden: tuple[int, ...], n_components: int):
        super().__init__()
        self.body = mlp([n_features, *hidden])
        self.body.append(nn.ReLU())
        self.mu = nn.Linear(hidden[-1], latent)
        self.logvar = nn.Linear(hidden[-1], latent)
        self.decoder = mlp([latent, *reversed(hidden), n_features])
        self.pi_logits = nn.Parameter(torch.zeros(n_components))
        self.mu_c = nn.Parameter(torch.zeros(n_components, latent))
        self.logvar_c = nn.Parameter(torch.zeros(n_components, latent))

    def encode(self, x: torch.Tensor):
        h = self.body(x)
        return self.mu(h), self.logvar(h).clamp(-8.0, 4.0)

    def log_joint(self, z: torch.Tensor) -> torch.Tensor:
        """log pi_c + log N(z | mu_c, var_c): (N, C)."""
        var = self.logvar_c.exp()
        diff2 = (z[:, None, :] - self.mu_c[None]) ** 2
        ll = -0.5 * ((diff2 / var[None]).sum(2) + (self.logvar_c + math.log(2 * math.pi)).sum(1)[None])
        return ll + torch.log_softmax(self.pi_logits, 0)[None]

    def gamma(self, z: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.log_joint(z), dim=1)

    def elbo_terms(self, x: torch.Tensor):
        """Reconstruction and the VaDE KL term (Jiang et al., IJCAI 2017, eq. 17), per event."""
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        recon = ((self.decoder(z) - x) ** 2).sum(1)
        gamma = torch.softmax(self.log_joint(z), dim=1)
        var_c = self.logvar_c.exp()[None]
        term = (self.logvar_c[None] + logvar.exp()[:, None, :] / var_c + (mu[:, None, :] - self.mu_c[None]) ** 2 / var_c)
        kl = 0.5 * (gamma * term.sum(2)).sum(1)
        log_pi = torch.log_softmax(self.pi_logits, 0)[None]
        kl = kl - (gamma * (log_pi - torch.log(gamma + 1e-10))).sum(1) - 0.5 * (1 + logvar).sum(1)
        return recon, kl, mu


class InferenceGraph(nn.Module):
    """The exported graph: x (preprocessed) -> z1, recon_err, z2."""

    def __init__(self, idec: IDEC, vade: VaDE):
        super().__init__()
        self.enc1 = idec.encoder
        self.dec1 = idec.decoder
        self.body2 = vade.body
        self.mu2 = vade.mu

    def forward(self, x: torch.Tensor):
        z1 = self.enc1(x)
        recon_err = ((self.dec1(z1) - x) ** 2).mean(dim=1)
        z2 = self.mu2(self.body2(x))
        return z1, recon_err, z2


class SupervisedMLP(nn.Module):
    """Upper-bound baseline: trained with per-event labels, which the reference model never sees."""

    def __init__(self, n_features: int, n_classes: int, hidden: tuple[int, ...] = (64, 64)):
        super().__init__()
        self.net = mlp([n_features, *hidden, n_classes])

    def forward(self, x: torch.Tensor):
        return torch.softmax(self.net(x), dim=1)
