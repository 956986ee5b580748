"""The converter on a real distributed Beam engine: Beam's DaskRunner over dask.distributed,
worker processes on 127.0.0.1 — the dataset must equal the DirectRunner's byte for byte.

    .venv/bin/pytest tests/test_convert_dask.py -q
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest

from pipeline.core import schema
from pipeline.core.config import load_config
from pipeline.data import convert, dataset, presplit

pytestmark = pytest.mark.slow


def _cfg(**changes):
    return dataclasses.replace(load_config("sample").data, **changes)


def _shards(data: str) -> dict[str, bytes]:
    manifest = dataset.load_manifest(data)
    return {s["path"]: Path(data, s["path"]).read_bytes()
            for split in schema.SPLITS for s in manifest["shards"][split]}


def _source(small_dataset: str) -> str:
    return str(Path(small_dataset).parent / "source.csv.gz")


def test_local_two_process_cluster_writes_the_direct_runners_dataset(tmp_path: Path, small_dataset: str,
                                                                     caplog) -> None:
    import psutil

    out = tmp_path / "dask"
    def children() -> dict[int, str]:
        # multiprocessing's resource tracker stays for the interpreter's life: not a worker.
        return {p.pid: " ".join(p.cmdline()) for p in psutil.Process().children(recursive=True)
                if p.is_running() and "resource_tracker" not in " ".join(p.cmdline())}

    before = children()
    with caplog.at_level(logging.INFO, logger="pipeline.data.convert.engine"):
        result = convert.convert(_source(small_dataset), str(out), _cfg(dask_workers=2),
                                 beam_args=["--runner", "DaskRunner"])
    assert "local Dask cluster of 2 worker processes at tcp://127.0.0.1:" in caplog.text
    assert _shards(str(out)) == _shards(small_dataset)  # same shard names, same bytes
    assert result.manifest["rows"] == dataset.load_manifest(small_dataset)["rows"]
    assert result.manifest["options"]["beam_args"][:2] == ["--runner", "DaskRunner"]
    # The cluster and its worker processes are gone again.
    left = {pid: cmd for pid, cmd in children().items() if pid not in before}
    assert not left, left


def test_remote_scheduler_is_used_and_left_running(tmp_path: Path, small_dataset: str) -> None:
    from dask.distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0") as cluster:
        parts = presplit.presplit(_source(small_dataset), str(tmp_path / "parts"), parts=3)
        out = tmp_path / "dask-parts"
        convert.convert(parts.glob, str(out), _cfg(),
                        beam_args=["--runner=DaskRunner",
                                   f"--dask_client_address={cluster.scheduler_address}"])
        # Three parts read as three tasks, the split counted across them: the same dataset.
        assert _shards(str(out)) == _shards(small_dataset)
        with Client(cluster.scheduler_address) as client:  # ours to close, and still serving
            assert len(client.scheduler_info()["workers"]) == 2


def test_failure_on_a_dask_worker_is_one_line_and_publishes_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    good = ",".join(["0.5"] * 28)
    bad.write_text("".join(f"{i % 2},{good}\n" for i in range(200)) + "7," + good + "\n")
    with pytest.raises(convert.ConvertError) as err:
        convert.convert(str(bad), str(tmp_path / "out"), _cfg(dask_workers=1),
                        beam_args=["--runner=DaskRunner"])
    msg = str(err.value)
    assert "\n" not in msg and "1 bad rows" in msg and "line 201, label" in msg
    assert not (tmp_path / "out" / "manifest.json").exists()
