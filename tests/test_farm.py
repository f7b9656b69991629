"""A two-worker farm on this machine: ``prefect server start`` (SQLite in a temp PREFECT_HOME,
127.0.0.1 only), the ``gpu`` pool, the deployments of prefect.yaml, two shot workers and one
reels worker; one reel submitted through the ``colorize-reel`` deployment must come back whole,
with its shots spread over both shot workers. Slow: servers and workers are real processes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from test_flows import run_to_end, write_cut_reel, write_shot_refs

from pipeline.media.decode import iter_frames
from pipeline.media.probe import probe

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
PREFECT = [sys.executable, "-m", "prefect"]
FARM_SHOTS = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Farm:
    """Processes of the farm (all started in their own process groups) and their environment."""

    env: dict[str, str]
    logs: Path
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start(self, name: str, *args: str) -> subprocess.Popen:
        log = (self.logs / f"{name}.log").open("w")
        self.procs[name] = subprocess.Popen(
            [*PREFECT, *args], env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        return self.procs[name]

    def cli(self, *args: str, timeout: float = 180) -> str:
        done = subprocess.run(
            [*PREFECT, *args], env=self.env, cwd=REPO, capture_output=True, text=True, timeout=timeout
        )
        assert done.returncode == 0, f"prefect {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def deploy(self, *names: str) -> None:
        """``prefect deploy -n NAME -n ...`` from prefect.yaml, as the operators' guide says, then
        check every deployment is registered (with fastapi 0.151-0.154 the CLI stopped after the first)."""
        self.cli("--no-prompt", "deploy", *(a for n in names for a in ("-n", n)))
        for name in names:  # each deployment is named after its flow
            assert f"'name': '{name}'" in self.cli("deployment", "inspect", f"{name}/{name}")

    def tail(self) -> str:
        return "\n".join(
            f"--- {p.name}\n" + "\n".join(p.read_text().splitlines()[-25:]) for p in sorted(self.logs.glob("*.log"))
        )

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):  # workers first, the server last
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in reversed(list(self.procs.values())):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    root = tmp_path_factory.mktemp("farm")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(root / "home"),
        PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_WORKER_QUERY_SECONDS="1",
        PREFECT_WORKER_PREFETCH_SECONDS="1",
        POSTPROD_ROOT=str(REPO),
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    )
    (root / "logs").mkdir()
    farm = Farm(env=env, logs=root / "logs")
    try:
        farm.start("server", "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui")
        deadline = time.monotonic() + 300
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline and farm.procs["server"].poll() is None, farm.tail()
            time.sleep(1)
        farm.cli("work-pool", "create", "gpu", "--type", "process")
        farm.cli("global-concurrency-limit", "create", "gpu", "--limit", "2")  # 2 "GPUs" in the farm
        farm.deploy("colorize-shot", "colorize-reel")  # not ingest: its schedule would queue runs here
        for name in ("w1", "w2"):
            farm.start(
                name,
                "worker",
                "start",
                "--pool",
                "gpu",
                "--work-queue",
                "shots",
                "--limit",
                "1",
                "--name",
                f"farm-{name}",
            )
        farm.start("reels", "worker", "start", "--pool", "gpu", "--work-queue", "reels", "--name", "farm-reels")
        yield farm
    finally:
        farm.stop()


SUBMIT = """
import json, sys
from prefect.deployments import run_deployment
run = run_deployment("colorize-reel/colorize-reel", parameters=json.loads(sys.argv[1]), timeout=540,
                     poll_interval=2, flow_run_name="colorize-farm-reel")
print(json.dumps({"state": run.state.type.value, "message": run.state.message}))
"""


def test_two_workers_share_the_shots_of_one_reel(farm: Farm, tmp_path: Path) -> None:
    reel = write_cut_reel(tmp_path / "farm-reel.mkv", shots=FARM_SHOTS)
    refs = write_shot_refs(tmp_path / "refs", tuple(range(FARM_SHOTS)))  # one wave: all shots at once
    out, workdir = tmp_path / "out.mkv", tmp_path / "work"
    params = {
        "reel": str(reel),
        "refs": str(refs),
        "out": str(out),
        "workdir": str(workdir),
        "settings": {"codec": "ffv1", "device": "cpu", "missing": "nearest", "work_size": 64},
        "poll_seconds": 1,
    }
    done = run_to_end([sys.executable, "-c", SUBMIT, json.dumps(params)], farm.env, REPO, timeout=600)
    assert done.returncode == 0, done.stderr + farm.tail()
    final = json.loads(done.stdout.strip().splitlines()[-1])
    assert final["state"] == "COMPLETED", f"{final}\n{farm.tail()}"

    outcomes = [json.loads(p.read_text()) for p in sorted((workdir / "outcomes").glob("shot-*.json"))]
    assert [o["index"] for o in outcomes] == list(range(FARM_SHOTS))
    workers = {o["ppid"] for o in outcomes}  # each shot's flow run is a child process of its worker
    assert workers == {farm.procs["w1"].pid, farm.procs["w2"].pid}, farm.tail()
    assert all((workdir / o["segment"]).is_file() for o in outcomes)

    info = probe(out)
    assert info.frames == probe(reel).frames == FARM_SHOTS * 12
    coloured = 0
    for src, dst in zip(iter_frames(reel), iter_frames(out, chroma=True)):
        np.testing.assert_array_equal(dst.luma, src.luma)  # luma passthrough, bit for bit (FFV1)
        coloured += int(np.abs(dst.chroma).max() > 0.02)  # Cb, Cr in [-0.5, 0.5]: 0 is grey
    assert coloured == info.frames  # every frame got colour


def test_cli_run_with_prefect_api_url_shows_up_on_that_server(farm: Farm, tmp_path: Path) -> None:
    # `postprod run` with PREFECT_API_URL set: the flow runs in this process but is recorded on the
    # farm's server (what its UI shows), with the operators' artifacts; no embedded server
    reel = write_cut_reel(tmp_path / "ui-reel.mkv", shots=2)
    refs = write_shot_refs(tmp_path / "refs", (0,))
    out = tmp_path / "out.mkv"
    cmd = [
        sys.executable,
        "-m",
        "cli",
        "run",
        "--reel",
        str(reel),
        "--refs",
        str(refs),
        "--out",
        str(out),
        "--codec",
        "ffv1",
        "--workdir",
        str(tmp_path / "work"),
        "--device",
        "cpu",
        "--work-size",
        "64",
    ]
    done = run_to_end(cmd, farm.env, tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr + farm.tail()
    assert probe(out).frames == 24

    def post(route: str, body: dict) -> list[dict]:
        request = urllib.request.Request(
            f"{farm.env['PREFECT_API_URL']}/{route}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=30) as r:
            return json.loads(r.read())

    runs = post("flow_runs/filter", {"flow_runs": {"name": {"any_": ["colorize-ui-reel"]}}})
    assert len(runs) == 1 and runs[0]["state_type"] == "COMPLETED", runs
    keys = {a["key"] for a in post("artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [runs[0]["id"]]}}})}
    assert {"ui-reel-report", "ui-reel-shots"} <= keys, keys
