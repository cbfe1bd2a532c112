"""``metrics.jsonl`` (one JSON object per logged step) and optional W&B, behind one ``log`` call.

W&B (``tracking.wandb.mode``: disabled | offline | online) is initialised here, on rank 0 only, as Ray Train
V2 requires. Its API key comes only from the environment (``WANDB_API_KEY``) or ``wandb login``; raysemi never
writes it anywhere.
"""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path
from typing import Any

from raysemi.atomic import storage_errors, write_text
from raysemi.config import Config
from raysemi.data.splits import read_split_counts


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The records of ``metrics.jsonl``. A last line without its newline is a write cut short by a crash
    (every record is written whole, newline included) and is left out; resume then rewrites the file."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    lines = path.read_text().split("\n")[:-1]  # the part after the last newline is empty or torn
    return [json.loads(line) for line in lines if line.strip()]


def best_of(records: list[dict[str, Any]], final_miou: float, final_step: int) -> dict[str, float | int]:
    """``best_miou`` and ``best_step`` over the run's evaluations (``metrics.jsonl`` records with ``val``, the
    final one included); the earliest step wins a tie."""
    evaluations = [(r["val"]["miou"], -r["step"]) for r in records if isinstance(r.get("val"), dict)]
    miou, negative_step = max(evaluations, default=(final_miou, -final_step))
    return {"best_miou": miou, "best_step": -negative_step}


def truncate_metrics(run_dir: Path, after_step: int) -> None:
    """Drop records logged after ``after_step`` (work a resumed run will redo), keeping one continuous log."""
    kept = [r for r in read_metrics(run_dir) if r.get("step", 0) <= after_step]
    path = run_dir / "metrics.jsonl"
    if path.is_file():
        write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


class Tracker:
    """Rank-0 logger: appends to ``metrics.jsonl`` and mirrors to W&B when enabled.

    A step's W&B values (metrics, mask overlays, images) are gathered into one row and sent as one ``log`` call
    when a later step arrives or the run closes: W&B then writes every step's row whole, whatever the timing of
    its own background writer."""

    def __init__(self, cfg: Config, run_dir: Path, resume_step: int):
        self.path = run_dir / "metrics.jsonl"
        truncate_metrics(run_dir, resume_step)
        self.wandb_run = _init_wandb(cfg, run_dir) if cfg.tracking.wandb.mode != "disabled" else None
        self._row_step: int | None = None
        self._row: dict[str, Any] = {}

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        record = {"step": step, **{k: _jsonable(v) for k, v in metrics.items()}}
        with storage_errors(self.path, f"the step-{step} metrics"), self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        self._add_to_row(step, _flatten(metrics))

    def _add_to_row(self, step: int, values: dict[str, Any]) -> None:
        if self.wandb_run is None:
            return
        if self._row_step is not None and step != self._row_step:
            self._send_row()
        self._row_step = step
        self._row.update(values)

    def _send_row(self) -> None:
        if self._row_step is not None:
            self.wandb_run.log(self._row, step=self._row_step)
        self._row_step, self._row = None, {}

    def log_images(self, step: int, key: str, images: list) -> None:
        """``(H, W, 3)`` uint8 arrays as one W&B image list (W&B only: metrics.jsonl holds numbers)."""
        if self.wandb_run is not None:
            import wandb

            self._add_to_row(step, {key: [wandb.Image(image) for image in images]})

    def log_masks(self, step: int, key: str, images: list, masks: dict[str, list], class_names: list[str]) -> None:
        """W&B images with mask overlays: ``images`` ``(H, W, 3)`` uint8, ``masks`` ``{"ground_truth": [(H, W)
        class ids], "prediction": [...]}``, classes named (255 = ignore, named so); W&B only."""
        if self.wandb_run is None:
            return
        import wandb

        labels = {i: name for i, name in enumerate(class_names)} | {255: "ignore"}
        logged = [wandb.Image(image, masks={kind: {"mask_data": maps[i], "class_labels": labels}
                                            for kind, maps in masks.items()})
                  for i, image in enumerate(images)]
        self._add_to_row(step, {key: logged})

    def close(self, summary: dict[str, Any] | None = None) -> None:
        if self.wandb_run is not None:
            self._send_row()
            if summary:
                self.wandb_run.summary.update(_flatten(summary))
            self.wandb_run.finish()
            self.wandb_run = None


def _init_wandb(cfg: Config, run_dir: Path):
    import wandb

    w = cfg.tracking.wandb
    facts = sweep_facts(cfg, run_dir)
    run = wandb.init(
        project=w.project,
        entity=w.entity,
        group=w.group,
        name=cfg.run.name or run_dir.name,
        id=_wandb_id(run_dir),
        resume="allow",
        mode=w.mode,
        dir=str(run_dir),
        config=cfg.run_dump() | facts | split_extras(run_dir),
        tags=[f"{key}={value}" if key != "method" else str(value) for key, value in facts.items()],
    )
    run.define_metric("val/miou", summary="max")  # a sweep's runs compare by their best evaluation
    return run


def sweep_facts(cfg: Config, run_dir: Path) -> dict[str, Any]:
    """What a sweep groups runs by, as top-level W&B config keys and tags: ``method``, ``label_fraction``
    (labeled / train images with masks, the one meaning it has everywhere, from the run's ``split.json``),
    ``label_count``, ``seed`` and ``protocol`` (``data.protocol``, else ``split_file`` or ``random``); beside
    them ``unmasked_count`` and ``unlabeled_dir_count``, the unlabeled images without masks (config only)."""
    protocol = cfg.data.protocol or ("split_file" if cfg.data.labeled_split else "random")
    counts = read_split_counts(run_dir)
    if counts is None:  # a run from before split.json: its split files cannot tell masked from unmasked
        labeled = _count_lines(run_dir / "labeled.txt")
        fraction = None if cfg.data.labeled_split else cfg.data.label_fraction
        return {"method": cfg.method, "label_fraction": fraction, "label_count": labeled,
                "seed": cfg.run.seed, "protocol": protocol}
    return {"method": cfg.method, "label_fraction": round(counts["label_fraction"], 4),
            "label_count": counts["labeled"], "seed": cfg.run.seed, "protocol": protocol}


def split_extras(run_dir: Path) -> dict[str, int]:
    """The unlabeled images outside the label fraction (W&B config keys, not tags)."""
    counts = read_split_counts(run_dir) or {}
    return {f"{key}_count": counts[key] for key in ("unmasked", "unlabeled_dir") if key in counts}


def _count_lines(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.strip()) if path.is_file() else 0


def _wandb_id(run_dir: Path) -> str:
    """A stable id per run directory, so a resumed run continues the same W&B run."""
    path = run_dir / "wandb_id.txt"
    if not path.is_file():
        path.write_text(uuid.uuid4().hex[:12])
    return path.read_text().strip()


def _flatten(metrics: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}/"))
        elif value is not None:
            flat[name] = value
    return flat


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def log_report(cfg: Config, sweep_dir: Path, summary, files: list[Path]) -> None:
    """Log a sweep's report (its table and PNG plots) as one W&B run in the sweep's group."""
    import wandb

    w = cfg.tracking.wandb
    group = w.group or sweep_dir.name
    run = wandb.init(project=w.project, entity=w.entity, group=group, name=f"{group}-report", job_type="report",
                     mode=w.mode, dir=str(sweep_dir), reinit="create_new")
    run.log({"report": wandb.Table(dataframe=summary),
             **{f.stem: wandb.Image(str(f)) for f in files if f.suffix == ".png"}})
    run.finish()
