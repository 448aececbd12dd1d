"""status.performance: what a model server measured on this node, read from its /info.

The model server measures itself right after it turns ready (p50/p95 of one short query
at batch 1, texts/s at its batch size, the execution provider in use; see
``model_server/selfbench.py``) and shows the result under ``performance`` in ``GET
/info``. When a model turns Ready the operator reads that from the pod (its IP and the
``http`` port, directly: no Service, no API-server proxy) and writes it to the status.

``status_performance`` is pure (an /info body -> the status field, camelCase as in the
CRD); ``fetch_performance`` is the HTTP part: short timeouts, a few retries while the
measurement is still running, errors logged and never raised.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any

from akidb_embed import k8s

log = logging.getLogger("akidb_embed.operator")

Body = dict[str, Any]

# /info "self_benchmark" values after which no performance will come.
_FINAL = frozenset({"done", "off", "failed", "skipped"})


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) and value >= 0 else None


def status_performance(info: Body, now: float) -> Body | None:
    """The model server's /info -> ``status.performance`` (None when it has none yet)."""
    perf = info.get("performance")
    if not isinstance(perf, dict):
        return None
    p50, p95 = _number(perf.get("p50_ms")), _number(perf.get("p95_ms"))
    tps = _number(perf.get("texts_per_second"))
    device = perf.get("device")
    if p50 is None or p95 is None or tps is None or not isinstance(device, str) or not device:
        return None
    measured = k8s.parse_time(perf.get("measured_at")) or now
    return {
        "p50Ms": round(p50, 3),
        "p95Ms": round(p95, 3),
        "textsPerSecond": round(tps, 1),
        "device": device,
        "measuredAt": k8s.to_rfc3339(measured),
    }


def pod_endpoint(pod: Any) -> str | None:
    """``http://<podIP>:<http port>`` of a ready, running model-server pod (client object)."""
    status, meta, spec = pod.status, pod.metadata, pod.spec
    if status is None or meta is None or meta.deletion_timestamp or not status.pod_ip:
        return None
    ready = any(c.type == "Ready" and c.status == "True" for c in status.conditions or [])
    if not ready:
        return None
    port = k8s.MODEL_SERVER_PORT
    for container in (spec.containers if spec else None) or []:
        for p in container.ports or []:
            if p.name == k8s.MODEL_SERVER_PORT_NAME:
                port = int(p.container_port)
    host = f"[{status.pod_ip}]" if ":" in status.pod_ip else status.pod_ip
    return f"http://{host}:{port}"


async def fetch_performance(
    url: str,
    attempts: int = 10,
    delay: float = 1.0,
    timeout: float = 2.0,
    clock: Any = None,
) -> Body | None:
    """GET ``url``/info until it carries a measurement; None after ``attempts`` tries.

    Stops early when the server says none will come (measurement off or failed).
    """
    import time

    import aiohttp

    now = clock or time.time
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(timeout=client_timeout) as session:
        for attempt in range(1, attempts + 1):
            state = "unreachable"
            try:
                async with session.get(f"{url}/info") as resp:
                    if resp.status == 200:
                        info = await resp.json(content_type=None)
                        perf = status_performance(info, now())
                        if perf is not None:
                            return perf
                        state = str(info.get("self_benchmark"))
                        if state in _FINAL:
                            log.info("%s/info has no performance (self_benchmark %s)", url, state)
                            return None
                    else:
                        state = f"HTTP {resp.status}"
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                state = f"{type(exc).__name__}: {exc}"
            log.debug("%s/info attempt %d/%d: %s", url, attempt, attempts, state)
            if attempt < attempts:
                await asyncio.sleep(delay)
    log.warning("no performance from %s/info after %d attempts (%s)", url, attempts, state)
    return None
