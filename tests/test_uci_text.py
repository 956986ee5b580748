"""The UCI text format: ``%.18e`` of every float32, exactly as Python formats it, and back.

    .venv/bin/pytest tests/test_uci_text.py -q
"""

from __future__ import annotations

import gzip
import re

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from pipeline.core import schema
from pipeline.data import synth, uci_text

# The first line of the real HIGGS.csv.gz starts like this (UCI dataset 280).
REAL_HEAD = (b"1.000000000000000000e+00,8.692932128906250000e-01,-6.350818276405334473e-01,"
             b"2.256902605295181274e-01,3.274700641632080078e-01,-6.899932026863098145e-01")
UCI_VALUE = rb"-?[0-9]\.[0-9]{18}e[+-][0-9]{2}"
UCI_LINE = re.compile(rb"^" + UCI_VALUE + rb"(," + UCI_VALUE + rb"){28}$")


def _python(values: np.ndarray) -> list[bytes]:
    return [f"{float(v):.18e}".encode() for v in values.reshape(-1)]


def _ours(values: np.ndarray) -> list[bytes]:
    return uci_text.format_values(values).split(b"\n")[:-1]


def _edge_values() -> np.ndarray:
    f32 = np.finfo(np.float32)
    edges: list[float] = [0.0, -0.0, np.inf, -np.inf, np.nan, f32.max, f32.tiny, f32.smallest_subnormal,
                          1.0, 0.5, 1.5, 2.5, 9.5, 0.1, 1e-9, 2e-9, 1e17, 1e18, 9.999999e16]
    for k in range(-45, 39):  # every power of ten and its float32 neighbours
        p = np.float32(10.0**k)
        edges += [p, np.nextafter(p, np.float32(0)), np.nextafter(p, np.float32(np.inf))]
    for e in range(-149, 128):  # every power of two, and the largest significand below it
        p = np.float32(2.0**e)
        edges += [p, np.nextafter(p, np.float32(0))]
    # Halfway cases of the 19th digit: float32 values with exactly 20 significant digits
    # that end in 5 (m·2^-k with few digits), e.g. 1.25, 0.0625, 3.0517578125e-05.
    edges += [np.float32(m * 2.0**-k) for m in (1, 3, 5, 7, 11, 13, 12345) for k in range(1, 70)]
    values = np.array(edges, dtype=np.float32)
    return np.concatenate([values, -values])


def test_edge_values_match_python_exactly() -> None:
    values = _edge_values()
    assert _ours(values) == _python(values)


def test_random_bit_patterns_match_python_exactly() -> None:
    """2M uniformly random float32 bit patterns: every exponent, subnormals, inf and nan."""
    rng = np.random.default_rng(20240611)
    values = rng.integers(0, 2**32, 2_000_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    assert _ours(values) == _python(values)


def test_every_binary_exponent_of_the_vectorised_range() -> None:
    """Random significands (plus the extremes) for each exponent the integer path handles."""
    rng = np.random.default_rng(7)
    values = []
    for biased in range(1, 255):
        frac = np.concatenate([rng.integers(0, 1 << 23, 4000), [0, 1, (1 << 23) - 1]]).astype(np.uint32)
        values.append(((np.uint32(biased) << np.uint32(23)) | frac).view(np.float32))
    flat = np.concatenate(values)
    flat = flat[(np.abs(flat) >= uci_text._LO) & (np.abs(flat) < uci_text._HI)]
    assert flat.size > 80 * 4000  # 2e-9 … 1e17 spans 85 binary exponents
    assert _ours(flat) == _python(flat)


def test_generated_rows_match_savetxt_and_the_real_files_pattern() -> None:
    labels, features = synth.generate(3000, seed=11)
    text = uci_text.format_rows(labels, features)
    import io

    reference = io.BytesIO()
    rows = np.concatenate([labels[:, None], features], axis=1).astype(np.float64)
    np.savetxt(reference, rows, fmt="%.18e", delimiter=",")
    assert text == reference.getvalue()
    lines = text.split(b"\n")
    assert lines[-1] == b"" and len(lines) == 3001
    assert all(UCI_LINE.match(line) for line in lines[:-1])
    assert UCI_LINE.match(REAL_HEAD + b"," + b",".join([b"0.000000000000000000e+00"] * 23))


def test_round_trip_is_bit_exact_through_float32_and_float64_readers() -> None:
    rng = np.random.default_rng(3)
    values = rng.integers(0, 2**32, 300_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    values = values[np.isfinite(values)]
    text = uci_text.format_values(values)
    # float64 parse, then a cast (numpy, pandas) …
    back64 = np.array(text.split(b"\n")[:-1], dtype=np.float64).astype(np.float32)
    assert np.array_equal(back64.view(np.uint32), values.view(np.uint32))
    # … and pyarrow straight to float32, as the converter reads it.
    table = pacsv.read_csv(pa.py_buffer(text), read_options=pacsv.ReadOptions(column_names=["v"]),
                           convert_options=pacsv.ConvertOptions(column_types={"v": pa.float32()}))
    assert np.array_equal(table.column(0).to_numpy().view(np.uint32), values.view(np.uint32))


def test_synth_writes_the_uci_format_by_default_and_compact_on_request(tmp_path) -> None:
    uci = synth.write_csv(tmp_path / "uci.csv.gz", rows=2000, seed=5, chunk_rows=700)
    again = synth.write_csv(tmp_path / "again.csv.gz", rows=2000, seed=5)
    compact = synth.write_csv(tmp_path / "compact.csv.gz", rows=2000, seed=5, fmt="compact")
    assert uci.path.read_bytes() == again.path.read_bytes()  # same seed → same bytes
    text = gzip.decompress(uci.path.read_bytes())
    first = text.split(b"\n", 1)[0]
    assert UCI_LINE.match(first), first[:120]
    assert 700 < len(text) / 2000 < 760  # ≈ the real file's bytes per row
    short = gzip.decompress(compact.path.read_bytes())
    assert not UCI_LINE.match(short.split(b"\n", 1)[0]) and len(short) < len(text) / 2
    labels, features = synth.generate(2000, seed=5)
    for raw in (text, short):
        table = pacsv.read_csv(pa.py_buffer(raw),
                               read_options=pacsv.ReadOptions(column_names=list(schema.CSV_COLUMNS)),
                               convert_options=pacsv.ConvertOptions(
                                   column_types={c: pa.float32() for c in schema.CSV_COLUMNS}))
        got = np.stack([c.to_numpy() for c in table.columns], axis=1)
        want = np.concatenate([labels[:, None], features], axis=1)
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    with pytest.raises(synth.SynthError, match="unknown text format 'hex'"):
        synth.write_csv(tmp_path / "x.csv.gz", rows=10, seed=1, fmt="hex")
