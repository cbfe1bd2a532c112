"""Every script under ``experiments/benchmarks/`` imports: a benchmark that cannot even load (a moved function,
a renamed module) fails here, not months later when someone reruns it. Importing runs no benchmark: each
script does its work under ``if __name__ == "__main__"``. The scripts are a thin layer over the installed
package: none edits ``sys.path`` or assigns to a setting of a ``raysemi`` module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "experiments" / "benchmarks"
SCRIPTS = sorted(p for p in BENCHMARKS.glob("*.py") if p.name != "__init__.py")


def test_the_benchmark_folder_was_found():
    assert {"gain.py", "step_time.py", "ingest.py"} <= {p.name for p in SCRIPTS}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_a_benchmark_script_imports(script: Path, benchmark_script):
    module = benchmark_script(script)
    assert callable(getattr(module, "main", None)), f"{script.name} has no main()"


def sys_path_edits(source: str) -> list[int]:
    """Line numbers of the calls on ``sys.path`` (``sys.path.insert(...)``, ``.append``) in ``source``."""
    return [node.lineno for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute) and ast.unparse(node.func.value) == "sys.path"]


def package_setting_assignments(source: str) -> list[str]:
    """``module.NAME`` for each assignment to an attribute of an imported ``raysemi`` module in ``source``
    (``import raysemi.ray.data as ray_data`` then ``ray_data.BATCHES_PER_BLOCK = 2``)."""
    tree = ast.parse(source)
    modules = {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
               for alias in node.names if alias.name.startswith("raysemi")}
    modules |= {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                and (node.module or "").startswith("raysemi") for alias in node.names}
    targets = [t for node in ast.walk(tree) if isinstance(node, ast.Assign | ast.AugAssign)
               for t in (node.targets if isinstance(node, ast.Assign) else [node.target])]
    return [ast.unparse(t) for t in targets
            if isinstance(t, ast.Attribute) and ast.unparse(t.value).split(".")[0] in modules | {"raysemi"}]


def test_the_checks_find_a_sys_path_edit_and_an_overwritten_package_setting():
    source = ("import sys\nimport raysemi.ray.data as ray_data\nfrom raysemi import config\n"
              "sys.path.insert(0, 'x')\nray_data.BATCHES_PER_BLOCK = 2\nconfig.DEFAULT += 1\nlocal = 3\n")
    assert sys_path_edits(source) == [4]
    assert package_setting_assignments(source) == ["ray_data.BATCHES_PER_BLOCK", "config.DEFAULT"]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_a_benchmark_script_leaves_sys_path_and_package_settings_alone(script: Path):
    source = script.read_text()
    assert package_setting_assignments(source) == []
    assert sys_path_edits(source) == [], f"{script.name} edits sys.path; import from the package instead"
