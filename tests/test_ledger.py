"""The ledger: credits and debits that apply once, balances exact, nothing changed after the fact."""

from __future__ import annotations

import threading

import pytest
from django.db import connection, transaction
from django.db.models import ProtectedError
from django.test.utils import CaptureQueriesContext

from stripe_idempotency import outcomes, processing
from stripe_idempotency.events import IncomingEvent
from stripe_idempotency.exceptions import (
    InsufficientFunds,
    InvalidLedgerEntry,
    LedgerConflict,
    LedgerEntryImmutable,
    StripeIdempotencyError,
)
from stripe_idempotency.factories import StripeEventFactory
from stripe_idempotency.models import LedgerBalance, LedgerEntry, StripeEvent
from stripe_idempotency.signals import event_received
from stripe_idempotency.testing import build_event
from tests.concurrency import in_thread, in_thread_until_held
from tests.conftest import per_backend
from tests.testapp.models import Effect

pytestmark = pytest.mark.django_db(transaction=True)

objects = LedgerEntry.objects


def credit(amount=1500, reference="cs_1", account="cus_1", **kwargs):
    kwargs.setdefault("currency", "usd")
    kwargs.setdefault("entry_type", "stripe_deposit")
    return objects.credit(account=account, amount=amount, reference=reference, **kwargs)


def debit(amount=500, reference="re_1", account="cus_1", **kwargs):
    kwargs.setdefault("currency", "usd")
    kwargs.setdefault("entry_type", "stripe_refund")
    return objects.debit(account=account, amount=amount, reference=reference, **kwargs)


def balance(account="cus_1", currency="usd"):
    return objects.balance(account=account, currency=currency)


def assert_consistent():
    checks = list(LedgerEntry.objects.verify_balances())
    assert all(check.ok for check in checks), checks


def test_credit():
    entry, created = credit(metadata={"order": 7})
    assert created is True
    stored = LedgerEntry.objects.get()
    assert (stored.account, stored.currency, stored.amount, stored.balance_after) == (
        "cus_1",
        "usd",
        1500,
        1500,
    )
    assert (stored.entry_type, stored.reference, stored.metadata) == ("stripe_deposit", "cs_1", {"order": 7})
    assert stored.pk == entry.pk
    assert balance() == 1500
    assert balance(account="cus_never") == 0


def test_the_returned_entry_is_the_stored_one():
    credit(amount=100, reference="cs_0")
    event = StripeEvent.objects.create(event_id="evt_ledger", type="charge.succeeded", payload={})
    entry, _ = credit(amount=250, reference="cs_1", metadata={"order": 8}, event=event)
    stored = LedgerEntry.objects.get(pk=entry.pk)
    fields = (
        "account",
        "currency",
        "amount",
        "balance_after",
        "entry_type",
        "reference",
        "event_id",
        "metadata",
    )
    assert [getattr(entry, f) for f in fields] == [getattr(stored, f) for f in fields]
    assert entry.balance_after == 350
    assert entry.created_at == stored.created_at
    assert entry._state.adding is False


def test_a_write_moves_the_balance_updated_at():
    credit(amount=100, reference="cs_0")
    first = LedgerBalance.objects.get().updated_at
    credit(amount=100, reference="cs_1")
    assert LedgerBalance.objects.get().updated_at > first


def test_a_repeated_reference_returns_the_first_entry_and_changes_nothing():
    first, _ = credit()
    again, created = credit()
    assert created is False
    assert again.pk == first.pk
    assert LedgerEntry.objects.count() == 1
    assert balance() == 1500


def test_a_repeated_reference_with_another_amount_is_a_conflict():
    credit()
    with pytest.raises(LedgerConflict) as raised:
        credit(amount=1600)
    assert raised.value.existing.amount == 1500
    assert raised.value.amount == 1600
    assert isinstance(raised.value, StripeIdempotencyError)
    assert LedgerEntry.objects.count() == 1
    assert balance() == 1500


def test_the_reference_is_scoped_to_account_currency_and_type():
    credit()
    assert credit(account="cus_2")[1] is True  # a second account's legitimate credit
    assert credit(entry_type="promo")[1] is True
    assert credit(currency="eur")[1] is True
    assert LedgerEntry.objects.count() == 4
    assert (balance(), balance("cus_2"), balance(currency="eur")) == (3000, 1500, 1500)
    assert_consistent()


def test_entries_without_reference_repeat_freely():
    for _ in range(3):
        assert credit(amount=100, reference=None)[1] is True
    assert LedgerEntry.objects.count() == 3
    assert balance() == 300
    assert list(LedgerEntry.objects.order_by("id").values_list("balance_after", flat=True)) == [100, 200, 300]


def test_debit_is_stored_negative():
    credit()
    entry, created = debit()
    assert created is True
    assert (entry.amount, entry.balance_after) == (-500, 1000)
    assert balance() == 1000
    assert_consistent()


def test_debit_below_zero_is_refused_and_writes_nothing():
    credit(amount=400)
    with pytest.raises(InsufficientFunds) as raised:
        debit(amount=500)
    assert (raised.value.balance, raised.value.amount) == (400, 500)
    assert LedgerEntry.objects.count() == 1
    assert balance() == 400


def test_a_first_debit_of_a_new_account_writes_nothing_at_all():
    with pytest.raises(InsufficientFunds):
        debit(account="cus_new")
    assert LedgerEntry.objects.count() == 0
    assert LedgerBalance.objects.count() == 0


def test_allow_negative():
    entry, _ = debit(amount=500, allow_negative=True)
    assert (entry.amount, entry.balance_after) == (-500, -500)
    assert balance() == -500
    assert_consistent()


def test_a_repeated_debit_is_returned_even_when_the_balance_could_not_pay_again():
    credit(amount=500)
    first, _ = debit(amount=500)
    again, created = debit(amount=500)
    assert (again.pk, created) == (first.pk, False)
    assert balance() == 0


def test_currency_is_lower_cased():
    credit(currency="USD")
    assert LedgerEntry.objects.get().currency == "usd"
    assert balance(currency="Usd") == 1500


# Containers 31 deep: one more than every backend stores.
NESTED_31: list = []
for _ in range(30):
    NESTED_31 = [NESTED_31]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"amount": 0},
        {"amount": -5},
        {"amount": 1.5},
        {"amount": True},
        {"amount": "100"},
        {"currency": "us"},
        {"currency": "usdd"},
        {"currency": "€ur"},
        {"currency": 840},
        {"account": ""},
        {"account": "x" * 256},
        {"entry_type": ""},
        {"entry_type": "t" * 65},
        {"reference": ""},
        {"metadata": ["not", "a", "dict"]},
        {"amount": 2**63},
        {"account": "cus_\x00"},
        {"reference": "cs_\x00"},
        {"entry_type": "pay\x00"},
        {"metadata": {"note": "a\x00b"}},
        {"metadata": {"a\x00": 1}},
        {"metadata": {"deep": [{"x": "\x00"}]}},
        {"metadata": {"rate": float("nan")}},
        {"metadata": {"when": object()}},
        # The rule event bodies are held to (stripe_idempotency.storable): MariaDB's JSON check
        # fails past 31 levels, and no database takes a lone surrogate.
        {"metadata": {"deep": NESTED_31}},
        {"metadata": {"text": "\ud800"}},
        {"metadata": {"\udfff": 1}},
    ],
)
def test_invalid_arguments_are_refused_before_anything_is_written(kwargs):
    with pytest.raises(InvalidLedgerEntry):
        credit(**kwargs)
    with pytest.raises(InvalidLedgerEntry):
        debit(**kwargs, allow_negative=True)
    assert LedgerEntry.objects.count() == 0
    assert LedgerBalance.objects.count() == 0


@pytest.mark.parametrize("bad", [{"amount": 2**63}, {"account": "cus_\x00"}, {"metadata": {"n": "\x00"}}])
def test_a_refused_argument_leaves_the_callers_transaction_usable(bad):
    # Refused before any SQL: a database error here would have aborted the
    # receiver's whole transaction (PostgreSQL refuses every later statement).
    with transaction.atomic():
        with pytest.raises(InvalidLedgerEntry):
            credit(**bad)
        _, created = credit(reference="after")
        assert created
    assert LedgerEntry.objects.get().reference == "after"


def test_inside_a_transaction_the_credit_commits_or_rolls_back_with_it():
    def credit_then_fail():
        with transaction.atomic():
            credit()
            raise RuntimeError

    with pytest.raises(RuntimeError):
        credit_then_fail()
    assert LedgerEntry.objects.count() == 0
    assert LedgerBalance.objects.filter(balance__gt=0).count() == 0


def test_a_refusal_leaves_the_callers_transaction_usable():
    with transaction.atomic():
        credit(amount=100)
        with pytest.raises(InsufficientFunds):
            debit(amount=500)
        with pytest.raises(LedgerConflict):
            credit(amount=999)
        credit(amount=50, reference="cs_2")
    assert balance() == 150
    assert_consistent()


def test_a_receivers_credit_is_linked_to_its_event_and_rolls_back_with_a_failure(connect):
    def receive(sender, event, **kwargs):
        session = event.payload["data"]["object"]
        credit(amount=session["amount_total"], reference=session["id"], event=event)
        if session["id"] == "cs_fail":
            raise RuntimeError("after the credit")

    connect(event_received, receive)
    ok = build_event(data={"id": "cs_ok", "amount_total": 700})
    assert isinstance(processing.receive(IncomingEvent.from_payload(ok)), outcomes.Processed)
    failing = build_event(data={"id": "cs_fail", "amount_total": 300})
    assert isinstance(processing.receive(IncomingEvent.from_payload(failing)), outcomes.Failed)
    entry = LedgerEntry.objects.get()
    assert entry.event == StripeEvent.objects.get(event_id=ok["id"])
    assert balance() == 700
    assert_consistent()


def test_entries_are_append_only():
    entry, _ = credit()
    entry.amount = 1
    with pytest.raises(LedgerEntryImmutable):
        entry.save()
    with pytest.raises(LedgerEntryImmutable):
        entry.delete()
    with pytest.raises(LedgerEntryImmutable):
        LedgerEntry.objects.filter(pk=entry.pk).update(amount=1)
    with pytest.raises(LedgerEntryImmutable):
        LedgerEntry.objects.all().delete()
    with pytest.raises(LedgerEntryImmutable):
        LedgerEntry.objects.bulk_update([entry], ["amount"])
    with pytest.raises(LedgerEntryImmutable):
        LedgerEntry.objects.create(account="x", currency="usd", amount=1, balance_after=1, entry_type="t")
    with pytest.raises(LedgerEntryImmutable):
        LedgerEntry.objects.bulk_create([LedgerEntry(account="x", currency="usd", amount=1, balance_after=1)])
    with pytest.raises(LedgerEntryImmutable):
        LedgerEntry(account="x", currency="usd", amount=1, balance_after=1, entry_type="t").save()
    assert LedgerEntry.objects.get().amount == 1500


def test_an_event_with_ledger_entries_cannot_be_deleted():
    # The money trail outlives any clean-up of events (a retention job, an admin deleting rows).
    event = StripeEventFactory(processed=True)
    credit(event=event)
    with pytest.raises(ProtectedError):
        event.delete()
    with pytest.raises(ProtectedError):
        StripeEvent.objects.all().delete()
    assert StripeEvent.objects.count() == 1
    assert LedgerEntry.objects.get().event_id == event.pk


@pytest.mark.only_on(
    "postgresql",
    "mariadb",
    "mysql",
    reason="SQLite has one writer: the other insert cannot be pending during our transaction.",
)
def test_a_race_past_the_check_rolls_the_balance_back_with_the_entry():
    """Another connection inserts the same reference, uncommitted, before our check; it commits after."""
    credit(amount=1000, reference="cs_0")
    inserted, go = threading.Event(), threading.Event()

    def rogue_writer():
        with transaction.atomic(), connection.cursor() as cursor:
            _insert_cs_1_without_the_balance_lock(cursor)
            inserted.set()
            assert go.wait(30)

    writer, _ = in_thread(rogue_writer)
    assert inserted.wait(30)
    ours, result = in_thread_until_held(_credit_capturing, PENDING_ROW)
    go.set()
    writer.join(30)
    ours.join(30)
    (entry, created), statements = result[0]
    assert created is False
    assert entry.reference == "cs_1"
    tried_insert = any(sql.startswith("INSERT") and "LEDGERENTRY" in sql for sql in statements)
    # PostgreSQL: our INSERT ... ON CONFLICT DO NOTHING is what meets the pending row; it
    # waits for it, then does nothing. MariaDB: the locking reference check waits for the
    # pending row and finds it, so no insert is tried.
    assert tried_insert is per_backend(postgresql=True, mysql=False)
    assert not any("ROLLBACK" in sql for sql in statements)
    # Our balance change never happened: the balance is what it was before.
    assert balance() == 1000
    assert LedgerEntry.objects.filter(reference="cs_1").count() == 1


@pytest.mark.only_on(
    "postgresql",
    "mariadb",
    "mysql",
    reason="SQLite has one writer: two transactions cannot wait for each other.",
)
def test_a_credit_chosen_as_a_deadlock_victim_is_run_again_and_written_once():
    """A real deadlock between our credit and another writer; the database aborts our credit."""
    credit(amount=1000, reference="cs_0")
    pending, closing, released = threading.Event(), threading.Event(), threading.Event()

    def other_writer():
        with transaction.atomic(), connection.cursor() as cursor:
            # Heavier than our credit, so that InnoDB, which aborts the transaction that wrote
            # least, picks ours; PostgreSQL aborts the first waiter (ours) when its timer runs out.
            Effect.objects.bulk_create(Effect(event_id=f"evt_{n}", receiver="weight") for n in range(50))
            _insert_cs_1_without_the_balance_lock(cursor)
            pending.set()
            assert closing.wait(30)
            # Our credit holds the balance's lock and waits for the row above: this closes the cycle.
            LedgerBalance.objects.select_for_update().get(account="cus_1")
            released.set()  # our credit was aborted; its lock is ours now
            transaction.set_rollback(True)  # give the reference up, for our credit's second run

    writer, _ = in_thread(other_writer)
    assert pending.wait(30)
    ours, result = in_thread_until_held(credit, PENDING_ROW)
    closing.set()
    writer.join(30)
    ours.join(30)
    assert released.is_set(), "the other writer was aborted instead: our credit was never retried"
    entry, created = result[0]
    assert (entry.reference, entry.amount, entry.balance_after, created) == ("cs_1", 1500, 2500, True)
    assert balance() == 2500
    assert LedgerEntry.objects.filter(reference="cs_1").count() == 1


# Our credit's statements on the entries table, held by another transaction's pending cs_1.
PENDING_ROW = "%stripe_idempotency_ledgerentry%"


def _insert_cs_1_without_the_balance_lock(cursor) -> None:
    """The entry our credit() writes, as a buggy or foreign writer would: no balance lock taken."""
    cursor.execute(
        f"INSERT INTO {LedgerEntry._meta.db_table} "
        "(account, currency, amount, balance_after, entry_type, reference, created_at, metadata) "
        "VALUES ('cus_1', 'usd', 1500, 2500, 'stripe_deposit', 'cs_1', CURRENT_TIMESTAMP, '{}')"
    )


def _credit_capturing():
    with CaptureQueriesContext(connection) as queries:
        result = credit()
    return result, [q["sql"].upper() for q in queries.captured_queries]


# -- SQL per operation ----------------------------------------------------------------------


def statements(func):
    with CaptureQueriesContext(connection) as queries:
        func()
    return [q["sql"].split()[0].upper() for q in queries.captured_queries]


def test_queries_per_operation():
    if connection.vendor == "postgresql":
        return _queries_per_operation_on_postgresql()
    # SQLite inserts "unless the reference exists" in one statement; MySQL/MariaDB
    # look the reference up first and insert inside a savepoint.
    one = connection.vendor == "sqlite"
    checked_insert = ["INSERT"] if one else ["SELECT", "SAVEPOINT", "INSERT", "RELEASE"]
    first = statements(lambda: credit(reference="cs_a"))
    # New account: lock (finds nothing), create the balance row, lock it, insert, update the balance.
    assert first == ["BEGIN", "SELECT", "INSERT", "SELECT", *checked_insert, "UPDATE", "COMMIT"]
    assert statements(lambda: credit(reference="cs_b")) == [
        "BEGIN",
        "SELECT",
        *checked_insert,
        "UPDATE",
        "COMMIT",
    ]
    repeat = ["INSERT", "SELECT"] if one else ["SELECT"]
    assert statements(lambda: credit(reference="cs_b")) == ["BEGIN", "SELECT", *repeat, "COMMIT"]
    assert statements(lambda: debit(reference="re_a")) == [
        "BEGIN",
        "SELECT",
        *checked_insert,
        "UPDATE",
        "COMMIT",
    ]
    assert statements(lambda: credit(reference=None)) == ["BEGIN", "SELECT", "INSERT", "UPDATE", "COMMIT"]
    assert statements(lambda: balance()) == ["SELECT"]
    # In a receiver's transaction there is no BEGIN/COMMIT of the ledger's own.
    with transaction.atomic():
        inside = statements(lambda: credit(reference="cs_c"))
    assert inside == ["SELECT", *checked_insert, "UPDATE"]


def _queries_per_operation_on_postgresql():
    # One statement locks the balance, inserts the entry and moves the balance.
    # When it writes nothing (a new account, a repeated reference, an overdraft)
    # the general path decides, under the lock that statement already took.
    first = statements(lambda: credit(reference="cs_a"))
    assert first == ["BEGIN", "WITH", "SELECT", "INSERT", "SELECT", "INSERT", "UPDATE", "COMMIT"]
    assert statements(lambda: credit(reference="cs_b")) == ["BEGIN", "WITH", "COMMIT"]
    repeat = statements(lambda: credit(reference="cs_b"))
    assert repeat == ["BEGIN", "WITH", "SELECT", "INSERT", "SELECT", "COMMIT"]
    assert statements(lambda: debit(reference="re_a")) == ["BEGIN", "WITH", "COMMIT"]
    assert statements(lambda: credit(reference=None)) == ["BEGIN", "WITH", "COMMIT"]
    assert statements(lambda: balance()) == ["SELECT"]
    with transaction.atomic():
        inside = statements(lambda: credit(reference="cs_c"))
    assert inside == ["WITH"]
