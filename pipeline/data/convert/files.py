"""Streaming open/list/move/delete for local paths and ``gs://`` (Beam's GcsIO), picklable.

    python -c "from pipeline.data.convert.files import Files; print(Files().list('pipeline/data'))"
"""

from __future__ import annotations

import fnmatch
import glob as globlib
import os
import shutil
from typing import Any, BinaryIO

from pipeline.core import storage
from pipeline.data.convert.errors import MARK, ConvertError


class Files:
    """Streaming open/list/move/delete for local paths and ``gs://`` (Beam's GcsIO).

    Beam's GCS filesystem asks Google auth for credentials (with retries that take ~30 s when
    there are none) before every first use in a process. Against ``STORAGE_EMULATOR_HOST`` or
    with ``--no_auth`` we hand GcsIO an anonymous client instead, which also honours the
    emulator address.
    """

    def __init__(self, anonymous: bool = False):
        self.anonymous = anonymous
        self._gcs: Any = None

    def __getstate__(self) -> dict[str, Any]:  # DoFns are pickled: never ship a client
        return {"anonymous": self.anonymous, "_gcs": None}

    def gcs(self) -> Any:
        if self._gcs is None:
            from apache_beam.io.gcp import gcsio
            from apache_beam.options.pipeline_options import PipelineOptions

            client = None
            if self.anonymous or os.environ.get("STORAGE_EMULATOR_HOST"):
                from google.cloud import storage as gcs

                client = gcs.Client.create_anonymous_client()
            self._gcs = gcsio.GcsIO(storage_client=client, pipeline_options=PipelineOptions([]))
        return self._gcs

    def open_read(self, path: str) -> BinaryIO:
        if storage.is_gcs(path):
            return self.gcs().open(path, "rb")
        return open(path, "rb")

    def open_write(self, path: str) -> BinaryIO:
        if storage.is_gcs(path):
            return self.gcs().open(path, "wb")
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        return open(path, "wb")

    def write_bytes(self, path: str, data: bytes) -> None:
        with self.open_write(path) as f:
            f.write(data)

    def read_bytes(self, path: str) -> bytes:
        with self.open_read(path) as f:
            return f.read()

    def copy_range(self, path: str, start: int, end: int, out: BinaryIO) -> None:
        """Append bytes [start, end) of ``path`` to the open file ``out``.

        Local to local uses ``os.copy_file_range`` (the kernel copies; no round trip
        through Python buffers); otherwise the range is read and written.
        """
        if not storage.is_gcs(path) and hasattr(out, "fileno") and hasattr(os, "copy_file_range"):
            out.flush()  # keep the file position in step with earlier buffered writes
            with open(path, "rb") as src:
                offset = start
                try:
                    while offset < end:
                        done = os.copy_file_range(src.fileno(), out.fileno(), end - offset, offset)
                        if done == 0:
                            break
                        offset += done
                except OSError:  # e.g. a filesystem without support: copy the rest by hand
                    pass
                if offset < end:
                    src.seek(offset)
                    out.write(src.read(end - offset))
            out.seek(0, os.SEEK_END)  # re-sync the buffered writer with the moved fd position
            return
        with self.open_read(path) as src:
            src.seek(start)
            data = src.read(end - start)
        if len(data) != end - start:
            raise ConvertError(f"{MARK}staging piece {path} is shorter than written; rerun "
                               "the conversion")
        out.write(data)

    def exists(self, path: str) -> bool:
        if storage.is_gcs(path):
            return bool(self.gcs().exists(path))
        return os.path.exists(path)

    def size(self, path: str) -> int:
        if storage.is_gcs(path):
            return int(self.gcs().size(path))
        return os.path.getsize(path)

    def list(self, prefix: str) -> list[str]:
        """All files whose path starts with ``prefix`` (recursive), sorted."""
        if storage.is_gcs(prefix):
            return sorted(path for path, _ in self.gcs().list_files(prefix))
        root = prefix.rstrip(os.sep)
        if os.path.isfile(root):
            return [root]
        found = []
        for dirpath, _, files in os.walk(root):
            found.extend(os.path.join(dirpath, f) for f in files)
        return sorted(found)

    def glob(self, pattern: str) -> list[str]:
        """Files matching a glob (``*``, ``?``, ``[…]`` in the last path parts), sorted."""
        if storage.is_gcs(pattern):
            cut = min(pattern.find(c) for c in "*?[" if c in pattern)
            return sorted(p for p in self.list(pattern[:cut]) if fnmatch.fnmatchcase(p, pattern))
        return sorted(p for p in globlib.glob(pattern) if os.path.isfile(p))

    def delete_tree(self, prefix: str) -> None:
        if storage.is_gcs(prefix):
            paths = self.list(prefix.rstrip("/") + "/")
            for i in range(0, len(paths), 100):
                self.gcs().delete_batch(paths[i:i + 100])
        elif os.path.isdir(prefix):
            shutil.rmtree(prefix)
        elif os.path.exists(prefix):
            os.remove(prefix)

    def move_tree(self, src: str, dst: str) -> None:
        """Move a directory (local: one rename; gs://: server-side copy + delete per object)."""
        if storage.is_gcs(src):
            src_dir = src.rstrip("/") + "/"
            for path in self.list(src_dir):
                self.gcs().rename(path, dst.rstrip("/") + "/" + path[len(src_dir):])
        else:
            os.makedirs(os.path.dirname(dst.rstrip(os.sep)) or ".", exist_ok=True)
            os.replace(src, dst)
