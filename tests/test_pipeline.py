from pathlib import Path

from raysemi.data.formats import Sample
from raysemi.data.pipeline import plan_records, val_records

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
