"""The shared list-and-watch loop against a small HTTP server that answers as the API
server does (list, then a chunked watch stream): events reach the sink in order, an
expired watch (410 Gone) is re-listed, and a broken one reconnects."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from kubernetes_asyncio import client

from akidb_embed import watching
from tests.fixtures.http import served

Body = dict[str, Any]


def pod(name: str, rv: str) -> Body:
    return {"metadata": {"name": name, "resourceVersion": rv}}


class Recorder:
    def __init__(self) -> None:
        self.seen: list[tuple[str, Any]] = []
        self.changed = asyncio.Event()

    def replace(self, items: list[Body]) -> None:
        self.seen.append(("replace", [i["metadata"]["name"] for i in items]))
        self.changed.set()

    def upsert(self, obj: Body) -> None:
        self.seen.append(("upsert", obj["metadata"]["name"]))
        self.changed.set()

    def delete(self, obj: Body) -> None:
        self.seen.append(("delete", obj["metadata"]["name"]))
        self.changed.set()

    def alive(self) -> None:
        pass


@pytest.fixture
async def api_server() -> AsyncIterator[tuple[str, list[str]]]:
    requests: list[str] = []  # "list" / "watch@<resourceVersion>"
    lists = iter([([pod("a", "1")], "1"), ([pod("b", "5")], "5")])

    async def pods(request: web.Request) -> web.StreamResponse:
        if request.query.get("watch") not in ("true", "True", "1"):
            requests.append("list")
            items, rv = next(lists)
            return web.json_response({"items": items, "metadata": {"resourceVersion": rv}})
        rv = request.query.get("resourceVersion", "")
        requests.append(f"watch@{rv}")
        response = web.StreamResponse()
        await response.prepare(request)
        if rv == "1":
            events = [
                {"type": "ADDED", "object": pod("c", "2")},
                {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "3"}}},
                {"type": "DELETED", "object": pod("a", "4")},
                {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Gone"}},
            ]
        else:  # after the re-list: one change, then the connection drops
            events = [{"type": "MODIFIED", "object": pod("b", "6")}]
        for event in events:
            await response.write(json.dumps(event).encode() + b"\n")
        return response

    app = web.Application()
    app.router.add_get("/api/v1/namespaces/ns/pods", pods)
    async with served(app) as url:
        yield url, requests


async def test_events_in_order_and_an_expired_watch_is_listed_again(
    api_server: tuple[str, list[str]],
) -> None:
    url, requests = api_server
    sink = Recorder()
    async with client.ApiClient(client.Configuration(host=url)) as api:
        core: Any = client.CoreV1Api(api)
        task = asyncio.create_task(
            watching.sync_forever("pods", sink, core.list_namespaced_pod, "ns", watch_seconds=5)
        )
        try:
            async with asyncio.timeout(10):
                while ("upsert", "b") not in sink.seen:
                    sink.changed.clear()
                    await sink.changed.wait()
        finally:
            task.cancel()
    assert sink.seen[:5] == [
        ("replace", ["a"]),
        ("upsert", "c"),
        ("delete", "a"),
        ("replace", ["b"]),  # 410: the whole set again, from a new list
        ("upsert", "b"),
    ]
    # Watched from the list's version; after the 410, listed again, watched from there.
    assert requests[:4] == ["list", "watch@1", "list", "watch@5"]
