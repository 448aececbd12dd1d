"""Where the node agent records its pod processes (shared with `cluster down`).

    <agent_dir>/pods/<pod uid>/procs/<container>.json   pid record of a running container

Records survive the agent, so a restarted agent (or `cluster down`) can stop processes
a killed agent left behind.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from akidb_embed.devcluster import procs


def pods_dir(agent_dir: Path) -> Path:
    return agent_dir / "pods"


def pod_dir(agent_dir: Path, uid: str) -> Path:
    return pods_dir(agent_dir) / uid


def proc_record_path(agent_dir: Path, uid: str, container: str) -> Path:
    return pod_dir(agent_dir, uid) / "procs" / f"{container}.json"


def recorded_pod_processes(agent_dir: Path) -> Iterator[tuple[Path, procs.PidRecord]]:
    for path in sorted(pods_dir(agent_dir).glob("*/procs/*.json")):
        record = procs.PidRecord.load(path)
        if record is not None:
            yield path, record


def stop_recorded_pod_processes(agent_dir: Path, grace_s: float = 5.0) -> list[str]:
    """Stop every recorded pod process still alive; return what was done, for the user."""
    done = []
    for path, record in recorded_pod_processes(agent_dir):
        if procs.stop(record, grace_s=grace_s):
            done.append(f"stopped pod process {record.command} (pid {record.pid})")
        path.unlink(missing_ok=True)
    return done
