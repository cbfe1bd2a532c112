"""The benchmark harness: what ``experiments/benchmarks/`` and ``raysemi report`` share (paired comparison tables,
step timing). No training run imports this package (``docs/architecture.md``), so editing it leaves every run's
code version (``experiments/benchmarks/gain.py``'s ``code_version``) as it was."""
