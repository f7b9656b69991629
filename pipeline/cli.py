"""The `postprod` command line: thin click commands over the pipeline's functions.

Errors the user can fix are :class:`~pipeline.errors.PostprodError`: printed on one line,
exit code 2, traceback only with ``--debug``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

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


# --- shots -------------------------------------------------------------------------------

@cli.command()
@click.argument("reel", type=click.Path(path_type=Path))
@click.option("--json", "json_out", type=click.Path(path_type=Path), help="Write shots as JSON.")
@click.option("--csv", "csv_out", type=click.Path(path_type=Path), help="Write shots as CSV.")
@click.option("--edl", "edl_out", type=click.Path(path_type=Path), help="Write a CMX3600 EDL.")
@click.option("--force", is_flag=True, help="Replace existing output files.")
def shots(reel: Path, json_out: Path | None, csv_out: Path | None, edl_out: Path | None,
          force: bool) -> None:
    """Cut REEL into shots (hard cuts, fades, dissolves) from luma alone."""
    from pipeline.shots import detect_shots, write_csv, write_edl, write_json

    outputs = [(p, w) for p, w in ((json_out, write_json), (csv_out, write_csv), (edl_out, write_edl)) if p]
    from pipeline.files import check_writable_destination

    for path, _ in outputs:  # fail before the (long) detection, not after
        check_writable_destination(path, force=force, sources=(reel,))
    result = detect_shots(reel)
    for path, writer in outputs:
        writer(result, path, force=force)
    if not outputs:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        click.echo(f"{reel}: {len(result.shots)} shots in {result.frames} frames")


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
    except PostprodError as err:
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
