"""Ledger credits per second, beside the raw SQL a credit needs (pgbench), at the same concurrency.

    python -m benchmarks.ledger [--smoke] [--seconds N] [--output FILE]

``LedgerEntry.objects.credit()`` with a fresh reference (the idempotent path: lock, check,
insert in a savepoint, update) from 1, 4 and 16 processes, on one hot account and spread over
1,000 accounts; the baseline is the raw lock + insert + update cycle
(``benchmarks/pgbench/ledger_credit.sql``) at the same concurrency.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import time
from pathlib import Path

from benchmarks.common import ROOT, machine, setup_django, write_section
from benchmarks.load import Figures, pgbench

ACCOUNTS = 1000


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="1 s per figure at concurrency 1 and 4")
    parser.add_argument("--seconds", type=float, default=5.0, help="Time per figure (default 5).")
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args()
    setup_django()
    levels = [1, 4] if args.smoke else [1, 4, 16]
    print(
        run(seconds=1.0 if args.smoke else args.seconds, levels=levels, output=args.output, smoke=args.smoke)
    )


def _credit_for(seconds: float, accounts: int, start, queue) -> None:
    from django.db import connections

    from stripe_idempotency.models import LedgerEntry

    rng = random.Random(os.getpid())
    latencies = []
    start.wait()
    began_at = time.monotonic()  # CLOCK_MONOTONIC: one clock for every process on the machine
    deadline = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < deadline:
        account = "hot" if accounts == 1 else f"acct_{rng.randrange(accounts)}"
        began = time.perf_counter()
        LedgerEntry.objects.credit(
            account=account, amount=100, currency="usd", entry_type="bench", reference=f"r_{os.getpid()}_{n}"
        )
        latencies.append(time.perf_counter() - began)
        n += 1
    ended_at = time.monotonic()
    connections.close_all()
    queue.put((latencies, began_at, ended_at))


def ours(level: int, seconds: float, accounts: int) -> Figures:
    from django.db import connections

    context = multiprocessing.get_context("fork")
    start, queue = context.Barrier(level), context.Queue()
    connections.close_all()
    workers = [
        context.Process(target=_credit_for, args=(seconds, accounts, start, queue)) for _ in range(level)
    ]
    for worker in workers:
        worker.start()
    reports = [queue.get(timeout=seconds + 120) for _ in workers]
    for worker in workers:
        worker.join(30)
    latencies = [value for mine, _, _ in reports for value in mine]
    # The rate over the time measured, from the first worker's start to the last one's end
    # (the last credit of each worker ends after its deadline).
    elapsed = max(end for _, _, end in reports) - min(start for _, start, _ in reports)
    return Figures(len(latencies), elapsed, latencies)


def run(*, seconds: float, levels: list[int], output: Path, smoke: bool) -> str:
    from django.db import connection

    from stripe_idempotency.models import LedgerEntry

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE stripe_idempotency_ledgerentry, stripe_idempotency_ledgerbalance")
        # The rows pgbench's script locks: acct_1 .. acct_1000 (acct_1 alone for the hot figure).
        cursor.execute(
            "INSERT INTO stripe_idempotency_ledgerbalance (account, currency, balance, updated_at) "
            "SELECT 'acct_' || n, 'usd', 0, now() FROM generate_series(1, %s) AS n",
            [ACCOUNTS],
        )
    rows = []
    for level in levels:
        for label, accounts in [("one hot account", 1), (f"{ACCOUNTS:,} accounts", ACCOUNTS)]:
            mine = ours(level, seconds, accounts)
            raw = pgbench(connection.settings_dict, "ledger_credit", level, seconds, accounts=accounts)
            rows.append((level, label, mine, raw))
            print(level, label, round(mine.rate), round(raw.rate), flush=True)
    consistent = all(check.ok for check in LedgerEntry.objects.verify_balances())
    if smoke and not consistent:
        raise SystemExit("The ledger is inconsistent after the benchmark's credits.")
    if smoke and not all(mine.count and raw.count for _, _, mine, raw in rows):
        raise SystemExit(f"A ledger figure counted nothing: {rows}")
    table = "\n".join(
        f"| {level} | {label} | {mine.rate:,.0f} | {mine.p50_ms:.1f} | {mine.p99_ms:.1f} | {raw.rate:,.0f} "
        f"| {mine.rate / raw.rate:.2f} |"
        for level, label, mine, raw in rows
    )
    hot = [mine.rate / raw.rate for level, label, mine, raw in rows if label == "one hot account"]
    command = f"python -m benchmarks.ledger{' --smoke' if smoke else ''}"
    hot_ratios = ", ".join(f"{r:.2f}" for r in hot)
    at = ", ".join(str(level) for level in levels)
    body = f"""
Machine: {machine()}. Command: `{command}` ({seconds:g} s per figure).

Credits with a fresh reference from N processes, each with its own connection; the baseline
is pgbench running the raw `SELECT ... FOR UPDATE` + `INSERT` + `UPDATE` cycle with N clients.
After the run `verify_balances()` found every balance {"consistent" if consistent else "INCONSISTENT"}.

| processes | accounts | credits/s | p50 ms | p99 ms | raw SQL credits/s | ÷ raw SQL |
|---|---|---|---|---|---|---|
{table}

| target | measured |
|---|---|
| one hot account ≥ 0.7 x its raw-SQL rate | {hot_ratios} (at {at} processes) |
"""
    write_section(output, "Ledger" + (" (smoke)" if smoke else ""), body)
    return f"wrote {output}"


if __name__ == "__main__":
    main()
