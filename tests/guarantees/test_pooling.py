"""The suite's own check that a pooled run really is pooled (``DATABASE_POOL``, see tests/settings.py).

CI runs the suite again through PgBouncer in transaction pooling mode and with
Django's psycopg pool; without this test, a mistake in the settings would run
those passes on plain connections and prove nothing.
"""

from __future__ import annotations

import pytest
from django.conf import settings
from django.db import connection

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_requested_pooling_is_in_effect():
    if not settings.DATABASE_POOL:
        pytest.skip("DATABASE_POOL is not set: plain connections.")
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    if settings.DATABASE_POOL == "psycopg":
        assert connection.pool is not None
        assert connection.pool.get_stats()["pool_size"] >= 1
        return

    import psycopg

    params = connection.settings_dict
    admin = psycopg.connect(
        host=params["HOST"],
        port=params["PORT"],
        user=params["USER"],
        dbname="pgbouncer",  # PgBouncer's admin console
        autocommit=True,
        cursor_factory=psycopg.ClientCursor,  # the console speaks the simple query protocol only
    )
    with admin:
        rows = admin.execute("SHOW POOLS").fetchall()
    pools = {(row[0], row[1]): row for row in rows}
    ours = pools[(params["NAME"], params["USER"])]
    assert ours[-1] == "transaction"  # pool_mode
    assert ours[2] >= 1  # cl_active: this test's connection is PgBouncer's client
