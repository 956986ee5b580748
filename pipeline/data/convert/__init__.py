"""The Beam converter: HIGGS.csv.gz → sharded TFRecords ``{training,validation,test}/`` + manifest.

    higgs convert --source data/sources/sample.csv.gz --out data/sample
    higgs convert --source gs://b/HIGGS.csv.gz --out gs://b/data/full --runner DataflowRunner \\
        --project P --region R --temp_location gs://b/tmp --sdk_container_image IMAGE
        (workers need this package: the project image, or --setup_file; see pipeline.cloud.dataflow)

How it is fast (see ``benchmarks/convert.py`` for the figures):

* A gzip stream cannot be split, so one sequential stage per source part reads it: ISA-L
  decompression (``isal``, in its own thread) into ~``block_rows``-line text blocks cut at
  newlines. Every core then works on that part: a pool of threads (one per core) parses
  blocks (``pyarrow.csv``, one thread each, straight to float32), checks them with numpy,
  encodes the Examples (fixed-layout bytes assembled with numpy, :mod:`pipeline.data.records`),
  frames them (C CRC32C) and writes them, all of which release the GIL. Only a block that
  fails the fast parse is re-read line by line to say which lines are bad and why.
* One Beam element is a whole source part; only small metadata leaves its worker, so blocks
  stream through in bounded memory and nothing is shuffled but that metadata.
* The split needs the total row count N (test = the last N/22 rows), which a gzip stream only
  reveals at its end. Instead of a counting pass, every block is written at once as a *piece*
  file of framed records, keyed by its first line. Every framed record has the same size
  (:data:`pipeline.data.records.FRAMED_BYTES`), so once N is known a shard is a list of byte ranges
  of pieces: the "plan" step cuts the row ranges of the splits and shards, and the
  "concatenate" step (parallel over shards) copies those ranges into the shard files.

Row positions are *line* positions: with ``max_bad_rows > 0`` a skipped bad line keeps its
place, so the last N/22 lines of the file are the test set whatever happens before them (the
official UCI test set for the full file). Validation and test are ``N // 22`` lines each unless
``data.validation_rows`` / ``data.test_rows`` say otherwise (11,000,000 → 500,000 each).

Everything is written under ``DATA/.staging-<id>/`` and moved into place only when the whole
pipeline succeeded and the bad-row limit holds; ``manifest.json`` is written last. Local paths
and ``gs://`` work for both source and output (a source may be a glob of parts, e.g.
``gs://b/parts/part-*.csv.gz``, read in name order), and a source may be ``HIGGS.csv.gz``,
``HIGGS.csv`` or the UCI ``higgs.zip`` (read through its member). Unknown CLI options are Beam
pipeline options, passed through.

Modules, one job each:

* :mod:`.parse` — CSV text blocks (cut by :mod:`pipeline.data.textblocks`) → float32 rows,
  bad rows separated and explained;
* :mod:`.plan` — the split plan and the shard plan (pure functions);
* :mod:`.transforms` — the DoFns and the composite ``CsvToTFRecords`` PTransform;
* :mod:`.engine` — the runner, named explicitly (in-process ``FnApiRunner``, Beam's
  ``DaskRunner`` on a local or remote Dask cluster, or any runner Beam knows);
* :mod:`.stats` — per-block summaries merged into the manifest's statistics (moments and
  fixed-edge histograms per class, :mod:`pipeline.data.stats`);
* :mod:`.preflight` — source checks on the driver before anything runs;
* :mod:`.stage` — staging, reuse of a finished dataset, publish, stale-staging cleanup;
* :mod:`.run` — :func:`convert`, which wires those steps.
"""

from pipeline.data.convert.errors import ConvertError
from pipeline.data.convert.parse import BAD_KINDS, parse_block
from pipeline.data.convert.plan import SplitPlan, plan_shards, plan_splits
from pipeline.data.convert.run import ConvertResult, convert
from pipeline.data.convert.stage import CONVERTER_VERSION
from pipeline.data.convert.transforms import BAD, PART, PIECE, ConvertPart, CsvToTFRecords
from pipeline.data.textblocks import iter_text_blocks

__all__ = ["BAD", "BAD_KINDS", "CONVERTER_VERSION", "PART", "PIECE", "ConvertError", "ConvertPart",
           "ConvertResult", "CsvToTFRecords", "SplitPlan", "convert", "iter_text_blocks", "parse_block",
           "plan_shards", "plan_splits"]
