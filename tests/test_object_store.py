"""``run.sync_to=s3://...`` against a real S3 API: moto's server on loopback, reached through pyarrow's S3 file
system (the path users get: :mod:`raysemi.engine.mirror`), not a ``file://`` stand-in."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from raysemi.engine.checkpoint import latest_checkpoint
from raysemi.ray.train import train
from raysemi.tracking import read_metrics
from tests.conftest import fast_config, train_until_a_crash_at_step_5
from tests.test_tune import _overrides

REPO = Path(__file__).resolve().parents[1]

BUCKET = "runs"


@pytest.fixture
def s3_endpoint(monkeypatch):
    """``host:port`` of a moto S3 server on 127.0.0.1 holding an empty bucket ``runs``, and a boto3 client."""
    moto_server = pytest.importorskip("moto.server", reason="moto[server] is in the test extra")
    import boto3

    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)  # moto accepts any credentials; pyarrow and boto3 read them from here
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    yield f"127.0.0.1:{port}", client
    server.stop()


def objects(client, prefix: str) -> list[str]:
    """The keys under ``prefix`` that hold data (S3 folder markers, keys ending in ``/``, left out)."""
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return sorted(o["Key"][len(prefix):] for o in listed if not o["Key"].endswith("/"))


def test_a_run_mirrored_to_s3_resumes_from_an_empty_run_directory_to_the_uninterrupted_weights(
        synthetic_root, tmp_path, ray_local, s3_endpoint):
    endpoint, client = s3_endpoint
    uri = f"s3://{BUCKET}/team/run?endpoint_override={endpoint}&scheme=http&region=us-east-1"
    steps = ("train.steps=6", "train.checkpoint_every=2", f"run.sync_to={uri}")
    train_until_a_crash_at_step_5(fast_config(synthetic_root, tmp_path / "node-a" / "run", *steps))
    checkpoint_files = ["config.yaml", "meta.json", "model.pt", "training_state.pt"]
    assert objects(client, "team/run/") == [  # mirrored during the run: both checkpoints and the log to step 4
        *(f"checkpoints/step_0000000{n}/{f}" for n in (2, 4) for f in checkpoint_files),
        "config.yaml", "labeled.txt", "metrics.jsonl", "split.json", "unlabeled.txt",
    ]
    shutil.rmtree(tmp_path / "node-a")  # the node is gone with its disk

    fresh = tmp_path / "node-b" / "run"
    summary = train(fast_config(synthetic_root, fresh, *steps))
    assert [r["step"] for r in read_metrics(fresh)] == [2, 4, 6]  # steps 1-4 came from S3, not trained again
    assert summary["steps"] == 6 and "summary.json" in objects(client, "team/run/")
    assert [k for k in objects(client, "team/run/checkpoints/") if k.endswith("meta.json")] == [
        "step_00000004/meta.json", "step_00000006/meta.json"]  # pruned remotely as locally (keep 2)

    uninterrupted = tmp_path / "uninterrupted"
    train(fast_config(synthetic_root, uninterrupted, "train.steps=6", "train.checkpoint_every=2"))
    resumed = torch.load(latest_checkpoint(fresh).model, weights_only=True)
    expected = torch.load(latest_checkpoint(uninterrupted).model, weights_only=True)
    assert resumed.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(resumed[key], value), key  # local mode resumes bit for bit


def test_an_unreachable_bucket_is_one_line_naming_the_uri(synthetic_root, tmp_path, s3_endpoint):
    from raysemi.engine.mirror import RunMirror
    from raysemi.errors import StorageError

    endpoint, _ = s3_endpoint
    uri = f"s3://no-such-bucket/run?endpoint_override={endpoint}&scheme=http&region=us-east-1"
    mirror = RunMirror(uri, tmp_path / "run")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("method: supervised\n")
    with pytest.raises(StorageError, match=r"^run.sync_to=s3://no-such-bucket/run\?.*: cannot write config.yaml \("
                                           r".*\); check the bucket, its permissions and this node's credentials$"):
        mirror.push_run_files()


@pytest.mark.slow
def test_a_sweeps_trials_and_its_summary_are_written_to_s3(synthetic_root, tmp_path, s3_endpoint):
    """``raysemi tune`` as a user runs it, with ``run.sync_to`` on the bucket: each trial mirrors its run below
    ``<uri>/trials/<name>`` (the URI's query kept last) and the sweep's own files follow."""
    endpoint, client = s3_endpoint
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text("samples: 2\nscheduler: fifo\nconcurrency: 1\nretries: 0\n"
                          "space:\n  optim.lr: {loguniform: [1.0e-3, 1.0e-1]}\n")
    uri = f"s3://{BUCKET}/team/sweep?endpoint_override={endpoint}&scheme=http&region=us-east-1"
    command = [sys.executable, "-m", "raysemi.cli", "tune", "--sweep", str(sweep_file), "--out",
               str(tmp_path / "sweep"), *_overrides(synthetic_root), f"run.sync_to={uri}"]
    env = {**os.environ, "RAY_ADDRESS": "local", "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]

    summary = json.loads((tmp_path / "sweep" / "summary.json").read_text())
    names = sorted(t["name"] for t in summary["trials"])
    assert len(names) == 2 and {t["status"] for t in summary["trials"]} == {"finished"}
    stored = objects(client, "team/sweep/")
    assert {"summary.json", "sweep.yaml"} <= set(stored)
    for name in names:
        trial = objects(client, f"team/sweep/trials/{name}/")
        assert {"config.yaml", "metrics.jsonl", "split.json", "summary.json"} <= set(trial), trial
        assert any(k.startswith("checkpoints/step_00000004/") for k in trial)
        body = client.get_object(Bucket=BUCKET, Key=f"team/sweep/trials/{name}/summary.json")["Body"].read()
        assert json.loads(body) == json.loads((tmp_path / "sweep" / "trials" / name / "summary.json").read_text())
