"""The first CamVid benchmark protocol: CamVid 96×128, the ``experiments/configs/<method>_camvid.yaml`` configs
(EfficientNet-Lite0 with ImageNet weights, batch 8, plus 8 unlabeled for semi-supervised methods), a label
fraction and a seed; the model and batches that the step-timing benchmarks time."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from raysemi.config import Config, load_config
from raysemi.data.formats import open_format
from raysemi.data.splits import parse_fraction, write_split
from raysemi.sections import BoxesConfig

# The step-timing variants: name → (config's method, overrides). CAC's directional loss is on from step 0;
# self_correction times its primary stage (linear mode: the frozen ancillary's forward, then the primary).
TIMED_METHODS: dict[str, tuple[str, tuple[str, ...]]] = {
    "supervised": ("supervised", ()),
    "cps": ("cps", ()),
    "cac": ("cac", ("cac.start_step=0", "cac.rampup_steps=0")),
    "self_correction": ("self_correction", ("self_correction.stage=primary", "self_correction.mode=linear")),
    "simformer": ("simformer", ()),
    "unimatch": ("unimatch", ()),
}


@dataclass(frozen=True)
class CamvidProtocol:
    """Where the protocol's pieces lie: ``configs`` holds ``<method>_camvid.yaml``, ``data`` is the CamVid
    96×128 dataset (generic layout), ``work`` takes the split files the protocol writes."""

    configs: Path
    data: Path
    work: Path

    @classmethod
    def in_checkout(cls, repo: Path) -> CamvidProtocol:
        """The protocol of a raysemi checkout at ``repo``, with the data in ``<repo>/../shared/data``."""
        return cls(repo / "experiments" / "configs", repo.parent / "shared" / "data" / "camvid-96x128",
                   repo / "experiments" / "benchmarks" / "_work")

    def config(self, method: str, labels: str, seed: int, steps: int, run_dir: Path,
               overrides: tuple[str, ...] | list[str] = ()) -> Config:
        """``method``'s CamVid config: ``labels`` is ``all`` or a fraction (``1/16``) of the train images, drawn
        with ``seed`` (also the run's seed); ``steps`` iterations, 2 torch threads, no evaluation or checkpoint
        before the end; ``overrides`` last."""
        fraction = 1.0 if labels == "all" else parse_fraction(labels)
        return load_config(self.configs / f"{method}_camvid.yaml", [
            f"data.root={self.data}", f"data.label_fraction={fraction}", f"data.split_seed={seed}",
            f"run.seed={seed}", f"run.dir={run_dir}", f"train.steps={steps}", "train.torch_threads=2",
            "train.eval_every=0", "train.checkpoint_every=0", *overrides])

    def boxes_split(self, labels: str, seed: int) -> list[str]:
        """Overrides that point at split files of ``labels`` (a fraction) drawn with ``seed``, the unlabeled
        images with boxes derived from their masks (``raysemi data split --boxes``); written once, under
        ``work/splits``."""
        out = self.work / "splits" / f"{labels.replace('/', 'of')}-seed{seed}"
        if not (out / "unlabeled_boxes.txt").is_file():
            write_split(open_format("generic", self.data), "train", parse_fraction(labels), None, seed, out,
                        boxes=True, box_rule=BoxesConfig())
        return [f"data.labeled_split={out / 'labeled.txt'}", f"data.unlabeled_split={out / 'unlabeled.txt'}",
                f"data.unlabeled_boxes={out / 'unlabeled_boxes.txt'}"]

    def timing_config(self, name: str, steps: int, run_dir: Path, overrides: tuple[str, ...] | list[str] = (),
                      ) -> Config:
        """The config a step-timing benchmark times for :data:`TIMED_METHODS` ``name``: seed 0, every label
        for ``supervised`` and ``simformer``, 1/8 for the others (self_correction's unlabeled images with
        boxes)."""
        method, own = TIMED_METHODS[name]
        if method == "self_correction":
            own = (*own, *self.boxes_split("1/8", 0))
        labels = "all" if method in ("supervised", "simformer") else "1/8"
        return self.config(method, labels, 0, steps, run_dir, [*own, *overrides])
