"""One typed configuration tree for the whole pipeline, with presets and overrides.

    higgs train --data data/sample --out runs/try --preset sample --set train.epochs=3
    python -c "from pipeline.core.config import load_config; print(load_config('full').model)"

The tree is shallow: :class:`Config` holds ``data``, ``model``, ``train``, ``evaluate`` and
``runtime`` sections, each a frozen dataclass. A config is resolved in three layers:

1. a named preset (``sample`` sized for a 2-core laptop, ``full`` the reference run),
2. an optional YAML file with the same nesting (``train: {epochs: 5}``),
3. ``--set section.key=value`` overrides, parsed as YAML scalars and type-checked.

Unknown sections or keys and values of the wrong type fail with one line that names the
key and what is accepted. The resolved config is written next to every output
(``RUN/config.yaml``) with :func:`write_config`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from pipeline.core.errors import PipelineError


class ConfigError(PipelineError, ValueError):
    """A configuration value, key or file that cannot be used; the message is one line."""


@dataclass(frozen=True)
class DataConfig:
    """Where the data comes from and how it is converted.

    ``source`` is a local path, ``gs://`` object or ``https://`` URL of HIGGS.csv.gz; an
    empty source means "generate a sample" with ``synth_rows`` and ``synth_seed``.
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
    block_rows: int = 65_536
    max_bad_rows: int = 0
    sha256: str = ""  # expected checksum of a downloaded source ("" = record, don't check)
    expected_bytes: int = 0  # expected size of a downloaded source (0 = don't check)


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


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, input pipeline and distribution settings of a training run."""

    epochs: int = 20
    batch_size_per_replica: int = 2048
    steps_per_epoch: int | None = None  # None = one pass over the training split
    validation_steps: int | None = None
    steps_per_execution: int = 32
    optimizer: str = "adam"  # adam | adamw | sgd | rmsprop | cg (conditional gradient)
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
    schedule: str = "constant"  # constant | inverse_time | exponential | piecewise | cosine
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
    mixed_precision: str = "auto"  # auto | float32 | mixed_float16 | mixed_bfloat16
    jit_compile: bool = False
    strategy: str = "auto"  # auto | tpu | multi_worker | mirrored | one_device
    workers: int = 1
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
    runs_root: str = "runs"
    publish_to: str = "runs"
    backend: str = "local"  # local | vertex
    log_level: str = "INFO"
    # Google Cloud (pipeline/cloud/vertex.py, pipeline/cloud/dataflow.py, README.md §Run on Google Cloud). Defaults are
    # empty on purpose: project ids, buckets and images come from the user's own config file.
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
    tpu_type: str = ""  # v2-8 | v3-8 | v5e-1 | v5e-4 | v5e-8; set = TPUStrategy job
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
    sampler: str = "tpe"  # tpe | random
    seed: int = 0
    blocks: tuple[int, ...] = (2, 3, 4, 5)
    units: tuple[int, ...] = (256, 512, 1024, 2048)
    dropout_min: float = 0.0
    dropout_max: float = 0.3
    learning_rate_min: float = 1e-4
    learning_rate_max: float = 1e-2
    optimizers: tuple[str, ...] = ("adam", "adamw", "sgd", "rmsprop")
    batch_sizes: tuple[int, ...] = (512, 1024, 2048, 4096)  # per replica
    trial_timeout_s: int = 0  # 0 = no limit


@dataclass(frozen=True)
class ValidateConfig:
    """Data validation against the published model's dataset (``higgs validate``, pipeline/data/validate.py).

    Every threshold is the largest value that still counts as "the same data"; they were
    chosen from clean pairs of generated samples with margin (docs/validate.md). Distances are
    measured on the training split, overall and per class (signal / background).
    """

    on_anomaly: Literal["fail", "warn"] = "fail"  # fail: stop before training; warn: train, don't bless
    max_psi: float = 0.05  # population stability index of a feature's histogram
    max_mean_shift: float = 0.1  # |mean - baseline mean| in baseline standard deviations
    max_signal_fraction_shift: float = 0.03  # absolute change of the training signal fraction
    max_rows_factor: float = 2.0  # training rows may shrink or grow by at most this factor
    max_bad_row_rate_increase: float = 0.001  # bad rows / source rows, increase over the baseline


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

# Presets are overrides on the dataclass defaults (which are the reference `full` run).
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "full": {
        "data": {"source": "https://archive.ics.uci.edu/ml/machine-learning-databases/00280/HIGGS.csv.gz",
                 "data_root": "data",
                 # The UCI file as recorded by several independent public projects.
                 "sha256": "ea302c18164d4e3d916a1e2e83a9a8d07069fa6ebc7771e4c0540d54e593b698",
                 "expected_bytes": 2_816_407_858},
    },
    "sample": {
        "data": {"synth_rows": 220_000, "training_shards": 4, "validation_shards": 2,
                 "test_shards": 2},
        "model": {"blocks": 3, "units": 128},
        # 1e-2: at the full preset's 1e-3 the small model is still improving every epoch of
        # its 8-epoch budget (measured val AUC 0.837 at 1e-3, 0.872 at 1e-2; benchmarks/schedule_auc.py).
        "train": {"epochs": 8, "batch_size_per_replica": 512, "steps_per_execution": 16,
                  "learning_rate": 1e-2, "shuffle_buffer": 50_000, "cache": True,
                  "early_stopping_patience": 3},
        "evaluate": {"baseline_rows": 100_000, "baseline_trees": 100, "auc_floor": 0.65},
        "tune": {"trials": 8, "epochs": 2, "blocks": (1, 2, 3), "units": (32, 64, 128),
                 "batch_sizes": (256, 512, 1024)},
    },
}


def preset_names() -> list[str]:
    """Return the names of the built-in presets."""
    return sorted(PRESETS)


def load_config(
    preset: str = "sample",
    path: str | Path | None = None,
    overrides: typing.Iterable[str] = (),
) -> Config:
    """Resolve a config from a preset, an optional YAML file and ``key=value`` overrides.

    Args:
        preset: a name from :data:`PRESETS`.
        path: a YAML file with the same nesting as :class:`Config` (may name ``preset``).
        overrides: strings ``section.key=value``; values are parsed as YAML scalars.

    Returns:
        The frozen, type-checked :class:`Config`.

    Raises:
        ConfigError: unknown preset, section or key, a value of the wrong type, or an
            unreadable file.
    """
    file_values: dict[str, Any] = {}
    if path is not None:
        file_values = _read_yaml(Path(path))
        preset = file_values.pop("preset", preset)
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of: {', '.join(preset_names())}")
    cfg = Config(preset=preset)
    cfg = merge(cfg, PRESETS[preset])
    cfg = merge(cfg, file_values)
    return apply_overrides(cfg, overrides)


def merge(cfg: Config, values: dict[str, Any]) -> Config:
    """Return ``cfg`` with nested ``{section: {key: value}}`` values applied and checked.

    Raises:
        ConfigError: for unknown sections/keys or values of the wrong type.
    """
    if not isinstance(values, dict):
        raise ConfigError(f"config must be a mapping of sections, got {type(values).__name__}")
    changes: dict[str, Any] = {}
    for section, section_values in values.items():
        if section == "preset":
            changes["preset"] = _check("preset", section_values, str)
            continue
        if section not in SECTIONS:
            raise ConfigError(
                f"unknown config section {section!r}; sections are: {', '.join(SECTIONS)}"
            )
        if not isinstance(section_values, dict):
            raise ConfigError(f"config section {section!r} must be a mapping of keys to values")
        current = getattr(cfg, section)
        changes[section] = _replace_section(section, current, section_values)
    return dataclasses.replace(cfg, **changes)


def apply_overrides(cfg: Config, overrides: typing.Iterable[str]) -> Config:
    """Apply ``section.key=value`` strings (the CLI's ``--set``) to a config.

    Raises:
        ConfigError: for a malformed override, unknown key or wrong type.
    """
    nested: dict[str, dict[str, Any]] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise ConfigError(f"override {item!r} must look like section.key=value, e.g. train.epochs=3")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        nested.setdefault(section, {})[name] = value
    return merge(cfg, nested)


def require_runtime(cfg: Config, keys: typing.Iterable[str], needed_by: str,
                    error: type[PipelineError] = ConfigError) -> None:
    """Fail in one line on the first empty ``runtime.<key>`` that ``needed_by`` cannot run without.

    Args:
        cfg: the resolved config.
        keys: ``runtime`` field names that must be non-empty.
        needed_by: what needs them, for the message (e.g. ``"Dataflow"``).
        error: the error class to raise (a :class:`PipelineError`).
    """
    for key in keys:
        if not getattr(cfg.runtime, key):
            raise error(f"runtime.{key} is empty; {needed_by} needs it — set it in your cloud config "
                        f"(README.md §Run on Google Cloud), e.g. --set runtime.{key}=…")


def to_dict(cfg: Config) -> dict[str, Any]:
    """Return the config as plain nested dicts/lists (tuples become lists), YAML-ready."""

    def plain(value: Any) -> Any:
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(cfg))


def from_dict(values: dict[str, Any]) -> Config:
    """Rebuild a config from :func:`to_dict` output (e.g. a run's ``config.yaml``)."""
    values = dict(values)
    preset = values.pop("preset", "full")
    return merge(Config(preset=preset), values)


def to_yaml(cfg: Config) -> str:
    """Serialize a config to YAML text."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def write_config(cfg: Config, path: str | Path) -> Path:
    """Write the resolved config as YAML (creating parent directories); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_yaml(cfg))
    return path


def read_config(path: str | Path) -> Config:
    """Read a config written by :func:`write_config` (a full tree, no preset merging)."""
    return from_dict(_read_yaml(Path(path)))


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections")
    return values


def _replace_section(section: str, current: Any, values: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(type(current))
    known = {f.name for f in dataclasses.fields(current)}
    checked = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(
                f"unknown config key {section}.{key}; keys in {section!r} are: {', '.join(sorted(known))}"
            )
        checked[key] = _check(f"{section}.{key}", value, hints[key])
    return dataclasses.replace(current, **checked)


def _check(name: str, value: Any, hint: Any) -> Any:
    """Return ``value`` converted to ``hint`` where lossless, else raise ConfigError."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        choices = typing.get_args(hint)
        if value in choices:
            return value
        raise ConfigError(f"{name} must be one of: {', '.join(map(str, choices))}; got {value!r}")
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _check(name, value, option)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{name}: bad value {value!r}")
    if origin is tuple:
        (item_type, _ellipsis) = typing.get_args(hint)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} must be a list, got {value!r}")
        return tuple(_check(name, v if not isinstance(v, str) else yaml.safe_load(v), item_type)
                     for v in value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            # PyYAML (YAML 1.1) reads "1e-4" as a string (it wants "1.0e-4"); accept it.
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{name} must be a string, got {value!r}")
    raise ConfigError(f"{name}: unsupported type {hint!r}")
