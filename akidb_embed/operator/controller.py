"""The operator's decision loop: one placement decision at a time, applied to the API server.

- `cache.ClusterCache` keeps the EmbeddingModels, the model-server pods (Terminating
  ones included) and the model Deployments as our own watches show them (one list per
  kind, then a watch; no read per model). Decisions wait until all three have listed,
  so a restarted operator decides from the whole picture, within a second of holding
  the Lease, and never behind kopf's start-up pass over the spec handlers.
- Every change the watches show `poke`s the loop: one decision runs at a time (one
  lock) and changes that arrive meanwhile coalesce into the next one. Each decision is
  level-triggered: it also scales every Deployment whose size disagrees with its model's
  phase, and deletes finished pods. Triggers besides the watches: conversion Jobs
  finishing, a wake-up at a Wait's retry time, and a periodic tick (idle timeouts,
  residency expiry, demand expiry, re-advertising the node's capacity).
- What a decision writes comes from `decisions.outcome` (pure); `carry_out` applies it:
  the status patch (remembered in the overlay until the watch shows it), the Event, the
  Deployment's size. A failed write is logged and repaired by the next pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from typing import Any

from kubernetes_asyncio import client

from akidb_embed import k8s
from akidb_embed.operator import objects
from akidb_embed.operator.cache import ClusterCache
from akidb_embed.operator.capacity import node_resources, node_status_patch
from akidb_embed.operator.config import OperatorConfig
from akidb_embed.operator.conversion import Conversion
from akidb_embed.operator.decisions import Event, Outcome, outcome
from akidb_embed.operator.performance import fetch_performance, pod_endpoint
from akidb_embed.operator.placement import Action, DeletePod, ModelView, Scale, Wait, decide
from akidb_embed.operator.state import WriteOverlay, model_view
from akidb_embed.operator.writer import ApiError, Conflict, NotFound, Timeouts, Writer

Body = dict[str, Any]
log = logging.getLogger("akidb_embed.operator")


# Events wait here for the poster; beyond this many (an API server that stopped
# answering) new ones are dropped: the status says the same.
EVENT_BACKLOG = 2000


class Operator:
    """The operator's one decision loop and its writes to the API server."""

    def __init__(self, config: OperatorConfig, identity: str = "") -> None:
        self.config = config
        self.lock = asyncio.Lock()
        self.overlay = WriteOverlay()
        self._requested = 0
        self._completed = 0
        self.api: client.ApiClient | None = None
        self.writer: Writer | None = None
        self.decisions = 0
        self.identity = identity
        self.cache = ClusterCache(self.poke)
        self._dirty = False  # a change not yet covered by a decision (see poke)
        self._drainer: asyncio.Task[None] | None = None
        self.watcher: asyncio.Task[None] | None = None
        self.ticker: asyncio.Task[None] | None = None
        self.events: asyncio.Queue[Body] = asyncio.Queue(EVENT_BACKLOG)
        self.poster: asyncio.Task[None] | None = None
        # One pending "decide again at" wake-up (see Wait.retry_at) and its time.
        self._wakeup: asyncio.TimerHandle | None = None
        self._wakeup_at = float("inf")
        self._background: set[asyncio.Task[None]] = set()  # keeps fire-and-forget tasks alive
        # One status.performance read per model that turned Ready (background tasks).
        self.measurements: dict[str, asyncio.Task[None]] = {}
        # The spec handler and the Job handler of one model never interleave.
        self.model_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self.first_decision_at: float | None = None  # epoch seconds (failover measurement)
        self.conversion = Conversion(self)  # the spec and Job handlers' work
        self._views: dict[tuple[str, str], ModelView] = {}  # see _bodies

    @property
    def w(self) -> Writer:
        if self.writer is None:
            raise RuntimeError("the operator has no API client yet (startup not run)")
        return self.writer

    def connect(self, api: client.ApiClient, may_write: Any = None) -> None:
        self.api = api
        timeouts = Timeouts(self.config.api_connect_timeout, self.config.api_read_timeout)
        self.writer = Writer(api, timeouts, may_write or (lambda: True))

    def start(self) -> None:
        """Start the watches, the tick and the Event poster (kopf's startup handler)."""
        if self.api is None:
            raise RuntimeError("the operator has no API client yet (connect first)")
        if self.watcher is None:
            seconds = max(1, round(self.config.watch_timeout))
            self.watcher = asyncio.create_task(
                self.cache.run(self.api, self.config.namespace, watch_seconds=seconds)
            )
        if self.ticker is None:
            self.ticker = asyncio.create_task(self.tick_forever())
        if self.poster is None:
            self.poster = asyncio.create_task(self.post_events_forever())

    def stop(self) -> None:
        """Cancel the background work (kopf's cleanup: the Lease is going away)."""
        tasks = [*self.measurements.values(), self.ticker, self.watcher, self._drainer, self.poster]
        for task in tasks:
            if task is not None:
                task.cancel()
        if self._wakeup is not None:
            self._wakeup.cancel()

    # -- API access -------------------------------------------------------------------

    async def patch_status(self, body: Body, status: Body) -> Body:
        """Merge-patch the status subresource; remember the write until the watch shows it."""
        meta = body["metadata"]
        result = await self.w.patch_model_status(meta["namespace"], meta["name"], status)
        new_status = dict(result.get("status") or {})
        self.overlay.record(meta["name"], meta["uid"], new_status)
        body["status"] = new_status
        return new_status

    async def scale(self, body: Body, replicas: int) -> None:
        meta = body["metadata"]
        try:
            await self.w.patch_deployment(
                meta["namespace"],
                objects.deployment_name(meta["name"]),
                {"spec": {"replicas": replicas}},
            )
        except NotFound:
            # Deleted behind our back (or never created): recreate it at the right size.
            await self.ensure_deployment(body, replicas)

    async def ensure_deployment(
        self, body: Body, replicas: int, current: Body | None = None
    ) -> None:
        """Create the Deployment, or bring its template up to date (never its replicas:
        those follow the phase, set by the decisions). No write if `current` (the
        cache's view) already carries the desired template hash."""
        desired = objects.with_template_hash(objects.model_deployment(body, self.config, replicas))
        meta = desired["metadata"]
        wanted_hash = meta["annotations"][objects.TEMPLATE_HASH]
        if current is not None and current.get("templateHash") == wanted_hash:
            return
        if current is None:
            try:
                await self.w.create_deployment(meta["namespace"], desired)
                return
            except Conflict:
                pass
        spec = {k: v for k, v in desired["spec"].items() if k != "replicas"}
        await self.w.patch_deployment(
            meta["namespace"],
            meta["name"],
            {
                "metadata": {"labels": meta["labels"], "annotations": meta["annotations"]},
                "spec": spec,
            },
        )

    def post_event(self, body: Body, event: Event) -> None:
        """Queue a Kubernetes Event about the EmbeddingModel (posted off the decision)."""
        obj = objects.model_event(
            body, event.type, event.reason, event.message, k8s.now_rfc3339(), self.identity
        )
        try:
            self.events.put_nowait(obj)
        except asyncio.QueueFull:
            log.warning(
                "Event backlog full: dropped %s for %s", event.reason, body["metadata"]["name"]
            )

    async def post_events_forever(self) -> None:
        while True:
            obj = await self.events.get()
            try:
                await self.w.create_event(obj["metadata"]["namespace"], obj)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # best effort: the status carries the same record
                log.warning(
                    "could not post Event %s for %s: %s",
                    obj["reason"],
                    obj["involvedObject"]["name"],
                    exc,
                )
            finally:
                self.events.task_done()

    # -- placement -------------------------------------------------------------------

    def poke(self) -> None:
        """Something changed: decide soon. Changes during a decision coalesce into one
        more decision after it (a decision started later sees them all)."""
        self._dirty = True
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain())

    async def _drain(self) -> None:
        while self._dirty:
            self._dirty = False
            try:
                await self.reconcile()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("decision failed; the next change or tick retries it")

    async def reconcile(self) -> None:
        """Run a placement decision unless one that started after this call covers it."""
        await self.cache.wait_synced()
        self._requested += 1
        ticket = self._requested
        async with self.lock:
            if self._completed >= ticket:
                return
            started = self._requested
            try:
                await self._decide_and_apply()
            finally:
                self._completed = started

    async def tick_forever(self) -> None:
        while True:
            try:
                await self.advertise_capacity()
            except Exception:
                log.exception("advertising the node's capacity failed; retrying next tick")
            await asyncio.sleep(self.config.tick)
            self.poke()

    async def advertise_capacity(self) -> None:
        """Slots and model memory as extended resources on each selected node (re-applied
        every tick: level-triggered; a node that re-registers loses them)."""
        selector = ",".join(f"{k}={v}" for k, v in sorted(self.config.node_selector.items()))
        wanted = node_resources(self.config.capacity, self.config.memory_budget)
        for node in await self.w.list_nodes(selector):
            patch = node_status_patch(node, wanted)
            if patch is not None:
                await self.w.patch_node_status(node["metadata"]["name"], patch)
                log.info("advertised %s on node %s", wanted, node["metadata"]["name"])

    def _decide_again_at(self, when: float) -> None:
        """Decide again at `when` (epoch seconds, in the future) instead of at the tick."""
        if self._wakeup is not None and not self._wakeup.cancelled():
            if self._wakeup_at <= when:
                return
            self._wakeup.cancel()
        loop = asyncio.get_running_loop()

        def fire() -> None:
            self._wakeup, self._wakeup_at = None, float("inf")
            self.poke()

        self._wakeup_at = when
        self._wakeup = loop.call_later(max(0.0, when - time.time()) + 0.05, fire)

    def _bodies(self) -> tuple[dict[str, Body], list[ModelView]]:
        """The live models (our recent writes laid over) and the policy's view of each.

        A view is kept per (uid, resourceVersion) of a body the overlay leaves alone:
        building one parses times and quantities and hashes the spec (~35 us), and a
        decision over 1000 models ran 40 ms of it on every event of the start-up pass.
        """
        bodies: dict[str, Body] = {}
        views: list[ModelView] = []
        cache: dict[tuple[str, str], ModelView] = {}
        for watched in self.cache.models:
            meta = watched["metadata"]
            if meta.get("deletionTimestamp"):
                continue
            body = self.overlay.apply(watched)
            if body is watched:
                key = (str(meta.get("uid")), str(meta.get("resourceVersion")))
                view = self._views.get(key) or model_view(body)
                cache[key] = view
            else:
                view = model_view(body)
            bodies[meta["name"]] = dict(body)
            views.append(view)
        self._views = cache  # only what is still current
        return bodies, views

    async def _decide_and_apply(self) -> None:
        bodies, views = self._bodies()
        pod_views = list(self.cache.pods)
        replicas = {d["model"]: d["replicas"] for d in self.cache.deployments}
        now = time.time()
        actions = decide(
            views,
            pod_views,
            self.config.limits,
            now,
            replicas=replicas,
        )
        self.decisions += 1
        if self.first_decision_at is None:
            self.first_decision_at = now
            log.info("first decision as %s", self.identity)
        namespace = self.config.namespace
        for action in actions:
            if isinstance(action, Wait) and action.retry_at is not None:
                self._decide_again_at(action.retry_at)
            try:
                if isinstance(action, DeletePod):
                    log.info("deleting finished pod %s of %s", action.pod, action.model)
                    with contextlib.suppress(NotFound, Conflict):  # gone, or a newer one
                        await self.w.delete_pod(namespace, action.pod, action.uid or None)
                    continue
                body = bodies.get(action.model)
                if body is None:
                    continue
                await self.apply(action, body, now)
            except ApiError as exc:
                # Level-triggered: the next pass sees what did not happen and repairs it.
                log.warning("%s on %s failed: %s", type(action).__name__, action.model, exc)

    async def apply(self, action: Action, body: Body, now: float) -> None:
        status = body.get("status") or {}
        if isinstance(action, Scale):
            log.info(
                "Scale: %s to %d (its Deployment has %d; phase %s)",
                action.model,
                action.replicas,
                action.observed,
                status.get("phase"),
            )
        else:
            log.info("%s: %s", type(action).__name__, getattr(action, "message", action.model))
        await self.carry_out(body, outcome(action, body, now))

    async def carry_out(self, body: Body, out: Outcome) -> None:
        """Status first (the decision's record), then its Event, then the Deployment's
        size; if the scale fails, the next pass sees the disagreement and repairs it."""
        if out.status is not None:
            await self.patch_status(body, out.status)
        if out.event is not None:
            self.post_event(body, out.event)
        if out.replicas is not None:
            await self.scale(body, out.replicas)
        if out.measure:
            self.record_performance_later(body)

    # -- measured performance ------------------------------------------------------------

    def record_performance_later(self, body: Body) -> None:
        """Read the ready pod's self-measurement and write status.performance, off the lock.

        In the background: the server measures for about a second after turning ready,
        and a decision must not wait for that (or for a pod that does not answer).
        """
        meta = body["metadata"]
        name = meta["name"]
        previous = self.measurements.pop(name, None)
        if previous is not None and not previous.done():
            previous.cancel()
        task = asyncio.create_task(self._record_performance(name, meta["namespace"]))
        self.measurements[name] = task

        def forget(done: asyncio.Task[None]) -> None:
            if self.measurements.get(name) is done:
                del self.measurements[name]

        task.add_done_callback(forget)

    async def _record_performance(self, name: str, namespace: str) -> None:
        try:
            pods = await self.w.list_pods(
                namespace, f"{k8s.LABEL_NAME}={k8s.MODEL_SERVER_APP},{k8s.LABEL_MODEL}={name}"
            )
            url = next((u for u in map(pod_endpoint, pods) if u), None)
            if url is None:
                log.info("%s: no ready pod to read performance from", name)
                return
            perf = await fetch_performance(url)
            if perf is None:
                return
            # Not through patch_status: performance is no decision input, and a write
            # recorded in the overlay from outside the lock could mask a newer phase.
            await self.w.patch_model_status(namespace, name, {"performance": perf})
            log.info("%s: measured %s", name, perf)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # never fatal: the model serves without the numbers
            log.warning("%s: could not record performance: %s", name, exc)
