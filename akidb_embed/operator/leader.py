"""Leader election on a coordination.k8s.io Lease, so that one replica acts, and a
replacement acts within seconds.

Why not kopf peering: a killed peer keeps its keep-alive for the whole lifetime (the
issue measured 65 s of no placement), and equal priorities pause both replicas. Here:

- `acquire()` waits until this replica holds the Lease (free, released, expired or
  already ours), taking it with a resourceVersion precondition (two candidates cannot
  both win); only then does the operator start kopf's handlers.
- `keep()` renews it every `renew_every` s; if no renewal succeeds for `renew_deadline`
  s, this replica stops writing at once (`is_leader()` turns False: the writer refuses)
  and the caller exits, before the Lease can expire for someone else.
- `release()` on shutdown empties the holder, so a replacement takes over at once
  instead of after `duration`.

Expiry is judged two ways: the holder's renewTime older than `duration` by our clock, or
the record unchanged for `duration` since we first saw it (immune to clock skew).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from akidb_embed.operator.writer import ApiError, Conflict, NotFound, Writer

log = logging.getLogger("akidb_embed.operator.leader")


@dataclass(frozen=True)
class LeaseRecord:
    holder: str | None
    renewed: float | None  # epoch seconds (the holder's clock)
    duration: float
    transitions: int
    version: str  # metadata.resourceVersion


def lease_is_free(
    record: LeaseRecord, identity: str, now: float, unchanged_for: float, duration: float
) -> bool:
    """May `identity` take (or keep) the Lease? Pure: the whole election rule."""
    if not record.holder or record.holder == identity:
        return True
    lifetime = max(record.duration, duration)
    if unchanged_for > lifetime:
        return True  # nobody renewed it for a whole lifetime (by our monotonic clock)
    return record.renewed is not None and now - record.renewed > lifetime


def _micro_time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _epoch(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


def _record(lease: Any) -> LeaseRecord:
    spec = lease.spec
    return LeaseRecord(
        holder=spec.holder_identity or None,
        renewed=_epoch(spec.renew_time),
        duration=float(spec.lease_duration_seconds or 0),
        transitions=int(spec.lease_transitions or 0),
        version=str(lease.metadata.resource_version),
    )


class LeaderElector:
    def __init__(
        self,
        writer: Writer,
        namespace: str,
        name: str,
        identity: str,
        *,
        duration: float = 3.0,
        renew_every: float = 1.0,
        renew_deadline: float = 2.0,
        retry_every: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.writer = writer
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.duration = duration
        self.renew_every = renew_every
        self.renew_deadline = renew_deadline
        self.retry_every = retry_every
        self.clock = clock
        self._held_until = -math.inf  # monotonic time until which we may act
        self._seen: tuple[str | None, float | None, str] | None = None
        self._seen_at = 0.0
        self.acquired_at: float | None = None  # epoch seconds of the last acquisition

    def is_leader(self) -> bool:
        return self.clock() < self._held_until

    def _spec(self, now: float, acquired: float, transitions: int) -> dict[str, Any]:
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": math.ceil(self.duration),
            "acquireTime": _micro_time(acquired),
            "renewTime": _micro_time(now),
            "leaseTransitions": transitions,
        }

    async def try_acquire_or_renew(self) -> bool:
        """One attempt; True if we hold the Lease afterwards."""
        started = self.clock()
        now = time.time()
        try:
            lease = await self.writer.read_lease(self.namespace, self.name)
        except NotFound:
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": self._spec(now, now, 0),
            }
            try:
                await self.writer.create_lease(self.namespace, body)
            except ApiError as exc:  # Conflict: another candidate created it first
                log.debug("lease create failed: %s", exc)
                return False
            return self._won(started, now, fresh=True)
        except ApiError as exc:
            log.warning("cannot read lease %s: %s", self.name, exc)
            return False
        record = _record(lease)
        key = (record.holder, record.renewed, record.version)
        if key != self._seen:
            self._seen, self._seen_at = key, started
        if not lease_is_free(record, self.identity, now, started - self._seen_at, self.duration):
            return False
        ours = record.holder == self.identity
        acquired = _epoch(lease.spec.acquire_time) if ours else None
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "resourceVersion": record.version,
            },
            "spec": self._spec(now, acquired or now, record.transitions + (0 if ours else 1)),
        }
        try:
            await self.writer.replace_lease(self.namespace, self.name, body)
        except Conflict:
            return False  # someone else wrote it in between
        except ApiError as exc:
            log.warning("cannot write lease %s: %s", self.name, exc)
            return False
        return self._won(started, now, fresh=not ours or not self.is_leader())

    def _won(self, started: float, now: float, fresh: bool) -> bool:
        self._held_until = started + self.renew_deadline
        if fresh:
            self.acquired_at = now
            log.info("%s holds the leader lease %s", self.identity, self.name)
        return True

    async def acquire(self) -> None:
        while not await self.try_acquire_or_renew():
            await asyncio.sleep(self.retry_every)

    async def keep(self, on_lost: Callable[[], None]) -> None:
        """Renew until the Lease is lost (then call `on_lost`) or the task is cancelled."""
        while True:
            await asyncio.sleep(self.renew_every)
            await self.try_acquire_or_renew()
            if not self.is_leader():
                log.error("%s lost the leader lease %s: stopping", self.identity, self.name)
                on_lost()
                return

    async def release(self) -> None:
        """Give the Lease up (if ours), so a replacement need not wait for it to expire."""
        if self._held_until == -math.inf:
            return
        self._held_until = -math.inf  # no more writes from here on
        try:
            lease = await self.writer.read_lease(self.namespace, self.name)
            if lease.spec.holder_identity != self.identity:
                return
            now = time.time()
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {
                    "name": self.name,
                    "namespace": self.namespace,
                    "resourceVersion": lease.metadata.resource_version,
                },
                "spec": {
                    "holderIdentity": None,
                    "leaseDurationSeconds": 1,
                    "renewTime": _micro_time(now),
                    "leaseTransitions": int(lease.spec.lease_transitions or 0),
                },
            }
            await self.writer.replace_lease(self.namespace, self.name, body)
            log.info("%s released the leader lease %s", self.identity, self.name)
        except ApiError as exc:
            log.warning("could not release the leader lease: %s", exc)
