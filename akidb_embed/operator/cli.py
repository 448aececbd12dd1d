"""`akidb-embed operator`: the kopf operator (heavy imports happen in the handler)."""

from __future__ import annotations

import argparse
import time
from typing import Any, cast

from akidb_embed.operator.config import add_arguments, from_args


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
    import logging
    import os
    import socket

    import kopf

    from akidb_embed.operator.handlers import Operator, register

    config = from_args(args)
    # Known identity and priority, so the periodic tick can follow kopf's peering rule.
    identity = os.environ.get("POD_ID") or (
        f"{os.environ.get('USER', 'akidb')}@{socket.gethostname()}/{os.getpid()}/{int(time.time())}"
    )
    # The newest replica acts and older ones pause: a rollout hands over cleanly.
    priority = config.peering_priority if config.peering_priority is not None else int(time.time())
    if logging.getLogger().level > logging.DEBUG:
        # kopf logs every handler run at INFO; our decisions are logged (and posted) already.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    registry = kopf.OperatorRegistry()
    register(registry, Operator(config, identity=identity, priority=priority))
    kopf.run(
        registry=registry,
        namespaces=[config.namespace],
        clusterwide=False,
        standalone=config.standalone,
        peering_name=None if config.standalone else config.peering,
        priority=priority,
        identity=cast(Any, identity),
        liveness_endpoint=config.liveness or None,
    )
    return 0
