"""The converter with gs:// source and destination, against a real gcp-storage-emulator.

    .venv/bin/pytest tests/test_convert_gcs.py -q
"""

from __future__ import annotations

import dataclasses
import gzip
from pathlib import Path

import pytest

from pipeline.core import schema, storage
from pipeline.core.config import load_config
from pipeline.data import convert, dataset, records


def _cfg(**changes):
    return dataclasses.replace(load_config("sample").data, **changes)


def _shards(data: str) -> dict[str, bytes]:
    manifest = dataset.load_manifest(data)
    return {s["path"]: storage.read_bytes(storage.join(data, s["path"]))
            for split in schema.SPLITS for s in manifest["shards"][split]}


def test_gs_source_to_gs_dataset_matches_local(gcs_bucket: str, small_dataset: str) -> None:
    local_source = Path(small_dataset).parent / "source.csv.gz"
    source = f"gs://{gcs_bucket}/sources/HIGGS.csv.gz"
    storage.write_bytes(source, local_source.read_bytes())
    out = f"gs://{gcs_bucket}/data/sample"
    storage.write_bytes(f"{out}/.staging-0123456789ab/_pieces/p0.rec", b"left by a killed run")

    result = convert.convert(source, out, _cfg())
    assert not result.skipped
    manifest = dataset.load_manifest(out)
    assert manifest == result.manifest
    assert manifest["source"]["uri"] == source and manifest["source"]["crc32c"]
    assert manifest["source"]["bytes"] == local_source.stat().st_size
    assert manifest["rows"] == dataset.load_manifest(small_dataset)["rows"]
    # Byte-identical shards to the local conversion of the same file.
    got = _shards(out)
    assert got == {p: Path(small_dataset, p).read_bytes() for p in got}
    for data in got.values():  # every CRC checks out
        records.unframe_records(data)
    # Nothing else is left in the bucket: no staging, no pieces.
    assert set(storage.list_files(out)) == set(got) | {schema.MANIFEST_NAME}

    again = convert.convert(source, out, _cfg())
    assert again.skipped and again.manifest == manifest


def test_gs_glob_of_parts_and_bad_rows_report(gcs_bucket: str) -> None:
    lines = [f"{i % 2}," + ",".join(f"{(i * 29 + j) / 7:.6g}" for j in range(28))
             for i in range(300)]
    lines[290] = "1,oops" + ",0" * 27
    for k, (a, b) in enumerate([(0, 100), (100, 300)]):
        text = "".join(x + "\n" for x in lines[a:b]).encode()
        storage.write_bytes(f"gs://{gcs_bucket}/parts/part-{k:05d}.csv.gz", gzip.compress(text))
    out = f"gs://{gcs_bucket}/data/parts"
    source = f"gs://{gcs_bucket}/parts/part-*.csv.gz"
    with pytest.raises(convert.ConvertError, match=r"line 291, non_numeric"):
        convert.convert(source, out, _cfg())
    report = storage.read_text(f"{out}/bad_rows/bad_rows.tsv").splitlines()
    assert report[1].startswith("291\tnon_numeric\t1,oops")
    assert not storage.exists(dataset.manifest_uri(out))

    result = convert.convert(source, out, _cfg(max_bad_rows=1))
    assert result.manifest["bad_rows"] == 1 and sum(result.manifest["rows"].values()) == 299
    assert len(result.manifest["source"]["parts"]) == 2
    assert storage.exists(f"{out}/bad_rows/bad_rows.tsv")


def test_missing_gs_source_is_one_line(gcs_bucket: str) -> None:
    with pytest.raises(convert.ConvertError, match="not found") as err:
        convert.convert(f"gs://{gcs_bucket}/nope.csv.gz", f"gs://{gcs_bucket}/d", _cfg())
    assert "\n" not in str(err.value)
