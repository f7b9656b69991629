"""The ``ingest`` flow (flows/ingest.py): the drop-folder convention, and exactly one run per reel
and content, on Prefect's test server: overlapping scans, a reel still being copied, refs
arriving after their reel, a failed reel (retried only when its files change or an operator
touches ``<name>.retry``).

The reel deployment is registered on the test server but no worker runs it: its runs stay
Scheduled unless a test sets their state, which is all ingest looks at.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from pipeline.media.synth import write_cut_reel, write_shot_refs
from pipeline.settings import RunSettings


def _touch_old(*paths: Path) -> None:
    """Set the modification time of ``paths`` (folders: and everything in them) an hour back."""
    old = time.time() - 3600
    for p in paths:
        for q in [p, *(p.rglob("*") if p.is_dir() else [])]:
            os.utime(q, (old, old))


def _reel(folder: Path, name: str, seed: int = 7, refs: bool = True) -> Path:
    reel = write_cut_reel(folder / f"{name}.mkv", 1, 6, width=32, height=24, seed=seed)
    if refs:
        write_shot_refs(folder / f"{name}.refs", (0,), seed=seed)
    _touch_old(reel, *([folder / f"{name}.refs"] if refs else []))
    return reel


# --- the folder convention, pure ----------------------------------------------------------------


def test_scan_ingest_convention(tmp_path: Path) -> None:
    from flows.ingest import scan_ingest

    for name in ("a.mov", "b.MKV", ".c.mov", "notes.txt", "fresh.mp4"):
        (tmp_path / name).write_bytes(b"x")
    write_shot_refs(tmp_path / "a.refs", (0,))
    (tmp_path / "out").mkdir()
    (tmp_path / "b.retry").touch()
    _touch_old(*(p for p in tmp_path.iterdir() if p.name != "fresh.mp4"))
    items = scan_ingest(tmp_path, settle_seconds=60)
    assert [(i.name, i.refs, i.retry) for i in items] == [
        ("a", tmp_path / "a.refs", None),
        ("b", None, tmp_path / "b.retry"),
    ]
    (tmp_path / "a.refs" / "shot-1.png").write_bytes(b"still copying")
    assert [i.name for i in scan_ingest(tmp_path, settle_seconds=60)] == ["b"]


def test_reel_status() -> None:
    from prefect.client.schemas.objects import StateType

    from flows.ingest import reel_status

    def runs(*types: tuple[StateType, str]) -> list:
        return [SimpleNamespace(state_type=t, idempotency_key=k) for t, k in types]

    missing, key = Path("/nonexistent/out.mov"), "r-new"
    assert reel_status(missing, [], key) == "new"
    assert reel_status(missing, runs((StateType.FAILED, "r-old")), key) == "new"  # other content
    assert reel_status(missing, runs((StateType.FAILED, key)), key) == "failed"
    assert reel_status(missing, runs((StateType.CRASHED, key)), key) == "failed"
    assert reel_status(missing, runs((StateType.RUNNING, "r-old")), key) == "in progress"
    assert reel_status(missing, runs((StateType.SCHEDULED, key)), key) == "in progress"
    assert reel_status(missing, runs((StateType.FAILED, key), (StateType.COMPLETED, key)), key) == "done"
    assert reel_status(Path(__file__), [], key) == "done"


def test_content_key_follows_reel_refs_and_retry_file(tmp_path: Path) -> None:
    from flows.ingest import IngestItem, content_key

    reel = _reel(tmp_path, "k")
    refs = tmp_path / "k.refs"
    first = content_key(IngestItem("k", reel, refs))
    assert content_key(IngestItem("k", reel, refs)) == first
    assert content_key(IngestItem("k", reel, None)) != first
    (refs / "shot-0.png").write_bytes((refs / "shot-0.png").read_bytes() + b"\0")
    changed = content_key(IngestItem("k", reel, refs))
    assert changed != first
    retry = tmp_path / "k.retry"
    retry.touch()
    assert content_key(IngestItem("k", reel, refs, retry)) != changed


# --- scans on a Prefect server -----------------------------------------------------------------


@pytest.fixture
def drop(prefect_api: None, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[SimpleNamespace]:
    """A drop folder and a ``colorize-reel`` deployment of its own (no worker: runs stay put)."""
    from prefect.client.orchestration import get_client

    from flows.reel import colorize_reel

    name = f"ingest-{request.node.name.removeprefix('test_')[:40]}".replace("_", "-")
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow(colorize_reel)
        client.create_deployment(flow_id=flow_id, name=name, entrypoint="flows/reel.py:colorize_reel")
    folder = tmp_path / "drop"
    folder.mkdir()
    yield SimpleNamespace(folder=folder, deployment=f"colorize-reel/{name}")


def scan(drop: SimpleNamespace, **kwargs: object) -> list[str]:
    from flows.ingest import ingest

    options: dict[str, object] = {"settle_seconds": 60, "recheck_seconds": 0}
    options.update(kwargs)
    return ingest(drop.folder, deployment=drop.deployment, **options)


def runs_of(drop: SimpleNamespace, name: str) -> list:
    from flows.ingest import reel_runs

    return reel_runs(drop.folder / f"{name}.mkv", drop.deployment)


def set_state(flow_run_id: object, state: object) -> None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.set_flow_run_state(flow_run_id, state, force=True)


def test_overlapping_scans_submit_one_run(drop: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    import flows.ingest

    _reel(drop.folder, "a")
    _reel(drop.folder, "d", seed=8)
    (drop.folder / "out").mkdir()
    (drop.folder / "out" / "d.mov").write_bytes(b"delivered")  # done: its output exists
    real, both = flows.ingest.reel_runs, threading.Barrier(2, timeout=120)

    def read_then_wait(reel: Path, deployment: str) -> list:
        runs = real(reel, deployment)
        both.wait()  # neither scan submits before both have looked: they overlap for sure
        return runs

    monkeypatch.setattr(flows.ingest, "reel_runs", read_then_wait)
    found: list[list[str]] = []
    scans = [threading.Thread(target=lambda: found.append(scan(drop))) for _ in range(2)]
    for s in scans:
        s.start()
    for s in scans:
        s.join(timeout=180)
    monkeypatch.setattr(flows.ingest, "reel_runs", real)
    assert found == [["a"], ["a"]]  # each scan found it new and submitted it ...
    (run,) = runs_of(drop, "a")  # ... and the server holds one run
    assert run.name == "colorize-a" and "reel:a" in run.tags
    params = run.parameters
    assert params["refs"] == str((drop.folder / "a.refs").resolve())
    assert params["out"] == str((drop.folder / "out" / "a.mov").resolve())
    assert Path(params["workdir"]).parent == (drop.folder / ".work").resolve()
    assert RunSettings.from_dict(params["settings"]) == RunSettings()
    assert runs_of(drop, "d") == []
    assert scan(drop) == [] and len(runs_of(drop, "a")) == 1  # a later scan: in progress


def test_a_reel_still_being_copied_is_not_started(drop: SimpleNamespace) -> None:
    reel = _reel(drop.folder, "c")
    old = reel.stat().st_mtime
    stop = threading.Event()

    def copying() -> None:  # a copy that keeps the source's modification time: only the size moves
        with reel.open("ab") as f:
            while not stop.is_set():
                f.write(b"\0" * 512)
                f.flush()
                os.utime(reel, (old, old))
                time.sleep(0.05)

    copier = threading.Thread(target=copying)
    copier.start()
    try:
        assert scan(drop, recheck_seconds=1.0) == []
    finally:
        stop.set()
        copier.join()
    assert runs_of(drop, "c") == []
    assert scan(drop, recheck_seconds=0.5) == ["c"]  # the copy is over: the size holds still
    assert len(runs_of(drop, "c")) == 1


def test_refs_arriving_after_their_reel(drop: SimpleNamespace) -> None:
    _reel(drop.folder, "r", refs=False)
    assert scan(drop) == []  # waits for its refs
    write_shot_refs(drop.folder / "r.refs", (0,))
    assert scan(drop) == []  # the refs folder is still fresh: being copied
    _touch_old(drop.folder / "r.refs")
    assert scan(drop) == ["r"]
    assert scan(drop) == []
    (run,) = runs_of(drop, "r")
    assert run.parameters["refs"] == str((drop.folder / "r.refs").resolve())


def test_a_failed_reel_is_retried_only_when_its_files_change_or_an_operator_asks(drop: SimpleNamespace) -> None:
    from prefect.states import Completed, Failed

    _reel(drop.folder, "f")
    assert scan(drop) == ["f"]
    (first,) = runs_of(drop, "f")
    set_state(first.id, Failed(message="shots failed"))
    assert scan(drop) == [] and scan(drop) == []  # failed: waits
    assert len(runs_of(drop, "f")) == 1

    retry = drop.folder / "f.retry"
    retry.touch()  # the operator asks
    assert scan(drop) == ["f"]
    assert scan(drop) == []
    runs = runs_of(drop, "f")
    assert len(runs) == 2 and len({r.idempotency_key for r in runs}) == 2
    second = next(r for r in runs if r.id != first.id)
    set_state(second.id, Failed(message="again"))
    assert scan(drop) == []

    _reel(drop.folder, "f", seed=11)  # a new delivery of the reel: new content
    assert scan(drop) == ["f"]
    runs = runs_of(drop, "f")
    assert len(runs) == 3
    third = next(r for r in runs if r.id not in (first.id, second.id))
    set_state(third.id, Completed())
    assert scan(drop) == []  # done
