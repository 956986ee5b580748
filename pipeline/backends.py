"""Where training runs: in this process, on a local cluster of worker processes, or on Vertex AI.

    higgs train --data data/sample --out runs/try --preset sample               # here
    higgs train --data data/sample --out runs/mw --preset sample --workers 2    # 2 processes, 127.0.0.1
    higgs train --data gs://B/data --out gs://B/runs/x --set runtime.backend=vertex

The caller picks the backend; :mod:`pipeline.training.train` only trains in the process it runs
in. ``runtime.backend=vertex`` submits a Vertex AI CustomJob whose replicas call
:func:`pipeline.training.train.run_training` themselves; ``train.workers > 1`` without a
``TF_CONFIG`` cluster starts that many worker processes on loopback
(:mod:`pipeline.cloud.launch`); everything else trains here.
"""

from __future__ import annotations

from pipeline.core import storage
from pipeline.core.config import Config
from pipeline.core.rundir import TrainResult
from pipeline.data import dataset, verify
from pipeline.training import strategy as strategy_lib
from pipeline.training import train as train_lib
from pipeline.training.train import TrainError


def backend_for(cfg: Config) -> str:
    """Name the backend ``cfg`` trains on: ``vertex``, ``local_cluster`` or ``in_process``."""
    if cfg.runtime.backend == "vertex":
        return "vertex"
    if cfg.train.workers > 1 and not strategy_lib.is_worker_process():
        return "local_cluster"
    return "in_process"


def train(cfg: Config, data: str | dataset.Dataset, run_dir: str) -> TrainResult:
    """Train ``cfg`` on ``data`` into ``run_dir`` on the backend the config names.

    Args:
        cfg: resolved config (``runtime.backend``, ``train.workers``).
        data: dataset directory (local or gs://) with ``manifest.json``, or the opened
            :class:`~pipeline.data.dataset.Dataset` the chain passes on.
        run_dir: the run directory (local; gs:// for Vertex AI).

    Returns:
        The chief's :class:`~pipeline.core.rundir.TrainResult` (``job`` names the Vertex AI job).

    Raises:
        TrainError: a worker of the local cluster failed, or the run directory is unusable.
        pipeline.publish.store.PublishedLocationError: ``run_dir`` is a published model or
            inside a published store (published models never change).
        pipeline.cloud.vertex.VertexConfigError / VertexJobError: the job could not run.
    """
    from pipeline.publish import store

    store.refuse_published(run_dir, "train")
    backend = backend_for(cfg)
    if backend == "vertex":
        from pipeline.cloud import vertex

        return vertex.run_training_vertex(cfg, str(data), run_dir)
    if backend == "local_cluster":
        from pipeline.cloud import launch

        if "://" in run_dir:
            raise TrainError(f"run directory {run_dir} must be a local path; "
                             "'higgs publish --run RUN --to gs://…' copies a finished run to GCS")
        # A bad path or a bad shard fails here, in one line, before any worker starts.
        data = dataset.open_dataset(data)
        verify.verify_dataset(data, splits=train_lib.TRAIN_SPLITS)
        storage.check_destination(run_dir, what="--out")
        try:
            launch.run_local_cluster(cfg, data.uri, run_dir)  # each worker reads the manifest
        except launch.LaunchError as exc:
            raise TrainError(str(exc)) from None
        return TrainResult.from_run_dir(run_dir)
    return train_lib.run_training(cfg, data, run_dir)
