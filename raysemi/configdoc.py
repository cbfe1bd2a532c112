"""The configuration reference, generated from the config models so that each default is written once.

``python -m raysemi.configdoc > docs/configuration.md`` writes it; ``tests/test_configdoc.py`` fails when the
committed file and the models disagree. It walks whatever sections :class:`raysemi.config.Config` has at run
time, nested sections included: one table per section (key | type | default | description), each row from a
field's annotation, default and ``Field(description=...)``, each section's text from its class docstring.
"""

from __future__ import annotations

import inspect
import json
import re
import sys
import types
from collections.abc import Iterator
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from raysemi.config import NAMED_PARTS, Config

REGENERATE = "python -m raysemi.configdoc > docs/configuration.md"

HEADER = f"""# Configuration reference

Every key of a run's config with its type, default and meaning, generated from the config models
(`raysemi/config.py` and the methods' own sections) by
`{REGENERATE}`.
Edit a field's `description` there, not this file: a test fails when the two disagree.

A config is a YAML file (every key optional; `experiments/configs/` has one per dataset and method) plus
dotted overrides on the command line, e.g. `raysemi train -c experiments/configs/cps_camvid.yaml
train.steps=200 data.crop_size=[96,128]` (values are read as YAML scalars). An unknown key or a value out of
range is a one-line error naming the key and what is accepted."""

_BOUNDS = ((annotated_types.Ge, "ge", "≥"), (annotated_types.Gt, "gt", ">"), (annotated_types.Le, "le", "≤"),
           (annotated_types.Lt, "lt", "<"))


def render_config_reference(root: type[BaseModel] = Config) -> str:
    """Markdown: a header, then per section (the top level first) its docstring and a table of its keys."""
    parts = [HEADER]
    for path, model in _sections(root, ()):
        parts.append(_render_section(path, model))
    return "\n\n".join(parts) + "\n"


def _sections(model: type[BaseModel], path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], type[BaseModel]]]:
    """``(dotted path, model)`` for ``model`` and every section under it, depth first in field order."""
    yield path, model
    for name, field in model.model_fields.items():
        sub = _section_type(field)
        if sub is not None:
            yield from _sections(sub, (*path, name))


def _section_type(field: FieldInfo) -> type[BaseModel] | None:
    annotation = field.annotation
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _render_section(path: tuple[str, ...], model: type[BaseModel]) -> str:
    title = ".".join(path) if path else "top level"
    lines = [f"## {title}", ""]
    doc = _one_line(model.__doc__ or "")
    if doc:
        lines += [doc, ""]
    lines += ["| key | type | default | description |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        key = ".".join((*path, name))
        sub = _section_type(field)
        if sub is not None:
            row = (f"`{key}`", "section", f"see [{key}](#{key.replace('.', '')})",
                   _first_sentence(_one_line(sub.__doc__ or "")))
        else:
            names = NAMED_PARTS.get((*path, name))
            kind = " | ".join(f"`{n}`" for n in names) if names else _type_text(field)
            row = (f"`{key}`", kind, _default_text(field), _one_line(field.description or ""))
        lines.append("| " + " | ".join(_cell(text) for text in row) + " |")
    return "\n".join(lines)


def _type_text(field: FieldInfo) -> str:
    """The annotation in YAML words, with its bounds: ``int ≥ 1``, `` `whole` | `slide` ``, ``str or null``."""
    text = _annotation_text(field.annotation)
    bounds = [f"{sign} {_scalar(getattr(item, attr))}"
              for item in field.metadata for kind, attr, sign in _BOUNDS if isinstance(item, kind)]
    return f"{text} {', '.join(bounds)}" if bounds else text


def _annotation_text(annotation: Any) -> str:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return " | ".join(f"`{_scalar(value)}`" for value in args)
    if origin in (Union, types.UnionType):
        return " or ".join("null" if arg is type(None) else _annotation_text(arg) for arg in args)
    if origin is tuple:
        return "[" + ", ".join(_annotation_text(arg) for arg in args) + "]"
    if origin is list:
        return f"list of {_annotation_text(args[0])}"
    if origin is dict:
        return f"{{{_annotation_text(args[0])}: {_annotation_text(args[1])}}}"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation)


def _default_text(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    return f"`{_scalar(value)}`"


def _scalar(value: Any) -> str:
    """A value as it would be written in a YAML config: ``null``, ``true``, ``[96, 128]``, ``runs/default``."""
    if isinstance(value, str):
        return value
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    return json.dumps(value, ensure_ascii=False, default=list)


def _one_line(text: str) -> str:
    """A docstring or description as one line of markdown (reST roles and double backticks made plain)."""
    text = " ".join(inspect.cleandoc(text).split())
    return re.sub(r":(?:mod|class|func|meth|attr):`", "`", text).replace("``", "`")


def _first_sentence(text: str) -> str:
    head, sep, _ = text.partition(". ")
    return head + "." if sep else text


def _cell(text: str) -> str:
    """Table-safe: a ``|`` inside a cell would end it."""
    return text.replace("|", "\\|")


def main() -> None:
    sys.stdout.write(render_config_reference())


if __name__ == "__main__":
    main()
