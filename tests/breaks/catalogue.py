"""The breaks: what each undoes, the edit that undoes it, and the tests that must catch it.

An edit replaces text that occurs exactly once in its file. ``backends`` are
where the break is tried (a guarantee SQLite's single writer gives for free is
tried where it is not free); ``quick`` the subset ``--quick`` tries.
"""

from __future__ import annotations

from dataclasses import dataclass

SQLITE, POSTGRES, MARIADB = "sqlite", "postgres", "mariadb"
ALL = (SQLITE, POSTGRES, MARIADB)

BASE = "stripe_idempotency/backends/base.py"
PG = "stripe_idempotency/backends/postgresql.py"
LITE = "stripe_idempotency/backends/sqlite.py"
MY = "stripe_idempotency/backends/mysql.py"
PROCESSING = "stripe_idempotency/processing.py"
LEDGER = "stripe_idempotency/ledger.py"
VERIFICATION = "stripe_idempotency/verification.py"
STORABLE = "stripe_idempotency/storable.py"
LEASES = "stripe_idempotency/leases.py"
SYNC = "stripe_idempotency/sync.py"
EFFECTS = "stripe_idempotency/effects.py"
MODELS = "stripe_idempotency/models.py"
VIEWS = "stripe_idempotency/views.py"
WORKER = "stripe_idempotency/worker.py"


@dataclass(frozen=True)
class Edit:
    path: str  # from the repository's root
    old: str  # occurs exactly once in the file
    new: str


@dataclass(frozen=True)
class Break:
    name: str
    undoes: str  # the guarantee, in a sentence
    edits: tuple[Edit, ...]
    tests: tuple[str, ...]  # pytest node ids or paths
    backends: tuple[str, ...]
    quick: tuple[str, ...] = ()


BREAKS: tuple[Break, ...] = (
    # -- the lease and the fence ------------------------------------------------------------
    Break(
        "claim-ignores-live-leases",
        "A claim takes only an unprocessed event whose lease is absent or expired.",
        (
            Edit(
                BASE,
                'CLAIMABLE = "{t}.processed_at IS NULL AND ({t}.claim_expires_at IS NULL OR '
                '{t}.claim_expires_at <= {now})"',
                'CLAIMABLE = "{t}.processed_at IS NULL"',
            ),
        ),
        ("tests/test_leases.py", "tests/test_backends.py", "tests/guarantees/test_concurrency.py"),
        (SQLITE, POSTGRES),
        quick=(SQLITE, POSTGRES),
    ),
    Break(
        "a-claim-refused-every-round-is-a-duplicate",
        "A claim refused in every round (its holder gave the row back each time) answers busy: "
        "Stripe delivers again.",
        (
            Edit(
                LEASES,
                "    return Busy(event_id=event.id, retry_after=1)\n",
                "    return Duplicate(event_id=event.id)\n",
            ),
        ),
        ("tests/test_leases.py",),
        (SQLITE,),
    ),
    Break(
        "one-claim-round",
        "A refused claim whose row looks claimable is tried three times before busy.",
        (Edit(LEASES, "_CLAIM_ROUNDS = 3\n", "_CLAIM_ROUNDS = 1\n"),),
        ("tests/test_leases.py",),
        (SQLITE,),
    ),
    Break(
        "a-takeover-keeps-the-old-created",
        "A takeover stores the new delivery's created with its body (ordering reads it).",
        (
            Edit(PG, "        created = EXCLUDED.created,\n", ""),
            Edit(LITE, "    created = excluded.created,\n", ""),
            Edit(MY, "    created = IF({claimable}, VALUES(created), created),\n", ""),
        ),
        ("tests/test_processing.py",),
        ALL,
    ),
    Break(
        "a-takeover-keeps-the-old-livemode",
        "A takeover stores the new delivery's livemode with its body.",
        (
            Edit(PG, "        livemode = EXCLUDED.livemode,\n", ""),
            Edit(LITE, "    livemode = excluded.livemode,\n", ""),
            Edit(MY, "    livemode = IF({claimable}, VALUES(livemode), livemode),\n", ""),
        ),
        ("tests/test_processing.py",),
        ALL,
    ),
    Break(
        "serialisation-failures-are-not-retried",
        "PostgreSQL's serialisation failure (40001) is retried, as a deadlock is.",
        (
            Edit(
                PG,
                '_RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})',
                '_RETRYABLE_SQLSTATES = frozenset({"40P01"})',
            ),
        ),
        ("tests/test_backends.py",),
        (POSTGRES,),
    ),
    Break(
        "database-is-locked-is-not-retried",
        'SQLite\'s "database is locked" (its busy timeout ran out behind another writer) is retried.',
        (Edit(LITE, '        return "locked" in str(error)\n', '        return "deadlock" in str(error)\n'),),
        ("tests/test_backends.py",),
        (SQLITE,),
    ),
    Break(
        "no-fence",
        "The receivers' work commits only if the claim that ran them still holds the event.",
        (Edit(BASE, "WHERE id = %(pk)s AND claim_token = %(token)s", "WHERE id = %(pk)s"),),
        ("tests/test_leases.py", "tests/test_processing.py", "tests/test_backends.py", "tests/test_views.py"),
        ALL,
        quick=(SQLITE, POSTGRES),
    ),
    Break(
        "processed-before-the-work",
        "An event is marked processed in the transaction of its receivers' work, never before.",
        (
            Edit(
                PROCESSING,
                "        with transaction.atomic(using=claimed.using):\n"
                "            later = _superseding(event)\n"
                "            with effects.dispatching(event, claimed.using) as current:\n"
                "                if later is None:\n"
                "                    dispatch(event)\n"
                "            leases.complete(claimed)\n",
                "        leases.complete(claimed)\n"
                "        with transaction.atomic(using=claimed.using):\n"
                "            later = _superseding(event)\n"
                "            with effects.dispatching(event, claimed.using) as current:\n"
                "                if later is None:\n"
                "                    dispatch(event)\n",
            ),
        ),
        ("tests/test_processing.py", "tests/test_views.py"),
        (SQLITE,),
        quick=(SQLITE,),
    ),
    Break(
        "receivers-outside-a-transaction",
        "All receivers of an event commit together, with the mark that it is processed.",
        (
            Edit(
                PROCESSING,
                "        with transaction.atomic(using=claimed.using):\n"
                "            later = _superseding(event)\n",
                "        if True:\n            later = _superseding(event)\n",
            ),
        ),
        ("tests/test_processing.py", "tests/guarantees/test_concurrency.py"),
        (SQLITE, POSTGRES),
    ),
    Break(
        "no-release-on-failure",
        "A receiver's failure gives the event back at once, with its error recorded.",
        (
            Edit(
                PROCESSING,
                "        if leases.release(claimed, error):\n",
                "        if True:\n",
            ),
        ),
        ("tests/test_processing.py", "tests/test_views.py"),
        (SQLITE,),
        quick=(SQLITE,),
    ),
    Break(
        "interrupted-dispatch-keeps-its-claim",
        "A worker interrupted mid-receiver (a timeout's SystemExit) releases its claim on the way out.",
        (
            Edit(
                PROCESSING,
                "        try:\n            leases.release(claimed, error_text(exc))\n",
                "        try:\n            pass\n",
            ),
        ),
        (
            "tests/test_processing.py",
            "tests/guarantees/test_app_servers.py::test_a_worker_killed_by_gunicorns_timeout_releases_its_claim",
        ),
        (SQLITE, POSTGRES),
    ),
    Break(
        "lease-times-from-the-python-clock",
        "Lease times come from the database's clock, which every instance shares, not each one's own.",
        (
            Edit(
                PG,
                '"ttl": ttl}',
                '"ttl": ttl, "py_now": __import__("datetime").datetime.now(__import__("datetime").UTC)}',
            ),
            Edit(
                PG,
                "{now}, {now}, %(claimed_by)s, {now} + make_interval(secs => %(ttl)s)",
                "%(py_now)s, %(py_now)s, %(claimed_by)s, %(py_now)s + make_interval(secs => %(ttl)s)",
            ),
            Edit(
                LITE,
                '"ttl": f"+{ttl:.6f} seconds"}',
                '"ttl": f"+{ttl:.6f} seconds", "py_now": __import__("datetime").datetime.utcnow()'
                '.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]}',
            ),
            Edit(
                LITE,
                "{now}, {now}, %(claimed_by)s,\n    STRFTIME('%%Y-%%m-%%d %%H:%%M:%%f', 'now', %(ttl)s)",
                "%(py_now)s, %(py_now)s, %(claimed_by)s,\n"
                "    STRFTIME('%%Y-%%m-%%d %%H:%%M:%%f', %(py_now)s, %(ttl)s)",
            ),
            Edit(
                MY,
                '"ttl_us": round(ttl * 1_000_000)}',
                '"ttl_us": round(ttl * 1_000_000), "py_now": __import__("datetime").datetime.utcnow()}',
            ),
            Edit(
                MY,
                "    {now}, {now}, %(claimed_by)s, {now} + INTERVAL %(ttl_us)s MICROSECOND,",
                "    %(py_now)s, %(py_now)s, %(claimed_by)s, %(py_now)s + INTERVAL %(ttl_us)s MICROSECOND,",
            ),
        ),
        ("tests/test_leases.py",),
        ALL,
    ),
    Break(
        "reaper-takes-live-claims",
        "The reaper leaves an event under a live lease to the instance that holds it.",
        (
            Edit(
                MODELS,
                '        return self.without_live_lease().filter(**{f"{done}__isnull": True})\n',
                '        return self.filter(**{f"{done}__isnull": True})\n',
            ),
        ),
        ("tests/test_reap_stale_claims.py", "tests/test_factories.py", "tests/test_admin.py"),
        (SQLITE,),
    ),
    Break(
        "reaper-ignores-the-backoff",
        "The reaper waits out a failed event's backoff; Stripe's own retries do not.",
        (
            Edit(
                "stripe_idempotency/leases.py",
                "            | Q(next_attempt_at__lte=Now())\n",
                "            | Q(next_attempt_at__gt=Now())\n",
            ),
        ),
        ("tests/test_reap_stale_claims.py",),
        (SQLITE,),
    ),
    Break(
        "min-age-skips-lost-tasks",
        "The reaper's --min-age ages an accepted event never claimed from its arrival, so a lost "
        "task's event is taken once it is that old.",
        (
            Edit(
                LEASES,
                "Q(claimed_at__lte=since) | Q(claimed_at__isnull=True, received_at__lte=since)",
                "Q(claimed_at__lte=since)",
            ),
        ),
        ("tests/test_deferred.py",),
        (SQLITE,),
    ),
    Break(
        "dead-events-refuse-deliveries",
        "A dead event stops the reaper only: Stripe's next delivery still claims and processes it.",
        (
            Edit(
                BASE,
                'CLAIMABLE = "{t}.processed_at IS NULL AND (',
                'CLAIMABLE = "{t}.attempts < 3 AND {t}.processed_at IS NULL AND (',
            ),
        ),
        ("tests/test_reap_stale_claims.py",),
        (SQLITE, POSTGRES),
    ),
    Break(
        "the-catch-up-reads-one-page",
        "The catch-up lists every event of a window, page after page, through has_more and the "
        "last id of each page.",
        (Edit(SYNC, '        params["starting_after"] = entries[-1]["id"]\n', "        return\n"),),
        ("tests/test_sync_stripe_events.py",),
        (SQLITE,),
    ),
    Break(
        "the-catch-up-s-cursor-is-the-first-id",
        "The catch-up's cursor is the last id of the page it read, so nothing is listed twice or skipped.",
        (
            Edit(
                SYNC,
                'params["starting_after"] = entries[-1]["id"]',
                'params["starting_after"] = entries[0]["id"]',
            ),
        ),
        ("tests/test_sync_stripe_events.py",),
        (SQLITE,),
    ),
    Break(
        "the-sync-watermark-moves-back",
        "The catch-up's watermark only moves forward: a run over an older range leaves it.",
        (
            Edit(SYNC, "    if not created and mark.synced_until < to:\n", "    if not created:\n"),
            Edit(SYNC, "filter(pk=mark.pk, synced_until__lt=to)", "filter(pk=mark.pk)"),
        ),
        ("tests/test_sync_stripe_events.py",),
        (SQLITE,),
    ),
    Break(
        "the-prune-watermark-moves-back",
        "The prune's cutoff only moves forward: a run with a longer horizon leaves it.",
        (Edit("stripe_idempotency/retention.py", "    elif mark.pruned_before < before:\n", "    else:\n"),),
        ("tests/test_prune_stripe_events.py",),
        (SQLITE,),
    ),
    Break(
        "an-unprocessed-later-event-supersedes",
        "Only a later event that is processed supersedes: one pending or failing has changed nothing yet.",
        (
            Edit(
                MODELS,
                ".filter(created__gte=_next_second(event.created), processed_at__isnull=False)",
                ".filter(created__gte=_next_second(event.created))",
            ),
        ),
        ("tests/test_ordering.py",),
        (SQLITE,),
    ),
    Break(
        "an-event-with-no-created-crashes-the-supersede-check",
        "An event with no created is never superseded, and runs.",
        (Edit(MODELS, "        if event.created is None:\n            return self.none()\n", ""),),
        ("tests/test_ordering.py",),
        (SQLITE,),
    ),
    Break(
        "verify-ledger-skips-balances-without-entries",
        "verify_ledger checks every balance row, those with no entry included.",
        (
            Edit(
                LEDGER,
                "    for (row_account, row_currency), balance in sorted(balances.items()):\n"
                "        # Balances with no entry at all: fine at zero (a refused first debit writes none).\n"
                "        yield AccountCheck(row_account, row_currency, 0, balance, 0, None)\n",
                "",
            ),
        ),
        ("tests/test_verify_ledger.py",),
        (SQLITE,),
    ),
    Break(
        "verify-ledger-reads-a-missing-balance-as-zero",
        "verify_ledger flags entries with no balance row, even when they sum to zero.",
        (
            Edit(
                LEDGER,
                "            and self.chain_break is None\n"
                "            and (self.balance is not None or self.entries == 0)\n",
                "            and self.chain_break is None\n",
            ),
        ),
        ("tests/test_verify_ledger.py",),
        (SQLITE,),
    ),
    Break(
        "a-body-of-exactly-the-limit-is-refused",
        "A body of exactly MAX_BODY_BYTES is accepted, declared or read to its end.",
        (
            Edit(
                VIEWS,
                "too_large = declared is not None and int(declared) > limit",
                "too_large = declared is not None and int(declared) >= limit",
            ),
            Edit(VIEWS, "    if len(body) > limit:\n", "    if len(body) >= limit:\n"),
        ),
        ("tests/test_views.py",),
        (SQLITE,),
    ),
    Break(
        "a-lost-connection-is-an-html-500",
        "A connection lost mid-request (the driver's InterfaceError) is a JSON 503 unavailable.",
        (
            Edit(
                VIEWS,
                "        except (OperationalError, InterfaceError) as error:\n",
                "        except OperationalError as error:\n",
            ),
        ),
        ("tests/test_views.py",),
        (SQLITE,),
    ),
    Break(
        "a-task-for-a-pruned-event-crashes",
        "A task for an event pruned meanwhile ends quietly, reporting it missing.",
        (Edit("stripe_idempotency/tasks.py", '    if event is None:\n        return "missing"\n', ""),),
        ("tests/test_deferred.py",),
        (SQLITE,),
    ),
    Break(
        "the-task-looks-in-default",
        "A deferred event's task names the database the event lives in, not default.",
        (
            Edit(
                PROCESSING,
                "        queueing.enqueue(event.id, using)\n",
                '        queueing.enqueue(event.id, "default")\n',
            ),
        ),
        ("tests/test_databases.py",),
        (SQLITE,),
    ),
    Break(
        "prune-ignores-a-project-s-foreign-keys",
        "Pruning sends a batch through Django's collector when a project's own model refers to "
        "events, so its on_delete applies.",
        (
            Edit(
                "stripe_idempotency/retention.py",
                "    return not listened and all(\n"
                "        relation.related_model in (LedgerEntry, EventEffect) for relation in relations\n"
                "    )\n",
                "    return not listened\n",
            ),
        ),
        ("tests/test_prune_stripe_events.py",),
        (SQLITE, POSTGRES),
    ),
    Break(
        "prune-refuses-exactly-three-days",
        "A horizon of exactly Stripe's three days of retries is accepted.",
        (
            Edit(
                "stripe_idempotency/retention.py",
                "    if older_than < STRIPE_RETRY_WINDOW:\n",
                "    if older_than <= STRIPE_RETRY_WINDOW:\n",
            ),
        ),
        ("tests/test_prune_stripe_events.py",),
        (SQLITE,),
    ),
    Break(
        "no-giving-way",
        "Two events of one object (ORDERING) never run at once: the later claim gives way.",
        (
            Edit(
                LEASES,
                "if event.object_id is None or ordering.mode_for(event.type) is None:",
                "if True:",
            ),
        ),
        ("tests/test_ordering.py",),
        (POSTGRES,),
    ),
    Break(
        "giving-way-counts-an-attempt",
        "An event that gives way to another of its object (ORDERING) counts no attempt and keeps "
        "its error: it never ran.",
        (Edit(LEASES, '        attempts=F("attempts") - 1,\n', ""),),
        ("tests/test_ordering.py",),
        (SQLITE, POSTGRES),
    ),
    Break(
        "enqueue-is-ignored",
        "ENQUEUE names the callable that queues a deferred event, in place of Django's Tasks.",
        (
            Edit(
                "stripe_idempotency/queueing.py",
                "        _enqueue_callable(app_settings.ENQUEUE)(event_id, database)\n",
                '        import_string("stripe_idempotency.tasks.enqueue_django_task")(event_id, database)\n',
            ),
        ),
        ("tests/test_deferred.py",),
        (SQLITE,),
    ),
    Break(
        "only-the-first-secret",
        "While secrets roll, a body signed with any of WEBHOOK_SECRETS is accepted.",
        (Edit(VERIFICATION, "    for secret in secrets:\n", "    for secret in secrets[:1]:\n"),),
        ("tests/test_views.py",),
        (SQLITE,),
    ),
    Break(
        "reaper-ignores-the-pending-grace",
        "In deferred mode the reaper leaves an accepted event to its task for PENDING_GRACE_SECONDS.",
        (
            Edit(
                "stripe_idempotency/leases.py",
                "        .exclude(claimed_at__isnull=True, received_at__gt=Now() - grace)\n",
                "",
            ),
        ),
        ("tests/test_deferred.py",),
        (SQLITE,),
    ),
    Break(
        "refused-task-is-a-500",
        "A queue that refuses the task (its broker down) loses nothing: the stored event is accepted.",
        (
            Edit(
                "stripe_idempotency/queueing.py",
                "    except Exception:\n        logger.exception(",
                "    except ZeroDivisionError:\n        logger.exception(",
            ),
        ),
        ("tests/test_deferred.py",),
        (SQLITE,),
    ),
    Break(
        "reaper-never-takes-a-pending-event",
        "An accepted event whose task never came (the process died after COMMIT) is the reaper's.",
        (
            Edit(
                "stripe_idempotency/leases.py",
                "        .exclude(claimed_at__isnull=True, received_at__gt=Now() - grace)\n",
                "        .exclude(claimed_at__isnull=True)\n",
            ),
        ),
        (
            "tests/test_deferred.py",
            "tests/guarantees/test_workers.py::test_an_event_whose_task_was_never_queued_is_processed_once_by_the_reaper",
        ),
        (SQLITE, POSTGRES),
    ),
    Break(
        "task-runs-without-a-claim",
        "A task runs the receivers only under the event's claim: a task delivered twice, or two "
        "workers racing, commit them once.",
        (
            Edit(
                "stripe_idempotency/tasks.py",
                "    return outcomes.report(processing.reprocess(event, using=database)).status\n",
                '    processing.dispatch(event)\n    return "processed"\n',
            ),
        ),
        (
            "tests/test_deferred.py",
            "tests/guarantees/test_workers.py::test_each_accepted_event_is_processed_once_by_the_workers",
        ),
        (SQLITE, POSTGRES),
        quick=(POSTGRES,),
    ),
    Break(
        "processed-announced-inside-the-transaction",
        "event_processed is sent once the work is committed, never from inside the transaction.",
        (
            Edit(
                PROCESSING,
                "            _guard_commit_callbacks(connections[claimed.using], event, callback_failures)\n",
                "            _guard_commit_callbacks(connections[claimed.using], event, callback_failures)\n"
                "            announce(event_processed, StripeEvent, event=event)\n",
            ),
            Edit(
                PROCESSING,
                "        _record_callback_failures(claimed, callback_failures)\n"
                "    announce(event_processed, StripeEvent, event=event)\n",
                "        _record_callback_failures(claimed, callback_failures)\n",
            ),
        ),
        ("tests/test_signals.py",),
        (SQLITE,),
    ),
    Break(
        "status-lag-outside-the-window",
        "stripe_events_status measures the lag over the events processed within --window only.",
        (
            Edit(
                "stripe_idempotency/status.py",
                "in_window = StripeEvent.objects.using(using).filter(processed_at__gte=Now() - window)",
                "in_window = StripeEvent.objects.using(using).filter(processed_at__isnull=False)",
            ),
        ),
        ("tests/test_stripe_events_status.py",),
        (SQLITE,),
    ),
    # -- the ledger -------------------------------------------------------------------------
    Break(
        "ledger-balance-before-the-entry",
        "A balance moves only with an entry written: a repeated reference moves nothing.",
        (
            Edit(
                LEDGER,
                "        entry.balance_after = balance_after\n        if not backend.insert_entry(entry):",
                "        entry.balance_after = balance_after\n"
                "        balances.objects.using(using).filter(pk=row.pk).update(balance=balance_after)\n"
                "        if not backend.insert_entry(entry):",
            ),
            Edit(
                LEDGER,
                "        balances.objects.using(using).filter(pk=row.pk).update("
                "balance=balance_after, updated_at=Now())\n",
                "",
            ),
        ),
        ("tests/test_ledger.py", "tests/test_verify_ledger.py"),
        ALL,
        quick=(SQLITE, POSTGRES),
    ),
    Break(
        "no-balance-lock",
        "Writers to one balance queue on its row lock: no credit or debit is lost to a race.",
        (
            Edit(
                LEDGER,
                "locked = balances.objects.using(using).select_for_update()",
                "locked = balances.objects.using(using)",
            ),
            Edit(PG, ' AND {currency} = %s FOR UPDATE"', ' AND {currency} = %s"'),
        ),
        ("tests/guarantees/test_ledger_concurrency.py", "tests/test_ledger.py"),
        (POSTGRES, MARIADB),
    ),
    Break(
        "ledger-retry-loop-removed",
        "A ledger operation that owns its transaction runs it again when the database asks.",
        (
            Edit(
                LEDGER,
                "if attempt == _ATTEMPTS - 1 or not backend.is_retryable(exc):",
                "if True:",
            ),
        ),
        ("tests/test_ledger.py", "tests/guarantees/test_ledger_concurrency.py", "tests/test_backends.py"),
        (POSTGRES, MARIADB),
        quick=(POSTGRES,),
    ),
    Break(
        "mysql-deadlocks-not-retryable",
        "MySQL and MariaDB's deadlock (1213) and lock wait timeout (1205) are retried, not raised.",
        (
            Edit(
                MY,
                "return bool(error.args) and error.args[0] in (LOCK_WAIT_TIMEOUT, DEADLOCK)",
                "return False",
            ),
        ),
        ("tests/test_backends.py", "tests/guarantees/test_ledger_concurrency.py"),
        (MARIADB,),
    ),
    Break(
        "mariadb-claim-waits-for-locks",
        "On MariaDB a claim never queues for a row another transaction holds: it is answered busy.",
        (
            Edit(
                MY,
                'template = "SET STATEMENT innodb_lock_wait_timeout=0 FOR " + template',
                "template = template",
            ),
        ),
        ("tests/test_backends.py",),
        (MARIADB,),
    ),
    Break(
        "mariadb-duplicate-upserts-without-reading",
        "On MariaDB a duplicate never queues behind a receiver's lock on its row: it is answered from a "
        "plain read, or its upsert gives up at once (either alone holds it).",
        (
            Edit(
                MY,
                "                    if existing is not None and _refused(model, existing):\n"
                "                        return existing\n",
                "",
            ),
            Edit(
                MY,
                'template = "SET STATEMENT innodb_lock_wait_timeout=0 FOR " + template',
                "template = template",
            ),
        ),
        (
            "tests/guarantees/test_concurrency.py::"
            "test_a_duplicate_arriving_while_the_receivers_hold_a_foreign_key_does_not_deadlock",
            "tests/test_backends.py::test_a_mariadb_claim_never_waits_for_a_row_another_transaction_holds",
        ),
        (MARIADB,),
    ),
    Break(
        "mysql-balance-row-insert-ignore",
        "First writers to a new account never deadlock inside receivers' transactions on MariaDB.",
        (
            Edit(
                MY,
                'f"INSERT INTO {self.connection.ops.quote_name(model._meta.db_table)} "',
                'f"INSERT IGNORE INTO {self.connection.ops.quote_name(model._meta.db_table)} "',
            ),
            Edit(MY, 'f"ON DUPLICATE KEY UPDATE {balance} = {balance}"', '""'),
        ),
        (
            "tests/guarantees/test_ledger_concurrency.py::"
            "test_first_credits_to_new_accounts_in_callers_transactions_never_deadlock",
        ),
        (MARIADB,),
    ),
    Break(
        "one-statement-debit-overdraws",
        "A debit never takes a balance below zero unless allowed, in PostgreSQL's one statement too.",
        (
            Edit(
                PG,
                "FROM locked WHERE %s OR locked.{balance} + %s >= 0",
                "FROM locked WHERE %s OR %s IS NOT NULL",
            ),
        ),
        ("tests/test_ledger.py", "tests/guarantees/test_ledger_concurrency.py"),
        (POSTGRES,),
    ),
    # -- the edges (issue 12) ---------------------------------------------------------------
    Break(
        "nul-and-surrogates-accepted",
        "An authentic body holding NUL or a lone surrogate is refused by name, not a 500 with no row.",
        (
            Edit(
                STORABLE,
                'if "\\\\u" in text and _holds_unstorable_text(value):',
                "if False:",
            ),
            Edit(STORABLE, "    if _holds_unstorable_text(value):\n", "    if False:\n"),
        ),
        ("tests/test_verification.py", "tests/test_ledger.py"),
        (SQLITE, POSTGRES),
        quick=(POSTGRES,),
    ),
    Break(
        "non-finite-numbers-accepted",
        "An authentic body holding NaN, Infinity or 1e999 is refused by name on every backend.",
        (
            Edit(
                STORABLE,
                "json.loads(text, parse_constant=_non_finite_constant, parse_float=_float)",
                "json.loads(text)",
            ),
        ),
        ("tests/test_verification.py",),
        (SQLITE, POSTGRES),
    ),
    Break(
        "depth-unchecked",
        "An authentic body nested past what MariaDB's JSON check takes is refused by name.",
        (
            Edit(
                STORABLE,
                'if text.count("{") + text.count("[") > MAX_DEPTH and _deeper_than(value, MAX_DEPTH):',
                "if False:",
            ),
            Edit(STORABLE, "    if _deeper_than(value, MAX_DEPTH):\n", "    if False:\n"),
        ),
        ("tests/test_verification.py", "tests/test_ledger.py"),
        (SQLITE, MARIADB),
    ),
    Break(
        "long-api-version-accepted",
        "An api_version longer than its column is refused by name, not a database error.",
        (
            Edit(
                "stripe_idempotency/events.py",
                "if isinstance(api_version, str) and len(api_version) > API_VERSION_MAX_LENGTH:",
                "if False:",
            ),
        ),
        ("tests/test_verification.py",),
        (POSTGRES,),
    ),
    Break(
        "lenient-decoding",
        "A body that is not UTF-8 is refused before its signature is checked (Stripe signs UTF-8).",
        (
            Edit(
                VERIFICATION,
                'raise WebhookRejected("invalid_encoding", "The body is not UTF-8.") from None',
                'text = body.decode("latin-1")',
            ),
        ),
        ("tests/test_verification.py",),
        (SQLITE,),
    ),
    Break(
        "future-signatures-accepted",
        "A signature timestamped in the future is held to the tolerance, as an old one is.",
        (Edit(VERIFICATION, "if timestamp > time.time() + tolerance:", "if False:"),),
        ("tests/test_verification.py",),
        (SQLITE,),
        quick=(SQLITE,),
    ),
    Break(
        "on-commit-failure-escapes",
        "A failing on_commit callback cannot turn a committed event into a 500 or stop the others.",
        (
            Edit(
                PROCESSING,
                "            _guard_commit_callbacks(connections[claimed.using], event, callback_failures)\n",
                "",
            ),
        ),
        ("tests/test_processing.py",),
        (SQLITE,),
    ),
    Break(
        "takeover-keeps-the-old-body",
        "A takeover stores the body it processes: the row holds what its receivers acted on.",
        (
            Edit(PG, "        payload = EXCLUDED.payload,\n", ""),
            Edit(LITE, "    payload = excluded.payload,\n", ""),
            Edit(MY, "    payload = IF({claimable}, VALUES(payload), payload),\n", ""),
        ),
        ("tests/test_processing.py",),
        ALL,
    ),
    Break(
        "identifiers-compare-as-text",
        "On MariaDB, 'cus_Alice' and 'cus_alice', 'ref' and 'ref ' are different accounts and events.",
        (
            Edit(
                "stripe_idempotency/migrations/0003_binary_identifiers.py",
                "migrations.RunPython(make_identifiers_binary, migrations.RunPython.noop, atomic=False)",
                "migrations.RunPython(migrations.RunPython.noop, migrations.RunPython.noop, atomic=False)",
            ),
        ),
        ("tests/test_identifiers.py",),
        (MARIADB,),
    ),
    Break(
        "ledger-arguments-unchecked",
        "Metadata a database would refuse raises InvalidLedgerEntry before any SQL.",
        (
            Edit(
                LEDGER,
                'checked before any SQL runs."""\n',
                'checked before any SQL runs."""\n    return metadata\n',
            ),
        ),
        ("tests/test_ledger.py",),
        (POSTGRES,),
    ),
    Break(
        "database-refusal-is-a-500",
        "Any refusal of the database's while receiving is a JSON 503 Stripe retries, not an HTML 500.",
        (
            Edit(
                "stripe_idempotency/views.py",
                "        except DatabaseError:\n",
                "        except ZeroDivisionError:\n",
            ),
        ),
        ("tests/guarantees/test_faults.py",),
        (POSTGRES,),
    ),
    Break(
        "unsupported-database-is-a-500",
        "A delivery to a database without a backend is a JSON 503, not a traceback page.",
        (
            Edit(
                "stripe_idempotency/views.py",
                "        except UnsupportedDatabase as error:\n",
                "        except ZeroDivisionError as error:\n",
            ),
        ),
        ("tests/test_checks.py",),
        (SQLITE,),
    ),
    Break(
        "test-mode-endpoint-takes-live-events",
        "LIVEMODE=False ignores live events, as LIVEMODE=True ignores test ones: nothing stored.",
        (
            Edit(
                "stripe_idempotency/endpoints.py",
                "return self.livemode is None or self.livemode is livemode",
                "return self.livemode is not False or self.livemode is livemode",
            ),
        ),
        ("tests/test_views.py", "tests/test_endpoints.py"),
        (SQLITE,),
    ),
    Break(
        "livemode-policy-left-to-the-caller",
        "An endpoint's whole policy applies to the catch-up as to a delivery: the other mode is ignored.",
        (
            Edit(
                VERIFICATION,
                "    if not endpoint.accepts_livemode(event.livemode):\n"
                '        raise EventIgnored(event, "livemode_mismatch")\n',
                "",
            ),
        ),
        (
            "tests/test_endpoints.py",
            "tests/test_sync_stripe_events.py::test_an_endpoint_s_live_mode_and_name_apply",
        ),
        (SQLITE,),
    ),
    Break(
        "events-with-money-deletable",
        "An event that ledger entries point at cannot be deleted: the money trail outlives clean-ups.",
        (
            Edit(
                MODELS,
                "on_delete=models.PROTECT,  # the money trail",
                "on_delete=models.CASCADE,  # the money trail",
            ),
        ),
        ("tests/test_ledger.py",),
        (SQLITE,),
    ),
    Break(
        "commands-ignore-the-router",
        "The commands act on the database a router puts events in, unless told another.",
        (
            Edit(
                "stripe_idempotency/management/options.py",
                "    return database or router.db_for_write(StripeEvent)\n",
                '    return database or "default"\n',
            ),
        ),
        ("tests/test_databases.py",),
        (SQLITE,),
    ),
    # -- endpoints and thin events -----------------------------------------------------------
    Break(
        "secrets-shared-across-endpoints",
        "An event signed with one endpoint's secret is refused on every other endpoint.",
        (
            Edit(
                VERIFICATION,
                "    _verify_signature(text, signature_header, endpoint.secrets)\n",
                "    every = tuple(s for e in endpoints.endpoints() for s in e.secrets)\n"
                "    _verify_signature(text, signature_header, every)\n",
            ),
        ),
        ("tests/test_endpoints.py",),
        (SQLITE,),
    ),
    Break(
        "thin-event-apart-from-its-snapshot",
        "A thin event naming its snapshot_event is processed once together with that snapshot event.",
        (
            Edit(
                "stripe_idempotency/events.py",
                "            id=snapshot_event or event_id,\n",
                "            id=event_id,\n",
            ),
        ),
        ("tests/test_thin_events.py",),
        (SQLITE, POSTGRES),
    ),
    Break(
        "prune-inside-stripe-s-retries",
        "Pruning refuses a horizon shorter than Stripe's three days of retries.",
        (
            Edit(
                "stripe_idempotency/retention.py",
                "STRIPE_RETRY_WINDOW = timedelta(days=3)",
                "STRIPE_RETRY_WINDOW = timedelta(0)",
            ),
        ),
        ("tests/test_prune_stripe_events.py",),
        (SQLITE,),
    ),
    Break(
        "prune-deletes-what-the-ledger-refers-to",
        "Pruning keeps every event a ledger entry refers to, and deletes the rest of its batch.",
        (
            Edit(
                "stripe_idempotency/retention.py",
                "        .filter(~_in_the_ledger(using))\n",
                "",
            ),
        ),
        ("tests/test_prune_stripe_events.py",),
        (SQLITE, POSTGRES, MARIADB),
    ),
    Break(
        "prune-batches-past-their-size",
        "A pruning batch deletes at most --batch-size events, however many share a processed_at.",
        (
            Edit(
                "stripe_idempotency/retention.py",
                " & (Q(processed_at__lt=at) | Q(processed_at=at, pk__lte=pk))\n",
                "\n",
            ),
        ),
        ("tests/test_prune_stripe_events.py",),
        (SQLITE,),
    ),
    # -- ordering ---------------------------------------------------------------------------
    Break(
        "ordered-events-of-one-object-run-at-once",
        "Two events of an ORDERING type about one object never run at once.",
        (
            Edit(
                "stripe_idempotency/leases.py",
                "            return give_way(claimed) or claimed\n",
                "            return claimed\n",
            ),
        ),
        ("tests/test_ordering.py",),
        (POSTGRES, MARIADB),
    ),
    Break(
        "superseded-events-run-their-receivers",
        "An event a later processed event of its object supersedes is completed without its receivers.",
        (
            Edit(
                PROCESSING,
                '    if ordering.mode_for(event.type) != "skip_superseded":\n',
                "    if True:\n",
            ),
        ),
        ("tests/test_ordering.py",),
        (SQLITE,),
    ),
    # -- catching up from the Events API ------------------------------------------------------
    Break(
        "sync-runs-without-a-claim",
        "A sync feeds events through the delivery's claim: a sync and a delivery never both run one.",
        (
            Edit(
                "stripe_idempotency/sync.py",
                "    outcome = processing.receive(event, using=using, mode=endpoint.processing)\n",
                "    row, _ = StripeEvent.objects.using(using).get_or_create(\n"
                "        event_id=event.id,\n"
                "        defaults={'type': event.type, 'payload': event.payload, 'created': event.created},\n"
                "    )\n"
                "    processing.dispatch(row)\n"
                "    done = StripeEvent.objects.using(using).filter(pk=row.pk)\n"
                "    done.update(processed_at=timezone.now(), attempts=1)\n"
                "    outcome = outcomes.Processed(event=row)\n",
            ),
        ),
        ("tests/test_sync_stripe_events.py",),
        (SQLITE, POSTGRES),
    ),
    Break(
        "sync-lists-pruned-events",
        "A sync never lists an event created before the last prune's cutoff (it would run again).",
        (
            Edit(
                SYNC,
                "    return forgotten if forgotten is not None and since < forgotten else since\n",
                "    return since\n",
            ),
        ),
        ("tests/test_sync_stripe_events.py",),
        (SQLITE,),
    ),
    # -- the third round of defects: each fix undone ------------------------------------------
    Break(
        "sync-advances-after-a-filtered-listing",
        "A sync of some types never moves the watermark past the events of other types it did not list.",
        (
            Edit(
                "stripe_idempotency/sync.py",
                "    may_advance = not dry_run and not types\n",
                "    may_advance = not dry_run\n",
            ),
        ),
        (
            "tests/test_sync_stripe_events.py::test_a_run_of_some_types_leaves_the_watermark_for_the_scheduled_run",
        ),
        (SQLITE,),
        quick=(SQLITE,),
    ),
    Break(
        "signature-timestamp-read-twice",
        "The timestamp held to the tolerance is the one the signature was verified with.",
        (
            Edit(
                VERIFICATION,
                '    canonical = ",".join([f"t={timestamp}", '
                '*(f"{SCHEME}={signature}" for signature in signatures)])\n',
                "    canonical = header\n"
                '    timestamp = int(next(i.strip().partition("=")[2] for i in header.split(",") '
                'if i.strip().startswith("t=")))\n',
            ),
            Edit(
                VERIFICATION,
                "    if len(timestamps) != 1 or not _TIMESTAMP.fullmatch(timestamps[0]):\n",
                "    if not timestamps:\n",
            ),
            Edit(VERIFICATION, "    return int(timestamps[0]), signatures\n", "    return 0, signatures\n"),
        ),
        (
            "tests/test_verification.py::test_a_body_signed_ahead_cannot_hide_its_timestamp_behind_a_decoy",
            "tests/test_verification.py::test_any_arrangement_of_a_header_is_judged_on_the_timestamp_it_was_signed_with",
        ),
        (SQLITE,),
    ),
    Break(
        "thin-event-context-unchecked",
        "A thin event whose context is not a connected account id is refused by name, nothing stored.",
        (
            Edit(
                "stripe_idempotency/events.py",
                "        if context is not None and not _token(context):\n",
                "        if False:\n",
            ),
        ),
        ("tests/test_verification.py::test_a_thin_event_whose_context_is_not_a_string_is_refused",),
        (SQLITE,),
    ),
    Break(
        "enqueue-without-a-deadline",
        "A broker that never answers holds no deferred delivery past ENQUEUE_TIMEOUT_SECONDS.",
        (
            Edit(
                "stripe_idempotency/queueing.py",
                "        submitted.result(timeout=timeout)\n",
                "        submitted.result()\n",
            ),
        ),
        ("tests/test_deferred.py::test_a_broker_that_never_answers_holds_no_delivery_past_its_deadline",),
        (SQLITE,),
    ),
    Break(
        "enqueue-holds-the-process-at-exit",
        "A publish hung on a dead broker never keeps a process (a cron command, a worker) from exiting.",
        (
            Edit(
                "stripe_idempotency/threads.py",
                'name=f"{self._name}_{n}", daemon=True',
                'name=f"{self._name}_{n}", daemon=False',
            ),
        ),
        ("tests/test_deferred.py::test_a_publish_hung_on_the_broker_does_not_hold_the_process_at_exit",),
        (SQLITE,),
    ),
    Break(
        "durations-unbounded",
        "A duration or count past its bound is a 400 JSON or a CommandError, never a 500 or a traceback.",
        (
            Edit(
                "stripe_idempotency/durations.py",
                "    if seconds > MAX_DURATION.total_seconds():\n",
                "    if False:\n",
            ),
            Edit(
                "stripe_idempotency/durations.py",
                '_DURATION = re.compile(r"\\s*([0-9]{1,12}(?:\\.[0-9]{1,6})?)\\s*([smhd]?)\\s*", re.ASCII)\n',
                '_DURATION = re.compile(r"\\s*(\\d+(?:\\.\\d+)?)\\s*([smhd]?)\\s*")\n',
            ),
        ),
        ("tests/test_health.py", "tests/test_stripe_events_status.py", "tests/test_durations.py"),
        (SQLITE, POSTGRES),
    ),
    Break(
        "misspelt-event-types-unchecked",
        "A receiver connected to a type Stripe never sends is a system check warning.",
        (
            Edit(
                "stripe_idempotency/checks.py",
                "        if event_type in known or event_type in extra:\n",
                "        if True:\n",
            ),
        ),
        ("tests/test_checks.py",),
        (SQLITE,),
    ),
    Break(
        "reaper-blind-to-waiting-and-dead",
        "Every reaper run reports dead events and failed ones waiting, and exits 1 while one is dead.",
        (
            Edit(
                "stripe_idempotency/leases.py",
                "            | Q(attempts__gte=app_settings.MAX_ATTEMPTS)\n",
                "",
            ),
            Edit(
                WORKER,
                'events["failed"] or left.dead or effects["failed"]',
                'events["failed"] or events["dead"] or effects["failed"]',
            ),
            Edit(
                "stripe_idempotency/management/commands/reap_stale_claims.py",
                "        if left.dead:\n",
                "        if False:\n",
            ),
        ),
        ("tests/test_reap_stale_claims.py",),
        (SQLITE,),
        quick=(SQLITE,),
    ),
    Break(
        "viewers-can-reprocess",
        "Only users who may change events can reprocess them from the admin.",
        (
            Edit(
                "stripe_idempotency/admin.py",
                '.change_stripeevent")',
                '.view_stripeevent")',
            ),
        ),
        ("tests/test_admin.py",),
        (SQLITE,),
    ),
    Break(
        "invalid-setting-read-as-it-is",
        "A setting its declaration refuses is a check error and a 503 when read, never a silent fallback.",
        (Edit("stripe_idempotency/conf.py", "        if problem is not None:\n", "        if False:\n"),),
        ("tests/test_conf.py", "tests/test_views.py"),
        (SQLITE,),
    ),
    # -- effects ------------------------------------------------------------------------------
    Break(
        "effect-runs-without-a-claim",
        "Two runs of one effect never overlap: each claims the effect first.",
        (
            Edit(
                EFFECTS,
                "    token = leases.take(EventEffect, row.pk, using=using, dead_too=dead_too)\n",
                "    token = leases.take(EventEffect, row.pk, using=using, dead_too=True) or uuid.uuid4()\n",
            ),
            Edit(EFFECTS, "import functools\n", "import functools\nimport uuid\n"),
        ),
        ("tests/test_effects.py::test_two_runs_of_one_effect_at_once_call_it_once",),
        (SQLITE, POSTGRES, MARIADB),
    ),
    Break(
        "effect-claim-ignores-live-leases",
        "An effect's claim takes it only when it is not done and under no live lease.",
        (
            Edit(
                BASE,
                "WHERE id = %(pk)s AND {done} IS NULL AND "
                "(claim_expires_at IS NULL OR claim_expires_at <= {now})\n",
                "WHERE id = %(pk)s AND {done} IS NULL\n",
            ),
        ),
        ("tests/test_backends.py", "tests/test_effects.py"),
        (SQLITE, POSTGRES),
    ),
    Break(
        "effect-success-unfenced",
        "A run whose lease was taken over does not record the effect as done.",
        (
            Edit(
                EFFECTS,
                "    if leases.complete_row(EventEffect, row.pk, token, using=using):\n",
                "    if EventEffect.objects.using(using).filter(pk=row.pk).update(completed_at=Now()):\n",
            ),
        ),
        ("tests/test_effects.py::test_a_run_whose_lease_was_taken_over_is_not_recorded",),
        (SQLITE, POSTGRES),
    ),
    Break(
        "effects-run-inside-the-transaction",
        "Effects run after the receivers' transaction commits, never inside it.",
        (
            Edit(
                PROCESSING,
                "                    dispatch(event)\n",
                "                    dispatch(event)\n                effects.start(current.stored)\n",
            ),
        ),
        ("tests/test_effects.py",),
        (SQLITE,),
    ),
    Break(
        "failed-effects-never-back-off",
        "A failed effect waits out its backoff before the reaper runs it again.",
        (
            Edit(
                EFFECTS,
                "    retry_in = leases.retry_delay(row.attempts, max_attempts=row.max_attempts)\n",
                "    retry_in = 0.0\n",
            ),
        ),
        ("tests/test_effects.py::test_a_failed_run_backs_off_is_retried_and_is_dead_after_max_attempts",),
        (SQLITE,),
    ),
    Break(
        "reaper-never-runs-pending-effects",
        "An effect whose process died before running it is run by the reaper.",
        (
            Edit(
                EFFECTS,
                "        .due()\n        .exclude(claimed_at__isnull=True, scheduled_at__gt=Now() - grace)\n",
                "        .due()\n        .exclude(claimed_at__isnull=True)\n",
            ),
        ),
        ("tests/test_effects.py::test_an_effect_its_process_never_ran_is_run_by_the_reaper",),
        (SQLITE,),
    ),
    Break(
        "prune-deletes-unfinished-effects",
        "Pruning keeps an event whose effects are not all completed.",
        (Edit("stripe_idempotency/retention.py", "        .filter(~Exists(unfinished))\n", ""),),
        (
            "tests/test_effects.py::test_pruning_keeps_an_event_whose_effects_are_not_all_completed_and_deletes_completed_ones",
        ),
        (SQLITE, MARIADB),
    ),
    Break(
        "statements-import-the-tables",
        "The package's layers import one way, with no circle, function-local imports included.",
        (
            Edit(
                BASE,
                "        if row is None:\n            # The upsert either inserts",
                "        # the model's own converters\n"
                "        from stripe_idempotency.models import StripeEvent  # noqa: F401\n\n"
                "        if row is None:\n            # The upsert either inserts",
            ),
        ),
        ("tests/guarantees/test_layers.py",),
        (SQLITE,),
        quick=(SQLITE,),
    ),
    # -- the events table as the queue -----------------------------------------------------------
    Break(
        "worker-batch-claims-more-than-picked",
        "A worker's batch claims exactly the rows its query picked, however PostgreSQL plans the update.",
        (
            Edit(BASE, "WITH picked AS MATERIALIZED ({{picked}})\n", ""),
            Edit(BASE, "WHERE id IN (SELECT pk FROM picked)\n", "WHERE id IN ({{picked}})\n"),
            Edit(
                BASE,
                "cursor.execute(sql, [*select_params, token_param, claimed_by, self.lease_param(ttl)])",
                "cursor.execute(sql, [token_param, claimed_by, self.lease_param(ttl), *select_params])",
            ),
        ),
        ("tests/test_worker.py",),
        (POSTGRES,),
    ),
    Break(
        "worker-batches-wait-or-overlap",
        "A worker's batch skips the rows another worker is taking (SKIP LOCKED) rather than waiting "
        "for them, or taking them too.",
        (
            Edit(BASE, '            select += " FOR UPDATE SKIP LOCKED"\n', "            pass\n"),
            Edit(BASE, "picked.select_for_update(skip_locked=True).values_list", "picked.values_list"),
        ),
        (
            "tests/test_worker.py::test_a_batch_skips_rows_another_worker_is_taking_instead_of_waiting_for_them",
            "tests/test_worker.py::test_workers_taking_batches_at_once_never_share_a_row_and_leave_none",
        ),
        (POSTGRES, MARIADB),
    ),
    Break(
        "worker-keeps-what-it-will-not-start",
        "A stop request gives back, untouched, the events a worker took and never started.",
        (
            Edit(
                WORKER,
                "leases.give_back(type(row), [r.pk for r in rows[position:]], token, using=self.using)",
                "None",
            ),
        ),
        ("tests/test_worker.py", "tests/test_process_stripe_events.py"),
        (SQLITE, POSTGRES),
    ),
    Break(
        "worker-runs-a-batch-past-half-its-lease",
        "Events a batch would reach after half a lease are given back, not run on a lease near its end.",
        (
            Edit(
                WORKER,
                "            late = time.monotonic() - taken_at > app_settings.CLAIM_TTL_SECONDS / 2\n",
                "            late = False\n",
            ),
        ),
        ("tests/test_worker.py",),
        (SQLITE,),
    ),
    Break(
        "ordered-events-give-way-to-their-own-batch",
        "Events about one object taken in one batch run in order, not giving way to each other.",
        (Edit(LEASES, "        .exclude(claim_token=claimed.token)\n", ""),),
        ("tests/test_worker.py",),
        (SQLITE,),
    ),
    Break(
        "no-queue-still-queues",
        "With ENQUEUE None an accepted event is its insert alone: nothing is queued.",
        (Edit(PROCESSING, "    queued = app_settings.ENQUEUE is not None\n", "    queued = True\n"),),
        ("tests/test_worker.py",),
        (SQLITE,),
    ),
    Break(
        "accepted-events-never-notify",
        "On PostgreSQL an accepted event wakes the waiting workers: a NOTIFY that commits with its row.",
        (
            Edit(
                PG,
                "        if notify is None:\n            return super().insert_unclaimed(model, event)\n",
                "        if True:\n            return super().insert_unclaimed(model, event)\n",
            ),
        ),
        ("tests/test_worker.py",),
        (POSTGRES,),
    ),
    Break(
        "worker-dies-with-its-database",
        "A following worker outlives a database restart: it reconnects and goes on.",
        (Edit(WORKER, "    except DatabaseError as exc:\n", "    except ZeroDivisionError as exc:\n"),),
        ("tests/guarantees/test_outage.py::test_a_following_worker_outlives_a_database_restart",),
        (POSTGRES,),
    ),
)


def get(name: str) -> Break:
    for candidate in BREAKS:
        if candidate.name == name:
            return candidate
    raise LookupError(f"No break named {name!r}; `python -m tests.breaks --list` names them.")
