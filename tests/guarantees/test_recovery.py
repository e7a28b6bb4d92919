"""No event is lost when a process dies mid-receiver: the reaper finds it and processes it once,
even with two reapers started at the same moment."""

from __future__ import annotations

import collections
import multiprocessing
import os
import re
import time
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connections
from django.test import Client, override_settings

from stripe_idempotency.models import StripeEvent
from stripe_idempotency.signals import event_received
from stripe_idempotency.testing import build_event, deliver
from tests.concurrency import close_connections_and_pools
from tests.testapp.models import Effect

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.concurrency]

EVENTS = 6
KILLED = 17


def _die_mid_receiver(event):
    # A worker killed by the OOM killer or a deploy: no exception, no cleanup.
    os.environ["STRIPE_TEST_KILL"] = "1"
    deliver(Client(), event)
    os._exit(0)  # not reached: the receiver kills the process first


def _reaper(start, queue):
    start.wait()
    out = StringIO()
    try:
        call_command("reap_stale_claims", "--reprocess", stdout=out, no_color=True)
    except Exception as exc:
        out.write(f"raised {exc!r}")
    finally:
        connections.close_all()
    queue.put(out.getvalue())


@override_settings(STRIPE_IDEMPOTENCY={"WEBHOOK_SECRETS": ["whsec_test_secret"], "CLAIM_TTL_SECONDS": 1})
def test_killed_workers_events_are_reprocessed_exactly_once_by_two_reapers(record_effects, connect):
    def killer(sender, event, **kwargs):
        if os.environ.get("STRIPE_TEST_KILL"):
            os._exit(KILLED)

    connect(event_received, killer)
    events = [build_event(id=f"evt_killed_{n}") for n in range(EVENTS)]
    context = multiprocessing.get_context("fork")
    close_connections_and_pools()
    for event in events:
        worker = context.Process(target=_die_mid_receiver, args=(event,))
        worker.start()
        worker.join(60)
        assert worker.exitcode == KILLED

    # Left claimed: the receivers' work died with the process, the claim did not.
    rows = StripeEvent.objects.filter(event_id__startswith="evt_killed_")
    assert rows.count() == EVENTS
    assert rows.filter(processed_at__isnull=True, claim_token__isnull=False).count() == EVENTS
    assert Effect.objects.count() == 0

    for _ in range(100):  # until the 1 s leases have run out on the database clock
        if StripeEvent.objects.stale().count() == EVENTS:
            break
        time.sleep(0.1)
    assert StripeEvent.objects.stale().count() == EVENTS

    before = list(rows.order_by("id").values())
    out = StringIO()
    call_command("reap_stale_claims", "--reprocess", "--dry-run", stdout=out, no_color=True)
    assert out.getvalue().count("Would reprocess") == EVENTS
    assert list(rows.order_by("id").values()) == before

    start, queue = context.Barrier(2), context.Queue()
    close_connections_and_pools()
    reapers = [context.Process(target=_reaper, args=(start, queue)) for _ in range(2)]
    for reaper in reapers:
        reaper.start()
    outputs = [queue.get(timeout=120) for _ in reapers]
    for reaper in reapers:
        reaper.join(30)
        assert reaper.exitcode == 0

    reprocessed = [
        re.search(r"evt_killed_\d+", line).group()
        for output in outputs
        for line in output.splitlines()
        if line.endswith(": processed")
    ]
    assert sorted(reprocessed) == sorted(e["id"] for e in events), outputs
    assert not any("raised" in output for output in outputs), outputs
    assert rows.filter(processed_at__isnull=True).count() == 0
    assert set(rows.values_list("attempts", flat=True)) == {2}
    runs = collections.Counter(Effect.objects.values_list("event_id", "receiver"))
    assert runs == collections.Counter({(e["id"], r): 1 for e in events for r in ("received", "typed")})
