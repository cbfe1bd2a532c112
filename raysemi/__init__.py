"""raysemi: semi- and weakly-supervised semantic segmentation on Ray.

``raysemi.load(checkpoint)`` returns a predictor (see :mod:`raysemi.engine.predictor`); it is imported on first
use, so ``import raysemi`` stays light.
"""


def load(checkpoint, overrides=()):
    """A :class:`raysemi.engine.predictor.Predictor` for a checkpoint folder or a run directory."""
    from raysemi.engine.predictor import load as _load

    return _load(checkpoint, overrides)
