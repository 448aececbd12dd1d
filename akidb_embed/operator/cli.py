"""`akidb-embed operator`: the kopf operator (heavy imports happen in the handler)."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast

from akidb_embed.operator.config import add_arguments, from_args

log = logging.getLogger("akidb_embed.operator")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "operator",
        help="run the EmbeddingModel operator (conversion, LRU placement, status, Events)",
        description=(
            "Reconcile EmbeddingModel resources: convert each model once with a Job on the "
            "node, keep a model-server Deployment in Standby, and keep at most --capacity "
            "model pods on the node (least recently requested evicted first). Every flag "
            "can also be set with an AKIDB_* environment variable (e.g. AKIDB_CAPACITY)."
        ),
    )
    add_arguments(p)
    p.set_defaults(handler=run_operator)


def run_operator(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    config = from_args(args)
    if logging.getLogger().level > logging.DEBUG:
        # kopf logs every handler run at INFO; our decisions are logged (and posted) already.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    return asyncio.run(_operate(config))


def _identity() -> str:
    """Unique per process: the pod's name in a cluster (POD_ID), else user@host/pid/uuid."""
    import os
    import socket
    import uuid

    return os.environ.get("POD_ID") or (
        f"{os.environ.get('USER', 'akidb')}@{socket.gethostname()}/{os.getpid()}/"
        f"{uuid.uuid4().hex[:8]}"
    )


async def _standby_liveness(endpoint: str | None) -> Callable[[], Awaitable[None]]:
    """Answer the liveness probe while waiting for the Lease: kopf serves the endpoint
    only once it runs, and a standby replica the kubelet kills for silence never takes
    over. Returns the function that frees the address for kopf."""
    from urllib.parse import urlsplit

    from aiohttp import web

    if not endpoint:
        return _nothing
    url = urlsplit(endpoint)

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"standby": True})

    app = web.Application()
    app.router.add_get(url.path or "/", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, url.hostname or "0.0.0.0", url.port or 80).start()
    return runner.cleanup


async def _nothing() -> None:
    return None


async def _operate(config: Any) -> int:
    """Hold the leader Lease, then run kopf's handlers until stopped or the Lease is lost.

    On SIGTERM/SIGINT the Lease is released first (a replacement acts at once), then
    kopf stops. Losing the Lease stops writes at once and exits with status 1.
    """
    import asyncio
    import signal

    import kopf
    from kubernetes_asyncio import client
    from kubernetes_asyncio import config as kube_config

    from akidb_embed.operator.controller import Operator
    from akidb_embed.operator.handlers import register
    from akidb_embed.operator.leader import LeaderElector
    from akidb_embed.operator.writer import Timeouts, Writer

    try:
        kube_config.load_incluster_config()
    except kube_config.ConfigException:
        await kube_config.load_kube_config()
    api = client.ApiClient()
    identity = _identity()
    # Renewals get short timeouts of their own: one must finish well within the deadline.
    renew_timeouts = Timeouts(connect=1.0, read=max(0.5, config.lease_renew))
    elector = LeaderElector(
        Writer(api, renew_timeouts),
        config.namespace,
        config.lease,
        identity,
        duration=config.lease_duration,
        renew_every=config.lease_renew,
        renew_deadline=max(config.lease_renew * 2, config.lease_duration - config.lease_renew),
    )
    stop = asyncio.Event()
    lost = False

    def on_lost() -> None:
        nonlocal lost
        lost = True
        stop.set()

    loop = asyncio.get_running_loop()
    keeper: asyncio.Task[None] | None = None
    if not config.standalone:
        # Before holding it, a signal just ends the process (the default handlers).
        log.info("%s waiting for the leader lease %s", identity, config.lease)
        standby = await _standby_liveness(config.liveness)
        try:
            await elector.acquire()
        finally:
            await standby()
        keeper = asyncio.create_task(elector.keep(on_lost))
    operator = Operator(config, identity=identity)
    operator.connect(api, None if config.standalone else elector.is_leader)
    registry = kopf.OperatorRegistry()
    register(registry, operator)
    ready = asyncio.Event()
    kopf_task = asyncio.create_task(
        kopf.operator(
            registry=registry,
            namespaces=[config.namespace],
            clusterwide=False,
            standalone=True,
            identity=cast(Any, identity),
            liveness_endpoint=config.liveness or None,
            stop_flag=stop,
            ready_flag=ready,
        )
    )

    async def shutdown() -> None:
        await elector.release()
        stop.set()

    def on_signal() -> None:
        task = asyncio.create_task(shutdown())
        operator._background.add(task)

    async def take_signals() -> None:
        # kopf installs its own handlers when it starts; ours replace them afterwards,
        # so the Lease is released before kopf's (slower) graceful stop begins.
        await ready.wait()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)

    signals = asyncio.create_task(take_signals())
    try:
        await kopf_task
    finally:
        signals.cancel()
        if keeper is not None:
            keeper.cancel()
        await elector.release()
        await api.close()
    return 1 if lost else 0
