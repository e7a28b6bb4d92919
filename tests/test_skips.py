"""A test written for a backend does not skip on it: the rule in conftest, seen from outside."""

from __future__ import annotations

from django.db import connection

from tests.conftest import backend


def test_the_backend_tells_mariadb_from_mysql():
    expected = connection.vendor
    if connection.vendor == "mysql":
        expected = "mariadb" if connection.mysql_is_mariadb else "mysql"
    assert backend() == expected


def test_a_skip_on_the_backend_a_test_is_written_for_fails_the_run(pytester):
    pytester.makeconftest("from tests.conftest import pytest_runtest_makereport, pytest_runtest_setup\n")
    here, elsewhere = backend(), "postgresql" if backend() != "postgresql" else "sqlite"
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
