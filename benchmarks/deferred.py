"""Deferred processing: how fast Stripe is answered, and how fast a burst is worked off.

    python -m benchmarks.deferred [--smoke] [--output FILE] [--queues table,database,celery]

1. Acknowledgement rate at concurrency 1, 4 and 16: the example project under gunicorn in
   deferred mode (the events table as the queue, then queueing to django-tasks-db, then to
   Celery on RabbitMQ; no worker runs, so only the answer is measured), beside the framework
   floor (Django answering without the database) and the same deliveries inline, all in this
   run.
2. A burst: BURST checkout events whose receiver takes 100 ms, sent once each at concurrency
   16. The time until every delivery is answered, against the floor answering as many
   requests; the time until every event is processed by N workers, against N / 0.1 s; then
   lost and doubled counted from the database. The same burst inline for comparison.
3. Latency from acknowledgement to processed, p50 and p99, at a trickle (one delivery at a
   time, idle workers), from the rows' own clocks (received_at to processed_at, both the
   database's).
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.common import ROOT, database_url, machine, setup_django, write_section
from benchmarks.endpoint import WORKERS, _Gunicorn, _reset, combined
from benchmarks.load import Figures, http_burst, http_load, pgbench, prepared

if TYPE_CHECKING:
    from tests.workers import Workers

QUEUES = ("table", "database", "celery")
# The acknowledgement with a queue that takes no time: the app's own part, apart from the queue's.
NO_QUEUE = {"STRIPE_PROCESSING": "deferred", "STRIPE_ENQUEUE": "benchmarks.deferred.enqueue_nothing"}
RECEIVER_SECONDS = 0.1
BURST_CONCURRENCY = 16
Request = tuple[str, bytes, dict[str, str]]


def enqueue_nothing(event_id: str, database: str) -> None:
    """An ``ENQUEUE`` that queues nothing (benchmarks only: no worker would ever see the event)."""


@dataclass(frozen=True)
class Burst:
    queue: str  # "inline", or the task queue
    answered: Figures  # every delivery, once
    processed_seconds: float  # from the first delivery until every event was processed
    workers: int
    lost: int  # answered 2xx, yet not stored
    unprocessed: int  # stored, not processed when the wait for the workers ended
    doubled: int

    @property
    def processed_rate(self) -> float:
        return self.answered.count / self.processed_seconds if self.processed_seconds else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="seconds, not minutes: checks the script")
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument(
        "--queues",
        default=",".join(QUEUES),
        help=f"which of {', '.join(QUEUES)} to measure (comma-separated; default all)",
    )
    args = parser.parse_args()
    setup_django()
    print(run(output=args.output, smoke=args.smoke, queues=tuple(args.queues.split(","))))


def run(*, output: Path, smoke: bool, queues: tuple[str, ...] = QUEUES) -> str:
    from django.db import connection

    seconds = 1.0 if smoke else 6.0
    levels = [1, 4] if smoke else [1, 4, 16]
    burst = 200 if smoke else 10_000
    workers = 4 if smoke else 8
    settings_dict = connection.settings_dict
    url = database_url(settings_dict)

    unknown = set(queues) - set(QUEUES)
    if unknown:
        raise SystemExit(f"--queues: unknown {', '.join(sorted(unknown))}; choose from {', '.join(QUEUES)}")
    rates = _acknowledgement_rates(url, seconds, levels, queues)
    print({level: {k: round(f.rate) for k, f in row.items()} for level, row in rates.items()}, flush=True)
    trickle = {queue: _trickle(url, queue, 20 if smoke else 200) for queue in queues}
    print("trickle", trickle, flush=True)
    floor = _floor_burst(url, burst)
    bursts = [_burst(url, queue, burst, workers) for queue in (*queues, "inline")]
    for result in bursts:
        print(result.queue, round(result.answered.seconds, 1), round(result.processed_seconds, 1), flush=True)
    if smoke:
        problems = [
            f"{b.queue}: {b.answered.errors} non-2xx, {b.lost} lost, {b.unprocessed} unprocessed, "
            f"{b.doubled} doubled"
            for b in bursts
            if b.answered.errors or b.lost or b.unprocessed or b.doubled
        ] + [
            f"{what} at concurrency {level}: {f.errors} non-2xx, {f.count} answered"
            for level, row in rates.items()
            for what, f in row.items()
            if f.errors or not f.count
        ]
        if problems:
            raise SystemExit("; ".join(problems))
    body = _report(rates, trickle, floor, bursts, seconds, burst, smoke, queues)
    write_section(output, "Deferred processing" + (" (smoke)" if smoke else ""), body)
    return f"wrote {output}"


def _checkout(n: int, prefix: str) -> Request:
    from stripe_idempotency.conf import app_settings
    from stripe_idempotency.testing import build_event, encode, sign

    session = {
        "id": f"cs_{prefix}_{n}",
        "object": "checkout.session",
        "amount_total": 1000,
        "currency": "usd",
        # A customer per event: the burst measures the queue, not one balance row's lock.
        "customer": f"cus_{prefix}_{n}",
        "customer_details": {"email": ""},
    }
    body = encode(build_event("checkout.session.completed", data=session, id=f"evt_{prefix}_{n}"))
    headers = {
        "Content-Type": "application/json",
        "Stripe-Signature": sign(body, app_settings.WEBHOOK_SECRETS[0]),
    }
    return "/stripe/webhook/", body, headers


def _floor_request(n: int) -> Request:
    return "/healthz/", b"{}", {"Content-Type": "application/json"}


BENCH_ENV = {"DJANGO_SETTINGS_MODULE": "benchmarks.settings"}


def _pool(url: str, queue: str, workers: int, logs: Path, queue_name: str = "", **env: str) -> Workers:
    """``workers`` task workers for ``queue`` (0: none yet; Celery: its queue named all the same):
    the pool processes of one Celery worker, or ``db_worker`` processes."""
    from tests.workers import CeleryWorkers, DatabaseWorkers, TableWorkers  # the tests' own, reused

    if queue == "table":
        return TableWorkers(url, workers, logs, **BENCH_ENV, **env)
    if queue == "celery":
        return CeleryWorkers(
            url, 1 if workers else 0, logs, processes=workers, queue_name=queue_name, **BENCH_ENV, **env
        )
    return DatabaseWorkers(url, workers, logs, **BENCH_ENV, **env)


@contextlib.contextmanager
def _web(url: str, pool: Workers | None = None, **env: str) -> Iterator[_Gunicorn]:
    """A web instance on emptied tables: inline, or deferred to ``pool``'s queue."""
    from django.db import connection

    _reset(connection)
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM django_tasks_database_dbtaskresult")
    server = _Gunicorn(connection.settings_dict, **{**BENCH_ENV, **(pool.web_env if pool else {}), **env})
    try:
        yield server
    finally:
        server.stop()


def _acknowledgement_rates(
    url: str, seconds: float, levels: list[int], queues: tuple[str, ...]
) -> dict[int, dict[str, Figures]]:
    from django.db import connection

    enough = int(3000 * seconds)
    rates: dict[int, dict[str, Figures]] = {level: {} for level in levels}
    for level in levels:
        # The raw SQL of an acknowledgement queued to django-tasks-db, and with the events table
        # as the queue (the INSERT and its NOTIFY, one statement).
        rates[level]["sql"] = pgbench(connection.settings_dict, "accept", level, seconds)
        if "table" in queues:
            rates[level]["sql table"] = pgbench(connection.settings_dict, "accept_table", level, seconds)
    for mode in ("inline", "no queue", *queues):
        with tempfile.TemporaryDirectory() as logs:
            pool = _pool(url, mode, 0, Path(logs)) if mode in QUEUES else None
            try:
                with _web(url, pool, **(NO_QUEUE if mode == "no queue" else {})) as server:
                    # Every gunicorn worker opens its connections (database, broker) before the clock.
                    warm = [_checkout(n, f"warm_{mode.replace(' ', '_')}") for n in range(10 * WORKERS)]
                    http_burst(server.port, [*warm, *map(_floor_request, range(10 * WORKERS))], WORKERS)
                    for level in levels:
                        if mode == "inline":  # the floor, from the same kind of server, in the same run
                            rates[level]["floor"] = http_load(
                                server.port, prepared(_floor_request, enough), level, seconds
                            )
                        requests = prepared(
                            lambda n, m=mode, lv=level: _checkout(n, f"ack_{m.replace(' ', '_')}_{lv}"),
                            enough,
                        )
                        rates[level][mode] = http_load(server.port, requests, level, seconds)
            finally:
                if pool is not None:
                    pool.stop()
    return rates


def _latencies(cursor: Any) -> tuple[float, float]:
    cursor.execute(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY d), "
        "percentile_cont(0.99) WITHIN GROUP (ORDER BY d) "
        "FROM (SELECT EXTRACT(EPOCH FROM processed_at - received_at) * 1000 AS d "
        "FROM stripe_idempotency_stripeevent WHERE processed_at IS NOT NULL) AS t"
    )
    p50, p99 = cursor.fetchone()
    return float(p50 or 0), float(p99 or 0)


def _wait_until_processed(count: int, timeout: float) -> float:
    """Seconds until ``count`` events are processed (or ``timeout``), polled every 50 ms."""
    from django.db import connection

    started = time.perf_counter()
    with connection.cursor() as cursor:
        while time.perf_counter() - started < timeout:
            cursor.execute(
                "SELECT COUNT(*) FROM stripe_idempotency_stripeevent WHERE processed_at IS NOT NULL"
            )
            if cursor.fetchone()[0] >= count:
                break
            time.sleep(0.05)
    return time.perf_counter() - started


def _trickle(url: str, queue: str, count: int) -> tuple[float, float]:
    """p50 and p99 ms from acknowledgement to processed, one delivery at a time, idle workers."""
    from django.db import connection

    with tempfile.TemporaryDirectory() as logs:
        pool = _pool(url, queue, 2, Path(logs))
        try:
            with _web(url, pool) as server:
                for n in range(count):
                    http_burst(server.port, [_checkout(n, f"trickle_{queue}")], 1)
                    time.sleep(0.02)
                _wait_until_processed(count, timeout=60)
        finally:
            pool.stop()
    with connection.cursor() as cursor:
        return _latencies(cursor)


def _busy_span() -> float:
    """Seconds the workers took, from the rows: the first event processed to the last, plus the
    first one's receiver time (worker processes starting up are not the queue's speed)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT EXTRACT(EPOCH FROM MAX(processed_at) - MIN(processed_at)) "
            "FROM stripe_idempotency_stripeevent"
        )
        return float(cursor.fetchone()[0] or 0) + RECEIVER_SECONDS


def _floor_burst(url: str, count: int) -> Figures:
    with _web(url) as server:
        return http_burst(server.port, [_floor_request(n) for n in range(count)], BURST_CONCURRENCY)


def _burst(url: str, queue: str, count: int, workers: int) -> Burst:
    """The burst answered by the web instance alone, then worked off by the workers alone: on this
    2-core machine they would share the cores, which a deployment does not ask them to."""
    from django.db import connection

    requests = [_checkout(n, f"burst_{queue}") for n in range(count)]
    receiver = {"SHOP_FULFILMENT_SECONDS": str(RECEIVER_SECONDS)}
    with tempfile.TemporaryDirectory() as logs:
        queued = _pool(url, queue, 0, Path(logs), **receiver) if queue != "inline" else None
        try:
            with _web(url, queued, **receiver) as server:
                answered = http_burst(server.port, requests, BURST_CONCURRENCY)
            processed_seconds = answered.seconds
            if queued is not None:
                name = getattr(queued, "queue_name", "")
                pool = _pool(url, queue, workers, Path(logs), queue_name=name, **receiver)
                try:
                    _wait_until_processed(count, timeout=max(120.0, 3 * count * RECEIVER_SECONDS / workers))
                finally:
                    pool.stop()
                processed_seconds = _busy_span()
        finally:
            if queued is not None:
                queued.stop()
    with connection.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM stripe_idempotency_stripeevent WHERE processed_at IS NULL")
        unprocessed = cursor.fetchone()[0]
        cursor.execute("SELECT COUNT(*) FROM stripe_idempotency_stripeevent")
        stored = cursor.fetchone()[0]
        cursor.execute(
            "SELECT COUNT(*) FROM (SELECT stripe_event_id FROM shop_fulfilment GROUP BY stripe_event_id "
            "HAVING COUNT(*) > 1) AS t"
        )
        doubled = cursor.fetchone()[0]
    return Burst(
        queue=queue,
        answered=answered,
        processed_seconds=processed_seconds,
        workers=workers if queue != "inline" else WORKERS,
        lost=answered.count - stored,
        unprocessed=unprocessed,
        doubled=doubled,
    )


def _report(
    rates,
    trickle,
    floor: Figures,
    bursts: list[Burst],
    seconds: float,
    size: int,
    smoke: bool,
    queues: tuple[str, ...],
) -> str:
    rows = [
        "| concurrency | what | answers/s | p50 ms | p99 ms | non-2xx | ÷ framework floor | ÷ floor + SQL |",
        "|---|---|---|---|---|---|---|---|",
    ]
    labels = {
        "floor": "framework floor (Django, no database)",
        "sql": "raw SQL: event INSERT + task INSERT, each committed (pgbench)",
        "sql table": "raw SQL: event INSERT + NOTIFY, one statement (pgbench)",
        "inline": "inline: the receivers run in the request",
        "no queue": "deferred, the queue taking no time (ENQUEUE a no-op): the app's own part",
        "table": "deferred, the events table as the queue (ENQUEUE None)",
        "database": "deferred, queued to django-tasks-db",
        "celery": "deferred, queued to Celery (RabbitMQ)",
    }
    # Which raw SQL each mode's figure is set beside.
    sql_of = {"table": "sql table", "database": "sql"}
    targets = []
    for level, figures in rates.items():
        floor_rate = figures["floor"].rate
        ceilings = {
            key: combined(floor_rate, figures[sql].rate) for key, sql in sql_of.items() if sql in figures
        }
        for key, label in labels.items():
            if key not in figures:
                continue
            f = figures[key]
            measured = key in {"inline", "no queue", *QUEUES}
            ratio = f"{f.rate / floor_rate:.2f}" if measured and floor_rate else ""
            over_both = f"{f.rate / ceilings[key]:.2f}" if ceilings.get(key) else ""
            rows.append(
                f"| {level} | {label} | {f.rate:,.0f} | {f.p50_ms:.1f} | {f.p99_ms:.1f} | {f.errors} "
                f"| {ratio} | {over_both} |"
            )
        if "table" in figures:
            targets.append(
                f"| deferred (table) ≥ 0.8 x (floor + SQL) at concurrency {level} "
                f"| {figures['table'].rate / ceilings['table']:.2f} |"
            )
        if level >= 4:
            ceiling = ceilings.get("database") or combined(floor_rate, figures["sql"].rate)
            for queue in ("no queue", *queues):
                ratio = figures[queue].rate / floor_rate
                targets.append(
                    f"| deferred ({queue}) ≥ 0.6 x framework floor at concurrency {level} "
                    f"| {ratio:.2f} (floor + SQL alone: {ceiling / floor_rate:.2f}) |"
                )
    burst_rows = [
        "| mode | workers | all answered in s | ÷ floor's time | processed in s | events/s "
        "| ÷ (workers / 0.1 s) | lost | unprocessed at the end | doubled |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| framework floor, {size:,} requests | | {floor.seconds:.1f} | 1.00 | | | | | | |",
    ]
    for b in bursts:
        ideal = b.workers / RECEIVER_SECONDS
        burst_rows.append(
            f"| {b.queue} | {b.workers} | {b.answered.seconds:.1f} "
            f"| {b.answered.seconds / floor.seconds:.2f} "
            f"| {b.processed_seconds:.1f} | {b.processed_rate:,.0f} | {b.processed_rate / ideal:.2f} "
            f"| {b.lost} | {b.unprocessed} | {b.doubled} |"
        )
        if b.queue != "inline":
            answered = b.answered.seconds / floor.seconds
            share = 0.9 if b.queue == "table" else 0.8
            targets.append(f"| burst answered ({b.queue}) ≤ 2 x the floor's time | {answered:.2f} |")
            targets.append(
                f"| burst processed ({b.queue}) ≥ {share} x {b.workers} workers / 0.1 s "
                f"| {b.processed_rate / ideal:.2f} |"
            )
    if "table" in trickle:
        targets.append(
            f"| acknowledgement to processed (table, PostgreSQL) p50 ≤ 10 ms | {trickle['table'][0]:.1f} |"
        )
    picked = "" if queues == QUEUES else f" --queues {','.join(queues)}"
    trickle_rows = "\n".join(f"| {queue} | {p50:.1f} | {p99:.1f} |" for queue, (p50, p99) in trickle.items())
    return f"""
Machine: {machine()}. Command: `python -m benchmarks.deferred{" --smoke" if smoke else ""}{picked}`
({seconds:g} s per rate).

The example project under gunicorn ({WORKERS} sync workers), PostgreSQL, checkout events (one
fulfilment row and one ledger credit each), built and signed before the clock starts, a new
connection per request. Acknowledgement rates are measured with no worker running, so only the
answer is timed: in deferred mode it is the event's INSERT (one statement, committed) and the
enqueue (django-tasks-db: one more INSERT in the same database; Celery: a publish to RabbitMQ;
the events table as the queue: none, the INSERT sends a NOTIFY itself). "Inline" runs the
receivers in the request, as before. Every figure beside the framework floor and pgbench
running the same statements (`benchmarks/pgbench/accept.sql`, `accept_table.sql`), measured in
the same run; "÷ floor + SQL" compares with 1 / (1/floor + 1/SQL), what any Django view running
that SQL could reach on this machine.

{chr(10).join(rows)}

A burst of {size:,} events whose receiver takes {RECEIVER_SECONDS * 1000:.0f} ms, each sent once at
concurrency {BURST_CONCURRENCY} (Stripe catching up after an outage). "All answered" is the time
until the last delivery got its answer, with no worker running; then the workers start, and
"processed" is the time until the last event was processed (inline: the same as answered). On
this 2-core machine web and workers at once would share two cores, which a deployment does not
make them do: each phase is measured alone, the second from the first event processed to the
last (plus one receiver's 100 ms), so that the workers' start-up is not counted. Celery runs
one worker with a pool of that many processes, django-tasks-db that many `db_worker`
processes, the events table that many `process_stripe_events --follow` processes. Counted
from the database: lost (answered 2xx, not stored), unprocessed when the
wait for the workers ended (three times the ideal time; left pending for the reaper), doubled
(a fulfilment written twice).

{chr(10).join(burst_rows)}

From acknowledgement to processed at a trickle (one delivery at a time, two idle workers;
received_at to processed_at on the database's clock), ms:

| queue | p50 | p99 |
|---|---|---|
{trickle_rows}

| target | measured |
|---|---|
{chr(10).join(targets)}
"""


if __name__ == "__main__":
    main()
