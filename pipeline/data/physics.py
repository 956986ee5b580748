"""The physics model behind :mod:`pipeline.data.synth`: processes, decays, detector, features.

    python -c "from pipeline.data import physics; print(physics.M_H, physics.COLUMN_DIVISORS['m_bb'])"

Pure numpy on float32 blocks of candidate events; :mod:`pipeline.data.synth` draws the random
streams, picks the labels and writes files. Nothing runs at import time.

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
:func:`pipeline.data.synth.calibrate` if the model changes) so every file uses the same scale.
"""

from __future__ import annotations

import numpy as np

from pipeline.core import schema

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

# Kinematics run in float32: twice the numpy throughput of float64, and its ~1e-7 relative
# precision is far below the detector resolution (masses come out good to ~0.01 GeV).
F32 = np.float32




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
    return np.sqrt(m0 * m0 + mg * np.tan(u)).astype(F32)


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
    cos_t = 2.0 * rng.random(n, dtype=F32) - 1.0
    sin_t = np.sqrt(1.0 - cos_t * cos_t)
    phi = F32(2.0 * np.pi) * rng.random(n, dtype=F32)
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
    y = RAPIDITY_SIGMA * rng.standard_normal(n, dtype=F32)
    pt = rng.gamma(RECOIL_SHAPE, RECOIL_SCALE, n).astype(F32)
    phi = F32(2.0 * np.pi) * rng.random(n, dtype=F32)
    mt = np.sqrt(mass * mass + pt * pt)
    system = (mt * np.cosh(y), pt * np.cos(phi), pt * np.sin(phi), mt * np.sinh(y))
    # The recoil is balanced by one initial-state parton (massless).
    isr_eta = ISR_ETA_SIGMA * rng.standard_normal(n, dtype=F32)
    isr = (pt * np.cosh(isr_eta), -system[1], -system[2], pt * np.sinh(isr_eta))
    return system, isr


def _w_masses(rng, n):
    return _breit_wigner(rng, M_W, W_W, np.full(n, 40.0), np.full(n, 120.0))


# --- the two processes: return partons (b1, b2, q1, q2, isr), lepton, neutrino ------------


def signal_partons(rng: np.random.Generator, n: int) -> tuple:
    """``n`` signal candidates ``gg → H⁰ → W H±, H± → W h⁰, h⁰ → b b̄``.

    Args:
        rng: the block's random generator.
        n: candidate events.

    Returns:
        ``(partons (b1, b2, q1, q2, isr), lepton, neutrino, leptonic W mass)``, 4-vectors as
        tuples of float32 arrays (E, px, py, pz).
    """
    mw_a, mw_b = _w_masses(rng, n), _w_masses(rng, n)
    m_h = _breit_wigner(rng, M_H, W_H, np.full(n, M_H - 5.0), np.full(n, M_H + 5.0))
    m_hpm = _breit_wigner(rng, M_HPM, W_HPM, mw_b + m_h + 1e-3, np.full(n, M_HPM + 60.0))
    m_h0 = _breit_wigner(rng, M_H0, W_H0, m_hpm + mw_a + 1e-3, np.full(n, M_H0 + 100.0))
    h0, isr = _hard_system(rng, m_h0)
    w_a, hpm = _two_body(rng, h0, m_h0, mw_a, m_hpm)
    w_b, h = _two_body(rng, hpm, m_hpm, mw_b, m_h)
    b1, b2 = _two_body(rng, h, m_h, np.full(n, M_B, F32), np.full(n, M_B, F32))
    return _decay_ws(rng, n, (w_a, mw_a), (w_b, mw_b), b1, b2, isr)


def background_partons(rng: np.random.Generator, n: int) -> tuple:
    """``n`` background candidates ``t t̄ → W⁺b W⁻b̄``; returns as :func:`signal_partons`."""
    mw_1, mw_2 = _w_masses(rng, n), _w_masses(rng, n)
    top_hi = np.full(n, M_T + 30.0)
    m_t1 = _breit_wigner(rng, M_T, W_T, np.maximum(mw_1 + M_B + 1e-3, M_T - 30.0), top_hi)
    m_t2 = _breit_wigner(rng, M_T, W_T, np.maximum(mw_2 + M_B + 1e-3, M_T - 30.0), top_hi)
    m_tt = m_t1 + m_t2 + rng.gamma(TTBAR_EXCESS_SHAPE, TTBAR_EXCESS_SCALE, n).astype(F32) + 1e-3
    tt, isr = _hard_system(rng, m_tt)
    t1, t2 = _two_body(rng, tt, m_tt, m_t1, m_t2)
    w_1, b1 = _two_body(rng, t1, m_t1, mw_1, np.full(n, M_B, F32))
    w_2, b2 = _two_body(rng, t2, m_t2, mw_2, np.full(n, M_B, F32))
    return _decay_ws(rng, n, (w_1, mw_1), (w_2, mw_2), b1, b2, isr)


def _decay_ws(rng, n, wa, wb, b1, b2, isr):
    """Pick which W decays leptonically (50/50) and decay both W's."""
    (pa, ma), (pb, mb) = wa, wb
    lep_is_a = rng.random(n) < 0.5
    w_lep = tuple(np.where(lep_is_a, x, y) for x, y in zip(pa, pb, strict=True))
    w_had = tuple(np.where(lep_is_a, y, x) for x, y in zip(pa, pb, strict=True))
    m_lep, m_had = np.where(lep_is_a, ma, mb), np.where(lep_is_a, mb, ma)
    zero = np.zeros(n, F32)
    lepton, nu = _two_body(rng, w_lep, m_lep, zero, zero)
    q1, q2 = _two_body(rng, w_had, m_had, zero, zero)
    return (b1, b2, q1, q2, isr), lepton, nu, m_lep


# --- detector and reconstruction -------------------------------------------------------------


def reconstruct(rng: np.random.Generator, partons: tuple, lepton: tuple, nu: tuple,
                m_w_lep: np.ndarray) -> np.ndarray:
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
    scale = np.maximum(1.0 + sigma * rng.standard_normal((n, k), dtype=F32), 0.05)
    jets = [c * scale for c in p]
    lscale = np.maximum(1.0 + LEPTON_RESOLUTION * rng.standard_normal(n, dtype=F32), 0.05)
    lep = tuple(c * lscale for c in lepton)

    # MET: neutrino + every object's mismeasurement (true − measured) + soft term.
    metx = nu[1] + (p[1] - jets[1]).sum(axis=1) + (lepton[1] - lep[1])
    mety = nu[2] + (p[2] - jets[2]).sum(axis=1) + (lepton[2] - lep[2])
    metx = metx + MET_SOFT_SIGMA * rng.standard_normal(n, dtype=F32)
    mety = mety + MET_SOFT_SIGMA * rng.standard_normal(n, dtype=F32)

    # B-tag levels: partons 0 and 1 are b quarks, the rest light (incl. the ISR gluon).
    u = rng.random((n, k), dtype=F32)
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

    out = np.empty((m, schema.NUM_FEATURES), F32)
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

PHI_COLS = tuple(schema.feature_index(n) for n in schema.FEATURES if n.endswith("_phi"))
BTAG_COLS = tuple(schema.feature_index(f"jet{i}_btag") for i in range(1, 5))


def _scale_factors() -> np.ndarray:
    factors = 1.0 / _SCALE
    factors[list(PHI_COLS)] = 1.0 / PHI_DIVISOR
    factors[list(BTAG_COLS)] = BTAG_UNIT
    return factors.astype(np.float32)


_FACTORS = _scale_factors()


def scale(raw: np.ndarray) -> np.ndarray:
    """Raw GeV/η/φ/level columns → the real file's scaling, in one float32 pass.

    B-tag levels (0, 1, 2) times the float32 unit give exactly the real file's values.
    """
    return np.multiply(raw, _FACTORS, dtype=np.float32)
