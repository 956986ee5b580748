"""Turn ``train.strategy`` into a ``tf.distribute`` strategy (one factory, chosen by config).

    python -c "from pipeline.core.config import load_config; \
from pipeline.training.strategy import make_strategy; print(make_strategy(load_config('sample').train))"

Names: ``tpu`` (TPUClusterResolver → connect → initialize → TPUStrategy), ``multi_worker``
(MultiWorkerMirroredStrategy from ``TF_CONFIG``), ``mirrored`` (all local GPUs), ``one_device``
and ``auto`` (a reachable TPU, else several workers in ``TF_CONFIG``, else several GPUs, else one
device). Call :func:`make_strategy` before any other TensorFlow op: MultiWorkerMirroredStrategy
and the TPU system must configure the runtime before it starts. TensorFlow is imported lazily.
"""

from __future__ import annotations

import glob
import json
import logging
import os
from typing import TYPE_CHECKING, Any

from pipeline.core.config import StrategyName, choices
from pipeline.core.errors import PipelineError

if TYPE_CHECKING:
    import tensorflow as tf

    from pipeline.core.config import TrainConfig

log = logging.getLogger(__name__)

STRATEGIES = choices(StrategyName)


class StrategyError(PipelineError):
    """The requested distribution strategy cannot be created here; one line says why."""


def tf_config() -> dict[str, Any]:
    """Return the parsed ``TF_CONFIG`` environment variable ({} when unset).

    Raises:
        StrategyError: ``TF_CONFIG`` is set but is not a JSON object.
    """
    raw = os.environ.get("TF_CONFIG", "").strip()
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise StrategyError(f"TF_CONFIG is not valid JSON ({exc.msg}); unset it or fix it") from None
    if not isinstance(value, dict):
        raise StrategyError("TF_CONFIG must be a JSON object with 'cluster' and 'task'")
    return value


def cluster_workers() -> int:
    """Number of worker/chief tasks named in ``TF_CONFIG`` (0 when there is no cluster)."""
    cluster = tf_config().get("cluster", {})
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


def is_worker_process() -> bool:
    """True if this process is one task of a multi-worker cluster (``TF_CONFIG`` names several)."""
    return cluster_workers() > 1


def _tpu_hint(name: str) -> bool:
    """Cheap check whether a TPU could be reachable, without network calls or hangs."""
    return bool(
        name
        or os.environ.get("TPU_NAME")
        or os.environ.get("KUBE_GOOGLE_CLOUD_TPU_ENDPOINTS")
        or glob.glob("/dev/accel*")  # TPU VM chips
        or glob.glob("/dev/vfio/[0-9]*")  # newer TPU VM images
    )


def _tpu_strategy(name: str) -> tf.distribute.Strategy:
    import tensorflow as tf

    if not _tpu_hint(name):
        raise StrategyError(
            "no TPU reachable from this machine (no train.tpu, TPU_NAME or /dev/accel*); "
            "run on a TPU VM, set train.tpu=NAME_OR_GRPC_ADDRESS, or choose another --strategy"
        )
    target = name or os.environ.get("TPU_NAME") or "local"
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=target)
        if target != "local":
            tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, OSError, tf.errors.OpError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise StrategyError(
            f"cannot reach TPU {target!r}: {first}; check train.tpu / TPU_NAME, or choose another --strategy"
        ) from None
    return tf.distribute.TPUStrategy(resolver)


def _multi_worker_strategy(train_cfg: TrainConfig) -> tf.distribute.Strategy:
    import tensorflow as tf

    workers = cluster_workers()
    if workers < 1:
        raise StrategyError(
            "strategy multi_worker needs TF_CONFIG naming the cluster; "
            "use 'higgs train --workers N' to start a local cluster"
        )
    # With fewer inter-op threads than workers + 1 the collective ops of a one-machine
    # cluster can starve each other and hang; must be set before the runtime starts.
    wanted = max(workers, train_cfg.workers) + 1
    if tf.config.threading.get_inter_op_parallelism_threads() < wanted:
        try:
            tf.config.threading.set_inter_op_parallelism_threads(wanted)
        except RuntimeError:
            raise StrategyError(
                "multi_worker strategy must be created before any other TensorFlow op "
                "(the runtime is already initialized)"
            ) from None
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=tf.distribute.experimental.CommunicationImplementation.RING
    )
    try:
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    except (ValueError, RuntimeError) as exc:
        raise StrategyError(f"cannot start MultiWorkerMirroredStrategy from TF_CONFIG: {exc}") from None


def make_strategy(train_cfg: TrainConfig) -> tf.distribute.Strategy:
    """Create the distribution strategy named by ``train_cfg.strategy``.

    Args:
        train_cfg: the ``train`` section; uses ``strategy``, ``tpu`` and ``workers``.

    Returns:
        A ``tf.distribute.Strategy``; build the model and optimizer inside its ``scope()``.

    Raises:
        StrategyError: unknown name, no reachable TPU for ``tpu``, no cluster for
            ``multi_worker``.
    """
    import tensorflow as tf

    name = train_cfg.strategy
    if name not in STRATEGIES:
        raise StrategyError(f"unknown strategy {name!r}; choose one of: {', '.join(STRATEGIES)}")
    if name == "auto":
        name = _auto_name(train_cfg)
        log.info("strategy auto → %s", name)
    if name == "tpu":
        return _tpu_strategy(train_cfg.tpu)
    if name == "multi_worker":
        return _multi_worker_strategy(train_cfg)
    gpus = tf.config.list_logical_devices("GPU")
    if name == "mirrored":
        if not gpus:
            # Still useful on a laptop (one CPU replica, same code path as on a GPU box).
            log.warning("strategy mirrored: no GPU visible, mirroring over the CPU only")
            return tf.distribute.MirroredStrategy(["/cpu:0"])
        return tf.distribute.MirroredStrategy([g.name for g in gpus])
    # one_device: Keras' BackupAndRestore rejects OneDeviceStrategy, so use the default
    # strategy (TensorFlow places ops on GPU:0 by itself) or, with several GPUs, a
    # MirroredStrategy over the first one — both one replica, both resumable.
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy([gpus[0].name])
    return tf.distribute.get_strategy()


def _auto_name(train_cfg: TrainConfig) -> str:
    """Pick the strategy for ``auto``: TPU, then a TF_CONFIG cluster, then GPUs, then one device."""
    if _tpu_hint(train_cfg.tpu):
        return "tpu"
    if is_worker_process():
        return "multi_worker"
    import tensorflow as tf

    # Listing physical devices does not start the runtime (logical devices would).
    if len(tf.config.list_physical_devices("GPU")) > 1:
        return "mirrored"
    return "one_device"


def is_tpu(strategy: tf.distribute.Strategy) -> bool:
    """True for TPUStrategy (used to pick bfloat16 mixed precision)."""
    return type(strategy).__name__.startswith("TPUStrategy")


def is_chief_task(config: dict[str, Any]) -> bool:
    """True if the task a parsed ``TF_CONFIG`` names is the chief, the one that writes the run.

    TensorFlow's rule: the ``chief`` (or legacy ``master``) task, else worker 0 when the
    cluster has no ``chief``; a config without a task (one process, no cluster) is the chief.

    Args:
        config: ``{"cluster": {...}, "task": {"type": ..., "index": ...}}``, e.g. :func:`tf_config`.
    """
    task = config.get("task") or {}
    if not task:
        return True
    task_type = task.get("type")
    if task_type in ("chief", "master"):
        return True
    return (task_type == "worker" and int(task.get("index", 0)) == 0
            and "chief" not in config.get("cluster", {}))


def task_info(strategy: tf.distribute.Strategy) -> tuple[str, int, bool]:
    """Return ``(task_type, task_id, is_chief)`` of this process in its strategy's cluster.

    The chief follows :func:`is_chief_task`; a single process is always the chief.
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    task_id = getattr(resolver, "task_id", None)
    if not task_type or task_id is None or not is_worker_process():
        return "worker", 0, True
    task = {"type": str(task_type), "index": int(task_id)}
    chief = is_chief_task({"cluster": tf_config().get("cluster", {}), "task": task})
    return str(task_type), int(task_id), chief
