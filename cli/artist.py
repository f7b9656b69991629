"""The artist loop: ``suggest`` (frames worth colouring next) and ``review`` (the review page).

Both read a work folder a ``postprod run`` finished in (its ``last-run.json``, plan, segments and
confidence records); see docs/artist-loop.md.
"""

from __future__ import annotations

from pathlib import Path

import click

from cli.options import output_path
from pipeline.errors import PostprodError


def suggest_frames(workdir: Path, out: Path | None, *, per_shot: int | None, budget: int | None) -> list[str]:
    """Rank the frames of ``workdir``'s last run (:func:`pipeline.suggest.rank`), write their grey
    frames and ``suggestions.txt`` into ``out`` (default ``<workdir>/suggested``); the lines to print."""
    from pipeline.review import read_run
    from pipeline.suggest import rank, shot_records, write_suggestions
    from pipeline.workdir import SUGGESTED, load_plan

    record = read_run(workdir)
    plan = load_plan(Path(workdir))
    records = shot_records(plan, Path(workdir), record.run_settings())
    picks = rank(plan, records, per_shot=per_shot, budget=budget)
    folder = Path(workdir) / SUGGESTED if out is None else out
    lines = write_suggestions(plan, picks, folder)
    return [*lines, f"{folder}: {len(picks)} grey frames to colour; save them, same names, into {record.refs}"]


@click.command()
@click.option("--workdir", required=True, type=click.Path(path_type=Path), help="A finished run's work folder.")
@click.option("--budget", type=click.IntRange(1), help="Frames to suggest over the whole reel.")
@click.option("--per-shot", type=click.IntRange(1), help="Frames to suggest in every shot (default 1).")
@click.option(
    "--out", type=click.Path(), callback=output_path, help="Folder for the grey frames; default <workdir>/suggested."
)
def suggest(workdir: Path, budget: int | None, per_shot: int | None, out: Path | None) -> None:
    """Rank the frames where a new artist keyframe would help most; write each as a grey
    frame-<N>.png to colour, with a one-line reason."""
    if budget is not None and per_shot is not None:
        raise PostprodError(None, "give --budget or --per-shot, not both")
    for line in suggest_frames(workdir, out, per_shot=per_shot or (1 if budget is None else None), budget=budget):
        click.echo(line)


@click.command()
@click.option("--workdir", required=True, type=click.Path(path_type=Path), help="A finished run's work folder.")
@click.option(
    "--out", type=click.Path(), callback=output_path, help="The HTML file; default <workdir>/review.html (replaced)."
)
@click.option("--per-shot", type=click.IntRange(1), default=1, show_default=True, help="Suggested frames per shot.")
@click.option("--force", is_flag=True, help="Replace an existing --out file.")
def review(workdir: Path, out: Path | None, per_shot: int, force: bool) -> None:
    """Write the review page of a finished run: per shot, thumbnails, where colour is guessed,
    references and suggested frames, and the command to rerun."""
    from pipeline.review import write_review

    dest = write_review(workdir, out, per_shot=per_shot, force=force or out is None)
    click.echo(f"{dest}: review page ({dest.resolve().as_uri()})")
