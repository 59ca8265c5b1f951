"""Which files an uploaded .blend references that its manifest lacks.

A job's files are laid out on a node at their manifest paths, in a folder of the
job's own: a reference the .blend makes (``//../textures/wood.png``) is found there
exactly when it resolves, from the folder of the .blend that makes it, to a path of
the manifest. That decision is pure (:func:`resolve_ref`, :class:`ManifestIndex`): no
file system is asked, least of all the server's own, about any path a .blend names.

:func:`trace_missing` walks the references with BAT's tracer, through linked
libraries that are in the manifest, as BAT's ``trace.deps`` does. BAT opens every
library it follows, and checks that it exists first; here it follows only those the
manifest holds, each placed (:func:`place`, a hard link to its blob) in a scratch
folder just before it is opened, so neither a check nor an open ever leaves that
folder. It runs in the inspect worker's process (``inspect_worker``), never in the
server's: BAT's parsing of a crafted file is bounded only by that process's limits.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blender_asset_tracer import bpathlib, trace
from blender_asset_tracer.trace import blocks2assets, file2blocks

_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True)
class Reference:
    """A file a .blend names that the manifest lacks."""

    path: str  # as the .blend names it: ``//tex/wood.png``
    referrer: str  # manifest path of the .blend that names it
    outside: bool  # it leads out of the job's folder (absolute, or too many ``..``)

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "from": self.referrer, "outside": self.outside}


def resolve_ref(path: str, referrer: str) -> str | None:
    """The manifest path that ``path``, named by the .blend at manifest path
    ``referrer``, resolves to; None when it leads out of the job's folder.

    ``//`` paths are relative to the referrer's folder, as Blender reads them; other
    relative paths too, as BAT resolves them. Absolute paths (``/``, ``C:``, a
    ``\\\\server`` share) are outside whatever they name. Backslashes are folder
    separators, as Blender reads a path saved on Windows."""
    if path.startswith("//"):
        rel = path[2:]
    elif path.startswith(("/", "\\")) or _DRIVE.match(path):
        return None
    else:
        rel = path
    parts = referrer.split("/")[:-1]
    for part in rel.replace("\\", "/").split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                return None
            parts.pop()
        else:
            parts.append(part)
    return "/".join(parts) or None


class ManifestIndex:
    """The manifest's paths, indexed to answer "is this reference there?" quickly."""

    def __init__(self, files: Collection[str]) -> None:
        self.files = frozenset(files)
        self.by_folder: dict[str, list[str]] = {}
        self.folders: set[str] = set()
        for rel in self.files:
            folder, _, name = rel.rpartition("/")
            self.by_folder.setdefault(folder, []).append(name)
            while folder:
                self.folders.add(folder)
                folder = folder.rpartition("/")[0]

    def has(self, rel: str, is_sequence: bool = False) -> bool:
        """Whether the manifest holds ``rel``; for a sequence (as BAT reports one: a
        glob, a ``<UDIM>`` name, the first file of a numbered run, or a folder of
        cache files), whether it holds any file of it."""
        if not is_sequence:
            return rel in self.files
        folder, _, name = rel.rpartition("/")
        name = name.replace("<UDIM>", "*")
        if "*" not in rel and "*" not in name:
            return rel in self.files or rel in self.folders
        if "*" not in folder:
            return any(fnmatch.fnmatchcase(n, name) for n in self.by_folder.get(folder, ()))
        pattern = [*folder.split("/"), name]
        return any(_glob_match(f.split("/"), pattern) for f in self.files)

    def locate(self, path: str, referrer: str, is_sequence: bool = False) -> Reference | None:
        """None when the manifest holds what ``path`` (named by ``referrer``) names, else
        the missing reference."""
        rel = resolve_ref(path, referrer)
        if rel is None:
            return Reference(path, referrer, outside=True)
        return None if self.has(rel, is_sequence) else Reference(path, referrer, outside=False)


def _glob_match(parts: list[str], pattern: list[str]) -> bool:
    return len(parts) == len(pattern) and all(
        fnmatch.fnmatchcase(p, q) for p, q in zip(parts, pattern, strict=True))


def place(root: Path, rel: str, source: Path) -> Path:
    """Put the blob ``source`` at ``root/rel`` (a hard link; a symbolic one where the
    two are on different file systems) and return that path."""
    dest = root / rel
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, dest)
        except OSError:
            os.symlink(source, dest)
    return dest


class OutsideLibrary(Exception):
    """BAT was about to open a library that is not one of the manifest's files."""


class _ConfinedIterator(file2blocks.BlockIterator):
    """BAT's block iterator, following only libraries the manifest holds."""

    def __init__(self, root: Path, files: Mapping[str, Path]) -> None:
        super().__init__()
        self.root = root
        self.files = files

    def rel_of(self, path: Any) -> str | None:
        try:
            return Path(os.path.normpath(os.fspath(path))).relative_to(self.root).as_posix()
        except ValueError:
            return None

    def open_blendfile(self, bfilepath: Path) -> Any:
        # Every open of the trace comes here: the last guard, should BAT ever reach a
        # library by a way _visit_linked_blocks does not filter.
        rel = self.rel_of(bfilepath)
        if rel is None or rel not in self.files:
            raise OutsideLibrary(str(bfilepath))
        place(self.root, rel, self.files[rel])
        return super().open_blendfile(bfilepath)

    def _visit_linked_blocks(self, blocks_per_lib: Any) -> Iterator[Any]:
        """BAT's walk into each library, given only the libraries the manifest holds,
        under the paths they were placed at (BAT's own check that a library exists
        then never looks outside the scratch folder)."""
        follow: dict[bpathlib.BlendPath, Any] = {}
        for idblocks in blocks_per_lib.values():
            some = next(iter(idblocks))
            name = some.get_pointer(b"lib")[b"name"]
            referrer = self.rel_of(some.bfile.filepath)
            rel = resolve_ref(_text(name), referrer) if referrer is not None else None
            if rel is not None and rel in self.files:
                path = place(self.root, rel, self.files[rel])
                follow.setdefault(bpathlib.BlendPath(os.fsencode(path)), set()).update(idblocks)
        return (yield from super()._visit_linked_blocks(follow))


def trace_missing(root: Path, blend: str, files: Mapping[str, Path],
                  limit: int = 1000) -> tuple[list[Reference], int]:
    """The references of ``blend`` (a manifest path) and of the libraries it links
    (recursively, those in the manifest) that the manifest ``files`` (path -> blob)
    lacks: the first ``limit`` of them, each once, and how many there are. Raises
    what BAT raises on a damaged file."""
    index = ManifestIndex(files)
    iterator = _ConfinedIterator(root, files)
    bfile = iterator.open_blendfile(root / blend)
    seen_usages: set[int] = set()
    found: dict[tuple[str, str], Reference] = {}
    for block in trace.asset_holding_blocks(iterator.iter_blocks(bfile)):
        for usage in blocks2assets.iter_assets(block):
            if hash(usage) in seen_usages:
                continue
            seen_usages.add(hash(usage))
            path = _text(usage.asset_path)
            if not path:  # an image made in Blender, no file
                continue
            referrer = iterator.rel_of(usage.block.bfile.filepath) or blend
            ref = index.locate(path, referrer, usage.is_sequence)
            if ref is not None:
                found.setdefault((ref.path, ref.referrer), ref)
    refs = list(found.values())
    return refs[:limit], len(refs)


def _text(path: bytes) -> str:
    """A path as the .blend holds it, as text (bytes that are no UTF-8 replaced)."""
    return bytes(path).decode("utf-8", "replace")
