"""Ray Tune over raysemi runs: hyperparameter searches (``raysemi tune``) and method × label-fraction × seed
grids (``raysemi sweep``).

One trial is one training run. The trial function is a light driver (a quarter of a CPU) that calls
:func:`raysemi.ray.train.train`, which launches the method's ``TorchTrainer`` (the Train V2 pattern); the
workers' reports reach Tune through ``TuneReportCallback`` (or directly, in local mode). Each trial's run
directory is ``<sweep>/trials/<trial name>``, so ``raysemi report <sweep>`` reads a sweep like any folder of
runs, and a resumed sweep resumes each unfinished trial from its own checkpoints.

Searches: Optuna proposes the values of the ``loguniform``/``uniform``/``randint``/``choice`` keys
(``OptunaSearch``) and ASHA stops poor trials at its rungs (``time_attr="step"``). Tune's searchers cannot
take grid keys, so every point of the ``grid`` keys gets its own Optuna search of ``samples`` trials,
stored as ``<sweep>/tune-<point>``.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import ray
import yaml
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.optuna import OptunaSearch

from raysemi.atomic import remove_staging_leftovers, staging_dir
from raysemi.config import Config
from raysemi.errors import ConfigError, find_user_error
from raysemi.progress import say
from raysemi.ray.train import init_ray, train
from raysemi.ray.uris import below
from raysemi.sweeps import Distribution, SweepSpec, apply_values

DRIVER_CPUS = 0.25  # a trial's own process: it drives its TorchTrainer (or, in local mode, trains)
LOCAL_DATA_CPUS = 1.0  # free CPUs a local-mode trial's streams need (measured: cps's two run on 1.75)
TRIALS_DIR = "trials"
# Tune saves the experiment's state (its trials, the searcher's) at most every 10 s by default. A driver killed
# in that window (SIGKILL, a lost head) leaves a state without the trials started since: a resumed search then
# asks its searcher for new ones and the started trial's folder and checkpoints are orphaned (measured by
# tests/test_killed_sweep.py with 10 s trials). Saving every second shrinks the window; the state is a few KB.
EXPERIMENT_STATE_PERIOD_S = "1"


@dataclass
class TrialOutcome:
    """One trial as the sweep summary lists it."""

    name: str
    params: dict[str, Any]
    status: str  # finished | stopped early | failed | not run
    steps: int  # the last step it reported (trial-steps spent)
    metric: float | None  # its last reported value of the sweep's metric
    error: str | None  # one line, for failed trials
    attempts: int = 1  # runs of the trial: a failed one was run 1 + retries times


# ---- trials ----


def run_trial(params: dict[str, Any], *, base: dict[str, Any], sweep_dir: str, metric: str,
              splits: dict | None = None) -> None:
    """Tune's trainable: train ``base`` with this trial's values, in ``<sweep_dir>/trials/<trial name>``."""
    name = tune.get_context().get_trial_name()
    values = grid_values(params, splits) if splits is not None else params
    cfg = trial_config(Config.model_validate(base), values, Path(sweep_dir), name)
    try:
        train(cfg, tune_metric=metric)
    except Exception as exc:
        user_error = find_user_error(exc)
        if user_error is not None:  # one line in Tune's error file and in the sweep summary
            raise RuntimeError(str(user_error)) from None
        raise


def trial_config(base: Config, values: dict[str, Any], sweep_dir: Path, name: str) -> Config:
    """``base`` with the trial's values, its own run directory (and mirror, with ``run.sync_to``), and (with
    W&B on) its W&B run grouped by sweep."""
    own = {"run.dir": str(sweep_dir / TRIALS_DIR / name), "run.name": name}
    if base.run.sync_to:  # each trial mirrors its run directory below the sweep's
        own["run.sync_to"] = below(base.run.sync_to, TRIALS_DIR, name)
    cfg = apply_values(base, {**values, **own})
    if cfg.tracking.wandb.group is None:
        cfg.tracking.wandb.group = sweep_dir.name
    return cfg


def trial_resources(cfg: Config) -> dict[str, float]:
    """What one trial's own process reserves: a quarter CPU (it drives the TorchTrainer, whose workers reserve
    their own CPUs and GPUs), and the GPU when it trains in local mode. Ray Data's decode tasks do not run in
    the trial's placement group but beside it, on CPUs left free: measured here, a trial whose placement
    group held all 2 CPUs (one for it, one "for data") never got its first batch. :func:`concurrency` keeps
    those CPUs free."""
    gpu = {"GPU": 1} if cfg.scaling.use_gpu and cfg.scaling.num_workers == 0 else {}
    return {"CPU": DRIVER_CPUS, **gpu}


def concurrency(cfg: Config, num_streams: int, cluster: dict[str, float]) -> int:
    """Trials at once on ``cluster`` (Ray's resource totals): each takes its driver, its training CPUs (the
    workers', or one CPU in local mode, where the driver trains) and one whole CPU per Ray Data stream (fewer
    starve the reads: see :func:`raysemi.ray.train.check_cpu_budget`), and its GPUs. At least one: Tune
    queues the rest."""
    s = cfg.scaling
    training_cpus = s.num_workers * s.cpus_per_worker if s.num_workers else 1.0
    per_trial_cpus = DRIVER_CPUS + training_cpus + max(num_streams, 1)
    limit = math.floor(cluster.get("CPU", 1.0) / per_trial_cpus)
    if s.use_gpu:
        limit = min(limit, math.floor(cluster.get("GPU", 0.0) / max(s.num_workers, 1)))
    return max(limit, 1)


def trial_needs(cfg: Config, num_streams: int) -> dict[str, float]:
    """The CPUs and GPUs one trial must find free to make progress. With workers: the driver's quarter CPU, the
    workers' CPUs and GPUs, and one whole CPU per data stream (see :func:`raysemi.ray.train.check_cpu_budget`;
    measured here, the default layout's one worker on 2 CPUs leaves its one stream 0.75 CPU and hangs). In
    local mode the streams are not held to whole CPUs (Ray Train reserves nothing there; measured, ``cps``'s
    two streams run on the 1.75 CPUs a 2-CPU machine leaves): the driver and one CPU for data."""
    s = cfg.scaling
    if s.num_workers == 0:
        return {"CPU": DRIVER_CPUS + LOCAL_DATA_CPUS, **({"GPU": 1.0} if s.use_gpu else {})}
    needs = {"CPU": DRIVER_CPUS + s.num_workers * s.cpus_per_worker + max(num_streams, 1)}
    return {**needs, **({"GPU": float(s.num_workers)} if s.use_gpu else {})}


def plan_layout(cfg: Config, cluster: dict[str, float]) -> Config:
    """``cfg`` if one of its trials fits ``cluster`` (Ray's resource totals), else ``cfg`` in local mode
    (``scaling.num_workers=0``, said in one line) if that fits; else a one-line :class:`ConfigError` naming
    what a trial needs and what the cluster has. Skipped for an explicit ``scaling.address``, whose cluster
    may autoscale (the watchdog, ``train.stall_timeout_s``, bounds the wait there)."""
    if cfg.scaling.address:
        return cfg
    streams = len(stream_names(cfg))
    needs = trial_needs(cfg, streams)
    has = {key: cluster.get(key, 0.0) for key in needs}
    if fits(needs, has):
        return cfg
    local = apply_values(cfg, {"scaling.num_workers": 0})
    local_needs = trial_needs(local, streams)
    layout = (f"a {cfg.method} trial with {cfg.scaling.num_workers} worker(s) x {cfg.scaling.cpus_per_worker:g} CPU "
              f"needs {amounts(needs)} ({DRIVER_CPUS:g} for its driver, the workers', 1 CPU per data stream) and "
              f"this Ray has {amounts(has)}")
    if cfg.scaling.num_workers and fits(local_needs, has):
        say(f"scaling: {layout}; the trials run in local mode (scaling.num_workers=0, {amounts(local_needs)})")
        return local
    raise ConfigError(f"scaling: {layout}, too few even in local mode ({amounts(local_needs)}); lower "
                      "scaling.num_workers or scaling.cpus_per_worker, or give Ray more CPUs/GPUs")


def fits(needs: dict[str, float], has: dict[str, float]) -> bool:
    return all(has.get(key, 0.0) >= amount for key, amount in needs.items())


def amounts(resources: dict[str, float]) -> str:
    return " + ".join(f"{amount:g} {key}" for key, amount in resources.items())


# ---- hyperparameter search (raysemi tune) ----


def tune_domain(distribution: Distribution):
    low_high = distribution.argument
    return {
        "loguniform": lambda: tune.loguniform(*low_high),
        "uniform": lambda: tune.uniform(*low_high),
        "randint": lambda: tune.randint(*low_high),
        "choice": lambda: tune.choice(low_high),
    }[distribution.kind]()


def grid_points(spec: SweepSpec) -> list[dict[str, Any]]:
    """Every combination of the grid keys' values (one empty point when there are none)."""
    grid = {key: d.grid for key, d in spec.space.items() if d.kind == "grid"}
    return [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]


def point_name(point: dict[str, Any]) -> str:
    """``tune`` or ``tune-<key>=<value>-...``: one stored Tune experiment per grid point."""
    parts = [f"{key.rsplit('.', 1)[-1]}={value}" for key, value in point.items()]
    return "-".join(["tune", *parts]).replace("/", "_").replace(" ", "")


def search(base: Config, spec: SweepSpec, sweep_dir: Path, resume: bool = False) -> list[TrialOutcome]:
    """``raysemi tune``: for each grid point, ``spec.samples`` Optuna trials under ASHA (or FIFO)."""
    files = {"base.yaml": base.model_dump(mode="json"), "sweep.yaml": spec.model_dump(mode="json")}
    sweep_dir = check_sweep_dir(sweep_dir, resume)
    init_ray(base)
    if spec.steps:
        base = apply_values(base, {"train.steps": spec.steps})
    points = grid_points(spec)
    widest = max((apply_values(base, p) for p in points), key=lambda c: len(stream_names(c)))
    workers = {"scaling.num_workers": plan_layout(widest, ray.cluster_resources()).scaling.num_workers}
    start_sweep(sweep_dir, resume, files)
    searched = {key: tune_domain(d) for key, d in spec.space.items() if d.kind != "grid"}
    outcomes = []
    for point in points:
        point_base = apply_values(base, {**point, **workers})
        tune_config = tune.TuneConfig(
            metric=spec.metric, mode=spec.mode, num_samples=spec.samples if searched else 1,
            search_alg=OptunaSearch(seed=base.run.seed) if searched else None,
            scheduler=scheduler(spec, base.train.steps),
            max_concurrent_trials=spec.concurrency or auto_concurrency(point_base), time_budget_s=spec.time_budget_s,
            trial_name_creator=search_trial_name, trial_dirname_creator=search_trial_name,
        )
        trainable = partial(run_trial, base=point_base.model_dump(mode="json"), sweep_dir=str(sweep_dir),
                            metric=spec.metric)
        outcomes += fit(point_name(point), trainable, point_base, searched, tune_config, sweep_dir, resume,
                        spec.retries, fixed=point)
    write_outcomes(sweep_dir, outcomes, spec.metric, spec.mode)
    return outcomes


def scheduler(spec: SweepSpec, max_steps: int):
    if spec.scheduler == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(time_attr="step", max_t=max_steps, grace_period=spec.grace_steps,
                         reduction_factor=spec.reduction_factor)


def search_trial_name(trial) -> str:
    return f"trial-{trial.trial_id}"


# ---- method × label fraction × seed grid (raysemi sweep) ----


def grid_sweep(base: Config, methods: list[str], fractions: list[str], seeds: list[int], sweep_dir: Path,
               resume: bool = False, retries: int = 0) -> list[TrialOutcome]:
    """``raysemi sweep``: every method at every label fraction and seed, each split written by the split
    tool once per (fraction, seed) under ``<sweep>/splits``; every trial runs to ``train.steps``."""
    files = {"base.yaml": base.model_dump(mode="json"),
             "grid.yaml": {"methods": methods, "fractions": fractions, "seeds": seeds}}
    sweep_dir = check_sweep_dir(sweep_dir, resume)
    init_ray(base)
    widest = max((apply_values(base, {"method": m}) for m in methods), key=lambda c: len(stream_names(c)))
    widest = plan_layout(widest, ray.cluster_resources())  # one layout for all trials: the widest decides
    base = apply_values(base, {"scaling.num_workers": widest.scaling.num_workers})
    start_sweep(sweep_dir, resume, files)
    splits = write_splits(base, fractions, seeds, sweep_dir / "splits")
    param_space = {"method": tune.grid_search(methods), "fraction": tune.grid_search(fractions),
                   "seed": tune.grid_search(seeds)}
    tune_config = tune.TuneConfig(
        metric="val_miou", mode="max", num_samples=1, scheduler=FIFOScheduler(),
        max_concurrent_trials=auto_concurrency(widest),
        trial_name_creator=grid_trial_name, trial_dirname_creator=grid_trial_name,
    )
    trainable = partial(run_trial, base=base.model_dump(mode="json"), sweep_dir=str(sweep_dir), metric="val_miou",
                        splits=splits)
    outcomes = fit("sweep", trainable, widest, param_space, tune_config, sweep_dir, resume, retries)
    write_outcomes(sweep_dir, outcomes, "val_miou", "max")
    return outcomes


def write_splits(base: Config, fractions: list[str], seeds: list[int], out: Path) -> dict[str, dict[str, Any]]:
    """One split per (fraction, seed), written once (a resumed sweep reuses them): ``{"1/16@0": values}``
    where values point ``data.labeled_split`` etc. at the files (tags or boxes too when ``base`` uses them)."""
    from raysemi.data.dataset import dataset_root, extra_unlabeled
    from raysemi.data.formats import open_format
    from raysemi.data.splits import parse_fraction, write_split

    reader = open_format(base.data.format, dataset_root(base.data), base.data.mask_encoding)
    extra = extra_unlabeled(reader, base.data.unlabeled_dir)
    splits = {}
    for fraction, seed in itertools.product(fractions, seeds):
        folder = out / f"{fraction.replace('/', '_')}-seed{seed}"
        tags, boxes = bool(base.data.unlabeled_tags), bool(base.data.unlabeled_boxes)
        if not folder.is_dir():  # written whole, then renamed: an interrupted write is redone on resume
            remove_staging_leftovers(out, folder.name)
            with staging_dir(folder) as staging:
                write_split(reader, base.data.train_split, parse_fraction(fraction), None, seed, staging, tags,
                            boxes, extra, base.data.protocol, base.data.boxes)
        values = {"data.labeled_split": str(folder / "labeled.txt"),
                  "data.unlabeled_split": str(folder / "unlabeled.txt"), "run.seed": seed}
        if tags:
            values["data.unlabeled_tags"] = str(folder / "unlabeled_tags.txt")
        if boxes:
            values["data.unlabeled_boxes"] = str(folder / "unlabeled_boxes.txt")
        splits[f"{fraction}@{seed}"] = values
    return splits


def grid_values(params: dict[str, Any], splits: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A grid trial's ``{method, fraction, seed}`` → the dotted config values it trains with."""
    return {"method": params["method"], **splits[f"{params['fraction']}@{params['seed']}"]}


def grid_trial_name(trial) -> str:
    c = trial.config
    return f"{c['method']}-{str(c['fraction']).replace('/', '_')}-seed{c['seed']}"


# ---- shared ----


def check_sweep_dir(sweep_dir: Path, resume: bool) -> Path:
    """The sweep folder (absolute: Tune stores by path). A new sweep needs an empty or new folder; ``--resume``
    needs one that holds a sweep."""
    sweep_dir = sweep_dir.expanduser().resolve()
    holds_sweep = (sweep_dir / "base.yaml").is_file()
    if resume and not holds_sweep:
        raise ConfigError(f"{sweep_dir}: no sweep to resume here (no base.yaml); drop --resume to start one")
    if not resume and sweep_dir.exists() and any(sweep_dir.iterdir()):
        hint = "pass --resume to continue it" if holds_sweep else "choose an empty or new folder"
        raise ConfigError(f"{sweep_dir} is not empty; {hint}")
    return sweep_dir


def start_sweep(sweep_dir: Path, resume: bool, files: dict[str, dict]) -> None:
    """Create a new sweep's folder (checked by :func:`check_sweep_dir`) with what it runs, for the reader."""
    if not resume:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        for name, content in files.items():
            (sweep_dir / name).write_text(yaml.safe_dump(content, sort_keys=False))


def fit(name: str, trainable, base: Config, param_space: dict, tune_config: tune.TuneConfig, sweep_dir: Path,
        resume: bool, retries: int, fixed: dict | None = None) -> list[TrialOutcome]:
    """Run (or, with ``resume``, restore and continue) one stored Tune experiment; its trials' outcomes."""
    trainable = tune.with_resources(trainable, trial_resources(base))
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", EXPERIMENT_STATE_PERIOD_S)
    path = sweep_dir / name
    if resume and tune.Tuner.can_restore(str(path)):
        say(f"resuming {path}")
        tuner = tune.Tuner.restore(str(path), trainable, resume_unfinished=True)
    else:
        tuner = tune.Tuner(trainable, param_space=param_space, tune_config=tune_config, run_config=tune.RunConfig(
            name=name, storage_path=str(sweep_dir), verbose=0,
            failure_config=tune.FailureConfig(max_failures=retries),
        ))
    results = tuner.fit()
    return [outcome(result, base.train.steps, tune_config.metric, fixed or {}) for result in results]


def outcome(result, total_steps: int, metric: str, fixed: dict[str, Any]) -> TrialOutcome:
    metrics = result.metrics or {}
    steps = int(metrics.get("step", 0))
    if result.error is not None:
        status = "failed"
    elif steps >= total_steps:
        status = "finished"
    else:
        status = "stopped early" if steps else "not run"
    failures = count_failures(Path(result.path))
    return TrialOutcome(
        name=Path(result.path).name,
        params={**fixed, **(result.config or {})},
        status=status,
        steps=steps,
        metric=metrics.get(metric),
        error=one_line(result.error) if result.error is not None else None,
        attempts=failures if status == "failed" else failures + 1,
    )


def count_failures(trial_path: Path) -> int:
    """How often a trial failed: Tune appends a ``Failure # N`` entry to the trial's ``error.txt`` each time."""
    error_file = trial_path / "error.txt"
    if not error_file.is_file():
        return 0
    return sum(line.startswith("Failure # ") for line in error_file.read_text().splitlines())


def one_line(error: BaseException) -> str:
    """The line that says what went wrong: the last non-empty line of the error's text, where Ray puts the
    original exception after its traceback."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def write_outcomes(sweep_dir: Path, outcomes: list[TrialOutcome], metric: str, mode: str) -> None:
    """``<sweep>/summary.json``: every trial, the best one, and the trial-steps spent."""
    scored = [o for o in outcomes if o.metric is not None]
    pick = max if mode == "max" else min
    summary = {
        "metric": metric,
        "mode": mode,
        "best": asdict(pick(scored, key=lambda o: o.metric)) if scored else None,
        "trial_steps": sum(o.steps for o in outcomes),
        "failed": sum(o.status == "failed" for o in outcomes),
        "trials": [asdict(o) for o in outcomes],
    }
    (sweep_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))


def auto_concurrency(cfg: Config) -> int:
    return concurrency(cfg, len(stream_names(cfg)), ray.cluster_resources())


def stream_names(cfg: Config) -> list[str]:
    from raysemi.methods import build_method

    return list(build_method(cfg).streams())
