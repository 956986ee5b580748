"""The Prefect flow ``higgs-tune``: hyperparameter search with one Prefect task per trial.

    python -c "from flows.tune import higgs_tune; higgs_tune(data='data/sample', out='runs/tune')"
    .venv/bin/python -m flows.tune            # serve the `tune` deployment (local server needed)
    prefect deployment run higgs-tune/tune --param data=data/sample --param out=runs/tune --watch

The search itself is :func:`pipeline.training.tune.tune` (Optuna ask/tell, the ``tune`` config
section); this flow only supplies its trial *runner*: each point Optuna hands out becomes a
``tune-trial`` task (a real ``higgs train`` process via :func:`pipeline.training.tune.run_trial`),
submitted to the flow's task runner so the ``tune.parallel`` trials of a batch run at once —
threads starting processes here; a distributed task runner (Dask, Ray) spreads them over
machines without changing this file. A failed trial is recorded as failed in the study (the
search goes on); trials are not retried (a crash would crash again with the same point).
"""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from pipeline.core.config import Config, load_config
from pipeline.core.errors import PipelineError
from pipeline.training import tune as tune_lib

Preset = Literal["sample", "full"]


@task(name="tune-trial", cache_policy=NO_CACHE, retries=0)
def tune_trial(cfg: Config, data: str, run_dir: str, timeout_s: float | None = None) -> float:
    """Train one trial (its own process) and return its best validation AUC."""
    return tune_lib.run_trial(cfg, data, run_dir, timeout_s)


def prefect_runner(data: str, timeout_s: float | None) -> tune_lib.Runner:
    """Return a trial runner that submits every trial of a batch as a ``tune-trial`` task."""

    def run(batch: Any) -> list[float | BaseException]:
        futures = [tune_trial.submit(cfg, data, run_dir, timeout_s) for cfg, run_dir in batch]
        results: list[float | BaseException] = []
        for future in futures:
            try:
                results.append(float(future.result()))
            except PipelineError as exc:  # the trial's one-line reason: recorded, search goes on
                results.append(exc)
        return results

    return run


@flow(name="higgs-tune", log_prints=True, validate_parameters=True)
def higgs_tune(
    data: str,
    out: str,
    preset: Preset = "sample",
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Search the ``tune`` space of ``preset`` (+ ``overrides``) on ``data``; results in ``out``.

    Args:
        data: dataset directory (local or gs://).
        out: local output directory (``best_config.yaml``, ``trials.json``, ``hparams/``,
            ``trials/NNN`` run directories); re-running resumes the study.
        preset: base configuration.
        overrides: ``section.key=value`` strings, e.g. ``["tune.trials=8", "tune.parallel=2"]``.

    Returns:
        ``{"best_value", "best_params", "best_config_path", "trials"}``.
    """
    cfg = load_config(preset, overrides=overrides or [])
    result = tune_lib.tune(cfg, data, out, runner=prefect_runner(data, cfg.tune.trial_timeout_s or None))
    create_table_artifact(
        key="higgs-tune-trials",
        table=[{"trial": t.number, "val_auc": t.value, **t.params, "error": t.error} for t in result.trials],
        description=f"best val_auc {result.best_value:.4f}; best config {result.best_config_path}",
    )
    print(tune_lib.summary(result))
    return {"best_value": result.best_value, "best_params": result.best_params,
            "best_config_path": result.best_config_path, "trials": len(result.trials)}


def deployment() -> Any:
    """The ``tune`` deployment of this flow (parameters ``data`` and ``out`` are given per run)."""
    return higgs_tune.to_deployment(name="tune", tags=["higgs", "tune"],
                                    description="Hyperparameter search (Optuna), one task per trial.")


if __name__ == "__main__":
    from prefect import serve

    serve(deployment())
