"""Check the ledger: each balance is the sum of its entries, each balance_after the running sum."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from stripe_idempotency.ledger import AccountCheck
from stripe_idempotency.models import LedgerEntry

PROGRESS_EVERY = 10_000


class Command(BaseCommand):
    help = (
        "Check, per account and currency, that the balance equals the sum of the entries and that "
        "each entry's balance_after is the running sum. Exits with status 1 on any mismatch."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--account", help="Check this account only.")
        parser.add_argument(
            "--database",
            default=None,
            help="Database alias (default: the one the database routers choose for ledger entries).",
        )

    def handle(self, *, account: str | None, database: str | None, verbosity: int, **options: Any) -> None:
        checked = entries = 0
        bad: list[AccountCheck] = []
        for check in LedgerEntry.objects.verify_balances(account=account, using=database):
            checked += 1
            entries += check.entries
            if not check.ok:
                bad.append(check)
                self.stdout.write(self.style.ERROR(_describe(check)))
            elif verbosity >= 1:
                self.stdout.write(_describe(check))
            if verbosity >= 2 and checked % PROGRESS_EVERY == 0:
                self.stderr.write(f"... {checked} balances, {entries} entries checked")
        summary = f"Checked {checked} balance(s), {_entries(entries)}"
        if bad:
            raise CommandError(f"{summary}: {len(bad)} inconsistent.", returncode=1)
        if verbosity >= 1:
            self.stdout.write(self.style.SUCCESS(f"{summary}: all consistent."))


def _describe(check: AccountCheck) -> str:
    head = f"{check.account} {check.currency}:"
    if check.ok:
        return f"{head} ok ({_entries(check.entries)}, balance {check.balance})"
    problems = []
    if check.balance is None:
        problems.append(f"no balance row, entries sum to {check.total}")
    elif check.balance != check.total:
        problems.append(f"balance {check.balance} but entries sum to {check.total}")
    if check.chain_break is not None:
        pk, stored, expected = check.chain_break
        problems.append(f"entry {pk} has balance_after {stored}, running sum {expected}")
    return f"{head} MISMATCH: {'; '.join(problems)}"


def _entries(count: int) -> str:
    return f"{count} entr{'y' if count == 1 else 'ies'}"
