"""The Beam converter on real data, the real DirectRunner and real TensorFlow readers.

    .venv/bin/pytest tests/test_convert.py -q
"""

from __future__ import annotations

import dataclasses
import gzip
import itertools
import json
import os
from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline.core import schema
from pipeline.core.config import load_config
from pipeline.core.storage import Files
from pipeline.data import convert, dataset, records, synth, textblocks
from pipeline.data.convert import stage, transforms

ROWS = 12_000  # the small_dataset fixture: synth seed 7, sample preset shard counts


def _cfg(**changes):
    return dataclasses.replace(load_config("sample").data, **changes)


def _csv_values(path: Path) -> np.ndarray:
    """Reference parse of a CSV(.gz), independent of pyarrow: Python float() → float32."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        return np.array([[float(t) for t in line.split(",")] for line in f if line.strip()],
                        dtype=np.float64).astype(np.float32)


def _kaggle_read(files: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """What a reader written for the public Kaggle HIGGS TFRecords gets, record by record."""
    feats, labels = [], []
    # decode_record runs per record; batching afterwards only saves Python-side iteration.
    for f, lab in tf.data.TFRecordDataset(files).map(records.decode_record).batch(4096):
        feats.append(f.numpy())
        labels.append(lab.numpy())
    return np.concatenate(feats), np.concatenate(labels).astype(np.float32)


def _row_keys(labels: np.ndarray, feats: np.ndarray) -> list[bytes]:
    return [np.concatenate([[lab], f]).astype(np.float32).tobytes()
            for lab, f in zip(labels, feats, strict=True)]


def _write_lines(path: Path, lines: list[str]) -> Path:
    text = "".join(line + "\n" for line in lines).encode()
    path.write_bytes(gzip.compress(text) if path.suffix == ".gz" else text)
    return path


def _good_lines(n: int, seed: int = 3) -> list[str]:
    return synth.format_csv(*synth.generate(n, seed=seed)).decode().splitlines()


def _shard_bytes(data: str) -> dict[str, bytes]:
    manifest = dataset.load_manifest(data)
    return {s["path"]: Path(data, s["path"]).read_bytes()
            for split in schema.SPLITS for s in manifest["shards"][split]}


# --- the fixture dataset: exact round trip, split rule, shards, manifest ------------------


def test_round_trip_every_row_once_bit_exact_in_its_split(small_dataset: str) -> None:
    source = Path(small_dataset).parent / "source.csv.gz"
    csv = _csv_values(source)
    assert csv.shape == (ROWS, 29)
    line_of = {key: i for i, key in enumerate(_row_keys(csv[:, 0], csv[:, 1:]))}
    assert len(line_of) == ROWS  # generated rows are unique, so a row identifies its line

    n_val = n_test = ROWS // 22  # 545: the scaled 1/22 rule
    expected = {"training": range(0, ROWS - n_val - n_test),
                "validation": range(ROWS - n_val - n_test, ROWS - n_test),
                "test": range(ROWS - n_test, ROWS)}  # the LAST rows are the test set
    manifest = dataset.load_manifest(small_dataset)
    seen: list[int] = []
    for split in schema.SPLITS:
        feats, labels = _kaggle_read(dataset.shard_paths(small_dataset, split, manifest))
        lines = sorted(line_of[k] for k in _row_keys(labels, feats))  # KeyError = altered bits
        assert lines == list(expected[split]), split
        seen += lines
        assert manifest["rows"][split] == len(expected[split])
    assert sorted(seen) == list(range(ROWS))
    # bit-identical, including the sign of zero: compare raw float32 bits per line
    feats, labels = _kaggle_read(dataset.shard_paths(small_dataset, "test", manifest))
    order = np.argsort([line_of[k] for k in _row_keys(labels, feats)])
    assert np.array_equal(feats[order].view(np.uint32), csv[-n_test:, 1:].view(np.uint32))
    assert np.array_equal(labels[order], csv[-n_test:, 0])


def test_values_equal_the_generator_output(small_dataset: str) -> None:
    labels, feats = synth.generate(ROWS, seed=7)
    manifest = dataset.load_manifest(small_dataset)
    got_f, got_l = [], []
    for split in schema.SPLITS:  # shards are contiguous row ranges, in manifest order
        for path in dataset.shard_paths(small_dataset, split, manifest):
            f, lab = records.decode_examples(records.unframe_records(Path(path).read_bytes()))
            got_f.append(f)
            got_l.append(lab)
    assert np.array_equal(np.concatenate(got_f).view(np.uint32), feats.view(np.uint32))
    assert np.array_equal(np.concatenate(got_l), labels)


def test_shards_and_manifest_agree(small_dataset: str) -> None:
    manifest = dataset.load_manifest(small_dataset)
    cfg = load_config("sample").data
    counts = {"training": cfg.training_shards, "validation": cfg.validation_shards,
              "test": cfg.test_shards}
    listed = set()
    for split in schema.SPLITS:
        shards = manifest["shards"][split]
        assert len(shards) == counts[split]
        assert sum(s["records"] for s in shards) == manifest["rows"][split]
        assert max(s["records"] for s in shards) - min(s["records"] for s in shards) <= 1
        for shard, path in zip(shards, dataset.shard_paths(small_dataset, split, manifest),
                               strict=True):
            assert not os.path.isabs(shard["path"]) and shard["path"].startswith(f"{split}/")
            assert os.path.getsize(path) == shard["records"] * records.FRAMED_BYTES
            assert sum(1 for _ in tf.data.TFRecordDataset(path)) == shard["records"]
            listed.add(os.path.normpath(path))
    on_disk = {os.path.normpath(str(p)) for p in Path(small_dataset).rglob("*") if p.is_file()}
    assert on_disk == listed | {os.path.normpath(dataset.manifest_uri(small_dataset))}
    assert manifest["bad_rows"] == 0 and manifest["features"] == list(schema.FEATURES)
    assert manifest["source"]["bytes"] == (Path(small_dataset).parent / "source.csv.gz").stat().st_size
    assert len(manifest["source"]["sha256"]) == 64
    assert manifest["converter_version"] == convert.CONVERTER_VERSION
    assert manifest["options"]["shards"] == counts
    assert manifest["split"]["lines"] == {"training": [0, 10910], "validation": [10910, 11455],
                                          "test": [11455, 12000]}


def test_many_small_blocks_give_the_same_dataset(tmp_path: Path, small_dataset: str) -> None:
    """Shards built from many whole pieces (kernel copy + piece summaries) and cut pieces."""
    src = Path(small_dataset).parent / "source.csv.gz"
    result = convert.convert(str(src), str(tmp_path / "data"),
                             _cfg(block_rows=300, training_shards=3))
    reference = dataset.load_manifest(small_dataset)
    train = b"".join(_shard_bytes(small_dataset)[s["path"]]
                     for s in reference["shards"]["training"])
    got = _shard_bytes(str(tmp_path / "data"))
    assert b"".join(got[s["path"]] for s in result.manifest["shards"]["training"]) == train
    assert len(result.manifest["shards"]["training"]) == 3
    for name, stats in reference["feature_stats"].items():
        assert result.manifest["feature_stats"][name] == pytest.approx(stats, rel=1e-7, abs=1e-12)
    assert result.manifest["signal_fraction"] == reference["signal_fraction"]


def test_training_statistics_match_numpy(small_dataset: str) -> None:
    manifest = dataset.load_manifest(small_dataset)
    feats, labels = _kaggle_read(dataset.shard_paths(small_dataset, "training", manifest))
    stats = manifest["feature_stats"]
    for j, name in enumerate(schema.FEATURES):
        col = feats[:, j].astype(np.float64)
        s = stats[name]
        assert s["count"] == feats.shape[0]
        assert s["mean"] == pytest.approx(col.mean(), rel=1e-9, abs=1e-12)
        assert s["std"] == pytest.approx(col.std(), rel=1e-7)  # squares summed from float32
        assert (s["min"], s["max"]) == (float(col.min()), float(col.max()))
    assert manifest["signal_fraction"]["training"] == pytest.approx(float(labels.mean()))


# --- the split rule -------------------------------------------------------------------------


def test_full_file_split_is_10m_500k_500k_with_the_last_rows_as_test() -> None:
    plan = convert.plan_splits(11_000_000, [], None, None)
    assert plan.lines == {"training": (0, 10_000_000), "validation": (10_000_000, 10_500_000),
                          "test": (10_500_000, 11_000_000)}


def test_split_sizes_given_and_bad_lines_keep_their_place() -> None:
    plan = convert.plan_splits(1000, [5, 990], 100, 50)
    assert plan.lines["test"] == (950, 1000) and plan.lines["validation"] == (850, 950)
    # line 5 is dropped from training, line 990 from test: records shift, lines do not
    assert plan.records == {"training": (0, 849), "validation": (849, 949), "test": (949, 998)}
    with pytest.raises(convert.ConvertError, match="too few"):
        convert.plan_splits(21, [], None, None)


def test_shard_plan_cuts_pieces_at_exact_record_boundaries() -> None:
    pieces = [{"part": 0, "line0": 0, "lines": 7, "records": 7, "path": "a"},
              {"part": 0, "line0": 7, "lines": 5, "records": 5, "path": "b"},
              {"part": 1, "line0": 0, "lines": 10, "records": 10, "path": "c"}]
    cfg = {"validation_rows": 4, "test_rows": 4, "shards": {"training": 3, "validation": 2,
                                                            "test": 8}}
    plan, tasks, bad = convert.plan_shards(pieces, [(0, 12), (1, 10)], [], cfg)
    assert plan.lines["training"] == (0, 14) and bad == []
    by_split = {s: [t for t in tasks if t["split"] == s and t["kind"] == "shard"]
                for s in schema.SPLITS}
    stats = {t["split"]: t for t in tasks if t["kind"] == "stats"}
    assert [t["records"] for t in by_split["training"]] == [4, 5, 5]
    assert len(by_split["test"]) == 4  # never more shards than records
    fb = records.FRAMED_BYTES
    assert by_split["training"][1]["ranges"] == [("a", 4 * fb, 7 * fb), ("b", 0, 2 * fb)]
    assert by_split["training"][2]["ranges"] == [("b", 2 * fb, 5 * fb), ("c", 0, 2 * fb)]
    assert by_split["validation"][0]["ranges"] == [("c", 2 * fb, 4 * fb)]
    covered = sum(e - s for t in tasks if t["kind"] == "shard" for _, s, e in t["ranges"])
    assert covered == 22 * fb
    # statistics: whole pieces by summary only (none here: the pieces carry no summary)
    assert stats["training"]["ranges"] == [("a", 0, 7 * fb), ("b", 0, 5 * fb), ("c", 0, 2 * fb)]
    assert stats["training"]["summaries"] == [None, None, None]


# --- parsing --------------------------------------------------------------------------------


def test_parse_block_fast_and_slow_paths_agree() -> None:
    lines = _good_lines(50)
    text = "".join(x + "\n" for x in lines).encode()
    labels, feats, bad = convert.parse_block(text)
    assert bad == [] and feats.shape == (50, 28)
    broken = [*lines[:10], "1,2,3", *lines[10:]]
    labels2, feats2, bad2 = convert.parse_block("".join(x + "\n" for x in broken).encode())
    assert bad2 == [(10, "columns")]
    assert np.array_equal(feats2.view(np.uint32), feats.view(np.uint32))
    assert np.array_equal(labels2, labels)
    crlf = "".join(x + "\r\n" for x in lines).encode()
    _, feats3, bad3 = convert.parse_block(crlf)
    assert bad3 == [] and np.array_equal(feats3, feats)


def test_text_blocks_cover_every_line_once() -> None:
    import io

    text = b"".join(b"%d,x\n" % i for i in range(1000)) + b"1000,last-without-newline"
    blocks = list(convert.iter_text_blocks(io.BytesIO(text), 97))
    assert all(b.endswith(b"\n") and b.count(b"\n") == n for _, n, b in blocks)
    assert b"".join(b for _, _, b in blocks) == text + b"\n"
    starts = [line0 for line0, _, _ in blocks]
    counts = [n for _, n, _ in blocks]
    assert starts == list(np.cumsum([0, *counts[:-1]])) and sum(counts) == 1001


def test_convert_part_transform_with_test_pipeline(tmp_path: Path) -> None:
    """The read step's pieces, dead-letter rows and part length, on Beam's TestPipeline."""
    import io

    lines = [*_good_lines(400), "0.5," + ",".join(["1"] * 28), *_good_lines(100, seed=4)]
    src = _write_lines(tmp_path / "x.csv.gz", lines)
    block_bytes = 20_000  # several blocks, so the block pool runs several at once
    text = gzip.decompress(src.read_bytes())
    counts = [bytes(b).count(b"\n") for b in textblocks.read_blocks(io.BytesIO(text), block_bytes)]
    starts = list(itertools.accumulate([0, *counts[:-1]]))
    assert len(starts) > 3 and sum(counts) == 501
    staging = str(tmp_path / "staging")
    with test_pipeline.TestPipeline() as p:
        out = (p | beam.Create([(3, str(src))])
               | beam.ParDo(transforms.ConvertPart(block_bytes, Files(), staging, threads=2)))
        pieces = out | "Pieces" >> beam.Filter(lambda e: e[0] == convert.PIECE)
        assert_that(pieces | beam.Map(lambda e: (e[1]["part"], e[1]["line0"])),
                    equal_to([(3, s) for s in starts]), label="pieces")
        assert_that(pieces | beam.Map(lambda e: e[1]["records"]) | beam.CombineGlobally(sum),
                    equal_to([500]), label="good")
        assert_that(out | "Bad" >> beam.Filter(lambda e: e[0] == convert.BAD)
                    | beam.Map(lambda e: e[1][:3]), equal_to([(3, 400, "label")]), label="bad")
        assert_that(out | "Part" >> beam.Filter(lambda e: e[0] == convert.PART)
                    | beam.Map(lambda e: e[1]), equal_to([(3, 501)]), label="parts")
    # Every piece holds its block's good rows, framed, in line order.
    written = sorted((tmp_path / "staging").rglob("*.rec"))
    assert len(written) == len(starts)
    records_total = sum(f.stat().st_size for f in written) // records.FRAMED_BYTES
    assert records_total == 500


# --- bad rows -------------------------------------------------------------------------------

BAD_LINES = {  # 0-based line → (kind, text); each kind at least once
    5: ("columns", ",".join(["1"] * 28)),
    9: ("non_numeric", "1," + ",".join(["0.5"] * 27) + ",abc"),
    12: ("non_numeric", "0," + ",".join(["0.5"] * 27) + ","),
    20: ("non_finite", "1," + ",".join(["0.5"] * 27) + ",nan"),
    33: ("non_finite", "0,inf," + ",".join(["0.5"] * 27)),
    47: ("label", "2," + ",".join(["0.5"] * 28)),
    60: ("columns", ""),
    460: ("label", "0.5," + ",".join(["0.5"] * 28)),  # inside the test split
}


def _bad_source(tmp_path: Path) -> tuple[Path, int]:
    lines = _good_lines(460)
    for i in sorted(BAD_LINES):
        lines.insert(i, BAD_LINES[i][1])
    return _write_lines(tmp_path / "bad.csv.gz", lines), len(lines)


def test_bad_rows_over_the_limit_fail_with_one_line_and_a_report(tmp_path: Path) -> None:
    src, _ = _bad_source(tmp_path)
    out = tmp_path / "data"
    with pytest.raises(convert.ConvertError) as err:
        convert.convert(str(src), str(out), _cfg(max_bad_rows=7))
    message = str(err.value)
    assert "\n" not in message and "8 bad rows" in message and "--max-bad-rows 7" in message
    assert "line 6" in message  # the first bad line, 1-based
    assert not (out / "manifest.json").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".staging")]
    report = (out / "bad_rows" / "bad_rows.tsv").read_text().splitlines()
    assert report[0] == "line\tkind\ttext"
    got = [(int(n), k) for n, k, *_ in (r.split("\t") for r in report[1:])]
    assert got == [(i + 1, kind) for i, (kind, _) in sorted(BAD_LINES.items())]
    with pytest.raises(dataset.DatasetError, match="not a dataset"):
        dataset.load_manifest(str(out))


def test_bad_rows_within_the_limit_are_skipped_counted_and_keep_positions(tmp_path: Path) -> None:
    src, total = _bad_source(tmp_path)
    result = convert.convert(str(src), str(tmp_path / "data"), _cfg(max_bad_rows=8))
    m = result.manifest
    assert m["bad_rows"] == 8 and sum(m["rows"].values()) == total - 8
    kinds = {}
    for kind, _ in BAD_LINES.values():
        kinds[kind] = kinds.get(kind, 0) + 1
    assert {k: v for k, v in m["bad_rows_by_kind"].items() if v} == kinds
    assert {k: result.metrics.get(f"bad_rows_{k}", 0) for k in kinds} == kinds  # Beam Metrics
    assert result.metrics["rows_read"] == total
    n = total // 22
    assert m["split"]["lines"]["test"] == [total - n, total]
    assert m["rows"]["test"] == n - 1  # line 460 is bad and inside the test range
    assert m["rows"]["validation"] == n


# --- file errors ----------------------------------------------------------------------------


def _corrupt(path: Path) -> Path:
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 64):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("kind, expect", [
    ("missing", "not found"),
    ("directory", "is not a file"),
    ("empty", "is empty"),
    ("empty_gzip", "holds no rows"),
    ("not_gzip", "not gzip-compressed"),
    ("header", "header line"),
    ("truncated", "corrupt or truncated gzip"),
    ("corrupt", "corrupt"),
    ("binary", "not CSV text"),
])
def test_file_errors_fail_with_one_line_before_publishing(tmp_path: Path, kind: str,
                                                          expect: str) -> None:
    src = tmp_path / "src.csv.gz"
    big = "".join(x + "\n" for x in _good_lines(3000)).encode()
    if kind == "directory":
        src.mkdir()
    elif kind == "empty":
        src.write_bytes(b"")
    elif kind == "empty_gzip":
        src.write_bytes(gzip.compress(b""))
    elif kind == "not_gzip":
        src.write_bytes(big)
    elif kind == "header":
        src.write_bytes(gzip.compress(b",".join(c.encode() for c in schema.CSV_COLUMNS)
                                      + b"\n" + big))
    elif kind == "truncated":  # big enough that only the pipeline's reader sees the end
        whole = gzip.compress(big * 8, compresslevel=1)
        src.write_bytes(whole[: len(whole) * 2 // 3])
    elif kind == "corrupt":
        src.write_bytes(gzip.compress(big))
        _corrupt(src)
    elif kind == "binary":
        src = tmp_path / "src.csv"
        src.write_bytes(bytes(range(256)) * 10)
    out = tmp_path / "data"
    with pytest.raises(convert.ConvertError) as err:
        convert.convert(str(src), str(out), _cfg())
    assert expect in str(err.value) and "\n" not in str(err.value)
    assert str(err.value).startswith(("source ", str(src))) and "[higgs" not in str(err.value)
    assert not (out / "manifest.json").exists()
    leftovers = [p for p in out.rglob("*")] if out.exists() else []
    assert leftovers == []


# --- reruns, overwrite, modes, parts ---------------------------------------------------------


def test_rerun_is_a_noop_and_overwrite_rebuilds(tmp_path: Path) -> None:
    src = _write_lines(tmp_path / "s.csv.gz", _good_lines(600))
    out = str(tmp_path / "data")
    stale = tmp_path / "data" / ".staging-0123456789ab" / "_pieces" / "p00000-l000000000000.rec"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"left by a killed run")
    first = convert.convert(str(src), out, _cfg())
    assert [p.name for p in (tmp_path / "data").iterdir() if p.name.startswith(".")] == []
    assert not first.skipped
    before = _shard_bytes(out)
    again = convert.convert(str(src), out, _cfg())
    assert again.skipped and again.manifest == first.manifest
    with pytest.raises(convert.ConvertError, match="--overwrite"):
        convert.convert(str(src), out, _cfg(training_shards=3))
    rebuilt = convert.convert(str(src), out, _cfg(training_shards=3), overwrite=True)
    assert not rebuilt.skipped and len(rebuilt.manifest["shards"]["training"]) == 3
    assert len(list((tmp_path / "data" / "training").iterdir())) == 3  # old shards gone
    after = _shard_bytes(out)
    assert b"".join(after[k] for k in sorted(after) if k.startswith("training")) == \
        b"".join(before[k] for k in sorted(before) if k.startswith("training"))
    assert json.loads((tmp_path / "data" / "manifest.json").read_text()) == rebuilt.manifest


def test_glob_of_parts_equals_the_single_file(tmp_path: Path, small_dataset: str) -> None:
    """Pre-split parts (gz and plain) read in name order give the very same dataset."""
    lines = gzip.decompress((Path(small_dataset).parent / "source.csv.gz").read_bytes())
    lines = lines.decode().splitlines()
    cuts = [0, 3000, 3001, 8000, ROWS]
    for k, (a, b) in enumerate(itertools.pairwise(cuts)):
        suffix = ".csv.gz" if k % 2 else ".csv"
        _write_lines(tmp_path / f"part-{k:03d}{suffix}", lines[a:b])
    out = str(tmp_path / "data")
    result = convert.convert(str(tmp_path / "part-*"), out, _cfg())
    assert result.manifest["source"]["uri"] == str(tmp_path / "part-*")
    assert len(result.manifest["source"]["parts"]) == 4
    assert _shard_bytes(out) == _shard_bytes(small_dataset)


def test_bad_row_line_numbers_count_across_parts(tmp_path: Path) -> None:
    lines = _good_lines(500)
    lines[250] = "7," + ",".join(["1"] * 28)
    _write_lines(tmp_path / "p-0.csv", lines[:200])
    _write_lines(tmp_path / "p-1.csv", lines[200:])
    with pytest.raises(convert.ConvertError, match="line 251, label"):
        convert.convert(str(tmp_path / "p-*.csv"), str(tmp_path / "data"), _cfg())


def test_multi_processing_mode_gives_identical_shards(tmp_path: Path, small_dataset: str) -> None:
    src = Path(small_dataset).parent / "source.csv.gz"
    out = str(tmp_path / "data")
    result = convert.convert(str(src), out, _cfg(), beam_args=[
        "--direct_running_mode=multi_processing", "--direct_num_workers=2"])
    assert result.manifest["rows"] == dataset.load_manifest(small_dataset)["rows"]
    assert "--direct_num_workers=2" in result.manifest["options"]["beam_args"]
    assert _shard_bytes(out) == _shard_bytes(small_dataset)


def test_secrets_in_beam_args_are_not_recorded() -> None:
    assert stage.redact(["--runner", "DataflowRunner", "--api_key=abc", "--token", "xyz",
                         "--project", "p"]) == [
        "--runner", "DataflowRunner", "--api_key=<redacted>", "--token", "<redacted>",
        "--project", "p"]


@pytest.mark.slow
def test_ctrl_c_during_conversion_says_interrupted_and_leaves_nothing(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    src = tmp_path / "big.csv.gz"
    synth.write_csv(src, rows=1_500_000, seed=3, fmt="compact", progress=False)
    out = tmp_path / "out"
    # SIGINT must not be inherited as ignored (a background job of a non-interactive shell).
    launch = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
              "os.execv(sys.argv[1], sys.argv[1:])")
    proc = subprocess.Popen([sys.executable, "-c", launch, sys.executable, "-m", "pipeline.cli", "convert",
                             "--source", str(src), "--out", str(out), "--set", "data.convert_threads=1"],
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "HIGGS_PROGRESS": "off"})
    deadline = time.monotonic() + 120
    while not list(out.glob(".staging-*/_pieces/*.rec")):
        assert proc.poll() is None and time.monotonic() < deadline, "no piece was written"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and err.strip() == "higgs convert: interrupted", err
    assert not out.exists() or list(out.iterdir()) == []  # no manifest, no staging, no pieces
