"""The webhook endpoint under gunicorn, beside the raw SQL it needs (pgbench) and Django's own floor.

    python -m benchmarks.endpoint [--smoke] [--seconds N] [--output FILE]

For each concurrency (1, 4, 16): events/s and p50/p99 latency for distinct events, for a
duplicate storm (each event delivered 5 times at once), and for the framework floor (a view
of the same project answering 200 without the database); and pgbench running the same
claim + effect row + fenced commit, and the same duplicate claim, at the same concurrency.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from benchmarks.common import ROOT, machine, setup_django, write_section
from benchmarks.load import Figures, http_load, pgbench, prepared

WORKERS = 2 * (os.cpu_count() or 1) + 1  # gunicorn's advice for sync workers
STORM = 5


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--smoke", action="store_true", help="1 s per figure, concurrency 1 and 4: checks the script"
    )
    parser.add_argument("--seconds", type=float, default=6.0, help="Load time per figure (default 6).")
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args()
    setup_django()
    levels = [1, 4] if args.smoke else [1, 4, 16]
    seconds = 1.0 if args.smoke else args.seconds
    print(run(seconds=seconds, levels=levels, output=args.output, smoke=args.smoke))


def run(*, seconds: float, levels: list[int], output: Path, smoke: bool) -> str:
    from django.db import connection

    from stripe_idempotency.conf import app_settings
    from stripe_idempotency.testing import build_event, encode, sign

    secret = app_settings.WEBHOOK_SECRETS[0]
    settings_dict = connection.settings_dict
    _reset(connection)
    with connection.cursor() as cursor:  # the row every pgbench duplicate delivery finds processed
        cursor.execute(
            "INSERT INTO stripe_idempotency_stripeevent (event_id, type, livemode, api_version, payload, "
            "received_at, claimed_at, claimed_by, processed_at, attempts, last_error) VALUES "
            "('evt_pgb_duplicate', 'x', false, '', '{}', now(), now(), 'bench', now(), 1, '')"
        )
    server = _Gunicorn(settings_dict)
    webhook = "/stripe/webhook/"
    try:

        def distinct(n: int) -> tuple[str, bytes, dict[str, str]]:
            body = encode(
                build_event("customer.subscription.deleted", data={"id": f"sub_{n}", "status": "canceled"})
            )
            return webhook, body, {"Content-Type": "application/json", "Stripe-Signature": sign(body, secret)}

        def storm(n: int) -> tuple[str, bytes, dict[str, str]]:
            # Deliveries n .. n+4 carry the same event: threads take them one after another, at once.
            event = build_event(
                "customer.subscription.deleted", id=f"evt_storm_{n // STORM}", data={"id": "sub"}
            )
            body = encode(event)
            return webhook, body, {"Content-Type": "application/json", "Stripe-Signature": sign(body, secret)}

        def floor(n: int) -> tuple[str, bytes, dict[str, str]]:
            return "/healthz/", encode(build_event()), {"Content-Type": "application/json"}

        # More requests than this machine answers in the time, built before the clock starts.
        enough = int(4000 * seconds)
        rows = []
        for level in levels:
            # Each level's storm events are new: a later level must not meet processed ids.
            offset = level * enough
            figures = {
                "floor": http_load(server.port, prepared(floor, enough), level, seconds),
                "distinct": http_load(server.port, prepared(distinct, enough), level, seconds),
                "storm": http_load(
                    server.port, prepared(lambda n, o=offset: storm(o + n), enough), level, seconds
                ),
                "sql": pgbench(settings_dict, "claim_process", level, seconds),
                "sql duplicate": pgbench(settings_dict, "duplicate", level, seconds),
            }
            rows.append((level, figures))
            print(level, {k: round(v.rate) for k, v in figures.items()}, flush=True)
    finally:
        server.stop()
    if smoke:
        for level, figures in rows:
            # The storm's 503s are the expected busy answers; nothing else may fail.
            failed = {k: f.errors for k, f in figures.items() if f.errors and k != "storm"}
            empty = [k for k, f in figures.items() if not f.count]
            if failed or empty:
                raise SystemExit(
                    f"At concurrency {level}: non-2xx answers {failed}, figures of nothing {empty}"
                )
    in_process = _test_client_rate(200 if smoke else 2000)
    body = _report(rows, in_process, seconds, smoke)
    write_section(output, "Webhook endpoint" + (" (smoke)" if smoke else ""), body)
    return f"wrote {output}"


def _reset(connection) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE stripe_idempotency_ledgerentry, stripe_idempotency_ledgerbalance, "
            "shop_cancellation, shop_fulfilment, stripe_idempotency_stripeevent CASCADE"
        )
        cursor.execute("VACUUM ANALYZE stripe_idempotency_stripeevent")


def _test_client_rate(count: int) -> Figures:
    """The same deliveries through Django's test client, in this process: no HTTP server at all."""
    from django.test import Client

    from stripe_idempotency.testing import build_event, deliver

    client = Client()
    latencies = []
    started = time.perf_counter()
    for n in range(count):
        start = time.perf_counter()
        response = deliver(client, build_event("customer.subscription.deleted", data={"id": f"sub_tc_{n}"}))
        assert response.status_code == 200, response.content
        latencies.append(time.perf_counter() - start)
    return Figures(count, time.perf_counter() - started, latencies)


def combined(floor: float, sql: float) -> float:
    """The rate of doing both: Django's floor and the raw SQL, their costs added."""
    return 1 / (1 / floor + 1 / sql) if floor and sql else 0.0


def _report(rows, in_process: Figures, seconds: float, smoke: bool) -> str:
    lines = [
        "| concurrency | what | events/s | p50 ms | p99 ms | non-2xx | ÷ framework floor | ÷ raw SQL "
        "| ÷ floor + SQL |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for level, f in rows:
        floor, sql, duplicate_sql = f["floor"].rate, f["sql"].rate, f["sql duplicate"].rate
        for label, key, raw in [
            ("framework floor (Django, no database)", "floor", None),
            ("webhook, distinct events", "distinct", sql),
            (f"webhook, duplicate storm (x{STORM})", "storm", None),
            ("raw SQL: claim + effect + fenced commit (pgbench)", "sql", None),
            ("raw SQL: duplicate claim (pgbench)", "sql duplicate", None),
        ]:
            fig = f[key]
            over_floor = f"{fig.rate / floor:.2f}" if key in {"distinct", "storm"} and floor else ""
            over_sql = f"{fig.rate / raw:.2f}" if raw else ""
            over_both = f"{fig.rate / combined(floor, sql):.2f}" if raw and floor else ""
            lines.append(
                f"| {level} | {label} | {fig.rate:,.0f} | {fig.p50_ms:.1f} | {fig.p99_ms:.1f} | {fig.errors} "
                f"| {over_floor} | {over_sql} | {over_both} |"
            )
        del duplicate_sql
    targets = []
    for level, f in rows:
        if level >= 4:
            ratio = f["distinct"].rate / f["floor"].rate if f["floor"].rate else 0
            ceiling = combined(f["floor"].rate, f["sql"].rate) / f["floor"].rate if f["floor"].rate else 0
            targets.append(
                f"| endpoint ≥ 0.6 x framework floor at concurrency {level} | {ratio:.2f} "
                f"(floor + SQL alone: {ceiling:.2f}) |"
            )
            sql_ratio = f["distinct"].rate / f["sql"].rate if f["sql"].rate else 0
            targets.append(f"| (aim) endpoint ≥ 0.5 x raw SQL at concurrency {level} | {sql_ratio:.2f} |")
    return f"""
Machine: {machine()}. Command: `python -m benchmarks.endpoint{" --smoke" if smoke else ""}`
({seconds:g} s per figure).

The example project under gunicorn ({WORKERS} sync workers), PostgreSQL, `customer.subscription.deleted`
events (one receiver writing one row), built and signed before each figure's clock starts (the
client's work, not the app's) and sent by Python threads, a new connection per request, as
Stripe makes. Every figure beside the baselines measured in the same run:
Django answering without the database (`/healthz/`), and pgbench running the same SQL at the
same concurrency (`benchmarks/pgbench/claim_process.sql`, `duplicate.sql`). Rates and
latencies count 2xx answers; in the duplicate storm the non-2xx are the expected 503 `busy`
answers to deliveries that arrive while another delivery of the event is being processed.

{chr(10).join(lines)}

"÷ floor + SQL" compares with the rate of a view that did nothing but Django's own request
handling and the raw SQL, each costing what it costs alone in this run: 1 / (1/floor + 1/SQL).
On a machine where the load generator, the app server and the database share the cores, that
is the ceiling for any Django endpoint running this SQL, and the part of it we reach is the
measure of our own overhead.

Through Django's test client in this process (no HTTP server), one at a time:
{in_process.rate:,.0f} deliveries/s, p50 {in_process.p50_ms:.2f} ms.

| target | measured |
|---|---|
{chr(10).join(targets)}
"""


class _Gunicorn:
    def __init__(self, settings_dict, **env: str) -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        from benchmarks.common import database_url

        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "benchmarks.settings",
            "DATABASE_URL": database_url(settings_dict),
            "PYTHONPATH": str(ROOT),
            **env,
        }
        self.process = subprocess.Popen(
            [
                *(sys.executable, "-m", "gunicorn", "example_project.wsgi:application"),
                *("--bind", f"127.0.0.1:{self.port}", "--workers", str(WORKERS), "--preload"),
                *("--log-level", "error", "--backlog", "2048"),
            ],
            cwd=ROOT,
            env=env,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz/", timeout=2)
                return
            except (OSError, urllib.error.URLError):
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("gunicorn did not start")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(20)


if __name__ == "__main__":
    main()
