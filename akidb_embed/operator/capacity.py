"""The node's model capacity as resources the scheduler enforces (pure functions).

The operator advertises two extended resources on every node its pods select:
`akidb.io/model-slot` (count = --capacity) and `akidb.io/model-memory` (MiB = the
model memory budget). Every model-server pod requests one slot and its memory in MiB
(limits = requests, as extended resources require). The scheduler counts a pod's
resources until the pod is gone, Terminating ones included, so a ReplicaSet that
replaces a deleted pod cannot place a fourth pod beside three: it stays Pending.
The placement policy still decides *which* models hold the slots.
"""

from __future__ import annotations

import math
from typing import Any

from akidb_embed import k8s
from akidb_embed.units import memory_bytes

MODEL_SLOT = f"{k8s.GROUP}/model-slot"
MODEL_MEMORY = f"{k8s.GROUP}/model-memory"  # in MiB (extended resources are integers)
MI = 2**20

Body = dict[str, Any]


def node_resources(capacity: int, memory_budget: int | None) -> dict[str, str]:
    """What the node advertises (capacity = allocatable); no memory resource if unlimited."""
    resources = {MODEL_SLOT: str(capacity)}
    if memory_budget is not None:
        resources[MODEL_MEMORY] = str(memory_budget // MI)
    return resources


def pod_resources(memory: str, memory_budget: int | None) -> dict[str, str]:
    """What one model-server pod requests of them (the memory rounded up to whole MiB)."""
    resources = {MODEL_SLOT: "1"}
    if memory_budget is not None:
        resources[MODEL_MEMORY] = str(math.ceil(memory_bytes(memory) / MI))
    return resources


def node_status_patch(node: Body, wanted: dict[str, str]) -> Body | None:
    """The merge patch of nodes/status that advertises `wanted`, or None if it already is.

    Re-applied every pass (level-triggered): a node that re-registers loses them.
    """
    status = node.get("status") or {}
    capacity = status.get("capacity") or {}
    allocatable = status.get("allocatable") or {}
    if all(capacity.get(k) == v and allocatable.get(k) == v for k, v in wanted.items()):
        return None
    return {"status": {"capacity": dict(wanted), "allocatable": dict(wanted)}}
