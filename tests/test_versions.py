"""The declared floors are the tested ones: every ``>=`` of pyproject.toml's dependencies and
extras is pinned exactly in .ci/lowest.txt, which ``tox -e lowest`` (run by CI) installs."""

from __future__ import annotations

import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.breaks.__main__ import ROOT

# Extras of drivers the lowest run cannot load on SQLite alone (the MariaDB client needs its
# C headers): their floors are the driver's own, exercised by the MariaDB suite.
UNPINNED = {"mysqlclient"}


def floors() -> dict[str, Version]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = [
        *project["dependencies"],
        *(r for extra in project["optional-dependencies"].values() for r in extra),
    ]
    found = {}
    for text in declared:
        requirement = Requirement(text)
        [minimum] = [spec.version for spec in requirement.specifier if spec.operator == ">="]
        found[canonicalize_name(requirement.name)] = Version(minimum)
    return found


def pins() -> dict[str, Version]:
    found = {}
    for line in (ROOT / ".ci" / "lowest.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            found[canonicalize_name(name)] = Version(version)
    return found


def test_every_floor_is_pinned_in_the_lowest_run():
    pinned = pins()
    assert {
        name: (floor, pinned.get(name))
        for name, floor in floors().items()
        if name not in UNPINNED and pinned.get(name) != floor
    } == {}
