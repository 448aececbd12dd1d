"""The small interface between the gateway and the cluster.

`ClusterBackend.run(registry)` keeps the registry in step with the cluster for as long
as it runs (and calls `registry.mark_synced("models"/"pods")` after the first full
list); `patch_status(model, fields)` merge-patches the EmbeddingModel's status
subresource with the gateway's fields (`requestedAt`, `lastRequestTime`).

`KubeBackend` (kube.py) is the real one; tests drive the gateway with a fake.
"""

from __future__ import annotations

from typing import Any, Protocol

from akidb_embed.gateway.registry import Registry


class ClusterBackend(Protocol):
    async def run(self, registry: Registry) -> None: ...

    async def patch_status(self, model: str, fields: dict[str, Any]) -> None: ...
