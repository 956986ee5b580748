"""The Prefect flow ``higgs-tune`` under a real temporary Prefect server: trials are tasks.

    .venv/bin/pytest tests/test_tune_flow.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.core.config import load_config


@pytest.mark.slow
def test_higgs_tune_flow_runs_each_trial_as_a_prefect_task(small_dataset, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.testing.utilities import prefect_test_harness

    from flows.tune import higgs_tune

    out = tmp_path / "tune"
    overrides = ["tune.trials=2", "tune.parallel=2", "tune.epochs=1", "tune.blocks=[1]", "tune.units=[8,16]",
                 "tune.batch_sizes=[512]", "tune.optimizers=[adam]", "train.strategy=one_device",
                 "train.cache=false", "train.shuffle_buffer=2000", "train.steps_per_execution=4"]
    with prefect_test_harness(server_startup_timeout=120):
        state = higgs_tune(data=small_dataset, out=str(out), overrides=overrides, return_state=True)
        assert state.is_completed(), state.message
        summary = state.result()
        flow_run_id = state.state_details.flow_run_id

        async def task_runs():
            async with get_client() as client:
                return await client.read_task_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))

        import asyncio

        runs = asyncio.run(task_runs())
    trial_runs = [r for r in runs if r.name.startswith("tune-trial")]
    assert len(trial_runs) == 2 and all(r.state.is_completed() for r in trial_runs)
    first, second = sorted(trial_runs, key=lambda r: r.start_time)
    assert second.start_time < first.end_time  # the batch's two trials ran at the same time
    assert summary["trials"] == 2 and 0.0 < summary["best_value"] <= 1.0
    trials = json.loads((out / "trials.json").read_text())
    assert {t["params"]["units"] for t in trials} <= {8, 16}
    assert all((Path(t["run_dir"]) / "model" / "model.keras").is_file() for t in trials)
    assert load_config("sample", summary["best_config_path"]).train.optimizer == "adam"
