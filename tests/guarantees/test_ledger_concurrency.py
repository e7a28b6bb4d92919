"""The ledger under real concurrency: processes on PostgreSQL and MariaDB, threads on SQLite."""

from __future__ import annotations

import collections
import multiprocessing
import random
import threading

import pytest
from django.db import connection, connections, transaction

from stripe_idempotency.exceptions import InsufficientFunds
from stripe_idempotency.models import LedgerEntry
from tests.concurrency import close_connections_and_pools

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.concurrency]

WORKERS = 4
REFERENCES = 120  # every worker credits every reference: 480 credits per account


def _work(worker: int, jobs: list[tuple], start) -> collections.Counter:
    outcomes: collections.Counter = collections.Counter()
    random.Random(worker).shuffle(jobs)
    start.wait()
    try:
        for kind, account, amount, reference in jobs:
            try:
                if kind == "credit":
                    _, created = LedgerEntry.objects.credit(
                        account=account,
                        amount=amount,
                        currency="usd",
                        entry_type="deposit",
                        reference=reference,
                    )
                else:
                    _, created = LedgerEntry.objects.debit(
                        account=account,
                        amount=amount,
                        currency="usd",
                        entry_type="spend",
                        reference=reference,
                    )
                outcomes[(kind, account, "created" if created else "duplicate")] += 1
            except InsufficientFunds:
                outcomes[(kind, account, "refused")] += 1
            except Exception as exc:  # reported, so the assertion shows it
                outcomes[(kind, account, f"raised {exc!r}")] += 1
    finally:
        connections.close_all()
    return outcomes


def _in_process(worker, jobs, start, queue):
    queue.put(_work(worker, jobs, start))


def run_workers(jobs_for) -> collections.Counter:
    """``jobs_for(worker)`` -> that worker's jobs. Processes where the database allows, else threads."""
    total: collections.Counter = collections.Counter()
    if connection.vendor == "sqlite":
        start = threading.Barrier(WORKERS)
        results: list[collections.Counter] = []
        threads = [
            threading.Thread(target=lambda w=w: results.append(_work(w, jobs_for(w), start)))
            for w in range(WORKERS)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
    else:
        context = multiprocessing.get_context("fork")
        start, queue = context.Barrier(WORKERS), context.Queue()
        close_connections_and_pools()
        processes = [
            context.Process(target=_in_process, args=(w, jobs_for(w), start, queue)) for w in range(WORKERS)
        ]
        for p in processes:
            p.start()
        results = [queue.get(timeout=300) for _ in processes]
        for p in processes:
            p.join(30)
            assert p.exitcode == 0
    for result in results:
        total.update(result)
    return total


def test_every_reference_credited_once_per_account_under_contention():
    def jobs_for(worker):
        return [
            ("credit", account, n + 1, f"cs_{n}")
            for n in range(REFERENCES)
            for account in ("cus_hot", "cus_other")
        ]

    outcomes = run_workers(jobs_for)
    assert outcomes == {
        ("credit", "cus_hot", "created"): REFERENCES,
        ("credit", "cus_hot", "duplicate"): REFERENCES * (WORKERS - 1),
        ("credit", "cus_other", "created"): REFERENCES,
        ("credit", "cus_other", "duplicate"): REFERENCES * (WORKERS - 1),
    }
    expected = REFERENCES * (REFERENCES + 1) // 2
    for account in ("cus_hot", "cus_other"):
        assert LedgerEntry.objects.filter(account=account).count() == REFERENCES
        assert sorted(
            LedgerEntry.objects.filter(account=account).values_list("reference", flat=True)
        ) == sorted(f"cs_{n}" for n in range(REFERENCES))
        assert LedgerEntry.objects.balance(account=account, currency="usd") == expected
    checks = list(LedgerEntry.objects.verify_balances())
    assert [(c.account, c.entries, c.balance, c.total, c.chain_break) for c in checks] == [
        ("cus_hot", REFERENCES, expected, expected, None),
        ("cus_other", REFERENCES, expected, expected, None),
    ]


def test_concurrent_debits_never_take_the_balance_below_zero():
    LedgerEntry.objects.credit(
        account="cus_1", amount=1000, currency="usd", entry_type="deposit", reference="d"
    )

    def jobs_for(worker):
        return [("debit", "cus_1", 7, f"spend_{worker}_{n}") for n in range(100)]

    outcomes = run_workers(jobs_for)
    # 1000 pays for exactly 142 debits of 7; the other 258 are refused, whatever the interleaving.
    assert outcomes == {("debit", "cus_1", "created"): 142, ("debit", "cus_1", "refused"): 258}
    assert LedgerEntry.objects.balance(account="cus_1", currency="usd") == 6
    assert min(LedgerEntry.objects.values_list("balance_after", flat=True)) == 6
    assert all(check.ok for check in LedgerEntry.objects.verify_balances())


def _first_credits_in_transactions(worker, accounts, start, queue):
    outcomes: collections.Counter = collections.Counter()
    try:
        for account in accounts:
            start.wait(30)  # every worker on the same new account at the same moment
            try:
                # In a caller's transaction (a receiver's), the ledger cannot retry.
                with transaction.atomic():
                    LedgerEntry.objects.credit(
                        account=account,
                        amount=5,
                        currency="usd",
                        entry_type="deposit",
                        reference=f"w{worker}",
                    )
                outcomes["created"] += 1
            except Exception as exc:  # reported, so the assertion shows it
                outcomes[f"raised {exc!r}"] += 1
    finally:
        connections.close_all()
    queue.put(outcomes)


@pytest.mark.only_on(
    "postgresql",
    "mariadb",
    "mysql",
    reason="SQLite has one writer: first writers queue for the database, not for a row.",
)
def test_first_credits_to_new_accounts_in_callers_transactions_never_deadlock():
    # Receivers credit inside the dispatch transaction, where a deadlock would
    # roll back all their work. Concurrent first writers to an account both
    # create its balance row: on InnoDB an ignored duplicate insert leaves a
    # shared lock that the row lock then has to upgrade, and two such upgrades
    # deadlock. The row is created so that no shared lock is left.
    accounts = [f"acct_new_{n}" for n in range(30)]
    context = multiprocessing.get_context("fork")
    start, queue = context.Barrier(WORKERS), context.Queue()
    close_connections_and_pools()
    processes = [
        context.Process(target=_first_credits_in_transactions, args=(w, accounts, start, queue))
        for w in range(WORKERS)
    ]
    for p in processes:
        p.start()
    outcomes: collections.Counter = collections.Counter()
    for _ in processes:
        outcomes.update(queue.get(timeout=300))
    for p in processes:
        p.join(30)
    assert outcomes == {"created": WORKERS * len(accounts)}
    for account in accounts:
        assert LedgerEntry.objects.balance(account=account, currency="usd") == 5 * WORKERS
    assert all(check.ok for check in LedgerEntry.objects.verify_balances())
