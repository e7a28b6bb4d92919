"""Real servers: a database of the test's own, gunicorn and uvicorn instances, a private PostgreSQL.

Everything started here is stopped by pid when the test ends, whatever happens.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connection, connections

from benchmarks.common import database_url

ROOT = Path(__file__).resolve().parent.parent
PG_BIN = (
    Path("/usr/lib/postgresql")
    / (os.listdir("/usr/lib/postgresql")[0] if Path("/usr/lib/postgresql").exists() else "")
    / "bin"
)


def _wrapper_class() -> type:
    """The database backend's connection class, to open connections to other databases."""
    return type(connections[DEFAULT_DB_ALIAS])


def children_of(parents: set[int]) -> list[int]:
    """The processes whose parent is one of ``parents`` (read from /proc)."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # it ended meanwhile
            if int(fields[1]) in parents:
                children.append(int(entry.name))
    return children


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Database:
    """A database of the test's own on the server under test, with the example project migrated."""

    name: str
    url: str
    settings_dict: dict[str, Any]
    _connections: threading.local = field(default_factory=threading.local)
    _opened: list[Any] = field(default_factory=list)  # every thread's, to close them all at the end

    def cursor(self) -> Any:
        """A cursor on this database, one connection per thread (autocommit)."""
        wrapper = getattr(self._connections, "wrapper", None)
        if wrapper is None:
            wrapper = _wrapper_class()({**self.settings_dict, "NAME": self.name}, alias=f"chaos-{self.name}")
            self._connections.wrapper = wrapper
            self._opened.append(wrapper)
        elif wrapper.connection is not None and not wrapper.is_usable():
            wrapper.close()  # the server restarted under it
        return wrapper.cursor()

    def scalar(self, sql: str, params: list[Any] | None = None) -> Any:
        with self.cursor() as cursor:
            cursor.execute(sql, params or [])
            row = cursor.fetchone()
        return row[0] if row else None

    def rows(self, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
        with self.cursor() as cursor:
            cursor.execute(sql, params or [])
            return list(cursor.fetchall())

    def close(self) -> None:
        for wrapper in self._opened:
            # Closing another thread's connection is refused by default; these
            # threads are done with theirs.
            wrapper.inc_thread_sharing()
            wrapper.close()
        self._opened.clear()


@contextlib.contextmanager
def own_database(settings_dict: dict[str, Any] | None = None) -> Iterator[Database]:
    """Create a database next to the test database, migrate the example project into it, drop it after."""
    settings_dict = settings_dict or dict(connection.settings_dict)
    name = f"chaos_{os.getpid()}_{int(time.time() * 1000) % 100000}"
    quote_name = connection.ops.quote_name
    server_db = "postgres" if connection.vendor == "postgresql" else ""
    admin = _wrapper_class()({**settings_dict, "NAME": server_db}, alias="chaos-admin")
    with admin.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE {quote_name(name)}")
    db = Database(name=name, url=database_url(settings_dict, name), settings_dict=settings_dict)
    try:
        migrated = manage(db.url, "migrate", "-v", "0")
        assert migrated.returncode == 0, migrated.stderr
        yield db
    finally:
        db.close()
        with contextlib.suppress(Exception), admin.cursor() as cursor:
            force = " WITH (FORCE)" if connection.vendor == "postgresql" else ""
            cursor.execute(f"DROP DATABASE IF EXISTS {quote_name(name)}{force}")
        admin.close()


def app_environment(db_url: str, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.chaos.settings",
        "DATABASE_URL": db_url,
        "DEBUG": "0",
        "SHOP_FULFILMENT_SECONDS": "0",
        "PYTHONPATH": str(ROOT),
        **extra,
    }


def manage(db_url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=app_environment(db_url, **env),
        capture_output=True,
        text=True,
        timeout=300,
    )
    return result


class AppServer:
    """One app instance: a server process on its own port and INSTANCE_ID, serving the example project."""

    name = "server"

    def __init__(self, db_url: str, instance_id: str, workers: int, log_dir: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/stripe/webhook/"
        self.log = log_dir / f"{instance_id}.log"
        with self.log.open("w") as log:  # the server writes to its own copy of the descriptor
            self.process = subprocess.Popen(
                self.command(workers),
                cwd=ROOT,
                env=app_environment(db_url, STRIPE_INSTANCE_ID=instance_id, **env),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._wait_until_up()

    def command(self, workers: int) -> list[str]:
        raise NotImplementedError

    def _wait_until_up(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(self.url, timeout=2).close()
            except urllib.error.HTTPError as error:
                error.close()
                if error.code == 405:  # GET is answered "method not allowed": the app is up
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} did not come up")

    def worker_pids(self) -> list[int]:
        return children_of({self.process.pid})

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


class Gunicorn(AppServer):
    """WSGI: a gunicorn master with sync workers."""

    name = "gunicorn"

    def command(self, workers: int) -> list[str]:
        return [
            *(sys.executable, "-m", "gunicorn", "example_project.wsgi:application"),
            *("--bind", f"127.0.0.1:{self.port}", "--workers", str(workers), "--preload"),
            *("--timeout", "30", "--graceful-timeout", "2", "--log-level", "warning"),
        ]


class Uvicorn(AppServer):
    """ASGI: uvicorn worker processes, each running the sync view in Django's thread."""

    name = "uvicorn"

    def command(self, workers: int) -> list[str]:
        return [
            *(sys.executable, "-m", "uvicorn", "example_project.asgi:application"),
            *("--host", "127.0.0.1", "--port", str(self.port), "--workers", str(workers)),
            *("--log-level", "warning", "--no-access-log"),
        ]


def post(url: str, body: bytes, signature: str, timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
    """POST a delivery; (status, headers, body). Connection failures are status 0."""
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "Stripe-Signature": signature},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()
    except (OSError, http.client.HTTPException) as error:
        # The worker died mid-answer (killed), or the connection was refused.
        return 0, {}, str(error).encode()


def answer_status(body: bytes) -> str:
    try:
        return str(json.loads(body).get("status"))
    except ValueError:
        return "not-json"


class PrivatePostgres:
    """A PostgreSQL server of the test's own (initdb in a temporary directory), free to stop and start.

    The machine's shared server is never touched.
    """

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="stripe_idempotency_pg_"))
        self.data = self.dir / "data"
        self.port = free_port()
        shutil.chown(self.dir, "postgres", "postgres")
        self._as_postgres(
            str(PG_BIN / "initdb"),
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
        )
        self.start()

    def _as_postgres(self, *args: str) -> None:
        command = list(args) if os.getuid() != 0 else ["runuser", "-u", "postgres", "--", *args]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._as_postgres(
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.dir / "log"),
            "-w",
            "start",
        )

    def stop(self, mode: str = "immediate") -> None:
        self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def settings_dict(self) -> dict[str, Any]:
        return {
            **connection.settings_dict,
            "USER": "postgres",
            "PASSWORD": "",
            "HOST": "127.0.0.1",
            "PORT": self.port,
        }

    def destroy(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class LocalStripe:
    """localstripe (a fake but stateful Stripe API server, not ours) on a free local port: the
    ``stripe`` client creates objects there, and it signs and sends their events as webhooks."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log_dir / "localstripe.log"
        # Its own entry point listens on every interface and reloads its last state from
        # disk: this one serves on the loopback only, from an empty store.
        script = (
            "import sys; from aiohttp import web; from localstripe.server import app; "
            "web.run_app(app, host='127.0.0.1', port=int(sys.argv[1]), print=None)"
        )
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", script, str(self.port)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"localstripe exited: {self.log.read_text()[-3000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            except OSError:
                time.sleep(0.1)
                continue
            break
        self._config("DELETE", "/_config/data")

    def _config(self, method: str, path: str, form: dict[str, str] | None = None) -> None:
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method)
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200, response.status

    def send_webhooks_to(self, name: str, url: str, secret: str) -> None:
        self._config("POST", f"/_config/webhooks/{name}", {"url": url, "secret": secret})

    def client(self) -> Any:
        import stripe

        return stripe.StripeClient("sk_test_localstripe", base_addresses={"api": self.url})

    def event_body(self, event_id: str) -> bytes:
        """An event as localstripe's Events API returns it: the body to deliver again."""
        request = urllib.request.Request(
            f"{self.url}/v1/events/{event_id}", headers={"Authorization": "Bearer sk_test_localstripe"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return bytes(response.read())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def show(capsys, summary: str) -> None:
    """Print a run's figures to the terminal, past pytest's capture: they belong in CI's log."""
    with capsys.disabled():
        print(f"\n{summary}")  # noqa: T201
