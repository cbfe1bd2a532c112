"""Run a plan of ``gain.py`` invocations, several at a time, within a time limit.

For a machine that trains many small benchmark runs side by side (one GPU and many cores): each line of the
plan holds the arguments of one ``gain.py`` invocation (``#`` starts a comment), best as one method and one
seed (``--seed S``), with ``--skip-baseline`` where another line runs that baseline, so no two processes train
the same run. Lines start in plan order, ``--jobs`` at a time; none starts after ``--stop-starting`` seconds,
and whatever still runs at ``--time-limit`` is stopped (its run directory keeps its checkpoints, and the same
plan run again resumes it). Every line's output goes to ``<--logs>/<line number>.log``; the outputs (the
README, ``summary.json`` and the quoted figures) are rebuilt at the end (``--allow-mixed-code`` passed on to that
rebuild pairs runs of different code versions, flagged).

A plan can be run in the background and resumed: ``plans/rerun_matrix.txt`` (issue 35's rerun of every headline
comparison at one code version) says how.

Usage (from the repository root)::

    python experiments/benchmarks/gain_plan.py experiments/benchmarks/plans/p2_device.txt --jobs 8 \\
        --time-limit 540 --extra=--runner=plain
    nohup python experiments/benchmarks/gain_plan.py experiments/benchmarks/plans/rerun_matrix.txt --jobs 2 \\
        --extra=--runner=plain > experiments/benchmarks/_work/rerun_matrix.log 2>&1 &
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

GAIN = Path(__file__).with_name("gain.py")
POLL_S = 1.0


def read_plan(path: Path) -> list[list[str]]:
    """The plan's invocations, one argument list per non-empty, non-comment line (split as a shell would: a
    quoted ``#`` is part of its argument)."""
    lines = (shlex.split(line, comments=True) for line in path.read_text().splitlines())
    return [args for args in lines if args]


def run_plan(plan: list[list[str]], jobs: int, stop_starting: float, time_limit: float, logs: Path,
             extra: list[str]) -> dict[int, int | None]:
    """Each line's exit status (None: stopped at the time limit or never started), by line index."""
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
            for index, process in running.items():
                process.terminate()
                say(f"line {index + 1} stopped at the time limit")
            for process in running.values():
                process.wait()
            break
        while pending and len(running) < jobs and elapsed < stop_starting:
            index, args = pending.pop(0)
            with (logs / f"{index + 1:02d}.log").open("w") as log:  # the child keeps its own handle
                running[index] = subprocess.Popen([sys.executable, str(GAIN), *args, *extra], stdout=log,
                                                  stderr=subprocess.STDOUT)
            say(f"line {index + 1} started at {elapsed:.0f} s: {shlex.join(args)}")
        if not running and (not pending or elapsed >= stop_starting):
            break
        time.sleep(POLL_S)
    return status


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive count")
    return value


def say(text: str) -> None:
    print(f"[gain_plan] {text}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("plan", type=Path)
    parser.add_argument("--jobs", type=positive_int, default=2, help="invocations at a time")
    parser.add_argument("--time-limit", type=float, default=float("inf"), help="seconds; then stop what runs")
    parser.add_argument("--stop-starting", type=float, help="seconds after which no line starts (default: the "
                                                            "time limit)")
    parser.add_argument("--logs", type=Path, default=Path("experiments/benchmarks/_work/gain_plan_logs"))
    parser.add_argument("--extra", action="append", default=[], help="an argument added to every line")
    parser.add_argument("--allow-mixed-code", action="store_true",
                        help="rebuild the outputs at the end pairing runs of different code versions (flagged)")
    args = parser.parse_args(argv)
    stop_starting = args.time_limit if args.stop_starting is None else args.stop_starting
    status = run_plan(read_plan(args.plan), args.jobs, stop_starting, args.time_limit,
                      args.logs, args.extra)
    subprocess.run([sys.executable, str(GAIN), "--table", *(["--allow-mixed-code"] if args.allow_mixed_code else [])],
                   check=False)
    failed = [index + 1 for index, code in status.items() if code not in (0, None)]
    unfinished = [index + 1 for index, code in status.items() if code is None]
    say(f"finished {sum(code == 0 for code in status.values())} of {len(status)} lines; failed: {failed or 'none'}; "
        f"not finished: {unfinished or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
