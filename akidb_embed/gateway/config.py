"""Gateway settings: one dataclass, parsed from flags or AKIDB_GATEWAY_* variables."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from akidb_embed.k8s import DEFAULT_NAMESPACE


def load_api_keys(path: str | Path) -> frozenset[str]:
    """One key per line; blank lines and lines starting with '#' are ignored."""
    keys = set()
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keys.add(line)
    if not keys:
        raise ValueError(f"API keys file {path} holds no keys")
    return frozenset(keys)


@dataclass
class GatewayConfig:
    host: str = "0.0.0.0"
    port: int = 8000
    namespace: str = DEFAULT_NAMESPACE
    default_model: str = "all-minilm-l6-v2"
    max_waiting_per_model: int = 64
    cold_start_timeout: float = 120.0
    recency_flush_interval: float = 5.0
    # Re-mark demand (status.requestedAt) this often while requests wait.
    demand_refresh_interval: float = 10.0
    # How often a starting (Running, not yet Ready) pod's /readyz is probed.
    probe_interval: float = 0.05
    upstream_timeout: float = 60.0
    max_connections_per_pod: int = 128
    max_body_bytes: int = 8 * 1024 * 1024
    api_keys: frozenset[str] = frozenset()
    # On SIGTERM: report not ready, keep serving this long, then stop.
    drain_seconds: float = 0.0
    # Retry-After (seconds) sent with 503 when the waiting cap of a model is reached.
    retry_after_seconds: int = 5
    # A pod answering 503 overloaded (queue full) is retried, backing off, this long.
    busy_retry_seconds: float = 1.0
    # The server ends each watch after this long (then it is re-watched).
    watch_timeout: float = 60.0
    # /readyz is 503 when a watch has not heard from the API server for this long.
    watch_stale_after: float = 90.0
