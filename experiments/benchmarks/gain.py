"""Does a method beat its baselines? Paired runs on a benchmark protocol, resumable, with a table and summary.

A protocol (``experiments/protocols/``) fixes the data, the labeled split, the report and selection splits,
the model, the optimiser and the iteration budget, and is itself a plain raysemi config of the supervised(k)
baseline. This command runs a method and the baselines it must beat (:func:`planned_comparisons`) on that
protocol for seeds ``0..S-1``: the same split, the same labeled batches (the labeled stream's order and
augmentation are a function of ``run.seed`` alone, whatever else the method reads); the seed changes
initialisation and data order. A chained method's compute is the sum over its stages (self-correction: 2 × the
budget), and it also faces ``supervised`` at that summed budget. Each run writes one JSON with its ``commit``,
``code_version`` (:func:`code_version`), ``total_iterations``, ``train_time_s`` (summed over stages) and
``split``; every invocation then rebuilds, from all run JSONs:

- ``results/gain/README.md``: per split and protocol, per comparison, each seed's two mIoUs and their paired
  difference, the mean ± std of the differences, per-class IoU (baseline, method, difference, and
  supervised_all_labels' where it ran), both sides' total iterations and training time; the baseline's
  val-mIoU curve and final mIoU by budget (how each protocol's budget was chosen); the repeatability runs;
- ``results/summary.json``: one ``"kind": "comparison"`` record per (method, baseline) pair with runs, named
  (:func:`record_name`, e.g. ``p2/cac-vs-supervised``), ``{"protocol", "split", "method", "baseline",
  "iterations", "baseline_iterations", "seeds", "miou", "baseline_miou", "diff_mean", "diff_std",
  "method_runs", "baseline_runs", "mixed_code"}`` (lists in seed order; ``diff_*`` of ``miou - baseline_miou``;
  ``*_runs``: each side's per-seed ``commit``, ``code_version``, ``total_iterations``, ``train_time_s``),
  plus ``"overrides"`` for an ablation, and for weak-shot runs ``<group>_miou``, ``baseline_<group>_miou`` and
  (SimFormer) ``oracle_<group>_miou`` lists (``novel``, ``base``); and ``"kind": "repeatability"`` records
  (``--repeatability``). The headroom of a protocol is the record of ``supervised_all_labels`` against
  ``supervised``;
- the quoted figures: each ``<!-- gain:NAME[#FIELD] -->…<!-- /gain -->`` marker of README.md,
  docs/benchmarks.md and results/gain/notes.md, filled from its record (:func:`quoted`).

Two runs are paired only when their code versions are equal (a JSON from before the field: unknown, stale);
a refused pair is one line on stderr with what to do: ``--rerun-stale`` retrains the stale side,
``--allow-mixed-code`` pairs it anyway and the tables flag it. A finished run of this code version is never
rerun; an interrupted one resumes from its run directory's newest checkpoint (``train.checkpoint_every`` in the
protocol), so re-running the same command after a stop loses nothing. ``--control`` also runs the method with
its unlabeled term's weight at 0 (``<method>_control``: CPS's two networks with their init and batch
composition; CAC's crops and projector in the forward pass), so a gain can be attributed to the unlabeled data.
``--split selection`` scores the runs on the protocol's selection split, where every hyperparameter choice is
made (``--set`` ablations); the headline numbers are on the report split (the default), and the two are never
paired or tabled together.

Usage (from the repository root)::

    python experiments/benchmarks/gain.py --protocol p1 --method supervised_all_labels --seeds 2   # headroom
    python experiments/benchmarks/gain.py --protocol p1 --method cps --control --seeds 3
    python experiments/benchmarks/gain.py --protocol p2 --method cac --seeds 3 --set cac.temperature=0.2
    python experiments/benchmarks/gain.py --protocol p2 --method cps --baseline supervised_cps_optim --control
    python experiments/benchmarks/gain.py --protocol p2 --method cac --seeds 3 --set cac.gamma=0.5 --split selection
    python experiments/benchmarks/gain.py --protocol p1 --method supervised --iterations 300 --seeds 2  # budget
    python experiments/benchmarks/gain.py --protocol p1 --method simformer_oracle --baseline simformer_oracle
    python experiments/benchmarks/gain.py --protocol p1 --method simformer_full --baseline simformer_basic
    python experiments/benchmarks/gain.py --protocol p1 --method self_correction_linear --seeds 3
    python experiments/benchmarks/gain.py --protocol p2 --method cps --seed 1 --skip-baseline --runner plain
    python experiments/benchmarks/gain.py --protocol p2 --method supervised --seed 0 --repeatability
    python experiments/benchmarks/gain.py --protocol p2 --method cac --seed 0 --rerun-stale
    python experiments/benchmarks/gain.py --table [--allow-mixed-code]          # rebuild outputs only

``--seed S`` (repeatable) runs those seeds only and ``--skip-baseline`` leaves the baselines to other
invocations: ``gain_plan.py`` runs such one-seed invocations side by side (``plans/rerun_matrix.txt``).
``--runner plain`` trains without Ray (:mod:`raysemi.engine.plain`: the same batches and loop, torch
DataLoader processes, CUDA when present).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "experiments" / "benchmarks" / "results"
RUNS = RESULTS / "gain"  # one JSON per run: <protocol>/<variant>-seed<s>-it<N>[-<overrides hash>].json
WORK = REPO / "experiments" / "benchmarks" / "_work" / "gain"  # the runs' directories (checkpoints)
LEVELLED_TOLERANCE = 0.01  # a curve has levelled off when its last quarter stays within ±1 point
PLAIN_DATA_WORKERS = 2  # --runner plain: decode processes per stream, beside a loop of one intra-op thread


@dataclass(frozen=True)
class Protocol:
    config: str  # the supervised(k) baseline, relative to the repository root
    all_labels: tuple[str, ...]  # overrides that label every training image
    methods: dict[str, tuple[str, ...]]  # each method's overrides on top of the protocol config
    needs: str | None = None  # a data folder the protocol reads (the command skips, saying so, without it)


# The unlabeled term's weight of each method, set to 0 by its control.
CONTROLS = {"cps": ("cps.weight=0",), "cac": ("cac.weight=0",)}
# The controls still pass unlabeled images through the network with the labeled ones, so BatchNorm's statistics
# see them; this variant does that alone (one network, no unlabeled loss, no CutMix), to tell the two apart.
UNLABELED_BATCHNORM = {"supervised_unlabeled_bn": ("supervised.unlabeled_batchnorm=true",)}
# SimFormer's variants (every image, novel classes known from tags): full is compared with basic, and each
# record adds the oracle run of the same seed (novel masks too), so the share of the gap closed is computable.
# basic: the supplementary's (A5), full minus pixel-pixel transfer; basic_nocomp: the complementary loss off too.
SIMFORMER_BASIC = ("simformer.similarity_weight=0", "simformer.distill_weight=0")
SIMFORMER_NO_COMPLEMENTARY = ("simformer.complementary_weight=0",)
# The released code's losses (issue 20), as experiments/configs/simformer_*.yaml set them: pair features
# detached for the head's BCE, the complementary loss with the mask-loss weights at every decoder layer,
# distillation weight 0.5.
SIMFORMER_RELEASED = ("simformer.detach_pair_features=true", "simformer.complementary_focal_weight=20.0",
                      "simformer.complementary_dice_weight=1.0", "simformer.complementary_layers=all",
                      "simformer.distill_weight=0.5")
# MaskFormer's optimizer on a pretrained backbone (experiments/configs/simformer_camvid.yaml): P2's SGD at 0.2
# is the CNN baseline's, not a transformer decoder's.
MASKFORMER_OPTIM = ("optim.name=adamw", "optim.lr=0.0005", "optim.backbone_lr_mult=0.1", "optim.weight_decay=0.0001")
ORACLES = {"simformer_full": "simformer_oracle", "simformer3_full": "simformer3_oracle"}
# CPS as published (issue 36): SGD, weight decay 5e-4 (not on biases and norms), one learning rate for backbone
# and heads (the paper's 4.2, TorchSemiSeg's train.py) and λ from the first step (cps.rampup_steps=0, the
# default). On P2 the one rate is the protocol's backbone rate, 0.02 (the head's 0.2 is ten times the rate its
# pretrained backbone trains at); the baseline of that comparison is supervised_cps_optim, the same optimizer, so
# the pair compares methods alone:
#   gain.py --protocol p2 --method cps --baseline supervised_cps_optim --control
# P1 keeps its AdamW from scratch (one rate already; 5e-4 is an SGD L2 weight): only the ramp-up goes.
CPS_PUBLISHED_OPTIM = ("optim.weight_decay=0.0005", "optim.decay_norm_and_bias=false", "optim.backbone_lr_mult=1.0",
                       "optim.lr=0.02")
CPS_BASELINES = {"supervised_cps_optim": CPS_PUBLISHED_OPTIM,
                 "supervised_unlabeled_bn_cps_optim": (*UNLABELED_BATCHNORM["supervised_unlabeled_bn"],
                                                       *CPS_PUBLISHED_OPTIM)}


def simformer_variants(all_labels: tuple[str, ...], novel: str, name: str = "simformer",
                       optim: tuple[str, ...] = ()) -> dict[str, tuple[str, ...]]:
    """``<name>_full``, ``<name>_basic`` and ``<name>_oracle`` with the classes ``novel`` (a YAML list) novel,
    the released losses and ``optim``'s overrides."""
    common = ("method=simformer", *all_labels, *optim, *SIMFORMER_RELEASED, f"simformer.novel={novel}")
    return {f"{name}_full": common, f"{name}_basic": common + SIMFORMER_BASIC,
            f"{name}_basic_nocomp": common + SIMFORMER_BASIC + SIMFORMER_NO_COMPLEMENTARY,
            f"{name}_oracle": common + ("simformer.oracle=true",)}


# Self-correction (issue 20): F is the protocol's labeled split, W its unlabeled images with boxes derived from
# their masks (written once per protocol, see derived_boxes_file). It is a chain of runs: the ancillary, a model
# of its own trained on F first, trains the protocol's budget, then the primary trains the budget again (conv:
# its corrector stage takes a quarter of it). Its compute is the sum, twice the budget: it is compared with
# `supervised` at that summed budget (and, as a second row, at the protocol's budget).
DERIVED_BOXES = "{derived_boxes}"  # in an override: the protocol's boxes file
SELF_CORRECTION_MODES = ("none", "linear", "conv")
CORRECTOR_SHARE = 4


def self_correction_variants(*extra: str) -> dict[str, tuple[str, ...]]:
    """``self_correction_<mode>`` for each mode, with ``extra`` overrides (P1: its background, which has no boxes,
    allowed anywhere by the ancillary's box constraint), and ``supervised_boxes``: supervised on F and W's
    box-filled masks, from the same boxes file."""
    common = ("method=self_correction", f"data.unlabeled_boxes={DERIVED_BOXES}", *extra)
    boxes = {"supervised_boxes": ("supervised.weak_boxes=fill", f"data.unlabeled_boxes={DERIVED_BOXES}")}
    return boxes | {f"self_correction_{mode}": (*common, f"self_correction.mode={mode}")
                    for mode in SELF_CORRECTION_MODES}


def stage_budgets(variant: str, iterations: int) -> dict[str, int]:
    """The iterations each stage of ``variant`` trains when its budget is ``iterations`` (``{"train": N}`` for a
    method of one run): self-correction's ancillary the whole budget, then its primary the whole budget (conv:
    corrector a quarter, primary the rest)."""
    if not variant.startswith("self_correction_"):
        return {"train": iterations}
    if variant.startswith("self_correction_conv"):
        corrector = iterations // CORRECTOR_SHARE
        return {"ancillary": iterations, "corrector": corrector, "primary": iterations - corrector}
    return {"ancillary": iterations, "primary": iterations}


def total_iterations(variant: str, iterations: int) -> int:
    """What ``variant`` trains in all at the budget ``iterations``: the sum over its stages (self-correction:
    2 × ``iterations``)."""
    return sum(stage_budgets(variant, iterations).values())


def budget_overrides(variant: str, iterations: int) -> tuple[str, ...]:
    """How a chained method spends ``iterations`` per stage: the overrides after ``train.steps={iterations}``."""
    stages = stage_budgets(variant, iterations)
    if "ancillary" not in stages:
        return ()
    overrides = (f"self_correction.ancillary_steps={stages['ancillary']}",)
    if "corrector" in stages:
        overrides += (f"self_correction.corrector_steps={stages['corrector']}", f"train.steps={stages['primary']}")
    return overrides


def derived_boxes_file(protocol_name: str) -> Path:
    """``data.unlabeled_boxes`` for the protocol: each unlabeled image's boxes from its mask (one box per object of
    a thing class, as ``raysemi data split --boxes`` draws them), written once per code version under the work
    folder (the boxes follow the code that derives them and the protocol's split)."""
    from raysemi.config import load_config
    from raysemi.data.dataset import open_dataset
    from raysemi.data.weak_labels import boxes_from_masks, write_boxes_file

    path = WORK / protocol_name / f"unlabeled_object_boxes-{code_version(protocol_name)}.txt"
    if not path.is_file():
        source = open_dataset(load_config(REPO / PROTOCOLS[protocol_name].config).data)
        with_masks = {sample.image: sample for sample in source.train}
        unlabeled = [with_masks[sample.image] for sample in source.split.unlabeled]
        path.parent.mkdir(parents=True, exist_ok=True)
        write_boxes_file(path, boxes_from_masks(source.reader, unlabeled), source.reader.root)
    return path


P1_ALL_LABELS = ("data.label_count=null", "data.label_fraction=1.0")
P2_ALL_LABELS = ("data.labeled_split=experiments/protocols/p2_camvid/all_labeled.txt", "data.unlabeled_split=null")
PROTOCOLS = {
    "p1": Protocol(
        config="experiments/protocols/p1_synthetic.yaml",
        all_labels=P1_ALL_LABELS,
        methods={
            **UNLABELED_BATCHNORM,
            "cps": ("method=cps",),
            "cac": ("method=cac", "cac.start_step=50", "cac.rampup_steps=100"),
            "unimatch": ("method=unimatch",),
            # two of the five shapes novel: square and ring
            **simformer_variants(P1_ALL_LABELS, "[2,4]"),
            **self_correction_variants("self_correction.free_classes=[0]"),
        },
    ),
    "p2": Protocol(
        config="experiments/protocols/p2_camvid.yaml",
        all_labels=P2_ALL_LABELS,
        methods={
            **UNLABELED_BATCHNORM,
            **CPS_BASELINES,
            "cps": ("method=cps", *CPS_PUBLISHED_OPTIM),
            "cac": ("method=cac", "cac.start_step=100", "cac.rampup_steps=150", "cac.queue_steps=4"),
            "unimatch": ("method=unimatch",),
            # Car alone novel (simformer_*), then Car, Pedestrian and Bicyclist (simformer3_*)
            **simformer_variants(P2_ALL_LABELS, "[8]", optim=MASKFORMER_OPTIM),
            **simformer_variants(P2_ALL_LABELS, "[8,9,10]", name="simformer3", optim=MASKFORMER_OPTIM),
            **self_correction_variants(),
        },
        needs="../shared/data/camvid-180x240",
    ),
}


def variant_overrides(protocol: Protocol, variant: str) -> tuple[str, ...]:
    """The overrides that make ``variant`` (``supervised``, ``supervised_all_labels``, a method or
    ``<method>_control``) out of the protocol's config."""
    if variant == "supervised":
        return ()
    if variant == "supervised_all_labels":
        return protocol.all_labels
    method = variant.removesuffix("_control")
    if method not in protocol.methods or (variant.endswith("_control") and method not in CONTROLS):
        raise SystemExit(f"error: --method {variant} is not defined for this protocol; choose one of "
                         f"{', '.join(known_variants(protocol))}")
    return protocol.methods[method] + (CONTROLS[method] if variant.endswith("_control") else ())


def known_variants(protocol: Protocol) -> list[str]:
    """Every variant ``protocol`` defines."""
    return ["supervised", "supervised_all_labels", *protocol.methods,
            *(f"{m}_control" for m in protocol.methods if m in CONTROLS)]


# ------------------------------------------------------------------------------------- what each run faces
SEMI_SUPERVISED = ("cps", "cac")


@dataclass(frozen=True)
class Comparison:
    """A method against a baseline. ``at_total``: the baseline trains the method's total iterations (the sum
    over a chained method's stages), not the budget the method was given."""

    method: str
    baseline: str
    at_total: bool = False


def planned_comparisons(method: str) -> list[Comparison]:
    """The baselines ``method`` must beat (issue 35): every semi-supervised method (and its λ = 0 control)
    against ``supervised`` and ``supervised_unlabeled_bn`` (CPS also against their published-optimizer twins,
    where the protocol defines them), a method against its control; self-correction
    against ``supervised`` at its summed budget and at the protocol's, against ``self_correction_none`` and
    against ``supervised_boxes`` (box-filled F ∪ W) at its summed budget; SimFormer ``full`` against the
    supplementary's ``basic`` and the weaker ``basic_nocomp``; the headroom and BatchNorm runs against
    ``supervised``."""
    base = method.removesuffix("_control")
    if base in SEMI_SUPERVISED:
        own = [Comparison(method, f"{base}_control")] if method == base else []
        # where a protocol trains CPS with the published optimizer (P2), the baselines with that optimizer too
        same_optim = [Comparison(method, b) for b in CPS_BASELINES] if base == "cps" else []
        return [Comparison(method, "supervised"), Comparison(method, "supervised_unlabeled_bn"), *same_optim, *own]
    if method.startswith("self_correction_"):
        versus_none = [] if method == "self_correction_none" else [Comparison(method, "self_correction_none")]
        return [Comparison(method, "supervised", at_total=True), Comparison(method, "supervised"), *versus_none,
                Comparison(method, "supervised_boxes", at_total=True)]
    if method.endswith("_full") and method in ORACLES:
        name = method.removesuffix("_full")
        return [Comparison(method, f"{name}_basic"), Comparison(method, f"{name}_basic_nocomp")]
    if method in ("supervised_all_labels", "supervised_unlabeled_bn", "supervised_boxes"):
        return [Comparison(method, "supervised")]
    return []


def baseline_budget(comparison: Comparison, iterations: int) -> int:
    """The budget the baseline of ``comparison`` trains when the method's is ``iterations``."""
    return total_iterations(comparison.method, iterations) if comparison.at_total else iterations


def run_name(variant: str, seed: int, iterations: int, extra: tuple[str, ...] = (), split: str = "report") -> str:
    suffix = f"-{hashlib.sha1(' '.join(extra).encode()).hexdigest()[:8]}" if extra else ""
    return f"{variant}-seed{seed}-it{iterations}{suffix}" + ("" if split == "report" else f"-{split}")


def train_run(cfg) -> dict:
    """Train ``cfg`` (resuming its run directory) and return its summary."""
    from raysemi.ray.train import train

    return train(cfg)


def train_run_plain(cfg, torch_threads: int | None = 1) -> dict:
    """``train_run`` without Ray (``--runner plain``: torch DataLoader processes feed the same loop, on CUDA when
    present); for a machine that runs many benchmark runs side by side. ``torch_threads=None``: the config's
    ``train.torch_threads`` (the repeatability runs set it)."""
    from raysemi.engine.plain import train_plain

    return train_plain(cfg, data_workers=PLAIN_DATA_WORKERS, torch_threads=torch_threads)


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
    def path(self) -> Path:
        folder = RUNS / self.protocol / ("repeatability" if self.repeat else "")
        return folder / f"{self.name}.json"

    @property
    def run_dir(self) -> Path:
        return WORK / self.protocol / ("repeatability" if self.repeat else "") / self.name


def run_once(protocol_name: str, variant: str, seed: int, iterations: int, baseline: str | None,
             extra: tuple[str, ...] = (), trainer: Callable[[object], dict] | None = None, *,
             split: str = "report", repeat: str | None = None, rerun_stale: bool = False) -> dict:
    """One run's result, from its JSON when it finished before (at this code version, with ``rerun_stale``),
    else trained (or resumed) now and recorded."""
    request = RunRequest(protocol_name, variant, seed, iterations, tuple(extra), split, repeat)
    version = code_version(protocol_name)
    if request.path.is_file():
        result = json.loads(request.path.read_text())
        if not rerun_stale or result.get("code_version") == version:
            return result
        retire_stale(request, result.get("code_version"))
    claim_run_dir(request, version, rerun_stale)
    return train_and_record(request, baseline, trainer)


def train_and_record(request: RunRequest, baseline: str | None, trainer: Callable[[object], dict] | None) -> dict:
    """Train ``request`` (resuming its run directory) and write its JSON."""
    from raysemi.atomic import write_json
    from raysemi.config import load_config
    from raysemi.tracking import read_metrics

    protocol = PROTOCOLS[request.protocol]
    variant, iterations = request.variant, request.iterations
    overrides = [*variant_overrides(protocol, variant), *request.extra, f"run.seed={request.seed}",
                 f"run.dir={request.run_dir}", f"train.steps={iterations}", *budget_overrides(variant, iterations),
                 *(["data.evaluate_on=selection"] if request.split == "selection" else [])]
    if any(DERIVED_BOXES in override for override in overrides):
        boxes = str(derived_boxes_file(request.protocol))
        overrides = [override.replace(DERIVED_BOXES, boxes) for override in overrides]
    cfg = load_config(REPO / protocol.config, overrides)
    started = time.perf_counter()
    summary = (trainer or train_run)(cfg)
    last_dir = Path(summary.get("run_dir", request.run_dir))  # a chained method's result: its last stage's run
    result = {
        "protocol": request.protocol, "method": variant, "baseline": baseline, "seed": request.seed,
        "iterations": iterations, "split": request.split, "overrides": list(request.extra),
        "torch_threads": cfg.train.torch_threads, "val_miou": round(summary["miou"], 4),
        "per_class_iou": {k: (None if v is None else round(v, 4)) for k, v in summary["iou"].items()},
        **({k: round(v, 4) for k, v in summary.items() if k.startswith("miou_")}),
        **run_cost(request.run_dir, last_dir, variant, iterations),
        "wall_time_s": round(time.perf_counter() - started, 1),
        "curve": [[r["step"], round(r["val"]["miou"], 4)] for r in read_metrics(last_dir) if "val" in r],
        "date": time.strftime("%Y-%m-%d"),
        "commit": commit_id(),
        "code_version": code_version(request.protocol),
        "device": device_name(trainer),
        "speed": {key: summary["speed"][key] for key in ("channels_last", "compile")} if "speed" in summary else None,
        **({"repeat": request.repeat} if request.repeat else {}),
    }
    write_json(request.path, result)  # atomic: a run counts as finished only once its whole JSON is there
    return result


def retire_stale(request: RunRequest, old_version: str | None) -> None:
    """Move a finished run of another code version to ``<protocol>/stale/`` and drop its run directory, so the
    run trains afresh at this one (``--rerun-stale``)."""
    import shutil

    stale = RUNS / request.protocol / "stale" / f"{request.name}-{old_version or 'unknown'}.json"
    stale.parent.mkdir(parents=True, exist_ok=True)
    request.path.replace(stale)
    shutil.rmtree(request.run_dir, ignore_errors=True)
    say(f"{request.protocol}/{request.name}: code {old_version or 'unknown'} is stale (now "
        f"{code_version(request.protocol)}); its JSON moved to {stale}, rerunning")


def claim_run_dir(request: RunRequest, version: str, rerun_stale: bool) -> None:
    """Record the code version a run directory trains with (``<run dir>.code_version``); a directory left by
    another version is not resumed (that would mix two versions in one run): with ``rerun_stale`` it is
    dropped and the run restarts, else the command stops with what to do."""
    import shutil

    marker = request.run_dir.with_name(request.run_dir.name + ".code_version")
    started = marker.read_text().strip() if marker.is_file() else ("unknown" if request.run_dir.exists() else None)
    if started not in (None, version):
        if not rerun_stale:
            raise SystemExit(f"error: {request.run_dir} holds a run started at code {started}, not {version}: "
                             "resuming it would mix two code versions; pass --rerun-stale to restart it")
        shutil.rmtree(request.run_dir, ignore_errors=True)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(version + "\n")


def run_cost(run_dir: Path, last_dir: Path, variant: str, iterations: int) -> dict:
    """Iterations and training time of a run, summed over a chained method's stages (``stages.json`` in
    ``run_dir`` lists them): ``total_iterations``, ``train_time_s``, ``it_per_s`` (total iterations over total
    time) and, for a chain, ``stages`` (each stage's ``iterations`` and ``train_time_s``)."""
    from raysemi.tracking import read_metrics

    stages_file = run_dir / "stages.json"
    if not stages_file.is_file():
        return {**step_times(read_metrics(last_dir), iterations), "total_iterations": iterations}
    stages = []
    for name, entry in json.loads(stages_file.read_text()).items():
        records = read_metrics(Path(entry["run_dir"]))
        steps = entry.get("steps") or stage_budgets(variant, iterations).get(name) or records[-1]["step"]
        stages.append({"stage": name, "iterations": steps, **step_times(records, steps)})
    total, seconds = sum(s["iterations"] for s in stages), sum(s["train_time_s"] for s in stages)
    return {"train_time_s": round(seconds, 1), "it_per_s": round(total / seconds, 3) if seconds else None,
            "total_iterations": total, "stages": stages}


def device_name(trainer: Callable[[object], dict] | None) -> str:
    """Where a run trained: the GPU's name for the plain runner on CUDA, else ``cpu`` (the Ray runner uses a
    GPU only with ``scaling.use_gpu``, which no protocol sets)."""
    import torch

    plain = trainer is train_run_plain or getattr(trainer, "func", None) is train_run_plain
    return torch.cuda.get_device_name() if plain and torch.cuda.is_available() else "cpu"


def commit_id() -> str:
    """The repository's commit (``+changes`` when the work tree's ``raysemi/`` differs from it), for the record;
    pairing goes by :func:`code_version`."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + ("+changes" if git("status", "--porcelain", "--", "raysemi") else "")


TRAINING_CODE = ("raysemi",)  # the code that trains a run (beside the protocol's config and split files)
# Parts of raysemi/ that no training run imports: outside the import closure of the two runners (raysemi.engine.plain
# and raysemi.ray.train; tests/test_gain_benchmark.py checks this list against that closure): reading, reporting,
# benchmarking, sweeping and job-submitting code, and the command line's parser. Editing them leaves a run's code
# version, so a harness, report or sweep change does not make every run stale.
NOT_TRAINING_CODE = ("raysemi/analysis/", "raysemi/bench/", "raysemi/cli.py", "raysemi/configdoc.py",
                     "raysemi/ray/jobs.py", "raysemi/ray/tune.py", "raysemi/ray/uris.py", "raysemi/sweeps.py")


def is_training_code(path: str) -> bool:
    """Whether ``path`` (relative to the repository root, ``/``-separated) is hashed into the code version."""
    return not path.startswith(NOT_TRAINING_CODE)


@functools.cache
def code_version(protocol_name: str) -> str:
    """A hash of the files that decide what a run of ``protocol_name`` trains: every file under ``raysemi/``
    but :data:`NOT_TRAINING_CODE`, the protocol's config and the split files it names, as they are in the work
    tree (uncommitted edits count). Each file enters as its git blob id (what git's tree hashes are built from),
    so two checkouts whose trees hold the same files get the same version whatever their commits. The files are
    listed by git (ignored files left out); outside a git checkout every such file is hashed and the version
    says so (``nogit-``)."""
    files, from_git = training_files(protocol_name)
    digest = hashlib.sha1()
    for path in sorted(files):
        data = (REPO / path).read_bytes()
        blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        digest.update(f"{path} {blob}\n".encode())
    return ("" if from_git else "nogit-") + digest.hexdigest()[:12]


def training_files(protocol_name: str) -> tuple[list[str], bool]:
    """The files :func:`code_version` hashes (relative to the repository root), and whether git listed them."""
    from raysemi.config import load_config

    config = PROTOCOLS[protocol_name].config
    data = load_config(REPO / config).data
    splits = [v for v in (data.train_split, data.labeled_split, data.unlabeled_split, data.val_split,
                          data.selection_split) if v and v.endswith(".txt") and (REPO / v).is_file()]
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard", "--", *TRAINING_CODE],
                            capture_output=True, text=True)
    if listed.returncode == 0 and listed.stdout.strip():
        code = [p for p in listed.stdout.splitlines() if (REPO / p).is_file() and is_training_code(p)]
        return [*code, config, *splits], True
    say(f"code_version: {REPO} is not a git checkout (or git is missing): hashing every file under "
        f"{', '.join(TRAINING_CODE)}/ but __pycache__; the version is marked nogit-")
    code = [str(p.relative_to(REPO)) for folder in TRAINING_CODE for p in (REPO / folder).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and is_training_code(p.relative_to(REPO).as_posix())]
    return [*code, config, *splits], False


def say(text: str) -> None:
    print(f"[gain] {text}", file=sys.stderr, flush=True)


def step_times(records: list[dict], iterations: int) -> dict:
    """Training time from the logged intervals (``steps_per_s`` over each ``log_every`` steps): unlike wall time
    it leaves out start-up, evaluation and any interruption. The first interval (pipeline start-up) is left out
    of the it/s."""
    timed = [r for r in records if "steps_per_s" in r]
    steps = [r["step"] - (p["step"] if p else 0) for p, r in zip([None, *timed], timed)]
    seconds = [n / r["steps_per_s"] for n, r in zip(steps, timed)]
    steady = slice(1, None) if len(timed) > 1 else slice(None)
    return {
        "train_time_s": round(sum(seconds) * iterations / max(sum(steps), 1), 1),
        "it_per_s": round(sum(steps[steady]) / sum(seconds[steady]), 3) if seconds else None,
    }


# ----------------------------------------------------------------------------------------------- the outputs


def load_runs() -> list[dict]:
    """Every finished run's JSON (runs from before the fields existed: evaluated on the report split)."""
    return [{"split": "report", **json.loads(p.read_text())} for p in sorted(RUNS.glob("*/*.json"))]


def run_key(run: dict) -> tuple:
    return (run["protocol"], run["method"], run["seed"], run["iterations"], tuple(run["overrides"]),
            run.get("split", "report"))


def run_index(runs: list[dict]) -> dict[tuple, dict]:
    """Each run by ``(protocol, method, seed, iterations, overrides, split)``."""
    return {run_key(r): r for r in runs}


def speed_choices(run: dict) -> dict:
    """The memory format and compile choices a run trained with (``train.channels_last``/``compile``, often
    measured per machine): runs that chose differently time, and round, differently, so they are not paired.
    A run from before the field counts as contiguous and eager (what every CPU run then was)."""
    return run.get("speed") or {"channels_last": False, "compile": False}


def run_label(run: dict) -> str:
    return f"{run['protocol']}/" + run_name(run["method"], run["seed"], run["iterations"], tuple(run["overrides"]),
                                            run.get("split", "report"))


def code_mismatch(run: dict, baseline: dict) -> str | None:
    """One line saying why ``run`` and ``baseline`` are not paired (their code versions differ, or one is
    unknown: a run from before the field) and what to do, or None when they ran the same code."""
    mine, theirs = run.get("code_version"), baseline.get("code_version")
    if mine and mine == theirs:
        return None
    stale = [r for r in (run, baseline) if not r.get("code_version") or r["code_version"] != current_version(r)]
    rerun = " and ".join(f"gain.py --protocol {r['protocol']} --method {r['method']} --seed {r['seed']} "
                         f"--iterations {r['iterations']} --skip-baseline --rerun-stale" for r in stale or [baseline])
    return (f"refused to pair {run_label(run)} (code {mine or 'unknown'}) with {run_label(baseline)} (code "
            f"{theirs or 'unknown'}): rerun the stale side ({rerun}) or pass --allow-mixed-code to pair them "
            "anyway (the tables then flag it)")


def current_version(run: dict) -> str | None:
    """This checkout's code version for ``run``'s protocol (None for a protocol it does not define)."""
    return code_version(run["protocol"]) if run["protocol"] in PROTOCOLS else None


@dataclass
class Paired:
    """A comparison's record and its ``(method run, baseline run)`` pairs in seed order."""

    record: dict
    pairs: list[tuple[dict, dict]]


def comparisons(runs: list[dict], index: dict[tuple, dict], allow_mixed: bool = False,
                refused: list[str] | None = None) -> list[Paired]:
    """One record per (protocol, method, overrides, split, budget) and each of its baselines (the plan's,
    :func:`planned_comparisons`, and the one its runs name), over the seeds where both runs exist and ran the same
    code version (any version with ``allow_mixed``; the record then says ``mixed_code``) with the same
    :func:`speed_choices`. A refused pair's line goes to ``refused``."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["protocol"], r["method"], r["iterations"], tuple(r["overrides"]),
                           r.get("split", "report")), []).append(r)
    found = []
    for (protocol, method, iterations, overrides, split), group in sorted(groups.items()):
        for comparison in comparisons_of(method, {r["baseline"] for r in group if r["baseline"]}):
            budget = baseline_budget(comparison, iterations)
            pairs = [(r, index.get((protocol, comparison.baseline, r["seed"], budget, (), split))) for r in group]
            pairs = sorted(((r, b) for r, b in pairs if b and speed_choices(r) == speed_choices(b)),
                           key=lambda pair: pair[0]["seed"])
            lines = [line for r, b in pairs if (line := code_mismatch(r, b))]
            if lines and not allow_mixed:
                (refused if refused is not None else []).extend(lines)
                pairs = [(r, b) for r, b in pairs if not code_mismatch(r, b)]
            if pairs:
                oracle = ORACLES.get(method)
                oracles = [index.get((protocol, oracle, r["seed"], iterations, (), split)) for r, _ in pairs] \
                    if oracle else []
                record = comparison_record(protocol, method, comparison.baseline, iterations, overrides, pairs,
                                           oracles)
                record.update(split=split, baseline_iterations=budget, mixed_code=bool(lines) and allow_mixed)
                record["name"] = record_name(record)
                found.append(Paired(record, pairs))
    return found


def comparisons_of(method: str, named: set[str]) -> list[Comparison]:
    """The plan's comparisons of ``method`` and those its runs' ``baseline`` fields name (no method against
    itself, none twice)."""
    planned = planned_comparisons(method)
    extra = [Comparison(method, b) for b in sorted(named) if b != method and Comparison(method, b) not in planned]
    return planned + extra


@functools.cache
def protocol_budget(protocol: str) -> int | None:
    """The protocol config's ``train.steps`` (None for a protocol this file does not define)."""
    from raysemi.config import load_config

    return load_config(REPO / PROTOCOLS[protocol].config).train.steps if protocol in PROTOCOLS else None


def record_name(record: dict) -> str:
    """What a record compares, as quotes name it: ``p2/cac-vs-supervised``; ``selection/`` after the protocol
    on the selection split, ``it600/`` at a budget other than the protocol's, ``[overrides]`` after an
    ablation's method, ``@it2000`` after a baseline trained at another budget (a chained method's total)."""
    parts = [record["protocol"]] + (["selection"] if record["split"] == "selection" else [])
    if record["iterations"] != protocol_budget(record["protocol"]):
        parts.append(f"it{record['iterations']}")
    overrides = f"[{','.join(record['overrides'])}]" if record.get("overrides") else ""
    at = f"@it{record['baseline_iterations']}" if record["baseline_iterations"] != record["iterations"] else ""
    return "/".join(parts) + f"/{record['method']}{overrides}-vs-{record['baseline']}{at}"


def comparison_record(protocol, method, baseline, iterations, overrides, pairs, oracles=()) -> dict:
    """The summary record of ``pairs`` (``[(method run, baseline run)]`` in seed order); ``oracles`` (the
    oracle run of each seed, or None) add ``oracle_<group>_miou`` lists beside the group mIoUs. ``method_runs``
    and ``baseline_runs`` say what each side is: per seed its ``commit`` and ``code_version``, its total
    iterations (summed over a chain's stages) and training time."""
    miou = [r["val_miou"] for r, _ in pairs]
    baseline_miou = [b["val_miou"] for _, b in pairs]
    diffs = [m - b for m, b in zip(miou, baseline_miou)]
    record = {
        "kind": "comparison", "protocol": protocol, "method": method, "baseline": baseline,
        "iterations": iterations, "seeds": [r["seed"] for r, _ in pairs], "miou": miou,
        "baseline_miou": baseline_miou, "diff_mean": round(statistics.mean(diffs), 4),
        "diff_std": round(statistics.stdev(diffs), 4) if len(diffs) > 1 else 0.0,
        "method_runs": side_of([r for r, _ in pairs]), "baseline_runs": side_of([b for _, b in pairs]),
    }
    if overrides:
        record["overrides"] = list(overrides)
    for group in sorted({k for r, _ in pairs for k in r if k.startswith("miou_")}):
        name = group.removeprefix("miou_")
        record[f"{name}_miou"] = [r.get(group) for r, _ in pairs]
        record[f"baseline_{name}_miou"] = [b.get(group) for _, b in pairs]
        if oracles:
            record[f"oracle_{name}_miou"] = [o.get(group) if o else None for o in oracles]
    return record


def side_of(runs: list[dict]) -> dict:
    """One side of a comparison: each run's ``commit`` and ``code_version`` (None: from before the field), its
    ``total_iterations`` (runs from before the field: the sum of the variant's stage budgets) and
    ``train_time_s``."""
    return {
        "variant": runs[0]["method"],
        "commit": [r.get("commit") for r in runs],
        "code_version": [r.get("code_version") for r in runs],
        "total_iterations": [r.get("total_iterations") or total_iterations(r["method"], r["iterations"])
                             for r in runs],
        "train_time_s": [r.get("train_time_s") for r in runs],
    }


def per_class_table(pairs: list[tuple[dict, dict]], all_labels: Sequence[dict] = ()) -> list[str]:
    """Mean per-class IoU of the baseline and the method over the paired seeds, and their difference; with
    ``all_labels`` (the protocol's supervised_all_labels runs at the same iterations, any seeds) their mean IoU
    too, the reference that says which classes full supervision itself finds."""
    classes = list(pairs[0][0]["per_class_iou"])
    extra = (" all labels IoU |", "---|") if all_labels else ("", "")
    lines = ["| class | baseline IoU | method IoU | difference |" + extra[0], "|---|---|---|---|" + extra[1]]
    for name in classes:
        method = _mean_of([r["per_class_iou"].get(name) for r, _ in pairs])
        base = _mean_of([b["per_class_iou"].get(name) for _, b in pairs])
        diff = f"{100 * (method - base):+.1f}" if method is not None and base is not None else "-"
        reference = f" {_fmt(_mean_of([a['per_class_iou'].get(name) for a in all_labels]))} |" if all_labels else ""
        lines.append(f"| {name} | {_fmt(base)} | {_fmt(method)} | {diff} |{reference}")
    if all_labels:
        lines += ["", f"All labels: supervised_all_labels, mean of seeds {sorted(a['seed'] for a in all_labels)}."]
    return lines


def all_labels_runs(index: dict[tuple, dict], protocol: str, iterations: int, split: str) -> list[dict]:
    """The protocol's plain supervised_all_labels runs at ``iterations`` on ``split``, any seed."""
    return [run for (p, method, _, its, overrides, s), run in index.items()
            if (p, method, its, overrides, s) == (protocol, "supervised_all_labels", iterations, (), split)]


def comparison_section(paired: Paired, index: dict[tuple, dict],
                       repeatability: dict[tuple, dict] | None = None) -> list[str]:
    """A comparison's README section: per seed both mIoUs and their difference, the mean ± std, both sides'
    total iterations and training time, the flags (mixed code versions, devices), the run-to-run difference at
    a fixed seed where measured, and the per-class tables."""
    record, pairs = paired.record, paired.pairs
    key = tuple(record.get("overrides", ()))
    title = f"### {record['protocol']}: {record['method']} against {record['baseline']}, {record['iterations']} it"
    if record["baseline_iterations"] != record["iterations"]:
        title += f" (baseline {record['baseline_iterations']} it)"
    lines = [title + (f" ({', '.join(key)})" if key else ""), "", f"Record `{record['name']}`.", "",
             "| seed | baseline mIoU | method mIoU | difference (points) | baseline it/s | method it/s |",
             "|---|---|---|---|---|---|"]
    for (r, b), m, bm in zip(pairs, record["miou"], record["baseline_miou"]):
        lines.append(f"| {r['seed']} | {bm:.4f} | {m:.4f} | {100 * (m - bm):+.1f} | {_fmt(b['it_per_s'], 2)} "
                     f"| {_fmt(r['it_per_s'], 2)} |")
    ratios = [b["it_per_s"] / r["it_per_s"] for r, b in pairs if r["it_per_s"] and b["it_per_s"]]
    totals = record["method_runs"]["total_iterations"][0], record["baseline_runs"]["total_iterations"][0]
    lines += ["", f"Difference: **{difference_text(record)}** "
              f"(mean ± std over {len(pairs)} paired seeds); {totals[0]:,} iterations in all against {totals[1]:,} "
              f"(training time {statistics.mean(r['train_time_s'] for r, _ in pairs):.0f} s against "
              f"{statistics.mean(b['train_time_s'] for _, b in pairs):.0f} s, summed over stages"
              + (f"; time per iteration {statistics.mean(ratios):.2f}× the baseline's)." if ratios else ")."), ""]
    last_stage_only = [r["seed"] for r, _ in pairs
                       if "stages" not in r and total_iterations(r["method"], r["iterations"]) != r["iterations"]]
    if last_stage_only:
        lines += [f"The method's training time of seeds {last_stage_only} is its last stage's only (runs from "
                  "before stages were summed).", ""]
    spread = (repeatability or {}).get((record["protocol"], record["split"]))
    if spread:
        lines += [f"Run-to-run difference at a fixed seed (repeatability, {spread['method']} seed {spread['seed']}): "
                  f"{100 * spread['same_threads_diff']:+.1f} points at one thread count, "
                  f"{100 * spread['other_threads_diff']:+.1f} at another.", ""]
    mixed = [r["seed"] for r, b in pairs if code_mismatch(r, b)]
    if mixed:
        lines += [f"**Seeds {mixed} compare runs of different code versions** (each run's `code_version`; "
                  "paired with --allow-mixed-code): rerun the stale side (`--rerun-stale`) before reading the "
                  "difference.", ""]
    devices = differing_seeds(pairs, "device", default="cpu")  # runs from before the field trained on the CPU
    if devices:
        lines += [f"**Seeds {devices} compare runs on different devices** (see each run's `device`): run both on "
                  "one device before reading the difference.", ""]
    reference = [] if record["method"] == "supervised_all_labels" else all_labels_runs(
        index, record["protocol"], record["iterations"], record["split"])
    return lines + weak_shot_table(record) + per_class_table(pairs, reference) + [""]


def difference_text(record: dict) -> str:
    """"+a ± b points": the mean ± std of the paired differences, from the unrounded mIoUs (the record's rounded
    ``diff_mean`` can print a tenth apart from the per-seed rows)."""
    diffs = [100 * (m - b) for m, b in zip(record["miou"], record["baseline_miou"])]
    spread = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
    return f"{statistics.mean(diffs):+.1f} ± {spread:.1f} points"


def differing_seeds(pairs: list[tuple[dict, dict]], field: str, default: str | None = None) -> list[int]:
    """The seeds whose method run and baseline run differ in ``field`` (``default`` where a run lacks it)."""
    return [r["seed"] for r, b in pairs if r.get(field, default) != b.get(field, default)]


def gap_closed(basic: float, method: float, oracle: float | None) -> float | None:
    """The share of the basic → oracle novel-mIoU gap that ``method`` closes (None without an oracle above)."""
    return None if oracle is None or oracle <= basic else (method - basic) / (oracle - basic)


def weak_shot_table(record: dict) -> list[str]:
    """A SimFormer record's base and novel mIoU per seed beside the oracle's, and the share of the basic →
    oracle novel gap closed (each seed's, their mean, and that of the mean mIoUs); nothing for other records."""
    if "oracle_novel_miou" not in record:
        return []
    columns = ("baseline_base_miou", "base_miou", "baseline_novel_miou", "novel_miou", "oracle_novel_miou")
    lines = ["| seed | basic base mIoU | full base mIoU | basic novel mIoU | full novel mIoU | oracle novel mIoU | "
             "share of the gap closed |", "|---|---|---|---|---|---|---|"]
    shares = []
    for i, seed in enumerate(record["seeds"]):
        values = [record[c][i] for c in columns]
        shares.append(gap_closed(*values[2:]))
        lines.append(f"| {seed} | " + " | ".join(_fmt(v) for v in values) + f" | {_fmt(shares[-1], 2)} |")
    known = [s for s in shares if s is not None]
    with_oracle = [i for i, o in enumerate(record["oracle_novel_miou"]) if o is not None]
    means = [statistics.mean(record[c][i] for i in with_oracle) for c in columns[2:]] if with_oracle else []
    base_diff = statistics.mean(m - b for m, b in zip(record["base_miou"], record["baseline_base_miou"]))
    mean_share = statistics.mean(known) if known else None
    return lines + ["", f"Share of the basic → oracle novel gap closed: **{_fmt(mean_share, 2)}** "
                    f"(mean over the seeds with an oracle run), {_fmt(gap_closed(*means) if means else None, 2)} "
                    f"for the mean mIoUs; base mIoU full − basic {100 * base_diff:+.1f} points.", ""]


def budget_section(protocol: str, runs: list[dict]) -> list[str]:
    """The supervised(k) baseline's val-mIoU curve within each run and its final mIoU by budget."""
    base = [r for r in runs if r["protocol"] == protocol and r["method"] == "supervised" and not r["overrides"]]
    if not base:
        return []
    lines = [f"### {protocol}: the supervised(k) budget", "",
             "| iterations | seed | final mIoU | val mIoU along the run | levelled (last quarter within ±1 point) |",
             "|---|---|---|---|---|"]
    for r in sorted(base, key=lambda r: (r["iterations"], r["seed"])):
        curve = " ".join(f"{step}:{miou:.3f}" for step, miou in r["curve"])
        lines.append(f"| {r['iterations']} | {r['seed']} | {r['val_miou']:.4f} | {curve} "
                     f"| {'yes' if levelled_off(r['curve']) else 'no'} |")
    return lines + [""]


def levelled_off(curve: list[list[float]], tolerance: float = LEVELLED_TOLERANCE) -> bool:
    """The evaluations in the last quarter of the run lie within ± ``tolerance`` of their midpoint (a band of
    2 × ``tolerance``): no trend left larger than the evaluation's own noise."""
    if not curve:
        return False
    last = [miou for step, miou in curve if step >= 0.75 * curve[-1][0]]
    return max(last) - min(last) <= 2 * tolerance + 1e-9


def write_outputs(allow_mixed: bool = False) -> list[dict]:
    """Rebuild ``results/summary.json`` and ``results/gain/README.md`` (plus ``results/gain/notes.md``), and fill
    the gain quotes of the documents (:data:`QUOTING`, then the notes). Pairs of different code versions are
    left out, each with one line on stderr, unless ``allow_mixed``."""
    from raysemi.atomic import write_text

    runs = load_runs()
    index = run_index(runs)
    refused: list[str] = []
    found = comparisons(runs, index, allow_mixed, refused)
    for line in dict.fromkeys(refused):
        say(line)
    repeats = repeatability_records(load_repeat_runs())
    records = [p.record for p in found] + repeats
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_text(RESULTS / "summary.json", json.dumps(records, indent=1) + "\n")  # atomic: gain_plan.py runs many
    RUNS.mkdir(parents=True, exist_ok=True)
    for document in [*QUOTING, RUNS / "notes.md"]:
        fill_document(document, records)
    spreads = {(r["protocol"], r["split"]): r for r in repeats}
    lines = ["# Gains over baselines on the benchmark protocols", "",
             "Written by [`gain.py`](../../gain.py) from the run JSONs beside this file; protocols in",
             "[`experiments/protocols/`](../../../protocols). Differences are method − baseline in mIoU points",
             "(×100), paired by seed (same split, same labeled batches, same code version). Training time leaves",
             "out start-up and evaluation and sums a chained method's stages; it/s compares only runs of the same",
             "invocation on the same machine. The report split gives the headline numbers; the selection split,",
             "where hyperparameters are chosen, has sections of its own and is never mixed with it.", ""]
    for split in ("report", "selection"):
        for protocol in sorted({r["protocol"] for r in runs + repeats if r["split"] == split}):
            lines += [f"## Protocol {protocol}, {split} split", ""]
            lines += budget_section(protocol, [r for r in runs if r["split"] == split])
            lines += repeatability_section([r for r in repeats if (r["protocol"], r["split"]) == (protocol, split)])
            for paired in found:
                if (paired.record["protocol"], paired.record["split"]) == (protocol, split):
                    lines += comparison_section(paired, index, spreads)
    notes = RUNS / "notes.md"
    if notes.is_file():
        lines += [notes.read_text().rstrip(), ""]
    write_text(RUNS / "README.md", "\n".join(lines))
    return records


# ------------------------------------------------------------------------------------------- repeatability
REPEATS = ("a", "b", "c")  # a and b at one thread count, c at another


def load_repeat_runs() -> list[dict]:
    return [{"split": "report", **json.loads(p.read_text())} for p in sorted(RUNS.glob("*/repeatability/*.json"))]


def repeat_runs(protocol_name: str, variant: str, seed: int, iterations: int, threads: tuple[int, int],
                trainer: Callable[[object], dict] | None, split: str = "report") -> list[dict]:
    """The repeatability runs of one (protocol, variant, seed): twice at ``threads[0]`` torch threads and once at
    ``threads[1]`` (``train.torch_threads``, which ``trainer`` must honour), at this code version."""
    results = []
    for repeat, count in zip(REPEATS, (threads[0], threads[0], threads[1])):
        results.append(run_once(protocol_name, variant, seed, iterations, None, (f"train.torch_threads={count}",),
                                trainer, split=split, repeat=f"repeat-{repeat}"))
    return results


def repeatability_records(runs: list[dict]) -> list[dict]:
    """One ``repeatability`` record per (protocol, variant, seed, iterations, split, code version) whose three
    runs exist: their mIoUs, thread counts, ``same_threads_diff`` (b − a), ``other_threads_diff`` (c − a) and
    whether a and b logged the same val curve."""
    groups: dict[tuple, dict[str, dict]] = {}
    for r in runs:
        key = (r["protocol"], r["method"], r["seed"], r["iterations"], r["split"], r.get("code_version"))
        groups.setdefault(key, {})[repeat_of(r)] = r
    records = []
    for (protocol, method, seed, iterations, split, version), group in sorted(groups.items(), key=str):
        if set(group) != set(REPEATS):
            continue
        a, b, c = (group[name] for name in REPEATS)
        records.append({
            "kind": "repeatability", "protocol": protocol, "method": method, "seed": seed,
            "iterations": iterations, "split": split, "commit": a.get("commit"), "code_version": version,
            "device": a.get("device", "cpu"), "torch_threads": [r.get("torch_threads") for r in (a, b, c)],
            "miou": [r["val_miou"] for r in (a, b, c)],
            "same_threads_diff": round(b["val_miou"] - a["val_miou"], 4),
            "other_threads_diff": round(c["val_miou"] - a["val_miou"], 4),
            "same_threads_same_curve": a["curve"] == b["curve"],
        })
    return records


def repeat_of(run: dict) -> str:
    """Which repeat (``a``, ``b``, ``c``) a repeatability run is: from the thread-count override and order of its
    name, recorded in ``repeat``."""
    return run["repeat"].removeprefix("repeat-")


def repeatability_section(records: list[dict]) -> list[str]:
    if not records:
        return []
    lines = ["### Repeatability: one (variant, seed) three times at one code version", "",
             "| variant | seed | device | torch threads | mIoU | b − a (same threads) | c − a (other threads) | "
             "a and b: same curve |", "|---|---|---|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['method']} | {r['seed']} | {r['device']} | {' / '.join(map(str, r['torch_threads']))} "
                     f"| {' / '.join(f'{m:.4f}' for m in r['miou'])} | {100 * r['same_threads_diff']:+.2f} "
                     f"| {100 * r['other_threads_diff']:+.2f} | {'yes' if r['same_threads_same_curve'] else 'no'} |")
    return lines + [""]


# ---------------------------------------------------------------------------------------- quoted figures
# A figure a document quotes is a marker the outputs fill: <!-- gain:NAME[#FIELD] -->TEXT<!-- /gain -->, NAME a
# record's name (record_name), FIELD what of it (QUOTE_FIELDS; none: the mean ± std of the differences).
QUOTE = re.compile(r"<!-- gain:(?P<key>[^ ]+) -->(?P<text>.*?)<!-- /gain -->")
QUOTING = (REPO / "README.md", REPO / "docs" / "benchmarks.md")  # besides results/gain/notes.md


def _gap_shares(record: dict) -> list[float | None]:
    return [gap_closed(b, m, o) for b, m, o in zip(record["baseline_novel_miou"], record["novel_miou"],
                                                   record["oracle_novel_miou"])]


def _diffs(record: dict, prefix: str = "") -> list[float]:
    return [m - b for m, b in zip(record[f"{prefix}miou"], record[f"baseline_{prefix}miou"])]


def _gap_of_means(record: dict) -> float | None:
    """The share of the gap closed by the mean novel mIoUs, over the seeds with an oracle run."""
    kept = [i for i, o in enumerate(record["oracle_novel_miou"]) if o is not None]
    means = [statistics.mean(record[c][i] for i in kept) for c in
             ("baseline_novel_miou", "novel_miou", "oracle_novel_miou")] if kept else []
    return gap_closed(*means) if means else None


# Each field's figures per seed (a list), or its one figure (a string)
QUOTE_FIELDS: dict[str, Callable[[dict], str | list[str]]] = {
    "": lambda r: difference_text(r).removesuffix(" points"),
    "seeds": lambda r: [f"{100 * d:+.1f}" for d in _diffs(r)],
    "n": lambda r: str(len(r["seeds"])),
    "miou": lambda r: f"{statistics.mean(r['miou']):.3f}",
    "baseline-miou": lambda r: f"{statistics.mean(r['baseline_miou']):.3f}",
    "gap": lambda r: _fmt(_mean_of(_gap_shares(r)), 2),
    "gap-seeds": lambda r: [_fmt(v, 2) for v in _gap_shares(r)],
    "gap-means": lambda r: _fmt(_gap_of_means(r), 2),
    "base": lambda r: f"{100 * statistics.mean(_diffs(r, 'base_')):+.1f}",
    "base-seeds": lambda r: [f"{100 * d:+.1f}" for d in _diffs(r, "base_")],
}


def quoted(key: str, records: dict[str, dict]) -> str:
    """The text of the quote ``key``: ``NAME``, ``NAME#FIELD``, or for a per-seed field one seed's figure
    (``NAME#seed1``, ``NAME#gap-seed2``, ``NAME#base-seed0``); ValueError naming what is missing."""
    name, _, field = key.partition("#")
    if name not in records:
        raise ValueError(f"no summary.json record named {name}")
    record = records[name]
    one_seed = re.fullmatch(r"(?P<field>(?:\w+-)?seed)(?P<seed>\d+)", field)
    if one_seed:
        field = one_seed["field"] + "s"
        if int(one_seed["seed"]) not in record["seeds"]:
            raise ValueError(f"record {name} has no seed {one_seed['seed']} (seeds {record['seeds']})")
    if field not in QUOTE_FIELDS:
        fields = ", ".join(f for f in QUOTE_FIELDS if f)
        raise ValueError(f"#{field} is not a quote field; choose one of {fields}, or seedS, gap-seedS, base-seedS")
    try:
        value = QUOTE_FIELDS[field](record)
    except KeyError as missing:
        raise ValueError(f"record {name} has no {missing} (not a weak-shot record)") from None
    if one_seed:
        return value[record["seeds"].index(int(one_seed["seed"]))]
    return " / ".join(value) if isinstance(value, list) else value


def fill_quotes(text: str, records: list[dict]) -> tuple[str, list[str]]:
    """``text`` with every gain quote set from ``records``, and one line per quote that cannot be (left as it
    was)."""
    by_name = {r["name"]: r for r in records if r.get("kind") == "comparison"}
    problems = []

    def fill(match: re.Match) -> str:
        try:
            return f"<!-- gain:{match['key']} -->{quoted(match['key'], by_name)}<!-- /gain -->"
        except ValueError as error:
            problems.append(f"gain:{match['key']}: {error}")
            return match[0]

    return QUOTE.sub(fill, text), problems


def fill_document(path: Path, records: list[dict]) -> None:
    """Fill ``path``'s gain quotes from ``records`` (a missing document is skipped; each quote that cannot be
    filled is said on stderr and left as it was)."""
    from raysemi.atomic import write_text

    if not path.is_file():
        return
    text = path.read_text()
    filled, problems = fill_quotes(text, records)
    for problem in problems:
        say(f"{path}: {problem}")
    if filled != text:
        write_text(path, filled)


def _mean_of(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.mean(present) if present else None


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.chdir(REPO)  # the protocols' paths are relative to the repository root
    if args.table:
        write_outputs(args.allow_mixed_code)
        return 0
    protocol = PROTOCOLS[args.protocol]
    if protocol.needs and not (REPO / protocol.needs).is_dir():
        print(f"skipped: {REPO / protocol.needs} not found (protocol {args.protocol} needs it)", file=sys.stderr)
        return 0
    variants = [args.method] + ([f"{args.method}_control"] if args.control else [])
    for variant in variants:
        variant_overrides(protocol, variant)  # refuse an unknown method before anything runs
    if args.iterations is None:
        args.iterations = protocol_budget(args.protocol)
    if args.repeatability:
        return run_repeatability(args)
    baseline = None if args.method == args.baseline else args.baseline
    trainer = train_run_plain if args.runner == "plain" else None
    baselines = [] if args.skip_baseline else baselines_to_run(args.protocol, variants, args.iterations, baseline)
    for seed in args.seed or range(args.seeds):
        for name, budget in baselines:
            run_once(args.protocol, name, seed, budget, None, trainer=trainer, split=args.split,
                     rerun_stale=args.rerun_stale)
        for variant in variants:
            run_once(args.protocol, variant, seed, args.iterations, baseline, tuple(args.set), trainer,
                     split=args.split, rerun_stale=args.rerun_stale)
        write_outputs(args.allow_mixed_code)
    for record in write_outputs(args.allow_mixed_code):
        if (record["kind"], record["protocol"], record["split"]) == ("comparison", args.protocol, args.split) \
                and record["method"] in variants:
            print(f"{record['name']} (seeds {record['seeds']}): {difference_text(record)}")
    return 0


def baselines_to_run(protocol_name: str, variants: list[str], iterations: int,
                     baseline: str | None) -> list[tuple[str, int]]:
    """The ``(baseline variant, budget)`` runs that ``variants`` at ``iterations`` are compared with: ``baseline``
    and the planned ones the protocol defines (a method's own control only with ``--control``), each once."""
    known = set(known_variants(PROTOCOLS[protocol_name]))
    wanted = [(baseline, iterations)] if baseline else []
    for variant in variants:
        for comparison in planned_comparisons(variant):
            if comparison.baseline in known and comparison.baseline not in variants \
                    and not comparison.baseline.endswith("_control"):
                wanted.append((comparison.baseline, baseline_budget(comparison, iterations)))
    return list(dict.fromkeys(wanted))


def run_repeatability(args: argparse.Namespace) -> int:
    """``--repeatability``: the method at each seed three times (twice at ``--threads``, once at
    ``--other-threads``), then the outputs with their ``repeatability`` records."""
    from raysemi.config import load_config

    threads = args.threads or load_config(REPO / PROTOCOLS[args.protocol].config).train.torch_threads or 1
    other = args.other_threads or (1 if threads > 1 else 2)

    # the plain runner takes its thread count from the config here (the runs' train.torch_threads override)
    trainer = functools.partial(train_run_plain, torch_threads=None) if args.runner == "plain" else None
    for seed in args.seed or range(args.seeds):
        repeat_runs(args.protocol, args.method, seed, args.iterations, (threads, other), trainer, args.split)
    for record in write_outputs(args.allow_mixed_code):
        if record["kind"] == "repeatability" and (record["protocol"], record["method"]) == (args.protocol,
                                                                                           args.method):
            same, other_diff = 100 * record["same_threads_diff"], 100 * record["other_threads_diff"]
            print(f"repeatability {record['protocol']}/{record['method']} seed {record['seed']}: mIoU "
                  f"{' / '.join(f'{m:.4f}' for m in record['miou'])} at {record['torch_threads']} threads; same "
                  f"threads {same:+.2f} points, other {other_diff:+.2f}")
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS))
    parser.add_argument("--method", help="supervised_all_labels, a method (cps, cac, simformer_full, ...) or "
                                         "<method>_control")
    parser.add_argument("--baseline", default="supervised", help="a baseline besides the planned ones")
    parser.add_argument("--seeds", type=int, default=3, help="run seeds 0..S-1")
    parser.add_argument("--seed", type=int, action="append", metavar="S",
                        help="run only this seed (repeatable; instead of --seeds)")
    parser.add_argument("--skip-baseline", action="store_true",
                        help="run no baseline (other invocations do: runs in parallel, one per process)")
    parser.add_argument("--iterations", type=int, help="the budget; default: the protocol config's train.steps")
    parser.add_argument("--control", action="store_true", help="also run the method with its unlabeled weight 0")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an override of the method's runs only (an ablation; repeatable)")
    parser.add_argument("--split", choices=["report", "selection"], default="report",
                        help="the split the runs are scored on: report (headline numbers) or selection (where "
                             "every hyperparameter choice is made); never mixed in one table")
    parser.add_argument("--runner", choices=["ray", "plain"], default="ray",
                        help="ray: Ray Data and Ray Train (the product's path); plain: the same loop and batches "
                             "without Ray (raysemi.engine.plain), on CUDA when present")
    parser.add_argument("--rerun-stale", action="store_true",
                        help="retrain a finished or started run of another code version (its JSON moves to "
                             "<protocol>/stale/)")
    parser.add_argument("--allow-mixed-code", action="store_true",
                        help="pair runs of different code versions anyway (the tables flag them)")
    parser.add_argument("--repeatability", action="store_true",
                        help="run the method at each seed twice at --threads and once at --other-threads, at this "
                             "code version, and record the mIoU differences")
    parser.add_argument("--threads", type=int, help="--repeatability: torch threads (default: the protocol's)")
    parser.add_argument("--other-threads", type=int, help="--repeatability: the other thread count (default: 1, "
                                                          "or 2 when --threads is 1)")
    parser.add_argument("--table", action="store_true", help="only rebuild the README, summary.json and quotes")
    args = parser.parse_args(argv)
    if not args.table and (not args.protocol or not args.method):
        parser.error("--protocol and --method are required (or --table)")
    return args


if __name__ == "__main__":
    sys.exit(main())
