"""Third-party and farm code the add-on carries, filled in by ``build_addon.py``.

``vendor/blenderfarm/`` is the farm's own ``client`` package with the parts of
``protocol`` it imports (never ``server``, ``node`` or ``protocol/messages.py``, which
needs msgpack). The legacy add-on zip also carries blender-asset-tracer (BAT) under
``vendor/bat/``; the 4.2+ extension gets BAT from the wheel its manifest lists, which
Blender installs on ``sys.path`` itself.

BAT imports itself by its absolute name (``from blender_asset_tracer import ...``), so
it must be importable as a top-level package: :func:`load_bat` does that, putting
``vendor/bat`` on ``sys.path`` only for the one import, so the add-on leaves Blender's
path as it found it. Importing this package does nothing (a missing BAT must become a
sentence in the panel when the user submits, not a failure to enable the add-on). It
must not import bpy.
"""

from __future__ import annotations

import os
import sys

#: Our client relies on BAT's Packer hooks as they are since this release.
MIN_BAT = (1, 18)


class BatUnavailable(ImportError):
    """BAT is missing or too old: the add-on cannot pack projects."""


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("."):
        digits = "".join(c for c in piece if c.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def _import_multiprocessing() -> None:
    """Import multiprocessing (BAT's copier uses its ThreadPool) without its alias.

    On import, multiprocessing keeps the current ``__main__`` as ``__mp_main__``. In
    ``blender -b --python script.py`` that is the script's temporary main module,
    which Blender frees when the script ends: Blender 3.4 then crashes on exit, in
    ``addon_utils.disable_all``. The alias matters only to spawned child processes,
    which BAT and this add-on never start, so it goes.
    """
    if "multiprocessing" in sys.modules:
        return
    main = sys.modules.get("__main__")
    import multiprocessing.pool  # noqa: F401

    if main is not None and sys.modules.get("__mp_main__") is main:
        del sys.modules["__mp_main__"]


def load_bat() -> None:
    """Make ``blender_asset_tracer`` importable, or raise BatUnavailable saying why."""
    _import_multiprocessing()
    bundled = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bat")
    if "blender_asset_tracer" not in sys.modules and os.path.isdir(bundled):
        # Ours first: the version this add-on was built and tested with. Once the
        # package is imported, its submodules resolve through its __path__, so the
        # entry can go again.
        sys.path.insert(0, bundled)
        try:
            import blender_asset_tracer  # noqa: F401
        finally:
            sys.path.remove(bundled)
    try:
        import blender_asset_tracer as bat
    except ImportError as exc:
        raise BatUnavailable(
            "blender-asset-tracer is not installed: reinstall the Blenderfarm add-on"
        ) from exc
    version = getattr(bat, "__version__", "0")
    if _version_tuple(version) < MIN_BAT:
        # Another add-on (Flamenco, say) loaded an older BAT first.
        raise BatUnavailable(
            f"another add-on loaded blender-asset-tracer {version}; Blenderfarm needs "
            f"{'.'.join(map(str, MIN_BAT))} or newer: disable that add-on and restart Blender"
        )

