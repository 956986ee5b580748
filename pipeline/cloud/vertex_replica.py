"""One replica of a Vertex AI training job: read the job's config, train, upload (the chief).

    python -m pipeline.cloud.vertex_replica --config gs://B/runs/r1/job/config.yaml \
        --data gs://B/data/full --out gs://B/runs/r1

Vertex AI runs this in every replica of the CustomJob that :mod:`pipeline.cloud.vertex` builds,
with ``TF_CONFIG`` naming the replica's place in the cluster. It calls
:func:`pipeline.training.train.run_training` with the config that
:func:`pipeline.cloud.vertex.write_job_config` wrote before the job was submitted — the one way
the config reaches the replicas.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline.cloud.vertex import VertexJobError, copy_tree
from pipeline.core import rundir, storage
from pipeline.core.config import read_config
from pipeline.core.errors import PipelineError
from pipeline.core.rundir import TrainResult

log = logging.getLogger(__name__)

# Where a replica trains when --out is gs:// (run_training writes local run directories).
LOCAL_RUN_ENV, LOCAL_RUN_DEFAULT = "HIGGS_LOCAL_RUN", "/tmp/higgs-run"


def run_replica(config: str, data: str, out: str) -> TrainResult:
    """Train one replica of a Vertex AI job: the config at ``config`` on ``data`` into ``out``.

    :func:`pipeline.training.train.run_training` writes a local run directory, so with
    ``out=gs://…`` the replica trains into ``$HIGGS_LOCAL_RUN`` (default ``/tmp/higgs-run``) —
    after downloading an earlier attempt's ``checkpoints/`` so a restarted job resumes — and the
    chief uploads the finished run directory to ``out``. A local ``out`` is trained into directly.

    Args:
        config: the job's config YAML (``gs://…/RUN/job/config.yaml``, or a local file).
        data: the dataset directory.
        out: the run directory (``gs://`` in a job).

    Returns:
        The :class:`~pipeline.core.rundir.TrainResult` of the directory this replica trained into.

    Raises:
        VertexJobError: the chief could not upload the run directory.
        PipelineError: the config, the dataset or training failed (one line each).
    """
    cfg = read_config(config)  # a bad config fails before TensorFlow is imported
    from pipeline.training import strategy as strategy_lib
    from pipeline.training import train

    if not storage.is_gcs(out):
        return train.run_training(cfg, data, out)
    local = Path(os.environ.get(LOCAL_RUN_ENV, LOCAL_RUN_DEFAULT))
    checkpoints = rundir.checkpoints_dir(out)
    if storage.list_files(checkpoints):
        n = copy_tree(checkpoints, rundir.checkpoints_dir(local))
        log.info("resuming: downloaded %d checkpoint files from %s", n, checkpoints)
    result = train.run_training(cfg, data, str(local))
    if strategy_lib.is_chief_task(strategy_lib.tf_config()):
        try:
            n = copy_tree(str(local), out)
        except PipelineError as exc:
            raise VertexJobError(f"uploading {local} to {out} failed: {exc}") from None
        print(f"uploaded {n} files of the run directory to {out}")
    return result


def replica_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of one replica: ``--config URI --data DATA --out RUN``.

    Returns:
        0 when the replica trained (and, as the chief, uploaded the run); 2 with a one-line
        reason on stderr otherwise.
    """
    parser = argparse.ArgumentParser(prog="python -m pipeline.cloud.vertex_replica",
                                     description="one replica of a Vertex AI training job")
    parser.add_argument("--config", required=True, metavar="URI", help="the job's config YAML")
    parser.add_argument("--data", required=True, metavar="DATA")
    parser.add_argument("--out", required=True, metavar="RUN")
    args = parser.parse_args(argv)
    try:
        result = run_replica(args.config, args.data, args.out)
    except (PipelineError, FileNotFoundError) as exc:
        print(f"higgs vertex replica: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {result.run_dir} (model {result.model_path}, {result.epochs} epochs, "
          f"best val_auc {result.best_val_auc:.4f})")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(replica_main())
