"""Prefect settings postprod relies on: ephemeral-server defaults, a quiet console, the GPU limit.

Prefect reads its settings once, when it is first imported, so :func:`apply_server_defaults`
must run before that: ``flows/__init__.py`` calls it. It only fills in what the environment
does not already say, so a user's ``PREFECT_*`` variables (``PREFECT_API_URL`` above all: run
against that server instead of the embedded one) always win.

Telemetry is off on both sides: the server's (``PREFECT_SERVER_ANALYTICS_ENABLED=false``) and
the client's (``DO_NOT_TRACK=1``, which also keeps Prefect's first-run notice about it off the
terminal); a run talks to nothing but its Prefect server (tested: ``tests/test_safety.py``).

The embedded server is started by :func:`start_embedded_server`, from the main thread before
the flow runs, as a child that the kernel stops when postprod's process dies (Linux
``PR_SET_PDEATHSIG``): a killed run (SIGKILL too) never leaves a server running.
"""

from __future__ import annotations

import atexit
import logging
import os
import subprocess
import sys
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager, suppress
from typing import Any

SERVER_DEFAULTS: dict[str, str] = {
    # No telemetry from studios' machines: the server's, and the client's (with its notice).
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    # The embedded (ephemeral) server runs migrations on first start; on a loaded 2-core laptop
    # that takes far longer than Prefect's default wait, and the run would fail before starting.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "600",
}
CONSOLE_LEVEL_VARS = ("PREFECT_LOGGING_LEVEL", "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL")
"""Either one set by the user means: leave Prefect's console logging as configured."""
GPU_LIMIT = "gpu"
"""Name of the global concurrency limit held around the model work of one shot."""
GPU_LEASE_SECONDS = 60.0
"""Lease of a held ``gpu`` slot (the shortest the server accepts): renewed every 45 s while the
shot computes, so the slot of a process that died comes back at most this long after its last
renewal (plus the server's repossessor loop, 15 s)."""


def apply_server_defaults(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Put each of :data:`SERVER_DEFAULTS` the user has not set into ``environ`` (default:
    ``os.environ``); returns the ones it set."""
    environ = os.environ if environ is None else environ
    added = {k: v for k, v in SERVER_DEFAULTS.items() if k not in environ}
    environ.update(added)
    return added


def prefect_console_handlers() -> list[logging.Handler]:
    """Prefect's console handlers (on the root logger and the server's loggers)."""
    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [
        logging.getLogger(),
        *(v for v in logging.Logger.manager.loggerDict.values() if isinstance(v, logging.Logger)),
    ]
    found = {id(h): h for lg in loggers for h in lg.handlers if isinstance(h, PrefectConsoleHandler)}
    return list(found.values())


class _CallerReports(logging.Filter):
    """Drops records carrying an exception, and the "Finished in state Failed(...)" lines of
    failed task and flow runs (which repeat the exception's message, newlines escaped): the
    caller re-raises the exception and reports it (the CLI: one line, the traceback only with
    ``--debug``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info is not None:
            return False
        return not (
            isinstance(record.msg, str)
            and record.msg.startswith(("Finished in state Failed", "Finished in state Crashed"))
        )


@contextmanager
def quiet_console(level: int = logging.WARNING, environ: MutableMapping[str, str] | None = None) -> Iterator[None]:
    """Show only ``level`` and above of Prefect's logs on the console while the block runs, and
    neither tracebacks nor the failed runs' final states (the exception reaches the caller).

    For the laptop case: the stages' own progress bars are the display. Logs still reach the
    Prefect API at INFO (the flow run's page in the UI). Does nothing when the user set
    ``PREFECT_LOGGING_LEVEL`` or ``PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL``.
    """
    environ = os.environ if environ is None else environ
    if any(v in environ for v in CONSOLE_LEVEL_VARS):
        yield
        return
    handlers = prefect_console_handlers()
    before = [h.level for h in handlers]
    no_tracebacks = _CallerReports()
    for h in handlers:
        h.setLevel(max(h.level, level))
        h.addFilter(no_tracebacks)
    try:
        yield
    finally:
        for h, old in zip(handlers, before, strict=True):
            h.setLevel(old)
            h.removeFilter(no_tracebacks)


def quiet_embedded_server_exit() -> None:
    """If Prefect's embedded (ephemeral) server runs in this process, stop it at exit inside
    :func:`quiet_console`, so its INFO goodbye does not follow the CLI's last line. A server
    at ``PREFECT_API_URL`` is not ours: nothing to do."""
    from prefect.server.api.server import SubprocessASGIServer  # what Prefect's client starts itself
    from prefect.settings import get_current_settings

    if get_current_settings().api.url:
        return
    server = SubprocessASGIServer()  # the process's one embedded server (a singleton)
    if server.running:
        atexit.unregister(server.stop)
        atexit.register(_stop_quietly, server)


def _stop_quietly(server: Any) -> None:
    with quiet_console():
        server.stop()


# Run in the server's process before uvicorn: stop when the parent (postprod) dies, and do not
# start at all if it died before the request took effect (the parent's pid is argv[1]).
_TIED_LAUNCHER = (
    "import ctypes, os, runpy, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG\n"
    "os.getppid() == int(sys.argv[1]) or sys.exit(1)\n"
    "sys.argv = ['uvicorn', *sys.argv[2:]]\n"
    "runpy.run_module('uvicorn', run_name='__main__', alter_sys=True)\n"
)


def start_embedded_server() -> None:
    """Start Prefect's embedded (ephemeral) server for this process now, tied to it: on Linux the
    server gets SIGTERM when this process dies, however it dies. Nothing to do with
    ``PREFECT_API_URL`` set, off Linux, or when the process's embedded server exists already.
    Call from the main thread (the kernel ties the child to the thread that started it)."""
    if not uses_embedded_server() or not sys.platform.startswith("linux"):
        return
    from prefect.server.api.server import SubprocessASGIServer

    if None in SubprocessASGIServer._instances:  # Prefect's singleton for the embedded server
        return

    class TiedServer(SubprocessASGIServer):
        """Prefect's embedded server started through :data:`_TIED_LAUNCHER`."""

        def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
            import prefect
            from prefect.settings import get_current_settings

            args = [
                *("--app-dir", str(prefect.__module_path__.parent)),
                *("--factory", "prefect.server.api.server:create_app"),
                *("--host", "127.0.0.1", "--port", str(self.port)),
                *("--log-level", "error", "--lifespan", "on"),
            ]
            env = {
                **os.environ,
                "PREFECT_UI_ENABLED": "0",
                "PREFECT__SERVER_EPHEMERAL": "1",
                "PREFECT__SERVER_FINAL": "1",
                **get_current_settings().to_environment_variables(exclude_unset=True),
            }
            return subprocess.Popen([sys.executable, "-c", _TIED_LAUNCHER, str(os.getpid()), *args], env=env)

    TiedServer().start()  # registers itself as the singleton every Prefect client asks for


def uses_embedded_server() -> bool:
    """No ``PREFECT_API_URL``: Prefect runs its embedded (ephemeral) server for this process."""
    from prefect.settings import get_current_settings

    return not get_current_settings().api.url


@contextmanager
def gpu_slots(occupy: int) -> Iterator[None]:
    """Hold ``occupy`` slots of the :data:`GPU_LIMIT` limit while the block runs.

    Not on the embedded server: it runs no lease repossessor, so the slots of a killed run would
    never be given back and the next run would wait forever; a run on the embedded server is
    alone on its machine anyway (one person, one laptop), and bounds its own GPU use.
    """
    if uses_embedded_server():
        yield
        return
    from prefect.concurrency.sync import concurrency

    with concurrency(GPU_LIMIT, occupy=occupy, strict=True, lease_duration=GPU_LEASE_SECONDS):
        yield


def gpu_count() -> int:
    """GPUs this machine offers to one worker: ``torch.cuda.device_count()``, at least 1 (the CPU)."""
    import torch

    return max(1, torch.cuda.device_count())


def ensure_gpu_limit(name: str = GPU_LIMIT, slots: int | None = None) -> int:
    """Slots of the global concurrency limit ``name``; creates it with ``slots`` (default
    :func:`gpu_count`) when the server has none. An existing limit is left as the operator set it
    (on a farm: the number of GPUs of all workers together, see docs/operators.md)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            return client.read_global_concurrency_limit_by_name(name).limit
        except ObjectNotFound:
            pass
        with suppress(ObjectAlreadyExists):  # another run may have created it meanwhile
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=slots or gpu_count()))
        return client.read_global_concurrency_limit_by_name(name).limit
