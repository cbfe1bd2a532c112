"""W&B that answers sweep questions, checked offline by reading the run's ``.wandb`` file (no network)."""

import json
import struct
import time

from raysemi.ray.train import train
from tests.conftest import fast_config


def read_wandb_records(path):
    """The protobuf records of a ``.wandb`` file: a 7-byte header, then LevelDB-log chunks (4-byte CRC, 2-byte
    length, 1-byte type: 1 full, 2 first, 3 middle, 4 last) in 32 KiB blocks."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, records, pending, offset, block = path.read_bytes(), [], b"", 7, 32768
    while offset + 7 <= len(data):
        if block - offset % block < 7:  # a block's tail too short for a header is padding
            offset += block - offset % block
            continue
        length, kind = struct.unpack("<HB", data[offset + 4 : offset + 7])
        pending += data[offset + 7 : offset + 7 + length]
        offset += 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
        elif kind == 0:
            break
    return records


def read_finished_wandb_file(path, timeout_s: float = 60.0):
    """The records of ``path`` once its ``exit`` record is there: ``finish()`` can return while W&B's service
    process still flushes the file (seen under load: a 64 KiB file without its history, summary and exit
    records)."""
    deadline = time.monotonic() + timeout_s
    while True:
        records = read_wandb_records(path)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def test_wandb_run_carries_sweep_keys_tags_max_miou_and_masks(synthetic_root, tmp_path, ray_local):
    run_dir = tmp_path / "run"
    train(fast_config(synthetic_root, run_dir, "tracking.wandb.mode=offline", "method=cps", "data.label_count=6",
                      "train.unlabeled_batch_size=4", "train.eval_every=2", "run.seed=3", "eval.batch_size=2"))
    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    records = read_finished_wandb_file(path)
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    # 6 of the 24 synthetic train images labeled
    assert {k: config[k] for k in ("method", "label_fraction", "label_count", "seed", "protocol")} == {
        "method": "cps", "label_fraction": 0.25, "label_count": 6, "seed": 3, "protocol": "random"}
    assert set(run.tags) >= {"cps", "label_fraction=0.25", "label_count=6", "seed=3", "protocol=random"}
    metrics = [r.metric for r in records if r.WhichOneof("record_type") == "metric"]
    assert any(m.name == "val/miou" and m.summary.max for m in metrics)
    history = [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    val_masks = [(h["_step"], h["val_masks/count"]) for h in history if "val_masks/count" in h]
    pseudo = [(h["_step"], h["pseudo_labels/count"]) for h in history if "pseudo_labels/count" in h]
    # at the step-2 and step-4 evaluations: the first val batch (2 images), 4 images of the unlabeled batch
    assert val_masks == [(2, 2), (4, 2)] and pseudo == [(2, 4), (4, 4)]
    first = next(h for h in history if "val_masks/all_masks" in h)["val_masks/all_masks"]
    assert set(first[0]) == {"ground_truth", "prediction"}
    assert all((path.parent / "files" / m["path"]).is_file() for image in first for m in image.values())
    configs = [r.config for r in records if r.WhichOneof("record_type") == "config"]
    wandb_meta = [json.loads(i.value_json) for c in configs for i in c.update if i.key == "_wandb"][-1]
    labels = wandb_meta["mask/class_labels"]["val_masks_wandb_delimeter_ground_truth"]["value"]
    assert labels["1"] == "disc" and labels["255"] == "ignore"  # the synthetic classes: background, disc, ...
