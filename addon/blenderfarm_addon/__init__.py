"""Blenderfarm for Blender: a "Render on Farm" panel that submits the open file to a
Blenderfarm server and follows its jobs.

A thin UI over the farm's own client (``vendor/blenderfarm/client``, put there by
``build_addon.py``): ``preferences``, ``properties``, ``operators``, ``job_operators``
and ``panels`` are bpy; ``worker``, ``submit`` and ``watcher`` do the packing, the
uploads and the polling in threads and never import bpy.

This file must not import bpy or any module that does at import time: the tests
import ``worker`` and ``submit`` from the built zip in plain Python. Blender reads
``bl_info`` without running the file (the 4.2+ extension uses
``blender_manifest.toml`` instead).
"""

bl_info = {
    "name": "Blenderfarm",
    "author": "Blenderfarm developers",
    "version": (0, 1, 0),
    "blender": (3, 1, 0),  # Python 3.10, which the vendored client needs
    "location": "Properties > Output > Render on Farm",
    "description": "Render the open file on a Blenderfarm render farm",
    "category": "Render",
}

_MODULES = ("preferences", "properties", "operators", "job_operators", "panels", "status")


def _modules() -> list:
    import importlib

    return [importlib.import_module(f".{name}", __name__) for name in _MODULES]


def register() -> None:
    for module in _modules():
        module.register()


def unregister() -> None:
    for module in reversed(_modules()):
        module.unregister()
