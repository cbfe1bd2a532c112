"""Every script under ``experiments/benchmarks/`` imports: a benchmark that cannot even load (a moved function,
a renamed module) fails here, not months later when someone reruns it. Importing runs no benchmark: each
script does its work under ``if __name__ == "__main__"``."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "experiments" / "benchmarks"
SCRIPTS = sorted(p for p in BENCHMARKS.glob("*.py") if p.name != "__init__.py")


def test_the_benchmark_folder_was_found():
    assert {"gain.py", "step_time.py", "ingest.py"} <= {p.name for p in SCRIPTS}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_a_benchmark_script_imports(script: Path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # as `python <script>` does: a script may import its siblings
    spec = importlib.util.spec_from_file_location(f"benchmark_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    assert callable(getattr(module, "main", None)), f"{script.name} has no main()"
