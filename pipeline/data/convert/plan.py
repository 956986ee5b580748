"""Where the splits and shards fall: pure functions of row counts and piece metadata.

    python -c "from pipeline.data.convert import plan; print(plan.plan_splits(11_000_000, [], None, None))"

The split needs the total row count N (test = the last N/22 rows), which a gzip stream only
reveals at its end, so every block is first written as a *piece* of framed records. Every
framed record has the same size (:data:`pipeline.data.records.FRAMED_BYTES`), so once N is
known a shard is a list of byte ranges of pieces: :func:`plan_shards` cuts them.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.core import schema
from pipeline.data import records
from pipeline.data.convert.errors import MARK, ConvertError


@dataclass(frozen=True)
class SplitPlan:
    """Where the splits fall, in source lines and in written records."""

    total_lines: int
    bad_rows: int
    lines: dict[str, tuple[int, int]]  # split → [start, end) line range (0-based, global)
    records: dict[str, tuple[int, int]]  # split → [start, end) record range


def plan_splits(total_lines: int, bad_lines: Sequence[int], validation_rows: int | None,
                test_rows: int | None) -> SplitPlan:
    """Cut the source lines into training, validation and test by position.

    Args:
        total_lines: lines in the whole source (all parts).
        bad_lines: sorted 0-based global line indices of skipped bad rows.
        validation_rows: lines of validation (None: ``total_lines // 22``).
        test_rows: lines of test, the last ones (None: ``total_lines // 22``).

    Returns:
        The line and record ranges of each split.

    Raises:
        ConvertError: if any split would be empty.
    """
    val = total_lines // 22 if validation_rows is None else validation_rows
    test = total_lines // 22 if test_rows is None else test_rows
    train = total_lines - val - test
    if val < 1 or test < 1 or train < 1:
        raise ConvertError(
            f"{MARK}the source has {total_lines:,} rows, too few for non-empty training, "
            f"validation ({val:,}) and test ({test:,}) splits; use a bigger source or set "
            "data.validation_rows / data.test_rows")
    bounds = {"training": (0, train), "validation": (train, train + val),
              "test": (train + val, total_lines)}

    def record_index(line: int) -> int:
        return line - bisect.bisect_left(bad_lines, line)

    recs = {s: (record_index(a), record_index(b)) for s, (a, b) in bounds.items()}
    return SplitPlan(total_lines, len(bad_lines), bounds, recs)


def shard_name(split: str, index: int, count: int) -> str:
    """Return the dataset-relative path of shard ``index`` of ``count`` of ``split``."""
    return f"{split}/part-{index:05d}-of-{count:05d}{schema.SHARD_SUFFIX}"


def plan_shards(pieces: Sequence[dict[str, Any]], parts: Sequence[tuple[int, int]],
                bad_rows: Sequence[tuple[int, int, str, str]], cfg: dict[str, Any]
                ) -> tuple[SplitPlan, list[dict[str, Any]], list[tuple[int, str, str]]]:
    """Turn piece metadata into shard-writing tasks once the total row count is known.

    Args:
        pieces: metadata from the write step (part, line0, lines, records, path).
        parts: (part index, total lines) of every source part.
        bad_rows: (part, line within part, kind, text) of every bad row.
        cfg: ``validation_rows``, ``test_rows`` and ``shards`` ({split: count}).

    Returns:
        ``(plan, tasks, bad)``: the split plan; the tasks: one per shard ``{kind: "shard",
        split, index, count, path, records, ranges: [(piece path, byte start, byte end)]}``
        and one per split ``{kind: "stats", split, records, ranges, summaries: [the piece's
        summary where the range is the whole piece, else None]}``; bad rows as
        ``(1-based global line, kind, text)`` sorted by line.
    """
    offsets, total = {}, 0
    for part, lines in sorted(parts):
        offsets[part] = total
        total += lines
    bad = sorted((offsets[p] + line + 1, kind, text) for p, line, kind, text in bad_rows)
    plan = plan_splits(total, [line - 1 for line, _, _ in bad], cfg["validation_rows"],
                       cfg["test_rows"])
    ordered = sorted(pieces, key=lambda m: (m["part"], m["line0"]))
    starts, acc = [], 0
    for meta in ordered:
        starts.append(acc)
        acc += meta["records"]
    def cut(a: int, b: int) -> tuple[list[tuple[str, int, int]], list[dict[str, Any] | None]]:
        """Byte ranges of pieces holding records [a, b), and summaries of whole pieces."""
        ranges, summaries = [], []
        first = max(0, bisect.bisect_right(starts, a) - 1)
        for meta, start in zip(ordered[first:], starts[first:], strict=True):
            if start >= b:
                break
            r0, r1 = max(a, start), min(b, start + meta["records"])
            if r1 > r0:
                ranges.append((meta["path"], (r0 - start) * records.FRAMED_BYTES,
                               (r1 - start) * records.FRAMED_BYTES))
                whole = r1 - r0 == meta["records"] and "stats" in meta
                summaries.append({"signal": meta["signal"], "stats": meta["stats"]}
                                 if whole else None)
        return ranges, summaries

    tasks: list[dict[str, Any]] = []
    for split in schema.SPLITS:
        lo, hi = plan.records[split]
        count = max(1, min(cfg["shards"][split], hi - lo))
        for k in range(count):
            a, b = lo + (hi - lo) * k // count, lo + (hi - lo) * (k + 1) // count
            tasks.append({"kind": "shard", "split": split, "index": k, "count": count,
                          "path": shard_name(split, k, count), "records": b - a,
                          "ranges": cut(a, b)[0]})
        # Statistics per split, not per shard: whole pieces bring their summary, so only the
        # (at most two) pieces cut by a split boundary are read again.
        ranges, summaries = cut(lo, hi)
        tasks.append({"kind": "stats", "split": split, "records": hi - lo, "ranges": ranges,
                      "summaries": summaries})
    return plan, tasks, bad
