"""Kubernetes bodies -> the placement policy's view of them (pure functions).

Also the operator's memory of its own recent status writes (`WriteOverlay`): a watch
event for a write arrives a moment after the write, and a decision taken in between
must not see the model's old phase (it would count a slot as free that it has just
taken). The overlay is only a bridge until the watch catches up; the API server stays
the source of truth, so a restarted operator needs nothing from it.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from akidb_embed import k8s
from akidb_embed.operator.objects import TEMPLATE_HASH, is_converted, phase_of
from akidb_embed.operator.placement import ModelView, PodView
from akidb_embed.units import memory_bytes, parse_duration

Body = dict[str, Any]

# Status fields the operator owns (the gateway writes requestedAt and lastRequestTime).
OPERATOR_STATUS_FIELDS = (
    "phase",
    "reason",
    "message",
    "conditions",
    "observedGeneration",
    "activeSince",
    "readySince",
    "lastEvictedAt",
    "evictions",
    "artifact",
)
# Fields whose equality shows that the watch has seen our write.
_WRITE_MARKERS = ("phase", "activeSince", "lastEvictedAt", "artifact")


def model_snapshot(body: Any) -> Body:
    """The parts of an EmbeddingModel the operator keeps in its cache (plain dicts)."""
    meta = body["metadata"]
    return {
        "apiVersion": body.get("apiVersion", k8s.API_VERSION),
        "kind": body.get("kind", k8s.KIND),
        "metadata": {
            "name": meta["name"],
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
            "generation": meta.get("generation"),
            "resourceVersion": meta.get("resourceVersion"),
            "deletionTimestamp": meta.get("deletionTimestamp"),
        },
        "spec": copy.deepcopy(dict(body.get("spec") or {})),
        "status": copy.deepcopy(dict(body.get("status") or {})),
    }


def _safe_memory(value: Any) -> int:
    try:
        return memory_bytes(value)
    except (TypeError, ValueError):
        return 0


def _safe_duration(value: Any) -> float | None:
    if value in (None, ""):
        return None
    try:
        return parse_duration(value)
    except ValueError:
        return None


def model_view(body: Body) -> ModelView:
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    return ModelView(
        name=body["metadata"]["name"],
        phase=phase_of(body),
        converted=is_converted(body),
        pinned=bool(spec.get("pinned", False)),
        memory=_safe_memory((spec.get("resources") or {}).get("memory", 0)),
        idle_timeout=_safe_duration(spec.get("idleTimeout")),
        last_request=k8s.parse_time(status.get("lastRequestTime")),
        requested_at=k8s.parse_time(status.get("requestedAt")),
        active_since=k8s.parse_time(status.get("activeSince")),
        ready_since=k8s.parse_time(status.get("readySince")),
        last_evicted_at=k8s.parse_time(status.get("lastEvictedAt")),
    )


def pod_view(pod: Any) -> PodView:
    meta = pod["metadata"]
    status = pod.get("status") or {}
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    # A pod that finished (Succeeded/Failed: node-pressure eviction, node shutdown) runs
    # nothing but stays until someone deletes it (its ReplicaSet does not): the policy
    # counts no slot for it and asks for its deletion.
    finished = status.get("phase") in ("Succeeded", "Failed")
    memory = 0
    for container in (pod.get("spec") or {}).get("containers") or []:
        limits = (container.get("resources") or {}).get("limits") or {}
        memory += _safe_memory(limits.get("memory", 0))
    return PodView(
        name=meta["name"],
        model=(meta.get("labels") or {}).get(k8s.LABEL_MODEL, ""),
        terminating=bool(meta.get("deletionTimestamp")),
        ready=ready and not finished,
        memory=memory,
        finished=finished,
        uid=str(meta.get("uid") or ""),
    )


def deployment_view(body: Any) -> Body:
    """What the decisions need of a model's Deployment: its model, size, template hash."""
    meta = body["metadata"]
    return {
        "model": (meta.get("labels") or {}).get(k8s.LABEL_MODEL, ""),
        "replicas": int((body.get("spec") or {}).get("replicas") or 0),
        "templateHash": (meta.get("annotations") or {}).get(TEMPLATE_HASH),
    }


@dataclass
class WriteOverlay:
    """Our latest status write per model, laid over the watched body until it shows up.

    An entry also expires after `ttl` seconds: a watch shows a write within milliseconds,
    so an older entry means the stream was paused or replaced (peering pause, relist) and
    the watched object is the better truth.
    """

    ttl: float = 15.0
    clock: Callable[[], float] = time.monotonic
    written: dict[str, tuple[str, float, Body]] = field(default_factory=dict)

    def record(self, name: str, uid: str, status: Body) -> None:
        ours = {k: status.get(k) for k in OPERATOR_STATUS_FIELDS}
        self.written[name] = (uid, self.clock(), ours)

    def forget(self, name: str) -> None:
        self.written.pop(name, None)

    def apply(self, body: Body) -> Body:
        name = body["metadata"]["name"]
        entry = self.written.get(name)
        if entry is None:
            return body
        uid, when, ours = entry
        status = body.get("status") or {}
        if (
            uid != body["metadata"].get("uid")
            or self.clock() - when > self.ttl
            or all(status.get(k) == ours.get(k) for k in _WRITE_MARKERS)
        ):
            self.forget(name)  # another object of that name, stale, or the watch caught up
            return body
        merged = dict(body)
        merged["status"] = {**status, **{k: v for k, v in ours.items() if v is not None}}
        return merged
