"""What effects cost: a delivery that schedules two beside one that schedules none, and a burst drained.

    python -m benchmarks.effects [--smoke]

Statements are counted with Django's CaptureQueriesContext; CPU is this process's time per
delivery, effects run in the delivering thread (as a worker runs them) so that their runs are
in the figure. The baseline for the effects' own cost is the SQL they need (two INSERTs in the
receivers' transaction; per run a claiming UPDATE and a fenced UPDATE) through Django's
cursor. The burst delivers events one after another through the test client, each scheduling
one effect that the process's effect threads run after the answer; its baseline is the same
burst with no effect.
"""

from __future__ import annotations

import argparse
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, cost_per_call, machine, setup_django, write_section

TYPE = "benchmarks.effects"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="a few deliveries: checks the script")
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args()
    setup_django()
    print(
        run(
            count=50 if args.smoke else 1000,
            burst=50 if args.smoke else 2000,
            output=args.output,
            smoke=args.smoke,
        )
    )


def run(*, count: int, burst: int, output: Path, smoke: bool) -> str:
    from django.test import Client

    from stripe_idempotency.effects import effect
    from stripe_idempotency.signals import signal_for

    @effect(name="benchmarks.noop")
    def noop(*, n: int, idempotency_key: str) -> None:
        pass

    scheduled = {"per_event": 0}

    def receiver(sender: Any, event: Any, **kwargs: Any) -> None:
        from example_project.shop.models import Cancellation

        Cancellation.objects.create(subscription_id="sub_bench", stripe_event_id=event.event_id)
        for n in range(scheduled["per_event"]):
            noop.schedule(event, n=n)

    signal_for(TYPE).connect(receiver, weak=False, dispatch_uid="benchmarks.effects")
    try:
        plain, plain_statements = _deliveries(count, effects_per_event=0, scheduled=scheduled)
        two, two_statements = _deliveries(count, effects_per_event=2, scheduled=scheduled)
        raw = _raw_effects(count)

        client = Client()
        scheduled["per_event"] = 0
        alone = _burst(client, burst)
        alone = {key: alone[key] for key in ("answered", "done")}  # it has no effects to count
        scheduled["per_event"] = 1
        with_effect = _burst(client, burst)
    finally:
        signal_for(TYPE).disconnect(dispatch_uid="benchmarks.effects")

    added = two[0] - plain[0]
    body = f"""
Machine: {machine()}. Command: `python -m benchmarks.effects{" --smoke" if smoke else ""}`.

Per delivery ({count * 9 // 10} measured each), the receiver writing one row, effects run in the
delivering thread:

| delivery | data statements | CPU ms |
|---|---|---|
| no effect | {plain_statements} | {plain[0]:.2f} |
| two effects scheduled and run | {two_statements} | {two[0]:.2f} |
| the effects' share (difference) | {two_statements - plain_statements} | {added:.2f} |
| their SQL alone through Django's cursor (2 INSERTs, 2 claims and fenced UPDATEs) | 6 | {raw:.2f} |
| **the effects' share over their SQL** | | **{added / raw:.2f}** |

A burst of {burst} events through the test client, one after another, each scheduling one effect
that the process's effect threads run after the answer:

| burst | answered in s | effects completed | runs repeated | lost | all done in s | events/s |
|---|---|---|---|---|---|---|
{_burst_row("no effect (baseline)", alone, burst)}
{_burst_row("one effect each", with_effect, burst)}
| **throughput with effects over without** | | | | | | **{alone["done"] / with_effect["done"]:.2f}** |
"""
    write_section(output, "Effects" + (" (smoke)" if smoke else ""), body)
    return f"wrote {output}"


def _burst_row(name: str, burst: dict[str, Any], size: int) -> str:
    counts = [burst.get(k, "-") for k in ("completed", "repeated", "lost")]
    return (
        f"| {name} | {burst['answered']:.2f} | {' | '.join(map(str, counts))} | {burst['done']:.2f} "
        f"| {size / burst['done']:.0f} |"
    )


def _deliveries(
    count: int, *, effects_per_event: int, scheduled: dict[str, int]
) -> tuple[tuple[float, float], int]:
    """(CPU ms, wall ms) per delivery processed with ``effects_per_event`` effects run here, and
    the data statements of one such delivery."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from stripe_idempotency import effects, processing
    from stripe_idempotency.events import IncomingEvent
    from stripe_idempotency.testing import build_event

    scheduled["per_event"] = effects_per_event
    events = [IncomingEvent.from_payload(build_event(TYPE)) for _ in range(count + 1)]
    with effects.run_in_this_thread(), CaptureQueriesContext(connection) as queries:
        processing.receive(events.pop())
    data = [
        q for q in queries if q["sql"].split()[0].upper() not in {"BEGIN", "COMMIT", "SAVEPOINT", "RELEASE"}
    ]

    def one(event: IncomingEvent) -> None:
        with effects.run_in_this_thread():
            processing.receive(event)

    return cost_per_call(one, events), len(data)


def _raw_effects(count: int) -> float:
    """CPU ms of the effects' SQL for one delivery with two, through Django's cursor: the two
    INSERTs in a transaction, then for each a claiming UPDATE and a fenced UPDATE."""
    from django.db import connection, transaction

    from stripe_idempotency.models import EventEffect, StripeEvent

    event = StripeEvent.objects.create(event_id=f"evt_raw_effects_{uuid.uuid4().hex}", type=TYPE, payload={})
    table = connection.ops.quote_name(EventEffect._meta.db_table)
    now = {
        "postgresql": "statement_timestamp()",
        "mysql": "NOW(6)",
        "sqlite": "STRFTIME('%Y-%m-%d %H:%M:%f', 'now')",
    }[connection.vendor]
    insert = (
        f"INSERT INTO {table} (event_id, name, key, idempotency_key, arguments, scheduled_at, max_attempts, "
        f"claimed_by, attempts, last_error) VALUES (%s, 'raw', %s, %s, '{{}}', {now}, 20, '', 0, '')"
    ).replace(" key,", f" {connection.ops.quote_name('key')},")
    claim = (
        f"UPDATE {table} SET claim_token = %s, claimed_at = {now}, claimed_by = 'raw', "
        f"claim_expires_at = {now}, attempts = attempts + 1 WHERE idempotency_key = %s "
        "AND completed_at IS NULL AND claim_expires_at IS NULL AND attempts < max_attempts"
    )
    done = (
        f"UPDATE {table} SET completed_at = {now}, claim_expires_at = NULL, claim_token = NULL "
        "WHERE idempotency_key = %s AND claim_token = %s"
    )
    token_of = EventEffect._meta.get_field("claim_token")

    def one(n: int) -> None:
        keys = [f"raw:{n}:{k}" for k in range(2)]
        with transaction.atomic(), connection.cursor() as cursor:
            for key in keys:
                cursor.execute(insert, [event.pk, key, key])
        with connection.cursor() as cursor:
            for key in keys:
                token = token_of.get_db_prep_save(uuid.uuid4(), connection)
                cursor.execute(claim, [token, key])
                cursor.execute(done, [key, token])

    EventEffect.objects.filter(event=event).delete()
    run_id = list(range(count))
    result = cost_per_call(one, run_id)[0]
    EventEffect.objects.filter(event=event).delete()
    event.delete()
    return result


def _burst(client: Any, size: int) -> dict[str, Any]:
    from stripe_idempotency import effects
    from stripe_idempotency.models import EventEffect
    from stripe_idempotency.testing import build_event

    events = [build_event(TYPE) for _ in range(size)]
    ids = [e["id"] for e in events]
    started = time.perf_counter()
    for event in events:
        _post(client, event)  # the answer only: testing.deliver() would wait for the effects
    answered = time.perf_counter() - started
    effects.wait_for_runs(600)
    done = time.perf_counter() - started
    rows = EventEffect.objects.filter(event__event_id__in=ids)
    completed = rows.filter(completed_at__isnull=False).count()
    return {
        "answered": answered,
        "done": done,
        "completed": completed,
        "repeated": rows.filter(attempts__gt=1).count(),
        "lost": rows.count() - completed,
    }


def _post(client: Any, event: dict[str, Any]) -> None:
    from django.urls import reverse

    from stripe_idempotency.conf import app_settings
    from stripe_idempotency.testing import encode, sign

    body = encode(event)
    client.post(
        reverse("stripe_idempotency:webhook"),
        data=body,
        content_type="application/json",
        headers={"Stripe-Signature": sign(body, next(iter(app_settings.WEBHOOK_SECRETS)))},
    )


if __name__ == "__main__":
    main()
