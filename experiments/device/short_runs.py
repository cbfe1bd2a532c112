"""Short benchmark runs on one GPU for ``check.sh``: ``supervised`` and ``cac`` for ``--steps`` iterations of P2
(CamVid; P1's synthetic data when CamVid is absent, said in the output), in this process on CUDA with AMP
(:func:`raysemi.engine.plain.train_plain`: the engine's loop fed by DataLoader processes, no Ray).

Writes ``--out`` (JSON): per method its val mIoU, wall seconds, the steady training rate (the mean
``steps_per_s`` of the log records after the first) and that rate's ratio to supervised's.

Usage (from the repository root)::

    python experiments/device/short_runs.py --steps 300 --out experiments/benchmarks/results/x.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "experiments" / "benchmarks"))
sys.path.insert(0, str(REPO))

from gain import PROTOCOLS, variant_overrides  # noqa: E402

CAMVID = Path(os.environ.get("RAYSEMI_CAMVID", REPO.parent / "shared" / "data" / "camvid-180x240"))


def protocol_and_data() -> tuple[str, list[str]]:
    """P2 on CamVid when its files are there, else P1 (synthetic data, generated on first use)."""
    if CAMVID.is_dir():
        return "p2", [f"data.root={CAMVID}"]
    return "p1", []


def short_run(protocol: str, method: str, steps: int, data: list[str], work: Path) -> dict:
    import torch

    from raysemi.config import load_config
    from raysemi.engine.plain import train_plain
    from raysemi.tracking import read_metrics

    run_dir = work / f"{protocol}-{method}-it{steps}"
    overrides = [*variant_overrides(PROTOCOLS[protocol], method), *data, f"train.steps={steps}",
                 f"train.eval_every={steps}", f"train.checkpoint_every={steps}", "train.log_every=50",
                 "train.amp=true", f"run.dir={run_dir}"]
    cfg = load_config(REPO / PROTOCOLS[protocol].config, overrides)
    started = time.perf_counter()
    summary = train_plain(cfg, data_workers=4, device=torch.device("cuda"))
    seconds = time.perf_counter() - started
    rates = [r["steps_per_s"] for r in read_metrics(run_dir) if "steps_per_s" in r][1:]
    return {"miou": summary["miou"], "seconds": seconds, "steps_per_s": statistics.mean(rates) if rates else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--methods", nargs="+", default=["supervised", "cac"])
    parser.add_argument("--work", type=Path, default=Path("/tmp/raysemi-device-check"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    import torch

    protocol, data = protocol_and_data()
    results = {"protocol": protocol, "device": torch.cuda.get_device_name(), "steps": args.steps, "methods": {}}
    for method in args.methods:
        results["methods"][method] = short_run(protocol, method, args.steps, data, args.work)
        print(method, json.dumps(results["methods"][method]), flush=True)
    base = results["methods"].get("supervised", {}).get("steps_per_s")
    for entry in results["methods"].values():
        entry["step_time_vs_supervised"] = base / entry["steps_per_s"] if base and entry["steps_per_s"] else None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
