"""Source handling against real servers: local files, gs:// on the emulator, https on loopback.

    .venv/bin/pytest tests/test_source.py -q
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import free_port

from pipeline.core import storage
from pipeline.core.config import DataConfig
from pipeline.data import source
from pipeline.data.source import SourceError

PAYLOAD = os.urandom(3 * 1024 * 1024 + 123)  # larger than one download block


@dataclass
class Served:
    """What the loopback server serves and what it saw."""

    body: bytes = PAYLOAD
    drop_after: int | None = None  # close the connection after this many body bytes, once
    ignore_range: bool = False  # answer 200 with the whole body even to a Range request
    ranges: list[str | None] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class RangeHandler(BaseHTTPRequestHandler):
    """GET with single ``Range: bytes=N-`` support (SimpleHTTPRequestHandler has none)."""

    served: Served

    def do_GET(self) -> None:
        if self.path != "/HIGGS.csv.gz":
            self.send_error(404, "Not Found")
            return
        body, rng = self.served.body, self.headers.get("Range")
        with self.served.lock:
            self.served.ranges.append(rng)
            drop, self.served.drop_after = self.served.drop_after, None
        start = 0
        if rng and not self.served.ignore_range:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        chunk = body[start:]
        if drop is not None:
            # Announce the full length, send part of it, then hang up mid-transfer.
            self.wfile.write(chunk[:drop])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(chunk)

    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass


@pytest.fixture()
def http_server() -> Iterator[tuple[str, Served]]:
    served = Served()
    handler = type("Handler", (RangeHandler,), {"served": served})
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", served
    finally:
        server.shutdown()
        server.server_close()


def _cfg(tmp_path: Path, **kw: object) -> DataConfig:
    return DataConfig(data_root=str(tmp_path / "data"), **kw)


# --- local ----------------------------------------------------------------------------------


def test_local_path_resolves_and_fingerprints_with_sidecar(tmp_path: Path) -> None:
    f = tmp_path / "HIGGS.csv.gz"
    f.write_bytes(PAYLOAD)
    assert source.resolve(str(f), _cfg(tmp_path)) == str(f)
    fp = source.fingerprint(str(f))
    assert fp == {"uri": str(f), "bytes": len(PAYLOAD), "sha256": hashlib.sha256(PAYLOAD).hexdigest()}
    sidecar = json.loads((tmp_path / "HIGGS.csv.gz.sha256").read_text())
    assert sidecar["sha256"] == fp["sha256"] and sidecar["bytes"] == len(PAYLOAD)


def test_fingerprint_reuses_fresh_sidecar_and_rehashes_stale(tmp_path: Path) -> None:
    f = tmp_path / "s.csv.gz"
    f.write_bytes(b"abc")
    real = source.fingerprint(str(f))["sha256"]
    # A fresh sidecar (same size and mtime) is trusted: plant a marker digest to prove it.
    side = tmp_path / "s.csv.gz.sha256"
    meta = json.loads(side.read_text())
    side.write_text(json.dumps({**meta, "sha256": "0" * 64}))
    assert source.fingerprint(str(f))["sha256"] == "0" * 64
    # Changing the file (size and mtime) makes the sidecar stale: rehash.
    f.write_bytes(b"abcd")
    assert source.fingerprint(str(f))["sha256"] == hashlib.sha256(b"abcd").hexdigest() != real


def test_missing_local_path_is_one_clear_line(tmp_path: Path) -> None:
    missing = tmp_path / "nope.csv.gz"
    with pytest.raises(SourceError) as err:
        source.resolve(str(missing), _cfg(tmp_path))
    msg = str(err.value)
    assert "\n" not in msg and str(missing) in msg and "does not exist" in msg and "gs://" in msg
    with pytest.raises(SourceError, match="is a directory"):
        source.resolve(str(tmp_path), _cfg(tmp_path))


def test_ensure_source_generates_sample_once(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, synth_rows=3000, synth_seed=4)
    info = source.ensure_source(cfg)
    path = Path(info.path)
    assert path == tmp_path / "data" / "sources" / "higgs-synth-uci-r3000-s4.csv.gz"
    lines = gzip.decompress(path.read_bytes()).splitlines()
    assert len(lines) == 3000 and all(len(line.split(b",")) == 29 for line in lines[:50])
    assert info.bytes == path.stat().st_size
    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    mtime = path.stat().st_mtime_ns
    assert source.ensure_source(cfg) == info  # reused, not regenerated
    assert path.stat().st_mtime_ns == mtime
    assert source.resolve("", cfg) == str(path)


# --- gs:// ----------------------------------------------------------------------------------


def test_gcs_object_resolves_and_fingerprints_from_metadata(gcs_bucket: str, tmp_path: Path) -> None:
    import base64

    import google_crc32c

    uri = f"gs://{gcs_bucket}/raw/HIGGS.csv.gz"
    storage.write_bytes(uri, PAYLOAD[:10_000])
    assert source.resolve(uri, _cfg(tmp_path)) == uri
    fp = source.fingerprint(uri)
    expected = base64.b64encode(google_crc32c.Checksum(PAYLOAD[:10_000]).digest()).decode()
    assert fp == {"uri": uri, "bytes": 10_000, "crc32c": expected}
    info = source.ensure_source(_cfg(tmp_path, source=uri))
    assert (info.path, info.bytes, info.crc32c) == (uri, 10_000, expected)


def test_missing_gcs_object_is_one_clear_line(gcs_bucket: str, tmp_path: Path) -> None:
    uri = f"gs://{gcs_bucket}/raw/missing.csv.gz"
    with pytest.raises(SourceError) as err:
        source.resolve(uri, _cfg(tmp_path))
    assert "\n" not in str(err.value) and uri in str(err.value) and "does not exist" in str(err.value)


# --- https ----------------------------------------------------------------------------------


def test_url_download_lands_in_sources_with_checksum(tmp_path: Path, http_server) -> None:
    base, served = http_server
    url = f"{base}/HIGGS.csv.gz"
    digest = hashlib.sha256(PAYLOAD).hexdigest()
    cfg = _cfg(tmp_path, source=url, sha256=digest, expected_bytes=len(PAYLOAD))
    info = source.ensure_source(cfg)
    dest = tmp_path / "data" / "sources" / "HIGGS.csv.gz"
    assert (info.path, info.uri, info.bytes, info.sha256) == (str(dest), url, len(PAYLOAD), digest)
    assert dest.read_bytes() == PAYLOAD
    assert not dest.with_name("HIGGS.csv.gz.part").exists()
    assert json.loads(dest.with_name("HIGGS.csv.gz.sha256").read_text())["sha256"] == digest
    # A verified download is reused without asking the server again.
    assert source.resolve(url, cfg) == str(dest)
    assert served.ranges == [None]


def test_dropped_connection_resumes_with_range(tmp_path: Path, http_server) -> None:
    base, served = http_server
    served.drop_after = 1_000_000
    dest = tmp_path / "HIGGS.csv.gz"
    source.download(f"{base}/HIGGS.csv.gz", dest, sha256=hashlib.sha256(PAYLOAD).hexdigest())
    assert dest.read_bytes() == PAYLOAD
    assert served.ranges == [None, "bytes=1000000-"]


def test_interrupted_partial_file_is_resumed(tmp_path: Path, http_server) -> None:
    base, served = http_server
    dest = tmp_path / "HIGGS.csv.gz"
    dest.with_name("HIGGS.csv.gz.part").write_bytes(PAYLOAD[:777_777])  # a killed earlier run
    source.download(f"{base}/HIGGS.csv.gz", dest, expected_bytes=len(PAYLOAD))
    assert dest.read_bytes() == PAYLOAD
    assert served.ranges == ["bytes=777777-"]


def test_server_without_range_support_restarts_cleanly(tmp_path: Path, http_server) -> None:
    base, served = http_server
    served.ignore_range = True
    dest = tmp_path / "HIGGS.csv.gz"
    dest.with_name("HIGGS.csv.gz.part").write_bytes(b"stale partial bytes")
    source.download(f"{base}/HIGGS.csv.gz", dest, sha256=hashlib.sha256(PAYLOAD).hexdigest())
    assert dest.read_bytes() == PAYLOAD  # the 200 answer replaced the partial, not appended
    assert served.ranges == ["bytes=19-"]


def test_corrupted_download_is_rejected_and_removed(tmp_path: Path, http_server) -> None:
    base, served = http_server
    good = hashlib.sha256(PAYLOAD).hexdigest()
    flipped = bytearray(PAYLOAD)
    flipped[2_000_000] ^= 0xFF
    served.body = bytes(flipped)
    dest = tmp_path / "HIGGS.csv.gz"
    with pytest.raises(SourceError) as err:
        source.download(f"{base}/HIGGS.csv.gz", dest, sha256=good)
    assert "checksum mismatch" in str(err.value) and "\n" not in str(err.value)
    assert not dest.exists() and not dest.with_name("HIGGS.csv.gz.part").exists()


def test_wrong_size_is_rejected_and_removed(tmp_path: Path, http_server) -> None:
    base, _ = http_server
    dest = tmp_path / "HIGGS.csv.gz"
    with pytest.raises(SourceError, match=f"has {len(PAYLOAD)} bytes, expected {len(PAYLOAD) + 1}"):
        source.download(f"{base}/HIGGS.csv.gz", dest, expected_bytes=len(PAYLOAD) + 1)
    assert not dest.exists() and not dest.with_name("HIGGS.csv.gz.part").exists()


def test_http_404_is_one_clear_line(tmp_path: Path, http_server) -> None:
    base, _ = http_server
    with pytest.raises(SourceError, match="HTTP 404"):
        source.download(f"{base}/other.csv.gz", tmp_path / "other.csv.gz")


def test_unreachable_host_says_how_to_provide_the_file(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/HIGGS.csv.gz"  # nothing listens there
    with pytest.raises(SourceError) as err:
        source.resolve(url, _cfg(tmp_path))
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"cannot reach {url}: ")
    assert "--source /path/to/HIGGS.csv.gz" in msg and "gs://" in msg
    assert not list((tmp_path / "data" / "sources").glob("*"))
