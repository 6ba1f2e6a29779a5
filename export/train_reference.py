"""Training recipe of the reference model: AE + IDEC (RBC vs PLT), then VaDE (normal RBC /
reticulocyte / coincidence), weakly supervised by sample-level counts only.

Runs on a workstation CPU (2 cores: about 5 minutes at the default scale), deterministic for a
seed, and writes float ONNX bundles (docs/bundle.md):

    python -m export.train_reference --out edgehema/models          # the shipped models
    python -m export.train_reference --out /tmp/m --scale tiny       # the CI smoke run

Supervision, as in the reference paper: each simulated sample contributes only its truth
*counts* (how many noise, platelet, red-cell, reticulocyte and coincidence events it holds). A
training batch is a bag of events from one sample, and the model's mean class assignment over the
bag is pulled towards the sample's proportions (learning from label proportions), alongside the
reconstruction and clustering losses of IDEC and the ELBO of VaDE. Per-event labels are never
used, except by the separate supervised MLP baseline, which exists to show the upper bound.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgehema import classes as C
from edgehema.bundle import FORMAT
from edgehema.profiles import get_profile
from edgehema.simulator import PATHOLOGIES, InstrumentSettings, SampleSimulator

from .models import IDEC, InferenceGraph, SupervisedMLP, VaDE
# One implementation of the shared steps: edgehema train (export/training) uses the same ones.
from .training.fit import FitSettings, _step, entropy, export_onnx, kmeans, write_bundle

STAGE1_CLASSES = ("noise", "plt", "rbc_side")
STAGE2_CLASSES = ("rbc", "retic", "coincidence")


@dataclass
class Recipe:
    species: tuple[str, ...] = ("human", "dog", "cat", "horse", "cattle")
    samples_per_species: int = 40
    events_per_sample: int = 30_000
    pathology_share: float = 0.35
    seed: int = 20261123
    # The model's settings are edgehema train's (export/training/fit.py), one source of truth.
    latent1: int = FitSettings.latent1
    latent2: int = FitSettings.latent2
    hidden: tuple[int, ...] = FitSettings.hidden
    bag: int = FitSettings.bag
    lr: float = FitSettings.lr
    pretrain_steps: int = FitSettings.pretrain_steps
    fine_clusters: int = FitSettings.fine_clusters
    stage1_steps: int = FitSettings.stage1_steps
    stage2_steps: int = FitSettings.stage2_steps
    supervised_steps: int = 2500
    llp_weight: float = FitSettings.llp_weight
    idec_kl_weight: float = FitSettings.idec_kl_weight
    vade_kl_weight: float = FitSettings.vade_kl_weight
    entropy_weight: float = FitSettings.entropy_weight
    threads: int = 2
    extra: dict = field(default_factory=dict)

    @classmethod
    def tiny(cls) -> "Recipe":
        return cls(samples_per_species=3, events_per_sample=6000, bag=1024, pretrain_steps=60, fine_clusters=8,
                   stage1_steps=120, stage2_steps=120, supervised_steps=80)


# ------------------------------------------------------------------ data
@dataclass
class TrainingSample:
    x: np.ndarray  # preprocessed events
    labels: np.ndarray  # only for the supervised baseline and for reporting
    stage1_props: np.ndarray  # noise, plt, rbc_side (from truth counts)
    stage2_props: np.ndarray  # rbc, retic, coincidence among the red-cell side
    truth: dict


def simulate_training_set(recipe: Recipe) -> list[dict]:
    """Simulated samples across species, pathologies, gain and dilution (what a lab would collect)."""
    rng = np.random.default_rng(recipe.seed)
    out = []
    for si, species in enumerate(recipe.species):
        for k in range(recipe.samples_per_species):
            pathology = None
            if rng.random() < recipe.pathology_share:
                pathology = sorted(PATHOLOGIES)[int(rng.integers(len(PATHOLOGIES)))]
            # Instruments differ in cleanliness too: electronic noise and debris vary, which is what
            # lets sample-level counts tell noise events apart.
            ins = InstrumentSettings(
                dilution=float(rng.uniform(350, 1000)),
                gain=float(rng.uniform(0.95, 1.05)),
                gain_drift=float(rng.uniform(-0.03, 0.03)),
                electronic_noise_per_s=float(rng.uniform(0.0, 80.0)),
                debris_per_ul=float(rng.uniform(10.0, 400.0)),
            )
            sim = SampleSimulator(species, pathology, ins, seed=int(recipe.seed + 1000 * si + k))
            s = sim.generate(recipe.events_per_sample)
            out.append({"events": s.sample.events, "labels": s.labels, "truth": s.truth})
    return out


def preprocessing_stats(raw: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    allx = np.log1p(np.maximum(np.concatenate([r["events"] for r in raw]), 0.0)).astype(np.float64)
    return allx.mean(0), np.maximum(allx.std(0), 1e-3)


def to_training(raw: list[dict], mean: np.ndarray, std: np.ndarray) -> list[TrainingSample]:
    out = []
    for r in raw:
        x = ((np.log1p(np.maximum(r["events"], 0.0)) - mean) / std).astype(np.float32)
        e = r["truth"]["events"]
        total = e["total"]
        p1 = np.array([e["noise"], e["plt"], e["rbc"] + e["retic"] + e["coincidence"]], dtype=np.float64) / total
        side = max(e["rbc"] + e["retic"] + e["coincidence"], 1)
        p2 = np.array([e["rbc"], e["retic"], e["coincidence"]], dtype=np.float64) / side
        out.append(TrainingSample(x, r["labels"], p1, p2, r["truth"]))
    return out


# --------------------------------------------------------------- losses
def llp_loss(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Bag proportions against the sample's: per-class Bernoulli KL, so a rare class (noise,
    reticulocytes) counts as much as its share allows rather than vanishing beside red cells."""
    p = pred.mean(0).clamp(1e-6, 1 - 1e-6)
    t = target.clamp(1e-9, 1 - 1e-9)
    kl = t * (t.log() - p.log()) + (1 - t) * ((1 - t).log() - (1 - p).log())
    return (kl if weights is None else kl * weights).sum()


def class_weights(props: list[np.ndarray]) -> torch.Tensor:
    mean = np.stack(props).mean(0)
    w = 1.0 / np.sqrt(np.maximum(mean, 1e-4))
    return torch.from_numpy(w / w.sum() * len(w)).float()


def cluster_composition(hist: torch.Tensor, props: torch.Tensor, steps: int = 3000) -> torch.Tensor:
    """Class composition of each fine cluster from sample-level counts only.

    hist (samples x K) holds each sample's share of events per cluster, props (samples x C) its
    class proportions. Find M (K x C, rows on the simplex) with hist @ M ~ props: a proportion
    regression across samples, the weak supervision of the paper made explicit.
    """
    logits = torch.zeros(hist.shape[1], props.shape[1], requires_grad=True)
    opt = torch.optim.Adam([logits], lr=0.05)
    for _ in range(steps):
        m = torch.softmax(logits, 1)
        loss = ((hist @ m - props) ** 2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return torch.softmax(logits, 1).detach()


def init_from_counts(latents: list[torch.Tensor], props: list[np.ndarray], n_fine: int, seed: int):
    """Centroids (C x D), per-class variances and weights from a fine clustering + proportion regression."""
    pool = torch.cat([z[:3000] for z in latents])
    centres = kmeans(pool, n_fine, seed)
    hist = torch.stack([torch.bincount(torch.cdist(z, centres).argmin(1), minlength=n_fine).float() / len(z)
                        for z in latents])
    m = cluster_composition(hist, torch.from_numpy(np.stack(props)).float())
    assign = torch.cdist(pool, centres).argmin(1)
    w = m[assign]  # (events, C): each event's class membership from its cluster's composition
    nk = w.sum(0).clamp_min(1e-6)
    mean = (w.T @ pool) / nk[:, None]
    var = ((w.T @ (pool * pool)) / nk[:, None] - mean**2).clamp_min(1e-3)
    return mean, var, nk / nk.sum(), m


def bag(rng: np.random.Generator, data: list[TrainingSample], size: int, select=None):
    i = int(rng.integers(len(data)))
    s = data[i]
    pool = np.arange(len(s.x)) if select is None else select[i]
    idx = rng.choice(pool, size=min(size, len(pool)), replace=len(pool) < size)
    return s, torch.from_numpy(s.x[idx]), i


# ---------------------------------------------------------------- stages
def train_stage1(recipe: Recipe, data: list[TrainingSample], log, history: list) -> IDEC:
    rng = np.random.default_rng(recipe.seed + 1)
    nf = data[0].x.shape[1]
    model = IDEC(nf, recipe.latent1, recipe.hidden, len(STAGE1_CLASSES))
    opt = torch.optim.Adam(list(model.encoder.parameters()) + list(model.decoder.parameters()), lr=recipe.lr)
    for step in range(recipe.pretrain_steps):  # autoencoder pretraining
        _, xb, _ = bag(rng, data, recipe.bag)
        z = model.encoder(xb)
        loss = ((model.decoder(z) - xb) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    log(f"stage 1 AE pretrain: recon {loss.item():.4f}")
    # Initial centroids, still from sample-level counts only: fine k-means clusters of the latent
    # space, each cluster's class composition regressed on the samples' proportions.
    with torch.no_grad():
        latents = [model.encoder(torch.from_numpy(s.x)) for s in data]
    mean, _, _, comp = init_from_counts(latents, [s.stage1_props for s in data], recipe.fine_clusters, recipe.seed)
    log(f"stage 1 init: {recipe.fine_clusters} fine clusters, purity {comp.max(1).values.mean().item():.3f}")
    with torch.no_grad():
        model.centroids.copy_(mean)
    w1 = class_weights([s.stage1_props for s in data])
    opt = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    for step in range(recipe.stage1_steps):
        s, xb, _ = bag(rng, data, recipe.bag)
        z, xr, q = model(xb)
        recon = ((xr - xb) ** 2).mean()
        with torch.no_grad():  # IDEC target distribution: sharpened, frequency-normalised q
            p = q**2 / q.sum(0)
            p = p / p.sum(1, keepdim=True)
        kl = (p * (p.clamp_min(1e-10).log() - q.clamp_min(1e-10).log())).sum(1).mean()
        llp = llp_loss(q, torch.from_numpy(s.stage1_props).float(), w1)
        ent = entropy(q)
        loss = recon + recipe.idec_kl_weight * kl + recipe.llp_weight * llp + recipe.entropy_weight * ent
        _step(opt, loss, history)
        if step % 500 == 0 or step == recipe.stage1_steps - 1:
            log(f"stage 1 IDEC step {step}: recon {recon.item():.4f} kl {kl.item():.4f} llp {llp.item():.5f} "
                f"entropy {ent.item():.4f}")
    return model


def rbc_side_indices(model: IDEC, data: list[TrainingSample]) -> list[np.ndarray]:
    out = []
    with torch.no_grad():
        for s in data:
            _, _, q = model(torch.from_numpy(s.x))
            out.append(np.flatnonzero(q.argmax(1).numpy() == STAGE1_CLASSES.index("rbc_side")))
    return out


def train_stage2(recipe: Recipe, data: list[TrainingSample], side: list[np.ndarray], log, history: list) -> VaDE:
    rng = np.random.default_rng(recipe.seed + 2)
    nf = data[0].x.shape[1]
    model = VaDE(nf, recipe.latent2, recipe.hidden, len(STAGE2_CLASSES))
    enc_dec = [p for n, p in model.named_parameters() if n not in ("pi_logits", "mu_c", "logvar_c")]
    opt = torch.optim.Adam(enc_dec, lr=recipe.lr)
    for _ in range(recipe.pretrain_steps):  # as an autoencoder on the means
        _, xb, _ = bag(rng, data, recipe.bag, side)
        mu, _ = model.encode(xb)
        loss = ((model.decoder(mu) - xb) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    log(f"stage 2 VAE pretrain: recon {loss.item():.4f}")
    with torch.no_grad():  # mixture prior initialised from sample-level counts (as stage 1)
        latents = [model.encode(torch.from_numpy(s.x[idx]))[0] for s, idx in zip(data, side)]
    mean, var, weights, comp = init_from_counts(latents, [s.stage2_props for s in data], recipe.fine_clusters,
                                                recipe.seed + 7)
    log(f"stage 2 init: {recipe.fine_clusters} fine clusters, purity {comp.max(1).values.mean().item():.3f}")
    with torch.no_grad():
        model.mu_c.copy_(mean)
        model.logvar_c.copy_(var.log())
        model.pi_logits.copy_(weights.log())
    w2 = class_weights([s.stage2_props for s in data])
    opt = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    for step in range(recipe.stage2_steps):
        s, xb, _ = bag(rng, data, recipe.bag, side)
        recon, kl, mu = model.elbo_terms(xb)
        g = model.gamma(mu)
        llp = llp_loss(g, torch.from_numpy(s.stage2_props).float(), w2)
        ent = entropy(g)
        loss = recon.mean() + recipe.vade_kl_weight * kl.mean() + recipe.llp_weight * llp + recipe.entropy_weight * ent
        _step(opt, loss, history)
        if step % 500 == 0 or step == recipe.stage2_steps - 1:
            log(f"stage 2 VaDE step {step}: recon {recon.mean().item():.4f} kl {kl.mean().item():.3f} llp {llp.item():.5f} "
                f"entropy {ent.item():.4f}")
    return model


def train_supervised(recipe: Recipe, data: list[TrainingSample], log) -> SupervisedMLP:
    rng = np.random.default_rng(recipe.seed + 3)
    model = SupervisedMLP(data[0].x.shape[1], len(C.EVENT_CLASSES))
    opt = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    for step in range(recipe.supervised_steps):
        s, xb, i = bag(rng, data, 0)
        idx = rng.integers(0, len(s.x), recipe.bag)
        xb = torch.from_numpy(s.x[idx])
        yb = torch.from_numpy(s.labels[idx].astype(np.int64))
        loss = nn.functional.nll_loss(torch.log(model(xb).clamp_min(1e-8)), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    log(f"supervised MLP: cross-entropy {loss.item():.4f}")
    return model


# ---------------------------------------------------------------- export
def recon_threshold(model: IDEC, data: list[TrainingSample]) -> float:
    with torch.no_grad():
        errs = []
        for s in data:
            x = torch.from_numpy(s.x[:5000])
            z = model.encoder(x)
            errs.append(((model.decoder(z) - x) ** 2).mean(1).numpy())
    return float(np.quantile(np.concatenate(errs), 0.999))


def run(recipe: Recipe, out: Path, log=print, history: dict | None = None) -> dict[str, Path]:
    """Train, export and write both bundles under ``out``; ``history`` collects loss curves."""
    history = {} if history is None else history
    t0 = time.perf_counter()
    torch.manual_seed(recipe.seed)
    torch.set_num_threads(recipe.threads)
    torch.use_deterministic_algorithms(True)
    profile = get_profile("optical-11")
    raw = simulate_training_set(recipe)
    mean, std = preprocessing_stats(raw)
    data = to_training(raw, mean, std)
    log(f"training set: {len(data)} samples x {recipe.events_per_sample} events ({time.perf_counter() - t0:.1f} s)")
    idec = train_stage1(recipe, data, log, history.setdefault("stage1", []))
    side = rbc_side_indices(idec, data)
    vade = train_stage2(recipe, data, side, log, history.setdefault("stage2", []))
    supervised = train_supervised(recipe, data, log)
    common = {
        "format": FORMAT,
        "version": "1.0.0",
        "profile": profile.name,
        "features": list(profile.feature_names),
        "preprocessing": {"transform": "log1p", "mean": [float(v) for v in mean], "std": [float(v) for v in std]},
        "classes": list(C.EVENT_CLASSES),
        "training": {
            "species": list(recipe.species),
            "samples": len(data),
            "events_per_sample": recipe.events_per_sample,
            "pathologies": sorted(PATHOLOGIES),
            "data": "edgehema simulator (optical-11), gain 0.95-1.05, drift +-3 %, dilution 1:350-1:1000, "
                    "electronic noise 0-80/s, debris 10-400/uL",
            "recipe": "export/train_reference.py",
            "recipe_settings": {k: v for k, v in asdict(recipe).items() if k != "extra"},
            "torch": torch.__version__,
            "seconds": None,
        },
    }
    written = {}
    ref = out / "reference"
    ref.mkdir(parents=True, exist_ok=True)
    export_onnx(InferenceGraph(idec, vade), profile.n_features, ["z1", "recon_err", "z2"], ref / "model.onnx")
    with torch.no_grad():
        pi = torch.softmax(vade.pi_logits, 0).numpy()
    manifest = dict(common)
    manifest.update({
        "name": "edgehema-reference",
        "description": "Two-stage deep clustering (AE + IDEC, then VaDE) after Macarie-Ancau & Groza; "
                       "weakly supervised by sample-level counts",
        "model": {"file": "model.onnx", "kind": "two-stage-idec-vade", "input": "x",
                  "outputs": ["z1", "recon_err", "z2"]},
        "stage1": {"kind": "idec", "alpha": 1.0, "centroids": idec.centroids.detach().numpy().tolist(),
                   "cluster_classes": list(STAGE1_CLASSES)},
        "stage2": {"kind": "vade", "weights": pi.tolist(), "means": vade.mu_c.detach().numpy().tolist(),
                   "variances": vade.logvar_c.detach().exp().numpy().tolist(),
                   "component_classes": list(STAGE2_CLASSES)},
        "thresholds": {"recon_err_p999": recon_threshold(idec, data)},
        "supervision": "sample-level counts only (learning from label proportions)",
        "files": {"model.onnx": ""},
    })
    manifest["training"] = dict(manifest["training"], seconds=round(time.perf_counter() - t0, 1))
    write_bundle(ref, manifest)
    written["reference"] = ref
    sup = out / "supervised-mlp"
    sup.mkdir(parents=True, exist_ok=True)
    export_onnx(supervised, profile.n_features, ["probabilities"], sup / "model.onnx")
    manifest = dict(common)
    manifest.update({
        "name": "edgehema-supervised-mlp",
        "description": "Upper-bound baseline for `edgehema evaluate`: an MLP trained WITH per-event labels",
        "model": {"file": "model.onnx", "kind": "softmax-classifier", "input": "x", "outputs": ["probabilities"]},
        "supervision": "per-event labels (baseline only)",
        "files": {"model.onnx": ""},
    })
    write_bundle(sup, manifest)
    written["supervised-mlp"] = sup
    log(f"wrote {', '.join(str(p) for p in written.values())} in {time.perf_counter() - t0:.1f} s")
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("edgehema/models"))
    ap.add_argument("--scale", choices=("full", "tiny"), default="full")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--species", default=None, help="comma-separated species to train on (default: all five)")
    args = ap.parse_args()
    recipe = Recipe() if args.scale == "full" else Recipe.tiny()
    if args.seed is not None:
        recipe.seed = args.seed
    if args.species:
        recipe.species = tuple(s.strip() for s in args.species.split(",") if s.strip())
    run(recipe, args.out)


if __name__ == "__main__":
    main()
