"""docker/: what can be checked without a Docker engine.

The compose file's services, images, build contexts, Dockerfiles and volumes hang together; the
Dockerfiles install the project the way the README does (same package spec, torch within the
project's pin, every dependency pinned within the project's ranges); ``docker compose config``
validates the file where the compose plugin exists.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
COMPOSE = DOCKER / "compose.yaml"
DOCKERFILES = {"cpu": DOCKER / "cpu.Dockerfile", "gpu": DOCKER / "gpu.Dockerfile"}


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def pip_installs(dockerfile: Path) -> list[list[str]]:
    """The argument lists of every ``pip install`` in a Dockerfile's RUN lines (continuations joined)."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    runs = [line.split(None, 1)[1] for line in text.splitlines() if line.startswith("RUN ")]
    return [cmd.split("pip install", 1)[1].split() for run in runs for cmd in run.split("&&") if "pip install" in cmd]


def readme_install_spec() -> str:
    """The package spec of the README's install command (``pip install -e <spec>``)."""
    readme = (REPO / "README.md").read_text()
    match = re.search(r"pip install -e (\S+) && postprod", readme)
    assert match, "README's install command not found"
    return match.group(1).strip("\"'")


def project_requirements() -> dict[str, Requirement]:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return {canonicalize_name(r.name): r for r in map(Requirement, deps)}


def constraints() -> dict[str, str]:
    lines = (DOCKER / "constraints.txt").read_text().splitlines()
    pins = [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]
    return {canonicalize_name(r.name): str(r.specifier).removeprefix("==") for r in pins}


def test_compose_services_images_builds_and_volumes_exist() -> None:
    spec = compose()
    services = spec["services"]
    assert {"postgres", "server", "setup", "orchestrator", "gpu-worker"} <= set(services)
    built: dict[str, Path] = {}
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        if "build" in service:
            context = (COMPOSE.parent / service["build"]["context"]).resolve()
            dockerfile = context / service["build"]["dockerfile"]
            assert context == REPO and dockerfile.is_file(), (name, dockerfile)
            built[service["image"]] = dockerfile
        for dep in service.get("depends_on", {}):
            assert dep in services, (name, dep)
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert source in spec["volumes"], (name, volume)
    assert built == {"postprod-cpu:0.1.0": DOCKERFILES["cpu"], "postprod-gpu:0.1.0": DOCKERFILES["gpu"]}
    pulled = {s["image"] for s in services.values() if "build" not in s} - set(built)
    assert pulled == {"postgres:16-alpine"}  # every other image is one compose builds
    # the server stores its state in PostgreSQL, the workers share the data volume at one path
    assert services["server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://")
    for name in ("setup", "orchestrator", "gpu-worker"):
        assert "postprod-data:/mnt/postprod" in services[name]["volumes"]
    gpu = services["gpu-worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"]


def test_prefect_yaml_docker_variant_uses_the_image_compose_builds() -> None:
    deployments = {d["name"]: d for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]}
    images = {
        d["work_pool"]["job_variables"]["image"] for d in deployments.values() if d["work_pool"].get("job_variables")
    }
    assert images == {"postprod-gpu:0.1.0"}
    assert {d["work_pool"]["name"] for d in deployments.values()} == {"gpu", "gpu-docker"}


def test_dockerfiles_install_the_readme_package_spec_with_pinned_torch() -> None:
    spec = readme_install_spec()
    torch_req = project_requirements()["torch"]
    for kind, dockerfile in DOCKERFILES.items():
        installs = pip_installs(dockerfile)
        torch_pins = [a for args in installs for a in args if a.startswith("torch==")]
        assert len(torch_pins) == 1, kind
        assert torch_req.specifier.contains(torch_pins[0].removeprefix("torch==")), (kind, torch_pins)
        project = [args for args in installs if spec in args]
        assert project == [[spec, "-c", "docker/constraints.txt"]], (kind, installs)
        # torch goes in first: `pip install .` alone would fetch torch's default (CUDA) build
        assert installs.index(project[0]) > next(
            i for i, a in enumerate(installs) if any(x.startswith("torch==") for x in a)
        )
        text = dockerfile.read_text()
        assert "COPY . /opt/postprod" in text and 'prefect", "worker", "start", "--pool", "gpu"' in text
    assert DOCKERFILES["gpu"].read_text().count("FROM ") == 1 and "nvidia/cuda:" in DOCKERFILES["gpu"].read_text()
    assert "FROM python:3.11-slim" in DOCKERFILES["cpu"].read_text()


def test_constraints_pin_every_dependency_within_the_project_ranges() -> None:
    pins = constraints()
    assert "torch" not in pins  # each image pins its own torch build
    for name, req in project_requirements().items():
        if name == "torch":
            continue
        assert name in pins, name
        assert req.specifier.contains(pins[name], prereleases=True), (name, pins[name], str(req.specifier))


def test_images_keep_the_weights_and_constraints() -> None:
    for dockerfile in DOCKERFILES.values():
        ignore = Path(f"{dockerfile}.dockerignore").read_text().split()
        for kept in ("model", "model/weights", "docker", "docker/constraints.txt", "flows", "prefect.yaml"):
            assert kept not in ignore
    assert list((REPO / "model" / "weights").glob("*.pt")), "weights ship in the repository"


def test_docker_compose_config_validates() -> None:
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("the docker compose plugin is not installed here")
    result = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE), "config", "--quiet"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
