"""A real Ray job: a head started with ``ray start`` on 127.0.0.1 (token authentication on), ``raysemi submit``
of a short training run through ``cluster/runtime_env.yaml`` (pip installs the project into the job's
environment: about a minute), and only that cluster stopped afterwards."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from raysemi.cli import main
from raysemi.ray.jobs import job_command, names
from tests.conftest import fast_config

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s} s")


@pytest.fixture
def ray_head(monkeypatch, tmp_path):
    """A one-node Ray cluster of its own (its own ports and temp dir) with token authentication, its token made
    by ``ray get-auth-token --generate`` as the README shows (in a stand-in home folder) and read by the head
    and by clients through ``RAY_AUTH_TOKEN_PATH``; yields the dashboard address, then stops exactly that
    cluster."""
    home = tmp_path / "home"
    subprocess.run(["ray", "get-auth-token", "--generate"], env={**os.environ, "HOME": str(home)}, check=True,
                   capture_output=True)
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(home / ".ray" / "auth_token"))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    dashboard, agent = free_port(), free_port()
    temp_dir = tempfile.mkdtemp(prefix="rs-", dir="/tmp")  # short: Ray's socket paths live under it
    head = subprocess.Popen(
        ["ray", "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={free_port()}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", f"--dashboard-agent-listen-port={agent}",
         f"--ray-client-server-port={free_port()}", "--num-cpus=2", f"--temp-dir={temp_dir}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy(),
    )
    try:
        wait_for_port(dashboard, 180)
        wait_for_port(agent, 180)  # jobs are refused until the node's agent is up
        yield f"http://127.0.0.1:{dashboard}"
    finally:  # kill exactly the processes this head started (`ray stop` would stop every Ray on the machine)
        started = [psutil.Process(head.pid), *psutil.Process(head.pid).children(recursive=True)]
        for process in started:
            process.kill()
        gone, alive = psutil.wait_procs(started, timeout=60)
        # the job's runtime environment clones the test's virtualenv into the temp dir: about 6 GB
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not alive, f"processes of the test's cluster still running: {alive}"


@pytest.mark.slow
def test_a_training_run_submitted_as_a_ray_job(ray_head, synthetic_root, tmp_path, monkeypatch, capfd):
    config = tmp_path / "smoke.yaml"
    config.write_text(fast_config(synthetic_root, tmp_path / "unused", "scaling.num_workers=1",
                                  "scaling.cpus_per_worker=0.5").to_yaml())
    storage = tmp_path / "storage"
    monkeypatch.chdir(REPO)  # the project root: the job's working directory

    with monkeypatch.context() as wrong:
        wrong.setenv("RAY_AUTH_TOKEN", "not-the-token")
        assert main(["submit", "--address", ray_head, "--storage", str(storage), "--name", "refused", "--",
                     "train", "-c", str(config)]) != 0
    assert "Invalid authentication token" in capfd.readouterr().err

    assert main(["submit", "--address", ray_head, "--storage", str(storage), "--name", "smoke", "--",
                 "train", "-c", str(config)]) == 0
    out = capfd.readouterr().out
    assert "final val mIoU" in out and re.search(r"Job 'smoke-\d{8}-\d{6}' succeeded", out)
    summary = json.loads((storage / "smoke" / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["run_dir"] == str(storage / "smoke")
    assert (storage / "smoke" / "checkpoints").is_dir() and not (storage / "refused").exists()
    listed = subprocess.run(["ray", "job", "list", "--address", ray_head], capture_output=True, text=True,
                            check=True).stdout
    assert re.search(r"submission_id='smoke-\d{8}-\d{6}'", listed) and "SUCCEEDED" in listed


def test_the_job_command_puts_the_run_under_storage(tmp_path):
    command = job_command(["tune", "-c", "c.yaml", "--sweep", "s.yaml"], "http://head:8265", "/mnt/runs/",
                          "lr-sweep", REPO / "cluster" / "runtime_env.yaml")
    assert command[:3] == ["ray", "job", "submit"] and "--working-dir" in command
    assert command[command.index("--"):] == ["--", "raysemi", "tune", "-c", "c.yaml", "--sweep", "s.yaml",
                                             "run.dir=/mnt/runs/lr-sweep"]
    assert command[command.index("--submission-id") + 1] == "lr-sweep"
    on_a_bucket = job_command(["train"], "http://head:8265", "s3://team-bucket/runs", "cps", REPO / "cluster" /
                              "runtime_env.yaml")
    assert on_a_bucket[-2:] == ["run.dir=/tmp/raysemi-runs/cps", "run.sync_to=s3://team-bucket/runs/cps"]
    on_minio = job_command(["train"], "http://head:8265", "s3://team/runs?endpoint_override=minio:9000", "cps",
                           REPO / "cluster" / "runtime_env.yaml")
    assert on_minio[-1] == "run.sync_to=s3://team/runs/cps?endpoint_override=minio:9000"  # the query stays last


def test_a_named_run_gets_a_new_job_id_each_submission_and_a_default_name_is_dated():
    run, job = names(["train", "-c", "c.yaml"], "cps-camvid")
    assert run == "cps-camvid" and re.fullmatch(r"cps-camvid-\d{8}-\d{6}", job)
    run, job = names(["tune"], None)
    assert run == job and re.fullmatch(r"tune-\d{8}-\d{6}", run)


@pytest.mark.parametrize(("job", "storage", "message"), [
    (["report", "runs"], "/mnt/runs", "got 'report' after --; expected one of train, tune, sweep"),
    (["train"], "runs",
     "submit --storage 'runs': expected an absolute path that every node of the cluster mounts, or an object-store"),
])
def test_submit_refuses_what_it_cannot_run(job, storage, message, capsys):
    assert main(["submit", "--address", "http://head:8265", "--storage", storage, "--", *job]) == 2
    assert message in capsys.readouterr().err
