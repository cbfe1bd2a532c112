"""A plug-in, as a user's package would be: importing it registers ``plugin_ce``. A config that says
``plugins: [tests.plugin_method]`` has every process that reads it import this module first."""

from raysemi.methods.registry import register
from tests.scaled_ce import ScaledCE


class PluginCE(ScaledCE):
    """:class:`ScaledCE` under its own name and section (``plugin_ce: {scale: ...}``)."""

    name = "plugin_ce"
    search_space = {"plugin_ce.scale": {"uniform": [0.5, 2.0]}}


register(PluginCE)
