"""The contract every registered method must meet, derived from the registry: each method runs once with its
defaults (plus what it needs for the contract's tiny inputs, in NEEDS), and the variants below add option
combinations. A new method joins by being registered; it needs an entry here only if its defaults cannot run
on 4 classes of 40×56 random images. Each stream's batch is its view's fake batch (a new view brings its own)."""

import pytest
import torch

from raysemi.config import load_config
from raysemi.data.views import fake_box_raster
from raysemi.engine.checkpoint import write_checkpoint
from raysemi.engine.inference import load_eval_model
from raysemi.methods import build_method, method_class, method_names

# γ = 0: an untrained 4-class head is never 75 % confident, and every parameter must get a gradient
CAC_SMALL = ["cac.gamma=0", "cac.num_negatives=64", "cac.chunk_size=16", "data.crop_size=[40,56]"]
# points=200 > the 40×56 / 16 embedding pixels: every pixel is drawn, so the distillation always has pairs
NEEDS = {
    "cac": CAC_SMALL,
    "self_correction": ["data.unlabeled_boxes=boxes.txt"],
    "simformer": ["simformer.novel=[3]", "simformer.points=200"],
}
VARIANTS = {
    "cps-no-cutmix-on-labeled": ["method=cps", "cps.cutmix=false", "cps.on_labeled=true", "cps.eval=mean"],
    "cac-ablations-and-tags": [
        "method=cac", "cac.gamma=0", "cac.projector=false", "cac.context=false", "cac.loss=l2",
        "cac.image_tags=true", "data.unlabeled_tags=tags.txt", "data.crop_size=[40,56]",
    ],
    **{
        f"self_correction-{stage}-{mode}": [
            "method=self_correction", f"self_correction.stage={stage}", f"self_correction.mode={mode}",
            "data.unlabeled_boxes=boxes.txt",
        ]
        for stage, mode in [("ancillary", "linear"), ("ancillary", "conv"), ("corrector", "conv"),
                            ("primary", "none"), ("primary", "linear"), ("primary", "conv")]
    },
    "simformer-basic-shallow": ["method=simformer", "simformer.novel=[3]", "simformer.complementary_weight=0",
                                "simformer.similarity_weight=0", "simformer.distill_weight=0",
                                "simformer.deep_supervision=false"],
    "simformer-oracle": ["method=simformer", "simformer.novel=[3]", "simformer.oracle=true"],
}
METHODS = {**{name: [f"method={name}", *NEEDS.get(name, [])] for name in method_names()}, **VARIANTS}


def _config(name):
    return load_config(None, ["model.backbone=tiny", "model.pretrained=false", "model.head_channels=16",
                              "train.batch_size=2", "train.unlabeled_batch_size=2", *METHODS[name]])


def _batch(method, seed=0, size=(40, 56)):
    """A batch of every stream of ``method``, as its view fakes one (4 classes), plus a box raster on the
    ``weak`` stream (records with boxes: ``data.unlabeled_boxes``, whatever the view)."""
    g = torch.Generator().manual_seed(seed)
    batch = {}
    for name, spec in method.streams().items():
        labeled = spec.source in ("labeled", "labeled_half")
        batch[name] = spec.view.fake_batch(spec.batch_size, size, 4, labeled, g)
        if name == "weak":
            batch[name]["boxes"] = fake_box_raster(spec.batch_size, size, 4, g)
    return batch


def _models(method, seed=0):
    torch.manual_seed(seed)
    return method.build_models(num_classes=4)


@pytest.mark.parametrize("name", METHODS)
def test_loss_is_finite_and_reaches_every_trainable_parameter(name):
    method = build_method(_config(name))
    models = _models(method)
    out = method.training_step(models, _batch(method), step=0)
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    for model_name, model in models.items():
        for param_name, param in model.named_parameters():
            if param.requires_grad:
                assert param.grad is not None and param.grad.abs().sum() > 0, f"{model_name}.{param_name}"
    assert all(v.ndim == 0 for v in out.values())


@pytest.mark.parametrize("name", METHODS)
def test_eval_model_keeps_odd_input_sizes(name):
    method = build_method(_config(name))
    model = method.eval_model(_models(method)).eval()
    channels = 3 + (5 if method.eval_needs_boxes else 0)  # + a box raster as channels
    with torch.no_grad():
        assert model(torch.randn(1, channels, 37, 53)).shape == (1, 4, 37, 53)


@pytest.mark.parametrize("name", METHODS)
def test_same_seed_same_loss(name):
    losses = []
    for _ in range(2):
        method = build_method(_config(name))
        torch.manual_seed(1)  # dropout
        losses.append(method.training_step(_models(method), _batch(method), step=0)["loss"].item())
    assert losses[0] == losses[1]


@pytest.mark.parametrize("name", METHODS)
def test_checkpoint_save_then_load_gives_the_same_logits(name, tmp_path):
    cfg = _config(name)
    method = build_method(cfg)
    model = method.eval_model(_models(method)).eval()
    g = torch.Generator().manual_seed(0)
    for module in model.modules():  # BatchNorm statistics off their defaults: buffers must round-trip too
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.copy_(torch.rand(module.running_mean.shape, generator=g) - 0.5)
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=g) + 0.5)
    meta = {"method": cfg.method, "classes": ["a", "b", "c", "d"], "palette": [[0, 0, 0]] * 4}
    write_checkpoint(tmp_path, 1, model.state_dict(), {"step": 1}, cfg.to_yaml(), meta)
    loaded = load_eval_model(tmp_path)
    assert loaded.needs_boxes == method.eval_needs_boxes and loaded.class_names == ("a", "b", "c", "d")
    images = torch.randn(2, 3 + (5 if method.eval_needs_boxes else 0), 40, 56)
    with torch.no_grad():
        assert torch.equal(loaded.model(images.to(loaded.device)).cpu(), model(images))


@pytest.mark.parametrize("name", method_names())
def test_every_option_of_a_method_is_described(name):
    model = method_class(name).config_model
    fields = model.model_fields if model is not None else {}
    assert [key for key, field in fields.items() if not field.description] == []
