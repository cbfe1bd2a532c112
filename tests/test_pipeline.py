from pathlib import Path

import numpy as np
import torch

from raysemi.data.formats import GenericFormat, Sample
from raysemi.data.overlapping_crops import OverlappingCrops
from raysemi.data.pipeline import box_raster, plan_records, val_records
from raysemi.data.streams import StreamSpec, stream_decoder
from raysemi.data.transforms import TrainAugment
from raysemi.data.weak_labels import Box, tags_from_masks
from raysemi.methods.cac import CropPairs

SAMPLES = [Sample(Path(f"/d/{i}.png"), Path(f"/d/{i}_m.png")) for i in range(5)]


def test_labeled_stream_repeats_epochs_to_the_run_length():
    records = plan_records(SAMPLES, batch_size=4, total_steps=3, start_step=0, seed=0, stream="labeled")
    assert len(records) == 12
    images = [r["image_path"] for r in records]
    # epochs are permutations of the 5 samples: 5 + 5 + 2
    assert sorted(images[:5]) == sorted(images[5:10]) == sorted(str(s.image) for s in SAMPLES)
    assert images[:5] != images[5:10]  # a fresh order each epoch (for this seed)
    assert len({r["seed"] for r in records}) == 12


def test_resumed_plan_is_the_tail_of_the_full_plan():
    full = plan_records(SAMPLES, 4, total_steps=6, start_step=0, seed=3, stream="labeled")
    resumed = plan_records(SAMPLES, 4, total_steps=6, start_step=4, seed=3, stream="labeled")
    assert resumed == full[16:]


def test_streams_and_seeds_give_different_orders():
    a = plan_records(SAMPLES, 5, 1, 0, seed=0, stream="labeled")
    b = plan_records(SAMPLES, 5, 1, 0, seed=0, stream="unlabeled")
    c = plan_records(SAMPLES, 5, 1, 0, seed=1, stream="labeled")
    assert [r["seed"] for r in a] != [r["seed"] for r in b] != [r["seed"] for r in c]


def test_val_records_pad_to_equal_shards_with_invalid_rows():
    records = val_records(SAMPLES, world_size=4)
    assert len(records) == 8 and [r["valid"] for r in records] == [True] * 5 + [False] * 3
    assert len(val_records(SAMPLES, world_size=1)) == 5


def test_crop_pair_stream_decodes_both_crops_boxes_and_tags(synthetic_root):
    reader = GenericFormat(synthetic_root)
    tags = tags_from_masks(reader, reader.samples("train")[:3])
    samples = [Sample(image, None, ids) for image, ids in tags.items()]
    records = plan_records(samples, batch_size=3, total_steps=1, start_step=0, seed=0, stream="unlabeled")
    crops = OverlappingCrops((32, 48), scale_range=(1.0, 1.0))
    spec = StreamSpec("unlabeled", 3, CropPairs(crops))
    decode = stream_decoder(spec, "generic", str(synthetic_root), TrainAugment((32, 48)))
    out = decode({key: np.array([r[key] for r in records]) for key in records[0]})
    assert out["image"].shape == out["image_2"].shape == (3, 3, 32, 48) and out["image"].dtype == np.uint8
    assert out["valid_pixels"].shape == (3, 2, 32, 48) and out["valid_pixels"].all()  # 48×64 images: no padding
    assert out["crop_boxes"].shape == (3, 2, 4) and out["flips"].shape == (3, 2)
    for record, row in zip(records, out["image_tags"], strict=True):
        assert set(np.flatnonzero(row)) == set(tags[Path(record["image_path"])])


def test_boxes_follow_the_crop_and_padding_is_empty():
    # a 40×60 image whose mask has one class-2 rectangle at rows 10..20, columns 30..50
    image = torch.zeros(3, 40, 60, dtype=torch.uint8)
    mask = torch.zeros(40, 60, dtype=torch.uint8)
    mask[10:20, 30:50] = 2
    boxes = [Box(2, 10, 30, 20, 50)]
    augment = TrainAugment((48, 64), scale_range=(0.6, 1.4), color_jitter=0.0)
    for seed in range(20):
        _, crop_mask, geometry = augment.augment(image, mask, torch.Generator().manual_seed(seed))
        raster = box_raster(boxes, geometry, (40, 60), num_classes=3)
        inside = crop_mask == 2
        assert raster[2][inside].all()  # the box covers the object ...
        assert raster[2].sum() <= inside.sum() + 2 * (raster[2].any(0).sum() + raster[2].any(1).sum())  # ... tightly
        padding = crop_mask == 255
        assert not raster[:, padding].any() and (raster[:, ~padding].sum(0) >= 1).all()
        assert torch.equal(raster[3][~padding].bool(), ~raster[2][~padding].bool())  # channel C: outside boxes
