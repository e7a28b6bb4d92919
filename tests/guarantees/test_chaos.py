"""Every guarantee at once, under faults: two gunicorn instances, workers killed at random, receivers
that are slow, fail or kill their own worker, and a Stripe-like sender delivering each event several
times at once across both instances. Then two reapers at once, and exact counts from the database.

PostgreSQL and MariaDB (the example project's real database); skipped on SQLite. ``-m 'not chaos'``
leaves it out.
"""

from __future__ import annotations

import collections
import random
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from stripe_idempotency.testing import build_event, deliver_concurrently, encode, sign
from tests.servers import ROOT, Gunicorn, answer_status, app_environment, post, show

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.chaos]

SECRET = "whsec_example_local_only"  # the example project's default
EVENTS = 1200
DELIVERIES = 3  # of each event, sent at the same moment, alternating between the instances
LEASE = 2.0
SPREAD_SECONDS = 35  # events arrive over this long, each one's deliveries together
# Each delivery is tried at most this often (a quarter of them once: Stripe gave up at once).
# The load is bounded by counts, never by a clock: a busy machine sends the same requests, later.
ATTEMPTS = 25
MIX = {"slow": 0.01, "fail": 0.04, "kill": 0.02}
# By construction, not by the luck of the load: every 100th event is taken over while its
# receivers run (its run is fenced), and the first kills its worker and is delivered once,
# so it is left claimed for the reapers.
TAKEN_OVER_EVERY = 100
ABANDONED = "evt_chaos_0"


def events_with_misbehaviour(seed: int) -> list[dict]:
    rng = random.Random(seed)
    events = []
    for n in range(EVENTS):
        roll, chaos, edge = rng.random(), None, 0.0
        for kind, share in MIX.items():
            edge += share
            if roll < edge:
                chaos = kind
                break
        if n == 0:
            chaos = "kill"
        elif n % TAKEN_OVER_EVERY == 1:
            chaos = "taken_over"
        session = {
            "id": f"cs_chaos_{n}",
            "object": "checkout.session",
            "amount_total": 100 + n % 7,
            "currency": "usd",
            "customer": f"cus_chaos_{n % 25}",
            "customer_details": {"email": ""},
            "chaos": chaos,
        }
        events.append(build_event("checkout.session.completed", data=session, id=f"evt_chaos_{n}"))
    return events


@pytest.mark.only_on(
    "postgresql", "mariadb", "mysql", reason="SQLite's single writer would serialise the servers this races."
)
def test_exactly_once_under_chaos(server_database, tmp_path: Path, capsys):
    db = server_database
    events = events_with_misbehaviour(seed=7)
    bodies = {e["id"]: encode(e) for e in events}
    # Every dispatch schedules an effect that writes to this file (tests.chaos.receivers).
    outside = tmp_path / "effects-written"
    outside.touch()
    effects_env = {"CHAOS_EFFECTS_FILE": str(outside)}
    instances = [
        Gunicorn(
            db.url,
            f"instance-{n}",
            workers=3,
            log_dir=tmp_path,
            STRIPE_CLAIM_TTL_SECONDS=str(LEASE),
            **effects_env,
        )
        for n in range(2)
    ]
    answers: collections.Counter = collections.Counter()
    early_2xx: list[tuple[str, str]] = []  # a 2xx before the event's effects were committed
    lock = threading.Lock()
    stop_chaos = threading.Event()
    kills = []

    def attempt(job: list) -> float | None:
        event_id, delivery, attempts_left = job
        if attempts_left == 0:
            return None  # the sender gives up, as Stripe does in the end: the reaper has what was stored
        job[2] = attempts_left - 1
        instance = instances[delivery % 2]
        status, headers, body = post(instance.url, bodies[event_id], sign(bodies[event_id], SECRET))
        kind = answer_status(body) if status else "connection-failed"
        with lock:
            answers[(status, kind)] += 1
        if 200 <= status < 300:
            processed = db.scalar(
                "SELECT COUNT(*) FROM stripe_idempotency_stripeevent "
                "WHERE event_id = %s AND processed_at IS NOT NULL",
                [event_id],
            )
            fulfilled = db.scalar(
                "SELECT COUNT(*) FROM shop_fulfilment WHERE stripe_event_id = %s", [event_id]
            )
            if processed != 1 or fulfilled < 1:
                with lock:
                    early_2xx.append((event_id, kind))
            return None
        job[1] = delivery + 1  # the next attempt goes to the other instance
        retry_after = float(headers.get("Retry-After") or 1) if status else 0.3
        return min(retry_after, 0.5)

    def chaos_monkey() -> None:
        rng = random.Random(11)
        while not stop_chaos.wait(rng.uniform(2.0, 4.0)):
            pids = instances[rng.randrange(2)].worker_pids()
            if pids:
                pid = rng.choice(pids)
                subprocess.run(["kill", "-9", str(pid)], check=False)
                kills.append(pid)

    monkey = threading.Thread(target=chaos_monkey, daemon=True)
    try:
        monkey.start()
        # A quarter of the events get a single attempt per delivery (Stripe gave up at once),
        # so some are left for the reaper; the others are retried until done.
        jobs = [
            [e["id"], k, 1 if n % 4 == 0 else ATTEMPTS]
            for n, e in enumerate(events)
            for k in range(1 if e["id"] == ABANDONED else DELIVERIES)
        ]
        deliver_concurrently(jobs, attempt, senders=16, max_attempts=ATTEMPTS, spread=SPREAD_SECONDS)
        stop_chaos.set()
        monkey.join(10)
        assert all(instance.alive() for instance in instances)
    finally:
        stop_chaos.set()
        for instance in instances:
            instance.stop()

    # Leases of workers that died mid-dispatch run out; then two reapers start at the same moment.
    time.sleep(LEASE + 1)
    left_for_reapers = db.scalar(
        "SELECT COUNT(*) FROM stripe_idempotency_stripeevent WHERE processed_at IS NULL"
    )
    # The reapers take pending effects at once (their workers died): no grace.
    reaped = run_two_reapers(db, STRIPE_PENDING_GRACE_SECONDS="0", **effects_env)
    effects = effects_seen(db, outside)

    ledger = verify_ledger(db)
    stored, lost, runs, credits = tally(db)
    fenced = sum(instance.log.read_text().count("was lost while its receivers ran") for instance in instances)
    doubled = doubles(runs, credits)
    attempts = collections.Counter(
        dict(db.rows("SELECT attempts, COUNT(*) FROM stripe_idempotency_stripeevent GROUP BY attempts"))
    )
    misbehaving = collections.Counter(e["data"]["object"]["chaos"] for e in events)

    summary = (
        f"chaos summary: lost {lost}, doubled {doubled}, stored {stored} of {EVENTS}; "
        f"{EVENTS} events x {DELIVERIES} deliveries, {sum(answers.values())} requests; "
        f"answers {dict(sorted(answers.items()))}; workers killed by the monkey {len(kills)}; "
        f"misbehaving events {dict(misbehaving)}; attempts per event {dict(sorted(attempts.items()))}; "
        f"fenced {fenced}; left for the reapers {left_for_reapers}, reaped {reaped}; lost {lost}; "
        f"doubled {doubled}; "
        f"2xx before commit {len(early_2xx)}; "
        f"effects: {effects.completed} of {effects.stored} completed, {effects.lines} written, "
        f"{effects.written_twice} written again after a run killed or fenced between its write and "
        f"its record ({effects.unrecorded_runs} such runs), "
        f"{effects.from_rolled_back} from a rolled-back attempt, {effects.never_written} never written"
    )
    show(capsys, summary)

    assert stored == EVENTS, summary
    assert lost == 0, summary
    assert runs == {e["id"]: 1 for e in events}, summary
    assert credits == {e["data"]["object"]["id"]: 1 for e in events}, summary
    assert ledger.returncode == 0, ledger.stdout + ledger.stderr
    assert early_2xx == [], summary
    # Effects: one per event, every one run and recorded, every committed one seen outside, none
    # from an attempt that rolled back; a key written twice only by a run that never recorded.
    assert effects.stored == effects.completed == EVENTS, summary
    assert effects.never_written == 0, summary
    assert effects.from_rolled_back == 0, summary
    assert effects.written_twice == effects.unrecorded_runs, summary
    assert set(answers) <= {
        (200, "processed"),
        (200, "duplicate"),
        (500, "error"),
        (503, "busy"),
        (503, "unavailable"),
        (0, "connection-failed"),
    }, summary
    # The faults did happen: workers died, receivers failed, events needed more than one dispatch.
    assert kills, summary
    assert answers[(500, "error")] > 0, summary
    assert answers[(0, "connection-failed")] > 0, summary
    assert sum(count for n, count in attempts.items() if n > 1) > 0, summary
    # Each designed takeover fenced its run (unless the monkey killed that worker first); every
    # event left unprocessed by the load, the abandoned one at least, was processed by a reaper.
    taken_over = misbehaving["taken_over"]
    assert taken_over == EVENTS // TAKEN_OVER_EVERY
    assert fenced >= taken_over - len(kills), summary
    assert fenced > 0, summary
    assert left_for_reapers >= 1, summary
    assert reaped == left_for_reapers, summary


def run_reaper(db, instance: str, **env: str) -> int:
    """One ``reap_stale_claims --reprocess``; how many events it processed ("Reprocessed <event>:
    processed"; an event another reaper had just done is "Skipped <event>: processed meanwhile")."""
    process = reaper(db, instance, **env)
    output = process.communicate(timeout=300)
    # Exit status 1 says a reprocessed event failed again (each chaos "fail" event does, once).
    if process.returncode not in (0, 1):
        raise AssertionError(f"{instance} exited {process.returncode}: {output[0]}{output[1]}")
    return reaped_count(output)


def reaper(db, instance: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "manage.py", "reap_stale_claims", "--reprocess"],
        cwd=ROOT,
        env=app_environment(db.url, STRIPE_INSTANCE_ID=instance, STRIPE_CLAIM_TTL_SECONDS=str(LEASE), **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def reaped_count(output: tuple[str, str]) -> int:
    out, _ = output
    return sum(
        1 for line in out.splitlines() if line.startswith("Reprocessed ") and line.endswith(": processed")
    )


def run_two_reapers(db, **env: str) -> int:
    """Two reapers started at the same moment; how many events they processed, together."""
    processes = [reaper(db, f"reaper-{n}", **env) for n in range(2)]
    outputs = [process.communicate(timeout=300) for process in processes]
    for process, (out, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, out + err
    return sum(reaped_count(output) for output in outputs)


def verify_ledger(db) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", "verify_ledger", "-v", "0"],
        cwd=ROOT,
        env=app_environment(db.url),
        capture_output=True,
        text=True,
        timeout=300,
    )


def tally(db) -> tuple[int, int, dict[str, int], dict[str, int]]:
    """Events stored, events not processed, fulfilments per event, checkout credits per session."""
    stored = db.scalar("SELECT COUNT(*) FROM stripe_idempotency_stripeevent")
    lost = db.scalar("SELECT COUNT(*) FROM stripe_idempotency_stripeevent WHERE processed_at IS NULL")
    runs = dict(db.rows("SELECT stripe_event_id, COUNT(*) FROM shop_fulfilment GROUP BY stripe_event_id"))
    credits = dict(
        db.rows(
            "SELECT reference, COUNT(*) FROM stripe_idempotency_ledgerentry "
            "WHERE entry_type = 'checkout_payment' GROUP BY reference"
        )
    )
    return stored, lost, runs, credits


@dataclass(frozen=True)
class EffectsSeen:
    stored: int
    completed: int
    lines: int  # runs that wrote to the outside world
    written_twice: int  # lines past the first of each key
    unrecorded_runs: int  # lines of a run other than the one recorded as the effect's success
    from_rolled_back: int  # lines scheduled by an event attempt that did not commit
    never_written: int  # completed effects whose key is not in the file


def effects_seen(db, outside: Path) -> EffectsSeen:
    """The effects' rows beside what their runs wrote to ``outside``."""
    rows = db.rows(
        "SELECT f.idempotency_key, f.attempts, f.completed_at IS NOT NULL, e.attempts "
        "FROM stripe_idempotency_eventeffect f "
        "JOIN stripe_idempotency_stripeevent e ON e.id = f.event_id"
    )
    final_run = {key: runs for key, runs, _, _ in rows}
    committed_attempt = {key: event_attempts for key, _, _, event_attempts in rows}
    lines = [line.split() for line in outside.read_text().splitlines()]
    per_key = collections.Counter(key for key, _, _ in lines)
    return EffectsSeen(
        stored=len(rows),
        completed=sum(1 for _, _, completed, _ in rows if completed),
        lines=len(lines),
        written_twice=sum(count - 1 for count in per_key.values()),
        unrecorded_runs=sum(1 for key, _, run in lines if int(run) != final_run.get(key)),
        # The attempt that committed is the event's last: nothing runs it after it is processed.
        from_rolled_back=sum(1 for key, by, _ in lines if int(by) != committed_attempt.get(key)),
        never_written=sum(1 for key, _, completed, _ in rows if completed and key not in per_key),
    )


def doubles(runs: dict[str, int], credits: dict[str, int]) -> int:
    return sum(1 for count in runs.values() if count > 1) + sum(1 for count in credits.values() if count > 1)


DEFERRED_EVENTS = 600
DEFERRED_SPREAD_SECONDS = 20


@pytest.mark.parametrize("queue", ["table", "database", "celery"])
@pytest.mark.only_on(
    "postgresql", "mariadb", "mysql", reason="SQLite's single writer would serialise the servers this races."
)
def test_exactly_once_under_chaos_deferred(server_database, queue: str, tmp_path: Path, capsys):
    """Deferred mode: two web instances answer ``accepted``; workers (``process_stripe_events``
    with the events table as the queue, or a task queue's) run the receivers and are killed
    (``kill -9``) every few seconds, web workers too (some between COMMIT and the queue);
    every event's deliveries queue duplicate tasks, and on Celery strays are sent besides; then
    two reapers. Every event processed once."""
    from tests.workers import CeleryWorkers, DatabaseWorkers, TableWorkers

    db = server_database
    events = events_with_misbehaviour(seed=13)[:DEFERRED_EVENTS]
    bodies = {e["id"]: encode(e) for e in events}
    workers = {"table": TableWorkers, "database": DatabaseWorkers, "celery": CeleryWorkers}[queue](
        db.url, 3, tmp_path, STRIPE_CLAIM_TTL_SECONDS=str(LEASE)
    )
    instances = []
    answers: collections.Counter = collections.Counter()
    uncommitted: list[str] = []  # answered 2xx with no row behind the answer
    lock = threading.Lock()
    stop_chaos = threading.Event()
    kills = {"task": 0, "web": 0}
    strays = []
    scheduled = []  # events the scheduled reapers processed during the run
    reaper_errors: list[BaseException] = []

    def scheduled_reaper(n: int) -> None:
        # As cron would run it: every few seconds, giving each pending event 5 s for its task.
        while not stop_chaos.wait(3 + n):
            try:
                scheduled.append(run_reaper(db, f"scheduled-{n}", STRIPE_PENDING_GRACE_SECONDS="5"))
            except BaseException as error:  # the test's own thread: reported below
                reaper_errors.append(error)

    def attempt(job: list) -> float | None:
        event_id, delivery = job
        status, _, body = post(instances[delivery % 2].url, bodies[event_id], sign(bodies[event_id], SECRET))
        kind = answer_status(body) if status else "connection-failed"
        stored = db.scalar(
            "SELECT COUNT(*) FROM stripe_idempotency_stripeevent WHERE event_id = %s", [event_id]
        )
        with lock:
            answers[(status, kind)] += 1
            if 200 <= status < 300 and stored != 1:
                uncommitted.append(event_id)
        if 200 <= status < 300:
            return None
        job[1] = delivery + 1
        return 0.3

    def chaos_monkey() -> None:
        rng = random.Random(17)
        while not stop_chaos.wait(rng.uniform(1.0, 3.0)):
            web = rng.random() < 0.3
            pids = instances[rng.randrange(2)].worker_pids() if web else workers.pids()
            if pids:
                subprocess.run(["kill", "-9", str(rng.choice(pids))], check=False)
                kills["web" if web else "task"] += 1
            if isinstance(workers, CeleryWorkers):
                stray = rng.choice(events)["id"]
                workers.send(stray)
                strays.append(stray)

    monkey = threading.Thread(target=chaos_monkey, daemon=True)
    reapers = [threading.Thread(target=scheduled_reaper, args=(n,), daemon=True) for n in range(2)]
    try:
        instances.extend(
            Gunicorn(db.url, f"instance-{n}", workers=2, log_dir=tmp_path, **workers.web_env)
            for n in range(2)
        )
        monkey.start()
        for reaper in reapers:
            reaper.start()
        jobs = [[e["id"], k] for e in events for k in range(1 if e["id"] == ABANDONED else DELIVERIES)]
        deliver_concurrently(jobs, attempt, senders=12, max_attempts=10, spread=DEFERRED_SPREAD_SECONDS)
        # The queue drains while the monkey goes on.
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            waiting = db.scalar(
                "SELECT COUNT(*) FROM stripe_idempotency_stripeevent WHERE processed_at IS NULL"
            )
            if waiting == 0:
                break
            time.sleep(1)
        stop_chaos.set()
        monkey.join(10)
        for reaper in reapers:
            reaper.join(60)
    finally:
        stop_chaos.set()
        for instance in instances:
            instance.stop()
        workers.stop()

    time.sleep(LEASE + 1)
    left_for_reapers = db.scalar(
        "SELECT COUNT(*) FROM stripe_idempotency_stripeevent WHERE processed_at IS NULL"
    )
    # A failed event waits out its backoff (under a second for the first retries) before a reaper takes it.
    reaped = run_two_reapers(db, STRIPE_PENDING_GRACE_SECONDS="0")
    ledger = verify_ledger(db)
    stored, lost, runs, credits = tally(db)
    doubled = doubles(runs, credits)
    scheduled_reaps = sum(scheduled)
    summary = (
        f"deferred chaos summary ({queue}): lost {lost}, doubled {doubled}, stored {stored} of "
        f"{len(events)}; {len(events)} events x {DELIVERIES} deliveries, "
        f"{sum(answers.values())} requests; answers {dict(sorted(answers.items()))}; killed {kills}; "
        f"restarted {workers.restarts}; stray tasks {len(strays)}; left for the reapers {left_for_reapers}, "
        f"reaped {reaped} (during the run {scheduled_reaps}); lost {lost}; doubled {doubled}; "
        f"2xx before commit {len(uncommitted)}"
    )
    show(capsys, summary)

    assert reaper_errors == [], summary
    assert stored == len(events), summary
    assert lost == 0, summary
    assert runs == {e["id"]: 1 for e in events}, summary
    assert credits == {e["data"]["object"]["id"]: 1 for e in events}, summary
    assert ledger.returncode == 0, ledger.stdout + ledger.stderr
    assert uncommitted == [], summary
    assert set(answers) <= {(200, "accepted"), (200, "duplicate"), (0, "connection-failed")}, summary
    assert kills["task"] > 0, summary
    assert kills["web"] > 0, summary
    assert scheduled_reaps > 0, summary
    assert reaped == left_for_reapers, summary
