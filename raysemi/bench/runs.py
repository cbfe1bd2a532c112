"""What a benchmark run cost and where it ran (device and processor), from its run directory; reading and writing
run records.

Training time comes from the intervals the loop logs (``steps_per_s`` every ``train.log_every`` steps in
``metrics.jsonl``): unlike wall time it leaves out start-up, evaluation and any interruption. A chained run
(``stages.json`` in its run directory) costs the sum of its stages.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from raysemi.tracking import read_metrics


def step_times(records: list[dict], iterations: int) -> dict:
    """``train_time_s`` of ``iterations`` steps at the logged pace, and the steady ``it_per_s`` (the first
    interval, pipeline start-up, left out when there are others; None when nothing was logged)."""
    timed = [r for r in records if "steps_per_s" in r]
    steps = [r["step"] - (p["step"] if p else 0) for p, r in zip([None, *timed], timed)]
    seconds = [n / r["steps_per_s"] for n, r in zip(steps, timed)]
    steady = slice(1, None) if len(timed) > 1 else slice(None)
    return {
        "train_time_s": round(sum(seconds) * iterations / max(sum(steps), 1), 1),
        "it_per_s": round(sum(steps[steady]) / sum(seconds[steady]), 3) if seconds else None,
    }


def run_cost(run_dir: Path, last_dir: Path, iterations: int, stage_budgets: Mapping[str, int] | None = None) -> dict:
    """Iterations and training time of the run in ``run_dir`` (``last_dir``: its last stage's directory, itself
    for a run of one stage): ``total_iterations``, ``train_time_s``, ``it_per_s`` (total iterations over total
    time) and, for a chain, ``stages`` (each stage's ``iterations`` and times). A stage's iterations are those
    ``stages.json`` lists, else ``stage_budgets``' (stage name → iterations), else its last logged step."""
    stages_file = run_dir / "stages.json"
    if not stages_file.is_file():
        return {**step_times(read_metrics(last_dir), iterations), "total_iterations": iterations}
    stages = []
    for name, entry in json.loads(stages_file.read_text()).items():
        records = read_metrics(Path(entry["run_dir"]))
        steps = entry.get("steps") or (stage_budgets or {}).get(name) or records[-1]["step"]
        stages.append({"stage": name, "iterations": steps, **step_times(records, steps)})
    total, seconds = sum(s["iterations"] for s in stages), sum(s["train_time_s"] for s in stages)
    return {"train_time_s": round(seconds, 1), "it_per_s": round(total / seconds, 3) if seconds else None,
            "total_iterations": total, "stages": stages}


def measured(cfg, summary: dict, run_dir: Path, iterations: int, started: float,
             stage_budgets: Mapping[str, int] | None = None) -> dict:
    """What a run of ``cfg`` trained in ``run_dir`` measured, as its run record keeps it: ``torch_threads`` (the
    summary's where the trainer replaced the config's count, as the plain runner does),
    ``val_miou``, ``per_class_iou`` and ``miou_<group>`` (rounded to 4 places), its cost (:func:`run_cost`; a
    chain's last stage is the summary's ``run_dir``), ``wall_time_s`` since ``started`` (a ``time.perf_counter``
    reading), the val ``curve`` (``[[step, mIoU], ...]``) and the ``date``."""
    last_dir = Path(summary.get("run_dir", run_dir))
    return {
        "torch_threads": summary.get("torch_threads", cfg.train.torch_threads), "val_miou": round(summary["miou"], 4),
        "per_class_iou": {k: (None if v is None else round(v, 4)) for k, v in summary["iou"].items()},
        **({k: round(v, 4) for k, v in summary.items() if k.startswith("miou_")}),
        **run_cost(run_dir, last_dir, iterations, stage_budgets),
        "wall_time_s": round(time.perf_counter() - started, 1),
        "curve": [[r["step"], round(r["val"]["miou"], 4)] for r in read_metrics(last_dir) if "val" in r],
        "date": time.strftime("%Y-%m-%d"),
    }


def speed_record(summary: dict) -> dict | None:
    """The memory format and compile choices a run's summary records (None for a run from before them)."""
    return {key: summary["speed"][key] for key in ("channels_last", "compile")} if "speed" in summary else None


def device_name(on_cuda_when_present: bool) -> str:
    """Where a run trained: the GPU's name for a runner that takes CUDA when present, on a machine that has it;
    else ``cpu``."""
    import torch

    return torch.cuda.get_device_name() if on_cuda_when_present and torch.cuda.is_available() else "cpu"


def machine_name(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The processor a run trained on, as far as its numerics go: the CPU's model name (``cpuinfo``'s first
    ``model name``, else :func:`platform.processor`, else the architecture) and the vector instruction set that
    PyTorch's CPU kernels dispatch on (:func:`torch.backends.cpu.get_cpu_capability`: ``AVX2``, ``AVX512``, ...),
    as ``"<model> (<instruction set>)"``. A run of one code version, seed and thread count trains differently on
    a processor whose kernels differ, so a pair is read only between runs of one machine."""
    import torch

    model = next((line.split(":", 1)[1].strip() for line in _lines(cpuinfo) if line.startswith("model name")),
                 None) or platform.processor() or platform.machine() or "unknown CPU"
    return f"{model} ({torch.backends.cpu.get_cpu_capability()})"


def _lines(path: Path) -> list[str]:
    """``path``'s lines; none for a file that is not there or cannot be read (not every system has one)."""
    try:
        return path.read_text(errors="replace").splitlines()
    except OSError:
        return []


def load_runs(folder: Path, pattern: str) -> list[dict]:
    """The run records (JSON files) under ``folder`` that match ``pattern``, in path order; a record from before
    the ``split`` field was scored on the report split."""
    return [{"split": "report", **json.loads(p.read_text())} for p in sorted(folder.glob(pattern))]


def write_records(path: Path, records: list[dict]) -> None:
    """``records`` as one JSON list (one space of indent), written atomically: many writers may rebuild it."""
    from raysemi.atomic import write_text

    write_text(path, json.dumps(records, indent=1) + "\n")


def write_result(results: Path, name: str, record: dict | list, markdown: str, indent: int = 1) -> Path:
    """A benchmark's result in ``results``: ``<name>.json`` (``record``, with ``indent``) and ``<name>.md``
    (``markdown``), each written atomically; the Markdown's path."""
    from raysemi.atomic import write_json, write_text

    write_json(results / f"{name}.json", record, indent)
    write_text(results / f"{name}.md", markdown)
    return results / f"{name}.md"


def measure_runs(out: Path, runs: Mapping[str, Path], measure: Callable[[Path], dict | list],
                 describe: Callable[[str, dict | list], str]) -> dict[str, dict | list]:
    """Measure each run directory of ``runs`` (name → folder) with ``measure`` and keep the results by name in the
    JSON file ``out``, rewritten (atomically) after each run, so a stop keeps what was measured; results of runs
    already in ``out`` that ``runs`` does not name are kept. Prints ``describe(name, result)`` per run and
    returns every result in ``out``."""
    from raysemi.atomic import write_json

    results = json.loads(out.read_text()) if out.exists() else {}
    for name, run_dir in runs.items():
        results[name] = measure(run_dir)
        write_json(out, results, 1)
        print(describe(name, results[name]))
    return results


def add_run_folder_arguments(parser: argparse.ArgumentParser, work: Path) -> None:
    """``--protocol`` (default p2), ``--runs`` (folder names) and ``--work`` (default ``work``): the options of a
    script that measures finished runs in ``<work>/<protocol>/<run>``."""
    parser.add_argument("--protocol", default="p2")
    parser.add_argument("--runs", nargs="+", required=True, help="run folder names under the work folder")
    parser.add_argument("--work", type=Path, default=work, help="the folder holding <protocol>/<run> folders")


def write_run_folder_page(args: argparse.Namespace, out: Path, measure: Callable[[Path], dict | list],
                          describe: Callable[[str, dict | list], str],
                          markdown: Callable[[dict[str, dict | list]], str]) -> None:
    """:func:`measure_runs` (at one torch thread) over the run folders that :func:`add_run_folder_arguments` parsed
    into ``args``, keeping the results in ``out``; then ``markdown`` of every result there, written beside it
    (``.md``)."""
    import torch

    torch.set_num_threads(1)
    results = measure_runs(out, {run: args.work / args.protocol / run for run in args.runs}, measure, describe)
    out.with_suffix(".md").write_text(markdown(results))
