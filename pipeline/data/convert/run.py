"""``convert()``: check the source, run the ``CsvToTFRecords`` pipeline, publish the dataset.

    higgs convert --source data/sources/sample.csv.gz --out data/sample   # the CLI calls convert()

The driver only wires labelled steps: preflight (:mod:`.preflight`), reuse check and
staging (:mod:`.stage`), the Beam pipeline (:mod:`.transforms`), publish (:mod:`.stage`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam

from pipeline.core import storage
from pipeline.core.config import DataConfig
from pipeline.core.storage import Files
from pipeline.data.convert import preflight, stage, transforms
from pipeline.data.convert.errors import ConvertError, error_line

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConvertResult:
    """What :func:`convert` did.

    Attributes:
        out: the dataset directory (local path or gs://).
        manifest: the dataset's manifest (the existing one when ``skipped``).
        skipped: True when the dataset was already complete for this source and options.
        metrics: Beam counters of the run (``rows_read``, ``bad_rows_<kind>`` …); empty when
            skipped.
    """

    out: str
    manifest: dict[str, Any]
    skipped: bool
    metrics: dict[str, int] = field(default_factory=dict)


def _metrics(result: Any) -> dict[str, int]:
    from apache_beam.metrics.metric import MetricsFilter

    out: dict[str, int] = {}
    try:
        query = result.metrics().query(MetricsFilter().with_namespace(transforms.METRICS_NAMESPACE))
    except (NotImplementedError, AttributeError):  # some runners do not report metrics
        return out
    for counter in query["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        out[counter.key.metric.name] = out.get(counter.key.metric.name, 0) + int(value or 0)
    return out


def convert(source: str, out: str, data_cfg: DataConfig, beam_args: Sequence[str] = (),
            overwrite: bool = False) -> ConvertResult:
    """Convert a HIGGS CSV(.gz) source into a sharded TFRecord dataset with a Beam pipeline.

    Args:
        source: local path or ``gs://`` URI of ``HIGGS.csv.gz`` (or plain ``.csv``), or a glob
            of parts (``gs://b/parts/part-*.csv.gz``) read in name order.
        out: dataset directory DATA (local or ``gs://``).
        data_cfg: split sizes, shard counts, ``block_rows`` and ``max_bad_rows``.
        beam_args: Beam pipeline options, untouched (``--runner``, ``--direct_num_workers``,
            ``--project`` …). ``--no_auth`` makes gs:// access anonymous.
        overwrite: rebuild even if DATA already holds a complete dataset.

    Returns:
        :class:`ConvertResult`; ``skipped`` when DATA was already complete for the same source
        fingerprint and output options.

    Raises:
        ConvertError: missing/empty/corrupt source, a header line, too many bad rows, a DATA
            holding another dataset (without ``overwrite``), or a failed pipeline step.
    """
    from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions

    started = time.monotonic()
    beam_args = list(beam_args)
    options = PipelineOptions(beam_args)
    files = Files(anonymous=bool(options.view_as(GoogleCloudOptions).no_auth))
    parts = preflight.expand_source(files, source)
    line_bytes = max(preflight.check_part(files, p) for p in parts)
    fingerprint = stage.source_fingerprint(parts, source)
    wanted = stage.output_options(data_cfg)
    existing = stage.existing_dataset(files, out, fingerprint, wanted, overwrite)
    if existing is not None:
        return ConvertResult(out, existing, True)

    staging = stage.staging_dir(out)
    block_bytes = int(min(256 << 20, max(64 << 10, data_cfg.block_rows * line_bytes)))
    cfg = {"validation_rows": data_cfg.validation_rows, "test_rows": data_cfg.test_rows,
           "shards": wanted["shards"]}
    try:
        with beam.Pipeline(options=options) as p:
            _ = (p
                 | "Parts" >> beam.Create(list(enumerate(parts)))
                 | "CsvToTFRecords" >> transforms.CsvToTFRecords(staging, block_bytes, cfg, files,
                                                                 spread_parts=len(parts) > 1))
        metrics = _metrics(p.result)
        result = json.loads(files.read_bytes(storage.join(staging, stage.RESULT_FILE)))
        manifest = stage.publish(files, out, staging, result, fingerprint, data_cfg, beam_args,
                                 block_bytes, wanted, time.monotonic() - started)
    except Exception as exc:
        stage.discard(files, staging)
        line = error_line(exc)  # raised in a DoFn: marked, maybe wrapped by the runner
        if line is not None:
            raise ConvertError(line) from None
        raise
    return ConvertResult(out, manifest, False, metrics)
