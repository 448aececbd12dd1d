"""Detached child processes tracked by pid records with an identity check.

A pid alone may be reused by an unrelated process after a reboot or a crash, so each
record also keeps the process start time (field 22 of /proc/<pid>/stat); we only signal
a process whose start time still matches.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path


def proc_start_time(pid: int) -> int | None:
    """Start time of `pid` in clock ticks since boot; None if it is gone or a zombie."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


@dataclass
class PidRecord:
    pid: int
    start_time: int
    command: str

    def alive(self) -> bool:
        return proc_start_time(self.pid) == self.start_time

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self)))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> PidRecord | None:
        try:
            data = json.loads(path.read_text())
            return cls(int(data["pid"]), int(data["start_time"]), str(data.get("command", "")))
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None

    @classmethod
    def of(cls, pid: int, command: str) -> PidRecord:
        start = proc_start_time(pid)
        if start is None:
            raise RuntimeError(f"{command} (pid {pid}) exited right after it started")
        return cls(pid, start, command)


def spawn_detached(argv: list[str], log_path: Path, env: dict[str, str], cwd: Path) -> int:
    """Start `argv` in its own session (it outlives us), output appended to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        log.write(f"\n==> {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {argv[0]}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
            close_fds=True,
        )
    return proc.pid


def _reap(pid: int) -> None:
    # When the caller is the parent (e.g. a test session), collect the exit status so
    # the process does not linger as a zombie.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def signal_group(record: PidRecord, sig: int) -> None:
    """Signal the process group led by `record` (its own session), else the process."""
    if not record.alive():
        return
    try:
        os.killpg(record.pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            os.kill(record.pid, sig)


def stop(record: PidRecord, grace_s: float = 10.0) -> bool:
    """SIGTERM the group, wait up to `grace_s`, then SIGKILL. True if it was running."""
    if not record.alive():
        return False
    signal_group(record, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        _reap(record.pid)
        if not record.alive():
            break
        time.sleep(0.1)
    else:
        signal_group(record, signal.SIGKILL)
        for _ in range(50):
            _reap(record.pid)
            if not record.alive():
                break
            time.sleep(0.1)
    # Members of the group that outlived their leader.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(record.pid, signal.SIGKILL)
    return True
