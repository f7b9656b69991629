"""The `postprod` command line: thin click commands over the pipeline's functions.

Errors the user can fix are :class:`~pipeline.errors.PostprodError`: printed on one line,
exit code 2, traceback only with ``--debug``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from model.weights import WeightsError
from pipeline.errors import PostprodError

EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 1


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.version_option(package_name="postprod")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """postprod: colorize black-and-white film reels."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


# --- media -------------------------------------------------------------------------------

@cli.command()
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


@cli.command()
@click.argument("reel", type=click.Path(path_type=Path))
@click.option("--codec", required=True, type=click.Choice(["prores", "ffv1", "h264", "tiff", "png"]),
              help="prores (.mov, 422 HQ), ffv1 (.mkv, lossless), h264 (.mp4 preview), "
                   "tiff/png (16-bit RGB image-sequence folder).")
@click.option("--out", "dest", required=True, type=click.Path(path_type=Path),
              help="Output file (or folder for tiff/png).")
@click.option("--force", is_flag=True, help="Replace an existing output.")
def transcode(reel: Path, codec: str, dest: Path, force: bool) -> None:
    """Re-encode REEL keeping its luma, chroma, frame rate, timecode, aspect, rotation and audio."""
    from pipeline.media.encode import transcode as transcode_reel

    frames = transcode_reel(reel, dest, codec, force=force)
    click.echo(f"{dest}: {frames} frames ({codec})")


# --- shots -------------------------------------------------------------------------------

@cli.command()
@click.argument("reel", type=click.Path(path_type=Path))
@click.option("--json", "json_out", type=click.Path(path_type=Path), help="Write shots as JSON.")
@click.option("--csv", "csv_out", type=click.Path(path_type=Path), help="Write shots as CSV.")
@click.option("--edl", "edl_out", type=click.Path(path_type=Path), help="Write a CMX3600 EDL.")
@click.option("--force", is_flag=True, help="Replace existing output files.")
@click.option("--min-shot-len", type=click.IntRange(min=1), default=10, show_default=True,
              help="Shortest shot, in frames.")
@click.option("--threshold", type=click.FloatRange(min=0, min_open=True), default=2.0, show_default=True,
              help="Hard-cut sensitivity: how many times the local median (+ MAD) of frame differences "
                   "a cut must reach; lower finds more cuts.")
def shots(reel: Path, json_out: Path | None, csv_out: Path | None, edl_out: Path | None,
          force: bool, min_shot_len: int, threshold: float) -> None:
    """Cut REEL into shots (hard cuts, fades, dissolves) from luma alone."""
    from pipeline.shots import ShotSettings, detect_shots, write_csv, write_edl, write_json

    outputs = [(p, w) for p, w in ((json_out, write_json), (csv_out, write_csv), (edl_out, write_edl)) if p]
    from pipeline.files import check_writable_destination

    for path, _ in outputs:  # fail before the (long) detection, not after
        check_writable_destination(path, force=force, sources=(reel,))
    result = detect_shots(reel, settings=ShotSettings(min_shot_len=min_shot_len, cut_threshold=threshold))
    for path, writer in outputs:
        writer(result, path, force=force)
    if not outputs:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        click.echo(f"{reel}: {len(result.shots)} shots in {result.frames} frames")


# --- keyframe plan -----------------------------------------------------------------------

@cli.command()
@click.option("--reel", required=True, type=click.Path(path_type=Path), help="The grey reel.")
@click.option("--refs", "refs_dir", required=True, type=click.Path(path_type=Path),
              help="The refs folder (frame-N / shot-K images, object masks, refs.toml; see docs/refs.md).")
@click.option("--json", "json_out", type=click.Path(path_type=Path), help="Also write the plan as JSON.")
@click.option("--force", is_flag=True, help="Replace an existing --json file.")
@click.option("--missing-refs", type=click.Choice(["nearest", "error", "grey"]), default="nearest",
              show_default=True, help="Shots without a reference: take colours from the nearest shots "
                                      "with references, stop with an error, or leave them grey.")
def plan(reel: Path, refs_dir: Path, json_out: Path | None, force: bool, missing_refs: str) -> None:
    """Print which frames of each shot will be colorized from which reference, and every
    problem of the refs folder, without colorizing anything."""
    from pipeline.files import check_writable_destination
    from pipeline.keyframes import plan_keyframes, write_plan
    from pipeline.media.probe import probe as probe_reel
    from pipeline.refs import read_refs
    from pipeline.shots import detect_shots

    if json_out:  # fail before shot detection, not after
        check_writable_destination(json_out, force=force, sources=(reel,))
    if not refs_dir.is_dir():
        raise PostprodError(refs_dir, "no such folder" if not refs_dir.exists() else "is not a folder")
    info = probe_reel(reel)
    shot_list = detect_shots(reel)
    result = plan_keyframes(info, shot_list, read_refs(refs_dir, info, shot_list), missing=missing_refs)
    click.echo(result.describe())
    if json_out:
        write_plan(result, json_out, force=force)
        click.echo(f"{json_out}: plan written")


# --- still images ------------------------------------------------------------------------

@cli.command("frame")
@click.argument("reel", type=click.Path(path_type=Path))
@click.option("--frame", "index", type=int, required=True, help="0-based frame number (display order).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output image (.png/.tif).")
@click.option("--force", is_flag=True, help="Replace an existing output.")
def frame(reel: Path, index: int, out: Path, force: bool) -> None:
    """Extract frame N of REEL as a grey image (its luma; 16-bit for sources above 8 bits)."""
    from pipeline.color import codes_to_luma
    from pipeline.files import check_writable_destination
    from pipeline.images import write_rgb
    from pipeline.media.decode import iter_frames
    from pipeline.media.probe import probe as probe_reel

    check_writable_destination(out, force=force, sources=(reel,))
    info = probe_reel(reel)
    if not 0 <= index < info.frames:
        raise PostprodError(reel, f"frame {index} is out of range (the reel has {info.frames} frames)")
    picture = next(iter_frames(reel, index, index + 1))
    grey = codes_to_luma(picture.luma, picture.bit_depth, info.luma_range)
    write_rgb(out, grey, bit_depth=8 if picture.bit_depth == 8 else 16, force=force)
    click.echo(f"{out}: frame {index} of {reel}")


@cli.command("colorize-image")
@click.option("--target", type=click.Path(path_type=Path), required=True, help="Grey image (8 or 16-bit).")
@click.option("--ref", "refs", type=click.Path(path_type=Path), multiple=True, required=True,
              help="Colour reference image (any size); repeat for several.")
@click.option("--target-mask", "target_masks", type=click.Path(path_type=Path), multiple=True,
              help="Object mask on the target (non-zero = inside); paired in order with --ref-mask.")
@click.option("--ref-mask", "ref_masks", type=click.Path(path_type=Path), multiple=True,
              help="Object mask on the reference, paired in order with --target-mask.")
@click.option("--mask-ref", "mask_refs", type=int, multiple=True,
              help="0-based index of the --ref each mask pair belongs to (default: the first).")
@click.option("--method", type=click.Choice(["transfer", "net"]), default="net", show_default=True,
              help="transfer: training-free super-attention colour transfer; net: the trained network "
                   "(model/weights/colornet.pt).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output image (.png/.tif/.jpg).")
@click.option("--force", is_flag=True, help="Replace an existing output.")
def colorize_image(target: Path, refs: tuple[Path, ...], target_masks: tuple[Path, ...],
                   ref_masks: tuple[Path, ...], mask_refs: tuple[int, ...], method: str, device: str,
                   out: Path, force: bool) -> None:
    """Colorize one grey image from colour references, optionally object by object with masks."""
    from pipeline.colorize import Exemplar, colorize_still, compose_rgb
    from pipeline.files import check_writable_destination
    from pipeline.images import read_colour, read_grey, read_mask, write_rgb

    check_writable_destination(out, force=force, sources=(target, *refs))
    if len(target_masks) != len(ref_masks):
        raise PostprodError(None, f"{len(target_masks)} --target-mask but {len(ref_masks)} --ref-mask: "
                               "give them in pairs")
    if mask_refs and len(mask_refs) != len(target_masks):
        raise PostprodError(None, "give one --mask-ref per mask pair, or none")
    owners = mask_refs or (0,) * len(target_masks)
    for k in owners:
        if not 0 <= k < len(refs):
            raise PostprodError(None, f"--mask-ref {k} is out of range: there are {len(refs)} references")
    grey = read_grey(target)
    colours = [read_colour(r) for r in refs]
    pairs: list[list[tuple]] = [[] for _ in refs]
    for tm, rm, k in zip(target_masks, ref_masks, owners):
        pairs[k].append((read_mask(tm, grey.size, of=target), read_mask(rm, colours[k].size, of=refs[k])))
    exemplars = [Exemplar(rgb=c.pixels, masks=tuple(p)) for c, p in zip(colours, pairs)]
    ab = colorize_still(grey.pixels, exemplars, method=method, device=device)
    write_rgb(out, compose_rgb(grey.pixels, ab), bit_depth=grey.bit_depth, force=force)
    click.echo(f"{out}: colorized {target} from {len(refs)} reference(s)")


# --- the job ------------------------------------------------------------------------------

_DEFAULT_SUFFIX = {"prores": ".mov", "ffv1": ".mkv", "h264": ".mp4", "tiff": "", "png": ""}


@cli.command("run")
@click.option("--reel", type=click.Path(path_type=Path), required=True, help="The black-and-white reel.")
@click.option("--refs", type=click.Path(path_type=Path), help="The artist's refs folder (see docs/refs.md).")
@click.option("--out", type=click.Path(path_type=Path),
              help="Output file (folder for image sequences); default ./<reel>.colorized.<ext>.")
@click.option("--codec", type=click.Choice(list(_DEFAULT_SUFFIX)), default="prores", show_default=True)
@click.option("--workdir", type=click.Path(path_type=Path),
              help="Intermediate results (per-shot segments); default ./postprod-work/<reel>-<hash>.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--missing-refs", "missing", type=click.Choice(["nearest", "error", "grey"]), default="nearest",
              show_default=True, help="Shots without references: colour from neighbouring shots, stop, or leave grey.")
@click.option("--work-size", type=click.IntRange(64, 2160), default=256, show_default=True,
              help="Short side (px) of the working resolution; chroma is brought back to full size.")
@click.option("--method", type=click.Choice(["net", "transfer"]), default="net", show_default=True,
              help="Keyframe colorizer from exemplar refs: the trained network or the training-free transfer.")
@click.option("--engine", type=click.Choice(["prefect", "local"]), default="prefect", show_default=True,
              help="prefect: as a Prefect flow (embedded server unless PREFECT_API_URL is set); local: plain Python.")
@click.option("--force", is_flag=True, help="Replace an existing output.")
def run(reel: Path, refs: Path | None, out: Path | None, codec: str, workdir: Path | None, device: str,
        missing: str, work_size: int, method: str, engine: str, force: bool) -> None:
    """Colorize REEL end to end: shots, keyframes from the refs, propagation, encode."""
    from pipeline.files import check_writable_destination
    from pipeline.run import RunSettings, run_reel

    out = out or Path(f"{reel.stem}.colorized{_DEFAULT_SUFFIX[codec]}")
    check_writable_destination(out, force=force, sources=(reel,))
    settings = RunSettings(codec=codec, device=device, missing=missing, work_size=work_size, method=method)
    if engine == "local":
        result = run_reel(reel, refs, out, workdir=workdir, settings=settings, force=force)
    else:
        from flows.reel import run_flow  # the Prefect wrapper of the same stages

        result = run_flow(reel, refs, out, workdir=workdir, settings=settings, force=force)
    click.echo(f"{result}: colorized {reel}")


# --- training (issue 4) -------------------------------------------------------------------

@cli.command("train")
@click.option("--data", "data", type=click.Path(path_type=Path), multiple=True, required=True,
              help="Folder of colour photos (repeat for several).")
@click.option("--frames", "frames", type=click.Path(path_type=Path), multiple=True,
              help="Folder of colour frame sequences (sub-folders of frames): cross-frame pairs.")
@click.option("--val-data", "val_data", type=click.Path(path_type=Path), multiple=True,
              help="Held-out photos for validation (default: pairs drawn from the training photos).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Checkpoint folder.")
@click.option("--steps", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--batch", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--size", type=click.IntRange(min=32), default=128, show_default=True, help="Training window, px.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=3e-4, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--max-photos", type=click.IntRange(min=0), default=0, show_default=True, help="0 = all.")
@click.option("--resume", is_flag=True, help="Continue from OUT/last.pt.")
@click.option("--eval-every", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True, help="CPU threads.")
def train_command(data: tuple[Path, ...], frames: tuple[Path, ...], val_data: tuple[Path, ...], out: Path,
                  steps: int, batch: int, size: int, lr: float, seed: int, max_photos: int, resume: bool,
                  eval_every: int, device: str, threads: int) -> None:
    """Train the exemplar colorization network (model/train.py); export OUT/colornet.pt."""
    import torch

    from model.train import TrainConfig, TrainingImages, train
    from pipeline.colorize import resolve_device
    from pipeline.images import list_images, list_sequences, read_rgb

    images = TrainingImages(photos=tuple(p for d in data for p in list_images(d)), read=read_rgb,
                            sequences=tuple(tuple(q) for d in frames for q in list_sequences(d)),
                            val_photos=tuple(p for d in val_data for p in list_images(d)))
    torch.set_num_threads(threads)
    config = TrainConfig(steps=steps, batch=batch, size=size, lr=lr, seed=seed, eval_every=eval_every,
                         max_photos=max_photos)
    try:
        result = train(config, images, out, resume=resume, device=resolve_device(device),
                       log=lambda line: click.echo(line, err=True))
    except ValueError as err:
        raise PostprodError(out, str(err)) from err
    best = result["best"]
    click.echo(f"{out}: trained to step {result['step']}; best validation ab error "
               f"{best.get('ab_error', float('nan')):.2f} at step {best.get('step', '-')}")


def main() -> None:
    """Console-script entry point: run the CLI, turn known errors into one-line messages."""
    debug = "--debug" in sys.argv[1:]
    try:
        cli.main(standalone_mode=False, prog_name="postprod")
    except click.exceptions.Abort:
        click.echo("postprod: aborted", err=True)
        sys.exit(EXIT_INTERNAL_ERROR)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except (PostprodError, WeightsError) as err:
        if debug:
            raise
        click.echo(f"postprod: error: {err}", err=True)
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        click.echo("postprod: interrupted", err=True)
        sys.exit(130)
    except Exception as err:  # an unexpected failure is still one line without --debug
        if debug:
            raise
        click.echo(f"postprod: internal error: {type(err).__name__}: {err} (rerun with --debug for details)",
                   err=True)
        sys.exit(EXIT_INTERNAL_ERROR)


if __name__ == "__main__":
    main()
