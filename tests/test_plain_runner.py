"""The plain-torch backend (:mod:`raysemi.engine.plain`): the same batches as Ray Data, the same loop and losses."""

from __future__ import annotations

import json
import multiprocessing
from itertools import islice

import numpy as np
import pytest
import torch

from raysemi.data.dataset import open_dataset
from raysemi.data.pipeline import DecodeEvalRow, val_records
from raysemi.data.streams import stream_decoder, stream_records
from raysemi.data.transforms import TrainAugment
from raysemi.engine.loop import TrainingRun
from raysemi.engine.plain import DecodedBatches, DecodedRows, _batches, train_plain
from raysemi.methods import build_method
from raysemi.tracking import read_metrics
from tests.conftest import fast_config

CPU = torch.device("cpu")
# supervised, 6 steps of 4 crops, losses logged at steps 2, 4 and 6, evaluations at steps 4 and 6 (the end)
SIX_STEPS = ("train.steps=6", "data.label_count=8", "train.eval_every=4")


def assert_same_batches(local, ray_batches, count: int) -> None:
    """The first ``count`` batches of two iterators have the same keys and equal tensors (dtype included)."""
    pairs = list(zip(islice(local, count), islice(ray_batches, count), strict=True))
    assert len(pairs) == count
    for mine, theirs in pairs:
        assert set(mine) == set(theirs)
        for key in mine:
            assert mine[key].dtype == theirs[key].dtype, key
            assert torch.equal(mine[key], theirs[key]), key
    assert not torch.equal(pairs[0][0]["image"], pairs[1][0]["image"])  # distinct batches: the check can fail


def test_dataloader_batches_are_ray_datas_batches(synthetic_root, tmp_path, ray_local):
    """CPS, 3 steps of 4 labeled (4 labeled images) and 4 unlabeled crops: each stream's first 3 batches, decoded
    in a DataLoader process, are Ray Data's tensors; so are the val batches (8 images in batches of 3: 3, 3, 2)."""
    from raysemi.ray.data import build_datasets

    cfg = fast_config(synthetic_root, tmp_path / "run", "method=cps", "data.label_count=4",
                      "train.unlabeled_batch_size=4", "train.steps=3", "eval.batch_size=3")
    source, specs = open_dataset(cfg.data), build_method(cfg).streams()
    assert set(specs) == {"labeled", "unlabeled"}
    datasets = build_datasets(cfg, source, specs, start_step=0)
    augment = TrainAugment.from_config(cfg.data, source.classes.ignore_index)
    for name, spec in specs.items():
        records = stream_records(source, spec, cfg.train.steps, 0, cfg.run.seed, name)
        decode = stream_decoder(spec, "generic", str(source.root), augment)
        local = DecodedBatches(records, spec.per_worker_batch(1), decode)
        assert len(local) == 3
        ray_batches = datasets[name].iter_torch_batches(batch_size=spec.per_worker_batch(1), drop_last=True)
        assert_same_batches(_batches(local, None, 1), iter(ray_batches), 3)

    val = DecodedRows(val_records(source.val, 1), DecodeEvalRow("generic", str(source.root)))
    local_val = list(_batches(val, cfg.eval.batch_size, 1))
    assert [len(b["image"]) for b in local_val] == [3, 3, 2]
    assert_same_batches(iter(local_val), iter(datasets["val"].iter_torch_batches(batch_size=3)), 3)


def test_decode_processes_end_with_the_last_batch():
    """A stream's DataLoader process ends as its last batch is handed over, not when this process exits (the
    loop never asks past the last batch, and the watchdog's thread keeps the iterator referenced)."""
    before = set(multiprocessing.active_children())
    batches = _batches(DecodedRows([{"value": np.array([i])} for i in range(3)], dict), None, 1)
    assert torch.equal(next(batches)["value"], torch.tensor([0]))
    assert len(set(multiprocessing.active_children()) - before) == 1  # the one decode process
    assert [batch["value"].item() for batch in batches] == [1, 2]
    assert set(multiprocessing.active_children()) <= before


def test_iterating_a_stream_draws_nothing_from_torchs_global_random_numbers():
    """A DataLoader iterator draws a seed; from torch's global generator it would shift the training's random
    numbers after each evaluation, away from the Ray path's."""
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    assert len(list(_batches(DecodedRows([{"value": np.array([i])} for i in range(3)], dict), 2, 0))) == 2
    assert torch.equal(torch.rand(3), expected)


@pytest.fixture(scope="module")
def local_runs(synthetic_root, tmp_path_factory):
    """Two 6-step supervised runs of one config by ``train_plain``: decoding in the loop's process (0) and in one
    DataLoader process (1); ``{workers: (run_dir, summary)}``."""
    root = tmp_path_factory.mktemp("local_runs")
    runs = {}
    for workers in (0, 1):
        cfg = fast_config(synthetic_root, root / f"workers{workers}", *SIX_STEPS)
        runs[workers] = (root / f"workers{workers}", train_plain(cfg, data_workers=workers, device=CPU,
                                                                 torch_threads=1))
    return runs


def test_train_plain_writes_a_summary_and_a_finished_run_is_not_retrained(synthetic_root, local_runs,
                                                                          monkeypatch, capsys):
    for run_dir, summary in local_runs.values():
        assert json.loads((run_dir / "summary.json").read_text()) == summary
        assert summary["steps"] == 6 and 0 <= summary["miou"] <= 1
        records = read_metrics(run_dir)
        assert [r["step"] for r in records] == [2, 4, 6]
        assert all(r["loss"] > 0 for r in records) and ["val" in r for r in records] == [False, True, True]
        assert records[-1]["val"]["miou"] == pytest.approx(summary["miou"])

    run_dir, summary = local_runs[0]
    monkeypatch.setattr(TrainingRun, "fit", lambda self: pytest.fail("a finished run trained again"))
    capsys.readouterr()
    again = train_plain(fast_config(synthetic_root, run_dir, *SIX_STEPS), data_workers=0, device=CPU)
    assert again == summary and "already finished 6 steps" in capsys.readouterr().out


def test_decode_processes_change_no_loss(local_runs):
    """One intra-op thread on CPU: the loop is deterministic, so where the crops were decoded cannot show."""
    in_loop, in_worker = (read_metrics(local_runs[workers][0]) for workers in (0, 1))
    assert in_loop[0]["loss"] == in_worker[0]["loss"]
    assert [r["loss"] for r in in_loop] == [r["loss"] for r in in_worker]
    assert local_runs[0][1]["miou"] == local_runs[1][1]["miou"]


def test_ray_runner_and_local_runner_log_the_same_losses(synthetic_root, tmp_path, local_runs, ray_local):
    """Ray Train's local mode (``scaling.num_workers=0``) on the config of ``local_runs``: the same loss at each
    log step, so a benchmark run by either runner measures the same training (step 6's loss comes after the
    step-4 evaluation, which must not disturb the training's random numbers)."""
    from raysemi.ray.train import train

    summary = train(fast_config(synthetic_root, tmp_path / "ray", *SIX_STEPS))
    ray_losses = [r["loss"] for r in read_metrics(tmp_path / "ray")]
    local_losses = [r["loss"] for r in read_metrics(local_runs[0][0])]
    assert ray_losses[0] == pytest.approx(local_losses[0], abs=1e-5)
    assert ray_losses == pytest.approx(local_losses, abs=1e-5)
    assert summary["miou"] == pytest.approx(local_runs[0][1]["miou"], abs=1e-5)
