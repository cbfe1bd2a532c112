"""The Ray backend of the one driver (:mod:`raysemi.engine.driver`, which does the checks, the run directory,
stages and resume): Ray Data streams and a Ray Train V2 ``TorchTrainer``.

``scaling.num_workers=0`` runs the loop in this process (Ray Train's local mode; tests use it);
``num_workers>=1`` starts that many DDP workers (gloo on CPU, nccl on GPU). Checkpoints live in the run
directory, written by rank 0, so local mode, multi-worker runs and re-invoked commands resume the same way;
on a multi-node cluster ``run.dir`` must be on storage every node sees.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch
import ray.tune
import torch
from ray.train import FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from ray.train.v2._internal.constants import DEFAULT_WORKER_GROUP_START_TIMEOUT_S, WORKER_GROUP_START_TIMEOUT_S_ENV_VAR
from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError
from ray.tune.integration.ray_train import TuneReportCallback

from raysemi.config import Config
from raysemi.data.streams import StreamSpec
from raysemi.engine import driver
from raysemi.engine.loop import RunInfo, TrainingRun, WorkerEnv, set_torch_threads
from raysemi.engine.preflight import PreparedRun
from raysemi.engine.watchdog import StallError
from raysemi.errors import ConfigError, find_user_error
from raysemi.methods import build_method
from raysemi.ray.console import quiet_token_auth_warning, route_ray_output
from raysemi.ray.data import build_datasets


def train(cfg: Config, tune_metric: str | None = None) -> dict[str, Any]:
    """Train and evaluate with Ray (the CLI's, Tune trials' and jobs' way): :func:`raysemi.engine.driver.train`
    with :class:`RayTrain`; return the summary (also in ``<run.dir>/summary.json``).

    ``tune_metric`` (inside a Tune trial): the workers' reports that carry this metric also go to Tune, for
    its schedulers and searchers (Optuna reads the metric from every result it gets); a multi-stage method
    reports its last stage only, whose steps count from 0 again.
    """
    return driver.train(cfg, RayTrain(), tune_metric)


class RayTrain:
    """The Ray backend of :func:`raysemi.engine.driver.train`: Ray Data streams into a Ray Train
    ``TorchTrainer`` (``scaling.num_workers`` DDP workers, or the loop in this process for 0)."""

    def check_chain(self, cfg: Config) -> None:
        if cfg.run.sync_to:
            raise ConfigError(f"run.sync_to: method {cfg.method} chains stages that read each other's files; give "
                              "it a run.dir every node mounts instead (see docs/cluster.md)")

    def finished(self, cfg: Config, summary: dict[str, Any], tune_metric: str | None) -> None:
        if tune_metric:  # a resumed sweep's trial that had finished: Tune still needs its result
            report_with(tune_metric, {"step": cfg.train.steps, "val_miou": summary["miou"]})

    def fit(self, cfg: Config, run: PreparedRun, tune_metric: str | None) -> None:
        source, method, run_dir = run.source, run.method, run.run_dir
        quiet_token_auth_warning(run_dir)
        init_ray(cfg)
        route_ray_output(run_dir)  # Ray's start-up and info lines to <run_dir>/ray.log, step lines bare
        streams = method.streams()
        check_cpu_budget(cfg, len(streams))
        loop_config = {
            "config": cfg.model_dump(mode="json"),
            "run_dir": str(run_dir),
            "classes": list(source.classes.names),
            "palette": [list(c) for c in source.classes.palette],
            "ignore_index": source.classes.ignore_index,
            "plan_start_step": run.start_step,
        }
        datasets = build_datasets(cfg, source, streams, run.start_step, method.eval_needs_boxes)
        if tune_metric and cfg.scaling.num_workers == 0:
            train_in_tune_trial(loop_config, datasets, tune_metric)
        else:
            fit_trainer(cfg, run_dir, loop_config, datasets, tune_metric)


def fit_trainer(cfg: Config, run_dir: Path, loop_config: dict[str, Any], datasets: dict,
                tune_metric: str | None) -> None:
    """The TorchTrainer run: ``scaling.num_workers`` DDP workers, or the loop in this process for 0."""
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=scaling_config(cfg),
        run_config=RunConfig(
            name=run_dir.name,
            storage_path=str(run_dir / "ray"),
            failure_config=FailureConfig(max_failures=cfg.scaling.max_failures,
                                         controller_failure_limit=worker_group_start_retries(cfg)),
            callbacks=[TuneReportWith(tune_metric)] if tune_metric else None,
        ),
        datasets=datasets,
    )
    try:
        trainer.fit()
    except Exception as exc:
        if unplaced_worker_group(exc):
            raise worker_group_stall(cfg) from None
        user_error = find_user_error(exc)
        if user_error is not None:
            raise user_error from None
        raise


def worker_group_start_timeout_s() -> float:
    """How long Ray Train waits for a worker group's placement before it tries again (Ray's own setting)."""
    return float(os.environ.get(WORKER_GROUP_START_TIMEOUT_S_ENV_VAR, DEFAULT_WORKER_GROUP_START_TIMEOUT_S))


def worker_group_start_retries(cfg: Config) -> int:
    """The watchdog on the driver's side: Ray Train retries a worker group it cannot place without end (its
    ``controller_failure_limit`` is -1), so a cluster whose CPUs or GPUs are taken by other jobs would keep the
    run waiting forever. Allow the tries that fit in ``train.stall_timeout_s`` (at least one), or -1 when off:
    600 s with Ray's 60 s a try is 10 tries, 9 retries."""
    timeout = cfg.train.stall_timeout_s
    if timeout == 0:
        return -1
    return max(math.ceil(timeout / worker_group_start_timeout_s()) - 1, 0)


def unplaced_worker_group(exc: BaseException) -> bool:
    """Whether ``exc`` is Ray Train giving up on placing the worker group."""
    return isinstance(getattr(exc, "controller_failure", None), WorkerGroupStartupTimeoutError)


def worker_group_stall(cfg: Config) -> StallError:
    s = cfg.scaling
    each = f"{s.cpus_per_worker:g} CPU" + (" + 1 GPU" if s.use_gpu else "")
    waited = (worker_group_start_retries(cfg) + 1) * worker_group_start_timeout_s()
    free = {k: round(v, 2) for k, v in ray.available_resources().items() if k in ("CPU", "GPU")}
    return StallError(
        f"train.stall_timeout_s={cfg.train.stall_timeout_s:g}: waited {waited:g} s for a worker group of "
        f"{s.num_workers} workers x ({each}) that this Ray could not place (free now: {free}); free those "
        "resources, lower scaling.num_workers, or use scaling.num_workers=0; the same command resumes from the "
        "newest checkpoint")


def train_in_tune_trial(loop_config: dict[str, Any], datasets: dict, tune_metric: str) -> None:
    """``scaling.num_workers=0`` inside a Tune trial: the loop runs in the trial's process, reading the datasets
    directly and reporting to Tune (Train's local mode refuses Train's context APIs inside Tune)."""
    device = torch.device("cuda" if loop_config["config"]["scaling"]["use_gpu"] and torch.cuda.is_available()
                          else "cpu")
    run_training(loop_config, rank=0, world_size=1, local_world_size=1, device=device,
                 shard=datasets.__getitem__, report=partial(report_with, tune_metric))


def report_with(metric: str, metrics: dict[str, Any]) -> None:
    """Hand ``metrics`` to Tune if they carry ``metric``."""
    if metric in metrics:
        ray.tune.report(metrics)


class TuneReportWith(TuneReportCallback):
    """The workers' reports that carry ``metric``, to Tune (rank 0's, as Ray's own callback does)."""

    def __init__(self, metric: str):
        super().__init__()
        self.metric = metric

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        if self.metric in metrics[0]:
            super().after_report(run_context, metrics, checkpoint)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker (or in-process in local mode)."""
    context = ray.train.get_context()
    run_training(loop_config, rank=context.get_world_rank(), world_size=context.get_world_size(),
                 local_world_size=context.get_local_world_size(), device=ray.train.torch.get_device(),
                 shard=ray.train.get_dataset_shard, report=ray.train.report)


def run_training(loop_config: dict[str, Any], *, rank: int, world_size: int, local_world_size: int,
                 device: torch.device, shard: Callable[[str], Any], report: Callable[[dict], None]) -> None:
    """One worker's training: ``shard(name)`` gives its part of a dataset, ``report`` takes its metrics."""
    silence_report_lines()
    cfg = Config.model_validate(loop_config["config"])
    set_torch_threads(cfg, local_world_size)
    val_shard = shard("val")
    with contextlib.ExitStack() as stack:
        env = WorkerEnv(
            rank=rank,
            world_size=world_size,
            device=device,
            streams=open_streams(stack, build_method(cfg).streams(), shard, world_size),
            val_batches=lambda: val_shard.iter_torch_batches(batch_size=cfg.eval.batch_size),
            report=report,
            plan_start_step=loop_config["plan_start_step"],
        )
        run = RunInfo(
            Path(loop_config["run_dir"]),
            tuple(loop_config["classes"]),
            tuple(tuple(c) for c in loop_config["palette"]),
            loop_config["ignore_index"],
        )
        TrainingRun(cfg, run, env).fit()


def open_streams(stack: contextlib.ExitStack, specs: dict[str, StreamSpec], shard: Callable[[str], Any],
                 world_size: int) -> dict[str, Iterator[dict[str, torch.Tensor]]]:
    """Each training stream's batch iterator over this worker's shard, closed when ``stack`` closes.

    Closing them when training ends or fails, while Ray is still up, shuts their executors down at once; an
    iterator left to the garbage collector would flush its stats to an actor after ``ray.shutdown`` and log a
    traceback.
    """
    return {
        name: stack.enter_context(contextlib.closing(iter(shard(name).iter_torch_batches(
            batch_size=spec.per_worker_batch(world_size), drop_last=True, prefetch_batches=4
        ))))
        for name, spec in specs.items()
    }


# Ray Train V2's controller collects the workers' reports when it polls them, every
# RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s by default), and each worker's result queue holds one report: a worker
# reporting more often waits in ``ray.train.report`` for the next poll (about 1 s a report was measured at
# ``log_every=2`` with 2 workers). Polling every 0.1 s costs the controller a few actor calls a second, and a
# poll that misses the interval is only retried (a worker is declared dead after 10 minutes without an answer).
REPORT_POLL_INTERVAL_S = "0.1"


def silence_report_lines() -> None:
    """Drop Ray Train's INFO line per ``ray.train.report`` ("Reporting training result N: ..."): raysemi
    prints its own line per log step. Ray names that logger by its file's path, not its module."""
    from ray.train.v2._internal.execution import context

    ray_logger = logging.getLogger(context.__file__)
    if not any(isinstance(f, _DropReportLines) for f in ray_logger.filters):
        ray_logger.addFilter(_DropReportLines())


class _DropReportLines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Reporting training result")


def init_ray(cfg: Config) -> None:
    """Join ``scaling.address`` (or ``RAY_ADDRESS``), else start a local Ray on this machine's resources.

    A Ray started here inherits this process's environment, so the report poll interval is set in it (unless
    the user set one); a cluster gets it from ``cluster/runtime_env.yaml``.
    """
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", REPORT_POLL_INTERVAL_S)
    ray.init(address=cfg.scaling.address, log_to_driver=True, logging_level="warning")


def scaling_config(cfg: Config) -> ScalingConfig:
    s = cfg.scaling
    resources = {"CPU": s.cpus_per_worker, **({"GPU": 1} if s.use_gpu else {})}
    if s.num_workers == 0:
        return ScalingConfig(num_workers=0)
    return ScalingConfig(num_workers=s.num_workers, use_gpu=s.use_gpu, resources_per_worker=resources)


def check_cpu_budget(cfg: Config, num_streams: int = 1) -> None:
    """Refuse a layout that leaves Ray Data too few CPUs: its decode tasks would wait forever.

    Ray Train reserves the workers' CPUs; the training streams' Ray Data executors share what is left in
    whole CPUs. Measured on a 2-CPU machine with Ray 2.60: one stream runs with 1 CPU left, but two streams
    (a semi-supervised method's labeled and unlabeled data) starve with 1 CPU left and the run hangs. So with
    workers, at least one whole CPU per stream must remain. Local mode (``num_workers=0``) reserves nothing
    for training and always passes. Skipped for an explicit ``scaling.address``: a cluster may autoscale past
    what it has now.
    """
    s = cfg.scaling
    if s.address or s.num_workers == 0:
        return
    total = ray.cluster_resources().get("CPU", 0)
    claimed = s.num_workers * s.cpus_per_worker
    needed = max(num_streams, 1)
    if claimed > total - needed:
        room = max((total - needed) / s.num_workers, 0)
        fix = f"lower scaling.cpus_per_worker to {room:g}" if room >= 0.25 else "lower scaling.num_workers"
        raise ConfigError(
            f"scaling: {s.num_workers} workers x {s.cpus_per_worker} CPUs leave less than {needed} of this Ray's "
            f"{total:g} CPUs for the {needed} data stream(s) of method {cfg.method}; {fix}, or use "
            "scaling.num_workers=0 (the loop in the driver)"
        )
