"""Versions of the wire protocol (checked at ``hello``) and of the package."""

from .. import __version__

#: Bumped on every incompatible change of a message in ``messages.py``.
PROTOCOL_VERSION = 2  # 2: an assign's manifest may be left out (see messages.Assign)

__all__ = ["PROTOCOL_VERSION", "__version__"]
