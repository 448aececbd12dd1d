"""The placement policy: rules on hand-built states, then invariants on random histories."""

from __future__ import annotations

import dataclasses
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from akidb_embed.operator.placement import (
    ACTIVATING,
    CAPACITY_EXHAUSTED,
    EVICTING,
    EXCEEDS_MEMORY_BUDGET,
    PREVIOUS_POD_STOPPING,
    READY,
    STANDBY,
    WAITING_FOR_EVICTION,
    Activate,
    DeletePod,
    Evict,
    IdleStandby,
    Limits,
    MarkActivating,
    MarkReady,
    MarkStandby,
    ModelView,
    PodView,
    Scale,
    Wait,
    decide,
    slots_in_use,
)

MI = 2**20
NOW = 10_000.0


def ready(name: str, last_request: float, **kw: object) -> ModelView:
    return ModelView(name, phase=READY, last_request=last_request, active_since=0.0, **kw)  # type: ignore[arg-type]


def pod(model: str, *, terminating: bool = False, ready: bool = True) -> PodView:
    return PodView(f"{model}-pod", model, terminating=terminating, ready=ready)


def demanded(name: str, at: float = NOW - 1, **kw: object) -> ModelView:
    return ModelView(name, phase=STANDBY, requested_at=at, **kw)  # type: ignore[arg-type]


def of(kind: type, actions: list) -> list:
    return [a for a in actions if isinstance(a, kind)]


def test_activates_when_a_slot_is_free() -> None:
    models = [ready("a", NOW - 5), demanded("b")]
    actions = decide(models, [pod("a")], Limits(capacity=3), NOW)
    assert actions == [Activate("b", "Activated b (requested; 2 of 3 slots in use)")]


def test_no_action_without_demand() -> None:
    models = [ready("a", NOW - 5), ModelView("b", phase=STANDBY)]
    assert decide(models, [pod("a")], Limits(), NOW) == []


def test_demand_older_than_last_activation_or_eviction_is_settled() -> None:
    stale_by_activation = ModelView("b", requested_at=NOW - 50, active_since=NOW - 40)
    stale_by_eviction = ModelView("c", requested_at=NOW - 50, last_evicted_at=NOW - 10)
    assert decide([stale_by_activation, stale_by_eviction], [], Limits(), NOW) == []


def test_full_node_evicts_least_recently_used_and_waits_for_its_pod() -> None:
    models = [
        ready("a", NOW - 100),
        ready("b", NOW - 312),
        ready("c", NOW - 200),
        demanded("d"),
    ]
    pods = [pod("a"), pod("b"), pod("c")]
    actions = decide(models, pods, Limits(capacity=3, min_residency=30), NOW)
    evictions = of(Evict, actions)
    assert [e.model for e in evictions] == ["b"]
    assert evictions[0].message == ("Evicted b (idle 312s, least recently used of 3) to activate d")
    assert of(Activate, actions) == []  # never over capacity: b's pod is still there
    assert [(w.model, w.reason) for w in of(Wait, actions)] == [("d", WAITING_FOR_EVICTION)]


def test_activation_happens_only_once_the_evicted_pod_is_gone() -> None:
    models = [
        ready("a", NOW - 100),
        ModelView("b", phase=EVICTING, last_evicted_at=NOW - 2, active_since=0.0),
        ready("c", NOW - 200),
        demanded("d", at=NOW - 3),
    ]
    terminating = [pod("a"), pod("b", terminating=True), pod("c")]
    actions = decide(models, terminating, Limits(capacity=3), NOW)
    # The terminating pod still counts; the pending slot is d's, nobody else is evicted.
    assert of(Evict, actions) == [] and of(Activate, actions) == []
    assert [(w.model, w.reason) for w in of(Wait, actions)] == [("d", WAITING_FOR_EVICTION)]

    gone = [pod("a"), pod("c")]
    actions = decide(models, gone, Limits(capacity=3), NOW)
    assert MarkStandby("b") in actions
    assert [a.model for a in of(Activate, actions)] == ["d"]


def test_pinned_and_recent_models_are_not_evicted() -> None:
    models = [
        ready("pinned-old", NOW - 1000, pinned=True),
        ready("recent", NOW - 10),
        ready("also-recent", NOW - 29),
        demanded("d"),
    ]
    pods = [pod("pinned-old"), pod("recent"), pod("also-recent")]
    actions = decide(models, pods, Limits(capacity=3, min_residency=30), NOW)
    assert of(Evict, actions) == []
    (wait,) = of(Wait, actions)
    assert wait.reason == CAPACITY_EXHAUSTED
    assert "also-recent, pinned-old, recent" in wait.message
    # The operator decides again when the first unpinned blocker's residency ends.
    assert wait.retry_at == NOW - 29 + 30

    # As soon as residency has passed, the least recently used unpinned one goes.
    later = decide(models, pods, Limits(capacity=3, min_residency=30), NOW + 25)
    assert [e.model for e in of(Evict, later)] == ["also-recent"]


def test_terminating_pods_count_against_capacity() -> None:
    models = [ready("a", NOW - 5), ModelView("gone", phase=STANDBY), demanded("d")]
    # A leftover terminating pod of "gone" and one of a model that no longer exists.
    pods = [
        pod("a"),
        pod("gone", terminating=True),
        PodView("x", "deleted-model", terminating=True),
    ]
    actions = decide(models, pods, Limits(capacity=3), NOW)
    assert of(Activate, actions) == []
    assert [(w.model, w.reason) for w in of(Wait, actions)] == [("d", WAITING_FOR_EVICTION)]
    assert of(Evict, actions) == []


def test_oldest_demand_first() -> None:
    models = [
        ready("a", NOW - 100),
        demanded("late", at=NOW - 1),
        demanded("early", at=NOW - 9),
    ]
    actions = decide(models, [pod("a")], Limits(capacity=2), NOW)
    assert [a.model for a in of(Activate, actions)] == ["early"]
    waits = of(Wait, actions)
    assert [(w.model, w.reason) for w in waits] == [("late", WAITING_FOR_EVICTION)]
    assert [e.model for e in of(Evict, actions)] == ["a"]


def test_idle_timeout_scales_to_standby_but_not_pinned() -> None:
    models = [
        ready("idle", NOW - 700, idle_timeout=600.0),
        ready("busy", NOW - 10, idle_timeout=600.0),
        ready("pinned", NOW - 7000, idle_timeout=600.0, pinned=True),
    ]
    actions = decide(models, [pod("idle"), pod("busy"), pod("pinned")], Limits(), NOW)
    (idle,) = of(IdleStandby, actions)
    assert idle.model == "idle" and idle.idle_seconds == 700
    assert "idle 700s (idleTimeout 600s)" in idle.message


def test_idle_slot_is_claimed_by_waiting_model_without_extra_eviction() -> None:
    models = [
        ready("idle", NOW - 700, idle_timeout=600.0),
        ready("b", NOW - 500),
        ready("c", NOW - 400),
        demanded("d"),
    ]
    actions = decide(models, [pod("idle"), pod("b"), pod("c")], Limits(capacity=3), NOW)
    assert [a.model for a in of(IdleStandby, actions)] == ["idle"]
    assert of(Evict, actions) == []
    assert [(w.model, w.reason) for w in of(Wait, actions)] == [("d", WAITING_FOR_EVICTION)]


def test_memory_budget_evicts_several_small_models_for_a_big_one() -> None:
    models = [
        ready("s1", NOW - 300, memory=512 * MI),
        ready("s2", NOW - 200, memory=512 * MI),
        ModelView("big", requested_at=NOW - 1, memory=1536 * MI),
    ]
    limits = Limits(capacity=3, memory_budget=2048 * MI)
    actions = decide(models, [pod("s1"), pod("s2")], limits, NOW)
    # One slot is free but only 1 GiB of memory: both small models must go.
    assert [e.model for e in of(Evict, actions)] == ["s1"]
    assert [(w.model, w.reason) for w in of(Wait, actions)] == [("big", WAITING_FOR_EVICTION)]
    too_big = ModelView("huge", requested_at=NOW - 1, memory=4096 * MI)
    actions = decide([*models[:2], too_big], [pod("s1"), pod("s2")], limits, NOW)
    assert [(w.model, w.reason) for w in of(Wait, actions)] == [("huge", EXCEEDS_MEMORY_BUDGET)]
    assert of(Evict, actions) == []


def test_phase_bookkeeping_follows_pods() -> None:
    models = [
        ModelView("starting", phase=ACTIVATING, active_since=NOW - 2),
        ModelView("crashed", phase=READY, active_since=NOW - 200, last_request=NOW - 5),
        ModelView("evicted", phase=EVICTING, last_evicted_at=NOW - 5),
    ]
    pods = [pod("starting"), pod("crashed", ready=False)]
    actions = decide(models, pods, Limits(), NOW)
    assert set(actions) == {
        MarkReady("starting"),
        MarkActivating("crashed"),
        MarkStandby("evicted"),
    }


def test_demand_for_a_model_still_stopping_waits_for_its_pod() -> None:
    models = [ModelView("b", phase=EVICTING, last_evicted_at=NOW - 5, requested_at=NOW - 1)]
    actions = decide(models, [pod("b", terminating=True)], Limits(), NOW)
    assert [(w.model, w.reason) for w in of(Wait, actions)] == [("b", PREVIOUS_POD_STOPPING)]
    actions = decide(models, [], Limits(), NOW)
    assert actions == [MarkStandby("b"), Activate("b", actions[1].message)]


def test_unconverted_model_is_not_activated() -> None:
    models = [ModelView("b", phase="Converting", converted=False, requested_at=NOW - 1)]
    assert decide(models, [], Limits(), NOW) == []


# Random histories -----------------------------------------------------------------------


@dataclasses.dataclass
class SimPod:
    name: str
    model: str
    terminating: bool = False
    ready: bool = False
    finished: bool = False  # Failed (node-pressure eviction): stays until deleted


@dataclasses.dataclass
class Node:
    """The cluster as the policy's caller sees it: Deployments create and delete pods."""

    models: dict[str, ModelView]
    limits: Limits
    now: float = 1000.0
    pods: list[SimPod] = dataclasses.field(default_factory=list)
    counter: int = 0
    max_slots_seen: int = 0
    # spec.replicas of each Deployment; the operator's scale writes may fail.
    replicas: dict[str, int] = dataclasses.field(default_factory=dict)
    fail_scales: bool = False

    def views(self) -> tuple[list[ModelView], list[PodView]]:
        pods = [
            PodView(p.name, p.model, p.terminating, p.ready, finished=p.finished) for p in self.pods
        ]
        return list(self.models.values()), pods

    def check_pods(self) -> None:
        running = [p for p in self.pods if not p.finished]
        assert len(running) <= self.limits.capacity, self.pods
        if self.limits.memory_budget is not None:
            used = sum(self.models[p.model].memory for p in running)
            assert used <= self.limits.memory_budget
        self.max_slots_seen = max(self.max_slots_seen, len(running))

    def scale(self, name: str, replicas: int) -> None:
        if not self.fail_scales:
            self.replicas[name] = replicas

    def remark(self) -> None:
        """The gateway re-marks demand while its requests wait (so it does not expire)."""
        for name, m in self.models.items():
            if m.has_demand and not m.active:
                self.set(name, requested_at=self.now)

    def set(self, name: str, **changes: object) -> None:
        self.models[name] = dataclasses.replace(self.models[name], **changes)  # type: ignore[arg-type]

    def request(self, name: str) -> None:
        m = self.models[name]
        if m.phase == READY:
            self.set(name, last_request=self.now)
        else:
            self.set(name, requested_at=self.now)  # the gateway marks demand

    def controllers(self) -> None:
        """Deployments converge: active models get a pod, others lose theirs."""
        for name in self.models:
            live = [
                p for p in self.pods if p.model == name and not p.terminating and not p.finished
            ]
            if self.replicas.get(name, 0) > len(live):
                self.counter += 1
                self.pods.append(SimPod(f"{name}-{self.counter}", name))
            if self.replicas.get(name, 0) == 0:
                for p in live:
                    p.terminating = True

    def decide_and_apply(self) -> list:
        models, pods = self.views()
        actions = decide(models, pods, self.limits, self.now, replicas=dict(self.replicas))
        check_decision(models, actions, self.limits, self.now)
        # The invariant the scheduler enforces, checked against what the operator wants:
        # after these actions converge, no more pods than capacity could exist.
        for a in actions:
            if isinstance(a, Activate):
                self.set(a.model, phase=ACTIVATING, active_since=self.now)
                self.scale(a.model, 1)
            elif isinstance(a, Evict | IdleStandby):
                self.set(a.model, phase=EVICTING, last_evicted_at=self.now)
                self.scale(a.model, 0)
            elif isinstance(a, Scale):
                self.scale(a.model, a.replicas)
            elif isinstance(a, DeletePod):
                self.pods = [p for p in self.pods if p.name != a.pod]
            elif isinstance(a, MarkReady):
                self.set(a.model, phase=READY)
            elif isinstance(a, MarkActivating):
                self.set(a.model, phase=ACTIVATING)
            elif isinstance(a, MarkStandby):
                self.set(a.model, phase=STANDBY)
        self.check_pods()
        return actions


def check_decision(models: list[ModelView], actions: list, limits: Limits, now: float) -> None:
    by_name = {m.name: m for m in models}
    evicted = [a for a in actions if isinstance(a, Evict)]
    leaving = {a.model for a in actions if isinstance(a, IdleStandby)}
    for a in actions:
        if isinstance(a, Evict | IdleStandby):
            assert not by_name[a.model].pinned, f"pinned {a.model} evicted"
        if isinstance(a, Evict):
            victim = by_name[a.model]
            assert now - victim.last_used >= limits.min_residency, "evicted within residency"
    # LRU: nobody evictable that stays was used less recently than an evicted model.
    evicted_names = {e.model for e in evicted}
    for e in evicted:
        for m in models:
            if (
                m.active
                and not m.pinned
                and m.name not in evicted_names
                and m.name not in leaving
                and now - m.last_used >= limits.min_residency
            ):
                assert m.last_used >= by_name[e.model].last_used, (e, m)
    # Every activation fits: at most one action per model.
    touched = [a.model for a in actions if isinstance(a, Activate | Evict | IdleStandby)]
    assert len(touched) == len(set(touched))


# One round of a history: maybe a request, time passes, the operator decides, the
# Deployments converge, pods may turn ready or finish terminating, the operator decides.
round_ = st.tuples(
    st.one_of(st.none(), st.integers(0, 6)),  # which model gets a request
    st.sampled_from([0.5, 2.0, 10.0, 31.0, 90.0, 400.0]),  # seconds that pass
    st.booleans(),  # starting pods turn ready
    st.booleans(),  # one terminating pod disappears
    st.sampled_from([False, False, False, True]),  # this round's scale writes fail
    st.sampled_from([False, False, False, True]),  # one running pod fails (evicted)
)


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
@given(
    capacity=st.integers(1, 4),
    n_models=st.integers(2, 7),
    pinned=st.sets(st.integers(0, 6), max_size=2),
    memories=st.lists(st.sampled_from([256, 512, 1024, 3072]), min_size=7, max_size=7),
    budget=st.one_of(st.none(), st.sampled_from([1024, 2048, 4096])),
    idle_timeouts=st.lists(st.one_of(st.none(), st.floats(60, 600)), min_size=7, max_size=7),
    rounds=st.lists(round_, min_size=1, max_size=60),
    names=st.permutations([f"m{i}" for i in range(7)]),
)
def test_random_histories_keep_the_invariants(
    capacity: int,
    n_models: int,
    pinned: set[int],
    memories: list[int],
    budget: int | None,
    idle_timeouts: list[float | None],
    rounds: list[tuple[int | None, float, bool, bool, bool, bool]],
    names: list[str],
) -> None:
    limits = Limits(
        capacity=capacity,
        memory_budget=None if budget is None else budget * MI,
        min_residency=30.0,
    )
    models = {
        names[i]: ModelView(
            names[i],
            pinned=i in pinned,
            memory=memories[i] * MI,
            idle_timeout=idle_timeouts[i],
        )
        for i in range(n_models)
    }
    node = Node(models, limits, replicas=dict.fromkeys(models, 0))  # Standby Deployments
    for request, seconds, turn_ready, one_gone, fail_scales, one_fails in rounds:
        if request is not None:
            node.request(names[request % n_models])
        node.now += seconds
        node.remark()
        node.fail_scales = fail_scales
        node.decide_and_apply()
        node.fail_scales = False
        node.controllers()
        node.check_pods()
        if turn_ready:
            for p in node.pods:
                p.ready = not p.finished
        stopping = [p for p in node.pods if p.terminating]
        if one_gone and stopping:
            node.pods.remove(stopping[0])
        running = [p for p in node.pods if not p.terminating and not p.finished]
        if one_fails and running:
            running[0].finished, running[0].ready = True, False
        node.decide_and_apply()

    # Liveness: with time passing and pods converging, every demand is served, unless
    # the model can never fit (bigger than the budget, or the node is full of pinned ones).
    # Failed scale writes and failed pods are repaired on the way (level-triggered).
    for _ in range(4 * n_models + 4):
        node.remark()
        node.decide_and_apply()
        node.controllers()
        for p in node.pods:
            p.ready = not p.finished
        node.pods = [p for p in node.pods if not p.terminating]
        node.now += limits.min_residency + 1
    assert not [p for p in node.pods if p.finished], "a failed pod was never deleted"
    for name, m in node.models.items():
        assert node.replicas.get(name, 0) == (1 if m.active else 0), (name, node.replicas)
    pinned_memory = sum(m.memory for m in node.models.values() if m.pinned and m.active)
    pinned_slots = sum(1 for x in node.models.values() if x.pinned and x.active)
    for m in node.models.values():
        if m.active or not m.has_demand:
            continue
        room = limits.memory_budget is None or m.memory + pinned_memory <= limits.memory_budget
        assert not room or pinned_slots >= capacity, f"{m.name} never served: {node.models}"


def test_slots_in_use_counts_reserved_and_terminating() -> None:
    models = [ModelView("a", phase=ACTIVATING), ModelView("b", phase=STANDBY)]
    pods = [pod("b", terminating=True), PodView("x", "unknown")]
    assert slots_in_use(models, pods) == 3
    assert not math.isinf(ModelView("a", last_request=5.0).last_used)


# Issue 9 findings: each of these failed on the policy before the fix ---------------------


def test_a_failed_pod_holds_no_slot_and_is_deleted() -> None:
    # Node-pressure eviction left a Failed pod of b; a, c run; d is demanded.
    models = [ready("a", NOW - 5), ready("b", NOW - 5), ready("c", NOW - 5), demanded("d")]
    pods = [pod("a"), PodView("b-old", "b", finished=True), pod("b"), pod("c")]
    actions = decide(models, pods, Limits(capacity=4), NOW)
    assert DeletePod("b", "b-old") in actions
    assert of(Activate, actions) and of(Activate, actions)[0].model == "d"  # 3 of 4 used
    assert slots_in_use(models[:3], [p for p in pods if not p.finished]) == 3


def test_an_evicting_model_whose_pod_failed_reaches_standby() -> None:
    models = [ModelView("a", phase=EVICTING, last_evicted_at=NOW - 2)]
    failed = PodView("a-1", "a", finished=True)
    assert decide(models, [failed], Limits(capacity=1), NOW) == [
        DeletePod("a", "a-1"),
        MarkStandby("a"),
    ]


def test_a_pod_of_a_deleted_model_that_failed_is_deleted_too() -> None:
    actions = decide([], [PodView("x-1", "gone", finished=True)], Limits(), NOW)
    assert actions == [DeletePod("gone", "x-1")]


def test_demand_expires_when_nobody_re_marks_it() -> None:
    limits = Limits(capacity=3, demand_ttl=60.0)
    fresh = decide([demanded("b", at=NOW - 59)], [], limits, NOW)
    assert [a.model for a in of(Activate, fresh)] == ["b"]
    # An abandoned request (not re-marked for over the TTL) neither activates nor evicts.
    models = [ready("a", NOW - 500), demanded("b", at=NOW - 61)]
    assert decide(models, [pod("a")], Limits(capacity=1, demand_ttl=60.0), NOW) == []


def test_a_wait_retries_only_at_a_future_time() -> None:
    # Capacity 2: a and b are evictable; two waiters. The first waiter's eviction takes a
    # and b (memory); the second waits on models whose residency ended long ago. Its retry
    # time must not lie in the past (the operator would re-decide every 50 ms forever).
    limits = Limits(capacity=1, min_residency=30.0)
    models = [ready("a", NOW - 500), demanded("b", at=NOW - 2), demanded("c", at=NOW - 1)]
    actions = decide(models, [pod("a")], limits, NOW)
    waits = of(Wait, actions)
    assert [w.model for w in waits] == ["b", "c"]
    for w in waits:
        assert w.retry_at is None or w.retry_at > NOW, w
    # A blocker still within its residency gives its end as the retry time.
    models = [ready("a", NOW - 10), demanded("b")]
    (wait,) = of(Wait, decide(models, [pod("a")], limits, NOW))
    assert wait.reason == CAPACITY_EXHAUSTED and wait.retry_at == NOW - 10 + 30.0


def test_replicas_are_reconciled_to_the_phase_every_pass() -> None:
    models = [
        ModelView("act", phase=ACTIVATING, active_since=NOW - 1),  # its scale to 1 failed
        ready("rdy", NOW - 1),
        ModelView("evi", phase=EVICTING, last_evicted_at=NOW - 1),  # its scale to 0 failed
        ModelView("sby", phase=STANDBY),
        ModelView("new", phase=STANDBY),  # no Deployment yet: left to the spec handler
    ]
    pods = [pod("rdy"), pod("evi")]
    replicas = {"act": 0, "rdy": 1, "evi": 1, "sby": 1}
    actions = decide(models, pods, Limits(capacity=4), NOW, replicas=replicas)
    assert of(Scale, actions) == [Scale("act", 1, 0), Scale("evi", 0, 1), Scale("sby", 0, 1)]
    # In agreement: nothing to repair; unknown replicas: no repairs at all.
    agreed = {"act": 1, "rdy": 1, "evi": 0, "sby": 0}
    assert of(Scale, decide(models, pods, Limits(capacity=4), NOW, replicas=agreed)) == []
    assert of(Scale, decide(models, pods, Limits(capacity=4), NOW)) == []


def test_an_activation_is_not_also_reported_as_a_repair() -> None:
    models = [demanded("b")]
    actions = decide(models, [], Limits(capacity=3), NOW, replicas={"b": 0})
    assert [type(a) for a in actions] == [Activate]


# A cold start longer than the idle timeout (found by CI: a 3 s idleTimeout model whose pod
# took longer than 3 s to start was scaled down in the very pass that marked it Ready) ----


def _slow_starter(**kw: object) -> ModelView:
    # Demanded and activated 40 s ago; its pod has only now turned ready.
    return ModelView(
        "slow",
        phase=ACTIVATING,
        requested_at=NOW - 41,
        active_since=NOW - 40,
        **kw,  # type: ignore[arg-type]
    )


def test_a_model_turning_ready_is_not_idled_out_in_the_same_pass() -> None:
    actions = decide([_slow_starter(idle_timeout=3.0)], [pod("slow")], Limits(capacity=3), NOW)
    assert actions == [MarkReady("slow")]
    # Its idle clock starts at readySince: still in use 2 s later, idle 3 s later.
    marked = ModelView(
        "slow", phase=READY, active_since=NOW - 40, ready_since=NOW, idle_timeout=3.0
    )
    assert not of(IdleStandby, decide([marked], [pod("slow")], Limits(capacity=3), NOW + 2))
    assert of(IdleStandby, decide([marked], [pod("slow")], Limits(capacity=3), NOW + 3))


def test_a_model_turning_ready_is_not_evicted_in_the_same_pass() -> None:
    # Full node; "slow" is the least recently wanted by its old times, but it turns
    # ready now: the demand evicts the next least recently used instead.
    models = [_slow_starter(), ready("a", NOW - 35), ready("b", NOW - 38), demanded("d")]
    pods = [pod("slow"), pod("a"), pod("b")]
    actions = decide(models, pods, Limits(capacity=3, min_residency=30), NOW)
    assert MarkReady("slow") in actions
    assert [e.model for e in of(Evict, actions)] == ["b"]
