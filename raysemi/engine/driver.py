"""The one training driver: a method's stages in turn, each checked, given its run directory and resumed or
trained by a backend.

A backend feeds batches to :class:`~raysemi.engine.loop.TrainingRun` and runs it:

- :class:`raysemi.ray.train.RayTrain`: Ray Data streams and a Ray Train ``TorchTrainer`` (N DDP workers, or
  the loop in this process with ``scaling.num_workers=0``); what the CLI, Tune trials and jobs use.
- :class:`raysemi.engine.plain.PlainTorch`: torch ``DataLoader`` processes and the loop in this process, no
  Ray at all (benchmarks side by side on one machine, ``gain.py --runner plain``).

Both plan the same records and decode them with the same functions, so a run directory written by one resumes
under the other. Everything a run does before its first step and after its last (config and data checks, the
run directory, a finished run's summary, the stages of a chained method) happens here, once.
"""

from __future__ import annotations

from typing import Any, Protocol

from raysemi.config import Config
from raysemi.engine.preflight import PreparedRun, prepare_run
from raysemi.engine.rundir import finished_summary, trained_summary
from raysemi.engine.stages import train_stages
from raysemi.methods import method_class
from raysemi.progress import say


class Backend(Protocol):
    """How a prepared run trains. ``tune_metric`` names the metric a Tune trial reports (None outside Tune)."""

    def check_chain(self, cfg: Config) -> None:
        """Refuse a chained method's config this backend cannot run (a one-line ``ConfigError``)."""

    def fit(self, cfg: Config, run: PreparedRun, tune_metric: str | None) -> None:
        """Train ``run`` from its ``start_step`` to ``cfg.train.steps``; the loop writes ``summary.json``."""

    def finished(self, cfg: Config, summary: dict[str, Any], tune_metric: str | None) -> None:
        """A run that had already trained its steps (a resumed sweep's trial still owes Tune its result)."""


def train(cfg: Config, backend: Backend, tune_metric: str | None = None) -> dict[str, Any]:
    """Train and evaluate ``cfg`` with ``backend``; return the summary (also in ``<run.dir>/summary.json``).
    A chained method runs its stages in turn (only the last reports ``tune_metric``); a finished run returns
    its summary without training."""
    stages = method_class(cfg.method).stages(cfg)
    if len(stages) > 1:
        backend.check_chain(cfg)
        return train_stages(cfg, stages, lambda stage_cfg, metric: train(stage_cfg, backend, metric), tune_metric)
    run = prepare_run(cfg)
    summary = finished_summary(run.run_dir, run.start_step, cfg.train.steps)
    if summary:
        say(f"{run.run_dir} already finished {cfg.train.steps} steps; nothing to do")
        backend.finished(cfg, summary, tune_metric)
        return summary
    backend.fit(cfg, run, tune_metric)
    return trained_summary(run.run_dir)
