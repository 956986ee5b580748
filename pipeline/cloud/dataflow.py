"""Dataflow options for ``higgs convert``: from the config to validated Beam ``PipelineOptions``.

    python -m pipeline.cloud.dataflow --set runtime.gcp_project=my-project \
        --set runtime.gcp_region=us-central1 --set runtime.temp_location=gs://my-bucket/tmp \
        --set runtime.image=us-central1-docker.pkg.dev/my-project/higgs/higgs:latest
    # prints the Beam arguments; append them to:
    higgs convert --source gs://my-bucket/sources/HIGGS.csv.gz --out gs://my-bucket/data/full ...

``cfg.runtime`` names the project, region, temp/staging locations, worker machine type, the
autoscaling ceiling and the service account; the project reaches the workers in one of two ways:

* ``image`` (recommended): ``--sdk_container_image`` = the project's image from
  ``infra/Dockerfile``, which has the Beam SDK harness (``/opt/apache/beam/boot``) and the
  project with its locked dependencies already installed — workers start in seconds.
* ``setup_file``: ``--setup_file=pyproject.toml``; Beam 2.77 builds an sdist with
  ``python -m build --sdist --no-isolation`` (needs the ``build`` package) and stages it; every
  worker then pip-installs it *and its dependencies* (TensorFlow included) when it starts.

:func:`pipeline_options` checks the result with Beam's own ``PipelineOptionsValidator`` for the
Dataflow runner, so a bad project id, job name or ``gs://`` path fails here in one line instead
of after staging. :func:`dry_run_job` goes one step further: it builds the real Dataflow job
request (stages the pipeline and packages to the staging location) without submitting it.
"""

from __future__ import annotations

import datetime
import json
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pipeline.core import storage
from pipeline.core.config import Config, require_runtime
from pipeline.core.errors import PipelineError

ROOT = Path(__file__).resolve().parents[2]  # the checkout: pipeline/cloud/ is two levels down


class DataflowConfigError(PipelineError):
    """The config cannot be turned into valid Dataflow options; the message names the key."""


def default_job_name(prefix: str = "higgs-convert") -> str:
    """Return ``prefix-YYYYMMDD-HHMMSS`` (UTC): unique per second, valid for Dataflow."""
    return f"{prefix}-{datetime.datetime.now(datetime.UTC):%Y%m%d-%H%M%S}"


def setup_file() -> Path:
    """Return the project's ``pyproject.toml`` (for ``--setup_file``).

    Raises:
        DataflowConfigError: when the package was installed without its source tree
            (e.g. inside the image — use ``runtime.image`` there).
    """
    path = ROOT / "pyproject.toml"
    if not path.is_file():
        raise DataflowConfigError(
            f"no pyproject.toml beside the installed package ({path}); package the workers "
            "with an image instead: --set runtime.image=REGION-docker.pkg.dev/PROJECT/REPO/higgs:TAG")
    return path


def dataflow_args(
    cfg: Config,
    *,
    job_name: str | None = None,
    packaging: str = "auto",
    extra: Sequence[str] = (),
) -> list[str]:
    """Return the Beam command-line arguments that run the converter on Dataflow.

    Args:
        cfg: resolved config; ``runtime.gcp_project``, ``gcp_region`` and ``temp_location``
            are required.
        job_name: Dataflow job name (default :func:`default_job_name`).
        packaging: ``"image"`` (``--sdk_container_image``), ``"setup_file"``
            (``--setup_file=pyproject.toml``) or ``"auto"`` (image when ``runtime.image`` is set).
        extra: more Beam arguments, appended last (they win over the generated ones).

    Returns:
        Arguments such as ``--runner=DataflowRunner --project=… --region=…``.

    Raises:
        DataflowConfigError: a required key is empty, a location is not ``gs://``, or the
            packaging cannot be done.
    """
    rt = cfg.runtime
    require_runtime(cfg, ("gcp_project", "gcp_region", "temp_location"), "Dataflow", DataflowConfigError)
    for key in ("temp_location", "staging_location"):
        value = getattr(rt, key)
        if value and not _valid_gcs(value):
            raise DataflowConfigError(
                f"runtime.{key}={value!r} must be gs://BUCKET/PATH (a bucket of 3–63 characters "
                "and a folder), e.g. gs://my-bucket/tmp")
    args = [
        "--runner=DataflowRunner",
        f"--project={rt.gcp_project}",
        f"--region={rt.gcp_region}",
        f"--temp_location={rt.temp_location}",
        f"--staging_location={rt.staging_location or storage.join(rt.temp_location, 'staging')}",
        f"--job_name={job_name or default_job_name()}",
        f"--machine_type={rt.dataflow_machine_type}",
        f"--max_num_workers={rt.dataflow_max_workers}",
        "--autoscaling_algorithm=THROUGHPUT_BASED",
    ]
    if rt.service_account:
        args.append(f"--service_account_email={rt.service_account}")
    mode = packaging if packaging != "auto" else ("image" if rt.image else "setup_file")
    if mode == "image":
        if not rt.image:
            raise DataflowConfigError(
                "packaging='image' needs runtime.image (the image built from infra/Dockerfile)")
        # The image already holds the Beam SDK of the same version; don't stage another one.
        args += [f"--sdk_container_image={rt.image}", "--sdk_location=container"]
    elif mode == "setup_file":
        args.append(f"--setup_file={setup_file()}")
    else:
        raise DataflowConfigError(f"packaging must be image, setup_file or auto, got {packaging!r}")
    return [*args, *extra]


def _valid_gcs(uri: str) -> bool:
    from apache_beam.options.pipeline_options_validator import PipelineOptionsValidator as V

    match = re.match(V.GCS_URI, uri, re.DOTALL)
    return bool(match and match.group("SCHEME") == "gs" and match.group("BUCKET")
                and re.fullmatch(V.GCS_BUCKET, match.group("BUCKET")) and match.group("OBJECT"))


def pipeline_options(cfg: Config, **kwargs: Any) -> Any:
    """Return validated ``apache_beam`` ``PipelineOptions`` for a Dataflow conversion.

    Args:
        cfg: resolved config (see :func:`dataflow_args`).
        **kwargs: passed to :func:`dataflow_args` (``job_name``, ``packaging``, ``extra``).

    Returns:
        ``PipelineOptions``; ``.view_as(GoogleCloudOptions)`` / ``WorkerOptions`` /
        ``SetupOptions`` hold the values.

    Raises:
        DataflowConfigError: the arguments fail Beam's validation for DataflowRunner.
    """
    from apache_beam.options.pipeline_options import PipelineOptions

    options = PipelineOptions(dataflow_args(cfg, **kwargs))
    validate(options)
    return options


def validate(options: Any) -> None:
    """Run Beam's ``PipelineOptionsValidator`` for the Dataflow runner; raise its first error.

    Raises:
        DataflowConfigError: one line with Beam's message.
    """
    from apache_beam.options.pipeline_options import PipelineOptions, TestOptions
    from apache_beam.options.pipeline_options_validator import PipelineOptionsValidator
    from apache_beam.runners.dataflow.dataflow_runner import DataflowRunner

    # Validate a copy marked dry_run: that only skips Beam's soft-delete lookup of the buckets,
    # a network call (with credential retries) that does not belong in a syntax check.
    copy = PipelineOptions.from_dictionary(options.get_all_options(drop_default=True))
    copy.view_as(TestOptions).dry_run = True
    errors = PipelineOptionsValidator(copy, DataflowRunner()).validate()
    if errors:
        first = " ".join(str(errors[0]).split())
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        raise DataflowConfigError(f"invalid Dataflow options: {first}{more}")


def dry_run_job(build: Callable[[Any], None], options: Any) -> dict[str, Any]:
    """Build the Dataflow job request for a pipeline without submitting it.

    The real ``DataflowRunner`` translates the pipeline and, through Beam's
    ``DataflowApplicationClient``, stages the pipeline proto and packages (the
    ``--setup_file`` sdist) to the staging location — the steps before job creation.

    Args:
        build: called with a ``beam.Pipeline`` to add the transforms (e.g. the converter's).
        options: from :func:`pipeline_options`; ``--dry_run`` is added here.

    Returns:
        The job request as JSON (``environment.workerPools``, ``sdkPipelineOptions`` …).
    """
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions, TestOptions
    from apache_beam.runners.dataflow.internal import apiclient

    options = PipelineOptions.from_dictionary(options.get_all_options(drop_default=True))
    options.view_as(TestOptions).dry_run = True
    pipeline = beam.Pipeline(options=options)
    build(pipeline)
    result = pipeline.run()
    client = apiclient.DataflowApplicationClient(options, result.job.root_staging_location)
    client.create_job_description(result.job)
    return json.loads(result.job.json())


def main(argv: Sequence[str] | None = None) -> int:
    """Print the Dataflow arguments for a config (``--preset``, ``--config``, ``--set``)."""
    import argparse

    from pipeline.core.config import load_config

    parser = argparse.ArgumentParser(prog="python -m pipeline.cloud.dataflow",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="full")
    parser.add_argument("--config", default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--packaging", default="auto", choices=["auto", "image", "setup_file"])
    args = parser.parse_args(argv)
    from apache_beam.options.pipeline_options import PipelineOptions

    try:
        cfg = load_config(args.preset, args.config, args.overrides)
        beam_args = dataflow_args(cfg, packaging=args.packaging)
        validate(PipelineOptions(beam_args))
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(" ".join(beam_args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
