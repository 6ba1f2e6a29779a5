"""Forward model of the optical bench: Mie scattering of sphered cells, tabulated.

Cells are isovolumetrically sphered by the diluent (as in two-angle RBC analyzers), so each
cell is a homogeneous sphere of diameter ``d = (6 V / pi)^(1/3)`` and relative refractive index
``m = n_cell / n_medium``. For a 488 nm laser in saline (n = 1.333) we tabulate, with Mie theory
(``miepython``), partial scattering cross-sections in square micrometres for the detectors'
angular acceptances, and the extinction cross-section for axial light loss:

=========  ======================================================================
channel    cross-section
=========  ======================================================================
fsc_lo     scattered into 1.5-3.0 deg  (low-angle forward scatter: mostly volume)
fsc_hi     scattered into 5-15 deg     (high-angle forward scatter: refractive index)
ssc        scattered into 70-110 deg   (side scatter)
ext        extinction Q_ext * pi d^2 / 4 (axial light loss)
=========  ======================================================================

A real cell is not a perfect sphere, so the table is averaged over a 2 % spread of diameter,
which also removes Mie resonance ripples finer than the grid. The table ships inside the
package (``mie_table.npz``) so the device needs no Mie code; ``python -m
edgehema.simulator.optics`` rebuilds it (needs miepython), and a test checks shipped values
against a fresh miepython computation.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np

WAVELENGTH_UM = 0.488
N_MEDIUM = 1.333
ANGLES_DEG = {"fsc_lo": (1.5, 3.0), "fsc_hi": (5.0, 15.0), "ssc": (70.0, 110.0)}
TABLE_CHANNELS = ("fsc_lo", "fsc_hi", "ssc", "ext")
D_GRID = np.round(np.arange(0.30, 12.0001, 0.025), 4)
M_GRID = np.round(np.arange(1.005, 1.0901, 0.005), 4)
SHAPE_SPREAD = 0.02  # relative sd of diameter averaged into each table entry


def _angular_cross_section(miepython, m: float, d: float, lo: float, hi: float, nodes: int) -> float:
    """Cross-section (um^2) scattered into the cone between lo and hi degrees, unpolarized light."""
    x = np.pi * d * N_MEDIUM / WAVELENGTH_UM
    g, w = np.polynomial.legendre.leggauss(nodes)
    t0, t1 = np.deg2rad(lo), np.deg2rad(hi)
    theta = 0.5 * (t1 - t0) * g + 0.5 * (t1 + t0)
    weights = 0.5 * (t1 - t0) * w
    # norm='qsca': the intensity integrates to Q_sca over 4 pi, so times the geometric area it is d(sigma)/d(Omega).
    i = miepython.i_unpolarized(m, x, np.cos(theta), norm="qsca")
    return float(np.sum(i * 2 * np.pi * np.sin(theta) * weights) * np.pi * d * d / 4)


def compute_point(m: float, d: float) -> dict[str, float]:
    """Exact (un-averaged) cross-sections for one sphere; needs miepython."""
    import miepython

    out = {ch: _angular_cross_section(miepython, m, d, *ANGLES_DEG[ch], 64) for ch in ANGLES_DEG}
    qext = miepython.efficiencies(m * N_MEDIUM, d, WAVELENGTH_UM, n_env=N_MEDIUM)[0]
    out["ext"] = float(qext) * np.pi * d * d / 4
    return out


def _fine_column(args: tuple[float, np.ndarray]) -> dict[str, np.ndarray]:
    m, fine_d = args
    fine = {ch: np.empty(len(fine_d)) for ch in TABLE_CHANNELS}
    for k, d in enumerate(fine_d):
        for ch, v in compute_point(float(m), float(d)).items():
            fine[ch][k] = v
    return fine


def build_table(fine_step: float = 0.01, processes: int = 2) -> dict[str, np.ndarray]:
    """Compute the shape-averaged table on (D_GRID x M_GRID). A few minutes on 2 cores."""
    from multiprocessing import Pool

    fine_d = np.arange(0.2, D_GRID[-1] * 1.1, fine_step)
    with Pool(processes) as pool:
        columns = pool.map(_fine_column, [(float(m), fine_d) for m in M_GRID])
    tables = {ch: np.zeros((len(D_GRID), len(M_GRID)), dtype=np.float64) for ch in TABLE_CHANNELS}
    for j, fine in enumerate(columns):
        for i, d in enumerate(D_GRID):
            w = np.exp(-0.5 * ((fine_d - d) / (SHAPE_SPREAD * d)) ** 2)
            w /= w.sum()
            for ch in TABLE_CHANNELS:
                tables[ch][i, j] = float(np.dot(w, fine[ch]))
    return tables


@dataclass(frozen=True)
class MieTable:
    d: np.ndarray
    m: np.ndarray
    values: np.ndarray  # (channels, len(d), len(m)) float32
    channels: tuple[str, ...]

    @property
    def _rows(self) -> np.ndarray:
        # (len(d) * len(m), channels): one gather per corner fetches every channel at once.
        cached = self.__dict__.get("_rows_cache")
        if cached is None:
            cached = np.ascontiguousarray(self.values.reshape(len(self.channels), -1).T)
            object.__setattr__(self, "_rows_cache", cached)
        return cached

    def lookup(self, d: np.ndarray, m: np.ndarray) -> np.ndarray:
        """Bilinear interpolation; returns (n, channels) float32. Inputs are clipped to the table's span."""
        nd, nm = len(self.d), len(self.m)
        fi = (np.asarray(d, dtype=np.float32) - np.float32(self.d[0])) * np.float32(1.0 / (self.d[1] - self.d[0]))
        fj = (np.asarray(m, dtype=np.float32) - np.float32(self.m[0])) * np.float32(1.0 / (self.m[1] - self.m[0]))
        np.clip(fi, 0.0, nd - 1.001, out=fi)  # float32-safe: stays below the last node
        np.clip(fj, 0.0, nm - 1.001, out=fj)
        i0 = fi.astype(np.int32)
        j0 = fj.astype(np.int32)
        ti = (fi - i0)[:, None]
        tj = (fj - j0)[:, None]
        rows = self._rows
        k = i0 * nm + j0
        low = rows[k] * (1 - tj) + rows[k + 1] * tj
        high = rows[k + nm] * (1 - tj) + rows[k + nm + 1] * tj
        return low * (1 - ti) + high * ti


@lru_cache(maxsize=1)
def load_table() -> MieTable:
    with resources.files(__package__).joinpath("mie_table.npz").open("rb") as fh:
        z = np.load(fh)
        return MieTable(
            d=z["d"], m=z["m"], values=z["values"].astype(np.float32), channels=tuple(str(c) for c in z["channels"])
        )


def diameter_um(volume_fl: np.ndarray) -> np.ndarray:
    """Sphere-equivalent diameter in um of a volume in fL (1 fL = 1 um^3)."""
    return np.cbrt(6.0 * np.asarray(volume_fl) / np.pi)


def relative_index_from_hc(hc_g_dl: np.ndarray) -> np.ndarray:
    """Relative refractive index of a sphered RBC from its haemoglobin concentration.

    n_cell = n_medium + 0.0019 * HC (g/dL)  (Tycko, Metz, Epstein & Grinbaum, Appl. Opt. 24, 1355, 1985:
    refractive increment of haemoglobin ~0.0019 dL/g).
    """
    return (N_MEDIUM + 0.0019 * np.asarray(hc_g_dl)) / N_MEDIUM


def main() -> None:  # pragma: no cover - offline build step
    import sys
    from pathlib import Path

    tables = build_table()
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("mie_table.npz")
    np.savez_compressed(
        out,
        d=D_GRID,
        m=M_GRID,
        channels=np.array(TABLE_CHANNELS),
        values=np.stack([tables[ch] for ch in TABLE_CHANNELS]).astype(np.float32),
        wavelength_um=WAVELENGTH_UM,
        n_medium=N_MEDIUM,
        shape_spread=SHAPE_SPREAD,
    )
    print(f"wrote {out}")


if __name__ == "__main__":  # pragma: no cover
    main()
