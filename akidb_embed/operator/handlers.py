"""kopf handlers: glue between watches, the placement policy and the API server.

Everything that decides lives elsewhere: `placement.decide` (which pods run, which
Deployments to repair), `objects` (what the Deployment / Job / status look like),
`capacity` (the extended resources the scheduler enforces), `writer` (every API call,
with timeouts and typed errors), `leader` (the Lease; kopf runs only while we hold it).

- kopf indexes keep the EmbeddingModels, the model-server pods (Terminating ones
  included) and the model Deployments as the watches see them; kopf calls no handler
  before they are complete, so a restarted operator decides from the whole picture,
  read with one list per kind (no read per model).
- `Operator.reconcile` runs one placement decision at a time (one lock); concurrent
  triggers coalesce into the next decision. Each decision is level-triggered: it also
  scales every Deployment whose size disagrees with its model's phase, and deletes
  finished pods. Triggers: any EmbeddingModel event (the gateway's status.requestedAt
  included), any model-server pod or Deployment event, conversion Jobs finishing, a
  wake-up at a Wait's retry time, and a periodic tick (idle timeouts, residency expiry,
  demand expiry, re-advertising the node's capacity).
- The spec handler (Deployment up to date, conversion Job) runs per model, outside the
  decision lock and without a write when the Deployment's template hash matches, so
  the start-up pass over many models neither serializes nor delays a demand.
- Conversion: a Job per (spec generation, artifact key), Converted / ConversionFailed.

kopf's change detection ignores `status`, so demand (status.requestedAt) is seen
through `on.event`, not `on.field`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections import defaultdict
from typing import Any, cast

import kopf
from kubernetes_asyncio import client

from akidb_embed import k8s
from akidb_embed.operator import objects
from akidb_embed.operator.capacity import node_resources, node_status_patch
from akidb_embed.operator.config import OperatorConfig
from akidb_embed.operator.performance import fetch_performance, pod_endpoint
from akidb_embed.operator.placement import (
    ACTIVATING,
    CAPACITY_EXHAUSTED,
    CONVERTING,
    EVICTING,
    FAILED,
    PENDING,
    READY,
    STANDBY,
    Action,
    Activate,
    DeletePod,
    Evict,
    IdleStandby,
    MarkActivating,
    MarkReady,
    MarkStandby,
    Scale,
    Wait,
    decide,
)
from akidb_embed.operator.state import (
    WriteOverlay,
    deployment_view,
    model_snapshot,
    model_view,
    pod_view,
)
from akidb_embed.operator.writer import ApiError, Conflict, NotFound, Timeouts, Writer

Body = dict[str, Any]
log = logging.getLogger("akidb_embed.operator")

JOB_NAME_LABEL = "batch.kubernetes.io/job-name"


def _event(body: Body, *, type: str, reason: str, message: str) -> None:
    """Post a Kubernetes Event about the EmbeddingModel (kopf batches and sends it)."""
    try:
        kopf.event(cast(Any, body), type=type, reason=reason, message=message[:1024])
    except LookupError:  # outside kopf's context (no event queue): the status still says it
        log.warning("could not post Event %s for %s", reason, body["metadata"]["name"])


def _now() -> str:
    return k8s.now_rfc3339()


Indexes = tuple[kopf.Index, kopf.Index, kopf.Index]  # models, pods, deployments


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
        self.indexes: Indexes | None = None
        self.ticker: asyncio.Task[None] | None = None
        # One pending "decide again at" wake-up (see Wait.retry_at) and its time.
        self._wakeup: asyncio.TimerHandle | None = None
        self._wakeup_at = float("inf")
        self._background: set[asyncio.Task[None]] = set()  # keeps fired wake-ups alive
        # One status.performance read per model that turned Ready (background tasks).
        self.measurements: dict[str, asyncio.Task[None]] = {}
        # The spec handler and the Job handler of one model never interleave.
        self.model_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self.first_decision_at: float | None = None  # epoch seconds (failover measurement)
        self.started = time.monotonic()
        self._resumed: set[str] | None = set()  # models the start-up pass has handled

    @property
    def w(self) -> Writer:
        if self.writer is None:
            raise RuntimeError("the operator has no API client yet (startup not run)")
        return self.writer

    def connect(self, api: client.ApiClient, may_write: Any = None) -> None:
        self.api = api
        timeouts = Timeouts(self.config.api_connect_timeout, self.config.api_read_timeout)
        self.writer = Writer(api, timeouts, may_write or (lambda: True))

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
        index's view) already carries the desired template hash."""
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

    # -- placement -------------------------------------------------------------------

    async def reconcile(self, models: kopf.Index, pods: kopf.Index, deps: kopf.Index) -> None:
        """Run a placement decision unless one that started after this call covers it."""
        # kopf hands indexes only to handlers, and only once they are complete.
        self.indexes = (models, pods, deps)
        if self.ticker is None:
            # Started from a handler so that it inherits kopf's context (Event posting).
            self.ticker = asyncio.create_task(self.tick_forever())
        self._requested += 1
        ticket = self._requested
        async with self.lock:
            if self._completed >= ticket:
                return
            started = self._requested
            try:
                await self._decide_and_apply(models, pods, deps)
            finally:
                self._completed = started

    async def tick_forever(self) -> None:
        while True:
            try:
                await self.advertise_capacity()
            except Exception:
                log.exception("advertising the node's capacity failed; retrying next tick")
            await asyncio.sleep(self.config.tick)
            try:
                if self.indexes is not None:
                    await self.reconcile(*self.indexes)
            except Exception:
                log.exception("periodic decision failed; retrying next tick")

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
            if self.indexes is not None:
                task = asyncio.create_task(self.reconcile(*self.indexes))
                self._background.add(task)
                task.add_done_callback(self._background.discard)

        self._wakeup_at = when
        self._wakeup = loop.call_later(max(0.0, when - time.time()) + 0.05, fire)

    def _bodies(self, models: kopf.Index) -> dict[str, Body]:
        bodies: dict[str, Body] = {}
        for store in models.values():
            for body in store:
                if body["metadata"].get("deletionTimestamp"):
                    continue
                bodies[body["metadata"]["name"]] = dict(self.overlay.apply(body))
        return bodies

    async def _decide_and_apply(
        self, models: kopf.Index, pods: kopf.Index, deps: kopf.Index
    ) -> None:
        bodies = self._bodies(models)
        pod_views = [p for store in pods.values() for p in store]
        replicas = {d["model"]: d["replicas"] for store in deps.values() for d in store}
        now = time.time()
        actions = decide(
            [model_view(b) for b in bodies.values()],
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
        if not isinstance(action, Scale):
            log.info("%s: %s", type(action).__name__, getattr(action, "message", action.model))
        status = body.get("status") or {}
        conditions = status.get("conditions")
        gen = body["metadata"].get("generation")
        stamp = k8s.to_rfc3339(now)
        if isinstance(action, Activate):
            await self.patch_status(
                body,
                {
                    "phase": ACTIVATING,
                    "reason": "Activated",
                    "message": action.message,
                    "activeSince": stamp,
                    "conditions": objects.merge_conditions(
                        conditions,
                        objects.condition(
                            objects.READY, False, "Activating", "pod starting", stamp, gen
                        ),
                        objects.condition(
                            objects.CAPACITY_EXHAUSTED, False, "Activated", "", stamp, gen
                        ),
                    ),
                },
            )
            _event(body, type="Normal", reason="Activated", message=action.message)
            await self.scale(body, 1)  # if this fails, the next pass repairs it (Scale)
        elif isinstance(action, Evict | IdleStandby):
            reason = "Evicted" if isinstance(action, Evict) else "IdleTimeout"
            await self.patch_status(
                body,
                {
                    "phase": EVICTING,
                    "reason": reason,
                    "message": action.message,
                    "lastEvictedAt": stamp,
                    "evictions": int(status.get("evictions") or 0) + 1,
                    "conditions": objects.merge_conditions(
                        conditions,
                        objects.condition(objects.READY, False, reason, action.message, stamp, gen),
                    ),
                },
            )
            _event(body, type="Normal", reason=reason, message=action.message)
            await self.scale(body, 0)
        elif isinstance(action, Scale):
            log.info(
                "Scale: %s to %d (its Deployment has %d; phase %s)",
                action.model,
                action.replicas,
                action.observed,
                status.get("phase"),
            )
            await self.scale(body, action.replicas)
        elif isinstance(action, MarkReady):
            started = k8s.parse_time(status.get("activeSince"))
            cold = f" after a {now - started:.1f}s cold start" if started else ""
            message = f"{action.model} is ready{cold}"
            await self.patch_status(
                body,
                {
                    "phase": READY,
                    "reason": "PodReady",
                    "message": message,
                    "conditions": objects.merge_conditions(
                        conditions,
                        objects.condition(objects.READY, True, "PodReady", message, stamp, gen),
                    ),
                },
            )
            _event(body, type="Normal", reason="Ready", message=message)
            self.record_performance_later(body)
        elif isinstance(action, MarkActivating):
            message = f"{action.model} lost its ready pod; waiting for a new one"
            await self.patch_status(
                body,
                {
                    "phase": ACTIVATING,
                    "reason": "PodNotReady",
                    "message": message,
                    "conditions": objects.merge_conditions(
                        conditions,
                        objects.condition(objects.READY, False, "PodNotReady", message, stamp, gen),
                    ),
                },
            )
            _event(body, type="Warning", reason="PodNotReady", message=message)
        elif isinstance(action, MarkStandby):
            message = f"{action.model} is in standby (its pod has stopped)"
            await self.patch_status(
                body, {"phase": STANDBY, "reason": "Stopped", "message": message}
            )
        elif isinstance(action, Wait):
            await self._wait(action, body, stamp)

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

    async def _wait(self, action: Wait, body: Body, stamp: str) -> None:
        """Record a wait once (condition + Event), not on every decision."""
        status = body.get("status") or {}
        current = next(
            (
                c
                for c in status.get("conditions") or []
                if c.get("type") == objects.CAPACITY_EXHAUSTED
            ),
            None,
        )
        if current and current.get("status") == "True" and current.get("reason") == action.reason:
            return
        gen = body["metadata"].get("generation")
        await self.patch_status(
            body,
            {
                "message": action.message,
                "conditions": objects.merge_conditions(
                    status.get("conditions"),
                    objects.condition(
                        objects.CAPACITY_EXHAUSTED, True, action.reason, action.message, stamp, gen
                    ),
                ),
            },
        )
        kind = "Warning" if action.reason == CAPACITY_EXHAUSTED else "Normal"
        _event(body, type=kind, reason=action.reason, message=action.message)

    # -- conversion ---------------------------------------------------------------------

    async def ensure_model(
        self, body: Body, models: kopf.Index, pods: kopf.Index, deps: kopf.Index
    ) -> None:
        """Deployment up to date; a conversion Job if the artifact is new.

        Not under the decision lock (a start-up pass over many models must not queue
        demands behind it) but under the model's own lock; its writes touch phases the
        decisions leave alone (Pending, Converting, Failed -> Standby / Converting).
        """
        name = body["metadata"]["name"]
        current = next(iter(deps.get(name, ())), None)
        async with self.model_locks[name]:
            body = dict(self.overlay.apply(body))
            status = body.get("status") or {}
            gen = body["metadata"].get("generation")
            stamp = _now()
            if objects.is_converted(body):
                await self.ensure_deployment(body, objects.replicas_for(body), current)
                if objects.phase_of(body) in (PENDING, CONVERTING, FAILED):
                    await self.patch_status(
                        body,
                        {
                            "phase": STANDBY,
                            "reason": "Converted",
                            "message": "artifact ready",
                            "observedGeneration": gen,
                        },
                    )
                elif status.get("observedGeneration") != gen:
                    await self.patch_status(body, {"observedGeneration": gen})
            else:
                # A new artifact: no pod may run the old one meanwhile.
                await self.ensure_deployment(body, 0, current)
                if current is not None and current["replicas"]:
                    await self.scale(body, 0)
                try:
                    job = objects.conversion_job(body, self.config)
                except objects.SourceRefused as exc:
                    await self._refuse_source(body, str(exc), stamp)
                    job = None
                created = job is not None and await self._create_job(job)
                if job is not None and (created or objects.phase_of(body) != CONVERTING):
                    key = objects.model_key(body["spec"])
                    message = f"converting {objects.source_of(body['spec']).location} ({key})"
                    await self.patch_status(
                        body,
                        {
                            "phase": CONVERTING,
                            "reason": "ConversionStarted",
                            "message": f"Job {job['metadata']['name']}: {message}",
                            "observedGeneration": gen,
                            "conditions": objects.merge_conditions(
                                status.get("conditions"),
                                objects.condition(
                                    objects.CONVERTED, False, "Converting", message, stamp, gen
                                ),
                                objects.condition(
                                    objects.READY, False, "Converting", message, stamp, gen
                                ),
                            ),
                        },
                    )
                    if created:
                        _event(
                            body,
                            type="Normal",
                            reason="ConversionStarted",
                            message=f"Started Job {job['metadata']['name']}: {message}",
                        )
            log.debug("ensured %s", name)
        self._note_resumed(name, models)
        await self.reconcile(models, pods, deps)

    def _note_resumed(self, name: str, models: kopf.Index) -> None:
        """Log once when the spec handler has seen every model (the start-up pass)."""
        if self._resumed is None:
            return
        self._resumed.add(name)
        total = sum(len(store) for store in models.values())
        if len(self._resumed) >= total:
            took = time.monotonic() - self.started
            log.info("start-up pass: %d models in %.2fs", total, took)
            self._resumed = None

    async def _refuse_source(self, body: Body, message: str, stamp: str) -> None:
        """A source path outside --source-root: Failed with a condition and an Event, once."""
        status = body.get("status") or {}
        gen = body["metadata"].get("generation")
        if status.get("reason") == "SourceRefused" and status.get("observedGeneration") == gen:
            return
        await self.patch_status(
            body,
            {
                "phase": FAILED,
                "reason": "SourceRefused",
                "message": message,
                "observedGeneration": gen,
                "conditions": objects.merge_conditions(
                    status.get("conditions"),
                    objects.condition(
                        objects.CONVERTED, False, "SourceRefused", message, stamp, gen
                    ),
                    objects.condition(objects.READY, False, "SourceRefused", message, stamp, gen),
                ),
            },
        )
        _event(body, type="Warning", reason="SourceRefused", message=message)

    async def _create_job(self, job: Body) -> bool:
        try:
            await self.w.create_job(job["metadata"]["namespace"], job)
            return True
        except Conflict:
            return False

    async def job_finished(
        self, job: Body, models: kopf.Index, pods: kopf.Index, deps: kopf.Index
    ) -> None:
        labels = job["metadata"].get("labels") or {}
        name = labels.get(k8s.LABEL_MODEL)
        conditions = {c.get("type"): c for c in (job.get("status") or {}).get("conditions") or []}
        succeeded = conditions.get("Complete", {}).get("status") == "True"
        failed = conditions.get("Failed", {}).get("status") == "True"
        if not name or not (succeeded or failed):
            return
        async with self.model_locks[name]:
            body = next(
                (
                    dict(self.overlay.apply(b))
                    for store in models.values()
                    for b in store
                    if b["metadata"]["name"] == name
                ),
                None,
            )
            if body is None or body["metadata"].get("deletionTimestamp"):
                return
            owners = {o.get("uid") for o in job["metadata"].get("ownerReferences") or []}
            key = objects.model_key(body["spec"])
            if (
                body["metadata"]["uid"] not in owners
                or labels.get(objects.LABEL_ARTIFACT_KEY) != key
            ):
                return  # a Job of an earlier object or spec
            if objects.is_converted(body):
                return
            status = body.get("status") or {}
            gen = body["metadata"].get("generation")
            job_gen = job["metadata"]["name"].rsplit("-g", 1)[-1]
            if failed and job_gen != str(gen):
                return  # a failure of an earlier spec: a newer Job is (or was) running
            stamp = _now()
            if succeeded:
                path = objects.artifact_path(self.config, key)
                message = f"converted to {path}"
                await self.patch_status(
                    body,
                    {
                        "phase": STANDBY,
                        "reason": "Converted",
                        "message": message,
                        "artifact": {
                            "path": path,
                            "key": key,
                            "precision": objects.precision_of(body["spec"]),
                            "digest": await self._artifact_digest(job),
                        },
                        "conditions": objects.merge_conditions(
                            status.get("conditions"),
                            objects.condition(
                                objects.CONVERTED, True, "Converted", message, stamp, gen
                            ),
                        ),
                    },
                )
                _event(body, type="Normal", reason="Converted", message=message)
            else:
                detail = await self._failure_detail(job, conditions.get("Failed", {}))
                message = f"conversion Job {job['metadata']['name']} failed: {detail}"
                await self.patch_status(
                    body,
                    {
                        "phase": FAILED,
                        "reason": "ConversionFailed",
                        "message": message,
                        "conditions": objects.merge_conditions(
                            status.get("conditions"),
                            objects.condition(
                                objects.CONVERTED, False, "ConversionFailed", message, stamp, gen
                            ),
                        ),
                    },
                )
                _event(body, type="Warning", reason="ConversionFailed", message=message)
        await self.reconcile(models, pods, deps)

    async def _job_pods(self, job: Body) -> list[Any]:
        meta = job["metadata"]
        return await self.w.list_pods(meta["namespace"], f"{JOB_NAME_LABEL}={meta['name']}")

    async def _artifact_digest(self, job: Body) -> str:
        """The conversion prints a JSON summary; its termination message may carry it."""
        try:
            for pod in await self._job_pods(job):
                for cs in (pod.status.container_statuses or []) if pod.status else []:
                    term = cs.state.terminated if cs.state else None
                    if term and term.message and "digest" in term.message:
                        return str(json.loads(term.message.strip().splitlines()[-1])["digest"])
        except (ApiError, ValueError, KeyError):
            pass
        return ""

    async def _failure_detail(self, job: Body, failed_condition: Body) -> str:
        parts = [failed_condition.get("reason") or "", failed_condition.get("message") or ""]
        try:
            for pod in await self._job_pods(job):
                for cs in (pod.status.container_statuses or []) if pod.status else []:
                    term = cs.state.terminated if cs.state else None
                    if term is None:
                        continue
                    parts.append(f"exit code {term.exit_code}")
                    if term.message:
                        parts.append(objects.failure_reason(term.message))
                        continue
                    try:
                        logs = await self.w.pod_log(pod.metadata.namespace, pod.metadata.name)
                        parts.append(objects.failure_reason(logs))
                    except ApiError:
                        pass
        except ApiError as exc:
            parts.append(f"(could not read its pods: {exc.reason})")
        return "; ".join(p for p in parts if p) or "unknown error"


def register(registry: kopf.OperatorRegistry, operator: Operator) -> None:
    """Attach the handlers to `registry`, bound to `operator` (already connected)."""
    config = operator.config
    em = (k8s.GROUP, k8s.VERSION, k8s.PLURAL)
    deployments = ("apps", "v1", "deployments")
    model_server = {k8s.LABEL_NAME: k8s.MODEL_SERVER_APP}
    converter = {k8s.LABEL_NAME: objects.CONVERTER_APP}

    @kopf.on.login(id="login", registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # In a pod, its ServiceAccount (in-cluster config); outside one (a developer
        # running the operator by hand), the kubeconfig in KUBECONFIG. kopf's own
        # in-cluster login dials kubernetes.default.svc, which needs cluster DNS.
        info = kopf.login_with_service_account(**kwargs)
        if info is not None:
            return dataclasses.replace(info, server=k8s.in_cluster_server() or info.server)
        return kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.startup(id="configure", registry=registry)
    async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        # Timeouts on every request and watch: a half-open connection must not freeze a
        # watch (and with it the indexes) forever. The server ends each watch after
        # server_timeout; the client gives up client_timeout after a silent stream.
        settings.watching.server_timeout = int(config.watch_timeout)  # an integer query
        settings.watching.client_timeout = config.watch_timeout + 15
        settings.watching.connect_timeout = config.api_connect_timeout
        settings.watching.reconnect_backoff = 0.5
        settings.networking.connect_timeout = config.api_connect_timeout
        settings.networking.request_timeout = config.api_connect_timeout + config.api_read_timeout
        # No cluster-wide scanning of namespaces and CRDs: the operator has no RBAC for it,
        # and kopf retries the forbidden listings for ~55 s before it falls back to the
        # namespace it was given (a restarted operator stood still that long).
        settings.scanning.disabled = True
        settings.posting.enabled = True
        settings.posting.level = logging.WARNING  # our own Events come from kopf.event()
        # One replica acts: the leader Lease is held before kopf starts (cli.py).
        settings.peering.standalone = True
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=k8s.GROUP)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=k8s.GROUP, key="last-handled-configuration"
        )

    @kopf.on.cleanup(id="close", registry=registry)
    async def close(**_: Any) -> None:
        for task in list(operator.measurements.values()):
            task.cancel()
        if operator.ticker is not None:
            operator.ticker.cancel()
        if operator._wakeup is not None:
            operator._wakeup.cancel()

    @kopf.index(*em, id="embedding_models", registry=registry)
    def embedding_models(body: kopf.Body, **_: Any) -> dict[None, Body]:
        return {None: model_snapshot(body)}

    @kopf.index("v1", "pods", labels=model_server, id="model_pods", registry=registry)
    def model_pods(body: kopf.Body, **_: Any) -> dict[None, Any]:
        return {None: pod_view(body)}

    @kopf.index(*deployments, labels=model_server, id="model_deployments", registry=registry)
    def model_deployments(body: kopf.Body, **_: Any) -> dict[str, Body]:
        view = deployment_view(body)
        return {view["model"]: view}

    @kopf.on.resume(*em, id="spec", registry=registry)  # type: ignore[arg-type]
    @kopf.on.create(*em, id="spec", registry=registry)  # type: ignore[arg-type]
    @kopf.on.update(*em, field="spec", id="spec", registry=registry)  # type: ignore[arg-type]
    async def spec_changed(
        body: kopf.Body,
        embedding_models: kopf.Index,
        model_pods: kopf.Index,
        model_deployments: kopf.Index,
        **_: Any,
    ) -> None:
        await operator.ensure_model(
            model_snapshot(body), embedding_models, model_pods, model_deployments
        )

    @kopf.on.event(*em, id="model_event", registry=registry)  # type: ignore[arg-type]
    async def model_event(
        embedding_models: kopf.Index,
        model_pods: kopf.Index,
        model_deployments: kopf.Index,
        **_: Any,
    ) -> None:
        await operator.reconcile(embedding_models, model_pods, model_deployments)

    @kopf.on.event("v1", "pods", labels=model_server, id="pod_event", registry=registry)  # type: ignore[arg-type]
    async def pod_event(
        embedding_models: kopf.Index,
        model_pods: kopf.Index,
        model_deployments: kopf.Index,
        **_: Any,
    ) -> None:
        await operator.reconcile(embedding_models, model_pods, model_deployments)

    @kopf.on.event(*deployments, labels=model_server, id="deployment_event", registry=registry)  # type: ignore[arg-type]
    async def deployment_event(
        embedding_models: kopf.Index,
        model_pods: kopf.Index,
        model_deployments: kopf.Index,
        **_: Any,
    ) -> None:
        await operator.reconcile(embedding_models, model_pods, model_deployments)

    @kopf.on.event("batch", "v1", "jobs", labels=converter, id="job_event", registry=registry)  # type: ignore[arg-type]
    async def job_event(
        body: kopf.Body,
        embedding_models: kopf.Index,
        model_pods: kopf.Index,
        model_deployments: kopf.Index,
        **_: Any,
    ) -> None:
        await operator.job_finished(
            {"metadata": dict(body["metadata"]), "status": dict(body.get("status") or {})},
            embedding_models,
            model_pods,
            model_deployments,
        )

    # Idle timeouts, residency and demand expiry happen without any event. A kopf timer
    # would put a finalizer on every active model (and block namespace deletion whenever
    # the operator is gone), so one background task (`tick_forever`, started by the first
    # decision) ticks instead; it also re-advertises the node's capacity.
