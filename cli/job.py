"""The reel job: ``plan`` (check the refs folder, print the keyframe plan) and ``run``."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import click

from cli.options import output_path
from pipeline.errors import PostprodError
from pipeline.keyframes import MissingRefs
from pipeline.media.encode import CODECS, CodecName
from pipeline.settings import DEFAULT_METHOD, DEVICES, METHODS, Device, Method


@click.command()
@click.option("--reel", required=True, type=click.Path(path_type=Path), help="The grey reel.")
@click.option(
    "--refs",
    "refs_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="The refs folder (frame-N / shot-K images, object masks, refs.toml; see docs/refs.md).",
)
@click.option("--json", "json_out", type=click.Path(), callback=output_path, help="Also write the plan as JSON.")
@click.option("--force", is_flag=True, help="Replace an existing --json file.")
@click.option(
    "--missing-refs",
    type=click.Choice(get_args(MissingRefs)),
    default="nearest",
    show_default=True,
    help="Shots without a reference: take colours from the nearest shots "
    "with references, stop with an error, or leave them grey.",
)
def plan(reel: Path, refs_dir: Path, json_out: Path | None, force: bool, missing_refs: MissingRefs) -> None:
    """Print which frames of each shot will be colorized from which reference, and every
    problem of the refs folder, without colorizing anything."""
    from pipeline.files import check_destination
    from pipeline.keyframes import plan_keyframes, write_plan
    from pipeline.media.probe import probe as probe_reel
    from pipeline.refs import read_refs
    from pipeline.shots import detect_shots

    if json_out:  # fail before shot detection, not after
        check_destination(json_out, force=force, inputs=(reel, refs_dir))
    if not refs_dir.is_dir():
        raise PostprodError(refs_dir, "no such folder" if not refs_dir.exists() else "is not a folder")
    info = probe_reel(reel)
    shot_list = detect_shots(reel)
    result = plan_keyframes(info, shot_list, read_refs(refs_dir, info, shot_list), missing=missing_refs)
    click.echo(result.describe())
    if json_out:
        write_plan(result, json_out, force=force, inputs=(refs_dir,))
        click.echo(f"{json_out}: plan written")


@click.command("run")
@click.option("--reel", type=click.Path(path_type=Path), required=True, help="The black-and-white reel.")
@click.option("--refs", type=click.Path(path_type=Path), help="The artist's refs folder (see docs/refs.md).")
@click.option(
    "--out",
    type=click.Path(),
    callback=output_path,
    help="Output file (folder for image sequences); default ./<reel>.colorized.<ext>.",
)
@click.option("--codec", type=click.Choice(list(CODECS)), default="prores", show_default=True)
@click.option(
    "--workdir",
    type=click.Path(),
    callback=output_path,
    help="Intermediate results (per-shot segments); default ./postprod-work/<reel>-<hash>.",
)
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
@click.option(
    "--missing-refs",
    "missing",
    type=click.Choice(get_args(MissingRefs)),
    default="nearest",
    show_default=True,
    help="Shots without references: colour from neighbouring shots, stop, or leave grey.",
)
@click.option(
    "--work-size",
    type=click.IntRange(64, 2160),
    default=256,
    show_default=True,
    help="Short side (px) of the working resolution; chroma is brought back to full size.",
)
@click.option(
    "--method",
    type=click.Choice(METHODS),
    default=DEFAULT_METHOD,
    show_default=True,
    help="Keyframe colorizer from exemplar refs: the trained network or the training-free transfer.",
)
@click.option(
    "--engine",
    type=click.Choice(["prefect", "local"]),
    default="prefect",
    show_default=True,
    help="prefect: as a Prefect flow (embedded server unless PREFECT_API_URL is set); local: plain Python.",
)
@click.option(
    "--jobs",
    type=click.IntRange(1),
    help="Shots coloured at once in this process; default one per core (at most 4) on a CPU, 1 on a GPU.",
)
@click.option("--force", is_flag=True, help="Replace an existing output (a file, or an image sequence postprod wrote).")
@click.option(
    "--suggest",
    "suggest_k",
    type=click.IntRange(1),
    help="Also write K grey frames per shot worth colouring into <workdir>/suggested (see postprod suggest).",
)
def run(
    reel: Path,
    refs: Path | None,
    out: Path | None,
    codec: CodecName,
    workdir: Path | None,
    device: Device,
    missing: MissingRefs,
    work_size: int,
    method: Method,
    engine: str,
    jobs: int | None,
    force: bool,
    suggest_k: int | None,
) -> None:
    """Colorize REEL end to end: shots, keyframes from the refs, propagation, encode."""
    from pipeline.run import RunSettings, check_run_inputs, run_reel

    out = out or Path(f"{reel.stem}.colorized{CODECS[codec].suffixes[0]}")
    settings = RunSettings(codec=codec, device=device, missing=missing, work_size=work_size, method=method)
    # every check that needs no decoding, in about a second, before any engine (Prefect's server) starts
    workdir = check_run_inputs(reel, refs, out, workdir=workdir, settings=settings, force=force)
    if engine == "local":
        from cli.progress import ReelProgress

        result = run_reel(
            reel, refs, out, workdir=workdir, settings=settings, force=force, progress=ReelProgress(), jobs=jobs
        )
    else:
        from flows.reel import run_flow  # the Prefect wrapper of the same stages

        result = run_flow(reel, refs, out, workdir=workdir, settings=settings, force=force, jobs=jobs)
    from cli.artist import suggest_frames
    from pipeline.review import read_run
    from pipeline.workdir import REVIEW_NAME

    if suggest_k:
        for line in suggest_frames(workdir, None, per_shot=suggest_k, budget=None):
            click.echo(line)
    click.echo(read_run(workdir).shots_line())
    click.echo(f"{result}: colorized {reel}")
    click.echo(f"work folder: {workdir}")
    click.echo(f"review page: {Path(workdir) / REVIEW_NAME}")
