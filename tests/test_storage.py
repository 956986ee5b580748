"""pipeline.core.storage on local paths (the gs:// side: tests/test_storage_gcs.py).

    .venv/bin/pytest tests/test_storage.py -q
"""

from pathlib import Path

from pipeline.core import checksums, storage


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
