"""Run a plan of ``gain.py`` invocations, several at a time, within a time limit; then rebuild gain.py's outputs.

One invocation per line, best one method and one seed (``--seed S``, with ``--skip-baseline`` where another line
trains that baseline); the runner, its options and its logs (``<--logs>/<line>.log``) are :mod:`raysemi.bench.plan`'s,
and ``plans/rerun_matrix.txt`` says how to run one in the background and resume it. Usage (from the repository root)::

    python experiments/benchmarks/gain_plan.py experiments/benchmarks/plans/p2_device.txt --jobs 8 \\
        --time-limit 540 --extra=--runner=plain
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
