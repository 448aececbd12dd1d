"""Userspace TCP forwarding for NodePort Services and hostPorts.

Pods have 127.x addresses and EndpointSlices reject loopback IPs, so there is no
kube-proxy here: for each NodePort (and each hostPort) the node agent listens on a host
address and relays every connection to a backend it picks at connect time, trying the
next backend when a connect fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

Backend = tuple[str, int]
Resolver = Callable[[], list[Backend]]

_CONNECT_TIMEOUT_S = 3.0
_RETRY_BIND_S = 10.0


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass


class Forwarder:
    """Listeners keyed by (address, port), each with a backend resolver."""

    def __init__(self) -> None:
        self._servers: dict[tuple[str, int], asyncio.Server] = {}
        self._resolvers: dict[tuple[str, int], Resolver] = {}
        self._failed: dict[tuple[str, int], float] = {}

    @property
    def listening(self) -> list[tuple[str, int]]:
        return sorted(self._servers)

    async def reconcile(self, desired: dict[tuple[str, int], tuple[str, Resolver]]) -> None:
        """Make the listeners exactly `desired` ({(addr, port): (description, resolver)})."""
        for key in list(self._servers):
            if key not in desired:
                server = self._servers.pop(key)
                server.close()
                self._resolvers.pop(key, None)
                log.info("stopped forwarding %s:%d", *key)
        now = time.monotonic()
        for key, (what, resolver) in desired.items():
            self._resolvers[key] = resolver
            if key in self._servers:
                continue
            if now - self._failed.get(key, -1e9) < _RETRY_BIND_S:
                continue
            try:
                self._servers[key] = await asyncio.start_server(
                    functools.partial(self._handle, key), key[0], key[1], reuse_address=True
                )
                self._failed.pop(key, None)
                log.info("forwarding %s:%d -> %s", key[0], key[1], what)
            except OSError as exc:
                if key not in self._failed:
                    log.warning("cannot listen on %s:%d for %s: %s", key[0], key[1], what, exc)
                self._failed[key] = now

    async def _handle(
        self, key: tuple[str, int], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        resolver = self._resolvers.get(key)
        backends = resolver() if resolver else []
        random.shuffle(backends)
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        for host, port in backends:
            try:
                upstream = await asyncio.wait_for(
                    asyncio.open_connection(host, port), _CONNECT_TIMEOUT_S
                )
                break
            except (OSError, TimeoutError) as exc:
                log.info("%s:%d: backend %s:%d refused (%s)", *key, host, port, exc)
        if upstream is None:
            log.info("%s:%d: no reachable backend (%d candidates)", *key, len(backends))
            writer.close()
            return
        up_reader, up_writer = upstream
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                w.close()
                with contextlib.suppress(Exception):
                    await w.wait_closed()

    async def close(self) -> None:
        for server in self._servers.values():
            server.close()
        self._servers.clear()
