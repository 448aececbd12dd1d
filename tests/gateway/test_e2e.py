"""End to end on the local cluster: everything installed from crds/ and manifests/.

Operator, 2 gateway replicas (as pods, with their own ServiceAccount: RBAC for real)
and real model-server pods. Models point at local checkpoints (`source.path`); the
operator converts them with Jobs on the node. The gateway is reached through its Service made a
NodePort by the local overlay.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import openai
import pytest

from akidb_embed import k8s
from akidb_embed.devcluster import images
from akidb_embed.k8s import LABEL_MODEL, MODEL_SERVER_SELECTOR
from tests.operator.local_stack import copy_source, render_overlay

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
NS = "akidb"
GATEWAY_SELECTOR = "app.kubernetes.io/name=akidb-gateway"


@dataclass
class Stack:
    cluster: Any
    url: str
    models: dict[str, Path]

    def pods(self, selector: str = MODEL_SERVER_SELECTOR) -> list[dict[str, Any]]:
        return self.cluster.get_json("pods", "-n", NS, "-l", selector)["items"]

    def model_pods(self, model: str) -> list[dict[str, Any]]:
        return self.pods(f"{LABEL_MODEL}={model}")

    def post_from_gateway_pod(self, url: str, body: dict[str, Any]) -> Any:
        """POST from inside a gateway pod (kubectl exec): what the gateway itself sees."""
        gateway = next(p for p in self.pods(GATEWAY_SELECTOR) if is_ready(p))
        script = (
            "import sys, urllib.request; r = urllib.request.urlopen(urllib.request.Request("
            "sys.argv[1], data=sys.stdin.buffer.read(), "
            "headers={'Content-Type': 'application/json'}), timeout=60); "
            "sys.stdout.write(r.read().decode())"
        )
        out = self.cluster.kubectl(
            "exec", "-i", "-n", NS, gateway["metadata"]["name"], "--",
            "python3", "-c", script, url, input=json.dumps(body),
        )  # fmt: skip
        return json.loads(out.stdout)

    def events(self, model: str, reason: str) -> int:
        items = self.cluster.get_json(
            "events",
            "-n",
            NS,
            "--field-selector",
            f"involvedObject.name={model},involvedObject.kind=EmbeddingModel,reason={reason}",
        )["items"]
        return sum(int(e.get("count") or 1) for e in items)


def em(name: str, artifact: Path, dimension: int, family: str) -> dict[str, Any]:
    return {
        "apiVersion": "akidb.io/v1alpha1",
        "kind": "EmbeddingModel",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "source": {"path": str(artifact)},
            "dimension": dimension,
            "family": family,
            "executionProviders": ["CPU"],
            "precision": "fp32",
            "resources": {"memory": "256Mi"},
        },
    }


@pytest.fixture(scope="module")
def stack(
    cluster: Any,
    tmp_path_factory: pytest.TempPathFactory,
    minilm_checkpoint: Path,
    tiny_bert_checkpoint: Path,
    tiny_qwen3_checkpoint: Path,
) -> Iterator[Stack]:
    cluster.kubectl("apply", "-f", str(REPO / "crds"))
    cluster.wait_for(
        lambda: cluster.kubectl("get", "em", "-A", check=False).returncode == 0, 30, "CRD"
    )
    # This session's node folders (written by UID 10001); checkpoints under the source root.
    base = tmp_path_factory.mktemp("e2e-node-folders")
    folders = {k: base / k for k in ("store", "hf", "trt", "sources")}
    images.prepare_node_folders(folders["store"], folders["hf"], folders["trt"])
    sources = {}
    for name, checkpoint in (
        ("minilm", minilm_checkpoint),
        ("tiny-bert", tiny_bert_checkpoint),
        ("tiny-qwen3", tiny_qwen3_checkpoint),
    ):
        sources[name] = folders["sources"] / name
        copy_source(checkpoint, sources[name])
    cluster.apply(render_overlay(folders, cluster.kubectl))
    svc = cluster.get_json("svc", "akidb-gateway", "-n", NS)
    assert svc["spec"].get("type") == "NodePort", "the local overlay exposes the gateway"
    node_port = svc["spec"]["ports"][0]["nodePort"]
    models = {
        "e2e-minilm": (sources["minilm"], 384, "sentence-transformers"),
        "e2e-bert-a": (sources["tiny-bert"], 32, "bge"),
        "e2e-bert-b": (sources["tiny-bert"], 32, "bge"),
        "e2e-qwen": (sources["tiny-qwen3"], 64, "qwen3-embedding"),
        "e2e-bert-c": (sources["tiny-bert"], 32, "bge"),
    }
    # start from scratch (a reused cluster may hold them from an earlier run)
    cluster.kubectl(
        "delete", "em", "-n", NS, "--ignore-not-found", "--wait=true", *models, timeout=120
    )
    for name, (source, dim, family) in models.items():
        cluster.apply(json.dumps(em(name, source, dim, family)))

    def gateways_ready() -> bool:
        pods = cluster.get_json("pods", "-n", NS, "-l", GATEWAY_SELECTOR)["items"]
        ready = [
            p
            for p in pods
            if any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in p.get("status", {}).get("conditions", [])
            )
        ]
        return len(ready) == 2

    cluster.wait_for(gateways_ready, 120, "2 ready gateway replicas")

    def standby() -> bool:
        phases = {
            n: (cluster.get_json("em", n, "-n", NS).get("status") or {}).get("phase")
            for n in models
        }
        return all(p in ("Standby", "Ready") for p in phases.values())

    cluster.wait_for(standby, 420, "models in Standby")
    yield Stack(
        cluster, f"http://{cluster.node_ip}:{node_port}", {n: m[0] for n, m in models.items()}
    )


def is_ready(pod: dict[str, Any]) -> bool:
    return not pod["metadata"].get("deletionTimestamp") and any(
        c["type"] == "Ready" and c["status"] == "True"
        for c in pod.get("status", {}).get("conditions", [])
    )


async def embed(http: aiohttp.ClientSession, url: str, model: str, text: str) -> Any:
    async with http.post(url + "/api/v1/embed", json={"model": model, "texts": [text]}) as r:
        body = await r.json()
        assert r.status == 200, body
        return body, dict(r.headers)


async def test_minilm_through_the_gateway_matches_the_model_server(stack: Stack) -> None:
    texts = ["The quick brown fox jumps over the lazy dog.", "edge embeddings"]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=180)) as http:
        async with http.post(
            stack.url + "/api/v1/embed", json={"model": "e2e-minilm", "texts": texts}
        ) as r:
            assert r.status == 200, await r.text()
            via = await r.json()
        ready = await asyncio.to_thread(
            stack.cluster.wait_for,
            lambda: [p for p in stack.model_pods("e2e-minilm") if is_ready(p)],
            60,
            "a Ready e2e-minilm pod",
        )
        pod = ready[0]
        port = next(
            port["containerPort"]
            for c in pod["spec"]["containers"]
            for port in c.get("ports", [])
            if port.get("name") == "http"
        )
        # The NetworkPolicy lets only gateway pods reach a model server: ask from one.
        direct = await asyncio.to_thread(
            stack.post_from_gateway_pod,
            f"http://{pod['status']['podIP']}:{port}/embed",
            {"texts": texts},
        )
    assert via["model"] == "e2e-minilm" and via["dimension"] == 384
    np.testing.assert_allclose(via["embeddings"], direct["embeddings"], atol=1e-5)
    oai = openai.AsyncOpenAI(base_url=stack.url + "/v1", api_key="unused", max_retries=0)
    try:
        result = await oai.embeddings.create(model="e2e-minilm", input=texts)
        np.testing.assert_allclose(
            [d.embedding for d in result.data], direct["embeddings"], atol=1e-5
        )
    finally:
        await oai.close()


async def test_twenty_concurrent_requests_cause_one_activation(stack: Stack) -> None:
    model = "e2e-bert-a"
    before = await asyncio.to_thread(stack.events, model, "Activated")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=180)) as http:
        results = await asyncio.gather(
            *(embed(http, stack.url, model, f"text {i}") for i in range(20))
        )
    assert all(len(body["embeddings"][0]) == 32 for body, _ in results)
    # the model started cold (the fixture recreates every model in Standby) ...
    assert all("X-Akidb-Cold-Start" in headers for _, headers in results)
    assert len({headers["X-Akidb-Pod"] for _, headers in results}) == 1
    # ... and the 20 requests made exactly one activation
    after = await asyncio.to_thread(
        stack.cluster.wait_for, lambda: stack.events(model, "Activated"), 30, "Activated event"
    )
    assert after - before == 1


async def test_lru_eviction_with_capacity_three(stack: Stack) -> None:
    order = ["e2e-bert-a", "e2e-bert-b", "e2e-qwen", "e2e-bert-c", "e2e-minilm"]
    max_pods = 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=240)) as http:
        for model in order:
            await embed(http, stack.url, model, "hello")
            pods = await asyncio.to_thread(stack.pods)
            max_pods = max(max_pods, len(pods))
            await asyncio.sleep(1.0)
    assert max_pods <= 3

    # the two least recently used of the five are the ones gone
    def running() -> set[str]:
        return {
            p["metadata"]["labels"][LABEL_MODEL]
            for p in stack.pods()
            if not p["metadata"].get("deletionTimestamp")
        }

    live = await asyncio.to_thread(
        stack.cluster.wait_for, lambda: running() if len(running()) <= 3 else None, 60, "<= 3"
    )
    assert "e2e-bert-a" not in live and "e2e-bert-b" not in live
    assert {"e2e-bert-c", "e2e-minilm"} <= live


async def test_restarting_a_gateway_replica_loses_no_request(stack: Stack) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
        await embed(http, stack.url, "e2e-minilm", "warm up")
        statuses: list[int] = []
        stop = time.monotonic() + 15

        async def client() -> None:
            while time.monotonic() < stop:
                async with http.post(
                    stack.url + "/api/v1/embed", json={"model": "e2e-minilm", "texts": ["x"]}
                ) as r:
                    await r.read()
                    statuses.append(r.status)

        load = [asyncio.create_task(client()) for _ in range(4)]
        await asyncio.sleep(2)
        victim = stack.cluster.get_json("pods", "-n", NS, "-l", GATEWAY_SELECTOR)["items"][0]
        await asyncio.to_thread(
            stack.cluster.kubectl,
            "delete",
            "pod",
            victim["metadata"]["name"],
            "-n",
            NS,
            "--wait=false",
        )
        await asyncio.gather(*load)
    assert statuses and set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}


async def test_killing_a_model_pod_mid_load_loses_no_request(stack: Stack) -> None:
    model = "e2e-bert-c"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=180)) as http:
        await embed(http, stack.url, model, "warm up")
        statuses: list[int] = []
        killed = False

        async def client(i: int) -> None:
            n = 0
            while not killed or n < 40:
                n += 1
                async with http.post(
                    stack.url + "/api/v1/embed", json={"model": model, "texts": [f"{i}-{n}"]}
                ) as r:
                    await r.read()
                    statuses.append(r.status)

        load = [asyncio.create_task(client(i)) for i in range(4)]
        await asyncio.sleep(2)
        pod = next(p for p in stack.model_pods(model) if is_ready(p))
        await asyncio.to_thread(
            stack.cluster.kubectl,
            "delete",
            "pod",
            pod["metadata"]["name"],
            "-n",
            NS,
            "--grace-period=0",
            "--force",
            "--wait=false",
        )
        killed = True
        await asyncio.gather(*load)
    assert len(statuses) > 160
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}


async def test_a_cold_start_does_not_slow_a_warm_model(stack: Stack) -> None:
    """Warm traffic keeps flowing while another model cold-starts (no global hold)."""
    warm = "e2e-bert-c"
    n = 20
    cluster = stack.cluster
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=240)) as http:
        t_first = time.time()
        await embed(http, stack.url, warm, "warm up")

        # The operator evicts by recorded recency: wait until the warm model's last
        # request is in its status, so the cold start below cannot evict it.
        def recency_flushed() -> bool:
            status = cluster.get_json("em", warm, "-n", NS).get("status") or {}
            stamp = k8s.parse_time(status.get("lastRequestTime"))
            return stamp is not None and stamp >= t_first - 1

        while not await asyncio.to_thread(recency_flushed):
            await embed(http, stack.url, warm, "keep warm")
            await asyncio.sleep(0.5)

        def a_cold_model() -> str | None:
            live = {p["metadata"]["labels"][LABEL_MODEL] for p in stack.pods()}
            for name in ("e2e-bert-a", "e2e-bert-b", "e2e-qwen", "e2e-minilm"):
                phase = (cluster.get_json("em", name, "-n", NS).get("status") or {}).get("phase")
                if name not in live and phase == "Standby":
                    return name
            return None

        cold = await asyncio.to_thread(cluster.wait_for, a_cold_model, 90, "a Standby model")

        async def timed(model: str, text: str) -> tuple[float, float, dict[str, str]]:
            t0 = time.monotonic()
            _, headers = await embed(http, stack.url, model, text)
            return t0, time.monotonic(), headers

        baseline = [await timed(warm, f"base {i}") for i in range(n)]
        cold_task = asyncio.create_task(timed(cold, "cold"))
        during: list[tuple[float, float, dict[str, str]]] = []
        while not cold_task.done() or len(during) < n:
            during.append(await timed(warm, f"during {len(during)}"))
        cold_start, cold_end, cold_headers = await cold_task

    cold_s = cold_end - cold_start
    # The other model really started cold ...
    assert "X-Akidb-Cold-Start" in cold_headers, cold_headers
    # ... no warm request was held (all served by the one warm pod) ...
    assert not [h for _, _, h in baseline + during if "X-Akidb-Cold-Start" in h]
    assert len({h["X-Akidb-Pod"] for _, _, h in baseline + during}) == 1
    # ... and warm requests kept completing while the cold start was in progress: a
    # request path that waited for the cold model would have let none through, and
    # the first warm request would have taken about as long as the cold start.
    while_cold = [(t0, t1) for t0, t1, _ in during if t1 < cold_end]
    assert len(while_cold) >= 5, (len(while_cold), cold_s)
    worst = max(t1 - t0 for t0, t1 in while_cold)
    assert worst < cold_s / 2, (worst, cold_s)
    p50_alone = float(np.median([t1 - t0 for t0, t1, _ in baseline]))
    p50_during = float(np.median([t1 - t0 for t0, t1 in while_cold]))
    print(
        f"\nwarm {warm}: p50 {p50_alone * 1000:.1f} ms alone, {p50_during * 1000:.1f} ms "
        f"over {len(while_cold)} requests while {cold} cold-started ({cold_s:.2f}s), "
        f"worst {worst * 1000:.1f} ms"
    )
