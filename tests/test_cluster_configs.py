"""The files in cluster/: launcher configs pass Ray's own schema, every manifest keeps token authentication on
and secrets in the secret store, the jobs' commands are valid raysemi commands, and every pin matches ours."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.commands import prepare_config
from ray.autoscaler._private.util import validate_config
from ray.runtime_env import RuntimeEnv

from raysemi.cli import build_parser
from raysemi.config import load_config
from raysemi.sweeps import load_sweep

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
LAUNCHERS = [CLUSTER / "aws.yaml", CLUSTER / "gcp.yaml"]
RAY_JOBS = sorted((CLUSTER / "kuberay").glob("rayjob-*.yaml"))


def pinned() -> dict[str, str]:
    """``{package: version}`` of pyproject's ``==`` pins (torch, torchvision, ray)."""
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = (re.match(r"^([a-z]+)(?:\[[^\]]*\])?==([\d.]+)$", d) for d in dependencies)
    return {m.group(1): m.group(2) for m in pins if m}


def pip_pins(text: str) -> dict[str, str]:
    return dict(re.findall(r'"?([a-z]+)(?:\[[^\]]*\])?==([\d.]+)"?', text))


@pytest.mark.parametrize("path", LAUNCHERS, ids=lambda p: p.stem)
def test_launcher_configs_pass_rays_schema_and_keep_auth_on(path):
    config = yaml.safe_load(path.read_text())
    validate_config(prepare_config(config))  # what `ray up` checks before it calls the cloud
    head = " ".join(config["head_start_ray_commands"])
    workers = " ".join(config["worker_start_ray_commands"])
    assert "export RAY_AUTH_MODE=token" in head and "export RAY_AUTH_MODE=token" in workers
    assert "--dashboard-host=127.0.0.1" in head
    assert config["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token"}  # one token on every node
    assert pip_pins(" ".join(config["setup_commands"])) == pinned()
    assert "/mnt/raysemi" in config["setup_commands"][0]  # the shared storage is mounted on every node


def kuberay_documents() -> list[tuple[str, dict]]:
    return [(path.name, doc) for path in sorted((CLUSTER / "kuberay").glob("*.yaml"))
            for doc in yaml.safe_load_all(path.read_text())]


def containers(document: dict) -> list[dict]:
    """Every container spec in a manifest."""
    found = []
    if isinstance(document, dict):
        found += document.get("containers", [])
        for value in document.values():
            found += containers(value)
    elif isinstance(document, list):
        for value in document:
            found += containers(value)
    return found


def test_kuberay_keeps_token_auth_on_and_keys_in_secrets():
    [cluster] = [doc for _, doc in kuberay_documents() if doc["kind"] == "RayCluster"]
    assert cluster["spec"]["authOptions"] == {"mode": "token"}  # the operator makes and distributes the token
    assert cluster["spec"]["rayVersion"] == pinned()["ray"]
    assert cluster["spec"]["headGroupSpec"]["serviceType"] == "ClusterIP"
    pods = containers(cluster)
    assert len(pods) == 2  # head, GPU workers
    for container in pods:
        env = {e["name"]: e for e in container["env"]}
        assert not any(name.startswith("RAY_AUTH") for name in env)  # set by the operator, never by hand
        assert "value" not in env["WANDB_API_KEY"] and env["WANDB_API_KEY"]["valueFrom"]["secretKeyRef"]
        assert container["image"] == "REGISTRY/raysemi:0.1.0"
        assert {"name": "storage", "mountPath": "/mnt/raysemi"} in container["volumeMounts"]


def test_the_image_has_our_pins():
    dockerfile = (CLUSTER / "kuberay" / "Dockerfile").read_text()
    assert f"FROM rayproject/ray:{pinned()['ray']}-py311-gpu" in dockerfile
    assert pip_pins(dockerfile) == {k: v for k, v in pinned().items() if k != "ray"}


@pytest.mark.parametrize("path", RAY_JOBS, ids=lambda p: p.stem)
def test_ray_jobs_run_valid_raysemi_commands(path, monkeypatch):
    monkeypatch.chdir(REPO)  # the image's working directory holds the same experiments/ folder
    job = yaml.safe_load(path.read_text())
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": "raysemi"}
    command = shlex.split(job["spec"]["entrypoint"])
    assert command[0] == "raysemi"
    args = build_parser().parse_args(command[1:])
    cfg = load_config(args.config, args.overrides)
    assert cfg.run.dir.startswith("/mnt/raysemi/") and cfg.data.root.startswith("/mnt/raysemi/")
    assert cfg.scaling.use_gpu and cfg.scaling.max_failures > 0
    if args.command == "tune":
        assert load_sweep(args.sweep, cfg).scheduler == "asha"


def test_the_runtime_env_installs_the_project_from_the_working_dir():
    spec = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())
    env = RuntimeEnv(**spec)  # Ray's own validation of the fields
    assert env["pip"]["packages"] == ["${RAY_RUNTIME_ENV_CREATE_WORKING_DIR}"]
    assert ".venv" in env["excludes"] and "runs" in env["excludes"]
    assert not any("KEY" in name or "TOKEN" in name or "SECRET" in name for name in spec.get("env_vars", {}))
