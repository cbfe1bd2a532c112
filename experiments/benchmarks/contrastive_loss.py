"""Time and peak memory of CAC's directional contrastive loss: chunked (never holds the N×M matrix) against the
plain version that materialises it (``chunk_size=None``: plain autograd).

Setting (the issue's): N = 6,400 anchors, D = 128, M = 19,200 and 76,800 negatives, every anchor kept (γ = 0,
directional mask off) so the whole N×M product is computed; forward + backward into the anchors.

- Time: median of ``--repeats`` forward+backward passes, against the floor: the two N×M×D matrix products
  the loss cannot avoid (the logits, then the softmax-weighted sum of the negatives), timed here on the same
  shapes as the chunk loop runs them (``(N, D+1) @ (D+1, chunk)`` into a reused buffer, then ``addmm_`` of
  ``(N, chunk) @ (chunk, D+1)``), with nothing else. The one-product rate on the whole N×M matrix is
  reported too (it includes allocating that matrix).
- Peak memory (:func:`raysemi.bench.memory.peak_memory_growth`): on CUDA, ``torch.cuda.max_memory_allocated``
  over the pass; on CPU (Linux), the growth of the process's peak resident set (``VmHWM``) during the pass,
  each variant in a fresh process whose peak is reset once the inputs exist. (``ru_maxrss`` does not work here:
  a child inherits its parent's peak across fork and exec, so after the timed passes every child reported
  growth 0.)

Usage (from the repository root)::

    python experiments/benchmarks/contrastive_loss.py [--negatives 19200 76800] [--chunk-size 2048]

Writes ``experiments/benchmarks/results/contrastive_loss.json`` and ``contrastive_loss.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from raysemi.bench.memory import peak_memory_growth
from raysemi.bench.timing import seconds_per_call
from raysemi.losses import directional_contrastive_loss
from raysemi.losses.directional_contrastive import auto_chunk_size

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "experiments" / "benchmarks" / "results"


def make_inputs(n: int, m: int, d: int, device: torch.device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    anchor = F.normalize(torch.randn(n, d, generator=g), dim=1).to(device).requires_grad_()
    positive = F.normalize(torch.randn(n, d, generator=g), dim=1).to(device)
    negatives = F.normalize(torch.randn(m, d, generator=g), dim=1).to(device)
    labels = torch.randint(0, 21, (n,), generator=g).to(device)
    neg_labels = torch.randint(0, 21, (m,), generator=g).to(device)
    conf = torch.full((n,), 0.9, device=device)
    return anchor, positive, conf, labels, negatives, neg_labels


def forward_backward(inputs, chunk_size: int | None) -> None:
    anchor, positive, conf, labels, negatives, neg_labels = inputs
    anchor.grad = None
    loss = directional_contrastive_loss(
        anchor, positive, conf, conf, labels, negatives, neg_labels, gamma=0.0, chunk_size=chunk_size,
        directional=False,
    )
    loss.backward()


def median_seconds(call, repeats: int, device: torch.device) -> float:
    """Median seconds of ``repeats`` calls of ``call`` after one warm-up call."""
    return statistics.median(seconds_per_call(call, repeats, warmup=1, device=device))


def time_pass(inputs, chunk_size: int | None, repeats: int, device: torch.device) -> float:
    return median_seconds(lambda: forward_backward(inputs, chunk_size), repeats, device)


def matmul_rate(n: int, m: int, d: int, device: torch.device, repeats: int = 5) -> float:
    """Flops/s of an (n, d) @ (d, m) float32 product on this machine."""
    a, b = torch.randn(n, d, device=device), torch.randn(d, m, device=device)
    return 2 * n * m * d / median_seconds(lambda: a @ b, repeats, device)


def two_product_floor(n: int, m: int, d: int, chunk_size: int, device: torch.device, repeats: int = 3) -> float:
    """Seconds for the two products over all M negatives in chunks, and nothing else (median of ``repeats``)."""
    rows, negatives = torch.randn(n, d + 1, device=device), torch.randn(m, d + 1, device=device)
    buffer, acc = torch.empty(n * chunk_size, device=device), torch.zeros(n, d + 1, device=device)

    def products():
        for start in range(0, m, chunk_size):
            chunk = negatives[start : start + chunk_size]
            acc.addmm_(torch.mm(rows, chunk.T, out=buffer[: n * len(chunk)].view(n, len(chunk))), chunk)

    return median_seconds(products, repeats, device)


def peak_memory_bytes(n: int, m: int, d: int, chunk_size: int | None, device: torch.device) -> int:
    """Peak memory of one forward+backward beyond the inputs (see the module docstring)."""
    return peak_memory_growth(partial(make_inputs, n, m, d, device), partial(forward_backward, chunk_size=chunk_size),
                              device)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--anchors", type=int, default=6400)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--negatives", type=int, nargs="+", default=[19200, 76800])
    parser.add_argument("--chunk-size", default="auto", help="negatives per chunk, or auto (the loss's default)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    n, d = args.anchors, args.dim
    rows = []
    chunk_arg = args.chunk_size if args.chunk_size == "auto" else int(args.chunk_size)
    for m in args.negatives:
        chunk = auto_chunk_size(n, m, device) if chunk_arg == "auto" else chunk_arg
        rate = matmul_rate(n, m, d, device)
        floor = two_product_floor(n, m, d, chunk, device)
        inputs = make_inputs(n, m, d, device)
        row = {"anchors": n, "dim": d, "negatives": m, "chunk_size": chunk,
               "matmul_gflops": round(rate / 1e9, 1), "one_product_s": round(2 * n * m * d / rate, 4),
               "floor_s": round(floor, 4), "floor_gflops": round(4 * n * m * (d + 1) / floor / 1e9, 1)}
        for name, size in (("plain", None), ("chunked", chunk)):
            seconds = time_pass(inputs, size, args.repeats, device)
            row[f"{name}_s"] = round(seconds, 4)
            row[f"{name}_vs_floor"] = round(seconds / floor, 2)
            row[f"{name}_peak_mib"] = round(peak_memory_bytes(n, m, d, size, device) / 2**20, 1)
        row["time_ratio"] = round(row["chunked_s"] / row["plain_s"], 3)
        row["memory_ratio"] = round(row["plain_peak_mib"] / max(row["chunked_peak_mib"], 1e-9), 1)
        rows.append(row)
        print(json.dumps(row))
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    RESULTS.mkdir(parents=True, exist_ok=True)
    record = {"device": device_name, "repeats": args.repeats, "rows": rows}
    name = "contrastive_loss" if device.type == "cpu" else f"contrastive_loss-{device.type}"
    (RESULTS / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")
    write_table(rows, device_name, args.repeats, name)
    return 0


def write_table(rows: list[dict], device_name: str, repeats: int, name: str) -> None:
    lines = [
        "# Directional contrastive loss: chunked vs plain",
        "",
        f"Script: [`contrastive_loss.py`](../contrastive_loss.py). Device: {device_name}. N anchors, D = 128, every",
        f"anchor kept; forward + backward into the anchors; time is the median of {repeats} passes; the floor is",
        "the two N×M×D products alone (logits, then the weighted sum of the negatives), timed on the same shapes",
        "and chunks in the same run; peak memory is the growth of the peak (CUDA allocator, or the process's",
        "peak RSS on CPU) over one pass, beyond the inputs. Timings on a shared machine: compare within a row.",
        "",
        "| N | M | chunk | plain (s) | chunked (s) | chunked / plain | floor (s) | chunked / floor "
        "| plain peak (MiB) | chunked peak (MiB) | memory saved |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['anchors']} | {r['negatives']} | {r['chunk_size']} | {r['plain_s']:.3f} | {r['chunked_s']:.3f} "
            f"| {r['time_ratio']:.2f} | {r['floor_s']:.3f} | {r['chunked_vs_floor']:.2f} "
            f"| {r['plain_peak_mib']:.0f} | {r['chunked_peak_mib']:.0f} | {r['memory_ratio']:.1f}× |"
        )
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
