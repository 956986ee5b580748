"""The Prefect flow ``higgs-paper``: the paper's Table 1 (deep model and BDT × three feature sets).

    python -c "from flows.paper import higgs_paper; higgs_paper(preset='paper')"
    .venv/bin/python -m flows.deployments --only table      # serve it (local server needed)
    prefect deployment run higgs-paper/table --watch
    prefect deployment run higgs-paper/table --param preset=full --param data=gs://B/data/HIGGS --watch

A thin layer over :mod:`pipeline.experiments.paper` (what ``higgs paper`` runs): one task for the
dataset (source + conversion, reused when already built), one ``paper-feature-set`` task per
feature set (train + evaluate the deep model and the BDT on the ``low``, ``high`` and ``all``
columns) and one ``paper-table`` task writing ``OUT/table.md``, ``table.json`` and ``roc.png``.
Training is not retried here: a failed feature set fails the flow run with its one-line reason,
and running the flow again with the same ``out`` reuses the feature sets already trained.
"""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed, State

from pipeline.core.config import Config, load_config
from pipeline.core.errors import PipelineError
from pipeline.experiments import paper

Preset = Literal["paper", "sample", "full"]
ARTIFACT_TABLE = "higgs-paper-table"


@task(name="paper-data", cache_policy=NO_CACHE)
def paper_data(cfg: Config, data: str | None, beam_args: list[str]) -> str:
    """The converted dataset: ``data`` as given, else the config's source converted."""
    return paper.prepare_data(cfg, data, beam_args)


@task(name="paper-feature-set", cache_policy=NO_CACHE)
def paper_feature_set(cfg: Config, data: str, out: str, feature_set: str) -> paper.SetResult:
    """Train and evaluate the deep model and the BDT on one feature set."""
    return paper.run_feature_set(cfg, data, out, feature_set)


@task(name="paper-table", cache_policy=NO_CACHE)
def paper_table(cfg: Config, data: str, out: str, results: list[paper.SetResult]) -> paper.PaperTable:
    """Write the Table 1 report of the evaluated feature sets."""
    return paper.write_table(cfg, data, out, results)


@flow(name="higgs-paper", log_prints=True, validate_parameters=True)
def higgs_paper(
    preset: Preset = "paper",
    source: str | None = None,
    data: str | None = None,
    out: str | None = None,
    beam_args: list[str] | None = None,
    overrides: list[str] | None = None,
) -> dict[str, Any] | State:
    """Run Table 1 of Baldi, Sadowski & Whiteson (2014) on one dataset.

    Args:
        preset: ``paper`` (CPU-sized, generated data), ``full`` (the real file) or ``sample``.
        source: HIGGS.csv.gz to convert when ``data`` is not given (``""`` = generate).
        data: an already converted dataset (local or gs://).
        out: local output directory (default ``<runs_root>/paper-<time>-<preset>``).
        beam_args: extra Beam options for the conversion.
        overrides: ``section.key=value`` config overrides.

    Returns:
        ``{"out", "table", "aucs": {"deep/low": …}, "pattern": {check: holds}}``, or a
        ``Failed`` state carrying the one-line reason.
    """
    logger = get_run_logger()
    try:
        cfg = load_config(preset, overrides=[*(overrides or []),
                                             *([f"data.source={source}"] if source is not None else [])])
        out = paper.begin(cfg, out)
        dataset = paper_data(cfg, data, list(beam_args or []))
        results = [paper_feature_set(cfg, dataset, out, s) for s in paper.FEATURE_SETS]
        table = paper_table(cfg, dataset, out, results)
    except PipelineError as exc:
        logger.error("higgs-paper failed: %s", exc)
        return Failed(message=str(exc))
    create_markdown_artifact(table.markdown, key=ARTIFACT_TABLE,
                             description=f"Table 1 (Baldi et al. 2014) on {dataset}")
    print(table.summary())
    return {"out": out, "table": table.paths["md"],
            "aucs": {f"{e['model']}/{e['feature_set']}": e["auc"] for e in table.table["entries"]},
            "pattern": {c["check"]: c["holds"] for c in table.table["pattern"]}}


if __name__ == "__main__":
    from flows import deployments

    deployments.serve(only=["table"])
