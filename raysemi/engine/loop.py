"""The per-worker training loop: models, optimizer, AMP, resume, evaluation, checkpoints and logging.

It knows nothing of Ray: the Ray layer (``raysemi.ray.train``) hands it a :class:`WorkerEnv` holding this
worker's rank, device and data iterators, and a ``report`` callback. With a world size above 1 the process
group is already initialised (gloo on CPU, nccl on GPU); the loop wraps models in DDP itself.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from raysemi.config import Config
from raysemi.data.transforms import normalize
from raysemi.data.views import PlainCrops, View
from raysemi.engine.checkpoint import (
    CheckpointFiles,
    TrainingState,
    best_checkpoint,
    initialise_models,
    latest_checkpoint,
    resolve_checkpoint,
    restore_checkpoint,
    save_checkpoint,
)
from raysemi.engine.evaluate import (
    class_groups,
    evaluate,
    predict_logits,
    prediction_panels,
    with_box_channels,
)
from raysemi.engine.mirror import mirror_for
from raysemi.engine.optim import build_optimizer
from raysemi.engine.probe import SpeedProbe, TrainingStep, stored_choices
from raysemi.engine.rundir import write_json
from raysemi.engine.watchdog import StallError, watched
from raysemi.errors import RaysemiError
from raysemi.methods import Method, build_method
from raysemi.models import unwrap
from raysemi.progress import say
from raysemi.tracking import Tracker, best_of, read_metrics

RawBatch = dict[str, torch.Tensor]
PREDICTION_IMAGES = 4  # val images logged to W&B as input | truth | prediction at the end of a run
PLAIN_CROPS = PlainCrops()  # the view of val batches


@dataclass
class WorkerEnv:
    rank: int
    world_size: int
    device: torch.device
    streams: dict[str, Iterator[RawBatch]]  # this worker's training batches, starting at plan_start_step
    val_batches: Callable[[], Iterable[RawBatch]]  # a fresh pass over this worker's share of val
    report: Callable[[dict[str, Any]], None]
    plan_start_step: int = 0


@dataclass(frozen=True)
class RunInfo:
    run_dir: Path
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    ignore_index: int = 255


def prepare_batch(
    raw: RawBatch, device: torch.device, memory_format: torch.memory_format = torch.contiguous_format,
    view: View = PLAIN_CROPS,
) -> dict[str, torch.Tensor]:
    """Move a stream batch to ``device``: the uint8 images of its ``view`` (``view.image_keys``; a val batch's
    and a plain stream's are ``image``) → normalised float in ``memory_format``, its label maps
    (``view.label_keys``) → int64.

    Rows with ``valid == False`` (padding that evens out the val shards) get an all-ignore mask.
    """
    batch = {k: v.to(device, non_blocking=True) for k, v in raw.items()}
    for key in view.image_keys:
        if key in batch:  # the layout is set on the uint8 tensor (cheap); normalising keeps it
            batch[key] = normalize(batch[key].contiguous(memory_format=memory_format))
    for key in view.label_keys:
        if key in batch:
            batch[key] = batch[key].long()
    if "mask" in batch and "valid" in batch:
        batch["mask"][~batch.pop("valid").bool()] = 255
    return batch


class TrainingRun:
    """One worker's share of a run. Build it, then call :meth:`fit`."""

    def __init__(self, cfg: Config, run: RunInfo, env: WorkerEnv):
        self.cfg, self.run, self.env = cfg, run, env
        self.is_chief = env.rank == 0
        self.use_amp = cfg.train.amp and env.device.type == "cuda"
        torch.manual_seed(cfg.run.seed)  # same initial weights on every rank (DDP also broadcasts them)
        self.method: Method = build_method(cfg)
        self.mirror = mirror_for(cfg.run.sync_to, run.run_dir)
        if self.mirror is not None:  # a fresh node: the newest checkpoint comes from the mirror
            self.mirror.pull()
        self.views = {name: spec.view for name, spec in self.method.streams().items()}  # which keys are images
        stall = cfg.train.stall_timeout_s  # each wait for data ends after this long (0: never)
        self.streams = {name: watched(stream, f"data stream '{name}'", stall) for name, stream in env.streams.items()}
        self.models, self.training_step = self._built_for_speed(self.method.build_models(len(run.class_names)))
        self.optimizer, self.scheduler = build_optimizer(self.models, cfg.optim, cfg.train.steps)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.state = TrainingState(self.models, self.optimizer, self.scheduler, self.scaler, env.device)
        self.step = self._restore()
        self.tracker = Tracker(cfg, run.run_dir, self.step) if self.is_chief else None
        self.last_checkpoint: CheckpointFiles | None = latest_checkpoint(run.run_dir)
        self.last_val: dict[str, Any] | None = None
        kept_best = best_checkpoint(run.run_dir) if cfg.train.keep_best else None
        self.kept_best_miou = kept_best.read_meta()["miou"] if kept_best else float("-inf")
        self.final_report: dict[str, Any] | None = None
        self.first_val_batch: RawBatch | None = None
        self.last_unlabeled: RawBatch | None = None

    def _built_for_speed(self, built: dict[str, nn.Module]) -> tuple[dict[str, nn.Module], TrainingStep]:
        """Place ``built`` in the memory format :class:`SpeedProbe` chooses; return them and the training step
        (compiled or not). A resumed run keeps its checkpoint's choices; the probe puts its batch back."""
        checkpoint = latest_checkpoint(self.run.run_dir)
        start = int(checkpoint.read_meta()["step"]) if checkpoint else 0
        probe = SpeedProbe(self.cfg, self.method, self.env.device, self.use_amp,
                           lambda name, raw, fmt: prepare_batch(raw, self.env.device, fmt, self.views[name]),
                           self.streams, start, self.env.world_size,
                           stored_choices(checkpoint.read_meta() if checkpoint else None))
        self.memory_format = probe.memory_format(built)
        models = {name: self._place(m) for name, m in built.items()}
        training_step = probe.training_step(models)
        self.streams, self.speed = probe.streams, probe.choice
        if self.is_chief:
            say(probe.log_line())
        return models, training_step

    def _place(self, model: nn.Module) -> nn.Module:
        model.to(self.env.device, memory_format=self.memory_format)  # the layout applies to 4-D weights only
        if self.env.world_size == 1 or not any(p.requires_grad for p in model.parameters()):
            return model  # a frozen model (e.g. a teacher) needs no DDP
        if self.cfg.model.sync_bn and self.env.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        device_ids = [self.env.device] if self.env.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    def _restore(self) -> int:
        """Load the newest checkpoint of this run directory, if any; return the step to continue from.

        A fresh run with ``run.init_from`` starts its models from that checkpoint's models of the same names.
        """
        checkpoint = latest_checkpoint(self.run.run_dir)
        if checkpoint is None:
            if self.cfg.run.init_from:
                self._initialise_from(resolve_checkpoint(self.cfg.run.init_from))
            return 0
        step = restore_checkpoint(checkpoint, self.state)
        if self.is_chief:
            say(f"resuming {self.run.run_dir} from step {step}")
        return step

    def _initialise_from(self, checkpoint: CheckpointFiles) -> None:
        shared = initialise_models(checkpoint, self.models, str(self.cfg.run.init_from))
        if self.is_chief:
            say(f"initialised {', '.join(shared)} from {checkpoint.path}")

    def fit(self) -> dict[str, Any] | None:
        """Train to ``train.steps``; rank 0 returns (and writes) the summary. A wait for data longer than
        ``train.stall_timeout_s`` ends the run with :class:`StallError` (see :meth:`_stalled`)."""
        try:
            return self._fit()
        except StallError as stall:
            raise self._stalled(stall) from None

    def _fit(self) -> dict[str, Any] | None:
        self._skip_consumed_batches()
        self.started = (time.perf_counter(), self.step)  # for the elapsed time and ETA of the log lines
        timer = _IntervalTimer()
        sums: dict[str, torch.Tensor] = {}
        for model in self.models.values():
            model.train()
        while self.step < self.cfg.train.steps:
            with timer.waiting():
                raw = {name: next(stream) for name, stream in self.streams.items()}
            self.last_unlabeled = raw.get("unlabeled")  # a few of its images' pseudo-labels go to W&B
            logged = self._train_step({name: self._prepare(b, self.views[name]) for name, b in raw.items()})
            self.step += 1
            timer.tick(sum(len(b["image"]) for b in raw.values()) * self.env.world_size)
            for key, value in logged.items():
                sums[key] = sums[key] + value if key in sums else value
            self._after_step(sums, timer)
        summary = self._finish()
        if self.final_report is not None:
            self.env.report(self.final_report)
        return summary

    def _prepare(self, raw: RawBatch, view: View = PLAIN_CROPS) -> dict[str, torch.Tensor]:
        return prepare_batch(raw, self.env.device, self.memory_format, view)

    def _train_step(self, batch: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        with torch.autocast(self.env.device.type, enabled=self.use_amp):
            outputs = self.training_step(self.models, batch, self.step)
        loss = outputs["loss"]
        if not torch.isfinite(loss):
            raise RaysemiError(f"the loss became {loss.item()} at step {self.step}; lower optim.lr or check the data")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return {k: v.detach().float() for k, v in outputs.items()}  # summed on device, read at log steps

    def _after_step(self, sums: dict[str, torch.Tensor], timer: _IntervalTimer) -> None:
        train = self.cfg.train
        final = self.step == train.steps
        metrics: dict[str, Any] = {}
        if self.step % train.log_every == 0 or final:
            metrics.update(self._averaged(sums, timer.steps))
            metrics.update(timer.rates())
            metrics["lr"] = self.scheduler.get_last_lr()[0]
            sums.clear()
            timer.reset()
        if final or (train.eval_every and self.step % train.eval_every == 0):
            metrics["val"] = self.last_val = self.evaluate()
            self._log_masks()
            if train.keep_best and self.last_val["miou"] > self.kept_best_miou:
                self.kept_best_miou = self.last_val["miou"]
                self._checkpoint(best=True)
        checkpointed = final or bool(train.checkpoint_every and self.step % train.checkpoint_every == 0)
        if checkpointed:
            self._checkpoint()
        if metrics and self.tracker is not None:
            self.tracker.log(self.step, metrics)
            say(_log_line(self.step, train.steps, metrics, *self._elapsed_and_eta()))
        if checkpointed and self.mirror is not None and self.is_chief:  # with the log up to the checkpoint
            self.mirror.push_run_files()
        if metrics:
            report = {"step": self.step, **_scalars(metrics, self.last_val)}
            if final:  # reported once summary.json exists: a scheduler may end the run at this report
                self.final_report = report
            else:
                self.env.report(report)

    def _elapsed_and_eta(self) -> tuple[float, float]:
        """Seconds since :meth:`fit` began, and the seconds the remaining steps take at this run's pace."""
        began, first_step = self.started
        elapsed = time.perf_counter() - began
        done = max(self.step - first_step, 1)
        return elapsed, elapsed / done * (self.cfg.train.steps - self.step)

    def _averaged(self, sums: dict[str, torch.Tensor], steps: int) -> dict[str, float]:
        """Means over the interval and over workers."""
        if not sums:
            return {}
        keys = sorted(sums)
        values = torch.stack([sums[k] for k in keys]).to(self.env.device, torch.float64) / max(steps, 1)
        if self.env.world_size > 1:
            dist.all_reduce(values)
            values /= self.env.world_size
        return dict(zip(keys, values.cpu().tolist(), strict=True))

    def evaluate(self) -> dict[str, Any]:
        """mIoU over the whole val set: each worker evaluates its shard; the confusion matrices are summed."""
        self._sync_buffers()
        model = self.method.eval_model(self.models)
        raw_batches = self._keeping_first(watched(iter(self.env.val_batches()), "the val data (evaluation)",
                                                  self.cfg.train.stall_timeout_s))
        batches = (with_box_channels(self._prepare(b)) for b in raw_batches)
        confusion = evaluate(model, batches, len(self.run.class_names), self.cfg.eval, self.run.ignore_index)
        confusion.matrix = confusion.matrix.to(self.env.device)
        if self.env.world_size > 1:
            dist.all_reduce(confusion.matrix)
        return confusion.summary(self.run.class_names, class_groups(self.cfg, self.method))

    def _keeping_first(self, batches: Iterable[RawBatch]) -> Iterator[RawBatch]:
        """``batches``, keeping the first as ``first_val_batch`` (for the prediction images)."""
        for number, batch in enumerate(batches):
            if number == 0:
                self.first_val_batch = batch
            yield batch

    def _log_predictions(self) -> None:
        """A few val images as input | ground truth | prediction panels, to W&B (rank 0, at the end)."""
        if self.tracker is None or self.tracker.wandb_run is None or self.first_val_batch is None:
            return
        raw = {k: v[:PREDICTION_IMAGES] for k, v in self.first_val_batch.items()}
        model = self.method.eval_model(self.models)
        was_training = model.training
        model.eval()
        with torch.no_grad():
            images = with_box_channels(self._prepare(raw))["image"]
            predicted = predict_logits(model, images, self.cfg.eval).argmax(1)
        model.train(was_training)
        self.tracker.log_images(self.step, "predictions",
                                prediction_panels(raw["image"], raw["mask"], predicted, self.run.palette))

    def _log_masks(self) -> None:
        """At an evaluation, to W&B (rank 0): a few val images with ground-truth and predicted masks
        (``val_masks``) and, for a method with unlabeled data, a few of the latest unlabeled images with the
        eval model's pseudo-labels (``pseudo_labels``: its argmax, before any confidence threshold)."""
        if self.tracker is None or self.tracker.wandb_run is None or self.first_val_batch is None:
            return
        names = list(self.run.class_names)
        val = {k: v[:PREDICTION_IMAGES] for k, v in self.first_val_batch.items()}
        predicted = self._predicted(val)
        self.tracker.log_masks(self.step, "val_masks", _hwc(val["image"]),
                               {"ground_truth": _maps(val["mask"]), "prediction": _maps(predicted)}, names)
        if self.last_unlabeled is not None:
            unlabeled = {"image": self.last_unlabeled["image"][:PREDICTION_IMAGES]}
            self.tracker.log_masks(self.step, "pseudo_labels", _hwc(unlabeled["image"]),
                                   {"pseudo_label": _maps(self._predicted(unlabeled))}, names)

    def _predicted(self, raw: RawBatch) -> torch.Tensor:
        """``(N, H, W)`` class ids of the eval model for a raw batch (``image`` uint8, maybe ``boxes``)."""
        model = self.method.eval_model(self.models)
        was_training = model.training
        model.eval()
        with torch.no_grad():
            images = with_box_channels(prepare_batch(dict(raw), self.env.device))["image"]
            predicted = predict_logits(model, images, self.cfg.eval).argmax(1)
        model.train(was_training)
        return predicted

    def _sync_buffers(self) -> None:
        """Give every rank rank 0's BatchNorm statistics: DDP syncs buffers only at the start of a training
        forward, so after the last step each rank holds the statistics of its own last batch."""
        if self.env.world_size > 1:
            for model in self.models.values():
                for buffer in unwrap(model).buffers():
                    dist.broadcast(buffer, src=0)

    def _stalled(self, stall: StallError) -> StallError:
        """The run's one-line end after a stall, once its progress is saved: a single worker checkpoints the
        steps done since the last checkpoint (with several, the others may be stalled in a collective, so the
        newest checkpoint stays as it is); the same command resumes from it."""
        if self.env.world_size == 1 and self.step > self._checkpoint_step():
            self._checkpoint()
        resume = (f"the same command resumes from step {self._checkpoint_step()}" if self.last_checkpoint
                  else "no checkpoint yet: the same command starts again")
        return StallError(
            f"train.stall_timeout_s={self.cfg.train.stall_timeout_s:g}: {stall} at step {self.step}/"
            f"{self.cfg.train.steps} (Ray Data may have no free CPU to decode on: free some, or use "
            f"scaling.num_workers=0); {self.run.run_dir} keeps its checkpoints and {resume}")

    def _checkpoint_step(self) -> int:
        return int(self.last_checkpoint.read_meta()["step"]) if self.last_checkpoint else 0

    def _checkpoint(self, best: bool = False) -> None:
        """Write the step's checkpoint (collective: every rank waits for rank 0); ``best`` writes
        ``checkpoints/best`` with the latest val mIoU in its meta instead."""
        if self.is_chief:
            written = save_checkpoint(self.run.run_dir, self.step, self.state, self.method.eval_model(self.models),
                                      self.cfg, list(self.run.class_names), self.run.palette,
                                      miou=self.last_val["miou"] if best else None, speed=self.speed.record())
            if not best:
                self.last_checkpoint = written
            if self.mirror is not None:
                self.mirror.push_checkpoint(written)
        if self.env.world_size > 1:
            dist.barrier()

    def _skip_consumed_batches(self) -> None:
        """After an in-run restart the streams start at the plan's first step; skip to the checkpoint's."""
        for _ in range(self.step - self.env.plan_start_step):
            for stream in self.streams.values():
                next(stream)

    def _finish(self) -> dict[str, Any] | None:
        # A run resumed at its last step trains nothing: evaluate then, on every rank (it is collective).
        final = self.last_val or self.evaluate()
        if self.tracker is None:
            return None
        summary = {
            "method": self.cfg.method,
            "steps": self.cfg.train.steps,
            **{key: value for key, value in final.items() if key.startswith("miou")},
            "pixel_acc": final["pixel_acc"],
            "iou": final["iou"],
            **best_of(read_metrics(self.run.run_dir), final["miou"], self.cfg.train.steps),
            "checkpoint": str(self.last_checkpoint.path) if self.last_checkpoint else None,
            "run_dir": str(self.run.run_dir),
            "speed": self.speed.record(),
        }
        kept_best = best_checkpoint(self.run.run_dir) if self.cfg.train.keep_best else None
        if kept_best is not None:
            summary["best_checkpoint"] = str(kept_best.path)
        write_json(self.run.run_dir / "summary.json", summary)
        self._log_predictions()
        self.tracker.close({"val": final, "best_miou": summary["best_miou"], "best_step": summary["best_step"]})
        if self.mirror is not None:
            self.mirror.push_run_files()
        return summary


class _IntervalTimer:
    """Wall time and data-wait time since the last reset."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.start, self.wait, self.steps, self.images = time.perf_counter(), 0.0, 0, 0

    @contextlib.contextmanager
    def waiting(self):
        began = time.perf_counter()
        yield
        self.wait += time.perf_counter() - began

    def tick(self, images: int) -> None:
        self.steps += 1
        self.images += images

    def rates(self) -> dict[str, float]:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        return {
            "steps_per_s": self.steps / elapsed,
            "images_per_s": self.images / elapsed,
            "data_wait_frac": self.wait / elapsed,
        }


def _hwc(images: torch.Tensor) -> list:
    """``(N, 3, H, W)`` uint8 → N ``(H, W, 3)`` numpy arrays."""
    return list(images.permute(0, 2, 3, 1).cpu().numpy())


def _maps(masks: torch.Tensor) -> list:
    """``(N, H, W)`` class ids → N ``(H, W)`` uint8 numpy arrays."""
    return list(masks.to(torch.uint8).cpu().numpy())


def _scalars(metrics: dict[str, Any], last_val: dict[str, Any] | None) -> dict[str, float]:
    """The numbers a report carries; ``val_miou`` is the latest evaluation's, so schedulers that compare
    trials at a step (ASHA's rungs) find it in every report after the first evaluation."""
    flat = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
    if last_val is not None:
        flat["val_miou"] = last_val["miou"]
    return flat


def _log_line(step: int, total: int, metrics: dict[str, Any], elapsed: float, eta: float) -> str:
    """One terminal line per log step: ``step 20/100 | loss 0.41 | ... | 0:00:12 elapsed, ETA 0:00:48``."""
    parts = [f"step {step}/{total}"]
    if "loss" in metrics:
        parts.append(f"loss {metrics['loss']:.4f}")
    if "steps_per_s" in metrics:
        parts.append(f"{metrics['steps_per_s']:.2f} it/s, data wait {100 * metrics['data_wait_frac']:.1f}%")
    if "val" in metrics:
        parts.append(f"val mIoU {metrics['val']['miou']:.4f}")
    parts.append(f"{_clock(elapsed)} elapsed, ETA {_clock(eta)}")
    return " | ".join(parts)


def _clock(seconds: float) -> str:
    """``3725.4`` → ``1:02:05``."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def set_torch_threads(cfg: Config, local_workers: int) -> int:
    """Intra-op threads per worker: ``train.torch_threads``, else the node's cores shared among its workers."""
    threads = cfg.train.torch_threads or max(1, (os.cpu_count() or 1) // max(local_workers, 1))
    torch.set_num_threads(threads)
    return threads

