"""The layering of ``docs/architecture.md``, enforced: a module imports only its own package and the layers
below it, and only ``raysemi/ray/`` imports ray, only ``raysemi/tracking/`` wandb. A new module in a package
that no layer names fails here until the page and :data:`LAYERS` say where it sits. And a training run hands its
config down the layers: the walk of the config from ``raysemi train`` is short and rarely climbs back up."""

from __future__ import annotations

import ast
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.test_import_graph import PACKAGE, import_graph

# Lowest first; the same list as the table in docs/architecture.md. Packages in one layer do not import each
# other: each stands on the layers below it alone.
LAYERS: list[set[str]] = [
    {"errors"},
    {"atomic", "progress"},
    {"sections"},
    {"losses", "models", "data"},
    {"methods"},
    {"config"},
    {"sweeps", "tracking"},
    {"engine"},
    {"analysis", "bench", "ray"},
    {"cli", "configdoc", "raysemi"},
]
THIRD_PARTY_OWNERS = {"ray": "ray", "wandb": "tracking"}


def part_of(module: str) -> str:
    """``raysemi.data.splits`` → ``data``; ``raysemi.cli`` → ``cli``; the package itself → ``raysemi``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def layer_of(part: str) -> int:
    for level, parts in enumerate(LAYERS):
        if part in parts:
            return level
    raise AssertionError(f"raysemi/{part} is in no layer: add it to LAYERS and to docs/architecture.md")


def layering_violations(graph: dict[str, set[str]]) -> list[str]:
    """``a -> b`` for every import of a module in the same or a higher layer, other than a's own package."""
    found = []
    for module, imported in sorted(graph.items()):
        here = part_of(module)
        for other in sorted(imported):
            there = part_of(other)
            if there != here and layer_of(there) >= layer_of(here):
                found.append(f"{module} -> {other}")
    return found


def third_party_violations(root: Path = PACKAGE) -> list[str]:
    """``path: ray`` for each file outside ``raysemi/ray`` that imports ray (and wandb outside tracking)."""
    found = []
    for path in sorted(root.rglob("*.py")):
        part = path.relative_to(root).parts[0].removesuffix(".py")
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            for name in names:
                owner = THIRD_PARTY_OWNERS.get(name.split(".")[0])
                if owner and owner != part:
                    found.append(f"{path.relative_to(root.parent)}: {name}")
    return found


def test_the_rules_catch_an_upward_import_and_allow_a_downward_one():
    graph = {"raysemi.tracking.tracker": {"raysemi.engine.storage", "raysemi.atomic"},
             "raysemi.engine.loop": {"raysemi.tracking.tracker", "raysemi.engine.storage"},
             "raysemi.models.heads": {"raysemi.data.splits"}}
    assert layering_violations(graph) == ["raysemi.models.heads -> raysemi.data.splits",
                                          "raysemi.tracking.tracker -> raysemi.engine.storage"]


def test_a_package_in_no_layer_is_named():
    with pytest.raises(AssertionError, match="raysemi/plugins is in no layer"):
        layering_violations({"raysemi.plugins.x": {"raysemi.errors"}})


def test_a_ray_import_outside_raysemi_ray_is_found(tmp_path):
    package = tmp_path / "raysemi"
    (package / "methods").mkdir(parents=True)
    (package / "ray").mkdir()
    (package / "methods" / "m.py").write_text("def f():\n    from ray import train\n")
    (package / "ray" / "t.py").write_text("import ray.train\n")
    assert third_party_violations(package) == ["raysemi/methods/m.py: ray"]


def test_raysemi_follows_its_layers():
    graph = import_graph()
    assert len(graph) > 50  # the walk found the package
    assert layering_violations(graph) == []
    assert third_party_violations() == []


MAX_FUNCTION_LINES = 60


def long_functions(root: Path = PACKAGE, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """``path:name (N lines)`` for each function or method under ``root`` longer than ``limit`` lines."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    found.append(f"{path.relative_to(root.parent)}:{node.name} ({lines} lines)")
    return found


def test_a_long_function_is_found(tmp_path):
    (tmp_path / "raysemi").mkdir()
    (tmp_path / "raysemi" / "m.py").write_text("def short():\n    pass\n\n\ndef long():\n" + "    x = 1\n" * 5)
    assert long_functions(tmp_path / "raysemi", limit=5) == ["raysemi/m.py:long (6 lines)"]


def test_no_function_is_longer_than_60_lines():
    assert long_functions() == []


# ---- the walk of a run's configuration through the layers ----

CONFIG_PARAMETERS = {"args", "cfg", "config", "base"}  # the names the parsed arguments and the config go by


def config_walk(call: Callable[[], object]) -> list[str]:
    """The modules ``call`` walks the configuration through: each call, in the calling thread, of a raysemi
    function that takes the parsed arguments or the config (a parameter in :data:`CONFIG_PARAMETERS`), as its
    module, consecutive calls in one module counted as one stay."""
    walk: list[str] = []
    thread = threading.get_ident()

    def profile(frame, event, _arg):
        if event != "call" or threading.get_ident() != thread:
            return
        code, module = frame.f_code, frame.f_globals.get("__name__", "")
        params = set(code.co_varnames[:code.co_argcount + code.co_kwonlyargcount])
        if module.startswith("raysemi") and code.co_name != "<module>" and params & CONFIG_PARAMETERS \
                and (not walk or walk[-1] != module):
            walk.append(module)

    sys.setprofile(profile)
    try:
        call()
    finally:
        sys.setprofile(None)
    return walk


def climbs(walk: list[str]) -> list[str]:
    """``a -> b`` for each stay in a higher layer than the stay before it."""
    return [f"{a} -> {b}" for a, b in zip(walk, walk[1:], strict=False) if layer_of(part_of(b)) > layer_of(part_of(a))]


def test_a_climb_is_a_step_up_the_layers():
    walk = ["raysemi.cli", "raysemi.engine.driver", "raysemi.methods.base", "raysemi.engine.loop",
            "raysemi.engine.optim", "raysemi.ray.train"]
    assert climbs(walk) == ["raysemi.methods.base -> raysemi.engine.loop", "raysemi.engine.optim -> raysemi.ray.train"]


@pytest.mark.slow
def test_a_training_run_walks_its_config_down_the_layers_with_few_climbs(synthetic_root, tmp_path, ray_local):
    """``raysemi train`` on a 4-step run: the config passes through fewer than 40 stays and climbs back up
    fewer than 20 times (a driver that hands the config down and back up between its helpers shows here)."""
    from raysemi import cli
    from tests.test_tune import _overrides

    argv = ["train", *_overrides(synthetic_root), "train.channels_last=false", f"run.dir={tmp_path / 'run'}"]
    walk = config_walk(lambda: cli.main(argv))
    assert walk[0] == "raysemi.cli" and "raysemi.engine.driver" in walk and "raysemi.engine.loop" in walk
    assert len(walk) < 40 and len(climbs(walk)) < 20, (len(walk), climbs(walk), walk)
