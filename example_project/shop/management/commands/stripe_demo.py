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
import random
import secrets
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
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

from example_project.shop.models import Cancellation, Fulfilment
from stripe_idempotency.conf import app_settings
from stripe_idempotency.testing import build_event, encode, sign

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

        burst = _events(events)
        jobs = [_Delivery(e["id"]) for e in burst for _ in range(deliveries)]
        random.Random(seed).shuffle(jobs)
        bodies = {e["id"]: encode(e) for e in burst}

        with override_settings(EMAIL_BACKEND="django.core.mail.backends.locmem.EmailBackend"):
            mail.outbox = []
            server = ThreadedWSGIServer(("127.0.0.1", 0), _QuietHandler)
            server.set_app(get_wsgi_application())
            thread = threading.Thread(target=server.serve_forever, daemon=True)
            thread.start()
            url = f"http://127.0.0.1:{server.server_port}{reverse('stripe_idempotency:webhook')}"
            try:
                with ThreadPoolExecutor(max_workers=senders) as pool:
                    list(pool.map(lambda job: _send(url, bodies[job.event_id], secret, job), jobs))
            finally:
                server.shutdown()
                server.server_close()
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
        write(
            f"Sent {len(burst)} events, each delivered {deliveries} times, from {senders} concurrent "
            f"senders ({len(jobs)} deliveries) to {url}"
        )
        write(f"  processed           {finals['processed']:5}  the delivery that ran the event's receivers")
        write(f"  duplicate           {finals['duplicate']:5}  already processed: receivers not run again")
        write(f"  busy, then retried  {retried:5}  another delivery held the event; asked again later")
        others = {k: v for k, v in finals.items() if k not in {"processed", "duplicate"}}
        if others:
            write(f"  other final answers {others}")

        ids = [e["id"] for e in burst]
        runs = collections.Counter(
            list(Fulfilment.objects.filter(stripe_event_id__in=ids).values_list("stripe_event_id", flat=True))
            + list(
                Cancellation.objects.filter(stripe_event_id__in=ids).values_list("stripe_event_id", flat=True)
            )
        )
        per_event = collections.Counter(runs[i] for i in ids)
        fulfilments = sum(runs[e["id"]] for e in burst if e["type"] == "checkout.session.completed")
        summary = ", ".join(f"{n} run(s): {count} events" for n, count in sorted(per_event.items()))
        write(f"Receiver runs per event: {summary}")
        write(
            f"  fulfilments {fulfilments}, cancellations {sum(runs.values()) - fulfilments}, "
            f"confirmation emails sent {emails}"
        )
        write(f"Database: {connection.vendor} ({connection.settings_dict['NAME']})")
        if per_event != collections.Counter({1: len(ids)}):
            raise CommandError("Some event's receivers did not run exactly once.")
        self.stdout.write(self.style.SUCCESS(f"Every one of the {len(ids)} events was handled exactly once."))


def _events(count: int) -> list[dict[str, Any]]:
    run = secrets.token_hex(4)
    events = []
    for n in range(count):
        if n % 2 == 0:
            session = {
                "id": f"cs_demo_{run}_{n}",
                "object": "checkout.session",
                "amount_total": 1500,
                "currency": "usd",
                "customer_details": {"email": f"customer{n}@example.com"},
                "payment_status": "paid",
            }
            events.append(build_event("checkout.session.completed", data=session))
        else:
            subscription = {"id": f"sub_demo_{run}_{n}", "object": "subscription", "status": "canceled"}
            events.append(build_event("customer.subscription.deleted", data=subscription))
    return events


def _send(url: str, body: bytes, secret: str, job: _Delivery) -> None:
    """Deliver like Stripe: retry anything but a 2xx, up to a bound."""
    for _ in range(MAX_ATTEMPTS):
        request = urllib.request.Request(
            url,
            data=body,
            headers={"Content-Type": "application/json", "Stripe-Signature": sign(body, secret)},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                job.answers.append(json.loads(response.read())["status"])
                return
        except urllib.error.HTTPError as error:
            job.answers.append(json.loads(error.read()).get("status", str(error.code)))
            pause = float(error.headers.get("Retry-After") or 1)
        time.sleep(min(pause, RETRY_PAUSE_CAP_SECONDS))
