"""Shared fixtures: a real gcp-storage-emulator on 127.0.0.1, free ports, small configs.

The emulator runs through ``tests/gcs_emulator.py``, which adds Cloud Storage's
``ifGenerationMatch`` check (412) that the emulator itself does not make.

    .venv/bin/pytest tests -k gcs
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Quiet, offline TensorFlow and Prefect in every test process and their children.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    from pipeline.core.ports import free_ports

    return free_ports(1)[0]


def _wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gcp-storage-emulator exited early with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"gcp-storage-emulator did not listen on 127.0.0.1:{port} in {timeout:.0f}s")


def start_gcs_emulator(port: int, *extra: str) -> subprocess.Popen:
    """Start gcp-storage-emulator (in memory, with generation preconditions) on 127.0.0.1:``port``."""
    return subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "gcs_emulator.py"), "start", "--host", "127.0.0.1",
         "--port", str(port), "--in-memory", "--quiet", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.fixture(scope="session")
def gcs_emulator() -> Iterator[str]:
    """Start gcp-storage-emulator (in memory) on a free loopback port for the session.

    Sets ``STORAGE_EMULATOR_HOST`` so google-cloud-storage and Beam's GCS filesystem talk
    to it, and yields its ``http://127.0.0.1:PORT`` address.
    """
    port = free_port()
    proc = start_gcs_emulator(port)
    host = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in ("STORAGE_EMULATOR_HOST", "GOOGLE_CLOUD_PROJECT")}
    try:
        _wait_for_port(port, proc)
        os.environ["STORAGE_EMULATOR_HOST"] = host
        os.environ["GOOGLE_CLOUD_PROJECT"] = "test-project"
        from pipeline.core import storage

        storage.gcs_client.cache_clear()
        yield host
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        from pipeline.core import storage

        storage.gcs_client.cache_clear()


@pytest.fixture()
def gcs_bucket(gcs_emulator: str) -> str:
    """A fresh, empty bucket in the emulator; yields its name."""
    from pipeline.core import storage

    name = f"test-{uuid.uuid4().hex[:12]}"
    storage.gcs_client().create_bucket(name)
    return name


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A real converted dataset: 12,000 generated rows (seed 7), `sample` preset shard counts.

    Built once per session with ``pipeline.data.synth.write_csv`` and ``pipeline.data.convert.convert``
    (DirectRunner, in-process); returns the DATA directory (str) holding ``manifest.json``.
    The source CSV is ``<DATA>/../source.csv.gz``.
    """
    from pipeline.core.config import load_config
    from pipeline.data import convert, synth

    root = tmp_path_factory.mktemp("small_dataset")
    source = root / "source.csv.gz"
    synth.write_csv(source, rows=12_000, seed=7)
    data = root / "data"
    convert.convert(str(source), str(data), load_config("sample").data)
    return str(data)


@pytest.fixture(scope="module")
def harness() -> Iterator[None]:
    """A temporary Prefect server + SQLite database for one test module's flow runs."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def prefect_api_url() -> str:
    """The API address of the running harness (``PREFECT_API_URL`` inside :func:`harness`)."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value()

