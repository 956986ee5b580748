"""``make run``: the ``higgs/sample`` deployment end to end on a local Prefect server.

    make run                                      # = .venv/bin/python -m flows.local_run
    .venv/bin/python -m flows.local_run --keep-running          # leave server + serve up
    .venv/bin/python -m flows.local_run --set train.epochs=2 --set model.units=64

What it does, on a fresh machine (only the virtual environment needs to exist):

1. starts ``prefect server start`` on 127.0.0.1 (a free port, or ``--port``) with SQLite and
   everything else under ``.prefect/`` in the working directory, analytics off;
2. serves the deployments of ``prefect.yaml`` (``python -m flows.deployments``) in a
   background process — no work pool or worker to set up;
3. runs ``prefect deployment run higgs/sample --watch`` and waits for the flow run;
4. prints the final state, where the report and the model were published (the run works in
   ``runs/<run_id>/``, is published to ``published/<run_id>/``; ``published/latest.json`` moves
   when the model is blessed), the time per task and the UI address;
5. stops the processes it started, unless ``--keep-running``.

The helpers (:class:`LocalServer`, :func:`start_serving`, :func:`run_deployment`,
:func:`inspect_flow_run`) are what the end-to-end test drives too.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from pipeline.core.ports import free_ports

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_HOME = ".prefect"


def prefect_env(home: Path, api_url: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for every Prefect process this module starts (and for this one).

    Everything Prefect keeps (SQLite database, profiles, UI build, result storage) goes under
    ``home``; nothing is sent anywhere (analytics off).
    """
    env = dict(os.environ if base is None else base)
    env.update({
        "PREFECT_HOME": str(home),
        "PREFECT_PROFILES_PATH": str(home / "profiles.toml"),
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        # Served runs are picked up within 2 s instead of the default 10 s.
        "PREFECT_RUNNER_POLL_FREQUENCY": "2",
        "TF_CPP_MIN_LOG_LEVEL": env.get("TF_CPP_MIN_LOG_LEVEL", "2"),
        "PYTHONUNBUFFERED": "1",
    })
    return env


class LocalServer:
    """A ``prefect server start`` child process on 127.0.0.1 with its data under ``home``.

    Use as a context manager; :meth:`stop` terminates the process group it started.
    """

    def __init__(self, home: str | Path = DEFAULT_HOME, port: int | None = None,
                 log_path: str | Path | None = None) -> None:
        self.home = Path(home).resolve()
        self.port = port or free_ports(1)[0]
        self.log_path = Path(log_path) if log_path else self.home / "server.log"
        self.proc: subprocess.Popen | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """The environment a client of this server needs."""
        return prefect_env(self.home, self.api_url, base)

    def start(self, timeout: float = 120.0) -> LocalServer:
        """Start the server and wait until ``/api/health`` answers.

        Raises:
            RuntimeError: the server exited or did not answer in time (the message names the log).
        """
        self.home.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child for its lifetime
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
             "--port", str(self.port)],
            env=self.env(), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group, so stop() ends its children too
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prefect server exited with code {self.proc.returncode}; "
                                   f"see {self.log_path}")
            if _healthy(self.api_url):
                return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"prefect server did not answer on {self.api_url} within {timeout:.0f}s; "
                           f"see {self.log_path}")

    def stop(self) -> None:
        """Stop the server (SIGTERM to its process group, SIGKILL after 20 s)."""
        stop_process(self.proc)
        self.proc = None

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def stop_process(proc: subprocess.Popen | None, timeout: float = 20.0, sig: int = signal.SIGTERM) -> None:
    """Stop a child started with ``start_new_session=True`` and its process group.

    Sends ``sig`` to the group, then SIGKILL if it has not exited after ``timeout`` seconds.
    """
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass


def start_serving(env: dict[str, str], only: Sequence[str] = (), output: IO[bytes] | int | None = None
                  ) -> subprocess.Popen:
    """Start ``python -m flows.deployments`` (serve the prefect.yaml deployments) in the background.

    Args:
        env: environment from :meth:`LocalServer.env`.
        only: deployment names to serve (all when empty).
        output: where its output (and the flow runs' console logs) go; None = this terminal.
    """
    args = [sys.executable, "-m", "flows.deployments"]
    for name in only:
        args += ["--only", name]
    return subprocess.Popen(args, env=env, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT if output
                            else None, stdin=subprocess.DEVNULL, start_new_session=True)


def api(api_url: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """One call to the Prefect REST API; returns the decoded JSON (None for 404).

    Plain HTTP keeps this process independent of Prefect's client settings.
    """
    import httpx

    resp = httpx.request(method, f"{api_url}{path}", json=body, timeout=30)
    if resp.status_code == 404:
        return None
    resp.raise_for_status()
    return resp.json()


def wait_for_deployments(api_url: str, names: Sequence[str], proc: subprocess.Popen | None = None,
                         timeout: float = 180.0) -> dict[str, dict[str, Any]]:
    """Wait until every ``flow/deployment`` name is registered; return them by name.

    Raises:
        RuntimeError: the serving process exited, or the deployments did not appear in time.
    """
    found: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"serving the deployments failed (exit code {proc.returncode})")
        for name in names:
            if name not in found:
                deployment = api(api_url, "GET", f"/deployments/name/{name}")
                if deployment is not None:
                    found[name] = deployment
        if len(found) == len(names):
            return found
        time.sleep(1.0)
    missing = sorted(set(names) - set(found))
    raise RuntimeError(f"deployments {', '.join(missing)} were not registered within {timeout:.0f}s")


def run_deployment(env: dict[str, str], name: str, parameters: dict[str, Any] | None = None,
                   flow_run_name: str | None = None, timeout: float = 3600.0,
                   output: IO[bytes] | int | None = None, serving: subprocess.Popen | None = None
                   ) -> tuple[int, str]:
    """``prefect deployment run NAME --watch`` through the CLI; waits for the run to finish.

    Args:
        env: environment from :meth:`LocalServer.env`.
        name: ``flow/deployment``, e.g. ``higgs/sample``.
        parameters: flow parameters overriding the deployment's.
        flow_run_name: a unique name to find the run by afterwards (default generated).
        timeout: seconds to wait (``--watch-timeout``).
        output: where the CLI output goes (None = this terminal).
        serving: the process serving the deployment; if it dies, stop waiting at once
            (otherwise the run would sit in ``Scheduled`` until the timeout).

    Returns:
        The CLI's exit code (0 only when the run is ``Completed``) and the flow run name.

    Raises:
        RuntimeError: the serving process exited while the run was pending or running.
    """
    flow_run_name = flow_run_name or f"local-{uuid.uuid4().hex[:8]}"
    args = [sys.executable, "-m", "prefect", "deployment", "run", name, "--watch",
            "--watch-timeout", str(int(timeout)), "--flow-run-name", flow_run_name]
    if parameters:
        args += ["--params", json.dumps(parameters)]
    cli = subprocess.Popen(args, env=env, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT if output
                           else None, stdin=subprocess.DEVNULL)
    try:
        while cli.poll() is None:
            if serving is not None and serving.poll() is not None:
                raise RuntimeError(f"the process serving {name} exited (code {serving.returncode}) "
                                   f"before flow run {flow_run_name} finished")
            time.sleep(0.5)
    finally:
        if cli.poll() is None:
            cli.terminate()
            cli.wait(timeout=10)
    return cli.returncode, flow_run_name


@dataclass
class RunOutcome:
    """What a finished flow run left in the API (artifacts as the API returns them, by key)."""

    flow_run_id: str
    state: str
    message: str
    seconds: float
    task_seconds: dict[str, float] = field(default_factory=dict)
    artifacts: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def model(self) -> str | None:
        """The published model location, from the ``higgs-model`` link artifact."""
        art = self.artifacts.get("higgs-model")
        match = re.match(r"^\[(.*)\]\((.*)\)$", str(art.get("data"))) if art else None
        return match.group(1) if match else None

    @property
    def report(self) -> str | None:
        """The published report location (next to the model, per the publish layout)."""
        from pipeline import chain

        model = self.model
        if model is None:
            return None
        run_uri = model.rstrip("/").rsplit("/", 1)[0]
        return chain.published_locations(run_uri)["report"]


def _seconds(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def inspect_flow_run(api_url: str, flow_run_name: str) -> RunOutcome:
    """Read a flow run's final state, task durations and artifacts from the API by its name.

    Raises:
        RuntimeError: no flow run has that name.
    """
    runs = api(api_url, "POST", "/flow_runs/filter",
               {"flow_runs": {"name": {"any_": [flow_run_name]}}, "limit": 1})
    if not runs:
        raise RuntimeError(f"no flow run named {flow_run_name!r} on {api_url}")
    run = runs[0]
    tasks = api(api_url, "POST", "/task_runs/filter",
                {"flow_runs": {"id": {"any_": [run["id"]]}}, "sort": "EXPECTED_START_TIME_ASC", "limit": 200})
    task_seconds: dict[str, float] = {}
    for t in tasks:
        took = _seconds(t.get("start_time"), t.get("end_time"))
        if took is not None:
            # Task run names are "<task name>-<suffix>"; a retried task keeps one run.
            task_seconds[t["name"].rsplit("-", 1)[0]] = took
    artifacts = api(api_url, "POST", "/artifacts/filter",
                    {"artifacts": {"flow_run_id": {"any_": [run["id"]]}}, "limit": 200})
    state = run.get("state") or {}
    return RunOutcome(
        flow_run_id=run["id"],
        state=state.get("name", "unknown"),
        message=state.get("message") or "",
        seconds=_seconds(run.get("start_time"), run.get("end_time")) or 0.0,
        task_seconds=task_seconds,
        artifacts={a["key"]: a for a in artifacts if a.get("key")},
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of ``make run``; returns 0 when the flow run ends ``Completed``."""
    parser = argparse.ArgumentParser(prog="python -m flows.local_run", description=__doc__.split("\n")[0])
    parser.add_argument("--deployment", default="sample", choices=["sample", "full"],
                        help="which deployment to run (default: sample)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.KEY=VALUE", help="config override passed to the flow (repeatable)")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=JSON",
                        help="flow parameter, e.g. --param epochs=3 (repeatable)")
    parser.add_argument("--port", type=int, default=0, help="server port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--home", default=DEFAULT_HOME, help="PREFECT_HOME (default: .prefect)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds to wait for the run")
    parser.add_argument("--keep-running", action="store_true",
                        help="leave the server and the served deployments running afterwards")
    args = parser.parse_args(argv)

    parameters: dict[str, Any] = {}
    for item in args.param:
        key, sep, raw = item.partition("=")
        if not sep:
            parser.error(f"--param {item!r} must look like NAME=VALUE")
        try:
            parameters[key] = json.loads(raw)
        except json.JSONDecodeError:
            parameters[key] = raw
    if args.overrides:
        parameters["overrides"] = [*parameters.get("overrides", []), *args.overrides]

    server = LocalServer(args.home, args.port or None)
    # This process talks to the server too (to read the outcome): same settings as the children.
    os.environ.update(server.env())
    serving: subprocess.Popen | None = None
    serve_log = server.home / "serve.log"
    stop_echo = threading.Event()
    echo: threading.Thread | None = None
    summary = ""
    started = time.monotonic()
    try:
        print(f"starting Prefect server on {server.ui_url} (data in {server.home}, log {server.log_path})",
              flush=True)
        server.start()
        print(f"serving deployments full, sample, retrain (python -m flows.deployments, log {serve_log})",
              flush=True)
        # The serving process (and the flow runs it starts) write to a file that is echoed here
        # while this command runs; with --keep-running nothing writes to the terminal afterwards.
        with open(serve_log, "ab") as log:
            offset = log.tell()
            serving = start_serving(server.env(), output=log)
        echo = threading.Thread(target=_echo, args=(serve_log, offset, stop_echo), daemon=True)
        echo.start()
        wait_for_deployments(server.api_url, [f"higgs/{n}" for n in ("full", "sample", "retrain")], serving)
        print(f"running: prefect deployment run higgs/{args.deployment} --watch", flush=True)
        code, run_name = run_deployment(server.env(), f"higgs/{args.deployment}", parameters,
                                        timeout=args.timeout, serving=serving)
        outcome = inspect_flow_run(server.api_url, run_name)
        summary = _describe(outcome, server.ui_url, time.monotonic() - started)
        ok = outcome.state == "Completed" and code == 0
    except RuntimeError as exc:
        print(f"make run: error: {exc}", file=sys.stderr)
        ok = False
    except KeyboardInterrupt:
        print("make run: interrupted", file=sys.stderr)
        ok = False
    finally:
        if echo is not None:
            time.sleep(1.0)  # the run's last log lines, then the summary below them
            stop_echo.set()
            echo.join(timeout=5)
        if summary:
            print(summary, flush=True)
        if args.keep_running and server.proc is not None:
            stop = f"kill -INT {serving.pid}; " if serving is not None else ""
            print(f"left running: Prefect UI {server.ui_url} (API {server.api_url}); "
                  f"serving log {serve_log}; stop with: {stop}kill {server.proc.pid}")
        else:
            # SIGINT is serve()'s clean shutdown (it pauses the schedules, then exits).
            stop_process(serving, sig=signal.SIGINT)
            server.stop()
    return 0 if ok else 1


def _echo(path: Path, offset: int, stop: threading.Event) -> None:
    """Copy what is appended to ``path`` after ``offset`` to stdout until ``stop`` is set."""
    with open(path, "rb") as f:
        f.seek(offset)
        while True:
            chunk = f.read()
            if chunk:
                sys.stdout.buffer.write(chunk)
                sys.stdout.buffer.flush()
            elif stop.is_set():
                return
            else:
                time.sleep(0.2)


def _describe(outcome: RunOutcome, ui_url: str, wall: float) -> str:
    lines = [f"flow run {outcome.state}" + (f": {outcome.message}" if outcome.state != "Completed" else "")]
    if outcome.state == "Completed":
        lines += [f"  report: {outcome.report}", f"  model:  {outcome.model}"]
    if outcome.task_seconds:
        lines.append("  tasks:  " + ", ".join(f"{k} {v:.1f}s" for k, v in outcome.task_seconds.items()))
    lines.append(f"  flow run {outcome.seconds:.1f}s; wall time of this command {wall:.1f}s")
    lines.append(f"  UI:     {ui_url}/runs/flow-run/{outcome.flow_run_id}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
