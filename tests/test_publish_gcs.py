"""pipeline.publish.store on gs:// only: what the local cases in test_publish.py cannot show.

    .venv/bin/pytest tests/test_publish_gcs.py

Against a real gcp-storage-emulator on 127.0.0.1 (with Cloud Storage's generation
preconditions, tests/gcs_emulator.py). The cases that hold for both stores — immutability,
compare-and-swap, two processes at once, kill -9 midway, rollback — are parametrized over
local and gs:// in test_publish.py.
"""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import free_port, start_gcs_emulator
from test_publish import PUBLISHED, make_evaluated_run

from pipeline.core import checksums, storage
from pipeline.publish import store as publish

pytestmark = pytest.mark.gcs


def _blob(bucket: str, name: str):
    blob = storage.gcs_client().bucket(bucket).get_blob(name)
    assert blob is not None, name
    return blob


def test_store_checksums_are_the_local_files(gcs_bucket: str, tmp_path: Path) -> None:
    run = make_evaluated_run(tmp_path, "run-g", 0.84, blessed=True)
    out = f"gs://{gcs_bucket}/higgs"
    publish.publish(str(run), out)
    assert publish.run_files(run) == PUBLISHED
    for entry in publish.read_manifest(out, "run-g")["files"]:
        blob = _blob(gcs_bucket, f"higgs/run-g/{entry['path']}")
        local = checksums.file_checksums(run / entry["path"])
        # The store's own md5Hash/crc32c equal the local file's (what publish verified).
        assert (blob.size, blob.md5_hash, blob.crc32c) == (local.size, local.md5, local.crc32c)
        assert entry["crc32c"] == local.crc32c


def test_refused_moves_do_not_even_rewrite_latest(gcs_bucket: str, tmp_path: Path) -> None:
    out = f"gs://{gcs_bucket}/higgs"
    publish.publish(str(make_evaluated_run(tmp_path, "old", 0.80, blessed=True)), out)
    generation = _blob(gcs_bucket, "higgs/latest.json").generation
    worse = publish.publish(str(make_evaluated_run(tmp_path, "worse", 0.60, blessed=True)), out)
    assert not worse.latest_moved
    run = make_evaluated_run(tmp_path, "new", 0.90, blessed=True)

    def delete_a_later_file(rel: str) -> None:
        if rel == "model/model.keras":
            (run / "report" / "report.md").unlink()  # listed, then gone before its upload

    with pytest.raises(publish.PublishError, match=r"publishing report/report\.md of run new"):
        publish.publish(str(run), out, progress=delete_a_later_file)
    assert _blob(gcs_bucket, "higgs/latest.json").generation == generation


def test_missing_bucket_fails_fast_naming_the_file(gcs_emulator: str, tmp_path: Path) -> None:
    run = make_evaluated_run(tmp_path, "run-m", 0.8, blessed=True)
    start = time.monotonic()
    # The destination check names the bucket before any file is copied.
    with pytest.raises(storage.StorageError, match=r"bucket gs://no-such-bucket-here does not exist"):
        publish.publish(str(run), "gs://no-such-bucket-here/x", retry_timeout=20)
    assert time.monotonic() - start < 10  # 404 is not transient: no backoff loop


def test_transient_outage_is_retried_with_backoff(
    gcs_emulator: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store is down when publishing starts and comes back ~2 s later: publish succeeds."""
    port, bucket = free_port(), "flaky"
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
    storage.gcs_client.cache_clear()
    procs: list[subprocess.Popen] = []

    def come_back() -> None:
        time.sleep(2.0)
        procs.append(start_gcs_emulator(port, "--default-bucket", bucket))

    run = make_evaluated_run(tmp_path, "run-t", 0.8, blessed=True)
    thread = threading.Thread(target=come_back)
    thread.start()
    try:
        start = time.monotonic()
        result = publish.publish(str(run), f"gs://{bucket}/p", retry_timeout=60)
        elapsed = time.monotonic() - start
        assert result.latest_moved and result.files == len(PUBLISHED)
        assert elapsed > 1.5  # the first attempts met connection refused and backed off
        assert publish.read_latest(f"gs://{bucket}/p")["run_id"] == "run-t"
    finally:
        thread.join()
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)
        storage.gcs_client.cache_clear()
