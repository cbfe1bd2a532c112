"""Write P2's split files (committed beside this script; rerun only to re-derive them).

P2 is clip-disjoint: clip 0006R0 (101 frames of CamVid's train split) is held out of training and is the
report split (``val.txt``: headline numbers only). CamVid's own val split, 101 frames of clip 0016E5, is the
selection split (``selection.txt``: every hyperparameter choice is scored there), held out of training too.
The training pool is the rest: 0001TP (62) and 0016E5's 204 train frames = 266 images.

Why those 101 frames for selection: they are the only labelled frames outside the report clip and outside the
labeled clip (0001TP, whose frames would score a choice on neighbours of the 12 labels); they are CamVid's own
published val split, a contiguous 6.7 s stretch of 0016E5 (frames 7959-8159, every second frame), so no pool
frame lies inside it (the nearest, 7920 and 8190, are about 1 s away); and they are another drive than the
report clip, so a choice tuned on them is not tuned on 0006R0. Until issue 35 they were unlabeled pool frames.

``labeled.txt`` is a seeded draw of ``--labels`` images from clip ``--labeled-clip`` (0001TP; the project's
split tool, :func:`raysemi.data.splits.make_split`), ``unlabeled.txt`` the rest of the pool (images only),
``all_labeled.txt`` the whole pool with masks (the all-labels run), ``val.txt`` the held-out clip,
``selection.txt`` CamVid's val split.

Why the labels come from one clip: 12 labels drawn from the whole pool scored 0.345 on the held-out clip
against 0.365 for all 367 (seed 0, 1,000 iterations; the 367-frame pool of before issue 35): the pool's frames
are so alike that 12 random ones carry nearly all it holds, leaving no headroom. 12 labels of the dusk clip
0001TP left 13 points of headroom, and unlabeled frames of the other clips then carry what the labels lack (the
common case of annotating one drive and recording many).

Usage (from the repository root)::

    python experiments/protocols/make_p2_camvid_splits.py [--root DIR] [--labels 12] [--labeled-clip 0001TP]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from raysemi.data.formats import Sample, open_format
from raysemi.data.splits import complement, make_split, write_split_file

HELD_OUT_CLIP = "0006R0"  # the report split
SELECTION_SPLIT = "val"  # CamVid's own val split (101 frames of 0016E5): the selection split
OUT = Path(__file__).resolve().parent / "p2_camvid"


def clip(sample: Sample) -> str:
    return sample.image.name.split("_")[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="../shared/data/camvid-180x240")
    parser.add_argument("--labels", type=int, default=12, help="labeled images drawn from the training pool")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--labeled-clip", default="0001TP",
                        help="draw the labeled images from this clip only ('' for the whole pool)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    reader = open_format("generic", Path(args.root))
    train = reader.samples("train")
    held_out = [s for s in train if clip(s) == HELD_OUT_CLIP]
    selection = reader.samples(SELECTION_SPLIT)
    pool = [s for s in train if clip(s) != HELD_OUT_CLIP]
    candidates = [s for s in pool if clip(s) == args.labeled_clip] if args.labeled_clip else pool
    labeled = make_split(candidates, count=args.labels, seed=args.seed).labeled
    unlabeled = complement(pool, labeled)
    write_split_file(args.out / "labeled.txt", labeled, reader.root)
    write_split_file(args.out / "unlabeled.txt", [Sample(s.image, None) for s in unlabeled], reader.root)
    write_split_file(args.out / "all_labeled.txt", pool, reader.root)
    write_split_file(args.out / "val.txt", held_out, reader.root)
    write_split_file(args.out / "selection.txt", selection, reader.root)
    print(f"{len(labeled)} labeled, {len(unlabeled)} unlabeled, {len(held_out)} report ({HELD_OUT_CLIP}), "
          f"{len(selection)} selection (CamVid's {SELECTION_SPLIT}) -> {args.out}")


if __name__ == "__main__":
    main()
