"""The contract between every part of the farm: wire messages, the job spec, hashes.

Pure code (stdlib + msgpack). It must never import aiohttp, bpy or anything of the
server, node or client: all of them, and the add-on, import it.
"""

from .version import PROTOCOL_VERSION

__all__ = ["PROTOCOL_VERSION"]
