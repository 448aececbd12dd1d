"""The operator's view of the cluster: what its three watches show, projected.

One list per kind (EmbeddingModels, model-server pods, model Deployments), then a
watch (`watching.sync_forever`), each object kept as the small projection the decisions
read (`state.model_snapshot`, `state.pod_view`, `state.deployment_view`). Every change
calls `on_change` (the controller's `poke`: a decision soon, coalesced).

Why our own cache and not kopf's indexes: kopf calls no handler before its indexes are
complete and fills them object by object through its per-object workers, so a restarted
operator with 1000 EmbeddingModels stood ~20 s before its first decision; three lists
take well under a second. kopf keeps what it is good at (the spec handlers with their
diff base, the Job handler).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from kubernetes_asyncio import client

from akidb_embed import k8s
from akidb_embed.operator.placement import PodView
from akidb_embed.operator.state import deployment_view, model_snapshot, pod_view
from akidb_embed.watching import WATCH_TIMEOUT_SECONDS, sync_forever

Body = dict[str, Any]
V = TypeVar("V")


def _name(body: Body) -> str:
    return str(body["metadata"]["name"])


def _model_label(body: Body) -> str:
    return str((body["metadata"].get("labels") or {}).get(k8s.LABEL_MODEL, ""))


class Store(Generic[V]):
    """One kind's objects by key, as projections; a `watching.Sink`."""

    def __init__(
        self,
        project: Callable[[Body], V],
        key: Callable[[Body], str],
        on_change: Callable[[], None],
    ) -> None:
        self.items: dict[str, V] = {}
        self.synced = asyncio.Event()  # set by the first list
        self._project = project
        self._key = key
        self._on_change = on_change

    def replace(self, items: list[Body]) -> None:
        self.items = {self._key(obj): self._project(obj) for obj in items}
        self.synced.set()
        self._on_change()

    def upsert(self, obj: Body) -> None:
        self.items[self._key(obj)] = self._project(obj)
        self._on_change()

    def delete(self, obj: Body) -> None:
        self.items.pop(self._key(obj), None)
        self._on_change()

    def alive(self) -> None:
        pass

    def get(self, key: str) -> V | None:
        return self.items.get(key)

    def __iter__(self) -> Iterator[V]:
        return iter(list(self.items.values()))  # a copy: the watch may change it meanwhile

    def __len__(self) -> int:
        return len(self.items)


class ClusterCache:
    """EmbeddingModels by name, model-server pods by name, Deployments by model."""

    def __init__(self, on_change: Callable[[], None] = lambda: None) -> None:
        self.models: Store[Body] = Store(model_snapshot, _name, on_change)
        self.pods: Store[PodView] = Store(pod_view, _name, on_change)
        self.deployments: Store[Body] = Store(deployment_view, _model_label, on_change)

    @property
    def synced(self) -> bool:
        return all(s.synced.is_set() for s in (self.models, self.pods, self.deployments))

    async def wait_synced(self) -> None:
        for store in (self.models, self.pods, self.deployments):
            await store.synced.wait()

    async def run(
        self, api: client.ApiClient, namespace: str, watch_seconds: int = WATCH_TIMEOUT_SECONDS
    ) -> None:
        """List and watch the three kinds until cancelled."""
        custom: Any = client.CustomObjectsApi(api)
        core: Any = client.CoreV1Api(api)
        apps: Any = client.AppsV1Api(api)
        server = k8s.MODEL_SERVER_SELECTOR
        await asyncio.gather(
            sync_forever(
                "EmbeddingModels",
                self.models,
                custom.list_namespaced_custom_object,
                k8s.GROUP,
                k8s.VERSION,
                namespace,
                k8s.PLURAL,
                watch_seconds=watch_seconds,
            ),
            sync_forever(
                "model-server pods",
                self.pods,
                core.list_namespaced_pod,
                namespace,
                label_selector=server,
                watch_seconds=watch_seconds,
            ),
            sync_forever(
                "model Deployments",
                self.deployments,
                apps.list_namespaced_deployment,
                namespace,
                label_selector=server,
                watch_seconds=watch_seconds,
            ),
        )
