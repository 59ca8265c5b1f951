"""``bf-node``: the render-node agent (meant to run as a systemd service)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import tomllib
from dataclasses import fields
from pathlib import Path

import platformdirs

from ..protocol.jobspec import MAX_TAGS, TAG_MAX, is_tag
from ..protocol.messages import SlotCaps
from ..protocol.version import __version__
from .agent import Agent, FatalError
from .blender import (
    BlenderInfo,
    BlenderNotFound,
    BlenderProbeError,
    find_blender,
    probe_blender,
    probe_opengl,
)
from .config import NodeConfig, parse_size
from .devices import SLOT_MODES, SlotError, cards, check_slots, slot_layout
from .encode import probe_ffmpeg
from .workdir import WorkDirBusy, lock_work_dir

log = logging.getLogger("blenderfarm.node")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bf-node", description="Blenderfarm render-node agent.")
    p.add_argument("--server", default=None, help="server URL (default http://127.0.0.1:8765)")
    p.add_argument("--token", default=None, help="node token (or BLENDERFARM_NODE_TOKEN)")
    p.add_argument("--blender", action="append", default=None,
                   help="Blender executable (default: $BLENDER, then 'blender' on PATH); "
                        "repeat for more Blenders on this node")
    p.add_argument("--slots", default=None, choices=SLOT_MODES,
                   help="per-gpu: one task per GPU (the default with GPUs); all-gpus: one "
                        "task on every GPU; cpu: CPU only (the default without GPUs)")
    p.add_argument("--cpu-slot", action="store_true",
                   help="render on the CPU too, in a slot beside the GPU slots")
    p.add_argument("--cpu-slots", type=int, default=None, metavar="N",
                   help="N CPU slots, each rendering one task with threads/N (default 1)")
    p.add_argument("--name", default=None, help="node name shown on the farm (default: hostname)")
    p.add_argument("--threads", type=int, default=None, help="render threads (default: all)")
    p.add_argument("--work-dir", type=Path, default=None,
                   help="cache and scratch folder (default: the platform's user cache dir)")
    p.add_argument("--tag", action="append", default=[],
                   help="a tag jobs may ask for (bf submit --tag); repeat for more")
    p.add_argument("--cache-size", default=None, metavar="SIZE",
                   help="most the blob cache may hold, e.g. 20G or 500M (default 20G); "
                        "least recently used files go first")
    p.add_argument("--allow-scripts", action="store_true",
                   help="let jobs that ask for it run Python scripts inside .blend files")
    p.add_argument("--watchdog", type=float, default=None,
                   help="seconds without progress before a render is killed (default 600)")
    p.add_argument("--no-persistent", action="store_true",
                   help="start a new Blender for every task (slower; for comparison)")
    p.add_argument("--config", type=Path, default=None,
                   help="TOML file with a [node] table (default: node.toml in the user "
                        "config folder, when it exists)")
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--version", action="version", version=f"bf-node {__version__}")
    return p.parse_args(argv)


def make_config(args: argparse.Namespace) -> NodeConfig:
    """Defaults, then the TOML file's [node] table, then environment, then flags."""
    cfg = NodeConfig()
    path = args.config or default_config_path()
    if args.config is not None or path.exists():
        _apply_file(cfg, path)
    cfg.server = args.server or os.environ.get("BLENDERFARM_SERVER") or cfg.server
    cfg.token = args.token or os.environ.get("BLENDERFARM_NODE_TOKEN") or cfg.token
    cfg.blender = args.blender or cfg.blender
    cfg.blender_paths()  # a malformed list is refused here, in one sentence
    cfg.slots = args.slots or cfg.slots
    if not isinstance(cfg.cpu_slot, bool):
        raise ValueError(f"cpu_slot must be true or false, not {cfg.cpu_slot!r}")
    cfg.cpu_slot = args.cpu_slot or cfg.cpu_slot
    if args.cpu_slots is not None:
        cfg.cpu_slots = args.cpu_slots
    # now, before any Blender starts; per-gpu on a node without a GPU, after the probe
    check_slots(cfg.slots, cfg.cpu_slots)
    cfg.name = args.name or cfg.name
    cfg.threads = args.threads or cfg.threads
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    cfg.work_dir = Path(cfg.work_dir).expanduser().resolve()
    cfg.tags = args.tag or cfg.tags
    _check_tags(cfg.tags)
    cfg.cache_size = parse_size(cfg.cache_size if args.cache_size is None else args.cache_size)
    cfg.allow_scripts = args.allow_scripts or cfg.allow_scripts
    if args.watchdog is not None:
        cfg.watchdog = args.watchdog if args.watchdog > 0 else None
    cfg.persistent = cfg.persistent and not args.no_persistent
    return cfg


def _check_tags(tags: object) -> None:
    """The server refuses a hello with a bad tag: say so here, in one sentence."""
    if not isinstance(tags, list) or len(tags) > MAX_TAGS:
        raise ValueError(f"tags must be a list of at most {MAX_TAGS} tags, such as ['gpu']")
    for tag in tags:
        if not is_tag(tag):
            raise ValueError(f"tag {tag!r}: a tag is 1 to {TAG_MAX} letters, digits, '_', '.' "
                             "or '-', not starting with '.' or '-'")


def default_config_path() -> Path:
    return Path(platformdirs.user_config_dir("blenderfarm", appauthor=False)) / "node.toml"


def _apply_file(cfg: NodeConfig, path: Path) -> None:
    try:
        with open(path, "rb") as f:
            table = tomllib.load(f).get("node", {})
    except FileNotFoundError as exc:
        raise ValueError(f"config file not found: {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"config file {path} is not valid TOML: {exc}") from exc
    known = {f.name for f in fields(NodeConfig)}
    for key, value in table.items():
        if key not in known:
            raise ValueError(f"{path}: unknown setting {key!r} in [node]")
        setattr(cfg, key, value)


async def _probe(explicit: str | None) -> tuple[BlenderInfo, str]:
    """Find and probe one Blender: what it can do, and why it has no OpenGL ("" if it has)."""
    path = find_blender(explicit)
    # side by side: the tiny OpenGL render adds about half a second to the start
    info, (opengl, why_not) = await asyncio.gather(probe_blender(path), probe_opengl(path))
    info.opengl = opengl
    return info, why_not


def _say(n: int, info: BlenderInfo, why_not: str) -> None:
    devices = ", ".join(f"{d.type} {d.name or d.id}" for d in info.devices) or "CPU"
    print(f"bf-node: Blender {info.version} at {info.path} (blender {n}), "
          f"denoise (OIDN): {'yes' if info.oidn else 'no'}, "
          f"OpenGL (Eevee, Workbench): {'yes' if info.opengl else 'no'}, devices: {devices}",
          flush=True)
    if not info.oidn:
        print(f"bf-node: Blender {n} has no OpenImageDenoise: jobs that need Cycles denoising "
              "go to other Blenders or nodes", flush=True)
    if not info.opengl:
        print(f"bf-node: Blender {n} cannot render Eevee or Workbench here ({why_not}: no "
              "OpenGL); such jobs go to other Blenders or nodes. To render them here, run "
              "bf-node under xvfb-run or install a GPU driver.", flush=True)


async def _main(cfg: NodeConfig) -> int:
    try:
        # every Blender at once (each probe is a Blender start or two), each to its end,
        # so none is left running; the first that fails, in the order given, is said
        results = await asyncio.gather(*(_probe(p) for p in cfg.blender_paths()),
                                       return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        probed = [r for r in results if not isinstance(r, BaseException)]
        infos = [info for info, _ in probed]
        slots = slot_layout(cfg.slots, cards(info.devices for info in infos),
                            cpu_slot=cfg.cpu_slot, cpu_slots=cfg.cpu_slots)
    except BlenderNotFound as exc:
        print(f"bf-node: {exc}", file=sys.stderr)
        return 2
    except BlenderProbeError as exc:
        print(f"bf-node: {exc}\n{exc.output}", file=sys.stderr)
        return 2
    except SlotError as exc:
        print(f"bf-node: {exc}", file=sys.stderr)
        return 2
    print(f"bf-node {__version__}: {cfg.name}, {len(infos)} Blender(s), slots: "
          f"{', '.join(_slot_text(s) for s in slots)}; server {cfg.server}", flush=True)
    for n, (info, why_not) in enumerate(probed):
        _say(n, info, why_not)
    ffmpeg = probe_ffmpeg()
    print(f"  FFmpeg: {ffmpeg or 'none (this node takes no video encodes)'}", flush=True)
    agent = Agent(cfg, infos, slots, ffmpeg=ffmpeg)
    task = asyncio.create_task(agent.run())
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    stopper = asyncio.create_task(stopping.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if stopping.is_set():
            log.info("stopping: handing unfinished tasks back to the farm")
            await agent.hand_back()
            task.cancel()
        await task
    except asyncio.CancelledError:
        log.info("stopped")
    except FatalError as exc:
        print(f"bf-node: the server refused this node: {exc}", file=sys.stderr)
        return 1
    return 0


def _slot_text(slot: SlotCaps) -> str:
    return f"{slot.id} ({', '.join(slot.gpus) or 'CPU'})"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = make_config(args)
        cfg.ws_url  # noqa: B018 - validates the URL early
    except ValueError as exc:
        print(f"bf-node: {exc}", file=sys.stderr)
        return 2
    # Before Blender is probed or the server is dialled: a second node on this dir must
    # stop at once, before it can announce the first one's uid.
    try:
        lock = lock_work_dir(cfg.work_dir)
    except WorkDirBusy as exc:
        # exit 1, not 2: under systemd it is retried, and starts once the other node stops
        print(f"bf-node: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"bf-node: cannot use the work dir {cfg.work_dir}: {exc.strerror or exc}; "
              "give a folder this user may write with --work-dir", file=sys.stderr)
        return 2
    with lock, contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(_main(cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
