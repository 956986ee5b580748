"""Split one ``.csv.gz`` into separately gzipped parts, so conversion scales with workers.

    python -m pipeline.data.presplit data/sources/HIGGS.csv.gz data/parts/HIGGS --parts 32
    higgs convert --source 'data/parts/HIGGS/part-*.csv.gz' --out data/full --runner DataflowRunner …

Why: a gzip stream can only be read from its start, so the converter reads one ``.gz`` in one
sequential stage — on Dataflow one worker does all the reading, parsing and encoding while the
others wait for the planning step. Given parts, the converter reads them in parallel (in name
order for the row-position split), so the parse/encode/write work spreads over the workers.

How: one sequential pass decompresses the source with ISA-L, cuts it at line ends into
``parts`` contiguous runs of lines — a cut falls where the compressed input crosses the next
1/parts of its size, so parts hold about equal rows — and gzips each part at
level 1 on a thread pool (ISA-L releases the GIL) while reading on. Parts are named
``part-00000.csv.gz`` …, so name order is row order and the split rule (test = the last N/22
rows) is unchanged. ``_presplit.json`` is written last; a rerun for the same source content
(``pipeline.data.source.fingerprint``) reuses the parts. gzip headers carry mtime 0, so the same
source always gives byte-identical parts (and the converter's own reuse check holds).

Scaling model (measured figures: ``benchmarks/presplit.py``; docs/cloud.md): with N rows, a
sequential split rate ``r_split`` and a per-worker conversion rate ``r_w``,
``T(W) ≈ N/r_split + N/(min(W, P)·r_w) + T_plan``, against ``N/r_w`` for the single ``.gz`` — so
the speed-up ``≈ 1 / (r_w/r_split + 1/min(W, P))`` is capped at ``r_split/r_w`` by the one
sequential pass (Amdahl), which is why the split does nothing but gunzip, cut and gzip -1.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from pipeline.core import storage
from pipeline.core.errors import PipelineError
from pipeline.data import textblocks

log = logging.getLogger(__name__)

PART_PATTERN = "part-*.csv.gz"
MARKER = "_presplit.json"


class PresplitError(PipelineError):
    """The source cannot be split (missing, not gzip/CSV, or an output that cannot be written)."""


@dataclass(frozen=True)
class PresplitResult:
    """What :func:`presplit` produced.

    Attributes:
        glob: the pattern to give ``higgs convert --source`` (``OUT/part-*.csv.gz``).
        parts: URIs of the parts, in row order.
        rows: lines in all parts (= lines in the source).
        bytes_in: compressed bytes read.
        bytes_out: compressed bytes written.
        seconds: wall time of the split (0 when reused).
        reused: True when ``OUT`` already held the parts of this source.
    """

    glob: str
    parts: list[str]
    rows: int
    bytes_in: int
    bytes_out: int
    seconds: float
    reused: bool


def _open_source(source: str) -> tuple[BinaryIO, int]:
    """Return (raw byte stream, compressed size) of a local file or gs:// object."""
    try:
        size = storage.size(source)
        # Large chunks: one HTTP range request per 64 MiB (the sequential pass reads it all).
        return storage.open_read(source, chunk_size=64 << 20), size
    except (FileNotFoundError, IsADirectoryError):
        raise PresplitError(f"source {source} not found; check the path or the bucket and "
                            "object name") from None


def _write_part(uri: str, blocks: list[bytes], level: int) -> tuple[int, int]:
    """Gzip ``blocks`` as one member (mtime 0) to ``uri``; return (lines, compressed bytes)."""
    from isal import igzip

    data = b"".join(blocks)
    lines = data.count(b"\n")
    packed = igzip.compress(data, compresslevel=level, mtime=0)
    storage.write_bytes(uri, packed)  # local files via a temporary name: no half-written part
    return lines, len(packed)


def _reusable(out: str, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
    marker = storage.join(out, MARKER)
    if not storage.exists(marker):
        return None
    done = json.loads(storage.read_text(marker))
    if done.get("source") != fingerprint:
        return None
    if not all(storage.exists(p["uri"]) for p in done["parts"]):
        return None
    return done


def presplit(
    source: str,
    out: str,
    parts: int,
    *,
    level: int = 1,
    threads: int | None = None,
    block_bytes: int = 8 << 20,
) -> PresplitResult:
    """Split ``source`` (``.csv.gz`` or ``.csv``) into ``parts`` gzip parts under ``out``.

    Args:
        source: local path or ``gs://`` object.
        out: local directory or ``gs://`` prefix for ``part-00000.csv.gz`` … and ``_presplit.json``.
        parts: number of parts wanted (≥ 1); about as many as conversion workers, or more.
        level: gzip level of the parts (ISA-L 0–3; 1 = fast, about 2.5× the size of gzip -9).
        threads: parts compressed and uploaded at the same time (default: the CPU count; also
            bounds memory: at most ``threads + 1`` parts are held).
        block_bytes: uncompressed bytes read at a time (at most; smaller for small parts).

    Returns:
        :class:`PresplitResult`; give ``result.glob`` to the converter.

    Raises:
        PresplitError: missing source, bad arguments, or a source that is not gzip/text.
    """
    from pipeline.data import source as source_mod

    if parts < 1:
        raise PresplitError(f"parts must be at least 1, got {parts}")
    # Compression is the parallel half of the pass; gunzip stays on the reading thread.
    threads = threads or max(1, os.cpu_count() or 1)
    if not 0 <= level <= 3:
        raise PresplitError(f"level must be an ISA-L gzip level 0–3, got {level}")
    try:
        fingerprint = source_mod.fingerprint(source)
    except PipelineError as exc:
        raise PresplitError(str(exc)) from None
    done = _reusable(out, fingerprint)
    if done is not None:
        log.info("%s already holds the %d parts of %s; reusing them", out, len(done["parts"]), source)
        return PresplitResult(storage.join(out, PART_PATTERN), [p["uri"] for p in done["parts"]],
                              done["rows"], done["bytes_in"], done["bytes_out"], 0.0, True)

    started = time.perf_counter()
    raw, size = _open_source(source)
    written: list[dict[str, Any]] = []
    pending: list[tuple[str, concurrent.futures.Future]] = []
    try:
        # Cuts fall between blocks: keep blocks (and the chunks fed to the decompressor) well
        # below a part, so small sources split evenly too.
        per_part = max(1.0, size / parts)
        chunks = textblocks.decompressed_chunks(raw, int(min(256 << 10, max(16 << 10, per_part / 16))))
        with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as pool:
            current: list[bytes] = []
            index = 0

            def flush() -> None:
                nonlocal current, index
                uri = storage.join(out, f"part-{index:05d}.csv.gz")
                pending.append((uri, pool.submit(_write_part, uri, current, level)))
                current, index = [], index + 1
                while len(pending) > threads:  # bounded memory: wait for the oldest part
                    _collect(pending.pop(0), written)

            blocks = textblocks.line_blocks(chunks, int(min(block_bytes, max(64 << 10, per_part / 4))))
            for block, pos in blocks:
                current.append(block)
                # Cut where the *compressed* input crosses the next 1/parts of its size: the
                # compression ratio is even across the file, so parts get about equal rows, and
                # there are exactly `parts` of them (fewer only for tiny files).
                if index < parts - 1 and pos >= (index + 1) * per_part:
                    flush()
            if current:
                flush()
            while pending:
                _collect(pending.pop(0), written)
    except (*textblocks.gzip_errors(), textblocks.LineTooLongError) as exc:
        raise PresplitError(f"cannot read {source} as gzip/CSV text: {exc}") from None
    finally:
        raw.close()
    rows = sum(p["rows"] for p in written)
    if rows == 0:
        raise PresplitError(f"source {source} holds no lines")
    result = {"source": fingerprint, "rows": rows, "bytes_in": size,
              "bytes_out": sum(p["bytes"] for p in written), "parts": written}
    storage.write_text(storage.join(out, MARKER), json.dumps(result, indent=1))  # last
    seconds = time.perf_counter() - started
    log.info("split %s into %d parts (%d rows) under %s in %.1f s", source, len(written), rows, out, seconds)
    return PresplitResult(storage.join(out, PART_PATTERN), [p["uri"] for p in written], rows, size,
                          result["bytes_out"], seconds, False)


def _collect(item: tuple[str, concurrent.futures.Future], written: list[dict[str, Any]]) -> None:
    uri, future = item
    try:
        lines, nbytes = future.result()
    except PipelineError as exc:
        raise PresplitError(f"writing {uri} failed: {exc}") from None
    written.append({"uri": uri, "rows": lines, "bytes": nbytes})


def parts_location(temp_location: str, data_root: str, source: str) -> str:
    """Return where the parts of ``source`` go: ``TEMP/parts/<name>`` (or ``DATA_ROOT/parts/``).

    Parts are scratch (the bucket's lifecycle rule deletes ``tmp/`` after a week) and are
    rebuilt byte-identically from the source when needed.
    """
    name = Path(source.rstrip("/")).name
    for suffix in (".gz", ".csv"):
        name = name.removesuffix(suffix)
    return storage.join(temp_location or data_root, "parts", name)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pipeline.data.presplit SOURCE OUT --parts N``; prints the glob to convert."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m pipeline.data.presplit",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("source")
    parser.add_argument("out")
    parser.add_argument("--parts", type=int, required=True)
    parser.add_argument("--level", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="default: the CPU count")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        result = presplit(args.source, args.out, args.parts, level=args.level, threads=args.threads)
    except PipelineError as exc:
        print(f"presplit: error: {exc}", file=sys.stderr)
        return 2
    verb = "reused" if result.reused else "wrote"
    print(f"{verb} {len(result.parts)} parts ({result.rows:,} rows, {result.bytes_out:,} bytes) — "
          f"convert with --source '{result.glob}'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
