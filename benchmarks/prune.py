"""What `prune_stripe_events` costs: deleting a million processed events past the horizon.

    python -m benchmarks.prune            # PostgreSQL at $DATABASE_URL (see benchmarks/README.md)
    python -m benchmarks.prune --smoke    # seconds, for CI: proves the script runs

The table: N processed events 31 to 60 days old (to go), 100 of them referred to by ledger
entries (to stay), 10,000 processed in the last 30 days and 1,000 unprocessed (to stay). Each
way of deleting starts from the same table and must leave exactly the rows to stay:

* ``prune()``: the command's own work, batches of 1,000, each its own transaction;
* ``prune()`` in a project that listens for ``post_delete``: Django's collector deletes each
  batch (and would tell the listener of each row);
* the raw SQL of the same batches: ``DELETE ... WHERE id IN (SELECT id ... ORDER BY
  processed_at, id LIMIT 1000)`` in autocommit, again and again (the floor for batches);
* one raw ``DELETE`` of them all: the fastest, and one transaction holding every row's lock to
  the end (what batching avoids).

Rows per second and the longest time a transaction held its row locks (a concurrent delivery
of one of those events, or a ledger write referring to one, would wait that long). Writes the
"Pruning" section of BENCHMARKS.md (or of --output).
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

from benchmarks.common import ROOT, machine, setup_django, write_section

KEPT_FOR_THE_LEDGER = 100
RECENT = 10_000
UNPROCESSED = 1_000
BATCH = 1_000
HORIZON = timedelta(days=30)
KEPT = KEPT_FOR_THE_LEDGER + RECENT + UNPROCESSED


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--smoke", action="store_true", help="10,000 rows: checks the script, measures nothing"
    )
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args()
    setup_django()
    print(run(size=10_000 if args.smoke else 1_000_000, output=args.output, smoke=args.smoke))


def run(*, size: int, output: Path, smoke: bool) -> str:
    from django.db import connection
    from django.db.models import signals

    from stripe_idempotency import retention
    from stripe_idempotency.models import LedgerEntry, StripeEvent

    if connection.vendor != "postgresql":
        raise SystemExit(
            "The pruning benchmark runs on PostgreSQL (it fills the table with generate_series)."
        )
    events, entries = StripeEvent._meta.db_table, LedgerEntry._meta.db_table
    prunable = f"processed_at < %s AND NOT EXISTS (SELECT 1 FROM {entries} e WHERE e.event_id = {events}.id)"

    def ours(before) -> list[float]:
        locks: list[float] = []
        with _timed_transactions(retention, locks):
            retention.prune(using="default", before=before, batch_size=BATCH)
        return locks

    def through_the_collector(before) -> list[float]:
        # A project listening for deletions: each batch goes through Django's collector.
        def listening(sender, **kwargs) -> None:
            pass

        signals.post_delete.connect(listening, sender=StripeEvent)
        try:
            return ours(before)
        finally:
            signals.post_delete.disconnect(listening, sender=StripeEvent)

    def raw_batches(before) -> list[float]:
        locks: list[float] = []
        sql = (
            f"DELETE FROM {events} WHERE id IN (SELECT id FROM {events} WHERE {prunable} "
            f"ORDER BY processed_at, id LIMIT {BATCH})"
        )
        with connection.cursor() as cursor:
            while True:
                start = time.perf_counter()
                cursor.execute(sql, [before])
                locks.append(time.perf_counter() - start)
                if cursor.rowcount < BATCH:
                    return locks

    def raw_one_statement(before) -> list[float]:
        start = time.perf_counter()
        with connection.cursor() as cursor:
            cursor.execute(f"DELETE FROM {events} WHERE {prunable}", [before])
        return [time.perf_counter() - start]

    results = []
    for name, method in (
        ("`prune()`, batches of 1,000", ours),
        ("`prune()`, with a `post_delete` listener (Django's collector)", through_the_collector),
        ("raw SQL, the same batches", raw_batches),
        ("raw SQL, one `DELETE`", raw_one_statement),
    ):
        print(f"filling {size:,} prunable events and {KEPT:,} to keep ...", flush=True)
        before = _fill(connection, events, entries, size)
        start = time.perf_counter()
        locks = method(before)
        seconds = time.perf_counter() - start
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT count(*) FROM {events}")
            left = cursor.fetchone()[0]
        assert left == KEPT, (name, left)
        results.append((name, seconds, len(locks), max(locks), sorted(locks)[len(locks) // 2]))
        print(
            f"  {name}: {seconds:.1f} s, {size / seconds:,.0f} rows/s, "
            f"longest lock {max(locks) * 1000:.0f} ms"
        )

    floor_rate = size / next(r[1] for r in results if r[0].startswith("raw SQL, the same"))
    rows_md = "\n".join(
        f"| {name} | {seconds:.1f} | {size / seconds:,.0f} | {(size / seconds) / floor_rate:.2f} "
        f"| {transactions:,} | {median * 1000:.1f} | {longest * 1000:.1f} |"
        for name, seconds, transactions, longest, median in results
    )
    body = f"""
Machine: {machine()}. Command: `python -m benchmarks.prune{" --smoke" if smoke else ""}`.

Deleting {size:,} processed events 31 to 60 days old (`--older-than 30d`) from a table that also
holds {KEPT_FOR_THE_LEDGER} old events ledger entries refer to, {RECENT:,} recent processed ones
and {UNPROCESSED:,} unprocessed ones; every way ends with exactly those
{KEPT:,} left (asserted). The baseline (÷ batches) is the raw
SQL of the same batches in the same run, on the same data. "Lock held" is the time from a
transaction's first statement to its COMMIT: how long a delivery of one of those events, or a
ledger entry referring to one, could have to wait.

| how | seconds | rows/s | ÷ raw batches | transactions | median lock held (ms) | longest lock held (ms) |
|---|---|---|---|---|---|---|
{rows_md}

Target: near the raw batches, with every lock held for milliseconds, not for the whole run as
the single `DELETE` holds them.

The batches' raw SQL starts each subquery at the beginning of the `processed_at` index, through
the entries of every row the batches before it deleted; `prune()` starts each batch where the
last ended, which is how it can be the faster of the two.
"""
    write_section(output, "Pruning" + (" (smoke)" if smoke else ""), body)
    return f"wrote {output}"


@contextlib.contextmanager
def _timed_transactions(retention, locks: list[float]) -> Iterator[None]:
    """Time every transaction ``retention`` opens, from entering ``atomic()`` to its COMMIT."""
    real = retention.transaction

    class Timed:
        @staticmethod
        @contextlib.contextmanager
        def atomic(*args, **kwargs):
            start = time.perf_counter()
            with real.atomic(*args, **kwargs):
                yield
            locks.append(time.perf_counter() - start)

    retention.transaction = Timed
    try:
        yield
    finally:
        retention.transaction = real


def _fill(connection, events: str, entries: str, size: int):
    """The table described above; returns the cutoff (30 days ago on the database clock)."""
    columns = (
        "event_id, type, livemode, api_version, payload, created, received_at, claimed_at, claimed_by, "
        "claim_expires_at, processed_at, attempts, last_error"
    )
    payload = '{"object": "event", "data": {"object": {"id": "in_1", "object": "invoice"}}}'
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {events}, {entries} CASCADE")
        cursor.execute(
            f"""
            INSERT INTO {events} ({columns})
            SELECT 'evt_old_' || n, 'invoice.paid', false, '', %s, t, t, t, 'bench', NULL, t, 1, ''
            FROM (SELECT n, now() - interval '31 days' - (n * interval '29 days' / %s) AS t
                  FROM generate_series(1, %s) AS n) AS s
            """,
            [payload, size, size + KEPT_FOR_THE_LEDGER],
        )
        cursor.execute(
            f"""
            INSERT INTO {events} ({columns})
            SELECT 'evt_new_' || n, 'invoice.paid', false, '', %s, t, t, t, 'bench', NULL, t, 1, ''
            FROM (SELECT n, now() - (n * interval '29 days' / %s) AS t FROM generate_series(1, %s) AS n) AS s
            """,
            [payload, RECENT, RECENT],
        )
        cursor.execute(
            f"""
            INSERT INTO {events} ({columns})
            SELECT 'evt_todo_' || n, 'invoice.paid', false, '', %s, now(), now(), NULL, '', NULL, NULL, 0, ''
            FROM generate_series(1, %s) AS n
            """,
            [payload, UNPROCESSED],
        )
        cursor.execute(
            f"""
            INSERT INTO {entries} (account, currency, amount, balance_after, entry_type, reference,
                                   event_id, created_at, metadata)
            SELECT 'cus_bench', 'usd', 100, 100 * n, 'invoice', 'in_' || n, e.id, now(), '{{}}'
            FROM {events} e JOIN generate_series(1, %s) AS n ON e.event_id = 'evt_old_' || n
            """,
            [KEPT_FOR_THE_LEDGER],
        )
        cursor.execute(f"VACUUM ANALYZE {events}")
        cursor.execute("SELECT now() - %s", [HORIZON])
        return cursor.fetchone()[0]


if __name__ == "__main__":
    main()
