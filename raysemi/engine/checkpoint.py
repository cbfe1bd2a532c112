"""Checkpoints in ``<run.dir>/checkpoints/step_<N>/``, written atomically.

Each holds ``model.pt`` (the eval model's weights only: a plain state dict that loads with
``torch.load(weights_only=True)``), ``training_state.pt`` (every model, optimizer, LR scheduler and AMP
scaler state, also tensors and primitives only), ``config.yaml`` (the resolved config) and ``meta.json``
(step, class names). A checkpoint is assembled in a hidden temporary folder and renamed into place, so a crash
mid-write never leaves a folder that :func:`latest_checkpoint` would pick up. With ``train.keep_best``,
``checkpoints/best/`` holds the checkpoint of the best val mIoU so far (its ``meta.json`` says ``step`` and
``miou``); pruning to the newest ``train.keep_checkpoints`` never touches it. Only rank 0 writes checkpoints,
so a staging folder found at the next write is a dead writer's, and is removed then.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from raysemi.atomic import remove_staging_leftovers, staging_dir, storage_errors
from raysemi.config import Config
from raysemi.errors import CheckpointError, RaysemiError
from raysemi.models import unwrap

PREFIX = "step_"
BEST = "best"


@dataclass(frozen=True)
class CheckpointFiles:
    path: Path

    @property
    def model(self) -> Path:
        return self.path / "model.pt"

    @property
    def training_state(self) -> Path:
        return self.path / "training_state.pt"

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def meta(self) -> Path:
        return self.path / "meta.json"

    def read_meta(self) -> dict[str, Any]:
        return json.loads(self.meta.read_text())


@dataclass
class TrainingState:
    """The live objects a checkpoint saves and restores: what ``training_state.pt`` holds, as a dict of
    tensors and primitives: ``step``, ``models`` (each model's state dict, DDP unwrapped), ``optimizer``,
    ``scheduler``, ``scaler`` (AMP), ``rng_cpu`` and, on CUDA, ``rng_cuda`` (so dropout draws continue where
    they stopped)."""

    models: dict[str, nn.Module]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def state_dict(self, step: int) -> dict[str, Any]:
        state = {
            "step": step,
            "models": {name: unwrap(m).state_dict() for name, m in self.models.items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng_cpu": torch.get_rng_state(),
        }
        if self.device.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> int:
        """Restore every object from ``state`` (:meth:`state_dict`'s form); return its step."""
        for name, model in self.models.items():
            unwrap(model).load_state_dict(state["models"][name])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng_cpu"])
        if "rng_cuda" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng_cuda"], self.device)
        return int(state["step"])


def save_checkpoint(run_dir: Path, step: int, state: TrainingState, eval_model: nn.Module, cfg: Config,
                    classes: list[str], palette: Any, miou: float | None = None) -> CheckpointFiles:
    """Write the step's checkpoint (:func:`write_checkpoint`): ``eval_model``'s weights as ``model.pt``,
    ``state`` as ``training_state.pt``, the config, and ``meta.json`` (method, classes, palette). With
    ``miou`` (``train.keep_best``) it is ``checkpoints/best`` and its meta holds that val mIoU."""
    meta = {"method": cfg.method, "classes": classes, "palette": palette}
    if miou is not None:
        meta["miou"] = miou
    return write_checkpoint(run_dir, step, eval_model.state_dict(), state.state_dict(step), cfg.to_yaml(), meta,
                            keep=cfg.train.keep_checkpoints, name=BEST if miou is not None else None)


def restore_checkpoint(checkpoint: CheckpointFiles, state: TrainingState) -> int:
    """Load ``checkpoint``'s training state into ``state``; return the step it was written at."""
    return state.load_state_dict(load_tensors(checkpoint.training_state))


def initialise_models(checkpoint: CheckpointFiles, models: dict[str, nn.Module], origin: str) -> list[str]:
    """Load into ``models`` the weights of ``checkpoint``'s models of the same names (``run.init_from``,
    named by ``origin`` in the error); return those names. No shared name: :class:`RaysemiError`."""
    saved = load_tensors(checkpoint.training_state)["models"]
    shared = [name for name in models if name in saved]
    if not shared:
        raise RaysemiError(f"run.init_from={origin}: its models ({', '.join(saved)}) share no "
                           f"name with this run's ({', '.join(models)})")
    for name in shared:
        unwrap(models[name]).load_state_dict(saved[name])
    return shared


def write_checkpoint(
    run_dir: Path,
    step: int,
    eval_weights: dict[str, torch.Tensor],
    training_state: dict[str, Any],
    config_yaml: str,
    meta: dict[str, Any],
    keep: int = 2,
    name: str | None = None,
) -> CheckpointFiles:
    """Write ``checkpoints/step_<step>`` atomically and prune to the newest ``keep``; with ``name`` (``best``)
    write ``checkpoints/<name>`` instead, replacing the previous one, outside the newest-``keep`` list."""
    parent = run_dir / "checkpoints"
    parent.mkdir(parents=True, exist_ok=True)
    final = parent / (name or f"{PREFIX}{step:08d}")
    remove_staging_leftovers(parent, final.name if name else f"{PREFIX}*")  # writers killed before their rename
    with storage_errors(final, f"the step-{step} checkpoint"), staging_dir(final, replace=True) as staging:
        save_tensors(eval_weights, staging / "model.pt")
        save_tensors(training_state, staging / "training_state.pt")
        (staging / "config.yaml").write_text(config_yaml)
        (staging / "meta.json").write_text(json.dumps({"step": step, **meta}, indent=1))
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old.path, ignore_errors=True)
    return CheckpointFiles(final)


def save_tensors(obj: Any, path: Path) -> None:
    """``torch.save`` through a Python file, so a full disk raises ``OSError`` (ENOSPC) rather than the
    zip writer's bare ``RuntimeError``."""
    with path.open("wb") as handle:
        torch.save(obj, handle)


def list_checkpoints(run_dir: Path) -> list[CheckpointFiles]:
    """Complete checkpoints of a run, oldest first (temporary folders are never listed)."""
    parent = run_dir / "checkpoints"
    if not parent.is_dir():
        return []
    found = [CheckpointFiles(p) for p in parent.iterdir() if p.name.startswith(PREFIX) and p.is_dir()]
    return sorted((c for c in found if c.meta.is_file()), key=lambda c: c.path.name)


def best_checkpoint(run_dir: Path) -> CheckpointFiles | None:
    """``checkpoints/best`` (``train.keep_best``), whose ``meta.json`` holds its ``step`` and ``miou``."""
    best = CheckpointFiles(run_dir / "checkpoints" / BEST)
    return best if best.meta.is_file() else None


def latest_checkpoint(run_dir: Path) -> CheckpointFiles | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def resolve_checkpoint(path: str | Path) -> CheckpointFiles:
    """A checkpoint folder (``checkpoints/best`` included), or a run directory (→ its newest checkpoint)."""
    path = Path(path).expanduser()
    if (path / "model.pt").is_file() and (path / "meta.json").is_file():
        return CheckpointFiles(path)
    latest = latest_checkpoint(path) if path.is_dir() else None
    if latest is None:
        raise CheckpointError(f"{path}: not a checkpoint (model.pt + meta.json) nor a run directory holding one")
    return latest


def load_tensors(path: Path) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` with a one-line error for a missing or corrupt file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: not found") from None
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise CheckpointError(f"{path}: unreadable checkpoint file ({type(exc).__name__})") from None
