"""The conversion Job workflow: one Job per (spec generation, artifact key).

`ensure_model` is the spec handler: the model's Deployment up to date and, when the
artifact is new, a conversion Job (no pod may run the old artifact meanwhile).
`job_finished` turns the Job's outcome into Standby (with the artifact recorded) or
Failed (with what its pod said). What each step writes comes from `decisions`; the
writes go through the controller (`Operator`), which remembers them until the watch
shows them.

Not under the decision lock (a start-up pass over many models must not queue demands
behind it) but under the model's own lock; these writes touch phases the placement
decisions leave alone (Pending, Converting, Failed -> Standby / Converting).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from akidb_embed import k8s
from akidb_embed.operator import decisions, objects
from akidb_embed.operator.writer import ApiError, Conflict

if TYPE_CHECKING:
    from akidb_embed.operator.controller import Operator

Body = dict[str, Any]
log = logging.getLogger("akidb_embed.operator")

JOB_NAME_LABEL = "batch.kubernetes.io/job-name"


def job_result(job: Body) -> tuple[str | None, bool, bool, Body]:
    """(model name, succeeded, failed, the Failed condition) of a converter Job."""
    labels = job["metadata"].get("labels") or {}
    conditions = {c.get("type"): c for c in (job.get("status") or {}).get("conditions") or []}
    succeeded = conditions.get("Complete", {}).get("status") == "True"
    failed = conditions.get("Failed", {}).get("status") == "True"
    return labels.get(k8s.LABEL_MODEL), succeeded, failed, conditions.get("Failed", {})


def job_is_current(job: Body, body: Body, *, failed: bool) -> bool:
    """Whether a finished Job speaks for this object and spec (not an earlier one's)."""
    meta = job["metadata"]
    owners = {o.get("uid") for o in meta.get("ownerReferences") or []}
    key = objects.model_key(body["spec"])
    if body["metadata"]["uid"] not in owners:
        return False
    if (meta.get("labels") or {}).get(objects.LABEL_ARTIFACT_KEY) != key:
        return False
    # A failure of an earlier spec: a newer Job is (or was) running.
    job_generation = meta["name"].rsplit("-g", 1)[-1]
    return not (failed and job_generation != str(body["metadata"].get("generation")))


class Conversion:
    """The spec and Job handlers' work for one operator."""

    def __init__(self, operator: Operator) -> None:
        self.op = operator
        self.started = time.monotonic()
        # Bounds the writes of the start-up pass (one handler per model, all at once).
        self.writing = asyncio.Semaphore(operator.config.spec_concurrency)
        self._resumed: set[str] | None = set()  # models the start-up pass has handled

    async def ensure_model(self, body: Body) -> None:
        """Deployment up to date; a conversion Job if the artifact is new."""
        op = self.op
        name = body["metadata"]["name"]
        await op.cache.wait_synced()  # its Deployment, if any, is known
        async with self.writing, op.model_locks[name]:
            current = op.cache.deployments.get(name)
            body = dict(op.overlay.apply(body))
            stamp = k8s.now_rfc3339()
            if objects.is_converted(body):
                await op.ensure_deployment(body, objects.replicas_for(body), current)
                await op.carry_out(body, decisions.artifact_ready(body))
            else:
                await op.ensure_deployment(body, 0, current)
                if current is not None and current["replicas"]:
                    await op.scale(body, 0)
                try:
                    job = objects.conversion_job(body, op.config)
                except objects.SourceRefused as exc:
                    await op.carry_out(body, decisions.source_refused(body, str(exc), stamp))
                else:
                    created = await self._create_job(job)
                    started = decisions.conversion_started(
                        body, job["metadata"]["name"], created=created, stamp=stamp
                    )
                    await op.carry_out(body, started)
            log.debug("ensured %s", name)
        self._note_resumed(name)
        op.poke()  # the watch shows the writes too; this covers a run without any

    def _note_resumed(self, name: str) -> None:
        """Log once when the spec handler has seen every model (the start-up pass)."""
        if self._resumed is None:
            return
        self._resumed.add(name)
        total = len(self.op.cache.models)
        if len(self._resumed) >= total:
            took = time.monotonic() - self.started
            log.info("start-up pass: %d models in %.2fs", total, took)
            self._resumed = None

    async def _create_job(self, job: Body) -> bool:
        try:
            await self.op.w.create_job(job["metadata"]["namespace"], job)
            return True
        except Conflict:
            return False

    async def job_finished(self, job: Body) -> None:
        op = self.op
        name, succeeded, failed, failed_condition = job_result(job)
        if not name or not (succeeded or failed):
            return
        await op.cache.wait_synced()
        async with op.model_locks[name]:
            watched = op.cache.models.get(name)
            if watched is None or watched["metadata"].get("deletionTimestamp"):
                return
            body = dict(op.overlay.apply(watched))
            if not job_is_current(job, body, failed=failed) or objects.is_converted(body):
                return
            stamp = k8s.now_rfc3339()
            job_name = job["metadata"]["name"]
            if succeeded:
                path = objects.artifact_path(op.config, objects.model_key(body["spec"]))
                digest = await self._artifact_digest(job)
                await op.carry_out(body, decisions.converted(body, path, digest, stamp))
            else:
                detail = await self._failure_detail(job, failed_condition)
                await op.carry_out(body, decisions.conversion_failed(body, job_name, detail, stamp))
        op.poke()  # the watch shows the writes too; this covers a run without any

    async def _job_pods(self, job: Body) -> list[Any]:
        meta = job["metadata"]
        return await self.op.w.list_pods(meta["namespace"], f"{JOB_NAME_LABEL}={meta['name']}")

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
                        logs = await self.op.w.pod_log(pod.metadata.namespace, pod.metadata.name)
                        parts.append(objects.failure_reason(logs))
                    except ApiError:
                        pass
        except ApiError as exc:
            parts.append(f"(could not read its pods: {exc.reason})")
        return "; ".join(p for p in parts if p) or "unknown error"
