"""Real Blender for tests: make the example scenes, render frames, read their settings.

Plain helpers that shell out to ``blender`` (``$BLENDER`` or the one on PATH); test
files wrap them in fixtures. They trust files, not exit codes: a render counts when
its image exists. Nothing here is a fake.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
MAKE_SCENE = REPO / "examples" / "make_scene.py"
BLENDER = os.environ.get("BLENDER") or shutil.which("blender")

#: Marks a test that needs a real Blender, and skips it when there is none.
needs_blender = [
    pytest.mark.blender,
    pytest.mark.skipif(BLENDER is None, reason="blender is not on PATH"),
]


class BlenderFailed(AssertionError):
    def __init__(self, what: str, proc: subprocess.CompletedProcess[str]) -> None:
        tail = "\n".join((proc.stdout or "").splitlines()[-30:])
        super().__init__(f"{what} (exit {proc.returncode}):\n{tail}")


def run_blender(args: list[str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
    assert BLENDER is not None, "blender is not on PATH"
    return subprocess.run(
        [BLENDER, "-b", "--factory-startup", *args],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, timeout=timeout, check=False,
    )


def make_scene(kind: str, out_dir: str | os.PathLike[str], *, frames: int | None = None,
               res: int | None = None, samples: int | None = None,
               denoise: bool = False) -> Path:
    """Run examples/make_scene.py; return the main .blend it wrote."""
    args = ["--python", str(MAKE_SCENE), "--", kind, str(out_dir)]
    for flag, value in (("--frames", frames), ("--res", res), ("--samples", samples)):
        if value is not None:
            args += [flag, str(value)]
    if denoise:
        args.append("--denoise")
    proc = run_blender(args)
    blend = Path(out_dir) / ("anim.blend" if kind == "anim" else "project/shots/shot.blend")
    if proc.returncode != 0 or not blend.is_file():
        raise BlenderFailed(f"make_scene {kind} wrote no {blend}", proc)
    return blend


def render_frames(blend: str | os.PathLike[str], frames: list[int],
                  out_dir: str | os.PathLike[str], prefix: str = "frame_",
                  timeout: float = 180) -> list[Path]:
    """Render ``frames`` of ``blend`` as PNGs in ``out_dir``; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    args = [str(blend), "-o", str(out / f"{prefix}####"), "-F", "PNG"]
    for f in frames:
        args += ["-f", str(f)]
    proc = run_blender(args, timeout=timeout)
    paths = [out / f"{prefix}{f:04d}.png" for f in frames]
    if not all(p.is_file() for p in paths):
        raise BlenderFailed(f"rendering {blend} frames {frames} left no images", proc)
    return paths


def blender_eval(blend: str | os.PathLike[str], code: str) -> Any:
    """Open ``blend`` and return the JSON value of ``code`` (an expression using bpy)."""
    script = (
        "import bpy, json, sys\n"
        f"value = ({code})\n"
        "print('BFJSON:' + json.dumps(value))\n"
        "sys.stdout.flush()\n"
    )
    proc = run_blender([str(blend), "--python-expr", script])
    for line in proc.stdout.splitlines():
        if line.startswith("BFJSON:"):
            return json.loads(line[len("BFJSON:"):])
    raise BlenderFailed(f"evaluating {code!r} in {blend} printed nothing", proc)


def read_rgba(path: str | os.PathLike[str]) -> Any:
    """The image's pixels as a numpy array (height, width, 4) of uint8."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGBA")).copy()


def textured_colors(path: str | os.PathLike[str]) -> dict[str, int]:
    """Pixels of the ``textured`` scene's colours in a render: the checker's yellow and
    blue, the linked prop's green. A missing texture renders magenta instead."""
    rgb = read_rgba(path)[..., :3].astype(int)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return {
        "yellow": int(((r > 150) & (g > 120) & (b < 100)).sum()),
        "blue": int(((b > 120) & (r < 80)).sum()),
        "green": int(((g > 150) & (r < 120) & (g - b > 30)).sum()),
        "magenta": int(((r > 200) & (b > 200) & (g < 80)).sum()),
    }


def assert_same_image(a: str | os.PathLike[str], b: str | os.PathLike[str],
                      tolerance: float = 2.0) -> None:
    """Two renders match: mean per-channel difference within tolerance/4 (of 255),
    and 99% of values within tolerance*4."""
    import numpy as np

    pa, pb = read_rgba(a).astype(int), read_rgba(b).astype(int)
    assert pa.shape == pb.shape
    diff = np.abs(pa - pb)
    assert diff.mean() <= tolerance / 4 and np.percentile(diff, 99) <= tolerance * 4, (
        f"{Path(a).name} differs from {Path(b).name}: mean {diff.mean():.3f}, max {diff.max()}")
