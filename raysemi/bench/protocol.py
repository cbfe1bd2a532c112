"""A benchmark protocol and its variants: a plain raysemi config of the supervised(k) baseline, which fixes the
data, the splits, the model, the optimiser and the budget, and named sets of dotted overrides on top of it.

A variant is named after what it trains: ``supervised`` is the protocol's config as it is,
``supervised_all_labels`` adds the overrides that label every training image, a method's name adds its
overrides, and ``<method>_control`` adds, after the method's, its control's (the unlabeled term's weight at 0:
what the method gains from everything but the unlabeled data).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from raysemi.errors import RaysemiError


class UnknownVariant(RaysemiError):
    """A variant that the protocol does not define."""


@dataclass(frozen=True)
class Protocol:
    config: str  # the supervised(k) baseline, relative to the repository root
    all_labels: tuple[str, ...]  # overrides that label every training image
    methods: dict[str, tuple[str, ...]]  # each method's overrides on top of the protocol config
    needs: str | None = None  # a data folder the protocol reads (a benchmark skips it, saying so, without it)
    controls: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # a method → its control's overrides


def variant_overrides(protocol: Protocol, variant: str) -> tuple[str, ...]:
    """The overrides that make ``variant`` (``supervised``, ``supervised_all_labels``, a method or
    ``<method>_control``) out of the protocol's config; :class:`UnknownVariant` names the variants it defines."""
    if variant == "supervised":
        return ()
    if variant == "supervised_all_labels":
        return protocol.all_labels
    method = variant.removesuffix("_control")
    if method not in protocol.methods or (variant.endswith("_control") and method not in protocol.controls):
        raise UnknownVariant(f"{variant} is not defined for this protocol; choose one of "
                             f"{', '.join(known_variants(protocol))}")
    return protocol.methods[method] + (protocol.controls[method] if variant.endswith("_control") else ())


def known_variants(protocol: Protocol) -> list[str]:
    """Every variant ``protocol`` defines."""
    return ["supervised", "supervised_all_labels", *protocol.methods,
            *(f"{m}_control" for m in protocol.methods if m in protocol.controls)]


def unlabeled_boxes_file(config: Path, path: Path) -> Path:
    """``path``, written first when missing: each unlabeled image of the protocol config ``config`` with the boxes
    of its mask (one box per object of a thing class, as ``raysemi data split --boxes`` draws them), a file for
    ``data.unlabeled_boxes`` (weak labels derived from masks the runs never read)."""
    from raysemi.config import load_config
    from raysemi.data.dataset import open_dataset
    from raysemi.data.weak_labels import boxes_from_masks, write_boxes_file

    if not path.is_file():
        source = open_dataset(load_config(config).data)
        with_masks = {sample.image: sample for sample in source.train}
        unlabeled = [with_masks[sample.image] for sample in source.split.unlabeled]
        path.parent.mkdir(parents=True, exist_ok=True)
        write_boxes_file(path, boxes_from_masks(source.reader, unlabeled), source.reader.root)
    return path
