"""Discovery from Kubernetes watches (kubernetes_asyncio), and status patches.

Lists then watches EmbeddingModels in the namespace and the model-server pods (by
label); on a watch that expires (410 Gone) or breaks, re-lists and reconnects with
back-off. Objects go to the registry as plain dicts in their Kubernetes JSON shape.

Every call has a client-side timeout (kubernetes_asyncio's default is none): one-shot
calls `API_TIMEOUT` in all, watches a connect timeout and a read timeout a little
longer than the server's own `timeoutSeconds`, so a half-open connection (an API
server that stopped answering) breaks the watch instead of freezing the registry.
Each event, bookmark and watch the server ended in time tells the registry the view
is fresh (`note_alive`); /readyz turns 503 when it is not.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.exceptions import ApiException

from akidb_embed.gateway.registry import Registry
from akidb_embed.k8s import GROUP, MODEL_SERVER_SELECTOR, PLURAL, VERSION, parse_time

log = logging.getLogger("akidb_embed.gateway.kube")

# One-shot calls (lists, status patches): connect within CONNECT_TIMEOUT, all done
# within API_TIMEOUT.
CONNECT_TIMEOUT = 5.0
API_TIMEOUT = 15.0
# A watch the server ends after this long (then re-watched from its resourceVersion);
# with bookmarks, a healthy watch hears from the server at least this often.
WATCH_TIMEOUT_SECONDS = 60
# No byte on a watch for its server timeout plus this: the connection is dead.
WATCH_READ_SLACK = 10.0
BACKOFF_START = 0.5
BACKOFF_MAX = 15.0
CONFLICT_RETRIES = 5


async def load_kube_config() -> None:
    """In-cluster config when running in a pod with a service account, else KUBECONFIG."""
    if os.environ.get("KUBERNETES_SERVICE_HOST") and os.path.exists(
        "/var/run/secrets/kubernetes.io/serviceaccount/token"
    ):
        config.load_incluster_config()
    else:
        await config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))


def call_timeout(total: float = API_TIMEOUT) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=total, sock_connect=CONNECT_TIMEOUT)


def watch_timeout(server_seconds: int) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(
        sock_connect=CONNECT_TIMEOUT, sock_read=server_seconds + WATCH_READ_SLACK
    )


class KubeBackend:
    def __init__(self, namespace: str, watch_seconds: int = WATCH_TIMEOUT_SECONDS) -> None:
        self.namespace = namespace
        self.watch_seconds = watch_seconds
        self._api: client.ApiClient | None = None

    def _client(self) -> client.ApiClient:
        if self._api is None:
            self._api = client.ApiClient()
        return self._api

    async def run(self, registry: Registry) -> None:
        api = self._client()
        custom: Any = client.CustomObjectsApi(api)
        core: Any = client.CoreV1Api(api)

        async def list_models() -> tuple[list[dict[str, Any]], str]:
            result = await custom.list_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, _request_timeout=call_timeout()
            )
            return result.get("items", []), result["metadata"]["resourceVersion"]

        async def list_pods() -> tuple[list[dict[str, Any]], str]:
            result = await core.list_namespaced_pod(
                self.namespace,
                label_selector=MODEL_SERVER_SELECTOR,
                _preload_content=False,
                _request_timeout=call_timeout(),
            )
            try:
                data = await asyncio.wait_for(result.json(), API_TIMEOUT)
            finally:
                result.release()
            return data.get("items", []), data["metadata"]["resourceVersion"]

        try:
            await asyncio.gather(
                self._sync_loop(
                    "models",
                    registry,
                    list_models,
                    lambda rv: watch.Watch().stream(
                        custom.list_namespaced_custom_object,
                        GROUP,
                        VERSION,
                        self.namespace,
                        PLURAL,
                        resource_version=rv,
                        timeout_seconds=self.watch_seconds,
                        allow_watch_bookmarks=True,
                        _request_timeout=watch_timeout(self.watch_seconds),
                    ),
                    registry.replace_models,
                    registry.upsert_model,
                    registry.delete_model,
                ),
                self._sync_loop(
                    "pods",
                    registry,
                    list_pods,
                    lambda rv: watch.Watch(return_type="object").stream(
                        core.list_namespaced_pod,
                        self.namespace,
                        label_selector=MODEL_SERVER_SELECTOR,
                        resource_version=rv,
                        timeout_seconds=self.watch_seconds,
                        allow_watch_bookmarks=True,
                        _request_timeout=watch_timeout(self.watch_seconds),
                    ),
                    registry.replace_pods,
                    registry.upsert_pod,
                    registry.delete_pod,
                ),
            )
        finally:
            await self.close()

    async def _sync_loop(
        self,
        kind: str,
        registry: Registry,
        list_fn: Callable[[], Awaitable[tuple[list[dict[str, Any]], str]]],
        watch_fn: Callable[[str], Any],
        replace: Callable[[list[dict[str, Any]]], None],
        upsert: Callable[[dict[str, Any]], None],
        delete: Callable[[str], None],
    ) -> None:
        backoff = BACKOFF_START
        rv: str | None = None
        while True:
            try:
                if rv is None:
                    items, rv = await list_fn()
                    replace(items)
                    registry.mark_synced(kind)
                    log.info("listed %d %s (resourceVersion %s)", len(items), kind, rv)
                stream = watch_fn(rv)
                async with stream:
                    async for event in stream:
                        registry.note_alive(kind)
                        kind_of_event = event["type"]
                        obj = event["raw_object"]
                        if kind_of_event == "BOOKMARK":
                            rv = obj["metadata"]["resourceVersion"]
                            continue
                        rv = obj["metadata"].get("resourceVersion", rv)
                        if kind_of_event == "DELETED":
                            delete(obj["metadata"]["name"])
                        else:
                            upsert(obj)
                registry.note_alive(kind)  # the server ended the watch in time
                backoff = BACKOFF_START
            except asyncio.CancelledError:
                raise
            except ApiException as exc:
                if exc.status == 410:
                    log.info("%s watch expired (410); re-listing", kind)
                    rv = None
                    continue
                log.warning(
                    "%s watch failed (%s %s); retrying in %.1fs",
                    kind,
                    exc.status,
                    exc.reason,
                    backoff,
                )
                rv = None
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, BACKOFF_MAX)
            except Exception as exc:
                log.warning("%s watch broke (%r); retrying in %.1fs", kind, exc, backoff)
                rv = None
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, BACKOFF_MAX)

    async def patch_status(self, model: str, fields: dict[str, Any]) -> None:
        custom: Any = client.CustomObjectsApi(self._client())
        await custom.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            self.namespace,
            PLURAL,
            model,
            {"status": fields},
            _content_type="application/merge-patch+json",
            _request_timeout=call_timeout(),
        )

    async def raise_status_time(self, model: str, field: str, when: str) -> None:
        """Set status.<field> to `when` unless it holds a later time already: read, then
        a merge patch that carries the resourceVersion read (409 if another writer came
        in between: read again)."""
        custom: Any = client.CustomObjectsApi(self._client())
        wanted = parse_time(when)
        for attempt in range(CONFLICT_RETRIES):
            obj = await custom.get_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, model, _request_timeout=call_timeout()
            )
            current = parse_time((obj.get("status") or {}).get(field))
            if current is not None and wanted is not None and current >= wanted:
                return
            try:
                await custom.patch_namespaced_custom_object_status(
                    GROUP,
                    VERSION,
                    self.namespace,
                    PLURAL,
                    model,
                    {
                        "metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]},
                        "status": {field: when},
                    },
                    _content_type="application/merge-patch+json",
                    _request_timeout=call_timeout(),
                )
                return
            except ApiException as exc:
                if exc.status != 409 or attempt == CONFLICT_RETRIES - 1:
                    raise
                log.debug("status.%s of %s: conflict, reading again", field, model)

    async def close(self) -> None:
        if self._api is not None:
            await self._api.close()
            self._api = None
