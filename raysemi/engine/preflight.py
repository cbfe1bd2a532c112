"""Everything a run checks and sets up before it trains, without Ray.

:func:`prepare_run` opens the dataset, checks its files (:func:`raysemi.data.dataset.preflight`) and the
method's own data needs, checks that the run directory's storage is writable and large enough, fetches the
run from its mirror (``run.sync_to``) and creates or reopens the run directory. Each problem ends the run here
as a one-line error, before a run directory exists; :mod:`raysemi.ray.train` then only starts Ray.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from raysemi.config import Config
from raysemi.data.dataset import DatasetSource, open_dataset, preflight
from raysemi.engine.rundir import open_run_dir
from raysemi.engine.storage import run_storage_bytes
from raysemi.errors import DataError
from raysemi.methods import Method, build_method


class PreparedRun(NamedTuple):
    source: DatasetSource
    method: Method
    run_dir: Path
    start_step: int  # 0 for a new run, else the newest checkpoint's step


def prepare_run(cfg: Config) -> PreparedRun:
    """Check the data, the method's data needs and the storage, then create or reopen the run directory."""
    source = open_dataset(cfg.data)
    preflight(source, cfg.data)
    method = build_method(cfg)
    check_streams_have_images(source, method, cfg.method)
    method.check_data(source)  # the method's own data needs (e.g. SimFormer's classes and pair table)
    needed = run_storage_bytes(method.build_models(source.classes.num_classes), cfg.train.keep_checkpoints)
    run_dir, start_step = open_run_dir(cfg, source, needed)
    return PreparedRun(source, method, run_dir, start_step)


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
