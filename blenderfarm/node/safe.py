"""What a node takes from its server to name files, checked before it touches any.

The server's job and task ids name the node's job folders, output folders and logs;
its output name and output pattern name the frames Blender writes; a job's manifest
and ``.blend`` are
paths in the job folder. A node trusts none of them: a hostile server, or anyone on a
plain-http path to it, could send ``../../x`` and have the node write, load or delete
files outside its work dir (a Blender startup script among them, which would defeat
``--disable-autoexec``). The codec checks ids too, but the node does not rely on the
codec: :func:`check_assign` checks every name of an ``assign`` against the node's own,
stricter alphabet where it arrives, and :func:`inside` resolves every path the node
builds from server data (symlinks followed) and refuses one that leaves its folder.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..protocol import messages as m
from ..protocol.hashing import is_sha256
from ..protocol.jobspec import pattern_problem
from ..protocol.paths import PathError, normalize_relpath

#: job and task ids: ASCII letters, digits, '_', '.', '-', not starting with a dot or a
#: dash. Stricter than the codec's ids: no ':' (a stream separator on NTFS)
_SAFE_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
#: UTF-8 bytes in a file name (Linux, macOS, Windows all stop at 255)
MAX_NAME_BYTES = 255


class BadAssign(ValueError):
    """An assign whose names or paths the node will not use; the message says which."""


class UnsafePath(BadAssign):
    """A path built from server data that resolves outside its folder."""


def safe_id(value: object, what: str = "an id") -> str:
    """``value`` if it is a job or task id the node may use as a file name."""
    if not isinstance(value, str) or _SAFE_ID.fullmatch(value) is None:
        raise BadAssign(f"the server sent {what} that is not a safe name: {_show(value)}")
    return value


def safe_output_name(value: object) -> str:
    """``value`` if it is a file stem: letters, digits, '_', '-', '.', not starting
    with a dot (Unicode letters too: the server makes stems from job names)."""
    return safe_file_name(value, "an output")


def safe_output_pattern(value: object) -> str | None:
    """``value`` if it is None or an output pattern Blender may name files from: a file
    part (no folder) of letters, digits, '_', '-', '.' and '#' (the frame's digits),
    not starting with a dot; ``""`` names frames ``0001.png``."""
    if value is None:
        return None
    if pattern_problem(value) is not None or \
            len(str(value).encode("utf-8", "replace")) > MAX_NAME_BYTES - 40:
        raise BadAssign(f"the server sent an output pattern that is not a safe file name: "
                        f"{_show(value)}")
    assert isinstance(value, str)
    return value


def check_assign(a: m.Assign) -> None:
    """Check every name in ``a`` and normalise its paths in place, or raise BadAssign."""
    safe_id(a.task_id, "a task id")
    safe_id(a.job_id, "a job id")
    safe_output_name(a.output_name)
    safe_output_pattern(a.output_pattern)
    try:
        a.blend = normalize_relpath(a.blend)
    except PathError as exc:
        raise BadAssign(f"the server sent a .blend path that is not inside the job folder ({exc})") \
            from None
    manifest: dict[str, str] = {}
    for raw, sha in a.manifest.items():
        try:
            rel = normalize_relpath(raw)
        except PathError as exc:
            raise BadAssign(f"the server sent a manifest path that is not inside the job folder "
                            f"({exc})") from None
        if not is_sha256(sha):
            raise BadAssign(f"the server sent a manifest entry whose hash is not a SHA-256: "
                            f"{_show(sha)}")
        manifest[rel] = sha
    a.manifest = manifest
    if a.kind not in m.TASK_KINDS:
        raise BadAssign(f"the server sent a task of kind {_show(a.kind)}, which this node "
                        f"does not know (it runs {', '.join(m.TASK_KINDS)})")
    for ref in a.inputs:
        safe_file_name(ref.name, "an input")
        if not is_sha256(ref.sha256):
            raise BadAssign(f"the server sent an input whose hash is not a SHA-256: "
                            f"{_show(ref.sha256)}")


def safe_file_name(value: object, what: str = "a file") -> str:
    """``value`` if it is a plain file name (no folder, not hidden, not special)."""
    if not isinstance(value, str) or not value or value.startswith(".") or \
            len(value.encode("utf-8", "replace")) > MAX_NAME_BYTES or \
            not all(c.isalnum() or c in "_-." for c in value):
        raise BadAssign(f"the server sent {what} name that is not a safe file name: "
                        f"{_show(value)}")
    return value


def inside(root: Path, *parts: str) -> Path:
    """``root / parts...`` resolved, symlinks followed; raise UnsafePath unless it lies
    strictly inside ``root`` (itself resolved). Every path built from server data goes
    through here right before it is used: a link made since a check would count."""
    try:
        base = Path(root).resolve()
        target = base.joinpath(*parts).resolve() if parts else base
    except (OSError, RuntimeError) as exc:  # a symlink loop (RuntimeError before 3.13)
        raise UnsafePath(f"the path {_show('/'.join(parts))} cannot be resolved: {exc}") \
            from None
    if target == base or base not in target.parents:
        raise UnsafePath(f"the path {_show('/'.join(parts))} leads outside the node's "
                         f"folder {base}")
    return target


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
