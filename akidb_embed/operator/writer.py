"""The operator's one door to the API server (besides kopf's own watches and patches).

Every call carries a client-side timeout (connect + read): kubernetes_asyncio passes an
empty `aiohttp.ClientTimeout` by default, so one half-open connection would hang the
caller forever, and a decision holding its lock would stop all placement.

Failures come back typed (`NotFound`, `Conflict`, `ApiTimeout`, `ApiError`), so callers
say what they mean (`except NotFound`) instead of comparing status codes.

Writes that race are made under the leader Lease: `may_write` (the elector's "do I still
hold it") is checked before each write, and a replica that lost the Lease stops writing
at once (`NotLeader`) and then exits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from akidb_embed import k8s

Body = dict[str, Any]
T = TypeVar("T")
MERGE_PATCH = "application/merge-patch+json"


class ApiError(Exception):
    """A Kubernetes API call failed (`status` is the HTTP status, 0 for no answer)."""

    def __init__(self, status: int, reason: str, body: str = "") -> None:
        super().__init__(f"{status} {reason}".strip())
        self.status = status
        self.reason = reason
        self.body = body


class NotFound(ApiError):
    pass


class Conflict(ApiError):
    """409: exists already, or a resourceVersion / uid precondition failed."""


class ApiTimeout(ApiError):
    def __init__(self, what: str, seconds: float) -> None:
        super().__init__(0, f"no answer to {what} within {seconds:g}s")


class NotLeader(Exception):
    """This replica does not hold the leader Lease: it must not write."""


def _typed(exc: ApiException) -> ApiError:
    status = int(exc.status or 0)
    kind = {404: NotFound, 409: Conflict}.get(status, ApiError)
    return kind(status, str(exc.reason or ""), str(exc.body or ""))


@dataclass(frozen=True)
class Timeouts:
    connect: float = 5.0
    read: float = 15.0

    def client_timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(
            total=self.connect + self.read,
            connect=self.connect,
            sock_connect=self.connect,
            sock_read=self.read,
        )


class Writer:
    """Typed, time-limited calls for what the operator reads and writes directly."""

    def __init__(
        self,
        api: client.ApiClient,
        timeouts: Timeouts = Timeouts(),
        may_write: Callable[[], bool] = lambda: True,
    ) -> None:
        self.api = api
        self.timeouts = timeouts
        self.may_write = may_write
        # dict bodies and _content_type: untyped use
        self.custom: Any = client.CustomObjectsApi(api)
        self.apps: Any = client.AppsV1Api(api)
        self.batch: Any = client.BatchV1Api(api)
        self.core: Any = client.CoreV1Api(api)
        self.coordination: Any = client.CoordinationV1Api(api)

    async def call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """One API call with the timeouts; ApiException -> typed ApiError."""
        limit = self.timeouts.connect + self.timeouts.read
        try:
            # wait_for as well: the aiohttp timeout does not cover every await in the client.
            return await asyncio.wait_for(
                fn(*args, _request_timeout=self.timeouts.client_timeout(), **kwargs),
                limit + 1.0,
            )
        except ApiException as exc:
            raise _typed(exc) from exc
        except TimeoutError as exc:
            raise ApiTimeout(getattr(fn, "__name__", "a call"), limit) from exc
        except aiohttp.ClientError as exc:
            raise ApiError(0, f"{type(exc).__name__}: {exc}") from exc

    async def write(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        if not self.may_write():
            raise NotLeader("not the leader: write refused")
        return await self.call(fn, *args, **kwargs)

    # -- EmbeddingModels -------------------------------------------------------------

    async def patch_model_status(self, namespace: str, name: str, status: Body) -> Body:
        result = await self.write(
            self.custom.patch_namespaced_custom_object_status,
            k8s.GROUP,
            k8s.VERSION,
            namespace,
            k8s.PLURAL,
            name,
            {"status": status},
            _content_type=MERGE_PATCH,
        )
        return dict(result)

    # -- Deployments, Jobs, pods -------------------------------------------------------

    async def create_deployment(self, namespace: str, body: Body) -> None:
        await self.write(self.apps.create_namespaced_deployment, namespace, body)

    async def patch_deployment(self, namespace: str, name: str, patch: Body) -> None:
        await self.write(
            self.apps.patch_namespaced_deployment, name, namespace, patch, _content_type=MERGE_PATCH
        )

    async def create_job(self, namespace: str, body: Body) -> None:
        await self.write(self.batch.create_namespaced_job, namespace, body)

    async def list_pods(self, namespace: str, label_selector: str) -> list[Any]:
        listing = await self.call(
            self.core.list_namespaced_pod, namespace, label_selector=label_selector
        )
        return list(listing.items)

    async def pod_log(self, namespace: str, name: str, tail_lines: int = 40) -> str:
        return str(
            await self.call(
                self.core.read_namespaced_pod_log, name, namespace, tail_lines=tail_lines
            )
        )

    async def delete_pod(self, namespace: str, name: str, uid: str | None = None) -> None:
        """Delete a pod; with `uid`, only that pod (not a newer one of the same name)."""
        body = {"preconditions": {"uid": uid}} if uid else None
        await self.write(self.core.delete_namespaced_pod, name, namespace, body=body)

    async def create_event(self, namespace: str, body: Body) -> None:
        await self.write(self.core.create_namespaced_event, namespace, body)

    # -- nodes -----------------------------------------------------------------------

    async def list_nodes(self, label_selector: str) -> list[Body]:
        listing = await self.call(self.core.list_node, label_selector=label_selector)
        return [self.api.sanitize_for_serialization(n) for n in listing.items]

    async def patch_node_status(self, name: str, patch: Body) -> None:
        await self.write(
            self.core.patch_node_status, name, patch, _content_type="application/merge-patch+json"
        )

    # -- the leader Lease (not guarded: it is how the guard is obtained) ------------------

    async def read_lease(self, namespace: str, name: str) -> Any:
        return await self.call(self.coordination.read_namespaced_lease, name, namespace)

    async def create_lease(self, namespace: str, body: Body) -> Any:
        return await self.call(self.coordination.create_namespaced_lease, namespace, body)

    async def replace_lease(self, namespace: str, name: str, body: Body) -> Any:
        """Replace with body.metadata.resourceVersion: Conflict if someone else wrote it."""
        return await self.call(self.coordination.replace_namespaced_lease, name, namespace, body)
