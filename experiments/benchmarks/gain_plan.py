"""Run a plan of ``gain.py`` invocations, several at a time, within a time limit; then rebuild gain.py's outputs.

Each line of the plan holds one invocation's arguments, best one method and one seed (``--seed S``) with
``--skip-baseline`` where another line trains that baseline, so no two processes train the same run. The runner,
its options and its logs (``<--logs>/<line number>.log``) are :mod:`raysemi.bench.plan`'s; ``plans/rerun_matrix.txt``
says how to run a plan in the background and resume it. Usage (from the repository root)::

    python experiments/benchmarks/gain_plan.py experiments/benchmarks/plans/p2_device.txt --jobs 8 \\
        --time-limit 540 --extra=--runner=plain
    nohup python experiments/benchmarks/gain_plan.py experiments/benchmarks/plans/rerun_matrix.txt --jobs 2 \\
        --extra=--runner=plain > experiments/benchmarks/_work/rerun_matrix.log 2>&1 &
"""

from __future__ import annotations

import sys
from pathlib import Path

from raysemi.bench import plan

GAIN = Path(__file__).with_name("gain.py")
LOGS = Path("experiments/benchmarks/_work/gain_plan_logs")
MIXED = {"--allow-mixed-code": "rebuild the outputs at the end pairing runs of different code versions (flagged)"}


def main(argv: list[str] | None = None) -> int:
    return plan.main(argv, plan.python_script(GAIN), ["--table"], name="gain_plan", logs=LOGS, last_flags=MIXED,
                     description=__doc__.splitlines()[0])


if __name__ == "__main__":
    sys.exit(main())
