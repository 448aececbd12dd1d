"""A small asyncio client of the Kubernetes REST API (aiohttp, dicts in and out).

The gateway benchmark (bench/gateway.py) needs a handful of calls plus list+watch on
plain JSON objects; raw REST keeps it small.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

log = logging.getLogger(__name__)

Obj = dict[str, Any]


class ApiError(Exception):
    def __init__(self, status: int, body: Any, what: str) -> None:
        self.status = status
        self.body = body
        message = body.get("message") if isinstance(body, dict) else str(body)[:300]
        super().__init__(f"{what}: HTTP {status}: {message}")


class KubeApi:
    def __init__(self, server: str, ca: Path, cert: Path, key: Path) -> None:
        self.server = server.rstrip("/")
        self._ssl = ssl.create_default_context(cafile=str(ca))
        self._ssl.load_cert_chain(cert, key)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> KubeApi:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self._ssl, limit=20),
            timeout=aiohttp.ClientTimeout(total=None, connect=10, sock_read=None),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "use `async with KubeApi(...)`"
        return self._session

    async def request(
        self,
        method: str,
        path: str,
        body: Obj | None = None,
        params: dict[str, str] | None = None,
        content_type: str = "application/json",
        timeout_s: float = 30,
    ) -> Obj:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": content_type, "Accept": "application/json"}
        async with self.session.request(
            method,
            self.server + path,
            data=data,
            params=params,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as resp:
            raw = await resp.read()
            try:
                parsed = json.loads(raw) if raw else {}
            except ValueError:
                parsed = {"message": raw.decode(errors="replace")}
            if resp.status >= 400:
                raise ApiError(resp.status, parsed, f"{method} {path}")
            return parsed  # type: ignore[no-any-return]

    async def get(self, path: str, params: dict[str, str] | None = None) -> Obj:
        return await self.request("GET", path, params=params)

    async def post(self, path: str, body: Obj) -> Obj:
        return await self.request("POST", path, body)

    async def merge_patch(self, path: str, body: Obj) -> Obj:
        return await self.request("PATCH", path, body, content_type="application/merge-patch+json")

    async def delete(self, path: str, body: Obj | None = None) -> Obj:
        return await self.request("DELETE", path, body)

    async def _watch_stream(self, path: str, params: dict[str, str]) -> AsyncIterator[Obj]:
        async with self.session.get(
            self.server + path,
            params={**params, "watch": "1", "allowWatchBookmarks": "true", "timeoutSeconds": "300"},
            timeout=aiohttp.ClientTimeout(total=None, connect=10, sock_read=330),
        ) as resp:
            if resp.status >= 400:
                raise ApiError(resp.status, await resp.text(), f"watch {path}")
            buf = b""
            # Objects may be larger than aiohttp's readline limit: split lines ourselves.
            async for chunk in resp.content.iter_any():
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)


EventHandler = Callable[[str, Obj], Awaitable[None]]
SyncHandler = Callable[[list[Obj]], Awaitable[None]]


async def reflect(
    api: KubeApi,
    path: str,
    on_event: EventHandler,
    params: dict[str, str] | None = None,
    on_sync: SyncHandler | None = None,
) -> None:
    """List then watch `path` forever, calling `on_event(type, obj)` for each change.

    After every (re)list, objects that vanished meanwhile are reported as DELETED, and
    `on_sync` receives the full list first (so callers can reserve state before events).
    """
    params = dict(params or {})
    known: dict[str, Obj] = {}
    while True:
        try:
            listing = await api.get(path, params)
            items: list[Obj] = listing.get("items", [])
            rv = listing["metadata"]["resourceVersion"]
            if on_sync:
                await on_sync(items)
            current = {o["metadata"]["uid"]: o for o in items}
            for uid, obj in list(known.items()):
                if uid not in current:
                    await on_event("DELETED", obj)
            known = current
            for obj in items:
                await on_event("ADDED", obj)
            while True:
                async for event in api._watch_stream(path, {**params, "resourceVersion": rv}):
                    kind = event.get("type")
                    obj = event.get("object", {})
                    if kind == "ERROR":
                        raise ApiError(int(obj.get("code", 500)), obj, f"watch {path}")
                    rv = obj.get("metadata", {}).get("resourceVersion", rv)
                    if kind == "BOOKMARK":
                        continue
                    uid = obj["metadata"]["uid"]
                    if kind == "DELETED":
                        known.pop(uid, None)
                    else:
                        known[uid] = obj
                    await on_event(str(kind), obj)
        except asyncio.CancelledError:
            raise
        except ApiError as exc:
            if exc.status != 410:
                log.warning("watch %s: %s; relisting", path, exc)
                await asyncio.sleep(1)
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as exc:
            log.warning("watch %s failed (%s); relisting", path, exc or type(exc).__name__)
            await asyncio.sleep(1)
