"""The package's plan, read from its imports: layers that import one way, and no circle.

Read with ``ast``, so imports inside functions count as much as those at the top of a module
(only those under ``if TYPE_CHECKING:`` do not: they never run). A module may import its own
layer and the layers below it; a new module must be given a layer here.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

import stripe_idempotency

# The package as imported: the work tree's, or the wheel's when the suite runs installed.
PACKAGE = Path(stripe_idempotency.__file__).resolve().parent
TESTS = Path(__file__).resolve().parents[1]

#: Bottom first. A module may import its own layer and those listed before it.
LAYERS: list[tuple[str, set[str]]] = [
    (
        # Settings, errors, parsing and the vocabulary every layer shares; no table, no SQL.
        "foundations",
        {
            "",  # the package itself: its version
            "conf",
            "durations",
            "endpoints",
            "event_types",
            "events",
            "exceptions",
            "log",
            "object_shapes",
            "outcomes",
            "signals",
            "sql",
            "storable",
            "telemetry",
            "threads",
        },
    ),
    # Stripe's API, on request: reads a payload, knows no table.
    ("stripe client", {"fetching"}),
    # Each database's statements on the tables they are handed, and the ledger's manager on
    # its model's tables: below the models, as a Django app's managers are.
    (
        "statements",
        {"backends", "backends.base", "backends.mysql", "backends.postgresql", "backends.sqlite", "ledger"},
    ),
    ("tables", {"models"}),
    # The one path an event takes: verified, claimed, processed, queued.
    (
        "the path",
        {
            "ordering",
            "leases",
            "effects",
            "verification",
            "processing",
            "queueing",
            "wakeup",
            "tasks",
            "contrib",
            "contrib.celery",
        },
    ),
    # Operations as library functions returning reports; the worker's loop, which the reaper runs.
    ("operations", {"status", "retention", "worker", "reaper", "sync"}),
    # The ways in, for Stripe and for people: HTTP, the admin, the commands.
    (
        "front ends",
        {
            "views",
            "asgi",
            "health",
            "urls",
            "admin",
            "management",
            "management.options",
            "management.summaries",
            "management.commands",
            "management.commands.*",
        },
    ),
    # Django's hooks into the whole app.
    ("django", {"apps", "checks"}),
    # What projects' tests use.
    ("test support", {"testing", "factories", "pytest_plugin"}),
]


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    line: int
    in_function: bool
    reason: str  # the comment on the line before, for an import inside a function


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE.rglob("*.py") if "migrations" not in path.parts}


def layer_of(module: str) -> int:
    for index, (_, members) in enumerate(LAYERS):
        if module in members or any(m.endswith(".*") and module.startswith(m[:-1]) for m in members):
            return index
    raise LookupError(module)


def package_imports(module: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    source = path.read_text()
    lines = source.splitlines()
    tree = ast.parse(source)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool, type_checking: bool) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                visit(child, in_function, True)
            for child in node.orelse:
                visit(child, in_function, type_checking)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)) and not type_checking:
            for imported in imported_modules(node, package, modules, module):
                before = lines[node.lineno - 2].strip() if node.lineno > 1 else ""
                found.append(Import(module, imported, node.lineno, in_function, before))
        inner = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        for child in ast.iter_child_nodes(node):
            visit(child, inner, type_checking)

    visit(tree, False, False)
    return found


def imported_modules(
    node: ast.Import | ast.ImportFrom, package: str, modules: dict[str, Path], importer: str = ""
) -> set[str]:
    """The package's modules ``node`` runs, named without the package's prefix: each module it
    names (``from pkg import module`` names the module, ``from module import name`` the module)
    and the subpackages they are in, which Python imports first, unless ``importer`` is inside."""
    prefix = "stripe_idempotency"
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            parts = [prefix, *package.split(".")] if package else [prefix]
            parts = parts[: len(parts) - node.level + 1]
            base = ".".join(parts + ([base] if base else []))
        names = [
            f"{base}.{alias.name}" if f"{base}.{alias.name}".removeprefix(prefix + ".") in modules else base
            for alias in node.names
        ]
    found = set()
    for name in names:
        if not name.startswith(prefix + "."):
            continue  # outside the package, or its (empty) root
        short = name.removeprefix(prefix + ".")
        parts = short.split(".")
        for depth in range(1, len(parts) + 1):
            module = ".".join(parts[:depth])
            inside = importer == module or importer.startswith(module + ".")
            if module in modules and (depth == len(parts) or not inside):
                found.add(module)
    return found


def all_imports() -> list[Import]:
    modules = package_modules()
    return [
        found
        for module, path in modules.items()
        for found in package_imports(module, path, modules)
        if found.imported != found.importer
    ]


def circles(imports: list[Import]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm)."""
    graph: dict[str, set[str]] = {}
    for found in imports:
        graph.setdefault(found.importer, set()).add(found.imported)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return groups


def test_the_package_read_is_the_one_imported_whole():
    # Every other test here would pass on an empty package.
    modules = package_modules()
    assert {
        "",
        "conf",
        "models",
        "processing",
        "backends.base",
        "management.commands.reap_stale_claims",
    } <= set(modules)


def test_every_module_has_a_layer():
    unplaced = []
    for module in package_modules():
        try:
            layer_of(module)
        except LookupError:
            unplaced.append(module)
    assert unplaced == []


def test_no_module_imports_a_layer_above_its_own():
    upward = [
        f"{found.importer} ({LAYERS[layer_of(found.importer)][0]}) imports {found.imported} "
        f"({LAYERS[layer_of(found.imported)][0]}), line {found.line}"
        for found in all_imports()
        if layer_of(found.imported) > layer_of(found.importer)
    ]
    assert upward == []


def test_no_import_circle_in_the_package_function_local_imports_included():
    assert circles(all_imports()) == []


def test_an_import_inside_a_function_says_why_on_the_line_before():
    unexplained = [
        f"{found.importer}:{found.line} imports {found.imported}"
        for found in all_imports()
        if found.in_function and not found.reason.startswith("#")
    ]
    assert unexplained == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        pytest.param("from stripe_idempotency import ledger, models\n", {"ledger", "models"}, id="modules"),
        pytest.param("from stripe_idempotency.models import StripeEvent\n", {"models"}, id="a-name"),
        pytest.param("from . import base\n", {"backends.base"}, id="relative"),
        pytest.param(
            "from stripe_idempotency.contrib.celery import enqueue\n",
            {
                "contrib",
                "contrib.celery",
            },
            id="parent",
        ),
        pytest.param("import json\nfrom django.db import models\n", set(), id="outside"),
    ],
)
def test_imports_are_read_as_the_modules_they_name(tmp_path, source, expected):
    path = tmp_path / "mysql.py"
    path.write_text(source)
    modules = package_modules()
    assert {i.imported for i in package_imports("backends.mysql", path, modules)} == expected


def test_a_circle_is_found_through_a_function_local_import():
    imports = [
        Import("models", "ledger", 1, False, ""),
        Import("ledger", "backends", 1, False, ""),
        Import("backends.base", "models", 9, True, ""),
        Import("backends", "backends.base", 1, False, ""),
    ]
    assert circles(imports) == [["backends", "backends.base", "ledger", "models"]]


#: Modules whose behaviour is tested in another module's test file, and why there.
TESTED_WITH = {
    "apps": ("test_checks.py", "ready() only registers the checks"),
    "urls": ("test_views.py", "every request the views are sent goes through the routes"),
    "exceptions": ("test_views.py", "each exception is tested where it is raised and answered"),
    "sql": ("test_backends.py", "the column helpers exist for the backends' statements"),
    "backends.base": ("test_backends.py", "one contract, each database's statements held to it"),
    "backends.mysql": ("test_backends.py", "one contract, each database's statements held to it"),
    "backends.postgresql": ("test_backends.py", "one contract, each database's statements held to it"),
    "backends.sqlite": ("test_backends.py", "one contract, each database's statements held to it"),
    "fetching": ("test_thin_events.py", "it fetches what thin events name"),
    "event_types": ("test_checks.py", "read by check W008 only"),
    "object_shapes": ("test_testing.py", "the shapes build_event gives data.object"),
    "queueing": ("test_deferred.py", "deferred mode's handover, beside the task it queues"),
    "threads": ("test_deferred.py", "the handover's threads; the effects' runs in test_effects.py"),
    "tasks": ("test_deferred.py", "deferred mode's task, beside its handover"),
    "contrib.celery": ("test_deferred.py", "deferred mode through Celery"),
    "reaper": ("test_reap_stale_claims.py", "the library function and its command, tested together"),
    "retention": ("test_prune_stripe_events.py", "the library function and its command, tested together"),
    "sync": ("test_sync_stripe_events.py", "the library function and its command, tested together"),
    "status": ("test_stripe_events_status.py", "the library function and its command, tested together"),
    "wakeup": ("test_worker.py", "how a waiting worker is woken, tested by waking one"),
    "management.summaries": ("test_process_stripe_events.py", "the lines the worker and the reaper end with"),
    "management.options": ("test_databases.py", "the commands' shared --database, beside the routers"),
    "management.commands.replay_stripe_event": (
        "test_reap_stale_claims.py",
        "replay and the reaper share the claim",
    ),
}


def test_every_module_has_its_own_test_file_or_says_where_it_is_tested():
    files = {path.name for path in TESTS.rglob("test_*.py")}
    homeless = []
    for module in package_modules():
        name = module.rpartition(".")[2]
        if (
            not module
            or name == "__init__"
            or module in {"management", "management.commands", "backends", "contrib"}
        ):
            continue
        home = TESTED_WITH.get(module, (f"test_{name}.py", ""))[0]
        if home not in files:
            homeless.append(f"{module} (expected {home})")
    assert homeless == []
    assert all(f"test_{module.rpartition('.')[2]}.py" not in files for module in TESTED_WITH)
