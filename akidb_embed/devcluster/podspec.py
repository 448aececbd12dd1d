"""Pure helpers that read a pod spec the way the kubelet does (no I/O here)."""

from __future__ import annotations

import re
from typing import Any

Obj = dict[str, Any]


def expand(text: str, variables: dict[str, str]) -> str:
    """Kubelet `$(VAR)` expansion: defined names are replaced, `$$` escapes a `$`,
    undefined references stay as written."""
    out: list[str] = []
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "$" and i + 1 < n:
            nxt = text[i + 1]
            if nxt == "$":
                out.append("$")
                i += 2
                continue
            if nxt == "(":
                end = text.find(")", i + 2)
                if end != -1:
                    name = text[i + 2 : end]
                    out.append(variables[name] if name in variables else text[i : end + 1])
                    i = end + 1
                    continue
        out.append(ch)
        i += 1
    return "".join(out)


_SUBSCRIPT = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


def field_ref(pod: Obj, path: str, pod_ip: str, host_ip: str) -> str:
    """Value of a downward-API `fieldRef.fieldPath` (raises KeyError if unsupported)."""
    meta = pod.get("metadata", {})
    spec = pod.get("spec", {})
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
        "status.hostIP": host_ip,
        "status.hostIPs": host_ip,
    }
    if path in simple:
        return str(simple[path])
    match = _SUBSCRIPT.match(path)
    if match:
        return str(meta.get(match.group(1), {}).get(match.group(2), ""))
    raise KeyError(f"unsupported fieldRef {path!r}")


def resolve_port(pod: Obj, container: Obj | None, port: int | str) -> int:
    """A port given by number or by container-port name (searched in `container` first)."""
    if isinstance(port, int) or (isinstance(port, str) and port.isdigit()):
        return int(port)
    containers = ([container] if container else []) + pod.get("spec", {}).get("containers", [])
    for c in containers:
        for p in c.get("ports", []) or []:
            if p.get("name") == port:
                return int(p["containerPort"])
    raise KeyError(f"no container port named {port!r}")


def selector_matches(selector: dict[str, str] | None, labels: dict[str, str] | None) -> bool:
    """Service-style equality selector; an empty or missing selector selects nothing."""
    if not selector:
        return False
    labels = labels or {}
    return all(labels.get(k) == v for k, v in selector.items())


def should_restart(restart_policy: str, exit_code: int) -> bool:
    if restart_policy == "Always":
        return True
    if restart_policy == "OnFailure":
        return exit_code != 0
    return False


def backoff_delay(restarts_so_far: int, base_s: float, max_s: float) -> float:
    """Delay before the next restart: the first is immediate, then base, 2*base, ... max."""
    if restarts_so_far <= 0:
        return 0.0
    return float(min(max_s, base_s * 2 ** (restarts_so_far - 1)))


def parse_memory_ki(meminfo: str) -> int:
    match = re.search(r"^MemTotal:\s+(\d+)\s*kB", meminfo, re.MULTILINE)
    if not match:
        raise ValueError("no MemTotal in /proc/meminfo")
    return int(match.group(1))
