"""The benchmark harness: what ``experiments/benchmarks/`` and ``raysemi report`` share (paired comparison tables,
step timing). No training run imports this package (``docs/architecture.md``), so editing it leaves every run's
code version (:mod:`raysemi.bench.versions`) as it was.

Paired comparisons: :mod:`~raysemi.bench.pairs` (run records paired by seed, the differences, per-class changes),
:mod:`~raysemi.bench.tables` (their Markdown tables), :mod:`~raysemi.bench.suite` (a benchmark suite's summary and
README), :mod:`~raysemi.bench.sweep_pairs` (``raysemi report``'s paired view of a user's runs),
:mod:`~raysemi.bench.quotes` (figures documents quote), :mod:`~raysemi.bench.repeats` (run-to-run differences) and
:mod:`~raysemi.bench.runs` (a run's cost and record).

Running a suite: :mod:`~raysemi.bench.protocol` (a protocol config and its variants), :mod:`~raysemi.bench.store`
(each run trained once, recorded, resumed, retired when stale) and :mod:`~raysemi.bench.plan` (a plan of command
lines, several at a time, within a time limit); :mod:`~raysemi.bench.confusions` says where a model errs."""
