"""process_stripe_events: exact output, exit status, options, and a stop request in a real process."""

from __future__ import annotations

import signal
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from stripe_idempotency.signals import event_received
from tests.concurrency import wait_for
from tests.test_worker import TABLE, accept, runs
from tests.workers import accept_in_project, table_worker

pytestmark = pytest.mark.django_db(transaction=True)


def work(*args: str) -> str:
    out = StringIO()
    call_command("process_stripe_events", *args, stdout=out, no_color=True)
    return out.getvalue()


@TABLE
def test_a_run_processes_what_waits_and_says_so_in_one_line(record_effects):
    accept("evt_1", "evt_2", "evt_3")
    assert work() == "Done: 3 events run (3 processed, 0 failed, 0 skipped). Left: 0 dead.\n"
    assert runs() == {"evt_1": 1, "evt_2": 1, "evt_3": 1}
    assert work() == "Done: 0 events run (0 processed, 0 failed, 0 skipped). Left: 0 dead.\n"
    assert work("-v", "0") == ""


@TABLE
def test_a_failed_event_makes_the_run_exit_1_with_its_figures(connect):
    def fail(sender, event, **kwargs):
        raise RuntimeError("boom")

    connect(event_received, fail)
    accept("evt_failing")
    with pytest.raises(CommandError) as raised:
        work("--max-events", "1")
    assert raised.value.returncode == 1
    assert str(raised.value).startswith(
        "Done: 1 event run (0 processed, 1 failed, 0 skipped). Left: 0 dead, 1 failed waiting for its backoff"
    )


@TABLE
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--interval", "0"], "--interval must be greater than 0."),
        (["--max-events", "0"], "--max-events must be at least 1."),
        (["--max-seconds", "0"], "--max-seconds must be greater than 0."),
        (["--batch-size", "0"], "--batch-size must be at least 1."),
    ],
)
def test_options_out_of_range_are_refused_before_anything_is_taken(record_effects, args, message):
    accept("evt_untouched")
    with pytest.raises(CommandError, match=message):
        work(*args)
    assert runs() == {}


@pytest.mark.only_on(
    "postgresql", "mariadb", "mysql", reason="a worker process and the test share a server database"
)
def test_sigterm_finishes_the_event_in_hand_gives_back_the_rest_and_exits_0(server_database, tmp_path):
    db = server_database
    started, log = tmp_path / "started", tmp_path / "worker.log"
    accept_in_project(db.url, "evt_term_0", "evt_term_1", "evt_term_2")
    worker = table_worker(
        db.url, log, "--interval", "0.1", SHOP_FULFILMENT_SECONDS="2", CHAOS_STARTED_FILE=str(started)
    )
    try:
        wait_for(lambda: started.exists() and started.read_text(), "the first receiver to start")
        worker.send_signal(signal.SIGTERM)  # that receiver sleeps for 2 s
        worker.wait(60)
    finally:
        if worker.poll() is None:
            worker.kill()
    output = log.read_text()
    assert worker.returncode == 0, output
    assert "SIGTERM: stopping after the row in hand." in output
    assert (
        output.strip().splitlines()[-1]
        == "Stopped: 1 event run (1 processed, 0 failed, 0 skipped). Left: 0 dead."
    )
    rows = db.rows(
        "SELECT event_id, processed_at IS NOT NULL, attempts, claimed_at IS NULL, claim_token IS NULL "
        "FROM stripe_idempotency_stripeevent ORDER BY id"
    )
    # The first processed; the two taken with it and never started, untouched: pending again.
    assert [tuple(bool(v) if i in (1, 3, 4) else v for i, v in enumerate(r)) for r in rows] == [
        ("evt_term_0", True, 1, False, True),
        ("evt_term_1", False, 0, True, True),
        ("evt_term_2", False, 0, True, True),
    ]
