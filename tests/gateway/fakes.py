"""Test edges for the gateway: a fake discovery source and a tiny model-server upstream.

The fake upstream speaks the model-server HTTP contract (docs/ARCHITECTURE.md): POST
/embed, POST /v1/embeddings (float and base64), /readyz, /healthz. Its behaviour can be
switched per test: not ready, slow, resetting connections, answering 503 (draining, or
overloaded: its queue full). It serves with handler cancellation, as the model server
does, and counts calls a client abandoned (`cancelled`).
"""

from __future__ import annotations

import asyncio
import base64
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from akidb_embed.gateway.registry import Registry
from akidb_embed.k8s import LABEL_MODEL, LABEL_NAME, MODEL_SERVER_APP, parse_time

DIM = 4


def vector(text: str, tag: float) -> list[float]:
    return [float(len(text)), 1.0, 0.5, tag]


@dataclass
class FakeUpstream:
    tag: float = 0.0
    ready: bool = True
    delay: float = 0.0
    mode: str = "ok"  # ok | reset | 503 | overloaded | 500
    host: str = "127.0.0.1"
    calls: list[dict[str, Any]] = field(default_factory=list)
    cancelled: int = 0
    peers: set[Any] = field(default_factory=set)  # client (host, port)s seen on /embed
    raw: list[bytes] = field(default_factory=list)  # request bodies of /embed, as sent
    probes: int = 0
    runner: web.AppRunner | None = None
    port: int = 0

    async def start(self) -> FakeUpstream:
        app = web.Application()
        app.router.add_post("/embed", self._embed)
        app.router.add_post("/v1/embeddings", self._openai)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/healthz", self._readyz)
        self.runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined,union-attr]
        return self

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def _readyz(self, request: web.Request) -> web.Response:
        self.probes += 1
        if self.ready:
            return web.json_response({"status": "ready"})
        return web.json_response({"error": {"type": "not_ready", "message": "warming"}}, status=503)

    async def _misbehave(self, request: web.Request) -> web.Response | None:
        if self.delay:
            try:
                await asyncio.sleep(self.delay)
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        if self.mode == "reset":
            assert request.transport is not None
            request.transport.abort()
            raise ConnectionResetError("reset by test")
        if self.mode == "503":
            return web.json_response(
                {"error": {"type": "draining", "message": "shutting down"}},
                status=503,
                headers={"Retry-After": "2"},
            )
        if self.mode == "overloaded":  # the model server's answer when its queue is full
            return web.json_response(
                {"error": {"type": "unavailable", "code": "overloaded", "message": "queue full"}},
                status=503,
                headers={"Retry-After": "1"},
            )
        if self.mode == "500":
            return web.json_response({"error": {"type": "internal", "message": "boom"}}, status=500)
        return None

    async def _embed(self, request: web.Request) -> web.Response:
        self.raw.append(await request.read())
        body = await request.json()
        self.calls.append(body)
        if request.transport is not None:
            self.peers.add(request.transport.get_extra_info("peername"))
        bad = await self._misbehave(request)
        if bad is not None:
            return bad
        texts = body["texts"]
        if "bad" in texts:
            return web.json_response(
                {"error": {"type": "invalid_request_error", "message": "text 'bad' refused"}},
                status=400,
            )
        dim = body.get("dimensions") or DIM
        if dim > DIM:
            return web.json_response(
                {"error": {"type": "invalid_request_error", "message": f"dimensions > {DIM}"}},
                status=400,
            )
        return web.json_response(
            {
                "model": "upstream-name",
                "dimension": dim,
                "embeddings": [vector(t, self.tag)[:dim] for t in texts],
                "usage": {"prompt_tokens": len(texts), "total_tokens": len(texts)},
            }
        )

    async def _openai(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.calls.append(body)
        bad = await self._misbehave(request)
        if bad is not None:
            return bad
        inputs = body["input"]
        if isinstance(inputs, str):
            inputs = [inputs]
        data = []
        for i, text in enumerate(inputs):
            vec = vector(text, self.tag)[: body.get("dimensions") or DIM]
            emb: Any = vec
            if body.get("encoding_format") == "base64":
                emb = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()
            data.append({"object": "embedding", "index": i, "embedding": emb})
        return web.json_response(
            {
                "object": "list",
                "model": "upstream-name",
                "data": data,
                "usage": {"prompt_tokens": len(inputs), "total_tokens": len(inputs)},
            }
        )


def model_obj(name: str, phase: str = "Ready", message: str = "", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "akidb.io/v1alpha1",
        "kind": "EmbeddingModel",
        "metadata": {"name": name, "creationTimestamp": "2025-01-01T00:00:00Z"},
        "spec": {"dimension": DIM, **spec},
        "status": {"phase": phase, "message": message},
    }


def pod_obj(
    name: str,
    model: str,
    port: int | None,
    *,
    ready: bool = True,
    phase: str = "Running",
    ip: str | None = "127.0.0.1",
    terminating: bool = False,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "labels": {LABEL_NAME: MODEL_SERVER_APP, LABEL_MODEL: model},
    }
    if terminating:
        meta["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    return {
        "metadata": meta,
        "spec": {
            "containers": [
                {"name": "server", "ports": [{"name": "http", "containerPort": port or 8080}]}
            ]
        },
        "status": {
            "phase": phase,
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


PatchHook = Callable[[str, dict[str, Any]], Awaitable[None]]


class FakeBackend:
    """A discovery source the test drives; records every status patch."""

    def __init__(
        self,
        models: list[dict[str, Any]] | None = None,
        pods: list[dict[str, Any]] | None = None,
        *,
        sync: bool = True,
    ) -> None:
        self.initial_models = models or []
        self.initial_pods = pods or []
        self.sync = sync
        self.registry: Registry | None = None
        self.patches: list[tuple[str, dict[str, Any]]] = []
        # The status each model would have on the API server (the gateway's fields).
        self.status: dict[str, dict[str, Any]] = {}
        self.on_patch: PatchHook | None = None
        self.started = asyncio.Event()

    async def run(self, registry: Registry) -> None:
        self.registry = registry
        if self.sync:
            registry.replace_models(self.initial_models)
            registry.replace_pods(self.initial_pods)
            registry.mark_synced("models")
            registry.mark_synced("pods")
        self.started.set()
        await asyncio.Event().wait()

    async def patch_status(self, model: str, fields: dict[str, Any]) -> None:
        self.patches.append((model, dict(fields)))
        if self.on_patch is not None:
            try:
                await self.on_patch(model, fields)
            except Exception:  # the hook made this write fail: it did not happen
                self.patches.pop()
                raise
        self.status.setdefault(model, {}).update(fields)

    async def raise_status_time(self, model: str, field: str, when: str) -> None:
        current = self.status.get(model, {}).get(field)
        if current is not None and parse_time(current) >= parse_time(when):  # type: ignore[operator]
            return
        await self.patch_status(model, {field: when})

    def demand_patches(self, model: str | None = None) -> list[dict[str, Any]]:
        return [f for m, f in self.patches if "requestedAt" in f and (model is None or m == model)]

    def recency_patches(self, model: str | None = None) -> list[dict[str, Any]]:
        return [
            f for m, f in self.patches if "lastRequestTime" in f and (model is None or m == model)
        ]
