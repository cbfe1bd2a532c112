"""The CUDA path: AMP, channels-last, SyncBatchNorm under torch.distributed, export of a GPU-trained model.

Every test skips without CUDA (the CI machine has none); ``experiments/device/check.sh`` runs them on a GPU.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from raysemi.engine.checkpoint import latest_checkpoint
from raysemi.engine.loop import RunInfo, TrainingRun, WorkerEnv
from raysemi.engine.plain import train_plain
from raysemi.models import unwrap
from tests.conftest import fast_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (experiments/device/check.sh)")
CUDA = torch.device("cuda")


def training_run(cfg, world_size: int = 1) -> TrainingRun:
    from raysemi.data.dataset import open_dataset

    source = open_dataset(cfg.data)
    env = WorkerEnv(rank=0, world_size=world_size, device=CUDA, streams={}, val_batches=lambda: [],
                    report=lambda metrics: None)
    info = RunInfo(Path(cfg.run.dir), tuple(source.classes.names), tuple(tuple(c) for c in source.classes.palette))
    return TrainingRun(cfg, info, env)


def batch(cfg) -> dict[str, dict[str, torch.Tensor]]:
    """A labeled batch of 4 random uint8 images with masks of classes 0..2, as a stream hands it over."""
    height, width = cfg.data.crop_size
    generator = torch.Generator().manual_seed(0)
    return {"labeled": {"image": torch.randint(0, 256, (4, 3, height, width), dtype=torch.uint8, generator=generator),
                        "mask": torch.randint(0, 3, (4, height, width), dtype=torch.uint8, generator=generator)}}


def test_amp_and_channels_last_train_a_step_on_the_gpu(synthetic_root, tmp_path):
    cfg = fast_config(synthetic_root, tmp_path / "run", "train.amp=true", "train.channels_last=auto")
    run = training_run(cfg)
    assert run.use_amp and run.memory_format == torch.channels_last  # auto: channels-last with AMP on CUDA
    conv = next(m for m in unwrap(run.models["segmenter"]).modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_cuda and conv.weight.is_contiguous(memory_format=torch.channels_last)
    before = {k: p.detach().clone() for k, p in run.models["segmenter"].named_parameters()}
    logged = run._train_step({name: run._prepare(b) for name, b in batch(cfg).items()})
    assert torch.isfinite(logged["loss"]) and run.scaler.is_enabled() and run.scaler.get_scale() > 0
    moved = [k for k, p in run.models["segmenter"].named_parameters() if not torch.equal(p, before[k])]
    assert len(moved) > len(before) // 2 and all(p.dtype == torch.float32 for p in before.values())


def test_a_short_run_on_the_gpu_writes_a_checkpoint_that_exports_and_runs_on_cuda(synthetic_root, tmp_path):
    cfg = fast_config(synthetic_root, tmp_path / "run", "train.amp=true", "train.steps=8")
    summary = train_plain(cfg, data_workers=0, device=CUDA)
    assert 0 <= summary["miou"] <= 1
    checkpoint = latest_checkpoint(tmp_path / "run")
    import raysemi
    from raysemi.engine.predictor import export

    image = torch.randint(0, 256, (48, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    expected = raysemi.load(checkpoint.path).logits(image.numpy())[0].cpu()
    inputs = image.permute(2, 0, 1)[None].float() / 255
    torch.save(inputs, tmp_path / "inputs.pt")
    for fmt in ("torchscript", "exported_program"):
        out = export(checkpoint.path, fmt, tmp_path / f"model.{fmt}")
        subprocess.run([sys.executable, "-c", RUN_ON_CUDA, fmt, str(out), str(tmp_path / "inputs.pt"),
                        str(tmp_path / "logits.pt")], check=True, cwd=tmp_path)
        logits = torch.load(tmp_path / "logits.pt")
        assert logits.device.type == "cpu"  # moved back by the script after running on CUDA
        torch.testing.assert_close(logits[0], expected, atol=1e-3, rtol=1e-3)


RUN_ON_CUDA = """
import sys, torch
kind, path, inputs, out = sys.argv[1:]
model = torch.jit.load(path, map_location="cuda") if kind == "torchscript" else torch.export.load(path).module()
model = model.to("cuda")
with torch.no_grad():
    logits = model(torch.load(inputs).cuda())
assert logits.is_cuda
torch.save(logits.cpu(), out)
"""


def test_sync_batchnorm_under_a_process_group_on_one_gpu(synthetic_root, tmp_path):
    """NCCL with one rank: the loop converts BatchNorm to SyncBatchNorm and wraps DDP, as on a multi-GPU node.
    With one rank SyncBatchNorm normalises as BatchNorm does, so the step's loss equals a plain run's."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        cfg = fast_config(synthetic_root, tmp_path / "sync", "model.sync_bn=true", "train.amp=false")
        synced = training_run(cfg, world_size=2)  # world_size > 1 takes the multi-worker branch of _place
        model = synced.models["segmenter"]
        assert isinstance(model, nn.parallel.DistributedDataParallel)
        assert any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
        loss = synced._train_step({n: synced._prepare(b) for n, b in batch(cfg).items()})["loss"]
    finally:
        dist.destroy_process_group()
    plain = training_run(fast_config(synthetic_root, tmp_path / "plain", "train.amp=false"))
    expected = plain._train_step({n: plain._prepare(b) for n, b in batch(cfg).items()})["loss"]
    torch.testing.assert_close(loss, expected, atol=1e-4, rtol=1e-4)
