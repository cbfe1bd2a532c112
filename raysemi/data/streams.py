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
        """Each worker's share of ``batch_size`` (config validation makes it divide evenly, so world_size
        workers together train on exactly the global batch); local mode (``world_size`` 0 or 1) takes it all."""
        return self.batch_size // max(world_size, 1)


def stream_records(source: DatasetSource, spec: StreamSpec, total_steps: int, start_step: int, seed: int,
                   stream: str) -> list[Record]:
    """:func:`plan_records` of a method's stream over ``source``, with the extra columns its view plans."""
    samples = source.samples_for(spec.source)
    columns = spec.view.record_columns(source, samples)
    return plan_records(samples, spec.batch_size, total_steps, start_step, seed, stream, columns)


def stream_decoder(spec: StreamSpec, format_name: str, root: str, augment: TrainAugment) -> Decoder:
    """The ``map_batches`` function of a training stream: its view's decoder."""
    return spec.view.decoder(format_name, root, augment)
