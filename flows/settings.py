"""Prefect settings postprod relies on: ephemeral-server defaults, a quiet console, the GPU limit.

Prefect reads its settings once, when it is first imported, so :func:`apply_server_defaults`
must run before that: ``flows/__init__.py`` calls it. It only fills in what the environment
does not already say, so a user's ``PREFECT_*`` variables (``PREFECT_API_URL`` above all: run
against that server instead of the embedded one) always win.
"""

from __future__ import annotations

import atexit
import logging
import os
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager, suppress
from typing import Any

SERVER_DEFAULTS: dict[str, str] = {
    # No telemetry from studios' machines.
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
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


class _NoTracebacks(logging.Filter):
    """Drops records carrying an exception: the caller re-raises it and reports it (the CLI: one
    line, the traceback only with ``--debug``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.exc_info is None


@contextmanager
def quiet_console(level: int = logging.WARNING, environ: MutableMapping[str, str] | None = None) -> Iterator[None]:
    """Show only ``level`` and above of Prefect's logs on the console while the block runs, and
    no tracebacks (the exception reaches the caller).

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
    no_tracebacks = _NoTracebacks()
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
