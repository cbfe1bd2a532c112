"""The Ray side of sizing data loading (:mod:`raysemi.bench.ingest` holds the test images, the measuring and the
arithmetic): a local Ray pinned to a number of cores (:func:`start_ray`), raysemi's own training stream on a
folder of images (:func:`training_stream`), and simulated training workers that each read one shard of it
(:func:`start_consumers`, :func:`measure_scaleout`).

No training run imports this module (it is left out of the code version, :mod:`raysemi.bench.versions`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import ray
import ray.data

import raysemi.ray.data as ray_data
from raysemi.config import load_config
from raysemi.data.dataset import open_dataset
from raysemi.methods.registry import build_method

# Blocks of 2 batches instead of a run's 32 (raysemi.ray.data.BATCHES_PER_BLOCK): a run of thousands of steps has
# dozens of 32-batch blocks, a measurement of a few hundred images would have one (a single task, no overlap
# between CPUs).
BENCH_BATCHES_PER_BLOCK = 2

# A simulated training worker: (its shard's batches, step time in seconds) -> what it measured.
ConsumeFn = Callable[[Iterable[Any], float], dict]


def start_ray(cpus: int) -> None:
    """A fresh local Ray with ``cpus`` CPUs, pinned (with everything it starts) to the first ``cpus`` cores, so
    "1 CPU" means one core and not two half-CPU tasks spread over two."""
    available = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, available[:cpus])
    # Idle workers stay up between runs, as they do through a long training run: otherwise Ray ends the
    # second half-CPU worker after each run and the next run pays for a new process importing torch.
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, logging_level="error",
             _system_config={"kill_idle_workers_interval_ms": 0})
    ray_data.configure_data_context()


def training_stream(data_format: str, root: Path, crop: int, local_batch: int, steps: int,
                    consumers: int = 1) -> ray.data.Dataset:
    """The ``labeled`` Ray Dataset that raysemi builds for a ``supervised`` run on the ``data_format`` dataset
    at ``root`` with ``data.crop_size=crop`` and ``consumers`` training workers of ``local_batch`` images each,
    for ``steps`` steps, in blocks of :data:`BENCH_BATCHES_PER_BLOCK` batches."""
    cfg = load_config(None, [f"data.format={data_format}", f"data.root={root}", f"data.crop_size=[{crop},{crop}]",
                             f"train.batch_size={local_batch * consumers}",
                             f"train.unlabeled_batch_size={local_batch * consumers}", f"train.steps={steps}",
                             f"scaling.num_workers={consumers}", "method=supervised"])
    return ray_data.build_datasets(cfg, open_dataset(cfg.data), build_method(cfg).streams(), 0,
                                   batches_per_block=BENCH_BATCHES_PER_BLOCK)["labeled"]


class Consumer:
    """One simulated training worker (a Ray actor, kept across measurements so that its start-up and imports
    are paid once): ``consume`` of its shard, read as raysemi's training loop reads."""

    def __init__(self, consume: ConsumeFn) -> None:
        self.consume = consume

    def run(self, shard: Any, local_batch: int, step_s: float) -> dict:
        return self.consume(shard.iter_torch_batches(batch_size=local_batch, drop_last=True, prefetch_batches=4),
                            step_s)


def start_consumers(count: int, consume: ConsumeFn) -> list:
    """``count`` :class:`Consumer` actors that reserve no CPU (consumers holding CPUs would starve the decode
    tasks: on 2 CPUs a streaming read then hangs), each simulating a worker with ``consume`` (a module-level
    function, such as :func:`raysemi.bench.ingest.consume`)."""
    return [ray.remote(num_cpus=0)(Consumer).remote(consume) for _ in range(count)]


def measure_scaleout(dataset: ray.data.Dataset, consumers: list, local_batch: int, step_s: float) -> dict:
    """Each of the ``consumers`` actors reads one part of ``dataset.streaming_split(len(consumers), equal=True)``
    (what ``ray.train.get_dataset_shard`` hands N workers) and sleeps ``step_s`` per batch of ``local_batch``:
    the fraction of their time spent waiting for data, the images/s they received together (after the first
    batch), the longest first wait (s), the fewest steps one of them took, and the machine's load average."""
    shards = dataset.streaming_split(len(consumers), equal=True)
    results = ray.get([actor.run.remote(shard, local_batch, step_s) for actor, shard in zip(consumers, shards)])
    wait = sum(r["wait_s"] for r in results)
    seconds = sum(r["seconds"] for r in results)
    delivered = sum(r["steps"] - 1 for r in results) * local_batch / max(r["seconds"] for r in results)
    return {"consumers": len(consumers), "step_s": step_s, "local_batch": local_batch,
            "wait_fraction": round(wait / seconds, 4), "delivered_images_per_s": round(delivered, 2),
            "first_wait_s": round(max(r["first_wait_s"] for r in results), 2),
            "steps_per_consumer": min(r["steps"] for r in results),
            "load_average": round(os.getloadavg()[0], 2)}
