"""The suite's own nets: a hung test fails, in seconds when told, and never holds the run."""

from __future__ import annotations

import pytest

from tests.conftest import LONG_SUITE_TIMEOUT_SECONDS


def test_every_test_has_a_timeout_and_the_long_suites_a_longer_one(request):
    assert float(request.config.getini("timeout")) == 600
    assert LONG_SUITE_TIMEOUT_SECONDS > 600


@pytest.mark.chaos
def test_a_chaos_test_gets_the_long_suites_timeout(request):
    [marker] = list(request.node.iter_markers("timeout"))
    assert marker.args == (LONG_SUITE_TIMEOUT_SECONDS,)


def test_a_hung_test_fails_saying_so(pytester):
    pytester.makepyfile(test_hang="import time\n\ndef test_hangs():\n    time.sleep(600)\n")
    result = pytester.runpytest_subprocess("-p", "no:django", "-p", "no:cacheprovider", "-o", "timeout=2")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*Timeout*"])
