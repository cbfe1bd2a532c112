"""Speed choices by measurement (raysemi.engine.probe): which way the probe decides on hand-made timings, that
it leaves the run's data and numerics alone, and that a resumed run keeps its choices."""

import json

import pytest
import torch
from torch import nn

from raysemi.config import load_config
from raysemi.engine.checkpoint import latest_checkpoint, load_tensors
from raysemi.engine.plain import train_plain
from raysemi.engine.probe import SpeedProbe, check_compilable, compile_probe_affordable, compile_repays, stored_choices
from raysemi.errors import ConfigError
from tests.conftest import fast_config

CPU = torch.device("cpu")


class FakeClock:
    """A clock that only the fake training steps move."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class TimedMethod:
    """A method whose step takes ``seconds(batch)`` fake seconds; its loss reaches the model's one weight."""

    def __init__(self, clock: FakeClock, seconds):
        self.clock, self.seconds, self.steps_seen = clock, seconds, []

    def training_step(self, models, batch, step):
        self.clock.now += self.seconds(batch)
        self.steps_seen.append(step)
        return {"loss": models["m"].weight.sum()}


def _probe(method, clock, *overrides, streams=None, stored=None, start=0):
    cfg = load_config(None, ["train.steps=1000", "train.probe_steps=3", *overrides])
    streams = streams or {"labeled": iter([{"image": torch.zeros(1, 3, 2, 2)}])}
    def prepare(name, raw, fmt):
        return {"image": raw["image"].contiguous(memory_format=fmt)}

    return SpeedProbe(cfg, method, CPU, False, prepare, streams, start, 1, stored, clock=clock)


def test_compile_repays_when_the_saved_seconds_exceed_the_compile_time():
    # 0.1 s saved per step: 400 steps save 40 s > 30 s of compiling; 200 steps save 20 s < 30 s
    assert compile_repays(30.0, 0.5, 0.4, 400) and not compile_repays(30.0, 0.5, 0.4, 200)
    assert not compile_repays(0.0, 0.5, 0.6, 10**6)  # a slower compiled step never repays


def test_a_compile_probe_runs_only_where_a_60_s_compile_costs_at_most_1_percent_of_the_eager_run():
    # 60 s ≤ 1 % of 20,000 steps × 0.3 s = 60 s (the threshold itself), not of 19,999 steps; the P2 run of
    # results/speed_auto-p2-supervised.md (1,000 steps of 0.306 s) is far below
    assert compile_probe_affordable(0.3, 20_000) and not compile_probe_affordable(0.3, 19_999)
    assert not compile_probe_affordable(0.306, 1_000)


@pytest.mark.parametrize(("steps", "start", "expected"), [(20_000, 0, True), (20_000, 8_000, False),
                                                          (11_000, 0, None)])
def test_compile_auto_keeps_the_compiled_step_only_where_its_compile_time_is_repaid(monkeypatch, steps, start,
                                                                                    expected):
    """Compiled calls take 0.4 s (+1,000 s and +500 s for the first two: compile and recompile), eager 0.5 s: the
    probe measures 1,500 s of compiling and 0.1 s saved per step, repaid after 15,000 remaining steps (12,000:
    not). With 11,000 steps left (expected None) the eager run (5,500 s) is too short for a probe: a 60 s
    compile (MIN_COMPILE_S) would cost more than 1 % of it, and nothing is compiled."""
    clock, compiled_calls = FakeClock(), []
    method = TimedMethod(clock, lambda batch: 0.5)

    def fake_compile(step):
        def compiled(models, batch, number):
            compiled_calls.append(number)
            clock.now += {1: 1000.0, 2: 500.0}.get(len(compiled_calls), 0.0) + 0.4
            return {"loss": models["m"].weight.sum()}
        return compiled

    monkeypatch.setattr(torch, "compile", fake_compile)
    probe = _probe(method, clock, f"train.steps={steps}", "train.compile=auto", start=start)
    models = {"m": nn.Linear(1, 1)}
    before = models["m"].weight.detach().clone()
    chosen = probe.training_step(models)
    assert torch.equal(models["m"].weight, before) and models["m"].weight.grad is None  # no optimizer step
    if expected is None:
        assert chosen == method.training_step and not compiled_calls and probe.choice.compile is False
        assert probe.choice.how["compile"] == ("skipped: 11000 steps of 0.500 s are too short for a compile probe "
                                               "(≥ 60 s would cost more than 1% of them)")
        return
    t = probe.choice.timings
    assert (t["eager_s"], t["compiled_s"], t["compile_s"]) == pytest.approx((0.5, 0.4, 1500.0))
    assert t["compile_steps_left"] == steps - start
    assert probe.choice.compile is expected and (chosen != method.training_step) is expected
    assert probe.choice.how["compile"] == ("measured" if expected else "measured: not repaid")
    assert compiled_calls[:2] == [start, start + 1]  # the step number changes, as in training (a recompile)


def test_compile_auto_stays_eager_with_the_reason_when_compiling_fails(monkeypatch):
    def failing_compile(step):
        def compiled(models, batch, number):
            raise RuntimeError("no C++ compiler")
        return compiled

    monkeypatch.setattr(torch, "compile", failing_compile)
    clock = FakeClock()
    method = TimedMethod(clock, lambda batch: 0.5)
    probe = _probe(method, clock, "train.steps=20000", "train.compile=auto")  # long enough for a compile probe
    assert probe.training_step({"m": nn.Linear(1, 1)}) == method.training_step
    assert probe.choice.how["compile"] == "skipped: compiling failed (RuntimeError)" and not probe.choice.compile


@pytest.mark.parametrize(("contiguous_s", "channels_last_s", "expected"), [(0.5, 0.4, True), (0.4, 0.5, False)])
def test_memory_format_auto_keeps_the_faster_median_and_puts_the_batch_back(contiguous_s, channels_last_s,
                                                                            expected):
    clock = FakeClock()
    nhwc = torch.channels_last

    def seconds(batch):
        return channels_last_s if batch["labeled"]["image"].is_contiguous(memory_format=nhwc) else contiguous_s

    first, second = {"image": torch.zeros(1, 3, 2, 2)}, {"image": torch.ones(1, 3, 2, 2)}
    probe = _probe(TimedMethod(clock, seconds), clock, streams={"labeled": iter([first, second])})
    chosen = probe.memory_format({"m": nn.Conv2d(3, 1, 1)})
    assert (chosen == torch.channels_last) is expected and probe.choice.channels_last is expected
    t = probe.choice.timings
    assert (t["contiguous_s"], t["channels_last_s"]) == pytest.approx((contiguous_s, channels_last_s))
    assert t["format_probe_s"] == pytest.approx(4 * (contiguous_s + channels_last_s))  # 1 warm-up + 3 each
    assert [b["image"].sum().item() for b in probe.streams["labeled"]] == [0.0, 12.0]  # first, then second
    assert "s/step channels-last" in probe.log_line()


def test_a_stored_or_known_choice_reads_no_batch_and_times_nothing():
    clock = FakeClock()
    method = TimedMethod(clock, lambda batch: pytest.fail("the probe ran"))
    untouched = iter([{"image": torch.zeros(1, 3, 2, 2)}])
    probe = _probe(method, clock, "train.compile=auto", streams={"labeled": untouched},
                   stored={"channels_last": True, "compile": False})
    assert probe.memory_format({"m": nn.Conv2d(3, 1, 1)}) == torch.channels_last
    assert probe.training_step({"m": nn.Linear(1, 1)}) == method.training_step
    assert probe.choice.how == {"channels_last": "stored", "compile": "stored"} and not method.steps_seen
    assert len(list(untouched)) == 1
    assert stored_choices({"speed": {"channels_last": True, "compile": False, "timings": {}}}) == {
        "channels_last": True, "compile": False}
    assert stored_choices({"step": 4}) is None


def test_compile_true_on_a_method_that_cannot_compile_is_a_one_line_error():
    with pytest.raises(ConfigError, match=r"^train.compile=true: method cac cannot be compiled \(its chunked "
                                          r"contrastive loss .*\); use train.compile=false or auto$"):
        check_compilable("cac", True)
    check_compilable("cac", "auto")  # auto skips it with the reason logged
    check_compilable("supervised", True)
    clock = FakeClock()
    probe = _probe(TimedMethod(clock, lambda batch: pytest.fail("the probe ran")), clock, "method=cac",
                   "train.compile=auto")
    probe.training_step({"m": nn.Linear(1, 1)})
    assert probe.choice.how["compile"].startswith("skipped: method cac cannot be compiled (its chunked")


@pytest.mark.slow
def test_the_supervised_step_compiles_and_gives_the_eager_loss():
    """A real compile of the supervised step on the contract's tiny model: about 4 minutes on 2 busy cores."""
    from raysemi.methods import build_method
    from tests.test_method_contract import _batch, _config, _models

    method = build_method(_config("supervised"))
    models, batch = _models(method), _batch(method)
    for module in models["segmenter"].modules():
        if isinstance(module, nn.Dropout | nn.Dropout2d):
            module.eval()  # the compiled step draws dropout masks differently
    eager = method.training_step(models, batch, 0)["loss"]
    probe = SpeedProbe(load_config(None, ["train.compile=true"]), method, CPU, False, lambda name, raw, fmt: raw, {}, 0,
                       1, None)
    compiled = probe.training_step(models)
    assert compiled != method.training_step and probe.choice.how == {"compile": "set"}
    torch.testing.assert_close(compiled(models, batch, 0)["loss"], eager, rtol=1e-4, atol=1e-5)


def _chosen_by_fake_timings(monkeypatch, contiguous_s: float, channels_last_s: float) -> list[int]:
    """Make the memory-format probe run its steps for real but report hand-made medians; returns a list that
    counts its runs."""
    runs = []

    def alternate(self, step_a, step_b):
        for _ in range(self.cfg.train.probe_steps + 1):
            step_a(), step_b()
        runs.append(1)
        return contiguous_s, channels_last_s

    monkeypatch.setattr(SpeedProbe, "_alternate", alternate)
    return runs


def _weights(run_dir):
    return load_tensors(latest_checkpoint(run_dir).training_state)["models"]


def test_a_probe_that_chose_contiguous_trains_bit_for_bit_as_channels_last_false(synthetic_root, tmp_path,
                                                                                  monkeypatch):
    """The probe's steps run for real (dropout draws, BatchNorm, the first batch) on the run's own stream, yet
    leave no trace: the same weights, to the bit, as a run that never probed."""
    plain = train_plain(fast_config(synthetic_root, tmp_path / "plain", "train.channels_last=false"),
                        data_workers=0, device=CPU)
    runs = _chosen_by_fake_timings(monkeypatch, contiguous_s=0.1, channels_last_s=0.2)
    probed = train_plain(fast_config(synthetic_root, tmp_path / "probed", "train.channels_last=auto"),
                         data_workers=0, device=CPU)
    assert runs == [1] and probed["speed"]["how"]["channels_last"] == "measured"
    assert probed["speed"]["channels_last"] is False and plain["speed"]["how"]["channels_last"] == "set"
    assert probed["miou"] == plain["miou"]
    for model, weights in _weights(tmp_path / "plain").items():
        for name, tensor in weights.items():
            assert torch.equal(_weights(tmp_path / "probed")[model][name], tensor), f"{model}.{name}"


def test_a_resumed_run_keeps_its_choice_and_trains_as_an_unbroken_one(synthetic_root, tmp_path, monkeypatch):
    """Measured channels-last at the start; the resumed half reads it from the step-2 checkpoint (the probe,
    which would now choose contiguous, does not run) and ends with the weights of an unbroken channels-last run."""
    four = ("train.steps=4", "train.checkpoint_every=2", "train.channels_last=auto")
    unbroken = train_plain(fast_config(synthetic_root, tmp_path / "unbroken", *four[:2], "train.channels_last=true"),
                           data_workers=0, device=CPU)
    runs = _chosen_by_fake_timings(monkeypatch, contiguous_s=0.2, channels_last_s=0.1)
    crash_after_two_steps(monkeypatch, fast_config(synthetic_root, tmp_path / "resumed", *four))
    meta = latest_checkpoint(tmp_path / "resumed").read_meta()
    assert meta["step"] == 2 and meta["speed"]["channels_last"] is True and runs == [1]
    _chosen_by_fake_timings(monkeypatch, contiguous_s=0.1, channels_last_s=0.2)
    resumed = train_plain(fast_config(synthetic_root, tmp_path / "resumed", *four), data_workers=0, device=CPU)
    assert resumed["speed"]["channels_last"] is True and resumed["speed"]["how"]["channels_last"] == "stored"
    assert json.loads((tmp_path / "resumed" / "summary.json").read_text())["speed"] == resumed["speed"]
    assert unbroken["speed"]["channels_last"] is True
    for model, weights in _weights(tmp_path / "unbroken").items():
        for name, tensor in weights.items():
            assert torch.equal(_weights(tmp_path / "resumed")[model][name], tensor), f"{model}.{name}"


def crash_after_two_steps(monkeypatch, cfg) -> None:
    """Train ``cfg`` until the start of step 3 (after the step-2 checkpoint), then fail as a killed run would."""
    from raysemi.engine.loop import TrainingRun

    original = TrainingRun._train_step

    def crash_at_step_3(self, batch):
        if self.step == 2:
            raise RuntimeError("simulated crash")
        return original(self, batch)

    with monkeypatch.context() as patch:
        patch.setattr(TrainingRun, "_train_step", crash_at_step_3)
        with pytest.raises(RuntimeError, match="simulated crash"):
            train_plain(cfg, data_workers=0, device=CPU)


def _rank_choice(rank: int, port: int, results) -> None:
    """One of two gloo ranks: rank 0 times channels-last 0.1 s faster, rank 1 times it 0.3 s slower."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    clock = FakeClock()
    channels_last_s = [0.4, 0.8][rank]

    def seconds(batch):
        return channels_last_s if batch["labeled"]["image"].is_contiguous(memory_format=torch.channels_last) else 0.5

    cfg = load_config(None, ["train.probe_steps=3"])
    probe = SpeedProbe(cfg, TimedMethod(clock, seconds), CPU, False,
                       lambda name, raw, fmt: {"image": raw["image"].contiguous(memory_format=fmt)},
                       {"labeled": iter([{"image": torch.zeros(1, 3, 2, 2)}])}, 0, 2, None, clock=clock)
    probe.memory_format({"m": nn.Conv2d(3, 1, 1)})
    results[rank] = (probe.choice.channels_last, probe.choice.timings["channels_last_s"])
    dist.destroy_process_group()


@pytest.mark.slow  # two processes (about 20 s on 2 busy cores)
def test_workers_average_their_timings_and_choose_alike():
    """Rank 0 alone would pick channels-last (0.4 < 0.5 s), rank 1 contiguous (0.8 > 0.5 s); averaged
    (0.6 > 0.5 s) both keep contiguous, so DDP's models share one layout."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_rank_choice, args=(port, results), nprocs=2)
    assert dict(results) == {0: (False, pytest.approx(0.6)), 1: (False, pytest.approx(0.6))}
