"""The Prefect flows (flows/): orchestration, caching, failures, artifacts, ingest.

Orchestration tests run the real ``prepare`` stage (probe, shots, refs, plan) on a small
generated reel with hard cuts, under ``prefect_test_harness``, with the colour stages
(``colorize_shot``, ``assemble``, ``contact_sheet``) replaced by recording fakes so they are
fast and can fail on demand. The kill-and-resume test runs the real stages end to end.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING
from uuid import UUID

import pytest
from PIL import Image

from pipeline import review, run
from pipeline.errors import PostprodError
from pipeline.files import atomic_output
from pipeline.keyframes import Plan
from pipeline.media import synth
from pipeline.settings import RunSettings
from pipeline.workdir import PLAN_NAME, SEGMENTS, load_plan, segment_path

if TYPE_CHECKING:  # Prefect is imported by the tests that use it, after conftest set its environment
    from prefect.states import State

REPO = Path(__file__).resolve().parents[1]
SHOTS, SHOT_LEN = 6, 12
REF_SHOTS = (0, 2, 4)  # shots 1, 3, 5 take their colours from neighbouring shots (second wave)


# --- inputs -------------------------------------------------------------------------------


def write_cut_reel(
    path: Path, shots: int = SHOTS, length: int = SHOT_LEN, width: int = 96, height: int = 64, seed: int = 7
) -> Path:
    """A grey FFV1 reel of ``shots`` hard-cut shots of ``length`` frames at 24 fps
    (:func:`pipeline.media.synth.write_cut_reel`: panning blocky textures, a moving bar)."""
    return synth.write_cut_reel(path, shots, length, width=width, height=height, seed=seed)


def write_shot_refs(folder: Path, shots: tuple[int, ...] = REF_SHOTS, seed: int = 3) -> Path:
    """``shot-K.png`` colour exemplars (smooth random colours, 48x32) for ``shots``."""
    return synth.write_shot_refs(folder, shots, seed=seed)


@pytest.fixture
def cut_reel(tmp_path: Path) -> SimpleNamespace:
    """A 6-shot reel named with characters artifact keys may not hold, its refs, out and work paths."""
    reel = write_cut_reel(tmp_path / "Reel_01 A.mkv")
    return SimpleNamespace(
        reel=reel, refs=write_shot_refs(tmp_path / "refs"), out=tmp_path / "out.mkv", workdir=tmp_path / "work"
    )


# --- Prefect and fake colour stages ---------------------------------------------------------


class FakeStages:
    """Stand-ins for the colour stages. ``attempts``: (shot, work size) of every colorize call
    that did work or failed; ``fail``: shot -> exception factory (message -> exception) raised
    ``fail_times[shot]`` times (default: always); ``oom_above``: work sizes above it raise CUDA
    out-of-memory."""

    def __init__(self) -> None:
        self.attempts: list[tuple[int, int]] = []
        self.fail: dict[int, Callable[[str], Exception]] = {}
        self.fail_times: dict[int, int] = {}
        self.oom_above: int | None = None
        self.lock = threading.Lock()

    def computed(self) -> set[int]:
        return {i for i, _ in self.attempts}

    def colorize_shot(self, plan: Plan, i: int, workdir: Path, settings: RunSettings, **_: object) -> Path | None:
        import torch

        if plan.shots[i].source == "grey":
            return None
        dest = segment_path(workdir, plan, i, settings)
        if dest.exists():
            return dest
        with self.lock:
            self.attempts.append((i, settings.work_size))
            if i in self.fail and self.fail_times.get(i, 1) > 0:
                self.fail_times[i] = self.fail_times.get(i, 1) - 1
                raise self.fail[i](f"shot {i}: injected failure")
        if self.oom_above is not None and settings.work_size > self.oom_above:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
        dest.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(dest) as tmp:
            tmp.write_text(f"{i}@{settings.work_size}")
        return dest

    @staticmethod
    def assemble(
        plan: Plan,
        segments: dict[int, Path | None],
        out: Path,
        settings: RunSettings,
        *,
        force: bool = False,
        **_: object,
    ) -> Path:
        parts = [("grey" if p is None else p.read_text()) for _, p in sorted(segments.items())]
        with atomic_output(Path(out), force=force) as tmp:
            tmp.write_text(",".join(parts))
        return Path(out)

    @staticmethod
    def contact_sheet(plan: Plan, segments: dict[int, Path | None], dest: Path, **_: object) -> Path:
        Path(dest).write_bytes(b"\x89PNG fake")
        return Path(dest)


def user_error(message: str) -> PostprodError:
    return PostprodError(None, message)


@pytest.fixture
def fake_stages(monkeypatch: pytest.MonkeyPatch) -> FakeStages:
    fake = FakeStages()
    for name in ("colorize_shot", "assemble"):
        monkeypatch.setattr(run, name, getattr(fake, name))
    monkeypatch.setattr(review, "contact_sheet", fake.contact_sheet)
    return fake


def colorize(ns: SimpleNamespace, **kwargs: object) -> State:
    """Run the colorize-reel flow on ``ns``'s reel; returns its final state (never raises)."""
    from flows.reel import colorize_reel

    return colorize_reel(
        reel=ns.reel,
        refs=ns.refs,
        out=ns.out,
        workdir=ns.workdir,
        settings=RunSettings(codec="ffv1"),
        return_state=True,
        **kwargs,
    )


def artifacts_of(flow_run_id: UUID) -> dict[str, SimpleNamespace]:
    """The flow run's artifacts by key (the latest of each), as namespaces of the API's JSON."""
    from prefect.client.orchestration import get_client

    # a raw request: the clients' read_artifacts send nulls that the server (fastapi 0.154) refuses
    with get_client(sync_client=True) as client:
        found = client.request(
            "POST", "/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [str(flow_run_id)]}}}
        ).json()
    return {a["key"]: SimpleNamespace(**a) for a in sorted(found, key=lambda a: a["created"])}


def table_rows(artifact: SimpleNamespace) -> list[dict[str, object]]:
    data = artifact.data
    return json.loads(data) if isinstance(data, str) else data


# --- the colorize-reel flow -----------------------------------------------------------------


def test_flow_colours_shots_wave_by_wave_and_reports(
    prefect_api: None, cut_reel: SimpleNamespace, fake_stages: FakeStages
) -> None:
    state = colorize(cut_reel)
    assert state.is_completed(), state.message
    assert cut_reel.out.read_text() == ",".join(f"{i}@256" for i in range(SHOTS))
    order = [i for i, _ in fake_stages.attempts]
    assert set(order[:3]) == set(REF_SHOTS) and set(order[3:]) == {1, 3, 5}  # neighbours after their sources

    from prefect.client.orchestration import get_client

    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(flow_run_id).name == "colorize-Reel_01 A"
    arts = artifacts_of(flow_run_id)
    assert {"reel-01-a-report", "reel-01-a-shots", "reel-01-a-progress"} <= set(arts)
    assert arts["reel-01-a-progress"].data == 100.0
    rows = table_rows(arts["reel-01-a-shots"])
    assert [r["shot"] for r in rows] == list(range(SHOTS))
    assert {r["status"] for r in rows} == {"coloured"}
    assert rows[1]["refs"] == "frame 11; frame 24; from shots 0, 2"
    report = arts["reel-01-a-report"].data
    assert (cut_reel.workdir / "contact-sheet.png").resolve().as_uri() in report
    assert f"output: `{cut_reel.out.resolve()}`" in report and "Failed shots" not in report


def test_rerun_reuses_segments_and_distrusts_a_cache_whose_segment_is_gone(
    prefect_api: None, cut_reel: SimpleNamespace, fake_stages: FakeStages
) -> None:
    assert colorize(cut_reel).is_completed()
    first = cut_reel.out.read_text()
    fake_stages.attempts.clear()
    state = colorize(cut_reel, force=True)
    assert state.is_completed() and fake_stages.attempts == []
    rows = table_rows(artifacts_of(state.state_details.flow_run_id)["reel-01-a-shots"])
    assert {r["status"] for r in rows} == {"cached"}  # Prefect's cache, the task did not even run

    plan_path = cut_reel.workdir / PLAN_NAME
    segment_path(cut_reel.workdir, load_plan(plan_path), 4, RunSettings(codec="ffv1")).unlink()
    state = colorize(cut_reel, force=True)
    assert state.is_completed()
    assert fake_stages.computed() == {4}  # a cached result naming a deleted segment is not trusted
    assert cut_reel.out.read_text() == first


def test_changed_reference_redoes_only_that_shot_and_the_shots_borrowing_from_it(
    prefect_api: None, cut_reel: SimpleNamespace, fake_stages: FakeStages
) -> None:
    assert colorize(cut_reel).is_completed()
    fake_stages.attempts.clear()
    Image.new("RGB", (48, 32), (200, 40, 10)).save(cut_reel.refs / "shot-2.png")
    assert colorize(cut_reel, force=True).is_completed()
    assert fake_stages.computed() == {2, 1, 3}  # shots 1 and 3 borrow shot 2's colours


def test_failed_shot_other_shots_finish_no_output_and_rerun_redoes_only_failed(
    prefect_api: None, cut_reel: SimpleNamespace, fake_stages: FakeStages
) -> None:
    from flows.reel import ReelIncomplete, colorize_reel

    fake_stages.fail = {2: user_error}
    with pytest.raises(ReelIncomplete) as info:
        colorize_reel(
            reel=cut_reel.reel,
            refs=cut_reel.refs,
            out=cut_reel.out,
            workdir=cut_reel.workdir,
            settings=RunSettings(codec="ffv1"),
        )
    assert set(info.value.failures) == {1, 2, 3}  # 1 and 3 take their colours from shot 2
    assert "injected failure" in info.value.failures[2] and "\n" not in str(info.value)
    assert [a for a in fake_stages.attempts if a[0] == 2] == [(2, 256)]  # a user error is not retried
    assert fake_stages.computed() == {0, 2, 4, 5}
    assert not cut_reel.out.exists() and not list(cut_reel.out.parent.glob(".out.partial*"))

    fake_stages.fail, fake_stages.attempts = {}, []
    assert colorize(cut_reel).is_completed()
    assert fake_stages.computed() == {1, 2, 3}
    assert cut_reel.out.read_text() == ",".join(f"{i}@256" for i in range(SHOTS))


def test_failed_run_reports_failures(prefect_api: None, cut_reel: SimpleNamespace, fake_stages: FakeStages) -> None:
    fake_stages.fail = {4: user_error}
    state = colorize(cut_reel)
    assert state.is_failed()
    arts = artifacts_of(state.state_details.flow_run_id)
    report = arts["reel-01-a-report"].data
    assert "**not written**" in report and "- shot 4 (frames 48-60): PostprodError: shot 4: injected failure" in report
    statuses = {r["shot"]: r["status"] for r in table_rows(arts["reel-01-a-shots"])}
    assert statuses == {0: "coloured", 1: "coloured", 2: "coloured", 3: "failed", 4: "failed", 5: "failed"}
    assert arts["reel-01-a-progress"].data == 100.0


def test_transient_error_is_retried(
    prefect_api: None, cut_reel: SimpleNamespace, fake_stages: FakeStages, monkeypatch: pytest.MonkeyPatch
) -> None:
    import flows.shot

    monkeypatch.setattr(
        flows.shot, "colorize_shot_task", flows.shot.colorize_shot_task.with_options(retry_delay_seconds=0)
    )
    fake_stages.fail, fake_stages.fail_times = {0: OSError}, {0: 1}
    assert colorize(cut_reel).is_completed()
    assert [a for a in fake_stages.attempts if a[0] == 0] == [(0, 256), (0, 256)]


def test_cuda_out_of_memory_retries_the_shot_at_a_lower_work_size(
    prefect_api: None, cut_reel: SimpleNamespace, fake_stages: FakeStages
) -> None:
    from flows.shot import oom_work_sizes

    fake_stages.oom_above = 150
    state = colorize(cut_reel)
    assert state.is_completed()
    assert [a for a in fake_stages.attempts if a[0] == 0] == [(0, 256), (0, 192), (0, 128)]
    assert cut_reel.out.read_text() == ",".join(f"{i}@128" for i in range(SHOTS))
    # filed under the requested settings' key: neighbours and later runs find it
    settings = RunSettings(codec="ffv1")
    assert segment_path(cut_reel.workdir, load_plan(cut_reel.workdir / PLAN_NAME), 0, settings).is_file()
    rows = table_rows(artifacts_of(state.state_details.flow_run_id)["reel-01-a-shots"])
    assert {r["work px"] for r in rows} == {128}

    fake_stages.oom_above, fake_stages.attempts = 0, []
    cut_reel.workdir = cut_reel.workdir.with_name("work2")
    assert colorize(cut_reel, force=True).is_failed()
    assert len([a for a in fake_stages.attempts if a[0] == 0]) == len(oom_work_sizes(256))


def test_run_flow_raises_a_one_line_user_error_before_any_shot(
    prefect_api: None, cut_reel: SimpleNamespace, fake_stages: FakeStages
) -> None:
    from flows.reel import run_flow

    with pytest.raises(PostprodError, match="refs folder not found") as info:
        run_flow(
            cut_reel.reel, cut_reel.reel.parent / "nope", cut_reel.out, cut_reel.workdir, RunSettings(codec="ffv1")
        )
    assert "\n" not in str(info.value) and fake_stages.attempts == []
    cut_reel.out.write_text("keep")
    with pytest.raises(PostprodError, match="already exists"):
        run_flow(cut_reel.reel, cut_reel.refs, cut_reel.out, cut_reel.workdir, RunSettings(codec="ffv1"))
    assert cut_reel.out.read_text() == "keep" and fake_stages.attempts == []


def test_cli_run_reports_failed_shots_on_one_line_without_traceback(
    prefect_api: None,
    cut_reel: SimpleNamespace,
    fake_stages: FakeStages,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    from cli import main as cli

    fake_stages.fail = {0: user_error}
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "postprod",
            "run",
            "--reel",
            str(cut_reel.reel),
            "--refs",
            str(cut_reel.refs),
            "--out",
            str(cut_reel.out),
            "--codec",
            "ffv1",
            "--workdir",
            str(cut_reel.workdir),
        ],
    )
    with pytest.raises(SystemExit) as info:
        cli.main()
    assert info.value.code == cli.EXIT_USER_ERROR
    err = capfd.readouterr().err
    assert "Traceback" not in err and " INFO " not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"postprod: error: {cut_reel.out.resolve()}: not written: 2 shot(s) failed (shot 0: ")
    assert last.endswith("rerun the same command to redo only those") and not cut_reel.out.exists()


def test_cli_run_refs_problem_found_in_the_plan_is_reported_once(
    prefect_api: None,
    cut_reel: SimpleNamespace,
    fake_stages: FakeStages,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """A problem only the plan finds (a frame past the reel's end) fails the flow's prepare task:
    the CLI reports it once, and Prefect's console does not repeat it (escaped newlines and all)."""
    from cli import main as cli

    (cut_reel.refs / "frame-9999.png").write_bytes((cut_reel.refs / "shot-0.png").read_bytes())
    monkeypatch.setattr(
        sys,
        "argv",
        ["postprod", "run", "--reel", str(cut_reel.reel), "--refs", str(cut_reel.refs), "--out", str(cut_reel.out)]
        + ["--codec", "ffv1", "--workdir", str(cut_reel.workdir)],
    )
    with pytest.raises(SystemExit) as info:
        cli.main()
    assert info.value.code == cli.EXIT_USER_ERROR
    err = capfd.readouterr().err
    assert "Finished in state" not in err and "\\n" not in err and "Traceback" not in err
    assert err.count("frame-9999.png: frame 9999 is outside the reel") == 1
    assert err.strip().splitlines()[-2:] == [
        f"postprod: error: {cut_reel.refs.resolve()}/: 1 problem",
        f"  {cut_reel.refs.resolve()}/frame-9999.png: frame 9999 is outside the reel (frames 0-71, "
        "00:00:00:00-00:00:02:23)",
    ]
    assert fake_stages.attempts == [] and not cut_reel.out.exists()


def test_gpu_limit_created_once_with_the_local_gpu_count(prefect_api: None) -> None:
    from prefect.client.orchestration import get_client

    from flows.settings import ensure_gpu_limit, gpu_count

    assert ensure_gpu_limit("gpu-test") == gpu_count() >= 1
    with get_client(sync_client=True) as client:
        client.delete_global_concurrency_limit_by_name("gpu-test")
    assert ensure_gpu_limit("gpu-test", slots=3) == 3
    assert ensure_gpu_limit("gpu-test", slots=5) == 3  # an existing limit is the operator's


# --- pure helpers -------------------------------------------------------------------------------


def test_oom_work_sizes() -> None:
    from flows.shot import oom_work_sizes

    assert oom_work_sizes(256) == [256, 192, 128]
    assert oom_work_sizes(100) == [100, 75]  # never below MIN_WORK_SIZE (64)
    assert oom_work_sizes(64) == [64]


def test_artifact_keys_and_links() -> None:
    from flows.artifacts import artifact_key, file_link

    assert artifact_key(Path("/x/Reel_01 A (v2).mov"), "report") == "reel-01-a-v2-report"
    env = {"POSTPROD_URL_BASE": "https://files.studio/pp/", "POSTPROD_URL_ROOT": "/mnt/pp"}
    assert (
        file_link(Path("/mnt/pp/work/r/contact-sheet.png"), env) == "https://files.studio/pp/work/r/contact-sheet.png"
    )
    assert file_link(Path("/elsewhere/c.png"), env) == "file:///elsewhere/c.png"


def test_server_defaults_never_override_the_user() -> None:
    from flows.settings import apply_server_defaults

    env = {"PREFECT_SERVER_ANALYTICS_ENABLED": "true", "PREFECT_API_URL": "http://farm:4200/api"}
    added = apply_server_defaults(env)
    assert added == {"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "600", "DO_NOT_TRACK": "1"}
    assert env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "true" and env["PREFECT_API_URL"] == "http://farm:4200/api"


def test_quiet_console_hides_info_and_tracebacks_then_restores() -> None:
    from flows.settings import prefect_console_handlers, quiet_console

    handlers = prefect_console_handlers()
    assert handlers, "prefect's console handler is set up at import"
    info = logging.LogRecord("prefect", logging.INFO, __file__, 1, "hello", None, None)
    error = logging.LogRecord("prefect", logging.ERROR, __file__, 1, "boom", None, (ValueError, ValueError(), None))
    warning = logging.LogRecord("prefect", logging.WARNING, __file__, 1, "careful", None, None)
    shown = lambda r: r.levelno >= handlers[0].level and handlers[0].filter(r)  # noqa: E731
    with quiet_console(environ={}):
        assert not shown(info) and not shown(error) and shown(warning)
    assert shown(info) and shown(error)
    with quiet_console(environ={"PREFECT_LOGGING_LEVEL": "INFO"}):
        assert shown(info)


# --- deployments ----------------------------------------------------------------------------------


def test_prefect_yaml_deployments_point_at_the_flows_and_their_parameters() -> None:
    import importlib

    import yaml
    from prefect import Flow

    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    deployments, names = spec["deployments"], set()
    for d in deployments:
        path, func = d["entrypoint"].split(":")
        flow = getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), func)
        assert isinstance(flow, Flow), d["entrypoint"]
        assert set(d.get("parameters", {})) <= set(flow.parameters.properties), d["name"]
        names.add(f"{flow.name}/{d['name']}")
    assert {"colorize-reel/colorize-reel", "colorize-shot/colorize-shot", "ingest/ingest"} <= names
    for d in deployments:  # the shot deployment a reel deployment fans out to exists, on the same pool
        target = d.get("parameters", {}).get("shot_deployment")
        if target:
            assert target in names
            shot = next(x for x in deployments if x["name"] == target.split("/")[1])
            assert (
                shot["work_pool"]["name"] == d["work_pool"]["name"] and shot["work_pool"]["work_queue_name"] == "shots"
            )
    ingest = next(d for d in deployments if d["name"] == "ingest")
    assert ingest["schedules"] == [{"cron": "*/5 * * * *", "timezone": "UTC"}]
    assert ingest["concurrency_limit"] == {"limit": 1, "collision_strategy": "CANCEL_NEW"}  # one scan at a time


# --- kill and resume, real stages ---------------------------------------------------------------


def cli_run(reel: Path, refs: Path, out: Path, workdir: Path) -> list[str]:
    """``postprod run`` (Prefect engine) of ``reel`` into a lossless FFV1 ``out``."""
    return [
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
        str(workdir),
        "--device",
        "cpu",
        "--work-size",
        "64",
        "--engine",
        "prefect",
    ]


def run_to_end(cmd: list[str], env: dict[str, str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``cmd`` in its own process group; on a timeout, kill the group (its embedded server too)."""
    proc = subprocess.Popen(
        cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


@pytest.mark.slow
def test_killed_run_resumes_without_recomputing_and_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    shots = 3
    reel = write_cut_reel(tmp_path / "kill.mkv", shots=shots)
    refs = write_shot_refs(tmp_path / "refs", tuple(range(shots)))
    # the embedded server, in a fresh PREFECT_HOME: what a laptop gets
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    )
    # the uninterrupted run: the same stages as plain Python
    whole = run_to_end(
        [*cli_run(reel, refs, tmp_path / "whole.mkv", tmp_path / "work-whole")[:-1], "local"], env, tmp_path
    )
    assert whole.returncode == 0, whole.stderr

    out, workdir = tmp_path / "out.mkv", tmp_path / "work"
    segments = workdir / SEGMENTS
    killed = subprocess.Popen(
        cli_run(reel, refs, out, workdir),
        env=env,
        cwd=tmp_path,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while not list(segments.glob("shot-*.mkv")):
            assert killed.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
            time.sleep(0.05)
    finally:
        os.killpg(killed.pid, signal.SIGKILL)  # the CLI and its embedded server
        killed.wait()
    done = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in segments.glob("shot-*.mkv")}
    assert 1 <= len(done) < shots and not out.exists()

    resumed = run_to_end(cli_run(reel, refs, out, workdir), env, tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "INFO" not in resumed.stderr  # Prefect stays quiet on the console
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in done} == done  # not recomputed
    assert len(list(segments.glob("shot-*.mkv"))) == shots
    assert out.read_bytes() == (tmp_path / "whole.mkv").read_bytes()


# --- the farm's pure helpers and the operators' view ----------------------------------------------


def test_a_run_is_lost_when_the_worker_holding_it_is_offline() -> None:
    from prefect.client.schemas.objects import StateType

    from flows.reel import WORKER_LABEL, lost_worker

    def run(state: StateType, worker: str | None) -> SimpleNamespace:
        return SimpleNamespace(state_type=state, labels={WORKER_LABEL: worker} if worker else {})

    offline = {"gpu-3"}
    assert lost_worker(run(StateType.RUNNING, "gpu-3"), offline) == "gpu-3"
    assert lost_worker(run(StateType.PENDING, "gpu-3"), offline) == "gpu-3"  # taken, not started yet
    assert lost_worker(run(StateType.RUNNING, "gpu-1"), offline) is None  # its worker is alive
    assert lost_worker(run(StateType.SCHEDULED, None), offline) is None  # nobody holds it
    assert lost_worker(run(StateType.COMPLETED, "gpu-3"), offline) is None  # it finished first


def test_shot_outcomes_load_across_versions_and_give_their_table_cells() -> None:
    from flows.shot import ShotOutcome

    old = {"index": 2, "key": "k", "segment": None, "work_size": 64, "seconds": 1.5, "reused": False}
    old.update(host="h", pid=10, ppid=9)
    outcome = ShotOutcome.from_dict({**old, "a-field-of-a-later-version": 0.9})
    assert outcome.worker is None and outcome.runs == 1 and not outcome.cached
    assert outcome.row() == {"seconds": 1.5, "work px": 64, "worker": "h:10", "runs": 1}
    assert list(outcome.row()) == list(ShotOutcome.COLUMNS)
    assert ShotOutcome.from_dict(outcome.to_dict()) == outcome


def test_progress_line() -> None:
    from flows.artifacts import progress_line

    assert progress_line(0, 300, 0, 3000, 0.0) == "0/300 shots, 0.0 frames/s, ETA -"
    assert progress_line(30, 300, 300, 3000, 60.0) == "30/300 shots, 5.0 frames/s, ETA 9 min"
    assert progress_line(299, 300, 2990, 3000, 600.0) == "299/300 shots, 5.0 frames/s, ETA 2 s"
    assert progress_line(300, 300, 3000, 3000, 600.0) == "300/300 shots, 5.0 frames/s, done"


def test_the_report_of_a_long_reel_stays_a_page_long() -> None:
    from flows.artifacts import MARKDOWN_LINES, Report, report_markdown

    rows = [
        {"shot": i, "frames": f"{10 * i}-{10 * i + 10}", "status": "coloured", "seconds": 1.0, "worker": f"w{i % 2}"}
        for i in range(300)
    ]
    rows[7].update(status="failed", error="boom", worker=None, seconds=None)
    for i in range(40):
        rows[100 + i]["runs"] = 2
    text = report_markdown(Report(Path("/r/feature.mov"), None, Path("/w"), 600.0, rows, None, frames=3000))
    assert len(text.splitlines()) < 70
    assert "- shots: 300: 299 coloured, 1 failed" in text and "(5.0 frames/s)" in text
    assert "- shot 7 (frames 70-80): boom" in text
    assert f"... and {40 - MARKDOWN_LINES} more rerun: see the table `feature-shots`" in text
    assert "| w0 | 150 | 150.0 |" in text and "| w1 | 149 | 149.0 |" in text  # shots per worker
    assert "## Shots\n" not in text and "the table artifact `feature-shots`" in text


def test_farm_shots_go_in_batches_that_keep_every_gpu_busy() -> None:
    from flows.reel import MAX_SHOTS_PER_RUN, batches, shots_per_run_for

    assert shots_per_run_for(4, 2) == 1  # a short reel: one shot per run, spread over the GPUs
    assert shots_per_run_for(300, 2) == MAX_SHOTS_PER_RUN == 16
    assert shots_per_run_for(300, 8) == 9  # four runs per GPU
    assert shots_per_run_for(0, 2) == 1
    assert batches([0, 2, 4, 6, 8], 2) == [[0, 2], [4, 6], [8]]


def test_the_shot_flow_colours_its_shots_and_keeps_those_done_when_one_fails(
    prefect_api: None, cut_reel: SimpleNamespace, fake_stages: FakeStages
) -> None:
    from flows.shot import colorize_shot_flow, outcome_path

    settings = RunSettings(codec="ffv1")
    run.prepare_run(cut_reel.reel, cut_reel.refs, cut_reel.workdir, settings)
    fake_stages.fail = {2: user_error}
    state = colorize_shot_flow(
        cut_reel.workdir / PLAN_NAME, shots=[0, 2, 4], workdir=cut_reel.workdir, settings=settings, return_state=True
    )
    assert state.is_failed() and "shot 2: PostprodError: shot 2: injected failure" in state.message
    assert fake_stages.computed() == {0, 2, 4}  # shot 4 ran after shot 2 failed
    assert [outcome_path(cut_reel.workdir, i).is_file() for i in (0, 2, 4)] == [True, False, True]
