"""End-to-end runs through Ray Train in local mode (``scaling.num_workers=0``): the loop runs in-process."""

import contextlib
import csv
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from raysemi.cli import main
from raysemi.data.formats import GenericFormat
from raysemi.data.streams import StreamSpec
from raysemi.engine.checkpoint import latest_checkpoint, list_checkpoints
from raysemi.engine.inference import evaluate_checkpoint, load_eval_model, predict_folder
from raysemi.errors import CheckpointError
from raysemi.ray.train import open_streams, train
from raysemi.tracking import read_metrics
from tests.conftest import fast_config, train_until_a_crash_at_step_5


def test_train_writes_a_complete_run_directory(synthetic_root, tmp_path, ray_local, capsys):
    run_dir = tmp_path / "run"
    cfg = fast_config(synthetic_root, run_dir, "train.checkpoint_every=2", "train.eval_every=2")
    summary = train(cfg)
    assert {p.name for p in run_dir.iterdir()} >= {
        "config.yaml", "metrics.jsonl", "summary.json", "checkpoints", "labeled.txt", "unlabeled.txt"
    }
    assert json.loads((run_dir / "summary.json").read_text()) == summary
    assert 0 <= summary["miou"] <= 1 and set(summary["iou"]) == set(GenericFormat(synthetic_root).classes.names)
    assert [c.path.name for c in list_checkpoints(run_dir)] == ["step_00000002", "step_00000004"]
    assert summary["checkpoint"] == str(latest_checkpoint(run_dir).path)
    records = read_metrics(run_dir)
    assert [r["step"] for r in records] == [2, 4]
    assert all("val" in r and "loss" in r and r["data_wait_frac"] >= 0 for r in records)
    # model.pt holds the eval weights only, loadable without unpickling arbitrary objects
    weights = torch.load(latest_checkpoint(run_dir).model, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in weights.values())
    assert any(k.startswith("segmenter.backbone.") for k in weights)

    # `raysemi eval` on the checkpoint reproduces the final mIoU; `predict` writes label and colour PNGs
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run_dir)]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["miou"] == pytest.approx(summary["miou"], abs=1e-9)
    out = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(run_dir), "--images", str(synthetic_root / "val/images"),
                 "--out", str(out)]) == 0
    assert len(list(out.glob("*_color.png"))) == 8 and len(list(out.glob("val_*[0-9].png"))) == 8

    # the analyses run on the checkpoint: calibration over val, Grad-CAM of a pixel, a comparison grid, a report
    analysis = tmp_path / "analysis"
    assert main(["analyze", "calibration", "--checkpoint", str(run_dir), "--out", str(analysis)]) == 0
    with (analysis / "calibration.csv").open() as handle:
        assert sum(int(row["pixels"]) for row in csv.DictReader(handle)) == 8 * 48 * 64  # every val pixel
    # pseudo-labels per class (on val: this run has no unlabeled image); at τ = 0 every pixel passes and recall is
    # pixel accuracy; all labels used, so the default (the unlabeled images' held-back masks) has nothing to score
    assert main(["analyze", "pseudo-labels", "--checkpoint", str(run_dir), "--thresholds", "0", "1",
                 "--images", "val", "--out", str(analysis)]) == 0
    with (analysis / "pseudo_labels.csv").open() as handle:
        totals = {float(r["threshold"]): r for r in csv.DictReader(handle) if r["class"] == "all"}
    assert int(totals[0.0]["pixels"]) == 8 * 48 * 64 and float(totals[0.0]["passed"]) == 1.0
    assert float(totals[0.0]["recall"]) == pytest.approx(summary["pixel_acc"], abs=1e-6)
    assert float(totals[0.0]["recall"]) == pytest.approx(float(totals[0.0]["precision"]))
    assert float(totals[1.0]["passed"]) < 0.05  # a softmax reaches exactly 1 on (almost) no pixel
    assert main(["analyze", "pseudo-labels", "--checkpoint", str(run_dir), "--thresholds", "1.5"]) == 2
    assert "--thresholds: 1.5 is outside [0, 1]" in capsys.readouterr().err
    assert main(["analyze", "pseudo-labels", "--checkpoint", str(run_dir), "--out", str(analysis)]) == 2
    assert "none of the 0 unlabeled images" in capsys.readouterr().err
    image = sorted((synthetic_root / "val/images").iterdir())[0]
    assert main(["analyze", "gradcam", "--checkpoint", str(run_dir), "--image", str(image), "--pixel", "20,30",
                 "--out", str(analysis / "cam.png")]) == 0
    assert Image.open(analysis / "cam.png").size == (64, 48)
    assert main(["analyze", "compare", "--checkpoints", str(run_dir), str(run_dir), "--images",
                 str(synthetic_root / "val/images"), "--limit", "3", "--out", str(analysis / "grid.png")]) == 0
    assert Image.open(analysis / "grid.png").size == (4 * 64, 3 * 48 + 14)  # input, truth, two models
    assert main(["analyze", "gradcam", "--checkpoint", str(run_dir), "--image", str(image), "--pixel", "99,1"]) == 2
    assert "outside" in capsys.readouterr().err
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "report")]) == 0
    assert "supervised" in (tmp_path / "report" / "summary.md").read_text()


def test_interrupted_run_resumes_and_matches_an_uninterrupted_one(synthetic_root, tmp_path, ray_local):
    full = fast_config(synthetic_root, tmp_path / "full", "train.steps=6", "train.checkpoint_every=2")
    train(full)

    broken = fast_config(synthetic_root, tmp_path / "broken", "train.steps=6", "train.checkpoint_every=2")
    train_until_a_crash_at_step_5(broken)
    assert latest_checkpoint(tmp_path / "broken").read_meta()["step"] == 4
    assert not (tmp_path / "broken" / "summary.json").exists()
    train(broken)  # the same command again resumes from step 4

    assert [r["step"] for r in read_metrics(tmp_path / "broken")] == [2, 4, 6]
    resumed = torch.load(latest_checkpoint(tmp_path / "broken").model, weights_only=True)
    uninterrupted = torch.load(latest_checkpoint(tmp_path / "full").model, weights_only=True)
    for key, value in uninterrupted.items():
        assert torch.allclose(resumed[key].float(), value.float(), atol=1e-5), key


def test_unlabeled_masks_are_never_read(synthetic_root, tmp_path, ray_local):
    """Delete the masks of every unlabeled image: a run still works, and unlabeled records carry no mask."""
    import raysemi.data.pipeline as pipeline
    from raysemi.data.dataset import open_dataset

    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root)
    cfg = fast_config(root, tmp_path / "run", "data.label_fraction=0.25")
    source = open_dataset(cfg.data)
    for sample in source.split.unlabeled:
        assert sample.mask is None
        (root / "train/labels" / sample.image.name).unlink()
    records = pipeline.plan_records(source.split.unlabeled, 4, 2, 0, 0, "unlabeled")
    decode = pipeline.DecodeTrainBatch("generic", str(root), pipeline.TrainAugment((48, 64)))
    out = decode({k: [r[k] for r in records] for k in records[0]})
    assert set(out) == {"image"} and out["image"].shape == (8, 3, 48, 64)
    assert train(cfg)["steps"] == 4


def test_labeled_stream_repeats_to_the_length_of_the_unlabeled_one(synthetic_root, tmp_path, ray_local):
    """3 labeled and 21 unlabeled images, 5 steps of 4: both streams deliver 20 rows; unlabeled rows have no mask."""
    from raysemi.data.dataset import open_dataset
    from raysemi.methods import StreamSpec
    from raysemi.ray.data import build_datasets

    cfg = fast_config(synthetic_root, tmp_path / "run", "data.label_count=3", "train.steps=5")
    source = open_dataset(cfg.data)
    streams = {"labeled": StreamSpec("labeled", 4), "unlabeled": StreamSpec("unlabeled", 4)}
    datasets = build_datasets(cfg, source, streams, start_step=0)
    labeled = datasets["labeled"].take_all()
    unlabeled = datasets["unlabeled"].take_all()
    assert len(labeled) == len(unlabeled) == 20
    assert set(unlabeled[0]) == {"image"} and set(labeled[0]) == {"image", "mask"}
    assert labeled[0]["image"].shape == (3, 48, 64) and labeled[0]["mask"].shape == (48, 64)
    assert datasets["val"].count() == 8


def test_wandb_offline_run_logs_from_rank_zero(synthetic_root, tmp_path, ray_local):
    cfg = fast_config(synthetic_root, tmp_path / "run", "tracking.wandb.mode=offline")
    train(cfg)
    offline_runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1
    run_id = (tmp_path / "run" / "wandb_id.txt").read_text().strip()
    assert offline_runs[0].name.endswith(run_id)
    assert list(offline_runs[0].glob("*.wandb"))


def test_workers_that_leave_no_cpu_for_data_are_refused(synthetic_root, tmp_path, ray_local):
    from raysemi.errors import ConfigError
    from raysemi.ray.train import check_cpu_budget

    cfg = fast_config(synthetic_root, tmp_path / "run", "scaling.num_workers=2", "scaling.cpus_per_worker=1")
    with pytest.raises(ConfigError, match=r"2 workers x 1.0 CPUs leave less than 1 of this Ray's 2 CPUs"):
        check_cpu_budget(cfg)
    check_cpu_budget(fast_config(synthetic_root, tmp_path / "run", "scaling.num_workers=2",
                                 "scaling.cpus_per_worker=0.5"))
    # two streams (labeled + unlabeled) need a whole CPU each once the workers have theirs
    cps = fast_config(synthetic_root, tmp_path / "run", "method=cps", "scaling.num_workers=1")
    with pytest.raises(ConfigError, match=r"leave less than 2 of this Ray's 2 CPUs for the 2 data stream\(s\) "
                                          r"of method cps; lower scaling.num_workers, or use scaling.num_workers=0"):
        check_cpu_budget(cps, num_streams=2)
    check_cpu_budget(fast_config(synthetic_root, tmp_path / "run", "method=cps", "scaling.num_workers=0"), 2)


def test_cps_trains_on_labeled_and_unlabeled_streams(synthetic_root, tmp_path, ray_local):
    cfg = fast_config(synthetic_root, tmp_path / "run", "method=cps", "data.label_count=4",
                      "train.unlabeled_batch_size=4")
    summary = train(cfg)
    records = read_metrics(tmp_path / "run")
    assert summary["method"] == "cps" and [r["step"] for r in records] == [2, 4]
    for record in records:
        assert record["loss"] == pytest.approx(record["loss_sup"] + record["cps_weight"] * record["loss_cps"])
        assert 0 <= record["pseudo_agreement"] <= 1 and 0 < record["pseudo_confidence"] <= 1
    weights = torch.load(latest_checkpoint(tmp_path / "run").model, weights_only=True)
    assert all(k.startswith("segmenter.") for k in weights)  # cps.eval=first: network 1 alone


def test_finished_run_is_not_retrained_and_a_lost_summary_is_rebuilt(synthetic_root, tmp_path, ray_local):
    cfg = fast_config(synthetic_root, tmp_path / "run")
    summary = train(cfg)
    stamp = latest_checkpoint(tmp_path / "run").model.stat().st_mtime_ns
    assert train(cfg) == summary  # already finished: nothing runs
    (tmp_path / "run" / "summary.json").unlink()  # e.g. a crash between the last checkpoint and the summary
    rebuilt = train(cfg)
    assert rebuilt["miou"] == pytest.approx(summary["miou"], abs=1e-9)
    assert latest_checkpoint(tmp_path / "run").model.stat().st_mtime_ns == stamp


def test_cac_with_image_tags_trains_on_crop_pairs(synthetic_root, tmp_path, ray_local):
    split = tmp_path / "split"
    assert main(["data", "split", str(synthetic_root), "--count", "4", "--out", str(split), "--tags"]) == 0
    cfg = fast_config(
        synthetic_root, tmp_path / "run", "method=cac", "train.unlabeled_batch_size=4", "cac.gamma=0",
        "cac.num_negatives=500", "cac.image_tags=true", "cac.tags_weight=0.5", "data.scale_range=[1.0,1.5]",
        f"data.labeled_split={split / 'labeled.txt'}", f"data.unlabeled_split={split / 'unlabeled.txt'}",
        f"data.unlabeled_tags={split / 'unlabeled_tags.txt'}",
    )
    summary = train(cfg)
    records = read_metrics(tmp_path / "run")
    assert summary["method"] == "cac" and [r["step"] for r in records] == [2, 4]
    for r in records:
        assert r["loss"] == pytest.approx(r["loss_sup"] + r["cac_weight"] * r["loss_dc"] + 0.5 * r["loss_tags"])
        # no padding (scale >= 1): 4 images × 2 crops × 6×8 cells at stride 8 = 384 < the 500 asked: all of them
        assert r["negatives"] == 384 and r["loss_dc"] > 0 and 0 < r["kept_both"] <= 1


def test_self_correction_stages_chain_and_a_repeated_command_reruns_nothing(synthetic_root, tmp_path, ray_local):
    split = tmp_path / "split"
    assert main(["data", "split", str(synthetic_root), "--count", "6", "--out", str(split), "--boxes"]) == 0
    cfg = fast_config(
        synthetic_root, tmp_path / "run", "method=self_correction", "self_correction.mode=linear",
        "self_correction.ancillary_steps=2", "train.unlabeled_batch_size=4", "self_correction.free_classes=[0]",
        f"data.labeled_split={split / 'labeled.txt'}", f"data.unlabeled_split={split / 'unlabeled.txt'}",
        f"data.unlabeled_boxes={split / 'unlabeled_boxes.txt'}",
    )
    summary = train(cfg)
    stages = json.loads((tmp_path / "run" / "stages.json").read_text())
    assert list(stages) == ["ancillary", "primary"] and summary["run_dir"] == str(tmp_path / "run" / "primary")
    assert [r["step"] for r in read_metrics(tmp_path / "run" / "ancillary")] == [2]
    primary = read_metrics(tmp_path / "run" / "primary")
    assert primary[0]["alpha"] < 30 and primary[0]["loss_weak"] > 0
    # the primary started from the ancillary stage's frozen ancillary
    ancillary = torch.load(latest_checkpoint(tmp_path / "run" / "ancillary").training_state, weights_only=True)
    final = torch.load(latest_checkpoint(tmp_path / "run" / "primary").training_state, weights_only=True)
    for key, value in ancillary["models"]["ancillary"].items():
        assert torch.equal(value, final["models"]["ancillary"][key]), key
    # the ancillary evaluates from its checkpoint with val boxes derived from the val masks, as in training
    loaded = load_eval_model(tmp_path / "run" / "ancillary")
    assert evaluate_checkpoint(loaded).summary(loaded.class_names)["miou"] == pytest.approx(stages["ancillary"]["miou"])
    with pytest.raises(CheckpointError, match="needs the boxes of each image"):
        predict_folder(loaded, synthetic_root / "val" / "images", tmp_path / "predictions")
    before = [c.path.name for c in list_checkpoints(tmp_path / "run" / "primary")]
    assert train(cfg)["miou"] == summary["miou"]
    assert [c.path.name for c in list_checkpoints(tmp_path / "run" / "primary")] == before


def test_supervised_on_box_filled_weak_masks_trains_on_the_boxes_file(synthetic_root, tmp_path, ray_local):
    split = tmp_path / "split"
    assert main(["data", "split", str(synthetic_root), "--count", "6", "--out", str(split), "--boxes"]) == 0
    cfg = fast_config(
        synthetic_root, tmp_path / "run", "supervised.weak_boxes=fill", "train.unlabeled_batch_size=4",
        f"data.labeled_split={split / 'labeled.txt'}", f"data.unlabeled_split={split / 'unlabeled.txt'}",
        f"data.unlabeled_boxes={split / 'unlabeled_boxes.txt'}",
    )
    train(cfg)
    records = [r for r in read_metrics(tmp_path / "run") if "loss_weak" in r]
    # the synthetic background is the one stuff class: every weak pixel on the image has a target
    assert [r["step"] for r in records] == [2, 4] and all(r["loss_weak"] > 0 for r in records)


def test_simformer_trains_on_image_reference_pairs_and_reports_base_and_novel_miou(
    synthetic_root, tmp_path, ray_local, capsys
):
    split = tmp_path / "split"
    assert main(["data", "split", str(synthetic_root), "--fraction", "1", "--pairs", "--novel", "4,5",
                 "--out", str(split)]) == 0
    cfg = fast_config(synthetic_root, tmp_path / "run", "method=simformer", "simformer.novel=[4,5]",
                      f"simformer.pairs_file={split / 'pairs.txt'}", "simformer.points=50")
    summary = train(cfg)
    iou = summary["iou"]
    base = [iou[n] for n in ("background", "disc", "square", "triangle") if iou[n] is not None]
    novel = [iou[n] for n in ("ring", "cross") if iou[n] is not None]
    assert summary["miou_base"] == pytest.approx(sum(base) / len(base))
    assert summary["miou_novel"] == pytest.approx(sum(novel) / len(novel) if novel else 0.0)
    records = read_metrics(tmp_path / "run")
    assert [r["step"] for r in records] == [2, 4] and all(r["loss_similarity"] > 0 for r in records)
    assert records[-1]["images_per_s"] > 0  # 4 images and their 4 references a step
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(tmp_path / "run")]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["miou_novel"] == pytest.approx(summary["miou_novel"])


def test_simformer_second_stage_retrains_a_segmenter_on_novel_pseudo_labels(synthetic_root, tmp_path, ray_local):
    cfg = fast_config(synthetic_root, tmp_path / "run", "method=simformer", "simformer.novel=[4,5]",
                      "simformer.points=20", "train.steps=2", "simformer.retrain_steps=2")
    summary = train(cfg)
    stages = json.loads((tmp_path / "run" / "stages.json").read_text())
    assert list(stages) == ["simformer", "retrain"] and summary["method"] == "supervised"
    assert summary["run_dir"] == str(tmp_path / "run" / "retrain") and "miou_novel" in summary
    pseudo = GenericFormat(tmp_path / "run" / "pseudo_labels")
    originals = GenericFormat(synthetic_root)
    labels = [pseudo.decode_mask(s.mask) for s in pseudo.samples("train")]
    truths = [originals.decode_mask(s.mask) for s in originals.samples("train")]
    assert len(labels) == len(truths) == 24
    for label, truth in zip(labels, truths, strict=True):
        base = ~np.isin(truth, [4, 5, 255])
        np.testing.assert_array_equal(label[base], truth[base])  # base pixels keep their annotation
        assert set(np.unique(label[~base])) <= set(np.unique(truth[np.isin(truth, [4, 5])])) | {255}
    assert len(pseudo.samples("val")) == 8


def test_wandb_gets_input_truth_prediction_panels_at_the_end(synthetic_root, tmp_path, ray_local, monkeypatch):
    from raysemi.tracking import Tracker

    logged = {}
    monkeypatch.setattr(Tracker, "log_images", lambda self, step, key, images: logged.update({key: (step, images)}))
    train(fast_config(synthetic_root, tmp_path / "run", "tracking.wandb.mode=offline", "eval.batch_size=2"))
    step, panels = logged["predictions"]
    assert step == 4 and len(panels) == 2  # the first val batch (2 images, all under the 4-image cap)
    assert all(panel.shape == (48, 3 * 64, 3) and panel.dtype == np.uint8 for panel in panels)


def test_prediction_panels_colour_truth_and_prediction_with_the_palette():
    from raysemi.engine.evaluate import prediction_panels

    image = torch.full((1, 3, 2, 2), 7, dtype=torch.uint8)
    mask = torch.tensor([[[0, 1], [255, 1]]])
    predicted = torch.tensor([[[1, 1], [0, 0]]])
    (panel,) = prediction_panels(image, mask, predicted, [(10, 20, 30), (200, 100, 0)])
    assert panel.shape == (2, 6, 3)
    assert (panel[:, :2] == 7).all()
    assert panel[0, 2].tolist() == [10, 20, 30] and panel[1, 2].tolist() == [0, 0, 0]  # ignore is black
    assert panel[0, 4].tolist() == [200, 100, 0] and panel[1, 5].tolist() == [10, 20, 30]


def test_training_streams_are_closed_with_their_stack_when_training_fails():
    closed = []

    class Shard:
        def __init__(self, name):
            self.name = name

        def iter_torch_batches(self, batch_size, **_):
            def batches():
                try:
                    while True:
                        yield {"image": torch.zeros(batch_size, 3)}
                finally:
                    closed.append(self.name)
            return batches()

    specs = {"labeled": StreamSpec("labeled", batch_size=4), "unlabeled": StreamSpec("unlabeled", batch_size=8)}
    with pytest.raises(RuntimeError, match="step failed"), contextlib.ExitStack() as stack:
        streams = open_streams(stack, specs, Shard, world_size=2)
        assert [len(next(stream)["image"]) for stream in streams.values()] == [2, 4]
        assert closed == []
        raise RuntimeError("step failed")
    assert sorted(closed) == ["labeled", "unlabeled"]
