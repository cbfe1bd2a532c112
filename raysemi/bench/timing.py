"""Step timing: a method's training step on batches held in memory, so that a time is compute alone.

Ways to run a step and to time it:

- :class:`PlainStep` (built by :func:`plain_step`): one step as a plain PyTorch loop runs it, with no engine:
  ``training_step``, backward, optimizer step, on a batch prepared once.
- :func:`engine_seconds_per_step` and :func:`engine_alternating`: the engine's own loop
  (:class:`raysemi.engine.loop.TrainingRun`, as local mode runs it, without Ray) fed the same batch over and over.
- :func:`seconds_per_call` times a stretch of calls; :func:`alternate` times two steps in turn (one of A, one
  of B, repeated), so that on a machine whose load swings each pair sees the same load, and
  :func:`paired_statistics` summarises the pairs (medians, and the median, least and greatest ratio B / A).
- :func:`step_flops` counts a step's work instead of timing it.

This module is the one place outside ``raysemi/engine`` and ``raysemi/ray`` that builds the loop's pieces
(:class:`~raysemi.engine.loop.WorkerEnv`, :func:`~raysemi.engine.loop.prepare_batch`) itself.
"""

from __future__ import annotations

import itertools
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from raysemi.config import Config
from raysemi.data.dataset import DatasetSource, open_dataset
from raysemi.data.streams import stream_decoder, stream_records
from raysemi.data.transforms import TrainAugment
from raysemi.engine.loop import RawBatch, RunInfo, TrainingRun, WorkerEnv, prepare_batch, set_torch_threads
from raysemi.engine.optim import build_optimizer
from raysemi.methods import Method, build_method

Clock = Callable[[], float]
Step = Callable[[], Any]
Batches = dict[str, RawBatch]  # stream name → one batch of it
CPU = torch.device("cpu")


def in_memory_batches(cfg: Config, method: Method) -> tuple[Batches, DatasetSource]:
    """One decoded batch per stream of ``method``, as the data pipeline hands it to the loop (uint8 ``(N, 3, H,
    W)`` images, int64-able labels), and the dataset it came from. The records and their augmentation are the
    first batch that a run of ``cfg`` draws (seeded by ``run.seed``)."""
    source = open_dataset(cfg.data)
    augment = TrainAugment.from_config(cfg.data, source.classes.ignore_index)
    batches = {}
    for stream, spec in method.streams().items():
        records = stream_records(source, spec, 1, 0, cfg.run.seed, stream)
        decode = stream_decoder(spec, source.reader.spec, str(source.root), augment)
        raw = decode({key: np.array([r[key] for r in records]) for key in records[0]})
        batches[stream] = {k: torch.from_numpy(v) for k, v in raw.items()}
    return batches, source


@dataclass
class PlainStep:
    """One training step of ``method`` as a plain PyTorch loop runs it: its loss on ``batch`` (every stream
    prepared on the device), backward, the optimizer step. ``step`` is the step number ``training_step`` sees
    (mid-run, so that ramped-up losses are at full weight). Call it to run one step."""

    method: Method
    models: dict[str, nn.Module]
    batch: dict[str, dict[str, torch.Tensor]]
    optimizer: torch.optim.Optimizer
    step: int

    def __call__(self) -> None:
        loss = self.method.training_step(self.models, self.batch, self.step)["loss"]
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    @property
    def images(self) -> int:
        """Images one step reads, over every stream."""
        return sum(len(b["image"]) for b in self.batch.values())


def plain_step(cfg: Config, device: torch.device = CPU,
               memory_format: torch.memory_format = torch.contiguous_format) -> PlainStep:
    """A :class:`PlainStep` for ``cfg``: its method's models (seeded by ``run.seed``) and optimizer on
    ``device`` in ``memory_format``, its first batch of every stream held in memory. Sets the torch threads to
    ``train.torch_threads``."""
    set_torch_threads(cfg, 1)
    method = build_method(cfg)
    raw, source = in_memory_batches(cfg, method)
    views = {stream: spec.view for stream, spec in method.streams().items()}
    batch = {stream: prepare_batch(b, device, memory_format, views[stream]) for stream, b in raw.items()}
    torch.manual_seed(cfg.run.seed)
    models = {name: model.to(device, memory_format=memory_format).train()
              for name, model in method.build_models(source.classes.num_classes).items()}
    optimizer, _ = build_optimizer(models, cfg.optim, cfg.train.steps)
    return PlainStep(method, models, batch, optimizer, cfg.train.steps // 2)


def step_flops(step: Step) -> int:
    """The floating-point operations of one call of ``step`` (forward, backward and optimizer step) that
    :class:`torch.utils.flop_counter.FlopCounterMode` counts: matrix products and convolutions, not elementwise
    work. The call trains as any other (it can stand for a warm-up call). A machine-independent measure of a
    step's work: a time ratio read beside it shows how well the machine runs each step's kernels."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def timed(step: Step, clock: Clock = time.perf_counter, device: torch.device | None = None) -> float:
    """Seconds one call of ``step`` takes by ``clock`` (on CUDA, until the device has finished its work)."""
    began = clock()
    step()
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
    return clock() - began


def seconds_per_call(step: Step, calls: int, warmup: int = 0, clock: Clock = time.perf_counter,
                     device: torch.device | None = None) -> list[float]:
    """Seconds of each of ``calls`` calls of ``step``, after ``warmup`` calls that are not kept."""
    seconds = [timed(step, clock, device) for _ in range(warmup + calls)]
    return seconds[warmup:]


def alternate(step_a: Step, step_b: Step, pairs: int, warmup: int = 0, clock: Clock = time.perf_counter,
              device: torch.device | None = None) -> list[tuple[float, float]]:
    """Call A, then B, ``warmup + pairs`` times (A B A B ...); the seconds ``(a, b)`` of each pair after the
    first ``warmup`` pairs."""
    seconds = [(timed(step_a, clock, device), timed(step_b, clock, device)) for _ in range(warmup + pairs)]
    return seconds[warmup:]


def paired_statistics(pairs: list[tuple[float, float]]) -> dict[str, float | int]:
    """``a_s`` and ``b_s``: the median seconds of each side; ``ratio``, ``ratio_min``, ``ratio_max``: the median,
    least and greatest of the per-pair ratios b / a; ``pairs``: how many. The median of ratios, not the ratio of
    medians: each ratio compares two steps that saw the same load."""
    if not pairs:
        raise ValueError("paired_statistics: no pairs (more steps than warm-up steps are needed)")
    ratios = [b / a for a, b in pairs]
    return {"a_s": statistics.median(a for a, _ in pairs), "b_s": statistics.median(b for _, b in pairs),
            "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "pairs": len(pairs)}


def plain_images_per_s(cfg: Config, steps: int, warmup: int = 5) -> float:
    """Images per second of a plain PyTorch loop on ``cfg``'s model and in-memory batches (CPU): the images of
    one step over the median seconds of ``steps`` steps after ``warmup``."""
    step = plain_step(cfg)
    return step.images / statistics.median(seconds_per_call(step, steps, warmup))


def engine_seconds_per_step(cfg: Config, device: torch.device, warmup: int) -> float:
    """Seconds per step of the engine's loop on ``cfg`` over in-memory batches: ``cfg.train.steps`` steps,
    logged every ``warmup`` steps; the mean over the logged intervals after the first (which holds the warm-up,
    model building and the start-up probes) of each interval's seconds per step."""
    cfg = _with_train(cfg, log_every=warmup)
    batches, source = in_memory_batches(cfg, build_method(cfg))
    reports: list[dict[str, Any]] = []
    _fit(cfg, source, device, {stream: itertools.repeat(batch) for stream, batch in batches.items()},
         _val_batch(batches), reports.append)
    return mean_seconds_per_step(reports, warmup)


def mean_seconds_per_step(reports: list[dict[str, Any]], warmup: int) -> float:
    """The mean over the loop's reports after step ``warmup`` of each one's seconds per step (``1 /
    steps_per_s``, the rate over its logging interval)."""
    timed_reports = [r for r in reports if r["step"] > warmup]
    if not timed_reports:
        raise ValueError(f"no report after step {warmup}: the run needs more steps than its warm-up")
    return statistics.fmean(1 / r["steps_per_s"] for r in timed_reports)


def engine_alternating(cfg: Config, other: Step, warmup: int, clock: Clock = time.perf_counter,
                       ) -> list[tuple[float, float]]:
    """The engine's loop on ``cfg`` (CPU, in-memory batches) with ``other`` called before each batch it is
    handed, so engine steps and ``other`` alternate; ``(other_s, engine_s)`` per pair after ``warmup`` pairs.

    An engine step is the time from handing the loop a batch to its next request (preparing the batch, the
    training step, logging; the watchdog's thread hand-off included); the last step has no next request, so
    ``cfg.train.steps - 1 - warmup`` pairs come back."""
    batches, source = in_memory_batches(cfg, build_method(cfg))
    pairs: list[tuple[float, float]] = []
    first, *rest = batches
    streams = {first: handing_over(batches[first], other, clock, pairs, set_torch_threads(cfg, 1))}
    streams |= {stream: itertools.repeat(batches[stream]) for stream in rest}
    _fit(cfg, source, CPU, streams, _val_batch(batches), lambda report: None)
    return pairs[warmup:]


def handing_over(batch: RawBatch, other: Step, clock: Clock, pairs: list[tuple[float, float]],
                 threads: int) -> Iterator[RawBatch]:
    """An endless stream of ``batch`` that, on each request, first times one call of ``other``; from the second
    request on it appends ``(other_s, s)`` to ``pairs``: the call timed before the previous hand-over, and the
    seconds from that hand-over to this request. ``other`` runs on ``threads`` torch threads (the watchdog
    reads a stream in a helper thread of its own, whose OpenMP thread count is its own)."""
    torch.set_num_threads(threads)
    handed, other_s = None, 0.0
    while True:
        requested = clock()
        if handed is not None:
            pairs.append((other_s, requested - handed))
        other_s = timed(other, clock)
        handed = clock()
        yield batch


def _fit(cfg: Config, source: DatasetSource, device: torch.device, streams: dict[str, Iterator[RawBatch]],
         val: RawBatch, report: Callable[[dict[str, Any]], None]) -> None:
    """Train ``cfg`` with the engine's loop on ``streams`` in a run directory that is deleted afterwards."""
    set_torch_threads(cfg, 1)
    classes = source.classes
    env = WorkerEnv(rank=0, world_size=1, device=device, streams=streams, val_batches=lambda: [val], report=report)
    with tempfile.TemporaryDirectory(prefix="raysemi-timing-") as run_dir:
        info = RunInfo(Path(run_dir), tuple(classes.names), tuple(classes.palette), classes.ignore_index)
        TrainingRun(cfg, info, env).fit()


def _val_batch(batches: Batches) -> RawBatch:
    """The evaluation at the end of a timing run: the first stream's images and masks."""
    return {k: v for k, v in next(iter(batches.values())).items() if k in ("image", "mask")}


def _with_train(cfg: Config, **settings: Any) -> Config:
    return cfg.model_copy(update={"train": cfg.train.model_copy(update=settings)})
