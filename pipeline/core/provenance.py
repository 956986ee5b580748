"""Where a run came from: code, package versions, dataset, config, strategy, host.

    python -c "from pipeline.core import provenance; print(provenance.code_version())"

Training writes :func:`gather`'s record to ``RUN/provenance.json`` (through
:mod:`pipeline.core.rundir`); ``higgs publish`` copies it with the model and into the
published ``MANIFEST``; ``report.md`` and ``higgs models`` show it. Everything here is
cheap and local: package versions come from the installed distributions' metadata (nothing
is imported), the code version from ``git`` when the package runs from a checkout.
"""

from __future__ import annotations

import datetime as dt
import functools
import getpass
import hashlib
import os
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from pipeline.core.config import Config, to_yaml

# Distributions whose versions decide what a model is (record them, not everything installed).
PACKAGES: dict[str, str] = {
    "tensorflow": "tensorflow",
    "tf_keras": "tf-keras",
    "apache_beam": "apache-beam",
    "prefect": "prefect",
}
DISTRIBUTION = "higgs-pipeline"
_SOURCE_ROOT = Path(__file__).resolve().parents[2]


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(_SOURCE_ROOT), *args], capture_output=True, text=True,
                              timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=1)
def code_version() -> dict[str, Any]:
    """The code's version: git commit and dirty flag in a checkout, else the package version.

    Returns:
        ``{"git_commit": sha or None, "git_dirty": bool or None, "package_version": str or None}``;
        "dirty" means tracked files differ from the commit (untracked files do not count).
    """
    commit = _git("rev-parse", "HEAD") if (_SOURCE_ROOT / ".git").exists() else None
    dirty = None
    if commit:
        status = _git("status", "--porcelain", "--untracked-files=no")
        dirty = None if status is None else bool(status)
    return {"git_commit": commit, "git_dirty": dirty, "package_version": _version(DISTRIBUTION)}


def code_label(provenance: dict[str, Any] | None) -> str:
    """A short label of a record's code version: ``1a2b3c4d5e`` / ``1a2b3c4d5e+dirty`` / ``v0.1.0``."""
    code = (provenance or {}).get("code") or {}
    if code.get("git_commit"):
        return code["git_commit"][:10] + ("+dirty" if code.get("git_dirty") else "")
    return f"v{code['package_version']}" if code.get("package_version") else "?"


def package_versions() -> dict[str, str | None]:
    """Python's version and those of the packages in :data:`PACKAGES` (None: not installed)."""
    return {"python": platform.python_version(), **{k: _version(d) for k, d in PACKAGES.items()}}


def config_sha256(cfg: Config) -> str:
    """sha256 (hex) of the resolved config's YAML (what ``RUN/config.yaml`` holds)."""
    return hashlib.sha256(to_yaml(cfg).encode()).hexdigest()


def actor() -> str:
    """``user@host`` of this process (for the registry's history)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry for this uid (some containers)
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def gather(cfg: Config, *, data: str, dataset_fingerprint: str, strategy: str,
           replicas: int) -> dict[str, Any]:
    """The provenance record of a training run.

    Args:
        cfg: the resolved config the run trains with.
        data: the dataset location.
        dataset_fingerprint: sha256 of the dataset's ``manifest.json``
            (:func:`pipeline.data.dataset.fingerprint`).
        strategy: the ``tf.distribute`` strategy's class name.
        replicas: replicas in sync (all workers together).

    Returns:
        ``{"code", "packages", "dataset": {"uri", "fingerprint"}, "config_sha256", "preset",
        "strategy", "replicas", "workers", "host", "user", "created_at"}``.
    """
    return {
        "code": code_version(),
        "packages": package_versions(),
        "dataset": {"uri": data, "fingerprint": dataset_fingerprint},
        "config_sha256": config_sha256(cfg),
        "preset": cfg.preset,
        "strategy": strategy,
        "replicas": replicas,
        "workers": cfg.train.workers,
        "host": socket.gethostname(),
        "user": actor().split("@", 1)[0],
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
