"""Presplitting one .csv.gz into gzip parts: exact content, order, reuse, gs://, and the converter.

    .venv/bin/pytest tests/test_presplit.py

The decisive check: converting the parts (a glob, read in name order) gives the same dataset
— the same rows in every split and byte-identical shard files — as converting the single file.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pytest

from pipeline.core import storage
from pipeline.core.config import load_config
from pipeline.data import presplit


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    from pipeline.data import synth

    path = tmp_path_factory.mktemp("presplit") / "higgs.csv.gz"
    synth.write_csv(path, rows=22_000, seed=11)
    return path


def _text(path: str | Path) -> bytes:
    return gzip.decompress(storage.read_bytes(str(path)))


def test_parts_are_the_source_lines_in_order(source, tmp_path):
    result = presplit.presplit(str(source), str(tmp_path / "parts"), 6)

    assert len(result.parts) == 6 and not result.reused
    assert result.parts == sorted(result.parts)  # name order is row order
    assert [Path(p).name for p in result.parts][:2] == ["part-00000.csv.gz", "part-00001.csv.gz"]
    joined = b"".join(_text(p) for p in result.parts)
    assert joined == _text(source)
    assert result.rows == 22_000 == joined.count(b"\n")
    rows = [_text(p).count(b"\n") for p in result.parts]
    assert min(rows) > 0.5 * max(rows)  # cuts by compressed position give balanced parts
    assert all(_text(p).endswith(b"\n") for p in result.parts)  # cut at line ends only
    marker = json.loads((tmp_path / "parts" / presplit.MARKER).read_text())
    assert [p["rows"] for p in marker["parts"]] == rows


def test_rerun_reuses_and_output_is_deterministic(source, tmp_path):
    first = presplit.presplit(str(source), str(tmp_path / "a"), 4)
    mtimes = [Path(p).stat().st_mtime_ns for p in first.parts]
    again = presplit.presplit(str(source), str(tmp_path / "a"), 4)
    assert again.reused and again.parts == first.parts
    assert [Path(p).stat().st_mtime_ns for p in again.parts] == mtimes
    other = presplit.presplit(str(source), str(tmp_path / "b"), 4)  # gzip mtime 0: same bytes
    assert [Path(p).read_bytes() for p in other.parts] == [Path(p).read_bytes() for p in first.parts]


def test_plain_csv_source_and_one_part(source, tmp_path):
    plain = tmp_path / "plain.csv"
    plain.write_bytes(_text(source))
    result = presplit.presplit(str(plain), str(tmp_path / "parts"), 1)
    assert len(result.parts) == 1 and _text(result.parts[0]) == plain.read_bytes()


@pytest.mark.parametrize(("make_source", "parts", "needle"), [
    (lambda d: d / "missing.csv.gz", 4, "does not exist"),
    (lambda d: d / "x.csv.gz", 0, "parts must be at least 1"),
])
def test_errors_are_one_line(tmp_path, make_source, parts, needle):
    src = make_source(tmp_path)
    if src.name == "x.csv.gz":
        src.write_bytes(gzip.compress(b"1,2\n"))
    with pytest.raises(presplit.PresplitError) as err:
        presplit.presplit(str(src), str(tmp_path / "out"), parts)
    assert needle in str(err.value) and "\n" not in str(err.value)


@pytest.mark.gcs
def test_gcs_source_and_parts(source, gcs_bucket):
    uri = f"gs://{gcs_bucket}/sources/higgs.csv.gz"
    storage.write_bytes(uri, source.read_bytes())
    out = presplit.parts_location(f"gs://{gcs_bucket}/tmp", "data", uri)
    assert out == f"gs://{gcs_bucket}/tmp/parts/higgs"
    result = presplit.presplit(uri, out, 3)
    assert result.glob == f"{out}/part-*.csv.gz"
    assert b"".join(_text(p) for p in result.parts) == _text(source)
    assert presplit.presplit(uri, out, 3).reused


def _dataset_digest(data: Path) -> dict[str, str]:
    return {str(p.relative_to(data)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(data.rglob("*.tfrecord"))}


@pytest.mark.slow  # two real Beam conversions (~15 s idle, ~45 s on a loaded 2-core machine)
def test_converting_parts_gives_the_same_dataset(source, tmp_path):
    from pipeline.data import convert

    cfg = load_config("sample").data
    single = convert.convert(str(source), str(tmp_path / "single"), cfg)
    parts = presplit.presplit(str(source), str(tmp_path / "parts"), 5)
    split = convert.convert(parts.glob, str(tmp_path / "split"), cfg)

    assert split.manifest["rows"] == single.manifest["rows"]
    assert sum(single.manifest["rows"].values()) == 22_000
    digests = _dataset_digest(tmp_path / "single")
    assert digests and _dataset_digest(tmp_path / "split") == digests
