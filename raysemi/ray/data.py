"""Ray Data streams for a run: one dataset per training stream of the method, plus ``val``.

Decoding and augmentation run in Ray Data tasks on CPU; the training workers receive ready crops through
``ray.train.get_dataset_shard`` and only compute.
"""

from __future__ import annotations

import ray
import ray.data

from raysemi.config import Config
from raysemi.data.dataset import DatasetSource
from raysemi.data.pipeline import DecodeEvalRow, val_records
from raysemi.data.streams import StreamSpec, stream_decoder, stream_records
from raysemi.data.transforms import TrainAugment

BATCHES_PER_BLOCK = 32
DECODE_CPUS = 0.5


def configure_data_context() -> None:
    """Deterministic order (a resumed run replays the same sequence) and no progress-bar noise."""
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False


def build_datasets(
    cfg: Config, source: DatasetSource, streams: dict[str, StreamSpec], start_step: int, eval_boxes: bool = False,
    batches_per_block: int = BATCHES_PER_BLOCK,
) -> dict[str, ray.data.Dataset]:
    """``{stream name: Dataset of augmented crops, "val": Dataset of full images}`` (with box rasters from the
    val masks when ``eval_boxes``); a training stream's blocks hold ``batches_per_block`` batches (a benchmark of
    a few hundred images asks fewer, so that its blocks spread over every CPU)."""
    configure_data_context()
    augment = TrainAugment.from_config(cfg.data, source.classes.ignore_index)
    workers = max(cfg.scaling.num_workers, 1)
    datasets = {}
    for name, spec in streams.items():
        records = stream_records(source, spec, cfg.train.steps, start_step, cfg.run.seed, name)
        local_batch = spec.per_worker_batch(workers)
        blocks = _num_blocks(records, local_batch, batches_per_block)
        decode = stream_decoder(spec, source.reader.spec, str(source.root), augment)
        datasets[name] = ray.data.from_items(records, override_num_blocks=blocks).map_batches(
            decode, batch_size=local_batch, batch_format="numpy", num_cpus=DECODE_CPUS
        )
    val = val_records(source.val, workers)
    datasets["val"] = ray.data.from_items(val, override_num_blocks=_num_blocks(val, cfg.eval.batch_size)).map(
        DecodeEvalRow(source.reader.spec, str(source.root),
                      boxes_from_masks=cfg.data.boxes if eval_boxes else None),
        num_cpus=DECODE_CPUS,  # as the training streams: a node left half a CPU beside its worker evaluates too
    )
    return datasets


def _num_blocks(records: list, batch_size: int, batches_per_block: int = BATCHES_PER_BLOCK) -> int:
    """About ``batches_per_block`` batches per block: Ray Data's default (hundreds of tiny blocks) spends more CPU
    scheduling tasks than decoding than blocks of 32 batches do."""
    return max(1, min(200, len(records) // (batch_size * batches_per_block)))
