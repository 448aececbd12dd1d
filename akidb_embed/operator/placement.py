"""Which model-server pods run on the node: the placement policy, a pure function.

`decide(models, pods, limits, now)` looks at the EmbeddingModels (as `ModelView`), the
model-server pods on the node (Terminating ones included) and the node's limits, and
returns the actions that move the node toward serving the current demand without ever
having more than `limits.capacity` pods on it. No I/O and no clock: the operator calls it
with what its watches saw and applies the result; tests call it with made-up histories.

Slot accounting: a model in an active phase (Activating, Ready) holds one slot even
before its pod exists; every pod on the node holds a slot until it is gone, whatever
its model's phase. So a slot freed by an eviction becomes usable only once the pod has
really disappeared, and activating into it can never push the count over capacity.
A pod that has finished (phase Failed or Succeeded: evicted for node pressure, shut
down with the node) runs nothing and holds no slot: the policy asks for its deletion
(`DeletePod`) so that it does not linger. (The scheduler enforces the same bound with
the node's extended resources; this policy decides *which* models hold the slots.)

Level-triggered: given the replicas each model's Deployment has (`replicas`), the policy
also returns a `Scale` for every Deployment whose size disagrees with its model's phase,
so a write that failed in an earlier pass is repaired by the next one.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

# Phases of an EmbeddingModel (status.phase).
PENDING = "Pending"
CONVERTING = "Converting"
STANDBY = "Standby"
ACTIVATING = "Activating"
READY = "Ready"
EVICTING = "Evicting"
FAILED = "Failed"
PHASES = (PENDING, CONVERTING, STANDBY, ACTIVATING, READY, EVICTING, FAILED)
ACTIVE_PHASES = frozenset({ACTIVATING, READY})

# Reasons of Wait actions (also the Event reasons the operator posts).
CAPACITY_EXHAUSTED = "CapacityExhausted"
WAITING_FOR_EVICTION = "WaitingForEviction"
EXCEEDS_MEMORY_BUDGET = "ExceedsMemoryBudget"
PREVIOUS_POD_STOPPING = "PreviousPodStopping"


@dataclass(frozen=True)
class ModelView:
    """What the policy needs to know about one EmbeddingModel. Times are epoch seconds."""

    name: str
    phase: str = STANDBY
    converted: bool = True
    pinned: bool = False
    memory: int = 0  # bytes counted against the node's model memory budget
    idle_timeout: float | None = None  # seconds; None = never idle out
    last_request: float | None = None  # status.lastRequestTime (the gateway flushes it)
    requested_at: float | None = None  # status.requestedAt: a request waits for this model
    active_since: float | None = None  # status.activeSince: the last activation
    ready_since: float | None = None  # status.readySince: its pod last turned ready
    last_evicted_at: float | None = None  # status.lastEvictedAt: set when an eviction starts

    @property
    def active(self) -> bool:
        return self.phase in ACTIVE_PHASES

    @property
    def last_used(self) -> float:
        """When this model was last wanted: a request served, demanded, its activation, or
        its pod turning ready (a model cannot be used before that, however long it took
        to start, so its idle clock starts there)."""
        times = [
            t
            for t in (self.last_request, self.requested_at, self.active_since, self.ready_since)
            if t
        ]
        return max(times) if times else -math.inf

    @property
    def has_demand(self) -> bool:
        """A request newer than the model's last activation or eviction is waiting."""
        if self.requested_at is None:
            return False
        settled = [t for t in (self.active_since, self.last_evicted_at) if t is not None]
        return not settled or self.requested_at > max(settled)

    def demand_at(self, now: float, ttl: float) -> bool:
        """Unsettled demand that someone re-marked within `ttl` seconds (the gateway
        re-marks while its requests wait), so an abandoned request expires."""
        return self.has_demand and now - (self.requested_at or 0.0) <= ttl


@dataclass(frozen=True)
class PodView:
    """A model-server pod on the node (Terminating ones too: they still hold a slot)."""

    name: str
    model: str
    terminating: bool = False
    ready: bool = False
    memory: int = 0  # used only for a pod whose EmbeddingModel no longer exists
    finished: bool = False  # phase Failed or Succeeded: runs nothing, holds no slot
    uid: str = ""  # metadata.uid (a deletion's precondition)


@dataclass(frozen=True)
class Limits:
    capacity: int = 3  # model-server pods on the node, Terminating ones included
    memory_budget: int | None = None  # bytes for model pods; None = not limited
    min_residency: float = 30.0  # a model used this recently is not evicted for another
    demand_ttl: float = 60.0  # a requestedAt not re-marked for this long has expired
    min_retry: float = 0.5  # a Wait's retry_at is at least this far in the future


# Actions -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Activate:
    model: str
    message: str


@dataclass(frozen=True)
class Evict:
    """Scale the model to zero to make room for `for_model` (least recently used first)."""

    model: str
    for_model: str
    idle_seconds: float
    candidates: int  # how many models were evictable when this one was chosen
    message: str


@dataclass(frozen=True)
class IdleStandby:
    """The model has not been used for its idleTimeout: scale it to zero."""

    model: str
    idle_seconds: float
    message: str


@dataclass(frozen=True)
class Wait:
    model: str
    reason: str
    message: str
    # When the decision can change without any new event (the earliest minimum
    # residency of a blocking model runs out), so the operator decides again then.
    retry_at: float | None = None


@dataclass(frozen=True)
class MarkReady:
    """An Activating model has a Ready pod."""

    model: str


@dataclass(frozen=True)
class MarkActivating:
    """A Ready model lost its ready pod (crash, restart): it is starting again."""

    model: str


@dataclass(frozen=True)
class MarkStandby:
    """An evicted model's pod is gone: the eviction is complete."""

    model: str


@dataclass(frozen=True)
class DeletePod:
    """A finished (Failed/Succeeded) model-server pod: delete it (its ReplicaSet will not)."""

    model: str
    pod: str
    uid: str = ""


@dataclass(frozen=True)
class Scale:
    """The model's Deployment has `observed` replicas; its phase implies `replicas`."""

    model: str
    replicas: int
    observed: int


Action = (
    Activate
    | Evict
    | IdleStandby
    | Wait
    | MarkReady
    | MarkActivating
    | MarkStandby
    | DeletePod
    | Scale
)


@dataclass
class _Budget:
    """Slots and memory free now, and those that will free up without further action."""

    free_slots: int
    free_memory: float
    pending_slots: int
    pending_memory: float
    reserved_for: list[str] = field(default_factory=list)

    def fits_now(self, memory: int) -> bool:
        return self.free_slots >= 1 and self.free_memory >= memory

    def fits_eventually(self, memory: int) -> bool:
        return (
            self.free_slots + self.pending_slots >= 1
            and self.free_memory + self.pending_memory >= memory
        )

    def take_now(self, memory: int) -> None:
        self.free_slots -= 1
        self.free_memory -= memory

    def claim(self, memory: int) -> None:
        """Reserve a slot and memory for a waiting model, from free first, then pending."""
        if self.free_slots >= 1:
            self.free_slots -= 1
        else:
            self.pending_slots -= 1
        from_free = min(max(self.free_memory, 0.0), float(memory))
        self.free_memory -= from_free
        self.pending_memory -= memory - from_free


def _fmt_seconds(seconds: float) -> str:
    return "never used" if math.isinf(seconds) else f"{seconds:.0f}s"


def decide(
    models: Iterable[ModelView],
    pods: Iterable[PodView],
    limits: Limits,
    now: float,
    replicas: Mapping[str, int] | None = None,
) -> list[Action]:
    """The actions to take now. Deterministic: same inputs, same actions, same order.

    `replicas`: spec.replicas of each model's Deployment as last seen (None: unknown,
    no repairs); a model without a Deployment is left to the spec handler.
    """
    by_name = {m.name: m for m in sorted(models, key=lambda m: m.name)}
    pods_of: dict[str, list[PodView]] = defaultdict(list)
    orphan_slots, orphan_memory = 0, 0
    finished: list[DeletePod] = []
    for pod in sorted(pods, key=lambda p: p.name):
        if pod.finished:
            finished.append(DeletePod(pod.model, pod.name, pod.uid))
            continue
        if pod.model in by_name:
            pods_of[pod.model].append(pod)
        else:
            orphan_slots += 1
            orphan_memory += pod.memory

    actions: list[Action] = list(finished)
    phase = {name: m.phase for name, m in by_name.items()}

    # 1. Bookkeeping: phases that follow from the pods.
    turned_ready: set[str] = set()
    for name, m in by_name.items():
        live = [p for p in pods_of[name] if not p.terminating]
        if m.phase == ACTIVATING and any(p.ready for p in live):
            actions.append(MarkReady(name))
            phase[name] = READY
            turned_ready.add(name)
        elif m.phase == READY and not any(p.ready for p in live):
            actions.append(MarkActivating(name))
            phase[name] = ACTIVATING
        elif m.phase == EVICTING and not pods_of[name]:
            actions.append(MarkStandby(name))
            phase[name] = STANDBY

    # A model turning ready now is used now (MarkReady records readySince = now): no idle
    # timeout or eviction may take it before it has served the request that woke it.
    for name in turned_ready:
        by_name[name] = replace(by_name[name], ready_since=now)

    # 2. Occupancy: an active model holds a slot even before its pod exists; each pod
    #    holds one until it is gone.
    used_slots, used_memory = orphan_slots, orphan_memory
    held_slots, held_memory = 0, 0  # what the active models keep holding
    for name, m in by_name.items():
        active = phase[name] in ACTIVE_PHASES
        slots = max(1 if active else 0, len(pods_of[name]))
        used_slots += slots
        used_memory += slots * m.memory
        if active:
            held_slots += 1
            held_memory += m.memory
    budget_memory = math.inf if limits.memory_budget is None else limits.memory_budget
    budget = _Budget(
        free_slots=limits.capacity - used_slots,
        free_memory=budget_memory - used_memory,
        pending_slots=used_slots - held_slots,
        pending_memory=used_memory - held_memory,
    )

    # 3. Idle timeouts: their slots free up once their pods are gone.
    leaving: set[str] = set()
    for name, m in by_name.items():
        if phase[name] != READY or m.pinned or m.idle_timeout is None or name in turned_ready:
            continue
        idle = now - m.last_used
        if idle >= m.idle_timeout:
            actions.append(
                IdleStandby(
                    name,
                    idle_seconds=idle,
                    message=(
                        f"Scaled {name} to standby: idle {_fmt_seconds(idle)} "
                        f"(idleTimeout {m.idle_timeout:.0f}s)"
                    ),
                )
            )
            leaving.add(name)
            budget.pending_slots += 1
            budget.pending_memory += m.memory

    # 4. Demand, oldest first.
    waiting = sorted(
        (
            m
            for name, m in by_name.items()
            if m.converted
            and phase[name] in (STANDBY, EVICTING)
            and m.demand_at(now, limits.demand_ttl)
        ),
        key=lambda m: (m.requested_at, m.name),
    )
    evictable = sorted(
        (
            m
            for name, m in by_name.items()
            if phase[name] in ACTIVE_PHASES
            and name not in leaving
            and not m.pinned
            and now - m.last_used >= limits.min_residency
        ),
        key=lambda m: (m.last_used, m.name),
    )
    for w in waiting:
        if phase[w.name] == EVICTING:
            actions.append(
                Wait(
                    w.name,
                    PREVIOUS_POD_STOPPING,
                    f"{w.name} is requested again; waiting for its previous pod to stop",
                )
            )
            continue
        if w.memory > budget_memory:
            actions.append(
                Wait(
                    w.name,
                    EXCEEDS_MEMORY_BUDGET,
                    f"{w.name} needs {w.memory} bytes, more than the node's model memory "
                    f"budget of {limits.memory_budget} bytes",
                )
            )
            continue
        if budget.fits_now(w.memory):
            budget.take_now(w.memory)
            actions.append(
                Activate(
                    w.name,
                    f"Activated {w.name} (requested; {limits.capacity - budget.free_slots} "
                    f"of {limits.capacity} slots in use)",
                )
            )
            continue
        # Room must come from pods that are already going away, then from evictions.
        candidates = len(evictable)
        chosen: list[ModelView] = []
        while not budget.fits_eventually(w.memory) and evictable:
            victim = evictable.pop(0)
            chosen.append(victim)
            budget.pending_slots += 1
            budget.pending_memory += victim.memory
        if not budget.fits_eventually(w.memory):
            # Nothing (more) can be evicted: undo, leave the others running.
            for victim in reversed(chosen):
                evictable.insert(0, victim)
                budget.pending_slots -= 1
                budget.pending_memory -= victim.memory
            blockers = sorted(n for n in by_name if phase[n] in ACTIVE_PHASES and n not in leaving)
            # Only a time still ahead can change the decision: one already past belongs
            # to a model chosen for an earlier waiter (deciding again at once would spin).
            residency_ends = [
                max(by_name[n].last_used + limits.min_residency, now + limits.min_retry)
                for n in blockers
                if not by_name[n].pinned and by_name[n].last_used + limits.min_residency > now
            ]
            actions.append(
                Wait(
                    w.name,
                    CAPACITY_EXHAUSTED,
                    f"{w.name} is waiting: all {limits.capacity} slots are held by pinned or "
                    f"recently used models ({', '.join(blockers) or 'none'}; minimum "
                    f"residency {limits.min_residency:.0f}s)",
                    retry_at=min(residency_ends, default=None),
                )
            )
            continue
        for victim in chosen:
            idle = now - victim.last_used
            actions.append(
                Evict(
                    victim.name,
                    for_model=w.name,
                    idle_seconds=idle,
                    candidates=candidates,
                    message=(
                        f"Evicted {victim.name} (idle {_fmt_seconds(idle)}, least recently "
                        f"used of {candidates}) to activate {w.name}"
                    ),
                )
            )
        budget.claim(w.memory)
        actions.append(
            Wait(
                w.name,
                WAITING_FOR_EVICTION,
                f"{w.name} will be activated once "
                f"{', '.join(v.name for v in chosen) or 'a stopping pod'} has stopped",
            )
        )
    if replicas is not None:
        actions.extend(_replica_repairs(by_name, phase, actions, replicas))
    return actions


def _replica_repairs(
    by_name: Mapping[str, ModelView],
    phase: Mapping[str, str],
    actions: Sequence[Action],
    replicas: Mapping[str, int],
) -> list[Scale]:
    """Deployments whose size disagrees with their model's phase after this decision.

    Models that this decision activates or evicts are left out: applying those actions
    scales them (and a failure there is repaired by the next pass, through this).
    """
    moved = {a.model for a in actions if isinstance(a, Activate | Evict | IdleStandby)}
    repairs: list[Scale] = []
    for name in by_name:
        observed = replicas.get(name)
        if observed is None or name in moved:
            continue
        want = desired_replicas(phase[name])
        if observed != want:
            repairs.append(Scale(name, want, observed))
    return repairs


def desired_replicas(phase: str) -> int:
    """Replicas of a model's Deployment in each phase (Standby = 0)."""
    return 1 if phase in ACTIVE_PHASES else 0


def slots_in_use(models: Sequence[ModelView], pods: Sequence[PodView]) -> int:
    """Slots held right now (the quantity `decide` keeps at or under capacity)."""
    names = {m.name for m in models}
    per_model: dict[str, int] = defaultdict(int)
    orphans = 0
    for p in pods:
        if p.model in names:
            per_model[p.model] += 1
        else:
            orphans += 1
    return orphans + sum(max(1 if m.active else 0, per_model[m.name]) for m in models)
