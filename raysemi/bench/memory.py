"""Peak memory of one call: how much memory a computation needs beyond its inputs.

On CUDA the caching allocator keeps a peak (``torch.cuda.max_memory_allocated``). On the CPU (Linux) the
process's peak resident set (``VmHWM``) does, reset to the current resident set by writing 5 to
``/proc/self/clear_refs``; large tensors are mmapped and returned to the OS when freed, so the peak tracks them.
``ru_maxrss`` would not do: a child inherits its parent's peak across fork and exec. So the CPU measurement
runs in a fresh (spawned) process whose peak is reset once the inputs exist.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import torch

T = TypeVar("T")


def peak_memory_growth(prepare: Callable[[], T], run: Callable[[T], Any], device: torch.device) -> int:
    """Bytes by which one ``run(prepare())`` raises the peak memory on ``device`` above what the prepared inputs
    hold. On the CPU it runs in a spawned process, so ``prepare`` and ``run`` must pickle (module-level
    functions, or ``functools.partial`` of them)."""
    if device.type == "cuda":
        inputs = prepare()
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        run(inputs)
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_peak_rss_growth, prepare, run).result()


def _peak_rss_growth(prepare: Callable[[], T], run: Callable[[T], Any]) -> int:
    inputs = prepare()
    base = peak_rss_bytes(reset=True)
    run(inputs)
    return peak_rss_bytes() - base


def peak_rss_bytes(reset: bool = False) -> int:
    """This process's peak resident set (``VmHWM``) in bytes, after resetting it to the current resident set
    when ``reset``."""
    if reset:
        Path("/proc/self/clear_refs").write_text("5")
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/self/status has no VmHWM line: peak memory on the CPU needs Linux")
