"""Reel I/O and shot detection commands: ``probe``, ``transcode``, ``frame``, ``shots``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from cli.options import output_path
from pipeline.errors import PostprodError
from pipeline.media.encode import CODECS, CodecName


@click.command()
@click.argument("reel", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the probe as JSON.")
def probe(reel: Path, as_json: bool) -> None:
    """Describe REEL: codec, size, bit depth, exact frame rate, frame count, timecode, audio."""
    from pipeline.media.probe import probe as probe_reel

    info = probe_reel(reel)
    if as_json:
        click.echo(json.dumps(info.to_dict(), indent=2))
    else:
        click.echo(info.describe())


@click.command()
@click.argument("reel", type=click.Path(path_type=Path))
@click.option(
    "--codec",
    required=True,
    type=click.Choice(list(CODECS)),
    help="prores (.mov, 422 HQ), ffv1 (.mkv, lossless), h264 (.mp4 preview), "
    "tiff/png (16-bit RGB image-sequence folder).",
)
@click.option(
    "--out",
    "dest",
    required=True,
    type=click.Path(),
    callback=output_path,
    help="Output file (or folder for tiff/png).",
)
@click.option("--force", is_flag=True, help="Replace an existing output (a file, or an image sequence postprod wrote).")
def transcode(reel: Path, codec: CodecName, dest: Path, force: bool) -> None:
    """Re-encode REEL keeping its luma, chroma, frame rate, timecode, aspect, rotation and audio."""
    from pipeline.media.encode import transcode as transcode_reel

    frames = transcode_reel(reel, dest, codec, force=force)
    click.echo(f"{dest}: {frames} frames ({codec})")


@click.command()
@click.argument("reel", type=click.Path(path_type=Path))
@click.option("--json", "json_out", type=click.Path(), callback=output_path, help="Write shots as JSON.")
@click.option("--csv", "csv_out", type=click.Path(), callback=output_path, help="Write shots as CSV.")
@click.option("--edl", "edl_out", type=click.Path(), callback=output_path, help="Write a CMX3600 EDL.")
@click.option("--force", is_flag=True, help="Replace existing output files.")
@click.option(
    "--min-shot-len", type=click.IntRange(min=1), default=10, show_default=True, help="Shortest shot, in frames."
)
@click.option(
    "--threshold",
    type=click.FloatRange(min=0, min_open=True),
    default=2.0,
    show_default=True,
    help="Hard-cut sensitivity: how many times the local median (+ MAD) of frame differences "
    "a cut must reach; lower finds more cuts.",
)
def shots(
    reel: Path,
    json_out: Path | None,
    csv_out: Path | None,
    edl_out: Path | None,
    force: bool,
    min_shot_len: int,
    threshold: float,
) -> None:
    """Cut REEL into shots (hard cuts, fades, dissolves) from luma alone."""
    from pipeline.files import check_destination
    from pipeline.shots import ShotSettings, detect_shots, write_csv, write_edl, write_json

    outputs = [(p, w) for p, w in ((json_out, write_json), (csv_out, write_csv), (edl_out, write_edl)) if p]
    for path, _ in outputs:  # fail before the (long) detection, not after
        check_destination(path, force=force, inputs=(reel,))
    if len({Path(p).resolve() for p, _ in outputs}) < len(outputs):
        raise PostprodError(outputs[0][0], "--json, --csv and --edl must be different files")
    result = detect_shots(reel, settings=ShotSettings(min_shot_len=min_shot_len, cut_threshold=threshold))
    for path, writer in outputs:
        writer(result, path, force=force)
    if not outputs:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        click.echo(f"{reel}: {len(result.shots)} shots in {result.frames} frames")


@click.command("frame")
@click.argument("reel", type=click.Path(path_type=Path))
@click.option("--frame", "index", type=int, required=True, help="0-based frame number (display order).")
@click.option("--out", type=click.Path(), callback=output_path, required=True, help="Output image (.png/.tif).")
@click.option("--force", is_flag=True, help="Replace an existing output file.")
def frame(reel: Path, index: int, out: Path, force: bool) -> None:
    """Extract frame N of REEL as a grey image (its luma; 16-bit for sources above 8 bits)."""
    from pipeline.color import codes_to_luma
    from pipeline.images import check_image_output, write_rgb
    from pipeline.media.decode import iter_frames
    from pipeline.media.probe import probe as probe_reel

    check_image_output(out, force=force, inputs=(reel,))
    info = probe_reel(reel)
    if not 0 <= index < info.frames:
        raise PostprodError(reel, f"frame {index} is out of range (the reel has {info.frames} frames)")
    picture = next(iter_frames(reel, index, index + 1))
    grey = codes_to_luma(picture.luma, picture.bit_depth, info.luma_range)
    write_rgb(out, grey, bit_depth=8 if picture.bit_depth == 8 else 16, force=force, inputs=(reel,))
    click.echo(f"{out}: frame {index} of {reel}")
