"""Everything a run checks and sets up before it trains, without Ray.

:func:`prepare_run` opens the dataset, checks its files (:func:`raysemi.data.dataset.preflight`), the
method's own data needs and that each stream's global batch splits over the workers, checks that the run
directory's storage is writable and large enough, fetches the run from its mirror (``run.sync_to``) and
creates or reopens the run directory. Each problem ends the run here as a one-line error, before a run
directory exists; :mod:`raysemi.ray.train` then only starts Ray.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from raysemi.config import Config
from raysemi.data.dataset import DatasetSource, open_dataset, preflight
from raysemi.data.streams import batch_split_problem
from raysemi.engine.checkpoint import resolve_checkpoint
from raysemi.engine.rundir import open_run_dir
from raysemi.engine.storage import run_storage_bytes
from raysemi.errors import CheckpointError, ConfigError, DataError
from raysemi.methods import Method, build_method


class PreparedRun(NamedTuple):
    source: DatasetSource
    method: Method
    run_dir: Path
    start_step: int  # 0 for a new run, else the newest checkpoint's step


def prepare_run(cfg: Config) -> PreparedRun:
    """Check the config's paths, the data, the method's data needs and the storage, then create or reopen the
    run directory."""
    check_init_from(cfg)
    if cfg.model.weights and not Path(cfg.model.weights).expanduser().is_file():
        raise ConfigError(f"model.weights: {cfg.model.weights} not found (give a local state-dict file; nothing is "
                          "downloaded)")
    source = open_dataset(cfg.data)
    preflight(source, cfg.data)
    method = build_method(cfg)
    check_batch_split(method, cfg.method, cfg.scaling.num_workers)
    check_streams_have_images(source, method, cfg.method)
    method.check_data(source)  # the method's own data needs (e.g. SimFormer's classes and pair table)
    needed = run_storage_bytes(method.build_models(source.classes.num_classes), cfg.train.keep_checkpoints)
    run_dir, start_step = open_run_dir(cfg, source, needed)
    return PreparedRun(source, method, run_dir, start_step)


def check_batch_split(method: Method, method_name: str, num_workers: int) -> None:
    """Each stream's global batch splits evenly over the workers (:func:`raysemi.data.streams.worker_batch`).

    Config validation already checks ``train.batch_size`` and ``train.unlabeled_batch_size``; this catches a
    method whose stream derives another batch from them, before Ray Data and the workers would split it.

    Raises:
        ConfigError: one line naming the stream, its batch and the accepted values.
    """
    for name, spec in method.streams().items():
        problem = batch_split_problem(f"method {method_name}'s '{name}' stream batch_size", spec.batch_size,
                                      max(num_workers, 1))
        if problem:
            raise ConfigError(problem)


def check_init_from(cfg: Config) -> None:
    """``run.init_from`` names a checkpoint (or a run directory holding one) with its training state, before
    Ray starts or ``config.yaml`` is written: a typo there would otherwise end the run after Ray's start-up, in
    a run directory that then refuses the corrected path as a different config. (The config's other paths are
    checked here too: ``model.weights`` beside it, whatever the backbone, the data's by :func:`open_dataset` and
    :func:`preflight`, ``simformer.pairs_file`` by the method's ``check_data``.)

    Raises:
        CheckpointError: naming the key, the path and what would be accepted.
    """
    if not cfg.run.init_from:
        return
    try:
        checkpoint = resolve_checkpoint(cfg.run.init_from)
    except CheckpointError as exc:
        raise CheckpointError(f"run.init_from: {exc}") from None
    if not checkpoint.training_state.is_file():
        raise CheckpointError(f"run.init_from={cfg.run.init_from}: {checkpoint.training_state} not found (the "
                              "models' weights are read from it)")


def check_streams_have_images(source: DatasetSource, method: Method, method_name: str) -> None:
    """Each stream the method reads draws from at least one image.

    Raises:
        DataError: one line naming the stream and the data keys that would give it images.
    """
    for name, spec in method.streams().items():
        if not source.samples_for(spec.source):
            keys = UNLABELED_KEYS if spec.source == "unlabeled" else LABELED_KEYS
            raise DataError(f"method {method_name} reads the '{name}' stream, but the data's split leaves it no "
                            f"{spec.source.split('_')[0]} images; set {keys}")


UNLABELED_KEYS = "data.label_fraction below 1, data.label_count, data.unlabeled_split or data.unlabeled_dir"
LABELED_KEYS = "data.labeled_split to a file that lists labeled images, or data.label_fraction or data.label_count"
