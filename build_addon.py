"""Build the Blender add-on: the legacy zip (Blender 3.1 to 4.1) and the extension (4.2+).

    python build_addon.py [--out dist] [--wheels-dir .cache/addon-wheels]

writes ``<out>/blenderfarm_addon-<version>.zip`` (install from Edit > Preferences >
Add-ons > Install) and ``<out>/blenderfarm_addon-<version>-extension.zip`` (Get
Extensions > Install from Disk). Both carry ``addon/blenderfarm_addon`` and, under its
``vendor/blenderfarm/``, the farm's ``client`` with the parts of ``protocol`` it
imports; the build checks that set is closed and free of imports Blender lacks
(msgpack, aiohttp, platformdirs). blender-asset-tracer (BAT) comes from its wheel, the
version installed here: unpacked under ``vendor/bat/`` in the legacy zip, listed in
the extension's ``blender_manifest.toml`` (``wheels = [...]``) for Blender to install.
The wheel is downloaded once with pip into ``--wheels-dir``.

BAT reads zstd-compressed .blend files only with the ``zstandard`` module. Blender's
official builds bundle it, so neither zip carries one (it is a compiled module, and
BAT pins a release that has no wheels for Python 3.11); a Blender built against a
system Python without it (Debian's) can pack only uncompressed files.

The version is ``__version__`` of ``blenderfarm/__init__.py``. Entries are sorted and
dated 1980-01-01, so the same sources give the same zip. Stdlib only.
"""

from __future__ import annotations

import argparse
import ast
import importlib.metadata
import re
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent
ADDON = ROOT / "addon" / "blenderfarm_addon"
PACKAGE = ROOT / "blenderfarm"
ADDON_NAME = "blenderfarm_addon"
EXTENSION_ID = "blenderfarm"
BAT_DIST = "blender-asset-tracer"
BAT_PACKAGE = "blender_asset_tracer"

#: What the add-on vendors of the farm's package: the client and what it imports.
VENDORED = (
    "__init__.py",
    "blendinfo.py",
    "protocol/__init__.py",
    "protocol/version.py",
    "protocol/frames.py",
    "protocol/hashing.py",
    "protocol/jobspec.py",
    "protocol/blender_version.py",
    "protocol/paths.py",
    "protocol/tiles.py",
    "client/__init__.py",
    "client/api.py",
    "client/events.py",
    "client/pack.py",
    "client/progress.py",
)
#: Absolute imports the vendored code may make: the stdlib and BAT, and zstandard where
#: BAT itself needs it (packing a zstd-compressed .blend compresses it again).
ALLOWED_THIRD_PARTY = frozenset({BAT_PACKAGE, "zstandard"})
ZIP_DATE = (1980, 1, 1, 0, 0, 0)


class BuildError(Exception):
    """The add-on cannot be built; the message says why."""


def read_version(init: Path = PACKAGE / "__init__.py") -> str:
    match = re.search(r'^__version__\s*=\s*["\']([^"\']+)["\']', init.read_text(), re.M)
    if match is None:
        raise BuildError(f"no __version__ in {init}")
    return match.group(1)


# --- what goes in --------------------------------------------------------------------------


def addon_files() -> Iterator[tuple[str, bytes]]:
    """The add-on's own files, relative to its folder (no caches, nothing vendored)."""
    for path in sorted(ADDON.rglob("*")):
        rel = path.relative_to(ADDON).as_posix()
        if path.is_dir() or "__pycache__" in rel or path.suffix == ".pyc":
            continue
        if rel.startswith("vendor/") and rel != "vendor/__init__.py":
            continue  # a stale vendored copy from a manual build must not sneak in
        yield rel, path.read_bytes()


def vendored_files() -> Iterator[tuple[str, bytes]]:
    check_vendored_imports()
    for rel in VENDORED:
        yield f"vendor/blenderfarm/{rel}", (PACKAGE / rel).read_bytes()


def check_vendored_imports() -> None:
    """Every relative import of a vendored module must be vendored too, and every
    absolute one be the stdlib or BAT: Blender has nothing else."""
    present = {".".join(_module_parts(rel)) for rel in VENDORED}
    for rel in VENDORED:
        parts = _module_parts(rel)
        package = parts if rel.endswith("__init__.py") else parts[:-1]
        tree = ast.parse((PACKAGE / rel).read_text(), rel)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    _check_absolute(rel, alias.name)
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                _check_absolute(rel, node.module or "")
            elif isinstance(node, ast.ImportFrom):
                base = package[: len(package) - (node.level - 1)]
                if node.module:
                    wanted = [[*base, *node.module.split(".")]]
                else:  # from . import x: x is a submodule or a name of the package
                    wanted = [[*base, a.name] for a in node.names]
                for target in map(".".join, wanted):
                    if target not in present and (_is_module(target)
                                                  or target.rpartition(".")[0] not in present):
                        raise BuildError(f"blenderfarm/{rel} imports blenderfarm.{target}, "
                                         "which the add-on does not vendor: add it to "
                                         "VENDORED in build_addon.py")


def _is_module(dotted: str) -> bool:
    """Whether ``dotted`` (inside blenderfarm) names a module, not a name in one."""
    path = PACKAGE.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _module_parts(rel: str) -> list[str]:
    parts = rel.removesuffix(".py").split("/")
    return parts[:-1] if parts[-1] == "__init__" else parts


def _check_absolute(rel: str, target: str) -> None:
    top = target.split(".")[0]
    if top in sys.stdlib_module_names or top in ALLOWED_THIRD_PARTY or top == "__future__":
        return
    raise BuildError(f"blenderfarm/{rel} imports {target!r}, which Blender lacks: the "
                     "add-on can vendor only stdlib code and BAT")


# --- BAT's wheel ---------------------------------------------------------------------------


def bat_wheel(wheels_dir: Path) -> Path:
    """BAT's wheel, the version installed here (the one the client is tested with)."""
    try:
        version = importlib.metadata.version(BAT_DIST)
    except importlib.metadata.PackageNotFoundError as exc:
        raise BuildError(f"{BAT_DIST} is not installed: pip install -e '.[test]'") from exc
    pattern = f"{BAT_PACKAGE}-{version}-py3-none-any.whl"
    found = sorted(wheels_dir.glob(pattern))
    if not found:
        wheels_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
               "--only-binary=:all:", "--dest", str(wheels_dir), f"{BAT_DIST}=={version}"]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        found = sorted(wheels_dir.glob(pattern))
        if proc.returncode != 0 or not found:
            raise BuildError(f"cannot download the {BAT_DIST} {version} wheel into "
                             f"{wheels_dir}:\n{proc.stderr.strip()}")
    return found[0]


def unpacked_wheel(wheel: Path) -> Iterator[tuple[str, bytes]]:
    with zipfile.ZipFile(wheel) as zf:
        for info in sorted(zf.infolist(), key=lambda i: i.filename):
            if not info.is_dir():
                yield info.filename, zf.read(info)


# --- the two zips --------------------------------------------------------------------------


def with_version(rel: str, data: bytes, version: str) -> bytes:
    """bl_info's version tuple follows the package's version."""
    if rel != "__init__.py":
        return data
    numbers = tuple(int(p) for p in re.findall(r"\d+", version)[:3])
    text, count = re.subn(r'"version": \([^)]*\)', f'"version": {numbers}', data.decode())
    if count != 1:
        raise BuildError("addon/blenderfarm_addon/__init__.py has no bl_info version to set")
    return text.encode()


def manifest(version: str, wheel_name: str) -> str:
    return f'''schema_version = "1.0.0"

id = "{EXTENSION_ID}"
version = "{version}"
name = "Blenderfarm"
tagline = "Render the open file on a Blenderfarm render farm"
maintainer = "Blenderfarm developers"
type = "add-on"
tags = ["Render"]
blender_version_min = "4.2.0"
license = ["SPDX:GPL-3.0-or-later"]

wheels = ["./wheels/{wheel_name}"]

[permissions]
network = "Send the project to the render farm and follow its jobs"
files = "Pack the project and save the rendered frames"
'''


def write_zip(path: Path, entries: Iterator[tuple[str, bytes]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    seen: set[str] = set()
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in sorted(entries):
            if name in seen:
                raise BuildError(f"{name} would be in {path.name} twice")
            seen.add(name)
            info = zipfile.ZipInfo(name, ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
    tmp.replace(path)


def build(out_dir: Path, wheels_dir: Path) -> tuple[Path, Path]:
    """Write both zips into ``out_dir``; return (legacy, extension)."""
    version = read_version()
    wheel = bat_wheel(wheels_dir)
    common = [(rel, with_version(rel, data, version)) for rel, data in addon_files()]
    common += list(vendored_files())

    legacy = out_dir / f"{ADDON_NAME}-{version}.zip"
    bat = [(f"vendor/bat/{rel}", data) for rel, data in unpacked_wheel(wheel)]
    write_zip(legacy, ((f"{ADDON_NAME}/{rel}", data) for rel, data in [*common, *bat]))

    extension = out_dir / f"{ADDON_NAME}-{version}-extension.zip"
    ext_entries = [*common, ("blender_manifest.toml", manifest(version, wheel.name).encode()),
                   (f"wheels/{wheel.name}", wheel.read_bytes())]
    write_zip(extension, iter(ext_entries))
    return legacy, extension


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="output folder")
    parser.add_argument("--wheels-dir", type=Path, default=ROOT / ".cache" / "addon-wheels",
                        help="where BAT's wheel is downloaded once")
    args = parser.parse_args(argv)
    try:
        for path in build(args.out, args.wheels_dir):
            print(path)
    except BuildError as exc:
        print(f"build_addon: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
