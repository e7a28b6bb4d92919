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

from benchmarks.common import ROOT, machine, setup_django, write_section

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


def run(*, count: int, output: Path, smoke: bool) -> str:
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from stripe_idempotency import leases
    from stripe_idempotency.testing import build_event, deliver
    from stripe_idempotency.verification import VerifiedEvent

    client = Client()

    def statements(event: dict) -> tuple[int, int]:
        with CaptureQueriesContext(connection) as queries:
            deliver(client, event)
        sql = [q["sql"].strip().upper() for q in queries.captured_queries]
        data = [s for s in sql if not s.startswith(("BEGIN", "COMMIT", "ROLLBACK"))]
        return len(data), len(sql)

    # Receivers excluded: an event type nobody listens to.
    first = build_event("bench.nobody.listens")
    counts = {"first delivery": statements(first), "duplicate": statements(first)}
    busy = build_event("bench.nobody.listens")
    leases.claim(VerifiedEvent.from_payload(busy))
    counts["busy"] = statements(busy)

    events = [build_event("customer.subscription.deleted", data={"id": f"sub_cpu_{n}"}) for n in range(count)]
    for event in events[: count // 10]:  # warm up
        deliver(client, event)
    measured = events[count // 10 :]
    cpu, wall = time.process_time(), time.perf_counter()
    for event in measured:
        deliver(client, event)
    cpu_ms = (time.process_time() - cpu) / len(measured) * 1000
    wall_ms = (time.perf_counter() - wall) / len(measured) * 1000

    profiler = cProfile.Profile()
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
            f"# cProfile of 300 deliveries through the test client, by own time\n{text.getvalue()}"
        )

    rows = "\n".join(f"| {kind} | {data} | {total} |" for kind, (data, total) in counts.items())
    body = f"""
Machine: {machine()}. Command: `python -m benchmarks.per_delivery{" --smoke" if smoke else ""}`.

SQL statements per delivery on {connection.vendor} (receivers' own excluded; `tests/test_views.py`
asserts these on every backend, see docs/databases.md):

| delivery | data statements | all statements logged (with BEGIN/COMMIT) |
|---|---|---|
{rows}

Python per delivery through Django's test client in one process (one receiver writing one row,
persistent connection): {cpu_ms:.2f} ms CPU, {wall_ms:.2f} ms wall, over {len(measured)} deliveries.
Where the time goes: `benchmarks/profile-delivery.txt` (cProfile, by own time).
"""
    write_section(output, "Per delivery" + (" (smoke)" if smoke else ""), body)
    return f"wrote {output}"


if __name__ == "__main__":
    main()
