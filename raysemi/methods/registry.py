"""The one list of methods. Adding a method is its file (a :class:`~raysemi.methods.base.Method` subclass that
declares its config section, search space, streams, stages and hooks), its test file, and one ``register``
line at the bottom of this module; the config, sweeps, report and the contract test read everything else from
the method class.
"""

from __future__ import annotations

from raysemi.errors import ConfigError
from raysemi.methods.base import Method
from raysemi.methods.cac import ContextAwareConsistency
from raysemi.methods.cps import CrossPseudoSupervision
from raysemi.methods.self_correction import SelfCorrection
from raysemi.methods.simformer import SimFormer
from raysemi.methods.supervised import Supervised
from raysemi.methods.unimatch import UniMatch
from raysemi.sections import CommonConfig, Section

_METHODS: dict[str, type[Method]] = {}


def register(method: type[Method]) -> type[Method]:
    """Add ``method`` under ``method.name`` (in this order in configs and listings) and return it.

    Built-in methods register at the bottom of this module. A method outside the package registers in its own
    module, which a config names in ``plugins: [module]``: every process that reads the config (the driver,
    Ray Train workers, Tune trials, a job's entrypoint) imports those modules before it validates it, so the
    method exists wherever the config does.

    Raises:
        ValueError: ``method`` is not a ``Method`` subclass, or its name is taken or would clash with a config
            section.
    """
    if not (isinstance(method, type) and issubclass(method, Method)):
        raise ValueError(f"register({method!r}): a method is a subclass of raysemi.methods.base.Method")
    name = getattr(method, "name", None)
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"register({method.__name__}): its `name` must be an identifier, got {name!r}")
    if name in _METHODS or name in CommonConfig.model_fields:
        raise ValueError(f"register({method.__name__}): the name {name!r} is taken (by "
                         f"{_METHODS[name].__name__ if name in _METHODS else 'a config section'})")
    _METHODS[name] = method
    return method


def unregister(name: str) -> None:
    """Remove the method ``name`` (a test's own method, after the test)."""
    del _METHODS[name]


def method_names() -> tuple[str, ...]:
    """The registered methods' names, in registration order."""
    return tuple(_METHODS)


def method_class(name: str) -> type[Method]:
    """The registered method ``name``.

    Raises:
        ConfigError: no method has that name; the message lists the registered ones.
    """
    if name not in _METHODS:
        raise ConfigError(f"method={name!r} is not a registered method; choose one of {', '.join(_METHODS)}")
    return _METHODS[name]


def method_sections() -> dict[str, type[Section]]:
    """``{method name: its config section model}`` for the methods that declare one, in registration order."""
    return {name: method.config_model for name, method in _METHODS.items() if method.config_model is not None}


def build_method(cfg: CommonConfig) -> Method:
    """The method object ``cfg.method`` names, for ``cfg``."""
    return method_class(cfg.method).create(cfg)


register(Supervised)
register(CrossPseudoSupervision)
register(ContextAwareConsistency)
register(SelfCorrection)
register(SimFormer)
register(UniMatch)
