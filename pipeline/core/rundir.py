"""The run directory: the one module that knows its paths and files (contract: run directory).

    python -c "from pipeline.core import rundir; print(rundir.read_result('runs/try'))"

Layout (local or gs://; every other module asks this one for a path)::

    RUN/config.yaml                  the resolved config
    RUN/provenance.json              code/package versions, dataset fingerprint, config hash, host
    RUN/history.json                 {"epoch": [...], "loss": [...], "val_auc": [...], "lr": [...]}
    RUN/model/model.keras            the trained model (best validation AUC)
    RUN/model/saved_model/           serving signature float32 [None, 28] -> probability [None, 1]
    RUN/logs/                        TensorBoard
    RUN/checkpoints/backup/          BackupAndRestore (a killed run resumes at the next epoch)
    RUN/checkpoints/state.json       callback state (early stopping, LR plateau) of the backed-up epoch
    RUN/checkpoints/best-epoch-NNNN.weights.npz  the best epoch's weights so far (for a resume)
    RUN/report/metrics.json          auc, auc_ci95, accuracy, log_loss, test_rows, ...
    RUN/report/blessing.json         the blessing decision
    RUN/report/report.md             the readable report (plus *.png)
    RUN/job/config.yaml              a Vertex AI job's input: the config its replicas read
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core import storage
from pipeline.core.errors import PipelineError

CONFIG = "config.yaml"
PROVENANCE = "provenance.json"
HISTORY = "history.json"
MODEL_DIR = "model"
MODEL_FILE = "model.keras"
SAVED_MODEL_DIR = "saved_model"
LOGS_DIR = "logs"
CHECKPOINTS_DIR = "checkpoints"
BACKUP_DIR = "backup"
STATE_FILE = "state.json"
BEST_WEIGHTS_PATTERN = "best-epoch-*.weights.npz"
REPORT_DIR = "report"
METRICS_FILE = "metrics.json"
BLESSING_FILE = "blessing.json"
REPORT_FILE = "report.md"
JOB_DIR = "job"

# history.json keys (the evaluation report plots them); extra keys may follow.
HISTORY_KEYS = ("epoch", "loss", "auc", "accuracy", "val_loss", "val_auc", "val_accuracy", "lr")


class RunDirError(PipelineError):
    """A run directory is missing a file a later step needs."""


def config_path(run: str | Path) -> str:
    """``RUN/config.yaml``."""
    return storage.join(str(run), CONFIG)


def provenance_path(run: str | Path) -> str:
    """``RUN/provenance.json``."""
    return storage.join(str(run), PROVENANCE)


def history_path(run: str | Path) -> str:
    """``RUN/history.json``."""
    return storage.join(str(run), HISTORY)


def model_dir(run: str | Path) -> str:
    """``RUN/model``."""
    return storage.join(str(run), MODEL_DIR)


def model_path(run: str | Path) -> str:
    """``RUN/model/model.keras``."""
    return storage.join(str(run), MODEL_DIR, MODEL_FILE)


def saved_model_dir(run: str | Path) -> str:
    """``RUN/model/saved_model``."""
    return storage.join(str(run), MODEL_DIR, SAVED_MODEL_DIR)


def logs_dir(run: str | Path) -> str:
    """``RUN/logs`` (TensorBoard)."""
    return storage.join(str(run), LOGS_DIR)


def checkpoints_dir(run: str | Path) -> str:
    """``RUN/checkpoints``."""
    return storage.join(str(run), CHECKPOINTS_DIR)


def backup_dir(run: str | Path) -> str:
    """``RUN/checkpoints/backup`` (BackupAndRestore)."""
    return storage.join(str(run), CHECKPOINTS_DIR, BACKUP_DIR)


def state_path(run: str | Path) -> str:
    """``RUN/checkpoints/state.json`` (the training callbacks' state at the backed-up epoch)."""
    return storage.join(str(run), CHECKPOINTS_DIR, STATE_FILE)


def best_weights_path(run: str | Path, epoch: int) -> str:
    """``RUN/checkpoints/best-epoch-NNNN.weights.npz``: the weights after ``epoch`` (0-based)."""
    return storage.join(str(run), CHECKPOINTS_DIR, BEST_WEIGHTS_PATTERN.replace("*", f"{epoch:04d}"))


def model_tmp_path(run: str | Path, tag: str) -> str:
    """A temporary name beside ``RUN/model/model.keras`` (renamed into place when complete).

    Args:
        run: the run directory.
        tag: what makes the name unique to its writer (e.g. the process id).
    """
    return storage.join(str(run), MODEL_DIR, f".{MODEL_FILE}.tmp-{tag}.keras")


MODEL_TMP_PATTERN = f".{MODEL_FILE}.tmp-*.keras"


def report_dir(run: str | Path) -> str:
    """``RUN/report``."""
    return storage.join(str(run), REPORT_DIR)


def metrics_path(run: str | Path) -> str:
    """``RUN/report/metrics.json``."""
    return storage.join(str(run), REPORT_DIR, METRICS_FILE)


def blessing_path(run: str | Path) -> str:
    """``RUN/report/blessing.json``."""
    return storage.join(str(run), REPORT_DIR, BLESSING_FILE)


def report_path(run: str | Path) -> str:
    """``RUN/report/report.md``."""
    return storage.join(str(run), REPORT_DIR, REPORT_FILE)


def job_config_path(run: str | Path) -> str:
    """``RUN/job/config.yaml`` (written before a Vertex AI job is submitted; its replicas read it)."""
    return storage.join(str(run), JOB_DIR, CONFIG)
# --- provenance.json --------------------------------------------------------------------------


def write_provenance(run: str | Path, provenance: dict[str, Any]) -> None:
    """Write ``RUN/provenance.json`` (see :mod:`pipeline.core.provenance`)."""
    storage.write_text(provenance_path(run), json.dumps(provenance, indent=1) + "\n")


def read_provenance(run: str | Path) -> dict[str, Any] | None:
    """Return ``RUN/provenance.json``, or None for a run trained before provenance was kept."""
    try:
        return json.loads(storage.read_text(provenance_path(run)))
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as exc:
        raise RunDirError(f"{provenance_path(run)} is not valid JSON ({exc.msg}); retrain the run") from None


# --- history.json -----------------------------------------------------------------------------


def read_history(run: str | Path) -> dict[str, list[Any]]:
    """Return ``RUN/history.json`` ({} when there is none)."""
    uri = history_path(run)
    if not storage.exists(uri):
        return {}
    return json.loads(storage.read_text(uri))


def write_history(run: str | Path, history: dict[str, list[Any]]) -> None:
    """Write ``RUN/history.json`` atomically (a reader or a kill never sees half a file)."""
    storage.write_text(history_path(run), json.dumps(history, indent=1))


def best_val_auc(history: dict[str, list[Any]]) -> float:
    """The best validation AUC over the epochs of ``history`` (nan when none was logged)."""
    values = [v for v in history.get("val_auc", []) if v is not None and not math.isnan(v)]
    return max(values) if values else float("nan")


# --- the result of a finished run ---------------------------------------------------------------


@dataclass(frozen=True)
class TrainResult:
    """What a finished training run produced.

    Attributes:
        run_dir: the run directory (local or gs://).
        model_path: ``RUN/model/model.keras``.
        epochs: epochs actually run (including those before a resume).
        best_val_auc: best validation AUC over the epochs (Keras' 200-threshold estimate).
        history: the content of ``RUN/history.json``.
        job: where the run ran when that is not this machine (e.g. the Vertex AI job's name,
            state and console page); empty otherwise.
    """

    run_dir: str
    model_path: str
    epochs: int
    best_val_auc: float
    history: dict[str, list[Any]]
    job: dict[str, str] | None = None

    @classmethod
    def from_history(cls, run: str | Path, history: dict[str, list[Any]],
                     job: dict[str, str] | None = None) -> TrainResult:
        """A result for ``run`` with the given history (no file is read)."""
        return cls(str(run), model_path(run), len(history.get("epoch", [])), best_val_auc(history),
                   history, job)

    @classmethod
    def from_run_dir(cls, run: str | Path, job: dict[str, str] | None = None) -> TrainResult:
        """Read a finished run directory.

        Raises:
            RunDirError: ``history.json`` or ``model/model.keras`` is missing.
        """
        if not storage.exists(history_path(run)) or not storage.exists(model_path(run)):
            raise RunDirError(f"{run} has no finished run ({HISTORY} / {MODEL_DIR}/{MODEL_FILE} missing); "
                              f"train into it first: higgs train --data DATA --out {run}")
        return cls.from_history(run, read_history(run), job)
