"""The sample generator: particles through the flow cell, pulses, trigger, features, truth.

Physics, in the order it happens (docs/simulator.md has the numbers and their sources):

1. *Arrivals.* Blood diluted ``dilution`` times flows through the sensing zone at
   ``sample_flow_ul_per_s``. Units (a single cell, an aggregate, a debris particle) arrive as a
   Poisson process whose rate follows from the sample's concentrations.
2. *Coincidence.* Two arrivals closer than the instrument's resolving window ``coincidence_window_us``
   are one event (the pulse of the second starts before the first has ended). This is exactly
   the Poisson occupancy model: a unit is alone with probability ``exp(-rate * window)``.
   Aggregates (cat RBC doublets, platelet clumps) are cells stuck together: their members pass
   within a fraction of a microsecond and always form one event.
3. *Optics.* Each cell is a sphere (isovolumetric sphering); its scatter and extinction come from
   the Mie table (:mod:`.optics`), its fluorescence from its RNA content (reticulocytes, graded by
   maturity; platelets take up some dye). Each particle gives a Gaussian pulse in time whose
   width is the transit time ``(beam height + diameter) / velocity``.
4. *Electronics.* Overlapping pulses add; the event's peak is the maximum of the summed pulse
   (sub-additive), its area the sum of areas, its width the time above half maximum. Detector
   gain (with optional drift), multiplicative and baseline noise, a 16-bit ADC that saturates,
   and a trigger threshold on low-angle forward scatter below which nothing is recorded.
   Electronic noise adds spurious triggers just above the threshold.

The generator returns arrays and truth; writers and the instrument emulator consume them, so
the same sample can be saved to a file or streamed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone

import numpy as np

from edgehema.model import classes
from edgehema.exceptions import SimulationError
from edgehema.profiles import Profile, get_profile
from edgehema.sample import Sample, SampleInfo
from edgehema.simulator.optics import diameter_um, load_table, relative_index_from_hc
from edgehema.simulator.presets import SampleParameters, draw_parameters

# Particle kinds (internal). Fragments (schistocytes) are red cells; lysis debris and lipid are not cells.
DEBRIS, MATURE, RETIC, PLATELET, FRAGMENT, LYSIS, LIPID = 0, 1, 2, 3, 4, 5, 6
_CH = ("fsc_lo", "fsc_hi", "ssc", "fl", "ext")
_FSC_LO, _FSC_HI, _SSC, _FL, _EXT = range(5)
ADC_MAX = 65535.0


@dataclass(frozen=True)
class InstrumentSettings:
    """The simulated analyzer's fluidics, optics and electronics."""

    instrument_id: str = "edgehema-sim-01"
    dilution: float = 625.0
    sample_flow_ul_per_s: float = 0.5
    coincidence_window_us: float = 5.0
    beam_height_um: float = 10.0
    velocity_um_per_us: float = 5.0
    velocity_cv: float = 0.03
    #: ADC counts per um^2 of cross-section (scatter/extinction channels) and per RNA unit (fl).
    gain_fsc_lo: float = 620.0
    gain_fsc_hi: float = 1000.0
    gain_ssc: float = 110000.0
    gain_fl: float = 1.0
    gain_ext: float = 250.0
    #: Static calibration factor on every channel, and linear drift over the sample (0.1 = +10 % by the end).
    gain: float = 1.0
    gain_drift: float = 0.0
    #: per-event illumination variation (position of the cell in the beam), common to all channels.
    illumination_cv: float = 0.03
    detector_cv: float = 0.02
    baseline_noise_adc: float = 6.0
    trigger_threshold_adc: float = 60.0
    electronic_noise_per_s: float = 4.0
    #: bursts of spurious triggers (microbubbles, electrical interference) per second, and events per burst.
    noise_bursts_per_s: float = 0.0
    burst_events: float = 40.0
    #: per-channel calibration factor (fsc_lo, fsc_hi, ssc, fl, ext) on top of ``gain``: a detector
    #: or amplifier that drifted since calibration.
    channel_gain: tuple[float, float, float, float, float] = (1.0, 1.0, 1.0, 1.0, 1.0)
    debris_per_ul: float = 40.0  # in the diluted suspension
    #: platelet dye uptake and RBC autofluorescence, ADC counts at median
    plt_fl_median: float = 600.0
    immature_platelet_fraction: float = 0.03
    rbc_autofluorescence: float = 150.0
    retic_rna_max: float = 25000.0
    retic_rna_min: float = 400.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SimulatedSample:
    """A generated sample: events in a profile, per-event truth, and the sample's truth summary."""

    sample: Sample
    labels: np.ndarray  # uint8 event class (classes.EVENT_CLASSES)
    n_rbc: np.ndarray  # red cells in each event (reticulocytes included)
    n_retic: np.ndarray
    n_plt: np.ndarray
    time_us: np.ndarray  # event time from the start of acquisition
    volume_fl: np.ndarray  # total true volume of the cells in each event (fL)
    truth: dict = field(default_factory=dict)
    parameters: SampleParameters | None = None


class SampleSimulator:
    """Generates samples of one species (and optional pathology) on one simulated instrument."""

    def __init__(
        self,
        species: str = "human",
        pathology: str | None = None,
        instrument: InstrumentSettings | None = None,
        profile: Profile | str | None = None,
        seed: int | None = 0,
    ) -> None:
        self.species = species
        self.pathology = pathology
        self.instrument = instrument or InstrumentSettings()
        self.profile = get_profile(profile)
        missing = [f.name for f in self.profile.features if f.channel is None or f.measure is None]
        if missing:
            raise SimulationError(
                f"profile {self.profile.name} does not say which optical channel feeds "
                f"{', '.join(missing)}: it cannot be simulated"
            )
        # (channel index, measure) pairs the profile reads; the trigger channel's peak always.
        self._needed = {(_CH.index(f.channel), f.measure) for f in self.profile.features} | {(_FSC_LO, "peak")}
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self._table = load_table()
        self._count = 0
        # Validate species and pathology now, not at the first sample.
        draw_parameters(species, np.random.default_rng(0), pathology)

    # ------------------------------------------------------------------ public
    def generate(
        self, n_events: int, sample_id: str | None = None, parameters: SampleParameters | None = None
    ) -> SimulatedSample:
        """One sample of exactly ``n_events`` recorded events."""
        if n_events < 1:
            raise SimulationError(f"a sample needs at least 1 event, not {n_events}")
        rng = self._rng
        self._count += 1
        params = parameters or draw_parameters(self.species, rng, self.pathology)
        sample_id = sample_id or f"{params.species}-{self.seed}-{self._count:04d}"
        ins = self.instrument
        rates = self._unit_rates(params)
        rate_total = sum(rates.values())
        # Expected recorded events per us: units, less those merged into coincidences.
        cells_per_us = rate_total * math.exp(-rate_total * ins.coincidence_window_us)
        duration = 1.08 * n_events / max(cells_per_us, 1e-12) + 50.0
        # Gain drift is linear in time and reaches ``gain_drift`` at the sample's expected end.
        self._drift_span_us = n_events / max(cells_per_us, 1e-12)
        parts = None
        for _attempt in range(20):
            parts = self._arrivals(params, rates, duration, parts)
            ev = self._events(parts, params)
            if len(ev["label"]) >= n_events:
                break
            duration *= 1.25
        else:  # pragma: no cover - only with absurd settings
            raise SimulationError("could not reach the requested event count (trigger threshold too high?)")
        keep = slice(0, n_events)
        elapsed_us = float(ev["t_end"][n_events - 1]) + ins.coincidence_window_us
        return self._finish(ev, keep, n_events, params, sample_id, elapsed_us, rates, parts)

    def iter_samples(self, n_samples: int, n_events: int):
        for _ in range(n_samples):
            yield self.generate(n_events)

    # ------------------------------------------------------------ arrivals
    def _unit_rates(self, p: SampleParameters) -> dict[str, float]:
        """Arrival rate per microsecond of each kind of unit in the diluted stream."""
        ins = self.instrument
        ul_per_us = ins.sample_flow_ul_per_s * 1e-6
        rbc_cells = p.rbc_per_ul / ins.dilution * ul_per_us
        plt_cells = p.plt_per_ul / ins.dilution * ul_per_us
        agg_size_rbc = p.rbc_aggregate_size  # mean size of RBC aggregates (2.3: doublets 70 %, triplets 30 %)
        agg_size_plt = _CLUMP_MEAN
        rbc_agg_units = rbc_cells * p.rbc_aggregate_fraction / agg_size_rbc
        plt_clump_units = plt_cells * p.plt_clump_fraction / agg_size_plt
        single_red = rbc_cells * (1 - p.rbc_aggregate_fraction)
        return {
            "rbc": single_red * (1 - p.schistocyte_fraction),
            "rbc_aggregate": rbc_agg_units,
            "plt": plt_cells * (1 - p.plt_clump_fraction),
            "plt_clump": plt_clump_units,
            "debris": ins.debris_per_ul * ul_per_us,
            # Interferences last: with zero rates they leave the draws of a plain sample unchanged.
            "fragment": single_red * p.schistocyte_fraction,
            "lysis": p.lysis_debris_per_ul / ins.dilution * ul_per_us,
            "lipid": p.lipid_per_ul / ins.dilution * ul_per_us,
        }

    def _arrivals(self, p: SampleParameters, rates: dict[str, float], duration: float, previous):
        """Particles of every unit arriving in [0, duration) us, in arrival order; extends ``previous``."""
        start = 0.0 if previous is None else previous["horizon"]
        fresh = self._draw_units(p, rates, start, duration - start, 0 if previous is None else previous["n_units"])
        if previous is None:
            return fresh
        out = {k: np.concatenate([previous[k], fresh[k]]) for k in _PARTICLE_KEYS}
        out["horizon"] = fresh["horizon"]
        out["n_units"] = fresh["n_units"]
        return out

    def _draw_units(self, p: SampleParameters, rates: dict[str, float], start: float, span: float, first_unit: int) -> dict:
        """A Poisson stream of units over ``span`` us, expanded into particles with their properties."""
        rng = self._rng
        ins = self.instrument
        rate = sum(rates.values())
        # Exponential gaps give the arrivals already in time order (no sort of a million times).
        n_guess = int(rate * span + 6.0 * math.sqrt(rate * span) + 10)
        t_units = start + np.cumsum(rng.exponential(1.0 / rate, n_guess))
        n_units = int(np.searchsorted(t_units, start + span))
        t_units = t_units[:n_units]
        cum = np.cumsum([rates[k] for k in _UNIT_KINDS]) / rate
        unit_kind = np.minimum(np.searchsorted(cum, rng.random(n_units), side="right"), len(_UNIT_KINDS) - 1)
        sizes = np.ones(n_units, dtype=np.int64)
        agg = unit_kind == 1
        if p.rbc_aggregate_size <= 2.3:
            sizes[agg] = np.where(rng.random(int(agg.sum())) < 0.7, 2, 3)
        else:  # agglutinates: 2 + Poisson cells, up to 12
            sizes[agg] = np.minimum(2 + rng.poisson(p.rbc_aggregate_size - 2.0, int(agg.sum())), 12)
        clump = unit_kind == 3
        sizes[clump] = np.minimum(2 + rng.geometric(1.0 / (_CLUMP_MEAN - 2), int(clump.sum())), 12)
        if n_units and sizes.max() > 1:
            unit_id = np.repeat(np.arange(n_units), sizes)
            first = np.cumsum(sizes) - sizes
            member = np.arange(len(unit_id)) - np.repeat(first, sizes)
        else:
            unit_id = np.arange(n_units)
            member = np.zeros(n_units, dtype=np.int64)
        n = len(unit_id)
        kind = _KIND_OF_UNIT[unit_kind[unit_id]]
        volume = np.empty(n)
        hc = np.empty(n)
        fl = np.empty(n)
        maturity = np.full(n, np.nan)
        red = kind == MATURE
        n_red = int(red.sum())
        # Red cells: lognormal volume with CV = RDW, haemoglobin concentration normal (HDW).
        s = math.sqrt(math.log1p(p.rdw_cv**2))
        volume[red] = p.mcv_fl * np.exp(rng.normal(-0.5 * s * s, s, n_red))
        hc[red] = rng.normal(p.mchc_g_dl, p.hdw_g_dl, n_red)
        fl[red] = ins.rbc_autofluorescence * np.exp(rng.normal(0.0, 0.35, n_red))
        retic = np.zeros(n, dtype=bool)
        retic[red] = rng.random(n_red) < p.retic_fraction
        n_ret = int(retic.sum())
        if n_ret:
            # Maturity u in [0, 1): share of the reticulocyte's ~1 day in blood already spent. RNA decays
            # exponentially, so it is log-uniform in healthy blood; marrow stress shifts u towards 0.
            u = rng.beta(1.0 / p.retic_immaturity, 1.0, n_ret)
            kind[retic] = RETIC
            fl[retic] = p.retic_rna_factor * ins.retic_rna_max * (ins.retic_rna_min / ins.retic_rna_max) ** u * np.exp(
                rng.normal(0.0, 0.15, n_ret)
            )
            volume[retic] *= 1.0 + 0.20 * (1.0 - u)  # young reticulocytes are ~20 % larger
            hc[retic] -= 3.0 * (1.0 - u)  # and less haemoglobin-dense
            maturity[retic] = u
        # Platelets: lognormal volumes with a macro/giant subpopulation.
        plt = kind == PLATELET
        n_plt = int(plt.sum())
        sp = p.plt_volume_sigma
        vol_plt = p.mpv_fl * np.exp(rng.normal(-0.5 * sp * sp, sp, n_plt))
        macro = rng.random(n_plt) < p.macroplatelet_fraction
        vol_plt[macro] *= p.macroplatelet_factor * np.exp(rng.normal(0.0, 0.25, int(macro.sum())))
        volume[plt] = vol_plt
        hc[plt] = rng.normal(24.0, 2.0, n_plt)  # n ~ 1.38, the refractive index of platelets
        ipf = rng.random(n_plt) < ins.immature_platelet_fraction
        fl[plt] = (
            ins.plt_fl_median * (vol_plt / p.mpv_fl) * np.exp(rng.normal(0.0, 0.45, n_plt)) * np.where(ipf, 4.0, 1.0)
        )
        # Debris: small particles of the diluent and cell fragments.
        deb = kind == DEBRIS
        n_deb = int(deb.sum())
        volume[deb] = np.exp(rng.uniform(math.log(0.05), math.log(3.0), n_deb))
        hc[deb] = rng.uniform(10.0, 40.0, n_deb)
        fl[deb] = ins.rbc_autofluorescence * 0.3 * np.exp(rng.normal(0.0, 0.5, n_deb))
        self._interference_particles(p, kind, volume, hc, fl)
        t = t_units[unit_id]
        if n and sizes.max() > 1:
            # Aggregate members are stuck together: each passes a fraction of a cell length after the last.
            d = diameter_um(volume)
            step = np.where(member > 0, d / ins.velocity_um_per_us * rng.uniform(0.3, 0.9, n), 0.0)
            t = t + _cumsum_within(step, sizes)
        return {
            "t": t, "kind": kind, "volume": volume, "hc": hc, "fl": fl,
            "unit": unit_id + first_unit, "maturity": maturity,
            "horizon": start + span, "n_units": first_unit + n_units,
        }

    def _interference_particles(self, p: SampleParameters, kind, volume, hc, fl) -> None:
        """Properties of schistocytes, lysis debris and lipid droplets (docs/simulator.md, Interferences).
        Draws only when the sample has them, so plain samples keep their random streams."""
        rng = self._rng
        ins = self.instrument
        frag = kind == FRAGMENT
        n_frag = int(frag.sum())
        if n_frag:
            # Helmet cells, triangles, microspherocytes: a tenth to a half of a red cell, haemoglobin-dense.
            volume[frag] = p.mcv_fl * rng.uniform(0.10, 0.50, n_frag)
            hc[frag] = rng.normal(p.mchc_g_dl + 1.0, p.hdw_g_dl, n_frag)
            fl[frag] = ins.rbc_autofluorescence * np.exp(rng.normal(0.0, 0.35, n_frag))
        lys = kind == LYSIS
        n_lys = int(lys.sum())
        if n_lys:
            # Membrane and cytoplasm fragments of platelet size, less dense than platelets and without
            # their granules; a third are nuclear fragments that take up the nucleic-acid stain.
            volume[lys] = 2.5 * np.exp(rng.normal(0.0, 0.6, n_lys))
            hc[lys] = rng.uniform(8.0, 25.0, n_lys)
            nucleic = rng.random(n_lys) < 0.3
            fl[lys] = np.where(nucleic, ins.plt_fl_median * np.exp(rng.normal(0.0, 0.6, n_lys)),
                               ins.rbc_autofluorescence * 0.3 * np.exp(rng.normal(0.0, 0.5, n_lys)))
        lip = kind == LIPID
        n_lip = int(lip.sum())
        if n_lip:
            # Droplets of 0.3-50 fL with n ~ 1.46-1.48 (beyond the Mie table, which clips at m = 1.09).
            volume[lip] = 3.0 * np.exp(rng.normal(0.0, 1.0, n_lip))
            hc[lip] = rng.uniform(65.0, 78.0, n_lip)
            fl[lip] = ins.rbc_autofluorescence * 0.1 * np.exp(rng.normal(0.0, 0.5, n_lip))

    # -------------------------------------------------------------- events
    def _events(self, parts: dict, p: SampleParameters) -> dict:
        """Cluster particles into events, build pulses, add noise, apply the trigger. The steps
        draw from one generator in a fixed order, so a seed gives the same file."""
        rng = np.random.default_rng(self._rng.integers(2**63))
        t = parts["t"]
        new_event = np.ones(len(t), dtype=bool)
        new_event[1:] = np.diff(t) >= self.instrument.coincidence_window_us
        event_of = np.cumsum(new_event) - 1
        n_ev = int(event_of[-1]) + 1 if len(t) else 0
        size = np.bincount(event_of, minlength=n_ev)
        amp, sigma = self._particle_pulses(parts, p, rng)
        pulses = _event_pulses(event_of, size, t, amp, sigma, n_ev)
        ev = {**pulses, **_composition(parts, event_of, new_event, n_ev), "size": size}
        spurious = self._spurious(rng, parts["horizon"])
        if spurious is not None:
            ev = _with_spurious(ev, *spurious)
        peak, area, width = self._measure(rng, ev["peak"], ev["area"], ev["width"], ev["t_start"])
        return self._trigger(ev, peak, area, width, n_ev)

    def _particle_pulses(self, parts: dict, p: SampleParameters, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Per particle: the pulse amplitude on each channel (n, 5) and the pulse's sigma in us."""
        ins = self.instrument
        n = len(parts["t"])
        kind = parts["kind"]
        d = diameter_um(parts["volume"])
        m = relative_index_from_hc(parts["hc"])
        length = d
        if p.rbc_elongation != 1.0:
            # Red cells that do not sphere (camelid ellipses) align with the flow: the beam sees an
            # area-equivalent diameter r^(1/6) d and the cell takes r^(2/3) d to pass.
            r = p.rbc_elongation
            red_shape = (kind == MATURE) | (kind == RETIC)
            d = np.where(red_shape, d * r ** (1.0 / 6.0), d)
            length = np.where(red_shape, d * r ** (2.0 / 3.0 - 1.0 / 6.0), d)
        xs = self._table.lookup(d, m)  # (n, 4): fsc_lo, fsc_hi, ssc, ext cross-sections
        amp = np.empty((n, 5), dtype=np.float32)
        amp[:, _FSC_LO] = ins.gain_fsc_lo * xs[:, 0]
        amp[:, _FSC_HI] = ins.gain_fsc_hi * xs[:, 1]
        amp[:, _SSC] = ins.gain_ssc * xs[:, 2]
        amp[:, _EXT] = ins.gain_ext * xs[:, 3]
        amp[:, _FL] = ins.gain_fl * parts["fl"]
        if any(g != 1.0 for g in ins.channel_gain):
            amp *= np.asarray(ins.channel_gain, dtype=np.float32)[None, :]
        # Platelet granules add side scatter beyond a homogeneous sphere's.
        is_plt = kind == PLATELET
        amp[is_plt, _SSC] += 900.0 * parts["volume"][is_plt] / 10.0
        amp *= np.exp(rng.standard_normal(n) * ins.illumination_cv)[:, None]
        velocity = ins.velocity_um_per_us * np.exp(rng.normal(0.0, ins.velocity_cv, n))
        sigma = (ins.beam_height_um + length) / velocity / 2.3548  # FWHM = transit time
        return amp, sigma

    def _spurious(self, rng: np.random.Generator, horizon: float):
        """Spurious triggers from electronic noise (no particle, just above threshold) and bursts:
        (peaks, pulse sigma, time), or None."""
        ins = self.instrument
        spurious: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        n_noise = int(rng.poisson(ins.electronic_noise_per_s * 1e-6 * horizon))
        if n_noise:
            tn = np.sort(rng.random(n_noise) * horizon)
            npk = np.zeros((n_noise, 5))
            npk[:, _FSC_LO] = ins.trigger_threshold_adc * (1.0 + rng.exponential(0.3, n_noise))
            spurious.append((npk, np.full(n_noise, 0.4), tn))
        n_bursts = int(rng.poisson(ins.noise_bursts_per_s * 1e-6 * horizon)) if ins.noise_bursts_per_s else 0
        if n_bursts:
            # Bursts (microbubbles, electrical interference): tens of spurious triggers within ~200 us,
            # with signal on every channel, none of it a cell.
            per = rng.poisson(ins.burst_events, n_bursts)
            tb = np.sort(np.repeat(rng.random(n_bursts) * horizon, per) + rng.random(int(per.sum())) * 200.0)
            spurious.append((ins.trigger_threshold_adc * np.exp(rng.normal(1.5, 1.2, (len(tb), 5))),
                             rng.uniform(0.3, 3.0, len(tb)), tb))
        if not spurious:
            return None
        return (np.vstack([x[0] for x in spurious]), np.concatenate([x[1] for x in spurious]),
                np.concatenate([x[2] for x in spurious]))

    def _measure(self, rng: np.random.Generator, peak: np.ndarray, area: np.ndarray, width: np.ndarray,
                 t_start: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Detector noise, gain, ADC, only for the measures the profile reads (plus the trigger):
        float32, as this is the hot path for a million events."""
        ins = self.instrument
        m_ev = len(t_start)
        g = (ins.gain * (1.0 + ins.gain_drift * t_start / self._drift_span_us)).astype(np.float32)

        def normal(sd: float) -> np.ndarray:
            return rng.standard_normal(m_ev, dtype=np.float32) * np.float32(sd)

        measured = {"peak": np.zeros((m_ev, 5), np.float32), "area": np.zeros((m_ev, 5), np.float32),
                    "width": np.zeros((m_ev, 5), np.float32)}
        for ch in sorted({c for c, _ in self._needed}):
            # A detector gain fluctuation scales peak and area of the same pulse alike.
            detector = g * (1.0 + normal(ins.detector_cv))
            w = width[:, ch].astype(np.float32)
            if (ch, "peak") in self._needed:
                v = peak[:, ch].astype(np.float32) * detector + normal(ins.baseline_noise_adc)
                measured["peak"][:, ch] = np.clip(np.rint(v), 0.0, ADC_MAX)
            if (ch, "area") in self._needed:
                v = area[:, ch].astype(np.float32) * detector + normal(ins.baseline_noise_adc) * w
                measured["area"][:, ch] = np.clip(np.rint(v), 0.0, None)
            if (ch, "width") in self._needed:
                v = w * (1.0 + normal(0.5 * ins.detector_cv)) + normal(0.03)
                measured["width"][:, ch] = np.clip(np.round(v, 2), 0.0, None)
        return measured["peak"], measured["area"], measured["width"]

    def _trigger(self, ev: dict, peak: np.ndarray, area: np.ndarray, width: np.ndarray, n_ev: int) -> dict:
        """The events above the trigger threshold, in time order, each with its true class."""
        detected = peak[:, _FSC_LO] >= self.instrument.trigger_threshold_adc
        order = np.argsort(ev["t_start"][detected], kind="stable")
        sel = np.flatnonzero(detected)[order]
        n_rbc, n_retic, n_plt = ev["n_rbc"][sel], ev["n_retic"][sel], ev["n_plt"][sel]
        cells = n_rbc + n_plt
        label = np.full(len(sel), classes.NOISE, dtype=np.uint8)
        label[(cells == 1) & (n_rbc == 1)] = classes.RBC
        label[(cells == 1) & (n_retic == 1)] = classes.RETIC
        label[(cells == 1) & (n_plt == 1)] = classes.PLT
        label[cells >= 2] = classes.COINCIDENCE
        return {
            "peak": peak[sel], "area": area[sel], "width": width[sel], "label": label,
            "n_rbc": n_rbc, "n_retic": n_retic, "n_plt": n_plt, "n_units": ev["n_units"][sel],
            "volume": ev["volume"][sel],
            "t_start": ev["t_start"][sel], "t_end": ev["t_end"][sel], "maturity": ev["maturity"][sel],
            "clusters_total": n_ev, "clusters_single": int(np.sum(ev["size"] == 1)),
        }

    # -------------------------------------------------------------- output
    def features(self, ev: dict, keep: slice) -> np.ndarray:
        """The profile's feature matrix from per-channel pulse measures."""
        cols = []
        for f in self.profile.features:
            ch = _CH.index(f.channel)
            col = ev[f.measure][keep, ch] * f.scale
            if f.scale != 1.0:
                col = np.rint(col) if f.measure != "width" or f.scale >= 10 else np.round(col, 2)
            lo, hi = f.range
            cols.append(np.clip(col, lo, hi))
        return np.column_stack(cols).astype(np.float32)

    def _finish(self, ev, keep, n_events, params, sample_id, elapsed_us, rates, parts) -> SimulatedSample:
        ins = self.instrument
        labels = ev["label"][keep]
        n_rbc, n_retic, n_plt = ev["n_rbc"][keep], ev["n_retic"][keep], ev["n_plt"][keep]
        volume_ul = ins.sample_flow_ul_per_s * elapsed_us * 1e-6
        started = datetime(2026, 1, 1, tzinfo=timezone.utc) + timedelta(hours=self._count)
        info = SampleInfo(
            sample_id=sample_id, species=params.species, dilution=ins.dilution, volume_ul=round(volume_ul, 6),
            instrument_id=ins.instrument_id, started_at=started.isoformat(),
            ended_at=(started + timedelta(microseconds=elapsed_us)).isoformat(), source="edgehema simulate",
        )
        sample = Sample(events=self.features(ev, keep), profile=self.profile, info=info)
        counts = classes.event_counts(labels)
        cells = {"rbc": int(n_rbc.sum()), "retic": int(n_retic.sum()), "plt": int(n_plt.sum())}
        rate_units = sum(rates.values())
        occupancy = rate_units * ins.coincidence_window_us
        multi = labels == classes.COINCIDENCE
        by_size = np.bincount((n_rbc + n_plt)[multi], minlength=4)
        agg = int(np.sum(multi & (ev["n_units"][keep] == 1)))
        mat = ev["maturity"][keep][labels == classes.RETIC]
        lfr, mfr, hfr = int(np.sum(mat >= 0.2)), int(np.sum((mat >= 0.05) & (mat < 0.2))), int(np.sum(mat < 0.05))
        truth = {
            "sample_id": sample_id,
            "species": params.species,
            "pathology": params.pathology,
            "seed": self.seed,
            "profile": self.profile.name,
            "events": counts,
            "cells": cells,
            "concentration": {
                "rbc_per_uL": round(params.rbc_per_ul, 1),
                "plt_per_uL": round(params.plt_per_ul, 1),
                "retic_per_uL": round(params.rbc_per_ul * params.retic_fraction, 1),
            },
            "retic_percent": round(100.0 * cells["retic"] / cells["rbc"], 4) if cells["rbc"] else 0.0,
            "dilution": ins.dilution,
            "volume_ul": info.volume_ul,
            "elapsed_s": round(elapsed_us * 1e-6, 6),
            "coincidence": {
                "window_us": ins.coincidence_window_us,
                "mean_occupancy": round(occupancy, 6),
                "expected_fraction_poisson": round(1.0 - math.exp(-occupancy), 6),
                "events_by_cells": {str(k): int(v) for k, v in enumerate(by_size) if k >= 2 and v},
                "aggregate_events": agg,
            },
            "retic_maturity": {
                "lfr": lfr, "mfr": mfr, "hfr": hfr,
                "irf_percent": round(100.0 * (mfr + hfr) / max(len(mat), 1), 3),
            },
            "parameters": params.to_dict(),
            "instrument": {k: v for k, v in ins.to_dict().items()},
        }
        return SimulatedSample(
            sample=sample, labels=labels, n_rbc=n_rbc, n_retic=n_retic, n_plt=n_plt,
            time_us=ev["t_start"][keep], volume_fl=ev["volume"][keep].astype(np.float32), truth=truth,
            parameters=params,
        )


_CLUMP_MEAN = 4.5  # mean number of platelets in a clump
_UNIT_KINDS = ("rbc", "rbc_aggregate", "plt", "plt_clump", "debris", "fragment", "lysis", "lipid")
_KIND_OF_UNIT = np.array([MATURE, MATURE, PLATELET, PLATELET, DEBRIS, FRAGMENT, LYSIS, LIPID], dtype=np.int8)
_PARTICLE_KEYS = ("t", "kind", "volume", "hc", "fl", "unit", "maturity")


def _cumsum_within(values: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Cumulative sum restarting at every group boundary (groups of ``sizes`` consecutive rows)."""
    c = np.cumsum(values)
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    base = np.repeat(c[starts] - values[starts], sizes)
    return c - base


_GRID = 48


def _merged_pulses(event_of: np.ndarray, t: np.ndarray, amp: np.ndarray, sigma: np.ndarray):
    """Peak, area and half-maximum width of summed Gaussian pulses, per multi-particle event.

    Rows of one event are contiguous (``event_of`` is non-decreasing), so per-event reductions
    are ``reduceat`` over the event boundaries.
    """
    starts = np.flatnonzero(np.r_[True, event_of[1:] != event_of[:-1]])
    ev_ids = event_of[starts]
    k = len(starts)
    inv = np.repeat(np.arange(k), np.diff(np.r_[starts, len(event_of)]))
    lo = np.minimum.reduceat(t - 3.5 * sigma, starts)
    hi = np.maximum.reduceat(t + 3.5 * sigma, starts)
    step = (hi - lo) / (_GRID - 1)
    # Times relative to each event's start, in float32: differences of a few us need no more.
    rel = (t - lo[inv]).astype(np.float32)
    grid = step.astype(np.float32)[:, None] * np.arange(_GRID, dtype=np.float32)[None, :]  # (k, G)
    z = (grid[inv] - rel[:, None]) / sigma.astype(np.float32)[:, None]
    shape = np.exp(np.float32(-0.5) * z * z)  # (n, G)
    n_ch = amp.shape[1]
    signal = np.empty((k, _GRID, n_ch), dtype=np.float32)
    amp32 = amp.astype(np.float32)
    # Events of equal particle count form a batch: summed pulses are one batched matmul.
    counts = np.diff(np.r_[starts, len(event_of)])
    for size in np.unique(counts):
        evs = np.flatnonzero(counts == size)
        rows = starts[evs][:, None] + np.arange(size)[None, :]  # (events, size)
        signal[evs] = np.matmul(shape[rows].transpose(0, 2, 1), amp32[rows])
    peak = signal.max(axis=1)
    area = np.add.reduceat(amp * (sigma * math.sqrt(2 * math.pi))[:, None], starts, axis=0)
    above = signal >= 0.5 * peak[:, None, :]
    width = above.sum(axis=1) * step[:, None]
    return peak, area, width, ev_ids


def _event_pulses(event_of: np.ndarray, size: np.ndarray, t: np.ndarray, amp: np.ndarray, sigma: np.ndarray,
                  n_ev: int) -> dict:
    """Each event's peak, area and width per channel: a lone particle's Gaussian pulse, or the sum
    of the pulses of the particles in the beam together."""
    peak = np.zeros((n_ev, 5))
    area = np.zeros((n_ev, 5))
    width = np.zeros((n_ev, 5))
    single_part = (size == 1)[event_of]
    ev_s = event_of[single_part]
    peak[ev_s] = amp[single_part]
    area[ev_s] = amp[single_part] * (sigma[single_part] * math.sqrt(2 * math.pi))[:, None]
    width[ev_s] = (2.3548 * sigma[single_part])[:, None]
    multi_part = ~single_part
    if multi_part.any():
        pk, ar, wd, ev_m = _merged_pulses(event_of[multi_part], t[multi_part], amp[multi_part], sigma[multi_part])
        peak[ev_m], area[ev_m], width[ev_m] = pk, ar, wd
    return {"peak": peak, "area": area, "width": width}


def _composition(parts: dict, event_of: np.ndarray, new_event: np.ndarray, n_ev: int) -> dict:
    """What each event holds (red cells, reticulocytes, platelets, units, cell volume) and when."""
    t, kind = parts["t"], parts["kind"]
    is_plt = kind == PLATELET
    red = (kind == MATURE) | (kind == RETIC) | (kind == FRAGMENT)
    cell = red | is_plt
    unit_change = np.ones(len(t), dtype=bool)
    unit_change[1:] = (parts["unit"][1:] != parts["unit"][:-1]) | new_event[1:]
    first_idx = np.flatnonzero(new_event)
    maturity = np.full(n_ev, np.nan)
    single_retic = (np.bincount(event_of, minlength=n_ev) == 1)[event_of] & (kind == RETIC)
    maturity[event_of[single_retic]] = parts["maturity"][single_retic] if "maturity" in parts else np.nan
    return {
        "n_rbc": np.bincount(event_of, weights=red, minlength=n_ev).astype(np.int32),
        "n_retic": np.bincount(event_of, weights=kind == RETIC, minlength=n_ev).astype(np.int32),
        "n_plt": np.bincount(event_of, weights=is_plt, minlength=n_ev).astype(np.int32),
        "volume": np.bincount(event_of, weights=np.where(cell, parts["volume"], 0.0), minlength=n_ev),
        "n_units": np.bincount(event_of, weights=unit_change, minlength=n_ev).astype(np.int32),
        "t_start": np.minimum.reduceat(t, first_idx) if len(t) else t[:0],
        "t_end": np.maximum.reduceat(t, first_idx) if len(t) else t[:0],
        "maturity": maturity,
    }


def _with_spurious(ev: dict, spk: np.ndarray, ssig: np.ndarray, st: np.ndarray) -> dict:
    """The events with the spurious triggers appended (pulses of their own, no cell in them)."""
    ns = len(st)
    z = np.zeros(ns, np.int32)
    return {
        "peak": np.vstack([ev["peak"], spk]),
        "area": np.vstack([ev["area"], spk * (ssig * math.sqrt(2 * math.pi))[:, None]]),
        "width": np.vstack([ev["width"], np.repeat((2.3548 * ssig)[:, None], 5, axis=1)]),
        "t_start": np.r_[ev["t_start"], st], "t_end": np.r_[ev["t_end"], st],
        "n_rbc": np.r_[ev["n_rbc"], z], "n_retic": np.r_[ev["n_retic"], z], "n_plt": np.r_[ev["n_plt"], z],
        "n_units": np.r_[ev["n_units"], z], "volume": np.r_[ev["volume"], np.zeros(ns)],
        "size": np.r_[ev["size"], z], "maturity": np.r_[ev["maturity"], np.full(ns, np.nan)],
    }
