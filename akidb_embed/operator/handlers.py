"""kopf handlers: glue between watches, the placement policy and the API server.

Everything that decides lives elsewhere: `placement.decide` (which pods run),
`objects` (what the Deployment / Job / status look like). Here:

- kopf indexes keep the EmbeddingModels and the model-server pods (Terminating ones
  included) as the watches see them; kopf calls no handler before they are complete,
  so a restarted operator decides from the whole picture.
- `Operator.reconcile` runs one placement decision at a time (one lock); concurrent
  triggers coalesce into the next decision. Triggers: any EmbeddingModel event (the
  gateway's status.requestedAt included), any model-server pod event, conversion
  Jobs finishing, and a periodic tick (idle timeouts, residency expiry) that runs
  only while this replica is the active kopf peer.
- Conversion: a Job per (spec generation, artifact key), Converted / ConversionFailed.

kopf's change detection ignores `status`, so demand (status.requestedAt) is seen
through `on.event`, not `on.field`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, cast

import kopf
from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from akidb_embed import k8s
from akidb_embed.operator import objects
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
    Evict,
    IdleStandby,
    MarkActivating,
    MarkReady,
    MarkStandby,
    Wait,
    decide,
)
from akidb_embed.operator.state import (
    WriteOverlay,
    model_snapshot,
    model_view,
    peering_allows,
    pod_view,
)

Body = dict[str, Any]
log = logging.getLogger("akidb_embed.operator")

MERGE_PATCH = "application/merge-patch+json"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"


def _event(body: Body, *, type: str, reason: str, message: str) -> None:
    """Post a Kubernetes Event about the EmbeddingModel (kopf batches and sends it)."""
    try:
        kopf.event(cast(Any, body), type=type, reason=reason, message=message[:1024])
    except LookupError:  # outside kopf's context (no event queue): the status still says it
        log.warning("could not post Event %s for %s", reason, body["metadata"]["name"])


def _now() -> str:
    return k8s.now_rfc3339()


class Operator:
    """The operator's one decision loop and its writes to the API server."""

    def __init__(self, config: OperatorConfig, identity: str = "", priority: int = 0) -> None:
        self.config = config
        self.lock = asyncio.Lock()
        self.overlay = WriteOverlay()
        self._requested = 0
        self._completed = 0
        self.api: client.ApiClient | None = None
        self.decisions = 0
        self.identity = identity
        self.priority = priority
        self.indexes: tuple[kopf.Index, kopf.Index] | None = None
        self.ticker: asyncio.Task[None] | None = None
        # One pending "decide again at" wake-up (see Wait.retry_at) and its time.
        self._wakeup: asyncio.TimerHandle | None = None
        self._wakeup_at = float("inf")
        self._background: set[asyncio.Task[None]] = set()  # keeps fired wake-ups alive
        # One status.performance read per model that turned Ready (background tasks).
        self.measurements: dict[str, asyncio.Task[None]] = {}

    # -- API access -------------------------------------------------------------------

    @property
    def custom(self) -> Any:  # dict bodies and _content_type: untyped use
        return client.CustomObjectsApi(self.api)

    @property
    def apps(self) -> Any:  # dict bodies and _content_type: untyped use
        return client.AppsV1Api(self.api)

    @property
    def batch(self) -> Any:  # dict bodies and _content_type: untyped use
        return client.BatchV1Api(self.api)

    @property
    def core(self) -> Any:  # dict bodies and _content_type: untyped use
        return client.CoreV1Api(self.api)

    async def patch_status(self, body: Body, status: Body) -> Body:
        """Merge-patch the status subresource; remember the write until the watch shows it."""
        meta = body["metadata"]
        result = await self.custom.patch_namespaced_custom_object_status(
            k8s.GROUP,
            k8s.VERSION,
            meta["namespace"],
            k8s.PLURAL,
            meta["name"],
            {"status": status},
            _content_type=MERGE_PATCH,
        )
        new_status = dict(result.get("status") or {})
        self.overlay.record(meta["name"], meta["uid"], new_status)
        body["status"] = new_status
        return new_status

    async def scale(self, body: Body, replicas: int) -> None:
        meta = body["metadata"]
        try:
            await self.apps.patch_namespaced_deployment(
                objects.deployment_name(meta["name"]),
                meta["namespace"],
                {"spec": {"replicas": replicas}},
                _content_type=MERGE_PATCH,
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
            # Deleted behind our back (or never created): recreate it at the right size.
            await self.ensure_deployment(body, replicas)

    async def ensure_deployment(self, body: Body, replicas: int) -> None:
        desired = objects.model_deployment(body, self.config, replicas)
        meta = desired["metadata"]
        try:
            await self.apps.create_namespaced_deployment(meta["namespace"], desired)
            return
        except ApiException as exc:
            if exc.status != 409:
                raise
        await self.apps.patch_namespaced_deployment(
            meta["name"],
            meta["namespace"],
            {"metadata": {"labels": meta["labels"]}, "spec": desired["spec"]},
            _content_type=MERGE_PATCH,
        )

    # -- placement -------------------------------------------------------------------

    async def reconcile(self, models: kopf.Index, pods: kopf.Index) -> None:
        """Run a placement decision unless one that started after this call covers it."""
        # kopf hands indexes only to handlers, and only once they are complete.
        self.indexes = (models, pods)
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
                await self._decide_and_apply(models, pods)
            finally:
                self._completed = started

    async def is_active_peer(self) -> bool:
        if self.config.standalone:
            return True
        try:
            peering = await self.custom.get_namespaced_custom_object(
                "kopf.dev", "v1", self.config.namespace, "kopfpeerings", self.config.peering
            )
        except ApiException:
            return False  # no peering object: kopf pauses too (mandatory peering)
        return peering_allows(
            peering.get("status") or {}, self.identity, self.priority, time.time()
        )

    async def tick_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.tick)
            try:
                if self.indexes is not None and await self.is_active_peer():
                    await self.reconcile(*self.indexes)
            except Exception:
                log.exception("periodic decision failed; retrying next tick")

    def _decide_again_at(self, when: float) -> None:
        """Decide again at `when` (epoch seconds) instead of waiting for the next tick."""
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

    async def _decide_and_apply(self, models: kopf.Index, pods: kopf.Index) -> None:
        bodies = self._bodies(models)
        pod_views = [p for store in pods.values() for p in store]
        now = time.time()
        actions = decide(
            [model_view(b) for b in bodies.values()], pod_views, self.config.limits, now
        )
        self.decisions += 1
        for action in actions:
            if isinstance(action, Wait) and action.retry_at is not None:
                self._decide_again_at(action.retry_at)
            body = bodies.get(action.model)
            if body is None:
                continue
            try:
                await self.apply(action, body, now)
            except ApiException as exc:
                # The next trigger decides again from fresh state.
                log.warning("%s on %s failed: %s", type(action).__name__, action.model, exc)

    async def apply(self, action: Action, body: Body, now: float) -> None:
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
            await self.scale(body, 1)
            _event(body, type="Normal", reason="Activated", message=action.message)
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
            await self.scale(body, 0)
            _event(body, type="Normal", reason=reason, message=action.message)
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
            pods = await self.core.list_namespaced_pod(
                namespace,
                label_selector=f"{k8s.LABEL_NAME}={k8s.MODEL_SERVER_APP},{k8s.LABEL_MODEL}={name}",
            )
            url = next((u for u in map(pod_endpoint, pods.items) if u), None)
            if url is None:
                log.info("%s: no ready pod to read performance from", name)
                return
            perf = await fetch_performance(url)
            if perf is None:
                return
            # Not through patch_status: performance is no decision input, and a write
            # recorded in the overlay from outside the lock could mask a newer phase.
            await self.custom.patch_namespaced_custom_object_status(
                k8s.GROUP,
                k8s.VERSION,
                namespace,
                k8s.PLURAL,
                name,
                {"status": {"performance": perf}},
                _content_type=MERGE_PATCH,
            )
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

    async def ensure_model(self, body: Body, models: kopf.Index, pods: kopf.Index) -> None:
        """Deployment at the size the phase says; a conversion Job if the artifact is new."""
        async with self.lock:
            body = dict(self.overlay.apply(body))
            name = body["metadata"]["name"]
            status = body.get("status") or {}
            gen = body["metadata"].get("generation")
            stamp = _now()
            if objects.is_converted(body):
                await self.ensure_deployment(body, objects.replicas_for(body))
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
                await self.ensure_deployment(body, 0)
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
        await self.reconcile(models, pods)

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
            await self.batch.create_namespaced_job(job["metadata"]["namespace"], cast(Any, job))
            return True
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise

    async def job_finished(
        self, job: Body, models: kopf.Index, pods: kopf.Index, logger: logging.Logger
    ) -> None:
        labels = job["metadata"].get("labels") or {}
        name = labels.get(k8s.LABEL_MODEL)
        conditions = {c.get("type"): c for c in (job.get("status") or {}).get("conditions") or []}
        succeeded = conditions.get("Complete", {}).get("status") == "True"
        failed = conditions.get("Failed", {}).get("status") == "True"
        if not name or not (succeeded or failed):
            return
        async with self.lock:
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
        await self.reconcile(models, pods)

    async def _job_pods(self, job: Body) -> list[Any]:
        meta = job["metadata"]
        listing = await self.core.list_namespaced_pod(
            meta["namespace"], label_selector=f"{JOB_NAME_LABEL}={meta['name']}"
        )
        return list(listing.items)

    async def _artifact_digest(self, job: Body) -> str:
        """The conversion prints a JSON summary; its termination message may carry it."""
        try:
            for pod in await self._job_pods(job):
                for cs in (pod.status.container_statuses or []) if pod.status else []:
                    term = cs.state.terminated if cs.state else None
                    if term and term.message and "digest" in term.message:
                        import json

                        return str(json.loads(term.message.strip().splitlines()[-1])["digest"])
        except (ApiException, ValueError, KeyError):
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
                        logs = await self.core.read_namespaced_pod_log(
                            pod.metadata.name, pod.metadata.namespace, tail_lines=40
                        )
                        parts.append(objects.failure_reason(str(logs)))
                    except ApiException:
                        pass
        except ApiException as exc:
            parts.append(f"(could not read its pods: {exc.reason})")
        return "; ".join(p for p in parts if p) or "unknown error"


def register(registry: kopf.OperatorRegistry, operator: Operator) -> None:
    """Attach the handlers to `registry`, bound to `operator`."""
    config = operator.config
    em = (k8s.GROUP, k8s.VERSION, k8s.PLURAL)
    model_server = {k8s.LABEL_NAME: k8s.MODEL_SERVER_APP}
    converter = {k8s.LABEL_NAME: objects.CONVERTER_APP}

    @kopf.on.login(id="login", registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # A pod's ServiceAccount, else the kubeconfig (KUBECONFIG; the local node agent
        # gives each pod one for its ServiceAccount).
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.startup(id="configure", registry=registry)
    async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        from kubernetes_asyncio import config as kube_config

        # Without these, a watch stream can hang silently forever on a broken connection.
        settings.watching.server_timeout = 120
        settings.watching.client_timeout = 150
        settings.watching.connect_timeout = 10
        settings.networking.request_timeout = 30
        settings.posting.enabled = True
        settings.posting.level = logging.WARNING  # our own Events come from kopf.event()
        settings.peering.name = config.peering
        settings.peering.standalone = config.standalone
        settings.peering.mandatory = not config.standalone
        settings.peering.clusterwide = False
        settings.peering.lifetime = 30
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=k8s.GROUP)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=k8s.GROUP, key="last-handled-configuration"
        )
        try:
            kube_config.load_incluster_config()
        except kube_config.ConfigException:
            await kube_config.load_kube_config()
        operator.api = client.ApiClient()

    @kopf.on.cleanup(id="close", registry=registry)
    async def close(**_: Any) -> None:
        for task in list(operator.measurements.values()):
            task.cancel()
        if operator.api is not None:
            await operator.api.close()

    @kopf.index(*em, id="embedding_models", registry=registry)
    def embedding_models(body: kopf.Body, **_: Any) -> dict[None, Body]:
        return {None: model_snapshot(body)}

    @kopf.index("v1", "pods", labels=model_server, id="model_pods", registry=registry)
    def model_pods(body: kopf.Body, **_: Any) -> dict[None, Any]:
        return {None: pod_view(body)}

    @kopf.on.resume(*em, id="spec", registry=registry)  # type: ignore[arg-type]
    @kopf.on.create(*em, id="spec", registry=registry)  # type: ignore[arg-type]
    @kopf.on.update(*em, field="spec", id="spec", registry=registry)  # type: ignore[arg-type]
    async def spec_changed(
        body: kopf.Body, embedding_models: kopf.Index, model_pods: kopf.Index, **_: Any
    ) -> None:
        await operator.ensure_model(model_snapshot(body), embedding_models, model_pods)

    @kopf.on.event(*em, id="model_event", registry=registry)  # type: ignore[arg-type]
    async def model_event(embedding_models: kopf.Index, model_pods: kopf.Index, **_: Any) -> None:
        await operator.reconcile(embedding_models, model_pods)

    @kopf.on.event("v1", "pods", labels=model_server, id="pod_event", registry=registry)  # type: ignore[arg-type]
    async def pod_event(embedding_models: kopf.Index, model_pods: kopf.Index, **_: Any) -> None:
        await operator.reconcile(embedding_models, model_pods)

    @kopf.on.event("batch", "v1", "jobs", labels=converter, id="job_event", registry=registry)  # type: ignore[arg-type]
    async def job_event(
        body: kopf.Body,
        embedding_models: kopf.Index,
        model_pods: kopf.Index,
        logger: logging.Logger,
        **_: Any,
    ) -> None:
        await operator.job_finished(
            {"metadata": dict(body["metadata"]), "status": dict(body.get("status") or {})},
            embedding_models,
            model_pods,
            logger,
        )

    # Idle timeouts and residency expiry happen without any event. A kopf timer would
    # put a finalizer on every active model (and block namespace deletion whenever the
    # operator is gone), so one background task (`tick_forever`, started by the first
    # decision) ticks instead, only while this replica is the active peer.
    @kopf.on.cleanup(id="stop_ticking", registry=registry)
    async def stop_ticking(**_: Any) -> None:
        if operator.ticker is not None:
            operator.ticker.cancel()
        if operator._wakeup is not None:
            operator._wakeup.cancel()
