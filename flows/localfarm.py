"""A farm on one machine, from real processes: a PostgreSQL cluster in a temporary folder (the
Debian ``postgresql`` binaries), ``prefect server start`` on it (or on SQLite), the ``gpu`` work
pool, the deployments of ``prefect.yaml``, and process workers. For the farm tests and
``bench/bench_farm.py``; docs/operators.md says how a real farm is set up.

Everything listens on 127.0.0.1 only. Every process is started in its own process group, so
:meth:`LocalFarm.kill` takes a worker down with the flow runs it started (what a machine that
dies does) and :meth:`LocalFarm.stop` leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

Backend = Literal["sqlite", "postgresql"]
PREFECT = (sys.executable, "-m", "prefect")
PG_USER = "prefect"
PG_DATABASE = "prefect"
PG_OS_USER = "postgres"
"""The operating-system account the cluster runs as when this process is root (PostgreSQL
refuses to run as root); the Debian package creates it."""
LOG_RECORD = re.compile(r"^\d\d:\d\d:\d\d\.\d+ \| \w+\s*\|")
"""The first line of a Prefect log record (``HH:MM:SS.mmm | LEVEL   | logger - message``)."""
ERROR_LINE = re.compile(r"\|\s*ERROR\s*\|")
"""The first line of a record at level ERROR."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ppids() -> dict[int, int]:
    """pid -> parent pid of every process (from ``/proc/<pid>/stat``)."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        found[int(stat.parent.name)] = int(fields[1])
    return found


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, their children, ...), whatever their session."""
    children: dict[int, list[int]] = {}
    for child, parent in _ppids().items():
        children.setdefault(parent, []).append(child)
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def postgres_bin() -> Path | None:
    """The folder of the newest PostgreSQL server binaries (``initdb``, ``pg_ctl``, ``postgres``):
    Debian's ``/usr/lib/postgresql/<version>/bin``, else the one on ``PATH``; None when absent."""
    found = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "initdb").is_file()]
    if found:
        return max(found, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


@dataclass
class Postgres:
    """A running PostgreSQL cluster in ``root`` (data, socket, log), on 127.0.0.1:``port``, with
    database ``prefect`` (owner ``prefect``, trust authentication: loopback only) and the
    ``pg_trgm`` extension Prefect's migrations need."""

    root: Path
    port: int
    bin: Path

    @property
    def url(self) -> str:
        """``PREFECT_API_DATABASE_CONNECTION_URL`` for this cluster."""
        return f"postgresql+asyncpg://{PG_USER}@127.0.0.1:{self.port}/{PG_DATABASE}"

    def _as_owner(self, *cmd: str) -> list[str]:
        if os.geteuid() != 0:
            return list(cmd)
        return ["runuser", "-u", PG_OS_USER, "--", *cmd]

    def start(self) -> Postgres:
        """initdb, start (waiting until it accepts connections), create the database and extension."""
        self.root.chmod(0o755)
        if os.geteuid() == 0:
            pwd.getpwnam(PG_OS_USER)  # KeyError: no account to run the cluster as
            shutil.chown(self.root, PG_OS_USER)
        data = self.root / "data"
        self._run(self.bin / "initdb", "-D", str(data), "-U", PG_USER, "--auth=trust", "-E", "UTF8", "--no-sync")
        options = f"-h 127.0.0.1 -p {self.port} -k {self.root} -c fsync=off -c max_connections=200"
        log = self.root / "postgres.log"
        self._run(self.bin / "pg_ctl", "-D", str(data), "-o", options, "-l", str(log), "-w", "start")
        psql = [str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", PG_USER, "-v", "ON_ERROR_STOP=1"]
        self._run(*psql, "-d", "postgres", "-c", f"CREATE DATABASE {PG_DATABASE}", as_owner=False)
        self._run(*psql, "-d", PG_DATABASE, "-c", "CREATE EXTENSION IF NOT EXISTS pg_trgm", as_owner=False)
        return self

    def stop(self) -> None:
        """Stop the cluster (fast shutdown: clients are disconnected) and remove its folder."""
        if (self.root / "data" / "postmaster.pid").exists():
            self._run(self.bin / "pg_ctl", "-D", str(self.root / "data"), "-m", "fast", "-w", "stop", check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def _run(self, *cmd: str | Path, as_owner: bool = True, check: bool = True) -> None:
        args = [str(c) for c in cmd]
        done = subprocess.run(
            self._as_owner(*args) if as_owner else args, capture_output=True, text=True, timeout=120, cwd=self.root
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")


def start_postgres() -> Postgres:
    """A new cluster on a free port, in a folder of its own under the system's temporary folder
    (the ``postgres`` account, which runs it when this process is root, must reach it: a test's
    private temporary folder will not do); :meth:`Postgres.stop` removes it. Raises
    RuntimeError without PostgreSQL binaries."""
    binaries = postgres_bin()
    if binaries is None:
        raise RuntimeError("no PostgreSQL server binaries (Debian: apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="postprod-pg-"))
    try:
        return Postgres(root=root, port=free_port(), bin=binaries).start()
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise


@dataclass
class LocalFarm:
    """``prefect server start`` and workers as child processes, with their logs in ``root/logs``.

    ``env``: the environment every process gets (``PREFECT_API_URL`` of this server, a
    ``PREFECT_HOME`` under ``root``, no other ``PREFECT_*`` variable of the caller's).
    """

    root: Path
    repo: Path
    env: dict[str, str] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    port: int = 0

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def api_url(self) -> str:
        return self.env["PREFECT_API_URL"]

    def start_server(
        self, database_url: str | None = None, settings: dict[str, str] | None = None, timeout: float = 300
    ) -> None:
        """Start the server (SQLite in ``PREFECT_HOME`` when ``database_url`` is None) with the
        Prefect ``settings`` given (environment variables), and wait until it answers."""
        self.port = free_port()
        self.logs.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(
            PREFECT_HOME=str(self.root / "prefect-home"),
            PREFECT_API_URL=f"http://127.0.0.1:{self.port}/api",
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PYTHONPATH=os.pathsep.join(filter(None, [str(self.repo), os.environ.get("PYTHONPATH")])),
            POSTPROD_ROOT=str(self.repo),
        )
        if database_url:
            env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url
        env.update(settings or {})
        self.env = env
        server = self.start("server", "server", "start", "--host", "127.0.0.1", "--port", str(self.port), "--no-ui")
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"prefect server did not start\n{self.tail()}")
            time.sleep(0.5)

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        """``prefect ARGS`` as process ``name`` (its own process group), logging to ``logs/<name>.log``."""
        log: IO[bytes] = (self.logs / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(
            [*PREFECT, *args], env=self.env, cwd=self.repo, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()  # the child holds its own descriptor
        return self.procs[name]

    def cli(self, *args: str, timeout: float = 180) -> str:
        """``prefect ARGS``; returns its stdout, raises RuntimeError if it fails."""
        done = subprocess.run(
            [*PREFECT, *args], env=self.env, cwd=self.repo, capture_output=True, text=True, timeout=timeout
        )
        if done.returncode != 0:
            raise RuntimeError(f"prefect {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def setup_pool(self, gpu_slots: int, *deployments: str) -> None:
        """The ``gpu`` process work pool, the ``gpu`` limit with ``gpu_slots`` slots, and the
        named deployments of prefect.yaml (``prefect deploy -n NAME ...``, as docs/operators.md
        has it); checks each deployment is registered."""
        self.cli("work-pool", "create", "gpu", "--type", "process")
        self.cli("global-concurrency-limit", "create", "gpu", "--limit", str(gpu_slots))
        if deployments:
            self.cli("--no-prompt", "deploy", *(a for n in deployments for a in ("-n", n)))
        for name in deployments:  # each deployment is named after its flow
            if f"'name': '{name}'" not in self.cli("deployment", "inspect", f"{name}/{name}"):
                raise RuntimeError(f"deployment {name} was not registered")

    def start_worker(self, name: str, queue: str, limit: int | None = None) -> subprocess.Popen[bytes]:
        """A process worker ``name`` on pool ``gpu``, queue ``queue``, taking at most ``limit`` runs at once."""
        args = ["worker", "start", "--pool", "gpu", "--work-queue", queue, "--name", name]
        return self.start(name, *args, *(["--limit", str(limit)] if limit else []))

    def api(self, route: str, body: dict[str, Any] | None = None, method: str | None = None) -> Any:
        """The server's REST API: ``route`` (e.g. ``flow_runs/filter``) with JSON ``body`` (POST;
        GET without one, unless ``method`` says otherwise); returns the decoded JSON (None when empty)."""
        request = urllib.request.Request(
            f"{self.api_url}/{route}",
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method=method or ("GET" if body is None else "POST"),
        )
        with urllib.request.urlopen(request, timeout=60) as r:
            data = r.read()
        return json.loads(data) if data else None

    def kill(self, name: str) -> list[int]:
        """SIGKILL process ``name`` with every process under it, what a machine that dies does to a
        worker: Prefect starts each flow run in a session of its own, so the worker's process
        group alone would leave the flow runs going. Returns the pids killed."""
        proc = self.procs[name]
        doomed = [proc.pid, *descendants(proc.pid)]  # before any dies: orphans are re-parented
        for pid in doomed:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()
        return doomed

    def stop(self) -> None:
        """SIGTERM every process group, workers first, the server last; SIGKILL what is left of
        them and of the flow runs they started after 20 s."""
        below = [pid for proc in self.procs.values() if proc.poll() is None for pid in descendants(proc.pid)]
        for proc in reversed(list(self.procs.values())):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in reversed(list(self.procs.values())):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for pid in below:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def server_errors(self) -> list[str]:
        """The server's log records at level ERROR so far, each with the lines that follow it
        up to the next record (its traceback)."""
        records: list[list[str]] = []
        current: list[str] | None = None
        for line in (self.logs / "server.log").read_text(errors="replace").splitlines():
            if LOG_RECORD.match(line):
                current = [line] if ERROR_LINE.search(line) else None
                if current is not None:
                    records.append(current)
            elif current is not None:
                current.append(line)
        return ["\n".join(r) for r in records]

    def server_rss_mib(self) -> float:
        """Resident memory (MiB) of the server's process group (the server and anything it started)."""
        pgid = self.procs["server"].pid
        total = 0
        for status in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = status.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid:  # fields after the name: state, ppid, pgrp, ...
                total += int(fields[21]) * os.sysconf("SC_PAGE_SIZE")  # rss, in pages
        return total / 2**20

    def tail(self, lines: int = 25) -> str:
        """The last ``lines`` of every log, for failure messages."""
        return "\n".join(
            f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-lines:])
            for p in sorted(self.logs.glob("*.log"))
        )
