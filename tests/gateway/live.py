"""A real gateway on a real port, in a background thread, in front of real model-server
processes (discovery is the fake backend: no Kubernetes). For synchronous clients
(LangChain, LlamaIndex, huggingface_hub, cohere) and schemathesis."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aiohttp import web

from akidb_embed.gateway.app import create_app, make_runner
from akidb_embed.gateway.config import GatewayConfig
from akidb_embed.model_server.runner import ServerProcess, free_port
from tests.gateway.fakes import FakeBackend, model_obj, pod_obj


@contextmanager
def gateway_thread(backend: FakeBackend, **overrides: Any) -> Iterator[str]:
    """Serve the gateway on 127.0.0.1:<free port> until the block ends; yields its URL."""
    port = free_port()
    config = dataclasses.replace(
        GatewayConfig(host="127.0.0.1", port=port, cold_start_timeout=30.0), **overrides
    )
    loop = asyncio.new_event_loop()
    started = threading.Event()
    stop: asyncio.Event | None = None

    async def main() -> None:
        nonlocal stop
        stop = asyncio.Event()
        runner = make_runner(create_app(config, backend))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await backend.started.wait()
        started.set()
        await stop.wait()
        await runner.cleanup()

    thread = threading.Thread(target=lambda: loop.run_until_complete(main()), daemon=True)
    thread.start()
    if not started.wait(30):
        raise RuntimeError("the gateway did not start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        assert stop is not None
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        loop.close()


MINILM = "all-minilm-l6-v2"
RERANKER = "tiny-bert-reranker"


@contextmanager
def live_stack(minilm: Path, reranker: Path, **overrides: Any) -> Iterator[dict[str, Any]]:
    """MiniLM and a tiny reranker as `akidb-embed serve` processes behind a gateway."""
    args = ["--threads", "1", "--no-verify", "--no-self-benchmark"]
    with (
        ServerProcess(minilm, [*args, "--name", MINILM]) as embedder,
        ServerProcess(reranker, [*args, "--name", RERANKER]) as ranker,
    ):
        backend = FakeBackend(
            [
                model_obj(
                    MINILM,
                    dimension=384,
                    source={"repo": "sentence-transformers/all-MiniLM-L6-v2"},
                ),
                model_obj(RERANKER, dimension=32, task="rerank", maxLength=128),
            ],
            [pod_obj("minilm-0", MINILM, embedder.port), pod_obj("rr-0", RERANKER, ranker.port)],
        )
        with gateway_thread(backend, default_model=MINILM, **overrides) as url:
            yield {"url": url, "embedder": embedder, "reranker": ranker}
