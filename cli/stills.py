"""Still-image commands: ``colorize-image`` and ``train`` (the exemplar network)."""

from __future__ import annotations

from pathlib import Path

import click

from cli.options import output_path
from pipeline.errors import PostprodError
from pipeline.settings import DEFAULT_METHOD, DEVICES, METHODS, Device, Method


@click.command("colorize-image")
@click.option("--target", type=click.Path(path_type=Path), required=True, help="Grey image (8 or 16-bit).")
@click.option(
    "--ref",
    "refs",
    type=click.Path(path_type=Path),
    multiple=True,
    required=True,
    help="Colour reference image (any size); repeat for several.",
)
@click.option(
    "--target-mask",
    "target_masks",
    type=click.Path(path_type=Path),
    multiple=True,
    help="Object mask on the target (non-zero = inside); paired in order with --ref-mask.",
)
@click.option(
    "--ref-mask",
    "ref_masks",
    type=click.Path(path_type=Path),
    multiple=True,
    help="Object mask on the reference, paired in order with --target-mask.",
)
@click.option(
    "--mask-ref",
    "mask_refs",
    type=int,
    multiple=True,
    help="0-based index of the --ref each mask pair belongs to (default: the first).",
)
@click.option(
    "--method",
    type=click.Choice(METHODS),
    default=DEFAULT_METHOD,
    show_default=True,
    help="transfer: training-free super-attention colour transfer; net: the trained network "
    "(model/weights/colornet.pt).",
)
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
@click.option("--out", type=click.Path(), callback=output_path, required=True, help="Output image (.png/.tif/.jpg).")
@click.option("--force", is_flag=True, help="Replace an existing output file.")
def colorize_image(
    target: Path,
    refs: tuple[Path, ...],
    target_masks: tuple[Path, ...],
    ref_masks: tuple[Path, ...],
    mask_refs: tuple[int, ...],
    method: Method,
    device: Device,
    out: Path,
    force: bool,
) -> None:
    """Colorize one grey image from colour references, optionally object by object with masks."""
    from pipeline.images import check_image_output, read_colour, read_grey, read_mask, write_rgb

    inputs = (target, *refs, *target_masks, *ref_masks)
    check_image_output(out, force=force, inputs=inputs)
    if len(target_masks) != len(ref_masks):
        raise PostprodError(
            None, f"{len(target_masks)} --target-mask but {len(ref_masks)} --ref-mask: give them in pairs"
        )
    if mask_refs and len(mask_refs) != len(target_masks):
        raise PostprodError(None, "give one --mask-ref per mask pair, or none")
    owners = mask_refs or (0,) * len(target_masks)
    for k in owners:
        if not 0 <= k < len(refs):
            raise PostprodError(None, f"--mask-ref {k} is out of range: there are {len(refs)} references")
    grey = read_grey(target)
    colours = [read_colour(r) for r in refs]
    pairs: list[list[tuple]] = [[] for _ in refs]
    for tm, rm, k in zip(target_masks, ref_masks, owners, strict=True):
        pairs[k].append((read_mask(tm, grey.size, of=target), read_mask(rm, colours[k].size, of=refs[k])))
    from pipeline.colorize import Exemplar, colorize_still, compose_rgb  # torch: after every input is checked

    exemplars = [Exemplar(rgb=c.pixels, masks=tuple(p)) for c, p in zip(colours, pairs, strict=True)]
    ab = colorize_still(grey.pixels, exemplars, method=method, device=device)
    write_rgb(out, compose_rgb(grey.pixels, ab), bit_depth=grey.bit_depth, force=force, inputs=inputs)
    click.echo(f"{out}: colorized {target} from {len(refs)} reference(s)")


@click.command("train")
@click.option(
    "--data",
    "data",
    type=click.Path(path_type=Path),
    multiple=True,
    required=True,
    help="Folder of colour photos (repeat for several).",
)
@click.option(
    "--frames",
    "frames",
    type=click.Path(path_type=Path),
    multiple=True,
    help="Folder of colour frame sequences (sub-folders of frames): cross-frame pairs.",
)
@click.option(
    "--val-data",
    "val_data",
    type=click.Path(path_type=Path),
    multiple=True,
    help="Held-out photos for validation (default: pairs drawn from the training photos).",
)
@click.option("--out", type=click.Path(), callback=output_path, required=True, help="Checkpoint folder.")
@click.option("--steps", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--batch", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--size", type=click.IntRange(min=32), default=128, show_default=True, help="Training window, px.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=3e-4, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--max-photos", type=click.IntRange(min=0), default=0, show_default=True, help="0 = all.")
@click.option("--resume", is_flag=True, help="Continue from OUT/last.pt.")
@click.option("--eval-every", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True, help="CPU threads.")
def train_command(
    data: tuple[Path, ...],
    frames: tuple[Path, ...],
    val_data: tuple[Path, ...],
    out: Path,
    steps: int,
    batch: int,
    size: int,
    lr: float,
    seed: int,
    max_photos: int,
    resume: bool,
    eval_every: int,
    device: Device,
    threads: int,
) -> None:
    """Train the exemplar colorization network (model/train.py); export OUT/colornet.pt."""
    from pipeline.files import check_destination

    check_destination(out, inputs=(*data, *frames, *val_data), kind="folder")  # before torch loads

    import torch

    from model.train import TrainConfig, TrainingImages, train
    from pipeline.colorize import resolve_device
    from pipeline.images import list_images, list_sequences, read_rgb

    images = TrainingImages(
        photos=tuple(p for d in data for p in list_images(d)),
        read=read_rgb,
        sequences=tuple(tuple(q) for d in frames for q in list_sequences(d)),
        val_photos=tuple(p for d in val_data for p in list_images(d)),
    )
    torch.set_num_threads(threads)
    config = TrainConfig(
        steps=steps, batch=batch, size=size, lr=lr, seed=seed, eval_every=eval_every, max_photos=max_photos
    )
    try:
        result = train(
            config,
            images,
            out,
            resume=resume,
            device=resolve_device(device),
            log=lambda line: click.echo(line, err=True),
        )
    except ValueError as err:
        raise PostprodError(out, str(err)) from err
    best = result["best"]
    click.echo(
        f"{out}: trained to step {result['step']}; best validation ab error "
        f"{best.get('ab_error', float('nan')):.2f} at step {best.get('step', '-')}"
    )
