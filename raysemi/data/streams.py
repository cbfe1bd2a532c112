"""Data streams: what a method asks for, and how that becomes the records and decode function of a stream.

A method declares its streams as :class:`StreamSpec` values (which samples, global batch size, and a view:
plain crops, CAC's :class:`~raysemi.data.overlapping_crops.OverlappingCrops`, or a :class:`WeakShotView`).
:func:`stream_records` turns a spec into the stream's plan and :func:`stream_decoder` into its Ray Data
``map_batches`` function; both are built from :mod:`raysemi.data.pipeline` (record plans and the decode/augment
classes). Nothing here imports Ray: :mod:`raysemi.ray.data` wires these into datasets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from raysemi.data.dataset import DatasetSource
from raysemi.data.overlapping_crops import OverlappingCrops
from raysemi.data.pairs import partner_samples
from raysemi.data.pipeline import DecodeCropPairs, DecodeTrainBatch, DecodeWeakShotPairs, Record, plan_records
from raysemi.data.transforms import TrainAugment
from raysemi.data.weak_labels import ClassSplit
from raysemi.sections import BoxesConfig

StreamDecoder = DecodeTrainBatch | DecodeCropPairs | DecodeWeakShotPairs


@dataclass(frozen=True)
class WeakShotView:
    """How a weak-shot stream (SimFormer) presents its images: the novel classes' pixels hidden (unless
    ``hide_novel`` is off: the fully supervised oracle), the classes present as tags, and each image followed by
    its reference image from the pair table (``pairs_file``, or computed from the masks with ``pair_seed``)."""

    classes: ClassSplit
    hide_novel: bool = True
    pairs_file: str | None = None
    pair_seed: int = 0


@dataclass(frozen=True)
class StreamSpec:
    """A training stream: which samples it draws from, its global batch size per step, and its view.

    ``source="labeled"`` yields ``image`` and ``mask``; ``source="unlabeled"`` yields ``image`` only (its
    samples carry no mask path, so their masks are never read), plus ``image_tags`` when ``data.unlabeled_tags``
    is set, or ``boxes`` (a box raster) when ``data.unlabeled_boxes`` is. With ``crops`` set, each image arrives
    as two overlapping crops instead (CAC; see :class:`raysemi.data.pipeline.DecodeCropPairs` for the keys).
    ``boxes`` (a ``data.boxes`` rule) on a labeled stream adds the raster of the boxes drawn on each image's mask.
    ``source="labeled_half"`` draws from the first half of the labeled split only. With ``weak_shot`` set,
    each image arrives with its reference image, novel pixels hidden and tags added (SimFormer; see
    :class:`raysemi.data.pipeline.DecodeWeakShotPairs`; ``batch_size`` counts the images, not the partners).
    """

    source: Literal["labeled", "labeled_half", "unlabeled"]
    batch_size: int
    crops: OverlappingCrops | None = None
    boxes: BoxesConfig | None = None
    weak_shot: WeakShotView | None = None

    def per_worker_batch(self, world_size: int) -> int:
        """Each worker's share of ``batch_size`` (config validation makes it divide evenly, so world_size
        workers together train on exactly the global batch); local mode (``world_size`` 0 or 1) takes it all."""
        return self.batch_size // max(world_size, 1)


def stream_records(source: DatasetSource, spec: StreamSpec, total_steps: int, start_step: int, seed: int,
                   stream: str) -> list[Record]:
    """:func:`plan_records` of a method's stream over ``source``, with each image's reference image when the
    stream is a weak-shot one."""
    samples = source.samples_for(spec.source)
    partners = None
    if spec.weak_shot is not None:
        view = spec.weak_shot
        _, novel = view.classes.resolve(source.classes.num_classes)
        partners = partner_samples(source.reader, samples, novel, view.pair_seed, view.pairs_file)
    return plan_records(samples, spec.batch_size, total_steps, start_step, seed, stream, partners)


def decode_format(data_format: str) -> str:
    """The reader format that decodes a run's files: ``synthetic`` data is written once as ``generic`` files."""
    return "generic" if data_format == "synthetic" else data_format


def stream_decoder(spec: StreamSpec, format_name: str, root: str, augment: TrainAugment) -> StreamDecoder:
    """The ``map_batches`` function of a training stream: crop pairs when ``spec.crops`` is
    set, image/reference pairs when ``spec.weak_shot`` is, else single crops (with box rasters from masks when
    ``spec.boxes`` is set)."""
    if spec.crops is not None:
        return DecodeCropPairs(format_name, root, spec.crops)
    if spec.weak_shot is not None:
        return DecodeWeakShotPairs(format_name, root, augment, spec.weak_shot.classes, spec.weak_shot.hide_novel)
    return DecodeTrainBatch(format_name, root, augment, boxes_from_masks=spec.boxes)
