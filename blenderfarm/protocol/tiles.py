"""How a frame splits into tiles: pure arithmetic every side shares.

A job with ``tiles: N`` renders each frame as N tiles, each one Blender border render
(``render.use_border`` with ``use_crop_to_border``) of one cell of a grid ``cols`` x
``rows``, then one ``merge`` task assembles the frame. Cells are counted from the
bottom left (Blender's border origin), row by row: cell ``i`` is column ``i % cols``,
row ``i // cols``. Its pixels are :func:`tile_rect`: edges at ``k * size // count``,
so neighbours share an edge exactly and uneven splits differ by one pixel at most.

The server knows a grid (it compiles tasks), never a resolution; the node's runner,
which reads the scene's resolution, turns a cell into pixels with its twin of
:func:`tile_rect` (``node/runner/tiles.py``; it imports nothing of blenderfarm).
"""

from __future__ import annotations

import math

#: tiles of one frame, at most (a job's tiles are tasks: frames x tiles stays within
#: jobspec.MAX_TASKS)
MAX_TILES = 256
#: ``tiles: "auto"`` makes no tile smaller than this many pixels a side, where the
#: resolution is known
MIN_TILE = 64
#: ``auto`` gives every online slot this many tiles of a frame (a fast node takes more):
#: the frame ends with its last tile, so the smaller they are the less a node waits for
#: another's (bench/tiles_bench.py: 2 one-thread nodes gained 1.78x with 3 each, 1.89x
#: with 6, of the 1.97x two renders at once gain on that machine)
AUTO_PER_SLOT = 6


def tile_grid(count: int, width: int | None = None, height: int | None = None
              ) -> tuple[int, int]:
    """``(cols, rows)`` with ``cols * rows == count``: the divisor pair whose cells are
    closest to square for a ``width`` x ``height`` frame (square frame when unknown)."""
    if not 1 <= count <= MAX_TILES:
        raise ValueError(f"tiles must be from 1 to {MAX_TILES}")
    aspect = (width / height) if width and height else 1.0
    best: tuple[float, int, int] | None = None
    for cols in range(1, count + 1):
        if count % cols:
            continue
        rows = count // cols
        cell = aspect * rows / cols  # a cell's width / height
        score = abs(math.log(cell))
        if best is None or score < best[0] - 1e-9:
            best = (score, cols, rows)
    assert best is not None
    return best[1], best[2]


def tile_rect(index: int, cols: int, rows: int, width: int, height: int
              ) -> tuple[int, int, int, int]:
    """Pixels ``(x0, y0, x1, y1)`` of cell ``index`` (ends exclusive, origin bottom left)."""
    if not 0 <= index < cols * rows:
        raise ValueError(f"tile {index} is not a cell of a {cols}x{rows} grid")
    col, row = index % cols, index // cols
    return (col * width // cols, row * height // rows,
            (col + 1) * width // cols, (row + 1) * height // rows)


def auto_tiles(slots: int, width: int | None = None, height: int | None = None) -> int:
    """The tile count ``tiles: "auto"`` means on a farm of ``slots`` online slots:
    :data:`AUTO_PER_SLOT` each (one slot: none, 1), no tile under :data:`MIN_TILE`
    pixels a side where the resolution is known."""
    if slots <= 1:
        return 1
    want = min(MAX_TILES, AUTO_PER_SLOT * slots)
    if width and height:
        most = max(1, (width // MIN_TILE) * (height // MIN_TILE))
        want = min(want, most)
        while want > 1:
            cols, rows = tile_grid(want, width, height)
            if width // cols >= MIN_TILE and height // rows >= MIN_TILE:
                break
            want -= 1
    return want


def tile_name(stem: str, frame: int, index: int) -> str:
    """The file a tile render writes and reports (a lossless float EXR): a part of its
    frame, an input of the frame's merge, never an output of the job."""
    return f"{stem}.tile{index:03d}.{frame}.exr"


def tile_preview_name(stem: str, frame: int, index: int) -> str:
    """The small picture a tile render may report beside its EXR: the tile as the
    scene's view transform shows it (8-bit PNG), for the job page to show the frame
    filling in before its merge. Never an input of the merge, never an output of the job."""
    return f"{stem}.tile{index:03d}.{frame}.preview.png"
