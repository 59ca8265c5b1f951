"""build_addon.py: what goes into the two zips users install, and what must stay out."""

from __future__ import annotations

import ast
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from scenes import REPO

sys.path.insert(0, str(REPO))
import build_addon  # noqa: E402

WHEELS = REPO / ".cache" / "addon-wheels"
BPY_FREE = ("__init__.py", "worker.py", "submit.py", "watcher.py", "wording.py",
            "vendor/__init__.py")


@pytest.fixture(scope="module")
def zips(tmp_path_factory) -> tuple[Path, Path]:
    return build_addon.build(tmp_path_factory.mktemp("dist"), WHEELS)


def names(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as zf:
        return zf.namelist()


def test_legacy_zip_is_one_addon_folder_with_client_and_bat(zips) -> None:
    legacy, _ = zips
    version = build_addon.read_version()
    assert legacy.name == f"blenderfarm_addon-{version}.zip"
    files = names(legacy)
    assert all(n.startswith("blenderfarm_addon/") for n in files)
    inside = {n.removeprefix("blenderfarm_addon/") for n in files}
    for needed in ("__init__.py", "operators.py", "panels.py", "preferences.py",
                   "properties.py", "worker.py", "submit.py", "watcher.py",
                   "vendor/blenderfarm/client/api.py", "vendor/blenderfarm/client/pack.py",
                   "vendor/blenderfarm/protocol/jobspec.py",
                   "vendor/bat/blender_asset_tracer/pack/__init__.py"):
        assert needed in inside, needed
    assert not any("/server/" in n or "/node/" in n or "__pycache__" in n for n in inside)
    assert "vendor/blenderfarm/protocol/messages.py" not in inside, "needs msgpack"
    assert "vendor/blenderfarm/client/cli.py" not in inside
    assert any(n.endswith("LICENSE.txt") for n in inside), "BAT's licence travels with it"
    with zipfile.ZipFile(legacy) as zf:
        tree = ast.parse(zf.read("blenderfarm_addon/__init__.py"))
    bl_info = next(ast.literal_eval(node.value) for node in tree.body
                   if isinstance(node, ast.Assign) and node.targets[0].id == "bl_info")
    assert bl_info["version"] == tuple(int(p) for p in version.split("."))
    assert bl_info["blender"] == (3, 1, 0) and bl_info["category"] == "Render"


def test_extension_zip_lists_the_bat_wheel_in_its_manifest(zips) -> None:
    _, extension = zips
    files = names(extension)
    assert "blender_manifest.toml" in files and "__init__.py" in files
    assert not any(n.startswith("vendor/bat/") for n in files), "BAT comes as a wheel here"
    with zipfile.ZipFile(extension) as zf:
        manifest = tomllib.loads(zf.read("blender_manifest.toml").decode())
    assert manifest["version"] == build_addon.read_version()
    assert manifest["type"] == "add-on" and manifest["blender_version_min"] == "4.2.0"
    assert manifest["license"] == ["SPDX:GPL-3.0-or-later"]
    assert set(manifest["permissions"]) == {"network", "files"}
    (wheel,) = manifest["wheels"]
    assert wheel.removeprefix("./") in files
    assert Path(wheel).name.startswith("blender_asset_tracer-")


def test_build_is_reproducible(zips, tmp_path) -> None:
    again = build_addon.build(tmp_path, WHEELS)
    for first, second in zip(zips, again, strict=True):
        assert first.read_bytes() == second.read_bytes()


def test_vendoring_refuses_what_blender_lacks(monkeypatch) -> None:
    build_addon.check_vendored_imports()
    monkeypatch.setattr(build_addon, "VENDORED", (*build_addon.VENDORED, "protocol/messages.py"))
    with pytest.raises(build_addon.BuildError, match="msgpack"):
        build_addon.check_vendored_imports()
    monkeypatch.setattr(build_addon, "VENDORED", (*build_addon.VENDORED[:-1], "client/cli.py"))
    with pytest.raises(build_addon.BuildError, match="control_cli"):
        build_addon.check_vendored_imports()


def test_the_threads_half_never_imports_bpy() -> None:
    for rel in BPY_FREE:
        tree = ast.parse((build_addon.ADDON / rel).read_text(), rel)
        imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                    if isinstance(node, ast.Import) for alias in node.names}
        imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree)
                     if isinstance(node, ast.ImportFrom) and node.level == 0}
        assert not imported & {"bpy", "bmesh", "mathutils"}, rel


def test_main_reports_a_build_error_in_one_line(monkeypatch, tmp_path, capsys) -> None:
    monkeypatch.setattr(build_addon, "BAT_DIST", "no-such-distribution-xyz")
    assert build_addon.main(["--out", str(tmp_path), "--wheels-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("build_addon: no-such-distribution-xyz is not installed")
