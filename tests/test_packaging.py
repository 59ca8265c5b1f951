"""The systemd units in packaging/ name only what an install really provides.

docs/operations.md installs the project with pip into a venv at /opt/blenderfarm;
pip puts there the package and its [project.scripts], nothing else (no docs).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UNITS = sorted((REPO / "packaging" / "systemd").glob("*.service"))
PREFIX = "/opt/blenderfarm/"
# The URI schemes systemd.unit(5) accepts in Documentation=.
DOC_SCHEMES = {"http", "https", "file", "info", "man"}


def values(unit: Path, key: str) -> list[str]:
    lines = (line.strip() for line in unit.read_text().splitlines())
    return [line.split("=", 1)[1].strip() for line in lines
            if not line.startswith("#") and line.split("=", 1)[0].strip() == key]


def installed(path: str) -> bool:
    """Whether a pip install of this project into PREFIX holds ``path``."""
    if not path.startswith(PREFIX):
        return False
    rel = path[len(PREFIX):]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    if rel.startswith("bin/"):
        return rel[len("bin/"):] in scripts
    # lib/pythonX.Y/site-packages/blenderfarm/...: a file of the package itself
    _, sep, inside = rel.partition("/site-packages/")
    return bool(sep) and inside.startswith("blenderfarm/") and (REPO / inside).is_file()


def test_there_are_units() -> None:
    assert [u.name for u in UNITS] == ["bf-node.service", "bf-server.service"]


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_a_unit_points_only_at_files_an_install_has(unit: Path) -> None:
    for line in values(unit, "Documentation"):
        for uri in line.split():
            scheme = uri.split(":", 1)[0]
            assert scheme in DOC_SCHEMES, uri
            if scheme == "file":
                assert installed(uri[len("file://"):]), f"{unit.name}: nothing installs {uri}"
    (start,) = values(unit, "ExecStart")
    assert installed(start.split()[0]), f"{unit.name}: nothing installs {start.split()[0]}"
