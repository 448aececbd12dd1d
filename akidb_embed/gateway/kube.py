"""Discovery from Kubernetes watches, and status patches.

Lists then watches EmbeddingModels in the namespace and the model-server pods (by
label) with `watching.sync_forever` (re-lists on 410 Gone, reconnects with back-off,
timeouts on every call). Objects go to the registry as plain dicts in their Kubernetes
JSON shape; each event, bookmark and watch the server ended in time tells the registry
the view is fresh (`note_alive`); /readyz turns 503 when it is not.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from akidb_embed.gateway.registry import Registry
from akidb_embed.k8s import GROUP, MODEL_SERVER_SELECTOR, PLURAL, VERSION, parse_time
from akidb_embed.watching import WATCH_TIMEOUT_SECONDS, call_timeout, sync_forever

log = logging.getLogger("akidb_embed.gateway.kube")

CONFLICT_RETRIES = 5


async def load_kube_config() -> None:
    """In-cluster config when running in a pod with a service account, else KUBECONFIG."""
    if os.environ.get("KUBERNETES_SERVICE_HOST") and os.path.exists(
        "/var/run/secrets/kubernetes.io/serviceaccount/token"
    ):
        config.load_incluster_config()
    else:
        await config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))


@dataclass
class _RegistrySink:
    """One kind's watch events, applied to the registry."""

    kind: str
    registry: Registry
    replace_all: Callable[[list[dict[str, Any]]], None]
    upsert_one: Callable[[dict[str, Any]], None]
    delete_named: Callable[[str], None]

    def replace(self, items: list[dict[str, Any]]) -> None:
        self.replace_all(items)
        self.registry.mark_synced(self.kind)

    def upsert(self, obj: dict[str, Any]) -> None:
        self.upsert_one(obj)

    def delete(self, obj: dict[str, Any]) -> None:
        self.delete_named(obj["metadata"]["name"])

    def alive(self) -> None:
        self.registry.note_alive(self.kind)


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
        r = registry
        models = _RegistrySink("models", r, r.replace_models, r.upsert_model, r.delete_model)
        pods = _RegistrySink("pods", r, r.replace_pods, r.upsert_pod, r.delete_pod)
        try:
            await asyncio.gather(
                sync_forever(
                    "models",
                    models,
                    custom.list_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    self.namespace,
                    PLURAL,
                    watch_seconds=self.watch_seconds,
                ),
                sync_forever(
                    "pods",
                    pods,
                    core.list_namespaced_pod,
                    self.namespace,
                    label_selector=MODEL_SERVER_SELECTOR,
                    watch_seconds=self.watch_seconds,
                ),
            )
        finally:
            await self.close()

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
