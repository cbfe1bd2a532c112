"""Does a method beat its baseline? Paired runs on a benchmark protocol, resumable, with a table and summary.

A protocol (``experiments/protocols/``) fixes the data, the labeled split, the model, the optimiser and the
iteration budget, and is itself a plain raysemi config of the supervised(k) baseline. This command runs a method
and its baseline on that protocol for seeds ``0..S-1``: the same split, the same labeled batches (the labeled
stream's order and augmentation are a function of ``run.seed`` alone, whatever else the method reads) and the
same iterations; the seed changes initialisation and data order. Each run writes one JSON; every invocation
then rebuilds, from all run JSONs:

- ``results/gain/README.md``: per comparison, each seed's two mIoUs and their paired difference, the mean ± std
  of the differences, per-class IoU (baseline, method, difference, and supervised_all_labels' where it ran),
  training time per iteration and it/s; the baseline's val-mIoU curve and final mIoU by budget (how each
  protocol's budget was chosen);
- ``results/summary.json``: one record per comparison, ``{"protocol", "method", "baseline", "iterations",
  "seeds", "miou", "baseline_miou", "diff_mean", "diff_std"}`` (lists in seed order; ``diff_*`` of
  ``miou - baseline_miou``), plus ``"overrides"`` for an ablation, and for weak-shot runs ``<group>_miou``,
  ``baseline_<group>_miou`` and (SimFormer) ``oracle_<group>_miou`` lists (``novel``, ``base``). The headroom
  of a protocol is the record of ``supervised_all_labels`` against ``supervised``.

A finished run (its JSON exists) is never rerun; an interrupted one resumes from its run directory's newest
checkpoint (``train.checkpoint_every`` in the protocol), so re-running the same command after a stop loses
nothing. ``--control`` also runs the method with its unlabeled term's weight at 0 (``<method>_control``: CPS's
two networks with their init and batch composition; CAC's crops and projector in the forward pass), so a gain
can be attributed to the unlabeled data.

Usage (from the repository root)::

    python experiments/benchmarks/gain.py --protocol p1 --method supervised_all_labels --seeds 2   # headroom
    python experiments/benchmarks/gain.py --protocol p1 --method cps --control --seeds 3
    python experiments/benchmarks/gain.py --protocol p2 --method cac --seeds 3 --set cac.temperature=0.2
    python experiments/benchmarks/gain.py --protocol p2 --method cps --baseline supervised_cps_optim --control
    python experiments/benchmarks/gain.py --protocol p1 --method supervised --iterations 300 --seeds 2  # budget
    python experiments/benchmarks/gain.py --protocol p1 --method simformer_oracle --baseline simformer_basic
    python experiments/benchmarks/gain.py --protocol p1 --method simformer_full --baseline simformer_basic
    python experiments/benchmarks/gain.py --protocol p2 --method simformer3_full --baseline simformer3_basic
    python experiments/benchmarks/gain.py --protocol p1 --method self_correction_linear --seeds 3
    python experiments/benchmarks/gain.py --protocol p2 --method cps --seed 1 --skip-baseline --runner local
    python experiments/benchmarks/gain.py --table                                      # rebuild outputs only

``--seed S`` (repeatable) runs those seeds only and ``--skip-baseline`` leaves the baseline to another
invocation: ``gain_plan.py`` runs such one-seed invocations side by side. ``--runner local`` trains without Ray
(:mod:`raysemi.engine.local`: the same batches and loop, torch DataLoader processes, CUDA when present).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
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
LOCAL_DATA_WORKERS = 2  # --runner local: decode processes per stream, beside a loop of one intra-op thread


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
# their masks (written once per protocol, see derived_boxes_file). At equal iterations: the primary trains the
# protocol's budget (conv: the corrector stage takes a quarter of it); the ancillary, a model of its own trained
# on F first, trains the whole budget.
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


def budget_overrides(variant: str, iterations: int) -> tuple[str, ...]:
    """How a chained method spends ``iterations``: the overrides after ``train.steps={iterations}``."""
    if not variant.startswith("self_correction_"):
        return ()
    if variant.startswith("self_correction_conv"):
        corrector = iterations // CORRECTOR_SHARE
        return (f"self_correction.ancillary_steps={iterations}", f"self_correction.corrector_steps={corrector}",
                f"train.steps={iterations - corrector}")
    return (f"self_correction.ancillary_steps={iterations}",)


def derived_boxes_file(protocol_name: str) -> Path:
    """``data.unlabeled_boxes`` for the protocol: each unlabeled image's boxes from its mask (one box per object of
    a thing class, as ``raysemi data split --boxes`` draws them), written once under the work folder (a new
    name for the object boxes: a file of the earlier per-component boxes is never reused)."""
    from raysemi.config import load_config
    from raysemi.data.dataset import open_dataset
    from raysemi.data.weak_labels import boxes_from_masks, write_boxes_file

    path = WORK / protocol_name / "unlabeled_object_boxes.txt"
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
        known = ["supervised", "supervised_all_labels", *protocol.methods,
                 *(f"{m}_control" for m in protocol.methods if m in CONTROLS)]
        raise SystemExit(f"error: --method {variant} is not defined for this protocol; choose one of "
                         f"{', '.join(known)}")
    return protocol.methods[method] + (CONTROLS[method] if variant.endswith("_control") else ())


def run_name(variant: str, seed: int, iterations: int, extra: tuple[str, ...] = ()) -> str:
    suffix = f"-{hashlib.sha1(' '.join(extra).encode()).hexdigest()[:8]}" if extra else ""
    return f"{variant}-seed{seed}-it{iterations}{suffix}"


def train_run(cfg) -> dict:
    """Train ``cfg`` (resuming its run directory) and return its summary."""
    from raysemi.ray.train import train

    return train(cfg)


def train_run_local(cfg) -> dict:
    """``train_run`` without Ray (``--runner local``: torch DataLoader processes feed the same loop, on CUDA when
    present); for a machine that runs many benchmark runs side by side."""
    from raysemi.engine.local import train_local

    return train_local(cfg, data_workers=LOCAL_DATA_WORKERS, torch_threads=1)


def run_once(protocol_name: str, variant: str, seed: int, iterations: int, baseline: str | None,
             extra: tuple[str, ...] = (), trainer: Callable[[object], dict] | None = None) -> dict:
    """One run's result, from its JSON when it finished before, else trained (or resumed) now and recorded."""
    name = run_name(variant, seed, iterations, extra)
    path = RUNS / protocol_name / f"{name}.json"
    if path.is_file():
        return json.loads(path.read_text())
    from raysemi.atomic import write_json
    from raysemi.config import load_config
    from raysemi.tracking import read_metrics

    protocol = PROTOCOLS[protocol_name]
    run_dir = WORK / protocol_name / name
    overrides = [*variant_overrides(protocol, variant), *extra, f"run.seed={seed}", f"run.dir={run_dir}",
                 f"train.steps={iterations}", *budget_overrides(variant, iterations)]
    if any(DERIVED_BOXES in override for override in overrides):
        boxes = str(derived_boxes_file(protocol_name))
        overrides = [override.replace(DERIVED_BOXES, boxes) for override in overrides]
    cfg = load_config(REPO / protocol.config, overrides)
    started = time.perf_counter()
    summary = (trainer or train_run)(cfg)
    run_dir = Path(summary.get("run_dir", run_dir))  # a chained method's result: its last stage's run
    result = {
        "protocol": protocol_name, "method": variant, "baseline": baseline, "seed": seed, "iterations": iterations,
        "overrides": list(extra), "val_miou": round(summary["miou"], 4),
        "per_class_iou": {k: (None if v is None else round(v, 4)) for k, v in summary["iou"].items()},
        **({k: round(v, 4) for k, v in summary.items() if k.startswith("miou_")}),
        **step_times(read_metrics(run_dir), iterations),
        "wall_time_s": round(time.perf_counter() - started, 1),
        "curve": [[r["step"], round(r["val"]["miou"], 4)] for r in read_metrics(run_dir) if "val" in r],
        "date": time.strftime("%Y-%m-%d"),
        "commit": code_version(),
        "device": device_name(trainer),
    }
    write_json(path, result)  # atomic: a run counts as finished only once its whole JSON is there
    return result


def device_name(trainer: Callable[[object], dict] | None) -> str:
    """Where a run trained: the GPU's name for the local runner on CUDA, else ``cpu`` (the Ray runner uses a
    GPU only with ``scaling.use_gpu``, which no protocol sets)."""
    import torch

    if trainer is train_run_local and torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return "cpu"


def code_version() -> str:
    """The repository's commit (``+changes`` when the work tree differs from it): a method and its baseline
    compare like with like only when they ran the same code."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + ("+changes" if git("status", "--porcelain", "--", "raysemi") else "")


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
    return [json.loads(p.read_text()) for p in sorted(RUNS.glob("*/*.json"))]


def run_index(runs: list[dict]) -> dict[tuple, dict]:
    """Each run by ``(protocol, method, seed, iterations, overrides)``."""
    return {(r["protocol"], r["method"], r["seed"], r["iterations"], tuple(r["overrides"])): r for r in runs}


def comparisons(runs: list[dict], index: dict[tuple, dict]) -> list[dict]:
    """One summary record per (protocol, method, baseline, iterations, overrides), over the seeds where both the
    method's and the baseline's runs exist, in seed order (``index``: :func:`run_index` of ``runs``)."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        if r["baseline"]:
            groups.setdefault((r["protocol"], r["method"], r["baseline"], r["iterations"], tuple(r["overrides"])),
                              []).append(r)
    records = []
    for (protocol, method, baseline, iterations, overrides), group in sorted(groups.items()):
        pairs = [(r, index.get((protocol, baseline, r["seed"], iterations, ()))) for r in group]
        pairs = sorted(((r, b) for r, b in pairs if b), key=lambda pair: pair[0]["seed"])
        if pairs:
            oracle = ORACLES.get(method)
            oracles = [index.get((protocol, oracle, r["seed"], iterations, ())) for r, _ in pairs] if oracle else []
            records.append(comparison_record(protocol, method, baseline, iterations, overrides, pairs, oracles))
    return records


def comparison_record(protocol, method, baseline, iterations, overrides, pairs, oracles=()) -> dict:
    """The summary record of ``pairs`` (``[(method run, baseline run)]`` in seed order); ``oracles`` (the
    oracle run of each seed, or None) add ``oracle_<group>_miou`` lists beside the group mIoUs."""
    miou = [r["val_miou"] for r, _ in pairs]
    baseline_miou = [b["val_miou"] for _, b in pairs]
    diffs = [m - b for m, b in zip(miou, baseline_miou)]
    record = {
        "protocol": protocol, "method": method, "baseline": baseline, "iterations": iterations,
        "seeds": [r["seed"] for r, _ in pairs], "miou": miou, "baseline_miou": baseline_miou,
        "diff_mean": round(statistics.mean(diffs), 4),
        "diff_std": round(statistics.stdev(diffs), 4) if len(diffs) > 1 else 0.0,
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


def all_labels_runs(index: dict[tuple, dict], protocol: str, iterations: int) -> list[dict]:
    """The protocol's plain supervised_all_labels runs at ``iterations``, any seed."""
    return [run for (p, method, _, its, overrides), run in index.items()
            if (p, method, its, overrides) == (protocol, "supervised_all_labels", iterations, ())]


def comparison_section(record: dict, index: dict[tuple, dict]) -> list[str]:
    key = tuple(record.get("overrides", ()))
    pairs = [(index[(record["protocol"], record["method"], s, record["iterations"], key)],
              index[(record["protocol"], record["baseline"], s, record["iterations"], ())]) for s in record["seeds"]]
    title = f"### {record['protocol']}: {record['method']} against {record['baseline']}, {record['iterations']} it"
    lines = [title + (f" ({', '.join(key)})" if key else ""), "",
             "| seed | baseline mIoU | method mIoU | difference (points) | baseline it/s | method it/s |",
             "|---|---|---|---|---|---|"]
    for (r, b), m, bm in zip(pairs, record["miou"], record["baseline_miou"]):
        lines.append(f"| {r['seed']} | {bm:.4f} | {m:.4f} | {100 * (m - bm):+.1f} | {_fmt(b['it_per_s'], 2)} "
                     f"| {_fmt(r['it_per_s'], 2)} |")
    ratio = statistics.mean(b["it_per_s"] / r["it_per_s"] for r, b in pairs if r["it_per_s"] and b["it_per_s"])
    mixed = differing_seeds(pairs, "commit")
    lines += ["", f"Difference: **{difference_text(record)}** "
              f"(mean ± std over {len(pairs)} paired seeds); time per iteration {ratio:.2f}× the baseline's "
              f"(training time {statistics.mean(r['train_time_s'] for r, _ in pairs):.0f} s against "
              f"{statistics.mean(b['train_time_s'] for _, b in pairs):.0f} s).", ""]
    if mixed:
        lines += [f"**Seeds {mixed} compare runs of different code versions** (see each run's `commit`): rerun the "
                  "baseline (delete its JSON) before reading a small difference.", ""]
    devices = differing_seeds(pairs, "device", default="cpu")  # runs from before the field trained on the CPU
    if devices:
        lines += [f"**Seeds {devices} compare runs on different devices** (see each run's `device`): run both on "
                  "one device before reading the difference.", ""]
    reference = [] if record["method"] == "supervised_all_labels" else all_labels_runs(
        index, record["protocol"], record["iterations"])
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


def write_outputs() -> list[dict]:
    """Rebuild ``results/summary.json`` and ``results/gain/README.md`` (plus ``results/gain/notes.md``)."""
    from raysemi.atomic import write_text

    runs = load_runs()
    index = run_index(runs)
    records = comparisons(runs, index)
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_text(RESULTS / "summary.json", json.dumps(records, indent=1) + "\n")  # atomic: gain_plan.py runs many
    lines = ["# Gains over baselines on the benchmark protocols", "",
             "Written by [`gain.py`](../../gain.py) from the run JSONs beside this file; protocols in",
             "[`experiments/protocols/`](../../../protocols). Differences are method − baseline in mIoU points",
             "(×100), paired by seed (same split, same labeled batches, same iterations). Training time leaves out",
             "start-up and evaluation; it/s compares only runs of the same invocation on the same machine.", ""]
    for protocol in sorted({r["protocol"] for r in runs}):
        lines += [f"## Protocol {protocol}", ""]
        lines += budget_section(protocol, runs)
        for record in (r for r in records if r["protocol"] == protocol):
            lines += comparison_section(record, index)
    notes = RUNS / "notes.md"
    if notes.is_file():
        lines += [notes.read_text().rstrip(), ""]
    RUNS.mkdir(parents=True, exist_ok=True)
    write_text(RUNS / "README.md", "\n".join(lines))
    return records


def _mean_of(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.mean(present) if present else None


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS))
    parser.add_argument("--method", help="supervised_all_labels, a method (cps, cac, simformer_full, ...) or "
                                         "<method>_control")
    parser.add_argument("--baseline", default="supervised")
    parser.add_argument("--seeds", type=int, default=3, help="run seeds 0..S-1")
    parser.add_argument("--seed", type=int, action="append", metavar="S",
                        help="run only this seed (repeatable; instead of --seeds)")
    parser.add_argument("--skip-baseline", action="store_true",
                        help="do not run the baseline (another invocation does: runs in parallel, one per process)")
    parser.add_argument("--iterations", type=int, help="default: the protocol config's train.steps")
    parser.add_argument("--control", action="store_true", help="also run the method with its unlabeled weight 0")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an override of the method's runs only (an ablation; repeatable)")
    parser.add_argument("--runner", choices=["ray", "local"], default="ray",
                        help="ray: Ray Data and Ray Train (the product's path); local: the same loop and batches "
                             "without Ray (raysemi.engine.local), on CUDA when present")
    parser.add_argument("--table", action="store_true", help="only rebuild the README and summary.json")
    args = parser.parse_args(argv)
    os.chdir(REPO)  # the protocols' paths are relative to the repository root
    if args.table:
        write_outputs()
        return 0
    if not args.protocol or not args.method:
        parser.error("--protocol and --method are required (or --table)")
    protocol = PROTOCOLS[args.protocol]
    if protocol.needs and not (REPO / protocol.needs).is_dir():
        print(f"skipped: {REPO / protocol.needs} not found (protocol {args.protocol} needs it)", file=sys.stderr)
        return 0
    variants = [args.method] + ([f"{args.method}_control"] if args.control else [])
    for variant in variants:
        variant_overrides(protocol, variant)  # refuse an unknown method before anything runs
    if args.iterations is None:
        from raysemi.config import load_config

        args.iterations = load_config(REPO / protocol.config).train.steps
    baseline = None if args.method == args.baseline else args.baseline
    trainer = train_run_local if args.runner == "local" else None
    for seed in args.seed or range(args.seeds):
        if baseline and not args.skip_baseline:
            run_once(args.protocol, baseline, seed, args.iterations, None, trainer=trainer)
        for variant in variants:
            run_once(args.protocol, variant, seed, args.iterations, baseline, tuple(args.set), trainer)
        write_outputs()
    for record in write_outputs():
        if record["protocol"] == args.protocol and record["method"] in variants:
            print(f"{record['method']} - {record['baseline']} ({record['iterations']} it, seeds {record['seeds']}): "
                  f"{difference_text(record)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
