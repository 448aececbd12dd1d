"""The writer: every API call is bounded in time, failures come back typed.

Against real sockets: a TCP server that accepts and never answers (a half-open API
server), and a small HTTP server answering 404/409 as the API server does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from kubernetes_asyncio import client

from akidb_embed.operator.writer import (
    ApiError,
    ApiTimeout,
    Conflict,
    NotFound,
    NotLeader,
    Timeouts,
    Writer,
)
from tests.fixtures.http import served


def _api(url: str) -> client.ApiClient:
    conf = client.Configuration(host=url)
    conf.verify_ssl = False
    return client.ApiClient(conf)


@pytest.fixture
async def silent_server() -> AsyncIterator[str]:
    """Accepts connections, reads, never answers."""
    held: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await reader.read(65536)
        await asyncio.sleep(3600)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    for w in held:
        w.close()
    server.close()


@pytest.fixture
async def status_server() -> AsyncIterator[str]:
    async def pods(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        code = {"missing": 404, "taken": 409}.get(name, 500)
        body = {"kind": "Status", "apiVersion": "v1", "code": code, "reason": "x"}
        return web.json_response(body, status=code)

    app = web.Application()
    app.router.add_route("*", "/api/v1/namespaces/ns/pods/{name}", pods)
    async with served(app) as url:
        yield url


async def test_a_hung_api_server_costs_one_timeout_not_forever(silent_server: str) -> None:
    api = _api(silent_server)
    writer = Writer(api, Timeouts(connect=0.5, read=0.5))
    started = time.monotonic()
    with pytest.raises(ApiTimeout):
        await writer.list_pods("ns", "a=b")
    assert time.monotonic() - started < 3.0
    await api.close()


async def test_errors_are_typed(status_server: str) -> None:
    api = _api(status_server)
    writer = Writer(api, Timeouts(connect=1, read=2))
    with pytest.raises(NotFound):
        await writer.delete_pod("ns", "missing")
    with pytest.raises(Conflict):
        await writer.delete_pod("ns", "taken", uid="u-1")
    with pytest.raises(ApiError) as caught:
        await writer.delete_pod("ns", "broken")
    assert caught.value.status == 500
    await api.close()


async def test_no_write_without_the_lease(status_server: str) -> None:
    api = _api(status_server)
    writer = Writer(api, Timeouts(connect=1, read=2), may_write=lambda: False)
    with pytest.raises(NotLeader):
        await writer.delete_pod("ns", "missing")  # refused before any request
    await api.close()
