"""pipeline.core.storage, checksums and cas on local files and the GCS emulator: listing, ranges,
create-only writes, temporaries left by a killed writer, and compare-and-swap
(:func:`pipeline.core.cas.update`) under real concurrency.

    .venv/bin/pytest tests/test_storage.py -q
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.core import cas, checksums, storage


def test_exists_means_a_file(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    storage.write_text(str(tmp_path / "d" / "f.txt"), "x")
    assert storage.exists(str(tmp_path / "d" / "f.txt"))
    assert not storage.exists(str(tmp_path / "d"))
    assert storage.list_files(str(tmp_path)) == ["d/f.txt"]


def test_prefix_listing_follows_the_gcs_rule(tmp_path: Path) -> None:
    for name in ("a/x", "a/y/z", "ab/w"):
        storage.write_bytes(str(tmp_path / name), b"")
    root = str(tmp_path)
    assert storage.list_paths(f"{root}/a/") == [f"{root}/a/x", f"{root}/a/y/z"]
    assert storage.list_paths(f"{root}/a") == [f"{root}/a/x", f"{root}/a/y/z", f"{root}/ab/w"]
    storage.move_tree(f"{root}/a", f"{root}/c/a")
    storage.delete_tree(f"{root}/ab")
    assert storage.list_files(root) == ["c/a/x", "c/a/y/z"]


def test_copy_range_appends_after_buffered_writes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"0123456789")
    with storage.open_write(str(tmp_path / "out")) as out:
        out.write(b"head-")  # still in the writer's buffer when the kernel copy starts
        assert storage.copy_range(str(src), 2, 5, out) == 3
        assert storage.copy_range(str(src), 8, 20, out) == 2  # the file ends at 10
        out.write(b"-tail")
    assert (tmp_path / "out").read_bytes() == b"head-23489-tail"
    assert storage.read_range(str(src), 8, 20) == b"89"


def test_one_checksum_helper_for_sha256(tmp_path: Path) -> None:
    import hashlib

    data = bytes(range(256)) * (checksums.CHUNK_BYTES // 256 + 3)  # more than one read
    (tmp_path / "f").write_bytes(data)
    sums = checksums.file_checksums(tmp_path / "f")
    assert checksums.file_sha256(tmp_path / "f") == sums.sha256 == hashlib.sha256(data).hexdigest()
    assert sums.size == len(data)


@pytest.fixture(params=["local", pytest.param("gcs", marks=pytest.mark.gcs)])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty directory: local, or a prefix in a fresh GCS emulator bucket."""
    if request.param == "gcs":
        return f"gs://{request.getfixturevalue('gcs_bucket')}/dir"
    return str(tmp_path / "dir")


def test_create_only_never_replaces(where: str, tmp_path: Path) -> None:
    uri = storage.join(where, "a.txt")
    storage.write_text(uri, "first", create_only=True)
    with pytest.raises(storage.ExistsError, match="already exists"):
        storage.write_text(uri, "second", create_only=True)
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(10_000))
    with pytest.raises(storage.ExistsError):
        checksums.upload_file(src, uri, create_only=True)
    assert storage.read_text(uri) == "first"
    copy = storage.join(where, "b.bin")
    sums = checksums.upload_file(src, copy, create_only=True)
    assert checksums.stored_checksums(copy).same_bytes(sums)
    assert checksums.stored_checksums(storage.join(where, "missing")) is None


def test_upload_refuses_a_source_that_changed_since_it_was_recorded(where: str, tmp_path: Path) -> None:
    src = tmp_path / "model.bin"
    src.write_bytes(b"version 1")
    recorded = checksums.file_checksums(src)
    src.write_bytes(b"version 2")
    with pytest.raises(checksums.ChecksumMismatchError, match="changed"):
        checksums.upload_file(src, storage.join(where, "model.bin"), expect=recorded)
    assert checksums.stored_checksums(storage.join(where, "model.bin")) is None


def test_temporaries_of_dead_writers_are_removed_by_the_next_write(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    target = tmp_path / "model.keras"
    left = tmp_path / f".model.keras.tmp-{int(dead.stdout)}"  # what a kill -9 mid-copy leaves
    left.write_bytes(b"half a model")
    alive = tmp_path / f".model.keras.tmp-{os.getppid()}"  # a writer still running: not touched
    alive.write_bytes(b"in progress")
    other = tmp_path / f".other.tmp-{int(dead.stdout)}"  # another file's temporary: not ours
    other.write_bytes(b"x")
    storage.write_bytes(str(target), b"whole")
    assert target.read_bytes() == b"whole"
    assert not left.exists() and alive.exists() and other.exists()


COUNTER = """
import sys
from pipeline.core import cas
uri, n = sys.argv[1], int(sys.argv[2])
for _ in range(n):
    cas.update(uri, lambda data: str(int(data or b"0") + 1).encode())
"""


def test_update_loses_no_write_under_two_concurrent_processes(where: str) -> None:
    """Two processes each add 1 to a counter 40 times through update(): exactly 80 at the end.

    A read-then-write without the lock (locally) or the generation precondition (gs://)
    loses increments as soon as the two interleave."""
    uri = storage.join(where, "counter")
    procs = [subprocess.Popen([sys.executable, "-c", COUNTER, uri, "40"]) for _ in range(2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    assert storage.read_text(uri) == "80"


def test_update_decides_again_after_losing_a_race(where: str) -> None:
    """Another writer changes the file while ``change`` decides: on gs:// the conditional
    write fails and ``change`` sees the new bytes; locally the lock serialises the writers."""
    uri = storage.join(where, "latest.json")
    storage.write_text(uri, "a")
    seen: list[bytes | None] = []

    def change(data: bytes | None) -> bytes | None:
        seen.append(data)
        if len(seen) == 1 and storage.is_gcs(uri):
            storage.write_text(uri, "b")  # a concurrent publisher wins in between
        return (data or b"") + b"+me"

    assert cas.update(uri, change) == (b"b+me" if storage.is_gcs(uri) else b"a+me")
    assert seen == ([b"a", b"b"] if storage.is_gcs(uri) else [b"a"])
    assert cas.update(uri, lambda data: None) is None  # "no change" writes nothing
    assert storage.read_bytes(uri) == (b"b+me" if storage.is_gcs(uri) else b"a+me")
