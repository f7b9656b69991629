"""Prefect's overhead: one reel through the ``colorize-reel`` flow vs the same stages as plain Python.

A generated reel of ``--shots`` hard-cut shots (``pipeline.media.synth.write_cut_reel``, the flows
tests' reel) is run with ``postprod run --engine local`` (``pipeline.run.run_reel``) and
``--engine prefect`` (the flow on Prefect's embedded server), each time in a fresh process and
from an empty work folder, so torch, Prefect and the server start cold in every run. Two Prefect
cases:

- *warm home*: a ``PREFECT_HOME`` whose database exists (every run on a laptop but the first);
- *cold home*: a fresh ``PREFECT_HOME`` (the first run on a machine: the server migrates its
  database).

Two reels: *coloured* (a reference per shot: the real work) and *grey* (``--missing-refs grey``,
no refs: shots cost nothing, so the difference is Prefect's cost alone). The engines alternate
within each repeat so load drifts hit both; medians over ``--repeats`` are printed as Markdown.

    python bench/bench_flow_overhead.py [--shots 10] [--length 12] [--size 96x64] [--repeats 3]

(or ``python -m bench.bench_flow_overhead``). It imports only the installed ``pipeline`` package,
so it also runs as a plain script, as docs/operators.md has it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipeline.media.synth import write_cut_reel, write_shot_refs

REPO = Path(__file__).resolve().parents[1]

CASES = ("local", "prefect, warm home", "prefect, cold home")


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> float:
    """Wall time (s) of ``cmd``; raises if it fails."""
    started = time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr}")
    return time.perf_counter() - started


def run_cmd(engine: str, reel: Path, refs: Path | None, out: Path, workdir: Path, work_size: int) -> list[str]:
    refs_args = ["--refs", str(refs)] if refs else ["--missing-refs", "grey"]
    return [
        sys.executable,
        "-m",
        "cli",
        "run",
        "--reel",
        str(reel),
        *refs_args,
        "--out",
        str(out),
        "--codec",
        "ffv1",
        "--workdir",
        str(workdir),
        "--device",
        "cpu",
        "--work-size",
        str(work_size),
        "--engine",
        engine,
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", type=int, default=10)
    parser.add_argument("--length", type=int, default=12, help="frames per shot")
    parser.add_argument("--size", default="96x64", help="WxH of the reel")
    parser.add_argument("--work-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    width, height = map(int, args.size.split("x"))
    with tempfile.TemporaryDirectory(prefix="bench-flow-") as tmp:
        root = Path(tmp)
        reel = write_cut_reel(root / "reel.mkv", args.shots, args.length, width=width, height=height)
        reels = {"coloured": write_shot_refs(root / "refs", tuple(range(args.shots))), "grey": None}
        base = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        base.update(
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        )
        warm = root / "home-warm"
        timed(
            run_cmd("prefect", reel, None, root / "prime.mkv", root / "work-prime", args.work_size),
            {**base, "PREFECT_HOME": str(warm)},
            root,
        )  # creates the warm home's database
        times: dict[tuple[str, str], list[float]] = {(r, c): [] for r in reels for c in CASES}
        n = 0
        for k in range(args.repeats):
            for name, refs in reels.items():
                for case in CASES:
                    n += 1
                    home = warm if case == "prefect, warm home" else root / f"home-{n}"
                    engine = "local" if case == "local" else "prefect"
                    t = timed(
                        run_cmd(engine, reel, refs, root / f"out-{n}.mkv", root / f"work-{n}", args.work_size),
                        {**base, "PREFECT_HOME": str(home)},
                        root,
                    )
                    times[name, case].append(t)
                    print(f"repeat {k} {name} reel, {case}: {t:.1f} s", file=sys.stderr)
        print(
            f"\n{args.shots} shots x {args.length} frames, {width}x{height}, work size {args.work_size} px, CPU; "
            f"wall time of `postprod run`, median of {args.repeats}\n"
        )
        print("| reel | engine | wall time (s) | overhead vs local | all runs (s) |\n| --- | --- | --- | --- | --- |")
        for name in reels:
            local = statistics.median(times[name, "local"])
            for case in CASES:
                t = statistics.median(times[name, case])
                over = "" if case == "local" else f"{t - local:+.1f} s ({100 * (t - local) / local:+.0f} %)"
                runs = ", ".join(f"{x:.1f}" for x in times[name, case])
                print(f"| {name} | {case} | {t:.1f} | {over} | {runs} |")


if __name__ == "__main__":
    main()
