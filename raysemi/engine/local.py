"""Training without Ray: the same records, decode functions and loop as :mod:`raysemi.ray.train`, fed by torch
``DataLoader`` processes instead of Ray Data, in this process.

For a machine where Ray is not installed, or not wanted: a single accelerator box that runs many small
benchmark runs side by side (``experiments/benchmarks/gain.py --runner local``), where one Ray instance per run
would cost more than the run. One worker only (no DDP); a run directory written this way resumes under either
runner, because both plan the same records (:func:`raysemi.data.streams.stream_records`) and decode each
record with its own seed, so the batches are the same tensors (``tests/test_local_runner.py`` checks this
against Ray Data).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from raysemi.config import Config
from raysemi.data.pipeline import DecodeEvalRow, Record, val_records
from raysemi.data.streams import decode_format, stream_decoder, stream_records
from raysemi.data.transforms import TrainAugment
from raysemi.engine.loop import RawBatch, RunInfo, TrainingRun, WorkerEnv, say, set_torch_threads
from raysemi.engine.preflight import prepare_run
from raysemi.engine.rundir import finished_summary, trained_summary
from raysemi.engine.stages import train_stages
from raysemi.methods import method_class

PREFETCH_BATCHES = 4


class DecodedBatches(Dataset):
    """Batch ``i`` of a stream: records ``[i * batch_size, (i + 1) * batch_size)`` through ``decode`` (a Ray Data
    ``map_batches`` function, which takes and returns columns of numpy arrays). A trailing partial batch is
    dropped, as the Ray path's ``drop_last`` does."""

    def __init__(self, records: list[Record], batch_size: int, decode: Callable[[dict], dict]):
        self.records, self.batch_size, self.decode = records, batch_size, decode

    def __len__(self) -> int:
        return len(self.records) // self.batch_size

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        rows = self.records[index * self.batch_size:(index + 1) * self.batch_size]
        return self.decode({key: np.array([row[key] for row in rows]) for key in rows[0]})


class DecodedRows(Dataset):
    """Val row ``i`` through ``decode`` (a Ray Data ``map`` function)."""

    def __init__(self, records: list[Record], decode: Callable[[Record], Record]):
        self.records, self.decode = records, decode

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Record:
        return self.decode(self.records[index])


def default_device() -> torch.device:
    """CUDA when present (the loop then uses AMP and channels-last as ``train`` says), else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def train_local(cfg: Config, data_workers: int = 2, device: torch.device | None = None,
                torch_threads: int | None = None) -> dict[str, Any]:
    """Train and evaluate ``cfg`` in this process with ``data_workers`` decode processes (0: decode in this
    process); return the summary (also in ``<run.dir>/summary.json``). Chained methods run their stages in
    turn, as :func:`raysemi.ray.train.train` does; ``scaling`` is ignored.

    ``torch_threads`` replaces ``train.torch_threads`` (it changes no result): with decode processes beside
    it, a loop that keeps two intra-op threads on two busy cores ran 10x slower (OpenMP threads spinning).
    """
    stages = method_class(cfg.method).stages(cfg)
    if len(stages) > 1:
        return train_stages(cfg, stages, lambda stage_cfg, _metric: train_local(stage_cfg, data_workers, device,
                                                                                torch_threads))
    source, method, run_dir, start_step = prepare_run(cfg)
    summary = finished_summary(run_dir, start_step, cfg.train.steps)
    if summary:
        say(f"{run_dir} already finished {cfg.train.steps} steps; nothing to do")
        return summary
    if torch_threads is not None:
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"torch_threads": torch_threads})})
    set_torch_threads(cfg, 1)
    format_name = decode_format(cfg.data.format)
    augment = TrainAugment.from_config(cfg.data, source.classes.ignore_index)
    streams = {}
    for name, spec in method.streams().items():
        records = stream_records(source, spec, cfg.train.steps, start_step, cfg.run.seed, name)
        decode = stream_decoder(spec, format_name, str(source.root), augment)
        streams[name] = _batches(DecodedBatches(records, spec.per_worker_batch(1), decode), None, data_workers)
    val = DecodedRows(val_records(source.val, 1),
                      DecodeEvalRow(format_name, str(source.root),
                                    boxes_from_masks=cfg.data.boxes if method.eval_needs_boxes else None))
    env = WorkerEnv(rank=0, world_size=1, device=device or default_device(), streams=streams,
                    val_batches=lambda: _batches(val, cfg.eval.batch_size, data_workers),
                    report=lambda metrics: None, plan_start_step=start_step)
    info = RunInfo(run_dir, tuple(source.classes.names), tuple(tuple(c) for c in source.classes.palette),
                   source.classes.ignore_index)
    TrainingRun(cfg, info, env).fit()
    return trained_summary(run_dir)


def _batches(dataset: Dataset, batch_size: int | None, workers: int) -> Iterator[RawBatch]:
    """``dataset``'s items in order as tensors (``batch_size=None``: each item is already a batch).

    The decode processes end as the last item is handed over: the loop never asks past a stream's last batch,
    and the watchdog's thread keeps a stream's iterator referenced, so they would otherwise idle until this
    process exits (one more set per run of a ``gain.py --runner local`` invocation)."""
    # a generator of its own: each iterator draws a seed, which from torch's global one would change the
    # training's random numbers (an evaluation mid-run, or the lazy first iterator here) from the Ray path's
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        prefetch_factor=PREFETCH_BATCHES if workers else None, persistent_workers=False,
                        generator=torch.Generator())
    iterator = iter(loader)
    for remaining in range(len(loader), 0, -1):
        batch = next(iterator)
        if remaining == 1:
            del iterator  # shuts the decode processes down
        yield batch
