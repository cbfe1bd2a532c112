"""``raysemi submit``: a training run or a sweep as a Ray job on a cluster.

It wraps ``ray job submit``: the current folder (the project, with your configs) is the job's working
directory, ``cluster/runtime_env.yaml`` installs the project on every node, and the run directory is put under
the storage path every node shares, or, for an object-store URI, mirrored there (``run.sync_to``) from each
node's local copy. The Ray dashboard's address comes from ``--address`` or ``RAY_ADDRESS``;
the cluster's token from ``RAY_AUTH_TOKEN`` or Ray's token file (``ray get-auth-token``), never from an
argument, so it stays out of shell history and job metadata.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from raysemi.errors import ConfigError
from raysemi.ray.uris import below

SUBMITTABLE = ("train", "tune", "sweep")  # the commands that take config overrides, run.dir among them
DEFAULT_RUNTIME_ENV = Path("cluster/runtime_env.yaml")
NODE_LOCAL_RUNS = "/tmp/raysemi-runs"  # each node's working copy of a run mirrored to object storage
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def job_command(raysemi_args: list[str], address: str, storage: str, name: str, runtime_env: Path,
                wait: bool = True, job_id: str | None = None) -> list[str]:
    """The ``ray job submit`` command line for ``raysemi <raysemi_args>``, with its run directory
    ``<storage>/<name>`` and its Ray submission id ``job_id`` (default: ``name``)."""
    if not raysemi_args or raysemi_args[0] not in SUBMITTABLE:
        given = raysemi_args[0] if raysemi_args else "nothing"
        raise ConfigError(f"submit: got {given!r} after --; expected one of {', '.join(SUBMITTABLE)} with its "
                          "arguments, e.g. -- train -c experiments/camvid/cps.yaml")
    if not storage.startswith("/") and "://" not in storage:
        raise ConfigError(f"submit --storage {storage!r}: expected an absolute path that every node of the cluster "
                          "mounts, or an object-store URI (s3://bucket/runs, gs://bucket/runs)")
    if not NAME_PATTERN.match(name):
        raise ConfigError(f"submit --name {name!r}: use letters, digits, '.', '_' and '-' (it names the run "
                          "directory and the Ray job)")
    if not runtime_env.is_file():
        raise ConfigError(f"submit --runtime-env {runtime_env}: file not found; run from the project root "
                          f"(where {DEFAULT_RUNTIME_ENV} is) or pass the file")
    return [
        "ray", "job", "submit", "--address", address, "--submission-id", job_id or name,
        "--working-dir", ".", "--runtime-env", str(runtime_env), *([] if wait else ["--no-wait"]),
        "--", "raysemi", *raysemi_args, *run_location(storage, name),
    ]


def run_location(storage: str, name: str) -> list[str]:
    """The overrides that put run ``name`` in ``storage``: ``run.dir`` on a shared path, or a node-local
    ``run.dir`` mirrored to an object-store URI (``run.sync_to``)."""
    target = below(storage, name)
    if "://" in storage:
        return [f"run.dir={NODE_LOCAL_RUNS}/{name}", f"run.sync_to={target}"]
    return [f"run.dir={target}"]


def names(raysemi_args: list[str], name: str | None) -> tuple[str, str]:
    """``(run name, Ray job id)``. The run name is ``name`` (default: the command and the time); the job id adds
    the time to a given name, because Ray keeps each job id once: submitting the same ``--name`` again, after
    a failure, is a new job that resumes the same run directory."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if name is None:
        name = f"{raysemi_args[0] if raysemi_args else 'job'}-{stamp}"
        return name, name
    return name, f"{name}-{stamp}"


def resolve_address(address: str | None) -> str:
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise ConfigError("submit: no cluster address; pass --address http://HEAD:8265 (the Ray dashboard) or set "
                          "RAY_ADDRESS")
    return address


def submit(raysemi_args: list[str], address: str | None, storage: str, name: str | None, runtime_env: Path,
           wait: bool = True) -> int:
    """Run ``ray job submit``; return its exit status (with ``wait``, the job's: it follows the job's logs)."""
    if shutil.which("ray") is None:
        raise ConfigError("submit: the `ray` command is not on PATH; install raysemi (it brings ray[default])")
    run_name, job_id = names(raysemi_args, name)
    command = job_command(raysemi_args, resolve_address(address), storage, run_name, runtime_env, wait, job_id)
    return subprocess.run(command, check=False).returncode
