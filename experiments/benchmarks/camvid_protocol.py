"""The shared CamVid benchmark protocol, reused by every method's benchmark.

Protocol: ``../shared/data/camvid-96x128``, EfficientNet-Lite0 with ImageNet weights, batch 8 (plus 8
unlabeled for semi-supervised methods), 1,000 iterations, val mIoU at the end; a label fraction and a seed as
arguments. Each run records val mIoU, wall time, images/s, the share of step time spent waiting for data, and,
in the same invocation, the images/s of a plain single-process PyTorch loop on the same model and batch
(tensors prepared in memory beforehand, so it measures compute alone).

Usage (from the repository root)::

    python experiments/benchmarks/camvid_protocol.py --method supervised --labels all
    python experiments/benchmarks/camvid_protocol.py --method supervised --labels 1/16 --seed 0

Results: ``experiments/benchmarks/results/<method>-<labels>-seed<seed>.json`` and the table in
``experiments/benchmarks/results/README.md`` (rebuilt from every JSON there).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "experiments" / "benchmarks" / "results"
CAMVID = REPO.parent / "shared" / "data" / "camvid-96x128"


def protocol_config(method: str, labels: str, seed: int, iterations: int, run_dir: Path):
    from raysemi.config import load_config
    from raysemi.data.splits import parse_fraction

    amount = "data.label_fraction=1.0" if labels == "all" else f"data.label_fraction={parse_fraction(labels)}"
    return load_config(
        REPO / "experiments" / "configs" / f"{method}_camvid.yaml",
        [
            f"data.root={CAMVID}",
            amount,
            f"data.split_seed={seed}",
            f"run.seed={seed}",
            f"run.dir={run_dir}",
            f"train.steps={iterations}",
            "train.torch_threads=2",
            "train.eval_every=0",
            "train.checkpoint_every=0",
        ],
    )


def plain_pytorch_images_per_s(cfg, iterations: int, warmup: int = 5) -> float:
    """A single-process loop over in-memory batches: same model, optimizer, batch size and threads."""
    from raysemi.data.dataset import load_sample, open_dataset
    from raysemi.data.transforms import TrainAugment, normalize, to_tensors
    from raysemi.engine.optim import build_optimizer
    from raysemi.methods import build_method

    torch.set_num_threads(cfg.train.torch_threads or 2)
    source = open_dataset(cfg.data)
    augment = TrainAugment.from_config(cfg.data, source.classes.ignore_index)
    method = build_method(cfg)
    batches = []
    for index, (stream, spec) in enumerate(method.streams().items()):
        samples = source.split.labeled if spec.source == "labeled" else source.split.unlabeled
        crops = [augment(*to_tensors(*load_sample(source.reader, samples[i % len(samples)])),
                         torch.Generator().manual_seed(index * 1000 + i)) for i in range(spec.batch_size)]
        batch = {"image": normalize(torch.stack([c[0] for c in crops]))}
        if spec.source == "labeled":
            batch["mask"] = torch.stack([c[1] for c in crops]).long()
        batches.append((stream, batch))
    batch = dict(batches)
    models = method.build_models(source.classes.num_classes)
    optimizer, _ = build_optimizer(models, cfg.optim, cfg.train.steps)
    images = sum(len(b["image"]) for b in batch.values())
    for step in range(warmup + iterations):
        if step == warmup:
            start = time.perf_counter()
        loss = method.training_step(models, batch, step)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return images * iterations / (time.perf_counter() - start)


def run(method: str, labels: str, seed: int, iterations: int, plain_iterations: int) -> dict:
    from raysemi.ray.train import train
    from raysemi.tracking import read_metrics

    name = f"{method}-{labels.replace('/', 'of')}-seed{seed}"
    run_dir = REPO / "experiments" / "benchmarks" / "_work" / name
    shutil.rmtree(run_dir, ignore_errors=True)
    cfg = protocol_config(method, labels, seed, iterations, run_dir)
    started = time.perf_counter()
    summary = train(cfg)
    wall = time.perf_counter() - started
    records = [r for r in read_metrics(run_dir) if "images_per_s" in r]
    steady = records[1:] or records  # the first interval includes pipeline start-up
    labeled = len((run_dir / "labeled.txt").read_text().splitlines())
    result = {
        "method": method,
        "labels": labels,
        "labeled_images": labeled,
        "seed": seed,
        "iterations": iterations,
        "val_miou": round(summary["miou"], 4),
        "wall_time_s": round(wall, 1),
        "images_per_s": round(sum(r["images_per_s"] for r in steady) / len(steady), 2),
        "data_wait_frac": round(sum(r["data_wait_frac"] for r in steady) / len(steady), 4),
        "plain_pytorch_images_per_s": round(plain_pytorch_images_per_s(cfg, plain_iterations), 2),
        "per_class_iou": {k: (None if v is None else round(v, 4)) for k, v in summary["iou"].items()},
        "device": "cpu, 2 cores" if not torch.cuda.is_available() else torch.cuda.get_device_name(),
        "date": time.strftime("%Y-%m-%d"),
    }
    result["throughput_vs_plain"] = round(result["images_per_s"] / result["plain_pytorch_images_per_s"], 3)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    write_table()
    return result


def write_table() -> None:
    rows = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))]
    lines = [
        "# CamVid 96×128 benchmark results",
        "",
        "Protocol and script: [`camvid_protocol.py`](../camvid_protocol.py). EfficientNet-Lite0 (ImageNet) +",
        "DeepLabv3+ (64 channels), batch 8, SGD (head LR 0.2, backbone 0.02), poly LR, CPU with 2 cores;",
        "one Ray Train worker (1 CPU reserved) with Ray Data decoding on the other CPU; 2 torch threads.",
        "Throughput is the mean over logging intervals after the first (which includes start-up).",
        "",
        "| method | labels | iterations | val mIoU | wall time (s) | images/s | plain PyTorch images/s "
        "| ratio | data wait |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['labeled_images']} ({r['labels']}, seed {r['seed']}) | {r['iterations']} "
            f"| {r['val_miou']:.4f} | {r['wall_time_s']:.0f} | {r['images_per_s']:.2f} "
            f"| {r['plain_pytorch_images_per_s']:.2f} | {r['throughput_vs_plain']:.2f} "
            f"| {100 * r['data_wait_frac']:.1f}% |"
        )
    (RESULTS / "README.md").write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="supervised")
    parser.add_argument("--labels", default="all", help="all, or a fraction such as 1/16")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--plain-iterations", type=int, default=100)
    args = parser.parse_args()
    if not CAMVID.is_dir():
        print(f"skipped: {CAMVID} not found (the benchmark needs ../shared/data)", file=sys.stderr)
        return 0
    print(json.dumps(run(args.method, args.labels, args.seed, args.iterations, args.plain_iterations), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
