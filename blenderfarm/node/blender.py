"""Finding the Blender a node renders with, and asking it what it can do.

:func:`find_blender` picks the executable (``--blender``, then ``$BLENDER``, then
``PATH``): a Blender (``blender -b``, kind "executable") or a Python with the ``bpy``
module from PyPI (kind "module"). Which of the two it is, is found by running it, never
from its name: as a Blender first (a Python refuses Blender's options at once, and a
Blender always prints its banner), else as a Python. :func:`probe_blender` starts it
once with factory settings and reads its kind, version, whether its Cycles can denoise
with OpenImageDenoise, its Cycles devices and its thread count; :func:`probe_opengl`,
run beside it, renders one tiny Workbench frame of the factory scene to learn whether
this Blender has OpenGL here (Eevee and Workbench need it: Debian's 3.4 in ``-b`` with
neither a display nor a working EGL driver aborts on the first such render). The node
announces that in its hello, and the server uses it to decide which tasks the node can
take.

Neither loads a user .blend, and neither leaves a Blender running: each has a
timeout and kills its process group.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
from dataclasses import asdict, dataclass, field
from typing import Any

from ..protocol.messages import Device
from .devices import devices_of

PROBE_TIMEOUT = 60.0  # seconds; a first start on a cold disk can be slow
OPENGL_TIMEOUT = 60.0  # seconds for the tiny render; a driver that hangs counts as none
_MARKER = "BLENDERFARM_PROBE:"
_OPENGL_MARKER = "BLENDERFARM_OPENGL_OK"
_DEVICE_TYPES = ("CUDA", "OPTIX", "HIP", "METAL", "ONEAPI")
#: what a Blender prints first in background mode ("Blender 4.5.3 LTS (hash ...)")
_BANNER = re.compile(r"^Blender \d+\.\d+", re.M)
_NO_BPY = "No module named 'bpy'"
#: BlenderInfo.kind (protocol.messages.BlenderCaps.kind)
EXECUTABLE, MODULE = "executable", "module"
#: For tests only (these machines have no GPU): a JSON list of ``{"type", "id",
#: "name"}`` the probe reports as this Blender's Cycles devices instead of its own
FAKE_DEVICES_ENV = "BLENDERFARM_FAKE_DEVICES"

# Runs inside Blender: stdlib + bpy only, one line of JSON after the marker.
_PROBE_SCRIPT = """
import json, os, bpy
def _oidn():
    try:
        import _cycles
        v = getattr(_cycles, "with_openimagedenoise", None)
        if v is not None:
            return bool(v)
    except ImportError:
        pass
    return bool(getattr(bpy.app.build_options, "openimagedenoise", False))
def _gpus():
    # for tests only: a node with no GPU pretends to have these (see FAKE_DEVICES_ENV)
    fake = os.environ.get(@FAKE@)
    if fake:
        return json.loads(fake)
    try:
        import _cycles
    except ImportError:
        return []
    found = []
    for kind in @TYPES@:
        try:  # tuples of (name, type, id, ...) in 3.4 to 5.x; other types are the CPU
            found += [{"type": d[1], "id": d[2], "name": d[0]}
                      for d in _cycles.available_devices(kind) if d[1] == kind]
        except Exception:
            pass
    return found
print(@MARKER@ + json.dumps({
    "version": ".".join(str(n) for n in bpy.app.version[:3]),
    "oidn": _oidn(),
    "devices": _gpus(),
    "threads": bpy.context.scene.render.threads,
}), flush=True)
""".replace("@TYPES@", repr(_DEVICE_TYPES)).replace("@MARKER@", repr(_MARKER)) \
    .replace("@FAKE@", repr(FAKE_DEVICES_ENV))

# Workbench, not Eevee: both draw through the same OpenGL context (on 3.4 both abort
# alike without one) and Workbench's frame costs a fraction of Eevee's shader compiles.
_OPENGL_SCRIPT = """
import bpy
scene = bpy.context.scene
scene.render.engine = "BLENDER_WORKBENCH"
scene.render.resolution_x = scene.render.resolution_y = 8
scene.render.resolution_percentage = 100
bpy.ops.render.render()
print(@MARKER@, flush=True)
""".replace("@MARKER@", repr(_OPENGL_MARKER))


class BlenderNotFound(Exception):
    """No usable Blender (executable, or Python with bpy); the message says how to give one."""

    def __init__(self, message: str, tried: list[str]) -> None:
        super().__init__(message)
        self.message = message
        self.tried = tried


class BlenderProbeError(Exception):
    """Blender started but did not answer the probe (crashed, hung or printed nonsense)."""

    def __init__(self, message: str, path: str, output: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.path = path
        self.output = output


@dataclass
class BlenderInfo:
    path: str
    version: str  # "3.4.1"
    version_tuple: tuple[int, ...]
    oidn: bool
    cycles_devices: list[str] = field(default_factory=lambda: ["CPU"])
    threads: int = 1
    #: its Cycles GPUs by backend, each with the key of its card (``devices.gpu_key``)
    devices: list[Device] = field(default_factory=list)
    #: it can render Eevee and Workbench here (:func:`probe_opengl`)
    opengl: bool = False
    #: EXECUTABLE (``blender -b``) or MODULE (a Python with ``bpy``): how to start it
    kind: str = EXECUTABLE

    def to_dict(self) -> dict[str, Any]:
        """The ``blender`` field of the node's hello message."""
        d = asdict(self)
        d["version_tuple"] = list(self.version_tuple)
        d["devices"] = list(self.devices)
        return d


def _executable(path: str) -> str | None:
    resolved = shutil.which(path) if os.sep not in path else path
    if resolved and os.path.isfile(resolved) and os.access(resolved, os.X_OK):
        return os.path.abspath(resolved)
    return None


def find_blender(explicit: str | None = None) -> str:
    """The Blender to use: ``explicit``, then ``$BLENDER``, then ``blender`` on PATH
    (an executable file; what kind of Blender it is, the probe finds out)."""
    tried: list[str] = []
    for source, candidate in (("--blender", explicit), ("BLENDER", os.environ.get("BLENDER")),
                              ("PATH", "blender")):
        if not candidate:
            continue
        found = _executable(os.path.expanduser(candidate))
        if found:
            return found
        tried.append(f"{candidate} (from {source})")
        if source != "PATH":
            # a path the user named that does not work is an error, not a hint to guess
            raise BlenderNotFound(
                f"Blender was not found at {candidate!r} (given by {source}); give the "
                "path of a Blender executable or of a Python with the bpy module.", tried)
    raise BlenderNotFound(
        "No Blender found: install Blender (3.4 or newer) and put it on PATH, "
        "or pass --blender /path/to/blender, or set BLENDER=/path/to/blender.", tried)


async def _run(cmd: list[str], timeout: float) -> tuple[int | None, str]:
    """Run ``cmd``: its exit code and output. Raises OSError when it cannot start,
    TimeoutError when it runs past ``timeout`` (its process group is killed either way)."""
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            _kill_group(proc.pid)
            await proc.wait()
    return proc.returncode, out.decode("utf-8", "replace")


async def _run_script(path: str, script: str, timeout: float,
                      kind: str | None = None) -> tuple[str, int | None, str]:
    """Run ``script`` in Blender (factory settings, no window): the kind it turned out
    to be, its exit code and output. ``kind`` None: as a Blender, and where it printed
    no Blender banner (a Python stops at the first option it lacks), as a Python with
    ``bpy`` (whose import gives the factory settings of ``--factory-startup``). Raises
    as :func:`_run`."""
    if kind != MODULE:
        code, text = await _run([path, "-b", "--factory-startup", "-noaudio",
                                 "--python-exit-code", "1", "--python-expr", script], timeout)
        if kind == EXECUTABLE or _BANNER.search(text):
            return EXECUTABLE, code, text
    code, text = await _run([path, "-c", script], timeout)
    return MODULE, code, text


async def probe_blender(path: str, timeout: float = PROBE_TIMEOUT) -> BlenderInfo:
    """Start Blender once with factory settings and read what it can do (and its kind)."""
    try:
        kind, code, text = await _run_script(path, _PROBE_SCRIPT, timeout)
    except OSError as exc:
        raise BlenderProbeError(f"Could not start Blender at {path}: {exc.strerror}.", path) from exc
    except TimeoutError:
        raise BlenderProbeError(
            f"Blender at {path} did not answer within {timeout:.0f} s.", path) from None
    return _parse_probe(path, kind, text, code)


async def probe_opengl(path: str, timeout: float = OPENGL_TIMEOUT,
                       kind: str | None = None) -> tuple[bool, str]:
    """Render one 8x8 Workbench frame of the factory scene: ``(True, "")`` when it
    works, else ``(False, why)``. Never raises: a node without OpenGL still renders
    Cycles. ``kind`` None: found out as :func:`probe_blender` does."""
    try:
        _, code, text = await _run_script(path, _OPENGL_SCRIPT, timeout, kind)
    except OSError as exc:
        return False, f"could not start Blender: {exc.strerror}"
    except TimeoutError:
        return False, f"a tiny Workbench render did not finish within {timeout:.0f} s"
    if any(line.strip() == _OPENGL_MARKER for line in text.splitlines()):
        return True, ""
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return False, f"a tiny Workbench render was killed by {signal.Signals(-code).name}"
    return False, f"a tiny Workbench render failed (exit code {code})"


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _parse_probe(path: str, kind: str, text: str, returncode: int | None) -> BlenderInfo:
    line = next((ln for ln in reversed(text.splitlines()) if ln.startswith(_MARKER)), None)
    tail = "\n".join(text.splitlines()[-30:])
    if line is None:
        raise BlenderProbeError(_no_answer(path, kind, text, returncode), path, tail)
    try:
        data = json.loads(line[len(_MARKER):])
        version = str(data["version"])
        gpus = devices_of({"type": str(d["type"]), "id": str(d["id"]),
                           "name": str(d.get("name", ""))} for d in data.get("devices") or [])
        return BlenderInfo(
            path=path,
            version=version,
            version_tuple=tuple(int(p) for p in version.split(".")),
            oidn=bool(data["oidn"]),
            cycles_devices=["CPU", *dict.fromkeys(d.type for d in gpus)],
            threads=max(1, int(data["threads"])),
            kind=kind,
            devices=gpus,
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BlenderProbeError(f"Blender at {path} gave a probe answer we cannot read: {exc}",
                                path, tail) from exc


def _no_answer(path: str, kind: str, text: str, returncode: int | None) -> str:
    """The one sentence for a probe that got no answer, saying what ``path`` seems to be."""
    if kind == EXECUTABLE:
        return (f"Blender at {path} exited (code {returncode}) without answering the probe; "
                "is it a working Blender 3.4 or newer?")
    if _NO_BPY in text:
        return (f"{path} is a Python without the bpy module: install it there "
                "(pip install bpy), or give the path of a Blender executable.")
    if "Traceback (most recent call last)" in text:
        return (f"{path} is a Python whose bpy module failed (exit code {returncode}); "
                "its traceback is below.")
    return (f"{path} is neither a Blender nor a Python with the bpy module (it exited "
            f"with code {returncode} without answering the probe); give the path of a "
            "Blender executable or of a Python that has bpy.")
