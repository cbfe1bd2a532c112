"""The Python API (``raysemi.load`` → ``predict``) with TTA, and ``raysemi export`` read back without raysemi."""

import subprocess
import sys

import numpy as np
import pytest
import torch

import raysemi
from raysemi.cli import main
from raysemi.data.formats import GenericFormat
from raysemi.engine.checkpoint import write_checkpoint
from raysemi.errors import DataError
from raysemi.methods import build_method
from tests.conftest import fast_config


@pytest.fixture(scope="module")
def checkpoint(synthetic_root, tmp_path_factory):
    """A checkpoint of a freshly initialised tiny supervised model (no training needed to compare outputs)."""
    run_dir = tmp_path_factory.mktemp("predictor_run")
    cfg = fast_config(synthetic_root, run_dir)
    classes = GenericFormat(synthetic_root).classes
    torch.manual_seed(0)
    method = build_method(cfg)
    model = method.eval_model(method.build_models(classes.num_classes)).eval()
    return write_checkpoint(run_dir, 1, model.state_dict(), {}, cfg.to_yaml(),
                            {"method": "supervised", "classes": list(classes.names), "palette": classes.palette})


def _images():
    generator = np.random.default_rng(0)
    return [generator.integers(0, 256, (48, 64, 3), dtype=np.uint8),
            generator.integers(0, 256, (37, 53, 3), dtype=np.uint8)]


def test_predict_takes_numpy_or_tensors_of_any_size(checkpoint):
    predictor = raysemi.load(checkpoint.path)
    first, second = _images()
    maps = predictor.predict([first, second])
    assert [m.shape for m in maps] == [(48, 64), (37, 53)]
    assert all(0 <= m.min() and m.max() < len(predictor.class_names) for m in maps)
    as_tensor = torch.from_numpy(first).permute(2, 0, 1)  # (3, H, W) uint8
    np.testing.assert_array_equal(predictor.predict(as_tensor)[0], maps[0])
    np.testing.assert_array_equal(predictor.predict(as_tensor.float() / 255)[0], maps[0])
    np.testing.assert_array_equal(predictor.predict(np.stack([first, first]))[1], maps[0])
    with pytest.raises(DataError, match=r"image 0: a numpy image must be \(H, W, 3\) uint8, got \(48, 64\)"):
        predictor.predict([first[..., 0]])


def test_flip_tta_averages_the_probabilities_of_the_image_and_its_mirror(checkpoint):
    predictor = raysemi.load(checkpoint.path)
    image = _images()[0]
    plain = predictor.logits(image)[0]
    mirrored = predictor.logits(np.ascontiguousarray(image[:, ::-1]))[0].flip(-1)
    expected = ((plain.softmax(0) + mirrored.softmax(0)) / 2).log()
    torch.testing.assert_close(predictor.logits(image, hflip=True)[0], expected, atol=1e-5, rtol=1e-5)
    # scale 1.0 twice is the plain prediction's probabilities
    torch.testing.assert_close(predictor.logits(image, scales=[1.0, 1.0])[0].exp(), plain.softmax(0), atol=1e-5,
                               rtol=1e-5)
    assert predictor.predict(image, scales=[0.5, 1.0, 1.5])[0].shape == (48, 64)


READ_BACK = """
import sys, torch
kind, path, inputs, out = sys.argv[1:]
model = torch.jit.load(path) if kind == "torchscript" else torch.export.load(path).module()
assert not any(name.startswith("raysemi") for name in sys.modules)
torch.save(model(torch.load(inputs)), out)
"""


@pytest.mark.parametrize("fmt", ["torchscript", "exported_program"])
def test_exported_model_gives_the_logits_of_predict_without_raysemi(checkpoint, tmp_path, fmt):
    out = tmp_path / f"model.{fmt}"
    assert main(["export", "--checkpoint", str(checkpoint.path), "--format", fmt, "--out", str(out)]) == 0
    image = _images()[0]
    inputs = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255  # (1, 3, 48, 64) in 0..1
    torch.save(inputs, tmp_path / "inputs.pt")
    subprocess.run([sys.executable, "-c", READ_BACK, fmt, str(out), str(tmp_path / "inputs.pt"),
                    str(tmp_path / "logits.pt")], check=True, cwd=tmp_path)
    exported = torch.load(tmp_path / "logits.pt")[0]
    torch.testing.assert_close(exported, raysemi.load(checkpoint.path).logits(image)[0], atol=1e-4, rtol=1e-4)


def test_export_format_must_be_known(checkpoint, capsys):
    assert main(["export", "--checkpoint", str(checkpoint.path), "--format", "onnx", "--out", "x"]) == 2
    assert "--format 'onnx' is not accepted; choose one of torchscript, exported_program" in capsys.readouterr().err


def test_eval_with_tta_from_the_command_line(checkpoint, capsys):
    import json

    assert main(["eval", "--checkpoint", str(checkpoint.path), "eval.tta.hflip=true", "eval.tta.scales=[0.5,1.0]"]) == 0
    assert 0 <= json.loads(capsys.readouterr().out.strip().splitlines()[-1])["miou"] <= 1
    assert main(["eval", "--checkpoint", str(checkpoint.path), "eval.tta.scales=[0]"]) == 2
    assert "scales must be a non-empty list of positive numbers" in capsys.readouterr().err
