"""The runner's one error type: a task that cannot finish, as one ``error`` event.

Its own module so that every module beside runner.py raises the same class (runner.py
runs as Blender's script, and importing it again would make a second copy).
"""

from __future__ import annotations


class TaskError(Exception):
    """A task that cannot finish; becomes one ``error`` event."""

    def __init__(self, reason: str, message: str, retryable: bool) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retryable = retryable
