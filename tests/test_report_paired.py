"""``raysemi report``'s paired view of a user's own runs, on hand-made run directories whose differences can be
checked by hand: seeds paired at one label fraction, per-class changes beside the all-labels IoU, and runs of
different recorded code versions refused (or flagged with --allow-mixed-code)."""

from __future__ import annotations

import json

import pytest
import yaml

from raysemi.analysis.report import find_runs
from raysemi.bench import sweep_pairs
from raysemi.cli import main


def fake_run(run_dir, method, seed, miou, iou, labeled=23, code=None):
    """A finished run directory as ``raysemi train`` leaves it, of 367 images with masks, ``labeled`` of them
    labeled; ``code``: a ``code_version`` in its summary.json."""
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"method": method, "run": {"seed": seed}}))
    (run_dir / "labeled.txt").write_text("".join(f"a{i}.png m{i}.png\n" for i in range(labeled)))
    (run_dir / "unlabeled.txt").write_text("".join(f"b{i}.png\n" for i in range(367 - labeled)))
    summary = {"miou": miou, "iou": iou, **({"code_version": code} if code else {})}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 100, "loss": 0.5, "val": {"miou": miou}}) + "\n")


def view_of(folder, **options):
    return sweep_pairs.paired_view([sweep_pairs.run_record(run) for run in find_runs(folder)], **options)


@pytest.fixture
def sweep(tmp_path):
    """supervised and cps at 1/16 (cps has no seed 2), and supervised with every label (seed 0)."""
    root = tmp_path / "sweep"
    for seed, miou, iou in [(0, 0.40, {"road": 0.5, "car": 0.1}), (1, 0.44, {"road": 0.6, "car": None}),
                            (2, 0.48, {"road": 0.7, "car": 0.3})]:
        fake_run(root / f"sup-{seed}", "supervised", seed, miou, iou)
    fake_run(root / "cps-0", "cps", 0, 0.45, {"road": 0.7, "car": 0.2})
    fake_run(root / "cps-1", "cps", 1, 0.47, {"road": 0.6, "car": 0.1})
    fake_run(root / "sup-all-0", "supervised", 0, 0.60, {"road": 0.9, "car": 0.5}, labeled=367)
    return root


def test_a_method_and_the_baseline_pair_by_seed_with_per_class_changes_and_the_all_labels_column(sweep):
    view = view_of(sweep)
    (record,) = view.records  # supervised at "all" has no other method there: nothing to pair
    assert (record["method"], record["baseline"], record["fraction"]) == ("cps", "supervised", "1/16")
    # seed 2 has no cps run; differences 0.45 − 0.40 = +0.05 and 0.47 − 0.44 = +0.03
    assert record["seeds"] == [0, 1] and record["miou"] == [0.45, 0.47] and record["baseline_miou"] == [0.40, 0.44]
    assert record["diff_mean"] == pytest.approx(0.04)
    assert record["diff_std"] == pytest.approx(0.0141, abs=1e-4)  # sample std of 0.05 and 0.03: 0.01·√2
    page = "\n".join(view.lines)
    assert "| 0 | 0.4000 | 0.4500 | +5.0 |" in page and "| 1 | 0.4400 | 0.4700 | +3.0 |" in page
    assert "**+4.0 ± 1.4 points** (mean ± std over 2 paired seeds)." in page
    # road: baseline (0.5 + 0.6) / 2, cps (0.7 + 0.6) / 2; car: the baseline's seed-1 None is left out
    assert "| road | 0.5500 | 0.6500 | +10.0 | 0.9000 |" in page
    assert "| car | 0.1000 | 0.1500 | +5.0 | 0.5000 |" in page
    assert "All labels: supervised with every label, mean of seeds [0]." in page
    assert "Code version: not recorded by the runs of seeds [0, 1]" in page and view.refused == []


def test_runs_of_different_recorded_code_versions_are_refused_unless_allowed(tmp_path):
    root = tmp_path / "runs"
    for seed in (0, 1, 2):
        fake_run(root / f"sup-{seed}", "supervised", seed, 0.40, {"road": 0.5}, code="v1")
    fake_run(root / "cps-0", "cps", 0, 0.46, {"road": 0.6})  # its version recorded beside the run directory
    (root / "cps-0.code_version").write_text("v1\n")
    fake_run(root / "cps-1", "cps", 1, 0.50, {"road": 0.6}, code="v2")
    fake_run(root / "cps-2", "cps", 2, 0.41, {"road": 0.6})  # records none: unknown code

    view = view_of(root)
    (record,) = view.records
    assert record["seeds"] == [0] and record["diff_mean"] == pytest.approx(0.06)
    assert record["method_runs"]["code_version"] == ["v1"] and record["mixed_code"] is False
    assert len(view.refused) == 2
    assert view.refused[0].startswith(f"refused to pair {root / 'cps-1'} (code v2) with {root / 'sup-1'} (code v1)")
    assert "(code unknown)" in view.refused[1] and "--allow-mixed-code" in view.refused[1]

    mixed = view_of(root, allow_mixed=True)
    (record,) = mixed.records
    assert record["seeds"] == [0, 1, 2] and record["mixed_code"] is True
    assert record["diff_mean"] == pytest.approx(0.0567, abs=1e-4)  # (0.06 + 0.10 + 0.01) / 3
    assert "**Seeds [1, 2] compare runs of different code versions**" in "\n".join(mixed.lines)


def test_several_runs_of_one_seed_are_not_paired(tmp_path):
    """A sweep's trials share a seed: which of them would pair with the baseline's run is not knowable."""
    fake_run(tmp_path / "sup", "supervised", 0, 0.40, {"road": 0.5})
    fake_run(tmp_path / "trial-a", "cps", 0, 0.45, {"road": 0.6})
    fake_run(tmp_path / "trial-b", "cps", 0, 0.47, {"road": 0.6})
    view = view_of(tmp_path)
    assert view.records == []
    assert view.refused == ["cps at 1/16: several runs of one side share seeds [0] (a sweep's trials?), so they "
                            "cannot be paired by seed; report each variant's runs on their own"]


def test_raysemi_report_prints_each_paired_difference_and_writes_the_view(sweep, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["report", str(sweep), "--out", str(out)]) == 0
    assert "cps against supervised at 1/16 (seeds [0, 1]): +4.0 ± 1.4 points" in capsys.readouterr().out
    assert json.loads((out / "paired.json").read_text())[0]["seeds"] == [0, 1]
    assert "## cps against supervised, labels 1/16" in (out / "paired.md").read_text()
    assert main(["report", str(sweep), "--out", str(tmp_path / "by_cps"), "--baseline", "cps"]) == 0
    assert "supervised against cps at 1/16 (seeds [0, 1]): -4.0 ± 1.4 points" in capsys.readouterr().out
