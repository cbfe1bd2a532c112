"""Write P2's split files (committed beside this script; rerun only to re-derive them).

P2 is clip-disjoint: clip 0006R0 (101 frames of CamVid's train split) is held out of training and is the
evaluation set; the training pool is every frame of the other clips, 0001TP (62) and 0016E5 (204 train + 101
val frames) = 367 images. ``labeled.txt`` is a seeded draw of ``--labels`` images from the pool (the project's
split tool, :func:`raysemi.data.splits.make_split`), ``unlabeled.txt`` the rest (images only),
``all_labeled.txt`` the whole pool with masks (the all-labels run), ``val.txt`` the held-out clip.

Usage (from the repository root)::

    python experiments/protocols/make_p2_camvid_splits.py [--root ../shared/data/camvid-180x240] [--labels 12]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from raysemi.data.formats import Sample, open_format
from raysemi.data.splits import make_split, write_split_file

HELD_OUT_CLIP = "0006R0"
OUT = Path(__file__).resolve().parent / "p2_camvid"


def clip(sample: Sample) -> str:
    return sample.image.name.split("_")[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="../shared/data/camvid-180x240")
    parser.add_argument("--labels", type=int, default=12, help="labeled images drawn from the training pool")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    reader = open_format("generic", Path(args.root))
    train, val = reader.samples("train"), reader.samples("val")
    held_out = [s for s in train if clip(s) == HELD_OUT_CLIP]
    pool = [s for s in train + val if clip(s) != HELD_OUT_CLIP]
    split = make_split(pool, count=args.labels, seed=args.seed)
    write_split_file(OUT / "labeled.txt", split.labeled, reader.root)
    write_split_file(OUT / "unlabeled.txt", [Sample(s.image, None) for s in split.unlabeled], reader.root)
    write_split_file(OUT / "all_labeled.txt", pool, reader.root)
    write_split_file(OUT / "val.txt", held_out, reader.root)
    print(f"{len(split.labeled)} labeled, {len(split.unlabeled)} unlabeled, {len(held_out)} held-out "
          f"({HELD_OUT_CLIP}) -> {OUT}")


if __name__ == "__main__":
    main()
