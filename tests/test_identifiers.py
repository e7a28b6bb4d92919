"""Identifiers compare byte for byte on every backend: case, accents and trailing spaces count.

On MariaDB the test database has the server's default collation (utf8mb4_general_ci),
as a user's would: migration 0003 is what makes these pass there.
"""

from __future__ import annotations

import pytest
from django.db import connection
from django.test import Client

from stripe_idempotency.checks import check_identifier_collations
from stripe_idempotency.models import LedgerBalance, LedgerEntry, StripeEvent
from stripe_idempotency.testing import build_event, deliver

pytestmark = pytest.mark.django_db(transaction=True)


def credit(account: str, reference: str | None, amount: int = 100, currency: str = "usd"):
    return LedgerEntry.objects.credit(
        account=account, amount=amount, currency=currency, entry_type="deposit", reference=reference
    )


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (("cus_Alice", "cs_ABC"), ("cus_alice", "cs_abc")),
        (("cus_1", "cs_ABC"), ("cus_1", "cs_abc")),
        (("josé", "ref"), ("jose", "ref")),
        (("cus_a", "ref"), ("cus_a ", "ref")),
        (("cus_b", "ref"), ("cus_b", "ref ")),
    ],
)
def test_ledger_keys_that_differ_only_in_case_accents_or_spaces_are_different_money(first, second):
    _, created_first = credit(*first, amount=100)
    _, created_second = credit(*second, amount=250)
    assert (created_first, created_second) == (True, True)
    assert LedgerEntry.objects.count() == 2
    assert LedgerEntry.objects.balance(account=first[0], currency="usd") == (
        350 if first[0] == second[0] else 100
    )
    balances = set(LedgerBalance.objects.values_list("account", flat=True))
    assert balances == {first[0], second[0]}


def test_event_ids_that_differ_only_in_case_are_two_events():
    for event_id in ("evt_ABC", "evt_abc"):
        response = deliver(Client(), build_event(id=event_id))
        assert response.json() == {"status": "processed", "event_id": event_id}
    assert sorted(StripeEvent.objects.values_list("event_id", flat=True)) == ["evt_ABC", "evt_abc"]


def test_the_live_columns_compare_bytes_and_the_check_says_when_one_does_not():
    assert check_identifier_collations(databases=["default"]) == []
    if connection.vendor != "mysql":
        return
    table = LedgerEntry._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"ALTER TABLE {table} MODIFY reference varchar(255) CHARACTER SET utf8mb4 "
            "COLLATE utf8mb4_general_ci NULL"
        )
    try:
        [warning] = check_identifier_collations(databases=["default"])
        assert warning.id == "stripe_idempotency.W004"
        assert warning.msg.startswith(f"{table}.reference on the database 'default' has the collation")
    finally:
        from stripe_idempotency.backends.mysql import make_identifiers_binary

        with connection.schema_editor() as editor:
            make_identifiers_binary(editor, [(LedgerEntry, "reference")])
    assert check_identifier_collations(databases=["default"]) == []
