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
