"""Options shared by the commands: output paths."""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.errors import PostprodError


def output_path(ctx: click.Context, param: click.Parameter, value: str | None) -> Path | None:
    """click callback for an output option (``type=click.Path()``): the path as given, or one
    line naming the option when it is empty (``Path("")`` would silently mean ``.``)."""
    del ctx
    if value is None:
        return None
    if not value.strip():
        raise PostprodError(None, f"{'/'.join(param.opts)}: empty output name; give a file or folder name")
    return Path(value)
