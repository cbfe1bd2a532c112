"""Where a benchmark suite keeps its runs: one JSON per finished run, one run directory per started run, a
finished run never trained twice, an interrupted one resumed, a run of other code retired on request.

A run is asked for as a :class:`RunRequest` (a protocol's variant at a seed and a budget, with ablation
overrides, scored on a split; a repeatability run names its repeat). A :class:`RunStore` keeps its record
(:mod:`raysemi.bench.pairs` describes run records) in ``<records>/<protocol>/<name>.json`` and trains it in
``<work>/<protocol>/<name>`` (repeatability runs one folder further down, in ``repeatability/``), where
:func:`run_name` gives the name. The record is written atomically once the run has finished: a JSON there means
a finished run. Each run directory records the code version it trains with
(:func:`raysemi.bench.versions.claim_run_dir`), so a half-trained run of other code is never resumed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from raysemi.bench import lineage, repeats, runs, versions

if TYPE_CHECKING:
    from raysemi.config import Config

Trainer = Callable[["Config"], dict]  # trains a config (resuming its run directory) and returns its summary
# (protocol, variant, iterations, overrides before train.steps, overrides after the budget's) → the run's config
VariantConfig = Callable[[str, str, int, tuple[str, ...], tuple[str, ...]], "Config"]


def run_name(variant: str, seed: int, iterations: int, extra: tuple[str, ...] = (), split: str = "report") -> str:
    """``<variant>-seed<S>-it<N>``, then ``-`` and 8 hex digits of the SHA-1 of the ablation overrides ``extra``
    (joined by spaces) when there are some, and ``-<split>`` off the report split."""
    suffix = f"-{hashlib.sha1(' '.join(extra).encode()).hexdigest()[:8]}" if extra else ""
    return f"{variant}-seed{seed}-it{iterations}{suffix}" + ("" if split == "report" else f"-{split}")


def record_label(run: dict) -> str:
    """``<protocol>/<run name>`` of a run record, as its JSON is named (records from before ``split``: report)."""
    return f"{run['protocol']}/" + run_name(run["method"], run["seed"], run["iterations"], tuple(run["overrides"]),
                                            run.get("split", "report"))


@dataclass(frozen=True)
class RunRequest:
    """One run of a benchmark: ``variant`` of ``protocol`` at ``seed`` and the budget ``iterations``, with the
    ablation overrides ``extra``, evaluated on ``split`` (``report`` or ``selection``); ``repeat`` names a
    repeatability run (kept apart, under ``<protocol>/repeatability/``)."""

    protocol: str
    variant: str
    seed: int
    iterations: int
    extra: tuple[str, ...] = ()
    split: str = "report"
    repeat: str | None = None

    @property
    def name(self) -> str:
        return run_name(self.variant, self.seed, self.iterations, self.extra, self.split) + (
            f"-{self.repeat}" if self.repeat else "")

    @property
    def folder(self) -> Path:
        """Its folder, relative to a store's records or work folder."""
        return Path(self.protocol, "repeatability" if self.repeat else "")


@dataclass(frozen=True)
class RunStore:
    """A suite's runs: their records under ``records``, their run directories under ``work``; ``repo`` is the
    checkout whose commit a record keeps. The suite supplies ``config`` (a variant's config, given the overrides
    that go before ``train.steps`` and after the budget's), ``code_version`` (a protocol's, of this checkout),
    ``stage_budgets`` (a variant and its budget → each stage's iterations) and ``say`` (one line to the user)."""

    records: Path
    work: Path
    repo: Path
    config: VariantConfig
    code_version: Callable[[str], str]
    stage_budgets: Callable[[str, int], dict[str, int]]
    say: Callable[[str], None] = print

    def path(self, request: RunRequest) -> Path:
        return self.records / request.folder / f"{request.name}.json"

    def run_dir(self, request: RunRequest) -> Path:
        return self.work / request.folder / request.name

    def result(self, request: RunRequest, baseline: str | None, trainer: Trainer, device: Callable[[], str],
               rerun_stale: bool = False) -> dict:
        """``request``'s record, from its JSON when it finished before (at this code version or one shown to
        train identically, :meth:`same_lineage`, with ``rerun_stale``), else trained with ``trainer`` (or resumed) now
        and recorded (:meth:`train_and_record`). Raises :class:`raysemi.bench.versions.MixedCodeError` for a
        run directory that other code started (restarted instead with ``rerun_stale``)."""
        version = self.code_version(request.protocol)
        if self.path(request).is_file():
            result = json.loads(self.path(request).read_text())
            if not rerun_stale or self.same_lineage(result.get("code_version"), version):
                return result
            self.retire_stale(request, result.get("code_version"))
        versions.claim_run_dir(self.run_dir(request), version, restart=rerun_stale)
        return self.train_and_record(request, baseline, trainer, device)

    def train_and_record(self, request: RunRequest, baseline: str | None, trainer: Trainer,
                         device: Callable[[], str]) -> dict:
        """Train ``request`` (resuming its run directory) and write its record: the request, ``baseline`` (the one
        its command named), what it measured (:func:`raysemi.bench.runs.measured`), the commit, the code
        version, ``device()`` (where it trained, asked once it has), the processor
        (:func:`raysemi.bench.runs.machine_name`) and its speed choices."""
        from raysemi.atomic import write_json

        run_dir, variant, iterations = self.run_dir(request), request.variant, request.iterations
        cfg = self.config(request.protocol, variant, iterations, (*request.extra, f"run.seed={request.seed}",
                                                                  f"run.dir={run_dir}"),
                          ("data.evaluate_on=selection",) if request.split == "selection" else ())
        started = time.perf_counter()
        summary = trainer(cfg)
        result = {
            "protocol": request.protocol, "method": variant, "baseline": baseline, "seed": request.seed,
            "iterations": iterations, "split": request.split, "overrides": list(request.extra),
            **runs.measured(cfg, summary, run_dir, iterations, started, self.stage_budgets(variant, iterations)),
            "commit": versions.commit_id(self.repo), "code_version": self.code_version(request.protocol),
            "device": device(), "machine": runs.machine_name(), "speed": runs.speed_record(summary),
            **({"repeat": request.repeat} if request.repeat else {}),
        }
        write_json(self.path(request), result)  # atomic: a run counts as finished only once its whole JSON is there
        return result

    def same_lineage(self, a: str | None, b: str | None) -> bool:
        """Whether code versions ``a`` and ``b`` are equal or were shown to train identically
        (:mod:`raysemi.bench.lineage`, entries in ``<records>/equivalent_versions.json``)."""
        same_as = lineage.load(self.records / lineage.FILE)
        return lineage.lineage(a, same_as) == lineage.lineage(b, same_as)

    def prove_same(self, request: RunRequest, trainer: Trainer, device: Callable[[], str]) -> dict:
        """Rerun ``request``'s finished run at this code version, in a scratch store under
        ``<work>/same-code/<version>/``, and record this version as the same as the recorded run's when the rerun
        reproduces its numbers (:func:`raysemi.bench.lineage.compare`); the entry. Otherwise (and when
        there is nothing to prove) a one-line :class:`raysemi.bench.lineage.NotSameCode`."""
        label, version = f"{request.protocol}/{request.name}", self.code_version(request.protocol)
        if not self.path(request).is_file():
            raise lineage.NotSameCode(f"{label}: no finished run at {self.path(request)} to rerun")
        recorded = json.loads(self.path(request).read_text())
        old = recorded.get("code_version")
        if not old:
            raise lineage.NotSameCode(f"{label}: its record has no code version to prove this one the same as")
        if self.same_lineage(old, version):
            raise lineage.NotSameCode(f"{label}: recorded at code {old}, already the same as this checkout's "
                                      f"{version}: nothing to prove")
        scratch = replace(self, records=self.work / "same-code" / version / "records",
                          work=self.work / "same-code" / version / "runs")
        rerun = scratch.result(request, recorded.get("baseline"), trainer, device, rerun_stale=True)
        difference, compared = lineage.compare(recorded, rerun, self.run_dir(request), scratch.run_dir(request))
        if difference:
            raise lineage.NotSameCode(f"{label} rerun at code {version} differs from its record at {old}: "
                                      f"{difference}")
        entry = lineage.add(self.records / lineage.FILE, request.protocol, version, old, label, compared,
                            versions.commit_id(self.repo))
        self.say(f"{label}: code {version} reproduced the run of code {old} ({', '.join(compared)}); recorded "
                 f"in {self.records / lineage.FILE}")
        return entry

    def retire_stale(self, request: RunRequest, old_version: str | None) -> None:
        """Move a finished run of another code version to ``<protocol>/stale/<name>-<old version>.json`` and drop
        its run directory, so the run trains afresh at this one."""
        stale = self.records / request.protocol / "stale" / f"{request.name}-{old_version or 'unknown'}.json"
        stale.parent.mkdir(parents=True, exist_ok=True)
        self.path(request).replace(stale)
        shutil.rmtree(self.run_dir(request), ignore_errors=True)
        self.say(f"{request.protocol}/{request.name}: code {old_version or 'unknown'} is stale (now "
                 f"{self.code_version(request.protocol)}); its JSON moved to {stale}, rerunning")

    def repeat_runs(self, request: RunRequest, threads: tuple[int, int], trainer: Trainer,
                    device: Callable[[], str], rerun_stale: bool = False) -> list[dict]:
        """The repeatability runs of ``request`` (a run without overrides): twice at ``threads[0]`` torch threads
        and once at ``threads[1]`` (``train.torch_threads``, which ``trainer`` must honour), each named by its
        repeat (``repeat-a`` …); their records. Finished ones are read, retrained with ``rerun_stale`` when
        another code version made them (as :meth:`result` does)."""
        counts = (threads[0], threads[0], threads[1])
        return [self.result(RunRequest(request.protocol, request.variant, request.seed, request.iterations,
                                       (f"train.torch_threads={count}",), request.split, f"repeat-{repeat}"),
                            None, trainer, device, rerun_stale) for repeat, count in zip(repeats.REPEATS, counts)]
