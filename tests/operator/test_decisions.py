"""Decisions as data (each action -> status patch, Event, size) and the controller applying
them: against a small HTTP server that answers as the API server does, so the real
Writer and kubernetes_asyncio serialise every call."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from kubernetes_asyncio import client

from akidb_embed import k8s
from akidb_embed.operator import conversion, decisions, objects
from akidb_embed.operator.cache import ClusterCache
from akidb_embed.operator.config import OperatorConfig
from akidb_embed.operator.controller import Operator
from akidb_embed.operator.decisions import Event, Outcome
from akidb_embed.operator.placement import (
    ACTIVATING,
    CAPACITY_EXHAUSTED,
    CONVERTING,
    EVICTING,
    FAILED,
    READY,
    STANDBY,
    Activate,
    DeletePod,
    Evict,
    IdleStandby,
    MarkActivating,
    MarkReady,
    MarkStandby,
    Scale,
    Wait,
)
from tests.fixtures.http import served

NOW = 1_800_000_000.0
STAMP = k8s.to_rfc3339(NOW)
SPEC = {"source": {"repo": "intfloat/e5-small-v2", "revision": "v2"}, "dimension": 384}
KEY = objects.model_key(SPEC)


def model(name: str = "m", phase: str = STANDBY, **status: Any) -> dict[str, Any]:
    conditions = [objects.condition(objects.CONVERTED, True, "Converted", "", STAMP, 1)]
    return {
        "apiVersion": k8s.API_VERSION,
        "kind": k8s.KIND,
        "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "generation": 1},
        "spec": dict(SPEC),
        "status": {
            "phase": phase,
            "artifact": {"key": KEY, "path": f"/store/{KEY}"},
            "conditions": conditions,
            **status,
        },
    }


def conditions_of(out: Outcome) -> dict[str, dict[str, Any]]:
    assert out.status is not None
    return {c["type"]: c for c in out.status["conditions"]}


# -- each action's outcome ----------------------------------------------------------------


def test_activate_takes_the_slot_posts_an_event_and_scales_to_one() -> None:
    out = decisions.outcome(Activate("m", "activating m for a request"), model(), NOW)
    assert out.status is not None
    assert out.status["phase"] == ACTIVATING and out.status["activeSince"] == STAMP
    assert conditions_of(out)[objects.READY]["status"] == "False"
    assert conditions_of(out)[objects.CAPACITY_EXHAUSTED]["status"] == "False"
    assert conditions_of(out)[objects.CONVERTED]["status"] == "True"  # kept, not dropped
    assert out.event == Event("Normal", "Activated", "activating m for a request")
    assert out.replicas == 1 and not out.measure


def test_evict_and_idle_standby_count_evictions_and_scale_to_zero() -> None:
    body = model(phase=READY, evictions=2)
    evict = decisions.outcome(Evict("m", "n", 40.0, 2, "evicting m for n"), body, NOW)
    idle = decisions.outcome(IdleStandby("m", 700.0, "idle for 700s"), body, NOW)
    for out, reason in ((evict, "Evicted"), (idle, "IdleTimeout")):
        assert out.status is not None
        assert out.status["phase"] == EVICTING and out.status["reason"] == reason
        assert out.status["evictions"] == 3 and out.status["lastEvictedAt"] == STAMP
        assert out.event is not None and out.event.reason == reason
        assert out.replicas == 0


def test_mark_ready_names_the_cold_start_and_asks_for_the_measurement() -> None:
    body = model(phase=ACTIVATING, activeSince=k8s.to_rfc3339(NOW - 2.5))
    out = decisions.outcome(MarkReady("m"), body, NOW)
    assert out.status is not None and out.status["phase"] == READY
    assert out.status["readySince"] == STAMP  # the idle clock starts here
    assert "after a 2.5s cold start" in out.status["message"]
    assert conditions_of(out)[objects.READY]["status"] == "True"
    assert out.event is not None and out.event.reason == "Ready"
    assert out.measure and out.replicas is None


def test_lost_pod_is_a_warning_and_a_stopped_pod_is_standby_without_an_event() -> None:
    lost = decisions.outcome(MarkActivating("m"), model(phase=READY), NOW)
    assert lost.status is not None and lost.status["phase"] == ACTIVATING
    assert lost.event is not None and lost.event.type == "Warning"
    stopped = decisions.outcome(MarkStandby("m"), model(phase=EVICTING), NOW)
    assert stopped.status is not None and stopped.status["phase"] == STANDBY
    assert stopped.event is None and stopped.replicas is None


def test_scale_writes_only_the_size() -> None:
    assert decisions.outcome(Scale("m", 1, observed=0), model(), NOW) == Outcome(replicas=1)


def test_a_wait_is_recorded_once() -> None:
    wait = Wait("m", CAPACITY_EXHAUSTED, "3 of 3 slots hold pinned models", retry_at=NOW + 5)
    first = decisions.outcome(wait, model(), NOW)
    assert conditions_of(first)[objects.CAPACITY_EXHAUSTED]["status"] == "True"
    assert first.event == Event("Warning", CAPACITY_EXHAUSTED, wait.message)
    assert first.status is not None and "phase" not in first.status  # a wait moves nothing
    again = model(conditions=first.status["conditions"])
    assert decisions.outcome(wait, again, NOW + 1) == Outcome()
    other = Wait("m", "WaitingForEviction", "waiting for a pod to stop")
    changed = decisions.outcome(other, again, NOW + 2)
    assert changed.event is not None and changed.event.type == "Normal"


def test_delete_pod_has_no_model_outcome() -> None:
    with pytest.raises(TypeError):
        decisions.outcome(DeletePod("m", "m-1"), model(), NOW)  # type: ignore[arg-type]


# -- the conversion workflow's steps ------------------------------------------------------


def test_conversion_steps() -> None:
    pending: dict[str, Any] = {**model(), "status": {}}
    started = decisions.conversion_started(pending, "convert-m-g1", created=True, stamp=STAMP)
    assert started.status is not None and started.status["phase"] == CONVERTING
    assert started.event is not None and started.event.reason == "ConversionStarted"
    converting = {**pending, "status": started.status}
    # A Job that already existed: the status already says Converting, nothing to write.
    assert decisions.conversion_started(converting, "j", created=False, stamp=STAMP) == Outcome()
    # ...but a model that is not Converting yet (a restarted operator) gets the status.
    again = decisions.conversion_started(pending, "j", created=False, stamp=STAMP)
    assert again.status is not None and again.event is None

    done = decisions.converted(converting, "/store/k", "sha256:1", STAMP)
    assert done.status is not None and done.status["phase"] == STANDBY
    assert done.status["artifact"] == {
        "path": "/store/k",
        "key": KEY,
        "precision": objects.precision_of(SPEC),
        "digest": "sha256:1",
    }
    failed = decisions.conversion_failed(converting, "j", "exit code 1; OOM", STAMP)
    assert failed.status is not None and failed.status["phase"] == FAILED
    assert failed.event is not None and failed.event.type == "Warning"

    refused = decisions.source_refused(pending, "outside --source-root", STAMP)
    assert refused.status is not None and refused.status["reason"] == "SourceRefused"
    once = {**pending, "status": refused.status}
    assert decisions.source_refused(once, "outside --source-root", STAMP) == Outcome()


def test_a_converted_model_whose_status_lags_goes_to_standby_once() -> None:
    for phase in (CONVERTING, FAILED):
        out = decisions.artifact_ready(model(phase=phase))
        assert out.status is not None and out.status["phase"] == STANDBY
    assert decisions.artifact_ready(model(phase=READY, observedGeneration=1)) == Outcome()
    assert decisions.artifact_ready(model(phase=READY)) == Outcome(status={"observedGeneration": 1})


def test_only_the_current_objects_latest_job_speaks() -> None:
    body = model()
    job = {
        "metadata": {
            "name": "convert-m-g1",
            "labels": {k8s.LABEL_MODEL: "m", objects.LABEL_ARTIFACT_KEY: KEY},
            "ownerReferences": [{"uid": "uid-m"}],
        },
        "status": {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimit"}]},
    }
    assert conversion.job_result(job)[:3] == ("m", False, True)
    assert conversion.job_is_current(job, body, failed=True)
    newer = {**body, "metadata": {**body["metadata"], "generation": 2}}
    assert not conversion.job_is_current(job, newer, failed=True)  # a newer Job runs
    assert conversion.job_is_current(job, newer, failed=False)  # its artifact is still good
    other = {**body, "metadata": {**body["metadata"], "uid": "uid-new"}}
    assert not conversion.job_is_current(job, other, failed=False)  # a deleted object's Job


# -- the controller applies outcomes; a failed scale is repaired by the next pass -----------


@dataclass
class FakeApi:
    """What the API server was asked, and a Deployment write that fails `fail_scales` times."""

    calls: list[tuple[str, str, Any]] = field(default_factory=list)
    fail_scales: int = 1


@pytest.fixture
async def api_server() -> AsyncIterator[tuple[str, FakeApi]]:
    fake = FakeApi()

    async def model_status(request: web.Request) -> web.Response:
        patch = await request.json()
        fake.calls.append(("status", request.match_info["name"], patch["status"]))
        body = {"apiVersion": k8s.API_VERSION, "kind": k8s.KIND, "status": patch["status"]}
        return web.json_response(body)

    async def deployment(request: web.Request) -> web.Response:
        patch = await request.json()
        fake.calls.append(("deployment", request.match_info["name"], patch))
        if fake.fail_scales > 0:
            fake.fail_scales -= 1
            status = {"kind": "Status", "apiVersion": "v1", "code": 500, "reason": "x"}
            return web.json_response(status, status=500)
        return web.json_response({"apiVersion": "apps/v1", "kind": "Deployment"})

    async def nodes(request: web.Request) -> web.Response:
        return web.json_response({"apiVersion": "v1", "kind": "NodeList", "items": []})

    async def events(request: web.Request) -> web.Response:
        event = await request.json()
        fake.calls.append(("event", event["involvedObject"]["name"], event))
        return web.json_response(event, status=201)

    app = web.Application()
    prefix = f"/apis/{k8s.GROUP}/{k8s.VERSION}/namespaces/ns/{k8s.PLURAL}"
    app.router.add_patch(prefix + "/{name}/status", model_status)
    app.router.add_patch("/apis/apps/v1/namespaces/ns/deployments/{name}", deployment)
    app.router.add_get("/api/v1/nodes", nodes)
    app.router.add_post("/api/v1/namespaces/ns/events", events)
    async with served(app) as url:
        yield url, fake


def deployment(name: str, replicas: int) -> dict[str, Any]:
    return {
        "metadata": {
            "name": objects.deployment_name(name),
            "labels": objects.model_labels(name),
            "annotations": {objects.TEMPLATE_HASH: "h"},
        },
        "spec": {"replicas": replicas},
    }


def watched(op: Operator, models: list[dict[str, Any]], deployments: list[Any]) -> None:
    """Fill the operator's cache as its watches would (and silence its change hook)."""
    op.cache = ClusterCache()
    op.cache.models.replace(models)
    op.cache.pods.replace([])
    op.cache.deployments.replace(deployments)


async def test_activation_whose_scale_failed_is_scaled_by_the_next_pass(
    api_server: tuple[str, FakeApi],
) -> None:
    url, fake = api_server
    conf = client.Configuration(host=url)
    async with client.ApiClient(conf) as api:
        op = Operator(OperatorConfig(namespace="ns", tick=3600), identity="op-1")
        op.connect(api)
        watched(op, [model(requestedAt=k8s.to_rfc3339(NOW))], [deployment("m", 0)])
        poster = asyncio.create_task(op.post_events_forever())

        def writes() -> list[tuple[str, str, Any]]:
            return [c for c in fake.calls if c[0] != "event"]

        try:
            await op.reconcile()
            # Status first (the slot is taken), then the scale, which failed.
            assert [(kind, name) for kind, name, _ in writes()] == [
                ("status", "m"),
                ("deployment", objects.deployment_name("m")),
            ]
            assert writes()[0][2]["phase"] == ACTIVATING
            # The next pass sees Activating (the overlay) at 0 replicas and repairs it.
            await op.reconcile()
            assert writes()[2] == (
                "deployment",
                objects.deployment_name("m"),
                {"spec": {"replicas": 1}},
            )
            # The Activate decision's Event, posted off the decision by the poster.
            await asyncio.wait_for(op.events.join(), 5)
            events = [c[2] for c in fake.calls if c[0] == "event"]
            assert [(e["reason"], e["involvedObject"]["uid"]) for e in events] == [
                ("Activated", "uid-m")
            ]
            assert events[0]["reportingInstance"] == "op-1" and events[0]["type"] == "Normal"
            assert fake.fail_scales == 0 and len(fake.calls) == 4  # no second activation
        finally:
            poster.cancel()
            op.stop()


async def test_changes_during_a_decision_coalesce_into_one_more() -> None:
    op = Operator(OperatorConfig(namespace="ns", tick=3600))
    watched(op, [model()], [deployment("m", 0)])
    seen: list[int] = []
    first_running = asyncio.Event()
    release = asyncio.Event()

    async def decide() -> None:
        seen.append(len(op.cache.models))
        first_running.set()
        await release.wait()

    op._decide_and_apply = decide  # type: ignore[method-assign]
    op.poke()
    await first_running.wait()
    for i in range(10):  # the watches show ten changes while the decision runs
        op.cache.models.upsert(model(f"n{i}"))
        op.poke()
    release.set()
    assert op._drainer is not None
    await asyncio.wait_for(op._drainer, 5)
    assert seen == [1, 11]  # one more decision, and it saw every change
    op.stop()


async def test_decisions_wait_for_every_kind_to_be_listed() -> None:
    op = Operator(OperatorConfig(namespace="ns", tick=3600))
    op.cache = ClusterCache()
    ran: list[int] = []

    async def decide() -> None:
        ran.append(len(op.cache.pods))

    op._decide_and_apply = decide  # type: ignore[method-assign]
    pending = asyncio.create_task(op.reconcile())
    op.cache.models.replace([model()])
    op.cache.deployments.replace([deployment("m", 1)])
    await asyncio.sleep(0.05)
    assert ran == [] and not pending.done()  # the pods are not listed yet
    op.cache.pods.replace([])
    await asyncio.wait_for(pending, 5)
    assert ran == [0]


def test_outcomes_are_json_serialisable() -> None:
    out = decisions.outcome(Activate("m", "go"), model(), NOW)
    json.dumps(out.status)
