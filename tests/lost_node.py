"""The driver of ``tests/test_lost_node.py``, run in a process of its own (it joins a Ray cluster of its own,
which a test session's local Ray would be in the way of): ``python -m tests.lost_node DATA_ROOT OUT``.

A 2-node Ray cluster on this machine: ``ray start --head`` and a second ``ray start --address``, each a raylet
with its own object store and 2 logical CPUs (Ray wants whole numbers; the machine's cores are shared), their
own ports and temp dir, the head on ``--node-ip-address=127.0.0.1``. A 2-worker training with
``scaling.max_failures=1`` asks 1.5 CPUs a worker, so each node holds exactly one worker and 0.5 CPU for Ray
Data's decode tasks. After step 24 (the checkpoint is at step 20) the second node's processes (raylet, object
store, its worker) are killed with SIGKILL; a fresh node joins, Ray Train starts the worker group again and it
resumes from step 20. Then an uninterrupted run of the same config on the same layout gives the reference.
``OUT/result.json`` says what happened, with timings.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import ray

from raysemi.ray.train import train
from raysemi.tracking import read_metrics
from tests.conftest import fast_config

KILL_AFTER_STEP = 24
RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_node(*args: str) -> subprocess.Popen:
    """``ray start --block`` (its processes stay its children, so exactly they can be killed)."""
    return subprocess.Popen([RAY, "start", "--block", "--node-ip-address=127.0.0.1", "--num-cpus=2",
                             "--object-store-memory=150000000", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def kill_node(node: subprocess.Popen) -> None:
    """SIGKILL the node's ``ray start`` and every process under it; wait until they are gone."""
    try:
        processes = [psutil.Process(node.pid), *psutil.Process(node.pid).children(recursive=True)]
    except psutil.NoSuchProcess:  # killed before (the lost node) and reaped
        return
    for process in processes:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(processes, timeout=30)


def port_open(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def alive_nodes() -> int:
    return sum(node["Alive"] for node in ray.nodes())


def wait_for(condition, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {seconds} s for {condition.__name__}")
        time.sleep(0.5)


def kill_second_node_after(second: subprocess.Popen, address: str, run_dir: Path, result: dict,
                           nodes: list[subprocess.Popen]) -> threading.Thread:
    """A thread that kills ``second`` once the log reaches KILL_AFTER_STEP, then starts a fresh node; ``result``
    gets the log at the kill and the times."""

    def watch() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            steps = [r["step"] for r in read_metrics(run_dir)] if (run_dir / "metrics.jsonl").is_file() else []
            if steps and steps[-1] >= KILL_AFTER_STEP:
                result["records_at_kill"] = read_metrics(run_dir)
                result["killed_at"] = time.time()
                kill_node(second)
                nodes.remove(second)
                nodes.append(start_node(f"--address={address}"))
                result["replaced_at"] = time.time()
                return
            time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def main(data_root: Path, out: Path) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    temp_dir = tempfile.mkdtemp(prefix="rs-lost-", dir="/tmp")  # short: Ray's socket paths live under it
    nodes = [start_node("--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp_dir}",
                        f"--ray-client-server-port={free_port()}")]
    result: dict = {}
    try:
        wait_for(lambda: port_open(port), 120)
        ray.init(address=address, log_to_driver=True, logging_level="warning")
        second = start_node(f"--address={address}")
        nodes.append(second)
        wait_for(lambda: alive_nodes() == 2, 120)
        result["nodes"] = alive_nodes()
        overrides = ["scaling.num_workers=2", "scaling.cpus_per_worker=1.5", "scaling.max_failures=1",
                     f"scaling.address={address}", "train.steps=40", "train.checkpoint_every=20",
                     "train.log_every=4", "train.eval_every=0"]
        started = time.time()
        watcher = kill_second_node_after(second, address, out / "run", result, nodes)
        result["summary"] = train(fast_config(data_root, out / "run", *overrides))
        result["seconds"] = time.time() - started
        watcher.join(timeout=1)
        wait_for(lambda: alive_nodes() == 2, 120)
        started = time.time()
        result["reference"] = train(fast_config(data_root, out / "reference", *overrides))
        result["reference_seconds"] = time.time() - started
    finally:
        (out / "result.json").write_text(json.dumps(result, default=str))
        ray.shutdown()
        for node in reversed(nodes):
            kill_node(node)
        shutil.rmtree(temp_dir, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
    main(Path(sys.argv[1]), Path(sys.argv[2]))
