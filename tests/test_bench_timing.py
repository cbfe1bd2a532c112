"""The step-timing harness (:mod:`raysemi.bench.timing`): the alternating timers on a fake clock, the pair
statistics on hand-made durations, and the in-memory steps on a tiny config (tiny backbone, 48×64 crops)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from raysemi.bench.camvid import TIMED_METHODS, CamvidProtocol
from raysemi.bench.timing import (
    alternate,
    engine_alternating,
    engine_seconds_per_step,
    handing_over,
    in_memory_batches,
    mean_seconds_per_step,
    paired_statistics,
    plain_step,
    seconds_per_call,
    step_flops,
)
from raysemi.methods import build_method
from tests.conftest import fast_config


class FakeClock:
    """A clock that only moves when a step says how long it took."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def step(self, name: str, durations: list[float], calls: list[str]):
        """A step that logs ``name`` and takes the next of ``durations`` seconds."""
        def run() -> None:
            calls.append(name)
            self.now += durations.pop(0)
        return run


def test_alternate_calls_a_then_b_each_n_times_and_drops_the_warmup_pairs():
    clock, calls = FakeClock(), []
    step_a = clock.step("A", [9.0, 9.0, 2.0, 2.0, 2.0], calls)
    step_b = clock.step("B", [9.0, 9.0, 3.0, 4.0, 5.0], calls)
    pairs = alternate(step_a, step_b, pairs=3, warmup=2, clock=clock)
    assert "".join(calls) == "ABABABABAB"
    assert pairs == [(2.0, 3.0), (2.0, 4.0), (2.0, 5.0)]


def test_seconds_per_call_keeps_the_calls_after_the_warmup():
    clock, calls = FakeClock(), []
    assert seconds_per_call(clock.step("A", [7.0, 1.0, 2.0], calls), calls=2, warmup=1, clock=clock) == [1.0, 2.0]
    assert calls == ["A", "A", "A"]


def test_paired_statistics_take_the_median_of_the_ratios_not_the_ratio_of_the_medians():
    stats = paired_statistics([(1.0, 3.0), (2.0, 2.0), (4.0, 4.0)])  # ratios 3, 1, 1
    assert stats == {"a_s": 2.0, "b_s": 3.0, "ratio": 1.0, "ratio_min": 1.0, "ratio_max": 3.0, "pairs": 3}
    assert paired_statistics([(2.0, 3.0), (2.0, 4.0), (2.0, 5.0)])["ratio"] == 2.0  # ratios 1.5, 2, 2.5
    with pytest.raises(ValueError, match="no pairs"):
        paired_statistics([])


def test_handing_over_pairs_the_step_before_each_hand_over_with_the_time_to_the_next_request():
    clock, calls, pairs = FakeClock(), [], []
    batch = {"image": torch.zeros(1)}
    stream = handing_over(batch, clock.step("plain", [1.0, 2.0, 3.0, 4.0], calls), clock, pairs,
                          torch.get_num_threads())
    for engine_s in (5.0, 6.0, 7.0):  # the consumer's step between two requests
        assert next(stream) is batch
        clock.now += engine_s
    next(stream)
    assert calls == ["plain"] * 4
    assert pairs == [(1.0, 5.0), (2.0, 6.0), (3.0, 7.0)]


@pytest.fixture
def tiny(synthetic_root, tmp_path):
    return fast_config(synthetic_root, tmp_path / "run", "train.steps=5", "train.log_every=1000")


def test_in_memory_batches_are_the_streams_first_decoded_batch(tiny):
    batches, source = in_memory_batches(tiny, build_method(tiny))
    assert list(batches) == ["labeled"] and source.classes.num_classes > 1
    assert batches["labeled"]["image"].dtype == torch.uint8 and batches["labeled"]["image"].shape == (4, 3, 48, 64)
    assert batches["labeled"]["mask"].shape == (4, 48, 64)


def test_a_plain_step_trains_its_models_on_the_prepared_batch(tiny):
    step = plain_step(tiny)
    assert step.images == 4 and step.batch["labeled"]["image"].dtype == torch.float32
    before = [p.detach().clone() for p in step.models["segmenter"].parameters()]
    step()
    assert any(not torch.equal(b, p) for b, p in zip(before, step.models["segmenter"].parameters()))


def test_the_engine_alternates_with_another_step_once_per_batch(tiny):
    calls = []
    pairs = engine_alternating(tiny, lambda: calls.append("other"), warmup=1)
    assert len(calls) == 5  # one before each of the 5 batches the loop asks for
    assert len(pairs) == 5 - 1 - 1  # the last step has no next request; one warm-up pair
    assert all(other_s >= 0 and engine_s > 0 for other_s, engine_s in pairs)


def test_the_seconds_per_step_leave_out_the_reports_up_to_the_warmup():
    reports = [{"step": 2, "steps_per_s": 0.01}, {"step": 4, "steps_per_s": 2.0}, {"step": 5, "steps_per_s": 4.0}]
    assert mean_seconds_per_step(reports, warmup=2) == pytest.approx((0.5 + 0.25) / 2)
    with pytest.raises(ValueError, match="no report after step 5"):
        mean_seconds_per_step(reports, warmup=5)


def test_the_engine_times_its_steps_after_the_warmup_on_a_tiny_run(tiny):
    four_steps = tiny.model_copy(update={"train": tiny.train.model_copy(update={"steps": 4})})
    assert 0 < engine_seconds_per_step(four_steps, torch.device("cpu"), warmup=2) < 60  # steps 3-4 of 4


def test_the_camvid_protocol_config_sets_the_fraction_seed_and_budget(tmp_path):
    repo = Path(__file__).resolve().parents[1]
    camvid = CamvidProtocol.in_checkout(repo)
    assert camvid.data == repo.parent / "shared" / "data" / "camvid-96x128"
    cfg = camvid.config("cps", "1/8", 2, 30, tmp_path, ["train.batch_size=4"])
    assert (cfg.method, cfg.data.label_fraction, cfg.data.split_seed, cfg.run.seed) == ("cps", 0.125, 2, 2)
    assert (cfg.train.steps, cfg.train.eval_every, cfg.train.batch_size) == (30, 0, 4)
    cac = camvid.timing_config("cac", 10, tmp_path)
    assert (cac.cac.start_step, cac.data.label_fraction) == (0, 0.125)
    assert camvid.timing_config("supervised", 10, tmp_path).data.label_fraction == 1.0
    assert set(TIMED_METHODS) == {"supervised", "cps", "cac", "self_correction", "simformer", "unimatch"}


def test_step_flops_count_forward_backward_and_nothing_of_the_optimizer():
    """A bias-free Linear(4 → 3) on 5 rows: forward 2·5·4·3 = 120; backward 240 (the input's gradient and the
    weight's, 120 each); SGD's update is elementwise and not counted: 360 in all."""
    layer = torch.nn.Linear(4, 3, bias=False)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    inputs = torch.randn(5, 4, requires_grad=True)

    def step():
        optimizer.zero_grad()
        layer(inputs).sum().backward()
        optimizer.step()

    before = layer.weight.detach().clone()
    assert step_flops(step) == 360
    assert not torch.equal(layer.weight, before)  # the counted call trained


def test_a_two_network_step_counts_more_than_twice_a_supervised_steps_work(tiny, synthetic_root, tmp_path):
    """CPS trains two networks, each on the 4 labeled crops supervised trains one on, and each also on its mixed
    unlabeled crops, after no-grad passes over them: more than twice supervised's count (7.4× here)."""
    cps = fast_config(synthetic_root, tmp_path / "cps", "method=cps", "data.label_fraction=0.5", "train.steps=5",
                      "train.log_every=1000")
    supervised_flops, cps_flops = step_flops(plain_step(tiny)), step_flops(plain_step(cps))
    assert supervised_flops > 0 and cps_flops > 2 * supervised_flops


def test_the_method_ratio_page_prints_both_ratios_and_a_dash_where_a_record_predates_the_flops(benchmark_script):
    method_ratio = benchmark_script(Path(__file__).resolve().parents[1] / "experiments" / "benchmarks"
                                    / "method_ratio.py")
    row = {"method": "unimatch", "vs_supervised": 3.94, "method_s": 1.924, "supervised_s": 0.509,
           "load_average": [1.0, 1.5, 2.0]}
    record = {"tag": "t", "threads": 2, "torch": "2.14.1", "steps": 12, "warmup": 2, "date": "2026-12-07 03:38"}
    page = method_ratio.markdown(record | {"rows": [row | {"flops_vs_supervised": 4.1}]})
    assert "| unimatch | 3.94 | 4.10 | 1.924 | 0.509 | 1.0, 1.5, 2.0 |" in page
    assert "| unimatch | 3.94 | - | 1.924 |" in method_ratio.markdown(record | {"rows": [row]})
