"""``bf``: submit Blender jobs to the farm and follow them from a shell.

    bf submit shot.blend --frames 1-250 --wait      pack, upload, queue (prints the job id)
    bf jobs | bf show JOB | bf wait JOB | bf download JOB DIR | bf cancel JOB | bf nodes
    (``bf download`` puts each job in its own ``DIR/<job name>-<short id>/``; ``--flat``
    puts the files in DIR itself; a file whose content differs is never replaced
    without ``--overwrite``)

The server comes from ``--server``, else $BLENDERFARM_SERVER, else ``server`` in
``client.toml`` in the user config folder, else http://127.0.0.1:8765 (the token
likewise: ``--token``, $BLENDERFARM_TOKEN, ``token``). ``--json`` makes any command
print one JSON document on stdout. Exit codes: 0 done, 1 failed (a job failed or
was canceled, the server refused, a file is unusable), 2 bad usage or an invalid
job, 3 server unreachable. Errors are one sentence on stderr, never a traceback
(``--debug`` shows it).

A thin edge over ``api``, ``pack`` and ``progress``: no HTTP, packing or formatting
logic of its own, and nothing the add-on needs (it must not import this module).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any, TextIO

from ..protocol.frames import FrameRangeError, parse_frames
from ..protocol.jobspec import DEVICES, FORMATS, SpecError, safe_pattern, validate_spec
from ..protocol.version import __version__
from . import control_cli
from . import progress as fmt
from .api import ApiError, Client, OutputConflict, ServerUnreachable, job_folder_name
from .pack import (
    PackError,
    build_spec,
    pack_project,
    scene_frame_range,
    scene_output,
    scene_resolution,
    upload_missing,
)
from .wait_cli import wait_for

log = logging.getLogger("blenderfarm.client")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
DEFAULT_SERVER = "http://127.0.0.1:8765"


class CliError(Exception):
    """A failure to report as one sentence with a chosen exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Ctx:
    client: Client
    json: bool
    out: TextIO
    err: TextIO

    def say(self, text: str) -> None:
        """Human information: stderr, so that stdout stays parseable."""
        print(text, file=self.err, flush=True)

    def emit(self, doc: Any) -> None:
        print(json.dumps(doc, indent=2, sort_keys=True), file=self.out, flush=True)


# --- settings ----------------------------------------------------------------------------


def config_path() -> pathlib.Path:
    import platformdirs  # here, not at the top: the add-on vendors this package

    return pathlib.Path(platformdirs.user_config_dir("blenderfarm")) / "client.toml"


def load_config(path: pathlib.Path) -> dict[str, Any]:
    import tomllib

    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CliError(f"Cannot read the config file {path}: {exc}", EXIT_USAGE) from exc


def resolve_settings(
    server: str | None, token: str | None, environ: dict[str, str], config: dict[str, Any]
) -> tuple[str, str | None]:
    """The server URL and token, by precedence: flag, environment, config, default."""
    url = server or environ.get("BLENDERFARM_SERVER") or config.get("server") or DEFAULT_SERVER
    tok = token or environ.get("BLENDERFARM_TOKEN") or config.get("token") or None
    return str(url), (str(tok) if tok else None)


# --- the arguments -------------------------------------------------------------------------


def _common_options() -> argparse.ArgumentParser:
    # SUPPRESS defaults let the options go before or after the command without the
    # sub-parser's defaults overwriting what was given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--server", default=argparse.SUPPRESS, help="farm server URL")
    common.add_argument("--token", default=argparse.SUPPRESS, help="API token")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print one JSON document on stdout")
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks")
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common_options()
    parser = argparse.ArgumentParser(prog="bf", parents=[common],
                                     description="Blenderfarm command line.")
    parser.add_argument("--version", action="version", version=f"bf {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, func: Any, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help_, description=help_)
        p.set_defaults(func=func)
        return p

    _submit_arguments(command("submit", cmd_submit, "pack a .blend, upload it and queue a job"))
    command("jobs", cmd_jobs, "list jobs")
    command("show", cmd_show, "show a job and its tasks").add_argument("job")
    w = command("wait", cmd_wait, "follow a job until it ends (exit 0 if completed)")
    w.add_argument("job")
    _wait_arguments(w)
    d = command("download", cmd_download,
                "download a job's outputs into DIR/<job name>-<short id>/ (only new files)")
    d.add_argument("job")
    d.add_argument("dir", help="the folder that gets a folder per job (with --flat: the "
                               "folder the files go into)")
    d.add_argument("--flat", action="store_true",
                   help="put the files into DIR itself, not into a folder of the job's")
    d.add_argument("--overwrite", action="store_true",
                   help="replace files whose content differs (by default they are never "
                        "replaced, and nothing is downloaded)")
    command("cancel", cmd_cancel, "cancel a job").add_argument("job")
    command("nodes", cmd_nodes, "list render nodes")
    command("info", cmd_info, "show the server's version and state")
    control_cli.add_commands(command)
    return parser


def _submit_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("blend", help="the .blend file to render")
    p.add_argument("--frames", help="frame range like 1-250, 1-10,20 or 1-100x5 "
                   "(default: the scene's range)")
    p.add_argument("--chunk", type=int, default=1, help="frames per task (default 1)")
    p.add_argument("--priority", type=int, default=50, help="0-100, higher first (default 50)")
    p.add_argument("--user", help="who submits, for sharing the farm fairly between users "
                   "of equal priority (default: your login name; a farm with tokens uses "
                   "the token's name)")
    p.add_argument("--samples", type=int, help="override the render samples")
    p.add_argument("--resolution-percent", type=int, help="override the resolution %%")
    p.add_argument("--format", type=str.upper, choices=FORMATS,
                   help="output image format (only the format: the scene's colour mode and "
                   "depth stay where the format has them; default: the scene's own)")
    p.add_argument("--no-denoise", action="store_true", help="turn denoising off")
    p.add_argument("--camera", help="render through this camera object (default: the "
                   "scene's active camera)")
    p.add_argument("--device", type=str.upper, choices=DEVICES,
                   help="Cycles renders on the CPU (only nodes' CPU slots take the job) or "
                   "on GPUs (only GPU slots); default: the scene's own device setting, "
                   "with the GPUs of the slot that takes it")
    p.add_argument("--persistent-data", action=argparse.BooleanOptionalAction, default=None,
                   help="keep the scene's data (BVH, images) in memory from one frame to "
                   "the next in a node's Blender, so that a heavy scene is built once, not "
                   "for every frame (default: the scene's own setting)")
    p.add_argument("--tag", action="append", default=[], dest="tags", metavar="TAG",
                   help="render only on nodes started with --tag TAG (repeat: every tag "
                   "is required)")
    p.add_argument("--blender", metavar="VERSION",
                   help="render only on this Blender: 4.5 (4.5.x) or >=4.5 (4.5 or newer); "
                   "default: the Blender that saved the .blend, or newer")
    p.add_argument("--tiles", type=_tiles_arg, metavar="N|auto",
                   help="split each frame into N tiles that nodes render side by side, "
                   "then merge into the frame (auto: enough for every online node to take "
                   "several, none under 64 px); for stills and heavy frames")
    p.add_argument("--video", action="store_true",
                   help="also make a video of the frames when they are done (H.264 MP4 at "
                   "the scene's frame rate; the scene's own movie settings where its "
                   "output is a movie)")
    p.add_argument("--name", help="job name (default: the .blend's name)")
    p.add_argument("--scene", help="scene to render (default: the file's active scene)")
    p.add_argument("--project-root", help="folder the project's paths are relative to "
                   "(default: the smallest folder holding the .blend and its files)")
    p.add_argument("--paused", action="store_true", help="queue the job paused")
    p.add_argument("--allow-scripts", action="store_true",
                   help="let Blender run the file's Python (drivers, scripts) on nodes that "
                        "were started with --allow-scripts")
    p.add_argument("--wait", action="store_true", help="then follow it like `bf wait`")
    _wait_arguments(p)


def _wait_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--interval", type=float, default=1.0,
                   help="seconds between polls, when the server offers no live events")
    p.add_argument("--timeout", type=float, default=None,
                   help="give up (exit 1) after this many seconds")


# --- entry point ---------------------------------------------------------------------------


def _negative_frames(argv: list[str]) -> list[str]:
    """``--frames -5--1`` as ``--frames=-5--1``: argparse takes a value starting with
    '-' for an option unless it is a plain negative number."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] == "--frames" and arg[:1] == "-" and arg[1:2].isdigit():
            out[-1] = f"--frames={arg}"
        else:
            out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_negative_frames(sys.argv[1:] if argv is None else argv))
    if not hasattr(args, "func"):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    debug, as_json = getattr(args, "debug", False), getattr(args, "json", False)
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not debug:  # BAT warns of what bf reports itself (missing files, damaged .blend)
        logging.getLogger("blender_asset_tracer").setLevel(logging.ERROR)
    try:
        ctx = _make_ctx(args, as_json)
        return int(args.func(args, ctx))
    except KeyboardInterrupt:
        print("\nInterrupted.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `bf jobs --json | head`: the reader left. Python's docs' recipe: point stdout
        # at devnull so the interpreter's final flush does not fail a second time.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except Exception as exc:  # translated into one sentence; --debug shows the traceback
        code, doc = _describe(exc)
        log.debug("bf %s failed", args.command, exc_info=True)
        print(f"bf: {doc['message']}", file=sys.stderr)
        if as_json:
            print(json.dumps({"error": doc}), flush=True)
        if code is None:
            raise
        return code


def _make_ctx(args: argparse.Namespace, as_json: bool) -> Ctx:
    config = load_config(config_path())
    url, token = resolve_settings(getattr(args, "server", None), getattr(args, "token", None),
                                  dict(os.environ), config)
    try:
        client = Client(url, token)
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from exc
    return Ctx(client=client, json=as_json, out=sys.stdout, err=sys.stderr)


def _describe(exc: Exception) -> tuple[int | None, dict[str, Any]]:
    """Exit code and error document for an exception; code None: a bug, re-raise."""
    if isinstance(exc, CliError):
        return exc.code, _err("error", str(exc))
    if isinstance(exc, ServerUnreachable):
        return EXIT_UNREACHABLE, _err("unreachable", str(exc))
    if isinstance(exc, ApiError):
        hint = ""
        if exc.status == 401:
            hint = " Pass --token or set BLENDERFARM_TOKEN."
        code = EXIT_USAGE if exc.status in (400, 413, 422) else EXIT_FAILED
        return code, _err(exc.code, f"The server refused: {exc}.{hint}", exc.field)
    if isinstance(exc, SpecError):
        return EXIT_USAGE, _err("invalid_spec", f"Invalid job: {exc}", exc.path)
    if isinstance(exc, FrameRangeError):
        return EXIT_USAGE, _err("invalid_frames", str(exc), "frames")
    if isinstance(exc, PackError):
        return EXIT_FAILED, _err("pack_failed", f"Cannot pack {exc.path}: {exc.message}")
    if isinstance(exc, OSError):
        where = f" {exc.filename}" if exc.filename else ""
        return EXIT_FAILED, _err("os_error", f"{exc.strerror or exc}:{where}".rstrip(":"))
    return None, _err("internal", f"internal error: {exc!r}")


def _err(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "field": field}


# --- submit ----------------------------------------------------------------------------------


def cmd_submit(args: argparse.Namespace, ctx: Ctx) -> int:
    blend = pathlib.Path(args.blend)
    if not blend.is_file():
        raise CliError(f"No such .blend file: {blend}")
    frames = _submit_frames(args, blend, ctx)
    overrides = submit_overrides(args)
    _prevalidate(args, frames, overrides)
    _check_server(ctx)  # before packing: a long pack then "unreachable" wastes minutes
    with tempfile.TemporaryDirectory(prefix="bf-pack-") as tmp:
        # copy=False: textures are hashed and sent from where they lie, not duplicated.
        packed = pack_project(blend, project_root=args.project_root,
                              workdir=pathlib.Path(tmp, "pack"), copy=False)
        ctx.say(f"Packed {len(packed.manifest)} file(s), {fmt.format_bytes(packed.total_bytes)}, "
                f"from {packed.project_root}")
        for path in packed.missing:
            ctx.say(f"warning: missing file, the render will lack it: {path}")
        out_path, scene_format = scene_output(blend, args.scene)
        spec = build_spec(packed, name=args.name, frames=frames, chunk=args.chunk,
                          priority=args.priority, overrides=overrides, scene=args.scene,
                          paused=args.paused, scripts=args.allow_scripts, user=args.user,
                          tags=args.tags, output_pattern=safe_pattern(out_path),
                          scene_format=scene_format, blender=args.blender,
                          tiles=args.tiles, video=args.video,
                          resolution=scene_resolution(blend, args.scene,
                                                      args.resolution_percent))
        stats = upload_missing(ctx.client, packed, on_progress=_upload_meter(ctx))
    ctx.say(f"Uploaded {stats.files_sent} file(s), {fmt.format_bytes(stats.bytes_sent)}; "
            f"skipped {stats.files_skipped} already on the server "
            f"({fmt.format_bytes(stats.bytes_skipped)})")
    job = ctx.client.create_job(spec)
    ctx.say(f"Queued job {job.get('name')!r}: {job.get('frames_total', '?')} frame(s), "
            f"status {job.get('status')}")
    code = EXIT_OK
    if args.wait:
        if not ctx.json:
            print(job["id"], file=ctx.out, flush=True)
        job, ok = wait_for(ctx, str(job["id"]), args.interval, args.timeout)
        code = EXIT_OK if ok else EXIT_FAILED
    if ctx.json:
        ctx.emit({"job": job, "upload": asdict(stats), "missing": packed.missing})
    elif not args.wait:
        print(job["id"], file=ctx.out, flush=True)
    return code


def submit_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The job's ``overrides`` from ``bf submit``'s options; None keeps the scene's own."""
    return {
        "samples": args.samples,
        "resolution_percent": args.resolution_percent,
        "format": args.format,
        "camera": args.camera,
        "denoise": False if args.no_denoise else None,
        "device": args.device,
        "persistent_data": args.persistent_data,
    }


def _submit_frames(args: argparse.Namespace, blend: pathlib.Path, ctx: Ctx) -> str:
    if args.frames is not None:  # given, even empty: "" is a mistake, not "all of them"
        parse_frames(args.frames)  # fail before packing, not after
        return str(args.frames)
    start, end = scene_frame_range(blend, args.scene)
    if end < start:
        raise CliError(f"The scene's frame range {start}-{end} is empty; pass --frames.",
                       EXIT_USAGE)
    ctx.say(f"Frames {start}-{end} (the scene's range)")
    return f"{start}-{end}"


def _prevalidate(args: argparse.Namespace, frames: str, overrides: dict[str, Any]) -> None:
    """Check every option against the job schema before the (maybe long) pack."""
    placeholder = "placeholder.blend"
    validate_spec({
        "blend": placeholder, "manifest": {placeholder: "0" * 64}, "frames": frames,
        "chunk": args.chunk, "priority": args.priority, "name": args.name,
        "scene": args.scene, "paused": args.paused, "user": args.user, "tags": args.tags,
        "blender": args.blender, "overrides": {k: v for k, v in overrides.items() if v is not None},
        "tiles": args.tiles, "video": args.video,
    })


def _tiles_arg(value: str) -> int | str:
    """``--tiles``: a count or ``auto`` (the schema checks the bounds)."""
    if value.strip().lower() == "auto":
        return "auto"
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError("must be a number of tiles or 'auto'") from None


def _check_server(ctx: Ctx) -> None:
    info = ctx.client.info()
    if info.get("auth_required") and not ctx.client.token:
        raise CliError("The server requires a token: pass --token or set BLENDERFARM_TOKEN.")


def _upload_meter(ctx: Ctx) -> Any:
    if not ctx.err.isatty():
        return None
    last = [0.0]

    def show(sent: int, total: int) -> None:
        now = time.monotonic()
        if sent < total and now - last[0] < 0.1:
            return
        last[0] = now
        line = f"Uploading {fmt.format_bytes(sent)} / {fmt.format_bytes(total)}"
        end = "\n" if sent >= total else ""
        print(f"\r{fmt.bar(sent / total if total else 1.0, 32)} {line}\x1b[K", end=end,
              file=ctx.err, flush=True)

    return show


# --- wait ------------------------------------------------------------------------------------


def cmd_wait(args: argparse.Namespace, ctx: Ctx) -> int:
    job, ok = wait_for(ctx, args.job, args.interval, args.timeout)
    if ctx.json:
        ctx.emit({"job": job})
    return EXIT_OK if ok else EXIT_FAILED


# --- the other commands ----------------------------------------------------------------------


def cmd_jobs(args: argparse.Namespace, ctx: Ctx) -> int:
    jobs = ctx.client.list_jobs()
    if ctx.json:
        ctx.emit({"jobs": jobs})
    elif not jobs:
        print("No jobs.", file=ctx.out)
    else:
        now = time.time()
        print(fmt.format_table(fmt.JOB_HEADERS, [fmt.job_row(j, now) for j in jobs]),
              file=ctx.out)
    return EXIT_OK


def cmd_show(args: argparse.Namespace, ctx: Ctx) -> int:
    job = ctx.client.get_job(args.job)
    tasks = ctx.client.job_tasks(args.job)
    if ctx.json:
        ctx.emit({"job": job, "tasks": tasks})
        return EXIT_OK
    now = time.time()
    for key, value in job.items():
        if key == "nodes":  # which online nodes can take it, and why the others cannot
            key, shown = "can run on", fmt.can_run_on(value)
        else:
            shown = fmt.format_age(value, now) if key in fmt.TIME_KEYS else fmt.cell(value)
        print(f"{key + ':':16} {'-' if shown is None else shown}", file=ctx.out)
    you = ctx.client.info().get("you")
    if you:
        mine = you["may"]["control_all_jobs"] or job.get("owner") == you["name"]
        print(f"{'you:':16} " + ("may change it (pause, cancel, requeue, priority, delete)"
                                 if mine else f"may only look: it is {job.get('owner') or 'another user'}'s"),
              file=ctx.out)
    print(file=ctx.out)
    print(fmt.item_table(tasks, fmt.TASK_COLUMNS, now) if tasks else "No tasks.", file=ctx.out)
    return EXIT_OK


def cmd_download(args: argparse.Namespace, ctx: Ctx) -> int:
    dest = args.dir
    if not args.flat:
        job = ctx.client.get_job(args.job)
        dest = os.path.join(args.dir, job_folder_name(str(job.get("name") or ""),
                                                      str(job.get("id") or args.job)))
    unchanged: list[str] = []

    def on_file(path: str, fetched: bool) -> None:
        if not fetched:
            unchanged.append(path)
        elif not ctx.json:
            ctx.say(f"  {path}")

    try:
        written = ctx.client.download_outputs(args.job, dest, on_file=on_file,
                                              overwrite=args.overwrite)
    except OutputConflict as exc:
        raise CliError(f"Nothing downloaded: {exc}; pass --overwrite to replace it, or "
                       "download into another folder.") from exc
    if ctx.json:
        ctx.emit({"downloaded": written, "unchanged": unchanged, "dir": dest})
    else:
        ctx.say(f"Downloaded {len(written)} file(s) to {dest}; "
                f"{len(unchanged)} already up to date.")
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace, ctx: Ctx) -> int:
    job = ctx.client.cancel_job(args.job)
    if ctx.json:
        ctx.emit({"job": job})
    else:
        print(f"Job {job.get('id')}: {job.get('status')}", file=ctx.out)
    return EXIT_OK


def cmd_nodes(args: argparse.Namespace, ctx: Ctx) -> int:
    nodes = ctx.client.list_nodes()
    if ctx.json:
        ctx.emit({"nodes": nodes})
    else:
        print(fmt.format_table(fmt.NODE_HEADERS, fmt.node_rows(nodes, time.time()))
              if nodes else "No nodes.", file=ctx.out)
    return EXIT_OK


def _may(you: dict[str, Any]) -> str:
    """What the token may do, in one line."""
    may = you["may"]
    jobs = "every job" if may["control_all_jobs"] else "your own jobs"
    nodes = ", the nodes" if may["control_nodes"] else ""
    reads = "every job's" if may["read_all_outputs"] else "your own jobs'"
    who = f"{you['name']} ({you['role']})" if you["name"] else "anyone (an open farm)"
    return f"{who}: may change {jobs}{nodes}; may read {reads} outputs and logs"


def cmd_info(args: argparse.Namespace, ctx: Ctx) -> int:
    info = ctx.client.info()
    if ctx.json:
        ctx.emit({"server": ctx.client.server_url, **info})
    else:
        print(f"server:        {ctx.client.server_url}", file=ctx.out)
        for key in ("server_version", "protocol", "nodes_online", "auth_required", "store"):
            print(f"{key + ':':14} {info.get(key)}", file=ctx.out)
        you = info.get("you")
        if you:
            print(f"{'you:':14} {_may(you)}", file=ctx.out)
    return EXIT_OK
