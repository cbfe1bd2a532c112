"""Run tracking: ``metrics.jsonl`` always, W&B when enabled. Only rank 0 tracks."""

from raysemi.tracking.tracker import Tracker, best_of, read_metrics

__all__ = ["Tracker", "best_of", "read_metrics"]
