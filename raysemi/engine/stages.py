"""Chained runs: the stages a method declares (:meth:`raysemi.methods.base.Method.stages`), run in order.

Each stage is a run of its own in ``<run.dir>/<stage name>`` (a finished stage returns at once when the command
is repeated); a stage that needs pseudo-labels gets them from the previous stage's checkpoint first.
``<run.dir>/stages.json`` lists each stage's run directory, its iterations (``steps``) and the summary keys it
records; the chain's result is the last stage's summary. A chain's compute is the sum over its stages (what
``experiments/benchmarks/gain.py`` counts for a chained method), not its last stage's. Nothing here names a
method, and nothing imports ray: the caller hands in the function that trains one run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from raysemi.config import Config
from raysemi.data.dataset import open_dataset
from raysemi.engine.inference import load_eval_model
from raysemi.engine.pseudo_labels import write_pseudo_label_dataset
from raysemi.engine.rundir import write_json
from raysemi.errors import ConfigError
from raysemi.methods.base import Stage
from raysemi.progress import say

TrainOne = Callable[[Config, str | None], dict[str, Any]]


def train_stages(cfg: Config, stages: list[Stage], train_one: TrainOne, tune_metric: str | None = None) -> dict:
    """Run ``stages`` in order with ``train_one(stage config, tune metric)``; only the last stage reports
    ``tune_metric``. Writes ``<run.dir>/stages.json`` and returns the last stage's summary."""
    summaries: dict[str, dict[str, Any]] = {}
    for number, stage in enumerate(stages, 1):
        stage_cfg = stage.config
        if stage.pseudo_labels is not None:
            stage_cfg = with_pseudo_labels(stage, stages[number - 2].config)
        say(f"stage {stage.name}: {stage_cfg.run.dir}")
        summaries[stage.name] = train_one(stage_cfg, tune_metric if number == len(stages) else None)
    write_json(Path(cfg.run.dir) / "stages.json", {
        stage.name: {"run_dir": summaries[stage.name]["run_dir"], "steps": stage.config.train.steps,
                     **{key: summaries[stage.name][key] for key in stage.record}}
        for stage in stages
    })
    return summaries[stages[-1].name]


def with_pseudo_labels(stage: Stage, previous: Config) -> Config:
    """``stage``'s config once its pseudo-label dataset (at its ``data.root``) exists: written from the
    ``previous`` stage's newest checkpoint unless already there, and the previous stage's class groups set as
    ``eval.groups``."""
    loaded = load_eval_model(previous.run.dir)
    group = stage.pseudo_labels.group
    groups = loaded.class_groups or {}
    if group not in groups:
        raise ConfigError(f"stage {stage.name}: the previous stage ({previous.run.dir}) reports no class group "
                          f"{group!r} to pseudo-label (its groups: {sorted(groups)})")
    dataset = Path(stage.config.data.root)
    if not (dataset / "classes.json").is_file():
        say(f"writing pseudo-labels to {dataset}")
        write_pseudo_label_dataset(loaded, open_dataset(previous.data), list(groups[group]), dataset)
    stage_cfg = stage.config.model_copy(deep=True)
    stage_cfg.eval.groups = {name: list(classes) for name, classes in groups.items()}
    return stage_cfg
