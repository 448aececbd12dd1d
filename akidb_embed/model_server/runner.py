"""Ways to run the model server from Python (tests, benchmarks, notebooks).

- ``ServerThread``: the real aiohttp app in-process, on its own event loop in a
  background thread, on 127.0.0.1 and a free port (for synchronous clients).
- ``ServerProcess``: ``akidb-embed serve`` as a real subprocess; waits for ``/readyz``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from akidb_embed.model_server.app import ModelServer, ServerSettings, serve
from akidb_embed.model_server.engine import Engine


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class ServerThread:
    """Serve ``engine`` (already loaded) in-process; ``url`` is set once ready."""

    def __init__(self, engine: Engine, settings: ServerSettings | None = None) -> None:
        self.server = ModelServer(settings, engine=engine)
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name="akidb-server", daemon=True)
        self.exit_code: int | None = None
        self.error: BaseException | None = None

    def _main(self) -> None:
        async def run() -> int:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()

            def listening(port: int) -> None:
                self.url = f"http://127.0.0.1:{port}"

            task = asyncio.create_task(
                serve(self.server, "127.0.0.1", 0, self._stop, on_listening=listening)
            )
            await self.server.loaded.wait()
            self._ready.set()
            return await task

        try:
            self.exit_code = asyncio.run(run())
        except BaseException as exc:
            self.error = exc
        finally:
            self._ready.set()

    def start(self, timeout: float = 60.0) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(timeout) or self.server.state != "ready":
            raise RuntimeError(f"server did not get ready: {self.server.failure or self.error}")
        return self

    def stop(self, timeout: float = 30.0) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class ServerProcess:
    """``akidb-embed serve ARTIFACT_DIR`` in a subprocess on 127.0.0.1."""

    def __init__(
        self,
        artifact_dir: str | os.PathLike[str],
        extra_args: Sequence[str] = (),
        port: int | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cmd = [
            sys.executable,
            "-m",
            "akidb_embed",
            "serve",
            str(Path(artifact_dir)),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            *extra_args,
        ]
        self._env = {**os.environ, **(env or {})}
        # stderr goes to a file, not a pipe, so a chatty server can never block on it.
        self._log: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 (closed in __exit__)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120.0) -> ServerProcess:
        self.proc = subprocess.Popen(
            self.cmd, stdout=subprocess.DEVNULL, stderr=self._log, env=self._env
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.proc.returncode}: {self.stderr_text()}"
                )
            try:
                status, _ = http_get(self.url + "/readyz", timeout=2)
                if status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"server not ready within {timeout}s")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def info(self) -> dict[str, Any]:
        status, body = http_get(self.url + "/info")
        return dict(json.loads(body)) if status == 200 else {}

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM, wait; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stderr_text(self) -> str:
        """Everything the server wrote to stderr so far (its log)."""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            self.terminate()
        finally:
            self.kill()
            self._log.close()
