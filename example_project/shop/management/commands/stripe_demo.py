"""Show the main job: a burst of signed events, each delivered several times at once, handled once.

Starts the project on a local HTTP server (127.0.0.1, a free port), sends
every event ``--deliveries`` times from ``--senders`` concurrent threads the
way Stripe retries (a 503 is retried after its ``Retry-After``, shortened
here so the demo takes seconds), then counts from the database how many
times each event's receivers ran.
"""

from __future__ import annotations

import collections
import json
import logging
import random
import secrets
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler

from django.core import mail
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.core.servers.basehttp import ThreadedWSGIServer
from django.core.wsgi import get_wsgi_application
from django.db import connection
from django.test.utils import override_settings
from django.urls import reverse

from example_project.mail import backend_settings
from example_project.shop.models import Cancellation, Fulfilment
from stripe_idempotency import effects
from stripe_idempotency.conf import app_settings
from stripe_idempotency.models import LedgerEntry
from stripe_idempotency.testing import build_event, deliver_concurrently, encode, sign

MAX_ATTEMPTS = 30
# Stripe waits far longer between retries; the demo compresses time.
RETRY_PAUSE_CAP_SECONDS = 0.2


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class _Delivery:
    event_id: str
    answers: list[str] = field(default_factory=list)


class Command(BaseCommand):
    help = "Send a burst of signed Stripe events, with duplicates, concurrently through the webhook view."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--events", type=int, default=20, help="Distinct events (default 20).")
        parser.add_argument("--deliveries", type=int, default=4, help="Deliveries of each event (default 4).")
        parser.add_argument("--senders", type=int, default=8, help="Concurrent senders (default 8).")
        parser.add_argument("--seed", type=int, default=None, help="Shuffle seed, for a repeatable order.")

    def handle(self, *, events: int, deliveries: int, senders: int, seed: int | None, **options: Any) -> None:
        if min(events, deliveries, senders) < 1:
            raise CommandError("--events, --deliveries and --senders must be at least 1.")
        secret = next(iter(app_settings.WEBHOOK_SECRETS), None)
        if secret is None:
            raise CommandError('STRIPE_IDEMPOTENCY["WEBHOOK_SECRETS"] is empty: nothing could be signed.')

        run = secrets.token_hex(4)
        burst = _events(events, run)
        jobs = [_Delivery(e["id"]) for e in burst for _ in range(deliveries)]
        random.Random(seed).shuffle(jobs)
        bodies = {e["id"]: encode(e) for e in burst}

        with override_settings(**backend_settings("django.core.mail.backends.locmem.EmailBackend")):
            mail.outbox = []
            server = ThreadedWSGIServer(("127.0.0.1", 0), _QuietHandler)
            server.set_app(get_wsgi_application())
            thread = threading.Thread(target=server.serve_forever, daemon=True)
            thread.start()
            url = f"http://127.0.0.1:{server.server_port}{reverse('stripe_idempotency:webhook')}"
            # Refunds that arrive before their payment fail on purpose; the app
            # logs each failure with its traceback. The summary counts them instead.
            app_logger = logging.getLogger("stripe_idempotency")
            level = app_logger.level
            app_logger.setLevel(logging.CRITICAL)
            try:
                deliver_concurrently(
                    jobs,
                    lambda job: _send(url, bodies[job.event_id], secret, job),
                    senders=senders,
                    max_attempts=MAX_ATTEMPTS,
                )
            finally:
                app_logger.setLevel(level)
                server.shutdown()
                server.server_close()
            effects.wait_for_runs()  # the emails go out after each answer, on the server's threads
            emails = len(mail.outbox)

        self._report(burst, jobs, deliveries, senders, url, emails)

    def _report(
        self,
        burst: list[dict[str, Any]],
        jobs: list[_Delivery],
        deliveries: int,
        senders: int,
        url: str,
        emails: int,
    ) -> None:
        write = self.stdout.write
        finals = collections.Counter(job.answers[-1] for job in jobs)
        retried = sum(1 for job in jobs if "busy" in job.answers)
        failed_first = sum(1 for job in jobs if "error" in job.answers)
        write(
            f"Sent {len(burst)} events, each delivered {deliveries} times, from {senders} concurrent "
            f"senders ({len(jobs)} deliveries) to {url}"
        )
        write(f"  processed           {finals['processed']:5}  the delivery that ran the event's receivers")
        write(f"  duplicate           {finals['duplicate']:5}  already processed: receivers not run again")
        write(f"  busy, then retried  {retried:5}  another delivery held the event; asked again later")
        write(f"  error, then retried {failed_first:5}  a refund came before its payment; delivered again")
        others = {k: v for k, v in finals.items() if k not in {"processed", "duplicate"}}
        if others:
            write(f"  other final answers {others}")

        ids = [e["id"] for e in burst]
        runs = collections.Counter(
            [
                *Fulfilment.objects.filter(stripe_event_id__in=ids).values_list("stripe_event_id", flat=True),
                *Cancellation.objects.filter(stripe_event_id__in=ids).values_list(
                    "stripe_event_id", flat=True
                ),
                *LedgerEntry.objects.filter(event__event_id__in=ids, entry_type="refund").values_list(
                    "event__event_id", flat=True
                ),
            ]
        )
        per_event = collections.Counter(runs[i] for i in ids)
        kinds: collections.Counter[str] = collections.Counter()
        for event in burst:
            kinds[event["type"]] += runs[event["id"]]
        summary = ", ".join(f"{n} run(s): {count} events" for n, count in sorted(per_event.items()))
        write(f"Receiver runs per event: {summary}")
        write(
            f"  fulfilments {kinds['checkout.session.completed']}, cancellations "
            f"{kinds['customer.subscription.deleted']}, refunds {kinds['charge.refunded']}, "
            f"confirmation emails sent {emails}"
        )
        consistent = self._report_balances(burst)
        write(f"Database: {connection.vendor} ({connection.settings_dict['NAME']})")
        if per_event != collections.Counter({1: len(ids)}):
            raise CommandError("Some event's receivers did not run exactly once.")
        if not consistent:
            raise CommandError("Some balance is not what the events add up to.")
        self.stdout.write(self.style.SUCCESS(f"Every one of the {len(ids)} events was handled exactly once."))

    def _report_balances(self, burst: list[dict[str, Any]]) -> bool:
        """Print each customer's balance beside what the events add up to; True if all agree."""
        consistent = True
        self.stdout.write("Store credit (ledger), per customer:")
        for account, expected in sorted(_expected_balances(burst).items()):
            balance = LedgerEntry.objects.balance(account=account, currency="usd")
            entries = LedgerEntry.objects.filter(account=account).count()
            ok = balance == expected and _ledger_ok(account)
            consistent &= ok
            verdict = "ok" if ok else "WRONG"
            self.stdout.write(
                f"  {account}  {balance:6} usd  ({entries} entries; events add up to {expected}) {verdict}"
            )
        return consistent


CUSTOMERS = 4
PAYMENT = 1500
REFUND = 500


def _ledger_ok(account: str) -> bool:
    return all(check.ok for check in LedgerEntry.objects.verify_balances(account=account))


def _expected_balances(burst: list[dict[str, Any]]) -> dict[str, int]:
    expected: collections.Counter[str] = collections.Counter()
    for event in burst:
        obj = event["data"]["object"]
        if event["type"] == "checkout.session.completed":
            expected[obj["customer"]] += obj["amount_total"]
        elif event["type"] == "charge.refunded":
            expected[obj["customer"]] -= obj["amount_refunded"]
    return dict(expected)


def _events(count: int, run: str) -> list[dict[str, Any]]:
    """Every third event a paid checkout, a cancelled subscription, a refund of an earlier checkout."""
    events = []
    for n in range(count):
        customer = f"cus_demo_{run}_{(n // 3) % CUSTOMERS}"
        if n % 3 == 0:
            session = {
                "id": f"cs_demo_{run}_{n}",
                "object": "checkout.session",
                "amount_total": PAYMENT,
                "currency": "usd",
                "customer": customer,
                "customer_details": {"email": f"customer{n}@example.com"},
                "payment_status": "paid",
            }
            events.append(build_event("checkout.session.completed", data=session))
        elif n % 3 == 1:
            subscription = {"id": f"sub_demo_{run}_{n}", "object": "subscription", "status": "canceled"}
            events.append(build_event("customer.subscription.deleted", data=subscription))
        else:
            charge = {
                "id": f"ch_demo_{run}_{n}",
                "object": "charge",
                "amount": PAYMENT,
                "amount_refunded": REFUND,
                "currency": "usd",
                "customer": customer,
                "refunded": False,
            }
            events.append(build_event("charge.refunded", data=charge))
    return events


def _send(url: str, body: bytes, secret: str, job: _Delivery) -> float | None:
    """One delivery attempt; the seconds to wait before retrying it, or None when answered 2xx."""
    request = urllib.request.Request(
        url,
        data=body,
        headers={"Content-Type": "application/json", "Stripe-Signature": sign(body, secret)},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            job.answers.append(json.loads(response.read())["status"])
            return None
    except urllib.error.HTTPError as error:
        job.answers.append(json.loads(error.read()).get("status", str(error.code)))
        return min(float(error.headers.get("Retry-After") or 1), RETRY_PAUSE_CAP_SECONDS)
