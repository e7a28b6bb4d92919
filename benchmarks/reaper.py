"""How the reaper's query scales: 100 stale events among 10k, 100k and 1M processed ones.

    python -m benchmarks.reaper            # PostgreSQL at $DATABASE_URL (see benchmarks/README.md)
    python -m benchmarks.reaper --smoke    # seconds, for CI: proves the script runs

Each figure is beside the raw SQL of the same query, timed in the same run on the same
data, because absolute timings on a shared machine drift. Writes the "Reaper scaling"
section of BENCHMARKS.md (or of --output).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.common import ROOT, machine, median_seconds, setup_django, write_section

STALE = 100


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--smoke", action="store_true", help="1,000 rows, 3 runs: checks the script, measures nothing"
    )
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args()
    setup_django()
    sizes = [1_000] if args.smoke else [10_000, 100_000, 1_000_000]
    print(run(sizes=sizes, runs=3 if args.smoke else 30, output=args.output, smoke=args.smoke))


def run(*, sizes: list[int], runs: int, output: Path, smoke: bool) -> str:
    from django.db import connection

    from stripe_idempotency import leases
    from stripe_idempotency.models import StripeEvent

    if connection.vendor != "postgresql":
        raise SystemExit("The reaper benchmark runs on PostgreSQL (it fills the table with generate_series).")
    table = StripeEvent._meta.db_table
    # The same columns `reap_stale_claims --reprocess` reads (the payload included: it
    # processes each event from it), the same rows, the same order.
    fields = StripeEvent._meta.concrete_fields
    columns = ", ".join(f.column for f in fields)
    payload_index = [f.name for f in fields].index("payload")
    raw_sql = (
        f"SELECT {columns}, now() - received_at FROM {table} "
        "WHERE processed_at IS NULL AND (claim_expires_at IS NULL OR claim_expires_at <= now()) "
        "AND (next_attempt_at IS NULL OR next_attempt_at <= now()) "
        "ORDER BY id LIMIT 100"
    )

    def ours() -> None:
        events = list(leases.find_stale(limit=STALE))
        assert len(events) == STALE
        assert events[0].payload["object"] == "event"

    def raw() -> None:
        with connection.cursor() as cursor:
            cursor.execute(raw_sql)
            rows = cursor.fetchall()
            assert len(rows) == STALE
            # Django reads jsonb as text and decodes each payload itself; so does the baseline.
            assert all(json.loads(row[payload_index])["object"] == "event" for row in rows)

    rows = []
    plan = ""
    for size in sizes:
        print(f"filling {size:,} processed rows and {STALE} stale ones ...", flush=True)
        _fill(connection, table, size)
        ours_s, raw_s = median_seconds(ours, runs), median_seconds(raw, runs)
        rows.append((size, ours_s, raw_s))
        plan = leases.find_stale(limit=STALE).explain()
        print(f"  find_stale {ours_s * 1000:.2f} ms, raw SQL {raw_s * 1000:.2f} ms")

    first = rows[0][1]
    table_md = "\n".join(
        f"| {size:,} | {ours_s * 1000:.2f} | {raw_s * 1000:.2f} | {ours_s / raw_s:.2f} "
        f"| {ours_s / first:.2f} |"
        for size, ours_s, raw_s in rows
    )
    body = f"""
Machine: {machine()}. Command: `python -m benchmarks.reaper{" --smoke" if smoke else ""}`.

Time to read the {STALE} stale events (`leases.find_stale(limit=100)`, what
`reap_stale_claims --reprocess` reads per batch, payloads of {len(json.dumps(_stale_payload())):,} bytes
included) among N processed rows; median of {runs} runs. The baseline is the raw SQL of the same
query on the same data in the same run, its payloads decoded as Django decodes them.

| processed rows | find_stale (ms) | raw SQL (ms) | find_stale ÷ raw | ÷ smallest table |
|---|---|---|---|---|
{table_md}

Target: flat from 10k to 1M rows (the last column stays near 1). The plan at the largest size:

```
{plan}
```
"""
    write_section(output, "Reaper scaling" + (" (smoke)" if smoke else ""), body)
    return f"wrote {output}"


def _stale_payload() -> dict:
    """An invoice.paid event of about Stripe's size (a few KB), as a stale event carries."""
    from stripe_idempotency.testing import build_event

    lines = [{"id": f"il_{n}", "amount": 1000 + n, "description": "Seat " * 8} for n in range(12)]
    return build_event("invoice.paid", data={"id": "in_bench", "lines": {"data": lines}})


def _fill(connection, table: str, processed: int) -> None:
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {table} CASCADE")
        cursor.execute(
            f"""
            INSERT INTO {table} (event_id, type, livemode, api_version, payload, received_at, claimed_at,
                                 claimed_by, claim_expires_at, processed_at, attempts, last_error)
            SELECT 'evt_done_' || n, 'invoice.paid', false, '', '{{"object": "event"}}',
                   now() - interval '1 day', now() - interval '1 day', 'bench', NULL,
                   now() - interval '1 day', 1, ''
            FROM generate_series(1, %s) AS n
            """,
            [processed],
        )
        cursor.execute(
            f"""
            INSERT INTO {table} (event_id, type, livemode, api_version, payload, received_at, claimed_at,
                                 claimed_by, claim_expires_at, processed_at, attempts, last_error)
            SELECT 'evt_stale_' || n, 'invoice.paid', false, '', %s::jsonb,
                   now() - interval '1 hour', now() - interval '1 hour', 'bench',
                   now() - interval '1 minute', NULL, 1, ''
            FROM generate_series(1, %s) AS n
            """,
            [json.dumps(_stale_payload()), STALE],
        )
        cursor.execute(f"VACUUM ANALYZE {table}")


if __name__ == "__main__":
    main()
