"""Speed choices made by measurement: the memory format (``train.channels_last``) and ``torch.compile`` of the
training step (``train.compile``), on the run's own models, batch and device.

A fixed choice is wrong on some machines: channels-last was 1.34× slower on one 2-core Xeon and 1.27× faster
on another of the same kind. So ``auto`` times a few steps each way at start-up and keeps the faster:

- **Memory format**: after one warm-up step in each format, ``train.probe_steps`` timed steps in each,
  alternating (contiguous, channels-last, contiguous, ...) so that drift in the machine's speed falls on both;
  the faster median wins. Run on *copies* of the models. Skipped where the answer is known: CUDA with AMP
  (tensor-core convolutions want NHWC) → channels-last.
- **Compile**: the method's ``training_step`` (forward and losses; autograd compiles the backward with it)
  under ``torch.compile``. Its first two calls compile (the second recompiles with the step number symbolic);
  then ``train.probe_steps`` compiled and eager steps alternate; a run too short for the probe to be cheap
  skips it (:func:`compile_probe_affordable`). ``auto`` keeps it only when the compile time is repaid by the
  measured gain within the run's remaining steps (:func:`compile_repays`). Measured on the run's real models
  (so the compiled code is the one the run then uses), whose BatchNorm statistics and gradients are restored
  afterwards.

A probe step is the forward, the losses and the backward, without the optimizer step (whose cost is the
same either way), so no weight changes. The RNG state is restored after each probe and the probe's batch is a
copy of the run's first batch, which is put back at the head of its stream: a run whose probe chose
contiguous, eager trains bit for bit as one with ``channels_last=false, compile=false``.

CAC's step cannot be compiled (:data:`UNCOMPILABLE` says why): ``auto`` keeps it eager with the reason logged,
``true`` is a config error; a method whose compile fails otherwise stays eager with the failure's name logged.

A resumed run keeps the choices stored in its checkpoint's ``meta.json`` (``speed``) rather than measuring
again. With several workers every rank probes and the ranks' timings are averaged, so all choose alike;
``compile=auto`` measures single-worker runs only (with DDP the compiled step differs from the probe's).
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from raysemi.errors import ConfigError
from raysemi.methods import Method

RawBatch = dict[str, torch.Tensor]
Prepare = Callable[[str, RawBatch, torch.memory_format], dict[str, torch.Tensor]]  # (stream name, batch, layout)
TrainingStep = Callable[[dict[str, nn.Module], dict[str, dict[str, torch.Tensor]], int], dict[str, torch.Tensor]]

# Methods whose training step torch.compile cannot compile (torch 2.14.1, CPU, tried on the test fixtures by
# experiments/benchmarks/compile_methods.py): name → why. `auto` keeps them eager with this reason logged;
# `train.compile=true` on one is a config error. The others compile with graph breaks where a step reads a
# tensor's value (`.item()`, data-dependent branches, `nonzero`): those parts stay eager.
UNCOMPILABLE: dict[str, str] = {
    "cac": "its chunked contrastive loss writes each chunk's logits into one reused buffer with "
           "torch.mm(out=<a view>), which the compiler's fake tensors cannot run: inductor fails on aten.set_",
}
# `auto` runs the compile probe only where even a short compile costs a small share of the run's eager training
# time, since a probe that loses costs its whole compile. MIN_COMPILE_S: the shortest compile seen was 89 s (P2
# supervised on a 2-core Xeon with AMX, experiments/benchmarks/results/speed_auto-p2-supervised.md; 175 s and
# more on busier machines, results/compile_methods.md); 60 s leaves room for faster ones. MAX_COMPILE_PROBE_SHARE:
# at the threshold an 89 s compile costs 1.5 % of the run, which with the format probe's 1.4 % (P2 supervised)
# keeps a losing probe within issue 41's 3 %. There the compiled step was 8 % slower and the probe's 94 s outweighed
# the 81 s channels-last saved: a 1,000-step P2 run (~300 s eager) now skips it.
MIN_COMPILE_S = 60.0
MAX_COMPILE_PROBE_SHARE = 0.01


@dataclass
class SpeedChoice:
    """What a run chose and why: ``how`` says per choice ``set`` (the config), ``stored`` (a resumed run's
    checkpoint), ``known`` or ``measured`` (with ``timings`` in seconds per step), or ``skipped: <why>``."""

    channels_last: bool = False
    compile: bool = False
    how: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def choices(self) -> dict[str, bool]:
        return {"channels_last": self.channels_last, "compile": self.compile}

    def record(self) -> dict[str, Any]:
        """For ``summary.json`` and the checkpoint's ``meta.json``."""
        return {**self.choices(), "how": dict(self.how), "timings": dict(self.timings)}


def stored_choices(meta: dict[str, Any] | None) -> dict[str, bool] | None:
    """The speed choices a checkpoint's ``meta.json`` holds (None: none, e.g. written before they existed)."""
    speed = (meta or {}).get("speed")
    return None if speed is None else {"channels_last": bool(speed["channels_last"]),
                                       "compile": bool(speed["compile"])}


def known_channels_last(setting: bool | str, device: torch.device, amp: bool) -> bool | None:
    """``train.channels_last`` when true or false; for ``auto``: True on CUDA with AMP, else None (measure)."""
    if setting != "auto":
        return bool(setting)
    return True if device.type == "cuda" and amp else None


def compile_probe_affordable(eager_s: float, steps_left: int) -> bool:
    """Whether a compile of :data:`MIN_COMPILE_S` costs at most :data:`MAX_COMPILE_PROBE_SHARE` of the run's
    eager training time (``steps_left`` steps of ``eager_s`` seconds)."""
    return MIN_COMPILE_S <= MAX_COMPILE_PROBE_SHARE * eager_s * steps_left


def compile_repays(compile_s: float, eager_s: float, compiled_s: float, steps_left: int) -> bool:
    """Whether compiling pays: the seconds saved per step × the remaining steps exceed the compile time."""
    return (eager_s - compiled_s) * steps_left > compile_s


def check_compilable(method_name: str, setting: bool | str) -> None:
    """``train.compile=true`` on a method in :data:`UNCOMPILABLE`: one-line :class:`ConfigError`."""
    if setting is True and method_name in UNCOMPILABLE:
        raise ConfigError(f"train.compile=true: method {method_name} cannot be compiled "
                          f"({UNCOMPILABLE[method_name]}); use train.compile=false or auto")


class SpeedProbe:
    """Makes a run's :class:`SpeedChoice`: :meth:`memory_format` on the built models before they are placed,
    then :meth:`training_step` on the placed models. ``streams`` gives the first batch; afterwards
    :attr:`streams` are the same streams with that batch put back."""

    def __init__(self, cfg: Any, method: Method, device: torch.device, amp: bool, prepare: Prepare,
                 streams: dict[str, Iterator[RawBatch]], start_step: int, world_size: int,
                 stored: dict[str, bool] | None, clock: Callable[[], float] = time.perf_counter):
        self.cfg, self.method, self.device, self.amp, self.prepare = cfg, method, device, amp, prepare
        self.streams, self.start_step, self.world_size, self.clock = streams, start_step, world_size, clock
        self.stored = stored
        self.choice = SpeedChoice()
        self._first: RawBatch | None = None

    def memory_format(self, models: dict[str, nn.Module]) -> torch.memory_format:
        """Choose the layout for ``models`` (built, not yet placed; left untouched) and return it."""
        train, choice = self.cfg.train, self.choice
        known = known_channels_last(train.channels_last, self.device, self.amp)
        if known is not None or self.stored is not None:
            choice.channels_last = known if known is not None else self.stored["channels_last"]
            choice.how["channels_last"] = ("set" if train.channels_last != "auto" else "known" if known is not None
                                           else "stored")
        else:
            contiguous_s, channels_last_s, probe_s = self._time_formats(models)
            choice.channels_last = channels_last_s < contiguous_s
            choice.how["channels_last"] = "measured"
            choice.timings |= {"contiguous_s": contiguous_s, "channels_last_s": channels_last_s,
                               "format_probe_s": probe_s}
        return torch.channels_last if choice.channels_last else torch.contiguous_format

    def training_step(self, models: dict[str, nn.Module]) -> TrainingStep:
        """The method's training step, compiled or not, after choosing on ``models`` (placed)."""
        setting, choice, name = self.cfg.train.compile, self.choice, self.cfg.method
        check_compilable(name, setting)
        if setting != "auto":
            choice.compile, choice.how["compile"] = bool(setting), "set"
        elif self.stored is not None:
            choice.compile, choice.how["compile"] = self.stored["compile"], "stored"
        elif name in UNCOMPILABLE:
            choice.how["compile"] = f"skipped: method {name} cannot be compiled ({UNCOMPILABLE[name]})"
        elif self.world_size > 1:
            choice.how["compile"] = "skipped: auto measures single-worker runs only (set train.compile=true)"
        else:
            return self._measured_compile(models)
        return torch.compile(self.method.training_step) if choice.compile else self.method.training_step

    def log_line(self) -> str:
        """One line: each choice, how it was made and, where measured, its timings."""
        parts = []
        for key, on, off in (("channels_last", "channels-last", "contiguous"), ("compile", "compiled", "eager")):
            how = self.choice.how.get(key, "")
            parts.append(f"{on if self.choice.choices()[key] else off} ({how}{self._timing_text(key)})")
        return "speed: " + ", ".join(parts)

    def _timing_text(self, key: str) -> str:
        t = self.choice.timings
        if key == "channels_last" and "contiguous_s" in t:
            return (f": {t['channels_last_s']:.3f} s/step channels-last, {t['contiguous_s']:.3f} s contiguous; "
                    f"probe {t['format_probe_s']:.1f} s")
        if key == "compile" and "compile_s" in t:
            return (f": {t['compiled_s']:.3f} s/step compiled, {t['eager_s']:.3f} s eager, compile "
                    f"{t['compile_s']:.1f} s, {t['compile_steps_left']:.0f} steps left; "
                    f"probe {t['compile_probe_s']:.1f} s")
        return ""

    # ------------------------------------------------------------------------------------------- measuring

    def _time_formats(self, models: dict[str, nn.Module]) -> tuple[float, float, float]:
        """Median seconds per step contiguous and channels-last (on copies of ``models``), and the probe's cost."""
        began = self.clock()
        steps = {}
        for fmt in (torch.contiguous_format, torch.channels_last):
            copies = {k: copy.deepcopy(m).to(self.device, memory_format=fmt) for k, m in models.items()}
            steps[fmt] = self._probe_step(copies, fmt, self.method.training_step)
        contiguous, channels_last = self._alternate(steps[torch.contiguous_format], steps[torch.channels_last])
        return contiguous, channels_last, self.clock() - began

    def _measured_compile(self, models: dict[str, nn.Module]) -> TrainingStep:
        """Time eager steps; where the run is long enough for a compile probe (:func:`compile_probe_affordable`),
        compile the step and time it against eager on ``models`` (their state restored after), keeping it where
        it repays."""
        began, steps_left = self.clock(), self.cfg.train.steps - self.start_step
        fmt = torch.channels_last if self.choice.channels_last else torch.contiguous_format
        eager_step = self._probe_step(models, fmt, self.method.training_step)
        eager_step()  # warm-up
        eager_s = statistics.median(self._timed(eager_step) for _ in range(self.cfg.train.probe_steps))
        if not compile_probe_affordable(eager_s, steps_left):
            self.choice.how["compile"] = (f"skipped: {steps_left} steps of {eager_s:.3f} s are too short for a "
                                          f"compile probe (≥ {MIN_COMPILE_S:.0f} s would cost more than "
                                          f"{MAX_COMPILE_PROBE_SHARE:.0%} of them)")
            return self.method.training_step
        saved = {k: {n: t.clone() for n, t in m.state_dict().items()} for k, m in models.items()}
        compiled = torch.compile(self.method.training_step)
        try:
            compile_s, eager_s, compiled_s = self._time_compiled(eager_step, self._probe_step(models, fmt, compiled))
        except Exception as error:  # noqa: BLE001 - any failure to compile leaves the run eager, with the reason
            self.choice.how["compile"] = f"skipped: compiling failed ({type(error).__name__})"
            return self.method.training_step
        finally:
            for name, model in models.items():
                model.load_state_dict(saved[name])
        self.choice.compile = compile_repays(compile_s, eager_s, compiled_s, steps_left)
        self.choice.how["compile"] = "measured" if self.choice.compile else "measured: not repaid"
        self.choice.timings |= {"eager_s": eager_s, "compiled_s": compiled_s, "compile_s": compile_s,
                                "compile_steps_left": float(steps_left), "compile_probe_s": self.clock() - began}
        return compiled if self.choice.compile else self.method.training_step

    def _time_compiled(self, eager_step: Callable[[], None],
                       compiled_step: Callable[[], None]) -> tuple[float, float, float]:
        """Seconds spent compiling, and per step eager and compiled (alternating)."""
        first_two = self._timed(compiled_step) + self._timed(compiled_step)  # compile, recompile (step symbolic)
        eager_s, compiled_s = self._alternate(eager_step, compiled_step)
        return max(first_two - 2 * compiled_s, 0.0), eager_s, compiled_s

    def _alternate(self, step_a: Callable[[], None], step_b: Callable[[], None]) -> tuple[float, float]:
        """One warm-up call of each, then ``train.probe_steps`` timed calls of each, alternating; the medians
        (averaged over the workers, so every rank chooses alike)."""
        step_a(), step_b()
        times_a, times_b = [], []
        for _ in range(self.cfg.train.probe_steps):
            times_a.append(self._timed(step_a))
            times_b.append(self._timed(step_b))
        return self._agreed(statistics.median(times_a), statistics.median(times_b))

    def _timed(self, step: Callable[[], None]) -> float:
        began = self.clock()
        step()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return self.clock() - began

    def _agreed(self, a: float, b: float) -> tuple[float, float]:
        if self.world_size == 1:
            return a, b
        values = torch.tensor([a, b], dtype=torch.float64, device=self.device)
        dist.all_reduce(values)
        mean_a, mean_b = (values / self.world_size).tolist()
        return mean_a, mean_b

    def _probe_step(self, models: dict[str, nn.Module], fmt: torch.memory_format,
                    step: TrainingStep) -> Callable[[], None]:
        """A call that runs ``step``'s forward, losses and backward on a fresh copy of the first batch in
        ``fmt`` (step numbers counting up from the run's) and drops the gradients; the RNG state is put back."""
        raw = self._first_batch()
        calls = iter(range(self.start_step, self.start_step + 10**9))  # a new step number each call, as in training

        def run() -> None:
            rng = _rng_state(self.device)
            batch = {name: self.prepare(name, {k: v.clone() for k, v in b.items()}, fmt) for name, b in raw.items()}
            try:
                with torch.autocast(self.device.type, enabled=self.amp):
                    loss = step(models, batch, next(calls))["loss"]
                loss.backward()
            finally:  # also after a failed compile
                for model in models.values():
                    model.zero_grad(set_to_none=True)
                _set_rng_state(self.device, rng)
        return run

    def _first_batch(self) -> RawBatch:
        """The streams' next batch (read once, then put back at the head of each stream)."""
        if self._first is None:
            self._first = {name: next(stream) for name, stream in self.streams.items()}
            self.streams = {name: _put_back(self._first[name], stream) for name, stream in self.streams.items()}
        return self._first


def _put_back(first: RawBatch, rest: Iterator[RawBatch]) -> Iterator[RawBatch]:
    yield first
    yield from rest


def _rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _set_rng_state(device: torch.device, state: tuple[torch.Tensor, torch.Tensor | None]) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)
