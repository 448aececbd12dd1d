"""Gateway settings: one dataclass, parsed from flags or AKIDB_GATEWAY_* variables."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from akidb_embed.k8s import DEFAULT_NAMESPACE

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+)\s*(k|kb|ki|kib|m|mb|mi|mib|g|gb|gi|gib)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    None: 1,
    "k": 1000,
    "kb": 1000,
    "ki": 1024,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mi": 1024**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gi": 1024**3,
    "gib": 1024**3,
}


def parse_duration(value: str | float | int) -> float:
    """'120s', '2m', '50ms', '1.5' (seconds) -> seconds."""
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(value)
        if not match:
            raise ValueError(f"invalid duration {value!r} (use e.g. 120s, 2m, 50ms)")
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if seconds < 0:
        raise ValueError(f"duration must not be negative: {value!r}")
    return seconds


def parse_size(value: str | int) -> int:
    """'8Mi', '1MB', '65536' -> bytes."""
    if isinstance(value, int):
        return value
    match = _SIZE.match(value)
    if not match:
        raise ValueError(f"invalid size {value!r} (use e.g. 8Mi, 1MB, 65536)")
    unit = match.group(2).lower() if match.group(2) else None
    return int(match.group(1)) * _SIZE_UNITS[unit]


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
