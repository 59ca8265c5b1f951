"""Blenderfarm: a distributed render farm for Blender.

One folder per role: ``protocol`` (the contract), ``server`` (bf-server), ``node``
(bf-node and the runner inside Blender), ``client`` (the API client and ``bf``).
"""

__version__ = "0.1.0"
