"""The ``raysemi`` command: train, eval, predict, tune, sweep, report, analyze, data synth|split|check.

User errors (bad config, bad data, bad checkpoint) print one ``error:`` line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from raysemi.errors import ConfigError, DataError, RaysemiError, find_user_error

console = Console(stderr=False)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args) or 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - user errors become one line; others keep their traceback
        user_error = exc if isinstance(exc, RaysemiError) else find_user_error(exc)
        if user_error is None:
            raise
        print(f"error: {user_error}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    """The ``raysemi`` command and its subcommands, each group built by its own function."""
    parser = argparse.ArgumentParser(prog="raysemi", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    add_model_commands(commands)
    data = commands.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    add_data_commands(data)
    add_split_command(data)
    add_search_commands(commands)
    add_analysis_commands(commands)
    return parser


def add_model_commands(commands) -> None:
    """``train``, ``eval``, ``predict``, ``export``."""
    train = commands.add_parser("train", help="train and evaluate a method (default: synthetic data, supervised)")
    train.add_argument("-c", "--config", help="YAML config (default: the embedded default)")
    train.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=200 method=supervised")
    train.set_defaults(handler=cmd_train)

    evaluate = commands.add_parser("eval", help="evaluate a checkpoint on its config's val split")
    evaluate.add_argument("--checkpoint", required=True, help="checkpoint folder or run directory")
    evaluate.add_argument("overrides", nargs="*", help="config overrides, e.g. eval.mode=slide")
    evaluate.set_defaults(handler=cmd_eval)

    predict = commands.add_parser("predict", help="segment a folder of images")
    predict.add_argument("--checkpoint", required=True)
    predict.add_argument("--images", required=True, type=Path)
    predict.add_argument("--out", required=True, type=Path)
    predict.add_argument("overrides", nargs="*")
    predict.set_defaults(handler=cmd_predict)

    export = commands.add_parser("export", help="write a checkpoint's model as TorchScript or an ExportedProgram")
    export.add_argument("--checkpoint", required=True, help="checkpoint folder or run directory")
    export.add_argument("--format", required=True, dest="export_format", help="torchscript or exported_program")
    export.add_argument("--out", required=True, type=Path, help="file to write, e.g. model.ts or model.pt2")
    export.add_argument("--size", help="H,W of the example image traced (default: the config's data.crop_size); "
                                       "TorchScript traces the model at that size")
    export.set_defaults(handler=cmd_export)


def add_data_commands(data) -> None:
    """``data synth`` and ``data check``."""
    synth = data.add_parser("synth", help="write the synthetic dataset")
    synth.add_argument("--out", type=Path, help="folder (default: the cache used by training)")
    synth.add_argument("--num-train", type=int, default=400)
    synth.add_argument("--num-val", type=int, default=100)
    synth.add_argument("--height", type=int, default=96)
    synth.add_argument("--width", type=int, default=128)
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(handler=cmd_synth)

    check = data.add_parser("check", help="report every problem in a dataset in one pass")
    check.add_argument("root", type=Path)
    check.add_argument("--format", default="generic")
    check.add_argument("--splits", nargs="+", default=["train", "val"])
    check.add_argument("--val-split", default="val", help="the split whose images all need masks (default: val)")
    check.add_argument("--unlabeled-dir", help="folder of extra unlabeled images inside ROOT (data.unlabeled_dir)")
    check.add_argument("--mask-encoding", default="auto", choices=("auto", "label_ids", "train_ids"),
                       help="how masks store classes (cityscapes: label ids or train ids; as data.mask_encoding)")
    check.set_defaults(handler=cmd_check)


def add_split_command(data) -> None:
    """``data split``: draw or import a split, with the weak labels of its unlabeled images."""
    split = data.add_parser("split", help="write labeled.txt / unlabeled.txt for a label fraction or count")
    split.add_argument("root", type=Path)
    split.add_argument("--format", default="generic", help="generic, voc, cityscapes, cocostuff10k, ade20k")
    split.add_argument("--split", default="train", help="the dataset split to divide")
    split.add_argument("--protocol", help="a published protocol instead of --split (voc: classic = labeled from the "
                                          "1,464 fine images, blended = from trainaug; both leave the rest of "
                                          "trainaug unlabeled); with --import, the imported images must be in its "
                                          "labeled pool and the rest of trainaug is unlabeled")
    amount = split.add_mutually_exclusive_group(required=True)
    amount.add_argument("--fraction", help="labeled share of the images with masks, e.g. 1/16, 1/8, 0.25")
    amount.add_argument("--count", type=int, help="number of labeled images, e.g. 92 or 1464")
    amount.add_argument("--import", dest="import_file", type=Path,
                        help="a published labeled split file: 'image mask' paths (UniMatch, CPS), bare ids "
                             "(TorchSemiSeg VOC) or flattened Cityscapes pairs (TorchSemiSeg)")
    split.add_argument("--seed", type=int, default=0)
    split.add_argument("--unlabeled-dir", help="folder of extra unlabeled images (no masks) inside ROOT, appended "
                                                "to unlabeled.txt (as data.unlabeled_dir)")
    split.add_argument("--out", type=Path, required=True, help="folder for labeled.txt and unlabeled.txt")
    split.add_argument("--val-split", help="the split no labeled or unlabeled image may be in (default: val, "
                                           "where the dataset has one)")
    split.add_argument("--mask-encoding", default="auto", choices=("auto", "label_ids", "train_ids"),
                       help="how masks store classes (cityscapes: label ids or train ids; as data.mask_encoding)")
    split.add_argument("--tags", action="store_true",
                       help="also write unlabeled_tags.txt: each unlabeled image's classes, from its mask")
    split.add_argument("--boxes", action="store_true",
                       help="also write unlabeled_boxes.txt: each unlabeled image's boxes (VOC: Annotations/*.xml; "
                            "otherwise one box per object of a thing class of its mask, as data.boxes draws them), "
                            "and print the share of labelled pixels whose class the boxes alone fix")
    split.add_argument("--things", help="with --boxes: the thing classes, comma-separated ids (data.boxes.things; "
                                        "default: the dataset's, docs/data.md)")
    split.add_argument("--min-box-share", type=float, help="with --boxes: data.boxes.min_share (default 0.0005)")
    split.add_argument("--box-merge-radius", type=float, help="with --boxes: data.boxes.merge_radius (default 0.01)")
    split.add_argument("--pairs", action="store_true",
                       help="also write pairs.txt: a reference image for each labeled image (SimFormer), preferring "
                            "one that shares exactly one novel class, else a base class")
    split.add_argument("--novel", help="novel class ids for --pairs, comma-separated (default: a quarter of the "
                                       "classes drawn with --seed, the draw of simformer.novel_fraction=0.25 with "
                                       "simformer.class_seed=SEED)")
    split.set_defaults(handler=cmd_split)


def add_search_commands(commands) -> None:
    """``submit``, ``tune``, ``sweep``."""
    submit = commands.add_parser("submit", help="run `train`, `tune` or `sweep` as a Ray job on a cluster")
    submit.add_argument("--address", help="the cluster's dashboard, e.g. http://127.0.0.1:8265 (default: RAY_ADDRESS)")
    submit.add_argument("--storage", required=True,
                        help="absolute path every node mounts (run.dir=STORAGE/NAME), or an object-store URI "
                             "(s3://..., gs://...: run.sync_to=STORAGE/NAME)")
    submit.add_argument("--name", help="the run's name under STORAGE (default: COMMAND-DATE-TIME); the Ray job id "
                                       "is NAME-DATE-TIME, so a named run can be submitted again to resume it")
    submit.add_argument("--runtime-env", type=Path, default=Path("cluster/runtime_env.yaml"),
                        help="runtime_env YAML (default: cluster/runtime_env.yaml, which installs the project)")
    submit.add_argument("--no-wait", action="store_true", help="return once submitted instead of following the logs")
    submit.add_argument("job", nargs=argparse.REMAINDER, help="-- then train|tune|sweep and their arguments")
    submit.set_defaults(handler=cmd_submit)

    tune = commands.add_parser("tune", help="search a method's hyperparameters: Ray Tune, Optuna, ASHA")
    tune.add_argument("-c", "--config", help="YAML config of the runs to tune (default: the embedded default)")
    tune.add_argument("--sweep", required=True, type=Path, help="sweep file: space, metric, samples, scheduler")
    tune.add_argument("--out", type=Path, help="sweep folder (default: the config's run.dir)")
    tune.add_argument("--resume", action="store_true", help="continue the interrupted sweep in --out")
    tune.add_argument("overrides", nargs="*", help="dotted overrides of the config, e.g. train.steps=300")
    tune.set_defaults(handler=cmd_tune)

    sweep = commands.add_parser("sweep", help="every method at every label fraction and seed, as Tune trials")
    sweep.add_argument("-c", "--config", help="YAML config shared by the runs (default: the embedded default)")
    sweep.add_argument("--methods", required=True, help="comma-separated, e.g. supervised,cps,cac")
    sweep.add_argument("--fractions", required=True, help="comma-separated label fractions (labeled / train images "
                                                          "with masks), e.g. 1/16,1/8,1/4")
    sweep.add_argument("--seeds", default="0", help="comma-separated; each seed draws its own split and init")
    sweep.add_argument("--retries", type=int, default=0, help="times a failing run is retried before recorded")
    sweep.add_argument("--out", type=Path, help="sweep folder (default: the config's run.dir)")
    sweep.add_argument("--resume", action="store_true", help="continue the interrupted sweep in --out")
    sweep.add_argument("overrides", nargs="*", help="dotted overrides of the config, e.g. train.steps=300")
    sweep.set_defaults(handler=cmd_sweep)


def add_analysis_commands(commands) -> None:
    """``report`` and ``analyze calibration|pseudo-labels|gradcam|compare``."""
    report = commands.add_parser("report", help="table and plots of every finished run under a folder")
    report.add_argument("runs", type=Path, help="a run directory or a folder of runs (a sweep)")
    report.add_argument("--out", type=Path, help="where the CSV, Markdown and PNG files go (default: RUNS/report)")
    report.add_argument("--per-class", action="store_true", help="add per-class IoU columns")
    report.add_argument("--baseline", default="supervised",
                        help="the method every other is paired with, seed by seed at each label fraction "
                             "(paired.md, paired.json; default: supervised)")
    report.add_argument("--allow-mixed-code", action="store_true",
                        help="pair runs that recorded different code versions anyway (the paired table flags them)")
    report.set_defaults(handler=cmd_report)

    analyze = commands.add_parser("analyze", help="look into trained checkpoints").add_subparsers(
        dest="analyze_command", required=True)
    calibration = analyze.add_parser("calibration", help="accuracy against confidence on the val split")
    calibration.add_argument("--checkpoint", required=True)
    calibration.add_argument("--bins", type=int, default=10)
    calibration.add_argument("--out", type=Path, default=Path("analysis"))
    calibration.set_defaults(handler=cmd_calibration)
    pseudo = analyze.add_parser("pseudo-labels", help="per class: the share of pixels a confidence threshold lets "
                                "through, and how often those are right")
    pseudo.add_argument("--checkpoint", required=True)
    pseudo.add_argument("--thresholds", nargs="+", type=float, default=[0.8, 0.95],
                        help="confidence thresholds τ in [0, 1] (default: 0.8 0.95)")
    pseudo.add_argument("--images", choices=("unlabeled", "val"), default="unlabeled",
                        help="the config split's unlabeled images that have a mask on disk (default), or val")
    pseudo.add_argument("--out", type=Path, default=Path("analysis"))
    pseudo.set_defaults(handler=cmd_pseudo_labels)
    gradcam = analyze.add_parser("gradcam", help="Grad-CAM of one pixel's prediction as a heat-map overlay")
    gradcam.add_argument("--checkpoint", required=True)
    gradcam.add_argument("--image", required=True, type=Path)
    gradcam.add_argument("--pixel", required=True, help="Y,X in the image")
    gradcam.add_argument("--layer", help="dotted module name (default: the decoder features)")
    gradcam.add_argument("--out", type=Path, default=Path("analysis/gradcam.png"))
    gradcam.set_defaults(handler=cmd_gradcam)
    compare = analyze.add_parser("compare", help="input | ground truth | each model's prediction, as one grid")
    compare.add_argument("--checkpoints", required=True, nargs="+")
    compare.add_argument("--images", required=True, type=Path)
    compare.add_argument("--limit", type=int, default=8, help="images in the grid (the first N by name)")
    compare.add_argument("--out", type=Path, default=Path("analysis/compare.png"))
    compare.set_defaults(handler=cmd_compare)


def cmd_train(args: argparse.Namespace) -> int:
    from raysemi.config import load_config
    from raysemi.ray.train import train

    cfg = load_config(args.config, args.overrides)
    summary = train(cfg)
    print_results(summary, title=f"{cfg.method} on {cfg.data.format}")
    print(f"final val mIoU: {summary['miou']:.4f} (best {summary['best_miou']:.4f} at step {summary['best_step']})")
    print(f"run directory: {summary['run_dir']}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from raysemi.engine.inference import evaluate_checkpoint, load_eval_model

    loaded = load_eval_model(args.checkpoint, args.overrides)
    summary = evaluate_checkpoint(loaded).summary(loaded.class_names, loaded.class_groups)
    print_results(summary, title=f"eval of {loaded.checkpoint.path}")
    print(json.dumps({key: value for key, value in summary.items() if key != "iou"}))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from raysemi.engine.inference import check_prediction_outputs, input_images, load_eval_model, predict_folder

    check_prediction_outputs(input_images(args.images), args.images, args.out)  # before the model loads
    loaded = load_eval_model(args.checkpoint, args.overrides)
    count = predict_folder(loaded, args.images, args.out)
    print(f"wrote {count} label maps and colorized PNGs to {args.out}")
    return 0


def int_pair(text: str, flag: str, form: str, example: str) -> tuple[int, int]:
    """``"40,64"`` → ``(40, 64)``; anything else is a one-line error naming ``flag`` and its ``form``."""
    try:
        a, b = (int(v) for v in text.split(","))
    except ValueError:
        raise DataError(f"{flag}={text!r}: expected {form} (two integers), e.g. {flag} {example}") from None
    return a, b


def cmd_export(args: argparse.Namespace) -> int:
    from raysemi.engine.predictor import export

    size = int_pair(args.size, "--size", "H,W", "512,512") if args.size else None
    out = export(args.checkpoint, args.export_format, args.out, size)
    print(f"wrote {out}: (N, 3, H, W) float images in 0..1 -> (N, C, H, W) logits")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from raysemi.data.synthetic import ensure_synthetic, write_synthetic

    if args.out:
        write_synthetic(args.out, args.num_train, args.num_val, args.height, args.width, args.seed)
        root = args.out
    else:
        root = ensure_synthetic(args.num_train, args.num_val, args.height, args.width, args.seed)
    print(f"synthetic dataset: {root}")
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    """Draw or import the split, check it (duplicates, val images), then write it and print its counts."""
    from raysemi.data.dataset import extra_unlabeled
    from raysemi.data.formats import open_format
    from raysemi.data.splits import check_split, count_split, find_protocol, write_split_files

    reader = open_format(args.format, args.root, args.mask_encoding)
    rule = box_rule(args)
    extra = extra_unlabeled(reader, args.unlabeled_dir, "--unlabeled-dir")
    if args.import_file:
        split, notes = imported_split(reader, args, extra)
        source = str(args.import_file)
    else:
        split, notes = drawn_split(reader, args, extra), []
        source = f"the split drawn from {args.protocol or args.split}"
    check_split(split, val_samples(reader, args.val_split), source)
    write_split_files(reader, split, args.out, args.tags, args.boxes, rule)
    if args.boxes:
        print_box_summary(reader, split.unlabeled, args.out / "unlabeled_boxes.txt", rule)
    if args.pairs:
        write_pairs(reader, split.labeled, args.novel, args.seed, args.out / "pairs.txt")
    counts = count_split(split, extra)
    print(f"{counts.labeled} labeled, {len(split.unlabeled)} unlabeled ({counts.unmasked + counts.unlabeled_dir} "
          f"without masks) -> {args.out}")
    print(f"label fraction {counts.labeled}/{counts.masked} = {counts.label_fraction:.4g} (labeled / images with "
          "masks)")
    if args.protocol and not args.import_file:
        published = find_protocol(reader.name, args.protocol).counts
        if counts.labeled not in published:
            notes.append(f"published {args.protocol} counts are {', '.join(map(str, published))}")
    for note in notes:
        print(f"note: {note}")
    return 0


def box_rule(args: argparse.Namespace):
    """``data.boxes`` (:class:`raysemi.sections.BoxesConfig`) from ``--things``, ``--min-box-share`` and
    ``--box-merge-radius``; a bad value is a one-line error naming its flag."""
    from pydantic import ValidationError

    from raysemi.sections import BoxesConfig

    try:
        things = None if args.things is None else [int(c) for c in args.things.split(",")]
    except ValueError:
        raise DataError(f"--things={args.things!r}: expected comma-separated class ids such as 8,9,10") from None
    given = {"things": things, "min_share": args.min_box_share, "merge_radius": args.box_merge_radius}
    flags = {"things": "--things", "min_share": "--min-box-share", "merge_radius": "--box-merge-radius"}
    try:
        return BoxesConfig(**{key: value for key, value in given.items() if value is not None})
    except ValidationError as exc:
        error = exc.errors()[0]
        key = str(error["loc"][0])
        raise DataError(f"{flags[key]}={given[key]}: {error['msg']}") from None


def print_box_summary(reader, samples: list, boxes_file: Path, rule) -> None:
    """How many boxes the weak images got, and the share of their labelled pixels whose class the box raster
    alone fixes (:func:`raysemi.data.weak_labels.summarize_boxes`)."""
    from raysemi.data.weak_labels import read_boxes_file, stuff_classes, summarize_boxes, thing_classes

    boxes = read_boxes_file(boxes_file, reader.root, reader.classes.num_classes)
    summary = summarize_boxes(reader, samples, boxes, rule)
    names = reader.classes.names
    things = ", ".join(names[c] for c in thing_classes(reader.classes, rule)) or "none"
    stuff = ", ".join(names[c] for c in stuff_classes(reader.classes, rule)) or "none"
    print(f"boxes of {things} (stuff, no boxes: {stuff}): {summary.boxes / max(summary.images, 1):.1f} per image "
          f"({summary.fewest}-{summary.most}) -> {boxes_file}")
    print(f"the box raster alone fixes the class of {100 * summary.fixed_share:.1f} % of the labelled pixels "
          f"({summary.fixed_pixels} of {summary.labelled_pixels})")


def drawn_split(reader, args: argparse.Namespace, extra: list):
    """``--fraction`` or ``--count`` of ``--split`` (or of ``--protocol``'s pool), with the ``extra`` images
    appended to the unlabeled ones."""
    from raysemi.data.splits import Split, draw_split, parse_fraction

    fraction = parse_fraction(args.fraction) if args.fraction else None
    split = draw_split(reader, args.split, fraction, args.count, args.seed, args.protocol)
    return Split(split.labeled, split.unlabeled + extra)


def imported_split(reader, args: argparse.Namespace, extra: list) -> tuple:
    """``--import``: the published labeled images (paths, ids or TorchSemiSeg's flattened Cityscapes pairs,
    looked up in ``--split`` or ``--protocol``'s labeled pool); the unlabeled ones are the rest of ``--split``
    (or of the protocol's train split) plus ``extra``. Returns the split and notes to print.

    Raises:
        DataError: with ``--protocol``, a labeled image outside the protocol's labeled pool.
    """
    from raysemi.data.dataset import check_mask_sample
    from raysemi.data.splits import Split, complement, find_protocol, read_published_split, split_samples

    protocol = find_protocol(reader.name, args.protocol) if args.protocol else None
    pool_name = protocol.labeled_pool if protocol else args.split
    pool = split_samples(reader, pool_name)
    labeled = read_published_split(args.import_file, reader, pool, f"split {pool_name}")
    check_mask_sample(reader, labeled, args.import_file)
    train = split_samples(reader, protocol.train_split) if protocol else pool
    outside = [s.image for s in labeled if s.image not in {t.image for t in pool}]
    if protocol and outside:
        raise DataError(f"{args.import_file}: {len(outside)} labeled image(s) are not in protocol {args.protocol}'s "
                        f"labeled pool (split {pool_name}), e.g. {outside[0]}")
    notes = []
    if outside:
        notes.append(f"{len(outside)} imported labeled image(s) are not in split {pool_name}, so unlabeled.txt is "
                     f"the rest of {pool_name} only; for UniMatch's and CPS's VOC pools use --split trainaug")
    return Split(labeled, complement(train, labeled) + extra), notes


def val_samples(reader, name: str | None) -> list:
    """The val images a split is checked against: ``--val-split``, else the format's ``val`` split where the
    dataset has one (none otherwise)."""
    from raysemi.data.splits import split_samples

    if name:
        return split_samples(reader, name)
    try:
        return reader.samples("val")
    except DataError:
        return []


def write_pairs(reader, samples: list, novel_text: str | None, seed: int, path: Path) -> None:
    """The SimFormer pair table of ``samples`` (tags from their masks) → ``path``; prints how partners were found."""
    from raysemi.data.pairs import KINDS, pair_table, write_pairs_file
    from raysemi.data.weak_labels import ClassSplit

    try:
        novel = None if novel_text is None else tuple(int(c) for c in novel_text.split(","))
    except ValueError:
        raise DataError(f"--novel={novel_text!r}: expected comma-separated class ids such as 8,9,10") from None
    _, novel = ClassSplit(novel, seed=seed).resolve(reader.classes.num_classes)
    images, partner, kind = pair_table(reader, samples, novel, seed)
    write_pairs_file(path, images, partner, kind, reader.root)
    counts = ", ".join(f"{int((kind == k).sum())} {name}" for k, name in enumerate(KINDS))
    print(f"pairs for novel classes {novel}: {counts} -> {path}")


def cmd_check(args: argparse.Namespace) -> int:
    from raysemi.data.dataset import extra_unlabeled, find_problems
    from raysemi.data.formats import open_format

    reader = open_format(args.format, args.root, args.mask_encoding)
    problems, total, masked, unlabeled = [], 0, 0, 0
    for split in args.splits:
        try:
            samples = reader.samples(split)
        except RaysemiError as exc:
            problems.append(str(exc))
            continue
        total += len(samples)
        unmasked = [s for s in samples if s.mask is None]
        masked += len(samples) - len(unmasked)
        if split == args.val_split:  # evaluation needs every mask
            problems += [f"{s.image}: val image without a mask" for s in unmasked]
        else:
            unlabeled += len(unmasked)
        problems += find_problems(reader, samples, threads=os.cpu_count() or 2)
    try:
        extra = extra_unlabeled(reader, args.unlabeled_dir, "--unlabeled-dir")
    except RaysemiError as exc:
        problems.append(str(exc))
        extra = []
    total += len(extra)
    unlabeled += len(extra)
    problems += find_problems(reader, extra, threads=os.cpu_count() or 2)
    for problem in problems:
        print(problem)
    where = ", ".join(args.splits + ([args.unlabeled_dir] if args.unlabeled_dir else []))
    print(f"checked {total} samples in {where}: {masked} with masks, {unlabeled} unlabeled (no mask), "
          f"{len(problems)} problem(s)")
    return 1 if problems else 0


def cmd_submit(args: argparse.Namespace) -> int:
    from raysemi.ray.jobs import submit

    job = args.job[1:] if args.job[:1] == ["--"] else args.job
    return submit(job, args.address, args.storage, args.name, args.runtime_env, wait=not args.no_wait)


def cmd_tune(args: argparse.Namespace) -> int:
    from raysemi.config import load_config
    from raysemi.ray.tune import search
    from raysemi.sweeps import load_sweep

    cfg = load_config(args.config, args.overrides)
    spec = load_sweep(args.sweep, cfg)
    sweep_dir = args.out or Path(cfg.run.dir)
    return finish_sweep(cfg, sweep_dir, search(cfg, spec, sweep_dir, args.resume), spec.metric)


def cmd_sweep(args: argparse.Namespace) -> int:
    from raysemi.config import load_config
    from raysemi.data.splits import parse_fraction
    from raysemi.ray.tune import grid_sweep
    from raysemi.sweeps import apply_values

    cfg = load_config(args.config, args.overrides)
    methods = comma_list(args.methods, "--methods")
    fractions = comma_list(args.fractions, "--fractions")
    for fraction in fractions:
        parse_fraction(fraction)
    seeds = [parse_int(seed, "--seeds") for seed in comma_list(args.seeds, "--seeds")]
    for method in methods:
        apply_values(cfg, {"method": method})  # an unknown method is a one-line error before anything runs
    sweep_dir = args.out or Path(cfg.run.dir)
    outcomes = grid_sweep(cfg, methods, fractions, seeds, sweep_dir, args.resume, args.retries)
    return finish_sweep(cfg, sweep_dir, outcomes, "val_miou")


def comma_list(text: str, option: str) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise ConfigError(f"{option} {text!r}: give a comma-separated list, e.g. 1/16,1/8")
    return items


def parse_int(text: str, option: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"{option}: {text!r} is not an integer") from None


def finish_sweep(cfg, sweep_dir: Path, outcomes: list, metric: str) -> int:
    """Print every trial and each failure's one-line reason; report and plot the finished runs (logged to W&B
    when enabled; mirrored with ``run.sync_to``). Exit status 1 only when every trial failed."""
    from raysemi.analysis.report import write_report
    from raysemi.tracking.tracker import log_report

    table = Table(title=f"sweep {sweep_dir}")
    for column in ("trial", "values", "status", "steps", metric):
        table.add_column(column)
    for o in outcomes:
        values = ", ".join(f"{k}={v}" for k, v in o.params.items())
        table.add_row(o.name, values, o.status, str(o.steps), "-" if o.metric is None else f"{o.metric:.4f}")
    console.print(table)
    for o in outcomes:
        if o.error:
            print(f"failed after {o.attempts} attempt{'s' if o.attempts > 1 else ''}: {o.name}: {o.error}")
    if any(o.status == "finished" for o in outcomes):
        summary, files = write_report(sweep_dir / "trials", sweep_dir / "report")
        print("report: " + ", ".join(str(f) for f in files))
        if cfg.tracking.wandb.mode != "disabled":
            log_report(cfg, sweep_dir, summary, files)
    if cfg.run.sync_to:  # the trials mirrored themselves; the sweep's own files follow
        from raysemi.engine.mirror import RunMirror

        RunMirror(cfg.run.sync_to, sweep_dir).push_run_files(skip=frozenset({"trials", "tune"}))
        print(f"mirrored to {cfg.run.sync_to}")
    print(f"summary: {sweep_dir.expanduser().resolve() / 'summary.json'}")
    return 0 if any(o.status != "failed" for o in outcomes) else 1


def cmd_report(args: argparse.Namespace) -> int:
    from raysemi.analysis.report import find_runs, write_report
    from raysemi.engine.storage import check_output_folder

    out = args.out or args.runs / "report"
    check_output_folder(out, "--out")
    runs = find_runs(args.runs)
    summary, files = write_report(args.runs, out, args.per_class, runs)
    table = Table(title=f"runs under {args.runs}")
    for column in ("method", "labels", "runs", "final val mIoU", "best val mIoU"):
        table.add_column(column)
    for row in summary.itertuples():
        table.add_row(row.method, row.fraction, str(row.runs), f"{row.miou_mean:.4f} ± {row.miou_std:.4f}",
                      f"{row.best_miou_mean:.4f} ± {row.best_miou_std:.4f}")
    console.print(table)
    files += report_paired_view(runs, out, args.baseline, args.allow_mixed_code)
    print("wrote " + ", ".join(str(f) for f in files))
    return 0


def report_paired_view(runs: list, out: Path, baseline: str, allow_mixed: bool) -> list[Path]:
    """Each method's runs against ``baseline``'s, paired by seed (:mod:`raysemi.bench.sweep_pairs`): one line per
    comparison, one on stderr per pair left out; the files written."""
    from raysemi.bench import pairs, sweep_pairs

    view = sweep_pairs.paired_view([sweep_pairs.run_record(run) for run in runs], baseline, allow_mixed)
    for line in view.refused:
        print(f"paired view: {line}", file=sys.stderr)
    for record in view.records:
        print(f"{record['method']} against {baseline} at {record['fraction']} (seeds {record['seeds']}): "
              f"{pairs.difference_text(record)}" + (" (mixed code versions)" if record["mixed_code"] else ""))
    return sweep_pairs.write_paired_view(view, out)


def cmd_calibration(args: argparse.Namespace) -> int:
    from raysemi.analysis.analyze import write_calibration
    from raysemi.engine.inference import load_eval_model
    from raysemi.engine.storage import check_output_folder

    check_output_folder(args.out, "--out")
    ece, files = write_calibration(load_eval_model(args.checkpoint), args.out, args.bins)
    print(f"expected calibration error {ece:.4f}; wrote {', '.join(str(f) for f in files)}")
    return 0


def cmd_pseudo_labels(args: argparse.Namespace) -> int:
    from raysemi.analysis.analyze import write_pseudo_labels
    from raysemi.engine.inference import load_eval_model
    from raysemi.engine.storage import check_output_folder

    outside = [t for t in args.thresholds if not 0.0 <= t <= 1.0]
    if outside:
        raise DataError(f"--thresholds: {outside[0]} is outside [0, 1]; a threshold is a class probability")
    check_output_folder(args.out, "--out")
    rows, table = write_pseudo_labels(load_eval_model(args.checkpoint), args.out, args.thresholds, args.images)
    print_pseudo_labels(rows, title=f"pseudo-labels of {args.checkpoint} on the {args.images} images")
    print(f"wrote {table}")
    return 0


def cmd_gradcam(args: argparse.Namespace) -> int:
    from raysemi.analysis.analyze import write_gradcam
    from raysemi.engine.inference import load_eval_model
    from raysemi.engine.storage import check_output_file

    pixel = int_pair(args.pixel, "--pixel", "Y,X", "40,64")
    check_output_file(args.out, "--out")
    loaded = load_eval_model(args.checkpoint)
    out, explained = write_gradcam(loaded, args.image, pixel, args.out, args.layer)
    print(f"Grad-CAM of class {loaded.class_names[explained]} at {args.pixel} -> {out}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from raysemi.analysis.analyze import write_comparison
    from raysemi.engine.inference import load_eval_model
    from raysemi.engine.storage import check_output_file

    check_output_file(args.out, "--out")
    out = write_comparison([load_eval_model(c) for c in args.checkpoints], args.images, args.out, args.limit)
    print(f"wrote {out}")
    return 0


def print_results(summary: dict, title: str) -> None:
    table = Table(title=title)
    table.add_column("class")
    table.add_column("IoU", justify="right")
    for name, value in summary["iou"].items():
        table.add_row(name, "-" if value is None else f"{value:.4f}")
    table.add_row("[bold]mIoU[/bold]", f"[bold]{summary['miou']:.4f}[/bold]")
    for key in summary:
        if key.startswith("miou_"):
            table.add_row(f"mIoU {key.removeprefix('miou_')}", f"{summary[key]:.4f}")
    table.add_row("pixel acc", f"{summary['pixel_acc']:.4f}")
    console.print(table)


def print_pseudo_labels(rows: list[dict], title: str) -> None:
    """One line per class, and for each threshold its passed share, recall and precision."""
    from raysemi.analysis.pseudo_labels import COLUMNS, by_class

    thresholds, lines = by_class(rows)
    table = Table(title=title)
    for header in ["class", "pixels", *(f"{c} τ={t:g}" for t in thresholds for c in COLUMNS)]:
        table.add_column(header, justify="left" if header == "class" else "right")
    for name, pixels, values in lines:
        table.add_row(name, str(pixels), *("-" if v is None else f"{v:.3f}" for v in values))
    console.print(table)


if __name__ == "__main__":
    sys.exit(main())
