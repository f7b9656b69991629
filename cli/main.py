"""The ``postprod`` command group and its error handling.

Errors the user can fix are :class:`~pipeline.errors.PostprodError` (and
:class:`~model.weights.WeightsError`): printed on one line, exit code 2, traceback only with
``--debug``. Anything else is an internal error: one line, exit code 1.

Interruptions: SIGINT (Ctrl-C) and SIGTERM (``kill``, a scheduler stopping the job) are handled
alike: the exception unwinds the command, so every temporary output is deleted and nothing is
left half-written; the exit code is 130 for SIGINT and 143 for SIGTERM (128 + the signal's
number, the shell's convention). A SIGKILL cannot be handled: its temporaries are removed by
the next command writing into the same folder (:func:`pipeline.files.remove_stale_partials`).
"""

from __future__ import annotations

import signal
import sys
from types import FrameType

import click

from cli.artist import review, suggest
from cli.job import plan, run
from cli.media import frame, probe, shots, transcode
from cli.stills import colorize_image, train_command
from model.weights import WeightsError
from pipeline.errors import PostprodError

EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 1
EXIT_INTERRUPTED = 128 + signal.SIGINT
EXIT_TERMINATED = 128 + signal.SIGTERM


class Terminated(BaseException):
    """Raised in the main thread by SIGTERM, so that the command unwinds as on Ctrl-C (not an
    ``Exception``: nothing but :func:`main` catches it)."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    del frame
    raise Terminated(signum)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.version_option(package_name="postprod")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """postprod: colorize black-and-white film reels."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


for command in (probe, transcode, shots, frame, plan, colorize_image, run, suggest, review, train_command):
    cli.add_command(command)


def _on_sigterm(handler: signal.Handlers | object) -> object:
    """Install ``handler`` for SIGTERM and return the previous one (None outside the main
    thread, where Python cannot set signal handlers)."""
    try:
        return signal.signal(signal.SIGTERM, handler)  # type: ignore[arg-type]
    except ValueError:
        return None


def main() -> None:
    """Console-script entry point: run the CLI, turn known errors into one-line messages."""
    debug = "--debug" in sys.argv[1:]
    previous = _on_sigterm(_raise_terminated)
    try:
        cli.main(standalone_mode=False, prog_name="postprod")
    except click.exceptions.Abort as err:  # click's wrapping of KeyboardInterrupt (and of EOF at a prompt)
        if isinstance(err.__context__, KeyboardInterrupt):
            click.echo("postprod: interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        click.echo("postprod: aborted", err=True)
        sys.exit(EXIT_INTERNAL_ERROR)
    except KeyboardInterrupt:
        click.echo("postprod: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except Terminated:
        click.echo("postprod: terminated (SIGTERM)", err=True)
        sys.exit(EXIT_TERMINATED)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except (PostprodError, WeightsError) as err:
        if debug:
            raise
        click.echo(f"postprod: error: {err}", err=True)
        sys.exit(EXIT_USER_ERROR)
    except Exception as err:  # an unexpected failure is still one line without --debug
        if debug:
            raise
        click.echo(f"postprod: internal error: {type(err).__name__}: {err} (rerun with --debug for details)", err=True)
        sys.exit(EXIT_INTERNAL_ERROR)
    finally:
        if previous is not None:
            _on_sigterm(previous)
