"""`akidb-embed gateway`: every flag also from an AKIDB_GATEWAY_* environment variable."""

from __future__ import annotations

import argparse
import os
from typing import Any

# (flag, type, default, help); the env variable is AKIDB_GATEWAY_<FLAG>, e.g.
# --cold-start-timeout -> AKIDB_GATEWAY_COLD_START_TIMEOUT.
_FLAGS: tuple[tuple[str, Any, Any, str], ...] = (
    ("--host", str, "0.0.0.0", "bind address"),
    ("--port", int, 8000, "port"),
    ("--namespace", str, None, "namespace of the EmbeddingModels and model pods"),
    ("--default-model", str, "all-minilm-l6-v2", "model used when a request names none"),
    ("--max-waiting-per-model", int, 64, "requests held per cold model before 503"),
    ("--cold-start-timeout", str, "120s", "how long a request waits for a cold model"),
    ("--recency-flush-interval", str, "5s", "at most one lastRequestTime patch per model per"),
    ("--demand-refresh-interval", str, "10s", "re-mark requestedAt this often while waiting"),
    ("--probe-interval", str, "50ms", "probe a starting pod's /readyz this often"),
    ("--upstream-timeout", str, "60s", "timeout of one call to a model-server pod"),
    ("--max-connections-per-pod", int, 128, "pooled keep-alive connections per pod"),
    ("--api-keys-file", str, None, "file with one API key per line (Bearer auth)"),
    ("--max-body-bytes", str, "8Mi", "largest accepted request body (e.g. 8Mi)"),
    ("--drain-seconds", str, "0s", "on SIGTERM: report not ready and keep serving this long"),
    ("--busy-retry", str, "1s", "retry a pod answering 503 overloaded for this long"),
    ("--watch-timeout", str, "60s", "the API server ends (and we renew) each watch after"),
    ("--watch-stale-after", str, "90s", "/readyz is 503 when a watch is silent this long"),
)


def _env_name(flag: str) -> str:
    return "AKIDB_GATEWAY_" + flag.lstrip("-").upper().replace("-", "_")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "gateway",
        help="run the HTTP gateway (routing, cold-start hold, OpenAI-compatible API)",
        description="Route embedding requests to model-server pods found by watches.",
    )
    for flag, type_, default, help_ in _FLAGS:
        env = _env_name(flag)
        value = os.environ.get(env, default)
        parser.add_argument(
            flag, type=type_, default=value, help=f"{help_} (env {env}; default {default})"
        )
    parser.set_defaults(handler=run)


def build_config(args: argparse.Namespace) -> Any:
    from akidb_embed.gateway.config import GatewayConfig, load_api_keys
    from akidb_embed.k8s import DEFAULT_NAMESPACE
    from akidb_embed.units import memory_bytes, parse_duration

    return GatewayConfig(
        host=args.host,
        port=int(args.port),
        namespace=args.namespace or os.environ.get("POD_NAMESPACE") or DEFAULT_NAMESPACE,
        default_model=args.default_model,
        max_waiting_per_model=int(args.max_waiting_per_model),
        cold_start_timeout=parse_duration(args.cold_start_timeout),
        recency_flush_interval=parse_duration(args.recency_flush_interval),
        demand_refresh_interval=parse_duration(args.demand_refresh_interval),
        probe_interval=parse_duration(args.probe_interval),
        upstream_timeout=parse_duration(args.upstream_timeout),
        max_connections_per_pod=int(args.max_connections_per_pod),
        max_body_bytes=memory_bytes(args.max_body_bytes),
        api_keys=load_api_keys(args.api_keys_file) if args.api_keys_file else frozenset(),
        drain_seconds=parse_duration(args.drain_seconds),
        busy_retry_seconds=parse_duration(args.busy_retry),
        watch_timeout=parse_duration(args.watch_timeout),
        watch_stale_after=parse_duration(args.watch_stale_after),
    )


def run(args: argparse.Namespace) -> int:
    import sys

    from akidb_embed import aio

    try:
        config = build_config(args)
    except (ValueError, OSError) as exc:
        print(f"akidb-embed gateway: error: {exc}", file=sys.stderr)
        return 2

    async def main() -> None:
        from akidb_embed.gateway.app import serve
        from akidb_embed.gateway.kube import KubeBackend, load_kube_config

        await load_kube_config()
        watch_seconds = max(1, round(config.watch_timeout))
        await serve(config, KubeBackend(config.namespace, watch_seconds=watch_seconds))

    aio.run(main())
    return 0
