"""What every benchmark needs: Django set up on its own database, the machine described, a timer."""

from __future__ import annotations

import datetime as dt
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def setup_django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.settings")
    import django

    _create_database()
    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def _create_database() -> None:
    """Create the benchmark database if it does not exist (SQLite creates its file itself)."""
    from benchmarks.settings import DATABASES

    db = DATABASES["default"]
    if db["ENGINE"].endswith("mysql"):
        import MySQLdb

        server = MySQLdb.connect(
            host=db["HOST"] or "127.0.0.1", port=int(db["PORT"] or 3306), user=db["USER"]
        )
        try:
            server.cursor().execute(f"CREATE DATABASE IF NOT EXISTS `{db['NAME']}`")
        finally:
            server.close()
        return
    if not db["ENGINE"].endswith("postgresql"):
        return
    import psycopg

    conninfo = f"host={db['HOST'] or '127.0.0.1'} port={db['PORT'] or 5432} user={db['USER']} dbname=postgres"
    with psycopg.connect(conninfo, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [db["NAME"]]).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{db["NAME"]}"')


def database_url(settings_dict: dict[str, Any], name: str | None = None) -> str:
    """A ``DATABASE_URL`` for the database of ``settings_dict`` (or another ``name`` on its server)."""
    from urllib.parse import quote

    scheme = {"postgresql": "postgres", "mysql": "mysql"}[settings_dict["ENGINE"].rsplit(".", 1)[-1]]
    user = quote(settings_dict.get("USER") or "")
    password = f":{quote(settings_dict['PASSWORD'])}" if settings_dict.get("PASSWORD") else ""
    host = settings_dict.get("HOST") or "127.0.0.1"
    port = f":{settings_dict['PORT']}" if settings_dict.get("PORT") else ""
    return f"{scheme}://{user}{password}@{host}{port}/{name or settings_dict['NAME']}"


def machine() -> str:
    import django
    from django.db import connection

    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SHOW server_version")
            database = f"PostgreSQL {cursor.fetchone()[0]}"
        else:
            database = connection.vendor
    return (
        f"{dt.date.today().isoformat()}; commit {commit()}; {cpu}, {os.cpu_count()} cores; {database}; "
        f"Python {platform.python_version()}; Django {django.get_version()}"
    )


def commit() -> str:
    """The commit measured, marked when the work tree differs from it (figures of no commit)."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short=12", "HEAD") or "unknown"
    # The code measured, not the figures the benchmarks write (BENCHMARKS.md, the profile).
    code = ("stripe_idempotency", "benchmarks/*.py")
    changed = git("status", "--porcelain", "--untracked-files=no", "--", *code)
    return f"{head} with uncommitted changes" if changed else head


def cost_per_call(call: Callable[[Any], object], items: Any) -> tuple[float, float]:
    """(CPU ms, wall ms) per ``call(item)``, after a tenth of the items as warm-up."""
    items = list(items)
    for item in items[: len(items) // 10]:
        call(item)
    measured = items[len(items) // 10 :]
    cpu, wall = time.process_time(), time.perf_counter()
    for item in measured:
        call(item)
    return (
        (time.process_time() - cpu) / len(measured) * 1000,
        (time.perf_counter() - wall) / len(measured) * 1000,
    )


def median_seconds(func: Callable[[], object], runs: int) -> float:
    func()  # warm caches and plans
    timings = []
    for _ in range(runs):
        start = time.perf_counter()
        func()
        timings.append(time.perf_counter() - start)
    return statistics.median(timings)


def write_section(path: Path, title: str, body: str) -> None:
    """Replace (or add) the ``## title`` section of the Markdown report at ``path``."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\nWritten by the scripts in `benchmarks/`.\n"
    head = f"## {title}\n"
    start = text.find(head)
    section = f"{head}\n{body.strip()}\n\n"
    if start == -1:
        text = text.rstrip() + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(head))
        text = text[:start] + section + (text[end + 1 :] if end != -1 else "")
    path.write_text(text.rstrip() + "\n")
