"""Versions of the wire protocol (checked at ``hello``) and of the package."""

from .. import __version__

#: Bumped on every incompatible change of a message in ``messages.py``.
#: 2: an assign's manifest may be left out (see messages.Assign);
#: 3: task kinds (``Assign.kind``: an older node would render a merge as a render)
PROTOCOL_VERSION = 3

__all__ = ["PROTOCOL_VERSION", "__version__"]
