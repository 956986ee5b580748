"""The UCI HIGGS text format: every value as ``%.18e`` of its float32, formatted with numpy.

    python -c "import numpy as np; from pipeline.data import uci_text; \
print(uci_text.format_rows(np.ones(1, np.float32), np.full((1, 28), 0.8692932, np.float32)))"

The real ``HIGGS.csv.gz`` writes each value, the label too, as C's ``%.18e`` of a float32
(``1.000000000000000000e+00,8.692932128906250000e-01,-6.350818276405334473e-01,…``): 19
significant digits of the value's *exact* binary expansion, correctly rounded (ties to even).
A float32's decimal exponent always has two digits (``e-45`` … ``e+38``), so every value is 24
characters plus an optional ``-``.

Python's ``'%.18e' % v`` costs ~1 µs a value, and 11M rows hold 319M values. Here the digits
come from integer arithmetic on the float32 bits, vectorised with numpy:

* ``x = m·2^e`` with ``m`` < 2^24. With the decimal exponent ``k`` and ``p = 18 − k``, the
  19-digit integer is ``N = round(x·10^p) = round(m·5^p / 2^t)``, ``t = −e − p`` (a left shift
  when ``t ≤ 0``). For ``2e-9 ≤ |x| < 1e17``, ``0 ≤ p ≤ 27`` so ``5^p`` < 2^63: the product
  ``m·5^p`` is formed exactly as a 128-bit (hi, lo) pair from 32-bit halves, and the bits
  shifted out are the exact remainder, so the rounding (half to even) is exact too.
* ``k`` starts from ``log10`` nudged up by 1e-9, so it is right or one too big; where the
  integer part comes out with 18 digits it is recomputed with ``k − 1``.
* The 19 digits become ASCII eight at a time with the SWAR multiply–shift method (Lemire,
  "Converting integers to decimal strings faster", 2021), written as four 64-bit words per
  value into 32-byte cells; one boolean mask then squeezes out the padding and the sign slot
  of non-negative values.
* Values outside that range — ``0 < |x| < 2e-9``, ``|x| ≥ 1e17``, inf, nan — are rare in this
  data and are formatted by Python's own ``'%.18e'``, so they are exact as well.

``tests/test_uci_text.py`` compares the output with Python's ``'%.18e'`` on millions of random
bit patterns, on every binary exponent, and on the edge values (powers of ten and two, ties,
subnormals, ±0, inf, nan). Numpy releases the GIL inside each operation, so threads format
blocks in parallel (:func:`pipeline.data.synth.write_csv` runs two).
"""

from __future__ import annotations

import numpy as np

# The vectorised range of |x| (and 0): float32 bounds, so that 0 <= 18 - k <= 27 holds exactly.
_LO, _HI = np.float32(2e-9), np.float32(1e17)
_SUB_BLOCK = 32_768  # values per pass: the temporaries stay in the CPU caches

_U = np.uint64
_POW5 = [5**i for i in range(28)]
_POW5_HI = np.array([v >> 32 for v in _POW5], dtype=np.uint64)
_POW5_LO = np.array([v & 0xFFFFFFFF for v in _POW5], dtype=np.uint64)
_PAIRS = np.frombuffer(b"".join(f"{i:02d}".encode() for i in range(100)), dtype="<u2").astype(np.uint64)
_E18, _E10 = _U(10**18), _U(10**10)
_ASCII0 = _U(0x3030303030303030)

# A cell is 32 bytes = 4 little-endian words; the text of a value is bytes 5..30 of it:
#   5 '-'  6 d0  7 '.'  8..15 d1-d8  16..23 d9-d16  24..25 d17 d18  26 'e'  27 ±  28..29 exp  30 sep
_CELL = 32
_KEEP = np.zeros(_CELL, bool)
_KEEP[5:31] = True
_WORD0 = _U(ord("-") << 40 | ord(".") << 56)
_WORD3 = _U(ord("e") << 16)


def _eight_digits(v: np.ndarray) -> np.ndarray:
    """uint64 values < 10^8 → their 8 ASCII digits as one little-endian word (first digit low)."""
    merged = (v // _U(10_000)) | ((v % _U(10_000)) << _U(32))
    top = ((merged * _U(10_486)) >> _U(20)) & _U(0x7F << 32 | 0x7F)
    hundreds = ((merged - _U(100) * top) << _U(16)) + top
    tens = ((hundreds * _U(103)) >> _U(10)) & _U(0xF << 48 | 0xF << 32 | 0xF << 16 | 0xF)
    tens += (hundreds - _U(10) * tens) << _U(8)
    return tens + _ASCII0


def _floor19(m: np.ndarray, e: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """floor(m·2^e·10^(18−k)) and whether the exact value rounds up (half to even).

    Args:
        m: uint64 significands (0 < m < 2^24).
        e: int64 binary exponents.
        k: int64 decimal exponents with 0 ≤ 18 − k ≤ 27 and a result below 2^64.

    Returns:
        ``(n uint64, up bool)``.
    """
    p = 18 - k
    t = -e - p
    # m·5^p as hi·2^64 + lo, from 32-bit halves of 5^p (each partial product < 2^56).
    a = m * _POW5_HI[p]
    b = m * _POW5_LO[p]
    lo = (a << _U(32)) + b
    hi = (a >> _U(32)) + (lo < b)
    right = np.maximum(t, 0).astype(np.uint64)
    n = (lo >> right) | (hi << (_U(64) - right))  # a shift by 64 gives 0 in numpy
    n <<= np.maximum(-t, 0).astype(np.uint64)
    rest = lo & ((_U(1) << right) - _U(1))
    half = (_U(1) << right) >> _U(1)
    up = (right > 0) & ((rest > half) | ((rest == half) & (n & _U(1)).astype(bool)))
    return n, up


def _words(flat: np.ndarray, seps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 32-byte cells of float32 values in the vectorised range, and their sign bits.

    ``seps`` holds each value's separator byte already shifted to its place (``<< 48``).
    """
    bits = flat.view(np.uint32).astype(np.uint64)
    negative = (bits >> _U(31)).astype(bool)
    biased = ((bits >> _U(23)) & _U(0xFF)).astype(np.int64)
    m = (bits & _U(0x7FFFFF)) | _U(1 << 23)  # the vectorised range holds no subnormals
    e = biased - 150
    zero = biased == 0
    m[zero], e[zero] = _U(1), 0  # 1·2^0: valid arithmetic, overwritten below
    with np.errstate(divide="ignore", invalid="ignore"):
        k = np.floor(np.log10(np.abs(flat), dtype=np.float64) + 1e-9).astype(np.int64)
    k[zero] = 0
    n, up = _floor19(m, e, k)
    low = np.flatnonzero(n < _E18)
    if low.size:
        k[low] -= 1
        n[low], up[low] = _floor19(m[low], e[low], k[low])
    n += up
    carry = n == _U(10**19)  # 9.99…95 rounded up: 1.000… with the next exponent
    n[carry] = _E18
    k[carry] += 1
    n[zero], k[zero] = _U(0), 0

    d0 = n // _E18
    rest = n - d0 * _E18
    groups = np.empty((flat.shape[0], 2), np.uint64)  # d1-d8 and d9-d16, side by side
    groups[:, 0] = rest // _E10
    rest -= groups[:, 0] * _E10
    groups[:, 1] = rest // _U(100)
    rest -= groups[:, 1] * _U(100)
    words = np.empty((flat.shape[0], 4), np.uint64)
    words[:, 0] = _WORD0 | ((d0 + _U(ord("0"))) << _U(48))
    words[:, 1:3] = _eight_digits(groups.reshape(-1)).reshape(-1, 2)
    exp_sign = (_U(ord("+")) + _U(2) * (k < 0)) << _U(24)  # '-' is '+' + 2
    words[:, 3] = _PAIRS[rest] | _WORD3 | exp_sign | (_PAIRS[np.abs(k)] << _U(32)) | seps
    return words, negative


def format_values(values: np.ndarray, separators: np.ndarray | None = None) -> bytes:
    """Format float32 values as ``%.18e`` text, each followed by its separator byte.

    Args:
        values: float32 array of any shape; formatted in C order.
        separators: uint8 array broadcastable to ``values.shape`` (e.g. ``,`` everywhere and
            ``\\n`` in the last column); default ``\\n`` after every value.

    Returns:
        The text; each value is exactly ``'%.18e' % float(v)``.
    """
    values = np.ascontiguousarray(values, dtype=np.float32)
    flat = values.reshape(-1)
    sep = np.uint8(ord("\n")) if separators is None else np.asarray(separators, np.uint8)
    seps = np.broadcast_to(sep.astype(np.uint64) << _U(48), values.shape).reshape(-1)
    pieces = []
    for start in range(0, flat.shape[0], _SUB_BLOCK):
        pieces.append(_format_flat(flat[start:start + _SUB_BLOCK], seps[start:start + _SUB_BLOCK]))
    return b"".join(pieces)


def _format_flat(flat: np.ndarray, seps: np.ndarray) -> bytes:
    magnitude = np.abs(flat)
    special = ~(((magnitude >= _LO) & (magnitude < _HI)) | (magnitude == 0))
    has_special = bool(special.any())
    work = np.where(special, np.float32(1), flat) if has_special else flat
    words, negative = _words(work, seps)
    keep = np.empty((flat.shape[0], _CELL), bool)
    keep[:] = _KEEP
    keep[:, 5] = negative
    cells = words.view(np.uint8)
    if not has_special:
        return cells[keep].tobytes()
    # Out-of-range values: Python's own formatting, spliced in where their cells would be.
    keep[special] = False
    ends = np.cumsum(keep.sum(axis=1))
    text = memoryview(cells[keep].tobytes())
    pieces, start = [], 0
    for i in np.flatnonzero(special).tolist():
        pieces.append(text[start:ends[i]])
        pieces.append(f"{float(flat[i]):.18e}".encode() + bytes([int(seps[i]) >> 48]))
        start = int(ends[i])
    pieces.append(text[start:])
    return b"".join(pieces)


def format_rows(labels: np.ndarray, features: np.ndarray) -> bytes:
    """Format rows in the UCI layout: ``label, 28 features``, ``%.18e`` each, ``\\n``-terminated.

    Args:
        labels: float32 [n].
        features: float32 [n, 28].

    Returns:
        The CSV bytes, one line per row, byte-identical to
        ``np.savetxt(f, rows.astype(np.float64), fmt="%.18e", delimiter=",")``.
    """
    features = np.asarray(features, dtype=np.float32)
    rows = np.empty((features.shape[0], features.shape[1] + 1), np.float32)
    rows[:, 0] = labels
    rows[:, 1:] = features
    seps = np.full(rows.shape[1], ord(","), np.uint8)
    seps[-1] = ord("\n")
    return format_values(rows, seps)
