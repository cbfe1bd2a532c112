"""Data streams: what a method asks for, and how that becomes the records and decode function of a stream.

A method declares its streams as :class:`StreamSpec` values (which samples, global batch size, and a
:class:`~raysemi.data.views.View`: plain crops by default, or a view the method declares beside itself, such
as CAC's crop pairs or SimFormer's image/reference pairs). :func:`stream_records` turns a spec into the
stream's plan and :func:`stream_decoder` into its Ray Data ``map_batches`` function, both by asking the view.
Nothing here imports Ray: :mod:`raysemi.ray.data` wires these into datasets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from raysemi.data.dataset import DatasetSource
from raysemi.data.pipeline import Record, plan_records
from raysemi.data.transforms import TrainAugment
from raysemi.data.views import Decoder, PlainCrops, View


@dataclass(frozen=True)
class StreamSpec:
    """A training stream: which samples it draws from, its global batch size per step, and its view.

    ``source="labeled"`` yields ``image`` and ``mask``; ``source="unlabeled"`` yields ``image`` only (its
    samples carry no mask path, so their masks are never read), plus ``image_tags`` when ``data.unlabeled_tags``
    is set, or ``boxes`` (a box raster) when ``data.unlabeled_boxes`` is. ``source="labeled_half"`` draws from
    the first half of the labeled split only. The ``view`` decides the rest (its keys, its augmentation; see
    :mod:`raysemi.data.views`); ``batch_size`` counts the stream's images, not what a view adds per image.
    """

    source: Literal["labeled", "labeled_half", "unlabeled"]
    batch_size: int
    view: View = PlainCrops()

    def per_worker_batch(self, world_size: int) -> int:
        """Each worker's share of ``batch_size``: :func:`worker_batch`, the rule the Ray Data build and the
        worker loop both use."""
        return worker_batch(self.batch_size, world_size)


def worker_batch(global_batch: int, world_size: int) -> int:
    """The one batch-split rule: each of ``world_size`` workers takes ``global_batch / world_size`` images, so
    the workers together train on exactly the global batch; local mode (``world_size`` 0 or 1) takes it all.

    A global batch that does not divide is refused (config validation and :mod:`raysemi.engine.preflight` stop
    it before a run starts, with :func:`batch_split_problem`'s line): rounding it would train on a different
    batch than the config says, and Ray Data and the workers could round it differently.

    Raises:
        ValueError: ``global_batch`` does not divide by ``world_size``.
    """
    workers = max(world_size, 1)
    if global_batch % workers:
        raise ValueError(batch_split_problem("batch_size", global_batch, workers))
    return global_batch // workers


def batch_split_problem(key: str, global_batch: int, workers: int) -> str | None:
    """``None`` when ``global_batch`` divides by ``workers``, else one line naming ``key`` and what would be
    accepted: ``train.batch_size=8 is the global batch and must divide by scaling.num_workers=3; accepted:
    train.batch_size=6 or 9, or scaling.num_workers in 1, 2, 4, 8``."""
    if global_batch % workers == 0:
        return None
    below = global_batch - global_batch % workers
    multiples = " or ".join(str(m) for m in (below, below + workers) if m > 0)
    divisors = ", ".join(str(d) for d in range(1, global_batch + 1) if global_batch % d == 0)
    return (f"{key}={global_batch} is the global batch and must divide by scaling.num_workers={workers}; "
            f"accepted: {key}={multiples}, or scaling.num_workers in {divisors}")


def stream_records(source: DatasetSource, spec: StreamSpec, total_steps: int, start_step: int, seed: int,
                   stream: str) -> list[Record]:
    """:func:`plan_records` of a method's stream over ``source``, with the extra columns its view plans."""
    samples = source.samples_for(spec.source)
    columns = spec.view.record_columns(source, samples)
    return plan_records(samples, spec.batch_size, total_steps, start_step, seed, stream, columns)


def stream_decoder(spec: StreamSpec, format_name: str, root: str, augment: TrainAugment) -> Decoder:
    """The ``map_batches`` function of a training stream: its view's decoder."""
    return spec.view.decoder(format_name, root, augment)
