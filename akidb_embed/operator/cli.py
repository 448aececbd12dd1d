"""`akidb-embed operator`: the kopf operator (heavy imports happen in the handler)."""

from __future__ import annotations

import argparse
import time

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
    import kopf

    from akidb_embed.operator.handlers import Operator, register

    config = from_args(args)
    registry = kopf.OperatorRegistry()
    register(registry, Operator(config))
    kopf.run(
        registry=registry,
        namespaces=[config.namespace],
        clusterwide=False,
        standalone=config.standalone,
        peering_name=None if config.standalone else config.peering,
        # The newest replica acts and older ones pause: a rollout hands over cleanly.
        priority=config.peering_priority
        if config.peering_priority is not None
        else int(time.time()),
        liveness_endpoint=config.liveness or None,
    )
    return 0
