"""Calibration bins, Grad-CAM and recomputed BatchNorm statistics on inputs whose answers are worked out by
hand."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from torch import nn

from raysemi.analysis.batchnorm import recompute_batchnorm
from raysemi.analysis.calibration import CalibrationBins
from raysemi.analysis.gradcam import grad_cam
from raysemi.analysis.plots import curve_labels
from raysemi.analysis.pseudo_labels import PseudoLabelCounts
from raysemi.analysis.report import find_runs, write_report
from raysemi.errors import DataError


def test_calibration_bins_pixels_by_confidence_and_measures_accuracy():
    # 4 pixels of 3 classes: confidences 0.95 (right), 0.95 (wrong), 0.55 (right), and an ignored one
    probabilities = torch.tensor([[0.95, 0.03, 0.02], [0.95, 0.03, 0.02], [0.25, 0.55, 0.2], [0.9, 0.05, 0.05]])
    probabilities = probabilities.T.reshape(1, 3, 1, 4)
    target = torch.tensor([[[0, 2, 1, 255]]])
    bins = CalibrationBins.empty(10)
    bins.update(probabilities, target)
    rows = bins.rows()
    assert [r["pixels"] for r in rows] == [0, 0, 0, 0, 0, 1, 0, 0, 0, 2]
    assert rows[9]["accuracy"] == 0.5 and rows[9]["mean_confidence"] == pytest.approx(0.95)
    assert rows[5]["accuracy"] == 1.0 and rows[5]["mean_confidence"] == pytest.approx(0.55)
    assert rows[0]["accuracy"] != rows[0]["accuracy"]  # NaN for an empty bin
    # ECE = (|1 − 1.9| + |1 − 0.55|) / 3
    assert bins.expected_calibration_error() == pytest.approx(0.45)


def test_confidence_of_exactly_one_lands_in_the_last_bin():
    bins = CalibrationBins.empty(4)
    bins.update(torch.tensor([1.0, 0.0]).reshape(1, 2, 1, 1), torch.tensor([[[0]]]))
    assert [r["pixels"] for r in bins.rows()] == [0, 0, 0, 1]


def five_pixel_counts() -> PseudoLabelCounts:
    """5 pixels of 3 classes at τ = 0.5 and 0.9: (confidence, predicted, true) = (0.95, 0, 0), (0.95, 0, 2),
    (0.55, 1, 1), an ignored one, (0.85, 1, 1)."""
    probabilities = torch.tensor([[0.95, 0.03, 0.02], [0.95, 0.03, 0.02], [0.25, 0.55, 0.2], [0.9, 0.05, 0.05],
                                  [0.1, 0.85, 0.05]])
    counts = PseudoLabelCounts.empty([0.5, 0.9], classes=3)
    counts.update(probabilities.T.reshape(1, 3, 1, 5), torch.tensor([[[0, 2, 1, 255, 1]]]))
    return counts


def test_pseudo_label_counts_per_class_at_each_threshold():
    rows = {(r["threshold"], r["class"]): r for r in five_pixel_counts().rows(["a", "b", "c"])}
    # τ = 0.5: every pixel passes; class c's one pixel is called a, so a's precision is 1/2 and c's recall 0
    assert [rows[0.5, k]["pixels"] for k in "abc"] == [1, 2, 1] and rows[0.5, "all"]["pixels"] == 4
    assert [rows[0.5, k]["passed"] for k in "abc"] == [1.0, 1.0, 1.0]
    assert [rows[0.5, k]["recall"] for k in "abc"] == [1.0, 1.0, 0.0]
    assert rows[0.5, "a"]["precision"] == 0.5 and rows[0.5, "b"]["precision"] == 1.0
    assert rows[0.5, "c"]["precision"] is None  # nothing predicted as c
    assert (rows[0.5, "all"]["recall"], rows[0.5, "all"]["precision"]) == (0.75, 0.75)
    # τ = 0.9: only the two 0.95 pixels pass; none of b's two pixels does
    assert [rows[0.9, k]["passed"] for k in "abc"] == [1.0, 0.0, 1.0]
    assert [rows[0.9, k]["recall"] for k in "abc"] == [1.0, 0.0, 0.0]
    assert (rows[0.9, "all"]["passed"], rows[0.9, "all"]["recall"], rows[0.9, "all"]["precision"]) == (0.5, 0.25, 0.5)


def test_the_pseudo_label_benchmark_page_shows_each_threshold_and_a_dash_for_no_prediction(benchmark_script):
    script = benchmark_script(Path(__file__).resolve().parents[1] / "experiments/benchmarks/pseudo_labels.py")
    page = script.markdown({"run": five_pixel_counts().rows(["a", "b", "c"])})
    assert "| class | pixels | passed τ=0.5 | recall τ=0.5 | precision τ=0.5 | passed τ=0.9 |" in page
    # b: both pixels pass τ = 0.5 and are right; neither passes 0.9, and nothing is called b there
    assert "| b | 2 | 1.000 | 1.000 | 1.000 | 0.000 | 0.000 | - |" in page
    assert "| all | 4 | 1.000 | 0.750 | 0.750 | 0.500 | 0.250 | 0.500 |" in page


def test_the_confusions_page_of_a_run_without_unlabeled_frames_says_why_its_column_is_empty(benchmark_script):
    script = benchmark_script(Path(__file__).resolve().parents[1] / "experiments/benchmarks/confusions.py")
    val = {"miou": 0.7, "classes": {"road": {"iou": 0.6, "recall": 0.6, "top_error": "sky", "top_error_share": 0.3},
                                    "sky": {"iou": 0.8, "recall": 1.0, "top_error": None, "top_error_share": None}}}
    unlabeled = {"miou": 0.5, "classes": {"road": {"iou": 0.4}, "sky": {"iou": 0.6}}}
    page = script.markdown({"oracle": {"val": val, "unlabeled": None, "unlabeled_missing": "no unlabeled image"},
                            "semi": {"val": val, "unlabeled": unlabeled}})
    assert "## oracle: val mIoU 0.7000, unlabeled frames none\n\nNo unlabeled frames scored: no unlabeled image" in page
    assert "## semi: val mIoU 0.7000, unlabeled frames 0.5000\n\n| class |" in page
    assert page.count("| road | 0.600 | - | sky (0.30) |") == 1  # the oracle's row
    assert "| road | 0.600 | 0.400 | sky (0.30) |" in page
    assert page.count("| sky | 0.800 |") == 2 and "| sky | 0.800 | - | - |" in page


def test_pseudo_labels_are_scored_on_the_unlabeled_images_that_have_masks_on_disk():
    from types import SimpleNamespace

    from raysemi.analysis.analyze import scored_images
    from raysemi.data.formats import Sample

    train = [Sample(Path("a.png"), Path("a_mask.png")), Sample(Path("b.png"), Path("b_mask.png")),
             Sample(Path("c.png"), None)]
    unlabeled = [Sample(Path("b.png"), None), Sample(Path("c.png"), None)]  # a split never carries their masks
    source = SimpleNamespace(train=train, val=[train[0]], split=SimpleNamespace(unlabeled=unlabeled), root="data")
    assert scored_images(source, "unlabeled") == [train[1]]  # b: unlabeled, and its mask is on disk
    assert scored_images(source, "val") == [train[0]]
    source.split.unlabeled = unlabeled[1:]
    with pytest.raises(DataError, match="none of the 1 unlabeled images of data has a mask"):
        scored_images(source, "unlabeled")


def test_recomputed_batchnorm_statistics_are_the_batch_average_with_dropout_off_and_weights_kept():
    # a dropout layer before the BatchNorm would zero half its inputs if it ran in training mode
    model = nn.Sequential(nn.Dropout(p=0.5), nn.BatchNorm2d(1, momentum=0.1))
    with torch.no_grad():
        model[1].weight.fill_(2.0), model[1].bias.fill_(-1.0)
    model.train()
    # batch A: 0 and 2 (mean 1, unbiased variance 2); batch B: 4 and 4 (mean 4, variance 0)
    batches = [torch.tensor([0.0, 2.0]).reshape(2, 1, 1, 1), torch.tensor([4.0, 4.0]).reshape(2, 1, 1, 1)]
    assert recompute_batchnorm(model, iter(batches)) == 1
    norm = model[1]
    # each batch weighs the same, whatever the momentum: mean (1 + 4) / 2, variance (2 + 0) / 2
    assert norm.running_mean.item() == 2.5 and norm.running_var.item() == 1.0
    assert norm.momentum == 0.1 and not any(module.training for module in model.modules())
    assert (norm.weight.item(), norm.bias.item()) == (2.0, -1.0)
    # eval mode uses the new statistics: (4 − 2.5) / √(1 + ε) · 2 − 1
    assert model(torch.tensor([4.0]).reshape(1, 1, 1, 1)).item() == pytest.approx(2.0, abs=1e-4)


def test_recomputing_batchnorm_without_a_layer_or_a_batch_is_a_clear_error():
    with pytest.raises(ValueError, match="Linear has no BatchNorm layer to recompute"):
        recompute_batchnorm(nn.Linear(2, 2), [torch.zeros(1, 2)])
    with pytest.raises(ValueError, match="no image batch"):
        recompute_batchnorm(nn.BatchNorm2d(1), [])


def test_the_batchnorm_page_shows_each_run_and_the_paired_differences_of_each_seed(benchmark_script):
    script = benchmark_script(Path(__file__).resolve().parents[1] / "experiments/benchmarks/bn_statistics.py")

    def run(trained, labeled, unlabeled, alternating):
        return {"trained": trained, "labeled": labeled, "unlabeled": unlabeled, "alternating": alternating,
                "labeled_frames": 12, "unlabeled_frames": 254}

    page = script.markdown({"cps-seed0-it1000": run(0.29, 0.22, 0.28, 0.27),
                            "cps_control-seed0-it1000": run(0.28, 0.20, 0.23, 0.22),
                            "cps-seed1-it1000": run(0.27, 0.25, 0.26, 0.25),
                            "cps_control-seed1-it1000": run(0.25, 0.24, 0.25, 0.25),
                            "supervised_cps_optim-seed1-it1000-rerun": run(0.2, 0.2, 0.2, 0.2)})
    assert "| run | as trained | BN on labeled frames | BN on unlabeled frames | BN on both, alternating |" in page
    assert "| cps_control-seed0-it1000 | 0.2800 | 0.2000 | 0.2300 | 0.2200 | 12 / 254 |" in page
    assert "| cps − cps_control | 0 | +1.0 | +2.0 | +5.0 | +5.0 |" in page
    assert "| cps − cps_control | 1 | +2.0 | +1.0 | +1.0 | +0.0 |" in page
    # mean ± sample std of the two seeds: as trained (1 + 2) / 2 = 1.5, std √((0.5² + 0.5²) / 1) = 0.7
    assert "| cps − cps_control | mean of 2 | +1.5 ± 0.7 | +1.5 ± 0.7 | +3.0 ± 2.8 | +2.5 ± 3.5 |" in page
    # one seed of supervised: its pairs show that seed and no mean
    assert "| cps − supervised_cps_optim | 1 | +7.0 | +5.0 | +6.0 | +5.0 |" in page
    assert "| cps − supervised_cps_optim | mean" not in page


def _two_feature_model():
    """Layer A = the image's first two channels; logits = W·A with class 0 = A0 − A1, class 1 = A1 − A0."""
    layer = nn.Conv2d(3, 2, kernel_size=1, bias=False)
    head = nn.Conv2d(2, 2, kernel_size=1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).reshape(2, 3, 1, 1))
        head.weight.copy_(torch.tensor([[1.0, -1.0], [-1.0, 1.0]]).reshape(2, 2, 1, 1))
    return nn.Sequential(layer, head), layer


def test_grad_cam_highlights_the_features_the_pixel_rests_on():
    model, layer = _two_feature_model()
    image = torch.zeros(1, 3, 4, 6)
    image[0, 0, :, :3] = 1.0  # left half: feature A0
    image[0, 1, :, 3:] = 1.0  # right half: feature A1
    # a left pixel is class 0: its gradient weights A0 by +1/24 and A1 by −1/24 → ReLU(A0 − A1) = left half
    heat, explained = grad_cam(model, layer, image, (2, 1))
    assert explained == 0
    expected = torch.zeros(4, 6)
    expected[:, :3] = 1.0
    torch.testing.assert_close(heat, expected)
    heat, explained = grad_cam(model, layer, image, (0, 5))
    assert explained == 1 and torch.equal(heat, 1 - expected)
    assert all(p.grad is None for p in model.parameters())
    # explaining class 1 at a class-0 pixel gives the right half as well; no gradient is left on the weights
    heat, explained = grad_cam(model, layer, image, (2, 1), target_class=1)
    assert explained == 1 and torch.equal(heat, 1 - expected)
    assert all(p.grad is None for p in model.parameters())


def _fake_run(run_dir, method, labeled, total, seed, miou, iou, extra=None):
    """A finished run directory as `raysemi train` leaves it, with known numbers."""
    run_dir.mkdir(parents=True)
    cfg = {"method": method, "run": {"seed": seed}, "self_correction": {"mode": "linear"}, **(extra or {})}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run_dir / "labeled.txt").write_text("".join(f"a{i}.png m{i}.png\n" for i in range(labeled)))
    (run_dir / "unlabeled.txt").write_text("".join(f"b{i}.png\n" for i in range(total - labeled)))
    (run_dir / "summary.json").write_text(json.dumps({"miou": miou, "iou": iou}))
    records = [{"step": 50, "loss": 1.0}, {"step": 100, "loss": 0.5, "val": {"miou": miou}}]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_report_tables_mean_and_std_per_method_and_fraction(tmp_path):
    sweep = tmp_path / "sweep"
    for seed, miou in enumerate([0.40, 0.44, 0.48]):
        _fake_run(sweep / f"sup-16-{seed}", "supervised", 23, 367, seed, miou, {"road": miou, "car": None})
    _fake_run(sweep / "sup-8-0", "supervised", 46, 367, 0, 0.50, {"road": 0.6, "car": 0.4})
    _fake_run(sweep / "cps-16-0", "cps", 23, 367, 0, 0.45, {"road": 0.7, "car": 0.2})
    # a chained run: only its last stage counts
    _fake_run(sweep / "sc" / "ancillary", "self_correction", 23, 367, 0, 0.70, {"road": 0.9, "car": 0.5})
    _fake_run(sweep / "sc" / "primary", "self_correction", 23, 367, 0, 0.46, {"road": 0.8, "car": 0.1})
    (sweep / "sc" / "stages.json").write_text(json.dumps({"ancillary": {}, "primary": {}}))
    summary, files = write_report(sweep, tmp_path / "report", per_class=True)
    table = pd.read_csv(tmp_path / "report" / "summary.csv")
    sup16 = table[(table.method == "supervised") & (table.fraction == "1/16")].iloc[0]
    assert sup16.runs == 3 and sup16.miou_mean == pytest.approx(0.44) and sup16.miou_std == pytest.approx(0.04)
    assert sup16.iou_road_mean == pytest.approx(0.44) and np.isnan(sup16.iou_car_mean)
    assert set(zip(table.method, table.fraction, strict=True)) == {
        ("supervised", "1/16"), ("supervised", "1/8"), ("cps", "1/16"), ("self_correction-linear", "1/16")}
    assert table[table.method == "self_correction-linear"].miou_mean.item() == pytest.approx(0.46)
    runs = pd.read_csv(tmp_path / "report" / "runs.csv")
    assert len(runs) == 6 and "iou_car" in runs.columns
    # summaries without best_miou (older runs): the best of metrics.jsonl, here the one evaluation at step 100
    assert runs.best_miou.tolist() == runs.miou.tolist() and set(runs.best_step) == {100}
    markdown = (tmp_path / "report" / "summary.md").read_text()
    assert "| method | 1/16 | 1/8 |" in markdown
    assert "| supervised | 0.4400 ± 0.0400 (3) | 0.5000 ± 0.0000 (1) |" in markdown
    assert "| cps | 0.4500 ± 0.0000 (1) | – |" in markdown
    for png in files[3:]:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_curves_tell_apart_runs_that_differ_only_in_their_values(tmp_path):
    for name, method in (("trial-a", "cps"), ("trial-b", "cps"), ("sup", "supervised")):
        _fake_run(tmp_path / name, method, 23, 367, 0, 0.4, {"road": 0.4})
    assert curve_labels(find_runs(tmp_path)) == ["supervised 1/16 s0", "cps 1/16 s0 (trial-a)", "cps 1/16 s0 (trial-b)"]


def test_report_on_a_folder_without_runs_is_one_clear_error(tmp_path):
    with pytest.raises(DataError, match="no finished run"):
        find_runs(tmp_path)
    with pytest.raises(DataError, match="not a folder of runs"):
        find_runs(tmp_path / "missing")
