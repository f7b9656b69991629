"""The ``postprod`` command group and its error handling.

Errors the user can fix are :class:`~pipeline.errors.PostprodError` (and
:class:`~model.weights.WeightsError`): printed on one line, exit code 2, traceback only with
``--debug``. Anything else is an internal error: one line, exit code 1.
"""

from __future__ import annotations

import sys

import click

from cli.job import plan, run
from cli.media import frame, probe, shots, transcode
from cli.stills import colorize_image, train_command
from model.weights import WeightsError
from pipeline.errors import PostprodError

EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 1
EXIT_INTERRUPTED = 130


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.version_option(package_name="postprod")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """postprod: colorize black-and-white film reels."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


for command in (probe, transcode, shots, frame, plan, colorize_image, run, train_command):
    cli.add_command(command)


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
        sys.exit(EXIT_INTERRUPTED)
    except Exception as err:  # an unexpected failure is still one line without --debug
        if debug:
            raise
        click.echo(f"postprod: internal error: {type(err).__name__}: {err} (rerun with --debug for details)", err=True)
        sys.exit(EXIT_INTERNAL_ERROR)
