"""A saved model at work, in this process (CUDA when present, else CPU): load a checkpoint's eval model, score it
on its config's val split, predict images and folders (``raysemi eval``, ``raysemi predict``, the Python API)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from raysemi.config import Config, load_config
from raysemi.data.dataset import load_sample, open_dataset
from raysemi.data.formats import IMAGE_SUFFIXES, DatasetFormat, Sample, read_image
from raysemi.data.transforms import normalize, to_tensors
from raysemi.data.weak_labels import mask_box_raster
from raysemi.engine.checkpoint import CheckpointFiles, load_tensors, resolve_checkpoint
from raysemi.engine.evaluate import class_groups, evaluate, palette_table, predict_logits, with_box_channels
from raysemi.engine.metrics import ConfusionMatrix
from raysemi.engine.storage import check_output_folder
from raysemi.errors import CheckpointError, ConfigError, DataError
from raysemi.methods import build_method
from raysemi.progress import progress
from raysemi.sections import BoxesConfig


@dataclass
class LoadedModel:
    model: nn.Module
    cfg: Config
    class_names: tuple[str, ...]
    palette: list[tuple[int, int, int]]
    checkpoint: CheckpointFiles
    device: torch.device
    needs_boxes: bool = False  # a box-conditioned model (self-correction's ancillary): image + box raster
    class_groups: dict[str, list[int]] | None = None  # mIoU reported per group too (weak-shot base/novel)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_eval_model(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> LoadedModel:
    """Rebuild the method's eval model from a checkpoint (or a run directory's newest) and load ``model.pt``.

    ``overrides`` (``key=value``) adjust the checkpoint's config, e.g. ``eval.mode=slide``.
    """
    checkpoint = resolve_checkpoint(path)
    cfg = checkpoint_config(checkpoint, list(overrides))
    meta = checkpoint.read_meta()
    class_names = tuple(meta["classes"])
    method = build_method(cfg)
    model = method.eval_model(method.build_models(len(class_names)))
    try:
        model.load_state_dict(load_tensors(checkpoint.model))
    except RuntimeError as exc:
        raise CheckpointError(f"{checkpoint.model}: weights do not fit the model in its config ({exc})"[:300]) from None
    device = default_device()
    needs_boxes = method.eval_needs_boxes
    groups = class_groups(cfg, method)
    return LoadedModel(model.to(device).eval(), cfg, class_names, meta["palette"], checkpoint, device, needs_boxes,
                       groups)


def checkpoint_config(checkpoint: CheckpointFiles, overrides: list[str]) -> Config:
    """The checkpoint's ``config.yaml`` with ``overrides`` applied. Its own problems name the file; an override
    that does not validate is blamed on the override, not on the file."""
    internal = ["model.pretrained=false", "model.weights=null"]  # the checkpoint holds every weight
    cfg = load_config(checkpoint.config, internal)
    if not overrides:
        return cfg
    try:
        return load_config(checkpoint.config, [*overrides, *internal])
    except ConfigError as exc:
        problem = str(exc).removeprefix(f"{checkpoint.config}: ")
        raise ConfigError(f"override {' '.join(overrides)}: {problem} (applied to {checkpoint.config})") from None


def evaluate_checkpoint(loaded: LoadedModel, threads: int = 4) -> ConfusionMatrix:
    """mIoU of a checkpoint on its config's val split."""
    source = open_dataset(loaded.cfg.data)
    batches = val_batches(source.reader, source.val, loaded, threads)
    return evaluate(loaded.model, batches, len(loaded.class_names), loaded.cfg.eval, source.classes.ignore_index)


def val_batches(reader: DatasetFormat, samples: list[Sample], loaded: LoadedModel,
                threads: int = 4) -> Iterator[dict[str, torch.Tensor]]:
    """Batches of ``eval.batch_size`` normalised ``image`` and ``mask`` on the model's device, decoded in
    ``threads`` threads."""
    batch_size, device = loaded.cfg.eval.batch_size, loaded.device
    with ThreadPoolExecutor(threads) as pool:
        decoded = pool.map(lambda s: _decode_val(reader, s, loaded.needs_boxes, loaded.cfg.data.boxes), samples)
        pending: list[tuple[torch.Tensor, ...]] = []
        for item in progress(decoded, "evaluating", total=len(samples)):
            pending.append(item)
            if len(pending) == batch_size:
                yield _stack(pending, device)
                pending = []
        if pending:
            yield _stack(pending, device)


def _decode_val(reader: DatasetFormat, sample: Sample, with_boxes: bool,
                rule: BoxesConfig | None = None) -> tuple[torch.Tensor, ...]:
    """``(image, mask)`` tensors, plus the raster of the mask's boxes (drawn by ``rule``, ``data.boxes``) for a
    box-conditioned model."""
    image, mask = load_sample(reader, sample)
    tensors = to_tensors(image, mask)
    if not with_boxes:
        return tensors
    return (*tensors, mask_box_raster(mask, reader.classes, rule))


def _stack(items: list[tuple[torch.Tensor, ...]], device: torch.device) -> dict[str, torch.Tensor]:
    shapes = {tuple(item[0].shape) for item in items}
    if len(shapes) > 1:
        raise DataError(f"val images differ in size ({sorted(shapes)[:2]}...); set eval.batch_size=1")
    images = torch.stack([item[0] for item in items]).to(device)
    masks = torch.stack([item[1] for item in items]).to(device).long()
    batch = {"image": normalize(images), "mask": masks}
    if len(items[0]) == 3:
        batch["boxes"] = torch.stack([item[2] for item in items]).to(device)
    return with_box_channels(batch)


def image_batch(loaded: LoadedModel, image: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` uint8 image → ``(1, 3, H, W)`` normalised on the model's device."""
    return normalize(to_tensors(image, None)[0][None].to(loaded.device))


@torch.no_grad()
def predict_image(loaded: LoadedModel, image: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` uint8 image → ``(K, H, W)`` eval-model output (whole image or sliding window)."""
    return predict_logits(loaded.model, image_batch(loaded, image), loaded.cfg.eval)[0]


def predict_folder(loaded: LoadedModel, images_dir: Path, out_dir: Path, threads: int = 4) -> int:
    """Write ``<stem>.png`` (raw class ids) and ``<stem>_color.png`` (dataset palette) per image of
    ``images_dir`` into ``out_dir``; return the count.

    Nothing is written until every input has been decoded and ``out_dir`` checked: ``out_dir`` may not be the
    input folder, and no two inputs may share an output name (``a.jpg`` and ``a.png``, or ``a.png`` and
    ``a_color.png``). Images are decoded twice (once to check, once to predict) rather than held in memory.

    Raises:
        DataError: no images, an unreadable image, the input folder as output, or an output-name collision,
            each naming the files at fault.
        StorageError: ``out_dir`` cannot be created or written.
    """
    paths = input_images(images_dir)
    if loaded.needs_boxes:
        raise CheckpointError(f"{loaded.checkpoint.path}: this model needs the boxes of each image (self-correction's "
                              "ancillary stage); predict with the primary stage's checkpoint")
    check_prediction_outputs(paths, images_dir, out_dir)
    with ThreadPoolExecutor(threads) as pool:
        for _ in progress(pool.map(read_image, paths), "checking", total=len(paths)):
            pass  # a corrupt image raises here, before any output exists
    out_dir.mkdir(parents=True, exist_ok=True)
    if same_folder(out_dir, images_dir):  # a path that only now leads there (``new/../images``)
        raise DataError(f"--out {out_dir}: is the input folder --images {images_dir}; give another folder")
    colours = palette_table(loaded.palette)
    for path in progress(paths, "predicting"):
        labels = predict_image(loaded, read_image(path)).argmax(0).to(torch.uint8).cpu().numpy()
        label_name, colour_name = output_names(path)
        Image.fromarray(labels).save(out_dir / label_name)
        Image.fromarray(colours[labels]).save(out_dir / colour_name)
    return len(paths)


def input_images(images_dir: Path) -> list[Path]:
    """The image files directly in ``images_dir``, sorted; a one-line error when there are none."""
    paths = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if images_dir.is_dir() else []
    if not paths:
        raise DataError(f"{images_dir}: no images found ({', '.join(IMAGE_SUFFIXES)})")
    return paths


def output_names(image: Path) -> tuple[str, str]:
    """The label-map and colour file names ``predict`` writes for ``image``."""
    return f"{image.stem}.png", f"{image.stem}_color.png"


def same_folder(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name one folder: spelled alike once ``..`` is applied, or (both existing) the
    same folder on disk, through links or not."""
    if os.path.normpath(os.path.abspath(a)) == os.path.normpath(os.path.abspath(b)):
        return True
    return a.is_dir() and b.is_dir() and os.path.samefile(a, b)


def check_prediction_outputs(paths: list[Path], images_dir: Path, out_dir: Path) -> None:
    """``out_dir`` is writable and not the input folder, and every output name belongs to one input."""
    if same_folder(out_dir, images_dir):
        raise DataError(f"--out {out_dir}: is the input folder --images {images_dir}; predictions would overwrite "
                        "or mix with the images, so give another folder")
    check_output_folder(out_dir, "--out")
    owner: dict[str, Path] = {}
    for path in paths:
        for name in output_names(path):
            if name in owner:
                raise DataError(f"{owner[name].name} and {path.name} would both write {out_dir / name}; rename one "
                                "of them or predict them into different folders")
            owner[name] = path
