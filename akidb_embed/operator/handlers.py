"""kopf handlers: the spec and conversion-Job workflow, and the operator's start and stop.

Nothing here decides or writes. `controller.Operator` runs the placement decisions
(`placement.decide`, applied as `decisions.outcome` says) from its own watches
(`cache`: demand, status.requestedAt, is seen there) and owns the writes (`writer`:
timeouts and typed errors); `conversion.Conversion` is the spec and Job workflow;
`leader` holds the Lease (kopf runs only while we hold it, see cli.py).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import kopf

from akidb_embed import k8s
from akidb_embed.operator import objects
from akidb_embed.operator.controller import Operator
from akidb_embed.operator.state import model_snapshot

Body = dict[str, Any]


def register(registry: kopf.OperatorRegistry, operator: Operator) -> None:
    """Attach the handlers to `registry`, bound to `operator` (already connected)."""
    config = operator.config
    em = (k8s.GROUP, k8s.VERSION, k8s.PLURAL)
    converter = {k8s.LABEL_NAME: objects.CONVERTER_APP}

    @kopf.on.login(id="login", registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # In a pod, its ServiceAccount (in-cluster config); outside one (a developer
        # running the operator by hand), the kubeconfig in KUBECONFIG. kopf's own
        # in-cluster login dials kubernetes.default.svc, which needs cluster DNS.
        info = kopf.login_with_service_account(**kwargs)
        if info is not None:
            return dataclasses.replace(info, server=k8s.in_cluster_server() or info.server)
        return kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.startup(id="configure", registry=registry)
    async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        # Timeouts on every request and watch: a half-open connection must not freeze a
        # watch (and with it the spec handlers) forever. The server ends each watch after
        # server_timeout; the client gives up client_timeout after a silent stream.
        settings.watching.server_timeout = int(config.watch_timeout)  # an integer query
        settings.watching.client_timeout = config.watch_timeout + 15
        settings.watching.connect_timeout = config.api_connect_timeout
        settings.watching.reconnect_backoff = 0.5
        settings.networking.connect_timeout = config.api_connect_timeout
        settings.networking.request_timeout = config.api_connect_timeout + config.api_read_timeout
        # No cluster-wide scanning of namespaces and CRDs: the operator has no RBAC for it,
        # and kopf retries the forbidden listings for ~55 s before it falls back to the
        # namespace it was given (a restarted operator stood still that long).
        settings.scanning.disabled = True
        settings.posting.enabled = True
        settings.posting.level = logging.WARNING  # our own Events: Operator.post_event
        # One replica acts: the leader Lease is held before kopf starts (cli.py).
        settings.peering.standalone = True
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=k8s.GROUP)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=k8s.GROUP, key="last-handled-configuration"
        )

    @kopf.on.cleanup(id="close", registry=registry)
    async def close(**_: Any) -> None:
        operator.stop()

    @kopf.on.startup(id="decisions", registry=registry)
    async def start_decisions(**_: Any) -> None:
        # The watches, the decision loop and the tick, in kopf's context (Events post
        # from there). Idle timeouts, residency and demand expiry happen without any
        # event; a kopf timer would put a finalizer on every active model (blocking
        # namespace deletion whenever the operator is gone), so our own tick runs them.
        operator.start()

    @kopf.on.resume(*em, id="spec", registry=registry)  # type: ignore[arg-type]
    @kopf.on.create(*em, id="spec", registry=registry)  # type: ignore[arg-type]
    @kopf.on.update(*em, field="spec", id="spec", registry=registry)  # type: ignore[arg-type]
    async def spec_changed(body: kopf.Body, **_: Any) -> None:
        await operator.conversion.ensure_model(model_snapshot(body))

    @kopf.on.event("batch", "v1", "jobs", labels=converter, id="job_event", registry=registry)  # type: ignore[arg-type]
    async def job_event(body: kopf.Body, **_: Any) -> None:
        await operator.conversion.job_finished(
            {"metadata": dict(body["metadata"]), "status": dict(body.get("status") or {})}
        )
