"""The tf.data input pipeline: shard files → interleaved reads → shuffle blocks → batch → decode.

    python -c "from pipeline.core.config import load_config; \
from pipeline.training.inputs import make_dataset; \
print(next(iter(make_dataset('data/sample', 'training', load_config('sample'))))[0].shape)"

Records are batched *before* decoding: one ``parse_example`` + ``decode_raw`` call per batch
(:func:`pipeline.data.records.decode_batch`) instead of one ``parse_single_example`` +
``parse_tensor`` per record (20× faster in ``benchmarks/input.py``). Training shuffles blocks of
16 records and re-slices them into batches, so no stage does work per record; with
``train.cache`` the decoded blocks (116 bytes a row) are kept after the first pass.

Under a ``tf.distribute`` strategy the dataset is built per input pipeline from an
``InputContext`` (``strategy.distribute_datasets_from_function``): each pipeline reads the
files ``i, i+n, …`` when there are at least as many files as pipelines, and every n-th record
otherwise, and batches with the *per-replica* batch size. TensorFlow is imported lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipeline.core.config import Config
from pipeline.data import dataset, records

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
    """
    import tensorflow as tf

    source = dataset.Dataset(str(data), manifest) if manifest else dataset.open_dataset(data)
    paths = source.shard_paths(split)
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
    par = {"num_parallel_calls": tf.data.AUTOTUNE, "deterministic": deterministic or not training}
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

    options = tf.data.Options()
    options.deterministic = deterministic or not training
    if input_context is not None:
        # We shard above; tf.distribute must not shard again.
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return ds.with_options(options)


def _decode(serialized: Any) -> tuple[Any, Any]:
    """Decode one batch and give the label the model's output shape [B, 1]."""
    import tensorflow as tf

    features, label = records.decode_batch(serialized)
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
