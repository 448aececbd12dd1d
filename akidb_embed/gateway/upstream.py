"""Calls to model-server pods: one pooled keep-alive session, the forward and the probe.

A call ends in one of three ways: a reply (any status the pod chose, 4xx passed on as
is), `Busy` (503 `overloaded`: the pod is alive and its queue is full; try later or on
another pod, never re-activate), or `Retryable` (connection refused or reset, 503
draining/loading: this pod may be gone, another may not). A timeout is final (504).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import aiohttp

from akidb_embed.api import codec
from akidb_embed.api.errors import ApiError, Code
from akidb_embed.gateway.config import GatewayConfig
from akidb_embed.gateway.metrics import Metrics
from akidb_embed.gateway.registry import PodState, Registry

log = logging.getLogger("akidb_embed.gateway")

JSON_HEADERS = {"Content-Type": "application/json"}
PROBE_TIMEOUT = 0.5
CONNECT_TIMEOUT = 2.0


@dataclass
class UpstreamReply:
    status: int
    body: bytes
    content_type: str
    pod: str
    headers: dict[str, str] = field(default_factory=dict)
    cold_wait: float | None = None


class Busy(Exception):
    """The pod answered 503 `overloaded`: alive, its queue full. Retry later, elsewhere."""

    def __init__(self, reply: UpstreamReply) -> None:
        super().__init__("upstream overloaded")
        self.reply = reply


class Retryable(Exception):
    """The pod failed in a way that another pod (or a fresh one) may not."""

    def __init__(self, error: ApiError | None = None, reply: UpstreamReply | None = None):
        super().__init__(error.message if error else "upstream unavailable")
        self.error = error
        self.reply = reply

    def final(self) -> UpstreamReply:
        if self.reply is not None:
            self.reply.headers.setdefault("Retry-After", "1")
            return self.reply
        assert self.error is not None
        raise self.error


def is_overloaded(body: bytes) -> bool:
    """Whether a model server's 503 body carries the contract's `overloaded` code."""
    try:
        data = codec.loads(body)
    except ValueError:
        return False
    error = data.get("error") if isinstance(data, dict) else None
    return isinstance(error, dict) and error.get("code") == Code.OVERLOADED


class Upstream:
    def __init__(self, config: GatewayConfig, registry: Registry, metrics: Metrics) -> None:
        self.config = config
        self.registry = registry
        self.metrics = metrics
        self.session: aiohttp.ClientSession | None = None
        self._timeout = aiohttp.ClientTimeout(
            total=config.upstream_timeout, sock_connect=CONNECT_TIMEOUT
        )
        self._probe_timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT)

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=0,
            limit_per_host=self.config.max_connections_per_pod,
            keepalive_timeout=60,
            ttl_dns_cache=None,
        )
        self.session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            auto_decompress=False,  # the bytes go back to the client as they came
            # One session serves every client: a cookie a pod set must not travel with
            # another client's call (and the jar's bookkeeping is skipped).
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    async def probe(self, pod: PodState) -> bool:
        """Whether the pod's /readyz answers 200 now."""
        assert self.session is not None
        try:
            async with self.session.get(pod.url("/readyz"), timeout=self._probe_timeout) as resp:
                await resp.read()
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def send(self, model: str, pod: PodState, path: str, body: bytes) -> UpstreamReply:
        """POST the client's bytes to `path` on `pod` (raises Busy or Retryable)."""
        assert self.session is not None
        self.registry.call_started(pod.name)
        try:
            async with self.session.post(pod.url(path), data=body, headers=JSON_HEADERS) as resp:
                data = await resp.read()
                reply = UpstreamReply(
                    status=resp.status,
                    body=data,
                    content_type=resp.headers.get("Content-Type") or "application/json",
                    pod=pod.name,
                )
                retry_after = resp.headers.get("Retry-After")
                if retry_after:
                    reply.headers["Retry-After"] = retry_after
        except aiohttp.ConnectionTimeoutError as exc:
            self.metrics.upstream_errors.labels(model, "connect").inc()
            raise Retryable(_unavailable(model, pod, exc)) from exc
        except TimeoutError as exc:
            self.metrics.upstream_errors.labels(model, "timeout").inc()
            raise ApiError(
                Code.UPSTREAM_TIMEOUT,
                f"pod {pod.name} of model {model!r} did not answer within "
                f"{self.config.upstream_timeout:g}s",
            ) from exc
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            self.metrics.upstream_errors.labels(model, "connect").inc()
            raise Retryable(_unavailable(model, pod, exc)) from exc
        finally:
            self.registry.call_ended(pod.name)
        if reply.status == 503:
            if is_overloaded(reply.body):
                self.metrics.upstream_errors.labels(model, "overloaded").inc()
                raise Busy(reply)
            self.metrics.upstream_errors.labels(model, "unavailable").inc()
            raise Retryable(reply=reply)
        return reply


def _unavailable(model: str, pod: PodState, exc: BaseException) -> ApiError:
    return ApiError(
        Code.UPSTREAM_UNAVAILABLE,
        f"pod {pod.name} of model {model!r} failed: {type(exc).__name__}: {exc}",
    )
