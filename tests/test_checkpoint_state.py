import json

import pytest
import torch
from torch import nn

from raysemi.config import Config
from raysemi.engine.checkpoint import (
    TrainingState,
    initialise_models,
    latest_checkpoint,
    load_tensors,
    restore_checkpoint,
    save_checkpoint,
)
from raysemi.errors import RaysemiError


def training_state(lr: float = 0.5) -> TrainingState:
    """One 1→1 linear model, SGD without momentum, lr halved every step (``PolynomialLR`` power 1 over 2 steps:
    lr, lr/2, 0)."""
    torch.manual_seed(0)
    model = nn.Linear(1, 1, bias=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=2, power=1.0)
    return TrainingState({"segmenter": model}, optimizer, scheduler, torch.amp.GradScaler("cuda", enabled=False))


def sgd_step(state: TrainingState) -> None:
    weight = state.models["segmenter"].weight
    state.optimizer.zero_grad()
    (weight.sum()).backward()  # gradient 1: each step subtracts the current lr from the weight
    state.optimizer.step()
    state.scheduler.step()


def test_a_saved_state_restores_weights_schedule_and_random_draws(tmp_path):
    cfg = Config.model_validate({"train": {"keep_checkpoints": 1}})
    state = training_state()
    with torch.no_grad():
        state.models["segmenter"].weight.fill_(2.0)
    sgd_step(state)  # 2.0 - 0.5 = 1.5, lr now 0.25
    torch.manual_seed(7)
    written = save_checkpoint(tmp_path, 1, state, state.models["segmenter"], cfg, ["bg", "fg"], [[0, 0, 0], [1, 1, 1]])
    expected_draw = torch.rand(1)

    assert json.loads(written.meta.read_text()) == {
        "step": 1, "method": "supervised", "classes": ["bg", "fg"], "palette": [[0, 0, 0], [1, 1, 1]]}
    assert load_tensors(written.model)["weight"].item() == 1.5
    assert set(load_tensors(written.training_state)) == {"step", "models", "optimizer", "scheduler", "scaler",
                                                         "rng_cpu"}

    fresh = training_state()
    torch.manual_seed(123)  # another random stream: restore must bring back the saved one
    assert restore_checkpoint(latest_checkpoint(tmp_path), fresh) == 1
    assert fresh.models["segmenter"].weight.item() == 1.5
    assert fresh.scheduler.get_last_lr() == [0.25]
    assert torch.rand(1).item() == expected_draw.item()
    sgd_step(fresh)  # 1.5 - 0.25: the schedule continues where it stopped
    assert fresh.models["segmenter"].weight.item() == 1.25


def test_a_best_checkpoint_carries_its_miou_and_is_kept_apart(tmp_path):
    cfg = Config.model_validate({"train": {"keep_checkpoints": 1}})
    state = training_state()
    save_checkpoint(tmp_path, 2, state, state.models["segmenter"], cfg, ["bg"], [[0, 0, 0]], miou=0.75)
    save_checkpoint(tmp_path, 4, state, state.models["segmenter"], cfg, ["bg"], [[0, 0, 0]])
    best = tmp_path / "checkpoints" / "best" / "meta.json"
    assert json.loads(best.read_text())["miou"] == 0.75 and json.loads(best.read_text())["step"] == 2
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["best", "step_00000004"]


def test_init_from_loads_the_models_of_shared_names(tmp_path):
    cfg = Config.model_validate({})
    state = training_state()
    with torch.no_grad():
        state.models["segmenter"].weight.fill_(3.0)
    written = save_checkpoint(tmp_path, 1, state, state.models["segmenter"], cfg, ["bg"], [[0, 0, 0]])
    other = nn.Linear(1, 1, bias=False)
    target = {"segmenter": nn.Linear(1, 1, bias=False), "teacher": other}
    before = other.weight.item()
    assert initialise_models(written, target, "old/run") == ["segmenter"]
    assert target["segmenter"].weight.item() == 3.0 and other.weight.item() == before
    with pytest.raises(RaysemiError, match=r"run.init_from=old/run: its models \(segmenter\) share no name with "
                                           r"this run's \(student\)"):
        initialise_models(written, {"student": nn.Linear(1, 1)}, "old/run")
