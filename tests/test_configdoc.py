"""docs/configuration.md is generated from the config models: it must match them, and the generator must
render every kind of field the models use."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from raysemi.config import Config, Section
from raysemi.configdoc import REGENERATE, render_config_reference

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
# Sections whose keys are described in raysemi/config.py itself (the method sections describe their own).
GENERAL_SECTIONS = ("run", "data", "model", "loss", "optim", "train", "eval", "scaling", "tracking")


def test_configuration_doc_matches_the_models():
    assert DOC.is_file(), f"{DOC} is missing; write it with `{REGENERATE}`"
    assert DOC.read_text() == render_config_reference(), f"docs/configuration.md is stale; run `{REGENERATE}`"


def test_every_general_key_has_a_description():
    def leaves(model, path):
        for name, field in model.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, Section):
                assert annotation.__doc__, f"section {'.'.join((*path, name))} has no docstring"
                yield from leaves(annotation, (*path, name))
            else:
                yield ".".join((*path, name)), field

    missing = [key for section in GENERAL_SECTIONS
               for key, field in leaves(Config.model_fields[section].annotation, (section,)) if not field.description]
    assert not missing, f"keys without Field(description=...): {missing}"
    assert Config.model_fields["method"].description


class Inner(Section):
    """An inner section."""

    ratio: float = Field(0.5, gt=0.0, le=1.0, description="a | share")


class Outer(Section):
    """Outer ``text`` with a :mod:`role`."""

    mode: Literal["auto", True, False] = Field("auto", description="a literal")
    size: tuple[int, int] = Field((96, 128), description="a pair")
    name: str | None = Field(None, description="optional")
    groups: dict[str, list[int]] = Field({}, description="a mapping")
    inner: Inner = Inner()


def test_render_walks_nested_sections_and_writes_types_defaults_and_bounds():
    text = render_config_reference(Outer)
    assert "## top level\n\nOuter `text` with a `role`.\n" in text
    assert "| `mode` | `auto` \\| `true` \\| `false` | `auto` | a literal |" in text
    assert "| `size` | [int, int] | `[96, 128]` | a pair |" in text
    assert "| `name` | str or null | `null` | optional |" in text
    assert "| `groups` | {str: list of int} | `{}` | a mapping |" in text
    assert "| `inner` | section | see [inner](#inner) | An inner section. |" in text
    assert "## inner\n\nAn inner section.\n" in text
    assert "| `inner.ratio` | float > 0.0, ≤ 1.0 | `0.5` | a \\| share |" in text
