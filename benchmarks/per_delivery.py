"""What one delivery costs, in numbers that do not drift: SQL statements and Python CPU time.

    python -m benchmarks.per_delivery [--smoke] [--output FILE]

Statements per first delivery, duplicate and busy answer (receivers' own excluded), counted
with Django's CaptureQueriesContext on the configured database; CPU time of this process per
delivery through Django's test client; and a cProfile summary of where that time goes,
saved beside BENCHMARKS.md as benchmarks/profile-delivery.txt.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time
from pathlib import Path

from benchmarks import statements
from benchmarks.common import ROOT, cost_per_call, machine, setup_django, write_section

PROFILE = Path(__file__).resolve().parent / "profile-delivery.txt"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="50 deliveries: checks the script")
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args()
    setup_django()
    print(run(count=50 if args.smoke else 2000, output=args.output, smoke=args.smoke))


def _raw_delivery():
    """The statements of a first delivery (benchmarks/pgbench/claim_process.sql) through Django's cursor.

    What any Django code running this SQL must spend: the cursor, psycopg and
    the round trips, with none of the app's own work around them.
    """
    from django.db import connection, transaction

    sql = (Path(__file__).resolve().parent / "pgbench" / "claim_process.sql").read_text()
    claim = sql[sql.index("WITH claimed") : sql.index(r"\gset")].replace(
        "'evt_pgb_' || :client_id || '_' || :n", "%s"
    )
    claim = claim.replace("quote_literal(claim_token::text)", "claim_token")
    effect = (
        "INSERT INTO shop_cancellation (subscription_id, stripe_event_id, created_at) VALUES (%s, %s, now())"
    )
    fence = (
        "UPDATE stripe_idempotency_stripeevent SET processed_at = statement_timestamp(), "
        "claim_expires_at = NULL, claim_token = NULL "
        "WHERE id = %s AND claim_token = %s AND processed_at IS NULL"
    )
    run_id = time.time_ns()

    def deliver(n: int) -> None:
        event_id = f"evt_raw_{run_id}_{n}"
        with connection.cursor() as cursor:
            cursor.execute(claim, [event_id])
            pk, token = cursor.fetchone()
            with transaction.atomic():
                cursor.execute(effect, ["sub_raw", event_id])
                cursor.execute(fence, [pk, token])

    return deliver


def _raw_row(raw: tuple[float, float] | None) -> str:
    if raw is None:
        return "| the same SQL through Django's cursor (PostgreSQL only) | | |"
    return f"| the same SQL through Django's cursor, nothing else | {raw[0]:.2f} | {raw[1]:.2f} |"


def _own_row(delivery, floor, raw) -> str:
    if raw is None:
        return ""
    cpu = delivery[0] - floor[0] - raw[0]
    wall = delivery[1] - floor[1] - raw[1]
    return f"| **the app's own work** (delivery - floor - SQL) | **{cpu:.2f}** | **{wall:.2f}** |"


def _statement_rows(counts) -> str:
    names = list(counts)
    lines = ["| delivery | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for kind in (
        "first delivery",
        "duplicate",
        "busy",
        "deferred acknowledgement",
        "deferred acknowledgement, django-tasks-db",
    ):
        cells = [f"{c[kind][0]} / {c[kind][1]}" if isinstance(c, dict) else "n/a" for c in counts.values()]
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    missing = [f"{name}: {c}" for name, c in counts.items() if not isinstance(c, dict)]
    return "\n".join(lines + (["", *missing] if missing else []))


def run(*, count: int, output: Path, smoke: bool) -> str:
    from django.db import connection
    from django.test import Client

    from stripe_idempotency.testing import build_event, deliver

    client = Client()
    counts = statements.on_every_backend()

    events = [build_event("customer.subscription.deleted", data={"id": f"sub_cpu_{n}"}) for n in range(count)]
    delivery = cost_per_call(lambda event: deliver(client, event), events)
    floor = cost_per_call(lambda _: client.get("/healthz/"), range(count))
    raw = cost_per_call(_raw_delivery(), range(count)) if connection.vendor == "postgresql" else None

    # CPU time, not wall time: waiting for the database is in the table above.
    profiler = cProfile.Profile(time.process_time)
    profiled = [
        build_event("customer.subscription.deleted", data={"id": f"sub_prof_{n}"}) for n in range(300)
    ]
    profiler.enable()
    for event in profiled:
        deliver(client, event)
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(25)
    if not smoke:
        PROFILE.write_text(
            f"# cProfile (CPU time) of 300 deliveries through the test client, by own time\n{text.getvalue()}"
        )

    rows = _statement_rows(counts)
    body = f"""
Machine: {machine()}. Command: `python -m benchmarks.per_delivery{" --smoke" if smoke else ""}`.

SQL statements per delivery on each backend (`python -m benchmarks.statements`; receivers' own
excluded; `tests/test_views.py` asserts the same counts, see docs/databases.md), as data
statements / all statements logged (with BEGIN and COMMIT):

{rows}

Per request in this process, one at a time, persistent connection, {count * 9 // 10} requests each
(CPU is this process's time: Python, psycopg, Django; wall adds the database's answers):

| what | CPU ms | wall ms |
|---|---|---|
| a delivery through the test client (one receiver writing one row) | {delivery[0]:.2f} | {delivery[1]:.2f} |
| Django's floor: `GET /healthz/` through the test client, no database | {floor[0]:.2f} | {floor[1]:.2f} |
{_raw_row(raw)}
{_own_row(delivery, floor, raw)}

Where the time goes: `benchmarks/profile-delivery.txt` (cProfile, by own time).
"""
    write_section(output, "Per delivery" + (" (smoke)" if smoke else ""), body)
    return f"wrote {output}"


if __name__ == "__main__":
    main()
