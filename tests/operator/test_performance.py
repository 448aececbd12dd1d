"""status.performance: /info -> status (pure), the pod endpoint, and the fetch against a
real model server."""

from __future__ import annotations

import time
from pathlib import Path

from kubernetes_asyncio.client import (
    V1Container,
    V1ContainerPort,
    V1ObjectMeta,
    V1Pod,
    V1PodCondition,
    V1PodSpec,
    V1PodStatus,
)

from akidb_embed import k8s
from akidb_embed.operator.performance import fetch_performance, pod_endpoint, status_performance


def test_status_performance_maps_info_to_the_crd_fields() -> None:
    info = {
        "self_benchmark": "done",
        "performance": {
            "p50_ms": 3.4567,
            "p95_ms": 4.1,
            "texts_per_second": 150.04,
            "device": "CUDAExecutionProvider",
            "batch_size": 32,
            "measured_at": "2026-01-02T03:04:05.000001Z",
        },
    }
    assert status_performance(info, 0.0) == {
        "p50Ms": 3.457,
        "p95Ms": 4.1,
        "textsPerSecond": 150.0,
        "device": "CUDAExecutionProvider",
        "measuredAt": "2026-01-02T03:04:05.000001Z",
    }
    # No or unusable measurement: nothing to write (measuredAt falls back to now).
    assert status_performance({"performance": None}, 0.0) is None
    bad = {"performance": {**info["performance"], "p50_ms": "fast"}}  # type: ignore[dict-item]
    assert status_performance(bad, 0.0) is None
    undated = {"performance": {**info["performance"], "measured_at": None}}  # type: ignore[dict-item]
    perf = status_performance(undated, 1_700_000_000.0)
    assert perf is not None and perf["measuredAt"] == k8s.to_rfc3339(1_700_000_000.0)


def _pod(ip: str | None, ready: bool, deleting: bool = False) -> V1Pod:
    return V1Pod(
        metadata=V1ObjectMeta(
            name="p", deletion_timestamp="2026-01-01T00:00:00Z" if deleting else None
        ),
        spec=V1PodSpec(
            containers=[
                V1Container(
                    name="server", ports=[V1ContainerPort(name="http", container_port=8080)]
                )
            ]
        ),
        status=V1PodStatus(
            pod_ip=ip,
            conditions=[V1PodCondition(type="Ready", status="True" if ready else "False")],
        ),
    )


def test_pod_endpoint_only_for_a_ready_live_pod_with_an_ip() -> None:
    assert pod_endpoint(_pod("127.77.0.5", True)) == "http://127.77.0.5:8080"
    assert pod_endpoint(_pod("fd00::5", True)) == "http://[fd00::5]:8080"
    assert pod_endpoint(_pod("127.77.0.5", False)) is None
    assert pod_endpoint(_pod(None, True)) is None
    assert pod_endpoint(_pod("127.77.0.5", True, deleting=True)) is None


async def test_fetch_waits_for_a_real_servers_measurement(tiny_bert_artifact: Path) -> None:
    from akidb_embed.model_server.engine import Engine
    from akidb_embed.model_server.runner import ServerThread

    with ServerThread(Engine(tiny_bert_artifact, threads=1)) as server:
        perf = await fetch_performance(server.url, attempts=20, delay=0.1)
    assert perf is not None
    assert perf["p50Ms"] > 0 and perf["p95Ms"] >= perf["p50Ms"] and perf["textsPerSecond"] > 0
    assert perf["device"] == "CPUExecutionProvider"
    assert abs((k8s.parse_time(perf["measuredAt"]) or 0) - time.time()) < 60


async def test_fetch_gives_up_quietly_on_an_unreachable_pod() -> None:
    t0 = time.monotonic()
    assert await fetch_performance("http://127.0.0.1:9", attempts=3, delay=0.05) is None
    assert time.monotonic() - t0 < 5
