"""What a run prints: its ``[raysemi]`` step lines and results, not Ray's start-up and info lines.

A default run with one Ray Train worker would otherwise show, between its step lines, Ray's token-auth warning
(which advises turning authentication off), the Train controller's worker-group start-up lines, a
``PreemptionWatcher`` error line from the controller's core worker, Ray Data's ``exclude_resources``
deprecation warning, "Progress bars disabled" and one "execution finished" line per dataset and evaluation,
every worker line prefixed with ``(RayTrainWorker pid=...)`` in colour codes, also in a file.

:func:`route_ray_output` replaces the driver's printer of worker output (Ray's ``ray_print_logs`` handler) by
a :class:`WorkerOutput` that writes those lines to the run directory's ``ray.log`` instead, prints the
``[raysemi]`` lines bare, and prints anything else as Ray would, without prefix and colours when stdout is not
a terminal. The token-auth warning goes to the same file (:func:`quiet_token_auth_warning`). Ray exposes no
public hook for its log printing, so this uses ``ray._private``'s dispatcher; where that is missing (another
Ray version), Ray's own printing is left in place.
"""

from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path
from typing import Any

RAY_LOG = "ray.log"  # in the run directory: the Ray lines kept off the terminal

# Ray's own actors: everything they print is start-up, progress or bookkeeping of Train and Data.
QUIET_ACTORS = frozenset({"TrainController", "PlacementGroupCleaner", "PreemptionWatcher", "SynchronizationActor",
                          "TrainStateActor", "DatasetManager", "SplitCoordinator", "_StatsActor",
                          "_StatsSummaryActor", "ActorLocationTracker", "AutoscalingRequester"})
# Ray's info lines from the training workers and Ray Data tasks.
QUIET_LINES = ("Setting up process group for", "Progress bars disabled", "execution finished in",
               "exclude_resources", "PreemptionWatcher", "Started training worker group",
               "Attempting to start training worker group", "Requesting resources")
TOKEN_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"


class RunLog:
    """Appends lines to ``<run_dir>/ray.log`` (opened per write: the run directory may be replaced)."""

    def __init__(self, path: Path | None):
        self.path = path
        self._lock = threading.Lock()

    def write(self, source: str, lines: list[str]) -> None:
        """Append ``(source) line`` per line. A log that cannot be written (its run directory gone) loses
        them: these are Ray's info lines, never worth failing a run or a logging call for."""
        if self.path is None or not lines:
            return
        try:
            with self._lock, self.path.open("a") as handle:
                handle.writelines(f"({source}) {line}\n" for line in lines)
        except OSError:
            pass


def is_quiet(data: dict[str, Any], line: str) -> bool:
    """Whether a worker line is Ray's own (``data``: Ray's log batch, with ``actor_name`` or ``task_name``)."""
    if line.startswith("[raysemi]"):
        return False
    return data.get("actor_name") in QUIET_ACTORS or any(marker in line for marker in QUIET_LINES)


class WorkerOutput:
    """The driver's printer of worker output (a handler of Ray's stdstream dispatcher)."""

    def __init__(self, log: RunLog, print_as_ray, isatty: bool):
        self.log = log
        self.print_as_ray = print_as_ray  # Ray's print_to_stdstream(data, ignore_prefix)
        self.isatty = isatty

    def __call__(self, data: dict[str, Any]) -> None:
        source = f"{data.get('actor_name') or data.get('task_name') or 'worker'} pid={data.get('pid')}"
        for line in data.get("lines", []):
            if is_quiet(data, line):
                self.log.write(source, [line])
            elif line.startswith("[raysemi]"):
                stream = sys.stderr if data.get("is_err") else sys.stdout
                stream.write(line + "\n")
                stream.flush()
            else:
                self.print_as_ray({**data, "lines": [line]}, ignore_prefix=not self.isatty)


def route_ray_output(run_dir: Path | None) -> bool:
    """Replace Ray's printer of worker output in this driver by a :class:`WorkerOutput` writing Ray's lines to
    ``run_dir``'s ``ray.log``; return whether it did (not where this process prints no worker output: a Ray
    started with ``log_to_driver=False``, a Tune trial, another Ray version)."""
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
        from ray._private.worker import print_to_stdstream
    except ImportError:
        return False
    names = [name for name, _ in getattr(dispatcher, "handlers", [])]
    if not any(name in ("ray_print_logs", "raysemi_print_logs") for name in names):
        return False
    log = RunLog(run_dir / RAY_LOG if run_dir else None)
    dispatcher.remove_handler("ray_print_logs")
    dispatcher.remove_handler("raysemi_print_logs")
    dispatcher.add_handler("raysemi_print_logs", WorkerOutput(log, print_to_stdstream, sys.stdout.isatty()))
    return True


class _ToRunLog(logging.Filter):
    """Moves the records of a driver-side Ray logger to the run's ``ray.log``."""

    def __init__(self, log: RunLog):
        super().__init__()
        self.log = log

    def filter(self, record: logging.LogRecord) -> bool:
        self.log.write(record.name, [record.getMessage()])
        return False


def quiet_token_auth_warning(run_dir: Path | None) -> None:
    """Ray's warning that a local Ray starts with token authentication (and how to turn it off) goes to
    ``run_dir``'s ``ray.log``, not the terminal. Authentication stays on; nothing advises otherwise."""
    logger = logging.getLogger(TOKEN_AUTH_LOGGER)
    for old in [f for f in logger.filters if isinstance(f, _ToRunLog)]:
        logger.removeFilter(old)
    logger.addFilter(_ToRunLog(RunLog(run_dir / RAY_LOG if run_dir else None)))
