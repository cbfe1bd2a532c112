"""Cost of one ``ray.train.report`` in a 2-worker CPU run of Ray Train V2, with the controller's default poll
interval (2 s) and with raysemi's (``raysemi.ray.train.REPORT_POLL_INTERVAL_S``).

Each worker calls ``ray.train.report`` ``--reports`` times with a small metrics dict, first back to back (the
worst case: every call after the first waits for the controller's next poll), then with ``--gap`` seconds of
simulated training between calls (the issue's case: ``log_every=2`` at about 0.5 s a step). Only the time
inside ``ray.train.report`` is counted, the same call raysemi's loop makes every ``train.log_every`` steps.
Each setting runs in a fresh Ray (the interval is read by the controller when it starts).

Usage (from the repository root)::

    python experiments/benchmarks/report_cost.py [--reports 20] [--gap 1.0]

Writes ``experiments/benchmarks/results/report_cost.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "experiments" / "benchmarks" / "results"


def worker_loop(config: dict) -> None:
    import ray.train

    seconds = {"s_per_report": 0.0, "s_per_report_with_gap": 0.0}
    for step in range(2 * config["reports"]):
        spaced = step >= config["reports"]
        if spaced:
            time.sleep(config["gap"])  # a training interval
        started = time.perf_counter()
        ray.train.report({"step": step, "loss": 1.0 / (step + 1)})
        seconds["s_per_report_with_gap" if spaced else "s_per_report"] += time.perf_counter() - started
    if ray.train.get_context().get_world_rank() == 0:
        result = {k: v / config["reports"] for k, v in seconds.items()}
        Path(config["out"]).write_text(json.dumps({**result, "gap_s": config["gap"]}))


def start_ray(attempts: int = 3) -> float:
    """Start a local 2-CPU Ray; return the seconds it took. Ray 2.60 gives its raylet a fixed 30 s to register
    with the GCS (``raylet_start_wait_time_s`` in ``ray/_private/node.py``, no setting), which a loaded machine
    can exceed ("The current node timed out during startup"): such a start is retried on a fresh node."""
    import ray

    for attempt in range(1, attempts + 1):
        started = time.perf_counter()
        try:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="error")
            return time.perf_counter() - started
        except Exception as exc:  # noqa: BLE001 - Ray raises a bare Exception for this timeout
            ray.shutdown()
            if "timed out during startup" not in str(exc) or attempt == attempts:
                raise
            print(f"Ray start {attempt}/{attempts} timed out after {time.perf_counter() - started:.0f} s; "
                  "retrying", file=sys.stderr, flush=True)
    raise AssertionError("unreachable")


def one_setting(reports: int, gap: float, out: Path) -> None:
    """Runs in a fresh process: a 2-worker TorchTrainer whose workers only report."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    start_s = start_ray()
    TorchTrainer(worker_loop, train_loop_config={"reports": reports, "gap": gap, "out": str(out)},
                 scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
                 run_config=RunConfig(storage_path=str(out.parent / "ray"))).fit()
    ray.shutdown()
    out.write_text(json.dumps({**json.loads(out.read_text()), "ray_start_s": round(start_s, 1)}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reports", type=int, default=20, help="reports back to back, then as many spaced")
    parser.add_argument("--gap", type=float, default=1.0, help="seconds of simulated training between spaced reports")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        one_setting(args.reports, args.gap, Path(args.child))
        return 0
    from raysemi.ray.train import REPORT_POLL_INTERVAL_S

    work = REPO / "experiments" / "benchmarks" / "_work" / "report_cost"
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    settings = (("Ray default (2 s)", None), (f"raysemi ({REPORT_POLL_INTERVAL_S} s)", REPORT_POLL_INTERVAL_S))
    for label, interval in settings:
        env = {k: v for k, v in os.environ.items() if k != "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"}
        env.setdefault("RAY_gcs_server_port_wait_time_s", "120")  # the GCS's own start wait (30 s by default)
        if interval is not None:
            env["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = interval
        out = work / f"{len(rows)}.json"
        subprocess.run([sys.executable, __file__, "--reports", str(args.reports), "--gap", str(args.gap),
                        "--child", str(out)],
                       env=env, check=True, timeout=900)
        rows.append({"poll_interval": label, **json.loads(out.read_text())})
        print(json.dumps(rows[-1]), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    record = {"workers": 2, "reports": args.reports, "date": time.strftime("%Y-%m-%d %H:%M"),
              "load_average": [round(x, 2) for x in os.getloadavg()], "rows": rows}
    (RESULTS / "report_cost.json").write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
