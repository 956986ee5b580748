"""A converted dataset: ``DATA/manifest.json`` and the shard files it lists.

    python -c "from pipeline.data.dataset import open_dataset as o; print(o('data/sample').rows('test'))"

A directory without a manifest is not a dataset: the converter writes ``manifest.json``
last, so its presence means every shard it lists is complete. Shard paths in the
manifest are relative to the dataset directory, so a dataset can be copied or moved
(local ↔ gs://) as a whole. ``DATA/validation.json`` is the latest comparison of this
dataset with a baseline (``higgs validate``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from pipeline.core import schema, storage
from pipeline.core.errors import PipelineError

VALIDATION_NAME = "validation.json"  # written by pipeline.data.validate, removed by a reconversion


class DatasetError(PipelineError):
    """The location is not a complete dataset; the message says what to run."""


def manifest_uri(data: str) -> str:
    """Return the manifest location of a dataset directory (local path or gs://)."""
    return storage.join(data, schema.MANIFEST_NAME)


def validation_uri(data: str) -> str:
    """Return where ``higgs validate`` writes its report for a dataset (``DATA/validation.json``)."""
    return storage.join(data, VALIDATION_NAME)


def load_manifest(data: str, check_features: bool = True) -> dict[str, Any]:
    """Read and sanity-check ``DATA/manifest.json``.

    Args:
        data: dataset directory, local or gs://.
        check_features: refuse a manifest whose features differ from this version's schema
            (off for :mod:`pipeline.data.validate`, which reports the difference itself).

    Returns:
        The manifest as a dict (contract fields: rows, bad_rows, source, shards, features).

    Raises:
        DatasetError: no manifest (an unfinished or foreign directory), unreadable JSON,
            or features that do not match :data:`pipeline.core.schema.FEATURES`.
    """
    uri = manifest_uri(data)
    try:
        text = storage.read_text(uri)
    except FileNotFoundError:
        raise DatasetError(
            f"{data} is not a dataset (no {schema.MANIFEST_NAME}); create it with "
            f"'higgs convert --source FILE.csv.gz --out {data}'"
        ) from None
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{uri} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    missing = [k for k in ("rows", "shards", "features") if k not in manifest]
    if missing:
        raise DatasetError(f"{uri} lacks {', '.join(missing)}; rebuild with 'higgs convert --overwrite'")
    if check_features and tuple(manifest["features"]) != schema.FEATURES:
        raise DatasetError(f"{uri} lists other features than this version's schema; rebuild it")
    return manifest


def fingerprint(data: str | Dataset) -> str:
    """The dataset's identity: sha256 (hex) of its ``manifest.json`` bytes.

    The manifest lists every shard with its record count and the source's checksum, so two
    datasets with the same fingerprint hold the same records. Runs record it at train time
    and reports at evaluate time (``provenance.json``, ``metrics.json``).

    Raises:
        DatasetError: ``data`` has no manifest.
    """
    data = data.uri if isinstance(data, Dataset) else data
    try:
        return hashlib.sha256(storage.read_bytes(manifest_uri(data))).hexdigest()
    except FileNotFoundError:
        raise DatasetError(f"{data} is not a dataset (no {schema.MANIFEST_NAME})") from None


def shard_paths(data: str, split: str, manifest: dict[str, Any] | None = None) -> list[str]:
    """Return the full paths of one split's shard files, in manifest order.

    Args:
        data: dataset directory, local or gs://.
        split: one of :data:`pipeline.core.schema.SPLITS`.
        manifest: an already loaded manifest (read from ``data`` when omitted).

    Raises:
        DatasetError: unknown split, or a split with no shards.
    """
    if split not in schema.SPLITS:
        raise DatasetError(f"unknown split {split!r}; splits are: {', '.join(schema.SPLITS)}")
    manifest = manifest or load_manifest(data)
    shards = manifest["shards"].get(split) or []
    if not shards:
        raise DatasetError(f"dataset {data} has no {split} shards")
    return [storage.join(data, s["path"]) for s in shards]


def split_rows(manifest: dict[str, Any], split: str) -> int:
    """Number of records in one split according to the manifest."""
    return int(manifest["rows"][split])


@dataclass(frozen=True)
class Dataset:
    """A dataset directory with its manifest, read once and passed along the chain.

    Attributes:
        uri: the dataset directory (local path or gs://).
        manifest: the content of ``manifest.json`` (checked by :func:`load_manifest`).
    """

    uri: str
    manifest: dict[str, Any]

    def shard_paths(self, split: str) -> list[str]:
        """Full paths of one split's shard files, in manifest order (see :func:`shard_paths`)."""
        return shard_paths(self.uri, split, self.manifest)

    def rows(self, split: str) -> int:
        """Number of records in one split."""
        return split_rows(self.manifest, split)

    def __str__(self) -> str:
        return self.uri


def open_dataset(data: str | Dataset) -> Dataset:
    """Return ``data`` as a :class:`Dataset`, reading its manifest only when given a location.

    Args:
        data: a dataset directory (local or gs://) or an already opened :class:`Dataset`.

    Raises:
        DatasetError: see :func:`load_manifest`.
    """
    if isinstance(data, Dataset):
        return data
    return Dataset(str(data), load_manifest(str(data)))
