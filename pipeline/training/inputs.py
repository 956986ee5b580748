"""The tf.data input pipeline: shard files → blocks of records → shuffle blocks → batch → decode.

    python -c "from pipeline.core.config import load_config; \
from pipeline.training.inputs import make_dataset; \
print(next(iter(make_dataset('data/sample', 'training', load_config('sample'))))[0].shape)"

No stage does work per record. Every record our converter writes is a 179-byte TFRecord
frame, so a local shard is an array of records: it is read as fixed-length *blocks* of
:data:`SHUFFLE_BLOCK` frames (``FixedLengthRecordDataset``, one element per 16 records, the last
block of a file shorter), training shuffles the blocks, a batch of blocks is decoded in one call
(:func:`pipeline.data.records.decode_framed`: one ``decode_raw``, every record's frame header
and Example prefix checked, a bitcast) and ``rebatch`` cuts exact batches. That reads ~3× the
rate of ``TFRecordDataset(files).batch(B)``, the raw record reader, which spends ~2.5 µs on
each record (``benchmarks/input.py``). With ``train.cache`` the blocks' bytes (179 a row) are
kept after the first pass. The frame's data CRC is not recomputed on this path (the header,
length and layout of every record are); files that are not exactly our frames — or on gs://,
where reads are latency-bound — go through ``TFRecordDataset`` (CRC-checked) with one
``parse_example`` per batch (:func:`pipeline.data.records.decode_batch`) instead.

Under a ``tf.distribute`` strategy the dataset is built per input pipeline from an
``InputContext`` (``strategy.distribute_datasets_from_function``): each pipeline reads the
files ``i, i+n, …`` when there are at least as many files as pipelines, and every n-th record
otherwise, and batches with the *per-replica* batch size. TensorFlow is imported lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipeline.core.config import Config
from pipeline.data import dataset, records, verify

if TYPE_CHECKING:
    import tensorflow as tf

# Files interleaved while training, so the shuffle buffer mixes records of several shards.
CYCLE_LENGTH = 4
# Records moved as one unit by the training shuffle (see make_dataset).
SHUFFLE_BLOCK = 16


def global_batch_size(cfg: Config, replicas: int = 1) -> int:
    """Return the global batch size: ``train.batch_size_per_replica × replicas``."""
    return cfg.train.batch_size_per_replica * max(1, replicas)


def steps_for(manifest: dict[str, Any], split: str, global_batch: int) -> int:
    """Return full global batches in one pass over ``split`` (at least 1).

    Args:
        manifest: the dataset's manifest (rows per split).
        split: ``training``, ``validation`` or ``test``.
        global_batch: examples per step across all replicas.

    Returns:
        ``rows // global_batch`` (training drops the remainder), minimum 1.
    """
    return max(1, dataset.split_rows(manifest, split) // max(1, global_batch))


def make_dataset(
    data: str | dataset.Dataset,
    split: str,
    cfg: Config,
    input_context: tf.distribute.InputContext | None = None,
    training: bool = True,
    *,
    batch_size: int | None = None,
    repeat: bool | None = None,
    drop_remainder: bool | None = None,
    manifest: dict[str, Any] | None = None,
) -> tf.data.Dataset:
    """Build the input pipeline of one split (one input pipeline of a distributed run).

    Args:
        data: dataset directory (local or gs://) holding ``manifest.json``, or an opened
            :class:`~pipeline.data.dataset.Dataset`.
        split: ``training``, ``validation`` or ``test``.
        cfg: resolved config; uses ``train.batch_size_per_replica``, ``shuffle_buffer``,
            ``cache`` (training only: decoded blocks kept in memory after the first pass),
            ``deterministic`` and ``seed``.
        input_context: from ``distribute_datasets_from_function``; selects this pipeline's
            files (or records) and the per-replica batch size. None = the whole split.
        training: shuffle (files and records), repeat forever and drop the last partial batch;
            otherwise the records come in manifest/file order.
        batch_size: examples per batch; default ``train.batch_size_per_replica``.
        repeat: override of the repeat-forever choice (default = ``training``).
        drop_remainder: override (default = ``training``); a distributed evaluation wants
            full batches on every replica.
        manifest: an already loaded manifest.

    Returns:
        A ``tf.data.Dataset`` of ``(features float32 [B, 28], label float32 [B, 1])``.

    Raises:
        pipeline.data.dataset.DatasetError: no manifest, unknown split or no shards.
        pipeline.data.verify.IntegrityError: a shard of the split is missing, not the size its
            records need, or corrupt (checked once per file version and process).
    """
    import tensorflow as tf

    source = dataset.Dataset(str(data), manifest) if manifest else dataset.open_dataset(data)
    paths = source.shard_paths(split)
    # Steps come from the manifest and training repeats the data: a short shard would
    # silently train on fewer rows. Check every shard before reading any.
    verify.verify_dataset(source, splits=(split,))
    counts = [int(s.get("records", 0)) for s in source.manifest["shards"][split]]
    t = cfg.train
    batch = batch_size or t.batch_size_per_replica
    repeat = training if repeat is None else repeat
    drop_remainder = training if drop_remainder is None else drop_remainder
    deterministic = t.deterministic
    seed = t.seed if deterministic else None

    pipelines, index = 1, 0
    if input_context is not None:
        pipelines, index = input_context.num_input_pipelines, input_context.input_pipeline_id
    by_file = pipelines > 1 and len(paths) >= pipelines
    if by_file:
        # Static split of the file list: every pipeline knows its files and row count.
        paths, counts = paths[index::pipelines], counts[index::pipelines]
    rows = sum(counts) // (1 if by_file or pipelines == 1 else pipelines)

    par = {"num_parallel_calls": tf.data.AUTOTUNE, "deterministic": deterministic or not training}
    # Every n-th *record* (fewer files than pipelines) keeps the pipelines within one record
    # of each other; that rare case stays on the record reader.
    framed = (pipelines == 1 or by_file) and all(
        records.is_framed_file(p, n) for p, n in zip(paths, counts, strict=True))
    if framed:
        ds = _framed_dataset(paths, counts, training, seed)
        if training:
            buffer = max(1, min(t.shuffle_buffer, rows or t.shuffle_buffer))
            if t.cache:
                # The blocks' bytes (179 a row): later epochs skip the file reads; decoding a
                # batch of blocks costs less than keeping the floats would save.
                ds = ds.cache()
            ds = ds.shuffle(max(1, buffer // SHUFFLE_BLOCK), seed=seed, reshuffle_each_iteration=True)
        if repeat:
            ds = ds.repeat()
        # Enough blocks for one batch; rebatch cuts exact batches (a file's last block is short).
        ds = ds.batch(-(-batch // SHUFFLE_BLOCK)).map(_decode_framed, **par)
        ds = ds.rebatch(batch, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)
        return ds.with_options(_options(deterministic or not training, input_context))

    files = tf.data.Dataset.from_tensor_slices(paths)
    if training and len(paths) > 1:
        files = files.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    # Local files: the cycle's files are read in turn by one thread; parallel reads of these
    # tiny records measured 2-4x slower on a 2-core machine (benchmarks/input.py). Remote
    # files (gs://) are latency-bound, so there the cycle's files are read in parallel.
    remote = any("://" in p for p in paths)
    ds = files.interleave(
        tf.data.TFRecordDataset,
        # Not training: one file after the other, so a pass yields the records in file order.
        cycle_length=min(CYCLE_LENGTH, len(paths)) if training else 1,
        **({"num_parallel_calls": tf.data.AUTOTUNE, "deterministic": deterministic or not training}
           if remote else {}),
    )
    if pipelines > 1 and not by_file:
        # Fewer files than pipelines: every pipeline reads all files, keeps every n-th record.
        ds = ds.shard(pipelines, index)
    if training:
        # Shuffle blocks of SHUFFLE_BLOCK consecutive records, not single records: the
        # per-element cost of shuffle was the slowest stage (~2x the whole pass). HIGGS rows
        # are independent events, so which rows share a block carries no information, and a
        # batch still mixes batch/SHUFFLE_BLOCK blocks from all over the buffer.
        buffer = max(1, min(t.shuffle_buffer, rows or t.shuffle_buffer))
        ds = ds.batch(SHUFFLE_BLOCK)
        if t.cache:
            # Decode each block once and keep the float32 tensors (116 bytes a row, less than
            # the 163-byte record); later epochs only shuffle and re-slice blocks.
            ds = ds.map(_decode, **par).cache()
        ds = ds.shuffle(max(1, buffer // SHUFFLE_BLOCK), seed=seed, reshuffle_each_iteration=True)
        if repeat:
            ds = ds.repeat()
        ds = ds.rebatch(batch, drop_remainder=drop_remainder)  # re-slices blocks, no per-record op
        if not t.cache:
            ds = ds.map(_decode, **par)
    else:
        # No cache here: an evaluation pass may stop early (validation_steps), which would
        # discard a half-filled cache every time.
        if repeat:
            ds = ds.repeat()
        ds = ds.batch(batch, drop_remainder=drop_remainder)
        ds = ds.map(_decode, **par)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    return ds.with_options(_options(deterministic or not training, input_context))


def _options(deterministic: bool, input_context: Any) -> tf.data.Options:
    import tensorflow as tf

    options = tf.data.Options()
    options.deterministic = deterministic
    if input_context is not None:
        # We shard above; tf.distribute must not shard again.
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return options


def _framed_dataset(paths: list[str], counts: list[int], training: bool,
                    seed: int | None) -> tf.data.Dataset:
    """Blocks of :data:`SHUFFLE_BLOCK` framed records (strings) of files that hold only our frames.

    Each file is its full blocks plus one shorter block of its remaining records, so every
    record is read exactly once per pass. Training interleaves :data:`CYCLE_LENGTH` shuffled
    files (one reader thread: parallel reads measured slower on 2 cores); otherwise the files
    are read one after the other, so the records come in manifest/file order.
    """
    import tensorflow as tf

    block = SHUFFLE_BLOCK * records.FRAMED_BYTES
    body = tf.constant([(n // SHUFFLE_BLOCK) * block for n in counts], tf.int64)
    tail = tf.constant([(n % SHUFFLE_BLOCK) * records.FRAMED_BYTES for n in counts], tf.int64)

    def read(path: Any, body: Any, tail: Any) -> tf.data.Dataset:
        blocks = tf.data.FixedLengthRecordDataset(path, record_bytes=block, footer_bytes=tail)
        # The short last block: record_bytes must be positive, so a file without one takes 0.
        last = tf.data.FixedLengthRecordDataset(path, record_bytes=tf.maximum(tail, 1),
                                                header_bytes=body).take(tf.minimum(tail, 1))
        return blocks.concatenate(last)

    files = tf.data.Dataset.from_tensor_slices((paths, body, tail))
    if training and len(paths) > 1:
        files = files.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    return files.interleave(read, cycle_length=min(CYCLE_LENGTH, len(paths)) if training else 1)


def _decode(serialized: Any) -> tuple[Any, Any]:
    """Decode one batch and give the label the model's output shape [B, 1]."""
    import tensorflow as tf

    features, label = records.decode_batch(serialized)
    return features, tf.expand_dims(label, -1)


def _decode_framed(frames: Any) -> tuple[Any, Any]:
    """Decode a batch of framed-record blocks; the label gets the model's output shape [N, 1]."""
    import tensorflow as tf

    features, label = records.decode_framed(frames)
    return features, tf.expand_dims(label, -1)


def distributed_dataset(
    strategy: tf.distribute.Strategy,
    data: str | dataset.Dataset,
    split: str,
    cfg: Config,
    training: bool = True,
    **kwargs: Any,
) -> Any:
    """Return ``make_dataset`` distributed over ``strategy`` (one pipeline per worker).

    Args:
        strategy: the run's strategy.
        data, split, cfg, training, kwargs: as for :func:`make_dataset`.

    Returns:
        A ``tf.distribute.DistributedDataset`` yielding per-replica batches.
    """
    manifest = kwargs.pop("manifest", None)
    source = dataset.Dataset(str(data), manifest) if manifest else dataset.open_dataset(data)

    def fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        return make_dataset(source, split, cfg, ctx, training, **kwargs)

    return strategy.distribute_datasets_from_function(fn)
