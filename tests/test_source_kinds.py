"""Sources as users have them: HIGGS.csv.gz, HIGGS.csv and the UCI higgs.zip, each as a local
path, a gs:// object (real emulator) and an https download (real loopback server), converted
to the same dataset byte for byte.

    .venv/bin/pytest tests/test_source_kinds.py -q
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from conftest import free_port

from pipeline.core import schema, storage
from pipeline.core.config import load_config
from pipeline.data import convert, dataset, source, textblocks

KINDS = ("HIGGS.csv.gz", "HIGGS.csv", "higgs.zip")


def _cfg(tmp_path: Path, **changes):
    return dataclasses.replace(load_config("sample").data, data_root=str(tmp_path / "data"), **changes)


def _zip(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=method) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


@pytest.fixture(scope="module")
def files_by_kind(small_dataset: str) -> dict[str, bytes]:
    """The fixture's source (12,000 UCI-format rows) as each kind of file users keep."""
    gz = (Path(small_dataset).parent / "source.csv.gz").read_bytes()
    return {"HIGGS.csv.gz": gz, "HIGGS.csv": gzip.decompress(gz),
            "higgs.zip": _zip({"HIGGS.csv.gz": gz})}  # the UCI download's layout


def _shards(data: str) -> dict[str, bytes]:
    manifest = dataset.load_manifest(data)
    return {s["path"]: storage.read_bytes(storage.join(data, s["path"]))
            for split in schema.SPLITS for s in manifest["shards"][split]}


def _assert_same_dataset(data: str, reference: str) -> None:
    got, want = _shards(data), _shards(reference)
    assert got == want
    assert dataset.load_manifest(data)["rows"] == dataset.load_manifest(reference)["rows"]


class _Files(BaseHTTPRequestHandler):
    """Serves a dict of files at /<name>, with single ``Range: bytes=N-`` support."""

    files: ClassVar[dict[str, bytes]] = {}

    def do_GET(self) -> None:
        body = self.files.get(self.path.lstrip("/"))
        if body is None:
            self.send_error(404, "Not Found")
            return
        start = 0
        if rng := self.headers.get("Range"):
            start = int(rng.removeprefix("bytes=").split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        self.wfile.write(body[start:])

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def https_like_server(files_by_kind: dict[str, bytes]) -> Iterator[tuple[str, dict[str, bytes]]]:
    """A real HTTP server on 127.0.0.1 serving every kind (the download code is scheme-agnostic)."""
    served = dict(files_by_kind)
    handler = type("Handler", (_Files,), {"files": served})
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", served
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("kind", KINDS)
def test_local_file_of_each_kind_gives_the_same_dataset(kind: str, tmp_path: Path, small_dataset: str,
                                                        files_by_kind: dict[str, bytes]) -> None:
    path = tmp_path / kind
    path.write_bytes(files_by_kind[kind])
    readable = source.resolve(str(path), _cfg(tmp_path))
    assert readable == str(path)  # read in place: a zip is not unpacked anywhere
    result = convert.convert(readable, str(tmp_path / "out"), _cfg(tmp_path))
    _assert_same_dataset(str(tmp_path / "out"), small_dataset)
    assert result.manifest["source"]["sha256"] == hashlib.sha256(files_by_kind[kind]).hexdigest()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([kind, f"{kind}.sha256", "out"])


@pytest.mark.gcs
@pytest.mark.parametrize("kind", KINDS)
def test_gs_object_of_each_kind_gives_the_same_dataset(kind: str, tmp_path: Path, gcs_bucket: str,
                                                       small_dataset: str,
                                                       files_by_kind: dict[str, bytes]) -> None:
    uri = f"gs://{gcs_bucket}/raw/{kind}"
    storage.write_bytes(uri, files_by_kind[kind])
    assert source.resolve(uri, _cfg(tmp_path)) == uri
    out = f"gs://{gcs_bucket}/data"
    result = convert.convert(uri, out, _cfg(tmp_path))
    _assert_same_dataset(out, small_dataset)
    assert result.manifest["source"]["uri"] == uri and result.manifest["source"]["crc32c"]


@pytest.mark.parametrize("kind", KINDS)
def test_download_of_each_kind_gives_the_same_dataset(kind: str, tmp_path: Path, small_dataset: str,
                                                      https_like_server, files_by_kind) -> None:
    base, _ = https_like_server
    url = f"{base}/{kind}"
    digest = hashlib.sha256(files_by_kind[kind]).hexdigest()
    cfg = _cfg(tmp_path, source=url, sha256=digest)
    info = source.ensure_source(cfg)
    assert Path(info.path) == tmp_path / "data" / "sources" / kind and info.sha256 == digest
    convert.convert(info.path, str(tmp_path / "out"), cfg)
    _assert_same_dataset(str(tmp_path / "out"), small_dataset)


def test_unreachable_source_falls_back_to_the_verified_mirror(tmp_path: Path, https_like_server,
                                                             files_by_kind) -> None:
    base, served = https_like_server
    del served["higgs.zip"]  # the current download is gone: 404
    mirror = files_by_kind["HIGGS.csv.gz"]
    cfg = _cfg(tmp_path, source=f"{base}/higgs.zip", mirror=f"{base}/HIGGS.csv.gz",
               mirror_sha256=hashlib.sha256(mirror).hexdigest(), mirror_bytes=len(mirror))
    info = source.ensure_source(cfg)
    assert (info.uri, Path(info.path).read_bytes()) == (f"{base}/HIGGS.csv.gz", mirror)
    # A wrong mirror checksum is a corrupted download, not a reason to pass.
    (tmp_path / "data").rename(tmp_path / "first")
    bad = dataclasses.replace(cfg, mirror_sha256="0" * 64)
    with pytest.raises(source.SourceError, match="checksum mismatch"):
        source.ensure_source(bad)
    # Neither reachable: one line naming both and how to provide the file.
    served.clear()
    with pytest.raises(source.SourceError) as err:
        source.ensure_source(cfg)
    msg = str(err.value)
    assert "\n" not in msg and "higgs.zip (HTTP 404" in msg and "nor its mirror" in msg
    assert "HIGGS.csv.gz, HIGGS.csv or higgs.zip" in msg


@pytest.mark.parametrize(("members", "says"), [
    ({"README.txt": b"hi", "docs/": b""}, "holds no .csv.gz or .csv member (README.txt)"),
    ({"HIGGS.csv.gz": b"x", "extra/HIGGS.csv": b"y", "__MACOSX/._HIGGS.csv.gz": b""},
     "holds 2 candidate members (HIGGS.csv.gz, extra/HIGGS.csv)"),
    ({}, "holds no .csv.gz or .csv member (it is empty)"),
])
def test_zip_without_one_rows_member_is_one_line(members: dict[str, bytes], says: str,
                                                  tmp_path: Path) -> None:
    path = tmp_path / "higgs.zip"
    path.write_bytes(_zip(members))
    with pytest.raises(textblocks.ArchiveError) as err:
        source.resolve(str(path), _cfg(tmp_path))
    assert "\n" not in str(err.value) and str(path) in str(err.value)
    assert says in str(err.value)
    with pytest.raises(convert.ConvertError) as err:  # the converter says the same on its own
        convert.convert(str(path), str(tmp_path / "out"), _cfg(tmp_path))
    assert says in str(err.value)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_stored_zip_and_a_zip_holding_plain_csv_read_the_same_text(files_by_kind) -> None:
    text = files_by_kind["HIGGS.csv"]
    for data in (_zip({"HIGGS.csv.gz": files_by_kind["HIGGS.csv.gz"]}, zipfile.ZIP_STORED),
                 _zip({"data/HIGGS.csv": text})):
        with textblocks.open_text(io.BytesIO(data)) as stream:
            assert stream.read() == text


def test_truncated_zip_member_fails_with_one_line(tmp_path: Path, files_by_kind) -> None:
    data = files_by_kind["higgs.zip"]
    path = tmp_path / "higgs.zip"
    path.write_bytes(data[:len(data) // 2])  # the central directory is gone too
    with pytest.raises(textblocks.ArchiveError, match="is not a readable zip") as err:
        source.resolve(str(path), _cfg(tmp_path))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("method", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_damaged_zip_member_is_one_line_and_publishes_nothing(method: int, tmp_path: Path,
                                                              files_by_kind) -> None:
    """A flipped byte inside the member: the zip's CRC-32 (or deflate) catches it, in one line."""
    data = bytearray(_zip({"HIGGS.csv": files_by_kind["HIGGS.csv"]}, method))
    data[len(data) // 2] ^= 0x55
    path = tmp_path / "higgs.zip"
    path.write_bytes(bytes(data))
    with pytest.raises(convert.ConvertError) as err:
        convert.convert(str(path), str(tmp_path / "out"), _cfg(tmp_path))
    msg = str(err.value)
    assert "\n" not in msg and "[while running" not in msg
    assert f"{path} is a corrupt or truncated zip file" in msg and msg.endswith("download it again")
    assert not (tmp_path / "out" / "manifest.json").exists()
    assert not list((tmp_path / "out").glob(".staging-*"))
