"""Run a plan of command lines, several at a time, within a time limit; resumable by running the plan again.

A plan is a text file of one command's arguments per line, split as a shell splits them (``#`` starts a comment,
a quoted ``#`` is part of its argument; blank lines are skipped). Each line runs as ``[*command, *line,
*extra]`` in a process of its own, in plan order, ``jobs`` at a time; none starts after ``stop_starting``
seconds, and what still runs at ``time_limit`` seconds is terminated. Resuming is the command's part: a line
whose command skips work it finished before (as ``gain.py`` reads a finished run's JSON and resumes a stopped
run from its checkpoint) makes running the whole plan again pick up where it stopped. Every line's output goes
to ``<logs>/<line number, two digits>.log``; when the plan is done a last command runs once (``gain.py --table``:
rebuild the outputs).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

POLL_S = 1.0  # seconds between two looks at the running lines


def read_plan(path: Path) -> list[list[str]]:
    """The plan's invocations, one argument list per non-empty, non-comment line (split as a shell would: a
    quoted ``#`` is part of its argument)."""
    lines = (shlex.split(line, comments=True) for line in path.read_text().splitlines())
    return [args for args in lines if args]


def run_plan(plan: list[list[str]], command: list[str], jobs: int, stop_starting: float, time_limit: float,
             logs: Path, extra: Sequence[str] = (), say: Callable[[str], None] = print) -> dict[int, int | None]:
    """Run each line of ``plan`` as ``[*command, *line, *extra]``, ``jobs`` at a time, none started after
    ``stop_starting`` seconds, the running ones terminated at ``time_limit`` seconds; each line's exit status
    (None: stopped at the time limit or never started), by line index. ``say`` hears each start and end."""
    logs.mkdir(parents=True, exist_ok=True)
    started_at = time.monotonic()
    pending = list(enumerate(plan))
    running: dict[int, subprocess.Popen] = {}
    status: dict[int, int | None] = {index: None for index in range(len(plan))}
    while pending or running:
        elapsed = time.monotonic() - started_at
        for index, process in list(running.items()):
            if process.poll() is not None:
                status[index] = process.returncode
                say(f"line {index + 1} ended with {process.returncode} at {elapsed:.0f} s")
                del running[index]
        if elapsed >= time_limit:
            stop(running, say)
            break
        while pending and len(running) < jobs and elapsed < stop_starting:
            index, args = pending.pop(0)
            with (logs / f"{index + 1:02d}.log").open("w") as log:  # the child keeps its own handle
                running[index] = subprocess.Popen([*command, *args, *extra], stdout=log, stderr=subprocess.STDOUT)
            say(f"line {index + 1} started at {elapsed:.0f} s: {shlex.join(args)}")
        if not running and (not pending or elapsed >= stop_starting):
            break
        time.sleep(POLL_S)
    return status


def stop(running: Mapping[int, subprocess.Popen], say: Callable[[str], None]) -> None:
    """Terminate the ``running`` lines (by line index) and wait for them to end."""
    for index, process in running.items():
        process.terminate()
        say(f"line {index + 1} stopped at the time limit")
    for process in running.values():
        process.wait()


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive count")
    return value


def parser(description: str, logs: Path, last_flags: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """The command line of a plan runner: the plan, ``--jobs`` (default 2), ``--time-limit`` (seconds, default
    none), ``--stop-starting`` (default: the time limit), ``--logs`` (default ``logs``), ``--extra`` (an argument
    added to every line, repeatable) and, for each of ``last_flags`` (flag → help), a switch passed on to the last
    command."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("plan", type=Path)
    parser.add_argument("--jobs", type=positive_int, default=2, help="invocations at a time")
    parser.add_argument("--time-limit", type=float, default=float("inf"), help="seconds; then stop what runs")
    parser.add_argument("--stop-starting", type=float, help="seconds after which no line starts (default: the "
                                                            "time limit)")
    parser.add_argument("--logs", type=Path, default=logs)
    parser.add_argument("--extra", action="append", default=[], help="an argument added to every line")
    for flag, text in (last_flags or {}).items():
        parser.add_argument(flag, action="store_true", help=text)
    return parser


def main(argv: list[str] | None, command: list[str], last: list[str], *, name: str, description: str, logs: Path,
         last_flags: Mapping[str, str] | None = None) -> int:
    """A plan runner's ``main``: parse ``argv`` (:func:`parser`), run the plan's lines through ``command``
    (:func:`run_plan`), then ``[*command, *last]`` with those of ``last_flags`` given, and say, as ``[name]``, how
    many lines finished, failed and did not finish; 1 when a line failed, else 0."""
    cli = parser(description, logs, last_flags)
    args = cli.parse_args(argv)
    if not args.plan.is_file():
        cli.error(f"plan {args.plan}: no such file (a plan is a text file of invocations, one per line: "
                  "experiments/benchmarks/plans/)")

    def say(text: str) -> None:
        print(f"[{name}] {text}", flush=True)

    stop_starting = args.time_limit if args.stop_starting is None else args.stop_starting
    status = run_plan(read_plan(args.plan), command, args.jobs, stop_starting, args.time_limit, args.logs,
                      args.extra, say)
    flags = [flag for flag in last_flags or {} if getattr(args, flag.lstrip("-").replace("-", "_"))]
    subprocess.run([*command, *last, *flags], check=False)
    failed = [index + 1 for index, code in status.items() if code not in (0, None)]
    unfinished = [index + 1 for index, code in status.items() if code is None]
    say(f"finished {sum(code == 0 for code in status.values())} of {len(status)} lines; failed: {failed or 'none'}; "
        f"not finished: {unfinished or 'none'}")
    return 1 if failed else 0


def python_script(path: Path) -> list[str]:
    """The command that runs the Python script ``path`` with this interpreter."""
    return [sys.executable, str(path)]
