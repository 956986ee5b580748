"""Source checks before anything runs: missing, empty, corrupt, binary or headed files.

    .venv/bin/pytest tests/test_convert.py -q -k file_errors

Each problem a user can fix ends in one :class:`~pipeline.data.convert.errors.ConvertError`
line on the driver, before a Beam pipeline (or a Dataflow job) is started.
"""

from __future__ import annotations

import os
import re

from pipeline.core import schema, storage
from pipeline.core.storage import Files
from pipeline.data import textblocks
from pipeline.data.convert.errors import ConvertError

_SAMPLE_BYTES = 1 << 16


def expand_source(files: Files, source: str) -> list[str]:
    """Return the source's files: the one path, or a glob's matches in name order.

    Args:
        files: storage handle.
        source: local path or ``gs://`` URI, or a glob of parts.

    Returns:
        The part paths, sorted.

    Raises:
        ConvertError: a URL scheme other than gs://, no match, a missing file or a directory.
    """
    if re.match(r"^[a-z][a-z0-9+.-]*://", source) and not storage.is_gcs(source):
        raise ConvertError(f"cannot read {source} directly: convert takes a local path or gs:// "
                           "URI (resolve https sources with pipeline.data.source.resolve first)")
    if any(c in source for c in "*?["):
        # pipeline.data.source keeps sha256 sidecars next to sources: never read those as parts.
        parts = [p for p in files.glob(source) if not p.endswith(".sha256")]
        if not parts:
            raise ConvertError(f"no source files match {source}; check the pattern")
        return parts
    if storage.is_gcs(source):
        storage.split_gcs(source)  # a bucket is required
    if not files.exists(source):
        if not storage.is_gcs(source) and os.path.isdir(source):
            raise ConvertError(f"source {source} is not a file")
        raise ConvertError(f"source {source} not found; check the path or create one with "
                           "'higgs synth --rows N --out FILE.csv.gz'")
    return [source]


def check_part(files: Files, path: str) -> float:
    """Check one part's first bytes.

    Args:
        files: storage handle.
        path: one source file.

    Returns:
        The mean line length of its first 64 KiB of text, in bytes (sizes the text blocks).

    Raises:
        ConvertError: empty, not gzip despite ``.gz``, corrupt gzip, a zip without exactly
            one ``.csv.gz``/``.csv`` member, no rows, binary data, or a header line.
    """
    if files.size(path) == 0:
        raise ConvertError(f"source {path} is empty (0 bytes); download or generate it again")
    with files.open_read(path) as raw:
        if path.endswith(".gz") and not textblocks.is_gzip(raw):
            raise ConvertError(f"source {path} is not gzip-compressed (it ends in .gz but does not "
                               "start with the gzip magic bytes); download it again")
        try:
            with textblocks.open_text(raw, path) as stream:
                sample = stream.read(_SAMPLE_BYTES)
        except textblocks.ArchiveError as exc:
            raise ConvertError(str(exc)) from None
        except textblocks.gzip_errors() as exc:
            raise ConvertError(f"source {textblocks.corrupt_line(path, exc)}") from None
    if not sample.strip():
        raise ConvertError(f"source {path} holds no rows; download or generate it again")
    if b"\x00" in sample:
        raise ConvertError(f"source {path} is not CSV text (binary data); expected "
                           f"{textblocks.SOURCE_KINDS}")
    first = sample.split(b"\n", 1)[0].strip()
    tokens = first.split(b",")
    if any(re.search(rb"[A-DF-Za-df-z_]", t) and t.strip().lower() not in
           (b"nan", b"-nan", b"inf", b"-inf", b"+inf", b"infinity", b"-infinity")
           for t in tokens):
        raise ConvertError(
            f"source {path} starts with a header line ({first[:60].decode('utf-8', 'replace')}…); "
            "HIGGS files have none: remove it (e.g. 'zcat F | tail -n +2 | gzip > G')")
    complete = sample.split(b"\n")[:-1] or [sample]
    widths = {line.count(b",") + 1 for line in complete if line.strip()}
    if len(widths) == 1 and (width := widths.pop()) != len(schema.CSV_COLUMNS):
        # Every row, not one bad row: the export itself changed (a column dropped or added).
        raise ConvertError(
            f"source {path}: its first {len(complete):,} rows all have {width} columns, not "
            f"{len(schema.CSV_COLUMNS)} ({schema.LABEL_KEY} + {schema.NUM_FEATURES} features in the "
            "UCI order); a column was dropped or added upstream: fix the export")
    lines = sample.count(b"\n")
    return len(sample) / max(1, lines)
