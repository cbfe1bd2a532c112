"""``run.sync_to``: a run mirrored to object storage (here a ``file://`` URI, through the same pyarrow file
system API as s3:// and gs://) resumes on a machine that never saw it."""

import shutil

import pytest
import torch

from raysemi.cli import main
from raysemi.engine.checkpoint import latest_checkpoint
from raysemi.engine.mirror import RunMirror
from raysemi.errors import ConfigError
from raysemi.ray.train import train
from raysemi.tracking import read_metrics
from tests.conftest import fast_config, train_until_a_crash_at_step_5


def remote_files(bucket) -> list[str]:
    return sorted(p.relative_to(bucket).as_posix() for p in bucket.rglob("*") if p.is_file())


def test_a_mirrored_run_resumes_on_a_fresh_machine(synthetic_root, tmp_path, ray_local):
    bucket = tmp_path / "bucket" / "run"
    steps = ("train.steps=6", "train.checkpoint_every=2", f"run.sync_to=file://{bucket}")
    train_until_a_crash_at_step_5(fast_config(synthetic_root, tmp_path / "machine-a" / "run", *steps))
    checkpoint_files = ["config.yaml", "meta.json", "model.pt", "training_state.pt"]
    assert remote_files(bucket) == [
        *(f"checkpoints/step_0000000{n}/{f}" for n in (2, 4) for f in checkpoint_files),
        "config.yaml", "labeled.txt", "metrics.jsonl", "split.json", "unlabeled.txt",
    ]
    shutil.rmtree(tmp_path / "machine-a")  # the machine is gone

    summary = train(fast_config(synthetic_root, tmp_path / "machine-b" / "run", *steps))
    local = tmp_path / "machine-b" / "run"
    assert [r["step"] for r in read_metrics(local)] == [2, 4, 6]  # steps 1-4 came from the mirror, not redone
    assert summary["steps"] == 6 and (bucket / "summary.json").is_file()
    assert [p.name for p in sorted((bucket / "checkpoints").iterdir())] == ["step_00000004", "step_00000006"]

    uninterrupted = tmp_path / "uninterrupted"
    train(fast_config(synthetic_root, uninterrupted, "train.steps=6", "train.checkpoint_every=2"))
    resumed = torch.load(latest_checkpoint(local).model, weights_only=True)
    for key, value in torch.load(latest_checkpoint(uninterrupted).model, weights_only=True).items():
        assert torch.allclose(resumed[key].float(), value.float(), atol=1e-5), key


def test_a_checkpoint_whose_upload_was_cut_short_is_not_pulled(tmp_path):
    bucket = tmp_path / "bucket"
    for step, files in ((4, ["model.pt", "training_state.pt", "config.yaml", "meta.json"]),
                        (6, ["model.pt", "training_state.pt"])):  # step 6: the uploader died before meta.json
        folder = bucket / "checkpoints" / f"step_0000000{step}"
        folder.mkdir(parents=True)
        for name in files:
            (folder / name).write_text(f"{name} of step {step}")
    (bucket / "config.yaml").write_text("method: supervised\n")
    (bucket / "ray").mkdir()
    (bucket / "ray" / "state.json").write_text("{}")

    RunMirror(f"file://{bucket}", tmp_path / "local").pull()
    local = tmp_path / "local"
    assert sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()) == [
        "checkpoints/step_00000004/config.yaml", "checkpoints/step_00000004/meta.json",
        "checkpoints/step_00000004/model.pt", "checkpoints/step_00000004/training_state.pt", "config.yaml",
    ]  # Ray's own folder is not mirrored


def test_a_sync_to_pyarrow_cannot_open_is_one_line(synthetic_root, tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(fast_config(synthetic_root, tmp_path / "run", "run.sync_to=bogus://bucket/run").to_yaml())
    assert main(["train", "-c", str(config)]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: run.sync_to=bogus://bucket/run: not a storage URI pyarrow can open (Unrecognized filesystem type "
        "in URI: bogus://bucket/run); expected s3://bucket/path, gs://bucket/path, abfs://..., or file:///path")
    assert not (tmp_path / "run").exists()


def test_chained_methods_refuse_a_mirror(tmp_path):
    cfg = fast_config(tmp_path, tmp_path / "run", "method=self_correction", "self_correction.stage=all",
                      "data.unlabeled_boxes=boxes.txt",
                      f"run.sync_to=file://{tmp_path}/bucket")
    with pytest.raises(ConfigError, match="run.sync_to: method self_correction chains stages"):
        train(cfg)
