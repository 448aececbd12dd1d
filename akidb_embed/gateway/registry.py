"""In-memory view of the EmbeddingModels and model-server pods, fed by discovery.

The discovery (watches, or a fake in tests) calls the `upsert_*` / `delete_*` /
`replace_*` methods with objects in their Kubernetes JSON shape (dicts). The request
path only reads from here: a warm request costs no API call. Every change to a model or
one of its pods wakes whoever waits on `changed(model)`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from yarl import URL

from akidb_embed.api.names import catalog_entry, model_aliases
from akidb_embed.k8s import (
    LABEL_MODEL,
    MODEL_SERVER_PORT,
    MODEL_SERVER_PORT_NAME,
    parse_time,
)

FAILED = "Failed"
WATCHED = frozenset({"models", "pods"})
# A pod that failed a forwarded call is not even probed for this long.
SUSPECT_QUARANTINE = 1.0


@dataclass
class ModelState:
    name: str
    phase: str = "Pending"
    reason: str = ""
    message: str = ""
    dimension: int | None = None
    matryoshka_dimensions: list[int] = field(default_factory=list)
    pinned: bool = False
    source: str | None = None
    aliases: list[str] = field(default_factory=list)
    alias_kinds: dict[str, str] = field(default_factory=dict)  # lower-case alias -> kind
    task: str = "embed"
    status: dict[str, Any] = field(default_factory=dict)
    spec: dict[str, Any] = field(default_factory=dict)
    created: float | None = None


@dataclass
class PodState:
    name: str
    model: str
    ip: str | None
    port: int
    phase: str
    ready: bool
    terminating: bool

    _urls: dict[str, URL] = field(default_factory=dict, compare=False, repr=False)

    def url(self, path: str) -> URL:
        """`base_url + path`, parsed once per pod and path (aiohttp skips parsing a URL)."""
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = URL(self.base_url + path)
        return url

    @property
    def base_url(self) -> str:
        # An IPv6 pod IP needs brackets in a URL (http://[fd00::5]:8080).
        host = f"[{self.ip}]" if self.ip is not None and ":" in self.ip else self.ip
        return f"http://{host}:{self.port}"


def _source_of(spec: dict[str, Any]) -> str | None:
    source = spec.get("source")
    if isinstance(source, str):
        return source
    if isinstance(source, dict):
        for key in ("repo", "repoId", "repo_id", "huggingFace", "huggingface", "hub", "path"):
            value = source.get(key)
            if isinstance(value, str) and value:
                return value
            if isinstance(value, dict):
                for sub in ("repo", "repoId", "id"):
                    if isinstance(value.get(sub), str):
                        return str(value[sub])
    return None


def model_from_object(obj: dict[str, Any]) -> ModelState:
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    name = meta["name"]
    source = _source_of(spec)
    message = status.get("message") or ""
    if not message:
        for cond in status.get("conditions") or []:
            if cond.get("status") != "True" and cond.get("message"):
                message = cond["message"]
                break
    aliases = model_aliases(name, source)[1:]
    entry = catalog_entry(name, source)
    task = spec.get("task") or (entry.family.task if entry is not None else "embed")
    dims = spec.get("matryoshkaDimensions") or []
    return ModelState(
        name=name,
        phase=status.get("phase") or "Pending",
        reason=status.get("reason") or "",
        message=message,
        dimension=spec.get("dimension"),
        matryoshka_dimensions=[int(d) for d in dims if isinstance(d, int)],
        pinned=bool(spec.get("pinned", False)),
        source=source,
        aliases=sorted(a.name for a in aliases),
        alias_kinds={a.name.lower(): a.kind for a in aliases},
        task=task,
        status=status,
        spec=spec,
        created=parse_time(meta.get("creationTimestamp")),
    )


def pod_from_object(obj: dict[str, Any]) -> PodState | None:
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    model = labels.get(LABEL_MODEL)
    if not model:
        return None
    status = obj.get("status") or {}
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    port = MODEL_SERVER_PORT
    for container in (obj.get("spec") or {}).get("containers") or []:
        for p in container.get("ports") or []:
            if p.get("name") == MODEL_SERVER_PORT_NAME and p.get("containerPort"):
                port = int(p["containerPort"])
    return PodState(
        name=meta["name"],
        model=model,
        ip=status.get("podIP") or None,
        port=port,
        phase=status.get("phase") or "Pending",
        ready=ready,
        terminating=meta.get("deletionTimestamp") is not None,
    )


class Registry:
    """Models and pods by name, with per-model change notification."""

    def __init__(self) -> None:
        self.models: dict[str, ModelState] = {}
        self._aliases: dict[str, str] = {}
        self._pods: dict[str, PodState] = {}
        self._pods_by_model: dict[str, dict[str, PodState]] = {}
        # Pods whose /readyz we saw answer 200 before the kubelet reported Ready.
        self._probed: set[str] = set()
        # Pods that failed a forwarded request (-> when); used again only after a good
        # probe, and probed only after SUSPECT_QUARANTINE.
        self._suspect: dict[str, float] = {}
        self._inflight: dict[str, int] = {}  # pod -> forwarded calls under way
        self._events: dict[str, asyncio.Event] = {}
        self._synced: set[str] = set()
        self._alive: dict[str, float] = {}

    # -- notifications -----------------------------------------------------------

    def changed(self, model: str) -> asyncio.Event:
        """An event set at the next change of `model` or its pods."""
        event = self._events.get(model)
        if event is None:
            event = self._events[model] = asyncio.Event()
        return event

    def _notify(self, model: str) -> None:
        event = self._events.pop(model, None)
        if event is not None:
            event.set()

    # -- sync state ---------------------------------------------------------------

    def mark_synced(self, kind: str) -> None:
        """A full list of `kind` ("models" or "pods") was applied."""
        self._synced.add(kind)
        self.note_alive(kind)

    def note_alive(self, kind: str) -> None:
        """The watch of `kind` just heard from the API server (event, bookmark, list)."""
        self._alive[kind] = time.monotonic()

    @property
    def synced(self) -> bool:
        return self._synced >= WATCHED

    def stale_watches(self, max_age: float) -> dict[str, float]:
        """Watched kinds not heard from for over `max_age` seconds -> seconds since."""
        now = time.monotonic()
        ages = {kind: now - self._alive.get(kind, -float("inf")) for kind in WATCHED}
        return {kind: age for kind, age in ages.items() if age > max_age}

    # -- models -------------------------------------------------------------------

    def upsert_model(self, obj: dict[str, Any]) -> None:
        state = model_from_object(obj)
        self.models[state.name] = state
        self._rebuild_aliases()
        self._notify(state.name)

    def delete_model(self, name: str) -> None:
        if self.models.pop(name, None) is not None:
            self._rebuild_aliases()
        self._notify(name)

    def replace_models(self, objs: list[dict[str, Any]]) -> None:
        old = set(self.models)
        self.models = {}
        for obj in objs:
            state = model_from_object(obj)
            self.models[state.name] = state
        self._rebuild_aliases()
        for name in old | set(self.models):
            self._notify(name)

    def _rebuild_aliases(self) -> None:
        aliases: dict[str, str] = {}
        for state in self.models.values():
            for alias in state.aliases:
                aliases.setdefault(alias.lower(), state.name)
        for state in self.models.values():  # a resource's own name always wins
            aliases[state.name.lower()] = state.name
        self._aliases = aliases

    def resolve(self, name: str) -> str | None:
        """EmbeddingModel name for a model name or catalog alias (None if unknown)."""
        if name in self.models:
            return name
        return self._aliases.get(name.lower())

    def known_models(self) -> list[str]:
        return sorted(self.models)

    # -- pods ---------------------------------------------------------------------

    def upsert_pod(self, obj: dict[str, Any]) -> None:
        pod = pod_from_object(obj)
        if pod is None:
            return
        previous = self._pods.get(pod.name)
        if previous is not None and previous.model != pod.model:
            self._remove_pod(pod.name)
        self._pods[pod.name] = pod
        self._pods_by_model.setdefault(pod.model, {})[pod.name] = pod
        if pod.ready or pod.terminating or pod.phase in ("Succeeded", "Failed"):
            self._probed.discard(pod.name)
        if pod.terminating or pod.phase in ("Succeeded", "Failed"):
            self._suspect.pop(pod.name, None)
        self._notify(pod.model)

    def delete_pod(self, name: str) -> None:
        pod = self._remove_pod(name)
        if pod is not None:
            self._notify(pod.model)

    def _remove_pod(self, name: str) -> PodState | None:
        pod = self._pods.pop(name, None)
        self._probed.discard(name)
        self._suspect.pop(name, None)
        if pod is not None:
            by_model = self._pods_by_model.get(pod.model, {})
            by_model.pop(name, None)
            if not by_model:
                self._pods_by_model.pop(pod.model, None)
        return pod

    def replace_pods(self, objs: list[dict[str, Any]]) -> None:
        touched = {p.model for p in self._pods.values()}
        keep_probed, keep_suspect = set(self._probed), dict(self._suspect)
        self._pods, self._pods_by_model = {}, {}
        for obj in objs:
            pod = pod_from_object(obj)
            if pod is None:
                continue
            self._pods[pod.name] = pod
            self._pods_by_model.setdefault(pod.model, {})[pod.name] = pod
            touched.add(pod.model)
        self._probed = {n for n in keep_probed if n in self._pods and not self._pods[n].ready}
        self._suspect = {n: t for n, t in keep_suspect.items() if n in self._pods}
        for model in touched:
            self._notify(model)

    def pods(self, model: str) -> list[PodState]:
        return list(self._pods_by_model.get(model, {}).values())

    def _usable(self, pod: PodState) -> bool:
        return (
            pod.ip is not None
            and not pod.terminating
            and pod.phase == "Running"
            and (pod.ready or pod.name in self._probed)
            and pod.name not in self._suspect
        )

    def pick_ready(self, model: str, avoid: frozenset[str] = frozenset()) -> PodState | None:
        """The ready pod of `model` (none of `avoid`) with the fewest requests in flight."""
        best: PodState | None = None
        best_load = 0
        for pod in self._pods_by_model.get(model, {}).values():
            if pod.name not in avoid and self._usable(pod):
                load = self._inflight.get(pod.name, 0)
                if best is None or load < best_load:
                    best, best_load = pod, load
        return best

    def ready_pods(self, model: str) -> list[PodState]:
        return [p for p in self._pods_by_model.get(model, {}).values() if self._usable(p)]

    def probe_candidates(self, model: str) -> list[PodState]:
        """Running pods with an IP that are not (or no longer) trusted as ready."""
        now = time.monotonic()
        return [
            p
            for p in self._pods_by_model.get(model, {}).values()
            if p.ip is not None
            and not p.terminating
            and p.phase == "Running"
            and not self._usable(p)
            and now - self._suspect.get(p.name, 0.0) >= SUSPECT_QUARANTINE
        ]

    def has_suspects(self, model: str) -> bool:
        return any(name in self._suspect for name in self._pods_by_model.get(model, {}))

    def call_started(self, pod_name: str) -> None:
        self._inflight[pod_name] = self._inflight.get(pod_name, 0) + 1

    def call_ended(self, pod_name: str) -> None:
        count = self._inflight.get(pod_name, 1) - 1
        if count > 0:
            self._inflight[pod_name] = count
        else:
            self._inflight.pop(pod_name, None)

    def in_flight(self, pod_name: str) -> int:
        """Forwarded calls to the pod under way (the load `pick_ready` balances)."""
        return self._inflight.get(pod_name, 0)

    def mark_probed_ready(self, pod_name: str) -> None:
        self._suspect.pop(pod_name, None)
        pod = self._pods.get(pod_name)
        if pod is not None and not pod.ready:
            self._probed.add(pod_name)

    def mark_suspect(self, pod_name: str) -> None:
        self._suspect[pod_name] = time.monotonic()
        self._probed.discard(pod_name)
