"""The README's first command, for real: the example project's demo on a fresh SQLite database."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(args, database_url):
    env = {**os.environ, "DATABASE_URL": database_url, "DJANGO_SETTINGS_MODULE": "example_project.settings"}
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def test_the_demo_handles_every_event_exactly_once(tmp_path):
    url = f"sqlite:///{tmp_path / 'example.sqlite3'}"
    migrate = run(["migrate", "-v", "0"], url)
    assert migrate.returncode == 0, migrate.stderr
    demo = run(["stripe_demo", "--events", "12", "--deliveries", "4", "--senders", "6"], url)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    out = demo.stdout
    assert "Sent 12 events, each delivered 4 times, from 6 concurrent senders (48 deliveries)" in out
    assert re.search(r"processed\s+12 ", out), out
    assert re.search(r"duplicate\s+36 ", out), out
    assert "Receiver runs per event: 1 run(s): 12 events" in out
    assert "fulfilments 4, cancellations 4, refunds 4, confirmation emails sent 4" in out
    balances = re.findall(r"cus_demo_\w+\s+(\d+) usd  \((\d+) entries; events add up to (\d+)\) ok", out)
    # Four customers; each paid 1500 once and was refunded 500 once.
    assert [(b, n, e) for b, n, e in balances] == [("1000", "2", "1000")] * 4
    assert "Every one of the 12 events was handled exactly once." in out
    assert demo.stderr == ""


def test_the_example_project_passes_its_checks_and_has_no_missing_migrations(tmp_path):
    url = f"sqlite:///{tmp_path / 'example.sqlite3'}"
    check = run(["check", "--fail-level", "WARNING"], url)
    assert check.returncode == 0, check.stdout + check.stderr
    migrations = run(["makemigrations", "--check", "--dry-run"], url)
    assert migrations.returncode == 0, migrations.stdout + migrations.stderr


def test_with_debug_off_django_request_errors_are_logged(tmp_path):
    # An unhandled 500 must leave a line on the console, not only an email to ADMINS.
    script = (
        "import django, logging; django.setup(); "
        "logging.getLogger('django.request').error('Internal Server Error: /stripe/webhook/')"
    )
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'example.sqlite3'}",
        "DJANGO_SETTINGS_MODULE": "example_project.settings",
        "DEBUG": "false",
    }
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "ERROR django.request: Internal Server Error: /stripe/webhook/\n"


def test_a_pool_size_on_sqlite_is_a_clear_startup_error(tmp_path):
    env = {**os.environ, "DATABASE_POOL_SIZE": "8", "DJANGO_SETTINGS_MODULE": "example_project.settings"}
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'example.sqlite3'}"
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "DATABASE_POOL_SIZE needs PostgreSQL (Django's connection pool is psycopg's)" in result.stderr


def test_the_example_project_bounds_every_wait_on_the_database():
    # What docs/deployment.md prescribes for a database that stops answering.
    script = (
        "import json, example_project.settings as s; print(json.dumps(s.DATABASES['default']['OPTIONS']))"
    )
    options = {}
    for url in ("postgres://u@127.0.0.1/db", "mysql://u@127.0.0.1/db", "sqlite:////tmp/x.sqlite3"):
        env = {**os.environ, "DATABASE_URL": url, "DATABASE_TIMEOUT": "12"}
        result = subprocess.run(
            [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        options[url.split(":")[0]] = json.loads(result.stdout)
    assert options["postgres"] == {
        "connect_timeout": 5,
        "options": "-c statement_timeout=12s -c lock_timeout=12s",
    }
    assert options["mysql"]["init_command"] == (
        "SET SESSION max_statement_time=12, lock_wait_timeout=12, innodb_lock_wait_timeout=12"
    )
    assert options["sqlite"] == {"transaction_mode": "IMMEDIATE", "timeout": 12}


def test_the_example_project_serves_a_connect_endpoint_when_given_its_secret(tmp_path):
    script = (
        "import django; django.setup(); "
        "from django.core.checks import run_checks; from django.urls import reverse; "
        "print([m.id for m in run_checks() if m.id.startswith('stripe_idempotency')], "
        "reverse('stripe_idempotency:webhook', kwargs={'endpoint': 'connect'}))"
    )
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'example.sqlite3'}",
        "DJANGO_SETTINGS_MODULE": "example_project.settings",
        "STRIPE_CONNECT_WEBHOOK_SECRET": "whsec_connect_example",
    }
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert (result.returncode, result.stdout) == (0, "[] /stripe/webhook/connect/\n"), result.stderr
