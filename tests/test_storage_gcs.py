"""Round trip of pipeline.core.storage against a real gcp-storage-emulator."""

import pytest

from pipeline.core import storage

pytestmark = pytest.mark.gcs


def test_write_read_exists_roundtrip(gcs_bucket: str) -> None:
    uri = f"gs://{gcs_bucket}/dir/file.txt"
    assert not storage.exists(uri)
    storage.write_text(uri, "hello")
    assert storage.exists(uri)
    assert storage.read_text(uri) == "hello"


def test_missing_object_is_file_not_found(gcs_bucket: str) -> None:
    with pytest.raises(FileNotFoundError, match="no such object"):
        storage.read_bytes(f"gs://{gcs_bucket}/nope")


def test_split_gcs_rejects_bucketless() -> None:
    with pytest.raises(storage.StorageError):
        storage.split_gcs("gs:///x")


def test_tree_listing_moving_and_deleting(gcs_bucket: str) -> None:
    base = f"gs://{gcs_bucket}"
    for name in ("a/x", "a/y/z", "ab/w"):
        storage.write_bytes(f"{base}/{name}", name.encode())
    assert not storage.exists(f"{base}/a")  # a prefix with objects under it is not a file
    assert storage.list_paths(f"{base}/a/") == [f"{base}/a/x", f"{base}/a/y/z"]
    assert storage.list_paths(f"{base}/a") == [f"{base}/a/x", f"{base}/a/y/z", f"{base}/ab/w"]
    assert storage.glob(f"{base}/a*/w") == [f"{base}/ab/w"]
    storage.move_tree(f"{base}/a", f"{base}/c")
    assert storage.list_files(f"{base}/c") == ["x", "y/z"]
    assert storage.list_files(f"{base}/a") == []
    assert storage.read_bytes(f"{base}/c/y/z") == b"a/y/z"
    storage.delete_tree(f"{base}/c")
    assert storage.list_paths(f"{base}/") == [f"{base}/ab/w"]


def test_streams_and_byte_ranges(gcs_bucket: str, tmp_path) -> None:
    import pickle

    files = storage.Files(anonymous=True)
    uri = f"gs://{gcs_bucket}/blob.bin"
    with files.open_write(uri) as out:
        out.write(b"0123456789")
        out.flush()  # a no-op on gs://, as Beam's writer
    assert files.size(uri) == 10
    with files.open_read(uri) as src:
        assert src.read() == b"0123456789"
    assert files.read_range(uri, 2, 5) == b"234"
    with open(tmp_path / "copy", "wb") as out:
        assert files.copy_range(uri, 7, 12, out) == 3  # the object ends at 10
    assert (tmp_path / "copy").read_bytes() == b"789"
    # A handle carries no client: what a DoFn pickles is the flag alone.
    assert pickle.loads(pickle.dumps(files)) == files and len(pickle.dumps(files)) < 200
