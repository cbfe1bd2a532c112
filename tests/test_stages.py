"""Chained stages: what each method declares (:meth:`Method.stages`) and how the driver runs a declared chain."""

import json

from raysemi.config import load_config
from raysemi.engine.stages import train_stages
from raysemi.methods import method_class
from raysemi.methods.base import PseudoLabels, Stage


def test_a_method_is_one_run_unless_it_declares_more():
    for overrides in (["method=supervised"], ["method=cps"], ["method=simformer"],
                      ["method=self_correction", "self_correction.stage=primary", "data.unlabeled_boxes=b.txt"]):
        cfg = load_config(None, overrides)
        assert method_class(cfg.method).stages(cfg) == [Stage(cfg.method, cfg)], overrides


def test_simformer_with_retrain_steps_declares_a_retrain_on_its_pseudo_labels():
    cfg = load_config(None, ["method=simformer", "run.dir=runs/sf", "run.name=sf", "train.steps=300",
                             "simformer.retrain_steps=50", "data.label_fraction=0.5"])
    weak_shot, retrain = method_class("simformer").stages(cfg)
    assert (weak_shot.name, retrain.name) == ("simformer", "retrain")
    assert weak_shot.config.run.dir == "runs/sf/simformer" and weak_shot.config.simformer.retrain_steps is None
    assert (weak_shot.config.train.steps, weak_shot.pseudo_labels) == (300, None)
    assert retrain.pseudo_labels == PseudoLabels(group="novel")
    r = retrain.config
    assert (r.method, r.run.dir, r.run.name, r.train.steps) == ("supervised", "runs/sf/retrain", "sf-retrain", 50)
    assert (r.data.format, r.data.root, r.data.label_fraction) == ("generic", "runs/sf/pseudo_labels", 1.0)
    assert weak_shot.record == retrain.record == ("miou", "miou_novel")


def test_the_driver_runs_the_stages_in_order_and_lists_them(tmp_path):
    cfg = load_config(None, ["method=self_correction", f"run.dir={tmp_path}", "self_correction.mode=conv",
                             "data.unlabeled_boxes=b.txt", "train.steps=30", "self_correction.ancillary_steps=40",
                             "self_correction.corrector_steps=10"])
    stages = method_class("self_correction").stages(cfg)
    calls = []

    def train_one(stage_cfg, tune_metric):
        calls.append((stage_cfg.self_correction.stage, stage_cfg.run.init_from, tune_metric))
        return {"run_dir": stage_cfg.run.dir, "miou": 0.25 * len(calls), "steps": 9}

    summary = train_stages(cfg, stages, train_one, tune_metric="val_miou")
    assert calls == [("ancillary", None, None), ("corrector", f"{tmp_path}/ancillary", None),
                     ("primary", f"{tmp_path}/corrector", "val_miou")]  # only the last stage reports to Tune
    assert summary == {"run_dir": f"{tmp_path}/primary", "miou": 0.75, "steps": 9}
    # each stage's iterations, so a chain's compute can be summed: 40 + 10 + 30
    assert json.loads((tmp_path / "stages.json").read_text()) == {
        "ancillary": {"run_dir": f"{tmp_path}/ancillary", "steps": 40, "miou": 0.25},
        "corrector": {"run_dir": f"{tmp_path}/corrector", "steps": 10, "miou": 0.5},
        "primary": {"run_dir": f"{tmp_path}/primary", "steps": 30, "miou": 0.75},
    }
