"""Serve the ``higgs`` deployments declared in ``prefect.yaml`` — no work pool or worker needed.

    PREFECT_API_URL=http://127.0.0.1:4200/api .venv/bin/python -m flows.deployments
    .venv/bin/python -m flows.deployments --only sample --limit 1

``prefect.yaml`` is the single declaration of the deployments (``full``, ``sample`` and the
cron-scheduled ``retrain`` of the flow ``higgs``). This module imports each entry's flow and
turns the entry into a ``RunnerDeployment`` (``flow.to_deployment``) with the same name,
description, tags, parameters and schedules, and serves them with :func:`prefect.serve`: the process polls the
server for runs of those deployments and executes each one in a subprocess. That is the
simplest robust way to run deployments on a fresh machine (``make run`` does it); on a
cluster use ``prefect deploy --all`` and a worker of the same declarations instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from pipeline.core.errors import PipelineError

ROOT = Path(__file__).resolve().parents[1]
PREFECT_YAML = ROOT / "prefect.yaml"


class DeploymentSpecError(PipelineError):
    """``prefect.yaml`` is missing, unreadable or declares something this module cannot serve."""


def load_specs(path: str | Path = PREFECT_YAML) -> list[dict[str, Any]]:
    """Read the ``deployments`` list of ``prefect.yaml``.

    Args:
        path: the project's ``prefect.yaml``.

    Returns:
        One dict per deployment (``name``, ``entrypoint``, ``parameters``, ``schedules``, …).

    Raises:
        DeploymentSpecError: the file is missing or malformed, or an entry has no name or an
            entrypoint that is not ``path/to/module.py:flow_function``.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise DeploymentSpecError(f"cannot read {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise DeploymentSpecError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    specs = data.get("deployments") or []
    if not specs:
        raise DeploymentSpecError(f"{path} declares no deployments")
    for spec in specs:
        entrypoint = str(spec.get("entrypoint", ""))
        module, _, function = entrypoint.partition(":")
        if not spec.get("name") or not module.endswith(".py") or not function:
            raise DeploymentSpecError(
                f"deployment {spec.get('name')!r} in {path} needs a name and an entrypoint like "
                f"flows/higgs.py:higgs (got {entrypoint!r})"
            )
    return specs


def flow_of(entrypoint: str) -> Any:
    """Import the flow an entrypoint ``flows/higgs.py:higgs`` names (as module ``flows.higgs``).

    Raises:
        DeploymentSpecError: the module cannot be imported or the name is not a Prefect flow.
    """
    from prefect import Flow

    path, _, function = entrypoint.partition(":")
    module_name = path.removesuffix(".py").replace("/", ".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise DeploymentSpecError(f"cannot import {module_name} for entrypoint {entrypoint}: {exc}") from None
    flow = getattr(module, function, None)
    if not isinstance(flow, Flow):
        raise DeploymentSpecError(f"entrypoint {entrypoint} does not name a Prefect flow")
    return flow


def schedules_of(spec: dict[str, Any]) -> list[Any]:
    """Turn a ``prefect.yaml`` ``schedules`` list (cron or interval entries) into Prefect schedules.

    Raises:
        DeploymentSpecError: an entry that is neither ``cron`` nor ``interval``.
    """
    from prefect.schedules import Cron, Interval

    out = []
    for entry in spec.get("schedules") or []:
        active = bool(entry.get("active", True))
        if "cron" in entry:
            out.append(Cron(entry["cron"], timezone=entry.get("timezone"), active=active))
        elif "interval" in entry:
            out.append(Interval(entry["interval"], timezone=entry.get("timezone"), active=active))
        else:
            raise DeploymentSpecError(
                f"deployment {spec['name']!r}: schedule {entry} needs 'cron' or 'interval'"
            )
    return out


def build_deployments(specs: Sequence[dict[str, Any]], only: Sequence[str] = ()) -> list[Any]:
    """Build ``RunnerDeployment`` objects from ``prefect.yaml`` entries (their flows imported).

    Args:
        specs: entries from :func:`load_specs`.
        only: deployment names to keep (all when empty).

    Returns:
        The deployments, ready for :func:`prefect.serve`.
    """
    from prefect.deployments.runner import EntrypointType

    chosen = [s for s in specs if not only or s["name"] in only]
    unknown = set(only) - {s["name"] for s in specs}
    if unknown:
        raise DeploymentSpecError(f"no deployment named {', '.join(sorted(unknown))} in prefect.yaml; "
                                  f"declared: {', '.join(s['name'] for s in specs)}")
    return [
        flow_of(spec["entrypoint"]).to_deployment(
            name=spec["name"],
            description=spec.get("description"),
            tags=spec.get("tags") or [],
            parameters=spec.get("parameters") or {},
            schedules=schedules_of(spec),
            # Import by module path, so the served runs don't depend on the working directory.
            entrypoint_type=EntrypointType.MODULE_PATH,
        )
        for spec in chosen
    ]


def serve(only: Sequence[str] = (), limit: int = 1, path: str | Path = PREFECT_YAML) -> None:
    """Register the deployments with the server at ``PREFECT_API_URL`` and serve them until stopped.

    Args:
        only: deployment names to serve (all when empty).
        limit: flow runs executed at the same time (training uses every core; default 1).
        path: the ``prefect.yaml`` to read.
    """
    from prefect import serve as prefect_serve

    # Flow runs are subprocesses of this one; keep their TensorFlow C++ logs quiet.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    deployments = build_deployments(load_specs(path), only)
    prefect_serve(*deployments, limit=limit)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m flows.deployments [--only NAME …] [--limit N]``."""
    parser = argparse.ArgumentParser(prog="python -m flows.deployments", description=__doc__.split("\n")[0])
    parser.add_argument("--only", action="append", default=[], metavar="NAME",
                        help="serve only this deployment (repeatable; default all)")
    parser.add_argument("--limit", type=int, default=1, help="concurrent flow runs (default 1)")
    parser.add_argument("--file", default=str(PREFECT_YAML), help="prefect.yaml to read")
    args = parser.parse_args(argv)
    try:
        serve(args.only, args.limit, args.file)
    except PipelineError as exc:
        print(f"flows.deployments: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
