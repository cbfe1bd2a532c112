"""The Python API: ``raysemi.load(checkpoint)`` → a :class:`Predictor` of class maps; ``export`` of its model.

A predictor takes a batch of images of any sizes, as numpy ``(H, W, 3)`` uint8 arrays, torch tensors
(``(3, H, W)`` uint8, or float in 0..1) or PIL images (any mode, converted to RGB), one image, a list of them
or one stacked array/tensor, and returns one
``(H, W)`` class map per image. Test-time augmentation (horizontal flip, scales) is the ``eval.tta`` of the
checkpoint's config unless given per call.

An exported file holds the eval model behind the input normalisation: ``(N, 3, H, W)`` float images in 0..1
→ ``(N, C, H, W)`` logits (whole image, no augmentation), loadable with plain torch
(``torch.jit.load`` or ``torch.export.load(...).module()``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image as PILImage
from torch import nn

from raysemi.config import EvalConfig, TTAConfig
from raysemi.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from raysemi.engine.evaluate import predict_logits
from raysemi.engine.inference import LoadedModel, load_eval_model
from raysemi.engine.storage import check_output_file
from raysemi.errors import CheckpointError, DataError

EXPORT_FORMATS = ("torchscript", "exported_program")


class Predictor:
    """Class maps from a checkpoint's eval model, on CUDA when present, else CPU."""

    def __init__(self, loaded: LoadedModel):
        if loaded.needs_boxes:
            raise CheckpointError(f"{loaded.checkpoint.path}: this model needs each image's boxes (self-correction's "
                                  "ancillary stage); load the primary stage's checkpoint")
        self.loaded = loaded
        self.class_names: tuple[str, ...] = loaded.class_names
        self.palette = loaded.palette

    @torch.no_grad()
    def logits(self, images, hflip: bool | None = None, scales: Sequence[float] | None = None) -> list[torch.Tensor]:
        """One ``(C, H, W)`` float tensor per image (CPU): logits, or with TTA the log of the mean probabilities."""
        cfg = self._eval_config(hflip, scales)
        outputs = []
        for image in as_image_list(images):
            batch = _normalise(image[None].to(self.loaded.device))
            outputs.append(predict_logits(self.loaded.model, batch, cfg)[0].float().cpu())
        return outputs

    def predict(self, images, hflip: bool | None = None, scales: Sequence[float] | None = None) -> list[np.ndarray]:
        """One ``(H, W)`` int64 class-id map per image, each the size of its image."""
        return [logits.argmax(0).numpy() for logits in self.logits(images, hflip, scales)]

    def _eval_config(self, hflip: bool | None, scales: Sequence[float] | None) -> EvalConfig:
        tta = self.loaded.cfg.eval.tta
        tta = TTAConfig(hflip=tta.hflip if hflip is None else hflip,
                        scales=list(tta.scales if scales is None else scales))
        return self.loaded.cfg.eval.model_copy(update={"tta": tta})


def load(checkpoint: str | Path, overrides: Sequence[str] = ()) -> Predictor:
    """A :class:`Predictor` for a checkpoint folder or a run directory (its newest checkpoint); ``overrides``
    adjust its config, e.g. ``["eval.mode=slide"]``."""
    return Predictor(load_eval_model(checkpoint, list(overrides)))


def as_image_list(images) -> list[torch.Tensor]:
    """A batch in any accepted form → ``(3, H, W)`` float tensors in 0..1.

    Raises:
        DataError: naming the position and shape of an image that is neither HWC numpy nor CHW torch.
    """
    if isinstance(images, np.ndarray | torch.Tensor) and images.ndim == 4:
        images = list(images)
    elif isinstance(images, np.ndarray | torch.Tensor | PILImage.Image):
        images = [images]
    converted = []
    for index, image in enumerate(images):
        if isinstance(image, PILImage.Image):
            image = np.array(image.convert("RGB"))
        if isinstance(image, np.ndarray):
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise DataError(f"image {index}: a numpy image must be (H, W, 3) uint8, got {image.shape} "
                                f"{image.dtype}")
            image = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[0] != 3:
            shape = tuple(image.shape) if hasattr(image, "shape") else type(image).__name__
            raise DataError(f"image {index}: expected (H, W, 3) uint8 numpy, (3, H, W) torch or a PIL image, "
                            f"got {shape}")
        converted.append(image.float() / 255.0 if image.dtype == torch.uint8 else image.float())
    if not converted:
        raise DataError("no images given")
    return converted


def _normalise(images: torch.Tensor) -> torch.Tensor:
    """``(N, 3, H, W)`` float in 0..1 → ImageNet-normalised."""
    mean = images.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images - mean) / std


class NormalisedModel(nn.Module):
    """``(N, 3, H, W)`` float images in 0..1 → the eval model's ``(N, C, H, W)`` logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model((images - self.mean) / self.std)


def export(checkpoint: str | Path, fmt: str, out: str | Path, example_size: tuple[int, int] | None = None) -> Path:
    """Write the checkpoint's eval model (on CPU, behind the input normalisation) as TorchScript
    (``torch.jit.trace``) or a ``torch.export`` ExportedProgram, traced on images of ``example_size``
    (default: ``data.crop_size``). Feed the file images of that size; an ExportedProgram takes any batch size.

    Raises:
        CheckpointError: an unknown ``fmt`` (naming the accepted ones) or a box-conditioned model.
        StorageError: ``out`` cannot be written (a folder, under a file, no permission), before the model loads.
    """
    if fmt not in EXPORT_FORMATS:
        raise CheckpointError(f"--format {fmt!r} is not accepted; choose one of {', '.join(EXPORT_FORMATS)}")
    check_output_file(Path(out), "--out")
    loaded = load_eval_model(checkpoint)
    if loaded.needs_boxes:
        raise CheckpointError(f"{loaded.checkpoint.path}: a box-conditioned model cannot be exported alone")
    wrapped = NormalisedModel(loaded.model.cpu()).eval()
    height, width = example_size or loaded.cfg.data.crop_size
    example = torch.rand(2, 3, height, width, generator=torch.Generator().manual_seed(0))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        if fmt == "torchscript":
            torch.jit.save(torch.jit.trace(wrapped, example, check_trace=False), str(out))
        else:
            batch = torch.export.Dim("batch", min=1, max=1024)
            program = torch.export.export(wrapped, (example,), dynamic_shapes={"images": {0: batch}})
            torch.export.save(program, str(out))
    return out
