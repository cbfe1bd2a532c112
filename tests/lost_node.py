"""The driver of ``tests/test_lost_node.py``, run in a process of its own (it starts its own Ray cluster, which
a test session's local Ray would be in the way of): ``python -m tests.lost_node DATA_ROOT OUT``.

A 2-node Ray cluster on this machine (Ray's own ``cluster_utils``: a head and a second node, each a raylet with
its own object store, on 127.0.0.1 and ports of their own) runs a 2-worker training with
``scaling.max_failures=1``. Each node has 2 logical CPUs (Ray wants whole numbers; the machine's 2 cores are
shared by both) and each worker asks for 1.5, so each node holds exactly one worker, and 0.5 CPU for Ray
Data's decode tasks. After step 24 (the checkpoint is at step 20) the
second node is killed with its raylet, object store and worker (no graceful shutdown); a fresh node joins,
the run's worker group starts again and resumes from step 20. Then an uninterrupted run of the same config on
the same layout gives the reference. ``OUT/result.json`` says what happened.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

from raysemi.ray.train import train
from raysemi.tracking import read_metrics
from tests.conftest import fast_config

NODE = {"num_cpus": 2, "node_ip_address": "127.0.0.1", "object_store_memory": 150 * 1024**2}
KILL_AFTER_STEP = 24


def kill_second_node_after(cluster: Cluster, node, run_dir: Path, result: dict) -> threading.Thread:
    """A thread that kills ``node`` (SIGKILL of its processes) once the log reaches KILL_AFTER_STEP, then adds
    a fresh node of the same size; ``result`` gets the log at the kill and the times."""

    def watch() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            steps = [r["step"] for r in read_metrics(run_dir)] if (run_dir / "metrics.jsonl").is_file() else []
            if steps and steps[-1] >= KILL_AFTER_STEP:
                result["records_at_kill"] = read_metrics(run_dir)
                result["killed_at"] = time.time()
                cluster.remove_node(node, allow_graceful=False)
                cluster.add_node(**NODE)
                result["replaced_at"] = time.time()
                return
            time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def main(data_root: Path, out: Path) -> None:
    cluster = Cluster(initialize_head=True, head_node_args={**NODE, "include_dashboard": False})
    second = cluster.add_node(**NODE)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=True, logging_level="warning")
    overrides = ["scaling.num_workers=2", "scaling.cpus_per_worker=1.5", "scaling.max_failures=1",
                 f"scaling.address={cluster.address}", "train.steps=40", "train.checkpoint_every=20",
                 "train.log_every=4", "train.eval_every=0"]
    result: dict = {"nodes": len(ray.nodes())}
    try:
        started = time.time()
        watcher = kill_second_node_after(cluster, second, out / "run", result)
        result["summary"] = train(fast_config(data_root, out / "run", *overrides))
        result["seconds"] = time.time() - started
        watcher.join(timeout=1)
        started = time.time()
        result["reference"] = train(fast_config(data_root, out / "reference", *overrides))
        result["reference_seconds"] = time.time() - started
    finally:
        (out / "result.json").write_text(json.dumps(result, default=str))
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
