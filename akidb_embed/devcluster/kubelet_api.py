"""The slice of the kubelet HTTPS API that `kubectl logs` needs (GET /containerLogs).

The API server proxies `kubectl logs` to the node's InternalIP and kubeletEndpoint port,
authenticating with its kubelet client certificate; we accept only clients whose
certificate our cluster CA signed.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

# (namespace, pod, container) -> (log file or None, is the container still running?)
LogLocator = Callable[[str, str, str], tuple[Path | None, bool]]

_FOLLOW_POLL_S = 0.3


def _tail(data: bytes, lines: int) -> bytes:
    if lines < 0:
        return data
    if lines == 0:
        return b""
    parts = data.splitlines(keepends=True)
    return b"".join(parts[-lines:])


def make_app(locate: LogLocator) -> web.Application:
    async def container_logs(request: web.Request) -> web.StreamResponse:
        ns, pod, container = (request.match_info[k] for k in ("namespace", "pod", "container"))
        path, running = locate(ns, pod, container)
        if path is None or not path.exists():
            raise web.HTTPNotFound(text=f"no logs for container {container!r} of pod {ns}/{pod}")
        q = request.query
        data = path.read_bytes()
        data = _tail(data, int(q.get("tailLines", "-1")))
        if q.get("limitBytes"):
            data = data[: int(q["limitBytes"])]
        if q.get("follow") not in ("true", "1"):
            return web.Response(body=data, content_type="text/plain")
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await resp.prepare(request)
        await resp.write(data)
        offset = path.stat().st_size
        while True:
            with path.open("rb") as f:
                f.seek(offset)
                chunk = f.read()
            if chunk:
                offset += len(chunk)
                await resp.write(chunk)
            else:
                _, running = locate(ns, pod, container)
                if not running:
                    break
                await asyncio.sleep(_FOLLOW_POLL_S)
        await resp.write_eof()
        return resp

    async def healthz(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/containerLogs/{namespace}/{pod}/{container}", container_logs)
    app.router.add_get("/healthz", healthz)
    return app


async def serve(
    locate: LogLocator, host: str, port: int, cert: Path, key: Path, ca: Path
) -> web.AppRunner:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca))
    ctx.load_cert_chain(cert, key)
    ctx.verify_mode = ssl.CERT_REQUIRED
    runner = web.AppRunner(make_app(locate), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, ssl_context=ctx, reuse_address=True).start()
    return runner
