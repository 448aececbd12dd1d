"""What HTTP alone costs here: a do-nothing aiohttp server, measured like the model server.

The model server's c1 overhead over raw ONNX Runtime (``bench.model_server``) includes
one HTTP round trip: client encode, loopback, aiohttp parse, response write, client
parse. This serves ``POST /v1/embeddings`` from a handler that reads the body and
answers a fixed, pre-encoded response of one 384-float embedding (no JSON decode, no
model), in its own process, and loads it with the same client and texts as
``bench.model_server`` (one text per request, concurrency 1 and 32). Its c1 p50 is the
part of the server's overhead that no change inside the server can remove.

    flock /tmp/akidb-bench.lock .venv/bin/python -m bench.http_floor

Writes bench/results/http_floor.json and prints one line per concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "http_floor.json"

# A server that reads each POST body and answers the same pre-encoded bytes: argv is
# the port, the path to serve and the answer.
FIXED_ANSWER_SERVER = """
import sys
from aiohttp import web
port, path, body = int(sys.argv[1]), sys.argv[2], sys.argv[3].encode()
async def handle(request):
    await request.read()
    return web.Response(body=body, content_type="application/json")
async def ready(request):
    return web.Response(text="ok")
app = web.Application()
app.router.add_post(path, handle)
app.router.add_get("/readyz", ready)
web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)
"""

# The OpenAI-shaped answer for one 384-float embedding.
OPENAI_ANSWER = {
    "object": "list",
    "model": "m",
    "usage": {"prompt_tokens": 9, "total_tokens": 9},
    "data": [{"object": "embedding", "index": 0, "embedding": [0.0123456789] * 384}],
}


def start_fixed_answer_server(port: int, path: str, answer: Any) -> subprocess.Popen[bytes]:
    """A process serving `answer` (JSON-encoded once) on POST `path`, and GET /readyz."""
    return subprocess.Popen(
        [sys.executable, "-c", FIXED_ANSWER_SERVER, str(port), path, json.dumps(answer)]
    )


def measure(texts: int = 256, rounds: int = 3) -> dict[str, Any]:
    from akidb_embed.model_server.runner import free_port
    from bench.model_server import Acc, http_load, make_texts, wait_http

    port = free_port()
    proc = start_fixed_answer_server(port, "/v1/embeddings", OPENAI_ANSWER)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url, "/readyz", proc, 30)
        data = make_texts(texts)
        accs = {"floor_c1": Acc(), "floor_c32": Acc()}
        asyncio.run(http_load(url, "m", data[:32], 32, raw=True))
        for i in range(rounds):
            chunk = data[i::rounds]
            accs["floor_c1"].add(
                asyncio.run(http_load(url, "m", chunk, 1, 0, raw=True)), len(chunk)
            )
            accs["floor_c32"].add(
                asyncio.run(http_load(url, "m", chunk, 32, 0, raw=True)), len(chunk)
            )
        return {k: v.summary() for k, v in accs.items()}
    finally:
        proc.terminate()
        proc.wait(10)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.http_floor", description=__doc__)
    p.add_argument("--texts", type=int, default=256)
    args = p.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from bench.model_server import machine_info

    results = measure(args.texts)
    res = {"benchmark": "http_floor", "machine": machine_info(), "results": results}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(res, indent=2) + "\n")
    for name, r in results.items():
        print(
            f"{name}: p50 {r['p50_ms']:.3f} ms, p95 {r['p95_ms']:.3f} ms, "
            f"{r['throughput_texts_s']:.0f} requests/s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
