"""A property-based protocol fuzzer: one bad message never stops the farm.

Each example starts a fresh in-process bf-server (a real loopback socket, a fresh
data dir), submits a few jobs and lets 2-4 simulated nodes loose on it. They do
honest work (render their tasks with the right outputs, report progress and logs,
fail tasks, disconnect and come back with ``running`` lists) mixed with hostile
input: valid messages with one or two things changed (a field of another type,
ints of 2**64-1 and -2**63, nan and inf, lone surrogates, long strings, deep
nesting, bytes for str, the task ids of other nodes and other jobs, frames that
are not the task's, output names such as ``../x`` and ``autorun.inf``), random
bytes, text frames, cut-off msgpack and hostile hellos. Hostile job specs (lone
surrogates in paths and names, huge ints, deep nesting) go to ``POST /api/jobs``.

Every step is followed by a barrier: each connected node sends a text frame, and
the server answers those in order on its connection, so when all answers are in,
the server has handled everything sent so far. The farm is then looked at and
these must hold (a breach is a *violation*):

* no HTTP answer is a 5xx, no request or barrier times out (a *hang*), and the
  server logs no traceback (asyncio, aiohttp and the ``blenderfarm`` loggers at
  ERROR, and threads that die: a *crash*) and no other ERROR (no disk is broken
  here, so none is expected);
* outputs come only from a node the task had been assigned to (the test tracks
  every ``assign`` each node got): an output that appears or changes in a step
  was sent by that step's node, which must hold an ``assign`` of that task; the
  same holds for a task becoming done and for failures counted against a node;
  a task held by a node was assigned to it (not just claimed in a hello);
* a task is done at most once: once done it stays done, with the same outputs
  (none replaced, none added, none taken by another task's file of that name);
* honest messages are never refused, and an honest ``task_done`` is acked;
* afterwards the server still answers ``/api/info``, ``/api/nodes`` and
  ``/api/jobs`` with 200, ``POST /api/jobs`` works, and a fresh node gets the new
  job's task and renders it;
* all nodes gone, the state seen through the API (jobs, their tasks and outputs,
  nodes) equals the state a new server on the same data dir shows after a
  restart. The differences that are legitimate, and left out of the comparison:
  a node's ``online``/``state`` (connections are not state; every node is
  offline here anyway), the order of a node's ``tasks`` (a restart lists them in
  job and task order, a live server in order of assignment) and a task's
  ``progress`` (ephemeral, not journaled on every report; a restart shows the
  progress of the task's last status change), and likewise the ``progress`` and
  ``frame`` of a node's ``current`` task, and a job's ``progress`` and ``eta`` (they
  count the parts of frames in flight, and the clock). Nothing else may differ: statuses,
  attempts, failures, failed nodes, errors, timestamps, counts, frames done,
  outputs, node info. Values are compared as JSON text, so ``true`` is not ``1``.

Figures are printed at the end (run with ``-s`` to see them on success): inputs
tried, refused cleanly, 5xx answers, crashes, hangs, violations by kind, and the
smallest scenario that showed each kind. ``PINNED`` holds the minimal reproduction
of each bug the fuzzer found; they run first, as explicit examples, so they stay
covered whatever the generated examples happen to be.

Bounded and reproducible: ``derandomize=True`` and no example database, a few
dozen examples, a time budget (examples past it are skipped and counted), and a
cap per example. ``BF_FUZZ_EXAMPLES`` and ``BF_FUZZ_SECONDS`` change the bounds;
``BF_FUZZ_SHRINK=1`` makes the first violation fail the example so Hypothesis
shrinks it to a minimal reproduction (slow: minutes); ``BF_FUZZ_VERBOSE=1`` prints
every failing example with its violations.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import msgpack
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from blenderfarm.protocol import PROTOCOL_VERSION
from blenderfarm.protocol import messages as m
from blenderfarm.server.app import make_app
from blenderfarm.server.config import ServerConfig
from blenderfarm.server.keys import FARM

EXAMPLES = int(os.environ.get("BF_FUZZ_EXAMPLES", "60"))
BUDGET_S = float(os.environ.get("BF_FUZZ_SECONDS", "60"))
SHRINK = os.environ.get("BF_FUZZ_SHRINK") == "1"
VERBOSE = os.environ.get("BF_FUZZ_VERBOSE") == "1"  # print every failing example
STEP_TIMEOUT = 3.0  # a barrier, a connect, a disconnect
HTTP_TIMEOUT = 3.0
EXAMPLE_TIMEOUT = 30.0
TEXT_REPLY = "frames must be binary msgpack"  # the server's answer to a text frame
HELD = ("assigned", "running")

BLEND = b"BLENDER pretend file for the protocol fuzzer"
SHA = hashlib.sha256(BLEND).hexdigest()


# --- values the fuzzer puts on the wire ----------------------------------------------------
@dataclass(frozen=True)
class Raw:
    """Bytes that go on the wire as they are, inside an otherwise encoded message:
    nesting deeper than the encoders make, invalid UTF-8, reserved bytes."""

    data: bytes = field(repr=False)
    label: str

    def __repr__(self) -> str:
        return f"Raw({self.label})"


def _mp_deep_map(n: int) -> Raw:
    return Raw(b"\x81\xa1k" * n + b"\xc0", f"map nested {n} deep")


MP_SPECIAL: list[Any] = [
    None, True, False, 0, -1, 1.5, 2**63 - 1, 2**64 - 1, -2**63,
    float("nan"), float("inf"), float("-inf"), "", "\ud800", "a\udfffb", "\x00",
    b"", b"\xff\xfe", b"bytes", [], {}, [1, "a"], {"k": [None]}, "../x", "autorun.inf",
    Raw(msgpack.packb("x" * 70_000), "'x' * 70000"),
    Raw(b"\xa2\xff\xfe", "str of invalid utf-8"), Raw(b"\xc1", "reserved byte 0xc1"),
    Raw(b"\x91" * 50 + b"\xc0", "list nested 50 deep"),
    _mp_deep_map(995), _mp_deep_map(2000),
]
mp_values = st.one_of(
    st.sampled_from(MP_SPECIAL), st.integers(-2**63, 2**64 - 1), st.floats(),
    st.text(st.characters(categories=["Cs", "Ll", "Nd", "Po"]), max_size=8),
    st.binary(max_size=12))


def mp_encode(v: Any) -> bytes:
    """msgpack, with :class:`Raw` parts spliced in and lone surrogates passed through
    (as their UTF-8-like bytes, which a strict decoder refuses)."""
    if isinstance(v, Raw):
        return v.data
    if isinstance(v, dict):
        n = len(v)
        head = bytes([0x80 | n]) if n < 16 else b"\xde" + n.to_bytes(2, "big")
        return head + b"".join(mp_encode(k) + mp_encode(x) for k, x in v.items())
    if isinstance(v, (list, tuple)):
        n = len(v)
        head = bytes([0x90 | n]) if n < 16 else b"\xdc" + n.to_bytes(2, "big")
        return head + b"".join(mp_encode(x) for x in v)
    out: bytes = msgpack.packb(v, use_bin_type=True, unicode_errors="surrogatepass")
    return out


JSON_SPECIAL: list[Any] = [
    "\ud800", "s\udfff", "\udc00.png", 2**64 - 1, -2**63 - 1, 10**40, float("nan"),
    float("inf"), -0.0, "", None, True, [], {}, [[["deep"]]],
    Raw(b'"' + b"x" * 100_000 + b'"', "'x' * 100000"),
    Raw(b"[" * 50 + b"]" * 50, "list nested 50 deep"),
    Raw(b"[" * 5000 + b"]" * 5000, "list nested 5000 deep"),
    Raw(b'{"a":' * 3000 + b"1" + b"}" * 3000, "object nested 3000 deep"),
]
json_values = st.one_of(
    st.sampled_from(JSON_SPECIAL), st.integers(),
    st.text(st.characters(categories=["Cs", "Lu", "Nd", "Po"]), max_size=8))


def js_encode(v: Any) -> bytes:
    if isinstance(v, Raw):
        return v.data
    if isinstance(v, dict):
        return b"{" + b",".join(js_encode(str(k)) + b":" + js_encode(x)
                                for k, x in v.items()) + b"}"
    if isinstance(v, (list, tuple)):
        return b"[" + b",".join(js_encode(x) for x in v) + b"]"
    return json.dumps(v).encode()


# --- scenarios -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Finish:
    """Honest: render a held task, upload its frames (each announced with frame_done
    when ``progressive``), then task_done with the right outputs."""

    node: int
    pick: int
    progressive: bool


@dataclass(frozen=True)
class Report:
    """Honest: progress (``value`` a fraction) or a log line (``value`` text)."""

    node: int
    pick: int
    kind: str
    value: Any


@dataclass(frozen=True)
class Fail:
    node: int
    pick: int
    reason: str
    retryable: bool


@dataclass(frozen=True)
class Disconnect:
    node: int


@dataclass(frozen=True)
class Reconnect:
    """Honest: a new connection whose hello lists the held tasks (all, none, the
    first); ``overlap``: it opens before the old one closes."""

    node: int
    running: str
    overlap: bool


@dataclass(frozen=True)
class Hostile:
    """A valid message of ``kind`` about a task (``target``: the node's own, another
    node's, another job's, a done one...) with ``mutations`` applied."""

    node: int
    kind: str
    target: str
    pick: int
    mutations: tuple[tuple[Any, ...], ...]


@dataclass(frozen=True)
class Garbage:
    node: int
    data: Any  # bytes, str (a text frame) or ("truncate", n)


@dataclass(frozen=True)
class HostileHello:
    node: int
    mutations: tuple[tuple[Any, ...], ...]


@dataclass(frozen=True)
class PostJob:
    """A job spec (``raw``: a body as it is), good when ``mutations`` is empty."""

    frames: int = 1
    chunk: int = 1
    priority: int = 50
    mutations: tuple[tuple[Any, ...], ...] = ()
    raw: Raw | None = None


@dataclass(frozen=True)
class JobAction:
    action: str
    job: int
    value: Any


@dataclass(frozen=True)
class Scenario:
    oidn: tuple[bool, ...]  # one per node
    jobs: tuple[PostJob, ...]
    actions: tuple[Any, ...]


def weighted(*options: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of ``options``, each drawn in proportion to its weight (``st.one_of`` drops
    repeated strategies, so repeating one does not weigh it)."""
    return st.sampled_from([s for w, s in options for _ in range(w)]).flatmap(lambda s: s)


node_ix = st.integers(0, 3)
pick = st.integers(0, 7)
TARGETS = ("other_node", "other_job", "done", "unknown", "any", "long", "empty")
NAMES = ("../x.png", "autorun.inf", "a/b.png", "", "CON.png", "x" * 300, "sibling",
         "other_task", "./ok.png", "a\\b.png", ".hidden", "C:x.png", "Desktop.ini")
message_mutation = st.one_of(
    st.tuples(st.just("frame"), st.sampled_from(["outside", "huge", "negative", "bool",
                                                 "other_task"])),
    st.tuples(st.just("name"), st.sampled_from(NAMES)),
    st.tuples(st.just("sha"), st.sampled_from(["foreign", "missing", "upper", "short"])),
    st.tuples(st.just("size"), st.sampled_from([2**64 - 1, 2**63, -2**63, -1, 0, True, 10**12])),
    st.tuples(st.just("outputs"), st.sampled_from(["missing_one", "extra", "empty", "twice",
                                                   "not_dicts"])),
    st.tuples(st.just("field"), st.integers(0, 15), mp_values),
    st.tuples(st.just("out_field"), st.sampled_from(["frame", "sha256", "size", "name", "x"]),
              mp_values),
    st.tuples(st.just("drop"), st.integers(0, 15)),
)
KINDS = ("progress", "frame_done", "frame_done", "task_done", "task_done", "task_failed",
         "log", "hello", "assign")
hostile = st.builds(Hostile, node=node_ix, kind=st.sampled_from(KINDS),
                    target=st.sampled_from(("own",) * 5 + TARGETS), pick=pick,
                    mutations=st.lists(message_mutation, max_size=2).map(tuple))
GARBAGE = [b"", b"\xc1", msgpack.packb([1, 2]), msgpack.packb({"no": "t"}),
           msgpack.packb({"t": "launch"}), msgpack.packb({"t": b"progress"}),
           msgpack.packb({1: 2}), b"\x91" * 3000 + b"\xc0", b"\xdf\xff\xff\xff\xff",
           b"\xdb\xff\xff\xff\xff", b"\xc6\x7f\xff\xff\xff", msgpack.packb(2**64 - 1)]
garbage = st.builds(Garbage, node=node_ix, data=st.one_of(
    st.binary(max_size=40), st.text(max_size=20), st.sampled_from(GARBAGE),
    st.tuples(st.just("truncate"), st.integers(1, 200))))
hello_mutation = st.one_of(
    st.tuples(st.just("blender"), st.sampled_from(["version", "oidn", "path", "devices", "x"]),
              mp_values),
    st.tuples(st.just("field"), st.integers(0, 15), mp_values),
    st.tuples(st.just("running"), st.sampled_from(["other_node", "queued", "done", "twice",
                                                   "unknown", "other_job", "many"])),
    st.tuples(st.just("uid"), st.sampled_from(["other_node", "empty", "long"])),
)
hostile_hello = st.builds(HostileHello, node=node_ix,
                          mutations=st.lists(hello_mutation, min_size=1, max_size=2).map(tuple))
SPEC_KEYS = ("name", "blend", "manifest", "frames", "scene", "chunk", "priority", "overrides",
             "paused", "scripts", "user", "x")
OVERRIDE_KEYS = ("engine", "samples", "resolution_percent", "resolution_x", "format", "camera",
                 "denoise")
spec_mutation = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(SPEC_KEYS), json_values),
    st.tuples(st.just("set"), st.sampled_from(OVERRIDE_KEYS).map(lambda k: "overrides." + k),
              json_values),
    st.tuples(st.just("manifest+"), st.sampled_from(["\ud800.png", "tex/\udc00.png",
                                                     "ok.png", "../x.png"])),
    st.tuples(st.just("blend"), st.sampled_from(["s\ud800.blend", "\udfff/s.blend"])),
)
RAW_SPECS = [Raw(b"[" * 100_000 + b"]" * 100_000, "list nested 100000 deep"),
             Raw(b"\xff\xfe\x00", "invalid utf-8"), Raw(b"", "empty"), Raw(b"null", "null"),
             Raw(b"1e999999", "1e999999"), Raw(b'"\\ud800"', "a lone surrogate"),
             Raw(b'{"blend": "\\ud800.blend", "manifest": {"\\ud800.blend": "%s"}, '
                 b'"frames": "1"}' % SHA.encode(), "blend path with a lone surrogate")]
job_plan = st.builds(PostJob, frames=st.integers(1, 4), chunk=st.integers(1, 2),
                     priority=st.sampled_from([20, 50, 80]))
post_job = weighted(
    (2, job_plan),
    (1, st.builds(PostJob, frames=st.integers(1, 3), mutations=st.lists(
        spec_mutation, min_size=1, max_size=2).map(tuple))),
    (1, st.builds(PostJob, raw=st.sampled_from(RAW_SPECS))))
job_action = st.builds(JobAction, action=st.sampled_from(
    ["priority", "pause", "resume", "cancel", "tasks", "outputs", "log", "zip"]),
    job=st.integers(0, 5), value=json_values)
action = weighted(
    (3, st.builds(Finish, node=node_ix, pick=pick, progressive=st.booleans())),
    (1, st.builds(Report, node=node_ix, pick=pick, kind=st.just("progress"),
                  value=st.floats(0, 1))),
    (1, st.builds(Report, node=node_ix, pick=pick, kind=st.just("log"),
                  value=st.text(max_size=30))),
    (1, st.builds(Fail, node=node_ix, pick=pick, retryable=st.booleans(), reason=st.sampled_from(
        ["crash", "", "node_stopping", "canceled", "needs_denoise", "bad_output"]))),
    (1, st.builds(Disconnect, node=node_ix)),
    (1, st.builds(Reconnect, node=node_ix, running=st.sampled_from(["held", "none", "first"]),
                  overlap=st.booleans())),
    (5, hostile), (1, garbage), (1, hostile_hello), (1, post_job), (1, job_action),
)
scenarios = st.builds(
    Scenario,
    oidn=st.lists(st.booleans(), min_size=2, max_size=4).map(tuple),
    jobs=st.lists(job_plan, min_size=1, max_size=3).map(tuple),
    actions=st.lists(action, min_size=3, max_size=22).map(tuple))


# Minimal reproductions of what this fuzzer found, run first on every run (Hypothesis's
# explicit phase), so each stays covered whatever the generated examples happen to be.
_ONE = (PostJob(frames=2),)
PINNED: list[tuple[str, Scenario]] = [
    ("a hello with bytes in its blender map: every later save fails",
     Scenario((True, True), _ONE, (HostileHello(0, (("blender", "version", b"x"),)),))),
    ("a frame_done with size 2**64-1: the store's writer thread dies",
     Scenario((True, True), _ONE, (Hostile(0, "frame_done", "own", 0, (("size", 2**64 - 1),)),))),
    ("a lone surrogate in a job spec: dispatch raises",
     Scenario((True, True), _ONE, (PostJob(mutations=(("set", "scene", "\ud800"),)),))),
    ("a task_done for another node's task is accepted",
     Scenario((True, True), _ONE, (Hostile(1, "task_done", "other_node", 0, ()),))),
    ("a JSON body nested 100000 deep: 500",
     Scenario((True, True), _ONE, (PostJob(raw=RAW_SPECS[0]),))),
    ("a task failed for good is not journaled",
     Scenario((True, True), (PostJob(frames=1),), (Fail(0, 0, "crash", False),))),
    ("a frame_done after the task_done replaces a done task's output",
     Scenario((True, True), _ONE, (Finish(0, 0, False),
                                   Hostile(0, "frame_done", "done", 0, ())))),
    ("a running list naming a task twice leaks a slot",
     Scenario((True, True), _ONE, (HostileHello(0, (("running", "twice"),)),))),
    ("a running list claims a queued task never assigned to the node",
     Scenario((True, True), (PostJob(frames=8),), (HostileHello(0, (("running", "queued"),)),))),
    ("an output size of true (task_done outputs are not type-checked) comes back as 1",
     Scenario((True, True), _ONE, (Hostile(0, "task_done", "own", 0, (("size", True),)),))),
    ("a node with uid '' keeps the tasks of a canceled job",
     Scenario((True, True), (PostJob(frames=6),), (HostileHello(0, (("uid", "empty"),)),
                                                   JobAction("cancel", 0, None)))),
]


def pinned(test: Any) -> Any:
    for _why, scenario in reversed(PINNED):
        test = example(scenario)(test)
    return test


# --- figures ----------------------------------------------------------------------------------
@dataclass
class Figures:
    examples: int = 0
    skipped: int = 0
    inputs: int = 0  # frames and requests the fuzzer sent (not barriers nor its own reads)
    hostile: int = 0
    refused: int = 0  # error frames and 4xx answers
    http_5xx: int = 0
    crashes: int = 0
    error_logs: int = 0
    hangs: int = 0
    odd_names: int = 0  # outputs accepted under a name not <stem>_<frame>.png (not a violation)
    failing_examples: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    generated: Counter[str] = field(default_factory=Counter)  # of those, not in PINNED
    smallest: dict[str, tuple[int, Scenario, str]] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    @property
    def violations(self) -> int:
        return sum(self.kinds.values())

    def add(self, scenario: Scenario, violations: list[tuple[str, str]]) -> None:
        self.examples += 1
        if violations:
            self.failing_examples += 1
        pin = any(scenario == p for _why, p in PINNED)
        for kind, text in violations:
            self.kinds[kind] += 1
            self.generated[kind] += not pin
            size = len(scenario.actions)
            if kind not in self.smallest or size < self.smallest[kind][0]:
                self.smallest[kind] = (size, scenario, text)

    def report(self) -> str:
        lines = [
            f"protocol fuzz: {self.examples} examples ({self.skipped} skipped over the "
            f"{BUDGET_S:.0f} s budget) in {time.monotonic() - self.started:.1f} s",
            f"  inputs tried {self.inputs} (hostile {self.hostile}), refused cleanly "
            f"{self.refused}, 5xx answers {self.http_5xx}, crashes {self.crashes}, other "
            f"server errors logged {self.error_logs}, hangs {self.hangs}",
            f"  invariant violations {self.violations} in {self.failing_examples} examples; "
            f"outputs accepted under odd names {self.odd_names}",
        ]
        for kind, count in self.kinds.most_common():
            size, scenario, text = self.smallest[kind]
            lines.append(f"  [{kind}] x{count} ({self.generated[kind]} in generated examples); "
                         f"smallest scenario ({size} actions): {text}")
            lines.append("      " + repr(scenario)[:3000])
        return "\n".join(lines)


class Capture(logging.Handler):
    """Server-side ERROR records; a thread that dies is one too (``threading.excepthook``)."""

    LOGGERS = ("blenderfarm", "asyncio", "aiohttp")

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []
        self.thread_deaths: list[str] = []
        self._hook = threading.excepthook

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def _on_thread_death(self, args: threading.ExceptHookArgs) -> None:
        name = args.thread.name if args.thread is not None else "?"
        self.thread_deaths.append(f"thread {name} died: {args.exc_type.__name__}: "
                                  f"{args.exc_value}")

    def __enter__(self) -> Capture:
        for name in self.LOGGERS:
            logging.getLogger(name).addHandler(self)
        threading.excepthook = self._on_thread_death
        return self

    def __exit__(self, *exc: object) -> None:
        for name in self.LOGGERS:
            logging.getLogger(name).removeHandler(self)
        threading.excepthook = self._hook

    def take(self) -> tuple[list[logging.LogRecord], list[str]]:
        records, deaths = self.records, self.thread_deaths
        self.records, self.thread_deaths = [], []
        return records, deaths


# --- the simulated nodes --------------------------------------------------------------------
class Hang(Exception):
    """Something the server should have answered by now did not answer."""


class Conn:
    """One websocket of a simulated node, speaking as ``uid``."""

    def __init__(self, run: Run, node: FuzzNode, ws: aiohttp.ClientWebSocketResponse,
                 uid: str | None) -> None:
        self.run, self.node, self.ws, self.uid = run, node, ws, uid
        self.text_sent = self.text_replies = 0
        self.first: m.Message | None = None
        self.closed = False
        self.errors: list[m.Error] = []
        self.acks: list[str] = []
        self.tick = asyncio.Event()
        self.reader = asyncio.create_task(self._read())

    @property
    def live(self) -> bool:
        return not self.closed and isinstance(self.first, m.Welcome)

    async def _read(self) -> None:
        try:
            async for frame in self.ws:
                if frame.type == aiohttp.WSMsgType.BINARY:
                    try:
                        msg = m.decode(frame.data, m.SERVER_MESSAGES)
                    except m.ProtocolError as exc:
                        self.run.violate("server-frame", f"the server sent a frame its own "
                                         f"nodes cannot decode: {exc}")
                        continue
                    self._on(msg)
                else:
                    self.run.violate("server-frame", f"the server sent a {frame.type} frame")
                self.tick.set()
        except (aiohttp.ClientError, ConnectionError, RuntimeError):
            pass
        finally:
            self.closed = True
            self.tick.set()

    def _on(self, msg: m.Message) -> None:
        if self.first is None:
            self.first = msg
        node = self.node
        if isinstance(msg, m.Assign):
            if self.uid is not None:
                self.run.assigned[msg.task_id].add(self.uid)
            node.held[msg.task_id] = (msg, self.uid)
        elif isinstance(msg, m.Cancel):
            node.held.pop(msg.task_id, None)
        elif isinstance(msg, m.Ack):  # the node forgets the task, as bf-node does
            self.acks.append(msg.task_id)
            node.held.pop(msg.task_id, None)
        elif isinstance(msg, m.Error):
            if msg.code == "bad_message" and msg.message == TEXT_REPLY:
                self.text_replies += 1
            else:
                self.errors.append(msg)
                self.run.fig.refused += 1

    async def send(self, data: bytes | str, count: bool = True) -> None:
        if count:
            self.run.fig.inputs += 1
        if self.closed:
            return
        try:
            if isinstance(data, str):
                self.text_sent += 1
                await self.ws.send_str(data)
            else:
                await self.ws.send_bytes(data)
        except (aiohttp.ClientError, ConnectionError, RuntimeError):
            self.closed = True

    async def barrier(self) -> None:
        """Wait until the server has handled every frame sent on this connection."""
        if self.closed:
            return
        await self.send("barrier", count=False)
        deadline = time.monotonic() + STEP_TIMEOUT
        while not self.closed and self.text_replies < self.text_sent:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Hang(f"node {self.node.name}: no answer to a frame within "
                           f"{STEP_TIMEOUT:.0f} s")
            self.tick.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.tick.wait(), left)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), STEP_TIMEOUT)
        self.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.reader
        self.closed = True


class FuzzNode:
    def __init__(self, index: int, oidn: bool) -> None:
        self.index = index
        self.name = f"fuzz{index}"
        self.uid = f"fuzz-node-{index}"
        self.oidn = oidn
        self.conn: Conn | None = None
        self.held: dict[str, tuple[m.Assign, str | None]] = {}  # task id -> (assign, as uid)

    @property
    def live(self) -> bool:
        return self.conn is not None and self.conn.live

    def own(self) -> list[m.Assign]:
        """Tasks this node holds under the identity of its current connection."""
        uid = self.conn.uid if self.conn is not None else self.uid
        return [a for a, u in self.held.values() if u == uid]

    def pick(self, i: int) -> m.Assign | None:
        own = self.own()
        return own[i % len(own)] if own else None

    def hello(self, running: list[str]) -> dict[str, Any]:
        return {"t": "hello", "protocol": PROTOCOL_VERSION, "name": self.name, "uid": self.uid,
                "token": None, "blender": {"version": "4.2.0", "oidn": self.oidn},
                "threads": 4, "ram": 8 << 30, "gpus": [], "tags": [], "cached_blobs": 0,
                "running": running, "agent_version": "fuzz"}


class Snap(NamedTuple):
    outputs: dict[tuple[str, str], tuple[str, str]]  # (job, name) -> (task, sha256)
    tasks: dict[str, tuple[str, str | None, int, int, frozenset[str]]]
    blocklists: dict[str, frozenset[str]]
    stems: dict[str, tuple[str, list[int]]]  # task -> (output stem, frames)


# --- one example -------------------------------------------------------------------------------
class Run:
    def __init__(self, scenario: Scenario, root: Path, fig: Figures) -> None:
        self.scenario, self.root, self.fig = scenario, root, fig
        self.violations: list[tuple[str, str]] = []
        self._seen: set[tuple[str, str]] = set()
        self.assigned: defaultdict[str, set[str]] = defaultdict(set)
        self.nodes = [FuzzNode(i, oidn) for i, oidn in enumerate(scenario.oidn)]
        self.conns: list[Conn] = []
        self.uploads: dict[str, str] = {}  # sha -> uid of the node that uploaded it
        self.server: TestServer | None = None
        self.http: aiohttp.ClientSession | None = None
        self.base = ""
        self.wedged = False
        self.label = ""

    def violate(self, kind: str, text: str) -> None:
        if (kind, text) in self._seen:  # the same breach seen again at a later step
            return
        self._seen.add((kind, text))
        self.violations.append((kind, f"{self.label}: {text}" if self.label else text))

    @property
    def farm(self) -> Any:
        assert self.server is not None
        return self.server.app[FARM]

    # --- server -------------------------------------------------------------------------
    async def start_server(self) -> None:
        cfg = ServerConfig(data_dir=self.root / "data", grace_period=30.0)
        self.server = TestServer(make_app(cfg), host="127.0.0.1")
        await self.server.start_server(shutdown_timeout=1.0)
        self.base = str(self.server.make_url("")).rstrip("/")

    async def stop_server(self) -> None:
        if self.server is None:
            return
        server, self.server = self.server, None
        try:
            await asyncio.wait_for(server.close(), 10)
        except TimeoutError:
            self.fig.hangs += 1
            self.violate("hang", "the server did not stop within 10 s")
        except Exception as exc:
            self.violate(f"crash: {exc.__class__.__name__}", f"stopping the server raised "
                         f"{exc.__class__.__name__}: {exc}")

    async def request(self, method: str, path: str, body: bytes | None = None,
                      count: bool = True) -> tuple[int | None, Any]:
        """One HTTP request; 5xx and timeouts are violations, 4xx counts as refused."""
        assert self.http is not None
        if count:
            self.fig.inputs += 1
        try:
            async with self.http.request(method, self.base + path, data=body,
                                         timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT)) as r:
                status, raw = r.status, await r.read()
        except TimeoutError:
            self.fig.hangs += 1
            self.violate("hang", f"{method} {path[:80]} got no answer in {HTTP_TIMEOUT:.0f} s")
            return None, None
        except aiohttp.ClientError as exc:
            self.violate("http", f"{method} {path[:80]} failed: {exc.__class__.__name__}")
            return None, None
        if status >= 500:
            self.fig.http_5xx += 1
            self.violate("5xx", f"{method} {path[:80]} answered {status}: {raw[:160]!r}")
        elif status >= 400 and count:
            self.fig.refused += 1
        with contextlib.suppress(ValueError):
            return status, json.loads(raw)
        return status, None

    async def upload(self, data: bytes, uid: str | None) -> str:
        sha = hashlib.sha256(data).hexdigest()
        status, _ = await self.request("PUT", f"/api/blobs/{sha}", data)
        if status in (200, 201):
            self.uploads.setdefault(sha, uid or "")
        return sha

    # --- nodes ---------------------------------------------------------------------------
    async def connect(self, node: FuzzNode, hello: dict[str, Any], overlap: bool = False
                      ) -> None:
        """A new connection for ``node`` (the old one closed first unless ``overlap``)."""
        old = node.conn
        if old is not None and not overlap:
            await self.disconnect(node)
        assert self.http is not None
        try:
            ws = await asyncio.wait_for(
                self.http.ws_connect(self.base.replace("http", "ws", 1) + "/ws/node"),
                STEP_TIMEOUT)
        except TimeoutError as exc:
            raise Hang("the websocket was not accepted") from exc
        except aiohttp.ClientError as exc:
            self.violate("http", f"ws_connect failed: {exc.__class__.__name__}: {exc}")
            return
        uid = hello.get("uid") if isinstance(hello.get("uid"), str) else None
        conn = Conn(self, node, ws, uid)
        self.conns.append(conn)
        node.conn = conn
        await conn.send(mp_encode(hello))
        deadline = time.monotonic() + STEP_TIMEOUT
        while conn.first is None and not conn.closed:
            if time.monotonic() > deadline:
                raise Hang(f"node {node.name}: no answer to its hello")
            conn.tick.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(conn.tick.wait(), 0.2)
        if old is not None and overlap:
            await old.close()
        if conn.live:  # tasks held under another identity are forgotten
            node.held = {t: (a, u) for t, (a, u) in node.held.items() if u == uid}

    async def disconnect(self, node: FuzzNode) -> None:
        conn, node.conn = node.conn, None
        if conn is None:
            return
        await conn.close()
        if self.wedged or conn.uid is None or \
                any(c.uid == conn.uid and c.live for c in self.conns):
            return  # (a stuck server would not notice; that hang is counted already)
        deadline = time.monotonic() + STEP_TIMEOUT
        while conn.uid in self.farm.sessions:  # the server noticed
            if time.monotonic() > deadline:
                raise Hang(f"node {node.name}: its disconnect was never noticed")
            await asyncio.sleep(0.01)

    async def reconnect(self, node: FuzzNode, running: str = "held", overlap: bool = False
                        ) -> None:
        own = [a.task_id for a, u in node.held.values() if u == node.uid]
        keep = own if running == "held" else own[:1] if running == "first" else []
        node.held = {t: v for t, v in node.held.items() if t in keep and v[1] == node.uid}
        await self.connect(node, node.hello(keep), overlap)
        first = node.conn.first if node.conn else None
        if overlap and not node.live and isinstance(first, m.Error) and \
                first.code == "uid_in_use":
            # A second live connection never takes over a uid: the node tries again,
            # as bf-node does, and gets in once the server has seen the old one go.
            deadline = time.monotonic() + STEP_TIMEOUT
            while node.uid in self.farm.sessions:
                if time.monotonic() > deadline:
                    raise Hang(f"node {node.name}: its old connection was never noticed")
                await asyncio.sleep(0.01)
            await self.connect(node, node.hello(keep))
        if not node.live:
            self.violate("honest-refused", f"node {node.name}'s honest hello was answered "
                         f"{node.conn.first if node.conn else None}")

    async def barrier_all(self) -> None:
        for conn in self.conns:
            if not conn.closed:
                await conn.barrier()

    # --- a step: one action, a barrier, the checks ------------------------------------------
    async def step(self, label: str, node: FuzzNode | None, act: Any, honest: bool) -> None:
        if self.wedged:
            return
        self.label = label
        try:
            if node is not None and not node.live and not isinstance(
                    act, (Disconnect, Reconnect, HostileHello)):
                await self.step_inner("reconnect first", node, Reconnect(node.index, "held", False),
                                      honest=True)
            await self.step_inner(label, node, act, honest)
        except Hang as exc:
            self.fig.hangs += 1
            self.violate("hang", str(exc))
            self.wedged = True  # the rest would only wait on the same stuck server
        finally:
            self.label = ""

    async def step_inner(self, label: str, node: FuzzNode | None, act: Any,
                         honest: bool) -> None:
        pre = self.snap()
        before = {t: frozenset(u) for t, u in self.assigned.items()}
        conn = node.conn if node is not None else None
        errors_at = len(conn.errors) if conn is not None else 0
        uid, expect_ack = await self.perform(node, act)
        await self.barrier_all()
        post = self.snap()
        self.check(pre, post, uid, before)
        if node is None or not honest:
            return
        if node.conn is not conn and node.conn is not None:
            conn, errors_at = node.conn, 0
        if conn is not None and len(conn.errors) > errors_at:
            self.violate("honest-refused", f"the server refused an honest message of "
                         f"{node.name}: {conn.errors[errors_at]}")
        if expect_ack is not None and conn is not None and not conn.closed:
            if expect_ack not in conn.acks:
                self.violate("honest-refused", f"no ack for {node.name}'s task_done of "
                             f"{expect_ack}")
            node.held.pop(expect_ack, None)

    async def perform(self, node: FuzzNode | None, act: Any) -> tuple[str | None, str | None]:
        """Do ``act``; return the uid it spoke as and the task an ack is due for."""
        conn = node.conn if node is not None else None
        uid = conn.uid if conn is not None else None
        if isinstance(act, Finish):
            assert node is not None and conn is not None
            a = node.pick(act.pick)
            if a is None:
                return uid, None
            outputs = []
            for f in a.frames:
                data = b"frame %d of %s by %s" % (f, a.task_id.encode(), str(uid).encode())
                sha = await self.upload(data, uid)
                out = {"frame": f, "sha256": sha, "size": len(data),
                       "name": f"{a.output_name}_{f:04d}.png"}
                outputs.append(out)
                if act.progressive:
                    await conn.send(m.encode(m.FrameDone(task_id=a.task_id, **out)))
            await conn.send(m.encode(m.TaskDone(task_id=a.task_id, outputs=outputs,
                                                seconds=1.0)))
            return uid, a.task_id
        if isinstance(act, Report):
            assert node is not None and conn is not None
            a = node.pick(act.pick)
            if a is not None:
                msg: m.Message = m.Progress(task_id=a.task_id, frame=a.frames[0],
                                            fraction=act.value) if act.kind == "progress" \
                    else m.Log(task_id=a.task_id, text=act.value)
                await conn.send(m.encode(msg))
            return uid, None
        if isinstance(act, Fail):
            assert node is not None and conn is not None
            a = node.pick(act.pick)
            if a is not None:
                await conn.send(m.encode(m.TaskFailed(
                    task_id=a.task_id, error="fuzz: the render failed", log_tail="tail",
                    retryable=act.retryable, reason=act.reason)))
                node.held.pop(a.task_id, None)
            return uid, None
        if isinstance(act, Disconnect):
            assert node is not None
            await self.disconnect(node)
            return uid, None
        if isinstance(act, Reconnect):
            assert node is not None
            await self.reconnect(node, act.running, act.overlap)
            return node.conn.uid if node.conn else None, None
        if isinstance(act, Hostile):
            assert node is not None and conn is not None
            self.fig.hostile += 1
            fields, uploads = self.hostile_message(node, act)
            for data in uploads:
                await self.upload(data, uid)
            await conn.send(mp_encode(fields))
            return uid, None
        if isinstance(act, Garbage):
            assert node is not None and conn is not None
            self.fig.hostile += 1
            data = act.data
            if isinstance(data, tuple):
                a = node.pick(0)
                full = m.encode(m.TaskDone(task_id=a.task_id if a else "x", outputs=[
                    {"frame": 1, "sha256": SHA, "size": 1, "name": "a.png"}]))
                data = full[: max(1, data[1] % len(full))]
            await conn.send(data)
            return uid, None
        if isinstance(act, HostileHello):
            assert node is not None
            self.fig.hostile += 1
            await self.connect(node, self.hostile_hello(node, act))
            return node.conn.uid if node.conn else None, None
        if isinstance(act, PostJob):
            if act.mutations or act.raw is not None:
                self.fig.hostile += 1
            await self.request("POST", "/api/jobs", self.job_body(act))
            return None, None
        if isinstance(act, JobAction):
            await self.job_action(act)
            return None, None
        raise AssertionError(f"unknown action {act!r}")

    # --- hostile input ----------------------------------------------------------------------
    def all_tasks(self) -> list[str]:
        return sorted(self.farm.tasks)

    def held_elsewhere(self, node: FuzzNode) -> list[str]:
        return sorted(t for n in self.nodes if n is not node for t in
                      (a.task_id for a in n.own()))

    def target(self, node: FuzzNode, how: str, i: int) -> str:
        own = [a.task_id for a in node.own()]
        everything = self.all_tasks() or ["nope-00000"]
        choices = {
            "own": own,
            "other_node": self.held_elsewhere(node),
            "other_job": [t for t in everything if own and
                          self.farm.tasks[t].job_id != self.farm.tasks[own[0]].job_id],
            "done": [t for t in everything if self.farm.tasks[t].status == "done"],
            "queued": [t for t in everything if self.farm.tasks[t].status == "queued"],
            "any": everything,
        }
        if how == "unknown":
            return "nope-00000"
        if how == "long":
            return "t" * 100_000
        if how == "empty":
            return ""
        options = choices.get(how) or everything
        return options[i % len(options)]

    def hostile_message(self, node: FuzzNode, h: Hostile) -> tuple[dict[str, Any], list[bytes]]:
        muts = dict((mu[0], mu[1:]) for mu in h.mutations)
        tid = self.target(node, h.target, h.pick)
        task = self.farm.tasks.get(tid)
        job = self.farm.jobs.get(task.job_id) if task is not None else None
        frames = list(task.frames) if task is not None else [1]
        stem = job.output_name if job is not None else "frame"
        siblings = [t for t in (job.task_ids if job else []) if t != tid]
        other_frame = self.farm.tasks[siblings[0]].frames[0] if siblings else frames[0] + 1
        uid = node.conn.uid if node.conn else None
        outs, uploads = [], []
        for f in frames:
            data = b"hostile frame %d of %s by %s" % (f, tid[:40].encode(), str(uid).encode())
            uploads.append(data)
            outs.append({"frame": f, "sha256": hashlib.sha256(data).hexdigest(),
                         "size": len(data), "name": f"{stem}_{f:04d}.png"})
        first: dict[str, Any] = outs[0]
        for kind, args in muts.items():
            if kind == "frame":
                first["frame"] = {"outside": 999, "huge": 2**64 - 1, "negative": -2**63,
                                  "bool": True, "other_task": other_frame}[args[0]]
            elif kind == "name":
                first["name"] = {"sibling": f"{stem}_{frames[-1] + 1:04d}.png",
                                 "other_task": f"{stem}_{other_frame:04d}.png"}.get(
                                     args[0], args[0])
            elif kind == "sha":
                foreign = sorted(s for s, u in self.uploads.items() if u != uid) or [SHA]
                first["sha256"] = {"foreign": foreign[h.pick % len(foreign)],
                                   "missing": "e" * 64, "upper": first["sha256"].upper(),
                                   "short": first["sha256"][:10]}[args[0]]
                uploads = uploads[1:]
            elif kind == "size":
                first["size"] = args[0]
            elif kind == "out_field":
                first[args[0]] = args[1]
        out_list: list[Any] = outs
        if "outputs" in muts:
            how = muts["outputs"][0]
            out_list = {"missing_one": outs[:-1], "extra": outs + [{**first, "frame": 999}],
                        "empty": [], "twice": outs + outs, "not_dicts": [1, "x"]}[how]
        base: dict[str, Any] = {
            "progress": {"task_id": tid, "frame": first["frame"], "fraction": 0.5,
                         "frames_done": 0, "message": "hostile"},
            "frame_done": {"task_id": tid, **first},
            "task_done": {"task_id": tid, "outputs": out_list, "seconds": 1.0},
            "task_failed": {"task_id": tid, "error": "hostile", "log_tail": "",
                            "retryable": True, "reason": "crash"},
            "log": {"task_id": tid, "text": "hostile log"},
            "hello": {k: v for k, v in node.hello([]).items() if k != "t"},
            "assign": {"task_id": tid, "job_id": job.id if job else "j", "frames": frames,
                       "blend": "s.blend", "manifest": {}, "output_name": stem},
        }[h.kind]
        fields = {"t": h.kind, **base}
        names = list(fields) + ["extra"]
        if "field" in muts:
            fields[names[muts["field"][0] % len(names)]] = muts["field"][1]
        if "drop" in muts:
            fields.pop(names[muts["drop"][0] % len(names)], None)
        return fields, uploads

    def hostile_hello(self, node: FuzzNode, h: HostileHello) -> dict[str, Any]:
        own = [a.task_id for a, u in node.held.values() if u == node.uid]
        node.held = {t: v for t, v in node.held.items() if t in own and v[1] == node.uid}
        fields = node.hello(list(own))
        blender: dict[str, Any] = dict(fields["blender"])
        for mu in h.mutations:
            if mu[0] == "blender":
                blender[mu[1]] = mu[2]
                fields["blender"] = blender
            elif mu[0] == "field":
                names = [k for k in fields if k != "t"] + ["t", "extra"]
                fields[names[mu[1] % len(names)]] = mu[2]
            elif mu[0] == "running":
                extra = {"twice": own + own, "unknown": ["nope-00000"],
                         "many": [f"nope-{i:05d}" for i in range(2000)]}.get(mu[1])
                if extra is None:
                    extra = [self.target(node, mu[1], 0)]
                running = fields["running"] if isinstance(fields["running"], list) else []
                fields["running"] = running + extra
            elif mu[0] == "uid":
                others = [n.uid for n in self.nodes if n is not node]
                fields["uid"] = {"other_node": others[0], "empty": "",
                                 "long": "u" * 100_000}[mu[1]]
        return fields

    def job_body(self, p: PostJob) -> bytes:
        if p.raw is not None:
            return p.raw.data
        spec: dict[str, Any] = {"blend": "s.blend", "manifest": {"s.blend": SHA},
                                "frames": f"1-{p.frames}", "chunk": p.chunk,
                                "priority": p.priority}
        for mu in p.mutations:
            if mu[0] == "set" and mu[1].startswith("overrides."):
                spec["overrides"] = {**(spec.get("overrides") or {}), mu[1][10:]: mu[2]}
            elif mu[0] == "set":
                spec[mu[1]] = mu[2]
            elif mu[0] == "manifest+":
                manifest = spec["manifest"] if isinstance(spec["manifest"], dict) else {}
                spec["manifest"] = {**manifest, mu[1]: SHA}
            elif mu[0] == "blend":
                spec["blend"], spec["manifest"] = mu[1], {mu[1]: SHA}
        return js_encode(spec)

    async def job_action(self, a: JobAction) -> None:
        jobs = sorted(self.farm.jobs.values(), key=lambda j: j.seq)
        if not jobs:
            return
        job = jobs[a.job % len(jobs)]
        if a.action in ("priority", "pause"):
            key = "priority" if a.action == "priority" else "stop"
            self.fig.hostile += 1
            await self.request("POST", f"/api/jobs/{job.id}/{a.action}",
                               js_encode({key: a.value}))
        elif a.action in ("resume", "cancel"):
            await self.request("POST", f"/api/jobs/{job.id}/{a.action}")
        elif a.action in ("tasks", "outputs"):
            await self.request("GET", f"/api/jobs/{job.id}/{a.action}")
        elif a.action == "zip":
            await self.request("GET", f"/api/jobs/{job.id}/outputs.zip")
        elif a.action == "log" and job.task_ids:
            await self.request("GET", f"/api/tasks/{job.task_ids[0]}/log")

    # --- the invariants of a step ------------------------------------------------------------
    def snap(self) -> Snap:
        farm = self.farm
        outputs = {(j.id, name): (o.task_id, o.sha256) for j in farm.jobs.values()
                   for name, o in j.outputs.items()}
        tasks = {t.id: (t.status, t.node, t.attempts, t.failures, frozenset(t.failed_nodes))
                 for t in farm.tasks.values()}
        blocklists = {j.id: frozenset(j.blocklist) for j in farm.jobs.values()}
        stems = {t.id: (farm.jobs[t.job_id].output_name, list(t.frames))
                 for t in farm.tasks.values() if t.job_id in farm.jobs}
        return Snap(outputs, tasks, blocklists, stems)

    def check(self, pre: Snap, post: Snap, uid: str | None,
              before: dict[str, frozenset[str]]) -> None:
        def had(tid: str) -> bool:
            return uid is not None and uid in before.get(tid, ())

        def outputs_of(s: Snap, tid: str) -> dict[tuple[str, str], tuple[str, str]]:
            return {k: v for k, v in s.outputs.items() if v[0] == tid}

        for key, (tid, sha) in post.outputs.items():
            if pre.outputs.get(key) == (tid, sha):
                continue
            if not had(tid):
                self.violate("foreign-output", f"output {key[1][:60]!r} of task {tid} was "
                             f"recorded from node {uid!r}, which was never assigned {tid}")
            stem, frames = post.stems.get(tid, ("", []))
            if key[1] not in {f"{stem}_{f:04d}.png" for f in frames}:
                self.fig.odd_names += 1
        for tid, (status, node, attempts, _f, _fn) in pre.tasks.items():
            if status != "done":
                continue
            now = post.tasks.get(tid)
            if now is None or now[0] != "done" or now[1] != node or now[2] != attempts:
                self.violate("done-twice", f"task {tid} was done by {node}; now {now}")
            elif outputs_of(pre, tid) != outputs_of(post, tid):
                self.violate("done-twice", f"the outputs of done task {tid} changed: "
                             f"{outputs_of(pre, tid)} -> {outputs_of(post, tid)}")
        for tid, (status, node, _attempts, failures, failed) in post.tasks.items():
            old = pre.tasks.get(tid)
            if status == "done" and (old is None or old[0] != "done") and \
                    (not had(tid) or node != uid):
                self.violate("foreign-done", f"task {tid} was done by {node!r} "
                             f"(message from {uid!r}), assigned only to "
                             f"{sorted(before.get(tid, ()))}")
            if old is not None:
                for blamed in failed - old[4]:
                    if blamed != uid or not had(tid):
                        self.violate("foreign-failure", f"a failure of {tid} was counted "
                                     f"against {blamed!r} on a message from {uid!r}, "
                                     f"assigned only to {sorted(before.get(tid, ()))}")
                if failures > old[3] and not had(tid):
                    self.violate("foreign-failure", f"{uid!r}, never assigned {tid}, made "
                                 f"its failures {old[3]} -> {failures}")
            if status in HELD and node not in self.assigned.get(tid, ()):
                self.violate("held-unsent", f"task {tid} is {status} by {node!r}, which "
                             f"was never sent it")
        for job_id, blocked in post.blocklists.items():
            for uid_ in blocked - pre.blocklists.get(job_id, frozenset()):
                if uid_ != uid or not any(had(t) for t in post.tasks
                                          if t.startswith(job_id + "-")):
                    self.violate("foreign-failure", f"job {job_id} blocklisted {uid_!r} on a "
                                 f"message from {uid!r}")

    # --- the example ----------------------------------------------------------------------------
    async def go(self) -> None:
        await self.start_server()
        self.http = aiohttp.ClientSession()
        await self.upload(BLEND, None)
        for i, plan in enumerate(self.scenario.jobs):
            await self.step(f"job {i}", None, plan, honest=True)
        for node in self.nodes:
            await self.step(f"{node.name} connects", node, Reconnect(node.index, "held", False),
                            honest=True)
        for i, act in enumerate(self.scenario.actions):
            if self.wedged:
                break
            node = self.nodes[act.node % len(self.nodes)] if hasattr(act, "node") else None
            honest = isinstance(act, (Finish, Report, Fail, Disconnect, Reconnect))
            await self.step(f"action {i} {act!r}"[:300], node, act, honest)
        await self.finale()

    async def finale(self) -> None:
        self.label = "afterwards"
        for path in ("/api/info", "/api/nodes", "/api/jobs"):
            status, _ = await self.request("GET", path, count=False)
            if status != 200:
                self.violate("answers", f"GET {path} answered {status}")
        await self.disconnect_all()
        status, body = await self.request("POST", "/api/jobs", js_encode(
            {"blend": "s.blend", "manifest": {"s.blend": SHA}, "frames": "9", "priority": 100,
             "name": "probe"}), count=False)
        if status != 201:
            self.violate("answers", f"POST /api/jobs answered {status}: {str(body)[:200]}")
        elif not self.wedged:
            await self.probe(body["job"]["id"])
        await self.disconnect_all()
        state = await self.api_state()
        await self.stop_server()
        try:
            await self.start_server()
        except Exception as exc:
            self.violate("restart", f"the server did not start again: "
                         f"{exc.__class__.__name__}: {exc}")
            return
        self.compare(state, await self.api_state())

    async def disconnect_all(self) -> None:
        self.label = "afterwards"
        for node in self.nodes:
            try:
                await self.disconnect(node)
            except Hang as exc:
                self.fig.hangs += 1
                self.violate("hang", str(exc))

    async def probe(self, job_id: str) -> None:
        """A fresh honest node must get the new job and render it."""
        probe = FuzzNode(len(self.nodes), oidn=True)
        probe.name, probe.uid = "probe", "fuzz-probe"
        self.nodes.append(probe)
        await self.step("probe connects", probe, Reconnect(probe.index, "held", False), True)
        for i in range(30):
            if self.wedged or self.farm.jobs[job_id].status == "completed" or not probe.own():
                break
            mine = [a for a in probe.own() if a.job_id == job_id]
            await self.step(f"probe renders {i}", probe, Finish(
                probe.index, probe.own().index(mine[0]) if mine else 0, False), True)
        job = self.farm.jobs[job_id]
        if job.status != "completed":
            self.violate("liveness", f"a fresh node could not render a new job: it is "
                         f"{job.status}, tasks {dict(job.counts)}, the node holds "
                         f"{[a.task_id for a in probe.own()]}")

    async def api_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {}
        status, body = await self.request("GET", "/api/jobs", count=False)
        if status != 200:
            return {"jobs listing": {"status": status}}
        for job in body["jobs"]:
            jid = job["id"]
            for f in ("progress", "eta"):  # they count parts of frames in flight: ephemeral
                job.pop(f, None)
            state[f"job {jid}"] = job
            status, tasks = await self.request("GET", f"/api/jobs/{jid}/tasks", count=False)
            for t in (tasks or {}).get("tasks", []) if status == 200 else []:
                t.pop("progress", None)
                state[f"task {t['id']}"] = t
            status, outs = await self.request("GET", f"/api/jobs/{jid}/outputs", count=False)
            for o in (outs or {}).get("outputs", []) if status == 200 else []:
                state[f"output {jid}/{o['name']}"] = o
        status, body = await self.request("GET", "/api/nodes", count=False)
        if status != 200:
            state["nodes listing"] = {"status": status}
        for n in body["nodes"] if status == 200 else []:
            n.pop("online", None)
            n.pop("state", None)
            n["tasks"] = sorted(n["tasks"])
            for doing in [n.get("current")] + [s.get("busy") for s in n.get("slots", [])]:
                for f in ("progress", "frame"):  # of its latest progress report: ephemeral
                    (doing or {}).pop(f, None)
            state[f"node {n['id']}"] = n
        return state

    def compare(self, before: dict[str, Any], after: dict[str, Any]) -> None:
        self.label = "after a restart"
        diffs = []
        for key in sorted(set(before) | set(after)):
            a, b = before.get(key), after.get(key)
            if a is None or b is None:
                diffs.append(f"{key[:60]} {'appeared' if a is None else 'is gone'}")
                continue
            for f in sorted(set(a) | set(b)):
                ja = json.dumps(a.get(f), sort_keys=True)
                jb = json.dumps(b.get(f), sort_keys=True)
                if ja != jb:
                    diffs.append(f"{key[:60]}.{f}: {ja[:80]} -> {jb[:80]}")
        if diffs:
            self.violate("restart", f"{len(diffs)} difference(s): " + "; ".join(diffs[:12]))

    async def teardown(self) -> None:
        for conn in self.conns:
            await conn.close()
        if self.http is not None:
            await self.http.close()
        await self.stop_server()


async def run_example(scenario: Scenario, fig: Figures, capture: Capture
                      ) -> list[tuple[str, str]]:
    capture.take()
    with tempfile.TemporaryDirectory(prefix="bf-fuzz-", ignore_cleanup_errors=True) as tmp:
        run = Run(scenario, Path(tmp), fig)
        try:
            await asyncio.wait_for(run.go(), EXAMPLE_TIMEOUT)
        except TimeoutError:
            fig.hangs += 1
            run.violate("hang", f"the example ran past {EXAMPLE_TIMEOUT:.0f} s")
        finally:
            await run.teardown()
        await asyncio.sleep(0)
    records, deaths = capture.take()
    run.label = "server log"
    for text in deaths:
        fig.crashes += 1
        run.violate("crash: thread died", text)
    for r in records:
        if r.exc_info is not None and r.exc_info[1] is not None:
            fig.crashes += 1
            exc = r.exc_info[1]
            run.violate(f"crash: {exc.__class__.__name__}", f"{r.name}: {r.getMessage()[:120]}: "
                        f"{exc.__class__.__name__}: {str(exc)[:160]}")
        else:
            fig.error_logs += 1
            run.violate("error-log", f"{r.name}: {r.getMessage()[:200]}")
    return run.violations


def test_protocol_fuzz() -> None:
    fig = Figures()
    with Capture() as capture:

        @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
                  phases=[Phase.generate, Phase.shrink] if SHRINK else
                  [Phase.explicit, Phase.generate],
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                         HealthCheck.filter_too_much,
                                         HealthCheck.large_base_example],
                  print_blob=False)
        @given(scenarios)
        @pinned
        def fuzz(scenario: Scenario) -> None:
            if not SHRINK and time.monotonic() - fig.started > BUDGET_S:
                fig.skipped += 1
                return
            violations = asyncio.run(run_example(scenario, fig, capture))
            fig.add(scenario, violations)
            if VERBOSE and violations:
                print(f"\n--- example {fig.examples}: {scenario!r}"[:4000])
                for kind, text in violations:
                    print(f"    [{kind}] {text[:600]}")
            if SHRINK and violations:
                raise AssertionError("\n".join(f"[{k}] {t}" for k, t in violations[:8]))

        try:
            fuzz()
        finally:
            print("\n" + fig.report())
    violations = fig.violations
    assert violations == 0, fig.report()

