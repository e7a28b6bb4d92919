"""The events table as the queue: how close ``process_stripe_events`` comes to the SQL it runs.

    python -m benchmarks.worker [--smoke] [--output FILE]

EVENTS pending events of a type no receiver handles (``balance.available``: the loop's own
cost, not the receivers'), worked off by 1, 2 and 4 ``manage.py process_stripe_events``
processes (no ``--follow``: each exits when nothing is left). Events/s from the rows' own
clocks (the first ``processed_at`` to the last: the processes' start-up is not the loop's
speed), beside pgbench running, at the same concurrency in the same run, the SQL each event
needs at the least: the pick and claim of one row (``FOR UPDATE SKIP LOCKED``, committed) and
the fenced completion in a transaction of its own (``benchmarks/pgbench/worker_claim.sql``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from benchmarks.common import ROOT, database_url, machine, setup_django, write_section
from benchmarks.endpoint import _reset
from benchmarks.load import pgbench

WORKERS = (1, 2, 4)
TYPE = "balance.available"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="seconds, not minutes: checks the script")
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args()
    setup_django()
    print(run(output=args.output, smoke=args.smoke))


def run(*, output: Path, smoke: bool) -> str:
    from django.db import connection

    if connection.vendor != "postgresql":
        raise SystemExit("The worker benchmark runs on PostgreSQL (pgbench is its baseline).")
    events = 300 if smoke else 6000
    seconds = 1.0 if smoke else 5.0
    rows = []
    for count in WORKERS:
        _reset(connection)
        _pending(connection, 200_000 if not smoke else 5_000, prefix="pgb")
        sql = pgbench(connection.settings_dict, "worker_claim", count, seconds)
        _reset(connection)
        _pending(connection, events, prefix="wrk")
        rate = _work_off(connection, count, events)
        rows.append((count, rate, sql.rate))
        print(count, round(rate), round(sql.rate), flush=True)
    if smoke and any(rate <= 0 for _, rate, _ in rows):
        raise SystemExit("the workers processed nothing")
    table = "\n".join(
        f"| {count} | {rate:,.0f} | {sql:,.0f} | {rate / sql:.2f} |" for count, rate, sql in rows
    )
    body = f"""
Machine: {machine()}. Command: `python -m benchmarks.worker{" --smoke" if smoke else ""}`.

{events:,} pending events of a type no receiver handles, worked off by N
`process_stripe_events` processes (batches of 10, `FOR UPDATE SKIP LOCKED`), beside pgbench
running, per event, the pick and claim of one row and its fenced completion
(`benchmarks/pgbench/worker_claim.sql`) at the same concurrency, {seconds:g} s, in the same run.
Events/s from the rows' own clock: the first event processed to the last.

| workers | events/s | pgbench, the SQL alone: events/s | ÷ SQL |
|---|---|---|---|
{table}
"""
    write_section(output, "Worker throughput" + (" (smoke)" if smoke else ""), body)
    return f"wrote {output}"


def _pending(connection, count: int, *, prefix: str) -> None:
    """``count`` accepted, never claimed events, inserted in one statement."""
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO stripe_idempotency_stripeevent (event_id, type, livemode, api_version, created, "
            "payload, received_at, claimed_by, attempts, last_error, endpoint) "
            "SELECT %s || n, %s, false, '2024-06-20', now(), "
            "jsonb_build_object('id', %s || n, 'object', 'event', 'type', %s, 'data', "
            "jsonb_build_object('object', jsonb_build_object('object', 'balance'))), "
            "statement_timestamp(), '', 0, '', '' FROM generate_series(1, %s) AS n",
            [f"evt_{prefix}_", TYPE, f"evt_{prefix}_", TYPE, count],
        )
        cursor.execute("VACUUM ANALYZE stripe_idempotency_stripeevent")


def _work_off(connection, workers: int, events: int) -> float:
    """Events/s of ``workers`` processes working ``events`` off, from the rows' own clock."""
    env = {
        "DJANGO_SETTINGS_MODULE": "benchmarks.settings",
        "DATABASE_URL": database_url(connection.settings_dict),
        "TASK_QUEUE": "table",
        "STRIPE_PROCESSING": "deferred",
        "PYTHONPATH": str(ROOT),
    }
    processes = [
        subprocess.Popen(
            [sys.executable, "manage.py", "process_stripe_events", "-v", "0"],
            cwd=ROOT,
            env={**os.environ, **env},
        )
        for _ in range(workers)
    ]
    for process in processes:
        if process.wait(timeout=600) != 0:
            raise SystemExit(f"a worker exited {process.returncode}")
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT COUNT(*), EXTRACT(EPOCH FROM MAX(processed_at) - MIN(processed_at)) "
            "FROM stripe_idempotency_stripeevent WHERE processed_at IS NOT NULL"
        )
        done, span = cursor.fetchone()
    if done != events:
        raise SystemExit(f"{events - done} of {events} events left unprocessed")
    return done / float(span) if span else 0.0


if __name__ == "__main__":
    main()
