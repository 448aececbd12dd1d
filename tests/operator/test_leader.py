"""Leader election on a Lease: the pure rule, and two electors contending on one Lease.

The contention test fakes only the API server's edge (an in-memory Lease with
resourceVersion preconditions, as the API server applies them); the real Lease is used by
the cluster tests (failover within 5 s).
"""

from __future__ import annotations

import asyncio
import copy
from types import SimpleNamespace
from typing import Any

import pytest

from akidb_embed.operator.leader import LeaderElector, LeaseRecord, lease_is_free
from akidb_embed.operator.writer import ApiTimeout, Conflict, NotFound

NOW = 1_800_000_000.0


def record(holder: str | None, renewed: float | None = NOW, duration: float = 4.0) -> LeaseRecord:
    return LeaseRecord(holder, renewed, duration, 0, "1")


def test_the_lease_is_free_when_empty_ours_or_expired() -> None:
    assert lease_is_free(record(None), "me", NOW, 0.0, 4.0)  # released
    assert lease_is_free(record("me"), "me", NOW, 0.0, 4.0)  # ours (a restarted container)
    assert not lease_is_free(record("other", NOW - 1), "me", NOW, 1.0, 4.0)  # live holder
    assert lease_is_free(record("other", NOW - 5), "me", NOW, 0.0, 4.0)  # renewTime too old
    # Unchanged for a whole lifetime by our own clock, whatever the holder's clock says.
    assert lease_is_free(record("other", NOW + 3600), "me", NOW, 4.5, 4.0)
    # The longer of its duration and ours counts.
    assert not lease_is_free(record("other", NOW - 5, duration=10.0), "me", NOW, 5.0, 4.0)


class FakeLeases:
    """One Lease with the API server's rules: create conflicts, replace needs the version."""

    def __init__(self) -> None:
        self.body: dict[str, Any] | None = None
        self.version = 0
        self.hang = False

    def _view(self) -> Any:
        assert self.body is not None
        spec = self.body["spec"]
        return SimpleNamespace(
            metadata=SimpleNamespace(resource_version=str(self.version)),
            spec=SimpleNamespace(
                holder_identity=spec.get("holderIdentity"),
                renew_time=spec.get("renewTime"),
                acquire_time=spec.get("acquireTime"),
                lease_duration_seconds=spec.get("leaseDurationSeconds"),
                lease_transitions=spec.get("leaseTransitions"),
            ),
        )

    async def read_lease(self, namespace: str, name: str) -> Any:
        if self.hang:
            raise ApiTimeout("read_namespaced_lease", 1.0)
        if self.body is None:
            raise NotFound(404, "NotFound")
        return self._view()

    async def create_lease(self, namespace: str, body: dict[str, Any]) -> Any:
        if self.body is not None:
            raise Conflict(409, "AlreadyExists")
        self.body, self.version = copy.deepcopy(body), self.version + 1
        return self._view()

    async def replace_lease(self, namespace: str, name: str, body: dict[str, Any]) -> Any:
        if self.hang:
            raise ApiTimeout("replace_namespaced_lease", 1.0)
        if body["metadata"]["resourceVersion"] != str(self.version):
            raise Conflict(409, "Conflict")
        self.body, self.version = copy.deepcopy(body), self.version + 1
        return self._view()


def elector(leases: FakeLeases, identity: str, **kw: Any) -> LeaderElector:
    opts = {"duration": 0.8, "renew_every": 0.1, "renew_deadline": 0.5, "retry_every": 0.05}
    return LeaderElector(leases, "ns", "op", identity, **{**opts, **kw})  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_one_leader_a_released_lease_is_taken_at_once() -> None:
    leases = FakeLeases()
    a, b = elector(leases, "a"), elector(leases, "b")
    await a.acquire()
    assert a.is_leader()
    assert not await b.try_acquire_or_renew() and not b.is_leader()
    lost: list[str] = []
    keeper = asyncio.create_task(a.keep(lambda: lost.append("a")))
    waiter = asyncio.create_task(b.acquire())
    await asyncio.sleep(0.5)
    assert not waiter.done(), "b took a lease that a keeps renewing"
    keeper.cancel()
    await a.release()
    assert not a.is_leader()
    await asyncio.wait_for(waiter, 0.3)  # released: b acts within one retry, not a lifetime
    assert b.is_leader() and leases.body is not None
    assert leases.body["spec"]["holderIdentity"] == "b"
    assert leases.body["spec"]["leaseTransitions"] == 1
    assert not lost


@pytest.mark.asyncio
async def test_a_dead_holder_is_replaced_after_the_lease_duration() -> None:
    leases = FakeLeases()
    a, b = elector(leases, "a"), elector(leases, "b")
    await a.acquire()  # ...and then a dies without releasing
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.wait_for(b.acquire(), 3.0)
    waited = loop.time() - started
    assert 0.7 <= waited <= 2.0, waited  # about one duration (0.8 s)


@pytest.mark.asyncio
async def test_a_leader_that_cannot_renew_stops_before_its_lease_expires() -> None:
    leases = FakeLeases()
    a = elector(leases, "a")
    await a.acquire()
    lost: list[float] = []
    loop = asyncio.get_running_loop()
    keeper = asyncio.create_task(a.keep(lambda: lost.append(loop.time())))
    leases.hang = True  # the API server stops answering
    started = loop.time()
    await asyncio.wait_for(keeper, 2.0)
    assert lost and not a.is_leader()
    assert lost[0] - started < 0.8  # before the lease (0.8 s) could pass to someone else


async def test_a_standby_answers_the_liveness_probe_until_it_hands_the_port_over() -> None:
    import socket

    import aiohttp

    from akidb_embed.operator.cli import _standby_liveness

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    stop = await _standby_liveness(f"http://127.0.0.1:{port}/healthz")
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/healthz") as r,
    ):
        assert r.status == 200 and (await r.json()) == {"standby": True}
    await stop()
    with socket.socket() as s:  # free for kopf's own liveness server
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
