"""A method of the tests' own, registered by nothing here: tests/test_method_registry.py registers it for a test
and removes it after, and tests/plugin_method.py registers a copy under another name when a config names it
in ``plugins:``."""

import torch
from pydantic import Field
from torch import nn

from raysemi.losses import pixel_cross_entropy
from raysemi.methods.base import Batch, Method, StreamSpec
from raysemi.models import LogitsOnly, build_segmenter, unwrap
from raysemi.sections import Section


class ScaledCEConfig(Section):
    """The ``scaled_ce`` section."""

    scale: float = Field(1.0, gt=0.0, description="the loss is this times the pixel CE")


class ScaledCE(Method):
    """Pixel CE on the labeled stream, times ``<its name>.scale`` (``scaled_ce.scale``)."""

    name = "scaled_ce"
    config_model = ScaledCEConfig
    search_space = {"scaled_ce.scale": {"uniform": [0.5, 2.0]}}

    def build_models(self, num_classes: int) -> dict[str, nn.Module]:
        return {"segmenter": build_segmenter(self.cfg.model, num_classes)}

    def streams(self) -> dict[str, StreamSpec]:
        return {"labeled": StreamSpec("labeled", self.cfg.train.batch_size)}

    def training_step(self, models: dict[str, nn.Module], batch: Batch, step: int) -> dict[str, torch.Tensor]:
        labeled = batch["labeled"]
        loss_ce = pixel_cross_entropy(models["segmenter"](labeled["image"])["logits"], labeled["mask"])
        return {"loss": getattr(self.cfg, self.name).scale * loss_ce, "loss_ce": loss_ce.detach()}

    def eval_model(self, models: dict[str, nn.Module]) -> nn.Module:
        return LogitsOnly(unwrap(models["segmenter"]))
