"""Connection settings: the farm server's URL and the user's API token.

Stored in the add-on's preferences (``bl_idname = __package__``, which is what Blender
4.2+ extensions require as well), so they hold for every file. The "Test Connection"
button runs :class:`worker.ConnectionTest` through an operator; its answer shows
here, wrapped to the window's width, and goes when the URL or the token changes. No
network and no threads in this module.
"""

import bpy
from bpy.props import StringProperty
from bpy.types import AddonPreferences

from . import wording
from .worker import Server


def _server_changed(self, context) -> None:
    from . import status  # status imports this module

    status.server_changed(context)

DEFAULT_SERVER = "http://127.0.0.1:8765"


class BlenderfarmPreferences(AddonPreferences):
    bl_idname = __package__

    server_url: StringProperty(
        name="Server URL", default=DEFAULT_SERVER, update=_server_changed,
        description="Address of bf-server, like http://farm-server:8765")
    token: StringProperty(
        name="Token", subtype="PASSWORD", update=_server_changed,
        description="Your API token (`bf-server token create --user`); "
                    "empty for a server that runs without tokens")

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        layout.use_property_split = True
        col = layout.column()
        col.prop(self, "server_url")
        col.prop(self, "token")
        if not wording.online_access(bpy.app):
            wording.wrapped_label(layout, context, wording.OFFLINE, "ERROR")
            return
        row = layout.row()
        row.operator("blenderfarm.test_connection", icon="LINKED")
        status = context.window_manager.blenderfarm
        if status.connection:
            icon = "CHECKMARK" if status.connection_ok else "ERROR"
            wording.wrapped_label(layout, context, status.connection, icon)


def get(context: bpy.types.Context | None = None) -> BlenderfarmPreferences:
    prefs = (context or bpy.context).preferences
    return prefs.addons[__package__].preferences


def server(context: bpy.types.Context | None = None) -> Server:
    prefs = get(context)
    return Server(prefs.server_url.strip(), prefs.token.strip() or None)


classes = (BlenderfarmPreferences,)

register, unregister = bpy.utils.register_classes_factory(classes)
