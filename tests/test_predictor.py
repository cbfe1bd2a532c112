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


# ---- issue 38: predict never touches its inputs; outputs checked before any work ----

def _image_folder(folder, names, size=(24, 32)):
    """Small RGB images named ``names`` in ``folder``; returns their bytes by name."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    generator = np.random.default_rng(1)
    for name in names:
        Image.fromarray(generator.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / name)
    return {name: (folder / name).read_bytes() for name in names}


def test_predict_never_writes_into_its_input_folder(checkpoint, tmp_path, capsys):
    images = tmp_path / "images"
    before = _image_folder(images, ["val_00000.png", "b.png"])
    args = ["predict", "--checkpoint", str(checkpoint.path), "--images", str(images)]
    assert main([*args, "--out", str(images)]) == 2
    assert "is the input folder --images" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "link" / "..") + "/images"]) == 2  # the same folder, spelled apart
    assert {p.name: p.read_bytes() for p in images.iterdir()} == before


def test_predict_output_names_that_collide_are_an_error_naming_both(checkpoint, tmp_path, capsys):
    images = tmp_path / "images"
    _image_folder(images, ["a.jpg", "a.png"])
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(checkpoint.path), "--images", str(images), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: a.jpg and a.png would both write {out / 'a.png'}; rename one of them or predict them " \
                  "into different folders"
    assert not out.exists()
    (images / "a.jpg").unlink()
    _image_folder(images, ["a_color.png"])  # a.png's colour map has this name
    assert main(["predict", "--checkpoint", str(checkpoint.path), "--images", str(images), "--out", str(out)]) == 2
    assert "a.png and a_color.png would both write" in capsys.readouterr().err


def test_predict_rerun_writes_the_same_files_and_no_color_color(checkpoint, tmp_path):
    images, out = tmp_path / "images", tmp_path / "out"
    _image_folder(images, ["x.png", "y.jpg"])
    into_inputs = ["predict", "--checkpoint", str(checkpoint.path), "--images", str(images), "--out", str(images)]
    assert main(into_inputs) == 2 and main(into_inputs) == 2  # the rerun: *_color_color.png came from here
    assert sorted(p.name for p in images.iterdir()) == ["x.png", "y.jpg"]
    args = ["predict", "--checkpoint", str(checkpoint.path), "--images", str(images), "--out", str(out)]
    assert main(args) == 0
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main(args) == 0
    assert sorted(first) == ["x.png", "x_color.png", "y.png", "y_color.png"]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first


def test_predict_with_a_corrupt_image_writes_nothing(checkpoint, tmp_path, capsys):
    images, out = tmp_path / "images", tmp_path / "out"
    _image_folder(images, ["a.png", "b.png", "c.png", "d.png"])
    (images / "e.png").write_bytes(b"not a png")
    assert main(["predict", "--checkpoint", str(checkpoint.path), "--images", str(images), "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {images / 'e.png'}: unreadable image")
    assert not out.exists()


@pytest.mark.parametrize("where", ["through_a_file", "proc"])
def test_predict_out_that_cannot_be_written_is_one_error_line(checkpoint, tmp_path, capsys, where):
    images = tmp_path / "images"
    _image_folder(images, ["a.png"])
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "sub" if where == "through_a_file" else "/proc/raysemi_predictions"
    assert main(["predict", "--checkpoint", str(checkpoint.path), "--images", str(images), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: --out {out}: ")


@pytest.mark.parametrize("where", ["unwritable", "a_folder", "through_a_file"])
def test_export_to_an_output_that_cannot_be_written_is_one_error_line(checkpoint, tmp_path, capsys, monkeypatch,
                                                                      where):
    import raysemi.engine.predictor as predictor_module

    (tmp_path / "file").write_text("x")
    out = {"unwritable": "/proc/model.ts", "a_folder": tmp_path, "through_a_file": tmp_path / "file" / "m.ts"}[where]
    monkeypatch.setattr(predictor_module, "load_eval_model", lambda *a: pytest.fail("loaded before the check"))
    assert main(["export", "--checkpoint", str(checkpoint.path), "--format", "torchscript", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: --out {out}: "), err


def test_report_and_analyze_outputs_are_checked_before_work(checkpoint, tmp_path, capsys, monkeypatch):
    import raysemi.engine.inference as inference

    (tmp_path / "file").write_text("x")
    bad = tmp_path / "file" / "out"
    monkeypatch.setattr(inference, "load_eval_model", lambda *a, **k: pytest.fail("loaded before the check"))
    commands = [
        ["report", str(tmp_path), "--out", str(bad)],
        ["analyze", "calibration", "--checkpoint", str(checkpoint.path), "--out", str(bad)],
        ["analyze", "gradcam", "--checkpoint", str(checkpoint.path), "--image", "x.png", "--pixel", "1,1",
         "--out", str(bad / "g.png")],
        ["analyze", "compare", "--checkpoints", str(checkpoint.path), "--images", str(tmp_path),
         "--out", str(tmp_path)],
    ]
    for command in commands:
        assert main(command) == 2, command
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: --out "), (command, err)


def test_predict_takes_a_pil_image_and_a_list_of_them(checkpoint):
    from PIL import Image

    predictor = raysemi.load(checkpoint.path)
    array = _images()[0]
    expected = predictor.predict(array)[0]
    (single,) = predictor.predict(Image.fromarray(array))
    np.testing.assert_array_equal(single, expected)
    maps = predictor.predict([Image.fromarray(array), Image.fromarray(array).convert("RGBA")])
    assert len(maps) == 2 and all((m == expected).all() for m in maps)


def test_a_bad_override_to_load_is_blamed_on_the_override(checkpoint):
    from raysemi.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        raysemi.load(checkpoint.path, ["eval.mode=bogus"])
    message = str(caught.value)
    assert message.startswith("override eval.mode=bogus: eval.mode='bogus' is not accepted")
    assert not message.startswith(str(checkpoint.config))
