"""The gateway against the real local Kubernetes control plane (`cluster` fixture).

`test_discovery_and_demand_on_a_real_api_server` needs no operator: the test plays the
operator (it starts the model pod when it sees `status.requestedAt`), so the gateway's
watches, status merge patches and cold-start hold are exercised for real: a real
gateway process (`akidb-embed gateway`), a real API server, a real model-server pod run
by the node's kubelet in the server image built from this tree.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from akidb_embed.devcluster.images import local_ref
from akidb_embed.k8s import LABEL_MODEL, LABEL_NAME, LABEL_PART_OF, MODEL_SERVER_APP, PART_OF
from tests.gateway.test_real_servers import free_port

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def em_manifest(name: str, namespace: str, artifact: Path, dimension: int) -> str:
    return json.dumps(
        {
            "apiVersion": "akidb.io/v1alpha1",
            "kind": "EmbeddingModel",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "source": {"path": str(artifact)},
                "dimension": dimension,
                "resources": {"memory": "256Mi"},
            },
        }
    )


def model_pod_manifest(name: str, namespace: str, model: str, artifact: Path, image: str) -> str:
    """A model-server pod in the server image built here; the artifact is a hostPath,
    mounted at a fixed path (the host path may lie below folders the image's user cannot
    enter, such as /root)."""
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {
                    LABEL_NAME: MODEL_SERVER_APP,
                    LABEL_PART_OF: PART_OF,
                    LABEL_MODEL: model,
                },
            },
            "spec": {
                "terminationGracePeriodSeconds": 5,
                "containers": [
                    {
                        "name": "server",
                        "image": image,
                        "imagePullPolicy": "Never",
                        "volumeMounts": [
                            {"name": "artifact", "mountPath": "/artifact", "readOnly": True}
                        ],
                        "command": [
                            "akidb-embed",
                            "serve",
                            "/artifact",
                            "--host",
                            "$(POD_IP)",
                            "--port",
                            "8080",
                            "--threads",
                            "1",
                            "--no-verify",
                        ],
                        "env": [
                            {
                                "name": "POD_IP",
                                "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}},
                            }
                        ],
                        "ports": [{"name": "http", "containerPort": 8080}],
                        "readinessProbe": {
                            "httpGet": {"path": "/readyz", "port": "http"},
                            "periodSeconds": 10,  # slow on purpose: the gateway's probe wins
                        },
                    }
                ],
                "volumes": [
                    {"name": "artifact", "hostPath": {"path": str(artifact), "type": "Directory"}}
                ],
            },
        }
    )


@pytest.fixture
def gateway_process(cluster: Any, tmp_path: Path) -> Iterator[Any]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(namespace: str, **flags: str) -> str:
        port = free_port()
        args = [
            sys.executable,
            "-m",
            "akidb_embed",
            "gateway",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--namespace",
            namespace,
        ]
        for key, value in flags.items():
            args += [f"--{key.replace('_', '-')}", value]
        env = {**cluster.env, "PYTHONPATH": str(REPO)}
        env.pop("KUBERNETES_SERVICE_HOST", None)
        log = (tmp_path / f"gateway-{port}.log").open("wb")
        procs.append(subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT))
        return f"http://127.0.0.1:{port}"

    yield start
    for proc in procs:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def _wait(fn: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await fn()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def test_discovery_and_demand_on_a_real_api_server(
    cluster: Any, gateway_process: Any, tiny_bert_artifact: Path
) -> None:
    cluster.kubectl("apply", "-f", str(REPO / "crds" / "embeddingmodel.yaml"))
    cluster.wait_for(
        lambda: cluster.kubectl("get", "embeddingmodels", "-A", check=False).returncode == 0,
        30,
        "the EmbeddingModel CRD",
    )
    ns = cluster.namespace("gw")
    cluster.apply(em_manifest("tiny-bert", ns, tiny_bert_artifact, 32))
    url = gateway_process(ns, recency_flush_interval="1s", cold_start_timeout="90s")

    def em_status() -> dict[str, Any]:
        return cluster.get_json("em", "tiny-bert", "-n", ns).get("status") or {}

    async with aiohttp.ClientSession() as http:

        async def ready() -> bool:
            try:
                async with http.get(url + "/readyz") as resp:
                    return resp.status == 200
            except aiohttp.ClientError:
                return False

        await _wait(ready, 60, "gateway /readyz")
        async with http.get(url + "/api/v1/models") as resp:
            models = (await resp.json())["models"]
        assert [m["name"] for m in models] == ["tiny-bert"]
        assert models[0]["ready_pods"] == 0

        # A new EmbeddingModel shows up through the watch, no restart needed.
        cluster.apply(em_manifest("other", ns, tiny_bert_artifact, 32))

        async def two_models() -> bool:
            async with http.get(url + "/v1/models") as resp:
                return len((await resp.json())["data"]) == 2

        await _wait(two_models, 15, "the second model in /v1/models")

        # Cold: 10 concurrent requests -> one demand patch on the status subresource.
        held = [
            asyncio.create_task(
                http.post(url + "/api/v1/embed", json={"model": "tiny-bert", "texts": [f"t{i}"]})
            )
            for i in range(10)
        ]
        status = await asyncio.to_thread(
            cluster.wait_for, lambda: em_status().get("requestedAt"), 30, "status.requestedAt"
        )
        assert set(em_status()) == {"requestedAt"}  # the gateway writes nothing else
        assert not any(t.done() for t in held)

        # Play the operator: start the model pod.
        server_image = local_ref(cluster.images.server)
        cluster.apply(
            model_pod_manifest("tiny-bert-0", ns, "tiny-bert", tiny_bert_artifact, server_image)
        )
        responses = await asyncio.wait_for(asyncio.gather(*held), 120)
        for resp in responses:
            assert resp.status == 200, await resp.text()
            assert resp.headers["X-Akidb-Pod"] == "tiny-bert-0"
            assert float(resp.headers["X-Akidb-Cold-Start"]) > 0
            body = await resp.json()
            assert body["model"] == "tiny-bert" and len(body["embeddings"][0]) == 32
        assert em_status()["requestedAt"] == status  # coalesced: marked once

        # Warm now; recency is flushed to status.lastRequestTime (throttled).
        async with http.post(
            url + "/api/v1/embed", json={"model": "tiny-bert", "texts": ["w"]}
        ) as r:
            assert r.status == 200 and "X-Akidb-Cold-Start" not in r.headers
        last = await asyncio.to_thread(
            cluster.wait_for, lambda: em_status().get("lastRequestTime"), 15, "lastRequestTime"
        )
        assert last >= status

        # The pod goes away: the gateway's view follows the watch.
        cluster.kubectl("delete", "pod", "tiny-bert-0", "-n", ns, "--wait=true", timeout=60)

        async def no_pods() -> bool:
            async with http.get(url + "/api/v1/models") as resp:
                data = await resp.json()
            return all(m["ready_pods"] == 0 for m in data["models"])

        await _wait(no_pods, 15, "ready_pods == 0 after the pod is deleted")

        # A Failed model answers 503 with the operator's message.
        cluster.kubectl(
            "patch",
            "em",
            "other",
            "-n",
            ns,
            "--subresource=status",
            "--type=merge",
            "-p",
            json.dumps(
                {
                    "status": {
                        "phase": "Failed",
                        "reason": "ConversionFailed",
                        "message": "no such checkpoint",
                    }
                }
            ),
        )

        async def failed() -> Any:
            async with http.post(
                url + "/api/v1/embed", json={"model": "other", "texts": ["x"]}
            ) as r:
                return (r.status, await r.json()) if r.status == 503 else None

        _status, body = await _wait(failed, 15, "503 for the Failed model")
        assert body["error"]["code"] == "model_failed"
        assert "ConversionFailed" in body["error"]["message"]
        assert "no such checkpoint" in body["error"]["message"]


class PausableProxy:
    """A loopback TCP proxy in front of the API server that can stop relaying bytes
    (both ways, connections left open): to the gateway, an API server that hangs."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> PausableProxy:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def pause(self) -> None:
        self.flowing.clear()

    def resume(self) -> None:
        self.flowing.set()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await self.flowing.wait()
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self.flowing.wait()
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


def _kubeconfig_via(cluster: Any, tmp_path: Path, port: int) -> Path:
    """A copy of the cluster's kubeconfig whose server is 127.0.0.1:`port` (the API
    server's certificate names 127.0.0.1 too, beside its own address)."""
    text = cluster.kubeconfig.read_text()
    server = cluster.server  # https://10.244.255.1:<port>
    assert server in text, server
    path = tmp_path / "kubeconfig-proxied"
    path.write_text(text.replace(server, f"https://127.0.0.1:{port}"))
    return path


async def test_readyz_turns_503_when_the_api_server_hangs_and_recovers(
    cluster: Any, tmp_path: Path, tiny_bert_artifact: Path
) -> None:
    cluster.kubectl("apply", "-f", str(REPO / "crds" / "embeddingmodel.yaml"))
    cluster.wait_for(
        lambda: cluster.kubectl("get", "embeddingmodels", "-A", check=False).returncode == 0,
        30,
        "the EmbeddingModel CRD",
    )
    ns = cluster.namespace("gw-stale")
    cluster.apply(em_manifest("first", ns, tiny_bert_artifact, 32))
    host, port = cluster.server.removeprefix("https://").rsplit(":", 1)
    proxy = await PausableProxy(host, int(port)).start()
    gw_port = free_port()
    env = {**cluster.env, "PYTHONPATH": str(REPO), "KUBECONFIG": str(
        _kubeconfig_via(cluster, tmp_path, proxy.port)
    )}  # fmt: skip
    env.pop("KUBERNETES_SERVICE_HOST", None)
    log = (tmp_path / "gateway.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "akidb_embed", "gateway", "--host", "127.0.0.1", "--port",
         str(gw_port), "--namespace", ns, "--watch-timeout", "3s", "--watch-stale-after", "5s"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{gw_port}"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:

            async def readyz() -> int:
                try:
                    async with http.get(url + "/readyz") as resp:
                        return resp.status
                except aiohttp.ClientError:
                    return 0

            async def ready() -> bool:
                return await readyz() == 200

            async def not_ready() -> bool:
                return await readyz() == 503

            await _wait(ready, 60, "gateway /readyz 200")
            await asyncio.sleep(6)  # past watch-stale-after: quiet watches still count alive
            assert await readyz() == 200

            proxy.pause()  # the API server stops answering; connections stay open
            paused = time.monotonic()
            await _wait(not_ready, 20, "/readyz 503 while the API server hangs")
            went_stale = time.monotonic() - paused
            async with http.get(url + "/readyz") as resp:
                body = await resp.json()
            assert resp.headers["Retry-After"] == "1"
            assert body["stale_watches"], body
            # A change made meanwhile reaches the gateway once the server answers again.
            cluster.apply(em_manifest("second", ns, tiny_bert_artifact, 32))

            proxy.resume()
            resumed = time.monotonic()
            await _wait(ready, 45, "/readyz 200 after the API server answers again")
            recovered = time.monotonic() - resumed

            async def both_models() -> bool:
                async with http.get(url + "/v1/models") as resp:
                    return {m["id"] for m in (await resp.json())["data"]} == {"first", "second"}

            await _wait(both_models, 30, "the model created during the outage")
            print(
                f"\nstale after {went_stale:.1f}s of silence; ready {recovered:.1f}s after resume"
            )
            assert went_stale < 15
    finally:
        proxy.resume()
        await proxy.close()
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


async def test_recency_only_moves_forward_on_a_real_api_server(
    cluster: Any, tiny_bert_artifact: Path
) -> None:
    from kubernetes_asyncio import config as kube_config

    from akidb_embed.gateway.kube import KubeBackend
    from akidb_embed.k8s import to_rfc3339

    cluster.kubectl("apply", "-f", str(REPO / "crds" / "embeddingmodel.yaml"))
    cluster.wait_for(
        lambda: cluster.kubectl("get", "embeddingmodels", "-A", check=False).returncode == 0,
        30,
        "the EmbeddingModel CRD",
    )
    ns = cluster.namespace("gw-recency")
    cluster.apply(em_manifest("m", ns, tiny_bert_artifact, 32))
    await kube_config.load_kube_config(config_file=str(cluster.kubeconfig))

    def last() -> str | None:
        status = cluster.get_json("em", "m", "-n", ns).get("status") or {}
        return status.get("lastRequestTime")

    base = time.time()
    times = [to_rfc3339(base + i) for i in range(6)]
    replicas = [KubeBackend(ns) for _ in range(3)]
    try:
        await replicas[0].raise_status_time("m", "lastRequestTime", times[3])
        assert last() == times[3]
        await replicas[1].raise_status_time("m", "lastRequestTime", times[1])  # older
        assert last() == times[3]
        # Three replicas at once, in any order: the latest wins (conflicts re-read).
        for _ in range(3):
            await asyncio.gather(
                replicas[0].raise_status_time("m", "lastRequestTime", times[2]),
                replicas[1].raise_status_time("m", "lastRequestTime", times[5]),
                replicas[2].raise_status_time("m", "lastRequestTime", times[4]),
            )
            assert last() == times[5]
        # Other status fields are left alone.
        await replicas[0].patch_status("m", {"requestedAt": times[0]})
        status = cluster.get_json("em", "m", "-n", ns)["status"]
        assert status == {"requestedAt": times[0], "lastRequestTime": times[5]}
    finally:
        for backend in replicas:
            await backend.close()
