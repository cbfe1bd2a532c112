"""Does a method beat its baselines? Paired runs on a benchmark protocol, resumable, with a table and summary.

This file holds the benchmark's parameters and its command line: the protocols (:data:`PROTOCOLS`, each a config
in ``experiments/protocols/`` and its variants, :mod:`raysemi.bench.protocol`), the baselines each method must
beat (:func:`planned_comparisons`; a chained method's compute is summed over its stages, and it also faces
``supervised`` at that sum) and the outputs' places. The command runs a method and its baselines for seeds
``0..S-1``; :mod:`raysemi.bench.store` trains and records each run (one JSON per run, with its ``commit`` and
``code_version``; a finished run is never rerun, an interrupted one resumes), and :mod:`raysemi.bench.suite`
rebuilds from every JSON ``results/gain/README.md``, ``results/summary.json`` and the quoted figures of README.md,
docs/benchmarks.md and results/gain/notes.md. Runs pair only at equal code versions (``--rerun-stale``,
``--allow-mixed-code``), or versions one rerun showed to train identically (``--prove-same-code``,
:mod:`raysemi.bench.lineage`); ``--split selection`` runs are never paired with the report split's.
docs/benchmarks.md describes every option and field.

Usage (from the repository root)::

    python experiments/benchmarks/gain.py --protocol p1 --method supervised_all_labels --seeds 2   # headroom
    python experiments/benchmarks/gain.py --protocol p1 --method cps --control --seeds 3
    python experiments/benchmarks/gain.py --protocol p2 --method cac --seeds 3 --set cac.gamma=0.5 --split selection
    python experiments/benchmarks/gain.py --protocol p2 --method cps --seed 1 --skip-baseline --runner plain
    python experiments/benchmarks/gain.py --protocol p2 --method supervised --seed 0 --repeatability
    python experiments/benchmarks/gain.py --protocol p1 --method supervised --seed 0 --prove-same-code --runner plain
    python experiments/benchmarks/gain.py --table [--allow-mixed-code]          # rebuild outputs only
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path

from raysemi.bench import lineage, pairs, runs, suite, versions
from raysemi.bench.protocol import Protocol, UnknownVariant, known_variants, unlabeled_boxes_file, variant_overrides
from raysemi.bench.store import RunRequest, RunStore, record_label
from raysemi.bench.suite import Comparison

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "experiments" / "benchmarks" / "results"
RUNS = RESULTS / "gain"  # one JSON per run: <protocol>/<variant>-seed<s>-it<N>[-<overrides hash>].json
WORK = REPO / "experiments" / "benchmarks" / "_work" / "gain"  # the runs' directories (checkpoints)
PLAIN_DATA_WORKERS = 2  # --runner plain: decode processes per stream, beside a loop of one intra-op thread


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
    """``data.unlabeled_boxes`` for the protocol (:func:`raysemi.bench.protocol.unlabeled_boxes_file`), written
    once per code version under the work folder (the boxes follow the code that derives them and the split)."""
    path = WORK / protocol_name / f"unlabeled_object_boxes-{code_version(protocol_name)}.txt"
    return unlabeled_boxes_file(REPO / PROTOCOLS[protocol_name].config, path)


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
        controls=CONTROLS,
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
        controls=CONTROLS,
    ),
}


# ------------------------------------------------------------------------------------- what each run faces
SEMI_SUPERVISED = ("cps", "cac", "unimatch")
WITH_CONTROL = ("cps", "cac")  # the methods with a λ = 0 control variant
RIVALS = {"unimatch": ("cac",)}  # methods a method must also beat (issue 37: UniMatch above CAC at one commit)


def planned_comparisons(method: str) -> list[Comparison]:
    """The baselines ``method`` must beat (issue 35): every semi-supervised method (and its λ = 0 control)
    against ``supervised`` and ``supervised_unlabeled_bn`` (CPS also against their published-optimizer twins,
    where the protocol defines them), a method against its control; self-correction
    against ``supervised`` at its summed budget and at the protocol's, against ``self_correction_none`` and
    against ``supervised_boxes`` (box-filled F ∪ W) at its summed budget; SimFormer ``full`` against the
    supplementary's ``basic`` and the weaker ``basic_nocomp``; the headroom and BatchNorm runs against
    ``supervised``; CPS's published-optimizer baselines against ``supervised`` (the optimizer's own effect) and
    the BatchNorm one also against ``supervised_cps_optim`` (BatchNorm's under that optimizer); a method in
    :data:`RIVALS` also against its rivals (UniMatch, which has no control, CAC)."""
    base = method.removesuffix("_control")
    if base in SEMI_SUPERVISED:
        own = [Comparison(method, f"{base}_control")] if method == base and base in WITH_CONTROL else []
        rivals = [Comparison(method, rival) for rival in RIVALS.get(method, ())]
        # where a protocol trains CPS with the published optimizer (P2), the baselines with that optimizer too
        same_optim = [Comparison(method, b) for b in CPS_BASELINES] if base == "cps" else []
        return [Comparison(method, "supervised"), Comparison(method, "supervised_unlabeled_bn"), *same_optim, *own,
                *rivals]
    if method.startswith("self_correction_"):
        versus_none = [] if method == "self_correction_none" else [Comparison(method, "self_correction_none")]
        return [Comparison(method, "supervised", at_total=True), Comparison(method, "supervised"), *versus_none,
                Comparison(method, "supervised_boxes", at_total=True)]
    if method.endswith("_full") and method in ORACLES:
        name = method.removesuffix("_full")
        return [Comparison(method, f"{name}_basic"), Comparison(method, f"{name}_basic_nocomp")]
    if method in CPS_BASELINES:
        return [Comparison(method, b) for b in ("supervised", "supervised_cps_optim") if b != method]
    if method in ("supervised_all_labels", "supervised_unlabeled_bn", "supervised_boxes"):
        return [Comparison(method, "supervised")]
    return []


def baseline_budget(comparison: Comparison, iterations: int) -> int:
    """The budget the baseline of ``comparison`` trains when the method's is ``iterations``."""
    return suite.baseline_budget(comparison, iterations, total_iterations)


def variant_config(protocol_name: str, variant: str, iterations: int, before: tuple[str, ...] = (),
                   after: tuple[str, ...] = ()):
    """The config of ``variant`` on the protocol at the budget ``iterations``: the protocol config with the
    variant's overrides, ``before``, ``train.steps``, a chain's stage budgets and ``after``; the protocol's
    derived boxes file (written first if missing) where an override names it."""
    from raysemi.config import load_config

    protocol = PROTOCOLS[protocol_name]
    overrides = [*variant_overrides(protocol, variant), *before, f"train.steps={iterations}",
                 *budget_overrides(variant, iterations), *after]
    if any(DERIVED_BOXES in override for override in overrides):
        boxes = str(derived_boxes_file(protocol_name))
        overrides = [override.replace(DERIVED_BOXES, boxes) for override in overrides]
    return load_config(REPO / protocol.config, overrides)


def train_run(cfg) -> dict:
    """Train ``cfg`` (resuming its run directory) and return its summary."""
    from raysemi.ray.train import train

    return train(cfg)


def train_run_plain(cfg, torch_threads: int | None = 1) -> dict:
    """``train_run`` without Ray (``--runner plain``: torch DataLoader processes feed the same loop, on CUDA when
    present); for a machine that runs many benchmark runs side by side. ``torch_threads=None``: the config's
    ``train.torch_threads`` (the repeatability runs set it). The summary says which count trained
    (``torch_threads``), so the run record keeps it rather than the config's."""
    from raysemi.engine.plain import train_plain

    summary = train_plain(cfg, data_workers=PLAIN_DATA_WORKERS, torch_threads=torch_threads)
    return {**summary, "torch_threads": torch_threads or cfg.train.torch_threads}


def device_name(trainer: Callable[[object], dict] | None) -> str:
    """Where a run trained: the GPU's name for the plain runner on CUDA, else ``cpu`` (the Ray runner uses a
    GPU only with ``scaling.use_gpu``, which no protocol sets)."""
    return runs.device_name(trainer is train_run_plain or getattr(trainer, "func", None) is train_run_plain)


def store() -> RunStore:
    """Where this suite's runs are kept (:data:`RUNS`, :data:`WORK`) and how their configs are built."""
    return RunStore(RUNS, WORK, REPO, variant_config, code_version, stage_budgets, say)


def run_once(protocol_name: str, variant: str, seed: int, iterations: int, baseline: str | None,
             extra: tuple[str, ...] = (), trainer: Callable[[object], dict] | None = None, *,
             split: str = "report", repeat: str | None = None, rerun_stale: bool = False) -> dict:
    """One run's record (:meth:`raysemi.bench.store.RunStore.result`; ``trainer`` by default :func:`train_run`)."""
    request = RunRequest(protocol_name, variant, seed, iterations, tuple(extra), split, repeat)
    try:
        return store().result(request, baseline, trainer or train_run, lambda: device_name(trainer), rerun_stale)
    except versions.MixedCodeError as error:
        raise SystemExit(f"error: {error}; pass --rerun-stale to restart it") from None


@functools.cache
def code_version(protocol_name: str) -> str:
    """This checkout's code version for ``protocol_name`` (:func:`raysemi.bench.versions.code_version` of
    :func:`training_files`)."""
    return versions.code_version(REPO, *training_files(protocol_name))


def training_files(protocol_name: str) -> tuple[list[str], bool]:
    """The files the protocol's code version hashes, and whether git listed them."""
    return versions.training_files(REPO, PROTOCOLS[protocol_name].config, say)


def current_version(run: dict) -> str | None:
    """This checkout's code version for ``run``'s protocol (None for a protocol it does not define)."""
    return code_version(run["protocol"]) if run["protocol"] in PROTOCOLS else None


@functools.cache
def protocol_budget(protocol: str) -> int | None:
    """The protocol config's ``train.steps`` (None for a protocol this file does not define)."""
    from raysemi.config import load_config

    return load_config(REPO / PROTOCOLS[protocol].config).train.steps if protocol in PROTOCOLS else None


def say(text: str) -> None:
    print(f"[gain] {text}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------- the outputs
QUOTING = (REPO / "README.md", REPO / "docs" / "benchmarks.md")  # besides results/gain/notes.md
README_HEADER = ["# Gains over baselines on the benchmark protocols", "",
                 "Written by [`gain.py`](../../gain.py) from the run JSONs beside this file; protocols in",
                 "[`experiments/protocols/`](../../../protocols). Differences are method − baseline in mIoU points",
                 "(×100), paired by seed (same split, same labeled batches, same code version). Training time leaves",
                 "out start-up and evaluation and sums a chained method's stages; it/s compares only runs of the same",
                 "invocation on the same machine. The report split gives the headline numbers; the selection split,",
                 "where hyperparameters are chosen, has sections of its own and is never mixed with it. Runs from",
                 "2026-12-07 on record their processor (`machine`); a pair of two different ones is flagged.", ""]


def refusal(run: dict, baseline: dict) -> str:
    """Why ``run`` and ``baseline`` are not paired, and the commands that rerun the stale side."""
    current = store().same_lineage
    stale = [r for r in (run, baseline) if not r.get("code_version") or not current(r["code_version"],
                                                                                    current_version(r))]
    rerun = " and ".join(f"gain.py --protocol {r['protocol']} --method {r['method']} --seed {r['seed']} "
                         f"--iterations {r['iterations']} --skip-baseline --rerun-stale" for r in stale or [baseline])
    return pairs.refusal(run, baseline, record_label, f"rerun the stale side ({rerun}) or pass --allow-mixed-code to "
                                                   "pair them anyway (the tables then flag it)")


PLAN = suite.Plan(planned_comparisons, total_iterations, protocol_budget, refusal, ORACLES)


def write_outputs(allow_mixed: bool = False) -> list[dict]:
    """Rebuild ``results/summary.json``, ``results/gain/README.md`` and the quoted figures of :data:`QUOTING` and
    ``results/gain/notes.md`` (:func:`raysemi.bench.suite.write_outputs`); the records."""
    return suite.write_outputs(PLAN, RESULTS, RUNS, README_HEADER, QUOTING, allow_mixed, say)


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
    try:  # refuse an unknown method before anything runs
        for variant in variants:
            variant_overrides(protocol, variant)
    except UnknownVariant as error:
        raise SystemExit(f"error: --method {error}") from None
    if args.iterations is None:
        args.iterations = protocol_budget(args.protocol)
    if args.prove_same_code:
        return prove_same_code(args)
    (run_repeatability if args.repeatability else run_comparisons)(args, variants)
    kind = "repeatability" if args.repeatability else "comparison"
    for record in write_outputs(args.allow_mixed_code):
        if (record["kind"], record["protocol"], record["split"]) == (kind, args.protocol, args.split) \
                and record["method"] in variants:
            print(suite.record_line(record))
    return 0


def prove_same_code(args: argparse.Namespace) -> int:
    """``--prove-same-code``: rerun the finished run the arguments name at this code version and, where it
    reproduces its record, record this version as the same as the run's (:meth:`RunStore.prove_same`)."""
    trainer = train_run_plain if args.runner == "plain" else None
    for seed in args.seed or range(args.seeds):
        request = RunRequest(args.protocol, args.method, seed, args.iterations, tuple(args.set), args.split)
        try:
            store().prove_same(request, trainer or train_run, lambda: device_name(trainer))
        except lineage.NotSameCode as error:
            raise SystemExit(f"error: {error}") from None
    write_outputs(args.allow_mixed_code)
    return 0


def run_comparisons(args: argparse.Namespace, variants: list[str]) -> None:
    """At each seed, the baselines (unless ``--skip-baseline``), then ``variants``; the outputs after each seed."""
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


def baselines_to_run(protocol_name: str, variants: list[str], iterations: int,
                     baseline: str | None) -> list[tuple[str, int]]:
    """:func:`raysemi.bench.suite.baselines_to_run` among the variants the protocol defines."""
    return suite.baselines_to_run(PLAN, set(known_variants(PROTOCOLS[protocol_name])), variants, iterations, baseline)


def run_repeatability(args: argparse.Namespace, variants: list[str]) -> None:
    """``--repeatability``: the method at each seed three times (twice at ``--threads``, once at
    ``--other-threads``)."""
    from raysemi.config import load_config

    threads = args.threads or load_config(REPO / PROTOCOLS[args.protocol].config).train.torch_threads or 1
    other = args.other_threads or (1 if threads > 1 else 2)
    # the plain runner takes its thread count from the config here (the runs' train.torch_threads override)
    trainer = functools.partial(train_run_plain, torch_threads=None) if args.runner == "plain" else None
    for seed in args.seed or range(args.seeds):
        request = RunRequest(args.protocol, args.method, seed, args.iterations, split=args.split)
        store().repeat_runs(request, (threads, other), trainer or train_run, lambda: device_name(trainer),
                            args.rerun_stale)


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
    parser.add_argument("--prove-same-code", action="store_true",
                        help="rerun the finished run named (at --seed) at this code version and, when it reproduces "
                             "every number of its record, record this version as the same as the run's (in "
                             "results/gain/equivalent_versions.json), so its runs pair with this version's")
    parser.add_argument("--table", action="store_true", help="only rebuild the README, summary.json and quotes")
    args = parser.parse_args(argv)
    if not args.table and (not args.protocol or not args.method):
        parser.error("--protocol and --method are required (or --table)")
    return args


if __name__ == "__main__":
    sys.exit(main())
