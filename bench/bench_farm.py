"""A feature-length reel's worth of shots through a farm on this machine: orchestration cost per
shot, server memory, and whether every shot is coloured exactly once.

A generated reel of ``--shots`` hard-cut shots (``pipeline.media.synth.write_cut_reel``, 64x48,
``--length`` frames each, a reference per shot: one wave) goes through the real farm path
(:mod:`flows.localfarm`): ``prefect server start`` on a PostgreSQL cluster (``--backend``), the
``gpu`` pool and the deployments of prefect.yaml, ``--workers`` shot workers (one shot at a
time each) and a reels worker; the reel is one ``colorize-reel`` deployment run whose shots are
``colorize-shot`` runs. The colour work is the real code at the smallest working size (64 px),
as small as the real code makes it (its per-shot fixed cost remains: seconds on a CPU).

Measured: wall time from submission to the reel's completion; colour seconds (each shot's
:class:`flows.shot.ShotOutcome` ``seconds``); **orchestration seconds per shot** = (workers x
wall - colour seconds) / shots, i.e. worker time per shot not spent colouring (a flow-run
process per shot, Prefect's API calls, waiting in the queue); the server's resident memory
(peak, sampled every 2 s); the report's size (lines) and the shots table's rows. Extrapolated:
the wall time of 2,000 shots on the same farm (fixed part + per-shot rate) and its
orchestration hours. Checked: one completed ``colorize-shot`` run per shot, one outcome per
shot computed once (not reused), one segment per shot, all frames in the output.

    python -m bench.bench_farm [--shots 300] [--length 10] [--workers 2] [--backend postgresql] [--shots-per-run N]

Prints a Markdown row for docs/operators.md and writes bench/results/farm.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.toolkit import REPO_ROOT, markdown_table, write_json
from flows.localfarm import LocalFarm, start_postgres
from pipeline.media.probe import probe
from pipeline.media.synth import write_cut_reel, write_shot_refs

FAST_POLL = {"PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_PREFETCH_SECONDS": "1"}


def _ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _all_flow_runs(farm: LocalFarm, filters: dict[str, Any]) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    while True:
        page = farm.api(
            "flow_runs/filter", {"flow_runs": filters, "sort": "ID_DESC", "limit": 200, "offset": len(runs)}
        )
        runs += page
        if len(page) < 200:
            return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", type=int, default=300)
    parser.add_argument("--length", type=int, default=10, help="frames per shot (the shot detector keeps >= 10)")
    parser.add_argument("--size", default="64x48", help="WxH of the reel")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--backend", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument("--extrapolate", type=int, default=2000, help="shots to extrapolate to")
    parser.add_argument(
        "--shots-per-run", type=int, default=None, help="colorize-reel's shots_per_run (default: its own choice)"
    )
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "farm.json")
    args = parser.parse_args()
    width, height = map(int, args.size.split("x"))

    with tempfile.TemporaryDirectory(prefix="bench-farm-") as tmp:
        root = Path(tmp)
        reel = write_cut_reel(root / "feature.mkv", args.shots, args.length, width=width, height=height)
        refs = write_shot_refs(root / "refs", range(args.shots))
        postgres = start_postgres() if args.backend == "postgresql" else None
        farm = LocalFarm(root=root / "farm", repo=REPO_ROOT)
        rss: list[float] = []
        stop = threading.Event()
        try:
            farm.start_server(postgres.url if postgres else None, settings=FAST_POLL)
            farm.setup_pool(args.workers, "colorize-shot", "colorize-reel")
            for k in range(args.workers):
                farm.start_worker(f"bench-w{k + 1}", "shots", limit=1)
            farm.start_worker("bench-reels", "reels")
            idle_rss = farm.server_rss_mib()

            def sample() -> None:
                while not stop.wait(2.0):
                    rss.append(farm.server_rss_mib())

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            deployment = farm.api("deployments/name/colorize-reel/colorize-reel")
            out, workdir = root / "feature.colorized.mkv", root / "work"
            params = {
                "reel": str(reel),
                "refs": str(refs),
                "out": str(out),
                "workdir": str(workdir),
                "settings": {"codec": "ffv1", "device": "cpu", "missing": "nearest", "work_size": 64},
                "shots_per_run": args.shots_per_run,
            }
            started = time.time()
            reel_run = farm.api(
                f"deployments/{deployment['id']}/create_flow_run", {"parameters": params, "name": "colorize-feature"}
            )
            while True:
                state = farm.api(f"flow_runs/{reel_run['id']}")
                if state["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                    break
                time.sleep(2)
            wall = time.time() - started
            stop.set()
            if state["state_type"] != "COMPLETED":
                raise RuntimeError(f"the reel ended {state['state_type']}: {state['state']}\n{farm.tail()}")

            shot_runs = _all_flow_runs(farm, {"parent_flow_run_id": {"any_": [reel_run["id"]]}})
            per_shot: dict[int, list[str]] = {}
            for r in shot_runs:
                for i in r["parameters"]["shots"]:
                    per_shot.setdefault(i, []).append(r["state_type"])
            outcomes = [json.loads(p.read_text()) for p in sorted((workdir / "outcomes").glob("shot-*.json"))]
            segments = [p for p in (workdir / "segments").iterdir() if not p.name.startswith(".")]
            exactly_once = (
                sorted(per_shot) == list(range(args.shots))
                and all(v == ["COMPLETED"] for v in per_shot.values())
                and [o["index"] for o in outcomes] == list(range(args.shots))
                and not any(o["reused"] for o in outcomes)
                and len(segments) == args.shots
                and probe(out).frames == args.shots * args.length
            )
            colour = sum(o["seconds"] for o in outcomes)
            starts = sorted(_ts(r["start_time"]) for r in shot_runs if r["start_time"])
            ends = sorted(_ts(r["end_time"]) for r in shot_runs if r["end_time"])
            shot_span = ends[-1] - starts[0]
            fixed = wall - shot_span  # submission, prepare, assemble, contact sheet, report
            seconds = {o["index"]: o["seconds"] for o in outcomes}
            in_run = statistics.median(  # per shot, inside its run: Prefect's task and API work
                (r["total_run_time"] - sum(seconds[i] for i in r["parameters"]["shots"]))
                / len(r["parameters"]["shots"])
                for r in shot_runs
            )
            arts = farm.api("artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [reel_run["id"]]}}})
            by_key = {a["key"]: a for a in sorted(arts, key=lambda a: a["created"])}
            report_lines = len(by_key["feature-report"]["data"].splitlines())
            table = by_key["feature-shots"]["data"]
            table_rows = len(json.loads(table) if isinstance(table, str) else table)
            result = {
                "shots": args.shots,
                "frames_per_shot": args.length,
                "size": [width, height],
                "workers": args.workers,
                "backend": args.backend,
                "shot_runs": len(shot_runs),
                "wall_s": wall,
                "colour_s": colour,
                "orchestration_s_per_shot": (args.workers * wall - colour) / args.shots,
                "in_run_overhead_s_median": in_run,
                "shot_span_s": shot_span,
                "fixed_s": fixed,
                "server_rss_mib": {"idle": idle_rss, "peak": max(rss, default=idle_rss), "end": rss[-1] if rss else 0},
                "exactly_once": exactly_once,
                "report_lines": report_lines,
                "shots_table_rows": table_rows,
                "progress": by_key["feature-progress"]["description"],
                "extrapolated": {
                    "shots": args.extrapolate,
                    "wall_s": fixed + shot_span / args.shots * args.extrapolate,
                    "orchestration_h": (args.workers * wall - colour) / args.shots * args.extrapolate / 3600,
                },
                "server_errors": farm.server_errors(),
            }
        finally:
            stop.set()
            farm.stop()
            if postgres is not None:
                postgres.stop()
    write_json(args.out, result)
    e = result["extrapolated"]
    print(
        markdown_table(
            [
                "shots",
                "workers",
                "database",
                "wall time",
                "orchestration s/shot",
                "server RSS idle → peak",
                f"{e['shots']} shots (extrapolated)",
                "every shot once",
            ],
            [
                [
                    args.shots,
                    args.workers,
                    args.backend,
                    f"{wall / 60:.1f} min",
                    f"{result['orchestration_s_per_shot']:.2f}",
                    f"{idle_rss:.0f} → {result['server_rss_mib']['peak']:.0f} MiB",
                    f"{e['wall_s'] / 3600:.1f} h wall, {e['orchestration_h']:.1f} worker-h orchestration",
                    "yes" if exactly_once else "**no**",
                ]
            ],
        )
    )
    print(
        f"\n{len(shot_runs)} colorize-shot runs; colour {colour:.0f} s in all; in-run overhead per shot "
        f"(run time - colour) median "
        f"{in_run:.2f} s; fixed part {fixed:.0f} s; report {report_lines} lines, shots table "
        f"{table_rows} rows; progress: {result['progress']}; server ERROR lines: {len(result['server_errors'])}"
    )


if __name__ == "__main__":
    main()
