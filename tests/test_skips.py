"""A test written for a backend does not skip on it: the rule in conftest, seen from outside."""

from __future__ import annotations

import pytest
from django.db import connection

from tests.conftest import _under_test, backend


@pytest.mark.django_db
def test_the_backend_tells_mariadb_from_mysql():
    expected = connection.vendor
    if connection.vendor == "mysql":
        expected = "mariadb" if connection.mysql_is_mariadb else "mysql"
    assert backend() == expected


@pytest.mark.django_db
def test_a_skip_on_the_backend_a_test_is_written_for_fails_the_run(pytester):
    # The rule's two halves, in a run of their own (pytest-django off: this process has Django
    # set up already, and the backend under test is known, so no database is needed there).
    pytester.makeconftest(
        """
        import pytest
        from tests.conftest import _only_on, pytest_runtest_makereport

        @pytest.fixture
        def django_db_blocker():
            return None
        """
    )
    here, elsewhere = backend(), "postgresql" if backend() != "postgresql" else "sqlite"
    _under_test[:] = [here]
    pytester.makepyfile(
        f"""
        import pytest

        @pytest.mark.only_on("{here}", reason="written for it")
        def test_skipped_where_it_belongs():
            pytest.skip("a tool is missing")

        @pytest.mark.only_on("{here}", reason="written for it")
        def test_runs_where_it_belongs():
            pass

        @pytest.mark.only_on("{elsewhere}", reason="written for another")
        def test_written_for_another_backend():
            raise AssertionError("never runs here")
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "-p", "no:django")
    result.assert_outcomes(passed=1, failed=1, skipped=1)
    result.stdout.fnmatch_lines(["*test_skipped_where_it_belongs is written for * and skipped on it*"])
