"""verify_ledger: exact output, and a non-zero exit status on any mismatch."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from stripe_idempotency.models import LedgerBalance, LedgerEntry

pytestmark = pytest.mark.django_db(transaction=True)


def verify(*args) -> str:
    out = StringIO()
    call_command("verify_ledger", *args, stdout=out, no_color=True)
    return out.getvalue()


@pytest.fixture
def ledger(ledger_entry_factory):
    ledger_entry_factory(account="cus_a", amount=1500)
    ledger_entry_factory(account="cus_a", amount=500)
    ledger_entry_factory(account="cus_a", amount=-300, entry_type="refund")
    ledger_entry_factory(account="cus_b", amount=200, currency="eur", reference=None)


def test_a_consistent_ledger(ledger):
    assert verify() == (
        "cus_a usd: ok (3 entries, balance 1700)\n"
        "cus_b eur: ok (1 entry, balance 200)\n"
        "Checked 2 balance(s), 4 entries: all consistent.\n"
    )


def test_one_account(ledger):
    assert verify("--account", "cus_b") == (
        "cus_b eur: ok (1 entry, balance 200)\nChecked 1 balance(s), 1 entry: all consistent.\n"
    )


def test_quiet_when_all_is_well(ledger):
    assert verify("-v", "0") == ""


def test_an_empty_ledger():
    assert verify() == "Checked 0 balance(s), 0 entries: all consistent.\n"


def test_mismatches_are_reported_and_exit_non_zero(ledger):
    LedgerBalance.objects.filter(account="cus_b").update(balance=250)
    second = LedgerEntry.objects.filter(account="cus_a").order_by("id")[1]
    with connection.cursor() as cursor:  # what only a write outside the app could do
        cursor.execute(
            f"UPDATE {LedgerEntry._meta.db_table} SET balance_after = 1999 WHERE id = %s", [second.pk]
        )
    out = StringIO()
    with pytest.raises(
        CommandError, match=r"^Checked 2 balance\(s\), 4 entries: 2 inconsistent\.$"
    ) as raised:
        call_command("verify_ledger", stdout=out, no_color=True)
    assert raised.value.returncode == 1
    assert out.getvalue() == (
        f"cus_a usd: MISMATCH: entry {second.pk} has balance_after 1999, running sum 2000\n"
        "cus_b eur: MISMATCH: balance 250 but entries sum to 200\n"
    )


def test_a_missing_balance_row(ledger):
    LedgerBalance.objects.filter(account="cus_b").delete()
    out = StringIO()
    with pytest.raises(CommandError):
        call_command("verify_ledger", "-v", "0", stdout=out, no_color=True)
    assert out.getvalue() == "cus_b eur: MISMATCH: no balance row, entries sum to 200\n"


def test_a_balance_row_with_no_entries_is_flagged_unless_it_is_zero(ledger):
    # A refused first debit leaves a balance row at zero and no entry: that is consistent.
    LedgerBalance.objects.create(account="cus_refused", currency="usd", balance=0)
    LedgerBalance.objects.create(account="cus_forged", currency="usd", balance=700)
    out = StringIO()
    with pytest.raises(CommandError, match=r"^Checked 4 balance\(s\), 4 entries: 1 inconsistent\.$"):
        call_command("verify_ledger", "-v", "0", stdout=out, no_color=True)
    assert out.getvalue() == "cus_forged usd: MISMATCH: balance 700 but entries sum to 0\n"


def test_a_missing_balance_row_is_flagged_even_when_its_entries_sum_to_zero(ledger_entry_factory):
    ledger_entry_factory(account="cus_even", amount=500)
    ledger_entry_factory(account="cus_even", amount=-500, entry_type="refund")
    LedgerBalance.objects.filter(account="cus_even").delete()
    out = StringIO()
    with pytest.raises(CommandError, match=r"1 inconsistent\.$"):
        call_command("verify_ledger", "-v", "0", stdout=out, no_color=True)
    assert out.getvalue() == "cus_even usd: MISMATCH: no balance row, entries sum to 0\n"
