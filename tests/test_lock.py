"""The committed lock (requirements/lock.txt) is what make installs: it must satisfy every
range pyproject.toml declares, and this environment must be the one it describes."""
from __future__ import annotations

import re
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent


def locked() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "requirements" / "lock.txt").read_text().splitlines():
        if m := re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)", line):
            pins[canonicalize_name(m[1])] = Version(m[2])
    return pins


def declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    return [Requirement(r) for r in project["dependencies"] + extras["caption"] + extras["track"]
            + extras["test"]]


def test_the_lock_pins_every_declared_dependency_within_its_range():
    pins = locked()
    assert len(pins) > 100
    for req in declared():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is declared in pyproject.toml but not locked"
        assert req.specifier.contains(pins[name], prereleases=True), \
            f"the lock has {req.name}=={pins[name]}, outside pyproject.toml's {req}"


def test_this_environment_is_the_locked_one():
    """make test runs on what the lock says, not on whatever the index holds today."""
    for name, pinned in locked().items():
        try:
            installed = Version(version(name))
        except PackageNotFoundError:
            raise AssertionError(f"{name}=={pinned} is locked but not installed") from None
        assert installed == pinned, f"{name} {installed} is installed, the lock says {pinned}"
