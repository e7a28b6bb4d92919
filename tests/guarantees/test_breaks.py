"""The break catalogue stays true to the code, and the harness reports what it finds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.breaks.__main__ import (
    END,
    ROOT,
    START,
    BreakDoesNotApply,
    Result,
    apply,
    copy_repository,
    edited_files,
    main,
    run,
    write_proof,
)
from tests.breaks.catalogue import ALL, BREAKS, Break, Edit, get

# tox runs the suite from a copy without the package's source, against the installed wheel:
# there is nothing to break there (the ordinary runs check the catalogue).
pytestmark = pytest.mark.skipif(
    not (ROOT / "stripe_idempotency").is_dir(), reason="no package source here: the suite runs on a wheel"
)


@pytest.mark.parametrize("brk", BREAKS, ids=lambda b: b.name)
def test_every_break_still_applies_and_names_real_tests(brk):
    # A refactor that moves the text a break edits fails here, in the ordinary suite.
    changed = edited_files(brk, ROOT)
    assert changed
    assert all(text != path.read_text() for path, text in changed.items())
    for test in brk.tests:
        assert (ROOT / test.split("::")[0]).is_file(), test
    assert brk.backends
    assert set(brk.backends) <= set(ALL)
    assert set(brk.quick) <= set(brk.backends)


def test_the_proof_page_lists_every_break():
    page = (ROOT / "docs" / "proof.md").read_text()
    assert [b.name for b in BREAKS if f"| `{b.name}` |" not in page] == []


def test_names_are_unique_and_found():
    assert len({b.name for b in BREAKS}) == len(BREAKS)
    assert get("no-fence").name == "no-fence"
    with pytest.raises(LookupError, match=r"python -m tests\.breaks --list"):
        get("no-such-break")


def test_an_edit_must_match_exactly_once():
    with pytest.raises(BreakDoesNotApply, match="there 2 times"):
        apply(Edit("f.py", "x", "y"), "x = x")
    with pytest.raises(BreakDoesNotApply, match="there 0 times"):
        apply(Edit("f.py", "z", "y"), "x = x")


def test_the_quick_subset_covers_the_core_on_sqlite_and_postgresql():
    quick = {(b.name, backend) for b in BREAKS for backend in b.quick}
    for name in ("claim-ignores-live-leases", "no-fence", "ledger-balance-before-the-entry"):
        assert (name, "postgres") in quick or (name, "sqlite") in quick


@pytest.mark.skipif("DATABASE_URL" in os.environ, reason="it runs pytest on SQLite itself: once is enough")
def test_a_harmless_edit_is_not_caught_and_a_real_break_is(tmp_path: Path):
    copy = copy_repository(ROOT, tmp_path)
    harmless = Break(
        "comment-changed",
        "nothing",
        (Edit("stripe_idempotency/processing.py", "# SystemExit from a worker timeout", "# changed"),),
        ("tests/test_conf.py",),
        ("sqlite",),
    )
    result = run(harmless, "sqlite", copy)
    assert (result.caught, result.failed, result.problem) == (False, (), None)
    result = run(get("on-commit-failure-escapes"), "sqlite", copy)
    assert result.caught
    assert result.failed == (
        "tests/test_processing.py::"
        "test_a_failing_on_commit_callback_after_the_commit_still_answers_processed",
    )
    # Each run leaves the copy as it found it.
    assert (copy / "stripe_idempotency/processing.py").read_text() == (
        ROOT / "stripe_idempotency/processing.py"
    ).read_text()


def test_an_unknown_break_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--only", "no-such-break"])
    assert exited.value.code == 2
    assert "no break named no-such-break" in capsys.readouterr().err


def test_a_full_run_is_written_between_the_page_s_markers_and_nowhere_else(tmp_path: Path):
    page = tmp_path / "proof.md"
    page.write_text(f"# Proof\n\nbefore\n\n{START}\nold figures\n\n| old | table |\n{END}\n\n## After\n")
    fence, other = get("no-fence"), get("reaper-takes-live-claims")
    results = [
        Result(fence, "postgres", ("tests/test_leases.py::test_complete_is_fenced_by_the_token",), 3.0),
        Result(fence, "sqlite", ("tests/test_leases.py::test_complete_is_fenced_by_the_token",), 2.0),
        Result(other, "sqlite", (), 1.0),
    ]
    write_proof(results, page, when="2026-12-07", minutes=31.4)
    text = page.read_text()
    written = "The last full run (`python -m tests.breaks --write`, 2026-12-07, 31 minutes)"
    assert text.startswith(f"# Proof\n\nbefore\n\n{START}\n{written}")
    assert text.endswith(f"{END}\n\n## After\n")
    assert "old figures" not in text
    quick = sum(r.backend in r.brk.quick for r in results)
    assert f"**2 breaks on 3 backend runs, 2 caught**; {quick} of those runs" in text
    assert f"| `{other.name}` | {other.undoes} | sqlite: NOT caught |" in text


def test_the_proof_page_has_one_part_for_a_full_run_to_write():
    page = (ROOT / "docs" / "proof.md").read_text()
    assert (page.count(START), page.count(END)) == (1, 1)
    assert "| break | undoes | caught by |" in page.partition(START)[2].partition(END)[0]


def test_only_a_full_run_is_written(capsys):
    with pytest.raises(SystemExit) as refused:
        main(["--write", "--only", "no-fence"])
    assert refused.value.code == 2
    assert "--write records a full run" in capsys.readouterr().err


@pytest.mark.skipif("DATABASE_URL" in os.environ, reason="it runs pytest on SQLite itself: once is enough")
def test_an_edit_that_leaves_the_package_unimportable_is_never_reported_as_passing(tmp_path: Path):
    # Python exits 1 before pytest runs: the same status as failing tests, with none named.
    copy = copy_repository(ROOT, tmp_path)
    unimportable = Break(
        "unimportable",
        "nothing: the package no longer imports",
        (
            Edit(
                "stripe_idempotency/backends/mysql.py",
                "class MySQLBackend(SQLBackend):",
                "class MySQLBackend(",
            ),
        ),
        ("tests/test_storable.py",),
        ("sqlite",),
    )
    result = run(unimportable, "sqlite", copy)
    assert not result.caught
    assert result.problem is not None
    assert "pytest exited 1" in result.problem
