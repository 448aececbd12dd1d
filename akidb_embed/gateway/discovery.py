"""The small interface between the gateway and the cluster.

`ClusterBackend.run(registry)` keeps the registry in step with the cluster for as long
as it runs: it calls `registry.mark_synced("models"/"pods")` after each full list and
`registry.note_alive(kind)` whenever its watch shows the API server is answering (an
event, a bookmark, a watch the server ended), so the gateway can tell a stale view.
`patch_status(model, fields)` merge-patches the EmbeddingModel's status subresource
(`requestedAt`); `raise_status_time(model, field, when)` sets a status timestamp to
`when` unless it already holds a later one (`lastRequestTime`: recency merges as max
across gateway replicas).

`KubeBackend` (kube.py) is the real one; tests drive the gateway with a fake.
"""

from __future__ import annotations

from typing import Any, Protocol

from akidb_embed.gateway.registry import Registry


class ClusterBackend(Protocol):
    async def run(self, registry: Registry) -> None: ...

    async def patch_status(self, model: str, fields: dict[str, Any]) -> None: ...

    async def raise_status_time(self, model: str, field: str, when: str) -> None: ...
