"""Ray Data streams for a run: one dataset per training stream of the method, plus ``val``.

Decoding and augmentation run in Ray Data tasks on CPU; the training workers receive ready crops through
``ray.train.get_dataset_shard`` and only compute.
"""

from __future__ import annotations

import ray
import ray.data

from raysemi.config import Config
from raysemi.data.dataset import DatasetSource
from raysemi.data.pipeline import DecodeEvalRow, DecodeTrainBatch, plan_records, val_records
from raysemi.data.transforms import TrainAugment
from raysemi.methods.base import StreamSpec


def configure_data_context() -> None:
    """Deterministic order (a resumed run replays the same sequence) and no progress-bar noise."""
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False


def build_datasets(
    cfg: Config, source: DatasetSource, streams: dict[str, StreamSpec], start_step: int
) -> dict[str, ray.data.Dataset]:
    """``{stream name: Dataset of augmented crops, "val": Dataset of full images}``."""
    configure_data_context()
    d = cfg.data
    augment = TrainAugment(tuple(d.crop_size), tuple(d.scale_range), d.hflip, d.color_jitter,
                           source.classes.ignore_index)
    decode = DecodeTrainBatch(_format_name(cfg), str(source.root), augment)
    workers = max(cfg.scaling.num_workers, 1)
    datasets = {}
    for name, spec in streams.items():
        samples = source.split.labeled if spec.source == "labeled" else source.split.unlabeled
        records = plan_records(samples, spec.batch_size, cfg.train.steps, start_step, cfg.run.seed, name)
        datasets[name] = ray.data.from_items(records).map_batches(
            decode, batch_size=max(spec.batch_size // workers, 1), batch_format="numpy"
        )
    datasets["val"] = ray.data.from_items(val_records(source.val, workers)).map(
        DecodeEvalRow(_format_name(cfg), str(source.root))
    )
    return datasets


def _format_name(cfg: Config) -> str:
    return "generic" if cfg.data.format == "synthetic" else cfg.data.format
