"""Staging, reuse and publishing of a converted dataset: ``DATA/.staging-<id>/`` → ``DATA/``.

    python -c "from pipeline.data.convert import stage; print(stage.staging_dir('data/sample'))"

Everything is written under ``DATA/.staging-<id>/`` and moved into place only when the whole
pipeline succeeded and the bad-row limit holds; ``manifest.json`` is written last. A rerun
over the same source content (:func:`source_fingerprint`) with the same output options
(:func:`output_options`) reuses the dataset; ``.staging-*`` left by killed runs is removed
after the next successful publish.

The converter never deletes what it did not write. What it owns in ``DATA/`` is exactly:
``manifest.json``, the shards the manifest lists, ``bad_rows/bad_rows.tsv``, its staging
directories, its lock (:data:`LOCK_FILE`) and, while a publish is under way, its journal
(:data:`JOURNAL_FILE`, which lists the files being replaced and placed, so a publish killed
halfway is recognised and finished by the next run). Anything else in ``DATA/`` is foreign:
:func:`check_foreign` refuses to convert there. ``--overwrite`` replaces only the files the
previous manifest lists.
"""

from __future__ import annotations

import datetime
import glob as globlib
import hashlib
import json
import logging
import os
import uuid
from collections.abc import Sequence
from typing import Any

from pipeline.core import faults, schema, storage
from pipeline.core.config import DataConfig
from pipeline.core.storage import Files
from pipeline.data import records
from pipeline.data.convert import stats
from pipeline.data.convert.errors import ConvertError
from pipeline.data.stats import STATISTICS_VERSION

log = logging.getLogger(__name__)

CONVERTER_VERSION = "1.0"
# The staging directory's layout (the shard paths inside it are pipeline.data.convert.plan's).
RESULT_FILE = "_result.json"
PIECES_DIR = "_pieces"
BAD_ROWS_DIR = "bad_rows"
BAD_ROWS_FILE = "bad_rows.tsv"
_SECRET_WORDS = ("key", "token", "secret", "password", "credential")
LOCK_FILE = ".convert.lock"
JOURNAL_FILE = ".convert-publish.json"
STAGING_PREFIX = ".staging-"


def staging_dir(out: str) -> str:
    """Return a fresh staging location inside the dataset directory ``out``."""
    return storage.join(out, f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}")


def redact(beam_args: Sequence[str]) -> list[str]:
    """Return ``beam_args`` with the values of secret-looking options replaced.

    Args:
        beam_args: Beam command-line options as given (``--opt=v`` or ``--opt v``).

    Returns:
        The same list, values of options naming a key, token, secret, password or
        credential shown as ``<redacted>`` (what the manifest records).
    """
    out, hide_next = [], False
    for arg in beam_args:
        if hide_next:
            out.append("<redacted>")
            hide_next = False
            continue
        name, eq, _ = arg.partition("=")
        secret = name.startswith("--") and any(w in name.lower() for w in _SECRET_WORDS)
        if secret and eq:
            out.append(f"{name}=<redacted>")
        else:
            out.append(arg)
            hide_next = secret and not eq
    return out


def source_fingerprint(parts: list[str], source: str) -> dict[str, Any]:
    """Identify the source content: one part's fingerprint, or a combined one for several.

    Args:
        parts: the source's files, in name order.
        source: what the user gave (a path, or a glob of parts).

    Returns:
        :func:`pipeline.data.source.fingerprint` of a single file; for several parts
        ``{"uri", "bytes", "sha256" | "parts_sha256", "parts": [each part's fingerprint]}``.
    """
    from pipeline.data import source as source_mod

    prints = [source_mod.fingerprint(p) for p in parts]
    if len(prints) == 1 and parts[0] == source:
        return prints[0]
    key = "sha256" if all("sha256" in p for p in prints) else "crc32c"
    combined = hashlib.sha256("".join(
        f"{os.path.basename(p['uri'])}:{p.get(key) or p.get('sha256') or p.get('crc32c')}\n"
        for p in prints).encode()).hexdigest()
    return {"uri": source, "bytes": sum(int(p["bytes"]) for p in prints),
            "sha256" if key == "sha256" else "parts_sha256": combined, "parts": prints}


def _identity(fp: dict[str, Any]) -> dict[str, Any]:
    """The parts of a fingerprint that identify content (not where it was read from)."""
    keys = ("bytes", "sha256", "crc32c", "parts_sha256")
    return {k: fp[k] for k in keys if k in fp}


def output_options(cfg: DataConfig) -> dict[str, Any]:
    """Options that change the output; a rerun with equal ones over the same source is a no-op.

    Args:
        cfg: the data config.

    Returns:
        ``{"converter_version", "validation_rows", "test_rows", "shards": {split: n}}``.
    """
    return {"converter_version": CONVERTER_VERSION,
            "validation_rows": cfg.validation_rows, "test_rows": cfg.test_rows,
            "shards": {"training": cfg.training_shards, "validation": cfg.validation_shards,
                       "test": cfg.test_shards}}


def existing_dataset(files: Files, out: str, fingerprint: dict[str, Any],
                     wanted: dict[str, Any], overwrite: bool) -> dict[str, Any] | None:
    """Return the manifest of ``out`` when it already holds this very dataset.

    Args:
        files: storage handle.
        out: the dataset directory.
        fingerprint: :func:`source_fingerprint` of the source.
        wanted: :func:`output_options` of this run.
        overwrite: rebuild even a matching dataset.

    Returns:
        The existing manifest to reuse, or None when the conversion should run.

    Raises:
        ConvertError: ``out`` holds another dataset (or an unreadable manifest) and
            ``overwrite`` is false.
    """
    from pipeline.data import dataset

    if not files.exists(dataset.manifest_uri(out)):
        return None
    try:
        old = dataset.load_manifest(out)
    except dataset.DatasetError:
        old = None
    same = (old is not None and _identity(old.get("source", {})) == _identity(fingerprint)
            and {k: old.get("options", {}).get(k) for k in wanted} == wanted)
    if same and (old.get("statistics") or {}).get("version") != STATISTICS_VERSION:
        # The same records, converted before the manifest carried these statistics: rebuild
        # (the result is identical but for the statistics, which validation needs).
        log.info("%s was built from this source without version-%d statistics; rebuilding it",
                 out, STATISTICS_VERSION)
        return None
    if same and not overwrite:
        log.info("%s is complete for this source and options; nothing to do", out)
        return old
    if not overwrite:
        what = ("a dataset built from another source or options" if old is not None
                else "an unreadable manifest")
        raise ConvertError(f"{out} already holds {what}; pass --overwrite to rebuild it or "
                           "choose another --out")
    return None


def _read_json(files: Files, uri: str) -> dict[str, Any] | None:
    try:
        value = json.loads(files.read_bytes(uri))
    except (FileNotFoundError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def owned_files(files: Files, out: str) -> set[str]:
    """Paths (relative to ``out``) of the files an earlier conversion wrote there.

    The previous manifest's shards, ``manifest.json``, the bad-row report, the lock, the
    validation report (``higgs validate``'s, which a republish removes with the old shards) and
    the journal of an interrupted publish with every file it names. Staging directories are the
    converter's too (:data:`STAGING_PREFIX`), matched by prefix.
    """
    from pipeline.data import dataset

    owned = {schema.MANIFEST_NAME, f"{BAD_ROWS_DIR}/{BAD_ROWS_FILE}", LOCK_FILE, JOURNAL_FILE,
             dataset.VALIDATION_NAME}  # higgs validate's report: a republish removes it (stale)
    manifest = _read_json(files, dataset.manifest_uri(out)) or {}
    for shards in (manifest.get("shards") or {}).values():
        owned.update(s["path"] for s in shards if isinstance(s, dict) and "path" in s)
    journal = _read_json(files, storage.join(out, JOURNAL_FILE)) or {}
    owned.update(journal.get("remove", []))
    owned.update(journal.get("place", []))
    return owned


def check_foreign(files: Files, out: str) -> None:
    """Refuse a ``DATA`` holding files the converter did not write (nothing is deleted).

    Raises:
        ConvertError: naming the first foreign file and how many there are.
    """
    owned = owned_files(files, out)
    foreign = [p for p in files.list_files(out)
               if p not in owned and not p.startswith(STAGING_PREFIX)]
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise ConvertError(f"{out} holds files the converter did not write ({storage.join(out, foreign[0])}"
                           f"{more}); move them elsewhere or choose another --out — convert never deletes "
                           "what it did not create")


def discard(files: Files, staging: str) -> None:
    """Remove a failed run's staging directory; a failure to do so is only logged."""
    try:
        files.delete_tree(staging)
    except Exception as exc:  # cleanup must not hide the real error
        log.warning("could not remove staging directory %s: %s", staging, exc)


def publish(files: Files, out: str, staging: str, result: dict[str, Any],
            fingerprint: dict[str, Any], data_cfg: DataConfig, beam_args: list[str],
            block_bytes: int, wanted: dict[str, Any], seconds: float) -> dict[str, Any]:
    """Check the bad-row limit, move staging into place, write the manifest last.

    Args:
        files: storage handle.
        out: the dataset directory.
        staging: this run's staging directory (removed on success).
        result: the pipeline's ``_result.json`` (plan, shards, stats, bad-row counts).
        fingerprint: the source's :func:`source_fingerprint`.
        data_cfg: the data config (``max_bad_rows``, ``block_rows``).
        beam_args: the Beam options of the run (recorded redacted).
        block_bytes: the text block size used.
        wanted: :func:`output_options` of the run.
        seconds: wall time so far.

    Returns:
        The manifest written to ``DATA/manifest.json``.

    Raises:
        ConvertError: too many bad rows (the report is left in ``DATA/bad_rows/``), or
            shards and statistics that disagree.
    """
    from pipeline.data import dataset

    plan = result["plan"]
    bad = plan["bad_rows"]
    bad_src = storage.join(staging, BAD_ROWS_DIR, BAD_ROWS_FILE)
    bad_dst = storage.join(out, BAD_ROWS_DIR)
    files.delete_file(storage.join(bad_dst, BAD_ROWS_FILE))
    if bad:
        files.move_file(bad_src, storage.join(bad_dst, BAD_ROWS_FILE))
    if bad > data_cfg.max_bad_rows:
        kinds = ", ".join(f"{k} {n}" for k, n in result["bad_rows_by_kind"].items() if n)
        first = result["bad_rows_sample"][0]
        raise ConvertError(
            f"{bad} bad rows in {fingerprint['uri']} ({kinds}; first: line {first[0]}, "
            f"{first[1]}) exceed --max-bad-rows {data_cfg.max_bad_rows}; see "
            f"{storage.join(bad_dst, BAD_ROWS_FILE)}, fix the source or raise --max-bad-rows")

    # The journal names every file this publish removes and places, before any is touched:
    # a publish killed halfway leaves files the next run recognises as its own (and finishes).
    new_shards = [shard["path"] for shard in result["shards"]]
    old_shards = sorted(owned_files(files, out) - {schema.MANIFEST_NAME, LOCK_FILE, JOURNAL_FILE,
                                                   f"{BAD_ROWS_DIR}/{BAD_ROWS_FILE}"})
    journal_path = storage.join(out, JOURNAL_FILE)
    files.write_bytes(journal_path, json.dumps({"remove": old_shards, "place": new_shards}).encode())
    # Unpublish first: from here until the new manifest exists, DATA is not a dataset.
    manifest_path = dataset.manifest_uri(out)
    files.delete_file(manifest_path)
    for rel in old_shards:  # only what the previous manifest (or journal) lists
        files.delete_file(storage.join(out, rel))
    for rel in new_shards:
        files.move_file(storage.join(staging, rel), storage.join(out, rel))

    rows = {s: 0 for s in schema.SPLITS}
    signal = {s: 0 for s in schema.SPLITS}
    shards: dict[str, list[dict[str, Any]]] = {s: [] for s in schema.SPLITS}
    for shard in result["shards"]:
        split = shard["split"]
        shards[split].append({"path": shard["path"], "records": shard["records"]})
        rows[split] += shard["records"]
    for split, split_stats in result["stats"].items():
        if split_stats["records"] != rows[split]:
            raise ConvertError(f"split {split}: shards hold {rows[split]} records, statistics "
                               f"saw {split_stats['records']}; rerun the conversion")
        signal[split] = split_stats["signal"]
    feature_stats, statistics = stats.manifest_statistics(
        {split: d["stats"] for split, d in result["stats"].items()}, bad, plan["total_lines"])
    manifest = {
        "rows": rows,
        "bad_rows": bad,
        "source": fingerprint,
        "shards": shards,
        "features": list(schema.FEATURES),
        "label": schema.LABEL_KEY,
        "record": {"format": "tf.train.Example{features: bytes = serialize_tensor(float32[28]), "
                             "label: float_list[1]}",
                   "example_bytes": records.EXAMPLE_BYTES, "compression": None},
        "split": {"rule": "by source line position: training first, then validation, then test "
                          "(the last lines); ranges are 0-based [start, end) source lines",
                  "source_rows": plan["total_lines"],
                  "lines": {s: list(r) for s, r in plan["lines"].items()}},
        "bad_rows_by_kind": result["bad_rows_by_kind"],
        "signal_fraction": {s: (signal[s] / rows[s] if rows[s] else None) for s in schema.SPLITS},
        "feature_stats": feature_stats,
        "statistics": statistics,
        "converter_version": CONVERTER_VERSION,
        "options": {**wanted, "block_rows": data_cfg.block_rows, "block_bytes": block_bytes,
                    "max_bad_rows": data_cfg.max_bad_rows, "beam_args": redact(beam_args)},
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "seconds": round(seconds, 3),
    }
    files.delete_tree(staging)
    _remove_stale_staging(files, out)
    faults.point("convert.before_manifest")
    files.write_bytes(manifest_path, json.dumps(manifest, indent=1).encode())
    files.delete_file(journal_path)
    return manifest


def _remove_stale_staging(files: Files, out: str) -> None:
    """Delete ``.staging-*`` left by killed runs (the lock keeps a second run out of DATA)."""
    if storage.is_gcs(out):
        base = out.rstrip("/") + "/"
        stale = {base + path[len(base):].split("/", 1)[0]
                 for path in files.list_paths(base + STAGING_PREFIX)}
    else:
        stale = set(globlib.glob(os.path.join(globlib.escape(out), STAGING_PREFIX + "*")))
    for path in sorted(stale):
        log.info("removing %s left by an earlier, interrupted run", path)
        files.delete_tree(path)
