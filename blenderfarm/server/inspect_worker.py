"""The inspect worker: reads one uploaded .blend in a process of its own.

    python -P -m blenderfarm.server.inspect_worker --memory BYTES --unpacked BYTES \\
        --cpu SECONDS < request.json

A .blend is user data, and BAT's parser can loop, recurse or allocate without bound on
a crafted one: it runs here, never in the server, under limits set before BAT is even
imported (address space, the size of any file written, such as the decompressed copy
of a compressed .blend, CPU seconds; no core dump), and the server kills it at its
wall-clock timeout. ``-P`` keeps the working folder off ``sys.path``.

The request, on stdin: ``{"root": scratch folder, "blend": manifest path of the main
.blend, "files": {manifest path: blob path}}``. The answer, one JSON object on
stdout: ``{"info": {blender_saved, scene, scenes, missing, missing_total}}``, or
``{"refused": {"reason", "message", "path"}}`` for a file it cannot use (``path``: the
manifest path of the file at fault), or ``{"failed": traceback}`` for a fault of its
own. It writes nothing but the files it places under ``root`` and the temporary
files BAT makes (``TMPDIR``, set by the server inside the scratch folder).
"""

from __future__ import annotations

import argparse
import errno
import json
import resource
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

#: missing references listed at most (the count says how many there are)
MAX_MISSING = 1000


def set_limits(memory: int, unpacked: int, cpu: int) -> None:
    """Bound this process before it reads anything. A write past ``unpacked`` fails
    with EFBIG instead of killing the process (SIGXFSZ ignored), so it can say why."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    for limit, value in ((resource.RLIMIT_AS, memory), (resource.RLIMIT_FSIZE, unpacked),
                         (resource.RLIMIT_CPU, cpu), (resource.RLIMIT_CORE, 0)):
        _soft, hard = resource.getrlimit(limit)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(limit, (value, hard))


def inspect(request: dict[str, Any]) -> dict[str, Any]:
    """The answer to one request (see the module's docstring)."""
    from ..blendinfo import DAMAGED, BlendReadError, blend_info
    from .blend_deps import OutsideLibrary, place, trace_missing

    root = Path(request["root"])
    blend = request["blend"]
    files = {rel: Path(p) for rel, p in request["files"].items()}
    current = blend  # the file being read, named in a refusal

    def refused(reason: str, message: str) -> dict[str, Any]:
        return {"refused": {"reason": reason, "message": message, "path": current}}

    try:
        info = blend_info(place(root, blend, files[blend]))
        refs, total = trace_missing(root, blend, files, MAX_MISSING)
    except BlendReadError as exc:
        current = _rel(exc.path, root) or blend
        if _too_big(exc.__cause__):
            return refused("inspect_too_large", _TOO_BIG.format(current))
        return refused(exc.reason, _sentence(exc.reason, current))
    except MemoryError:
        return refused("inspect_too_large", _NO_MEMORY.format(current))
    except OutsideLibrary:
        raise  # never a damaged file: a BAT this code does not know
    except OSError as exc:
        if _too_big(exc):
            return refused("inspect_too_large", _TOO_BIG.format(current))
        current = _rel(getattr(exc, "filepath", None) or exc.filename, root) or current
        return refused("corrupt_blend", _sentence("corrupt_blend", current))
    except (*DAMAGED, TypeError, AttributeError, RecursionError) as exc:
        current = _rel(getattr(exc, "filepath", None), root) or current
        return refused("corrupt_blend", _sentence("corrupt_blend", current))
    return {"info": {**info, "missing": [r.to_json() for r in refs], "missing_total": total}}


_NO_MEMORY = "reading {} needs more memory than the server gives one inspection (inspect_memory)"
_TOO_BIG = "{} unpacks to more than the server lets one inspection write (inspect_unpacked)"


def _too_big(exc: BaseException | None) -> bool:
    """A write past the size limit (the decompressed copy of a compressed .blend)."""
    return isinstance(exc, OSError) and exc.errno == errno.EFBIG


def _sentence(reason: str, rel: str) -> str:
    if reason == "not_blend":
        return f"{rel} is not a .blend file (it does not begin with Blender's header)"
    if reason == "no_scene":
        return f"{rel} holds no scene to render"
    return f"{rel} is damaged or cut short; save it again in Blender and upload it again"


def _rel(path: Any, root: Path) -> str | None:
    if not path:
        return None
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="inspect_worker")
    parser.add_argument("--memory", type=int, required=True)
    parser.add_argument("--unpacked", type=int, required=True)
    parser.add_argument("--cpu", type=int, required=True)
    args = parser.parse_args(argv)
    set_limits(args.memory, args.unpacked, args.cpu)
    request: dict[str, Any] = {}
    try:
        request = json.load(sys.stdin)
        answer = inspect(request)
    except MemoryError:  # before the reading began: importing BAT, reading the request
        answer = {"refused": {"reason": "inspect_too_large", "path": request.get("blend"),
                              "message": _NO_MEMORY.format(request.get("blend", "the file"))}}
    except Exception:
        answer = {"failed": traceback.format_exc()[-4000:]}
    sys.stdout.write(json.dumps(answer))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
