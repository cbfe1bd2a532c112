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
    ``boxes=True`` on a labeled stream adds the raster of boxes derived from each image's mask.
    ``source="labeled_half"`` draws from the first half of the labeled split only. With ``weak_shot`` set,
    each image arrives with its reference image, novel pixels hidden and tags added (SimFormer; see
    :class:`raysemi.data.pipeline.DecodeWeakShotPairs`; ``batch_size`` counts the images, not the partners).
    """

    source: Literal["labeled", "labeled_half", "unlabeled"]
    batch_size: int
    crops: OverlappingCrops | None = None
    boxes: bool = False
    weak_shot: WeakShotView | None = None

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
