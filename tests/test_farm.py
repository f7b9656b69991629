"""The farm under real conditions, on this machine (:mod:`flows.localfarm`): ``prefect server
start`` on SQLite and on a real PostgreSQL cluster, the ``gpu`` pool, the deployments of
prefect.yaml, two shot workers and one reels worker, all real processes on 127.0.0.1.

- two workers share the shots of one reel (PostgreSQL);
- a worker lost mid-shot (SIGKILL to it and its flow runs): the reel still completes, the lost
  shot runs again on the other worker, its GPU slot comes back, the output is byte for byte the
  uninterrupted run's (PostgreSQL);
- a deployment with an interval schedule gets runs that a worker executes (both databases);
- ``postprod run`` with ``PREFECT_API_URL`` shows up on that server (SQLite);
- the server logs no ERROR line (both; on SQLite none but ``database is locked`` under load).

The servers run their services fast (the scheduler every 2 s; on PostgreSQL also the foreman
and repossessor, workers beating every 2 s, offline after 5 missed beats) so that schedules and
failures show within seconds; docs/operators.md gives the production figures. The SQLite farm
has only the reels worker (its tests run no shot on a GPU worker). Slow: each farm takes ~1 min
to come up.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_flows import run_to_end, write_cut_reel, write_shot_refs

from flows.localfarm import LocalFarm, postgres_bin, start_postgres
from pipeline.media.decode import iter_frames
from pipeline.media.probe import probe

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
FARM_SHOTS, SHOT_LEN = 3, 12
SCHEDULER = {  # ticks every 2 s, and keeps few runs ahead (an interval of seconds would make 100)
    "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
    "PREFECT_SERVER_SERVICES_SCHEDULER_MAX_RUNS": "3",
    "PREFECT_SERVER_SERVICES_SCHEDULER_MIN_SCHEDULED_TIME": "PT10S",
    "PREFECT_WORKER_QUERY_SECONDS": "1",
    "PREFECT_WORKER_PREFETCH_SECONDS": "1",
}
LOSS_DETECTION = {  # a dead worker is offline after 5 missed beats of 2 s; expired leases go within 2 s
    "PREFECT_SERVER_SERVICES_FOREMAN_LOOP_SECONDS": "2",
    "PREFECT_SERVER_SERVICES_FOREMAN_INACTIVITY_HEARTBEAT_MULTIPLE": "5",
    "PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS": "2",
    "PREFECT_WORKER_HEARTBEAT_SECONDS": "2",
}
"""On PostgreSQL only: on SQLite, beats this frequent from three workers on a loaded 2-core
machine end in ``database is locked`` (the reason a farm runs on PostgreSQL)."""
SQLITE = {"PREFECT_SERVER_DATABASE_TIMEOUT": "60"}
"""A writer waits up to 60 s for SQLite's lock (the server's default: 10 s)."""
SETTINGS = {"codec": "ffv1", "device": "cpu", "missing": "nearest", "work_size": 64}


@dataclass
class Farm:
    """A started farm: its processes and which database it runs on."""

    local: LocalFarm
    backend: str

    @property
    def env(self) -> dict[str, str]:
        return self.local.env

    def api(self, route: str, body: dict[str, Any] | None = None, method: str | None = None) -> Any:
        return self.local.api(route, body, method)

    def flow_runs(self, **filters: Any) -> list[dict[str, Any]]:
        return self.api("flow_runs/filter", {"flow_runs": filters, "sort": "START_TIME_ASC", "limit": 200})


def start_farm(backend: str, root: Path) -> Iterator[Farm]:
    """A farm on ``backend`` ("sqlite" or "postgresql") in ``root``; stopped after the yield."""
    if backend == "postgresql" and postgres_bin() is None:
        pytest.skip("PostgreSQL server binaries not installed (Debian: apt-get install postgresql; .ci/run does)")
    postgres = start_postgres() if backend == "postgresql" else None
    local = LocalFarm(root=root, repo=REPO)
    try:
        settings = {**SCHEDULER, **(LOSS_DETECTION if postgres else SQLITE)}
        local.start_server(postgres.url if postgres else None, settings=settings)
        (root / "ingest").mkdir()
        local.env["POSTPROD_INGEST"] = str(root / "ingest")  # read by `prefect deploy` (prefect.yaml)
        local.setup_pool(2, "colorize-shot", "colorize-reel", "ingest")  # 2 "GPUs" in the farm
        if postgres:  # the tests of shots on GPU workers run on PostgreSQL
            for name in ("farm-w1", "farm-w2"):
                local.start_worker(name, "shots", limit=1)
        local.start_worker("farm-reels", "reels")
        yield Farm(local, backend)
    finally:
        local.stop()
        if postgres is not None:
            postgres.stop()


@pytest.fixture(scope="module")
def postgresql_farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    """The farm on PostgreSQL: two shot workers and the reels worker."""
    yield from start_farm("postgresql", tmp_path_factory.mktemp("farm-postgresql"))


@pytest.fixture(scope="module")
def sqlite_farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    """The farm on SQLite: the reels worker only."""
    yield from start_farm("sqlite", tmp_path_factory.mktemp("farm-sqlite"))


@pytest.fixture
def farm(request: pytest.FixtureRequest) -> Farm:
    """The farm on ``request.param`` (a database): one each per module, started when first used."""
    return request.getfixturevalue(f"{request.param}_farm")


SUBMIT = """
import json, sys
from prefect.deployments import run_deployment
run = run_deployment("colorize-reel/colorize-reel", parameters=json.loads(sys.argv[1]), timeout=0,
                     flow_run_name=sys.argv[2])
print(json.dumps({"id": str(run.id)}))
"""


def submit_reel(farm: Farm, name: str, params: dict[str, Any]) -> str:
    """A ``colorize-reel`` deployment run (as an operator's ``prefect deployment run``); returns its id."""
    done = run_to_end([sys.executable, "-c", SUBMIT, json.dumps(params), name], farm.env, REPO, timeout=180)
    assert done.returncode == 0, done.stderr + farm.local.tail()
    return json.loads(done.stdout.strip().splitlines()[-1])["id"]


def wait_final(farm: Farm, flow_run_id: str, timeout: float = 540) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        run = farm.api(f"flow_runs/{flow_run_id}")
        if run["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return run
        assert time.monotonic() < deadline, f"{run['name']} still {run['state_type']}\n{farm.local.tail()}"
        time.sleep(1)


def artifacts(farm: Farm, flow_run_id: str) -> dict[str, dict[str, Any]]:
    found = farm.api("artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}})
    return {a["key"]: a for a in sorted(found, key=lambda a: a["created"])}


def gpu_slots_in_use(farm: Farm) -> int:
    return farm.api("v2/concurrency_limits/gpu")["active_slots"]


@dataclass
class Case:
    """One reel (all shots in one wave: each has its own reference) and where its runs go."""

    reel: Path
    refs: Path
    root: Path

    def params(self, name: str) -> dict[str, Any]:
        return {
            "reel": str(self.reel),
            "refs": str(self.refs),
            "out": str(self.root / f"{name}.mkv"),
            "workdir": str(self.root / f"work-{name}"),
            "settings": SETTINGS,
            "poll_seconds": 0.5,
        }


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> Case:
    root = tmp_path_factory.mktemp("farm-reel")
    reel = write_cut_reel(root / "farm-reel.mkv", shots=FARM_SHOTS, length=SHOT_LEN)
    return Case(reel, write_shot_refs(root / "refs", tuple(range(FARM_SHOTS))), root)


@pytest.fixture(scope="module")
def uninterrupted(postgresql_farm: Farm, case: Case) -> tuple[dict[str, Any], Path]:
    """The reel through the PostgreSQL farm, nothing going wrong: its flow run and output."""
    farm = postgresql_farm
    params = case.params(f"whole-{farm.backend}")
    run = wait_final(farm, submit_reel(farm, f"colorize-whole-{farm.backend}", params))
    assert run["state_type"] == "COMPLETED", f"{run['state']}\n{farm.local.tail()}"
    return run, Path(params["out"])


def outcomes(workdir: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((workdir / "outcomes").glob("shot-*.json"))]


@pytest.mark.parametrize("farm", ["postgresql"], indirect=True)
def test_two_workers_share_the_shots_of_one_reel(
    farm: Farm, case: Case, uninterrupted: tuple[dict[str, Any], Path]
) -> None:
    run, out = uninterrupted
    workdir = Path(run["parameters"]["workdir"])
    done = outcomes(workdir)
    assert [o["index"] for o in done] == list(range(FARM_SHOTS))
    workers = {o["ppid"] for o in done}  # each shot's flow run is a child process of its worker
    assert workers == {farm.local.procs["farm-w1"].pid, farm.local.procs["farm-w2"].pid}, farm.local.tail()
    assert all((workdir / o["segment"]).is_file() for o in done)

    info = probe(out)
    assert info.frames == probe(case.reel).frames == FARM_SHOTS * SHOT_LEN
    coloured = 0
    for src, dst in zip(iter_frames(case.reel), iter_frames(out, chroma=True)):
        np.testing.assert_array_equal(dst.luma, src.luma)  # luma passthrough, bit for bit (FFV1)
        coloured += int(np.abs(dst.chroma).max() > 0.02)  # Cb, Cr in [-0.5, 0.5]: 0 is grey
    assert coloured == info.frames  # every frame got colour

    arts = artifacts(farm, run["id"])  # the operators' view: per shot its worker and time
    rows = json.loads(arts["farm-reel-shots"]["data"])
    assert {r["worker"] for r in rows} == {"farm-w1", "farm-w2"}
    assert all(r["seconds"] > 0 and r["runs"] == 1 and r["status"] == "coloured" for r in rows)
    progress = arts["farm-reel-progress"]
    assert progress["data"] == 100.0 and f"{FARM_SHOTS}/{FARM_SHOTS} shots" in progress["description"]
    assert "## Workers" in arts["farm-reel-report"]["data"]
    assert gpu_slots_in_use(farm) == 0


@pytest.mark.parametrize("farm", ["postgresql"], indirect=True)
def test_a_worker_lost_mid_shot_is_replaced_and_the_output_is_unchanged(
    farm: Farm, case: Case, uninterrupted: tuple[dict[str, Any], Path]
) -> None:
    params = case.params(f"killed-{farm.backend}")
    workdir = Path(params["workdir"])
    reel_run = submit_reel(farm, f"colorize-killed-{farm.backend}", params)
    deadline = time.monotonic() + 300
    while True:  # a shot Running on farm-w1: kill that machine (the worker and its flow run)
        held = [
            r
            for r in farm.flow_runs(parent_flow_run_id={"any_": [reel_run]}, state={"type": {"any_": ["RUNNING"]}})
            if (r.get("labels") or {}).get("prefect.worker.name") == "farm-w1"
        ]
        if held:
            break
        assert time.monotonic() < deadline, f"no shot ever ran on farm-w1\n{farm.local.tail()}"
        time.sleep(0.1)
    killed_at = time.time()
    killed = farm.local.kill("farm-w1")
    (lost_shot,) = held[0]["parameters"]["shots"]  # a 3-shot reel on 2 GPUs: one shot per run

    run = wait_final(farm, reel_run)
    assert run["state_type"] == "COMPLETED", f"{run['state']}\n{farm.local.tail()}"
    shot_runs = farm.flow_runs(parent_flow_run_id={"any_": [reel_run]})
    by_shot: dict[int, list[dict[str, Any]]] = {}
    for r in shot_runs:
        by_shot.setdefault(*r["parameters"]["shots"], []).append(r)
    assert sorted(by_shot) == list(range(FARM_SHOTS))
    lost, again = by_shot[lost_shot]  # the lost run, marked Crashed by the reel's flow, then a second one
    assert lost["id"] == held[0]["id"] and lost["state_type"] == "CRASHED"
    assert "worker farm-w1 lost" in lost["state"]["message"]
    assert again["state_type"] == "COMPLETED" and again["labels"]["prefect.worker.name"] == "farm-w2"
    for i, runs in by_shot.items():  # every other shot: exactly one run
        assert i == lost_shot or [r["state_type"] for r in runs] == ["COMPLETED"], (i, runs)
    noticed = datetime.fromisoformat(lost["state"]["timestamp"].replace("Z", "+00:00")).timestamp() - killed_at
    print(f"lost worker noticed {noticed:.1f} s after the kill")

    # one segment per shot, under its content key; a partial file only from the killed processes
    segments = sorted((workdir / "segments").iterdir())
    done = {o["index"]: o for o in outcomes(workdir)}
    assert sorted(workdir / o["segment"] for o in done.values()) == [p for p in segments if not p.name.startswith(".")]
    assert all(any(f".partial-{pid}." in p.name for pid in killed) for p in segments if p.name.startswith("."))
    rows = json.loads(artifacts(farm, reel_run)["farm-reel-shots"]["data"])
    assert rows[lost_shot]["runs"] == 2 and rows[lost_shot]["worker"] == "farm-w2"
    assert "Shots rerun after a lost worker" in artifacts(farm, reel_run)["farm-reel-report"]["data"]

    _, whole = uninterrupted
    assert Path(params["out"]).read_bytes() == whole.read_bytes()  # FFV1: the same bytes as without the kill

    deadline = time.monotonic() + 150  # the lost run's GPU slot: its lease expires, the server takes it back
    while gpu_slots_in_use(farm) != 0:
        assert time.monotonic() < deadline, "the lost shot's gpu slot was never released"
        time.sleep(1)


@pytest.mark.parametrize("farm", ["postgresql", "sqlite"], indirect=True)
def test_an_interval_schedule_creates_runs_that_a_worker_executes(farm: Farm) -> None:
    # the ingest deployment (empty drop folder), given a 5 s interval next to its cron
    farm.local.cli("deployment", "schedule", "create", "ingest/ingest", "--interval", "5")
    try:
        deadline = time.monotonic() + 240
        while True:
            runs = farm.flow_runs(
                deployment_id={"any_": [farm.api("deployments/name/ingest/ingest")["id"]]},
                state={"type": {"any_": ["COMPLETED"]}},
            )
            if any(r["auto_scheduled"] for r in runs):
                break
            assert time.monotonic() < deadline, f"no scheduled ingest run completed\n{farm.local.tail()}"
            time.sleep(1)
    finally:
        farm.local.cli("deployment", "schedule", "clear", "ingest/ingest", "--accept-yes")


@pytest.mark.parametrize("farm", ["sqlite"], indirect=True)
def test_cli_run_with_prefect_api_url_shows_up_on_that_server(farm: Farm, tmp_path: Path) -> None:
    # `postprod run` with PREFECT_API_URL set: the flow runs in this process but is recorded on the
    # farm's server (what its UI shows), with the operators' artifacts; no embedded server
    reel = write_cut_reel(tmp_path / "ui-reel.mkv", shots=2)
    refs = write_shot_refs(tmp_path / "refs", (0,))
    out = tmp_path / "out.mkv"
    cmd = [sys.executable, "-m", "cli", "run", "--reel", str(reel), "--refs", str(refs), "--out", str(out)]
    cmd += ["--codec", "ffv1", "--workdir", str(tmp_path / "work"), "--device", "cpu", "--work-size", "64"]
    done = run_to_end(cmd, farm.env, tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr + farm.local.tail()
    assert probe(out).frames == 24

    runs = farm.flow_runs(name={"any_": ["colorize-ui-reel"]})
    assert len(runs) == 1 and runs[0]["state_type"] == "COMPLETED", runs
    assert {"ui-reel-report", "ui-reel-shots", "ui-reel-progress"} <= set(artifacts(farm, runs[0]["id"]))


@pytest.mark.parametrize("farm", ["postgresql", "sqlite"], indirect=True)
def test_the_server_logged_no_error(farm: Farm) -> None:
    assert os.path.getsize(farm.local.logs / "server.log") > 0
    errors = farm.local.server_errors()
    if farm.backend == "sqlite":
        # SQLite serialises writers: on a loaded machine a worker's heartbeat can still wait past
        # the server's database timeout (`database is locked`), the reason a farm runs on
        # PostgreSQL (docs/operators.md). Any other error counts, on SQLite too.
        errors = [e for e in errors if "sqlite3.OperationalError: database is locked" not in e]
    assert errors == []
