"""The frame-range grammar: ``1-10,20,30-40x2``.

An expression is items separated by commas; an item is ``N``, ``A-B`` or ``A-BxS``
(every S-th frame from A to B inclusive). Frames are Blender frame numbers, negative
ones included as Blender allows them (-MAX_FRAME ... MAX_FRAME): ``-5--1`` is -5 to
-1, ``-3-3`` is -3 to 3. The result is sorted and free of duplicates, so that two
spellings of the same set render the same tasks.
"""

from __future__ import annotations

import re

MAX_FRAME = 1_048_574  # Blender's MAXFRAME
MAX_FRAMES = 1_000_000  # frames in one job

_ITEM = re.compile(r"^\s*(-?\d+)\s*(?:-\s*(-?\d+)\s*(?:[xX:]\s*(\d+)\s*)?)?$")


class FrameRangeError(ValueError):
    """A frame-range expression that does not parse or is out of bounds."""

    def __init__(self, message: str, expression: str) -> None:
        super().__init__(f"{message} (in frame range {expression!r})")
        self.expression = expression


def parse_frames(expression: str) -> list[int]:
    """Expand an expression into the sorted list of distinct frames it names."""
    if not isinstance(expression, str) or not expression.strip():
        raise FrameRangeError("empty frame range", str(expression))
    if len(expression) > 10_000:
        raise FrameRangeError("frame range too long", expression[:40] + "...")
    frames: set[int] = set()
    for item in expression.split(","):
        m = _ITEM.match(item)
        if m is None:
            raise FrameRangeError(f"bad item {item.strip()!r}; use N, A-B or A-BxS", expression)
        start = int(m.group(1))
        end = int(m.group(2)) if m.group(2) is not None else start
        step = int(m.group(3)) if m.group(3) is not None else 1
        if step < 1:
            raise FrameRangeError("step must be at least 1", expression)
        if end < start:
            raise FrameRangeError(f"range {start}-{end} runs backwards", expression)
        if end > MAX_FRAME:
            raise FrameRangeError(f"frame {end} is past Blender's last frame {MAX_FRAME}", expression)
        if start < -MAX_FRAME:
            raise FrameRangeError(f"frame {start} is before Blender's first frame {-MAX_FRAME}",
                                  expression)
        count = (end - start) // step + 1
        if len(frames) + count > MAX_FRAMES:
            raise FrameRangeError(f"more than {MAX_FRAMES} frames", expression)
        frames.update(range(start, end + 1, step))
    return sorted(frames)


def format_frames(frames: list[int]) -> str:
    """The shortest-ish expression for a list of frames (runs of step 1 become A-B)."""
    ordered = sorted(set(frames))
    if not ordered:
        return ""
    parts: list[str] = []
    start = prev = ordered[0]
    for f in ordered[1:]:
        if f == prev + 1:
            prev = f
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = f
    parts.append(str(start) if start == prev else f"{start}-{prev}")
    return ",".join(parts)


def chunk_frames(frames: list[int], size: int) -> list[list[int]]:
    """Split frames into consecutive chunks of at most ``size``."""
    if size < 1:
        raise ValueError("chunk size must be at least 1")
    return [frames[i : i + size] for i in range(0, len(frames), size)]
