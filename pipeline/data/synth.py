"""A physics-motivated generator of HIGGS-like events: the embedded default data.

    higgs synth --rows 100000 --seed 1 --out data/sources/sample.csv.gz
    python -c "from pipeline.data import synth; y, x = synth.generate(1000, seed=1); print(x.shape, y.mean())"

It writes the UCI ``HIGGS.csv.gz`` layout (no header, ``label, 28 features``; see
:mod:`pipeline.core.schema`) so every path of the pipeline runs offline. Everything is vectorized
numpy over blocks of events; the output is a pure function of ``(seed, row index)``: the same
seed gives a byte-identical file, and a shorter file is a prefix of a longer one.

The model (all energies in GeV, natural units)
-----------------------------------------------

*Processes* (Baldi, Sadowski, Whiteson 2014, Nature Comm. 5:4308):

- signal ``gg → H⁰ → W∓ H±``, ``H± → W± h⁰``, ``h⁰ → b b̄`` with m(H⁰)=425, m(H±)=325,
  m(h⁰)=125;
- background ``t t̄ → W⁺b W⁻b̄`` with m(t)=173, m(W)=80.4, the t t̄ invariant mass drawn as
  ``m_t1 + m_t2 + Gamma(k=1.3, θ=110 GeV)`` (a threshold rise and a long falling tail: peak
  ≈ 380, mean ≈ 490).

In both, one W (chosen at random) decays to ``ℓν`` and the other to ``q q̄′``. Each label is
drawn with P(signal)=0.53 (the real file's fraction) and the event is then generated from its
class's own stream, so the signal fraction does not depend on selection efficiencies.

*Kinematics.* Every unstable particle gets a relativistic Breit–Wigner mass
(``m² = m₀² + m₀Γ tan u``, u uniform, truncated to the kinematically allowed range, sampled
from the bottom of the chain up so every decay is open; widths H⁰ 8, H± 5, h⁰ 0.004,
t 1.42, W 2.085 GeV — the paper gives none for the exotic states, so they are simply narrow).
Every decay is two-body, isotropic in the parent's rest frame, and boosted to the lab. The
hard system (H⁰ or t t̄) gets a rapidity ``y ~ N(0, 0.8)`` and a transverse recoil
``pT ~ Gamma(1.2, 30 GeV)`` (mean 36 GeV) balanced by one initial-state-radiation parton
with ``η ~ N(0, 1.5)``, which becomes a fifth jet candidate. (The t t̄ tail, recoil and
rapidity spread were set so the pT skewness and η widths come close to the real file's; see
``docs/synth.md``.)

*Detector.* Partons become jets with energy resolution ``σ/E = 80%/√E ⊕ 5%`` (the 4-vector
is scaled, direction kept); the lepton gets ``σ/pT = 2%``. Objects count only with
``pT > 20`` and ``|η| < 2.5``. Missing transverse energy is the neutrino's pT plus the
mismeasurement of every visible object plus a Gaussian soft term (8 GeV per component).
B-tagging has three levels like the real file's column (0, 1, 2 in raw units): a b jet is
tagged (0, 1, 2) with probabilities (0.25, 0.15, 0.60), a light/gluon jet with
(0.80, 0.12, 0.08); the levels are written with the real file's per-column values (e.g.
jet 1: 0, 1.0865381, 2.1730762). Events are kept with exactly the one lepton in acceptance and
≥ 4 jets; the 4 leading jets by pT are written.

*High-level features.* The neutrino's pz comes from the W-mass constraint on ``m(ℓν)``
(the smaller-|pz| root; the real part when the roots are complex, which gives ``m_lv`` its
tail above the W mass). The constraint uses the leptonic W's own generated Breit–Wigner mass
rather than a fixed 80.4: the real file's ``m_lv`` is a narrow peak (values 0.96–1.00 in
its first rows), not a single value, and a fixed constraint would make ~3/4 of the column
one constant. This is the only place the reconstruction uses generator truth; the W line
shape is the same in both classes, so it carries no label information.

Pairing rule: the two jets with the highest b-tag level (ties broken by pT) are the b
jets, the other two are the hadronic W (``m_jj``); the b jet that goes with the hadronic W
(``m_jjj``) and the one with ``ℓν`` (``m_jlv``) are the assignment minimizing
``(m_jjb − m_t)² + (m_ℓνb − m_t)²``. ``m_bb`` is the two b jets, ``m_wbb`` = m(jj b b),
``m_wwbb`` = m(jj b b ℓ ν).

*Scaling* (like the real file): momenta, MET and masses are divided by constants that make
their mean ≈ 1 on a 53%-signal mixture; η columns are divided by constants that make their
standard deviation ≈ 1; φ columns are divided by 1.8021, which maps π to the real file's
maximum |φ| (1.7433). The constants are fixed in :data:`COLUMN_DIVISORS` (re-derive them with
:func:`calibrate` if the model changes) so every file uses the same scale.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core import schema
from pipeline.core.errors import PipelineError

SIGNAL_FRACTION = 0.53

# Masses and widths (GeV).
M_H0, W_H0 = 425.0, 8.0
M_HPM, W_HPM = 325.0, 5.0
M_H, W_H = 125.0, 0.004
M_T, W_T = 173.0, 1.42
M_W, W_W = 80.4, 2.085
M_B = 4.7

# Hard-system kinematics and detector.
RAPIDITY_SIGMA = 0.8
RECOIL_SHAPE, RECOIL_SCALE = 1.2, 30.0
ISR_ETA_SIGMA = 1.5
TTBAR_EXCESS_SHAPE, TTBAR_EXCESS_SCALE = 1.3, 110.0
JET_STOCHASTIC, JET_CONSTANT = 0.80, 0.05
LEPTON_RESOLUTION = 0.02
MET_SOFT_SIGMA = 8.0
PT_MIN, ETA_MAX = 20.0, 2.5
# P(level 0), P(level 1), P(level 2) of the three-level b-tag.
BTAG_B = (0.25, 0.15, 0.60)
BTAG_LIGHT = (0.80, 0.12, 0.08)
# The real file's b-tag values per jet column are level × these (float32 values of the file).
BTAG_UNIT = (1.0865380764007568, 1.1074360609054565, 1.2741122245788574, 1.5509806871414185)
PHI_DIVISOR = 1.8021  # π / 1.8021 = 1.7433, the real file's max |φ|

# Divisors of the raw (GeV / η) columns, derived by `calibrate()` on 400k events, seed 12345:
# a scaled momentum or mass × its divisor = GeV. φ and b-tag columns use PHI_DIVISOR and
# BTAG_UNIT instead (their entry here is 1).
COLUMN_DIVISORS = {
    "lepton_pT": 60.8797,
    "lepton_eta": 0.9880,
    "lepton_phi": 1.0000,
    "missing_energy_magnitude": 52.0515,
    "missing_energy_phi": 1.0000,
    "jet1_pt": 111.8449,
    "jet1_eta": 0.9289,
    "jet1_phi": 1.0000,
    "jet1_btag": 1.0000,
    "jet2_pt": 77.0549,
    "jet2_eta": 0.9889,
    "jet2_phi": 1.0000,
    "jet2_btag": 1.0000,
    "jet3_pt": 53.5987,
    "jet3_eta": 1.0494,
    "jet3_phi": 1.0000,
    "jet3_btag": 1.0000,
    "jet4_pt": 37.1028,
    "jet4_eta": 1.1074,
    "jet4_phi": 1.0000,
    "jet4_btag": 1.0000,
    "m_jj": 106.3868,
    "m_jjj": 204.1398,
    "m_lv": 83.6474,
    "m_jlv": 187.5445,
    "m_bb": 151.1677,
    "m_wbb": 338.3800,
    "m_wwbb": 502.5371,
}
_SCALE = np.array([COLUMN_DIVISORS[n] for n in schema.FEATURES])

# Fixed-size blocks make the event stream independent of how the caller chunks it.
_CANDIDATE_BLOCK = 32_768
_LABEL_BLOCK = 65_536
_STREAM_LABEL, _STREAM_SIGNAL, _STREAM_BACKGROUND = 0, 1, 2
# Kinematics run in float32: twice the numpy throughput of float64, and its ~1e-7 relative
# precision is far below the detector resolution (masses come out good to ~0.01 GeV).
_F = np.float32


class SynthError(PipelineError, ValueError):
    """Bad generator arguments or an unwritable output; the message is one line."""


@dataclass(frozen=True)
class SynthResult:
    """What :func:`write_csv` wrote and how fast."""

    path: Path
    rows: int
    signal_fraction: float
    seconds: float
    events_per_s: float  # generation only (physics + reconstruction), events per second
    write_rows_per_s: float  # text formatting + gzip + file write, rows per second
    # CPU seconds of each stage (thread time): rates that do not depend on a busy machine.
    gen_cpu_seconds: float = 0.0
    write_cpu_seconds: float = 0.0


# --- four-vector helpers (tuples of float32 arrays E, px, py, pz) ----------------------------


def _add(*vecs):
    return tuple(sum(v[i] for v in vecs) for i in range(4))


def _mass(p):
    m2 = p[0] * p[0] - p[1] * p[1] - p[2] * p[2] - p[3] * p[3]
    return np.sqrt(np.maximum(m2, 0.0))


def _pt(p):
    return np.hypot(p[1], p[2])


def _eta(p):
    pt = np.maximum(_pt(p), 1e-9)
    return np.arcsinh(p[3] / pt)


def _phi(p):
    return np.arctan2(p[2], p[1])


def _breit_wigner(rng, m0, width, lo, hi):
    """Relativistic Breit–Wigner masses (constant width) truncated to [lo, hi] (arrays)."""
    mg = m0 * width
    u_lo = np.arctan((np.square(lo) - m0 * m0) / mg)
    u_hi = np.arctan((np.square(hi) - m0 * m0) / mg)
    u = u_lo + (u_hi - u_lo) * rng.random(u_lo.shape)
    # float64 inside: tan() near ±π/2 (narrow widths, wide windows) needs the precision.
    return np.sqrt(m0 * m0 + mg * np.tan(u)).astype(_F)


def _boost(p, bx, by, bz):
    """Boost 4-vectors ``p`` by velocity (bx, by, bz) (rest frame of parent → lab)."""
    b2 = bx * bx + by * by + bz * bz
    gamma = 1.0 / np.sqrt(1.0 - b2)
    bp = bx * p[1] + by * p[2] + bz * p[3]
    # (γ-1)/β² written as γ²/(γ+1) stays finite for β → 0.
    g2 = gamma * gamma / (gamma + 1.0)
    f = g2 * bp + gamma * p[0]
    return (gamma * (p[0] + bp), p[1] + f * bx, p[2] + f * by, p[3] + f * bz)


def _two_body(rng, parent, m_parent, m1, m2):
    """Decay ``parent`` (mass m_parent) isotropically into masses m1, m2; return lab 4-vectors."""
    n = m_parent.shape[0]
    msum, mdiff = m1 + m2, m1 - m2
    mp2 = m_parent * m_parent
    pstar = np.sqrt(np.maximum((mp2 - msum * msum) * (mp2 - mdiff * mdiff), 0.0)) / (2.0 * m_parent)
    cos_t = 2.0 * rng.random(n, dtype=_F) - 1.0
    sin_t = np.sqrt(1.0 - cos_t * cos_t)
    phi = _F(2.0 * np.pi) * rng.random(n, dtype=_F)
    px, py, pz = pstar * sin_t * np.cos(phi), pstar * sin_t * np.sin(phi), pstar * cos_t
    e1 = np.sqrt(pstar * pstar + m1 * m1)
    e2 = np.sqrt(pstar * pstar + m2 * m2)
    bx, by, bz = parent[1] / parent[0], parent[2] / parent[0], parent[3] / parent[0]
    d1 = _boost((e1, px, py, pz), bx, by, bz)
    d2 = _boost((e2, -px, -py, -pz), bx, by, bz)
    return d1, d2


def _hard_system(rng, mass):
    """Lab 4-vector of a system of given masses with a longitudinal boost and pT recoil."""
    n = mass.shape[0]
    y = RAPIDITY_SIGMA * rng.standard_normal(n, dtype=_F)
    pt = rng.gamma(RECOIL_SHAPE, RECOIL_SCALE, n).astype(_F)
    phi = _F(2.0 * np.pi) * rng.random(n, dtype=_F)
    mt = np.sqrt(mass * mass + pt * pt)
    system = (mt * np.cosh(y), pt * np.cos(phi), pt * np.sin(phi), mt * np.sinh(y))
    # The recoil is balanced by one initial-state parton (massless).
    isr_eta = ISR_ETA_SIGMA * rng.standard_normal(n, dtype=_F)
    isr = (pt * np.cosh(isr_eta), -system[1], -system[2], pt * np.sinh(isr_eta))
    return system, isr


def _w_masses(rng, n):
    return _breit_wigner(rng, M_W, W_W, np.full(n, 40.0), np.full(n, 120.0))


# --- the two processes: return partons (b1, b2, q1, q2, isr), lepton, neutrino ------------


def _signal_partons(rng, n):
    mw_a, mw_b = _w_masses(rng, n), _w_masses(rng, n)
    m_h = _breit_wigner(rng, M_H, W_H, np.full(n, M_H - 5.0), np.full(n, M_H + 5.0))
    m_hpm = _breit_wigner(rng, M_HPM, W_HPM, mw_b + m_h + 1e-3, np.full(n, M_HPM + 60.0))
    m_h0 = _breit_wigner(rng, M_H0, W_H0, m_hpm + mw_a + 1e-3, np.full(n, M_H0 + 100.0))
    h0, isr = _hard_system(rng, m_h0)
    w_a, hpm = _two_body(rng, h0, m_h0, mw_a, m_hpm)
    w_b, h = _two_body(rng, hpm, m_hpm, mw_b, m_h)
    b1, b2 = _two_body(rng, h, m_h, np.full(n, M_B, _F), np.full(n, M_B, _F))
    return _decay_ws(rng, n, (w_a, mw_a), (w_b, mw_b), b1, b2, isr)


def _background_partons(rng, n):
    mw_1, mw_2 = _w_masses(rng, n), _w_masses(rng, n)
    top_hi = np.full(n, M_T + 30.0)
    m_t1 = _breit_wigner(rng, M_T, W_T, np.maximum(mw_1 + M_B + 1e-3, M_T - 30.0), top_hi)
    m_t2 = _breit_wigner(rng, M_T, W_T, np.maximum(mw_2 + M_B + 1e-3, M_T - 30.0), top_hi)
    m_tt = m_t1 + m_t2 + rng.gamma(TTBAR_EXCESS_SHAPE, TTBAR_EXCESS_SCALE, n).astype(_F) + 1e-3
    tt, isr = _hard_system(rng, m_tt)
    t1, t2 = _two_body(rng, tt, m_tt, m_t1, m_t2)
    w_1, b1 = _two_body(rng, t1, m_t1, mw_1, np.full(n, M_B, _F))
    w_2, b2 = _two_body(rng, t2, m_t2, mw_2, np.full(n, M_B, _F))
    return _decay_ws(rng, n, (w_1, mw_1), (w_2, mw_2), b1, b2, isr)


def _decay_ws(rng, n, wa, wb, b1, b2, isr):
    """Pick which W decays leptonically (50/50) and decay both W's."""
    (pa, ma), (pb, mb) = wa, wb
    lep_is_a = rng.random(n) < 0.5
    w_lep = tuple(np.where(lep_is_a, x, y) for x, y in zip(pa, pb, strict=True))
    w_had = tuple(np.where(lep_is_a, y, x) for x, y in zip(pa, pb, strict=True))
    m_lep, m_had = np.where(lep_is_a, ma, mb), np.where(lep_is_a, mb, ma)
    zero = np.zeros(n, _F)
    lepton, nu = _two_body(rng, w_lep, m_lep, zero, zero)
    q1, q2 = _two_body(rng, w_had, m_had, zero, zero)
    return (b1, b2, q1, q2, isr), lepton, nu, m_lep


# --- detector and reconstruction -------------------------------------------------------------


def _reconstruct(rng, partons, lepton, nu, m_w_lep):
    """Smear, select and reconstruct; return raw (unscaled) features [n_kept, 28] in GeV.

    ``m_w_lep`` is the leptonic W's generated mass, the neutrino-pz constraint (see the module
    docstring for why).
    """
    n = lepton[0].shape[0]
    k = len(partons)
    # [n, k] arrays of parton 4-vector components.
    p = [np.stack([q[i] for q in partons], axis=1) for i in range(4)]
    energy = p[0]
    sigma = np.sqrt(JET_STOCHASTIC**2 / np.maximum(energy, 1e-3) + JET_CONSTANT**2)
    scale = np.maximum(1.0 + sigma * rng.standard_normal((n, k), dtype=_F), 0.05)
    jets = [c * scale for c in p]
    lscale = np.maximum(1.0 + LEPTON_RESOLUTION * rng.standard_normal(n, dtype=_F), 0.05)
    lep = tuple(c * lscale for c in lepton)

    # MET: neutrino + every object's mismeasurement (true − measured) + soft term.
    metx = nu[1] + (p[1] - jets[1]).sum(axis=1) + (lepton[1] - lep[1])
    mety = nu[2] + (p[2] - jets[2]).sum(axis=1) + (lepton[2] - lep[2])
    metx = metx + MET_SOFT_SIGMA * rng.standard_normal(n, dtype=_F)
    mety = mety + MET_SOFT_SIGMA * rng.standard_normal(n, dtype=_F)

    # B-tag levels: partons 0 and 1 are b quarks, the rest light (incl. the ISR gluon).
    u = rng.random((n, k), dtype=_F)
    is_b = np.zeros((1, k), dtype=bool)
    is_b[0, :2] = True
    p0 = np.where(is_b, BTAG_B[0], BTAG_LIGHT[0])
    p01 = np.where(is_b, BTAG_B[0] + BTAG_B[1], BTAG_LIGHT[0] + BTAG_LIGHT[1])
    level = (u >= p0).astype(np.int8) + (u >= p01).astype(np.int8)

    jpt = np.hypot(jets[1], jets[2])
    jeta = np.arcsinh(jets[3] / np.maximum(jpt, 1e-9))
    good = (jpt > PT_MIN) & (np.abs(jeta) < ETA_MAX)
    lpt, leta = _pt(lep), _eta(lep)
    keep = (good.sum(axis=1) >= 4) & (lpt > PT_MIN) & (np.abs(leta) < ETA_MAX)

    # 4 leading good jets by pT.
    order = np.argsort(np.where(good, -jpt, np.inf), axis=1)[keep, :4]
    rows = np.arange(order.shape[0])[:, None]
    sel = np.flatnonzero(keep)[:, None]
    j = [c[sel, order] for c in jets]  # each [m, 4]
    j_pt, j_eta, j_lvl = jpt[sel, order], jeta[sel, order], level[sel, order]
    j_phi = np.arctan2(j[2], j[1])
    lep = tuple(c[keep] for c in lep)
    lpt, leta = lpt[keep], leta[keep]
    metx, mety = metx[keep], mety[keep]
    m = lep[0].shape[0]

    nu_rec = _neutrino(lep, metx, mety, m_w_lep[keep])

    # Pairing: two highest b-tag levels (ties by pT) are the b jets; jets come pT-sorted so a
    # stable sort on the level keeps the pT order inside a level.
    border = np.argsort(-j_lvl, axis=1, kind="stable")
    jv = [c[rows, border] for c in j]
    b1, b2 = tuple(c[:, 0] for c in jv), tuple(c[:, 1] for c in jv)
    q1, q2 = tuple(c[:, 2] for c in jv), tuple(c[:, 3] for c in jv)
    w_had = _add(q1, q2)
    w_lep = _add(lep, nu_rec)
    had1, lep2 = _mass(_add(w_had, b1)), _mass(_add(w_lep, b2))
    had2, lep1 = _mass(_add(w_had, b2)), _mass(_add(w_lep, b1))
    first = (had1 - M_T) ** 2 + (lep2 - M_T) ** 2 <= (had2 - M_T) ** 2 + (lep1 - M_T) ** 2
    m_jjj = np.where(first, had1, had2)
    m_jlv = np.where(first, lep2, lep1)
    bb = _add(b1, b2)
    wbb = _add(w_had, bb)

    out = np.empty((m, schema.NUM_FEATURES), _F)
    out[:, 0], out[:, 1], out[:, 2] = lpt, leta, _phi(lep)
    out[:, 3], out[:, 4] = np.hypot(metx, mety), np.arctan2(mety, metx)
    for i in range(4):
        c = 5 + 4 * i
        out[:, c], out[:, c + 1], out[:, c + 2] = j_pt[:, i], j_eta[:, i], j_phi[:, i]
        out[:, c + 3] = j_lvl[:, i]
    out[:, 21] = _mass(w_had)
    out[:, 22] = m_jjj
    out[:, 23] = _mass(w_lep)
    out[:, 24] = m_jlv
    out[:, 25] = _mass(bb)
    out[:, 26] = _mass(wbb)
    out[:, 27] = _mass(_add(wbb, w_lep))
    return out


def _neutrino(lep, metx, mety, m_w):
    """Neutrino 4-vector from MET and the constraint m(ℓν) = m_w (smaller-|pz| root)."""
    el, lx, ly, lz = lep
    pt2 = np.maximum(lx * lx + ly * ly, 1e-9)
    mu = 0.5 * m_w * m_w + lx * metx + ly * mety
    a = mu * lz / pt2
    disc = a * a - (el * el * (metx * metx + mety * mety) - mu * mu) / pt2
    root = np.sqrt(np.maximum(disc, 0.0))  # complex roots → real part (disc clipped to 0)
    pz = np.where(np.abs(a - root) < np.abs(a + root), a - root, a + root)
    e = np.sqrt(metx * metx + mety * mety + pz * pz)
    return (e, metx, mety, pz)


# --- scaling ---------------------------------------------------------------------------------

_PHI_COLS = tuple(schema.feature_index(n) for n in schema.FEATURES if n.endswith("_phi"))
_BTAG_COLS = tuple(schema.feature_index(f"jet{i}_btag") for i in range(1, 5))


def _scale_factors() -> np.ndarray:
    factors = 1.0 / _SCALE
    factors[list(_PHI_COLS)] = 1.0 / PHI_DIVISOR
    factors[list(_BTAG_COLS)] = BTAG_UNIT
    return factors.astype(np.float32)


_FACTORS = _scale_factors()


def _scale(raw: np.ndarray) -> np.ndarray:
    """Raw GeV/η/φ/level columns → the real file's scaling, in one float32 pass.

    B-tag levels (0, 1, 2) times the float32 unit give exactly the real file's values.
    """
    return np.multiply(raw, _FACTORS, dtype=np.float32)


# --- streams ---------------------------------------------------------------------------------


def _block_rng(seed: int, stream: int, block: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(stream, block)))


class _ClassStream:
    """Accepted events of one class, generated in fixed candidate blocks (chunking-invariant)."""

    def __init__(self, seed: int, stream: int):
        self.seed, self.stream = seed, stream
        self.block = 0
        self.buffer = np.empty((0, schema.NUM_FEATURES), _F)

    def take(self, n: int) -> np.ndarray:
        parts, have = [self.buffer], self.buffer.shape[0]
        while have < n:
            rng = _block_rng(self.seed, self.stream, self.block)
            self.block += 1
            make = _signal_partons if self.stream == _STREAM_SIGNAL else _background_partons
            partons, lepton, nu, m_w_lep = make(rng, _CANDIDATE_BLOCK)
            events = _reconstruct(rng, partons, lepton, nu, m_w_lep)
            parts.append(events)
            have += events.shape[0]
        allev = np.concatenate(parts) if len(parts) > 1 else self.buffer
        self.buffer = allev[n:].copy()  # < one block; don't keep the whole chunk alive
        return allev[:n]


class _LabelStream:
    """Labels drawn with P(signal) = SIGNAL_FRACTION, in fixed blocks like the events."""

    def __init__(self, seed: int):
        self.seed, self.block = seed, 0
        self.buffer = np.empty(0, dtype=bool)

    def take(self, n: int) -> np.ndarray:
        parts, have = [self.buffer], self.buffer.shape[0]
        while have < n:
            rng = _block_rng(self.seed, _STREAM_LABEL, self.block)
            self.block += 1
            parts.append(rng.random(_LABEL_BLOCK) < SIGNAL_FRACTION)
            have += _LABEL_BLOCK
        allv = np.concatenate(parts)
        self.buffer = allv[n:]
        return allv[:n]


class _EventStream:
    """The deterministic sequence of (label, raw features) for one seed."""

    def __init__(self, seed: int, raw: bool = False):
        self.labels = _LabelStream(seed)
        self.signal = _ClassStream(seed, _STREAM_SIGNAL)
        self.background = _ClassStream(seed, _STREAM_BACKGROUND)
        self.raw = raw

    def take(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        is_sig = self.labels.take(n)
        nsig = int(is_sig.sum())
        both = np.concatenate([self.signal.take(nsig), self.background.take(n - nsig)])
        # Row i takes the next signal event if its label is signal, else the next background
        # one: a gather (np.take) is much faster than boolean-mask assignment of rows.
        rank_sig = np.cumsum(is_sig) - 1
        rank_bkg = nsig + np.arange(n) - rank_sig - 1
        feats = np.take(both, np.where(is_sig, rank_sig, rank_bkg), axis=0)
        if not self.raw:
            feats = _scale(feats)
        return is_sig.astype(np.float32), feats


def _check_args(rows: int, seed: int) -> None:
    if not isinstance(rows, (int, np.integer)) or rows < 0:
        raise SynthError(f"rows must be a non-negative integer, got {rows!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SynthError(f"seed must be a non-negative integer, got {seed!r}")


def generate(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Generate HIGGS-like events in memory.

    Args:
        rows: number of events.
        seed: any non-negative integer; the output is a pure function of (seed, row index).

    Returns:
        ``(labels, features)``: float32 [rows] (1.0 signal, 0.0 background) and float32
        [rows, 28] in the column order of :data:`pipeline.core.schema.FEATURES`, scaled like
        the real file.
    """
    _check_args(rows, seed)
    return _EventStream(int(seed)).take(int(rows))


def calibrate(rows: int = 400_000, seed: int = 12345) -> np.ndarray:
    """Re-derive :data:`COLUMN_DIVISORS` (mean for GeV columns, std for η columns).

    Args:
        rows: events of the 53%-signal mixture to average over.
        seed: generator seed.

    Returns:
        float64 [28] divisors (φ and b-tag entries are 1; they use fixed real-file values).
    """
    _, raw = _EventStream(seed, raw=True).take(rows)
    div = raw.mean(axis=0)
    eta_cols = [schema.feature_index(n) for n in schema.FEATURES if n.endswith("_eta")]
    div[eta_cols] = raw[:, eta_cols].std(axis=0)
    div[list(_PHI_COLS) + list(_BTAG_COLS)] = 1.0
    return div


# --- writing ---------------------------------------------------------------------------------

_GZIP_LEVEL = 1  # ISA-L level 1: ~0.47 of the text size at several hundred MB/s
_GZIP_PIECE = 4 << 20


def format_csv(labels: np.ndarray, features: np.ndarray) -> bytes:
    """Format rows as UCI-layout CSV text (no header, label first).

    Arrow writes each float32 as its shortest decimal that parses back to the same float32
    (e.g. ``1.0865381``), so the text round-trips bit for bit whether a reader parses to
    float32 directly or to float64 and then casts.

    Args:
        labels: float32 [n].
        features: float32 [n, 28].

    Returns:
        The CSV bytes, one ``\\n``-terminated line per row.
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv

    columns = [np.ascontiguousarray(labels, dtype=np.float32)]
    columns += list(np.ascontiguousarray(np.asarray(features, dtype=np.float32).T))
    table = pa.table([pa.array(c) for c in columns], names=list(schema.CSV_COLUMNS))
    sink = pa.BufferOutputStream()
    pacsv.write_csv(table, sink, pacsv.WriteOptions(include_header=False, batch_size=1 << 20))
    return sink.getvalue().to_pybytes()


def write_csv(out: str | Path, rows: int, seed: int, chunk_rows: int = 65_536) -> SynthResult:
    """Generate ``rows`` events and write them as a deterministic gzip CSV.

    The file is written to a temporary name in the same directory and renamed when
    complete, so an existing file is always whole. The gzip header carries mtime 0 and no
    file name, so the same seed gives byte-identical files.

    Three stages overlap (Arrow, ISA-L and numpy's big array operations release the GIL):
    the calling thread generates chunk i+2 while up to two threads format chunks as text
    and one thread compresses and writes them in order. At most a few chunks are in flight,
    so memory stays around 100–200 MB whatever ``rows`` is (11M rows are fine).

    Args:
        out: destination path (``.csv.gz``); parent directories are created.
        rows: number of events.
        seed: generator seed.
        chunk_rows: events per chunk (memory bound; does not change the output).

    Returns:
        A :class:`SynthResult` with the path, row count, signal fraction and both rates
        (``write_rows_per_s`` counts the formatting and compression time as if one thread
        did both, so it is comparable with a plain single-threaded writer).
    """
    import threading
    from collections import deque
    from concurrent.futures import Future, ThreadPoolExecutor

    from isal import igzip

    _check_args(rows, seed)
    if chunk_rows <= 0:
        raise SynthError(f"chunk_rows must be positive, got {chunk_rows}")
    path = Path(out)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SynthError(f"cannot create {path.parent}: {exc.strerror or exc}; "
                         "choose a writable --out") from None
    # Unique per process and call, so concurrent writers of the same file never share a temp.
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    stream = _EventStream(int(seed))
    format_threads = max(1, min(2, os.cpu_count() or 1))
    gen_seconds = gen_cpu = 0.0
    write_seconds = [0.0, 0.0]  # wall, CPU summed over the format and compress stages
    lock = threading.Lock()
    signal = 0
    start = time.perf_counter()
    pending_text = bytearray()

    def timed(t: float, c: float) -> None:
        with lock:
            write_seconds[0] += time.perf_counter() - t
            write_seconds[1] += time.thread_time() - c

    def format_block(labels: np.ndarray, feats: np.ndarray) -> bytes:
        t, c = time.perf_counter(), time.thread_time()
        text = format_csv(labels, feats)
        timed(t, c)
        return text

    def compress_block(gz, text: Future) -> None:
        data = text.result()  # blocks until this chunk is formatted: keeps the file in order
        t, c = time.perf_counter(), time.thread_time()
        # ISA-L's output depends on how the input is split across write() calls, so feed it
        # fixed-size pieces: the file is then identical for every chunk_rows.
        pending_text.extend(data)
        whole = len(pending_text) - len(pending_text) % _GZIP_PIECE
        with memoryview(pending_text) as view:
            for i in range(0, whole, _GZIP_PIECE):
                gz.write(view[i:i + _GZIP_PIECE])
        del pending_text[:whole]
        timed(t, c)

    try:
        with open(tmp, "wb") as raw, igzip.IGzipFile(
            filename="", mode="wb", fileobj=raw, compresslevel=_GZIP_LEVEL, mtime=0
        ) as gz, ThreadPoolExecutor(format_threads) as formatters, \
                ThreadPoolExecutor(1) as compressor:
            in_flight: deque[Future] = deque()
            for first in range(0, rows, chunk_rows):
                t, c = time.perf_counter(), time.thread_time()
                labels, feats = stream.take(min(chunk_rows, rows - first))
                gen_seconds += time.perf_counter() - t
                gen_cpu += time.thread_time() - c
                signal += int(labels.sum())
                text = formatters.submit(format_block, labels, feats)
                in_flight.append(compressor.submit(compress_block, gz, text))
                while len(in_flight) > format_threads + 1:  # bounded memory
                    in_flight.popleft().result()
            while in_flight:
                in_flight.popleft().result()
            gz.write(bytes(pending_text))
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise SynthError(f"cannot write {path}: {exc.strerror or exc}; choose a writable --out "
                         "with enough free space") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    seconds = time.perf_counter() - start
    return SynthResult(
        path=path,
        rows=rows,
        signal_fraction=signal / rows if rows else 0.0,
        seconds=seconds,
        events_per_s=rows / gen_seconds if gen_seconds > 0 else 0.0,
        write_rows_per_s=rows / write_seconds[0] if write_seconds[0] > 0 else 0.0,
        gen_cpu_seconds=gen_cpu,
        write_cpu_seconds=write_seconds[1],
    )
