"""The typed configuration tree: one frozen dataclass per section and the choice types.

    python -c "from pipeline.core.config_tree import TrainConfig, StrategyName, choices; \
print(TrainConfig().strategy, choices(StrategyName))"

Only the shape and the defaults (which are the reference ``full`` run) live here; presets,
YAML/``--set`` loading and :func:`pipeline.core.config.validate` live in
:mod:`pipeline.core.config`, which re-exports every name of this module, and the range and
cross-field rules in :mod:`pipeline.core.config_rules`.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Any, Literal

# Choice-valued fields: the one list of each (the CLI, the flow and the factories read them here).
Optimizer = Literal["adam", "adamw", "sgd", "rmsprop", "cg"]  # cg = conditional gradient
TunableOptimizer = Literal["adam", "adamw", "sgd", "rmsprop"]  # cg's rate is not a step size
Schedule = Literal["constant", "inverse_time", "exponential", "piecewise", "cosine"]
Precision = Literal["auto", "float32", "mixed_float16", "mixed_bfloat16"]
StrategyName = Literal["auto", "tpu", "multi_worker", "mirrored", "one_device"]
Backend = Literal["local", "vertex"]
Sampler = Literal["tpe", "random"]
TpuType = Literal["", "v2-8", "v3-8", "v5e-1", "v5e-4", "v5e-8"]  # "" = no TPU
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
# The columns the model and the BDT baseline read (pipeline.core.schema.FEATURE_SETS): all 28,
# the 21 low-level detector features or the 7 high-level masses (Baldi et al. 2014, Table 1).
FeatureSet = Literal["all", "low", "high"]
OnAnomaly = Literal["fail", "warn"]  # fail: stop before training; warn: train, don't bless


def choices(alias: Any) -> tuple[str, ...]:
    """The values a ``Literal`` alias above admits, e.g. ``choices(StrategyName)``."""
    return typing.get_args(alias)


@dataclass(frozen=True)
class DataConfig:
    """Where the data comes from and how it is converted.

    ``source`` is a local path, ``gs://`` object or ``https://`` URL of ``HIGGS.csv.gz``,
    ``HIGGS.csv`` or the UCI ``higgs.zip``; an empty source means "generate a sample" with
    ``synth_rows`` and ``synth_seed``. ``mirror`` is a second URL with the same rows, tried
    when ``source`` is a URL that cannot be reached.
    """

    source: str = ""
    synth_rows: int = 220_000
    synth_seed: int = 1
    data_root: str = "data"
    # Rows of validation and test; None = 1/22 of the rows each (500k of 11M).
    validation_rows: int | None = None
    test_rows: int | None = None
    training_shards: int = 16
    validation_shards: int = 4
    test_shards: int = 4
    # Rows per block of work (~12 MB of UCI text): 16k ran 1M rows in 4.1 s here, 65k in 5.5 s.
    block_rows: int = 16_384
    max_bad_rows: int = 0
    # Conversion engine: block-pool threads per worker process (0 = one per core) and the
    # worker processes of a local Dask cluster for --runner DaskRunner (0 = one per core).
    convert_threads: int = 0
    dask_workers: int = 0
    sha256: str = ""  # expected checksum of a downloaded source ("" = record, don't check)
    expected_bytes: int = 0  # expected size of a downloaded source (0 = don't check)
    mirror: str = ""  # fallback URL when the source URL cannot be reached ("" = none)
    mirror_sha256: str = ""  # expected checksum of the mirror's file ("" = record, don't check)
    mirror_bytes: int = 0  # expected size of the mirror's file (0 = don't check)


@dataclass(frozen=True)
class ModelConfig:
    """The wide-and-deep network: a linear wide part plus a stack of deep blocks."""

    blocks: int = 5
    units: int = 2048
    activation: str = "relu"
    dropout: float = 0.1
    batch_norm: bool = True
    l1: float = 0.0
    l2: float = 0.0
    wide: bool = True
    # The input stays float32 [None, 28]; the model selects these columns inside its graph.
    features: FeatureSet = "all"


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, input pipeline and distribution settings of a training run."""

    epochs: int = 20
    batch_size_per_replica: int = 2048
    steps_per_epoch: int | None = None  # None = one pass over the training split
    validation_steps: int | None = None
    steps_per_execution: int = 32
    optimizer: Optimizer = "adam"
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    nesterov: bool = False
    beta_1: float = 0.9
    beta_2: float = 0.999
    epsilon: float = 1e-7
    amsgrad: bool = False
    clipnorm: float | None = None
    clipvalue: float | None = None
    global_clipnorm: float | None = None  # clip all gradients together by their global norm
    rmsprop_rho: float = 0.9
    schedule: Schedule = "constant"
    # 0 = auto: one epoch of steps (inverse_time, exponential), the rest of the run (cosine).
    schedule_decay_steps: int = 0
    schedule_decay_rate: float = 0.5
    schedule_warmup_steps: int = 0
    schedule_boundaries: tuple[int, ...] = ()
    schedule_values: tuple[float, ...] = ()
    cg_lambda: float = 0.01  # Frobenius-norm radius of the conditional-gradient optimizer
    reduce_lr: bool = True
    reduce_lr_factor: float = 0.5
    reduce_lr_patience: int = 2
    reduce_lr_min_delta: float = 1e-4
    reduce_lr_min_lr: float = 1e-6
    early_stopping_patience: int = 5
    shuffle_buffer: int = 200_000
    cache: bool = False
    deterministic: bool = False
    seed: int = 42
    mixed_precision: Precision = "auto"
    jit_compile: bool = False
    strategy: StrategyName = "auto"
    workers: int = 1
    # Local cluster (--workers N): a worker that dies restarts the cluster from the backup this
    # many times before the run fails (pipeline/cloud/launch.py).
    max_restarts: int = 2
    tpu: str = ""  # TPU name or grpc address for TPUClusterResolver ("" = local / env)


@dataclass(frozen=True)
class EvaluateConfig:
    """Evaluation, the BDT baseline and the blessing rule."""

    batch_size: int = 8192
    auc_floor: float = 0.70
    # A new model is blessed only if its AUC is at least the published one minus this.
    max_auc_regression: float = 0.002
    baseline: bool = True
    baseline_rows: int = 1_000_000
    baseline_trees: int = 200
    bootstrap: int = 0  # 0 = DeLong interval; N > 0 adds an N-resample bootstrap
    # LightGBM threads; 0 = one per core minus one (OpenMP barriers slow down ~16x when
    # the cores are shared with other busy processes).
    baseline_threads: int = 0


@dataclass(frozen=True)
class RuntimeConfig:
    """Where things run and where outputs go."""

    runner: str = "DirectRunner"
    direct_num_workers: int = 1
    runs_root: str = "runs"  # working run directories (training and evaluation write here)
    publish_to: str = "published"  # the published store: immutable models, latest.json, history
    backend: Backend = "local"
    log_level: LogLevel = "INFO"
    # Google Cloud (pipeline/cloud/vertex.py, pipeline/cloud/dataflow.py, docs/cloud.md). Defaults
    # are empty on purpose: project ids, buckets and images come from the user's own config file.
    gcp_project: str = ""
    gcp_region: str = ""
    temp_location: str = ""  # gs://BUCKET/tmp (Dataflow temp files)
    staging_location: str = ""  # gs://BUCKET/staging (Dataflow + Vertex staging)
    image: str = ""  # REGION-docker.pkg.dev/PROJECT/REPO/higgs:TAG, built from infra/Dockerfile
    service_account: str = ""  # runs Dataflow workers and Vertex jobs; "" = service default
    machine_type: str = "n1-standard-8"  # each Vertex training replica
    accelerator_type: str = ""  # e.g. NVIDIA_TESLA_T4; "" = CPU only
    accelerator_count: int = 0
    worker_count: int = 1  # Vertex replicas in total: 1 chief + (worker_count - 1) workers
    tpu_type: TpuType = ""  # set = TPUStrategy job
    dataflow_machine_type: str = "n2-standard-4"
    dataflow_max_workers: int = 16
    presplit_parts: int = 0  # >0: split one .csv.gz into N gzip parts before converting


@dataclass(frozen=True)
class TuneConfig:
    """Hyperparameter search (``higgs tune``, pipeline/training/tune.py): search space and budget.

    Each trial trains ``epochs`` epochs of the base config with one point of the space:
    ``blocks``/``units``/``optimizers``/``batch_sizes`` are choices, dropout and the learning
    rate are ranges (the rate log-uniform).
    """

    trials: int = 30
    parallel: int = 1  # trials at once, each its own training process
    epochs: int = 4  # per trial
    sampler: Sampler = "tpe"
    seed: int = 0
    blocks: tuple[int, ...] = (2, 3, 4, 5)
    units: tuple[int, ...] = (256, 512, 1024, 2048)
    dropout_min: float = 0.0
    dropout_max: float = 0.3
    learning_rate_min: float = 1e-4
    learning_rate_max: float = 1e-2
    optimizers: tuple[TunableOptimizer, ...] = ("adam", "adamw", "sgd", "rmsprop")
    batch_sizes: tuple[int, ...] = (512, 1024, 2048, 4096)  # per replica
    trial_timeout_s: int = 0  # 0 = no limit


@dataclass(frozen=True)
class ValidateConfig:
    """Data validation against the published model's dataset (``higgs validate``, pipeline/data/validate.py).

    Each threshold is the largest value that still counts as "the same data"; they were chosen
    from clean pairs of generated samples, with margin (docs/validate.md). Distances are
    measured on the training split, overall and per class (signal / background).
    """

    on_anomaly: OnAnomaly = "fail"
    max_psi: float = 0.05  # population stability index of a feature's histogram
    max_mean_shift: float = 0.1  # |mean - baseline mean| in baseline standard deviations
    max_signal_fraction_shift: float = 0.03  # absolute change of the training signal fraction
    max_rows_factor: float = 2.0  # training rows may shrink or grow by at most this factor
    max_bad_row_rate_increase: float = 0.001  # bad rows per source row, over the baseline's


@dataclass(frozen=True)
class Config:
    """The whole resolved configuration of one pipeline run."""

    preset: str = "full"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    validate: ValidateConfig = field(default_factory=ValidateConfig)


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "evaluate": EvaluateConfig,
    "runtime": RuntimeConfig,
    "tune": TuneConfig,
    "validate": ValidateConfig,
}
