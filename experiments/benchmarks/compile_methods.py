"""Whether ``torch.compile`` compiles each method's training step on the CPU: one step (forward, losses,
backward) of each method on the method-contract test fixtures (tiny backbone, 40×56 images, batch 2), the
seconds it took (compiling included) and dynamo's graph breaks (the parts left eager) or the failure.

Usage (from the repository root; minutes per method on a small CPU)::

    python experiments/benchmarks/compile_methods.py [--methods supervised cps ...]

Prints one JSON line per method; ``raysemi.engine.probe.UNCOMPILABLE`` lists the methods that fail.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def contract_fixtures():
    """``tests/test_method_contract.py`` as a module: its ``_config``, ``_models`` and ``_batch``."""
    spec = importlib.util.spec_from_file_location("method_contract", REPO / "tests" / "test_method_contract.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def try_compile(name: str) -> dict:
    """One compiled training step of ``name`` on the fixtures: seconds, graph breaks (reason → count) or error."""
    import torch
    from torch._dynamo.utils import counters

    from raysemi.methods import build_method

    contract = contract_fixtures()
    torch._dynamo.reset()
    counters.clear()
    method = build_method(contract._config(name))
    models, batch = contract._models(method), contract._batch(method)
    began = time.perf_counter()
    try:
        torch.compile(method.training_step)(models, batch, 0)["loss"].backward()
    except Exception as error:  # noqa: BLE001 - the failure is the result
        lines = str(error).splitlines() or [""]
        cause = next((line for line in lines if "Error:" in line), lines[0])  # inductor's wraps the real one
        return {"method": name, "compiled": False, "seconds": round(time.perf_counter() - began, 1),
                "error": f"{type(error).__name__}: {cause}"}
    breaks = {reason.splitlines()[0]: count for reason, count in counters["graph_break"].items()}
    return {"method": name, "compiled": True, "seconds": round(time.perf_counter() - began, 1),
            "graph_breaks": breaks}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=["supervised", "cps", "cac", "self_correction", "simformer",
                                                       "unimatch"])
    for name in parser.parse_args(argv).methods:
        print(json.dumps(try_compile(name)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
