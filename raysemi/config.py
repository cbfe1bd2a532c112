"""Typed configuration: pydantic models loaded from YAML plus dotted ``key=value`` overrides.

The defaults are the embedded demo (``raysemi train`` with no config): synthetic data, the tiny CNN trained
from scratch with AdamW, 800 steps, one worker; it finishes in a few minutes on 2 CPU cores. Real datasets
take a config from ``experiments/configs/`` (EfficientNet-Lite0 or ResNet with ImageNet weights, SGD).

The sections every run has live in :mod:`raysemi.sections` (re-exported here); each method declares its own
section (``cps: {...}``) in its file, and :class:`Config` accepts the methods of :mod:`raysemi.methods.registry`.
Every section forbids unknown keys, so a typo is an error that names the key and lists the accepted ones.
Values in overrides are parsed as YAML scalars (``train.steps=200``, ``model.pretrained=false``,
``data.crop_size=[96,128]``).

Batch sizes are *global*: ``train.batch_size`` images per optimizer step summed over all workers (each of
``scaling.num_workers`` workers gets ``batch_size / num_workers``), so a config gives the same optimisation on
a laptop and on a cluster. The reference implementations (TorchSemiSeg, UniMatch) count per GPU instead:
multiply their batch size by their GPU count when porting a config.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from raysemi.data.formats import FORMATS
from raysemi.data.streams import batch_split_problem
from raysemi.errors import ConfigError
from raysemi.methods.registry import method_class, method_names, method_sections
from raysemi.models.backbones import BACKBONES
from raysemi.models.heads import HEADS
from raysemi.sections import (
    CommonConfig,
    DataConfig,
    EvalConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    RunSection,
    ScalingSection,
    Section,
    SyntheticConfig,
    TrackingConfig,
    TrainConfig,
    TTAConfig,
    WandbConfig,
    set_dotted,
    validate_model,
)

__all__ = [
    "NAMED_PARTS", "CommonConfig", "Config", "DataConfig", "EvalConfig", "LossConfig",
    "ModelConfig", "OptimConfig", "RunSection", "ScalingSection", "Section", "SyntheticConfig", "TrackingConfig",
    "TrainConfig", "TTAConfig", "WandbConfig", "load_config", "set_dotted", "validate_config",
]

# Keys whose values name a part that its own module owns and lists once (format, backbone and head dicts):
# checked here, above those modules, so a name added to its owner's dict is accepted with no other edit.
NAMED_PARTS: dict[tuple[str, str], dict[str, Any]] = {
    ("data", "format"): FORMATS,
    ("model", "backbone"): BACKBONES,
    ("model", "head"): HEADS,
}


def _choices_text(names: Iterable[str]) -> str:
    """``'a', 'b' or 'c'``, as pydantic words a Literal's choices."""
    quoted = list(map(repr, names))
    return ", ".join(quoted[:-1]) + f" or {quoted[-1]}" if len(quoted) > 1 else quoted[0]


class Config(CommonConfig):
    """A whole config: the common sections, ``method`` (a registered method's name) and one section per
    registered method with options, in registry order (``cps: {...}``; every one present, with its defaults
    where not given). The method sections are looked up in the registry at validation time, so a method
    registered later (a plug-in, a test) is accepted by this same class; the modules a config names in
    ``plugins`` are imported before anything else is read, in whatever process validates it.

    A run stores (``config.yaml``) and compares on resume only the common sections and its own method's
    (:meth:`run_dump`)."""

    model_config = ConfigDict(extra="allow")  # only the method sections: see _method_sections

    @field_validator("method")
    @classmethod
    def _registered(cls, name: str) -> str:
        names = method_names()
        if name not in names:
            expected = _choices_text(names)
            raise PydanticCustomError("literal_error", "Input should be {expected}", {"expected": expected})
        return name

    @model_validator(mode="after")
    def _known_parts(self) -> Config:
        """Each of :data:`NAMED_PARTS` names one of its owner's parts (a literal error at its dotted key)."""
        for (section, key), names in NAMED_PARTS.items():
            value = getattr(getattr(self, section), key)
            if value not in names:
                raise ValidationError.from_exception_data(type(self).__name__, [
                    {"type": "literal_error", "loc": (section, key), "input": value,
                     "ctx": {"expected": _choices_text(names)}}])
        return self

    @model_validator(mode="wrap")
    @classmethod
    def _method_sections(cls, data: Any, handler) -> Config:
        """Validate each method's section with its own model (errors keep their dotted keys), refuse any other
        key that is not a common section, and hand the validated sections on as the model's extras."""
        if not isinstance(data, dict):
            return handler(data)
        import_plugins(data.get("plugins") or [])
        sections = method_sections()
        unknown = [key for key in data if key not in cls.model_fields and key not in sections]
        if unknown:
            raise ValidationError.from_exception_data(
                cls.__name__, [{"type": "extra_forbidden", "loc": (unknown[0],), "input": data[unknown[0]]}])
        validated, errors = {key: value for key, value in data.items() if key not in sections}, []
        for name, model in sections.items():  # in registry order, whatever the order of the input
            try:
                validated[name] = model.model_validate(data.get(name, {}))
            except ValidationError as exc:
                errors += [{"type": e["type"], "loc": (name, *e["loc"]), "input": e["input"], "ctx": e.get("ctx", {})}
                           for e in exc.errors()]
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        return handler(validated)

    @model_validator(mode="after")
    def _method_checks(self) -> Config:
        """The method's own checks across sections (e.g. a file its options need)."""
        method_class(self.method).check_config(self)
        return self

    @model_validator(mode="after")
    def _batches_divide(self) -> Config:
        """The global batches split evenly over the workers (:func:`raysemi.data.streams.worker_batch`)."""
        workers = max(self.scaling.num_workers, 1)
        for key in ("batch_size", "unlabeled_batch_size"):
            problem = batch_split_problem(f"train.{key}", getattr(self.train, key), workers)
            if problem:
                raise ValueError(problem)
        return self

    @classmethod
    def section_type(cls, key: str) -> type[BaseModel] | None:
        return method_sections().get(key) or super().section_type(key)

    @classmethod
    def accepted_keys(cls) -> list[str]:
        return sorted([*cls.model_fields, *method_sections()])

    def run_dump(self) -> dict[str, Any]:
        """What a run stores and compares on resume: the common sections and the active method's section only,
        so that adding an option to another method leaves older runs resumable."""
        return active_sections(self.model_dump(mode="json"))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.run_dump(), sort_keys=False)


def active_sections(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` (a dumped config) without the sections of methods other than its ``method``."""
    return {key: value for key, value in raw.items() if key in CommonConfig.model_fields or key == raw.get("method")}


def import_plugins(modules: Iterable[str]) -> None:
    """Import the ``plugins`` modules (each registers its methods when imported; a second import is a no-op).

    Raises:
        ConfigError: a module cannot be imported; the message names it and where it must be.
    """
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError(f"plugins: cannot import {name!r} ({exc}); install it, or put its folder on "
                              "PYTHONPATH (on a cluster: in the job's working_dir or py_modules)") from None


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read ``path`` (YAML, optional), apply ``key=value`` overrides, and validate.

    Raises:
        ConfigError: one line naming the file, key or value at fault and what is accepted.
    """
    raw: dict[str, Any] = _read_yaml(Path(path)) if path else {}
    for override in overrides:
        key, value = _parse_override(override)
        set_dotted(raw, key, value)
    return validate_config(raw, source=str(path) if path else "overrides")


def validate_config(raw: dict[str, Any], source: str = "config") -> Config:
    """:class:`Config` from a mapping; a ``ConfigError`` of one line names ``source`` and the key at fault."""
    return validate_model(Config, raw, source)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data


def _parse_override(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r}: expected key=value, e.g. train.steps=200")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    return key.strip(), parsed
