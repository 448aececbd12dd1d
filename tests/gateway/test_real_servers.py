"""The gateway in front of REAL model-server processes (`akidb-embed serve`).

Discovery is still a fake source (no Kubernetes here); the upstreams are the real
model server with real converted artifacts.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import openai
import pytest

from akidb_embed.model_server.runner import free_port
from tests.gateway.conftest import GatewayFactory, state
from tests.gateway.fakes import FakeBackend, model_obj, pod_obj

pytestmark = pytest.mark.slow


class ServerProcess:
    def __init__(self, artifact: Path, log_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log_dir / f"server-{self.port}.log"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "akidb_embed",
                "serve",
                str(artifact),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--threads",
                "1",
                "--no-verify",
            ],
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
        )

    async def wait_ready(self, timeout: float = 90.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with aiohttp.ClientSession() as session:
            while loop.time() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"model server exited: {self.log.read_text()[-2000:]}")
                try:
                    async with session.get(self.url + "/readyz") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise TimeoutError(f"model server not ready: {self.log.read_text()[-2000:]}")

    def stop(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Callable[[Path], ServerProcess]]:
    started: list[ServerProcess] = []

    def start(artifact: Path) -> ServerProcess:
        server = ServerProcess(artifact, tmp_path)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


TEXTS = ["The quick brown fox jumps over the lazy dog.", "Embeddings for search", "hello"]


async def test_minilm_through_gateway_matches_the_model_server(
    gateway: GatewayFactory,
    servers: Callable[[Path], ServerProcess],
    minilm_artifact: Path,
    http: aiohttp.ClientSession,
) -> None:
    server = servers(minilm_artifact)
    await server.wait_ready()
    backend = FakeBackend(
        [model_obj("all-minilm-l6-v2", dimension=384)],
        [pod_obj("minilm-0", "all-minilm-l6-v2", server.port)],
    )
    client = await gateway(backend, default_model="all-minilm-l6-v2")

    async with http.post(server.url + "/embed", json={"texts": TEXTS}) as resp:
        direct = await resp.json()
    resp = await client.post(
        "/api/v1/embed", json={"model": "sentence-transformers/all-MiniLM-L6-v2", "texts": TEXTS}
    )
    assert resp.status == 200, await resp.text()
    via = await resp.json()
    assert via["model"] == "all-minilm-l6-v2" and via["dimension"] == 384
    np.testing.assert_allclose(via["embeddings"], direct["embeddings"], atol=1e-5)
    assert via["usage"] == direct["usage"]

    # the official openai client (base64 by default, decoded by the client)
    oai = openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="x", max_retries=0)
    try:
        result = await oai.embeddings.create(model="all-minilm-l6-v2", input=TEXTS)
        got = np.array([d.embedding for d in result.data])
        np.testing.assert_allclose(got, direct["embeddings"], atol=1e-5)
        result = await oai.embeddings.create(
            input="hello", model="all-minilm-l6-v2", encoding_format="float"
        )
        np.testing.assert_allclose(result.data[0].embedding, direct["embeddings"][2], atol=1e-5)
    finally:
        await oai.close()

    # the model server's own 4xx passes through unchanged
    resp = await client.post("/api/v1/embed", json={"texts": ["a"], "dimensions": 7})
    assert resp.status == 400
    err = (await resp.json())["error"]
    assert "dimensions" in err["message"]
    resp = await client.post("/api/v1/embed", json={"texts": [""]})
    assert resp.status == 400


async def test_cold_start_of_a_real_server_coalesces_and_uses_the_readyz_probe(
    gateway: GatewayFactory,
    servers: Callable[[Path], ServerProcess],
    tiny_bert_artifact: Path,
) -> None:
    backend = FakeBackend([model_obj("tiny-bert", phase="Standby", dimension=32)])
    spawned: list[ServerProcess] = []

    async def on_patch(model: str, fields: dict[str, Any]) -> None:
        # The "operator": start the pod; the "kubelet" reports it Running, never Ready,
        # so only the gateway's own /readyz probe can find it ready.
        if "requestedAt" in fields and not spawned:
            server = servers(tiny_bert_artifact)
            spawned.append(server)
            assert backend.registry is not None
            backend.registry.upsert_pod(pod_obj("tiny-0", model, server.port, ready=False))

    backend.on_patch = on_patch
    client = await gateway(backend, cold_start_timeout=90.0)
    responses = await asyncio.gather(
        *(
            client.post("/api/v1/embed", json={"model": "tiny-bert", "texts": [f"text {i}"]})
            for i in range(20)
        )
    )
    statuses = [r.status for r in responses]
    assert statuses == [200] * 20, [await r.text() for r in responses if r.status != 200]
    assert len(backend.demand_patches("tiny-bert")) == 1
    assert len(spawned) == 1
    waits = [float(r.headers["X-Akidb-Cold-Start"]) for r in responses]
    assert min(waits) > 0
    for r in responses:
        body = await r.json()
        assert body["model"] == "tiny-bert" and len(body["embeddings"][0]) == 32


async def _load(
    client: Any, n: int, concurrency: int, on_progress: Callable[[int], None]
) -> list[int]:
    sem = asyncio.Semaphore(concurrency)
    statuses: list[int] = []

    async def one(i: int) -> None:
        async with sem:
            resp = await client.post(
                "/api/v1/embed", json={"model": "tiny-bert", "texts": [f"request {i}"]}
            )
            await resp.read()
            statuses.append(resp.status)
            on_progress(len(statuses))

    await asyncio.gather(*(one(i) for i in range(n)))
    return statuses


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["killed", "drained"])
async def test_pod_dying_under_load_loses_no_request(
    gateway: GatewayFactory,
    servers: Callable[[Path], ServerProcess],
    tiny_bert_artifact: Path,
    sig: int,
) -> None:
    a, b = servers(tiny_bert_artifact), servers(tiny_bert_artifact)
    await asyncio.gather(a.wait_ready(), b.wait_ready())
    backend = FakeBackend(
        [model_obj("tiny-bert", dimension=32)],
        [pod_obj("a", "tiny-bert", a.port), pod_obj("b", "tiny-bert", b.port)],
    )
    client = await gateway(backend)
    loop = asyncio.get_running_loop()
    killed = asyncio.Event()
    stopping: list[asyncio.Future[None]] = []

    def progress(done: int) -> None:
        if done == 40 and not killed.is_set():
            killed.set()
            # the pod dies; the watch notices only a little later
            stopping.append(loop.run_in_executor(None, a.stop, sig))
            assert backend.registry is not None
            loop.call_later(0.5, backend.registry.delete_pod, "a")

    statuses = await _load(client, 300, 8, progress)
    assert killed.is_set()
    assert statuses == [200] * 300
    await asyncio.gather(*stopping)
    assert a.proc.poll() is not None
    gw = state(client)
    assert [p.name for p in gw.registry.ready_pods("tiny-bert")] == ["b"]
    # the death was seen (and retried), not dodged by luck
    errors = gw.metrics.upstream_errors
    seen = sum(errors.labels("tiny-bert", kind)._value.get() for kind in ("connect", "unavailable"))
    assert seen >= 1
    print(f"upstream errors seen and retried: {seen:.0f}")
