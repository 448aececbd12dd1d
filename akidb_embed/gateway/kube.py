"""Discovery from Kubernetes watches (kubernetes_asyncio), and status patches.

Lists then watches EmbeddingModels in the namespace and the model-server pods (by
label); on a watch that expires (410 Gone) or breaks, re-lists and reconnects with
back-off. Objects go to the registry as plain dicts in their Kubernetes JSON shape.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import Awaitable, Callable
from typing import Any

from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.exceptions import ApiException

from akidb_embed.gateway.registry import Registry
from akidb_embed.k8s import GROUP, MODEL_SERVER_SELECTOR, PLURAL, VERSION

log = logging.getLogger("akidb_embed.gateway.kube")

WATCH_TIMEOUT_SECONDS = 300
BACKOFF_START = 0.5
BACKOFF_MAX = 15.0


async def load_kube_config() -> None:
    """In-cluster config when running in a pod with a service account, else KUBECONFIG."""
    if os.environ.get("KUBERNETES_SERVICE_HOST") and os.path.exists(
        "/var/run/secrets/kubernetes.io/serviceaccount/token"
    ):
        config.load_incluster_config()
    else:
        await config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))


class KubeBackend:
    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
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
                GROUP, VERSION, self.namespace, PLURAL
            )
            return result.get("items", []), result["metadata"]["resourceVersion"]

        async def list_pods() -> tuple[list[dict[str, Any]], str]:
            result = await core.list_namespaced_pod(
                self.namespace, label_selector=MODEL_SERVER_SELECTOR, _preload_content=False
            )
            try:
                data = await result.json()
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
                        timeout_seconds=WATCH_TIMEOUT_SECONDS,
                        allow_watch_bookmarks=True,
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
                        timeout_seconds=WATCH_TIMEOUT_SECONDS,
                        allow_watch_bookmarks=True,
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
                backoff = BACKOFF_START  # the watch ended normally (server timeout)
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
        )

    async def close(self) -> None:
        if self._api is not None:
            await self._api.close()
            self._api = None
