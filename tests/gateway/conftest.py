"""Fixtures: fake upstreams (closed after the test) and a gateway over a fake backend."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from akidb_embed.gateway.app import GATEWAY, Gateway, create_app
from akidb_embed.gateway.config import GatewayConfig
from tests.gateway.fakes import FakeBackend, FakeUpstream

UpstreamFactory = Callable[..., Awaitable[FakeUpstream]]
GatewayFactory = Callable[..., Awaitable[TestClient]]


@pytest.fixture
async def upstream() -> AsyncIterator[UpstreamFactory]:
    started: list[FakeUpstream] = []

    async def make(**kwargs: Any) -> FakeUpstream:
        up = await FakeUpstream(**kwargs).start()
        started.append(up)
        return up

    yield make
    for up in started:
        await up.close()


@pytest.fixture
async def gateway(aiohttp_client: Any) -> GatewayFactory:
    """gateway(backend, **config overrides) -> a client of a running gateway (real TCP)."""

    async def make(backend: FakeBackend, **overrides: Any) -> TestClient:
        config = dataclasses.replace(
            GatewayConfig(default_model="minilm", cold_start_timeout=5.0), **overrides
        )
        client: TestClient = await aiohttp_client(create_app(config, backend))
        await backend.started.wait()
        return client

    return make


def state(client: TestClient) -> Gateway:
    return client.app[GATEWAY]  # type: ignore[index]
