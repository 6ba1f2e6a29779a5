"""The shipped Mie table against a fresh Mie computation (miepython, in the test extra)."""

import numpy as np
import pytest

from edgehema.simulator import optics

miepython = pytest.importorskip("miepython", reason="miepython (test extra) recomputes the shipped Mie table")


@pytest.mark.parametrize("d,m", [(5.6, 1.045), (2.6, 1.03), (4.4, 1.05)])
def test_table_node_matches_fresh_shape_averaged_mie(d, m):
    table = optics.load_table()
    i = int(np.argmin(np.abs(table.d - d)))
    j = int(np.argmin(np.abs(table.m - m)))
    d0, m0 = float(table.d[i]), float(table.m[j])
    # The same shape average as the build (Gaussian, 2 % sd of diameter), on a coarser local grid.
    fine = np.linspace(d0 * (1 - 4 * optics.SHAPE_SPREAD), d0 * (1 + 4 * optics.SHAPE_SPREAD), 81)
    w = np.exp(-0.5 * ((fine - d0) / (optics.SHAPE_SPREAD * d0)) ** 2)
    w /= w.sum()
    points = [optics.compute_point(m0, float(x)) for x in fine]
    for k, ch in enumerate(table.channels):
        fresh = float(np.dot(w, [p[ch] for p in points]))
        assert table.values[k, i, j] == pytest.approx(fresh, rel=0.02), ch
    # Interpolation at the node returns the node.
    np.testing.assert_allclose(table.lookup(np.array([d0]), np.array([m0]))[0], table.values[:, i, j], rtol=1e-4)


def test_physics_sanity():
    table = optics.load_table()
    d = np.array([2.0, 4.0, 6.0])
    m = np.full(3, 1.045)
    ext = table.lookup(d, m)[:, table.channels.index("ext")]
    assert np.all(np.diff(ext) > 0)  # bigger cells remove more light
    hi = table.lookup(np.full(3, 5.5), np.array([1.02, 1.045, 1.07]))[:, table.channels.index("fsc_hi")]
    assert np.all(np.diff(hi) > 0)  # high-angle scatter rises with refractive index (haemoglobin)
    # Refractive index from haemoglobin concentration (Tycko et al. 1985): 33 g/dL -> n ~ 1.396.
    assert optics.relative_index_from_hc(33.0) * optics.N_MEDIUM == pytest.approx(1.3957, abs=1e-4)
