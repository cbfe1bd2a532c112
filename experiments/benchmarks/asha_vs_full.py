"""ASHA against the full budget: a CamVid 96×128 search of ``cps`` λ and learning rate (issue 7).

The same ``--samples`` configurations run twice through ``raysemi tune``'s search: once under ASHA (rungs at
``--grace`` steps times powers of 3), once with every trial run to ``--iterations`` (FIFO). Optuna proposes
them with the same seed, and with fewer samples than its random start-up trials (10) the two runs get the
same values in the same order, so the comparison is configuration for configuration. λ ramps up over the first
90 steps, as in the CPS benchmark at 300 iterations (the CamVid config's 300-step ramp-up would leave λ below
full weight for the whole budget). Recorded: the best val
mIoU each run found and the trial-steps it spent (the sum of each trial's last step).

Target: ASHA's best within 1 mIoU point of the full-budget best, at most half the trial-steps.

Usage (from the repository root; needs ``../shared/data``; about 3 hours on 2 CPUs: `cps` takes ~2 s an
iteration here with evaluation, the full budget is 2,700 iterations and ASHA about 900–1,300)::

    python experiments/benchmarks/asha_vs_full.py --labels 1/16 --samples 9 --iterations 300 --grace 50

Interrupted? Run the same command with ``--resume``: a finished search is kept, an unfinished one continues
(trials checkpoint at every rung).

Results: ``experiments/benchmarks/results/asha_vs_full-<labels>-s<samples>-it<iterations>.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from raysemi.bench.camvid import CamvidProtocol

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "experiments" / "benchmarks" / "results"
CAMVID = CamvidProtocol.in_checkout(REPO)

SPACE = {"cps.weight": {"uniform": [0.5, 3.0]}, "optim.lr": {"loguniform": [3.0e-3, 0.1]}}


def run_search(scheduler: str, args, sweep_dir: Path) -> dict:
    """One search's result; with ``--resume`` a finished search's stored result, or the interrupted search
    continued (Tune restores Optuna and ASHA; trials go on from their checkpoints)."""
    from raysemi.ray.tune import search
    from raysemi.sweeps import SweepSpec

    done = sweep_dir / "phase.json"
    if args.resume and done.is_file():
        return json.loads(done.read_text())
    base = CAMVID.config("cps", args.labels, args.seed, args.iterations, sweep_dir / "unused",
                           [f"train.eval_every={args.grace}", f"train.checkpoint_every={args.grace}",
                            "train.log_every=25", "scaling.num_workers=0", "cps.rampup_steps=90"])
    spec = SweepSpec.model_validate({"samples": args.samples, "scheduler": scheduler, "grace_steps": args.grace,
                                     "reduction_factor": 3, "concurrency": 1, "retries": 0, "space": SPACE})
    resume = args.resume and sweep_dir.is_dir()
    if not resume:
        shutil.rmtree(sweep_dir, ignore_errors=True)
    began = time.perf_counter()
    outcomes = search(base, spec, sweep_dir, resume=resume)
    if not complete(outcomes, args, scheduler):  # Tune returns normally after Ctrl-C
        sys.exit(f"{scheduler} search interrupted; run the same command with --resume to continue it")
    scored = [o for o in outcomes if o.metric is not None]
    best = max(scored, key=lambda o: o.metric)
    result = {
        "best_miou": round(best.metric, 4),
        "best_values": best.params,
        "trial_steps": sum(o.steps for o in outcomes),
        "wall_time_s": round(time.perf_counter() - began, 1),
        "resumed": resume,  # then wall_time_s is the last invocation's only
        "trials": [{"values": o.params, "steps": o.steps, "status": o.status,
                    "miou": None if o.metric is None else round(o.metric, 4)} for o in outcomes],
    }
    done.write_text(json.dumps(result, indent=1))
    return result


def complete(outcomes: list, args, scheduler: str) -> bool:
    """Every trial ran, and each failed or ended at the full budget or (under ASHA) at a rung."""
    rungs = {args.iterations}
    if scheduler == "asha":
        rungs |= {args.grace * 3**k for k in range(8) if args.grace * 3**k < args.iterations}
    return len(outcomes) == args.samples and all(o.status == "failed" or o.steps in rungs for o in outcomes)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", default="1/16")
    parser.add_argument("--samples", type=int, default=9)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--grace", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run of this benchmark (same arguments) where it stopped")
    args = parser.parse_args()
    if not CAMVID.data.is_dir():
        print(f"error: {CAMVID.data} not found; this benchmark needs ../shared/data", file=sys.stderr)
        return 2
    name = f"asha_vs_full-{args.labels.replace('/', 'of')}-s{args.samples}-it{args.iterations}"
    runs = {scheduler: run_search(scheduler, args, CAMVID.work / name / scheduler) for scheduler in ("asha", "fifo")}
    asha, full = runs["asha"], runs["fifo"]
    result = {
        "benchmark": "asha_vs_full", "method": "cps", "labels": args.labels, "samples": args.samples,
        "iterations": args.iterations, "grace_steps": args.grace, "seed": args.seed, "space": SPACE,
        "asha": asha, "full": full,
        "miou_gap_points": round(100 * (full["best_miou"] - asha["best_miou"]), 2),
        "step_share": round(asha["trial_steps"] / full["trial_steps"], 3),
        "device": "cpu, 2 cores", "date": time.strftime("%Y-%m-%d"),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("miou_gap_points", "step_share")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
