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
from collections.abc import Callable, Iterator
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


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    """A temporary Prefect server (SQLite in a temp PREFECT_HOME) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=600):
        yield


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


# --- ingest -------------------------------------------------------------------------------------


def _touch_old(*paths: Path) -> None:
    old = time.time() - 3600
    for p in paths:
        for q in [p, *(p.rglob("*") if p.is_dir() else [])]:
            os.utime(q, (old, old))


def test_scan_ingest_convention(tmp_path: Path) -> None:
    from flows.ingest import scan_ingest

    for name in ("a.mov", "b.MKV", ".c.mov", "notes.txt", "fresh.mp4"):
        (tmp_path / name).write_bytes(b"x")
    write_shot_refs(tmp_path / "a.refs", (0,))
    (tmp_path / "out").mkdir()
    _touch_old(*(p for p in tmp_path.iterdir() if p.name != "fresh.mp4"))
    items = scan_ingest(tmp_path, settle_seconds=60)
    assert [(i.name, i.refs) for i in items] == [("a", tmp_path / "a.refs"), ("b", None)]
    (tmp_path / "a.refs" / "shot-1.png").write_bytes(b"still copying")
    assert [i.name for i in scan_ingest(tmp_path, settle_seconds=60)] == ["b"]


def test_reel_status() -> None:
    from prefect.client.schemas.objects import StateType

    from flows.ingest import reel_status

    runs = lambda *types: [SimpleNamespace(state_type=t) for t in types]  # noqa: E731
    missing = Path("/nonexistent/out.mov")
    assert reel_status(missing, [], 3) == "new"
    assert reel_status(missing, runs(StateType.FAILED, StateType.CRASHED), 3) == "new"
    assert reel_status(missing, runs(StateType.FAILED, StateType.RUNNING), 3) == "in progress"
    assert reel_status(missing, runs(StateType.SCHEDULED), 3) == "in progress"
    assert reel_status(missing, runs(StateType.FAILED, StateType.COMPLETED), 3) == "done"
    assert reel_status(missing, runs(*[StateType.FAILED] * 3), 3) == "gave up"
    assert reel_status(Path(__file__), [], 3) == "done"


def test_reel_runs_are_the_tagged_runs_of_the_deployment(prefect_api: None) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType

    from flows.ingest import reel_runs
    from flows.reel import colorize_reel

    with get_client(sync_client=True) as client:
        flow_id = client.create_flow(colorize_reel)
        deployment = client.create_deployment(
            flow_id=flow_id, name="ingest-test", entrypoint="flows/reel.py:colorize_reel"
        )
        other = client.create_deployment(
            flow_id=flow_id, name="ingest-test-other", entrypoint="flows/reel.py:colorize_reel"
        )
        mine = client.create_flow_run_from_deployment(deployment, tags=["reel:abc"])
        client.create_flow_run_from_deployment(deployment, tags=["reel:abcd"])
        client.create_flow_run_from_deployment(other, tags=["reel:abc"])
    runs = reel_runs(Path("/x/abc.mov"), "colorize-reel/ingest-test")
    assert [r.id for r in runs] == [mine.id] and runs[0].state_type == StateType.SCHEDULED


def test_ingest_submits_one_run_per_new_reel(
    prefect_api: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.client.schemas.objects import StateType

    import flows.ingest

    write_cut_reel(tmp_path / "a.mkv", shots=1)
    write_shot_refs(tmp_path / "a.refs", (0,))
    write_cut_reel(tmp_path / "b.mkv", shots=1, seed=8)  # no refs: waits
    write_cut_reel(tmp_path / "c.mkv", shots=1, seed=9)
    write_shot_refs(tmp_path / "c.refs", (0,))
    write_cut_reel(tmp_path / "d.mkv", shots=1, seed=10)
    write_shot_refs(tmp_path / "d.refs", (0,))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "c.mov").write_bytes(b"done")
    _touch_old(*tmp_path.iterdir())
    submitted = []
    monkeypatch.setattr(
        flows.ingest,
        "run_deployment",
        lambda name, **kw: submitted.append((name, kw)) or SimpleNamespace(name=kw["flow_run_name"]),
    )
    monkeypatch.setattr(
        flows.ingest,
        "reel_runs",
        lambda reel, deployment: [SimpleNamespace(state_type=StateType.RUNNING)] if reel.stem == "d" else [],
    )
    names = flows.ingest.ingest(tmp_path, settle_seconds=60)
    assert names == ["a"]
    ((name, kw),) = submitted
    assert name == "colorize-reel/colorize-reel" and kw["tags"] == ["reel:a"] and kw["flow_run_name"] == "colorize-a"
    params = kw["parameters"]
    assert params["reel"] == str((tmp_path / "a.mkv").resolve()) and params["refs"] == str(
        (tmp_path / "a.refs").resolve()
    )
    assert params["out"] == str((tmp_path / "out" / "a.mov").resolve())
    assert Path(params["workdir"]).parent == (tmp_path / ".work").resolve()
    assert RunSettings.from_dict(params["settings"]) == RunSettings()


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
