"""``/metrics``: the farm in Prometheus' text format (prometheus-client).

Counts of jobs, tasks and nodes by state, frames rendered and open websockets are
read from the farm at scrape time by :class:`FarmCollector`, so they can never
drift from the truth. What the farm's state does not keep (render seconds, bytes
uploaded, dispatch latency) it feeds through the small ``FarmMetrics`` methods.
Each app has its own ``CollectorRegistry``: tests build many apps in one process,
and the global registry would refuse the second. The farm imports this module (for
``FarmMetrics``), so this one reads the farm only through :class:`FarmView` and is
told the number of event sockets by a callable: it imports neither the farm nor the
event hub.
"""

from __future__ import annotations

from collections import Counter as Tally  # prometheus_client has a Counter too
from collections.abc import Callable, Iterator, Mapping
from typing import Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from . import slots
from .models import JOB_STATES, TASK_STATES, Job, NodeRecord, Task

NODE_STATES = ("idle", "rendering", "drained", "disabled", "offline")
#: a dispatch decision is in-memory work: microseconds, a slow one milliseconds
DISPATCH_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                    0.05, 0.1, 0.25, 1.0)


class FarmMetrics:
    """The numbers the farm feeds as things happen; cheap enough to call on every event."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.render_seconds = Counter(
            "blenderfarm_render_seconds", "Seconds nodes spent rendering finished tasks.",
            registry=self.registry)
        self.uploaded_bytes = Counter(
            "blenderfarm_uploaded_bytes", "Bytes of new blobs stored (uploads by users and nodes).",
            registry=self.registry)
        self.dispatch_latency = Histogram(
            "blenderfarm_dispatch_latency_seconds",
            "Time one dispatch pass took to hand queued tasks to nodes.",
            buckets=DISPATCH_BUCKETS, registry=self.registry)

    def observe_dispatch(self, seconds: float) -> None:
        self.dispatch_latency.observe(max(0.0, seconds))

    def add_render_seconds(self, seconds: float) -> None:
        if seconds > 0:  # a node's clock gone wrong must not make a counter go down
            self.render_seconds.inc(seconds)

    def add_uploaded_bytes(self, size: int) -> None:
        if size > 0:
            self.uploaded_bytes.inc(size)


class Queue(Protocol):
    @property
    def queued(self) -> int: ...


class FarmView(Protocol):
    """What the collector reads of the farm (a :class:`~.farm.Farm` is one)."""

    @property
    def jobs(self) -> Mapping[str, Job]: ...

    @property
    def tasks(self) -> Mapping[str, Task]: ...

    @property
    def nodes(self) -> Mapping[str, NodeRecord]: ...

    @property
    def sched(self) -> Queue: ...

    def online(self) -> list[NodeRecord]: ...


class FarmCollector(Collector):
    """Reads the farm at scrape time; O(jobs + nodes) (tasks are counted by their jobs),
    no I/O. ``event_sockets`` says how many browsers and add-ons watch events."""

    def __init__(self, farm: FarmView, event_sockets: Callable[[], int]) -> None:
        self.farm = farm
        self.event_sockets = event_sockets

    def collect(self) -> Iterator[Metric]:
        farm = self.farm
        yield _by_state("blenderfarm_jobs", "Jobs by status.", JOB_STATES,
                        Tally(j.status for j in farm.jobs.values()))
        yield _by_state("blenderfarm_tasks", "Tasks by status.", TASK_STATES,
                        sum((j.counts for j in farm.jobs.values()), Tally()))
        yield _by_state("blenderfarm_nodes", "Known nodes by state.", NODE_STATES,
                        Tally(n.to_json()["state"] for n in farm.nodes.values()))
        frames = CounterMetricFamily("blenderfarm_frames_rendered",
                                     "Frames rendered by all nodes (kept across restarts).")
        frames.add_metric([], sum(n.frames_rendered for n in farm.nodes.values()))
        yield frames
        online = farm.online()
        busy = sum(slots.busy(rec, farm.tasks) for rec in online)
        yield _by_state("blenderfarm_slots", "Slots of online nodes: busy (holding a task) "
                        "or idle.", ("busy", "idle"),
                        {"busy": busy, "idle": sum(len(r.slots) for r in online) - busy})
        queued = GaugeMetricFamily("blenderfarm_tasks_ready",
                                   "Tasks in the scheduler's queues, waiting for a node.")
        queued.add_metric([], farm.sched.queued)
        yield queued
        sockets = GaugeMetricFamily("blenderfarm_open_websockets", "Open websockets by kind.",
                                    labels=["kind"])
        sockets.add_metric(["node"], len(online))
        sockets.add_metric(["events"], self.event_sockets())
        yield sockets


def _by_state(name: str, doc: str, states: tuple[str, ...], counted: Mapping[str, int]
              ) -> GaugeMetricFamily:
    counts = dict.fromkeys(states, 0)
    counts.update(counted)
    family = GaugeMetricFamily(name, doc, labels=["state"])
    for state, count in counts.items():
        family.add_metric([state], count)
    return family


METRICS = web.AppKey("metrics", FarmMetrics)


async def metrics_handler(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def setup_metrics(app: web.Application, farm: FarmView, event_sockets: Callable[[], int],
                  metrics: FarmMetrics | None = None) -> FarmMetrics:
    """Add ``/metrics``, fed by ``metrics`` (the farm's own ``FarmMetrics``) when given."""
    metrics = metrics if metrics is not None else FarmMetrics()
    metrics.registry.register(FarmCollector(farm, event_sockets))
    app[METRICS] = metrics
    app.router.add_get("/metrics", metrics_handler)
    return metrics
