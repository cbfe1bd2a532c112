"""Peak memory of one call (:mod:`raysemi.bench.memory`): a call that holds 64 MiB at once raises the peak by
about 64 MiB, whatever its inputs hold."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from raysemi.bench.memory import peak_memory_growth, peak_rss_bytes

MIB = 2**20


def hold(inputs: torch.Tensor, mib: int) -> None:
    """Fill a ``mib`` MiB tensor (every page touched), then free it."""
    held = torch.ones(mib * MIB // 4).add_(inputs.sum())
    del held


def test_the_peak_resident_set_counts_a_freed_tensor_after_a_reset():
    base = peak_rss_bytes(reset=True)
    hold(torch.zeros(1), 64)
    assert 60 * MIB <= peak_rss_bytes() - base < 96 * MIB


def test_a_spawned_call_reports_what_it_held_beyond_its_inputs():
    growth = peak_memory_growth(partial(torch.ones, 16 * MIB // 4), partial(hold, mib=64), torch.device("cpu"))
    assert 60 * MIB <= growth < 96 * MIB  # the 16 MiB of inputs are not counted


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_the_allocator_peak_counts_what_the_call_held():
    device = torch.device("cuda")
    growth = peak_memory_growth(lambda: torch.ones(16 * MIB // 4, device=device),
                                lambda x: torch.ones(64 * MIB // 4, device=device).add_(x.sum()), device)
    assert 64 * MIB <= growth < 80 * MIB
