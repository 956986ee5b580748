"""pipeline.publish.store to gs:// against a real gcp-storage-emulator on 127.0.0.1."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import _wait_for_port, free_port
from test_publish import make_evaluated_run

from pipeline.core import checksums, storage
from pipeline.publish import store as publish

pytestmark = pytest.mark.gcs


def _blob(bucket: str, name: str):
    blob = storage.gcs_client().bucket(bucket).get_blob(name)
    assert blob is not None, name
    return blob


def test_publish_to_gcs_verifies_checksums_and_moves_latest(gcs_bucket: str, tmp_path: Path) -> None:
    run = make_evaluated_run(tmp_path, "run-g", 0.84, blessed=True)
    out = f"gs://{gcs_bucket}/higgs"
    result = publish.publish(str(run), out)
    assert result == publish.PublishResult(uri=f"{out}/run-g", run_id="run-g", files=7,
                                           latest_moved=True)
    listed = storage.list_files(f"{out}/run-g")
    assert listed == sorted([*publish.run_files(run), "MANIFEST"])
    manifest = json.loads(storage.read_text(f"{out}/run-g/MANIFEST"))
    for entry in manifest["files"]:
        blob = _blob(gcs_bucket, f"higgs/run-g/{entry['path']}")
        local = checksums.file_checksums(run / entry["path"])
        # The store's own md5Hash/crc32c equal the local file's (what publish verified).
        assert (blob.size, blob.md5_hash, blob.crc32c) == (local.size, local.md5, local.crc32c)
        assert entry["crc32c"] == local.crc32c
    latest = publish.read_latest(out)
    assert latest["run_id"] == "run-g" and latest["uri"] == f"{out}/run-g"
    assert publish.published_metrics(out)["auc"] == 0.84


def test_gcs_failure_midway_leaves_latest_untouched(gcs_bucket: str, tmp_path: Path) -> None:
    out = f"gs://{gcs_bucket}/higgs"
    publish.publish(str(make_evaluated_run(tmp_path, "old", 0.80, blessed=True)), out)
    before = storage.read_bytes(f"{out}/latest.json")
    generation = _blob(gcs_bucket, "higgs/latest.json").generation

    run = make_evaluated_run(tmp_path, "new", 0.90, blessed=True)
    uploaded: list[str] = []

    def delete_a_later_file(rel: str) -> None:
        uploaded.append(rel)
        if len(uploaded) == 3:
            (run / "report" / "report.md").unlink()  # listed, then gone before its upload

    with pytest.raises(publish.PublishError, match=r"publishing report/report\.md of run new"):
        publish.publish(str(run), out, progress=delete_a_later_file)
    assert storage.read_bytes(f"{out}/latest.json") == before
    assert _blob(gcs_bucket, "higgs/latest.json").generation == generation  # not even rewritten
    assert storage.exists(f"{out}/new/config.yaml")  # the upload really was midway
    assert not storage.exists(f"{out}/new/MANIFEST")


def test_missing_bucket_fails_fast_naming_the_file(gcs_emulator: str, tmp_path: Path) -> None:
    run = make_evaluated_run(tmp_path, "run-m", 0.8, blessed=True)
    start = time.monotonic()
    # The destination check names the bucket before any file is copied.
    with pytest.raises(storage.StorageError, match=r"bucket gs://no-such-bucket-here does not exist"):
        publish.publish(str(run), "gs://no-such-bucket-here/x", retry_timeout=20)
    assert time.monotonic() - start < 10  # 404 is not transient: no backoff loop


def _start_emulator(port: int, bucket: str) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("gcp-storage-emulator")
    proc = subprocess.Popen([str(exe), "start", "--host", "127.0.0.1", "--port", str(port),
                             "--in-memory", "--quiet", "--default-bucket", bucket],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_port(port, proc)
    return proc


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
        procs.append(_start_emulator(port, bucket))

    run = make_evaluated_run(tmp_path, "run-t", 0.8, blessed=True)
    thread = threading.Thread(target=come_back)
    thread.start()
    try:
        start = time.monotonic()
        result = publish.publish(str(run), f"gs://{bucket}/p", retry_timeout=60)
        elapsed = time.monotonic() - start
        assert result.latest_moved and result.files == 7
        assert elapsed > 1.5  # the first attempts met connection refused and backed off
        assert publish.read_latest(f"gs://{bucket}/p")["run_id"] == "run-t"
    finally:
        thread.join()
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)
        storage.gcs_client.cache_clear()
