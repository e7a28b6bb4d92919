"""The reaper's memory: peak RSS of `reap_stale_claims --reprocess` with 2,000 and 20,000 stale events.

    python -m benchmarks.reaper_memory            # PostgreSQL at $DATABASE_URL (benchmarks.settings)
    python -m benchmarks.reaper_memory --smoke    # 200 and 2,000: checks the script

Each event carries a 4 KB payload, as a real one might, and is reprocessed for real (claimed,
dispatched to no receiver, completed): the payloads are loaded as `--reprocess` loads them.
Each run is a process of its own, so its peak RSS is its own. The baseline is the same
process with no stale event: Django and the app loaded, nothing read.
Writes the "Reaper memory" section of BENCHMARKS.md (or of --output).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import ROOT, machine, setup_django, write_section

PAYLOAD_BYTES = 4096
# Run a management command and print this process's peak RSS (KiB on Linux) and the wall time.
_MEASURE = """
import json, resource, sys, time
import django
django.setup()
from django.core.management import call_command
started = time.monotonic()
try:
    call_command(*sys.argv[1:], verbosity=0)
except SystemExit:
    pass
print(json.dumps({"rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "seconds": time.monotonic() - started}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args()
    setup_django()
    print(run(sizes=[200, 2_000] if args.smoke else [2_000, 20_000], output=args.output, smoke=args.smoke))


def measure(*command: str) -> dict[str, float]:
    result = subprocess.run(
        [sys.executable, "-c", _MEASURE, *command], cwd=ROOT, capture_output=True, text=True, check=True
    )
    measured: dict[str, float] = json.loads(result.stdout.strip().splitlines()[-1])
    return measured


def run(*, sizes: list[int], output: Path, smoke: bool) -> str:
    from django.db import connection

    from stripe_idempotency.models import StripeEvent

    if connection.vendor != "postgresql":
        raise SystemExit(
            "The reaper memory benchmark runs on PostgreSQL (it fills the table with generate_series)."
        )
    table = StripeEvent._meta.db_table
    baseline = measure("check")
    rows = []
    for size in sizes:
        print(f"filling {size:,} stale events of {PAYLOAD_BYTES} bytes ...", flush=True)
        with connection.cursor() as cursor:
            cursor.execute(f"TRUNCATE {table} CASCADE")
            cursor.execute(
                f"""
                INSERT INTO {table} (event_id, type, livemode, api_version, payload, received_at, claimed_at,
                                     claimed_by, claim_expires_at, processed_at, attempts, last_error)
                SELECT 'evt_stale_' || n, 'bench.nobody_listens', false, '',
                       jsonb_build_object('id', 'evt_stale_' || n, 'object', 'event',
                                          'type', 'bench.nobody_listens', 'padding', repeat('x', %s)),
                       now() - interval '1 hour', now() - interval '1 hour', 'bench',
                       now() - interval '1 minute', NULL, 1, ''
                FROM generate_series(1, %s) AS n
                """,
                [PAYLOAD_BYTES, size],
            )
        started = time.monotonic()
        reaped = measure("reap_stale_claims", "--reprocess")
        left = StripeEvent.objects.filter(processed_at__isnull=True).count()
        assert left == 0, f"{left} events not reprocessed"
        rows.append((size, reaped["rss_kib"], time.monotonic() - started))
        print(f"  peak RSS {reaped['rss_kib'] / 1024:.1f} MiB")

    base = baseline["rss_kib"]
    table_md = "\n".join(
        f"| {size:,} | {rss / 1024:.1f} | {(rss - base) / 1024:.1f} | {seconds:.1f} |"
        for size, rss, seconds in rows
    )
    body = f"""
Machine: {machine()}. Command: `python -m benchmarks.reaper_memory{" --smoke" if smoke else ""}`.

Peak RSS of one `reap_stale_claims --reprocess` process (batches of 500, the default) that
reprocesses every stale event, each with a {PAYLOAD_BYTES:,}-byte payload. Baseline: the same
command with no stale event, {base / 1024:.1f} MiB.

| stale events | peak RSS (MiB) | above the baseline (MiB) | seconds |
|---|---|---|---|
{table_md}

Target: flat in the number of stale events (ten times the events, the same memory).
"""
    write_section(output, "Reaper memory" + (" (smoke)" if smoke else ""), body)
    return f"wrote {output}"


if __name__ == "__main__":
    main()
