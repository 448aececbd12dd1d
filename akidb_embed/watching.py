"""List, then watch, forever: the one list-and-watch loop of the gateway and the operator.

`sync_forever` lists a kind once (raw JSON, no model classes), hands the items to a
`Sink`, then watches from the list's resourceVersion and hands it every change; a watch
that expires (410 Gone) or breaks is re-listed and reconnected with jittered back-off.

Every call has a client-side timeout (kubernetes_asyncio's default is none): lists
`API_TIMEOUT` in all, watches a connect timeout and a read timeout a little longer than
the server's own `timeoutSeconds`, so a half-open connection (an API server that stopped
answering) breaks the watch instead of freezing the view built from it. Each event,
bookmark and watch the server ended in time tells the sink the view is fresh (`alive`).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable
from typing import Any, Protocol

import aiohttp
from kubernetes_asyncio import watch
from kubernetes_asyncio.client.exceptions import ApiException

Body = dict[str, Any]
log = logging.getLogger("akidb_embed.watching")

# One-shot calls (lists): connect within CONNECT_TIMEOUT, all done within API_TIMEOUT.
CONNECT_TIMEOUT = 5.0
API_TIMEOUT = 15.0
# A watch the server ends after this long (then re-watched from its resourceVersion);
# with bookmarks, a healthy watch hears from the server at least this often.
WATCH_TIMEOUT_SECONDS = 60
# No byte on a watch for its server timeout plus this: the connection is dead.
WATCH_READ_SLACK = 10.0
BACKOFF_START = 0.5
BACKOFF_MAX = 15.0


def call_timeout(total: float = API_TIMEOUT) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=total, sock_connect=CONNECT_TIMEOUT)


def watch_timeout(server_seconds: int) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(
        sock_connect=CONNECT_TIMEOUT, sock_read=server_seconds + WATCH_READ_SLACK
    )


class Sink(Protocol):
    """Where one kind's objects go, as plain dicts in their Kubernetes JSON shape."""

    def replace(self, items: list[Body]) -> None: ...  # a (re-)list: the whole set
    def upsert(self, obj: Body) -> None: ...
    def delete(self, obj: Body) -> None: ...
    def alive(self) -> None: ...  # the server was heard from


class Lister(Protocol):
    """A kubernetes_asyncio list call, e.g. `CoreV1Api.list_namespaced_pod`."""

    def __call__(self, *args: Any, **kwargs: Any) -> Awaitable[Any]: ...


async def list_raw(fn: Lister, *args: Any, **kwargs: Any) -> tuple[list[Body], str]:
    """(items, resourceVersion) of a list call, parsed as plain JSON: building model
    classes for a thousand objects costs more than the request."""
    response = await fn(*args, _preload_content=False, _request_timeout=call_timeout(), **kwargs)
    try:
        data = await asyncio.wait_for(response.json(), API_TIMEOUT)
    finally:
        response.release()
    return data.get("items") or [], data["metadata"]["resourceVersion"]


async def sync_forever(
    kind: str,
    sink: Sink,
    fn: Lister,
    *args: Any,
    watch_seconds: int = WATCH_TIMEOUT_SECONDS,
    **kwargs: Any,
) -> None:
    """Keep `sink` equal to what `fn(*args, **kwargs)` lists, until cancelled."""
    backoff = BACKOFF_START
    rv: str | None = None
    while True:
        try:
            if rv is None:
                items, rv = await list_raw(fn, *args, **kwargs)
                sink.replace(items)
                log.info("listed %d %s (resourceVersion %s)", len(items), kind, rv)
            stream = watch.Watch(return_type="object").stream(
                fn,
                *args,
                resource_version=rv,
                timeout_seconds=watch_seconds,
                allow_watch_bookmarks=True,
                _request_timeout=watch_timeout(watch_seconds),
                **kwargs,
            )
            async with stream:
                async for event in stream:
                    sink.alive()
                    obj = event["raw_object"]
                    if event["type"] == "BOOKMARK":
                        rv = obj["metadata"]["resourceVersion"]
                        continue
                    rv = obj["metadata"].get("resourceVersion", rv)
                    if event["type"] == "DELETED":
                        sink.delete(obj)
                    else:
                        sink.upsert(obj)
            sink.alive()  # the server ended the watch in time
            backoff = BACKOFF_START
        except asyncio.CancelledError:
            raise
        except ApiException as exc:
            rv = None
            if exc.status == 410:
                log.info("%s watch expired (410); re-listing", kind)
                continue
            log.warning(
                "%s watch failed (%s %s); retrying in %.1fs", kind, exc.status, exc.reason, backoff
            )
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, BACKOFF_MAX)
        except Exception as exc:
            rv = None
            log.warning("%s watch broke (%r); retrying in %.1fs", kind, exc, backoff)
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, BACKOFF_MAX)
