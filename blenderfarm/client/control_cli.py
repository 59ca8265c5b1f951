"""The `bf` commands that steer jobs and nodes: pause, resume, requeue, priority,
delete, log; `bf node drain|disable|enable NODE`. Registered by ``cli.build_parser``;
thin wrappers over ``Client`` like the rest of the command line."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .cli import Ctx

Register = Callable[[str, Any, str], argparse.ArgumentParser]


def add_commands(command: Register) -> None:
    p = command("pause", cmd_pause, "pause a job: running tasks finish, no new ones start")
    p.add_argument("job")
    p.add_argument("--stop", action="store_true", help="stop running tasks too (they requeue)")
    command("resume", cmd_resume, "resume a paused job").add_argument("job")
    r = command("requeue", cmd_requeue, "render a job's failed tasks again (--all: every task)")
    r.add_argument("job")
    r.add_argument("--all", action="store_true", help="every task, done ones too")
    pr = command("priority", cmd_priority, "change a job's priority (0-100, higher first)")
    pr.add_argument("job")
    pr.add_argument("priority", type=int)
    command("delete", cmd_delete, "delete a job, its frames and files no other job uses"
            ).add_argument("job")
    lg = command("log", cmd_log, "print a task's render log")
    lg.add_argument("task")
    n = command("node", cmd_node, "drain, disable or enable a render node")
    n.add_argument("action", choices=("drain", "disable", "enable"))
    n.add_argument("node", help="node id or name")


def _job_result(ctx: Ctx, job: dict[str, Any]) -> int:
    if ctx.json:
        ctx.emit({"job": job})
    else:
        print(f"Job {job.get('id')}: {job.get('status')} (priority {job.get('priority')})",
              file=ctx.out)
    return 0


def cmd_pause(args: argparse.Namespace, ctx: Ctx) -> int:
    return _job_result(ctx, ctx.client.job_action(args.job, "pause", {"stop": args.stop}))


def cmd_resume(args: argparse.Namespace, ctx: Ctx) -> int:
    return _job_result(ctx, ctx.client.job_action(args.job, "resume"))


def cmd_requeue(args: argparse.Namespace, ctx: Ctx) -> int:
    which = "all" if args.all else "failed"
    return _job_result(ctx, ctx.client.job_action(args.job, "requeue", {"which": which}))


def cmd_priority(args: argparse.Namespace, ctx: Ctx) -> int:
    return _job_result(ctx, ctx.client.job_action(args.job, "priority",
                                                  {"priority": args.priority}))


def cmd_delete(args: argparse.Namespace, ctx: Ctx) -> int:
    ctx.client.delete_job(args.job)
    if ctx.json:
        ctx.emit({"deleted": args.job})
    else:
        print(f"Job {args.job} deleted", file=ctx.out)
    return 0


def cmd_log(args: argparse.Namespace, ctx: Ctx) -> int:
    text = ctx.client.task_log(args.task)
    if ctx.json:
        ctx.emit({"task_id": args.task, "text": text})
    else:
        print(text, file=ctx.out, end="" if text.endswith("\n") else "\n")
    return 0


def cmd_node(args: argparse.Namespace, ctx: Ctx) -> int:
    rec = ctx.client.node_action(args.node, args.action)
    if ctx.json:
        ctx.emit({"node": rec})
    else:
        print(f"Node {rec.get('name')}: {rec.get('state')}", file=ctx.out)
    return 0
