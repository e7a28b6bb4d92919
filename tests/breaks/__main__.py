"""``python -m tests.breaks``: apply each documented break to a scratch copy and run the tests that
must catch it.

    python -m tests.breaks                    every break on every backend it names
    python -m tests.breaks --quick            the quick subset (CI: --backend sqlite, then postgres)
    python -m tests.breaks --backend mariadb  only the breaks tried on MariaDB
    python -m tests.breaks --only no-fence    one break (repeatable)
    python -m tests.breaks --list             the catalogue, run nothing
    python -m tests.breaks --tree ../old      the breaks applied to another checkout (before/after)
    python -m tests.breaks --markdown         also the results as the table in docs/proof.md

One line per break and backend, ``caught`` (with the tests that failed) or
``NOT caught``; the last line counts them. Exit status 0 only if every break
tried was caught. The work tree is never touched.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.breaks.catalogue import ALL, BREAKS, Break, Edit

ROOT = Path(__file__).resolve().parents[2]

DATABASE_URLS = {
    "sqlite": None,
    "postgres": "postgres://postgres@127.0.0.1:5432/stripe_idempotency",
    "mariadb": "mysql://root@127.0.0.1:3306/stripe_idempotency",
}
NOT_COPIED = {".git", ".venv", ".tox", "_build", "__pycache__", ".pytest_cache", ".hypothesis"}
FAILED_LINE = re.compile(r"^(FAILED|ERROR) (\S+)", re.MULTILINE)
RUN_TIMEOUT_SECONDS = 1200


class BreakDoesNotApply(Exception):
    """An edit's text is not found exactly once: the code moved on and the break must follow it."""


@dataclass(frozen=True)
class Result:
    brk: Break
    backend: str
    failed: tuple[str, ...]
    seconds: float
    problem: str | None = None  # pytest itself could not run the tests (not a catch)

    @property
    def caught(self) -> bool:
        return self.problem is None and bool(self.failed)


def apply(edit: Edit, text: str) -> str:
    count = text.count(edit.old)
    if count != 1:
        raise BreakDoesNotApply(
            f"{edit.path}: the text to replace is there {count} times, not once:\n{edit.old}"
        )
    return text.replace(edit.old, edit.new)


def edited_files(brk: Break, root: Path) -> dict[Path, str]:
    """Each file the break edits, with its text after every edit of the break."""
    files: dict[Path, str] = {}
    for edit in brk.edits:
        path = root / edit.path
        files[path] = apply(edit, files.get(path) or path.read_text())
    return files


def copy_repository(tree: Path, scratch: Path) -> Path:
    target = scratch / "repository"
    shutil.copytree(
        tree,
        target,
        ignore=lambda folder, names: [
            n for n in names if n in NOT_COPIED or n.endswith((".egg-info", ".sqlite3"))
        ],
    )
    return target


def run(brk: Break, backend: str, copy: Path) -> Result:
    originals = {path: path.read_text() for path in edited_files(brk, copy)}
    started = time.monotonic()
    try:
        for path, text in edited_files(brk, copy).items():
            path.write_text(text)
        env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "DATABASE_POOL"}}
        env["PYTHONDONTWRITEBYTECODE"] = "1"  # every run compiles the files as they are now
        if DATABASE_URLS[backend]:
            env["DATABASE_URL"] = DATABASE_URLS[backend]
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE", *brk.tests]
        try:
            completed = subprocess.run(
                command, cwd=copy, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_SECONDS
            )
        except subprocess.TimeoutExpired:
            return Result(brk, backend, (), time.monotonic() - started, "timed out")
    finally:
        for path, text in originals.items():
            path.write_text(text)
    seconds = time.monotonic() - started
    failed = tuple(dict.fromkeys(m.group(2) for m in FAILED_LINE.finditer(completed.stdout)))
    if completed.returncode not in (0, 1) or (completed.returncode == 1 and not failed):
        # Interrupted, an internal error, a usage error, no tests, or Python itself failing
        # before pytest ran (an edit that leaves the package unimportable exits 1 too):
        # nothing was tested.
        tail = "\n".join((completed.stdout + completed.stderr).strip().splitlines()[-15:])
        return Result(brk, backend, failed, seconds, f"pytest exited {completed.returncode}:\n{tail}")
    return Result(brk, backend, failed, seconds)


def describe(result: Result) -> str:
    where = f"{result.brk.name} [{result.backend}]"
    took = f"({result.seconds:.0f} s)"
    if result.problem is not None:
        return f"NOT caught  {where}: the tests did not run {took}\n    {result.problem}"
    if not result.caught:
        return f"NOT caught  {where}: {' '.join(result.brk.tests)} all passed {took}"
    shown = ", ".join(name.removeprefix("tests/") for name in result.failed[:4])
    more = f" and {len(result.failed) - 4} more" if len(result.failed) > 4 else ""
    return f"caught      {where} by {shown}{more} {took}"


def markdown(results: list[Result]) -> str:
    """One row per break: what it undoes, and per backend the tests that caught it."""
    rows = ["| break | undoes | caught by |", "|---|---|---|"]
    by_break: dict[str, list[Result]] = {}
    for result in results:
        by_break.setdefault(result.brk.name, []).append(result)
    for name, tried in by_break.items():
        cells = []
        for result in tried:
            tests = ", ".join(f"`{t.removeprefix('tests/')}`" for t in result.failed[:3])
            more = f" and {len(result.failed) - 3} more" if len(result.failed) > 3 else ""
            found = f"{tests}{more}" if result.caught else "NOT caught"
            cells.append(f"{result.backend}: {found}")
        rows.append(f"| `{name}` | {tried[0].brk.undoes} | {'; '.join(cells)} |")
    return "\n".join(rows)


#: The part of docs/proof.md a full run rewrites: its figures and the table.
PROOF = ROOT / "docs" / "proof.md"
START, END = "<!-- breaks: written by python -m tests.breaks --write -->", "<!-- breaks: end -->"


def write_proof(results: list[Result], page: Path, *, when: str, minutes: float) -> None:
    """Put a full run's figures and table in ``page``, between its markers; the rest is untouched."""
    text = page.read_text()
    before, start, rest = text.partition(START)
    _, end, after = rest.partition(END)
    if not start or not end:
        raise ValueError(f"{page} has no {START} ... {END} part to write the results in.")
    runs, caught = len(results), sum(r.caught for r in results)
    quick = sum(r.backend in r.brk.quick for r in results)
    breaks = len({r.brk.name for r in results})
    summary = (
        f"The last full run (`python -m tests.breaks --write`, {when}, {minutes:.0f} minutes): **{breaks} "
        f"breaks on {runs} backend runs, {caught} caught**; {quick} of those runs are the `--quick` "
        "subset CI runs. "
        "Each row is one break with, per backend it was tried on, the first tests that failed "
        "(the command prints them all)."
    )
    page.write_text(f"{before}{START}\n{summary}\n\n{markdown(results)}\n{END}{after}")


def selected(args: argparse.Namespace) -> list[tuple[Break, str]]:
    runs = []
    for brk in BREAKS:
        if args.only and brk.name not in args.only:
            continue
        for backend in brk.quick if args.quick else brk.backends:
            if not args.backend or backend in args.backend:
                runs.append((brk, backend))
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.breaks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="only each break's quick backends")
    parser.add_argument("--backend", action="append", choices=ALL, help="only these backends")
    parser.add_argument("--only", action="append", metavar="NAME", help="only these breaks")
    parser.add_argument("--list", action="store_true", help="print the catalogue and run nothing")
    parser.add_argument("--markdown", action="store_true", help="also print the results as a Markdown table")
    parser.add_argument(
        "--write",
        action="store_true",
        help="a full run only: write its figures and table into docs/proof.md",
    )
    parser.add_argument(
        "--tree", type=Path, default=ROOT, help="the checkout to copy and break (default: this one)"
    )
    args = parser.parse_args(argv)
    unknown = set(args.only or ()) - {b.name for b in BREAKS}
    if unknown:
        parser.error(f"no break named {', '.join(sorted(unknown))}")
    if args.write and (args.only or args.backend or args.quick):
        parser.error("--write records a full run: every break on every backend it names")
    runs = selected(args)
    if args.list:
        for brk in BREAKS:
            print(f"{brk.name} [{', '.join(brk.backends)}; quick: {', '.join(brk.quick) or '-'}]")
            print(f"    undoes: {brk.undoes}")
            print(f"    caught by: {' '.join(brk.tests)}")
        return 0
    tree = args.tree.resolve()
    for brk, _ in runs:
        edited_files(brk, tree)  # every edit still applies, before anything runs
    print(f"{len(runs)} breaks to try, one at a time, on a scratch copy of {tree}", flush=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="stripe-idempotency-breaks-") as scratch:
        copy = copy_repository(tree, Path(scratch))
        results = []
        for brk, backend in runs:
            result = run(brk, backend, copy)
            results.append(result)
            print(describe(result), flush=True)
    if args.markdown:
        print(markdown(results))
    if args.write:
        minutes = (time.monotonic() - started) / 60
        write_proof(results, PROOF, when=time.strftime("%Y-%m-%d", time.gmtime()), minutes=minutes)
        print(f"wrote {PROOF.relative_to(ROOT)}")
    caught = sum(r.caught for r in results)
    print(f"{len(results)} breaks, {caught} caught")
    return 0 if results and caught == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
