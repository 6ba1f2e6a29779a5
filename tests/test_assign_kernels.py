"""The compiled latent-space kernels (edgehema/model/_fastassign.c) against numpy, the reference.

Both paths run on the same latents: the shipped models' shape (the kernels' unrolled loop) and
odd shapes (the general loop), with and without adaptation. Probabilities must agree to float32
precision and classes wherever two classes do not tie to that precision.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgehema.model import classes as C
from edgehema.model import clustering
from edgehema.model.classifier import Classifier
from edgehema.model.clustering import DiagonalGMM, adapt_centroids, assign_events
from edgehema.counts.result import classify_sample
from edgehema.simulator import SampleSimulator

needs_kernels = pytest.mark.skipif(not clustering.kernels_available(),
                                   reason="the compiled kernels were not built here (no C compiler at install time)")

STAGE1 = ("noise", "plt", "rbc_side")
STAGE2 = ("rbc", "retic", "coincidence")


def both(monkeypatch, fn):
    """fn() with the compiled kernels, then with numpy."""
    monkeypatch.setattr(clustering, "KERNELS", "auto")
    fast = fn()
    monkeypatch.setattr(clustering, "KERNELS", "numpy")
    return fast, fn()


def random_problem(rng, n, d1, k1, d2, k2):
    z1 = rng.normal(size=(n, d1)).astype(np.float32) * 2
    z2 = rng.normal(size=(n, d2)).astype(np.float32) * 2
    centroids = rng.normal(size=(k1, d1)).astype(np.float32) * 2
    gmm = DiagonalGMM(rng.dirichlet(np.ones(k2)).astype(np.float32), rng.normal(size=(k2, d2)).astype(np.float32),
                      rng.uniform(0.2, 3.0, size=(k2, d2)).astype(np.float32))
    return z1, z2, centroids, gmm


@needs_kernels
@pytest.mark.parametrize("d1,k1,d2,k2,alpha", [(4, 3, 4, 3, 1.0), (4, 3, 4, 3, 2.5), (2, 3, 6, 3, 1.0),
                                               (10, 5, 3, 4, 1.0)])
def test_assignment_agrees_with_numpy(monkeypatch, d1, k1, d2, k2, alpha):
    rng = np.random.default_rng(d1 * 100 + k1 * 10 + d2)
    z1, z2, centroids, gmm = random_problem(rng, 20_000, d1, k1, d2, k2)
    # Extra clusters beyond the three named ones stay out of the classes (as a bundle's would).
    s1 = STAGE1 + tuple(f"x{i}" for i in range(k1 - 3))
    s2 = STAGE2 + tuple(f"y{i}" for i in range(k2 - 3))
    (p_fast, l_fast), (p_np, l_np) = both(monkeypatch, lambda: assign_events(z1, z2, centroids, alpha, gmm, s1, s2))
    assert p_fast.dtype == np.float32 and l_fast.dtype == np.uint8 and p_fast.shape == (len(z1), len(C.EVENT_CLASSES))
    assert np.abs(p_fast - p_np).max() < 2e-5
    differ = l_fast != l_np
    # A class may differ only where the top two probabilities tie to float32 precision.
    top2 = np.sort(p_np[differ], axis=1)[:, -2:]
    assert np.all(top2[:, 1] - top2[:, 0] < 1e-5)
    assert differ.mean() < 1e-3


@needs_kernels
def test_labels_are_the_first_largest(monkeypatch):
    # Identical latents for every cluster: exact ties, where argmax takes the first column.
    z = np.zeros((10, 4), np.float32)
    gmm = DiagonalGMM(np.full(3, 1 / 3, np.float32), np.zeros((3, 4), np.float32), np.ones((3, 4), np.float32))
    (p_fast, l_fast), (p_np, l_np) = both(monkeypatch, lambda: assign_events(z, z, np.zeros((3, 4), np.float32), 1.0,
                                                                             gmm, STAGE1, STAGE2))
    assert np.array_equal(l_fast, l_np)
    assert np.array_equal(l_fast, p_fast.argmax(1))


@needs_kernels
def test_adaptation_agrees_with_numpy(monkeypatch):
    rng = np.random.default_rng(7)
    z1, z2, centroids, gmm = random_problem(rng, 15_000, 4, 3, 4, 3)
    mask = rng.uniform(size=len(z2)).astype(np.float32)
    (c_fast, c_np) = both(monkeypatch, lambda: adapt_centroids(z1, centroids, 1.0, prior_share=3.0))
    assert c_fast.dtype == c_np.dtype == np.float32
    assert np.abs(c_fast - c_np).max() < 1e-4
    g_fast, g_np = both(monkeypatch, lambda: gmm.adapt(z2, mask=mask, prior_share=3.0))
    assert np.abs(g_fast.means - g_np.means).max() < 1e-4
    assert np.abs(g_fast.weights - g_np.weights).max() < 1e-5


@needs_kernels
@pytest.mark.parametrize("species", ["human", "cat", "goat"])
def test_sample_counts_agree_with_numpy(monkeypatch, species):
    """End to end on a shipped model: the same cells and flags whichever path assigns the events."""
    clf = Classifier(None)
    sample = SampleSimulator(species, seed=31).generate(60_000).sample
    fast, ref = both(monkeypatch, lambda: classify_sample(sample, clf).to_dict())
    assert fast["flags"] == ref["flags"]
    for k in ("rbc", "plt", "retic"):
        assert fast["cells"][k] == pytest.approx(ref["cells"][k], rel=1e-4, abs=2)
    moved = sum(abs(fast["events"][k] - ref["events"][k]) for k in fast["events"])
    assert moved <= 4  # events that change class between the two paths (ties to float32 precision)


def test_models_beyond_the_kernels_limits_are_assigned_by_numpy(monkeypatch):
    """A user's model with more latent units than the kernels take (64) still classifies."""
    rng = np.random.default_rng(3)
    z1, z2, centroids, gmm = random_problem(rng, 300, 70, 3, 80, 3)
    (p_fast, l_fast), (p_np, l_np) = both(monkeypatch, lambda: assign_events(z1, z2, centroids, 1.0, gmm,
                                                                             STAGE1, STAGE2))
    assert np.array_equal(p_fast, p_np) and np.array_equal(l_fast, l_np)
    c_fast, c_np = both(monkeypatch, lambda: adapt_centroids(z1, centroids, 1.0))
    assert np.array_equal(c_fast, c_np)
    g_fast, g_np = both(monkeypatch, lambda: gmm.adapt(z2))
    assert np.array_equal(g_fast.means, g_np.means)


def test_the_kernels_are_built_where_a_compiler_exists():
    """Optional at install time (a device without a compiler assigns with numpy); where cc exists
    (CI, workstations) they must have been built, or the tests above would only skip."""
    import shutil

    if not (shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("no C compiler here: the kernels are not expected")
    import sysconfig
    from pathlib import Path

    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").is_file():
        pytest.skip("no Python headers here (python3-dev): the kernels cannot be built")
    assert clustering.kernels_available(), "a C compiler is present but edgehema/model/_fastassign.c was not built"


def test_numpy_path_when_asked(monkeypatch):
    """EDGEHEMA_KERNELS=numpy (or no compiler) keeps numpy: the module never touches the kernels."""
    monkeypatch.setattr(clustering, "KERNELS", "numpy")
    monkeypatch.setattr(clustering, "_fastassign", None)
    rng = np.random.default_rng(1)
    z1, z2, centroids, gmm = random_problem(rng, 500, 4, 3, 4, 3)
    p, labels = assign_events(z1, z2, centroids, 1.0, gmm, STAGE1, STAGE2)
    assert np.allclose(p.sum(1), 1.0, atol=1e-5)
    assert np.array_equal(labels, p.argmax(1))


class _WrongKernels:
    """Compiled kernels as a broken compiler or CPU might compute them: every probability off."""

    def __init__(self, real):
        self.real = real

    def assign(self, *args):
        self.real.assign(*args)
        p = args[13]
        p *= 0.5  # every probability halved: the classes keep, the figures do not

    def __getattr__(self, name):
        return getattr(self.real, name)


@needs_kernels
def test_kernels_that_disagree_with_numpy_at_load_are_replaced_by_numpy(monkeypatch):
    """The classifier checks the kernels against numpy on the bundle's known answer when it loads:
    if they disagree, numpy assigns from then on, and the reason is one warning line."""
    monkeypatch.setattr(clustering, "KERNELS", "auto")
    monkeypatch.setattr(clustering, "_FAILED_CHECK", False)
    monkeypatch.setattr(clustering, "_fastassign", _WrongKernels(clustering._fastassign))
    clf = Classifier(None)
    assert any("disagree with numpy on this machine" in line and "numpy assigns instead" in line
               for line in clf.refused), clf.refused
    assert clustering.KERNELS == "numpy" and clustering.kernels_state().startswith("numpy (the compiled kernels disagreed")
    sample = SampleSimulator("human", seed=5).generate(20_000).sample
    got = clf.infer(sample.events).probabilities
    assert np.allclose(got.sum(1), 1.0, atol=1e-5)  # numpy's, not the halved ones


@needs_kernels
def test_kernels_that_agree_pass_the_check_silently(monkeypatch):
    monkeypatch.setattr(clustering, "KERNELS", "auto")
    clf = Classifier(None)
    assert not any("latent-space kernels" in line for line in clf.refused)
    assert clf.check_kernels() is None and clustering.KERNELS == "auto"


def test_loading_runs_the_known_answer_through_the_graph_once(monkeypatch):
    """The self-test's graph outputs serve the kernels' check too: one pass at start-up, not two."""
    runs = []
    real = Classifier.run_graph
    monkeypatch.setattr(Classifier, "run_graph", lambda self, events: runs.append(len(events)) or real(self, events))
    clf = Classifier(None)
    assert clf.selftest is not None and clf.selftest.passed and len(runs) == 1
    assert "graph" not in clf.selftest.to_dict()


@needs_kernels
def test_the_kernels_refuse_wrong_buffers_with_an_error_not_a_crash():
    """The Python side checks shapes and types; the C side still refuses a wrong buffer (type,
    size, layout) with a ValueError and releases what it took."""
    from edgehema.model import _fastassign

    rng = np.random.default_rng(2)
    z1, z2, centroids, gmm = random_problem(rng, 100, 4, 3, 4, 3)
    terms = gmm.kernel_terms()
    layout = bytes([0, 1, 2, 0, 1, 2, C.NOISE, C.PLT, C.RBC, C.RETIC, C.COINCIDENCE])
    p, labels = np.empty((100, 5), np.float32), np.empty(100, np.uint8)
    c64 = centroids.astype(np.float64)
    _fastassign.assign(100, z1, z2, 4, 4, c64, 3, 1.0, *terms, 3, layout, p, labels)  # the right call
    with pytest.raises(ValueError, match="z1: needs 400 items of 4 bytes"):
        _fastassign.assign(100, z1.astype(np.float64), z2, 4, 4, c64, 3, 1.0, *terms, 3, layout, p, labels)
    with pytest.raises(ValueError, match="probabilities"):
        _fastassign.assign(100, z1, z2, 4, 4, c64, 3, 1.0, *terms, 3, layout, p[:50], labels)
    with pytest.raises(ValueError, match="layout"):
        _fastassign.assign(100, z1, z2, 4, 4, c64, 3, 1.0, *terms, 3, layout[:-1] + b"\x09", p, labels)
    with pytest.raises(ValueError, match="limits"):
        _fastassign.nearest_sums(100, z1, 4, c64, 99, np.empty(99), np.empty((99, 4)))
    with pytest.raises(BufferError, match="not writable"):
        _fastassign.gmm_sums(100, z2, 4, np.ones(100, np.float32), *terms, 3, np.empty(3), b"read-only")
