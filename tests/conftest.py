from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection

from stripe_idempotency.signals import event_received, signal_for
from tests.testapp.models import Effect

pytest_plugins = ["pytester"]

TYPE = "checkout.session.completed"


BACKEND_NAMES = {"sqlite": "SQLite", "postgresql": "PostgreSQL", "mariadb": "MariaDB", "mysql": "MySQL"}


def backend() -> str:
    """The backend under test: ``connection.vendor``, with MariaDB told apart from MySQL."""
    if connection.vendor == "mysql" and connection.mysql_is_mariadb:
        return "mariadb"
    return connection.vendor


_under_test: list[str] = []  # backend(), worked out once: asking MariaDB needs the database


@pytest.fixture(autouse=True)
def _only_on(request: pytest.FixtureRequest, django_db_blocker: Any) -> None:
    marker = request.node.get_closest_marker("only_on")
    if marker is None:
        return
    if not _under_test:
        with django_db_blocker.unblock():
            _under_test.append(backend())
    if _under_test[0] not in marker.args:
        pytest.skip(f"only on {', '.join(BACKEND_NAMES[b] for b in marker.args)}: {marker.kwargs['reason']}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    # A test written for this backend must not skip on it (a missing tool, a changed
    # condition): that would be a guarantee left unchecked by the pass meant to check it.
    report = yield
    marker = item.get_closest_marker("only_on")
    if report.skipped and marker is not None and _under_test and _under_test[0] in marker.args:
        report.outcome = "failed"
        report.longrepr = (
            f"{item.nodeid} is written for {BACKEND_NAMES[_under_test[0]]} and skipped on it: "
            f"{report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr}"
        )
    return report


#: The chaos and server suites start app servers, workers and databases of their own and run
#: bursts through them: on a busy machine they take many minutes, and their own deadlines
#: say what was awaited. This is only the net for a hang in between.
LONG_SUITE_TIMEOUT_SECONDS = 2400


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        long_suite = item.get_closest_marker("chaos") or item.get_closest_marker("servers")
        if long_suite and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(LONG_SUITE_TIMEOUT_SECONDS))


def pytest_report_header(config: pytest.Config) -> str:
    # tox runs the suite against the installed wheel; the header says which copy ran.
    import stripe_idempotency

    return f"stripe_idempotency: {stripe_idempotency.__path__[0]}, database: {connection.vendor}"


def record(receiver: str):
    def receive(sender, event, **kwargs):
        Effect.objects.create(event_id=event.event_id, receiver=receiver)

    return receive


@pytest.fixture
def record_effects() -> Iterator[None]:
    """Receivers that leave one Effect row per run: ``received`` for every event, ``typed`` for TYPE."""
    on_any, on_type = record("received"), record("typed")
    event_received.connect(on_any, dispatch_uid="tests.received")
    signal_for(TYPE).connect(on_type, dispatch_uid="tests.typed")
    yield
    event_received.disconnect(dispatch_uid="tests.received")
    signal_for(TYPE).disconnect(dispatch_uid="tests.typed")


@pytest.fixture
def taken_over_after_the_claim(monkeypatch) -> list[Any]:
    """The first claim this test makes is taken over by another connection before its receivers
    run (its lease expired on the database clock, then claimed from another thread): the run
    that follows is fenced, on every backend. Lists the takeover's ``Claimed``."""
    from django.db.models.functions import Now

    from stripe_idempotency import leases
    from stripe_idempotency.models import StripeEvent
    from tests.concurrency import in_thread

    real_claim = leases.claim
    takeovers: list[Any] = []

    def claim_then_lose_it(event, *, using=None):
        result = real_claim(event, using=using)
        if isinstance(result, leases.Claimed) and not takeovers:
            StripeEvent.objects.filter(pk=result.event.pk).update(claim_expires_at=Now())
            thread, taken = in_thread(lambda: real_claim(event, using=using))
            thread.join(30)
            assert isinstance(taken[0], leases.Claimed), taken
            takeovers.append(taken[0])
        return result

    monkeypatch.setattr(leases, "claim", claim_then_lose_it)
    return takeovers


@pytest.fixture
def connect():
    """Connect receivers for one test: ``connect(signal, func)``; all disconnected afterwards."""
    connected = []

    def _connect(signal, receiver):
        signal.connect(receiver, weak=False)
        connected.append((signal, receiver))

    yield _connect
    for signal, receiver in connected:
        signal.disconnect(receiver)


@pytest.fixture
def server_database():
    """A database of the test's own, the example project migrated into it, for real app servers.

    Tests using it are marked ``only_on("postgresql", "mysql")``: SQLite's single writer
    would serialise the servers the suites mean to race."""
    from tests.servers import own_database

    with own_database() as db:
        yield db


def vendor() -> str:
    return connection.vendor


def per_backend(**values: Any) -> Any:
    """The value for the backend under test, e.g. ``per_backend(postgresql=2, mysql=3, sqlite=3)``."""
    return values[vendor()]
