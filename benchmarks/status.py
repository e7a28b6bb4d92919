"""What `stripe_events_status` (and the health view) costs on a table of a million events.

    python -m benchmarks.status            # PostgreSQL at $DATABASE_URL (see benchmarks/README.md)
    python -m benchmarks.status --smoke    # seconds, for CI: proves the script runs

The figures, read through the events' index: 1,000 unprocessed events in every state among N
processed ones spread over 30 days (so about N/720 processed in the last hour, the lag's window).
Each is beside the raw SQL the same answer needs (four statements, PostgreSQL's own
percentile_disc for the lag), timed in the same run on the same data; and beside the query a
dashboard would write without the index in mind (every row's state, grouped), for scale.
Writes the "Status on a large table" section of BENCHMARKS.md (or of --output).
"""

from __future__ import annotations

import argparse
from datetime import timedelta
from pathlib import Path

from benchmarks.common import ROOT, machine, median_seconds, setup_django, write_section

WINDOW = timedelta(hours=1)
UNPROCESSED = {"pending": 200, "claimed": 200, "stale": 200, "failed": 200, "dead": 200}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--smoke", action="store_true", help="10,000 rows, 3 runs: checks the script, measures nothing"
    )
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args()
    setup_django()
    sizes = [10_000] if args.smoke else [100_000, 1_000_000]
    print(run(sizes=sizes, runs=3 if args.smoke else 20, output=args.output, smoke=args.smoke))


def run(*, sizes: list[int], runs: int, output: Path, smoke: bool) -> str:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from stripe_idempotency.admin import _overview
    from stripe_idempotency.models import StripeEvent
    from stripe_idempotency.status import status

    if connection.vendor != "postgresql":
        raise SystemExit("The status benchmark runs on PostgreSQL (it fills the table with generate_series).")
    table = StripeEvent._meta.db_table
    max_attempts = 20
    state = f"""CASE
        WHEN claim_expires_at > now() THEN 'claimed'
        WHEN claimed_at IS NULL AND claim_expires_at IS NULL THEN 'pending'
        WHEN claimed_at IS NOT NULL AND (claim_expires_at IS NULL OR claim_expires_at <= now())
             AND attempts >= {max_attempts} THEN 'dead'
        WHEN claim_expires_at IS NULL THEN 'failed'
        ELSE 'stale' END"""
    raw_statements = [
        f"SELECT {state}, count(*) FROM {table} WHERE processed_at IS NULL GROUP BY 1",
        f"SELECT count(*) FROM {table} WHERE processed_at IS NOT NULL",
        f"SELECT event_id, now() - received_at FROM {table} WHERE processed_at IS NULL "
        "ORDER BY received_at, id LIMIT 1",
        "SELECT count(*), percentile_disc(ARRAY[0.5, 0.95, 0.99]) "
        f"WITHIN GROUP (ORDER BY processed_at - created) FROM {table} "
        "WHERE processed_at >= now() - interval '1 hour' AND created IS NOT NULL",
    ]
    # Every row's state, grouped: right, and a scan of the whole table.
    naive_sql = (
        f"SELECT CASE WHEN processed_at IS NOT NULL THEN 'processed' ELSE {state} END, count(*) "
        f"FROM {table} GROUP BY 1"
    )

    def ours() -> None:
        report = status(using="default", window=WINDOW)
        assert report.counts["dead"] == UNPROCESSED["dead"], report.counts

    def overview() -> None:
        assert _overview()["states"][4]["count"] == UNPROCESSED["dead"]

    def raw() -> None:
        with connection.cursor() as cursor:
            for sql in raw_statements:
                cursor.execute(sql)
                cursor.fetchall()

    def naive() -> None:
        with connection.cursor() as cursor:
            cursor.execute(naive_sql)
            assert len(cursor.fetchall()) == 6

    rows = []
    for size in sizes:
        print(
            f"filling {size:,} processed rows and {sum(UNPROCESSED.values()):,} unprocessed ones ...",
            flush=True,
        )
        _fill(connection, table, size)
        with CaptureQueriesContext(connection) as queries:
            report = status(using="default", window=WINDOW)
        timings = (
            median_seconds(ours, runs),
            median_seconds(raw, runs),
            median_seconds(naive, max(3, runs // 4)),
            median_seconds(overview, runs),
        )
        rows.append((size, report.lag.count, len(queries), *timings))
        ours_ms, raw_ms, naive_ms, overview_ms = (t * 1000 for t in timings)
        print(
            f"  status {ours_ms:.1f} ms, raw SQL {raw_ms:.1f} ms, whole-table GROUP BY {naive_ms:.1f} ms, "
            f"admin overview {overview_ms:.1f} ms"
        )
    plans = _plans(connection, queries)

    table_md = "\n".join(
        f"| {size:,} | {in_window:,} | {statements} | {ours_s * 1000:.1f} | {raw_s * 1000:.1f} | "
        f"{ours_s / raw_s:.2f} | {naive_s * 1000:.1f} | {ours_s / naive_s:.2f} | {overview_s * 1000:.1f} "
        f"| {overview_s / rows[0][-1]:.2f} |"
        for size, in_window, statements, ours_s, raw_s, naive_s, overview_s in rows
    )
    body = f"""
Machine: {machine()}. Command: `python -m benchmarks.status{" --smoke" if smoke else ""}`.

`stripe_idempotency.status.status(window=1h)`, what `manage.py stripe_events_status` and the
health view compute: the counts by state, the oldest unprocessed event and the lag
percentiles, with {sum(UNPROCESSED.values()):,} unprocessed events (200 in each unprocessed
state) among N processed ones spread evenly over 30 days; median of {runs} runs. The baseline is
the raw SQL the same answer needs (four statements, the lag in one `percentile_disc`), in the
same run on the same data; then a whole-table `GROUP BY` of every row's state, for scale, and the
admin changelist's overview (the unprocessed states, the processed in the last hour, the oldest).

{_HEADER}
{table_md}

Target: near the raw SQL, and below a scan of the table; the admin's overview flat as the table
grows. Every figure but one is read through `stripe_event_unprocessed_idx` (the unprocessed rows,
the window); the all-time processed count reads every processed row, and is most of the time at
a million rows, in the raw SQL as in ours. The plans at the largest size:

```
{plans}
```
"""
    write_section(output, "Status on a large table" + (" (smoke)" if smoke else ""), body)
    return f"wrote {output}"


_HEADER = (
    "| processed rows | processed in the window | our statements | status (ms) | raw SQL (ms) "
    "| status ÷ raw | whole-table GROUP BY (ms) | status ÷ GROUP BY | admin overview (ms) "
    "| overview ÷ smallest table |\n"
    "|---|---|---|---|---|---|---|---|---|---|"
)


def _plans(connection, queries) -> str:
    """The plan of each distinct statement status() ran (the percentile reads differ by offset only)."""
    plans, seen = [], set()
    with connection.cursor() as cursor:
        for query in queries.captured_queries:
            sql = query["sql"]
            shape = sql.split(" OFFSET ")[0]
            if shape in seen:
                continue
            seen.add(shape)
            cursor.execute(f"EXPLAIN {sql}")
            plans.append("\n".join(row[0] for row in cursor.fetchall()))
    return "\n\n".join(plans)


def _fill(connection, table: str, processed: int) -> None:
    columns = (
        "event_id, type, livemode, api_version, payload, created, received_at, claimed_at, claimed_by, "
        "claim_expires_at, processed_at, attempts, last_error"
    )
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {table} CASCADE")
        # Processed: evenly over 30 days, each a few seconds after Stripe created it.
        cursor.execute(
            f"""
            INSERT INTO {table} ({columns})
            SELECT 'evt_done_' || n, 'invoice.paid', false, '', '{{"object": "event"}}',
                   t - (n %% 10) * interval '1 second', t, t, 'bench', NULL, t, 1, ''
            FROM (SELECT n, now() - (n * interval '30 days' / %s) AS t FROM generate_series(1, %s) AS n) AS s
            """,
            [processed, processed],
        )
        states = {
            # claimed_at, claim_expires_at, attempts
            "pending": ("NULL", "NULL", "0"),
            "claimed": ("now()", "now() + interval '5 minutes'", "1"),
            "stale": ("now() - interval '10 minutes'", "now() - interval '5 minutes'", "1"),
            "failed": ("now() - interval '10 minutes'", "NULL", "3"),
            "dead": ("now() - interval '10 minutes'", "NULL", "20"),
        }
        for name, (claimed_at, expires, attempts) in states.items():
            cursor.execute(
                f"""
                INSERT INTO {table} ({columns})
                SELECT 'evt_{name}_' || n, 'invoice.paid', false, '', '{{"object": "event"}}',
                       now() - interval '1 hour', now() - interval '1 hour' + n * interval '1 second',
                       {claimed_at}, 'bench', {expires}, NULL, {attempts}, ''
                FROM generate_series(1, %s) AS n
                """,
                [UNPROCESSED[name]],
            )
        cursor.execute(f"VACUUM ANALYZE {table}")


if __name__ == "__main__":
    main()
