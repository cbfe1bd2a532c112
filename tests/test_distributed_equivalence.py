"""Two DDP workers at a global batch of 8 compute what one process computes at a batch of 8.

The engine's own per-step code (:meth:`TrainingRun._train_step`: the method's ``training_step``, backward
through the DDP-wrapped models, the optimizer) runs in two processes joined by ``torch.distributed`` (gloo, CPU),
each fed its half of the same decoded global batches; the reference is the same code in this process at the
whole batch. Not a Ray TorchTrainer: Ray Data hands rows to workers in an order of its own (see
docs/cluster.md), which is the data's question, not the arithmetic's, and would cost a minute of start-up.

BatchNorm is frozen (eval mode: its running statistics, not the batch's), since batch statistics depend on how the
batch is split by definition, and dropout is off (each rank draws its masks from the same seed, so a worker's masks
are not the matching rows of one process's). The data has no ignore pixels (the labeled cross-entropy is each
worker's mean over its valid pixels, like torchvision's and mmseg's; with ignore pixels unevenly spread the two
differ by that weighting). CPS runs without CutMix: its boxes and its roll pairing are drawn per worker (see
docs/cluster.md). CAC keeps its context crops, filters and negatives; ``cac.num_negatives`` exceeds the batch's
cells, so every worker sends all of its cells and the gathered set is the whole batch's.
"""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from raysemi.config import Config
from raysemi.data.dataset import open_dataset
from raysemi.data.pipeline import DecodeEvalRow, val_records
from raysemi.data.streams import stream_decoder, stream_records
from raysemi.data.transforms import TrainAugment
from raysemi.engine.loop import RunInfo, TrainingRun, WorkerEnv
from raysemi.engine.plain import DecodedBatches, DecodedRows
from raysemi.methods import build_method
from raysemi.models import unwrap
from tests.conftest import fast_config

STEPS = 3
WORLD = 2
COMMON = ["train.batch_size=8", "train.unlabeled_batch_size=8", f"train.steps={STEPS}", "data.crop_size=[40,56]",
          "data.scale_range=[1.0,1.0]", "optim.name=sgd", "optim.lr=0.05", "eval.batch_size=3"]
METHODS = {
    "supervised": [],
    "cps": ["method=cps", "cps.cutmix=false", "data.label_fraction=0.5"],
    "cac": ["method=cac", "data.label_fraction=0.5", "cac.gamma=0", "cac.num_negatives=100000", "cac.chunk_size=64"],
}


def freeze_batch_dependent(model: nn.Module) -> None:
    """Every BatchNorm of ``model`` normalises with its running statistics and every dropout is off, whatever
    ``model.train()`` says (dropout masks are drawn per worker, from a generator every rank seeds alike)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm | nn.modules.dropout._DropoutNd):
            module.eval()
            module.train = lambda mode=True, module=module: module  # model.train() leaves it in eval mode


def worker_share(batch: dict[str, torch.Tensor], rank: int, world: int) -> dict[str, torch.Tensor]:
    """Rows ``[rank·n/W, (rank+1)·n/W)`` of every tensor of a global batch."""
    n = len(next(iter(batch.values())))
    return {key: value[rank * n // world:(rank + 1) * n // world] for key, value in batch.items()}


def global_batches(cfg: Config) -> list[dict[str, dict[str, torch.Tensor]]]:
    """The run's first ``train.steps`` global batches of every stream, decoded as the Ray path decodes them."""
    source = open_dataset(cfg.data)
    augment = TrainAugment.from_config(cfg.data, source.classes.ignore_index)
    streams = {}
    for name, spec in build_method(cfg).streams().items():
        records = stream_records(source, spec, cfg.train.steps, 0, cfg.run.seed, name)
        decode = stream_decoder(spec, source.reader.spec, str(source.root), augment)
        decoded = DecodedBatches(records, spec.batch_size, decode)
        streams[name] = [{k: torch.as_tensor(v) for k, v in decoded[i].items()} for i in range(cfg.train.steps)]
    return [{name: batches[step] for name, batches in streams.items()} for step in range(cfg.train.steps)]


def val_loader(cfg: Config, rank: int, world: int) -> DataLoader:
    """This rank's share of the first 7 val images, padded to a multiple of ``world`` (as the Ray path pads
    them), in batches of ``eval.batch_size``=3: 8 padded rows give each of 2 ranks batches of 3 and 1."""
    source = open_dataset(cfg.data)
    records = val_records(source.val[:7], world)[rank::world]
    rows = DecodedRows(records, DecodeEvalRow(source.reader.spec, str(source.root)))
    return DataLoader(rows, batch_size=cfg.eval.batch_size)


def train_steps(cfg: Config, run_dir: Path, rank: int, world: int) -> dict:
    """Evaluate the initial weights, then train ``train.steps`` steps on this rank's share; return the val
    summary, the first step's gradients, CAC's first negatives and the final weights."""
    source = open_dataset(cfg.data)
    env = WorkerEnv(rank=rank, world_size=world, device=torch.device("cpu"), streams={},
                    val_batches=lambda: val_loader(cfg, rank, world), report=lambda metrics: None)
    run = TrainingRun(cfg, RunInfo(run_dir, tuple(source.classes.names),
                                   tuple(tuple(c) for c in source.classes.palette)), env)
    result: dict = {"val": run.evaluate()}
    for model in run.models.values():
        model.train()
        freeze_batch_dependent(model)
    if hasattr(run.method, "_negatives"):
        record_first_negatives(run.method, result)
    for step, batch in enumerate(global_batches(cfg)):
        shares = {name: worker_share(stream, rank, world) for name, stream in batch.items()}
        logged = run._train_step({name: run._prepare(share) for name, share in shares.items()})
        run.step += 1
        if step == 0:
            result["logged"] = {key: float(value) for key, value in logged.items()}
            result["grads"] = {key: p.grad.clone() for key, p in parameters(run) if p.grad is not None}
    result["weights"] = {key: p.detach().clone() for key, p in parameters(run)}
    return result


def parameters(run: TrainingRun):
    return ((f"{name}.{key}", p) for name, model in run.models.items() for key, p in unwrap(model).named_parameters())


def record_first_negatives(method, result: dict) -> None:
    """Keep the negatives (after the gather) of CAC's first step in ``result["negatives"]``."""
    original = method._negatives

    def recording(views, step):
        feats, labels = original(views, step)
        result.setdefault("negatives", (feats.clone(), labels.clone()))
        return feats, labels

    method._negatives = recording


def configs(data_root: Path, tmp_path: Path) -> dict[str, Config]:
    return {name: fast_config(data_root, tmp_path / name, *COMMON, *extra) for name, extra in METHODS.items()}


def _on_rank(rank: int, port: int, data_root: str, tmp: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        results = {name: train_steps(cfg, Path(tmp) / f"rank{rank}" / name, rank, WORLD)
                   for name, cfg in configs(Path(data_root), Path(tmp)).items()}
        torch.save(results, Path(tmp) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def both_runs(synthetic_root, tmp_path_factory) -> tuple[dict, dict, dict]:
    """(one process at batch 8, rank 0 of two, rank 1 of two), each ``{method: train_steps result}``."""
    import torch.multiprocessing as mp

    tmp = tmp_path_factory.mktemp("ddp")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_on_rank, args=(port, str(synthetic_root), str(tmp)), nprocs=WORLD)
    torch.set_num_threads(1)
    single = {name: train_steps(cfg, tmp / "single" / name, 0, 1) for name, cfg in configs(synthetic_root, tmp).items()}
    return single, torch.load(tmp / "rank0.pt"), torch.load(tmp / "rank1.pt")


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


@pytest.mark.parametrize("method", list(METHODS))
def test_two_workers_give_the_first_step_gradients_of_one_process(both_runs, method):
    single, rank0, rank1 = (run[method] for run in both_runs)
    assert single["grads"].keys() == rank0["grads"].keys() == rank1["grads"].keys()
    reached = [key for key, grad in single["grads"].items() if grad.abs().sum() > 0]
    assert len(reached) >= 4  # the losses reach the models: the comparison is not one of zeros
    for key, grad in single["grads"].items():
        assert relative_error(rank0["grads"][key], grad) < 1e-5, key
        assert torch.equal(rank0["grads"][key], rank1["grads"][key]), key  # DDP's all-reduce: one answer
    for key in ("loss", "loss_sup"):  # the workers' mean of their logged values is the global batch's
        assert (rank0["logged"][key] + rank1["logged"][key]) / 2 == pytest.approx(single["logged"][key], rel=1e-5)


@pytest.mark.parametrize("method", list(METHODS))
def test_two_workers_end_with_the_weights_of_one_process(both_runs, method):
    single, rank0, rank1 = (run[method] for run in both_runs)
    moved = [key for key, w in single["weights"].items() if w.abs().sum() > 0]
    assert moved
    for key, weight in single["weights"].items():
        assert relative_error(rank0["weights"][key], weight) < 1e-5, key
        assert torch.equal(rank0["weights"][key], rank1["weights"][key]), key


def test_cac_consistency_loss_weighs_every_kept_anchor_of_the_global_batch_once(both_runs):
    # the loss_dc each worker logs is W·(its sum)/K (K kept anchors over both workers): their mean is the global
    # batch's mean, even though the two halves keep different numbers of anchors
    single, rank0, rank1 = (run["cac"] for run in both_runs)
    assert single["logged"]["loss_dc"] > 0
    assert (rank0["logged"]["loss_dc"] + rank1["logged"]["loss_dc"]) / 2 == pytest.approx(
        single["logged"]["loss_dc"], rel=1e-5)
    assert rank0["logged"]["anchors"] + rank1["logged"]["anchors"] == single["logged"]["anchors"]


def test_cac_negatives_gathered_from_both_workers_are_the_single_process_set(both_runs):
    single, rank0, rank1 = (run["cac"]["negatives"] for run in both_runs)
    feats, labels = single
    assert len(feats) == 8 * 2 * (40 // 8) * (56 // 8)  # every stride-8 cell of both crops of the 8 images
    for gathered_feats, gathered_labels in (rank0, rank1):
        assert len(gathered_feats) == len(feats)
        distance = torch.cdist(gathered_feats.double(), feats.double())
        match = distance.argmin(1)  # each gathered negative's nearest single-process negative
        assert sorted(match.tolist()) == list(range(len(feats)))  # a one-to-one match
        assert float(distance.min(1).values.max()) < 1e-5
        assert torch.equal(gathered_labels, labels[match])


@pytest.mark.parametrize("method", list(METHODS))
def test_evaluation_split_over_two_workers_with_a_padding_row_and_short_batches_counts_each_image_once(
        both_runs, method):
    # 7 val images padded to 8: each worker evaluates 4 rows in batches of 3 and 1; one process 7 in 3, 3, 1
    single, rank0, rank1 = (run[method]["val"] for run in both_runs)
    assert rank0 == rank1
    assert np.array_equal(rank0["iou"], single["iou"]) and rank0["miou"] == single["miou"]
    assert rank0["pixel_acc"] == single["pixel_acc"]
